//! The model registry.

use serde::Serialize;
use sqlx::FromRow;
use sqlx::any::AnyRow;

use crate::{Error, Result, Store, columns, query_err, time_fmt};

/// A model to register, as produced by a training run.
#[derive(Debug, Clone)]
pub struct NewModel {
    pub name: String,
    pub project: String,
    pub task: Option<String>,
    /// The framework that trained it (`ultralytics`, `mmdetection`, …).
    pub framework: Option<String>,
    pub format: Option<String>,
    /// Relative to the workspace.
    pub file_path: String,
    pub config_path: Option<String>,
    pub input_size: Option<i64>,
    pub class_names: Vec<String>,
    pub metrics: Option<serde_json::Value>,
    pub dataset: Option<String>,
    pub training_run_id: String,
    pub training_step_id: String,
    pub base_model: Option<String>,
    pub created_by: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelRecord {
    pub id: String,
    pub name: String,
    pub project: String,
    pub version: i64,
    pub task: Option<String>,
    /// The framework that trained it; None for models registered before it was recorded.
    pub framework: Option<String>,
    pub format: Option<String>,
    pub file_path: String,
    pub config_path: Option<String>,
    pub input_size: Option<i64>,
    pub class_names: Vec<String>,
    pub metrics: Option<serde_json::Value>,
    pub dataset: Option<String>,
    pub training_run_id: Option<String>,
    pub training_step_id: Option<String>,
    pub base_model: Option<String>,
    pub is_published: bool,
    pub published_at: Option<String>,
    /// development | testing | production
    pub stage: String,
    /// When the model was last promoted to production.
    pub production_at: Option<String>,
    pub created_by: String,
    pub created_on: String,
}

/// The stages a model can be promoted to.
pub const STAGES: &[&str] = &["development", "testing", "production"];

/// A row of `models`.
#[derive(FromRow)]
struct ModelRow {
    id: String,
    name: String,
    project: String,
    version: i64,
    task: Option<String>,
    framework: Option<String>,
    format: Option<String>,
    file_path: String,
    config_path: Option<String>,
    input_size: Option<i64>,
    class_names_json: Option<String>,
    metrics_json: Option<String>,
    dataset: Option<String>,
    training_run_id: Option<String>,
    training_step_id: Option<String>,
    base_model: Option<String>,
    is_published: i64,
    published_at: Option<String>,
    stage: String,
    production_at: Option<String>,
    created_by: String,
    created_on: String,
}

const READING: &str = "reading a model";

impl TryFrom<ModelRow> for ModelRecord {
    type Error = Error;

    fn try_from(row: ModelRow) -> Result<Self> {
        Ok(ModelRecord {
            class_names: columns::string_list(row.class_names_json, "class_names_json", READING)?,
            metrics: columns::json(row.metrics_json, "metrics_json", READING)?,
            is_published: row.is_published != 0,
            id: row.id,
            name: row.name,
            project: row.project,
            version: row.version,
            task: row.task,
            framework: row.framework,
            format: row.format,
            file_path: row.file_path,
            config_path: row.config_path,
            input_size: row.input_size,
            dataset: row.dataset,
            training_run_id: row.training_run_id,
            training_step_id: row.training_step_id,
            base_model: row.base_model,
            published_at: row.published_at,
            stage: row.stage,
            production_at: row.production_at,
            created_by: row.created_by,
            created_on: row.created_on,
        })
    }
}

/// A model read by any query: a column of the wrong type is an error while reading a model.
fn model_from_row(row: &AnyRow) -> Result<ModelRecord> {
    ModelRow::from_row(row)
        .map_err(query_err(READING))?
        .try_into()
}

impl Store {
    /// Register a trained model. Idempotent per (training run, step): registering again updates
    /// the same record and keeps its version; a new registration gets the next version of its
    /// (project, name). New models are never published.
    ///
    /// Two registrations of one (project, name) at once (engines on PostgreSQL, whose
    /// transactions do not wait for each other's reads) may pick the same next version: the
    /// loser's insert violates the unique version and is tried again, reading the new maximum.
    pub async fn register_model(&self, m: &NewModel) -> Result<ModelRecord> {
        let mut tries = 0;
        loop {
            match self.register_model_once(m).await {
                Err(Error::Query { source, .. })
                    if tries < 8
                        && source
                            .as_database_error()
                            .is_some_and(|e| e.is_unique_violation()) =>
                {
                    tries += 1;
                }
                done => return done,
            }
        }
    }

