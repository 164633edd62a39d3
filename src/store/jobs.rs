//! Users' batch jobs: what was submitted (the BatchJob spec, as JSON) and what the batch system
//! last said of it.
//!
//! A finished job (Succeeded, Failed, Cancelled) is final: [`Store::update_job`] changes only
//! unfinished rows, in one conditional statement, so that two hub processes polling the same
//! job cannot move it back.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::{Result, Store, StoreError, check_limit, from_json, now, on_pool, to_json, ts};
use crate::api::v1alpha1::BatchJobPhase;

/// The phases of a job that may still change.
const ACTIVE: &str = "('Pending', 'Queued', 'Running')";

/// A batch job as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    pub id: i64,
    /// The BatchJob name (an RFC 1123 label).
    pub name: String,
    pub user_id: i64,
    /// The owner's name.
    pub user_name: String,
    pub profile: String,
    /// Program and arguments.
    pub command: Vec<String>,
    /// The submitted `BatchJobSpec`, as JSON (camelCase).
    pub spec: Value,
    /// The pool the job was placed on.
    pub node_pool: Option<String>,
    pub phase: BatchJobPhase,
    /// `kubernetes`, `slurm` or `local`.
    pub system: String,
    /// The system's id of the job.
    pub system_id: Option<String>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub message: Option<String>,
    /// The owner or an admin asked for a cancel.
    pub cancel_requested: bool,
    /// The local process (its group leader).
    pub pid: Option<i64>,
    pub created: DateTime<Utc>,
    pub started: Option<DateTime<Utc>>,
    pub finished: Option<DateTime<Utc>>,
}

/// A job to create.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub name: String,
    pub user_id: i64,
    pub profile: String,
    pub command: Vec<String>,
    /// A JSON object.
    pub spec: Value,
    pub node_pool: Option<String>,
    pub system: String,
}

/// What the batch system said of a job: every field is written (a `None` clears).
#[derive(Debug, Clone, PartialEq)]
pub struct JobUpdate {
    pub phase: BatchJobPhase,
    pub system_id: Option<String>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub pid: Option<i64>,
    pub started: Option<DateTime<Utc>>,
    pub finished: Option<DateTime<Utc>>,
}

/// A page of a user's jobs, newest first.
#[derive(Debug, Clone)]
pub struct JobPage {
    pub items: Vec<Job>,
    /// The user's jobs on all pages.
    pub total: u64,
    /// The offset of the next page; `None` on the last page.
    pub next_offset: Option<u64>,
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: i64,
    name: String,
    user_id: i64,
    user_name: String,
    profile: String,
    command: String,
    spec: String,
    node_pool: Option<String>,
    phase: String,
    system: String,
    system_id: Option<String>,
    exit_code: Option<i64>,
    reason: Option<String>,
    message: Option<String>,
    cancel_requested: bool,
    pid: Option<i64>,
    created: DateTime<Utc>,
    started: Option<DateTime<Utc>>,
    finished: Option<DateTime<Utc>>,
}

/// `BatchJobPhase` of its name.
pub fn parse_phase(s: &str) -> Option<BatchJobPhase> {
    use BatchJobPhase::*;
    [Pending, Queued, Running, Succeeded, Failed, Cancelled]
        .into_iter()
        .find(|p| p.as_str() == s)
}

impl JobRow {
    fn into_model(self) -> Result<Job> {
        Ok(Job {
            phase: parse_phase(&self.phase)
                .ok_or_else(|| super::error::corrupt("jobs.phase", &self.phase))?,
            command: from_json("jobs.command", &self.command)?,
            spec: from_json("jobs.spec", &self.spec)?,
            exit_code: self.exit_code.and_then(|c| i32::try_from(c).ok()),
            id: self.id,
            name: self.name,
            user_id: self.user_id,
            user_name: self.user_name,
            profile: self.profile,
            node_pool: self.node_pool,
            system: self.system,
            system_id: self.system_id,
            reason: self.reason,
            message: self.message,
            cancel_requested: self.cancel_requested,
            pid: self.pid,
            created: self.created,
            started: self.started,
            finished: self.finished,
        })
    }
}

/// Columns of a job with its owner's name.
const SELECT: &str = "SELECT j.id, j.name, j.user_id, u.name AS user_name, j.profile, j.command, \
     j.spec, j.node_pool, j.phase, j.system, j.system_id, j.exit_code, j.reason, j.message, \
     j.cancel_requested, j.pid, j.created, j.started, j.finished \
     FROM jobs j JOIN users u ON u.id = j.user_id";

