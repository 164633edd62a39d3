//! The elector on the mock API (tower-test), on tokio's paused clock: each test asserts the
//! exact requests (method, path, body) and what the elector concludes. `run_as_leader` and two
//! electors racing run on a small in-memory Lease store that enforces `resourceVersion`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

use super::*;
use crate::operator::workspace::fixtures::assert_granted;
use crate::rbac::testing::{assert_json_eq, json_body, parse_query};

const NS: &str = "atelier";
const NAME: &str = "atelier-operator";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/atelier/leases";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/atelier/leases/atelier-operator";
/// Bound of each expected request: a missing one fails the test instead of hanging it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

type MockHandle = Handle<Request<Body>, Response<Body>>;

/// The wall time of the test's start (what `acquireTime`/`renewTime` carry).
fn base() -> Timestamp {
    "2026-12-06T10:00:00Z".parse().expect("a timestamp")
}

/// `base() + secs`, as the API server serializes a MicroTime.
fn stamp(secs: i64) -> String {
    let t = base() + k8s_openapi::jiff::SignedDuration::from_secs(secs);
    serde_json::to_value(MicroTime(t))
        .expect("serializes")
        .as_str()
        .expect("a string")
        .to_owned()
}

/// A wall clock that follows tokio's (paused) clock from `base()`.
fn paused_wall_clock() -> WallClock {
    let start = Instant::now();
    Arc::new(move || {
        let elapsed =
            k8s_openapi::jiff::SignedDuration::try_from(start.elapsed()).expect("a short test");
        base() + elapsed
    })
}

fn elector_on(identity: &str) -> (LeaderElector, MockHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, NS);
    let settings = LeaseSettings::new(NAME, NS, identity.to_owned());
    let elector = LeaderElector::with_wall_clock(client, settings, paused_wall_clock());
    (elector, handle)
}

/// The Lease as the API server returns it.
fn lease(holder: Option<&str>, rv: u32, renewed: &str, transitions: i32) -> Value {
    let mut spec = json!({
        "leaseDurationSeconds": 15,
        "acquireTime": stamp(-100),
        "renewTime": renewed,
        "leaseTransitions": transitions,
    });
    if let Some(holder) = holder {
        spec["holderIdentity"] = json!(holder);
    }
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": NAME, "namespace": NS, "resourceVersion": rv.to_string(), "uid": "lease-uid"},
        "spec": spec,
    })
}

fn status(code: u16, reason: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
        "message": format!("{reason} (test)"), "reason": reason, "code": code,
    })
}

/// Awaits the next request, asserts its method and path (no query, RBAC granted by
/// `src/rbac.rs`), answers it with `reply(body)` and returns the body.
async fn serve(
    handle: &mut MockHandle,
    method: Method,
    path: &str,
    reply: impl FnOnce(&Value) -> (u16, Value),
) -> Value {
    let (request, send) = timeout(REQUEST_TIMEOUT, handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("expected {method} {path}: nothing was sent"))
        .unwrap_or_else(|| panic!("expected {method} {path}: the client is gone"));
    assert_granted(&request);
    assert_eq!(
        (request.method(), request.uri().path()),
        (&method, path),
        "method and path"
    );
    assert_eq!(parse_query(request.uri().query()), BTreeMap::new(), "query");
    let body: Value = json_body(request).await;
    let (code, answer) = reply(&body);
    send.send_response(
        Response::builder()
            .status(StatusCode::from_u16(code).expect("a status code"))
            .body(Body::from(serde_json::to_vec(&answer).expect("serializes")))
            .expect("a response"),
    );
    body
}

/// Echoes a written Lease back with `resourceVersion` `rv` (as a PUT or POST answers).
fn written(code: u16, rv: u32) -> impl FnOnce(&Value) -> (u16, Value) {
    move |body| {
        let mut lease = body.clone();
        lease["metadata"]["resourceVersion"] = json!(rv.to_string());
        lease["metadata"]["uid"] = json!("lease-uid");
        (code, lease)
    }
}

