//! Tests of `validate` on the fixtures of `tests/fixtures/builders/`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Toleration,
};

use super::test_support::{
    TOKEN, cfg, deref, pool, running_in, try_validate, validated, with_groups, workspace, yaml,
};
use super::{admit, reason, validate};
use crate::api::v1alpha1::{
    DesiredState, HomeReclaim, PoolPurpose, ResourceRequest, Workspace, WorkspaceKind,
};
use crate::config::{NamespaceMode, OperatorConfig};
use crate::policy::admission::{UsageIndex, key_of, observed_claim};
use crate::policy::workspace::Dereferenced;
use crate::policy::workspace::{
    EffectiveResources, HomeVolume, PlacedPool, Refusal, ValidatedWorkspace,
};
use kube::ResourceExt;

/// A Workspace in namespace `atelier` with the groups annotation and `spec` (YAML lines).
fn ws(name: &str, groups: &str, spec: &str) -> Workspace {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    yaml(&format!(
        "apiVersion: atelier.dev/v1alpha1\nkind: Workspace\nmetadata:\n  name: {name}\n  namespace: atelier\n  uid: uid-{name}\n  annotations:\n    atelier.dev/groups: \"{groups}\"\nspec:\n{spec}"
    ))
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn map(items: &[(&str, &str)]) -> BTreeMap<String, String> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn refused(ws: &Workspace) -> Refusal {
    match try_validate(ws) {
        Ok(v) => panic!("accepted on pool {:?}", v.pool.map(|p| p.name)),
        Err(r) => r,
    }
}

fn gpu_toleration() -> Toleration {
    Toleration {
        key: Some("nvidia.com/gpu".into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Toleration::default()
    }
}

#[test]
fn default_workspace_resolves_every_default() {
    let got = validated(&workspace("alice"));
    let want = ValidatedWorkspace {
        name: "alice".into(),
        namespace: "atelier".into(),
        uid: "0b7c6a3e-1111-4d2f-9a55-000000000001".into(),
        user: "alice".into(),
        server_name: String::new(),
        groups: set(&["ml", "physics"]),
        profile: "jupyter-small".into(),
        kind: WorkspaceKind::Jupyter,
        image: "quay.io/jupyter/scipy-notebook:2025-01-06".into(),
        resources: EffectiveResources {
            cpu: "1".into(),
            memory: "2Gi".into(),
            gpus: 0,
            gpu_type: None,
        },
        pool: Some(PlacedPool {
            name: "interactive".into(),
            purpose: PoolPurpose::Interactive,
            node_selector: map(&[("atelier.dev/pool", "interactive")]),
            tolerations: vec![],
            affinity: None,
            gpu_resource_name: None,
            priority_class_name: None,
        }),
        data_sources: vec![],
        desktop_sources: vec![],
        env: map(&[
            ("PIP_INDEX_URL", "https://pypi.example.org/simple"),
            ("TZ", "UTC"),
        ]),
        home: HomeVolume {
            claim_name: "home-alice".into(),
            size: "10Gi".into(),
            storage_class_name: None,
            mount_path: "/home/jovyan".into(),
            reclaim: HomeReclaim::Keep,
        },
        desired_state: DesiredState::Running,
        token: TOKEN.into(),
        dask: None,
    };
    assert_eq!(got, want);
}

#[test]
fn gpu_workspace_is_placed_on_the_gpu_pool_offering_its_type() {
    let got = validated(&workspace("alice-gpu"));
    assert_eq!(
        got.resources,
        EffectiveResources {
            cpu: "4".into(),
            memory: "16Gi".into(),
            gpus: 1,
            gpu_type: Some("a100".into()),
        }
    );
    let affinity = Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: "topology.kubernetes.io/zone".into(),
                        operator: "In".into(),
                        values: Some(vec!["zone-a".into()]),
                    }]),
                    match_fields: None,
                }],
            }),
            preferred_during_scheduling_ignored_during_execution: None,
        }),
        ..Affinity::default()
    };
    assert_eq!(
        got.pool,
        Some(PlacedPool {
            name: "gpu-a100".into(),
            purpose: PoolPurpose::Gpu,
            node_selector: map(&[
                ("atelier.dev/pool", "gpu-a100"),
                ("nvidia.com/gpu.product", "a100"),
            ]),
            tolerations: vec![gpu_toleration()],
            affinity: Some(affinity),
            gpu_resource_name: Some("nvidia.com/gpu".into()),
            priority_class_name: Some("atelier-gpu".into()),
        })
    );
    let names: Vec<&str> = got.data_sources.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["argo-floats", "era5"], "sorted by name");
    assert_eq!(got.env, map(&[("DASK_DISTRIBUTED__WORKERS", "4")]));
    assert_eq!(
        got.home,
        HomeVolume {
            claim_name: "home-alice-gpu".into(),
            size: "50Gi".into(),
            storage_class_name: Some("fast-ssd".into()),
            mount_path: "/home/jovyan".into(),
            reclaim: HomeReclaim::Delete,
        }
    );
    assert_eq!(got.server_name, "gpu");
}

