//! Batch jobs on the local backend, through the REST API, with real processes: each story runs
//! on SQLite and on PostgreSQL (`ATELIER_TEST_POSTGRES_URL`; skipped loudly without it).
//!
//! A job that sums a NumPy array succeeds with its output in the logs (the peers venv's
//! Python when `ATELIER_PEERS_VENV` has NumPy, else plain Python); one that exits 3 fails
//! with 3; a long one is cancelled and leaves no process; another user gets 404 and does not
//! see it; bad input is a 4xx naming the field and writes nothing; a restarted hub re-adopts a
//! running job; a workspace's own API token submits (the README's three lines, run for real
//! with the peers venv's `requests`, gated by `ATELIER_PEERS`).
//!
//! `ATELIER_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo test --test jobs_local`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use atelier::hub::catalog::{Catalog, SharedCatalog};
use atelier::store::tokens::generate_token;
use atelier::store::{AuditAction, NewToken, Store, TokenOwner, User};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

mod common;

use common::hub::{Resp, Served, audit_events, peers_venv, serve_local_jobs};
use common::{TestDb, say};

const CATALOG: &str = r#"
apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata: {name: python}
spec:
  displayName: Python
  image: local
  env: {PROFILE_VAR: from-profile}
  maxResources: {cpu: "4", memory: 8Gi}
---
apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata: {name: physics-only}
spec:
  displayName: Physics
  image: local
  allowedGroups: [physics]
---
apiVersion: atelier.dev/v1alpha1
kind: NodePool
metadata: {name: batch}
spec:
  purpose: batch
  maxDeadlineSeconds: 3600
  caps:
    perUser: {cpu: "2"}
---
apiVersion: atelier.dev/v1alpha1
kind: NodePool
metadata: {name: gpu}
spec:
  purpose: gpu
  allowedGroups: [gpu-users]
  gpu: {resourceName: nvidia.com/gpu}
"#;

/// Bounds every wait.
const WAIT: Duration = Duration::from_secs(60);

struct World {
    store: Store,
    state: PathBuf,
    web: Served,
    watcher: JoinHandle<()>,
    alice: User,
    alice_token: String,
    bob_token: String,
    _db: TestDb,
}

fn catalog() -> SharedCatalog {
    let mut c = Catalog::default();
    c.add_yaml(Path::new("catalog.yaml"), CATALOG).unwrap();
    SharedCatalog::new(c)
}

/// A hub over `store` on the local backend with its state in `state`, polling jobs every 100 ms.
async fn serve(store: Store, state: &Path) -> (Served, JoinHandle<()>) {
    serve_local_jobs(store, state, catalog(), "python").await
}

async fn token(store: &Store, user: &User, scopes: &[&str]) -> String {
    store
        .create_token(&NewToken::new(
            TokenOwner::User(user.id),
            scopes.iter().map(|s| (*s).to_owned()).collect(),
        ))
        .await
        .unwrap()
        .0
}

impl World {
    async fn new(db: TestDb) -> World {
        let state = std::env::temp_dir().join(format!("atelier-jobs-{}", &generate_token()[..12]));
        std::fs::create_dir_all(&state).unwrap();
        let store = Store::connect(db.url()).await.unwrap();
        let alice = store.create_user("alice", false).await.unwrap();
        let bob = store.create_user("bob", false).await.unwrap();
        let alice_token = token(&store, &alice, &["self"]).await;
        let bob_token = token(&store, &bob, &["self"]).await;
        let (web, watcher) = serve(store.clone(), &state).await;
        World {
            store,
            state,
            web,
            watcher,
            alice,
            alice_token,
            bob_token,
            _db: db,
        }
    }

    async fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Resp {
        let auth = format!("token {token}");
        self.web
            .request(
                method,
                path,
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                body.map(|b| b.to_string()).unwrap_or_default(),
            )
            .await
    }