/// Runs one `try_acquire_or_renew` in a task while `serve_it` answers its requests.
async fn round(
    elector: LeaderElector,
    handle: &mut MockHandle,
    serve_it: impl AsyncFnOnce(&mut MockHandle),
) -> (LeaderElector, Round) {
    let task = tokio::spawn(async move {
        let mut elector = elector;
        let round = elector.try_acquire_or_renew().await;
        (elector, round)
    });
    serve_it(handle).await;
    // Bounded: a request the scenario did not expect is left unanswered and fails here.
    timeout(REQUEST_TIMEOUT, task)
        .await
        .expect("the round finished (a request was left unanswered)")
        .expect("the round did not panic")
}

/// Asserts that `elector`, once dropped, sent nothing more.
async fn assert_nothing_more(elector: LeaderElector, mut handle: MockHandle) {
    drop(elector);
    if let Some((request, _)) = handle.next_request().await {
        panic!("unexpected {} {}", request.method(), request.uri());
    }
}

/// A's first round on an absent Lease: GET 404, then the exact POST.
async fn acquire_absent(elector: LeaderElector, handle: &mut MockHandle) -> LeaderElector {
    let (elector, round) = round(elector, handle, async move |h: &mut MockHandle| {
        serve(h, Method::GET, LEASE, |_| (404, status(404, "NotFound"))).await;
        let body = serve(h, Method::POST, LEASES, written(201, 1)).await;
        assert_json_eq(
            &body,
            &json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": NAME, "namespace": NS},
                "spec": {
                    "holderIdentity": "op-a",
                    "leaseDurationSeconds": 15,
                    "acquireTime": stamp(0),
                    "renewTime": stamp(0),
                    "leaseTransitions": 0,
                },
            }),
        );
    })
    .await;
    assert_eq!(round, Round::Leading);
    assert!(elector.is_leader());
    elector
}

#[tokio::test(start_paused = true)]
async fn an_absent_lease_is_created_with_this_replica_as_holder() {
    let (elector, mut handle) = elector_on("op-a");
    let elector = acquire_absent(elector, &mut handle).await;
    assert_eq!(elector.holder(), Some("op-a"));
    assert_nothing_more(elector, handle).await;
}

#[tokio::test(start_paused = true)]
async fn the_leader_renews_with_a_put_carrying_the_resource_version() {
    let (elector, mut handle) = elector_on("op-a");
    let mut elector = acquire_absent(elector, &mut handle).await;
    // Two renewals, each a PUT of the Lease last written (no GET: client-go's fast path).
    for (rv, at) in [(1u32, 2i64), (2, 4)] {
        tokio::time::advance(RETRY_PERIOD).await;
        let (next, result) = round(elector, &mut handle, async move |h: &mut MockHandle| {
            let body = serve(h, Method::PUT, LEASE, written(200, rv + 1)).await;
            assert_json_eq(
                &body,
                &json!({
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": NAME, "namespace": NS, "resourceVersion": rv.to_string(), "uid": "lease-uid"},
                    "spec": {
                        "holderIdentity": "op-a",
                        "leaseDurationSeconds": 15,
                        "acquireTime": stamp(0),
                        "renewTime": stamp(at),
                        "leaseTransitions": 0,
                    },
                }),
            );
        })
        .await;
        assert_eq!(result, Round::Leading);
        elector = next;
    }
    assert_nothing_more(elector, handle).await;
}

#[tokio::test(start_paused = true)]
async fn a_standby_never_writes_while_the_holder_keeps_renewing() {
    let (mut elector, mut handle) = elector_on("op-b");
    // 40 s of rounds, far past the lease duration; the holder's renewTime is a year behind our
    // clock (skew): only the record's changes count, never its timestamps.
    for i in 0..20u32 {
        let renewed = stamp(-365 * 86_400 + i64::from(i));
        let (next, result) = round(elector, &mut handle, async move |h: &mut MockHandle| {
            serve(h, Method::GET, LEASE, |_| {
                (200, lease(Some("op-a"), 10 + i, &renewed, 3))
            })
            .await;
        })
        .await;
        assert_eq!(result, Round::HeldBy("op-a".into()), "round {i}");
        assert!(!next.is_leader());
        elector = next;
        tokio::time::advance(RETRY_PERIOD).await;
    }
    assert_nothing_more(elector, handle).await;
}

