//! A one-node Slurm 22.05 cluster on loopback for the batch tests: munged, slurmctld, slurmd and
//! slurmrestd from the Debian packages (`.ci/test.sh` installs them: slurmctld, slurmd,
//! slurmrestd, munge, slurm-client, slurm-wlm-jwt-plugin), everything under one temporary
//! directory, on free ports, stopped (process groups, then any process still naming the
//! directory) when the kit is dropped, with every log printed when a test fails.
//!
//! - munged with its own key and socket (directory mode 711), given to Slurm by `AuthInfo`.
//! - slurm.conf: the node as `slurmd -C` sees it (its real CPUs and memory), one partition,
//!   `AuthAltTypes=auth/jwt` with a fresh 32-byte key (`AuthAltParameters=jwt_key=`),
//!   `ProctrackType=proctrack/linuxproc`, `TaskPlugin=task/none`, no accounting, cons_tres with
//!   memory as a consumable (so `memory_per_node` is checked), `GresTypes=gpu` on a node without
//!   GPUs (so a GPU request reaches slurmctld and is refused there), and
//!   `CommunicationParameters=NoInAddrAny,NoCtldInAddrAny` so that slurmctld and slurmd bind the
//!   address the host name resolves to, which must be a loopback one.
//! - slurmrestd as `nobody` with `SLURM_JWT=daemon`, `-a rest_auth/jwt`, `-s openapi/v0.0.38`
//!   (no slurmdb plugins: there is no slurmdbd), on 127.0.0.1.
//!
//! The daemons run as root (slurmd must, to start jobs as their users): the kit needs root.
//! Jobs run as the Unix user [`JOB_USER`], created here when missing (`useradd --system`, no
//! home, shell /bin/sh): the user a pool's `userMapping` names. Its jobs work in
//! [`SlurmKit::work_dir`], which it owns and which Atelier (root here) reads: the "shared
//! filesystem" of a real cluster.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::say;
use super::stack::{Deadline, Proc, free_port, kill_leftovers};

/// The Unix user the test jobs run as.
pub const JOB_USER: &str = "atelier-slurm";
/// The partition.
pub const PARTITION: &str = "atelier";

/// The Debian packages the kit needs (`.ci/test.sh` installs them).
pub const PACKAGES: &str = "slurmctld slurmd slurmrestd munge slurm-client slurm-wlm-jwt-plugin";

/// Whether this machine can run the kit; `Err` says what is missing.
pub fn available() -> Result<(), String> {
    for bin in [
        "/usr/sbin/munged",
        "/usr/sbin/slurmctld",
        "/usr/sbin/slurmd",
        "/usr/sbin/slurmrestd",
        "/usr/bin/scontrol",
    ] {
        if !Path::new(bin).is_file() {
            return Err(format!(
                "{bin} is missing: apt-get install -y {PACKAGES} (.ci/test.sh does)"
            ));
        }
    }
    // /usr/lib/<multiarch triplet>/slurm-wlm/auth_jwt.so
    let jwt_plugin = std::fs::read_dir("/usr/lib")
        .map(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.path().join("slurm-wlm/auth_jwt.so").is_file())
        })
        .unwrap_or(false);
    if !jwt_plugin {
        return Err(format!(
            "Slurm's auth_jwt plugin is missing: apt-get install -y slurm-wlm-jwt-plugin ({PACKAGES})"
        ));
    }
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(
            "the Slurm kit runs slurmd, which starts jobs as their users: run as root".into(),
        );
    }
    Ok(())
}

/// A running one-node cluster.
pub struct SlurmKit {
    dir: PathBuf,
    /// slurmrestd's base URL.
    pub rest_url: String,
    /// The JWT signing key (slurmctld's `jwt_key` file).
    pub jwt_key: Vec<u8>,
    /// The node's name (the host name).
    pub node: String,
    procs: Vec<(String, Proc)>,
}