impl Store {
    /// Creates a Pending job. `Conflict` when the name is taken; `NotFound` without the user.
    pub async fn create_job(&self, job: &NewJob) -> Result<Job> {
        if !job.spec.is_object() {
            return Err(StoreError::Invalid("job spec must be a JSON object".into()));
        }
        let command = to_json(&job.command)?;
        let spec = to_json(&job.spec)?;
        let id: i64 = on_pool!(self, p => sqlx::query_scalar(
            "INSERT INTO jobs (name, user_id, profile, command, spec, node_pool, system, created) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(&job.name)
        .bind(job.user_id)
        .bind(&job.profile)
        .bind(&command)
        .bind(&spec)
        .bind(&job.node_pool)
        .bind(&job.system)
        .bind(now())
        .fetch_one(p)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::NotFound,
            _ => super::error::conflict_as(e, || format!("a job named {} exists", job.name)),
        })?);
        self.get_job_by_id(id).await
    }

    /// The job of row `id`.
    pub async fn get_job_by_id(&self, id: i64) -> Result<Job> {
        let sql = format!("{SELECT} WHERE j.id = $1");
        on_pool!(self, p => sqlx::query_as::<_, JobRow>(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(p)
            .await?)
        .ok_or(StoreError::NotFound)?
        .into_model()
    }

    /// User `user_id`'s job `name`: `NotFound` when the job is another user's.
    pub async fn get_job(&self, user_id: i64, name: &str) -> Result<Job> {
        let sql = format!("{SELECT} WHERE j.user_id = $1 AND j.name = $2");
        on_pool!(self, p => sqlx::query_as::<_, JobRow>(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(name)
            .fetch_optional(p)
            .await?)
        .ok_or(StoreError::NotFound)?
        .into_model()
    }

    /// A page of user `user_id`'s jobs, newest first: two statements whatever its size.
    pub async fn list_jobs(&self, user_id: i64, offset: u64, limit: u32) -> Result<JobPage> {
        let limit_i = check_limit(limit)?;
        let offset_i = i64::try_from(offset).unwrap_or(i64::MAX);
        let sql = format!(
            "{SELECT} WHERE j.user_id = $1 ORDER BY j.id DESC LIMIT CAST($2 AS BIGINT) OFFSET $3"
        );
        let rows = on_pool!(self, p => sqlx::query_as::<_, JobRow>(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(limit_i)
            .bind(offset_i)
            .fetch_all(p)
            .await?);
        let total: i64 = on_pool!(self, p => sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_one(p)
        .await?);
        let total = u64::try_from(total).unwrap_or(0);
        let items = rows
            .into_iter()
            .map(JobRow::into_model)
            .collect::<Result<Vec<_>>>()?;
        let end = offset + items.len() as u64;
        Ok(JobPage {
            next_offset: (end < total).then_some(end),
            items,
            total,
        })
    }

    /// Unfinished jobs (Pending, Queued, Running) by id after `after_id`: the hub's poll.
    pub async fn list_active_jobs(&self, after_id: Option<i64>, limit: u32) -> Result<Vec<Job>> {
        let limit = check_limit(limit)?;
        let sql = format!(
            "{SELECT} WHERE j.phase IN {ACTIVE} AND j.id > $1 ORDER BY j.id LIMIT CAST($2 AS BIGINT)"
        );
        on_pool!(self, p => sqlx::query_as::<_, JobRow>(sqlx::AssertSqlSafe(sql))
            .bind(after_id.unwrap_or(0))
            .bind(limit)
            .fetch_all(p)
            .await?)
        .into_iter()
        .map(JobRow::into_model)
        .collect()
    }

    /// The unfinished jobs on `pool` (the pool recorded at submit), by id after `after_id`:
    /// those a new job on that pool shares its caps with.
    pub async fn list_active_jobs_on_pool(
        &self,
        pool: &str,
        after_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Job>> {
        let limit = check_limit(limit)?;
        let sql = format!(
            "{SELECT} WHERE j.phase IN {ACTIVE} AND j.node_pool = $3 AND j.id > $1 \
             ORDER BY j.id LIMIT CAST($2 AS BIGINT)"
        );
        on_pool!(self, p => sqlx::query_as::<_, JobRow>(sqlx::AssertSqlSafe(sql))
            .bind(after_id.unwrap_or(0))
            .bind(limit)
            .bind(pool)
            .fetch_all(p)
            .await?)
        .into_iter()
        .map(JobRow::into_model)
        .collect()
    }

    /// Writes what the batch system said of an unfinished job. `Conflict` when the job is
    /// already finished (its state is final), `NotFound` without it.
    pub async fn update_job(&self, id: i64, update: &JobUpdate) -> Result<Job> {
        let sql = format!(
            "UPDATE jobs SET phase = $2, system_id = $3, exit_code = $4, reason = $5, \
             message = $6, pid = $7, started = $8, finished = $9 \
             WHERE id = $1 AND phase IN {ACTIVE}"
        );
        let updated = on_pool!(self, p => sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(update.phase.as_str())
            .bind(&update.system_id)
            .bind(update.exit_code.map(i64::from))
            .bind(&update.reason)
            .bind(&update.message)
            .bind(update.pid)
            .bind(update.started.map(ts))
            .bind(update.finished.map(ts))
            .execute(p)
            .await?
            .rows_affected());
        let job = self.get_job_by_id(id).await?;
        if updated == 0 {
            return Err(StoreError::Conflict(format!(
                "job {} is {}: its state is final",
                job.name,
                job.phase.as_str()
            )));
        }
        Ok(job)
    }

    /// Records that a cancel was asked for (the job keeps its phase until the system stops
    /// it). `Conflict` when the job is already finished.
    pub async fn request_job_cancel(&self, id: i64) -> Result<Job> {
        let sql =
            format!("UPDATE jobs SET cancel_requested = TRUE WHERE id = $1 AND phase IN {ACTIVE}");
        let updated = on_pool!(self, p => sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .execute(p)
            .await?
            .rows_affected());
        let job = self.get_job_by_id(id).await?;
        if updated == 0 {
            return Err(StoreError::Conflict(format!(
                "job {} is {}: it cannot be cancelled",
                job.name,
                job.phase.as_str()
            )));
        }
        Ok(job)
    }
}