/// Pool routing: (groups, spec, expected pool or (reason, message)).
#[test]
fn pool_routing_table() {
    type Want = Result<&'static str, (&'static str, &'static str)>;
    let cases: &[(&str, &str, Want)] = &[
        // CPU-only.
        (
            "chemistry",
            "user: bob\nprofile: rstudio",
            Ok("interactive"),
        ),
        (
            "physics",
            "user: alice\nprofile: jupyter-small",
            Ok("interactive"),
        ),
        (
            "chemistry",
            "user: bob\nprofile: rstudio\nnodePool: batch",
            Ok("batch"),
        ),
        (
            "physics",
            "user: alice\nprofile: rstudio\nnodePool: interactive-large",
            Ok("interactive-large"),
        ),
        (
            "chemistry",
            "user: bob\nprofile: rstudio\nnodePool: interactive-large",
            Err((
                "NodePoolForbidden",
                "NodePool interactive-large is open only to groups [physics]; the user's groups are [chemistry]",
            )),
        ),
        (
            "physics",
            "user: alice\nprofile: rstudio\nnodePool: gpu-a100",
            Err((
                "NodePoolForbidden",
                "NodePool gpu-a100 is a gpu NodePool; a workspace asking for no GPU may not run there",
            )),
        ),
        (
            "physics",
            "user: alice\nprofile: rstudio\nnodePool: nope",
            Err(("NodePoolNotFound", "NodePool nope does not exist")),
        ),
        // The qgis profile's default pool is a gpu pool: a CPU-only workspace skips it.
        ("chemistry", "user: bob\nprofile: qgis", Ok("interactive")),
        // GPUs, no type: the profile's default gpu pool, else the first open gpu pool by name.
        (
            "physics",
            "user: alice\nprofile: pangeo-gpu\nresources: {gpus: 1}",
            Ok("gpu-a100"),
        ),
        (
            "physics",
            "user: alice\nprofile: rstudio\nresources: {gpus: 1}",
            Ok("gpu-a100"),
        ),
        (
            "chemistry",
            "user: bob\nprofile: rstudio\nresources: {gpus: 1}",
            Ok("gpu-v100"),
        ),
        (
            "physics",
            "user: alice\nprofile: qgis\nresources: {gpus: 1}",
            Ok("gpu-v100"),
        ),
        // GPUs with a type.
        (
            "physics",
            "user: alice\nprofile: rstudio\nresources: {gpus: 2, gpuType: a100}",
            Ok("gpu-a100"),
        ),
        (
            "physics",
            "user: alice\nprofile: rstudio\nresources: {gpus: 1, gpuType: t4}",
            Ok("gpu-v100"),
        ),
        (
            "chemistry",
            "user: bob\nprofile: rstudio\nresources: {gpus: 1, gpuType: a100}",
            Err((
                "NoEligiblePool",
                "no gpu NodePool offering gpuType a100 is open to groups [chemistry]",
            )),
        ),
        (
            "physics",
            "user: alice\nprofile: rstudio\nresources: {gpus: 1, gpuType: h100}",
            Err((
                "NoEligiblePool",
                "no gpu NodePool offers gpuType h100 (offered: [a100, t4, v100])",
            )),
        ),
        // GPUs on a named pool.
        (
            "physics",
            "user: alice\nprofile: rstudio\nresources: {gpus: 1}\nnodePool: gpu-v100",
            Ok("gpu-v100"),
        ),
        (
            "chemistry",
            "user: bob\nprofile: rstudio\nresources: {gpus: 1}\nnodePool: gpu-a100",
            Err((
                "NodePoolForbidden",
                "NodePool gpu-a100 is open only to groups [ml, physics]; the user's groups are [chemistry]",
            )),
        ),
        (
            "physics",
            "user: alice\nprofile: rstudio\nresources: {gpus: 1, gpuType: v100}\nnodePool: gpu-a100",
            Err((
                "NodePoolForbidden",
                "NodePool gpu-a100 does not offer gpuType v100 (it offers [a100])",
            )),
        ),
        (
            "physics",
            "user: alice\nprofile: rstudio\nresources: {gpus: 1}\nnodePool: interactive",
            Err((
                "NodePoolForbidden",
                "NodePool interactive has purpose interactive; a workspace asking for 1 GPU needs a gpu NodePool",
            )),
        ),
        (
            "physics",
            "user: alice\nprofile: rstudio\nresources: {gpus: 2}\nnodePool: batch",
            Err((
                "NodePoolForbidden",
                "NodePool batch has purpose batch; a workspace asking for 2 GPUs needs a gpu NodePool",
            )),
        ),
    ];
    for (groups, spec, want) in cases {
        let w = ws("w", groups, spec);
        let got = try_validate(&w)
            .map(|v| v.pool.map(|p| p.name).unwrap_or_default())
            .map_err(|r| (r.reason, r.message));
        let want = want.map(str::to_owned).map_err(|(r, m)| (r, m.to_owned()));
        assert_eq!(got, want, "{groups} / {spec}");
    }
}

#[test]
fn gpu_type_pins_the_type_label_and_cpu_only_gets_no_gpu_placement() {
    // Default type label of the v100 pool.
    let v = validated(&ws(
        "w",
        "physics",
        "user: alice\nprofile: rstudio\nresources: {gpus: 1, gpuType: t4}",
    ));
    let pool = v.pool.expect("placed");
    assert_eq!(
        pool.node_selector,
        map(&[
            ("atelier.dev/gpu-type", "t4"),
            ("atelier.dev/pool", "gpu-v100")
        ])
    );
    assert_eq!(pool.gpu_resource_name.as_deref(), Some("nvidia.com/gpu"));

    // The qgis profile's maximum gpuType (t4) is the type of a request that names none.
    let v = validated(&ws(
        "w",
        "physics",
        "user: alice\nprofile: qgis\nresources: {gpus: 1}",
    ));
    assert_eq!(v.resources.gpu_type.as_deref(), Some("t4"));
    let pool = v.pool.expect("placed");
    assert_eq!(pool.name, "gpu-v100");
    assert_eq!(pool.node_selector["atelier.dev/gpu-type"], "t4");

    // A CPU-only qgis workspace (its profile defaults to a gpu pool) carries nothing of a gpu pool.
    let v = validated(&ws("w", "chemistry", "user: bob\nprofile: qgis"));
    let pool = v.pool.expect("placed");
    assert_eq!(pool.name, "interactive");
    assert_eq!(pool.gpu_resource_name, None);
    assert!(pool.tolerations.is_empty());
    assert_eq!(v.resources.gpus, 0);
}