    async fn register_model_once(&self, m: &NewModel) -> Result<ModelRecord> {
        const DOING: &str = "registering a model";
        let mut tx = self.begin_run_write(DOING, &m.training_run_id).await?;
        let existing: Option<String> = sqlx::query_scalar(
            "SELECT id FROM models WHERE training_run_id = $1 AND training_step_id = $2",
        )
        .bind(&m.training_run_id)
        .bind(&m.training_step_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(query_err(DOING))?;
        let class_names = serde_json::to_string(&m.class_names).unwrap_or_else(|_| "[]".into());
        let metrics = m.metrics.as_ref().map(|v| v.to_string());
        let id = match existing {
            Some(id) => {
                sqlx::query(
                    "UPDATE models SET task = $1, format = $2, file_path = $3, config_path = $4, \
                     input_size = $5, class_names_json = $6, metrics_json = $7, dataset = $8, \
                     base_model = $9, framework = $11 WHERE id = $10",
                )
                .bind(&m.task)
                .bind(&m.format)
                .bind(&m.file_path)
                .bind(&m.config_path)
                .bind(m.input_size)
                .bind(&class_names)
                .bind(&metrics)
                .bind(&m.dataset)
                .bind(&m.base_model)
                .bind(&id)
                .bind(&m.framework)
                .execute(&mut *tx)
                .await
                .map_err(query_err(DOING))?;
                id
            }
            None => {
                let version: i64 = sqlx::query_scalar(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM models WHERE project = $1 AND name = $2",
                )
                .bind(&m.project)
                .bind(&m.name)
                .fetch_one(&mut *tx)
                .await
                .map_err(query_err(DOING))?;
                let id = uuid::Uuid::now_v7().to_string();
                sqlx::query(
                    "INSERT INTO models (id, name, project, version, task, format, file_path, \
                     config_path, input_size, class_names_json, metrics_json, dataset, \
                     training_run_id, training_step_id, base_model, is_published, created_by, \
                     created_on, framework) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
                     $12, $13, $14, $15, 0, $16, $17, $18)",
                )
                .bind(&id)
                .bind(&m.name)
                .bind(&m.project)
                .bind(version)
                .bind(&m.task)
                .bind(&m.format)
                .bind(&m.file_path)
                .bind(&m.config_path)
                .bind(m.input_size)
                .bind(&class_names)
                .bind(&metrics)
                .bind(&m.dataset)
                .bind(&m.training_run_id)
                .bind(&m.training_step_id)
                .bind(&m.base_model)
                .bind(&m.created_by)
                .bind(time_fmt::now())
                .bind(&m.framework)
                .execute(&mut *tx)
                .await
                .map_err(query_err(DOING))?;
                id
            }
        };
        tx.commit().await.map_err(query_err(DOING))?;
        self.model(&id).await
    }

    pub async fn model(&self, id: &str) -> Result<ModelRecord> {
        if !crate::runs::lookup_key_ok(id) {
            return Err(crate::Error::ModelNotFound(id.to_owned()));
        }
        let row = sqlx::query("SELECT * FROM models WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await
            .map_err(query_err("reading a model"))?
            .ok_or_else(|| crate::Error::ModelNotFound(id.to_owned()))?;
        model_from_row(&row)
    }

    /// Publish a model (idempotent; the first publication time is kept).
    pub async fn publish_model(&self, id: &str) -> Result<ModelRecord> {
        self.model(id).await?;
        sqlx::query(
            "UPDATE models SET is_published = 1, published_at = COALESCE(published_at, $1) WHERE id = $2",
        )
        .bind(time_fmt::now())
        .bind(id)
        .execute(self.write_pool("publishing a model")?)
        .await
        .map_err(query_err("publishing a model"))?;
        self.model(id).await
    }

    /// Move a model to `stage` (one of [`STAGES`]); promotion to production records the date.
    pub async fn promote_model(&self, id: &str, stage: &str) -> Result<ModelRecord> {
        self.model(id).await?;
        let production_at = (stage == "production").then(time_fmt::now);
        sqlx::query(
            "UPDATE models SET stage = $1, production_at = COALESCE($2, production_at) WHERE id = $3",
        )
        .bind(stage)
        .bind(production_at)
        .bind(id)
        .execute(self.write_pool("promoting a model")?)
        .await
        .map_err(query_err("promoting a model"))?;
        self.model(id).await
    }

    /// Models filtered by project and publication, newest first.
    pub async fn find_models(
        &self,
        project: Option<&str>,
        published: Option<bool>,
    ) -> Result<Vec<ModelRecord>> {
        let mut models = self.list_models(project).await?;
        if let Some(p) = published {
            models.retain(|m| m.is_published == p);
        }
        Ok(models)
    }

    /// Models, optionally of one project, newest first.
    pub async fn list_models(&self, project: Option<&str>) -> Result<Vec<ModelRecord>> {
        if project.is_some_and(|p| p.contains('\0')) {
            // No project can be named so (PostgreSQL cannot even store it).
            return Ok(Vec::new());
        }
        let rows = match project {
            Some(p) => sqlx::query(
                "SELECT * FROM models WHERE project = $1 ORDER BY created_on DESC, version DESC",
            )
            .bind(p)
            .fetch_all(self.pool())
            .await,
            None => {
                sqlx::query("SELECT * FROM models ORDER BY created_on DESC, version DESC")
                    .fetch_all(self.pool())
                    .await
            }
        }
        .map_err(query_err("listing models"))?;
        rows.iter().map(model_from_row).collect()
    }
}
