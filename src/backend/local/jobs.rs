//! Batch jobs as local processes: the local backend's [`BatchSystem`].
//!
//! A job's command runs as a process of its own (no shell: the program and its arguments as
//! given), in a process group it leads, with the environment a local server gets (the variables
//! of [`LocalConfig::env_keep`](super::LocalConfig), the backend's `env`, the profile's and the
//! job's environment, and the data sources' variables and files the hub hands over), `HOME` the
//! user's directory (the working directory unless the job names one). Everything of a job lives
//! in `<state dir>/jobs/<name>/`: `output.log` (stdout and stderr), `record.json` (pid, start
//! time, boot, deadline), `exit.json` once it ended (exit code, reason), `cancel` once a cancel
//! was asked.
//!
//! The process this instance started is waited for by a task that records its exit code; a
//! deadline kills the group (`DeadlineExceeded`), a cancel kills it (`Cancelled`). A hub that
//! restarts finds a still-running job again by pid and start time (field 22 of
//! `/proc/<pid>/stat`, so a reused pid is never taken for it) and keeps enforcing its deadline
//! and cancel; the exit code of a re-adopted process is not knowable (it is not this process's
//! child), so one that ends while no hub is its parent is Failed with reason `ExitCodeUnknown`,
//! and one found gone at restart likewise (`HostRebooted` after a reboot).

