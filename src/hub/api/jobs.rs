//! Batch jobs, an Atelier extension of the JupyterHub API (README, "Batch jobs"):
//!
//! - `POST /users/{name}/jobs` (`jobs`): submits (201 with the job model);
//! - `GET /users/{name}/jobs` (`read:jobs`): the user's jobs, newest first, paginated as
//!   `GET /users` (`offset`, `limit`, the pagination envelope with
//!   `Accept: application/jupyterhub-pagination+json`);
//! - `GET /users/{name}/jobs/{job}` (`read:jobs`): one job;
//! - `POST /users/{name}/jobs/{job}/cancel` (`jobs`): cancels it (200 with the model, 409 when
//!   it has finished already);
//! - `GET /users/{name}/jobs/{job}/logs` (`read:jobs`): the end of its output, `text/plain`,
//!   at most `tail` bytes (default 64 KiB, at most 256 KiB).
//!
//! Scopes are checked as for servers: 403 without the scope, 404 when the caller holds it only
//! on other users (another user's jobs are not shown to exist). A submission is checked as
//! `hub::jobs` says; bad input is a 400 (403 for a rule of access) naming the field, and
//! nothing is written.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::models::iso;
use super::{Fields, JsonBody, ListRequest, authorized_user, query_param};
use crate::api::v1alpha1::ResourceRequest;
use crate::hub::auth::Caller;
use crate::hub::jobs::{self, JobRequest, field_error};
use crate::hub::{HubError, HubResult, HubState};
use crate::store::{Job, StoreError};

/// The default of `GET …/logs`: the last 64 KiB.
const DEFAULT_LOG_BYTES: usize = 64 * 1024;

