//! The control plane's store: jobs, the nodes of each attempt, and their events, in
//! SQLite through sqlx (one file under `$VOLT_HOME`), with versioned migrations written
//! in SQL that PostgreSQL also runs.
use crate::jobs::{Event, Job, JobStatus, Node, NodeStatus};
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow};
use sqlx::{Row, SqlitePool};
use std::borrow::Cow;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use volt_config::LoadedJob;

/// The migrations, in order, compiled in.
const MIGRATIONS: &[(i64, &str, &str)] = &[(1, "jobs", include_str!("../migrations/0001_jobs.sql"))];

#[derive(Debug)]
struct Embedded;

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(
        self,
    ) -> Pin<
        Box<dyn Future<Output = std::result::Result<Vec<Migration>, sqlx::error::BoxDynError>> + Send + 's>,
    > {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|&(v, name, sql)| {
                    Migration::new(v, Cow::Borrowed(name), MigrationType::Simple, Cow::Borrowed(sql), false)
                })
                .collect())
        })
    }
}

/// What the store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed.
    #[error("the store: {0}")]
    Db(#[from] sqlx::Error),
    /// The migrations could not run (a newer store, or a damaged one).
    #[error("the store's migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row holds what this version cannot read.
    #[error("the store holds {0}")]
    Corrupt(String),
}

type Result<T> = std::result::Result<T, StoreError>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A handle to the store (clones share its pool).
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating it if need be) the SQLite file at `path` and brings it to the
    /// latest migration.
    pub async fn open(path: &Path) -> Result<Store> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
        Migrator::new(Embedded).await?.run(&pool).await?;
        Ok(Store { pool })
    }

    /// Records a new job, `pending`; its id.
    pub async fn insert_job(&self, job: &LoadedJob) -> Result<i64> {
        let spec = serde_json::to_string(job).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let now = now_ms();
        let row = sqlx::query(
            "INSERT INTO jobs (id, name, backend, num_nodes, spec, status, attempt, reason, cancel_requested, \
             created_at, updated_at) \
             SELECT COALESCE(MAX(id), 0) + 1, $1, $2, $3, $4, 'pending', 0, NULL, 0, $5, $5 FROM jobs RETURNING id",
        )
        .bind(&job.spec.name)
        .bind(job.spec.backend.kind.name())
        .bind(job.spec.num_nodes as i64)
        .bind(spec)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("id")?)
    }

    /// Every job, newest first.
    pub async fn jobs(&self) -> Result<Vec<Job>> {
        let rows = sqlx::query("SELECT * FROM jobs ORDER BY id DESC").fetch_all(&self.pool).await?;
        rows.iter().map(job_of).collect()
    }

    /// The jobs the controller drives: pending and running.
    pub async fn active_jobs(&self) -> Result<Vec<Job>> {
        let rows = sqlx::query("SELECT * FROM jobs WHERE status IN ('pending', 'running') ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_of).collect()
    }

    /// One job.
    pub async fn job(&self, id: i64) -> Result<Option<Job>> {
        let row = sqlx::query("SELECT * FROM jobs WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(job_of).transpose()
    }

    /// Sets a job's status, attempt and reason.
    pub async fn set_job(
        &self,
        id: i64,
        status: JobStatus,
        attempt: i64,
        reason: Option<&str>,
    ) -> Result<()> {
        sqlx::query("UPDATE jobs SET status = $1, attempt = $2, reason = $3, updated_at = $4 WHERE id = $5")
            .bind(status.as_str())
            .bind(attempt)
            .bind(reason)
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Asks the controller to cancel a job; false when it is already over.
    pub async fn request_cancel(&self, id: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE jobs SET cancel_requested = 1, updated_at = $1 WHERE id = $2 AND status IN ('pending', 'running')",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a node of an attempt.
    pub async fn insert_node(&self, node: &Node) -> Result<()> {
        sqlx::query(
            "INSERT INTO nodes (job_id, attempt, node_rank, host, handle, status, exit_code, started_at, ended_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(node.job_id)
        .bind(node.attempt)
        .bind(node.rank)
        .bind(&node.host)
        .bind(&node.handle)
        .bind(node.status.as_str())
        .bind(node.exit_code)
        .bind(node.started_at)
        .bind(node.ended_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A job's nodes: of one attempt, or of all, in attempt and rank order.
    pub async fn nodes(&self, job_id: i64, attempt: Option<i64>) -> Result<Vec<Node>> {
        let rows = sqlx::query(
            "SELECT * FROM nodes WHERE job_id = $1 AND ($2 IS NULL OR attempt = $2) ORDER BY attempt, node_rank",
        )
        .bind(job_id)
        .bind(attempt)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(node_of).collect()
    }

    /// The hosts where nodes of jobs other than `except` run now.
    pub async fn busy_hosts(&self, except: i64) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT DISTINCT host FROM nodes WHERE status = 'running' AND job_id <> $1")
            .bind(except)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("host")?)).collect()
    }

    /// Sets a node's status and exit code, and when it ended if it did.
    pub async fn set_node(&self, node: &Node, status: NodeStatus, exit_code: Option<i64>) -> Result<()> {
        let ended = (status != NodeStatus::Running).then(now_ms);
        sqlx::query(
            "UPDATE nodes SET status = $1, exit_code = $2, ended_at = $3 \
             WHERE job_id = $4 AND attempt = $5 AND node_rank = $6",
        )
        .bind(status.as_str())
        .bind(exit_code)
        .bind(ended)
        .bind(node.job_id)
        .bind(node.attempt)
        .bind(node.rank)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Appends an event to a job's history.
    pub async fn event(&self, job_id: i64, attempt: i64, message: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO events (job_id, seq, attempt, at, message) \
             SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4 FROM events WHERE job_id = $1",
        )
        .bind(job_id)
        .bind(attempt)
        .bind(now_ms())
        .bind(message)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A job's events, oldest first.
    pub async fn events(&self, job_id: i64) -> Result<Vec<Event>> {
        let rows = sqlx::query("SELECT * FROM events WHERE job_id = $1 ORDER BY seq")
            .bind(job_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Event {
                    attempt: r.try_get("attempt")?,
                    at: r.try_get("at")?,
                    message: r.try_get("message")?,
                })
            })
            .collect()
    }
}

fn job_of(r: &SqliteRow) -> Result<Job> {
    let status: String = r.try_get("status")?;
    let spec: String = r.try_get("spec")?;
    Ok(Job {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        backend: r.try_get("backend")?,
        num_nodes: r.try_get("num_nodes")?,
        status: JobStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("job status {status:?}")))?,
        attempt: r.try_get("attempt")?,
        reason: r.try_get("reason")?,
        cancel_requested: r.try_get::<i64, _>("cancel_requested")? != 0,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        spec: serde_json::from_str(&spec)
            .map_err(|e| StoreError::Corrupt(format!("a job spec it cannot read: {e}")))?,
    })
}

fn node_of(r: &SqliteRow) -> Result<Node> {
    let status: String = r.try_get("status")?;
    Ok(Node {
        job_id: r.try_get("job_id")?,
        attempt: r.try_get("attempt")?,
        rank: r.try_get("node_rank")?,
        host: r.try_get("host")?,
        handle: r.try_get("handle")?,
        status: NodeStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("node status {status:?}")))?,
        exit_code: r.try_get("exit_code")?,
        started_at: r.try_get("started_at")?,
        ended_at: r.try_get("ended_at")?,
    })
}
