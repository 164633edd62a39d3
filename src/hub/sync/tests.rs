//! The hub with the `kubernetes` backend on a mocked API server
//! ([`crate::backend::kubernetes::mock`]): admin-created Workspaces adopted and stopped by the
//! sync, and a start's server token handed to the operator through the Workspace's Secret.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use serde_json::{Value, json};

use super::*;
use crate::api::v1alpha1::WorkspacePhase;
use crate::backend::kubernetes::mock::*;
use crate::backend::kubernetes::{KubernetesBackend, WorkspaceObserver};
use crate::hub::{Hub, HubConfig};
use crate::rbac::testing::assert_json_eq;
use crate::store::{ServerState, Store, StoreError, TokenOwner};

/// `bob-big`, created by an admin for bob's default server.
fn admin_ws(desired: &str, status: Value) -> Value {
    let mut ws = server_ws("bob-big", "bob", 1, desired, status);
    if let Some(url) = ws["status"].get_mut("url") {
        *url = json!("http://ws-bob-big.atelier.svc:8888/user/bob/");
    }
    ws
}

fn bob_secret() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "ws-bob-big-token", "namespace": NS, "labels": {"atelier.dev/workspace": "bob-big"}},
        "data": {"token": base64(TOKEN)},
    })
}

#[tokio::test]
async fn sync_adopts_an_admin_created_workspace_and_stops_it_when_kubectl_does() {
    use WorkspacePhase::*;
    let store = Store::connect("sqlite::memory:").await.expect("store");
    let (client, verifier) = mock_client();
    let backend = KubernetesBackend::new(client.clone(), config());
    let hub = Hub::new(
        store.clone(),
        Arc::new(backend),
        HubConfig::new("http://127.0.0.1:8000/", "http://hub:8081/hub/api"),
    );
    let running = admin_ws("running", status(Running, "Running", "ready", 1));
    let carol_pending = server_ws(
        "carol",
        "carol",
        1,
        "running",
        status(Pending, "Scheduling", "waiting", 1),
    );
    let stopped = admin_ws(
        "stopped",
        status(Stopped, "Stopped", "Stopped; the home volume is kept", 1),
    );
    let secret_path = "/api/v1/namespaces/atelier/secrets/ws-bob-big-token";
    let steps = vec![
        // Pass 1: adopted (carol's is not running: left alone).
        Step::list(
            WORKSPACES,
            &[],
            vec![running.clone(), carol_pending.clone()],
        ),
        Step::get(secret_path).json(bob_secret()),
        // Pass 2: known, nothing to do.
        Step::list(WORKSPACES, &[], vec![running.clone(), carol_pending]),
        // Pass 3: stopped with kubectl.
        Step::list(WORKSPACES, &[], vec![stopped]),
        // Pass 4: running again: adopted again.
        Step::list(WORKSPACES, &[], vec![running]),
        Step::get(secret_path).json(bob_secret()),
        // Pass 5: deleted with kubectl: not listed, confirmed gone.
        Step::list(WORKSPACES, &[], vec![]),
        Step::get(ws_path("bob-big")).not_found(),
    ];
    let observer = WorkspaceObserver::new(client.clone(), config());
    let ((reports, checks), _) = scenario(verifier, steps, async move {
        let mut reports = Vec::new();
        let mut checks = Vec::new();
        for _ in 0..5 {
            reports.push(sync_workspaces(&hub, &observer).await.expect("synced"));
            let server = store.get_server_by_names("bob", "").await.ok();
            let token = store.lookup_token(TOKEN, crate::store::now()).await;
            let oauth = store
                .verify_oauth_client("jupyterhub-user-bob", TOKEN)
                .await;
            checks.push((server, token, oauth.map(|c| c.redirect_uri)));
        }
        drop(client);
        drop(observer);
        drop(hub);
        (reports, checks)
    })
    .await;
    let bob = || vec!["bob/".to_owned()];
    assert_eq!(reports[0].adopted, bob());
    assert!(reports[1].is_empty(), "{:?}", reports[1]);
    assert_eq!(reports[2].stopped, bob());
    assert_eq!(reports[3].adopted, bob());
    assert_eq!(reports[4].stopped, bob());

    let (server, token, oauth) = &checks[0];
    assert_eq!(
        oauth.as_deref().ok(),
        Some("http://127.0.0.1:8000/user/bob/oauth_callback"),
        "the OAuth client's secret is the token"
    );
    let server = server.as_ref().expect("bob's server row");
    assert_eq!(server.state, ServerState::Running);
    assert_eq!(
        server.url.as_deref(),
        Some("http://ws-bob-big.atelier.svc:8888/user/bob/")
    );
    assert_eq!(
        server.spawner_state,
        json!({"namespace": NS, "name": "bob-big"})
    );
    assert_eq!(server.profile.as_deref(), Some("jupyter"));
    let identity = token
        .as_ref()
        .expect("the Workspace's token is the server's API token");
    let user = identity.user.as_ref().expect("a user's token");
    assert_eq!(user.name, "bob");
    assert_eq!(identity.token.owner, TokenOwner::User(user.id));
    assert_eq!(
        identity.token.scopes,
        crate::hub::spawner::server_token_scopes("bob", "")
    );
    assert_eq!(
        identity.token.oauth_client_id.as_deref(),
        Some("jupyterhub-user-bob")
    );

    let (server, token, oauth) = &checks[2];
    assert_eq!(server.as_ref().map(|s| s.state), Some(ServerState::Stopped));
    assert!(
        matches!(token, Err(StoreError::NotFound)),
        "revoked: {token:?}"
    );
    assert!(matches!(oauth, Err(StoreError::NotFound)), "{oauth:?}");
    assert_eq!(
        checks[3].0.as_ref().map(|s| s.state),
        Some(ServerState::Running)
    );
    assert!(checks[3].1.is_ok());
    assert_eq!(
        checks[4].0.as_ref().map(|s| s.state),
        Some(ServerState::Stopped)
    );
    assert!(matches!(checks[4].1, Err(StoreError::NotFound)));
}

