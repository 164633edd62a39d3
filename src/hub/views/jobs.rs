//! `/hub/jobs`: the user's batch jobs. Submit one from a profile and a command (the program
//! and one argument per line: no shell), a list with phase and exit code (the page refreshes
//! itself every 5 s while a job is unfinished), a job's output (`?logs=<job>`), cancel.
//! Submissions go through `hub::jobs`, as the REST API's: the same checks, the same refusals.

use std::collections::BTreeSet;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{Page, PageError, see_other};
use crate::hub::auth::session::{CsrfForm, LoggedIn};
use crate::hub::jobs::{self, JobRequest};
use crate::hub::{HubError, HubState};
use crate::store::{Job, StoreError};

/// Jobs the page lists (the newest).
const PAGE_JOBS: u32 = 50;
/// The end of a job's output the page shows.
const PAGE_LOG_BYTES: usize = 64 * 1024;

#[derive(Serialize)]
struct ProfileOption {
    name: String,
    display_name: String,
}

#[derive(Serialize)]
struct JobRow {
    name: String,
    profile: String,
    command: String,
    pool: String,
    phase: &'static str,
    reason: String,
    exit_code: String,
    created: String,
    active: bool,
}

impl JobRow {
    fn of(job: &Job) -> JobRow {
        JobRow {
            name: job.name.clone(),
            profile: job.profile.clone(),
            command: job.command.join(" "),
            pool: job.node_pool.clone().unwrap_or_default(),
            phase: job.phase.as_str(),
            reason: job.reason.clone().unwrap_or_default(),
            exit_code: job.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            created: job.created.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            active: !job.phase.is_finished(),
        }
    }
}

/// What the form had, shown again after a refusal.
#[derive(Default)]
struct Filled {
    profile: String,
    command: String,
    deadline_seconds: String,
}

async fn jobs_page(
    hub: &HubState,
    me: &LoggedIn,
    logs_of: Option<&str>,
    filled: &Filled,
    error: Option<&str>,
) -> Result<Page, PageError> {
    let groups: BTreeSet<String> = hub
        .store
        .user_groups(me.user.id)
        .await
        .map_err(PageError::unexpected)?
        .into_iter()
        .collect();
    let catalog = hub.config.catalog.get();
    let profiles: Vec<ProfileOption> = if catalog.is_empty() {
        vec![ProfileOption {
            name: hub.config.default_profile.clone(),
            display_name: hub.config.default_profile.clone(),
        }]
    } else {
        catalog
            .choices_for(&groups)
            .into_iter()
            .map(|p| ProfileOption {
                name: p.name,
                display_name: p.display_name,
            })
            .collect()
    };
    let page = hub.store.list_jobs(me.user.id, 0, PAGE_JOBS).await?;
    let rows: Vec<JobRow> = page.items.iter().map(JobRow::of).collect();
    let logs = match logs_of {
        Some(name) => match hub.store.get_job(me.user.id, name).await {
            Ok(job) => Some(jobs::logs(hub, &job, PAGE_LOG_BYTES).await?),
            Err(StoreError::NotFound) => {
                return Err(PageError::not_found("You have no such job."));
            }
            Err(e) => return Err(PageError::unexpected(e)),
        },
        None => None,
    };
    Ok(Page::new("jobs.html")
        .user(&me.user, &me.session)
        .insert("profiles", &profiles)
        .insert("jobs", &rows)
        .insert("active", &rows.iter().any(|r| r.active))
        .insert("logs_of", &logs_of)
        .insert("logs", &logs)
        .insert("profile", &filled.profile)
        .insert("command", &filled.command)
        .insert("deadline_seconds", &filled.deadline_seconds)
        .insert("error", &error))
}

/// `?logs=<job>`.
#[derive(Deserialize)]
pub struct JobsQuery {
    logs: Option<String>,
}

/// `GET /hub/jobs`.
pub async fn page(
    State(hub): State<HubState>,
    me: LoggedIn,
    query: Result<Query<JobsQuery>, QueryRejection>,
) -> Result<Page, PageError> {
    let logs = query.ok().and_then(|Query(q)| q.logs);
    jobs_page(&hub, &me, logs.as_deref(), &Filled::default(), None).await
}

/// The submission form.
#[derive(Deserialize)]
pub struct SubmitForm {
    #[serde(default)]
    profile: String,
    #[serde(default)]
    command: String,
    #[serde(default)]
    deadline_seconds: String,
}

/// `POST /hub/jobs`: submits a job; a refusal shows the form again with the reason (400/403).
pub async fn submit(
    State(hub): State<HubState>,
    form: CsrfForm<SubmitForm>,
) -> Result<Response, PageError> {
    let me = form.logged_in()?;
    let form = form.form;
    let filled = Filled {
        profile: form.profile.clone(),
        command: form.command.clone(),
        deadline_seconds: form.deadline_seconds.clone(),
    };
    let deadline_seconds = match form.deadline_seconds.trim() {
        "" => None,
        s => match s.parse::<i64>() {
            Ok(n) => Some(n),
            Err(_) => {
                let message = "field \"deadline_seconds\": must be a whole number of seconds";
                return refused(&hub, &me, &filled, StatusCode::BAD_REQUEST, message).await;
            }
        },
    };
    let request = JobRequest {
        profile: Some(form.profile.trim().to_owned()).filter(|p| !p.is_empty()),
        command: form
            .command
            .lines()
            .map(|l| l.trim_end_matches('\r').to_owned())
            .filter(|l| !l.is_empty())
            .collect(),
        deadline_seconds,
        ..JobRequest::default()
    };
    match jobs::submit(&hub, &me.user, &me.user.name, request).await {
        Ok(_) => Ok(see_other("/hub/jobs")),
        Err(e @ (HubError::BadRequest(_) | HubError::Forbidden(_))) => {
            let status = e.status();
            refused(&hub, &me, &filled, status, &e.to_string()).await
        }
        Err(e) => Err(e.into()),
    }
}

async fn refused(
    hub: &HubState,
    me: &LoggedIn,
    filled: &Filled,
    status: StatusCode,
    message: &str,
) -> Result<Response, PageError> {
    Ok(jobs_page(hub, me, None, filled, Some(message))
        .await?
        .status(status)
        .into_response())
}

/// `POST /hub/jobs/{job}/cancel`: cancels one of the user's jobs.
pub async fn cancel(
    State(hub): State<HubState>,
    Path(name): Path<String>,
    form: CsrfForm<serde::de::IgnoredAny>,
) -> Result<Response, PageError> {
    let me = form.logged_in()?;
    let job = match hub.store.get_job(me.user.id, &name).await {
        Ok(job) => job,
        Err(StoreError::NotFound) => return Err(PageError::not_found("You have no such job.")),
        Err(e) => return Err(PageError::unexpected(e)),
    };
    match jobs::cancel(&hub, &job, &me.user.name).await {
        Ok(_) | Err(HubError::Conflict(_)) => Ok(see_other("/hub/jobs")),
        Err(e) => Err(e.into()),
    }
}