#[tokio::test(start_paused = true)]
async fn a_standby_takes_over_once_the_record_went_unchanged_for_the_lease_duration() {
    let (mut elector, mut handle) = elector_on("op-b");
    // The holder's renewTime lies a year ahead of our clock: no comparison of clocks decides.
    let frozen = lease(Some("op-a"), 7, &stamp(365 * 86_400), 3);
    // Seen first at 0 s: held at 0, 2, .., 14 s (less than 15 s without a change).
    for t in (0..=14).step_by(2) {
        let answer = frozen.clone();
        let (next, result) = round(elector, &mut handle, async move |h: &mut MockHandle| {
            serve(h, Method::GET, LEASE, |_| (200, answer)).await;
        })
        .await;
        assert_eq!(result, Round::HeldBy("op-a".into()), "at {t} s");
        elector = next;
        tokio::time::advance(RETRY_PERIOD).await;
    }
    // At 16 s the record has not changed for 16 s: PUT over resourceVersion 7, one more transition.
    let answer = frozen.clone();
    let (elector, result) = round(elector, &mut handle, async move |h: &mut MockHandle| {
        serve(h, Method::GET, LEASE, |_| (200, answer)).await;
        let body = serve(h, Method::PUT, LEASE, written(200, 8)).await;
        assert_json_eq(
            &body,
            &json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": NAME, "namespace": NS, "resourceVersion": "7", "uid": "lease-uid"},
                "spec": {
                    "holderIdentity": "op-b",
                    "leaseDurationSeconds": 15,
                    "acquireTime": stamp(16),
                    "renewTime": stamp(16),
                    "leaseTransitions": 4,
                },
            }),
        );
    })
    .await;
    assert_eq!(result, Round::Leading);
    assert!(elector.is_leader());
    assert_nothing_more(elector, handle).await;
}

#[tokio::test(start_paused = true)]
async fn a_free_lease_is_taken_at_once_and_a_conflict_is_not_leading() {
    let (elector, mut handle) = elector_on("op-b");
    // Released by its holder (no holderIdentity): taken at the first round, but another
    // replica's PUT landed first: 409, not leader.
    let (elector, result) = round(elector, &mut handle, async move |h: &mut MockHandle| {
        serve(h, Method::GET, LEASE, |_| {
            (200, lease(None, 20, &stamp(0), 5))
        })
        .await;
        let body = serve(h, Method::PUT, LEASE, |_| (409, status(409, "Conflict"))).await;
        assert_eq!(body["metadata"]["resourceVersion"], "20");
        assert_eq!(body["spec"]["holderIdentity"], "op-b");
        assert_eq!(body["spec"]["leaseTransitions"], 6);
    })
    .await;
    assert_eq!(result, Round::Failed);
    assert!(!elector.is_leader());
    // The next round reads the winner's fresh record and stands by without writing.
    tokio::time::advance(RETRY_PERIOD).await;
    let (elector, result) = round(elector, &mut handle, async move |h: &mut MockHandle| {
        serve(h, Method::GET, LEASE, |_| {
            (200, lease(Some("op-c"), 21, &stamp(1), 6))
        })
        .await;
    })
    .await;
    assert_eq!(result, Round::HeldBy("op-c".into()));
    assert_nothing_more(elector, handle).await;
}

