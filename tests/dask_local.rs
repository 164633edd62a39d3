//! Issue 12's local story with the real peers: a workspace of the `local` backend gets a real
//! Dask cluster (`dask scheduler` + workers of the peers venv, TLS with a CA of its own), its
//! kernels' `Client()` connects with no argument, the dashboard is served through the proxy to
//! the owner only, another user's kernel cannot join, and a stop leaves no process behind.
//!
//! `atelier hub` (plain: no catalogue, so `user_options.dask` with the built-in defaults) and
//! `atelier proxy` run as processes, on SQLite and on PostgreSQL (`ATELIER_TEST_POSTGRES_URL`).
//!
//! Gated by `ATELIER_PEERS=1` (a missing peer is then a failure):
//! `ATELIER_PEERS=1 ATELIER_PEERS_VENV=$PWD/.peers/venv cargo test --test dask_local --
//! --nocapture`. On failure every log is printed and the directory kept.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use atelier::store::tokens::generate_token;
use serde_json::{Value, json};

mod common;

use common::hub::peers_venv;
use common::kernel::Kernel;
use common::stack::{Deadline, Proc, ProcInfo, processes, singleusers};
use common::story;
use common::{TestDb, say};

/// The cell of the story: 2 workers, and 8000 × 8000 ones summed by them.
const COMPUTE: &str = "from dask.distributed import Client\nimport dask.array as da\n\
c = Client()\nprint(len(c.scheduler_info()[\"workers\"]))\n\
print(da.ones((8000, 8000), chunks=1000).sum().compute())";

struct World {
    dir: PathBuf,
    dir_str: String,
    db: TestDb,
    api: story::Api,
    procs: BTreeMap<String, Proc>,
}

impl Drop for World {
    fn drop(&mut self) {
        story::wind_up("dask_local", &self.dir, &mut self.procs, Vec::new(), 80);
    }
}

impl std::ops::Deref for World {
    type Target = story::Api;

    fn deref(&self) -> &story::Api {
        &self.api
    }
}

impl World {
    async fn new(venv: PathBuf, db: TestDb) -> World {
        let dir = std::env::temp_dir().join(format!("atelier-dask-{}", &generate_token()[..16]));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut world = World {
            dir_str: dir.to_string_lossy().into_owned(),
            dir,
            db,
            api: story::Api::new(),
            procs: BTreeMap::new(),
        };
        let singleuser = venv.join("bin/jupyterhub-singleuser");
        let command = world.hub_command(world.db.url(), &world.dir.join("state"), &singleuser);
        world
            .api
            .launch(&world.dir, command, world.db.url(), &mut world.procs)
            .await;
        world
    }

    /// Starts `user`'s default server with `workers` Dask workers and waits until the proxy
    /// routes to it.
    async fn start(&self, user: &str, token: &str, workers: u32) {
        let dask = json!({"workers": {"min": workers, "max": 4}});
        self.start_with(user, token, dask).await;
    }

    /// Starts `user`'s default server with `dask` as `user_options.dask` and waits until the
    /// proxy routes to it.
    async fn start_with(&self, user: &str, token: &str, dask: Value) {
        let url = format!("{}/hub/api/users/{user}/server", self.hub());
        let options = json!({"user_options": {"dask": dask}});
        let (status, body) = self.call("POST", &url, token, Some(options)).await;
        assert!(
            status == 201 || status == 202,
            "start {user}: {status} {body}"
        );
        self.wait_ready(user, token).await;
    }
}

