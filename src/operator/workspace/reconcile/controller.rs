//! The Workspace Controller: what triggers a reconciliation.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{error_policy, reconcile_workspace};
use crate::api::v1alpha1::{DataSource, NodePool, Workspace, WorkspaceProfile};
use crate::operator::workspace::WORKSPACE_LABEL;
use crate::operator::{Context, wait_for};

/// Label selector of every object the operator creates.
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=atelier-operator";

/// The Workspaces whose `spec.profile` is `profile`.
pub fn workspaces_using_profile(
    workspaces: &[Arc<Workspace>],
    profile: &str,
) -> Vec<ObjectRef<Workspace>> {
    workspaces
        .iter()
        .filter(|ws| ws.spec.profile == profile)
        .map(|ws| ObjectRef::from_obj(ws.as_ref()))
        .collect()
}

/// The Workspaces whose `spec.dataSources` names `source`.
pub fn workspaces_naming_data_source(
    workspaces: &[Arc<Workspace>],
    source: &str,
) -> Vec<ObjectRef<Workspace>> {
    workspaces
        .iter()
        .filter(|ws| ws.spec.data_sources.iter().any(|s| s == source))
        .map(|ws| ObjectRef::from_obj(ws.as_ref()))
        .collect()
}

/// The Workspace a child belongs to, by its [`WORKSPACE_LABEL`] (children without an owner
/// reference, like a kept home volume, still trigger their Workspace).
fn labelled_workspace<K: ResourceExt>(child: &K) -> Option<ObjectRef<Workspace>> {
    let name = child.labels().get(WORKSPACE_LABEL)?;
    let namespace = child.namespace()?;
    Some(ObjectRef::new(name).within(&namespace))
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// After a shutdown request, how long reconciliations may take to finish before the controller
/// is dropped (kube's graceful shutdown also waits forever for a store that never synced, e.g.
/// when the CRDs are missing).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Runs the Workspace controller until `shutdown` turns `true`.
///
/// Triggers: the Workspaces (of `watch_namespace`, or all); their Pods, Services, Secrets and
/// NetworkPolicies (owner references, limited to [`MANAGED_BY_SELECTOR`]); their home volumes
/// (by label, as a kept volume has no owner); a WorkspaceProfile → the Workspaces using it; any
/// NodePool → every Workspace; a DataSource → the Workspaces naming it.
pub async fn run_controller(
    ctx: Arc<Context>,
    watch_namespace: Option<String>,
    concurrency: u16,
    shutdown: watch::Receiver<bool>,
) {
    let client = ctx.client.clone();
    let ns = watch_namespace.as_deref();
    let children = watcher::Config::default().labels(MANAGED_BY_SELECTOR);

    let controller = Controller::new(
        scoped::<Workspace>(&client, ns),
        watcher::Config::default().any_semantic(),
    )
    .with_config(controller::Config::default().concurrency(concurrency));
    let by_profile = controller.store();
    let by_pool = controller.store();
    let by_source = controller.store();

    info!(
        namespace = ns.unwrap_or("<all>"),
        "starting the Workspace controller"
    );
    let running = controller
        .owns(scoped::<Pod>(&client, ns), children.clone())
        .owns(scoped::<Service>(&client, ns), children.clone())
        .owns(scoped::<Secret>(&client, ns), children.clone())
        .owns(scoped::<NetworkPolicy>(&client, ns), children.clone())
        .watches(
            scoped::<PersistentVolumeClaim>(&client, ns),
            children,
            |pvc| labelled_workspace(&pvc),
        )
        .watches(
            Api::<WorkspaceProfile>::all(client.clone()),
            watcher::Config::default(),
            move |profile| workspaces_using_profile(&by_profile.state(), &profile.name_any()),
        )
        .watches(
            Api::<NodePool>::all(client.clone()),
            watcher::Config::default(),
            move |_pool| {
                by_pool
                    .state()
                    .iter()
                    .map(|ws| ObjectRef::from_obj(ws.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            Api::<DataSource>::all(client.clone()),
            watcher::Config::default(),
            move |source| workspaces_naming_data_source(&by_source.state(), &source.name_any()),
        )
        .graceful_shutdown_on(wait_for(shutdown.clone()))
        .run(reconcile_workspace, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, action)) => debug!(%object, ?action, "reconciled"),
                Err(error) => warn!(%error, "reconciliation failed"),
            }
        });
    let forced = async {
        wait_for(shutdown).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        () = running => info!("the Workspace controller stopped"),
        () = forced => warn!(grace = ?SHUTDOWN_GRACE, "the Workspace controller did not stop in time; dropping it"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::v1alpha1::WorkspaceSpec;
    use crate::operator::workspace::fixtures::{SCENARIO_TIMEOUT, test_context};
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    use std::collections::{BTreeMap, BTreeSet};

    fn ws(ns: &str, name: &str, profile: &str, sources: &[&str]) -> Arc<Workspace> {
        let mut w = Workspace::new(
            name,
            WorkspaceSpec {
                user: "alice".into(),
                server_name: String::new(),
                profile: profile.into(),
                kind: None,
                image: None,
                resources: None,
                node_pool: None,
                data_sources: sources.iter().map(|s| (*s).to_owned()).collect(),
                env: BTreeMap::new(),
                home_size: None,
                desired_state: Default::default(),
                idle_timeout_seconds: None,
            },
        );
        w.metadata.namespace = Some(ns.into());
        Arc::new(w)
    }

    #[test]
    fn profile_and_data_source_changes_map_to_the_workspaces_using_them() {
        let all = vec![
            ws("a", "one", "jupyter", &["era5"]),
            ws("b", "two", "rstudio", &["era5", "sentinel"]),
            ws("b", "three", "jupyter", &[]),
        ];
        assert_eq!(
            workspaces_using_profile(&all, "jupyter"),
            vec![
                ObjectRef::new("one").within("a"),
                ObjectRef::new("three").within("b")
            ]
        );
        assert_eq!(workspaces_using_profile(&all, "qgis"), vec![]);
        assert_eq!(
            workspaces_naming_data_source(&all, "sentinel"),
            vec![ObjectRef::new("two").within("b")]
        );
        assert_eq!(workspaces_naming_data_source(&all, "era5").len(), 2);
    }

    /// Answers every LIST with an empty list and holds every WATCH open; fires `shutdown` once
    /// each of `expected` (path, labelSelector) was listed and then watched (so every store
    /// is synced). Returns what was listed and what was watched.
    async fn serve_empty_lists(
        handle: tower_test::mock::Handle<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >,
        expected: BTreeSet<(String, String)>,
        shutdown: watch::Sender<bool>,
    ) -> (BTreeSet<(String, String)>, BTreeSet<(String, String)>) {
        let mut handle = handle;
        let mut listed = BTreeSet::new();
        let mut watched = BTreeSet::new();
        let mut watches = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            assert_eq!(request.method(), http::Method::GET, "{}", request.uri());
            crate::operator::workspace::fixtures::assert_granted(&request);
            let query: BTreeMap<String, String> = request
                .uri()
                .query()
                .unwrap_or_default()
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.replace("%2F", "/").replace("%3D", "=")))
                .collect();
            let key = (
                request.uri().path().to_owned(),
                query.get("labelSelector").cloned().unwrap_or_default(),
            );
            if query.get("watch").map(String::as_str) == Some("true") {
                watched.insert(key);
                watches.push(send);
                if expected.is_subset(&watched) {
                    let _ = shutdown.send(true);
                }
                continue;
            }
            listed.insert(key);
            let body = serde_json::json!({
                "apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": [],
            });
            send.send_response(
                http::Response::builder()
                    .body(kube::client::Body::from(
                        serde_json::to_vec(&body).expect("json"),
                    ))
                    .expect("a response"),
            );
        }
        (listed, watched)
    }

    #[tokio::test]
    async fn controller_watches_workspaces_children_and_inputs_then_shuts_down() {
        let (ctx, verifier) = test_context(Default::default());
        let managed = MANAGED_BY_SELECTOR.to_owned();
        let expected: BTreeSet<(String, String)> = [
            ("/apis/atelier.dev/v1alpha1/namespaces/team/workspaces", ""),
            ("/api/v1/namespaces/team/pods", managed.as_str()),
            ("/api/v1/namespaces/team/services", managed.as_str()),
            ("/api/v1/namespaces/team/secrets", managed.as_str()),
            (
                "/apis/networking.k8s.io/v1/namespaces/team/networkpolicies",
                managed.as_str(),
            ),
            (
                "/api/v1/namespaces/team/persistentvolumeclaims",
                managed.as_str(),
            ),
            ("/apis/atelier.dev/v1alpha1/workspaceprofiles", ""),
            ("/apis/atelier.dev/v1alpha1/nodepools", ""),
            ("/apis/atelier.dev/v1alpha1/datasources", ""),
        ]
        .into_iter()
        .map(|(p, s)| (p.to_owned(), s.to_owned()))
        .collect();
        let (tx, rx) = watch::channel(false);
        let server = tokio::spawn(serve_empty_lists(
            verifier.into_handle(),
            expected.clone(),
            tx,
        ));
        let controller = run_controller(ctx, Some("team".into()), 2, rx);
        tokio::time::timeout(SCENARIO_TIMEOUT, controller)
            .await
            .expect("the controller lists and watches every kind, then shuts down gracefully");
        // The controller dropped its client: the server sees the end of requests.
        let (listed, watched) = tokio::time::timeout(SCENARIO_TIMEOUT, server)
            .await
            .expect("the client is gone")
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        assert_eq!(listed, expected);
        assert_eq!(watched, expected);
    }

    #[test]
    fn home_volumes_map_by_label() {
        let mut pvc = PersistentVolumeClaim::default();
        pvc.metadata.namespace = Some("ns".into());
        assert_eq!(labelled_workspace(&pvc), None);
        pvc.metadata.labels = Some(BTreeMap::from([(WORKSPACE_LABEL.into(), "alice".into())]));
        assert_eq!(
            labelled_workspace(&pvc),
            Some(ObjectRef::new("alice").within("ns"))
        );
    }
}