#[tokio::test(start_paused = true)]
async fn a_leader_whose_renewal_conflicts_reads_the_lease_and_sees_the_new_holder() {
    let (elector, mut handle) = elector_on("op-a");
    let elector = acquire_absent(elector, &mut handle).await;
    tokio::time::advance(RETRY_PERIOD).await;
    let (elector, result) = round(elector, &mut handle, async move |h: &mut MockHandle| {
        serve(h, Method::PUT, LEASE, |_| (409, status(409, "Conflict"))).await;
        serve(h, Method::GET, LEASE, |_| {
            (200, lease(Some("op-b"), 5, &stamp(2), 1))
        })
        .await;
    })
    .await;
    assert_eq!(result, Round::HeldBy("op-b".into()));
    assert!(!elector.is_leader());
    assert_nothing_more(elector, handle).await;
}

#[tokio::test(start_paused = true)]
async fn the_leader_releases_the_lease_on_shutdown() {
    let (elector, mut handle) = elector_on("op-a");
    let elector = acquire_absent(elector, &mut handle).await;
    tokio::time::advance(Duration::from_secs(3)).await;
    let task = tokio::spawn(async move {
        let mut elector = elector;
        let released = elector.release().await;
        (elector, released)
    });
    let body = serve(&mut handle, Method::PUT, LEASE, written(200, 2)).await;
    assert_json_eq(
        &body,
        &json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": NAME, "namespace": NS, "resourceVersion": "1", "uid": "lease-uid"},
            "spec": {
                "leaseDurationSeconds": 1,
                "acquireTime": stamp(3),
                "renewTime": stamp(3),
                "leaseTransitions": 0,
            },
        }),
    );
    let (mut elector, released) = task.await.expect("released");
    assert!(released);
    assert!(!elector.is_leader());
    assert_eq!(elector.holder(), None);
    // Not the holder any more: a second release sends nothing.
    assert!(elector.release().await);
    assert_nothing_more(elector, handle).await;
}

#[tokio::test(start_paused = true)]
async fn a_leader_stops_leading_when_renewals_fail_past_the_deadline() {
    let (elector, mut handle) = elector_on("op-a");
    let mut elector = acquire_absent(elector, &mut handle).await;
    let since_last_write = Instant::now();
    let task = tokio::spawn(async move { elector.hold().await });
    tokio::pin!(task);
    let mut seen = Vec::new();
    let lost = loop {
        tokio::select! {
            lost = &mut task => break lost.expect("hold returned"),
            next = handle.next_request() => {
                // None: the elector is gone, its task ends.
                let Some((request, send)) = next else {
                    break (&mut task).await.expect("hold returned");
                };
                assert_granted(&request);
                seen.push((request.method().clone(), request.uri().path().to_owned()));
                send.send_response(
                    Response::builder()
                        .status(StatusCode::SERVICE_UNAVAILABLE)
                        .body(Body::from(serde_json::to_vec(&status(503, "ServiceUnavailable")).expect("json")))
                        .expect("a response"),
                );
            }
        }
    };
    assert_eq!(lost, LeaseLost::NotRenewed(RENEW_DEADLINE));
    assert!(!seen.is_empty());
    assert!(
        seen.iter()
            .all(|(m, p)| (*m == Method::PUT || *m == Method::GET) && p == LEASE),
        "only renewals of the Lease: {seen:?}"
    );
    // On the paused clock: the leader gave up before a standby, which waits the lease duration
    // after it last saw the record change, could take over.
    assert!(since_last_write.elapsed() < LEASE_DURATION);
}

// --- run_as_leader and two electors, on an in-memory Lease store ---------------------------

/// A Lease store answering like the API server: 404 when absent, 409 on a create of an
/// existing Lease or a PUT with a stale `resourceVersion`.
#[derive(Default)]
struct FakeLeases {
    lease: Mutex<Option<Value>>,
    version: AtomicU32,
}