#[test]
fn no_pool_at_all() {
    let w = workspace("alice");
    let mut d = deref(&w);
    d.pools
        .retain(|p| p.metadata.name.as_deref() == Some("interactive-large"));
    let bob = workspace("bob");
    let mut d_bob = deref(&bob);
    d_bob.pools = d.pools.clone();
    let r = validate(&bob, &d_bob, &cfg()).unwrap_err();
    assert_eq!(
        (r.reason, r.message.as_str()),
        (
            "NoEligiblePool",
            "no interactive NodePool is open to groups [chemistry]"
        )
    );
    d.pools.clear();
    let r = validate(&w, &d, &cfg()).unwrap_err();
    assert_eq!(
        (r.reason, r.message.as_str()),
        ("NoEligiblePool", "no interactive NodePool exists")
    );
    let mut gpu = ws(
        "w",
        "physics",
        "user: alice\nprofile: rstudio\nresources: {gpus: 1}",
    );
    let mut d = deref(&gpu);
    d.pools.retain(|p| p.spec.purpose != PoolPurpose::Gpu);
    let r = validate(&gpu, &d, &cfg()).unwrap_err();
    assert_eq!(
        (r.reason, r.message.as_str()),
        ("NoEligiblePool", "no gpu NodePool exists")
    );
    // Stopped: no pool is fine.
    gpu.spec.desired_state = DesiredState::Stopped;
    let v = validate(&gpu, &d, &cfg()).expect("a stopped workspace needs no pool");
    assert_eq!(v.pool, None);
    assert_eq!(v.desired_state, DesiredState::Stopped);
}

#[test]
fn profile_rules() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "chemistry",
            "user: bob\nprofile: pangeo-gpu",
            reason::PROFILE_FORBIDDEN,
            "WorkspaceProfile pangeo-gpu is open only to groups [ml, physics]; user bob is in [chemistry]",
        ),
        (
            "",
            "user: bob\nprofile: admin-tools",
            reason::PROFILE_FORBIDDEN,
            "WorkspaceProfile admin-tools is open only to groups [admins]; user bob is in []",
        ),
        (
            "physics",
            "user: alice\nprofile: nope",
            reason::PROFILE_NOT_FOUND,
            "WorkspaceProfile nope does not exist",
        ),
        (
            "physics",
            "user: alice\nprofile: jupyter-small\nkind: rstudio",
            reason::KIND_OVERRIDE_FORBIDDEN,
            "WorkspaceProfile jupyter-small runs jupyter and does not allow another kind (asked for rstudio)",
        ),
        (
            "physics",
            "user: alice\nprofile: jupyter-small\nimage: evil/miner:latest",
            reason::IMAGE_OVERRIDE_FORBIDDEN,
            "WorkspaceProfile jupyter-small runs image quay.io/jupyter/scipy-notebook:2025-01-06 and does not allow another image (asked for evil/miner:latest)",
        ),
        (
            "physics",
            "user: alice\nprofile: jupyter-small\nresources: {cpu: \"8\"}",
            reason::RESOURCES_EXCEED_PROFILE,
            "cpu 8 exceeds the maximum 4 of WorkspaceProfile jupyter-small",
        ),
        (
            "physics",
            "user: alice\nprofile: jupyter-small\nresources: {cpu: 4001m}",
            reason::RESOURCES_EXCEED_PROFILE,
            "cpu 4001m exceeds the maximum 4 of WorkspaceProfile jupyter-small",
        ),
        (
            "physics",
            "user: alice\nprofile: jupyter-small\nresources: {memory: 32Gi}",
            reason::RESOURCES_EXCEED_PROFILE,
            "memory 32Gi exceeds the maximum 16Gi of WorkspaceProfile jupyter-small",
        ),
        (
            "physics",
            "user: alice\nprofile: jupyter-small\nresources: {gpus: 1}",
            reason::RESOURCES_EXCEED_PROFILE,
            "gpus 1 exceeds the maximum 0 of WorkspaceProfile jupyter-small",
        ),
        (
            "physics",
            "user: alice\nprofile: pangeo-gpu\nresources: {gpus: 3}",
            reason::RESOURCES_EXCEED_PROFILE,
            "gpus 3 exceeds the maximum 2 of WorkspaceProfile pangeo-gpu",
        ),
        (
            "physics",
            "user: alice\nprofile: qgis\nresources: {gpus: 1, gpuType: v100}",
            reason::RESOURCES_EXCEED_PROFILE,
            "gpuType v100 is not allowed by WorkspaceProfile qgis (only t4)",
        ),
        (
            "physics",
            "user: alice\nprofile: rstudio\nresources: {cpu: \"0\"}",
            reason::INVALID_RESOURCES,
            "cpu (0) and memory (2Gi) must be more than 0 and gpus (0) at least 0",
        ),
        (
            "physics",
            "user: alice\nprofile: rstudio\nresources: {memory: 1e400}",
            reason::INVALID_RESOURCES,
            "memory: \"1e400\" is too large",
        ),
        (
            "physics",
            "user: alice\nprofile: rstudio\nhomeSize: \"0\"",
            reason::INVALID_RESOURCES,
            "home size 0 must be more than 0",
        ),
        (
            "physics",
            "user: Alice\nprofile: rstudio",
            reason::INVALID_NAME,
            "user name \"Alice\" is not valid (1 to 63 of a-z, 0-9, '.', '_', '-', starting and ending with a letter or digit)",
        ),
        (
            "physics",
            "user: alice\nserverName: My_Server\nprofile: rstudio",
            reason::INVALID_NAME,
            "server name \"My_Server\" is not valid (empty, or an RFC 1123 label of at most 63 characters)",
        ),
    ];
    for (groups, spec, want_reason, want_message) in cases {
        let r = refused(&ws("w", groups, spec));
        assert_eq!(
            (r.reason, r.message.as_str()),
            (*want_reason, *want_message),
            "{spec}"
        );
    }
}