    async fn submit(&self, body: Value) -> Value {
        let r = self
            .call(
                "POST",
                "/hub/api/users/alice/jobs",
                &self.alice_token,
                Some(body),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()
    }

    /// Waits until alice's job `name` is finished; returns its model.
    async fn finished(&self, name: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let r = self
                .call(
                    "GET",
                    &format!("/hub/api/users/alice/jobs/{name}"),
                    &self.alice_token,
                    None,
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
            let job = r.json();
            if ["Succeeded", "Failed", "Cancelled"].contains(&job["phase"].as_str().unwrap()) {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {name} never finished: {job}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn logs(&self, name: &str) -> String {
        let r = self
            .call(
                "GET",
                &format!("/hub/api/users/alice/jobs/{name}/logs"),
                &self.alice_token,
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.header("content-type").unwrap().starts_with("text/plain"));
        r.body
    }

    async fn close(self) {
        self.watcher.abort();
        self.store.close().await;
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// A Python with NumPy (the peers venv's) and the job that sums `arange(10)`; else plain Python
/// and `sum(range(10))`.
fn sum_job() -> Vec<String> {
    if let Some(venv) = std::env::var_os("ATELIER_PEERS_VENV") {
        let python = PathBuf::from(venv).join("bin/python");
        let has_numpy = std::process::Command::new(&python)
            .args(["-c", "import numpy"])
            .status()
            .is_ok_and(|s| s.success());
        if has_numpy {
            return vec![
                python.to_string_lossy().into_owned(),
                "-c".into(),
                "import numpy, os; print(numpy.arange(10).sum()); print(os.environ['PROFILE_VAR'])"
                    .into(),
            ];
        }
    }
    say("jobs_local: no NumPy in $ATELIER_PEERS_VENV: the sum job runs plain python3");
    vec![
        "python3".into(),
        "-c".into(),
        "import os; print(sum(range(10))); print(os.environ['PROFILE_VAR'])".into(),
    ]
}

fn pid_alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

async fn succeeds_and_fails_with_exit_codes(w: &World) {
    let job = w
        .submit(json!({"command": sum_job(), "resources": {"cpu": "1"}}))
        .await;
    let name = job["name"].as_str().unwrap().to_owned();
    assert!(name.starts_with("alice-"), "{name}");
    assert_eq!(job["user"], "alice");
    assert_eq!(job["profile"], "python");
    assert_eq!(job["node_pool"], "batch");
    assert_eq!(job["system"], "local");
    let done = w.finished(&name).await;
    assert_eq!(done["phase"], "Succeeded", "{done}");
    assert_eq!(done["exit_code"], 0);
    assert!(
        done["started"].is_string() && done["finished"].is_string(),
        "{done}"
    );
    let logs = w.logs(&name).await;
    assert_eq!(logs, "45\nfrom-profile\n");

    let three = w
        .submit(json!({"command": ["python3", "-c", "import sys; print('bye'); sys.exit(3)"]}))
        .await;
    let name3 = three["name"].as_str().unwrap();
    let done = w.finished(name3).await;
    assert_eq!(
        (done["phase"].as_str(), done["exit_code"].as_i64()),
        (Some("Failed"), Some(3))
    );
    assert_eq!(done["reason"], "Error");
    assert_eq!(w.logs(name3).await, "bye\n");

    // The list: newest first, paginated as the users list.
    let r = w
        .web
        .request(
            "GET",
            "/hub/api/users/alice/jobs?limit=1",
            &[
                ("authorization", &format!("token {}", w.alice_token)),
                ("accept", "application/jupyterhub-pagination+json"),
            ],
            String::new(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let page = r.json();
    assert_eq!(page["items"][0]["name"], name3);
    assert_eq!(page["_pagination"]["total"], 2);
    assert_eq!(page["_pagination"]["next"]["offset"], 1);
    let plain = w
        .call("GET", "/hub/api/users/alice/jobs", &w.alice_token, None)
        .await;
    assert_eq!(plain.json().as_array().unwrap().len(), 2);

    let submits = audit_events(&w.store, AuditAction::JobSubmit).await;
    assert_eq!(submits.len(), 2);
    assert_eq!(submits[0].target_user.as_deref(), Some("alice"));
}

async fn cancel_kills_the_group(w: &World) {
    // The job starts a child of its own: the whole group goes.
    let job = w
        .submit(json!({
            "command": ["python3", "-c",
                "import subprocess, time; subprocess.Popen(['sleep', '300']); print('up', flush=True); time.sleep(300)"],
            "deadline_seconds": 600,
        }))
        .await;
    let name = job["name"].as_str().unwrap().to_owned();
    let row = wait_running(w, &name).await;
    let pid = row.pid.expect("a pid");
    assert!(pid_alive(pid));
    let r = w
        .call(
            "POST",
            &format!("/hub/api/users/alice/jobs/{name}/cancel"),
            &w.alice_token,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let done = w.finished(&name).await;
    assert_eq!(done["phase"], "Cancelled", "{done}");
    assert_eq!(done["reason"], "Cancelled");
    assert!(!pid_alive(pid), "the job's process is still there");
    let members = group_members(pid);
    assert!(
        members.is_empty(),
        "processes of the job's group left: {members:?}"
    );
    // Cancelling again: it has finished.
    let r = w
        .call(
            "POST",
            &format!("/hub/api/users/alice/jobs/{name}/cancel"),
            &w.alice_token,
            None,
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(
        audit_events(&w.store, AuditAction::JobCancel).await.len(),
        1
    );
}

async fn deadline_kills_the_job(w: &World) {
    let job = w
        .submit(json!({"command": ["sleep", "300"], "deadline_seconds": 1}))
        .await;
    let name = job["name"].as_str().unwrap();
    let done = w.finished(name).await;
    assert_eq!(
        (done["phase"].as_str(), done["reason"].as_str()),
        (Some("Failed"), Some("DeadlineExceeded")),
        "{done}"
    );
}

fn group_members(pgid: i64) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                let rest: Vec<&str> = s
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .collect();
                rest.get(2) == Some(&pgid.to_string().as_str()) && rest.first() != Some(&"Z")
            })
        })
        .collect()
}

async fn wait_running(w: &World, name: &str) -> atelier::store::Job {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let job = w.store.get_job(w.alice.id, name).await.unwrap();
        if job.phase.as_str() == "Running" && job.pid.is_some() {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never ran: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn other_users_get_404(w: &World) {
    let job = w.submit(json!({"command": ["sleep", "30"]})).await;
    let name = job["name"].as_str().unwrap().to_owned();
    for (method, path) in [
        ("GET", format!("/hub/api/users/alice/jobs/{name}")),
        ("POST", format!("/hub/api/users/alice/jobs/{name}/cancel")),
        ("GET", format!("/hub/api/users/alice/jobs/{name}/logs")),
        ("GET", "/hub/api/users/alice/jobs".to_owned()),
        ("POST", "/hub/api/users/alice/jobs".to_owned()),
    ] {
        let r = w
            .call(
                method,
                &path,
                &w.bob_token,
                Some(json!({"command": ["true"]})),
            )
            .await;
        assert_eq!(r.status, 404, "bob {method} {path}: {}", r.body);
    }
    // Bob's own list does not show it.
    let r = w
        .call("GET", "/hub/api/users/bob/jobs", &w.bob_token, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!([]));
    // A token without any jobs scope: 403.
    let reader = token(&w.store, &w.alice, &["read:users!user=alice"]).await;
    let r = w
        .call("GET", "/hub/api/users/alice/jobs", &reader, None)
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    // Still running after all that.
    assert_eq!(wait_running(w, &name).await.phase.as_str(), "Running");
    let r = w
        .call(
            "POST",
            &format!("/hub/api/users/alice/jobs/{name}/cancel"),
            &w.alice_token,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

async fn bad_input_is_refused(w: &World) {
    let long_arg = "x".repeat(5000);
    let too_many: Vec<String> = (0..300).map(|i| i.to_string()).collect();
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({}), 400, "\"command\""),
        (json!({"command": []}), 400, "\"command\": InvalidCommand"),
        (json!({"command": "python3 -c 1"}), 400, "\"command\""),
        (json!({"command": ["python3", 1]}), 400, "\"command\""),
        (
            json!({"command": ["python3", long_arg]}),
            400,
            "\"command\": InvalidCommand",
        ),
        (
            json!({"command": too_many}),
            400,
            "\"command\": InvalidCommand",
        ),
        (
            json!({"command": ["true"], "profile": "nope"}),
            400,
            "\"profile\": ProfileNotFound",
        ),
        (
            json!({"command": ["true"], "profile": "physics-only"}),
            403,
            "\"profile\": ProfileForbidden",
        ),
        (
            json!({"command": ["true"], "node_pool": "nope"}),
            400,
            "\"node_pool\": NodePoolNotFound",
        ),
        (
            json!({"command": ["true"], "deadline_seconds": -5}),
            400,
            "\"deadline_seconds\": InvalidDeadline",
        ),
        (
            json!({"command": ["true"], "deadline_seconds": 7200}),
            400,
            "\"deadline_seconds\": DeadlineExceedsPool",
        ),
        (
            json!({"command": ["true"], "resources": {"gpus": 1}}),
            400,
            "\"node_pool\": NoEligiblePool: no gpu NodePool is open",
        ),
        (
            json!({"command": ["true"], "resources": {"gpus": 1}, "node_pool": "gpu"}),
            403,
            "\"node_pool\": NodePoolForbidden",
        ),
        (
            json!({"command": ["true"], "resources": {"cpu": "3"}}),
            403,
            "\"node_pool\": UserCapExceeded",
        ),
        (
            json!({"command": ["true"], "shell": true}),
            400,
            "unexpected field \"shell\"",
        ),
        (
            json!({"command": ["true"], "env": {"A": 1}}),
            400,
            "\"env\"",
        ),
        (
            json!({"command": ["true"], "working_dir": "/"}),
            400,
            "\"working_dir\"",
        ),
        (
            json!({"command": ["true"], "working_dir": "../bob"}),
            400,
            "\"working_dir\"",
        ),
    ];
    for (body, status, fragment) in cases {
        let r = w
            .call(
                "POST",
                "/hub/api/users/alice/jobs",
                &w.alice_token,
                Some(body.clone()),
            )
            .await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        let answer = r.json();
        assert_eq!(answer["status"], status, "{}", r.body);
        assert!(
            r.message().contains(fragment),
            "{body}: {:?} lacks {fragment}",
            r.message()
        );
    }
    let page = w.store.list_jobs(w.alice.id, 0, 10).await.unwrap();
    assert_eq!(page.total, 0, "refused jobs were written: {:?}", page.items);
    assert!(
        audit_events(&w.store, AuditAction::JobSubmit)
            .await
            .is_empty()
    );
}

async fn caps_count_running_jobs(w: &World) {
    let first = w
        .submit(json!({"command": ["sleep", "30"], "resources": {"cpu": "2"}}))
        .await;
    let name = first["name"].as_str().unwrap().to_owned();
    wait_running(w, &name).await;
    let r = w
        .call(
            "POST",
            "/hub/api/users/alice/jobs",
            &w.alice_token,
            Some(json!({"command": ["true"], "resources": {"cpu": "1"}})),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.message().contains("UserCapExceeded"), "{}", r.message());
    w.call(
        "POST",
        &format!("/hub/api/users/alice/jobs/{name}/cancel"),
        &w.alice_token,
        None,
    )
    .await;
    w.finished(&name).await;
    // Its CPU is free again.
    w.submit(json!({"command": ["true"], "resources": {"cpu": "1"}}))
        .await;
}

async fn restart_readopts_a_running_job(w: World) {
    let job = w
        .submit(json!({"command": ["python3", "-c", "import time; print('on', flush=True); time.sleep(300)"]}))
        .await;
    let name = job["name"].as_str().unwrap().to_owned();
    let pid = wait_running(&w, &name).await.pid.unwrap();
    // The hub goes (its server, its poller, its backend); the job keeps running.
    let World {
        store,
        state,
        web,
        watcher,
        alice,
        alice_token,
        bob_token,
        _db,
    } = w;
    watcher.abort();
    drop(web);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(pid_alive(pid), "the job died with the hub");
    let (web, watcher) = serve(store.clone(), &state).await;
    let w = World {
        store,
        state,
        web,
        watcher,
        alice,
        alice_token,
        bob_token,
        _db,
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = w
        .call(
            "GET",
            &format!("/hub/api/users/alice/jobs/{name}"),
            &w.alice_token,
            None,
        )
        .await;
    assert_eq!(r.json()["phase"], "Running", "{}", r.body);
    // Running is the process; its first line may still be on its way (a loaded machine starts
    // Python slowly): wait for it, bounded.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut logs = w.logs(&name).await;
    while logs.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        logs = w.logs(&name).await;
    }
    assert_eq!(logs, "on\n");
    let r = w
        .call(
            "POST",
            &format!("/hub/api/users/alice/jobs/{name}/cancel"),
            &w.alice_token,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let done = w.finished(&name).await;
    assert_eq!(done["phase"], "Cancelled", "{done}");
    assert!(!pid_alive(pid));
    w.close().await;
}

async fn server_token_submits(w: &World) {
    // The `server` role's token, as a workspace's JUPYTERHUB_API_TOKEN.
    let scopes =
        w.web
            .hub
            .config
            .roles
            .server_token_scopes("alice", false, &Default::default(), "");
    assert!(scopes.contains(&"jobs!user=alice".to_owned()), "{scopes:?}");
    let server_token = w
        .store
        .create_token(&NewToken::new(TokenOwner::User(w.alice.id), scopes))
        .await
        .unwrap()
        .0;
    let Some(venv) = peers_venv("the README's requests example", &["python"]) else {
        let r = w
            .call(
                "POST",
                "/hub/api/users/alice/jobs",
                &server_token,
                Some(json!({"command": ["true"]})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        return;
    };
    // README, "Batch jobs": its three lines, as a notebook runs them, then the job's name.
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let after = readme
        .split("From a notebook, with the workspace's own token:")
        .nth(1)
        .expect("the README's example");
    let code = after
        .split("```python\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    assert_eq!(code.lines().count(), 3, "{code}");
    let script = format!("{code}print(job[\"name\"])\n");
    let out = tokio::process::Command::new(venv.join("bin/python"))
        .args(["-c", &script])
        .env("JUPYTERHUB_API_URL", format!("{}/hub/api", w.web.base))
        .env("JUPYTERHUB_USER", "alice")
        .env("JUPYTERHUB_API_TOKEN", &server_token)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let done = w.finished(&name).await;
    assert_eq!(done["phase"], "Succeeded", "{done}");
    assert_eq!(w.logs(&name).await, "42\n");
}

async fn jobs_page(w: &World) {
    let mut b = w.web.logged_in("alice").await;
    let page = b.get("/hub/jobs").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Batch jobs") && page.body.contains("You have no jobs."));
    assert!(
        page.body.contains(r#"<option value="python""#),
        "{}",
        page.body
    );
    assert!(
        !page.body.contains("physics-only"),
        "a profile alice may not use is offered"
    );
    let home = b.get("/hub/home").await;
    assert!(
        home.body.contains(r#"<a href="/hub/jobs">Jobs</a>"#),
        "no link in the nav"
    );
    let xsrf = page.xsrf();
    let fields = [
        ("profile", "python"),
        ("command", "python3\n-c\nprint(6 * 7)"),
    ];
    // Without the CSRF token: refused, nothing submitted.
    let r = b.post("/hub/jobs", &fields).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(w.store.list_jobs(w.alice.id, 0, 10).await.unwrap().total, 0);
    // Bad input: the page again, with the field named.
    let r = b
        .post(
            "/hub/jobs",
            &[("_xsrf", &xsrf), ("profile", "python"), ("command", "")],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("field &quot;command&quot;"), "{}", r.body);
    let r = b
        .post(
            "/hub/jobs",
            &[
                ("_xsrf", &xsrf),
                ("profile", "python"),
                ("command", "sleep\n1"),
                ("deadline_seconds", "99999"),
            ],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("DeadlineExceedsPool"), "{}", r.body);
    assert_eq!(w.store.list_jobs(w.alice.id, 0, 10).await.unwrap().total, 0);
    // A job: submitted, listed, its output shown.
    let mut with_token = vec![("_xsrf", xsrf.as_str())];
    with_token.extend(fields);
    let r = b.post("/hub/jobs", &with_token).await;
    assert_eq!((r.status, r.location()), (303, "/hub/jobs"), "{}", r.body);
    let job = w
        .store
        .list_jobs(w.alice.id, 0, 10)
        .await
        .unwrap()
        .items
        .remove(0);
    let done = w.finished(&job.name).await;
    assert_eq!(done["phase"], "Succeeded", "{done}");
    let page = b.get(&format!("/hub/jobs?logs={}", job.name)).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(&job.name) && page.body.contains("Succeeded"));
    assert!(page.body.contains("<code>42\n</code>"), "{}", page.body);
    // Cancel from the page.
    let r = b
        .post(
            "/hub/jobs",
            &[
                ("_xsrf", &xsrf),
                ("profile", "python"),
                ("command", "sleep\n300"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let long = w
        .store
        .list_jobs(w.alice.id, 0, 1)
        .await
        .unwrap()
        .items
        .remove(0);
    wait_running(w, &long.name).await;
    let page = b.get("/hub/jobs").await;
    assert!(
        page.body.contains(r#"http-equiv="refresh""#),
        "an unfinished job: no refresh"
    );
    let cancel = format!("/hub/jobs/{}/cancel", long.name);
    assert_eq!(
        b.post(&cancel, &[]).await.status,
        403,
        "cancel without the CSRF token"
    );
    let r = b.post(&cancel, &[("_xsrf", &xsrf)]).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(w.finished(&long.name).await["phase"], "Cancelled");
    // Another user's job is not theirs to see or cancel.
    let mut bob = w.web.logged_in("bob").await;
    let bob_xsrf = bob.xsrf().await;
    assert_eq!(
        bob.get(&format!("/hub/jobs?logs={}", job.name))
            .await
            .status,
        404
    );
    assert_eq!(bob.post(&cancel, &[("_xsrf", &bob_xsrf)]).await.status, 404);
}

fn sqlite_db() -> TestDb {
    TestDb::sqlite("atelier-jobs")
}

async fn postgres_db() -> Option<TestDb> {
    TestDb::postgres("atelier_jobs", "PostgreSQL batch job tests").await
}

macro_rules! stories {
    ($($story:ident),* $(,)?) => {$(
        mod $story {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let w = super::World::new(super::sqlite_db()).await;
                super::$story(&w).await;
                w.close().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = super::postgres_db().await else { return };
                let w = super::World::new(db).await;
                super::$story(&w).await;
                w.close().await;
            }
        }
    )*};
}

stories!(
    succeeds_and_fails_with_exit_codes,
    cancel_kills_the_group,
    deadline_kills_the_job,
    other_users_get_404,
    bad_input_is_refused,
    caps_count_running_jobs,
    server_token_submits,
    jobs_page,
);

mod restart {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::restart_readopts_a_running_job(super::World::new(super::sqlite_db()).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let Some(db) = super::postgres_db().await else {
            return;
        };
        super::restart_readopts_a_running_job(super::World::new(db).await).await;
    }
}