impl FakeLeases {
    fn answer(&self, method: &Method, path: &str, body: &Value) -> (u16, Value) {
        let mut stored = self.lease.lock().expect("not poisoned");
        match (method.as_str(), path) {
            ("GET", LEASE) => match &*stored {
                Some(lease) => (200, lease.clone()),
                None => (404, status(404, "NotFound")),
            },
            ("POST", LEASES) if stored.is_some() => (409, status(409, "AlreadyExists")),
            ("PUT", LEASE)
                if stored.as_ref().map(|l| &l["metadata"]["resourceVersion"])
                    != Some(&body["metadata"]["resourceVersion"]) =>
            {
                (409, status(409, "Conflict"))
            }
            ("POST", LEASES) | ("PUT", LEASE) => {
                let rv = self.version.fetch_add(1, Ordering::SeqCst) + 1;
                let mut lease = body.clone();
                lease["metadata"]["resourceVersion"] = json!(rv.to_string());
                *stored = Some(lease.clone());
                (if method == Method::POST { 201 } else { 200 }, lease)
            }
            _ => panic!("unexpected {method} {path}"),
        }
    }

    fn holder(&self) -> Option<String> {
        self.lease
            .lock()
            .expect("not poisoned")
            .as_ref()
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
    }
}

/// An elector whose requests `fake` answers, unless `cut` is set (then 503, the API server
/// unreachable).
fn elector_on_fake(identity: &str, fake: Arc<FakeLeases>, cut: Arc<AtomicBool>) -> LeaderElector {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            assert_granted(&request);
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            let bytes = request.into_body().collect_bytes().await.expect("body");
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let (code, answer) = if cut.load(Ordering::SeqCst) {
                (503, status(503, "ServiceUnavailable"))
            } else {
                fake.answer(&method, &path, &body)
            };
            send.send_response(
                Response::builder()
                    .status(StatusCode::from_u16(code).expect("a status code"))
                    .body(Body::from(serde_json::to_vec(&answer).expect("json")))
                    .expect("a response"),
            );
        }
    });
    // No jitter: the same schedule on every run.
    let settings = LeaseSettings {
        jitter: 0.0,
        ..LeaseSettings::new(NAME, NS, identity.to_owned())
    };
    LeaderElector::with_wall_clock(Client::new(service, NS), settings, paused_wall_clock())
}

#[tokio::test(start_paused = true)]
async fn on_stop_the_leader_finishes_its_work_then_releases_the_lease() {
    let fake = Arc::new(FakeLeases::default());
    let elector = elector_on_fake("op-a", fake.clone(), Arc::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let changes = Arc::new(Mutex::new(Vec::new()));
    let finished = Arc::new(AtomicBool::new(false));
    let work = {
        let (stop, finished) = (stop_rx.clone(), finished.clone());
        async move {
            wait_for(stop).await;
            finished.store(true, Ordering::SeqCst);
        }
    };
    let recorded = changes.clone();
    let running = tokio::spawn(run_as_leader(
        elector,
        stop_rx,
        move |leading| recorded.lock().expect("not poisoned").push(leading),
        work,
    ));
    // Lead for a minute of renewals, then stop.
    sleep(Duration::from_secs(60)).await;
    assert_eq!(fake.holder().as_deref(), Some("op-a"));
    assert!(!finished.load(Ordering::SeqCst));
    stop_tx.send(true).expect("running");
    assert_eq!(running.await.expect("joined"), Ok(()));
    assert!(finished.load(Ordering::SeqCst), "the work ran to its end");
    assert_eq!(fake.holder(), None, "released");
    assert_eq!(*changes.lock().expect("not poisoned"), [false, true, false]);
}

#[tokio::test(start_paused = true)]
async fn a_standby_stops_without_running_the_work() {
    let fake = Arc::new(FakeLeases::default());
    let cut = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);
    // op-a leads (its work never ends by itself) ...
    let a = tokio::spawn(run_as_leader(
        elector_on_fake("op-a", fake.clone(), cut.clone()),
        stop_rx.clone(),
        |_| {},
        std::future::pending::<()>(),
    ));
    sleep(Duration::from_secs(1)).await;
    assert_eq!(fake.holder().as_deref(), Some("op-a"));
    // ... op-b stands by for a minute, then both are stopped.
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    let (b_stop_tx, b_stop_rx) = watch::channel(false);
    let b = tokio::spawn(run_as_leader(
        elector_on_fake("op-b", fake.clone(), Arc::default()),
        b_stop_rx,
        |_| {},
        async move { flag.store(true, Ordering::SeqCst) },
    ));
    sleep(Duration::from_secs(60)).await;
    b_stop_tx.send(true).expect("running");
    assert_eq!(b.await.expect("joined"), Ok(()));
    assert!(
        !ran.load(Ordering::SeqCst),
        "the standby never ran the work"
    );
    assert_eq!(fake.holder().as_deref(), Some("op-a"));
    // op-a loses the API server: it stops leading and drops its (endless) work.
    cut.store(true, Ordering::SeqCst);
    assert_eq!(
        a.await.expect("joined"),
        Err(LeaseLost::NotRenewed(RENEW_DEADLINE))
    );
    drop(stop_tx);
}