#[test]
fn allowed_overrides_and_limits() {
    // Kind override allowed by rstudio; same kind as the profile needs no permission.
    let v = validated(&ws(
        "w",
        "chemistry",
        "user: bob\nprofile: rstudio\nkind: jupyter",
    ));
    assert_eq!(v.kind, WorkspaceKind::Jupyter);
    let v = validated(&ws(
        "w",
        "physics",
        "user: alice\nprofile: jupyter-small\nkind: jupyter\nimage: quay.io/jupyter/scipy-notebook:2025-01-06",
    ));
    assert_eq!(v.kind, WorkspaceKind::Jupyter);
    // Image override allowed by pangeo-gpu.
    let v = validated(&ws(
        "w",
        "physics",
        "user: alice\nprofile: pangeo-gpu\nimage: ghcr.io/alice/pangeo-dev:1",
    ));
    assert_eq!(v.image, "ghcr.io/alice/pangeo-dev:1");
    // The maximum itself is allowed; quantities come out canonical.
    let v = validated(&ws(
        "w",
        "physics",
        "user: alice\nprofile: jupyter-small\nresources: {cpu: 4000m, memory: 16Gi}",
    ));
    assert_eq!(
        (v.resources.cpu.as_str(), v.resources.memory.as_str()),
        ("4", "16Gi")
    );
    let v = validated(&ws(
        "w",
        "physics",
        "user: alice\nprofile: jupyter-small\nresources: {cpu: \"0.5\", memory: 1.5Gi}\nhomeSize: 20Gi",
    ));
    assert_eq!(
        v.resources,
        EffectiveResources {
            cpu: "500m".into(),
            memory: "1536Mi".into(),
            gpus: 0,
            gpu_type: None
        }
    );
    assert_eq!(v.home.size, "20Gi");
    // Built-in defaults when the profile has none (rstudio), and its home mount path.
    let v = validated(&workspace("bob"));
    assert_eq!(
        (v.resources.cpu.as_str(), v.resources.memory.as_str()),
        ("1", "2Gi")
    );
    assert_eq!(v.home.mount_path, "/home/rstudio");
    assert_eq!(v.kind, WorkspaceKind::Rstudio);
}

#[test]
fn env_is_profile_env_overlaid_by_workspace_env() {
    let mut w = workspace("alice");
    w.spec.env = map(&[
        ("TZ", "Europe/Paris"),
        ("EXTRA", "1"),
        ("JUPYTERHUB_API_URL", "http://evil"),
    ]);
    let v = validated(&w);
    assert_eq!(
        v.env,
        map(&[
            ("EXTRA", "1"),
            ("PIP_INDEX_URL", "https://pypi.example.org/simple"),
            ("TZ", "Europe/Paris"),
        ])
    );
}

#[test]
fn data_source_rules() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "physics",
            "user: alice\nprofile: rstudio\ndataSources: [era5, nope]",
            reason::DATA_SOURCE_NOT_FOUND,
            "DataSource nope does not exist",
        ),
        (
            "chemistry",
            "user: bob\nprofile: rstudio\ndataSources: [scratch]",
            reason::DATA_SOURCE_FORBIDDEN,
            "DataSource scratch is open only to groups [physics]; user bob is in [chemistry]",
        ),
        (
            "physics",
            "user: alice\nprofile: rstudio\ndataSources: [secret-archive]",
            reason::DATA_SOURCE_FORBIDDEN,
            "DataSource secret-archive is open only to groups [admins]; user alice is in [physics]",
        ),
        (
            "physics",
            "user: alice\nprofile: rstudio\ndataSources: [team-shared, clash]",
            reason::DATA_SOURCE_CONFLICT,
            "DataSource team-shared would be mounted at /shared, where DataSource clash is mounted",
        ),
    ];
    for (groups, spec, want_reason, want_message) in cases {
        let r = refused(&ws("w", groups, spec));
        assert_eq!(
            (r.reason, r.message.as_str()),
            (*want_reason, *want_message),
            "{spec}"
        );
    }

    // A source mounted over the home volume.
    let w = ws(
        "w",
        "physics",
        "user: alice\nprofile: rstudio\ndataSources: [team-shared]",
    );
    let mut d = deref(&w);
    d.data_sources[0].spec.mount_path = Some("/home/rstudio/".into());
    let r = validate(&w, &d, &cfg()).unwrap_err();
    assert_eq!(
        (r.reason, r.message.as_str()),
        (
            reason::DATA_SOURCE_CONFLICT,
            "DataSource team-shared would be mounted at /home/rstudio/, where the home volume is mounted"
        )
    );

    // A source mounted where the operator puts the catalogue or the iRODS files.
    for (path, what) in [
        ("/etc/atelier/data/", "the data catalogue"),
        ("/etc/atelier/irods", "the iRODS client's files"),
    ] {
        let mut d = deref(&w);
        d.data_sources[0].spec.mount_path = Some(path.into());
        let r = validate(&w, &d, &cfg()).unwrap_err();
        assert_eq!(
            (r.reason, r.message),
            (
                reason::DATA_SOURCE_CONFLICT,
                format!(
                    "DataSource team-shared would be mounted at {path}, where {what} is mounted"
                )
            )
        );
    }

    // Every kind, open to physics: accepted and sorted; env-only sources do not conflict.
    let v = validated(&ws(
        "w",
        "physics",
        "user: alice\nprofile: rstudio\ndataSources: [team-shared, scratch, irods-csi, irods-archive, sentinel, era5, argo-floats]",
    ));
    let names: Vec<&str> = v.data_sources.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "argo-floats",
            "era5",
            "irods-archive",
            "irods-csi",
            "scratch",
            "sentinel",
            "team-shared"
        ]
    );
}