/// The environment of `user`'s single-user server.
fn server_env(world: &World, user: &str) -> (i32, BTreeMap<String, String>) {
    let procs = singleusers(&world.dir_str, user);
    assert_eq!(procs.len(), 1, "one jupyterhub-singleuser for {user}");
    let env = procs[0]
        .environ
        .iter()
        .filter_map(|e| e.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    (procs[0].pid, env)
}

/// The live `dask` processes in process group `pgid`.
fn dask_processes(pgid: i32) -> Vec<ProcInfo> {
    processes()
        .into_iter()
        .filter(|p| p.alive() && p.pgid == pgid && p.cmdline.contains("dask"))
        .collect()
}

/// One story at a time: two clusters and four servers are a lot for a small machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn story(what: &str, db: TestDb) {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(venv) = peers_venv(what, &["jupyterhub-singleuser", "dask", "python"]) else {
        return;
    };
    let world = World::new(venv, db).await;
    let alice = world.user("alice").await;
    let bob = world.user("bob").await;

    // A server named `dask` would hide the default server's dashboard.
    let (status, body) = world
        .call(
            "POST",
            &format!("{}/hub/api/users/alice/servers/dask", world.hub()),
            &alice,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("dask"), "{body}");

    world.start("alice", &alice, 2).await;
    let (alice_pid, env) = server_env(&world, "alice");
    let address = env["DASK_SCHEDULER_ADDRESS"].clone();
    assert!(address.starts_with("tls://127.0.0.1:"), "{address}");
    assert_eq!(env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"], "True");
    assert_eq!(
        env["DASK_DISTRIBUTED__DASHBOARD__LINK"],
        format!("{}/user/alice/dask/status", world.public())
    );
    for var in [
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE",
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT",
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY",
    ] {
        let path = &env[var];
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(path)
                .unwrap_or_else(|e| panic!("{var}={path}: {e}"))
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{var}={path}");
    }
    // Scheduler and 2 workers, in the server's process group, without the hub's token.
    let cluster = dask_processes(alice_pid);
    let count = |what: &str| cluster.iter().filter(|p| p.cmdline.contains(what)).count();
    assert_eq!(count("dask scheduler"), 1, "{cluster:#?}");
    assert!(count("dask worker") >= 2, "{cluster:#?}");
    for p in &cluster {
        assert_eq!(p.env("JUPYTERHUB_API_TOKEN"), None, "{}", p.cmdline);
        assert!(p.cmdline.contains("--tls-cert="), "{}", p.cmdline);
    }
    say("dask_local: alice's workspace and cluster up");

    let kernel = Kernel::start(world.proxy_port, "alice", &alice).await;
    let out = kernel.run(COMPUTE).await.map_err(|e| e.to_string());
    assert_eq!(out, Ok("2\n64000000.0\n".to_owned()));
    say("dask_local: alice's Client() computed on 2 workers");

    // The dashboard through the proxy: alice's, not bob's.
    let dashboard = format!("{}/user/alice/dask/status", world.public());
    let (status, body) = world.call("GET", &dashboard, &alice, None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Dask") || body.contains("bokeh"), "{body}");
    let (status, _) = world.call("GET", &dashboard, &bob, None).await;
    assert_eq!(status, 403, "bob must not see alice's dashboard");
    let (status, _) = world.call("GET", &dashboard, "", None).await;
    assert!(
        status == 401 || status == 403 || status == 302,
        "anonymous: {status}"
    );

    // bob, with a cluster (and a CA) of his own, cannot join alice's.
    world.start("bob", &bob, 1).await;
    let bob_kernel = Kernel::start(world.proxy_port, "bob", &bob).await;
    let join = format!(
        "import os, socket, ssl\nfrom dask.distributed import Client\n\
         try:\n    Client({address:?}, timeout=5)\n    print('joined')\n\
         except OSError as e:\n    print('refused')\n\
         ctx = ssl.create_default_context(cafile=os.environ['DASK_DISTRIBUTED__COMM__TLS__CA_FILE'])\n\
         ctx.check_hostname = False\n\
         ctx.load_cert_chain(os.environ['DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT'], os.environ['DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY'])\n\
         host, port = {address:?}[len('tls://'):].rsplit(':', 1)\n\
         try:\n    ctx.wrap_socket(socket.create_connection((host, int(port)), 5)).close()\n    print('handshake ok')\n\
         except ssl.SSLCertVerificationError as e:\n    print(e.verify_message)\n"
    );
    let out = bob_kernel.run(&join).await.map_err(|e| e.to_string());
    assert_eq!(
        out,
        Ok("refused\nself-signed certificate in certificate chain\n".to_owned())
    );
    say("dask_local: bob's kernel refused by alice's scheduler (TLS)");

    // A stop takes the cluster with the server.
    let pids: Vec<i32> = cluster.iter().map(|p| p.pid).collect();
    world.stop("alice", &alice).await;
    let deadline = Deadline::new("alice's Dask processes to exit", Duration::from_secs(20));
    loop {
        let left: Vec<i32> = processes()
            .into_iter()
            .filter(|p| p.alive() && (p.pgid == alice_pid || pids.contains(&p.pid)))
            .map(|p| p.pid)
            .collect();
        if left.is_empty() {
            break;
        }
        deadline.tick(left).await;
    }
    assert!(!std::path::Path::new(&env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY"]).exists());
    let (status, _) = world.call("GET", &dashboard, &alice, None).await;
    assert_ne!(status, 200, "no dashboard after the stop");
    world.stop("bob", &bob).await;
    say("dask_local: alice's cluster gone with her server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dask_cluster_in_a_local_workspace_on_sqlite() {
    let db = TestDb::sqlite("dask_local");
    story(
        "local Dask story on SQLite (hub, proxy, jupyterhub-singleuser, dask)",
        db,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dask_cluster_in_a_local_workspace_on_postgres() {
    let what = "local Dask story on PostgreSQL (hub, proxy, jupyterhub-singleuser, dask)";
    let Some(db) = TestDb::postgres("dask_local", what).await else {
        return;
    };
    story(what, db).await;
}

/// The lines the backend wrote into the servers' logs (`[atelier] …`).
fn atelier_notes(world: &World) -> String {
    let mut notes = String::new();
    if let Ok(entries) = std::fs::read_dir(world.dir.join("state/logs")) {
        for e in entries.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            for line in text.lines().filter(|l| l.starts_with("[atelier] ")) {
                notes.push_str(line);
                notes.push('\n');
            }
        }
    }
    notes
}

/// The `dask scheduler` and `dask worker` processes of group `pgid`: (schedulers, workers).
fn members(pgid: i32) -> (Vec<i32>, Vec<i32>) {
    let all = dask_processes(pgid);
    let pids = |what: &str| {
        all.iter()
            .filter(|p| p.cmdline.contains(what))
            .map(|p| p.pid)
            .collect::<Vec<_>>()
    };
    (pids("dask scheduler"), pids("dask worker"))
}

/// Issue 12, a dead local scheduler: killed, it is started again on the same address with
/// `min` fresh workers and a kernel's `Client()` computes again; ended by its idle timeout, its
/// workers go too and nothing is started again, while the server runs on. Both are written
/// into the server's log.
async fn dead_scheduler_story(what: &str, db: TestDb) {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(venv) = peers_venv(what, &["jupyterhub-singleuser", "dask", "python"]) else {
        return;
    };
    let world = World::new(venv, db).await;
    let alice = world.user("alice").await;
    world.start("alice", &alice, 2).await;
    let (alice_pid, env) = server_env(&world, "alice");
    let address = env["DASK_SCHEDULER_ADDRESS"].clone();
    let (schedulers, old_workers) = members(alice_pid);
    assert_eq!(schedulers.len(), 1, "{schedulers:?}");
    let killed = schedulers[0];
    // SAFETY: kill(2) of the scheduler this story's server started.
    assert_eq!(unsafe { libc::kill(killed, libc::SIGKILL) }, 0);
    let deadline = Deadline::new(
        "a new scheduler and 2 new workers in alice's group",
        Duration::from_secs(60),
    );
    loop {
        let (schedulers, workers) = members(alice_pid);
        let fresh = workers.iter().filter(|w| !old_workers.contains(w)).count();
        let old_left = workers.iter().filter(|w| old_workers.contains(w)).count();
        if schedulers.len() == 1 && schedulers[0] != killed && fresh == 2 && old_left == 0 {
            break;
        }
        deadline
            .tick((schedulers, workers, old_workers.clone()))
            .await;
    }
    let notes = atelier_notes(&world);
    assert!(
        notes.contains(&format!(
            "the Dask scheduler was killed by signal 9; started it again on {address} with 2 \
             worker(s) (restart 1)"
        )),
        "{notes}"
    );
    // The same address, the same TLS files: a kernel's `Client()` computes as before.
    let kernel = Kernel::start(world.proxy_port, "alice", &alice).await;
    let cell = "from dask.distributed import Client\nimport dask.array as da\n\
c = Client()\nc.wait_for_workers(2, timeout=60)\nprint(len(c.scheduler_info()[\"workers\"]))\n\
print(da.ones((8000, 8000), chunks=1000).sum().compute())";
    let out = kernel.run(cell).await.map_err(|e| e.to_string());
    assert_eq!(out, Ok("2\n64000000.0\n".to_owned()));
    say("dask_local: alice's killed scheduler was started again, Client() computes");
    world.stop("alice", &alice).await;

    // An idle timeout ends the cluster for good (until the next start).
    let bob = world.user("bob").await;
    world
        .start_with(
            "bob",
            &bob,
            // Longer than the start (the scheduler is idle from its own start on).
            json!({"workers": {"min": 1, "max": 2}, "idleTimeoutSeconds": 20}),
        )
        .await;
    let (bob_pid, _) = server_env(&world, "bob");
    let deadline = Deadline::new("bob's idle cluster to stop", Duration::from_secs(60));
    loop {
        let (schedulers, workers) = members(bob_pid);
        if schedulers.is_empty() && workers.is_empty() {
            break;
        }
        deadline.tick((schedulers, workers)).await;
    }
    // Not started again: a few supervision rounds later there is still none.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(members(bob_pid), (vec![], vec![]));
    assert_eq!(server_env(&world, "bob").0, bob_pid, "the server runs on");
    let (_, body) = world.admin("GET", "/hub/api/users/bob", None).await;
    let model: Value = serde_json::from_str(&body).expect("user model");
    assert_eq!(model["servers"][""]["ready"], true, "{body}");
    let notes = atelier_notes(&world);
    assert!(
        notes.contains(
            "the Dask cluster stopped after 20 s without work (idleTimeoutSeconds); restart \
             the server for a new one"
        ),
        "{notes}"
    );
    world.stop("bob", &bob).await;
    say("dask_local: bob's idle cluster stopped and stayed stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_local_scheduler_is_restarted_and_an_idle_one_stops() {
    let db = TestDb::sqlite("dask_local_dead");
    dead_scheduler_story(
        "local Dask supervision story on SQLite (hub, proxy, jupyterhub-singleuser, dask)",
        db,
    )
    .await;
}

/// Issue 12, local scaling: a cluster of 1 to 2 workers grows to 2 worker processes while work
/// waits (never more), computes, and goes back to 1 once idle, its surplus worker retired
/// through the scheduler.
async fn scaling_story(what: &str, db: TestDb) {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(venv) = peers_venv(what, &["jupyterhub-singleuser", "dask", "python"]) else {
        return;
    };
    let world = World::new(venv, db).await;
    let carol = world.user("carol").await;
    world
        .start_with("carol", &carol, json!({"workers": {"min": 1, "max": 2}}))
        .await;
    let (pid, _) = server_env(&world, "carol");
    assert_eq!(members(pid).1.len(), 1, "min workers at the start");
    let kernel = Kernel::start(world.proxy_port, "carol", &carol).await;
    // 40 tasks of a second each: the scheduler's adaptive target rises above 1.
    let submit = "import time\nfrom dask.distributed import Client\nc = Client()\n\
futs = c.map(lambda i: time.sleep(1) or i, range(40))\nprint(len(futs))";
    let out = kernel.run(submit).await.map_err(|e| e.to_string());
    assert_eq!(out, Ok("40\n".to_owned()));
    let deadline = Deadline::new(
        "carol's cluster to grow to 2 workers",
        Duration::from_secs(60),
    );
    let mut most = 0;
    loop {
        let workers = members(pid).1.len();
        most = most.max(workers);
        assert!(workers <= 2, "above max: {workers}");
        if workers == 2 {
            break;
        }
        deadline.tick(workers).await;
    }
    // While the work still runs (the scheduler retires a worker as soon as it is done).
    let count = "print(c.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.workers)))";
    let out = kernel
        .run(&format!(
            "c.wait_for_workers(2, timeout=60)\n{count}\nprint(sum(c.gather(futs)))"
        ))
        .await
        .map_err(|e| e.to_string());
    assert_eq!(out, Ok("2\n780\n".to_owned()), "both workers joined");
    say("dask_local: carol's cluster grew to 2 workers under load");
    // Idle (nothing held): back to min, never above max meanwhile.
    let out = kernel.run("del futs\nprint('idle')").await;
    assert_eq!(out.map_err(|e| e.to_string()), Ok("idle\n".to_owned()));
    let deadline = Deadline::new(
        "carol's cluster to shrink to 1 worker",
        Duration::from_secs(60),
    );
    loop {
        let workers = members(pid).1.len();
        most = most.max(workers);
        if workers == 1 {
            break;
        }
        deadline.tick(workers).await;
    }
    assert_eq!(most, 2, "never above max");
    let out = kernel.run(count).await.map_err(|e| e.to_string());
    assert_eq!(out, Ok("1\n".to_owned()), "the scheduler retired the other");
    // And it stays there (min), a few adaptive rounds later.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(members(pid).1.len(), 1);
    world.stop("carol", &carol).await;
    say("dask_local: carol's idle cluster went back to 1 worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_cluster_scales_between_min_and_max() {
    let db = TestDb::sqlite("dask_local_scale");
    scaling_story(
        "local Dask scaling story on SQLite (hub, proxy, jupyterhub-singleuser, dask)",
        db,
    )
    .await;
}