/// Sets its flag when dropped: tells whether the leader's work was dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn two_electors_on_one_lease_never_lead_at_once() {
    let fake = Arc::new(FakeLeases::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    // How many replicas lead right now, and how often leadership changed hands.
    let leaders = Arc::new(AtomicU32::new(0));
    let terms = Arc::new(AtomicU32::new(0));
    let mut cuts = Vec::new();
    let mut replicas = Vec::new();
    for name in ["op-a", "op-b"] {
        let cut = Arc::new(AtomicBool::new(false));
        cuts.push(cut.clone());
        let (fake, stop, leaders, terms) = (
            fake.clone(),
            stop_rx.clone(),
            leaders.clone(),
            terms.clone(),
        );
        replicas.push(tokio::spawn(async move {
            let mut losses = 0u32;
            // A lost lease ends the process; the restarted container is a new elector.
            for restart in 0.. {
                let identity = format!("{name}-{restart}");
                let elector = elector_on_fake(&identity, fake.clone(), cut.clone());
                let was_leading = Arc::new(AtomicBool::new(false));
                let dropped = Arc::new(AtomicBool::new(false));
                let (leaders, terms, was) = (leaders.clone(), terms.clone(), was_leading.clone());
                let guard = DropFlag(dropped.clone());
                let work_stop = stop.clone();
                let result = run_as_leader(
                    elector,
                    stop.clone(),
                    move |leading| {
                        if leading && !was.swap(true, Ordering::SeqCst) {
                            let now = leaders.fetch_add(1, Ordering::SeqCst) + 1;
                            assert_eq!(now, 1, "{identity} leads while another does");
                            terms.fetch_add(1, Ordering::SeqCst);
                        } else if !leading && was.swap(false, Ordering::SeqCst) {
                            leaders.fetch_sub(1, Ordering::SeqCst);
                        }
                    },
                    async move {
                        let _guard = guard;
                        wait_for(work_stop).await;
                    },
                )
                .await;
                match result {
                    Ok(()) => return losses,
                    Err(_) => {
                        assert!(dropped.load(Ordering::SeqCst), "the work was dropped");
                        losses += 1;
                    }
                }
            }
            losses
        }));
    }
    // Ten minutes of the API server becoming unreachable for one replica or the other (a fixed
    // pseudo-random schedule), each cut long enough for a takeover or not.
    let mut seed: u64 = 0x5eed;
    for _ in 0..40 {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let who = (seed >> 33) % 3;
        let secs = 3 + (seed >> 40) % 25;
        for (i, cut) in cuts.iter().enumerate() {
            cut.store(who == i as u64, Ordering::SeqCst);
        }
        sleep(Duration::from_secs(secs)).await;
        assert!(leaders.load(Ordering::SeqCst) <= 1);
    }
    for cut in &cuts {
        cut.store(false, Ordering::SeqCst);
    }
    stop_tx.send(true).expect("running");
    let mut losses = 0;
    for replica in replicas {
        losses += replica.await.expect("a replica panicked");
    }
    assert_eq!(leaders.load(Ordering::SeqCst), 0);
    assert!(
        terms.load(Ordering::SeqCst) >= 3 && losses >= 2,
        "the schedule made the lease change hands: {} terms, {losses} losses",
        terms.load(Ordering::SeqCst)
    );
}
