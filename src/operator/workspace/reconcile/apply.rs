//! Server-side apply that skips unchanged objects, and the deletions of the pipeline.
//!
//! Every applied object carries [`APPLIED_HASH_ANNOTATION`] = sha256 of the desired object's
//! JSON (before the annotation is added). An observed object with the same hash is left alone,
//! so reconciling an unchanged Workspace writes nothing. The observed objects come from the
//! informer caches (the caller passes them): nothing here reads the API server, every request
//! is a write.

use std::collections::BTreeSet;
use std::fmt::Debug;

use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, Pod, Service};
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::api::v1alpha1::Workspace;
use crate::operator::workspace::build::{
    DATA_SOURCE_LABEL, DataChildren, VOLUME_SOURCE_ANNOTATION, WORKSPACE_NAMESPACE_LABEL,
    catalog_config_map_name,
};
use crate::operator::workspace::cache::{Caches, Expectations};
use crate::operator::workspace::{FIELD_MANAGER, UserNamespaceResources};
use crate::operator::{Error, Result};

pub use crate::operator::workspace::{APPLIED_HASH_ANNOTATION, applied_hash};

/// Bounds of the objects the operator applies.
pub trait Object:
    Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug
{
}
impl<K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug> Object for K {}

fn kind<K: Object>() -> String {
    K::kind(&()).into_owned()
}

/// The desired object with its [`APPLIED_HASH_ANNOTATION`], and the hash.
pub fn with_applied_hash<K: Object>(desired: &K) -> Result<(K, String)> {
    let json = serde_json::to_vec(desired).map_err(|source| Error::Serialize {
        kind: kind::<K>(),
        source,
    })?;
    let hash = hex::encode(Sha256::digest(&json));
    let mut applied = desired.clone();
    applied
        .annotations_mut()
        .insert(APPLIED_HASH_ANNOTATION.to_owned(), hash.clone());
    Ok((applied, hash))
}

/// Server-side applies `desired` unless `observed` already carries its hash, or the operator
/// applied that hash moments ago and the cache has not shown it yet ([`Expectations`]); returns
/// the object as the API server has it (in the second case, the applied object).
pub async fn apply_with<K: Object>(
    api: &Api<K>,
    desired: &K,
    observed: Option<K>,
    expected: &Expectations,
) -> Result<K> {
    let (applied, hash) = with_applied_hash(desired)?;
    if let Some(observed) = &observed
        && applied_hash(observed) == Some(hash.as_str())
    {
        return Ok(observed.clone());
    }
    let name = desired.name_any();
    let namespace = api.namespace().unwrap_or_default();
    if expected.awaits::<K>(namespace, &name, &hash) {
        return Ok(observed.unwrap_or(applied));
    }
    let written = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&applied),
        )
        .await
        .map_err(|source| Error::Apply {
            kind: kind::<K>(),
            name: name.clone(),
            source,
        })?;
    expected.applied::<K>(namespace, &name, &hash);
    Ok(written)
}

fn namespaced<K>(client: &Client, namespace: &str, desired: &K) -> Api<K>
where
    K: Object<Scope = NamespaceResourceScope>,
{
    let ns = desired.meta().namespace.as_deref().unwrap_or(namespace);
    Api::namespaced(client.clone(), ns)
}

/// [`apply_with`] a namespaced object, given how the cache shows it.
pub async fn apply_object<K>(
    client: &Client,
    namespace: &str,
    desired: &K,
    observed: Option<K>,
    expected: &Expectations,
) -> Result<K>
where
    K: Object<Scope = NamespaceResourceScope>,
{
    apply_with(
        &namespaced(client, namespace, desired),
        desired,
        observed,
        expected,
    )
    .await
}

/// Whether an observed Service has a cluster IP where the desired one is headless (or the
/// other way round): `spec.clusterIP` is immutable, so the API server refuses to change it.
pub fn cluster_ip_changes(observed: &Service, desired: &Service) -> bool {
    let ip = |s: &Service| s.spec.as_ref().and_then(|spec| spec.cluster_ip.clone());
    match (ip(observed), ip(desired)) {
        // An empty or unset desired IP lets the API server keep whatever it has.
        (_, None) => false,
        (None, Some(_)) => false,
        (Some(have), Some(want)) => !have.is_empty() && have != want,
    }
}