#[tokio::test]
async fn a_hub_start_hands_its_server_token_to_the_operator_through_the_secret() {
    use WorkspacePhase::*;
    let (store, alice_user) = crate::store::memory_with_member("alice", "ocean").await;
    let (client, verifier) = mock_client();
    let hub = Hub::new(
        store.clone(),
        Arc::new(KubernetesBackend::new(client, config())),
        HubConfig::new("http://127.0.0.1:8000", "http://hub:8081/hub/api"),
    );
    let captured = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut secret_step = Step::apply(
        "/api/v1/namespaces/atelier/secrets/ws-alice-token",
        json!(null),
    );
    secret_step.check = {
        let captured = captured.clone();
        Box::new(move |body| {
            let mut without_data = body.clone();
            let data = without_data
                .as_object_mut()
                .and_then(|o| o.remove("data"))
                .expect("the Secret has data");
            let mut expected = expected_secret();
            expected.as_object_mut().map(|o| o.remove("data"));
            assert_json_eq(&without_data, &expected);
            let token: ByteString =
                serde_json::from_value(data["token"].clone()).expect("base64 token");
            *captured.lock().expect("lock") = Some(String::from_utf8(token.0).expect("utf-8"));
        })
    };
    let mut ws = expected_workspace(default_spec());
    ws["metadata"]["annotations"]["atelier.dev/groups"] = json!("ocean");
    let steps = vec![
        Step::get(ws_path("alice")).not_found(),
        Step::list(WORKSPACES, &[("fieldSelector", "spec.user=alice")], vec![]),
        secret_step,
        // The operator was quick: running at once, no watch needed.
        Step::apply(ws_path("alice"), ws).json(alice(1, status(Running, "Running", "ready", 1))),
    ];
    let options = crate::hub::spawner::StartOptions {
        profile: Some("jupyter".into()),
        ..Default::default()
    };
    let check_store = store.clone();
    let (server, _) = scenario(verifier, steps, async move {
        crate::hub::spawner::start_server(&hub, &alice_user, "", options)
            .await
            .expect("start accepted");
        let server = loop {
            let server = check_store
                .get_server_by_names("alice", "")
                .await
                .expect("row");
            if server.state == ServerState::Running {
                break server;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        drop(hub);
        server
    })
    .await;
    assert_eq!(server.url.as_deref(), Some(URL));
    assert_eq!(
        server.spawner_state,
        json!({"namespace": NS, "name": "alice"})
    );
    let token = captured
        .lock()
        .expect("lock")
        .clone()
        .expect("a token in the Secret");
    let identity = store
        .lookup_token(&token, crate::store::now())
        .await
        .expect("the Secret's token is the one the hub registered");
    assert_eq!(identity.user.map(|u| u.name).as_deref(), Some("alice"));
    assert_eq!(
        identity.token.scopes,
        crate::hub::spawner::server_token_scopes("alice", "")
    );
    assert!(
        store
            .verify_oauth_client("jupyterhub-user-alice", &token)
            .await
            .is_ok(),
        "and the secret of the server's OAuth client"
    );
}