/// A DataSource named `name` from YAML spec lines.
fn data_source(name: &str, spec: &str) -> crate::api::v1alpha1::DataSource {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    yaml(&format!(
        "apiVersion: atelier.dev/v1alpha1\nkind: DataSource\nmetadata:\n  name: {name}\nspec:\n{spec}"
    ))
}

/// `validate` of a workspace of `groups` using only `source`, with what the caller read.
fn with_source(
    groups: &str,
    source: crate::api::v1alpha1::DataSource,
    secrets: Option<&[&str]>,
    drivers: Option<&[(&str, &[&str])]>,
) -> Result<ValidatedWorkspace, Refusal> {
    let w = ws(
        "w",
        groups,
        &format!(
            "user: alice\nprofile: rstudio\ndataSources: [{}]",
            source.name_any()
        ),
    );
    let mut d = deref(&w);
    d.data_sources = vec![source];
    d.credential_secrets = secrets.map(set);
    d.csi_drivers = drivers.map(|ds| {
        ds.iter()
            .map(|(n, modes)| (n.to_string(), modes.iter().map(|m| m.to_string()).collect()))
            .collect()
    });
    validate(&w, &d, &cfg())
}

const BY_GROUP: &str = "s3:
  endpoint: http://127.0.0.1:8333
  bucket: argo
  credentialsByGroup:
    - {group: vo-ocean, secret: {name: ocean-s3}}
    - {group: physics, secret: {name: physics-s3}}";

#[test]
fn data_credentials_must_exist_when_checked() {
    let argo = data_source("argo", BY_GROUP);
    // Not checked (None): the hub without a view of the Secrets keeps today's behaviour.
    assert!(with_source("physics", argo.clone(), None, None).is_ok());
    // The user's group's Secret exists: fine; another group's missing Secret does not matter.
    assert!(with_source("physics", argo.clone(), Some(&["physics-s3"]), None).is_ok());
    // The Secret the user would get is missing.
    let r = with_source("physics", argo.clone(), Some(&["ocean-s3"]), None).unwrap_err();
    assert_eq!(
        (r.reason, r.message.as_str()),
        (
            reason::DATA_CREDENTIALS_NOT_FOUND,
            "DataSource argo: Secret physics-s3 (credentials of group physics) does not exist in namespace atelier"
        )
    );
    // The first group listed wins when the user is in several.
    let r = with_source(
        "physics,vo-ocean",
        argo.clone(),
        Some(&["physics-s3"]),
        None,
    )
    .unwrap_err();
    assert!(
        r.message
            .contains("Secret ocean-s3 (credentials of group vo-ocean)"),
        "{}",
        r.message
    );
    // In no group: no credentials, nothing to check.
    assert!(with_source("chemistry", argo, Some(&[]), None).is_ok());

    // A single credentialsSecret, and a CSI driver's own Secret.
    let era5 = data_source(
        "era5",
        "s3:
  endpoint: https://objects.example.org
  bucket: era5
  credentialsSecret: {name: era5-creds}
csi:
  driver: ru.yandex.s3.csi
  nodePublishSecret: {name: era5-csi}
mountPath: /data/era5",
    );
    let r = with_source("physics", era5.clone(), Some(&["era5-csi"]), None).unwrap_err();
    assert_eq!(
        r.message,
        "DataSource era5: Secret era5-creds (credentials) does not exist in namespace atelier"
    );
    let r = with_source("physics", era5.clone(), Some(&["era5-creds"]), None).unwrap_err();
    assert_eq!(
        (r.reason, r.message.as_str()),
        (
            reason::DATA_CREDENTIALS_NOT_FOUND,
            "DataSource era5: Secret era5-csi (csi.nodePublishSecret) does not exist in namespace atelier"
        )
    );
    assert!(with_source("physics", era5, Some(&["era5-creds", "era5-csi"]), None).is_ok());
}

#[test]
fn csi_drivers_must_be_installed_and_fit_the_mode() {
    let source = |mode: &str| {
        data_source(
            "era5",
            &format!(
                "s3:
  endpoint: https://objects.example.org
  bucket: era5
csi:
  driver: ru.yandex.s3.csi
  mode: {mode}
mountPath: /data/era5"
            ),
        )
    };
    // Not checked.
    assert!(with_source("physics", source("Ephemeral"), None, None).is_ok());
    let r = with_source(
        "physics",
        source("Auto"),
        None,
        Some(&[("irods.csi.cyverse.org", &[])]),
    )
    .unwrap_err();
    assert_eq!(
        (r.reason, r.message.as_str()),
        (
            reason::CSI_DRIVER_NOT_FOUND,
            "DataSource era5: CSI driver ru.yandex.s3.csi is not installed in the cluster (no CSIDriver ru.yandex.s3.csi)"
        )
    );
    let persistent: &[(&str, &[&str])] = &[("ru.yandex.s3.csi", &["Persistent"])];
    assert!(with_source("physics", source("Auto"), None, Some(persistent)).is_ok());
    assert!(with_source("physics", source("Persistent"), None, Some(persistent)).is_ok());
    let r = with_source("physics", source("Ephemeral"), None, Some(persistent)).unwrap_err();
    assert_eq!(
        (r.reason, r.message.as_str()),
        (
            reason::CSI_DRIVER_MODE_UNSUPPORTED,
            "DataSource era5: CSI driver ru.yandex.s3.csi supports Persistent volumes, not Ephemeral"
        )
    );
    // No volumeLifecycleModes: Persistent only.
    let unlisted: &[(&str, &[&str])] = &[("ru.yandex.s3.csi", &[])];
    assert!(with_source("physics", source("Persistent"), None, Some(unlisted)).is_ok());
    assert_eq!(
        with_source("physics", source("Ephemeral"), None, Some(unlisted))
            .unwrap_err()
            .reason,
        reason::CSI_DRIVER_MODE_UNSUPPORTED
    );
    let inline: &[(&str, &[&str])] = &[("ru.yandex.s3.csi", &["Ephemeral"])];
    assert!(with_source("physics", source("Ephemeral"), None, Some(inline)).is_ok());
    assert!(with_source("physics", source("Auto"), None, Some(inline)).is_ok());
    assert_eq!(
        with_source("physics", source("Persistent"), None, Some(inline))
            .unwrap_err()
            .reason,
        reason::CSI_DRIVER_MODE_UNSUPPORTED
    );
}