/// [`apply_with`] the Service, given how the cache shows it; a Service whose cluster IP differs
/// from the desired one (a ClusterIP Service of an older operator, now headless) is deleted
/// first and created again. Returns `None` while the old Service is still terminating (the
/// Service watch brings the Workspace back once it is gone).
pub async fn apply_service(
    client: &Client,
    namespace: &str,
    desired: &Service,
    mut observed: Option<Service>,
    expected: &Expectations,
) -> Result<Option<Service>> {
    let api = namespaced(client, namespace, desired);
    let name = desired.name_any();
    if let Some(existing) = &observed
        && cluster_ip_changes(existing, desired)
    {
        tracing::info!(service = %name, "re-creating the Service: its cluster IP cannot change in place");
        if delete(&api, existing).await?.is_some() {
            return Ok(None);
        }
        observed = None;
    }
    apply_with(&api, desired, observed, expected)
        .await
        .map(Some)
}

/// Applies an object only when the cache does not show it (the home volume: its size and class
/// are set at creation; PVC specs are immutable). While the cache lags behind a creation, the
/// same object is applied again: harmless, server-side apply of the same content.
pub async fn create_once<K>(
    client: &Client,
    namespace: &str,
    desired: &K,
    observed: Option<K>,
    expected: &Expectations,
) -> Result<K>
where
    K: Object<Scope = NamespaceResourceScope>,
{
    match observed {
        Some(existing) => Ok(existing),
        None => {
            let api = namespaced(client, namespace, desired);
            apply_with(&api, desired, None, expected).await
        }
    }
}

/// Equips a per-user namespace: Namespace, ResourceQuota, LimitRange, NetworkPolicy, in order,
/// each compared with how `caches` show it.
pub async fn apply_user_namespace(
    client: &Client,
    caches: &Caches,
    ns: &UserNamespaceResources,
) -> Result<()> {
    let UserNamespaceResources {
        namespace,
        resource_quota,
        limit_range,
        network_policy,
    } = ns;
    let name = namespace.name_any();
    let expected = &caches.expected;
    let api: Api<Namespace> = Api::all(client.clone());
    let observed = caches.namespaces.get_cluster(&name);
    apply_with(&api, namespace, observed, expected).await?;
    let observed = caches
        .resource_quotas
        .get(&name, &resource_quota.name_any());
    apply_object(client, &name, resource_quota, observed, expected).await?;
    let observed = caches.limit_ranges.get(&name, &limit_range.name_any());
    apply_object(client, &name, limit_range, observed, expected).await?;
    let observed = caches
        .network_policies
        .get(&name, &network_policy.name_any());
    apply_object(client, &name, network_policy, observed, expected).await?;
    Ok(())
}

/// Deletes one object; returns it when it still exists (terminating), `None` once it is gone.
pub async fn delete<K>(api: &Api<K>, object: &K) -> Result<Option<K>>
where
    K: Object,
{
    let name = object.name_any();
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(either) => Ok(either.left()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(source) => Err(Error::Delete {
            kind: kind::<K>(),
            name,
            source,
        }),
    }
}

/// Deletes each object not already terminating (in order); returns those that still exist.
pub async fn delete_live<K>(client: &Client, namespace: &str, objects: &[K]) -> Result<Vec<K>>
where
    K: Object<Scope = NamespaceResourceScope>,
{
    delete_each(&Api::namespaced(client.clone(), namespace), objects).await
}

/// [`delete_live`] for cluster-scoped objects.
pub async fn delete_live_cluster<K>(client: &Client, objects: &[K]) -> Result<Vec<K>>
where
    K: Object<Scope = ClusterResourceScope>,
{
    delete_each(&Api::all(client.clone()), objects).await
}

/// Deletes through `api` each object not already terminating (in order); returns those that
/// still exist.
async fn delete_each<K: Object>(api: &Api<K>, objects: &[K]) -> Result<Vec<K>> {
    let mut remaining = Vec::new();
    for object in objects {
        if object.meta().deletion_timestamp.is_some() {
            remaining.push(object.clone());
        } else if let Some(terminating) = delete(api, object).await? {
            remaining.push(terminating);
        }
    }
    Ok(remaining)
}

