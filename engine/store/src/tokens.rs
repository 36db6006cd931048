//! API tokens. Only a hash of each token's secret is stored.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::runs::json_column;
use crate::{Error, Result, Store, query_err, time_fmt};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    #[serde(skip)]
    pub secret_hash: String,
    pub claims: Vec<String>,
    pub roles: Vec<String>,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

fn token_from_row(row: &AnyRow) -> Result<TokenRecord> {
    const DOING: &str = "reading a token";
    let list = |col| -> Result<Vec<String>> {
        Ok(json_column(row, col, DOING)?
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default())
    };
    Ok(TokenRecord {
        id: row.try_get("id").map_err(query_err(DOING))?,
        name: row.try_get("name").map_err(query_err(DOING))?,
        secret_hash: row.try_get("secret_hash").map_err(query_err(DOING))?,
        claims: list("claims_json")?,
        roles: list("roles_json")?,
        created_at: row.try_get("created_at").map_err(query_err(DOING))?,
        revoked_at: row.try_get("revoked_at").map_err(query_err(DOING))?,
    })
}

impl Store {
    pub async fn create_token(
        &self,
        id: &str,
        name: &str,
        secret_hash: &str,
        claims: &[String],
        roles: &[String],
    ) -> Result<TokenRecord> {
        let existing: Option<String> = sqlx::query_scalar("SELECT id FROM tokens WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await
            .map_err(query_err("creating a token"))?;
        if existing.is_some() {
            return Err(Error::Conflict(format!(
                "a token named `{name}` exists already; revoke it or choose another name"
            )));
        }
        sqlx::query(
            "INSERT INTO tokens (id, name, secret_hash, claims_json, roles_json, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(name)
        .bind(secret_hash)
        .bind(serde_json::to_string(claims).unwrap_or_else(|_| "[]".into()))
        .bind(serde_json::to_string(roles).unwrap_or_else(|_| "[]".into()))
        .bind(time_fmt::now())
        .execute(self.pool())
        .await
        .map_err(query_err("creating a token"))?;
        self.token(id)
            .await?
            .ok_or_else(|| Error::Conflict("token vanished after creation".into()))
    }

    pub async fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        if !crate::runs::lookup_key_ok(id) {
            return Ok(None);
        }
        let row = sqlx::query("SELECT * FROM tokens WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await
            .map_err(query_err("reading a token"))?;
        row.as_ref().map(token_from_row).transpose()
    }

    pub async fn tokens(&self) -> Result<Vec<TokenRecord>> {
        let rows = sqlx::query("SELECT * FROM tokens ORDER BY created_at")
            .fetch_all(self.pool())
            .await
            .map_err(query_err("listing tokens"))?;
        rows.iter().map(token_from_row).collect()
    }

    /// Revoke the token with this name or id; false when none matched.
    pub async fn revoke_token(&self, name_or_id: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE tokens SET revoked_at = $1 WHERE (name = $2 OR id = $2) AND revoked_at IS NULL",
        )
        .bind(time_fmt::now())
        .bind(name_or_id)
        .execute(self.pool())
        .await
        .map_err(query_err("revoking a token"))?;
        Ok(done.rows_affected() > 0)
    }
}
