//! Memoized step outputs (`cache: true` steps).

use sqlx::Row;

use crate::runs::json_column;
use crate::{Result, Store, query_err, time_fmt};

/// Outputs stored under a cache key, and where they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedOutputs {
    pub outputs: serde_json::Value,
    pub run_id: String,
    pub step_id: String,
}

impl Store {
    pub async fn cached_outputs(&self, key: &str) -> Result<Option<CachedOutputs>> {
        let row = sqlx::query(
            "SELECT outputs_json, run_id, step_id FROM step_cache WHERE cache_key = $1",
        )
        .bind(key)
        .fetch_optional(self.pool())
        .await
        .map_err(query_err("reading the step cache"))?;
        row.map(|row| {
            Ok(CachedOutputs {
                outputs: json_column(&row, "outputs_json", "reading the step cache")?
                    .unwrap_or_default(),
                run_id: row
                    .try_get("run_id")
                    .map_err(query_err("reading the step cache"))?,
                step_id: row
                    .try_get("step_id")
                    .map_err(query_err("reading the step cache"))?,
            })
        })
        .transpose()
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
        .execute(self.pool())
        .await
        .map_err(query_err("writing the step cache"))?;
        Ok(())
    }
}