/// Brings the data sources' children of `ws` (in `namespace`) to `desired`
/// ([`crate::operator::workspace::build::data_children`]), each compared with how `caches`
/// show it: every PersistentVolume, then every claim, created once (a volume's CSI source and a
/// claim's volume name and access modes are immutable; both are named after the Workspace and
/// the source, so a source's volume is only ever made for it; a changed DataSource is followed
/// before, by [`replace_changed_data_volumes`], whose [`DataReplacement::pending`] is what the
/// caller passes here), then the catalogue ConfigMap,
/// applied as the other children (server-side, skipped when its applied hash is unchanged).
/// The volumes are cluster-scoped and labelled with the Workspace's name and namespace; the
/// claims and the ConfigMap are owned by the Workspace.
pub async fn apply_data_children(
    client: &Client,
    caches: &Caches,
    namespace: &str,
    desired: &DataChildren,
) -> Result<()> {
    let DataChildren {
        persistent_volumes,
        claims,
        config_map,
    } = desired;
    let expected = &caches.expected;
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    for volume in persistent_volumes {
        match caches.persistent_volumes.get_cluster(&volume.name_any()) {
            Some(existing) => kept_as_created(&existing, volume)?,
            None => {
                apply_with(&volumes, volume, None, expected).await?;
            }
        }
    }
    for claim in claims {
        let observed = caches.pvcs.get(namespace, &claim.name_any());
        if let Some(existing) = &observed {
            kept_as_created(existing, claim)?;
        }
        create_once(client, namespace, claim, observed, expected).await?;
    }
    if let Some(config_map) = config_map {
        let observed = caches.config_maps.get(namespace, &config_map.name_any());
        apply_object(client, namespace, config_map, observed, expected).await?;
    }
    Ok(())
}

/// The data volumes [`replace_changed_data_volumes`] is replacing: what the rest of the pass
/// must leave alone.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DataReplacement {
    /// The data sources whose volume is being replaced ([`DATA_SOURCE_LABEL`] of the desired
    /// volume), in volume order; empty when none is.
    pub sources: Vec<String>,
    /// The names of those volumes.
    volumes: BTreeSet<String>,
    /// The Workspace's pods still there after their deletion (terminating).
    pub pods: Vec<Pod>,
    /// How many volumes this pass found changed (their replacement starts now).
    pub changed: usize,
}

impl DataReplacement {
    /// Whether a volume is being replaced: the pod must not be created (nor kept) meanwhile.
    pub fn is_replacing(&self) -> bool {
        !self.sources.is_empty()
    }

    /// `desired` without the volumes being replaced and their claims (a volume and its claim
    /// share an index): those are made again once the old ones are gone.
    pub fn pending(&self, desired: &DataChildren) -> DataChildren {
        let (persistent_volumes, claims) = desired
            .persistent_volumes
            .iter()
            .zip(&desired.claims)
            .filter(|(volume, _)| !self.volumes.contains(&volume.name_any()))
            .map(|(volume, claim)| (volume.clone(), claim.clone()))
            .unzip();
        DataChildren {
            persistent_volumes,
            claims,
            config_map: desired.config_map.clone(),
        }
    }
}

/// Whether `observed` was built from other immutable fields than `desired`
/// ([`VOLUME_SOURCE_ANNOTATION`]); a volume made before the annotation existed is not compared.
pub fn volume_source_changed(observed: &PersistentVolume, desired: &PersistentVolume) -> bool {
    let source = |v: &PersistentVolume| v.annotations().get(VOLUME_SOURCE_ANNOTATION).cloned();
    matches!((source(observed), source(desired)), (Some(have), Some(want)) if have != want)
}

