//! API tokens. Only a hash of each token's secret is stored.

use serde::Serialize;
use sqlx::FromRow;
use sqlx::any::AnyRow;

use crate::{Error, Result, Store, columns, query_err, time_fmt};

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

/// A row of `tokens`.
#[derive(FromRow, serde::Deserialize)]
struct TokenRow {
    id: String,
    name: String,
    secret_hash: String,
    claims_json: Option<String>,
    roles_json: Option<String>,
    created_at: String,
    revoked_at: Option<String>,
}

const READING: &str = "reading a token";

impl TryFrom<TokenRow> for TokenRecord {
    type Error = Error;

    fn try_from(row: TokenRow) -> Result<Self> {
        Ok(TokenRecord {
            claims: columns::string_list(row.claims_json, "claims_json", READING)?,
            roles: columns::string_list(row.roles_json, "roles_json", READING)?,
            id: row.id,
            name: row.name,
            secret_hash: row.secret_hash,
            created_at: row.created_at,
            revoked_at: row.revoked_at,
        })
    }
}

/// A token read by any query: a column of the wrong type is an error while reading a token.
fn token_from_row(row: &AnyRow) -> Result<TokenRecord> {
    TokenRow::from_row(row)
        .map_err(query_err(READING))?
        .try_into()
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
        .execute(self.write_pool("creating a token")?)
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
        const SQL: &str = "SELECT * FROM tokens WHERE id = $1";
        if let Some(rows) = self.read_direct::<TokenRow>(SQL, &[&id]) {
            return rows
                .into_iter()
                .next()
                .map(TokenRecord::try_from)
                .transpose();
        }
        let row = sqlx::query(SQL)
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
        .execute(self.write_pool("revoking a token")?)
        .await
        .map_err(query_err("revoking a token"))?;
        Ok(done.rows_affected() > 0)
    }
}
