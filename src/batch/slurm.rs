//! Slurm through slurmrestd: REST API v0.0.38 (Slurm 22.05), JWT authentication.
//!
//! - **submit**: `POST /slurm/v0.0.38/job/submit` with a `#!/bin/sh` script that `exec`s the
//!   shell-quoted command, in the pool's partition (and account), the job's working directory and
//!   environment (v0.0.38 takes it as a map and refuses a job without one), CPUs per task and
//!   memory per node rounded up (whole CPUs, MiB), GPUs as `gres` (`gpu:N`, `gpu:<type>:N`), the
//!   walltime in minutes rounded up from `deadlineSeconds`, and one output file for stdout and
//!   stderr (Slurm sends stderr to the output file when no error file is named). The job's
//!   `comment` ties it to its BatchJob (`atelier:<namespace>/<name>/<uid>`): a submit finds a
//!   job already submitted for the same BatchJob and returns its id instead of running it twice,
//!   and status, cancel and logs answer [`BatchError::NotFound`] for a job that is not this
//!   BatchJob's (an id can never reach another user's job, even under a fixed user mapping).
//! - **status**: `GET /slurm/v0.0.38/job/{id}`, mapped by [`job_state`].
//! - **cancel**: `DELETE /slurm/v0.0.38/job/{id}` (SIGKILL to the whole job), unless finished.
//! - **logs**: the tail of the job's output file, read where Slurm wrote it: Atelier must see the
//!   cluster's shared filesystem at the same path; otherwise the error says where the file is.
//!
//! Every request carries `X-SLURM-USER-NAME` (the mapped user) and `X-SLURM-USER-TOKEN`, an
//! HS256 JWT signed here with the cluster's `jwt_key` for that user (claims `exp`, `iat`, `sun`,
//! as `scontrol token` makes them), valid [`TOKEN_LIFETIME_SECONDS`]. The key and the tokens are
//! never logged (`Slurm`'s `Debug` leaves the key out). Every request is bounded by
//! [`REQUEST_TIMEOUT`].
//!
//! How Slurm 22.05's slurmrestd answers errors, as seen from a real one (tests/slurm.rs): a
//! missing token is an HTTP 401; a token slurmctld rejects is an HTTP 500 whose `errors` hold
//! 5005 ("Zero Bytes were transmitted or received": slurmctld hung up) from submit and kill, but
//! `-1` ("Unspecified error") from every read, which is also what a read answers when slurmctld
//! is down (submit and kill then say 1800, "Unable to contact slurm controller"): a read's `-1`
//! is decided by a kill of job 0, which never exists (`Slurm::disambiguate`). An unknown job id
//! is 2017 (`ESLURM_INVALID_JOB_ID`); a refused job is any other error number with Slurm's text
//! ("Invalid partition name specified"; slurmrestd's own "Failure during parsing", 9001, names
//! the field only in its log).

use std::fmt;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use hmac::{Hmac, Mac};
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::Sha256;

use super::{BatchError, BatchSystem, JobState};
use crate::api::v1alpha1::BatchJobPhase;
use crate::policy::batch::{BatchTarget, SlurmTarget, ValidatedBatchJob};
use crate::policy::quantity::{parse_bytes, parse_cpu_millis};

/// The status's `system`.
pub const SYSTEM: &str = "slurm";
/// The slurmrestd API version spoken here (Slurm 22.05).
pub const API_VERSION: &str = "v0.0.38";
/// How long a token signed for one request stays valid.
pub const TOKEN_LIFETIME_SECONDS: i64 = 300;
/// Bound on one request, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on connecting.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read from slurmrestd.
const MAX_BODY: usize = 16 << 20;
/// `PATH` of a job whose environment names none (slurmrestd passes only what it is given).
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Slurm error numbers (slurm_errno.h) the mapping distinguishes.
mod errno {
    /// `ESLURM_INVALID_JOB_ID`.
    pub const INVALID_JOB_ID: i64 = 2017;
    /// `SLURM_PROTOCOL_AUTHENTICATION_ERROR`.
    pub const AUTHENTICATION: i64 = 1007;
    /// `SLURM_PROTOCOL_SOCKET_ZERO_BYTES_SENT`: slurmctld hung up (a rejected credential).
    pub const ZERO_BYTES: i64 = 5005;
    /// What slurmrestd 22.05 reports when slurmctld rejects the token on a read.
    pub const UNSPECIFIED: i64 = -1;
    /// `SLURM_COMMUNICATIONS_*` and `SLURMCTLD_COMMUNICATIONS_*`: slurmctld did not answer.
    pub fn unreachable(n: i64) -> bool {
        (1000..=1006).contains(&n) || (1800..=1899).contains(&n) || n == 5004
    }
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A Slurm partition behind slurmrestd, for one mapped user (a [`SlurmTarget`]).
pub struct Slurm {
    base: String,
    target: SlurmTarget,
    key: Vec<u8>,
    client: HttpClient,
}

impl fmt::Debug for Slurm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slurm")
            .field("base", &self.base)
            .field("partition", &self.target.partition)
            .field("user", &self.target.user)
            .finish_non_exhaustive()
    }
}