/// Follows a changed DataSource. A volume's CSI source and a claim's spec are immutable, so a
/// desired volume whose cached one was built from other immutable fields
/// ([`volume_source_changed`]: another driver, volume handle, attributes, Secret, capacity or
/// access mode) is replaced: the Workspace's pods are deleted first (they hold the claim:
/// pvc-protection), then the claim, then the volume (pv-protection keeps it until the claim is
/// gone), each only when not already terminating. A desired volume or claim that is still
/// terminating (deleted by a previous pass, or by someone else) is being replaced too: nothing
/// of it is applied, and no pod is made, until both are gone; then the next pass creates them
/// and the pod as for a new Workspace (the deletions bring the Workspace back through the
/// volume and claim watches). Creating the claim earlier would bind it to the terminating
/// volume. Nothing changed: no request.
///
/// (The StatefulSet controller replaces a pod whose revision changed the same way, delete
/// then create on a later pass, kubernetes `pkg/controller/statefulset/stateful_set_control.go`;
/// csi-s3 and the iRODS driver read the volume attributes only at NodeStage/NodePublish, so
/// the mount follows only through a new volume.)
pub async fn replace_changed_data_volumes(
    client: &Client,
    caches: &Caches,
    ws: &Workspace,
    namespace: &str,
    desired: &DataChildren,
) -> Result<DataReplacement> {
    let mut replacement = DataReplacement::default();
    let (mut claims, mut volumes) = (Vec::new(), Vec::new());
    for (volume, claim) in desired.persistent_volumes.iter().zip(&desired.claims) {
        let name = volume.name_any();
        let cached_volume = caches.persistent_volumes.get_cluster(&name);
        let cached_claim = caches.pvcs.get(namespace, &claim.name_any());
        let changed = cached_volume
            .as_ref()
            .is_some_and(|v| volume_source_changed(v, volume));
        let terminating = cached_volume
            .as_ref()
            .is_some_and(|v| v.metadata.deletion_timestamp.is_some())
            || cached_claim
                .as_ref()
                .is_some_and(|c| c.metadata.deletion_timestamp.is_some());
        if !(changed || terminating) {
            continue;
        }
        let source = volume
            .labels()
            .get(DATA_SOURCE_LABEL)
            .cloned()
            .unwrap_or_else(|| name.clone());
        if changed {
            replacement.changed += 1;
            tracing::info!(
                volume = %name,
                source = %source,
                "replacing a data volume: its DataSource changed (immutable fields)"
            );
        }
        replacement.sources.push(source);
        replacement.volumes.insert(name);
        claims.extend(cached_claim);
        volumes.extend(cached_volume);
    }
    if !replacement.is_replacing() {
        return Ok(replacement);
    }
    replacement.pods = delete_live(client, namespace, &caches.pods_of(ws)).await?;
    delete_live(client, namespace, &claims).await?;
    delete_live_cluster(client, &volumes).await?;
    Ok(replacement)
}

/// Deletes the data sources' PersistentVolumes whose Workspace is gone
/// ([`Caches::orphaned_data_volumes`]: not in the Workspaces' store once every store it reads
/// is listed, and their claim gone), one log line each; returns them. `scope`: the namespace
/// the controller watches, if only one. No request when there is none.
pub async fn sweep_orphaned_data_volumes(
    client: &Client,
    caches: &Caches,
    scope: Option<&str>,
) -> Result<Vec<PersistentVolume>> {
    let orphans = caches.orphaned_data_volumes(scope);
    for volume in &orphans {
        let labels = volume.labels();
        let label = |key: &str| labels.get(key).map(String::as_str).unwrap_or_default();
        tracing::info!(
            volume = %volume.name_any(),
            workspace = %format!(
                "{}/{}",
                label(WORKSPACE_NAMESPACE_LABEL),
                label(crate::operator::workspace::WORKSPACE_LABEL)
            ),
            "deleting an orphaned data volume: its Workspace and claim are gone"
        );
    }
    delete_live_cluster(client, &orphans).await?;
    Ok(orphans)
}

/// Says so (a warning naming the object) when an object created once differs from the desired
/// one in what [`replace_changed_data_volumes`] does not follow: the fields it does not compare
/// (labels an operator upgrade changed), or a volume made before [`VOLUME_SOURCE_ANNOTATION`]
/// existed; it is made again once the Workspace drops the source or is deleted.
fn kept_as_created<K: Object>(existing: &K, desired: &K) -> Result<()> {
    let (_, hash) = with_applied_hash(desired)?;
    if applied_hash(existing).is_some_and(|h| h != hash) {
        tracing::warn!(
            kind = %kind::<K>(),
            name = %desired.name_any(),
            "kept as created: it differs from the desired one and cannot be changed in place"
        );
    }
    Ok(())
}