async fn job_of(hub: &HubState, user_id: i64, user: &str, name: &str) -> HubResult<Job> {
    match hub.store.get_job(user_id, name).await {
        Ok(job) => Ok(job),
        Err(StoreError::NotFound) => Err(HubError::NotFound(format!(
            "{user} has no job named {name}"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// `POST /users/{name}/jobs`.
pub async fn submit(
    State(hub): State<HubState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody,
) -> HubResult<(StatusCode, Json<Value>)> {
    let user = authorized_user(&hub, &caller, &name, &["jobs"]).await?;
    let request = parse_request(body.as_ref())?;
    let job = jobs::submit(&hub, &user.detail.user, caller.name(), request).await?;
    Ok((StatusCode::CREATED, Json(job_model(&job))))
}

/// `GET /users/{name}/jobs`.
pub async fn list(
    State(hub): State<HubState>,
    caller: Caller,
    Path(name): Path<String>,
    list: ListRequest,
) -> HubResult<Json<Value>> {
    let user = authorized_user(&hub, &caller, &name, &["read:jobs"]).await?;
    let page = list.page()?;
    let jobs = hub
        .store
        .list_jobs(user.detail.user.id, page.offset, page.limit)
        .await?;
    let items = jobs.items.iter().map(job_model).collect();
    Ok(Json(list.respond(
        &page,
        items,
        jobs.total,
        jobs.next_offset,
    )))
}

/// `GET /users/{name}/jobs/{job}`.
pub async fn get_one(
    State(hub): State<HubState>,
    caller: Caller,
    Path((name, job)): Path<(String, String)>,
) -> HubResult<Json<Value>> {
    let user = authorized_user(&hub, &caller, &name, &["read:jobs"]).await?;
    let job = job_of(&hub, user.detail.user.id, &name, &job).await?;
    Ok(Json(job_model(&job)))
}

/// `POST /users/{name}/jobs/{job}/cancel`.
pub async fn cancel(
    State(hub): State<HubState>,
    caller: Caller,
    Path((name, job)): Path<(String, String)>,
) -> HubResult<Json<Value>> {
    let user = authorized_user(&hub, &caller, &name, &["jobs"]).await?;
    let job = job_of(&hub, user.detail.user.id, &name, &job).await?;
    let job = jobs::cancel(&hub, &job, caller.name()).await?;
    Ok(Json(job_model(&job)))
}

/// `GET /users/{name}/jobs/{job}/logs?tail=<bytes>`.
pub async fn logs(
    State(hub): State<HubState>,
    caller: Caller,
    Path((name, job)): Path<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
) -> HubResult<Response> {
    let user = authorized_user(&hub, &caller, &name, &["read:jobs"]).await?;
    let job = job_of(&hub, user.detail.user.id, &name, &job).await?;
    let limit = match query_param(&query, "tail") {
        Some(t) => t
            .trim()
            .parse::<usize>()
            .map_err(|_| field_error("tail", "must be a number of bytes"))?
            .min(jobs::MAX_LOG_BYTES),
        None => DEFAULT_LOG_BYTES,
    };
    let text = jobs::logs(&hub, &job, limit).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

/// Reads a submission's JSON body: 400 naming the field for an unknown field, a missing or
/// malformed command (not a list of strings), or a field of the wrong type.
pub fn parse_request(body: Option<&Value>) -> HubResult<JobRequest> {
    let body = body.ok_or_else(|| field_error("command", "a job needs a command"))?;
    let fields = Fields::of("the job", body)?;
    fields.only(&jobs::FIELDS)?;
    let command = match fields.value("command") {
        None => {
            return Err(field_error(
                "command",
                "a job needs a command (a list of strings)",
            ));
        }
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| field_error("command", "must be a list of strings"))
            })
            .collect::<HubResult<Vec<_>>>()?,
        Some(_) => {
            return Err(field_error(
                "command",
                "must be a list of strings (the program and its arguments, no shell)",
            ));
        }
    };
    let resources = match fields.opt_object("resources")? {
        None => None,
        Some(m) => Some(
            serde_json::from_value::<ResourceRequest>(Value::Object(m.clone()))
                .map_err(|e| field_error("resources", e))?,
        ),
    };
    let env = match fields.opt_object("env")? {
        None => BTreeMap::new(),
        Some(m) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(field_error(
                    "env",
                    format!("the value of {k} must be a string"),
                )),
            })
            .collect::<HubResult<_>>()?,
    };
    if let Some(bad) = env
        .keys()
        .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
    {
        return Err(field_error(
            "env",
            format!("{bad:?} is not a variable name"),
        ));
    }
    Ok(JobRequest {
        profile: fields.opt_str("profile")?.map(str::to_owned),
        command,
        resources,
        node_pool: fields.opt_str("node_pool")?.map(str::to_owned),
        data_sources: fields.opt_str_list("data_sources")?.unwrap_or_default(),
        env,
        working_dir: fields.opt_str("working_dir")?.map(str::to_owned),
        deadline_seconds: fields.opt_i64("deadline_seconds")?,
    })
}

/// A job as the API shows it.
pub fn job_model(job: &Job) -> Value {
    let mut spec = Map::new();
    if let Value::Object(s) = &job.spec {
        for (ours, theirs) in [
            ("resources", "resources"),
            ("node_pool", "nodePool"),
            ("data_sources", "dataSources"),
            ("env", "env"),
            ("working_dir", "workingDir"),
            ("deadline_seconds", "deadlineSeconds"),
        ] {
            spec.insert(ours.into(), s.get(theirs).cloned().unwrap_or(Value::Null));
        }
    }
    let time = iso;
    json!({
        "kind": "job",
        "name": job.name,
        "user": job.user_name,
        "profile": job.profile,
        "command": job.command,
        "resources": spec.get("resources"),
        "node_pool": job.node_pool,
        "data_sources": spec.get("data_sources"),
        "env": spec.get("env"),
        "working_dir": spec.get("working_dir"),
        "deadline_seconds": spec.get("deadline_seconds"),
        "phase": job.phase.as_str(),
        "system": job.system,
        "system_id": job.system_id,
        "exit_code": job.exit_code,
        "reason": job.reason,
        "message": job.message,
        "cancel_requested": job.cancel_requested,
        "created": time(Some(job.created)),
        "started": time(job.started),
        "finished": time(job.finished),
    })
}