use std::collections::{BTreeMap, HashMap};
use std::fs::{DirBuilder, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::process::Command;
use tokio::sync::watch;

use super::proc::{self, Leader};
use crate::api::v1alpha1::BatchJobPhase;
use crate::batch::{BatchError, BatchSystem, JobState};
use crate::policy::batch::ValidatedBatchJob;
use crate::policy::names;

/// The system name of local jobs.
pub const SYSTEM: &str = "local";
/// How long a cancelled job's group has after SIGTERM before SIGKILL.
const CANCEL_GRACE: Duration = Duration::from_secs(3);
/// How long a caller waits for the exit record of a job this instance just stopped.
const EXIT_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(50);

/// Reasons a local job ends with.
pub mod reason {
    /// Exit code 0.
    pub const COMPLETED: &str = "Completed";
    /// A non-zero exit code.
    pub const ERROR: &str = "Error";
    /// Killed by a signal it was not sent by Atelier.
    pub const SIGNALED: &str = "Signaled";
    /// Its deadline passed: its process group was killed.
    pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
    /// Cancelled: its process group was killed.
    pub const CANCELLED: &str = "Cancelled";
    /// It ended while no hub was its parent: the exit code is lost.
    pub const EXIT_CODE_UNKNOWN: &str = "ExitCodeUnknown";
    /// The machine rebooted while it ran.
    pub const HOST_REBOOTED: &str = "HostRebooted";
}

/// What `record.json` holds: how to find the process again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job's process, leader of its own group.
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat` at start.
    pub start_time: u64,
    /// The boot it ran in.
    pub boot_id: Option<String>,
    /// When it started.
    pub started: DateTime<Utc>,
    /// When its deadline passes, if it has one.
    pub deadline: Option<DateTime<Utc>>,
    /// The hub process that started it (pid, start time): while that process runs, it records
    /// the job's exit itself, with the exit code (another hub on the same state directory
    /// leaves it that to do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<(u32, u64)>,
}

/// What `exit.json` holds: how the job ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ExitRecord {
    phase: String,
    exit_code: Option<i32>,
    reason: String,
    message: String,
    finished: DateTime<Utc>,
}

/// The local backend's jobs (see the module documentation).
pub struct LocalJobs {
    state_dir: PathBuf,
    env_keep: Vec<String>,
    env: BTreeMap<String, String>,
    /// The jobs this instance started and still waits for, by name: their exit, once known.
    children: Mutex<HashMap<String, watch::Receiver<bool>>>,
    /// The tasks that wait for them: aborted when this instance goes (as they would die with
    /// the hub's process; the jobs keep running, for the next instance to re-adopt).
    waiters: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Drop for LocalJobs {
    fn drop(&mut self) {
        for waiter in self
            .waiters
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            waiter.abort();
        }
    }
}

fn local_err(message: impl std::fmt::Display) -> BatchError {
    BatchError::Other {
        system: SYSTEM,
        message: message.to_string(),
    }
}

fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

fn mkdir(path: &Path) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(path)
}

impl LocalJobs {
    /// Jobs under `<state_dir>/jobs`, with the environment of the backend's servers.
    pub fn new(
        state_dir: impl Into<PathBuf>,
        env_keep: Vec<String>,
        env: BTreeMap<String, String>,
    ) -> LocalJobs {
        LocalJobs {
            state_dir: state_dir.into(),
            env_keep,
            env,
            children: Mutex::default(),
            waiters: Mutex::default(),
        }
    }

    /// The directory of job `name`.
    pub fn job_dir(&self, name: &str) -> PathBuf {
        self.state_dir.join("jobs").join(name)
    }

    /// The log (stdout and stderr) of job `name`.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.job_dir(name).join("output.log")
    }

    /// Where a job of `user` runs: `dir` (relative to the user's directory, or absolute), which
    /// must be an existing directory inside the user's directory (another user's files are not
    /// a job's to work in), else the user's directory itself.
    pub fn working_dir(&self, user: &str, dir: Option<&str>) -> Result<PathBuf, String> {
        let home = self.state_dir.join("users").join(user);
        let Some(dir) = dir else {
            return Ok(home);
        };
        let wanted = home.join(dir);
        let (Ok(real), Ok(real_home)) = (wanted.canonicalize(), home.canonicalize()) else {
            return Err(format!(
                "working directory {dir:?} does not exist in your home"
            ));
        };
        if !real.starts_with(&real_home) || !real.is_dir() {
            return Err(format!(
                "working directory {dir:?} must be a directory inside your home"
            ));
        }
        Ok(real)
    }

    /// The process record of job `name`, once it started.
    pub fn record(&self, name: &str) -> Option<JobRecord> {
        let text = std::fs::read_to_string(self.job_dir(name).join("record.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn exit_record(&self, name: &str) -> Option<ExitRecord> {
        let text = std::fs::read_to_string(self.job_dir(name).join("exit.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn write_exit(&self, name: &str, exit: &ExitRecord) {
        let path = self.job_dir(name).join("exit.json");
        if path.exists() {
            return;
        }
        let text = serde_json::to_string(exit).expect("an exit record serializes");
        if let Err(e) = write_atomic(&path, &text) {
            tracing::error!(job = name, error = %e, "cannot record a job's exit");
        }
    }

    fn cancel_asked(&self, name: &str) -> bool {
        self.job_dir(name).join("cancel").exists()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Receiver<bool>>> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts `job` with `extra_env` (the data sources' variables) and `files` (the data
    /// sources' files, written into the job's `data/` directory, 0600, their variables pointed
    /// at them). Returns the job's id (its name). A job that was started already is not
    /// started again.
    pub async fn submit_with(
        self: &std::sync::Arc<Self>,
        job: &ValidatedBatchJob,
        extra_env: &BTreeMap<String, String>,
        files: &BTreeMap<String, String>,
    ) -> Result<String, BatchError> {
        if !names::is_dns_label(&job.name) {
            return Err(local_err(format!("job name {:?} is not a label", job.name)));
        }
        super::check_path_name("user name", &job.user, false).map_err(local_err)?;
        let dir = self.job_dir(&job.name);
        if self.record(&job.name).is_some() {
            return Ok(job.name.clone());
        }
        mkdir(&dir).map_err(|e| local_err(format!("creating {}: {e}", dir.display())))?;
        let home = self.state_dir.join("users").join(&job.user);
        mkdir(&home).map_err(|e| local_err(format!("creating {}: {e}", home.display())))?;
        let cwd = self
            .working_dir(&job.user, job.working_dir.as_deref())
            .map_err(|message| BatchError::Refused {
                system: SYSTEM,
                message,
            })?;
        let data_env = super::write_data_files(&dir.join("data"), files)
            .map_err(|e| local_err(format!("writing the data files: {e}")))?;
        let mut env: Vec<(String, String)> = self
            .env_keep
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v)))
            .collect();
        env.extend(self.env.clone());
        env.extend(job.env.clone());
        env.extend(extra_env.clone());
        env.extend(data_env);
        env.push(("HOME".into(), home.to_string_lossy().into_owned()));
        env.push(("JUPYTERHUB_USER".into(), job.user.clone()));
        env.push(("ATELIER_JOB_NAME".into(), job.name.clone()));
        let log_path = self.log_path(&job.name);
        let log = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(|e| local_err(format!("opening {}: {e}", log_path.display())))?;
        let mut command = Command::new(&job.command[0]);
        command
            .args(&job.command[1..])
            .env_clear()
            .envs(env)
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().map_err(local_err)?))
            .stderr(Stdio::from(log))
            .process_group(0)
            .kill_on_drop(false);
        let mut child = command.spawn().map_err(|e| BatchError::Refused {
            system: SYSTEM,
            message: format!("cannot run {:?}: {e}", job.command[0]),
        })?;
        let pid = child
            .id()
            .ok_or_else(|| local_err("the job's process vanished at once"))?;
        let start_time = proc::read_stat(pid).map_or(0, |s| s.start_time);
        let started = crate::store::now();
        let deadline = job
            .deadline_seconds
            .filter(|d| *d > 0)
            .map(|d| started + chrono::Duration::seconds(d));
        let record = JobRecord {
            pid,
            start_time,
            boot_id: proc::boot_id(),
            started,
            deadline,
            hub: proc::read_stat(std::process::id()).map(|st| (std::process::id(), st.start_time)),
        };
        let text = serde_json::to_string(&record).expect("a job record serializes");
        write_atomic(&dir.join("record.json"), &text).map_err(local_err)?;
        let (tx, rx) = watch::channel(false);
        self.lock().insert(job.name.clone(), rx);
        let this = std::sync::Arc::downgrade(self);
        let name = job.name.clone();
        let limit = deadline.map(|d| {
            let left = (d - started).to_std().unwrap_or_default();
            tokio::time::Instant::now() + left
        });
        let waiter = tokio::spawn(async move {
            let waited = match limit {
                Some(at) => tokio::time::timeout_at(at, child.wait()).await.ok(),
                None => Some(child.wait().await),
            };
            let Some(this) = this.upgrade() else { return };
            let exit = match waited {
                Some(status) => {
                    let status = status.map_err(|e| e.to_string());
                    // Leftovers of the job's group go with it.
                    let _ = proc::signal_group(pid as i32, start_time, libc::SIGKILL);
                    this.ended(&name, status)
                }
                None => {
                    let _ = proc::signal_group(pid as i32, start_time, libc::SIGKILL);
                    let _ = child.wait().await;
                    ExitRecord {
                        phase: BatchJobPhase::Failed.as_str().into(),
                        exit_code: None,
                        reason: reason::DEADLINE_EXCEEDED.into(),
                        message: "the job ran past its deadline and was killed".into(),
                        finished: crate::store::now(),
                    }
                }
            };
            this.write_exit(&name, &exit);
            this.lock().remove(&name);
            tx.send_replace(true);
        });
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        waiters.retain(|w| !w.is_finished());
        waiters.push(waiter.abort_handle());
        Ok(job.name.clone())
    }

    /// How job `name` ended with `status`.
    fn ended(&self, name: &str, status: Result<std::process::ExitStatus, String>) -> ExitRecord {
        let finished = crate::store::now();
        if self.cancel_asked(name) {
            return ExitRecord {
                phase: BatchJobPhase::Cancelled.as_str().into(),
                exit_code: status.ok().and_then(|s| s.code()),
                reason: reason::CANCELLED.into(),
                message: "cancelled".into(),
                finished,
            };
        }
        match status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(0), _) => ExitRecord {
                    phase: BatchJobPhase::Succeeded.as_str().into(),
                    exit_code: Some(0),
                    reason: reason::COMPLETED.into(),
                    message: "exited with code 0".into(),
                    finished,
                },
                (Some(code), _) => ExitRecord {
                    phase: BatchJobPhase::Failed.as_str().into(),
                    exit_code: Some(code),
                    reason: reason::ERROR.into(),
                    message: format!("exited with code {code}"),
                    finished,
                },
                (None, sig) => ExitRecord {
                    phase: BatchJobPhase::Failed.as_str().into(),
                    exit_code: sig.map(|s| 128 + s),
                    reason: reason::SIGNALED.into(),
                    message: format!("killed by signal {}", sig.unwrap_or(0)),
                    finished,
                },
            },
            Err(e) => ExitRecord {
                phase: BatchJobPhase::Failed.as_str().into(),
                exit_code: None,
                reason: reason::EXIT_CODE_UNKNOWN.into(),
                message: format!("the job's process could not be waited for: {e}"),
                finished,
            },
        }
    }

    /// Waits up to [`EXIT_WAIT`] for this instance's wait of job `name` to record its exit.
    async fn wait_own(&self, name: &str) -> bool {
        let rx = self.lock().get(name).cloned();
        match rx {
            Some(mut rx) => tokio::time::timeout(EXIT_WAIT, rx.wait_for(|done| *done))
                .await
                .is_ok(),
            None => false,
        }
    }

    fn state_of(&self, name: &str, record: &JobRecord) -> JobState {
        let Some(exit) = self.exit_record(name) else {
            let mut state = JobState::new(BatchJobPhase::Running);
            state.start_time = Some(record.started);
            state.placement = Some(format!("pid {}", record.pid));
            return state;
        };
        let phase = crate::store::parse_phase(&exit.phase).unwrap_or(BatchJobPhase::Failed);
        JobState {
            phase,
            exit_code: exit.exit_code,
            start_time: Some(record.started),
            completion_time: Some(exit.finished),
            reason: Some(exit.reason),
            message: Some(exit.message),
            placement: Some(format!("pid {}", record.pid)),
        }
    }

    /// Kills the job's group: SIGTERM, then SIGKILL after `grace`.
    async fn kill_group(record: &JobRecord, grace: Duration) {
        let pgid = record.pid as i32;
        if proc::leader(record.pid, record.start_time) == Leader::Reused {
            return;
        }
        if !grace.is_zero() {
            let _ = proc::signal_group(pgid, record.start_time, libc::SIGTERM);
            let until = tokio::time::Instant::now() + grace;
            while tokio::time::Instant::now() < until {
                if proc::group_members(pgid).is_empty() {
                    return;
                }
                tokio::time::sleep(POLL).await;
            }
        }
        let _ = proc::signal_group(pgid, record.start_time, libc::SIGKILL);
        let until = tokio::time::Instant::now() + EXIT_WAIT;
        while !proc::group_members(pgid).is_empty() && tokio::time::Instant::now() < until {
            tokio::time::sleep(POLL).await;
        }
    }

    async fn status_of(&self, name: &str) -> Result<JobState, BatchError> {
        let record = self.record(name).ok_or_else(|| BatchError::NotFound {
            system: SYSTEM,
            id: name.to_owned(),
        })?;
        if self.exit_record(name).is_some() {
            return Ok(self.state_of(name, &record));
        }
        let own = self.lock().contains_key(name);
        let earlier_boot = matches!(
            (&record.boot_id, proc::boot_id()),
            (Some(then), Some(now)) if *then != now
        );
        if earlier_boot {
            self.write_exit(
                name,
                &ExitRecord {
                    phase: BatchJobPhase::Failed.as_str().into(),
                    exit_code: None,
                    reason: reason::HOST_REBOOTED.into(),
                    message: "the machine rebooted while the job ran".into(),
                    finished: crate::store::now(),
                },
            );
            return Ok(self.state_of(name, &record));
        }
        match proc::leader(record.pid, record.start_time) {
            Leader::Alive if !own => {
                // Re-adopted: this instance enforces the deadline the previous one set.
                if record.deadline.is_some_and(|d| crate::store::now() >= d) {
                    Self::kill_group(&record, Duration::ZERO).await;
                    self.write_exit(
                        name,
                        &ExitRecord {
                            phase: BatchJobPhase::Failed.as_str().into(),
                            exit_code: None,
                            reason: reason::DEADLINE_EXCEEDED.into(),
                            message: "the job ran past its deadline and was killed".into(),
                            finished: crate::store::now(),
                        },
                    );
                }
            }
            Leader::Alive => {}
            Leader::Exited | Leader::Reused if own => {
                self.wait_own(name).await;
            }
            // Another live hub process started it: that one records its exit, with the code.
            Leader::Exited | Leader::Reused
                if record
                    .hub
                    .is_some_and(|(pid, start)| proc::leader(pid, start) == Leader::Alive) => {}
            Leader::Exited | Leader::Reused => {
                let exit = if self.cancel_asked(name) {
                    ExitRecord {
                        phase: BatchJobPhase::Cancelled.as_str().into(),
                        exit_code: None,
                        reason: reason::CANCELLED.into(),
                        message: "cancelled".into(),
                        finished: crate::store::now(),
                    }
                } else {
                    ExitRecord {
                        phase: BatchJobPhase::Failed.as_str().into(),
                        exit_code: None,
                        reason: reason::EXIT_CODE_UNKNOWN.into(),
                        message: "the job's process ended while no hub was its parent: its \
                                  exit code is unknown"
                            .into(),
                        finished: crate::store::now(),
                    }
                };
                // Leftovers of its group go with it.
                Self::kill_group(&record, Duration::ZERO).await;
                self.write_exit(name, &exit);
            }
        }
        Ok(self.state_of(name, &record))
    }

    async fn cancel_job(&self, name: &str) -> Result<(), BatchError> {
        let record = self.record(name).ok_or_else(|| BatchError::NotFound {
            system: SYSTEM,
            id: name.to_owned(),
        })?;
        if self.exit_record(name).is_some() {
            return Ok(());
        }
        write_atomic(&self.job_dir(name).join("cancel"), "").map_err(local_err)?;
        let own = self.lock().contains_key(name);
        Self::kill_group(&record, CANCEL_GRACE).await;
        if own {
            self.wait_own(name).await;
        }
        // Not this instance's child (re-adopted), or its wait did not record in time.
        self.write_exit(
            name,
            &ExitRecord {
                phase: BatchJobPhase::Cancelled.as_str().into(),
                exit_code: None,
                reason: reason::CANCELLED.into(),
                message: "cancelled".into(),
                finished: crate::store::now(),
            },
        );
        Ok(())
    }

    /// The last `limit` bytes of job `name`'s output (cut at a character boundary).
    pub fn tail(&self, name: &str, limit: usize) -> Result<String, BatchError> {
        let path = self.log_path(name);
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BatchError::NotFound {
                    system: SYSTEM,
                    id: name.to_owned(),
                });
            }
            Err(e) => return Err(local_err(format!("reading {}: {e}", path.display()))),
        };
        let len = file.metadata().map_err(local_err)?.len();
        let start = len.saturating_sub(limit as u64);
        file.seek(SeekFrom::Start(start)).map_err(local_err)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(local_err)?;
        let text = String::from_utf8_lossy(&bytes);
        // A cut in the middle of a character shows as U+FFFD at the start: drop it.
        Ok(text.trim_start_matches('\u{fffd}').to_owned())
    }
}

/// The trait for a shared instance: [`LocalJobs::submit_with`] without data sources.
pub struct SharedLocalJobs(pub std::sync::Arc<LocalJobs>);

impl BatchSystem for SharedLocalJobs {
    fn system(&self) -> &'static str {
        SYSTEM
    }

    fn submit<'a>(
        &'a self,
        job: &'a ValidatedBatchJob,
    ) -> BoxFuture<'a, Result<String, BatchError>> {
        Box::pin(async move {
            self.0
                .submit_with(job, &BTreeMap::new(), &BTreeMap::new())
                .await
        })
    }

    fn status<'a>(
        &'a self,
        _job: &'a ValidatedBatchJob,
        id: &'a str,
    ) -> BoxFuture<'a, Result<JobState, BatchError>> {
        Box::pin(self.0.status_of(id))
    }

    fn cancel<'a>(
        &'a self,
        _job: &'a ValidatedBatchJob,
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), BatchError>> {
        Box::pin(self.0.cancel_job(id))
    }

    fn logs<'a>(
        &'a self,
        _job: &'a ValidatedBatchJob,
        id: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<String, BatchError>> {
        Box::pin(async move { self.0.tail(id, limit) })
    }
}

impl LocalJobs {
    /// What the system says of job `id` now (the trait's `status`, without the validated job).
    pub async fn status(&self, id: &str) -> Result<JobState, BatchError> {
        self.status_of(id).await
    }

    /// Stops job `id` (the trait's `cancel`, without the validated job).
    pub async fn cancel(&self, id: &str) -> Result<(), BatchError> {
        self.cancel_job(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_map_to_phases() {
        let dir = std::env::temp_dir().join(format!("atelier-jobs-{}", std::process::id()));
        let jobs = LocalJobs::new(&dir, Vec::new(), BTreeMap::new());
        let ok = jobs.ended("a", Ok(std::process::ExitStatus::from_raw(0)));
        assert_eq!((ok.phase.as_str(), ok.exit_code), ("Succeeded", Some(0)));
        let three = jobs.ended("a", Ok(std::process::ExitStatus::from_raw(3 << 8)));
        assert_eq!((three.phase.as_str(), three.exit_code), ("Failed", Some(3)));
        let killed = jobs.ended("a", Ok(std::process::ExitStatus::from_raw(9)));
        assert_eq!(
            (
                killed.phase.as_str(),
                killed.exit_code,
                killed.reason.as_str()
            ),
            ("Failed", Some(137), reason::SIGNALED)
        );
    }
}