/// Deletes the data sources' children of `ws` that `desired` no longer has (a source the
/// Workspace no longer names, or now mounted inline): claims first, then volumes (a volume
/// goes once its claim is gone: the API server's pv-protection), and the ConfigMap when no
/// source is left. `desired` `None`: every one of them (a refused Workspace keeps none).
pub async fn delete_stale_data_children(
    client: &Client,
    caches: &Caches,
    ws: &Workspace,
    namespace: &str,
    desired: Option<&DataChildren>,
) -> Result<()> {
    let claims: BTreeSet<String> = desired
        .map(|d| d.claims.iter().map(ResourceExt::name_any).collect())
        .unwrap_or_default();
    let stale: Vec<_> = caches
        .data_claims_of(ws)
        .into_iter()
        .filter(|c| !claims.contains(&c.name_any()))
        .collect();
    delete_live(client, namespace, &stale).await?;
    let volumes: BTreeSet<String> = desired
        .map(|d| {
            d.persistent_volumes
                .iter()
                .map(ResourceExt::name_any)
                .collect()
        })
        .unwrap_or_default();
    let stale: Vec<_> = caches
        .data_volumes_of(ws)
        .into_iter()
        .filter(|v| !volumes.contains(&v.name_any()))
        .collect();
    delete_live_cluster(client, &stale).await?;
    if desired.is_none_or(|d| d.config_map.is_none())
        && let Some(config_map) = caches
            .config_maps
            .get(namespace, &catalog_config_map_name(&ws.name_any()))
    {
        delete_live(client, namespace, &[config_map]).await?;
    }
    Ok(())
}

/// What [`reconcile_pod`] left behind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodOutcome {
    /// The workspace's pod as the API server has it, if one exists.
    pub pod: Option<Pod>,
    /// The pod is being replaced to apply a changed spec (or is terminating while wanted).
    pub replacing: bool,
}

