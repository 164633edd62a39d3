//! The operator benchmark's harness: seeds the fake API server ([`super::fake`]), runs an
//! `atelier operator` binary against it as a child process, and measures three phases.
//!
//! - *cold*: from the operator's start until every Workspace has a status;
//! - *unchanged*: every Workspace gets an annotation the operator ignores (its
//!   `resourceVersion` changes, its `generation` does not), until the operator has made as many
//!   reconciliations as there are Workspaces and no request for the quiet time;
//! - *status change*: every pod is marked scheduled, Running and Ready, until every Workspace
//!   is `Running` (and no request for the quiet time).
//!
//! Each phase counts the reconciliations (the operator's `atelier_workspace_reconciliations_total`,
//! which the baseline has too), the requests the fake received by (verb, resource), the
//! requests the operator counted itself (`atelier_operator_api_requests_total`, when the binary
//! has it), the objects sent in LIST answers, and the operator's CPU time; the peak RSS is the
//! operator's `VmHWM`. A phase that does not finish within the timeout is reported as such,
//! with how far it got.

#![allow(dead_code)] // the test uses a part of what the example uses

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::fake::{FakeApi, RequestCounts, Store};

/// The Workspace resource in the fake's store.
pub const WORKSPACES: &str = "atelier.dev/v1alpha1/workspaces";
/// The Pod resource in the fake's store.
pub const PODS: &str = "v1/pods";
/// The namespace of every Workspace in shared mode.
pub const SHARED_NAMESPACE: &str = "atelier-bench";
/// Prefix of the per-user namespaces (the operator's default `--user-namespace-prefix`).
pub const USER_NAMESPACE_PREFIX: &str = "atelier-u-";
/// The annotation the *unchanged* phase sets.
pub const TOUCH_ANNOTATION: &str = "bench.atelier.dev/touched";

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Workspaces to seed.
    pub workspaces: usize,
    /// Users they are spread over (round robin).
    pub users: usize,
    /// Per-user namespaces (`--namespace-mode per-user`) instead of one shared namespace.
    pub per_user: bool,
    /// The `atelier` binary.
    pub operator: PathBuf,
    /// Give up on a phase after this long.
    pub phase_timeout: Duration,
    /// A phase has settled once neither requests nor reconciliations happened for this long.
    pub quiet: Duration,
    /// Changes the fake's log keeps for resuming watches ([`super::fake::LOG_CAPACITY`] by
    /// default): an older resume point gets `410 Expired` and the watcher lists again.
    pub watch_log: usize,
    /// Run the operator under `taskset -c <cpus>`.
    pub cpus: Option<String>,
    /// Print every request the fake receives.
    pub log_requests: bool,
    /// `RUST_LOG` of the operator.
    pub rust_log: String,
    /// Where the operator's log goes.
    pub work_dir: PathBuf,
}

/// The figures of one phase.
#[derive(Clone, Debug, Default)]
pub struct Phase {
    /// `cold`, `unchanged` or `status change`.
    pub name: &'static str,
    /// Until the phase's condition held (every Workspace with a status; quiet; every one Running).
    pub seconds: f64,
    /// Until the operator was quiet afterwards (the counts below cover this much).
    pub settled_seconds: f64,
    /// Whether the condition held before the timeout.
    pub completed: bool,
    /// Workspaces meeting the phase's condition at its end.
    pub done: usize,
    /// Reconciliations (operator's metric).
    pub reconciles: u64,
    /// Requests the fake received, by (verb, resource).
    pub requests: RequestCounts,
    /// Requests the operator counted itself (`None`: the binary has no counter).
    pub operator_requests: Option<u64>,
    /// Objects sent in LIST answers, by resource.
    pub listed: BTreeMap<String, u64>,
    /// Operator CPU seconds (user + system).
    pub cpu_seconds: f64,
}

impl Phase {
    /// Requests received in the phase.
    pub fn total_requests(&self) -> u64 {
        self.requests.values().sum()
    }