fn other(message: impl Into<String>) -> BatchError {
    BatchError::Other {
        system: SYSTEM,
        message: message.into(),
    }
}

impl Slurm {
    /// A client of `target.rest_url` signing its tokens with `jwt_key` (the content of the
    /// cluster's `jwt_key=` file). Fails on a URL that is not `http(s)://host[:port][/prefix]`
    /// or an empty key.
    pub fn new(target: &SlurmTarget, jwt_key: Vec<u8>) -> Result<Slurm, BatchError> {
        let base = target.rest_url.trim_end_matches('/').to_owned();
        let uri: Uri = base
            .parse()
            .map_err(|e| other(format!("slurm.restUrl {base:?} is not a URL: {e}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
            return Err(other(format!(
                "slurm.restUrl {base:?} must be an http:// or https:// URL with a host"
            )));
        }
        if uri.query().is_some() {
            return Err(other(format!(
                "slurm.restUrl {base:?} must not have a query"
            )));
        }
        if jwt_key.is_empty() {
            return Err(other(format!(
                "the JWT key of Secret {} (key {}) is empty",
                target.token_secret.name, target.token_secret.key
            )));
        }
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.enforce_http(false);
        // The system's roots where it has some, else Mozilla's (a minimal image has none).
        let tls = HttpsConnectorBuilder::new()
            .with_native_roots()
            .unwrap_or_else(|_| HttpsConnectorBuilder::new().with_webpki_roots());
        let connector = tls.https_or_http().enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Slurm {
            base,
            target: target.clone(),
            key: jwt_key,
            client,
        })
    }

    fn check_target(&self, job: &ValidatedBatchJob) -> Result<(), BatchError> {
        match &job.target {
            BatchTarget::Slurm(t)
                if t.rest_url.trim_end_matches('/') == self.base
                    && t.partition == self.target.partition
                    && t.user == self.target.user =>
            {
                Ok(())
            }
            _ => Err(other(format!(
                "BatchJob {}/{} does not run on this Slurm partition ({} at {}, as {})",
                job.namespace, job.name, self.target.partition, self.base, self.target.user
            ))),
        }
    }

    /// One request to slurmrestd: the status and the body (JSON or text), within
    /// [`REQUEST_TIMEOUT`].
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Bytes), BatchError> {
        let url = format!("{}/slurm/{API_VERSION}{path}", self.base);
        let token = sign_token(
            &self.key,
            &self.target.user,
            Utc::now().timestamp(),
            TOKEN_LIFETIME_SECONDS,
        );
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let request = Request::builder()
            .method(method.clone())
            .uri(&url)
            .header(header::ACCEPT, "application/json")
            .header(header::CONTENT_TYPE, "application/json")
            .header("X-SLURM-USER-NAME", &self.target.user)
            .header("X-SLURM-USER-TOKEN", token)
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| other(format!("cannot build the request {method} {url}: {e}")))?;
        tracing::debug!(%method, %url, user = %self.target.user, "slurmrestd request");
        let exchange = async {
            let response =
                self.client
                    .request(request)
                    .await
                    .map_err(|e| BatchError::Unreachable {
                        system: SYSTEM,
                        message: format!("{method} {url}: {e}"),
                    })?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| BatchError::Unreachable {
                    system: SYSTEM,
                    message: format!("{method} {url}: reading the answer: {e}"),
                })?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| BatchError::Unreachable {
                system: SYSTEM,
                message: format!(
                    "{method} {url}: no answer within {} s",
                    REQUEST_TIMEOUT.as_secs()
                ),
            })?
    }

    /// A call whose answer must be free of errors, parsed as `T`.
    async fn call_ok<T: for<'de> Deserialize<'de>>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        op: Op<'_>,
    ) -> Result<T, BatchError> {
        let (status, bytes) = self.call(method.clone(), path, body).await?;
        let answer: Result<Answer, _> = serde_json::from_slice(&bytes);
        match answer {
            Ok(a) if status.is_success() && a.errors.is_empty() => serde_json::from_slice(&bytes)
                .map_err(|e| {
                    other(format!(
                        "{method} {path}: slurmrestd's answer does not parse: {e}"
                    ))
                }),
            Ok(a) if method == Method::GET && ambiguous(&a.errors) => {
                Err(self.disambiguate(classify(status, &a.errors, op)).await)
            }
            Ok(a) => Err(classify(status, &a.errors, op)),
            Err(_) => Err(classify_text(status, &bytes, op)),
        }
    }

    /// Slurm 22.05's reads answer `-1` both when slurmctld is down and when it rejects the
    /// token; its kill RPC tells them apart (1800: not contacted; 5005: hung up on the
    /// credential; 2017: both fine). So the answer to a kill of job 0, which never exists,
    /// decides between [`BatchError::Unreachable`] and [`BatchError::Unauthorized`].
    async fn disambiguate(&self, read_error: BatchError) -> BatchError {
        let probe = self.call(Method::DELETE, "/job/0", None).await;
        let (status, bytes) = match probe {
            Ok(answer) => answer,
            Err(e) => return e,
        };
        let errors = serde_json::from_slice::<Answer>(&bytes)
            .map(|a| a.errors)
            .unwrap_or_default();
        if errors
            .iter()
            .any(|e| e.error_number == errno::INVALID_JOB_ID)
        {
            return read_error;
        }
        match classify(status, &errors, Op::Probe) {
            BatchError::Other { .. } => read_error,
            decided => decided,
        }
    }

    /// The job `id` as Slurm reports it, if it is this BatchJob's (else NotFound).
    async fn owned_job(&self, job: &ValidatedBatchJob, id: &str) -> Result<JobInfo, BatchError> {
        self.check_target(job)?;
        let not_found = || BatchError::NotFound {
            system: SYSTEM,
            id: id.to_owned(),
        };
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(not_found());
        }
        let jobs: Jobs = self
            .call_ok(Method::GET, &format!("/job/{id}"), None, Op::Job(id))
            .await?;
        let expected = job_comment(job);
        jobs.jobs
            .into_iter()
            .find(|j| j.job_id.to_string() == id)
            .filter(|j| j.comment == expected && j.user_name == self.target.user)
            .ok_or_else(not_found)
    }

    /// A job already submitted for this BatchJob (same comment and user), if Slurm still knows
    /// it: the newest.
    async fn submitted(&self, job: &ValidatedBatchJob) -> Result<Option<i64>, BatchError> {
        let jobs: Jobs = self.call_ok(Method::GET, "/jobs", None, Op::List).await?;
        let expected = job_comment(job);
        Ok(jobs
            .jobs
            .iter()
            .filter(|j| j.comment == expected && j.user_name == self.target.user)
            .map(|j| j.job_id)
            .max())
    }
}