/// Brings the observed `pods` (the Workspace's, sorted) to the desired pod:
///
/// - no desired pod (stopped): delete every pod;
/// - pods under another name: delete them;
/// - no pod: create it with server-side apply;
/// - a terminating pod: wait for it to go;
/// - a pod with the desired hash: leave it;
/// - a pod with another hash: pods are immutable, so delete it (recreated next pass).
pub async fn reconcile_pod(
    client: &Client,
    namespace: &str,
    desired: Option<&Pod>,
    pods: Vec<Pod>,
    expected: &Expectations,
) -> Result<PodOutcome> {
    let Some(desired) = desired else {
        let remaining = delete_live(client, namespace, &pods).await?;
        return Ok(PodOutcome {
            pod: remaining.into_iter().next(),
            replacing: false,
        });
    };
    let name = desired.name_any();
    let (current, strays): (Vec<Pod>, Vec<Pod>) =
        pods.into_iter().partition(|p| p.name_any() == name);
    delete_live(client, namespace, &strays).await?;
    let api = namespaced(client, namespace, desired);
    let (_, hash) = with_applied_hash(desired)?;
    match current.into_iter().next() {
        None => Ok(PodOutcome {
            pod: Some(apply_with(&api, desired, None, expected).await?),
            replacing: false,
        }),
        Some(pod) if pod.metadata.deletion_timestamp.is_some() => Ok(PodOutcome {
            pod: Some(pod),
            replacing: true,
        }),
        Some(pod) if applied_hash(&pod) == Some(hash.as_str()) => Ok(PodOutcome {
            pod: Some(pod),
            replacing: false,
        }),
        Some(pod) => Ok(PodOutcome {
            pod: delete(&api, &pod).await?,
            replacing: true,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(port: i32) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "ws-alice", "namespace": "ns", "labels": {"a": "b"}},
            "spec": {"ports": [{"port": port}]},
        }))
        .expect("a service")
    }

    #[test]
    fn only_a_different_cluster_ip_forces_a_re_creation() {
        let with_ip = |ip: Option<&str>| {
            let mut s = service(80);
            if let Some(spec) = s.spec.as_mut() {
                spec.cluster_ip = ip.map(str::to_owned);
            }
            s
        };
        let headless = with_ip(Some("None"));
        assert!(cluster_ip_changes(&with_ip(Some("10.96.4.2")), &headless));
        assert!(!cluster_ip_changes(&headless, &headless));
        assert!(
            !cluster_ip_changes(&with_ip(None), &headless),
            "not allocated yet"
        );
        assert!(!cluster_ip_changes(
            &with_ip(Some("10.96.4.2")),
            &with_ip(None)
        ));
        assert!(cluster_ip_changes(&headless, &with_ip(Some("10.96.4.2"))));
    }

    /// A data volume `name` as `build_data_volume` makes it: `attribute` among its CSI volume
    /// attributes, bound to claim `claim`.
    fn data_volume(name: &str, attribute: &str, claim: &str) -> PersistentVolume {
        let mut volume: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {DATA_SOURCE_LABEL: "argo"}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadOnlyMany"],
                "claimRef": {"namespace": "team", "name": claim},
                "csi": {"driver": "ru.yandex.s3.csi", "volumeHandle": "argo/floats",
                        "volumeAttributes": {"mounter": attribute}},
            },
        }))
        .expect("a volume");
        let hash = crate::operator::workspace::build::volume_source_hash(&volume);
        volume
            .annotations_mut()
            .insert(VOLUME_SOURCE_ANNOTATION.to_owned(), hash);
        volume
    }

    #[test]
    fn only_an_immutable_field_makes_a_data_volume_change() {
        let built = data_volume("pv", "geesefs", "data-a");
        assert!(!volume_source_changed(&built, &built));
        // Another attribute: replaced. The claim it names, its labels: not a source change.
        assert!(volume_source_changed(
            &built,
            &data_volume("pv", "s3fs", "data-a")
        ));
        let mut relabelled = data_volume("pv", "geesefs", "data-b");
        relabelled
            .labels_mut()
            .insert("atelier.dev/new".into(), "x".into());
        assert!(!volume_source_changed(&built, &relabelled));
        for change in [
            json!({"capacity": {"storage": "2Gi"}}),
            json!({"accessModes": ["ReadWriteMany"]}),
            json!({"csi": {"driver": "ru.yandex.s3.csi", "volumeHandle": "argo/other"}}),
        ] {
            let mut other =
                serde_json::to_value(data_volume("pv", "geesefs", "data-a")).expect("json");
            for (k, v) in change.as_object().expect("an object") {
                other["spec"][k] = v.clone();
            }
            let mut other: PersistentVolume = serde_json::from_value(other).expect("a volume");
            let hash = crate::operator::workspace::build::volume_source_hash(&other);
            other
                .annotations_mut()
                .insert(VOLUME_SOURCE_ANNOTATION.to_owned(), hash);
            assert!(volume_source_changed(&built, &other), "{change}");
        }
        // A volume of an older operator, without the annotation: never compared.
        let mut unannotated = built.clone();
        unannotated.annotations_mut().clear();
        assert!(!volume_source_changed(
            &unannotated,
            &data_volume("pv", "s3fs", "data-a")
        ));
    }

    #[test]
    fn a_replacement_leaves_out_the_replaced_volumes_and_their_claims_only() {
        let claim = |name: &str| {
            let mut c = k8s_openapi::api::core::v1::PersistentVolumeClaim::default();
            c.metadata.name = Some(name.into());
            c
        };
        let desired = DataChildren {
            persistent_volumes: vec![
                data_volume("pv-a", "geesefs", "data-a"),
                data_volume("pv-b", "geesefs", "data-b"),
            ],
            claims: vec![claim("data-a"), claim("data-b")],
            config_map: None,
        };
        let none = DataReplacement::default();
        assert!(!none.is_replacing());
        assert_eq!(none.pending(&desired), desired);
        let replacing = DataReplacement {
            sources: vec!["argo".into()],
            volumes: BTreeSet::from(["pv-a".to_owned()]),
            ..DataReplacement::default()
        };
        assert!(replacing.is_replacing());
        let pending = replacing.pending(&desired);
        assert_eq!(pending.persistent_volumes, desired.persistent_volumes[1..]);
        assert_eq!(pending.claims, desired.claims[1..]);
    }

    #[test]
    fn hash_is_the_sha256_of_the_desired_json_and_tracks_changes() {
        let desired = service(80);
        let (applied, hash) = with_applied_hash(&desired).expect("serializes");
        let json = serde_json::to_vec(&desired).expect("serializes");
        assert_eq!(hash, hex::encode(Sha256::digest(&json)));
        assert_eq!(hash.len(), 64);
        assert_eq!(applied_hash(&applied), Some(hash.as_str()));
        let mut without = serde_json::to_value(&applied).expect("serializes");
        without["metadata"]
            .as_object_mut()
            .expect("metadata")
            .remove("annotations");
        assert_eq!(
            without,
            serde_json::to_value(&desired).expect("serializes"),
            "only the annotation is added"
        );

        let (_, same) = with_applied_hash(&service(80)).expect("serializes");
        let (_, other) = with_applied_hash(&service(81)).expect("serializes");
        assert_eq!(hash, same, "deterministic");
        assert_ne!(hash, other, "a change changes the hash");
        // Hashing the applied object (annotation included) would never match: the hash is of the
        // desired object only.
        assert_eq!(applied_hash(&desired), None);
    }
}
