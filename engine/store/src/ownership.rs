//! Ownership of files on disk: training folders (one owner) and extracted datasets (shared).
//!
//! The store only keeps the records; what they mean for files is the runner's policy.

use serde::Serialize;

use crate::{Error, Result, RunStatus, Store, columns, query_err, time_fmt};

/// A training folder, by project and training name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, sqlx::FromRow)]
pub struct TrainingRef {
    pub project: String,
    pub name: String,
}

/// What [`Store::claim_training`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The training was free and now belongs to the run.
    Claimed,
    /// The run already held it.
    Held,
}

/// A run that used an extracted dataset, and the release it held then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct DatasetUse {
    pub run_id: String,
    pub release_sha256: String,
}

/// The run that owns a training, when it is not the asking run.
pub(crate) async fn owner_of(
    conn: &mut sqlx::AnyConnection,
    training: &TrainingRef,
    doing: &'static str,
) -> Result<Option<(String, String)>> {
    sqlx::query_as(
        "SELECT t.run_id, r.status FROM trainings t JOIN runs r ON r.id = t.run_id \
         WHERE t.project = $1 AND t.name = $2",
    )
    .bind(&training.project)
    .bind(&training.name)
    .fetch_optional(&mut *conn)
    .await
    .map_err(query_err(doing))
}

/// Claims `training` for `run_id` inside a write transaction.
pub(crate) async fn claim(
    conn: &mut sqlx::AnyConnection,
    run_id: &str,
    training: &TrainingRef,
    doing: &'static str,
) -> Result<ClaimOutcome> {
    let inserted = sqlx::query(
        "INSERT INTO trainings (project, name, run_id, claimed_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (project, name) DO NOTHING",
    )
    .bind(&training.project)
    .bind(&training.name)
    .bind(run_id)
    .bind(time_fmt::now())
    .execute(&mut *conn)
    .await
    .map_err(query_err(doing))?
    .rows_affected();
    if inserted == 1 {
        return Ok(ClaimOutcome::Claimed);
    }
    match owner_of(conn, training, doing).await? {
        Some((owner, _)) if owner == run_id => Ok(ClaimOutcome::Held),
        Some((owner, status)) => Err(Error::TrainingTaken {
            project: training.project.clone(),
            name: training.name.clone(),
            owner,
            status: columns::status(&status, doing)?,
        }),
        // Released between the insert and the read: the caller may simply try again.
        None => Err(Error::Conflict(format!(
            "training `{}` of project `{}` changed hands while being claimed; try again",
            training.name, training.project
        ))),
    }
}

impl Store {
    /// Claims the training folder for `run_id`: [`ClaimOutcome::Claimed`] when it was free,
    /// [`ClaimOutcome::Held`] when the run holds it already, [`Error::TrainingTaken`] when
    /// another run owns it.
    pub async fn claim_training(
        &self,
        run_id: &str,
        training: &TrainingRef,
    ) -> Result<ClaimOutcome> {
        const DOING: &str = "claiming a training folder";
        let mut tx = self.begin_run_write(DOING, run_id).await?;
        let outcome = claim(&mut tx, run_id, training, DOING).await?;
        tx.commit().await.map_err(query_err(DOING))?;
        Ok(outcome)
    }

    /// Gives a training back (a claim that turned out not to be the run's to take).
    pub async fn release_training(&self, run_id: &str, training: &TrainingRef) -> Result<()> {
        sqlx::query("DELETE FROM trainings WHERE project = $1 AND name = $2 AND run_id = $3")
            .bind(&training.project)
            .bind(&training.name)
            .bind(run_id)
            .execute(self.write_pool("releasing a training folder")?)
            .await
            .map_err(query_err("releasing a training folder"))?;
        Ok(())
    }

    /// The run that owns a training, and its status.
    pub async fn training_owner(
        &self,
        training: &TrainingRef,
    ) -> Result<Option<(String, RunStatus)>> {
        const DOING: &str = "reading the owner of a training folder";
        let mut conn = self.pool().acquire().await.map_err(query_err(DOING))?;
        owner_of(&mut conn, training, DOING)
            .await?
            .map(|(run, status)| Ok((run, columns::status(&status, DOING)?)))
            .transpose()
    }

    /// The trainings a run owns.
    pub async fn trainings_of(&self, run_id: &str) -> Result<Vec<TrainingRef>> {
        const DOING: &str = "listing a run's training folders";
        sqlx::query_as(
            "SELECT project, name FROM trainings WHERE run_id = $1 ORDER BY project, name",
        )
        .bind(run_id)
        .fetch_all(self.pool())
        .await
        .map_err(query_err(DOING))
    }

    /// Records that `run_id` uses the dataset `project`/`slug` holding the release `sha256`.
    pub async fn use_dataset(
        &self,
        run_id: &str,
        project: &str,
        slug: &str,
        sha256: &str,
    ) -> Result<()> {
        const DOING: &str = "recording a dataset's use";
        let mut tx = self.begin_run_write(DOING, run_id).await?;
        sqlx::query(
            "INSERT INTO dataset_uses (project, slug, run_id, release_sha256, used_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (project, slug, run_id) \
             DO UPDATE SET release_sha256 = excluded.release_sha256, used_at = excluded.used_at",
        )
        .bind(project)
        .bind(slug)
        .bind(run_id)
        .bind(sha256)
        .bind(time_fmt::now())
        .execute(&mut *tx)
        .await
        .map_err(query_err(DOING))?;
        tx.commit().await.map_err(query_err(DOING))
    }

    /// The runs that used a dataset.
    pub async fn dataset_users(&self, project: &str, slug: &str) -> Result<Vec<DatasetUse>> {
        const DOING: &str = "listing a dataset's users";
        sqlx::query_as(
            "SELECT run_id, release_sha256 FROM dataset_uses WHERE project = $1 AND slug = $2 \
             ORDER BY used_at",
        )
        .bind(project)
        .bind(slug)
        .fetch_all(self.pool())
        .await
        .map_err(query_err(DOING))
    }

    /// The datasets a run used, as (project, slug).
    pub async fn datasets_of(&self, run_id: &str) -> Result<Vec<(String, String)>> {
        const DOING: &str = "listing a run's datasets";
        sqlx::query_as(
            "SELECT project, slug FROM dataset_uses WHERE run_id = $1 ORDER BY project, slug",
        )
        .bind(run_id)
        .fetch_all(self.pool())
        .await
        .map_err(query_err(DOING))
    }
}