/// What a request was for, to name the error.
#[derive(Clone, Copy, Debug)]
enum Op<'a> {
    Submit,
    Probe,
    List,
    Job(&'a str),
}

impl BatchSystem for Slurm {
    fn system(&self) -> &'static str {
        SYSTEM
    }

    fn submit<'a>(
        &'a self,
        job: &'a ValidatedBatchJob,
    ) -> BoxFuture<'a, Result<String, BatchError>> {
        Box::pin(async move {
            self.check_target(job)?;
            let body = submit_request(job, &self.target)?;
            if let Some(id) = self.submitted(job).await? {
                tracing::info!(job = %job.name, namespace = %job.namespace, id, "already submitted to Slurm");
                return Ok(id.to_string());
            }
            let answer: Submitted = self
                .call_ok(Method::POST, "/job/submit", Some(&body), Op::Submit)
                .await?;
            let id = answer
                .job_id
                .ok_or_else(|| other("slurmrestd accepted the job but gave no job_id"))?;
            tracing::info!(job = %job.name, namespace = %job.namespace, id, partition = %self.target.partition, "submitted to Slurm");
            Ok(id.to_string())
        })
    }

    fn status<'a>(
        &'a self,
        job: &'a ValidatedBatchJob,
        id: &'a str,
    ) -> BoxFuture<'a, Result<JobState, BatchError>> {
        Box::pin(async move { job_state(&self.owned_job(job, id).await?) })
    }

    fn cancel<'a>(
        &'a self,
        job: &'a ValidatedBatchJob,
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), BatchError>> {
        Box::pin(async move {
            let info = self.owned_job(job, id).await?;
            if job_state(&info)?.phase.is_finished() {
                return Ok(());
            }
            let _: Answer = self
                .call_ok(Method::DELETE, &format!("/job/{id}"), None, Op::Job(id))
                .await?;
            tracing::info!(job = %job.name, namespace = %job.namespace, id, "cancelled in Slurm");
            Ok(())
        })
    }

    fn logs<'a>(
        &'a self,
        job: &'a ValidatedBatchJob,
        id: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<String, BatchError>> {
        Box::pin(async move {
            let info = self.owned_job(job, id).await?;
            let path = output_path(&info).ok_or_else(|| {
                other(format!(
                    "Slurm job {id} names no output file Atelier can locate (standard_output {:?}, working directory {:?})",
                    info.standard_output, info.current_working_directory
                ))
            })?;
            let owner = info.user_id;
            tokio::task::spawn_blocking(move || tail(&path, limit, owner))
                .await
                .map_err(|e| other(format!("reading the output of Slurm job {id}: {e}")))?
        })
    }
}

