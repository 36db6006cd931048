//! Memoized step outputs (`cache: true` steps).

use crate::{Error, Result, Store, columns, query_err, time_fmt};

/// Outputs stored under a cache key, and where they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedOutputs {
    pub outputs: serde_json::Value,
    pub run_id: String,
    pub step_id: String,
}

/// A row of `step_cache` as [`Store::cached_outputs`] selects it.
#[derive(sqlx::FromRow)]
struct CacheRow {
    /// NOT NULL in the schema; read as JSON `null` were it NULL.
    outputs_json: Option<String>,
    run_id: String,
    step_id: String,
}

const READING: &str = "reading the step cache";

impl TryFrom<CacheRow> for CachedOutputs {
    type Error = Error;

    fn try_from(row: CacheRow) -> Result<Self> {
        Ok(CachedOutputs {
            outputs: columns::json(row.outputs_json, "outputs_json", READING)?.unwrap_or_default(),
            run_id: row.run_id,
            step_id: row.step_id,
        })
    }
}

impl Store {
    pub async fn cached_outputs(&self, key: &str) -> Result<Option<CachedOutputs>> {
        let row: Option<CacheRow> = sqlx::query_as(
            "SELECT outputs_json, run_id, step_id FROM step_cache WHERE cache_key = $1",
        )
        .bind(key)
        .fetch_optional(self.pool())
        .await
        .map_err(query_err(READING))?;
        row.map(CachedOutputs::try_from).transpose()
    }

    pub async fn store_outputs(
        &self,
        key: &str,
        outputs: &serde_json::Value,
        run_id: &str,
        step_id: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO step_cache (cache_key, outputs_json, run_id, step_id, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (cache_key) DO NOTHING",
        )
        .bind(key)
        .bind(outputs.to_string())
        .bind(run_id)
        .bind(step_id)
        .bind(time_fmt::now())
        .execute(self.write_pool("writing the step cache")?)
        .await
        .map_err(query_err("writing the step cache"))?;
        Ok(())
    }
}