impl SlurmKit {
    /// Starts the cluster and waits until slurmrestd answers with the node idle.
    pub async fn start() -> SlurmKit {
        if let Err(e) = available() {
            panic!("cannot start Slurm: {e}");
        }
        ensure_job_user();
        let started = std::time::Instant::now();
        let dir = std::env::temp_dir().join(format!(
            "atelier-slurm-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["munge", "state", "spool", "work"] {
            std::fs::create_dir_all(dir.join(sub)).expect("kit directories");
        }
        set_mode(&dir, 0o755);
        set_mode(&dir.join("munge"), 0o711);
        chown(&dir.join("work"), JOB_USER);
        set_mode(&dir.join("work"), 0o755);

        let munge_key = dir.join("munge/munge.key");
        std::fs::write(&munge_key, random_bytes(1024)).expect("munge key");
        set_mode(&munge_key, 0o400);
        let jwt_key = random_bytes(32);
        let jwt_file = dir.join("jwt_hs256.key");
        std::fs::write(&jwt_file, &jwt_key).expect("jwt key");
        set_mode(&jwt_file, 0o600);

        let node = host_name();
        let (ctld_port, slurmd_port, rest_port) = (free_port(), free_port(), free_port());
        let conf = dir.join("slurm.conf");
        std::fs::write(
            &conf,
            slurm_conf(&dir, &node, &node_line(&node), ctld_port, slurmd_port),
        )
        .expect("slurm.conf");
        set_mode(&conf, 0o644);

        let mut kit = SlurmKit {
            rest_url: format!("http://127.0.0.1:{rest_port}"),
            jwt_key,
            node,
            procs: Vec::new(),
            dir: dir.clone(),
        };
        let socket = dir.join("munge/munge.socket");
        let mut munged = Command::new("/usr/sbin/munged");
        munged
            .arg("--foreground")
            .arg(format!("--key-file={}", munge_key.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!(
                "--pid-file={}",
                dir.join("munge/munged.pid").display()
            ))
            .arg(format!("--seed-file={}", dir.join("munge/seed").display()))
            .arg(format!(
                "--log-file={}",
                dir.join("munge/munged.log").display()
            ));
        kit.spawn("munged", munged);
        let wait = Deadline::new("munged's socket", Duration::from_secs(20));
        while !socket.exists() {
            kit.check_alive();
            wait.tick(kit.logs()).await;
        }

        let mut ctld = Command::new("/usr/sbin/slurmctld");
        ctld.args(["-D", "-c", "-f"])
            .arg(&conf)
            .env("SLURM_CONF", &conf);
        kit.spawn("slurmctld", ctld);
        let mut slurmd = Command::new("/usr/sbin/slurmd");
        slurmd
            .args(["-D", "-f"])
            .arg(&conf)
            .env("SLURM_CONF", &conf);
        kit.spawn("slurmd", slurmd);
        // slurmrestd refuses to run as root or SlurmUser; `nobody` asks slurmctld with the
        // callers' tokens (SLURM_JWT=daemon), never with a key of its own.
        let mut rest = Command::new("/usr/bin/setpriv");
        rest.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg("/usr/sbin/slurmrestd")
            .args(["-f"])
            .arg(&conf)
            .args(["-a", "rest_auth/jwt", "-s", "openapi/v0.0.38"])
            .arg(format!("127.0.0.1:{rest_port}"))
            .env("SLURM_CONF", &conf)
            .env("SLURM_JWT", "daemon");
        kit.spawn("slurmrestd", rest);

        let wait = Deadline::new(
            "the Slurm node to be idle behind slurmrestd",
            Duration::from_secs(60),
        );
        loop {
            kit.check_alive();
            let seen = kit.node_state().await;
            if seen
                .as_deref()
                .is_ok_and(|s| s.eq_ignore_ascii_case("idle"))
            {
                break;
            }
            wait.tick(format!("{seen:?}\n{}", kit.logs())).await;
        }
        say(format!(
            "Slurm kit: up in {:.1} s, slurmrestd at {}, node {} in partition {PARTITION}, jobs as {JOB_USER} in {}",
            started.elapsed().as_secs_f64(),
            kit.rest_url,
            kit.node,
            kit.work_dir().display()
        ));
        kit
    }

    fn spawn(&mut self, name: &str, mut command: Command) {
        command.process_group(0);
        let proc = Proc::spawn(name, command, &self.dir);
        self.procs.push((name.to_owned(), proc));
    }

    fn check_alive(&mut self) {
        let mut dead = Vec::new();
        for (name, proc) in &mut self.procs {
            if let Some(status) = proc.exited() {
                dead.push(format!("{name} exited: {status}"));
            }
        }
        assert!(dead.is_empty(), "{}\n{}", dead.join("\n"), self.logs());
    }

    /// The directory the test jobs work in (owned by [`JOB_USER`]).
    pub fn work_dir(&self) -> PathBuf {
        self.dir.join("work")
    }

    /// A token for `user` signed with the cluster's key, by Slurm itself (`scontrol token`).
    pub fn scontrol_token(&self, user: &str) -> String {
        let out = Command::new("/usr/bin/scontrol")
            .args(["token", &format!("username={user}"), "lifespan=300"])
            .env("SLURM_CONF", self.dir.join("slurm.conf"))
            .output()
            .expect("scontrol");
        assert!(out.status.success(), "scontrol token: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .strip_prefix("SLURM_JWT=")
            .expect("SLURM_JWT=…")
            .to_owned()
    }

    /// `GET /slurm/v0.0.38/<path>` as [`JOB_USER`] with a token from `scontrol token`, parsed.
    pub async fn get(&self, path: &str) -> serde_json::Value {
        let token = self.scontrol_token(JOB_USER);
        let url = format!("{}/slurm/v0.0.38/{path}", self.rest_url);
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "20"])
            .args(["-H", &format!("X-SLURM-USER-NAME: {JOB_USER}")])
            .args(["-H", &format!("X-SLURM-USER-TOKEN: {token}")])
            .arg(&url)
            .output()
            .await
            .expect("curl");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "GET {url}: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// The name, comment and state of every job slurmctld knows.
    pub async fn jobs(&self) -> Vec<(String, String, String)> {
        let answer = self.get("jobs").await;
        answer["jobs"]
            .as_array()
            .map(|jobs| {
                jobs.iter()
                    .map(|j| {
                        (
                            j["name"].as_str().unwrap_or_default().to_owned(),
                            j["comment"].as_str().unwrap_or_default().to_owned(),
                            j["job_state"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The node's state through slurmrestd, or why there is none yet.
    async fn node_state(&self) -> Result<String, String> {
        let token = self.scontrol_token(JOB_USER);
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "5"])
            .args(["-H", &format!("X-SLURM-USER-NAME: {JOB_USER}")])
            .args(["-H", &format!("X-SLURM-USER-TOKEN: {token}")])
            .arg(format!(
                "{}/slurm/v0.0.38/node/{}",
                self.rest_url, self.node
            ))
            .output()
            .await
            .map_err(|e| e.to_string())?;
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stderr)))?;
        answer["nodes"][0]["state"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| answer.to_string())
    }

    /// Every log of the kit.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (name, proc) in &self.procs {
            out.push_str(&format!("--- {name} (stdout/stderr)\n{}\n", proc.log()));
        }
        for file in ["slurmctld.log", "slurmd.log", "munge/munged.log"] {
            let text = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
            out.push_str(&format!("--- {file}\n{text}\n"));
        }
        out
    }
}

impl Drop for SlurmKit {
    fn drop(&mut self) {
        if std::thread::panicking() {
            say(format!(
                "Slurm kit logs ({}):\n{}",
                self.dir.display(),
                self.logs()
            ));
        }
        for (_, proc) in self.procs.iter_mut().rev() {
            proc.kill_group();
        }
        // Job steps (slurmstepd and the jobs) carry the kit's SLURM_CONF or work directory.
        kill_leftovers(&self.dir.to_string_lossy());
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// slurm.conf of the kit.
fn slurm_conf(dir: &Path, node: &str, node_line: &str, ctld_port: u16, slurmd_port: u16) -> String {
    let d = dir.display();
    format!(
        "# The Atelier test kit's one-node cluster (tests/common/slurm.rs).
ClusterName=atelier
SlurmctldHost={node}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge/munge.socket
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key={d}/jwt_hs256.key
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=600
KillWait=5
{node_line} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"
    )
}

/// The node line as `slurmd -C` prints it (real CPUs, sockets, cores, memory), without uptime.
fn node_line(node: &str) -> String {
    let out = Command::new("/usr/sbin/slurmd")
        .arg("-C")
        .output()
        .expect("slurmd -C");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("NodeName="))
        .unwrap_or_else(|| panic!("slurmd -C printed no node: {text}"));
    let mut words: Vec<String> = line
        .split_whitespace()
        .filter(|w| !w.starts_with("UpTime="))
        .map(str::to_owned)
        .collect();
    words[0] = format!("NodeName={node}");
    words.join(" ")
}

/// The host name, which slurmctld and slurmd bind to: it must resolve to a loopback address.
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(rc, 0, "gethostname");
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    let addrs: Vec<std::net::SocketAddr> =
        std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), 0))
            .map(Iterator::collect)
            .unwrap_or_default();
    assert!(
        !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()),
        "the host name {name:?} resolves to {addrs:?}: slurmctld and slurmd bind to it, so make it \
         a 127.x address (/etc/hosts) to keep Slurm on loopback"
    );
    name
}

/// Held while [`ensure_job_user`] looks the user up and creates it.
static JOB_USER_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Creates [`JOB_USER`] when it does not exist (idempotent). One kit at a time: two kits start at
/// once in one test binary, and on a fresh machine their two `useradd`s at once left the work
/// directory chowned to a uid the user no longer had when its job ran (`Permission denied` on the
/// job's output file, the job `JobLaunchFailure`).
fn ensure_job_user() {
    let _one_at_a_time = JOB_USER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let exists = Command::new("getent")
        .args(["passwd", JOB_USER])
        .output()
        .is_ok_and(|o| o.status.success());
    if exists {
        return;
    }
    let out = Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/bin/sh",
            JOB_USER,
        ])
        .output()
        .expect("useradd");
    // A concurrent test may have created it meanwhile (exit 9: already exists).
    assert!(
        out.status.success() || out.status.code() == Some(9),
        "useradd {JOB_USER}: {out:?}"
    );
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).expect("random bytes");
    bytes
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn chown(path: &Path, user: &str) {
    let status = Command::new("chown")
        .arg(format!("{user}:{user}"))
        .arg(path)
        .status()
        .expect("chown");
    assert!(status.success(), "chown {user} {}", path.display());
}