/// The body of `POST /slurm/v0.0.38/job/submit` for `job` on `target`.
pub fn submit_request(job: &ValidatedBatchJob, target: &SlurmTarget) -> Result<Value, BatchError> {
    let mut environment: Map<String, Value> = job
        .env
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    environment
        .entry("PATH")
        .or_insert_with(|| Value::String(DEFAULT_PATH.to_owned()));
    environment.insert(
        "ATELIER_BATCHJOB".to_owned(),
        Value::String(format!("{}/{}", job.namespace, job.name)),
    );
    let cpu_millis =
        parse_cpu_millis(&job.resources.cpu).map_err(|e| other(format!("resources.cpu: {e}")))?;
    let memory =
        parse_bytes(&job.resources.memory).map_err(|e| other(format!("resources.memory: {e}")))?;
    let mut properties = json!({
        "name": job.name,
        "comment": job_comment(job),
        "partition": target.partition,
        "environment": environment,
        "cpus_per_task": cpus(cpu_millis),
        "standard_output": output_file(job, target),
    });
    let p = properties.as_object_mut().expect("an object");
    if memory > 0 {
        p.insert("memory_per_node".into(), json!(mebibytes(memory)));
    }
    if let Some(account) = &target.account {
        p.insert("account".into(), json!(account));
    }
    if let Some(dir) = &target.working_dir {
        p.insert("current_working_directory".into(), json!(dir));
    }
    if let Some(gres) = gres(job.resources.gpus, job.resources.gpu_type.as_deref()) {
        p.insert("gres".into(), json!(gres));
    }
    if let Some(seconds) = job.deadline_seconds {
        p.insert("time_limit".into(), json!(minutes(seconds)));
    }
    Ok(json!({"script": script(&job.command), "job": properties}))
}

/// `atelier:<namespace>/<name>/<uid>`: the job's Slurm `comment`, which ties it to its BatchJob.
pub fn job_comment(job: &ValidatedBatchJob) -> String {
    format!("atelier:{}/{}/{}", job.namespace, job.name, job.uid)
}

/// The output file given at submit: `<working dir>/atelier-<name>-%j.out` (`%j`, the job id, is
/// Slurm's), relative to Slurm's default directory (the user's home) when there is none.
pub fn output_file(job: &ValidatedBatchJob, target: &SlurmTarget) -> String {
    let file = format!("atelier-{}-%j.out", job.name);
    match &target.working_dir {
        Some(dir) => format!("{}/{file}", dir.trim_end_matches('/')),
        None => file,
    }
}