#[test]
fn data_sources_the_api_server_did_not_check() {
    let cases = [
        (
            "s3:\n  endpoint: https://s3.example.org\n  bucket: argo\nnfs:\n  server: nfs\n  path: /x\nmountPath: /x",
            "at most one of s3, irods, nfs or pvc may be set",
        ),
        (
            "description: nothing",
            "one of s3, irods, nfs, pvc, stac or ogc must be set",
        ),
        (
            "nfs:\n  server: nfs\n  path: /x\ncsi:\n  driver: nfs.csi.k8s.io\nmountPath: /x",
            "csi applies only to s3 and irods sources",
        ),
        (
            "pvc:\n  claimName: team",
            "mountPath is required with nfs, pvc or csi",
        ),
        (
            "s3:\n  endpoint: https://s3.example.org\n  bucket: argo\n  credentialsSecret: {name: a}\n  credentialsByGroup: [{group: g, secret: {name: b}}]",
            "credentialsSecret and credentialsByGroup are mutually exclusive",
        ),
        (
            "irods:\n  host: h\n  zone: z\n  path: /z\n  credentialsByGroup: [{group: g, secret: {name: a}}, {group: g, secret: {name: b}}]",
            "credentialsByGroup names group g twice",
        ),
        (
            "s3:\n  endpoint: https://s3.example.org\n  bucket: argo\n  credentialsByGroup: [{group: g, secret: {name: a}}]\ncsi:\n  driver: ru.yandex.s3.csi\nmountPath: /data/argo",
            "an s3 source with credentialsByGroup is mounted with one Secret for all its users: set csi.nodePublishSecret",
        ),
    ];
    for (spec, message) in cases {
        let r = with_source("physics", data_source("bad", spec), None, None).unwrap_err();
        assert_eq!(
            (r.reason, r.message.as_str()),
            (
                reason::DATA_SOURCE_INVALID,
                format!("DataSource bad: {message}").as_str()
            ),
            "{spec}"
        );
    }
    // A STAC-only source, and group credentials with a mount Secret, are fine.
    assert!(
        with_source(
            "physics",
            data_source("stac", "stac: https://earth-search.example.org/v1"),
            Some(&[]),
            Some(&[])
        )
        .is_ok()
    );
    assert!(with_source(
        "physics",
        data_source(
            "argo",
            "s3:\n  endpoint: https://s3.example.org\n  bucket: argo\n  credentialsByGroup: [{group: g, secret: {name: a}}]\ncsi:\n  driver: ru.yandex.s3.csi\n  nodePublishSecret: {name: argo-mount}\nmountPath: /data/argo"
        ),
        None,
        None
    )
    .is_ok());
}

#[test]
fn names_and_namespaces() {
    let per_user = OperatorConfig {
        namespace_mode: NamespaceMode::PerUser {
            prefix: "atelier-u-".into(),
        },
        ..cfg()
    };
    let w = workspace("alice");
    let r = validate(&w, &deref(&w), &per_user).unwrap_err();
    assert_eq!(
        (r.reason, r.message.as_str()),
        (
            reason::WRONG_NAMESPACE,
            "a Workspace of user alice must live in namespace atelier-u-alice, not atelier"
        )
    );
    let mut w = workspace("alice");
    w.metadata.namespace = Some("atelier-u-alice".into());
    let v = validate(&w, &deref(&w), &per_user).expect("in its user's namespace");
    assert_eq!(v.namespace, "atelier-u-alice");
    // Another user's namespace is wrong too.
    w.metadata.namespace = Some("atelier-u-bob".into());
    assert_eq!(
        validate(&w, &deref(&w), &per_user).unwrap_err().reason,
        reason::WRONG_NAMESPACE
    );
    // No namespace at all.
    let mut w = workspace("alice");
    w.metadata.namespace = None;
    assert_eq!(
        try_validate(&w).unwrap_err(),
        Refusal {
            reason: reason::WRONG_NAMESPACE,
            message: "the Workspace has no namespace".into()
        }
    );
    // A long, dotted Workspace name is fine; its children get safe names.
    let long = format!("alice.{}.{}", "x".repeat(60), "y".repeat(40));
    let mut w = workspace("alice");
    w.metadata.name = Some(long.clone());
    let v = validated(&w);
    assert_eq!(v.name, long);
    assert!(v.home.claim_name.len() <= 63, "{}", v.home.claim_name);
    assert!(crate::policy::names::is_dns_label(&v.home.claim_name));
    // No name.
    w.metadata.name = None;
    assert_eq!(try_validate(&w).unwrap_err().reason, reason::INVALID_NAME);
}

/// Others of `alice`'s kind, running in `pool`.
fn others(base: &Workspace, pool: &str, specs: &[(&str, &str, &str)]) -> Vec<Workspace> {
    specs
        .iter()
        .map(|(name, groups, resources)| {
            let mut o = running_in(&with_groups(base.clone(), groups), name, pool);
            o.spec.resources = if resources.is_empty() {
                None
            } else {
                Some(yaml::<ResourceRequest>(resources))
            };
            o
        })
        .collect()
}

