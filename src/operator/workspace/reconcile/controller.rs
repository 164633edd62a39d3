//! The Workspace Controller: what triggers a reconciliation.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tracing::{debug, info, warn};

use super::{error_policy, reconcile_workspace};
use crate::api::v1alpha1::{DataSource, NodePool, Workspace, WorkspaceProfile};
use crate::operator::Context;
use crate::operator::workspace::WORKSPACE_LABEL;

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

/// Runs the Workspace controller until `shutdown` resolves.
///
/// Triggers: the Workspaces (of `watch_namespace`, or all); their Pods, Services, Secrets and
/// NetworkPolicies (owner references, limited to [`MANAGED_BY_SELECTOR`]); their home volumes
/// (by label, as a kept volume has no owner); a WorkspaceProfile → the Workspaces using it; any
/// NodePool → every Workspace; a DataSource → the Workspaces naming it.
pub async fn run_controller(
    ctx: Arc<Context>,
    watch_namespace: Option<String>,
    concurrency: u16,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
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
    controller
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
        .graceful_shutdown_on(shutdown)
        .run(reconcile_workspace, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, action)) => debug!(%object, ?action, "reconciled"),
                Err(error) => warn!(%error, "reconciliation failed"),
            }
        })
        .await;
    info!("the Workspace controller stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::v1alpha1::WorkspaceSpec;
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    use std::collections::BTreeMap;

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