/// The batch script: `exec` of the shell-quoted command, so that the command is the job's
/// process and its exit code the job's.
pub fn script(command: &[String]) -> String {
    let words: Vec<String> = command.iter().map(|a| shell_quote(a)).collect();
    format!("#!/bin/sh\nexec {}\n", words.join(" "))
}

/// `s` as one POSIX shell word: plain when it holds only safe characters, else single-quoted.
pub fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Whole CPUs for `millis` milli-CPUs, rounded up, at least 1.
pub fn cpus(millis: i64) -> i64 {
    ((millis + 999) / 1000).max(1)
}

/// MiB for `bytes`, rounded up.
pub fn mebibytes(bytes: i64) -> i64 {
    (bytes + (1 << 20) - 1) >> 20
}

/// Minutes for `seconds`, rounded up, at least 1 (Slurm's `time_limit`).
pub fn minutes(seconds: i64) -> i64 {
    ((seconds + 59) / 60).max(1)
}

/// The `gres` of `gpus` GPUs of `gpu_type`: `gpu:N`, `gpu:<type>:N`; none for no GPU.
pub fn gres(gpus: i32, gpu_type: Option<&str>) -> Option<String> {
    (gpus > 0).then(|| match gpu_type {
        Some(t) if !t.is_empty() => format!("gpu:{t}:{gpus}"),
        _ => format!("gpu:{gpus}"),
    })
}