/// The usage index as the operator's Workspace informer fills it with `others`: each estimated
/// from its spec, with `d`'s profile defaults for the workspaces of that profile (the fixtures
/// hold no other profile's defaults).
fn index_of(ws: &Workspace, d: &Dereferenced, others: &[Workspace]) -> UsageIndex {
    let mut index = UsageIndex::default();
    for o in others {
        let defaults = d
            .profile
            .as_ref()
            .filter(|_| o.spec.profile == ws.spec.profile)
            .and_then(|p| p.spec.default_resources.as_ref());
        let gpu_pool = |name: &str| {
            d.pools
                .iter()
                .any(|p| p.name_any() == name && p.spec.purpose == PoolPurpose::Gpu)
        };
        index.observe(&key_of(o), observed_claim(o, defaults, gpu_pool));
    }
    index
}

/// `validate`, then admission against the others: the chosen pool, or the refusal.
fn check_with(
    ws: &Workspace,
    d: &Dereferenced,
    others: &[Workspace],
) -> Result<String, (&'static str, String)> {
    let mut index = index_of(ws, d, others);
    let v = validate(ws, d, &cfg()).map_err(|r| (r.reason, r.message.clone()))?;
    admit(&mut index, &key_of(ws), &v, &d.pools).map_err(|r| (r.reason, r.message))?;
    Ok(v.pool.map(|p| p.name).unwrap_or_default())
}

fn check(ws: &Workspace, others: Vec<Workspace>) -> Result<String, (&'static str, String)> {
    check_with(ws, &deref(ws), &others)
}

#[test]
fn per_user_caps() {
    let alice = workspace("alice");
    // interactive: perUser workspaces 2, cpu 4, memory 16Gi.
    assert_eq!(
        check(
            &alice,
            others(&alice, "interactive", &[("a1", "physics", "")])
        ),
        Ok("interactive".into())
    );
    assert_eq!(
        check(
            &alice,
            others(
                &alice,
                "interactive",
                &[("a1", "physics", ""), ("a2", "physics", "")]
            )
        ),
        Err((
            reason::USER_CAP_EXCEEDED,
            "user alice would use 3 running workspaces in NodePool interactive (cap 2)".into()
        ))
    );
    assert_eq!(
        check(
            &alice,
            others(&alice, "interactive", &[("a1", "physics", "{cpu: \"3\"}")])
        ),
        Ok("interactive".into()),
        "3 + 1 CPU = the cap"
    );
    assert_eq!(
        check(
            &alice,
            others(&alice, "interactive", &[("a1", "physics", "{cpu: 3500m}")])
        ),
        Err((
            reason::USER_CAP_EXCEEDED,
            "user alice would use 4500m CPU in NodePool interactive (cap 4)".into()
        ))
    );
    assert_eq!(
        check(
            &alice,
            others(
                &alice,
                "interactive",
                &[("a1", "physics", "{memory: 15Gi}")]
            )
        ),
        Err((
            reason::USER_CAP_EXCEEDED,
            "user alice would use 17Gi of memory in NodePool interactive (cap 16Gi)".into()
        ))
    );
    // gpu-v100: perUser gpus 1.
    let bob = ws(
        "bob-gpu",
        "chemistry",
        "user: bob\nprofile: rstudio\nresources: {gpus: 1}",
    );
    assert_eq!(check(&bob, vec![]), Ok("gpu-v100".into()));
    assert_eq!(
        check(
            &bob,
            others(&bob, "gpu-v100", &[("b1", "chemistry", "{gpus: 1}")])
        ),
        Err((
            reason::USER_CAP_EXCEEDED,
            "user bob would use 2 GPUs in NodePool gpu-v100 (cap 1)".into()
        ))
    );
    // Another user's GPUs do not count against bob's per-user cap.
    let mut carol = others(&bob, "gpu-v100", &[("c1", "biology", "{gpus: 1}")]);
    carol[0].spec.user = "carol".into();
    assert_eq!(check(&bob, carol), Ok("gpu-v100".into()));
}

#[test]
fn per_group_caps() {
    // gpu-a100: perGroup gpus 4; alice is in ml and physics; groups are checked in name order.
    let alice = workspace("alice-gpu");
    let mut physicists = others(
        &alice,
        "gpu-a100",
        &[
            ("c1", "physics", "{gpus: 2}"),
            ("d1", "physics", "{gpus: 2}"),
        ],
    );
    physicists[0].spec.user = "carol".into();
    physicists[1].spec.user = "dave".into();
    assert_eq!(
        check(&alice, physicists.clone()),
        Err((
            reason::GROUP_CAP_EXCEEDED,
            "group physics would use 5 GPUs in NodePool gpu-a100 (cap 4)".into()
        ))
    );
    // dave leaves physics: 3 GPUs for physics.
    physicists[1] = with_groups(physicists[1].clone(), "ml");
    assert_eq!(check(&alice, physicists.clone()), Ok("gpu-a100".into()));
    // interactive: perGroup workspaces 3.
    let bob = workspace("bob");
    let mut chemists = others(
        &bob,
        "interactive",
        &[
            ("x1", "chemistry", ""),
            ("x2", "chemistry", ""),
            ("x3", "chemistry, biology", ""),
        ],
    );
    for (i, o) in chemists.iter_mut().enumerate() {
        o.spec.user = format!("user{i}");
    }
    assert_eq!(
        check(&bob, chemists.clone()),
        Err((
            reason::GROUP_CAP_EXCEEDED,
            "group chemistry would use 4 running workspaces in NodePool interactive (cap 3)".into()
        ))
    );
    // interactive: perGroup cpu 8 (eve's CPU counts for chemistry, not for bob's per-user cap).
    for (cpu, want) in [
        ("7", Ok("interactive".to_owned())),
        (
            "7500m",
            Err((
                reason::GROUP_CAP_EXCEEDED,
                "group chemistry would use 8500m CPU in NodePool interactive (cap 8)".to_owned(),
            )),
        ),
    ] {
        let resources = format!("{{cpu: \"{cpu}\"}}");
        let mut heavy = others(
            &bob,
            "interactive",
            &[("x1", "chemistry", resources.as_str())],
        );
        heavy[0].spec.user = "eve".into();
        assert_eq!(check(&bob, heavy), want, "{cpu}");
    }
}