    /// Requests that change something (create, update, patch, delete).
    pub fn writes(&self) -> u64 {
        self.requests
            .iter()
            .filter(|((verb, _), _)| {
                matches!(
                    verb.as_str(),
                    "create" | "update" | "patch" | "delete" | "deletecollection"
                )
            })
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests without the long-running watches.
    pub fn non_watch_requests(&self) -> u64 {
        self.requests
            .iter()
            .filter(|((verb, _), _)| verb != "watch")
            .map(|(_, n)| n)
            .sum()
    }

    /// As JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "seconds": self.seconds,
            "settled_seconds": self.settled_seconds,
            "completed": self.completed,
            "done": self.done,
            "reconciles": self.reconciles,
            "requests": self.total_requests(),
            "non_watch_requests": self.non_watch_requests(),
            "writes": self.writes(),
            "operator_requests": self.operator_requests,
            "by_verb_resource": self.requests.iter()
                .map(|((v, r), n)| (format!("{v} {r}"), json!(n)))
                .collect::<serde_json::Map<_, _>>(),
            "listed_objects": self.listed,
            "cpu_seconds": self.cpu_seconds,
        })
    }
}

/// The whole run. A phase that timed out ends it: the next ones would measure its backlog.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Workspaces seeded.
    pub workspaces: usize,
    /// Users.
    pub users: usize,
    /// `shared` or `per-user`.
    pub mode: &'static str,
    /// The binary.
    pub operator: String,
    /// Whether the binary knew `--leader-election` (then run with `=false`).
    pub leader_election_flag: bool,
    /// The CPUs the operator was pinned to.
    pub cpus: Option<String>,
    /// The phases, in order.
    pub phases: Vec<Phase>,
    /// Operator peak RSS (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
    /// Operator CPU seconds over the run.
    pub cpu_seconds: f64,
    /// Requests the fake received over the run, and the operator's own count of them.
    pub total_requests: u64,
    /// The operator's own total (`None`: no counter).
    pub operator_total_requests: Option<u64>,
}

impl Report {
    /// As JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "workspaces": self.workspaces,
            "users": self.users,
            "mode": self.mode,
            "operator": self.operator,
            "leader_election_flag": self.leader_election_flag,
            "cpus": self.cpus,
            "phases": self.phases.iter().map(Phase::to_json).collect::<Vec<_>>(),
            "peak_rss_kib": self.peak_rss_kib,
            "cpu_seconds": self.cpu_seconds,
            "total_requests": self.total_requests,
            "operator_total_requests": self.operator_total_requests,
        })
    }
}

fn namespace_of(opts: &Options, user: &str) -> String {
    if opts.per_user {
        format!("{USER_NAMESPACE_PREFIX}{user}")
    } else {
        SHARED_NAMESPACE.to_owned()
    }
}