/// An HS256 JWT for Slurm user `user`, issued at `now` (Unix seconds), valid `lifetime` seconds:
/// header `{"alg":"HS256","typ":"JWT"}`, claims `{"exp","iat","sun"}`, as `scontrol token`.
pub fn sign_token(key: &[u8], user: &str, now: i64, lifetime: i64) -> String {
    let header = base64url(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = json!({"exp": now + lifetime, "iat": now, "sun": user}).to_string();
    let input = format!("{header}.{}", base64url(claims.as_bytes()));
    let signature = hs256(key, &input);
    format!("{input}.{signature}")
}

/// The base64url HMAC-SHA256 of `input` under `key` (a JWS signature).
pub fn hs256(key: &[u8], input: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(input.as_bytes());
    base64url(&mac.finalize().into_bytes())
}

/// Base64url without padding (RFC 4648 §5, as JWS uses it).
pub fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// The errors of an answer (`error_number` in most, `error_code` in submit's).
#[derive(Debug, Default, Deserialize)]
struct Answer {
    #[serde(default)]
    errors: Vec<SlurmError>,
}

#[derive(Debug, Default, Deserialize)]
struct SlurmError {
    #[serde(default)]
    error: String,
    #[serde(default, alias = "error_code", alias = "errno")]
    error_number: i64,
    #[serde(default)]
    description: String,
}

impl fmt::Display for SlurmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.error.is_empty(), self.description.is_empty()) {
            (_, false) if self.description != self.error => write!(
                f,
                "{} ({}, error {})",
                self.description, self.error, self.error_number
            ),
            _ => write!(f, "{} (error {})", self.error, self.error_number),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Submitted {
    job_id: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct Jobs {
    #[serde(default)]
    jobs: Vec<JobInfo>,
}

/// What `GET /slurm/v0.0.38/job/{id}` says of a job (the fields read here).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct JobInfo {
    /// Slurm's job id.
    pub job_id: i64,
    /// `PENDING`, `RUNNING`, `COMPLETED`, `FAILED`, `CANCELLED`…
    pub job_state: String,
    /// The batch script's wait status (`exit << 8`, or the signal in the low 7 bits).
    pub exit_code: Option<i64>,
    /// Unix seconds; 0 when unset, a forecast while pending.
    pub start_time: i64,
    /// Unix seconds; 0 when unset, the time limit's end while running.
    pub end_time: i64,
    /// The nodes (a hostlist).
    pub nodes: String,
    /// Why it is in its state (`None`, `Resources`, `NonZeroExitCode`, `TimeLimit`…).
    pub state_reason: String,
    /// More words on the state.
    pub state_description: String,
    /// The job's comment (Atelier's [`job_comment`]).
    pub comment: String,
    /// Who runs it.
    pub user_name: String,
    /// Its uid.
    pub user_id: Option<u32>,
    /// Output file as given (`%j` not replaced).
    pub standard_output: String,
    /// Working directory.
    pub current_working_directory: String,
}

/// A Slurm job's state in Atelier's words (see the table in the tests): PENDING and the requeue
/// states are Queued; RUNNING, CONFIGURING, COMPLETING, SUSPENDED and the other live states are
/// Running; COMPLETED is Succeeded; FAILED, OUT_OF_MEMORY (`OOMKilled`), NODE_FAIL, TIMEOUT and
/// DEADLINE (`DeadlineExceeded`), BOOT_FAIL and PREEMPTED are Failed; CANCELLED is Cancelled. A
/// finished job's exit code is the command's, or 128 + the signal that killed it.
pub fn job_state(info: &JobInfo) -> Result<JobState, BatchError> {
    use BatchJobPhase::*;
    let state = info
        .job_state
        .split([' ', ','])
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    let (phase, reason) = match state.as_str() {
        "PENDING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "RESV_DEL_HOLD" => (Queued, None),
        "RUNNING" | "CONFIGURING" | "COMPLETING" | "RESIZING" | "SIGNALING" | "STAGE_OUT"
        | "STOPPED" => (Running, None),
        "SUSPENDED" => (Running, Some("Suspended")),
        "COMPLETED" => (Succeeded, None),
        "FAILED" => (Failed, Some("Failed")),
        "OUT_OF_MEMORY" => (Failed, Some("OOMKilled")),
        "NODE_FAIL" => (Failed, Some("NodeFail")),
        "TIMEOUT" | "DEADLINE" => (Failed, Some("DeadlineExceeded")),
        "BOOT_FAIL" => (Failed, Some("BootFail")),
        "PREEMPTED" => (Failed, Some("Preempted")),
        "CANCELLED" => (Cancelled, Some("Cancelled")),
        other_state => {
            return Err(other(format!(
                "Slurm job {} is in state {other_state:?}, which Atelier does not know",
                info.job_id
            )));
        }
    };
    let finished = phase.is_finished();
    let time = |t: i64| {
        (t > 0)
            .then(|| DateTime::<Utc>::from_timestamp(t, 0))
            .flatten()
    };
    let (exit_code, signal) = match info.exit_code {
        Some(status) if finished => {
            let (code, signal) = wait_status(status);
            (Some(code), signal)
        }
        _ => (None, None),
    };
    let slurm_reason = Some(info.state_reason.as_str()).filter(|r| !r.is_empty() && *r != "None");
    let mut message = format!("Slurm job {} is {state}", info.job_id);
    if let Some(r) = slurm_reason {
        message.push_str(&format!(" ({r})"));
    }
    if !info.state_description.is_empty() {
        message.push_str(&format!(": {}", info.state_description));
    }
    if let Some(code) = exit_code {
        match signal {
            Some(s) => message.push_str(&format!(", killed by signal {s}")),
            None => message.push_str(&format!(", exit code {code}")),
        }
    }
    let reason = match (phase, reason, slurm_reason) {
        (Queued, _, Some(r)) => Some(r.to_owned()),
        (_, r, _) => r.map(str::to_owned),
    };
    let placement = Some(info.nodes.clone()).filter(|n| !n.is_empty() && n != "(null)");
    Ok(JobState {
        phase,
        exit_code,
        start_time: if phase == Queued {
            None
        } else {
            time(info.start_time)
        },
        completion_time: if finished { time(info.end_time) } else { None },
        reason,
        message: Some(message),
        placement,
    })
}

/// A wait status as an exit code and, when killed, the signal: `(code, None)` for an exit,
/// `(128 + signal, Some(signal))` for a signal.
pub fn wait_status(status: i64) -> (i32, Option<i32>) {
    let signal = (status & 0x7f) as i32;
    if signal == 0 {
        (((status >> 8) & 0xff) as i32, None)
    } else {
        (128 + signal, Some(signal))
    }
}

/// The output file of a job as Slurm has it: `%j` replaced, relative paths under its working
/// directory. `None` when Slurm has no absolute answer.
pub fn output_path(info: &JobInfo) -> Option<PathBuf> {
    if info.standard_output.is_empty() {
        return None;
    }
    let name = info
        .standard_output
        .replace("%j", &info.job_id.to_string())
        .replace("%u", &info.user_name);
    let path = Path::new(&name);
    if path.is_absolute() {
        Some(path.to_owned())
    } else if Path::new(&info.current_working_directory).is_absolute() {
        Some(Path::new(&info.current_working_directory).join(path))
    } else {
        None
    }
}

/// The last `limit` bytes of `path` (from a character boundary on); empty while the job has
/// not written it yet; an error naming the path when its directory is not visible from here.
/// The file must be a regular file of `owner` (the job's uid), opened without following a
/// symbolic link: the job's user controls the directory, and Atelier may read more than it.
pub fn tail(path: &Path, limit: usize, owner: Option<u32>) -> Result<String, BatchError> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let not_here = |e: std::io::Error| {
        other(format!(
            "the job's output is {} on the Slurm cluster, which Atelier cannot read from here ({e}); \
             mount the cluster's shared filesystem at the same path where Atelier runs",
            path.display()
        ))
    };
    let mut file = match std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && path.parent().is_some_and(Path::is_dir) =>
        {
            return Ok(String::new());
        }
        Err(e) => return Err(not_here(e)),
    };
    let meta = file.metadata().map_err(not_here)?;
    if !meta.is_file() || owner.is_some_and(|uid| meta.uid() != uid) {
        return Err(other(format!(
            "the job's output {} is not a regular file of the job's user (uid {:?}): not read",
            path.display(),
            owner
        )));
    }
    let len = meta.len();
    let start = len.saturating_sub(limit as u64);
    file.seek(SeekFrom::Start(start)).map_err(not_here)?;
    let mut bytes = Vec::with_capacity((len - start) as usize);
    file.take(limit as u64)
        .read_to_end(&mut bytes)
        .map_err(not_here)?;
    let skip = if start > 0 {
        bytes.iter().take_while(|b| (**b & 0xC0) == 0x80).count()
    } else {
        0
    };
    Ok(String::from_utf8_lossy(&bytes[skip..]).into_owned())
}