#[test]
fn caps_count_only_running_workspaces_of_the_pool_and_never_self() {
    let alice = workspace("alice");
    let mut os = others(
        &alice,
        "interactive",
        &[
            ("a1", "physics", ""),
            ("a2", "physics", ""),
            ("a3", "physics", ""),
        ],
    );
    // a1 is stopped, a2 runs elsewhere, a3 has no status yet.
    os[0].spec.desired_state = DesiredState::Stopped;
    os[1].status.as_mut().unwrap().node_pool = Some("batch".into());
    os[2].status = None;
    // And the workspace itself, as listed by the informer.
    let mut me = running_in(&alice, "alice", "interactive");
    me.metadata.namespace = alice.metadata.namespace.clone();
    os.push(me.clone());
    os.push(me.clone());
    assert_eq!(check(&alice, os.clone()), Ok("interactive".into()));
    // A workspace of the same name in another namespace is another workspace.
    let mut twin = me.clone();
    twin.metadata.namespace = Some("elsewhere".into());
    let mut twin2 = twin.clone();
    twin2.metadata.name = Some("alice-2".into());
    os.push(twin);
    os.push(twin2);
    assert_eq!(check(&alice, os).unwrap_err().0, reason::USER_CAP_EXCEEDED);
    // A stopped workspace skips caps (and still gets its pool).
    let mut stopped = alice.clone();
    stopped.spec.desired_state = DesiredState::Stopped;
    let full = others(
        &alice,
        "interactive",
        &[("a1", "physics", ""), ("a2", "physics", "")],
    );
    assert_eq!(check(&stopped, full), Ok("interactive".into()));
}

#[test]
fn usage_of_others_falls_back_to_their_profile_defaults_only_for_the_same_profile() {
    // Our profile's default CPU is 2: same-profile others without resources count 2 CPU, others
    // of another profile the built-in 1 CPU.
    let alice = workspace("alice");
    let mut d = deref(&alice);
    d.profile
        .as_mut()
        .unwrap()
        .spec
        .default_resources
        .as_mut()
        .unwrap()
        .cpu = Some("2".into());
    let same = running_in(&alice, "same", "interactive");
    let mut other_profile = running_in(&alice, "other", "interactive");
    other_profile.spec.profile = "rstudio".into();

    // Workspaces cap 2 would hit first: lift it.
    for p in &mut d.pools {
        if let Some(caps) = p.spec.caps.as_mut().and_then(|c| c.per_user.as_mut()) {
            caps.workspaces = None;
        }
    }
    assert!(
        check_with(&alice, &d, std::slice::from_ref(&same)).is_ok(),
        "2 + 2 = 4 CPU"
    );
    assert!(
        check_with(&alice, &d, std::slice::from_ref(&other_profile)).is_ok(),
        "1 + 2 = 3 CPU"
    );
    assert_eq!(
        check_with(&alice, &d, &[same, other_profile])
            .unwrap_err()
            .1,
        "user alice would use 5 CPU in NodePool interactive (cap 4)"
    );

    // On a gpu pool another profile's workspace without resources counts one GPU.
    let bob = ws(
        "bob-gpu",
        "chemistry",
        "user: bob\nprofile: rstudio\nresources: {gpus: 1}",
    );
    let mut o = running_in(&bob, "b1", "gpu-v100");
    o.spec.profile = "qgis".into();
    o.spec.resources = None;
    assert_eq!(
        check(&bob, vec![o]),
        Err((
            reason::USER_CAP_EXCEEDED,
            "user bob would use 2 GPUs in NodePool gpu-v100 (cap 1)".into()
        ))
    );
}

#[test]
fn the_pool_fixture_parses_as_expected() {
    let p = pool("gpu-v100");
    let gpu = p.spec.gpu.expect("gpu");
    assert_eq!(gpu.resource_name, "nvidia.com/gpu", "default resource name");
    assert_eq!(gpu.type_label, "atelier.dev/gpu-type", "default type label");
}

#[test]
fn a_desktop_shows_the_profiles_sources_the_user_may_use_and_leaves_out_the_rest() {
    use crate::api::v1alpha1::DesktopProfile;
    let mut ws = workspace("alice");
    ws.spec.data_sources = vec!["team-shared".into()];
    let mut d = deref(&ws);
    let every = super::test_support::data_sources();
    d.data_sources = every.clone();
    let profile = d.profile.as_mut().expect("profile");
    profile.spec.desktop = Some(DesktopProfile {
        data_sources: vec![
            "scratch".into(),        // alice is in physics: shown
            "secret-archive".into(), // admins only: left out
            "missing".into(),        // does not exist: left out
            "team-shared".into(),    // her own already: not twice
        ],
    });
    let desktop = |d: &Dereferenced| -> Vec<String> {
        validate(&ws, d, &cfg())
            .expect("validates")
            .desktop_sources
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    };
    // A jupyter workspace shows no desktop.
    assert!(desktop(&d).is_empty());
    d.profile.as_mut().unwrap().spec.kind = WorkspaceKind::Qgis;
    assert_eq!(desktop(&d), ["scratch"]);
    let v = validate(&ws, &d, &cfg()).unwrap();
    assert_eq!(v.kind, WorkspaceKind::Qgis);
    let own: Vec<&str> = v.data_sources.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        own,
        ["team-shared"],
        "the desktop's sources are not mounted"
    );
    // Bob (chemistry) may not use scratch: nothing more, and no refusal.
    let bob = with_groups(ws.clone(), "chemistry");
    let mut d = d.clone();
    d.groups = BTreeSet::from(["chemistry".to_owned()]);
    let v = validate(&bob, &d, &cfg()).expect("a forbidden desktop source is no refusal");
    assert!(v.desktop_sources.is_empty());
}