/// A NodePool, a WorkspaceProfile and the Workspaces `ws-<i>` of users `u<i mod users>`.
pub fn seed(store: &mut Store, opts: &Options) -> anyhow::Result<()> {
    let pool = json!({
        "apiVersion": "atelier.dev/v1alpha1", "kind": "NodePool",
        "metadata": {"name": "bench"},
        "spec": {"purpose": "interactive", "displayName": "Bench pool",
                 "caps": {"perUser": {"workspaces": 1000}}},
    });
    store
        .create("atelier.dev/v1alpha1/nodepools", "", pool)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let profile = json!({
        "apiVersion": "atelier.dev/v1alpha1", "kind": "WorkspaceProfile",
        "metadata": {"name": "bench"},
        "spec": {
            "displayName": "Bench", "kind": "jupyter",
            "image": "quay.io/jupyter/base-notebook:python-3.12",
            "defaultNodePool": "bench",
            "defaultResources": {"cpu": "100m", "memory": "256Mi"},
            "maxResources": {"cpu": "1", "memory": "1Gi"},
            "home": {"size": "1Gi", "onDelete": "keep"},
        },
    });
    store
        .create("atelier.dev/v1alpha1/workspaceprofiles", "", profile)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    for i in 0..opts.workspaces {
        let user = format!("u{}", i % opts.users.max(1));
        let ws = json!({
            "apiVersion": "atelier.dev/v1alpha1", "kind": "Workspace",
            "metadata": {"name": format!("ws-{i}"), "annotations": {"atelier.dev/groups": "bench"}},
            "spec": {"user": user, "serverName": format!("s{i}"), "profile": "bench"},
        });
        store
            .create(WORKSPACES, &namespace_of(opts, &user), ws)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    Ok(())
}

/// Workspaces with a `status.phase`, and those `Running`.
fn progress(store: &Store) -> (usize, usize) {
    let mut with_status = 0;
    let mut running = 0;
    for ws in store.all(WORKSPACES) {
        match ws.pointer("/status/phase").and_then(Value::as_str) {
            Some("Running") => {
                with_status += 1;
                running += 1;
            }
            Some(_) => with_status += 1,
            None => {}
        }
    }
    (with_status, running)
}

/// Marks every pod scheduled, Running and Ready, as a kubelet would.
fn mark_pods_running(store: &mut Store) -> usize {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let keys = store.keys(PODS);
    for (ns, name) in &keys {
        store.modify(PODS, ns, name, |pod| {
            pod["spec"]["nodeName"] = json!("bench-node");
            let containers: Vec<Value> = pod
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map(|cs| {
                    cs.iter()
                        .map(|c| {
                            json!({
                                "name": c["name"], "image": c["image"], "imageID": "",
                                "ready": true, "started": true, "restartCount": 0,
                                "state": {"running": {"startedAt": now}},
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            pod["status"] = json!({
                "phase": "Running",
                "podIP": "10.0.0.1",
                "startTime": now,
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                    {"type": "Ready", "status": "True", "lastTransitionTime": now},
                ],
                "containerStatuses": containers,
            });
        });
    }
    keys.len()
}

/// Answers of the operator's `/metrics`: reconciliations, and its own request count if any.
async fn scrape(addr: SocketAddr) -> anyhow::Result<(u64, Option<u64>)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    let sum = |prefix: &str| -> Option<u64> {
        let mut found = false;
        let total = text
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .inspect(|_| found = true)
            .sum::<f64>();
        // Counters are integers; f64 holds them exactly below 2^53.
        found.then_some(total as u64)
    };
    let reconciles = sum("atelier_workspace_reconciliations_total").unwrap_or(0);
    let requests = sum("atelier_operator_api_requests_total");
    Ok((reconciles, requests))
}

/// utime + stime of `pid`, seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The fields after the command (which may hold spaces) start after the last ')'.
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `after` starts at field 3.
    let ticks: u64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks as f64 / if hz > 0 { hz as f64 } else { 100.0 }
}

/// `VmHWM` of `pid`, KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Whether `atelier operator --help` lists `--leader-election`.
pub fn knows_leader_election(binary: &Path) -> anyhow::Result<bool> {
    let out = std::process::Command::new(binary)
        .args(["operator", "--help"])
        .output()
        .with_context(|| format!("running {} operator --help", binary.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("--leader-election"))
}

struct Counters {
    at: Instant,
    reconciles: u64,
    operator_requests: Option<u64>,
    requests: RequestCounts,
    listed: BTreeMap<String, u64>,
    cpu: f64,
}

fn delta_counts(now: &RequestCounts, before: &RequestCounts) -> RequestCounts {
    now.iter()
        .filter_map(|(k, n)| {
            let d = n - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

struct Run<'a> {
    fake: &'a FakeApi,
    metrics: SocketAddr,
    child: tokio::process::Child,
    pid: u32,
    opts: &'a Options,
    log: PathBuf,
}

impl Run<'_> {
    async fn counters(&mut self) -> anyhow::Result<Counters> {
        self.check_alive()?;
        let (reconciles, operator_requests) = scrape(self.metrics).await.unwrap_or((0, None));
        let (requests, listed) = self
            .fake
            .with_store(|s| (s.requests.clone(), s.listed.clone()));
        Ok(Counters {
            at: Instant::now(),
            reconciles,
            operator_requests,
            requests,
            listed,
            cpu: cpu_seconds(self.pid),
        })
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            bail!(
                "the operator exited ({status}); last lines of {}:\n{}",
                self.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    /// Polls until `done(store)` reaches `target` (or the timeout), then until quiet: no API
    /// request for `quiet` (bounded by 10 × `quiet`). Without a target (unchanged), the
    /// condition is the quiet itself after at least as many reconciliations as Workspaces, so
    /// that every Workspace was (on average) reconciled once unchanged: by its trigger when the
    /// operator reacts to the change, else by its periodic requeue. Reconciliations alone never
    /// break the quiet: an operator requeues every Workspace periodically, for ever.
    async fn phase(
        &mut self,
        name: &'static str,
        before: Counters,
        target: Option<usize>,
        measure: impl Fn(&Store) -> usize,
    ) -> anyhow::Result<(Phase, Counters)> {
        let started = before.at;
        let deadline = started + self.opts.phase_timeout;
        let min_reconciles = before.reconciles + self.opts.workspaces as u64;
        let mut done;
        let mut reached = None;
        let mut last = before.requests.values().sum::<u64>();
        let mut last_change = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (n, total) = self.fake.with_store(|s| (measure(s), s.total_requests()));
            done = n;
            self.check_alive()?;
            let (reconciles, _) = scrape(self.metrics).await.unwrap_or((0, None));
            let now = Instant::now();
            if total != last {
                last = total;
                last_change = now;
            }
            let quiet = now - last_change >= self.opts.quiet;
            if reached.is_none() {
                match target {
                    Some(t) if done >= t => reached = Some(now),
                    None if quiet && reconciles >= min_reconciles => reached = Some(last_change),
                    _ => {}
                }
            }
            if reached.is_some() && quiet {
                break;
            }
            // Settling after the condition is bounded, too.
            if let Some(at) = reached
                && now - at >= self.opts.quiet * 10
            {
                break;
            }
            if now >= deadline {
                break;
            }
        }
        let after = self.counters().await?;
        let end = reached.unwrap_or(after.at);
        let phase = Phase {
            name,
            seconds: (end - started).as_secs_f64(),
            settled_seconds: (after.at - started).as_secs_f64(),
            completed: reached.is_some(),
            done,
            reconciles: after.reconciles - before.reconciles,
            requests: delta_counts(&after.requests, &before.requests),
            operator_requests: match (after.operator_requests, before.operator_requests) {
                (Some(a), Some(b)) => Some(a - b),
                (Some(a), None) => Some(a),
                _ => None,
            },
            listed: after
                .listed
                .iter()
                .filter_map(|(k, n)| {
                    let d = n - before.listed.get(k).copied().unwrap_or(0);
                    (d > 0).then(|| (k.clone(), d))
                })
                .collect(),
            cpu_seconds: after.cpu - before.cpu,
        };
        Ok((phase, after))
    }
}

/// Runs the benchmark.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    let fake = FakeApi::start(opts.log_requests).await?;
    fake.with_store(|s| {
        s.set_log_capacity(opts.watch_log);
        seed(s, opts)
    })?;
    std::fs::create_dir_all(&opts.work_dir)?;
    let kubeconfig = opts.work_dir.join("kubeconfig");
    std::fs::write(&kubeconfig, fake.kubeconfig())?;
    let log = opts.work_dir.join("operator.log");
    let leader_election_flag = knows_leader_election(&opts.operator)?;

    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mode = if opts.per_user { "per-user" } else { "shared" };
    let mut args: Vec<String> = Vec::new();
    let program = match &opts.cpus {
        Some(cpus) => {
            args.extend([
                "-c".into(),
                cpus.clone(),
                opts.operator.display().to_string(),
            ]);
            PathBuf::from("taskset")
        }
        None => opts.operator.clone(),
    };
    args.extend([
        "operator".into(),
        "--metrics-addr".into(),
        metrics.to_string(),
        "--namespace-mode".into(),
        mode.into(),
        "--user-namespace-prefix".into(),
        USER_NAMESPACE_PREFIX.into(),
    ]);
    if leader_election_flag {
        args.push("--leader-election=false".into());
    }
    let log_file = std::fs::File::create(&log)?;
    let before_seed = fake.with_store(|s| s.requests.clone());
    let started = Instant::now();
    let child = tokio::process::Command::new(&program)
        .args(&args)
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", &opts.rust_log)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let pid = child.id().context("the operator has a pid")?;
    let mut run = Run {
        fake: &fake,
        metrics,
        child,
        pid,
        opts,
        log,
    };
    let n = opts.workspaces;
    let cold_start = Counters {
        at: started,
        reconciles: 0,
        operator_requests: None,
        requests: before_seed,
        listed: BTreeMap::new(),
        cpu: 0.0,
    };
    let mut phases = Vec::new();
    let (cold, after) = run
        .phase("cold", cold_start, Some(n), |s| progress(s).0)
        .await?;
    let cold_completed = cold.completed;
    phases.push(cold);
    if !cold_completed {
        // The operator is still busy with the cold start: the other phases would measure that.
        return finish(run, opts, phases, leader_election_flag).await;
    }

    // unchanged: an annotation the operator ignores.
    let before = run.counters().await?;
    fake.with_store(|s| {
        for (ns, name) in s.keys(WORKSPACES) {
            s.modify(WORKSPACES, &ns, &name, |ws| {
                ws["metadata"]["annotations"][TOUCH_ANNOTATION] = json!("1");
            });
        }
    });
    drop(after);
    let (unchanged, _) = run
        .phase("unchanged", before, None, |s| progress(s).0)
        .await?;
    let unchanged_completed = unchanged.completed;
    phases.push(unchanged);
    if !unchanged_completed {
        return finish(run, opts, phases, leader_election_flag).await;
    }

    // status change: every pod Running and Ready.
    let before = run.counters().await?;
    fake.with_store(mark_pods_running);
    let (status, _) = run
        .phase("status change", before, Some(n), |s| progress(s).1)
        .await?;
    phases.push(status);
    finish(run, opts, phases, leader_election_flag).await
}

async fn finish(
    mut run: Run<'_>,
    opts: &Options,
    phases: Vec<Phase>,
    leader_election_flag: bool,
) -> anyhow::Result<Report> {
    let end = run.counters().await?;
    let report = Report {
        workspaces: opts.workspaces,
        users: opts.users,
        mode: if opts.per_user { "per-user" } else { "shared" },
        operator: opts.operator.display().to_string(),
        leader_election_flag,
        cpus: opts.cpus.clone(),
        phases,
        peak_rss_kib: peak_rss_kib(run.pid),
        cpu_seconds: end.cpu,
        total_requests: end.requests.values().sum::<u64>(),
        operator_total_requests: end.operator_requests,
    };
    let _ = run.child.start_kill();
    let _ = run.child.wait().await;
    Ok(report)
}

/// The report as a table.
pub fn table(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "operator {}: {} Workspaces, {} users, {} namespaces{}{}",
        r.operator,
        r.workspaces,
        r.users,
        r.mode,
        if r.leader_election_flag {
            ", --leader-election=false"
        } else {
            ""
        },
        r.cpus
            .as_ref()
            .map(|c| format!(", operator pinned to CPU {c}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "{:<14} {:>8} {:>13} {:>10} {:>9} {:>9} {:>8} {:>8} {:>10} {:>7}",
        "phase",
        "time s",
        "done",
        "reconciles",
        "rec/s",
        "requests",
        "req/rec",
        "wr/rec",
        "listed obj",
        "CPU s"
    );
    for p in &r.phases {
        let per = |x: u64| {
            if p.reconciles == 0 {
                "-".to_owned()
            } else {
                format!("{:.2}", x as f64 / p.reconciles as f64)
            }
        };
        let rate = if p.completed && p.name != "unchanged" && p.seconds > 0.0 {
            format!("{:.0}", r.workspaces as f64 / p.seconds)
        } else {
            "-".into()
        };
        let _ = writeln!(
            out,
            "{:<14} {:>8} {:>13} {:>10} {:>9} {:>9} {:>8} {:>8} {:>10} {:>7.1}",
            p.name,
            format!("{:.1}{}", p.seconds, if p.completed { "" } else { "+" }),
            format!("{}/{}", p.done, r.workspaces),
            p.reconciles,
            rate,
            p.non_watch_requests(),
            per(p.non_watch_requests()),
            per(p.writes()),
            p.listed.values().sum::<u64>(),
            p.cpu_seconds,
        );
    }
    let _ = writeln!(
        out,
        "peak RSS {:.1} MiB, CPU {:.1} s; requests (without watches) per reconcile; `+`: timed out",
        r.peak_rss_kib as f64 / 1024.0,
        r.cpu_seconds
    );
    let _ = writeln!(
        out,
        "requests seen by the fake: {}; counted by the operator: {}",
        r.total_requests,
        r.operator_total_requests
            .map_or("no counter".to_owned(), |n| n.to_string())
    );
    for p in &r.phases {
        let by: Vec<String> = p
            .requests
            .iter()
            .filter(|((verb, _), _)| verb != "watch")
            .map(|((v, res), n)| format!("{v} {res} {n}"))
            .collect();
        let _ = writeln!(out, "  {}: {}", p.name, by.join(", "));
    }
    out
}