/// Whether `errors` are the `-1` of a read that slurmctld refused or never answered.
fn ambiguous(errors: &[SlurmError]) -> bool {
    !errors.is_empty() && errors.iter().all(|e| e.error_number == errno::UNSPECIFIED)
}

/// The error of an answer with Slurm `errors`. A `-1` alone is [`BatchError::Unreachable`]
/// (`Slurm::disambiguate` checks a read's with slurmctld first).
fn classify(status: StatusCode, errors: &[SlurmError], op: Op<'_>) -> BatchError {
    let text = if errors.is_empty() {
        format!("HTTP {status} without an error")
    } else {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    };
    let has = |n: i64| errors.iter().any(|e| e.error_number == n);
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
        || has(errno::AUTHENTICATION)
        || has(errno::ZERO_BYTES)
    {
        return BatchError::Unauthorized {
            system: SYSTEM,
            message: format!(
                "slurmctld rejected the request ({text}); check the pool's JWT key and that the mapped user exists on the cluster"
            ),
        };
    }
    if has(errno::INVALID_JOB_ID)
        && let Op::Job(id) = op
    {
        return BatchError::NotFound {
            system: SYSTEM,
            id: id.to_owned(),
        };
    }
    if ambiguous(errors) || errors.iter().any(|e| errno::unreachable(e.error_number)) {
        return BatchError::Unreachable {
            system: SYSTEM,
            message: text,
        };
    }
    match op {
        Op::Submit => BatchError::Refused {
            system: SYSTEM,
            message: text,
        },
        Op::List => other(format!("listing jobs: {text}")),
        Op::Probe => other(text),
        Op::Job(id) => other(format!("job {id}: {text}")),
    }
}

/// The error of an answer that is not Slurm's JSON (a proxy's page, `Authentication failure`).
fn classify_text(status: StatusCode, body: &[u8], op: Op<'_>) -> BatchError {
    let text: String = String::from_utf8_lossy(body).chars().take(300).collect();
    let message = format!("HTTP {status}: {}", text.trim());
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => BatchError::Unauthorized {
            system: SYSTEM,
            message,
        },
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => {
            BatchError::Unreachable {
                system: SYSTEM,
                message,
            }
        }
        StatusCode::NOT_FOUND => other(format!(
            "{message} (is this slurmrestd, started with -s openapi/{API_VERSION}?)"
        )),
        _ if status.is_client_error() && matches!(op, Op::Submit) => BatchError::Refused {
            system: SYSTEM,
            message,
        },
        _ => other(message),
    }
}

#[cfg(test)]
#[path = "slurm_tests.rs"]
mod tests;
