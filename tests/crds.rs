//! The CRDs under `crds/`: up to date with the Rust types, carrying their validation, and
//! admitting exactly what they should. Every resource of `crds/examples/*.yaml` parses into the
//! Rust types and is admitted; every file of `crds/examples/invalid/` is refused with the error
//! its `# expect:` comment names, and only because of that one rule.
//!
//! No API server runs here: `support::schema` admits objects the way kube-apiserver does (strict
//! decoding, defaulting, the OpenAPI schema, then the CEL rules through kube's evaluator).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use atelier::api::patterns;
use atelier::api::v1alpha1::{
    self, BatchJob, DataSource, NodePool, PoolPurpose, Workspace, WorkspaceProfile,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::cel::{CompiledSchema, compile_schema, estimate_rule_cost};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use support::schema::{
    CrdValidator, ErrorType, FieldError, RULES_NOT_CHECKED, Refusal, Status, pattern_matches,
    validate_value,
};

/// Every kind, with its short name.
const KINDS: [(&str, &str); 5] = [
    ("Workspace", "ws"),
    ("WorkspaceProfile", "wsp"),
    ("NodePool", "np"),
    ("DataSource", "dsrc"),
    ("BatchJob", "bj"),
];

/// Short names taken elsewhere: `kubectl api-resources` of a stock Kubernetes 1.33 to 1.35
/// cluster, dask-kubernetes' CRDs (`dask_kubernetes/operator/customresources/*.yaml`) and Kueue's
/// (`+kubebuilder:resource:shortName` of `apis/kueue/*/`). kubectl resolves a short name to the
/// first match and only warns, so `ds` (DaemonSets) hid `datasources.atelier.dev`.
const TAKEN_SHORT_NAMES: &[(&str, &str)] = &[
    ("cs", "componentstatuses"),
    ("cm", "configmaps"),
    ("ep", "endpoints"),
    ("ev", "events (core and events.k8s.io)"),
    ("limits", "limitranges"),
    ("ns", "namespaces"),
    ("no", "nodes"),
    ("pvc", "persistentvolumeclaims"),
    ("pv", "persistentvolumes"),
    ("po", "pods"),
    ("rc", "replicationcontrollers"),
    ("quota", "resourcequotas"),
    ("sa", "serviceaccounts"),
    ("svc", "services"),
    ("crd", "customresourcedefinitions"),
    ("crds", "customresourcedefinitions"),
    ("ds", "daemonsets"),
    ("deploy", "deployments"),
    ("rs", "replicasets"),
    ("sts", "statefulsets"),
    ("hpa", "horizontalpodautoscalers"),
    ("cj", "cronjobs"),
    ("csr", "certificatesigningrequests"),
    ("ing", "ingresses"),
    ("netpol", "networkpolicies"),
    ("pdb", "poddisruptionbudgets"),
    ("pc", "priorityclasses"),
    ("sc", "storageclasses"),
    ("vac", "volumeattributesclasses"),
    // dask-kubernetes (kubernetes.dask.org)
    ("daskcluster", "daskclusters.kubernetes.dask.org"),
    ("dsk", "daskclusters.kubernetes.dask.org"),
    ("daskworkers", "daskworkergroups.kubernetes.dask.org"),
    ("daskjob", "daskjobs.kubernetes.dask.org"),
    ("as", "daskautoscalers.kubernetes.dask.org"),
    // Kueue (kueue.x-k8s.io)
    ("cq", "clusterqueues.kueue.x-k8s.io"),
    ("lq", "localqueues.kueue.x-k8s.io"),
    ("queue", "localqueues.kueue.x-k8s.io"),
    ("queues", "localqueues.kueue.x-k8s.io"),
    ("rf", "resourceflavors.kueue.x-k8s.io"),
    ("flavor", "resourceflavors.kueue.x-k8s.io"),
    ("flavors", "resourceflavors.kueue.x-k8s.io"),
    ("wl", "workloads.kueue.x-k8s.io"),
];

/// The pattern of user names (hub user names are DNS-label-like but may contain `.` and `_`).
const USER_PATTERN: &str = r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$";
/// The pattern of GPU models (`a100`, `h100-80gb`, `mi250x`).
const GPU_TYPE_PATTERN: &str = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$";
const GPU_TYPE_RULE: &str = "!has(self.gpuType) || (has(self.gpus) && self.gpus > 0)";
const ENV_RULE: &str =
    "self.all(k, k.matches('^[A-Za-z_][A-Za-z0-9_]*$') && !k.startsWith('JUPYTERHUB_'))";
const ENV_MESSAGE: &str = "env names must be POSIX names and may not start with JUPYTERHUB_";

fn crds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crds")
}

/// The `*.yaml` files directly in `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The generated CRD of `kind`, as JSON.
fn crd_json(kind: &str) -> Value {
    let crd = v1alpha1::crds()
        .into_iter()
        .find(|crd| crd.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for kind {kind}"));
    serde_json::to_value(crd).expect("a CRD serializes")
}

fn root_schema(crd: &Value) -> &Value {
    &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
}

/// The schema node at a dotted path: `spec.resources.gpus`, `spec.dataSources[]` (the items),
/// `spec.env{}` (the map values).
fn node<'a>(schema: &'a Value, path: &str) -> &'a Value {
    let mut node = schema;
    for segment in path.split('.') {
        let (name, suffix) = match segment.find(['[', '{']) {
            Some(i) => segment.split_at(i),
            None => (segment, ""),
        };
        node = node
            .get("properties")
            .and_then(|p| p.get(name))
            .unwrap_or_else(|| panic!("no property {name:?} on the way to {path}"));
        node = match suffix {
            "" => node,
            "[]" => &node["items"],
            "{}" => &node["additionalProperties"],
            other => panic!("bad suffix {other:?} in {path}"),
        };
    }
    node
}

/// The schema node of an instance path from an error (`spec.allowedGroups[0]`), for mutation.
fn node_for_instance_mut<'a>(schema: &'a mut Value, path: &str) -> &'a mut Value {
    let mut node = schema;
    for segment in path.split('.') {
        let name = segment.split('[').next().unwrap_or(segment);
        node = node
            .get_mut("properties")
            .and_then(|p| p.get_mut(name))
            .unwrap_or_else(|| panic!("no property {name:?} on the way to {path}"));
        for _ in segment.matches('[') {
            node = node.get_mut("items").expect("an array schema");
        }
    }
    node
}

fn validators() -> BTreeMap<String, CrdValidator> {
    v1alpha1::crds()
        .iter()
        .map(|crd| {
            let validator = CrdValidator::new(crd);
            (validator.kind().to_owned(), validator)
        })
        .collect()
}

/// Numbers compare by value (`16.0` in a schema equals `16`).
fn same(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => actual == expected,
    }
}

/// Visits every schema node with its dotted path (see [`node`]).
fn walk<'a>(schema: &'a Value, path: &str, visit: &mut dyn FnMut(&str, &'a Value)) {
    visit(path, schema);
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            let child = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            walk(prop, &child, visit);
        }
    }
    if let Some(items) = schema.get("items") {
        walk(items, &format!("{path}[]"), visit);
    }
    if let Some(values) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        walk(values, &format!("{path}{{}}"), visit);
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The committed CRDs are the generated ones.

#[test]
fn committed_crds_match_the_generated_ones() {
    let generated: BTreeMap<String, String> = atelier::crdgen::render().into_iter().collect();
    let committed: BTreeMap<String, String> = yaml_files(&crds_dir())
        .iter()
        .map(|path| (file_name(path), read(path)))
        .collect();

    let mut problems = Vec::new();
    for (file, yaml) in &generated {
        match committed.get(file) {
            None => problems.push(format!("crds/{file} is missing")),
            Some(on_disk) if on_disk != yaml => {
                let (line, ours, theirs) = on_disk
                    .lines()
                    .chain(std::iter::repeat("<end of file>"))
                    .zip(yaml.lines().chain(std::iter::repeat("<end of file>")))
                    .enumerate()
                    .find(|(_, (a, b))| a != b)
                    .map(|(i, (a, b))| (i + 1, a, b))
                    .unwrap_or((0, "", ""));
                problems.push(format!(
                    "crds/{file} differs from the generated CRD, first at line {line}:\n  committed: {ours}\n  generated: {theirs}"
                ));
            }
            Some(_) => {}
        }
    }
    for file in committed.keys().filter(|f| !generated.contains_key(*f)) {
        problems.push(format!(
            "crds/{file} is not generated by `atelier crdgen` (a CRD that no longer exists?)"
        ));
    }
    assert!(
        problems.is_empty(),
        "{}\n\nThe committed CRDs are out of date: run `cargo run -- crdgen --out crds` \
         (and delete files it no longer writes), then commit crds/.",
        problems.join("\n")
    );
    assert_eq!(generated.len(), KINDS.len());
}

// ---------------------------------------------------------------------------------------------
// 2. The schemas carry the validation.

#[test]
fn names_scopes_printer_columns_and_subresources() {
    type Columns = &'static [(&'static str, &'static str)];
    let expected: [(&str, &str, bool, Columns); 5] = [
        (
            "Workspace",
            "Namespaced",
            true,
            &[
                ("User", ".spec.user"),
                ("Server", ".spec.serverName"),
                ("Profile", ".spec.profile"),
                ("Phase", ".status.phase"),
                ("Pool", ".status.nodePool"),
                ("Workers", ".status.dask.workers"),
                ("Age", ".metadata.creationTimestamp"),
            ],
        ),
        (
            "WorkspaceProfile",
            "Cluster",
            false,
            &[
                ("Display Name", ".spec.displayName"),
                ("Kind", ".spec.kind"),
                ("Image", ".spec.image"),
                ("Pool", ".spec.defaultNodePool"),
                ("Age", ".metadata.creationTimestamp"),
            ],
        ),
        (
            "NodePool",
            "Cluster",
            false,
            &[
                ("Purpose", ".spec.purpose"),
                ("GPU", ".spec.gpu.resourceName"),
                ("Priority Class", ".spec.priorityClassName"),
                ("Age", ".metadata.creationTimestamp"),
            ],
        ),
        (
            "DataSource",
            "Cluster",
            false,
            &[
                ("Mount", ".spec.mountPath"),
                ("Read Only", ".spec.readOnly"),
                ("Age", ".metadata.creationTimestamp"),
            ],
        ),
        (
            "BatchJob",
            "Namespaced",
            true,
            &[
                ("User", ".spec.user"),
                ("Profile", ".spec.profile"),
                ("Pool", ".status.nodePool"),
                ("Phase", ".status.phase"),
                ("Exit", ".status.exitCode"),
                ("Age", ".metadata.creationTimestamp"),
            ],
        ),
    ];

    for ((kind, scope, status, columns), (kind_again, short)) in expected.iter().zip(KINDS) {
        assert_eq!(*kind, kind_again);
        let crd = crd_json(kind);
        let version = &crd["spec"]["versions"][0];
        assert_eq!(crd["spec"]["group"], "atelier.dev", "{kind}");
        assert_eq!(crd["spec"]["scope"], *scope, "{kind}");
        assert_eq!(crd["spec"]["names"]["shortNames"], json!([short]), "{kind}");
        assert_eq!(
            crd["spec"]["names"]["categories"],
            json!(["atelier"]),
            "{kind}"
        );
        assert_eq!(version["name"], "v1alpha1");
        assert_eq!(version["served"], true);
        assert_eq!(version["storage"], true);
        assert_eq!(
            version["subresources"].get("status") == Some(&json!({})),
            *status,
            "{kind}: status subresource"
        );
        let actual: Vec<(&str, &str)> = version["additionalPrinterColumns"]
            .as_array()
            .expect("printer columns")
            .iter()
            .map(|c| (c["name"].as_str().unwrap(), c["jsonPath"].as_str().unwrap()))
            .collect();
        assert_eq!(actual, *columns, "{kind}: printer columns");

        // Each column shows a field the schema declares, with a matching type.
        let schema = root_schema(&crd);
        for column in version["additionalPrinterColumns"].as_array().unwrap() {
            let path = column["jsonPath"].as_str().unwrap().trim_start_matches('.');
            if path == "metadata.creationTimestamp" {
                assert_eq!(column["type"], "date");
                continue;
            }
            let field = node(schema, path);
            assert_eq!(column["type"], field["type"], "{kind}: column {path}");
        }
    }

    let workspace = crd_json("Workspace");
    assert_eq!(
        workspace["spec"]["versions"][0]["selectableFields"],
        json!([{"jsonPath": ".spec.user"}])
    );
}

#[test]
fn schemas_carry_enums_patterns_bounds_defaults_and_required_fields() {
    let checks: Vec<(&str, &str, &str, Value)> = vec![
        // Enums.
        (
            "Workspace",
            "spec.desiredState",
            "enum",
            json!(["running", "stopped"]),
        ),
        (
            "Workspace",
            "spec.desiredState",
            "default",
            json!("running"),
        ),
        (
            "Workspace",
            "spec.kind",
            "enum",
            json!(["jupyter", "rstudio", "qgis", "r"]),
        ),
        (
            "Workspace",
            "status.phase",
            "enum",
            json!([
                "Pending", "Starting", "Running", "Stopping", "Stopped", "Failed"
            ]),
        ),
        (
            "WorkspaceProfile",
            "spec.kind",
            "enum",
            json!(["jupyter", "rstudio", "qgis", "r"]),
        ),
        ("WorkspaceProfile", "spec.kind", "default", json!("jupyter")),
        (
            "WorkspaceProfile",
            "spec.home.onDelete",
            "enum",
            json!(["keep", "delete"]),
        ),
        (
            "NodePool",
            "spec.purpose",
            "enum",
            json!(["interactive", "gpu", "batch"]),
        ),
        // Patterns: the shared ones of `atelier::api::patterns`, inlined in the types.
        ("Workspace", "spec.user", "pattern", json!(USER_PATTERN)),
        (
            "Workspace",
            "spec.serverName",
            "pattern",
            json!(patterns::DNS_LABEL_OR_EMPTY),
        ),
        (
            "Workspace",
            "spec.profile",
            "pattern",
            json!(patterns::DNS_SUBDOMAIN),
        ),
        (
            "Workspace",
            "spec.nodePool",
            "pattern",
            json!(patterns::DNS_SUBDOMAIN),
        ),
        (
            "Workspace",
            "spec.dataSources[]",
            "pattern",
            json!(patterns::DNS_SUBDOMAIN),
        ),
        (
            "Workspace",
            "spec.resources.cpu",
            "pattern",
            json!(patterns::QUANTITY),
        ),
        (
            "Workspace",
            "spec.resources.memory",
            "pattern",
            json!(patterns::QUANTITY),
        ),
        (
            "Workspace",
            "spec.resources.gpuType",
            "pattern",
            json!(GPU_TYPE_PATTERN),
        ),
        (
            "Workspace",
            "spec.homeSize",
            "pattern",
            json!(patterns::QUANTITY),
        ),
        (
            "WorkspaceProfile",
            "spec.home.size",
            "pattern",
            json!(patterns::QUANTITY),
        ),
        (
            "WorkspaceProfile",
            "spec.home.mountPath",
            "pattern",
            json!(patterns::ABSOLUTE_PATH),
        ),
        (
            "WorkspaceProfile",
            "spec.allowedGroups[]",
            "pattern",
            json!(patterns::GROUP_NAME),
        ),
        (
            "WorkspaceProfile",
            "spec.defaultNodePool",
            "pattern",
            json!(patterns::DNS_SUBDOMAIN),
        ),
        (
            "WorkspaceProfile",
            "spec.maxResources.memory",
            "pattern",
            json!(patterns::QUANTITY),
        ),
        (
            "NodePool",
            "spec.allowedGroups[]",
            "pattern",
            json!(patterns::GROUP_NAME),
        ),
        (
            "NodePool",
            "spec.caps.perUser.cpu",
            "pattern",
            json!(patterns::QUANTITY),
        ),
        (
            "NodePool",
            "spec.caps.perGroup.memory",
            "pattern",
            json!(patterns::QUANTITY),
        ),
        (
            "NodePool",
            "spec.gpu.types[]",
            "pattern",
            json!(GPU_TYPE_PATTERN),
        ),
        (
            "DataSource",
            "spec.mountPath",
            "pattern",
            json!(patterns::ABSOLUTE_PATH),
        ),
        (
            "DataSource",
            "spec.allowedGroups[]",
            "pattern",
            json!(patterns::GROUP_NAME),
        ),
        (
            "DataSource",
            "spec.s3.endpoint",
            "pattern",
            json!(r"^https?://[^\s/]+(/.*)?$"),
        ),
        (
            "DataSource",
            "spec.s3.bucket",
            "pattern",
            json!(r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$"),
        ),
        (
            "DataSource",
            "spec.s3.credentialsSecret.name",
            "pattern",
            json!(patterns::DNS_SUBDOMAIN),
        ),
        (
            "DataSource",
            "spec.irods.path",
            "pattern",
            json!(patterns::ABSOLUTE_PATH),
        ),
        (
            "DataSource",
            "spec.stac",
            "pattern",
            json!(r"^https?://[^\s/]+(/.*)?$"),
        ),
        (
            "DataSource",
            "spec.s3.credentialsByGroup[].group",
            "pattern",
            json!(patterns::GROUP_NAME),
        ),
        (
            "DataSource",
            "spec.irods.credentialsByGroup[].secret.name",
            "pattern",
            json!(patterns::DNS_SUBDOMAIN),
        ),
        (
            "DataSource",
            "spec.csi.capacity",
            "pattern",
            json!(patterns::QUANTITY),
        ),
        (
            "DataSource",
            "spec.csi.mode",
            "enum",
            json!(["Auto", "Ephemeral", "Persistent"]),
        ),
        (
            "DataSource",
            "spec.nfs.path",
            "pattern",
            json!(patterns::ABSOLUTE_PATH),
        ),
        (
            "DataSource",
            "spec.pvc.claimName",
            "pattern",
            json!(patterns::DNS_SUBDOMAIN),
        ),
        ("BatchJob", "spec.user", "pattern", json!(USER_PATTERN)),
        (
            "BatchJob",
            "spec.profile",
            "pattern",
            json!(patterns::DNS_SUBDOMAIN),
        ),
        (
            "BatchJob",
            "spec.dataSources[]",
            "pattern",
            json!(patterns::DNS_SUBDOMAIN),
        ),
        // Bounds.
        ("Workspace", "spec.user", "minLength", json!(1)),
        ("Workspace", "spec.user", "maxLength", json!(63)),
        ("Workspace", "spec.serverName", "maxLength", json!(63)),
        ("Workspace", "spec.serverName", "default", json!("")),
        ("Workspace", "spec.resources.gpus", "minimum", json!(0)),
        ("Workspace", "spec.resources.gpus", "maximum", json!(16)),
        (
            "Workspace",
            "spec.resources.gpuType",
            "maxLength",
            json!(63),
        ),
        ("Workspace", "spec.idleTimeoutSeconds", "minimum", json!(0)),
        (
            "Workspace",
            "spec.idleTimeoutSeconds",
            "maximum",
            json!(31_536_000),
        ),
        ("Workspace", "spec.dataSources", "maxItems", json!(32)),
        (
            "WorkspaceProfile",
            "spec.displayName",
            "maxLength",
            json!(128),
        ),
        (
            "WorkspaceProfile",
            "spec.maxResources.gpus",
            "maximum",
            json!(16),
        ),
        ("NodePool", "spec.caps.perUser.gpus", "minimum", json!(0)),
        (
            "NodePool",
            "spec.caps.perGroup.workspaces",
            "minimum",
            json!(0),
        ),
        ("DataSource", "spec.mountPath", "minLength", json!(2)),
        ("DataSource", "spec.mountPath", "maxLength", json!(1024)),
        ("DataSource", "spec.s3.bucket", "minLength", json!(3)),
        ("DataSource", "spec.s3.bucket", "maxLength", json!(63)),
        ("DataSource", "spec.irods.port", "minimum", json!(1)),
        ("DataSource", "spec.irods.port", "maximum", json!(65535)),
        (
            "DataSource",
            "spec.s3.credentialsByGroup",
            "maxItems",
            json!(64),
        ),
        (
            "DataSource",
            "spec.irods.credentialsByGroup",
            "maxItems",
            json!(64),
        ),
        ("DataSource", "spec.stac", "maxLength", json!(2048)),
        ("BatchJob", "spec.command", "minItems", json!(1)),
        ("BatchJob", "spec.command", "maxItems", json!(256)),
        ("BatchJob", "spec.deadlineSeconds", "minimum", json!(1)),
        (
            "BatchJob",
            "spec.deadlineSeconds",
            "maximum",
            json!(2_592_000),
        ),
        // Defaults.
        ("DataSource", "spec.readOnly", "default", json!(true)),
        ("DataSource", "spec.irods.port", "default", json!(1247)),
        ("DataSource", "spec.csi.mode", "default", json!("Auto")),
        (
            "NodePool",
            "spec.gpu.resourceName",
            "default",
            json!("nvidia.com/gpu"),
        ),
        (
            "NodePool",
            "spec.gpu.typeLabel",
            "default",
            json!("atelier.dev/gpu-type"),
        ),
        (
            "WorkspaceProfile",
            "spec.home",
            "default",
            json!({"size": "10Gi", "onDelete": "keep", "mountPath": "/home/jovyan"}),
        ),
        // Required fields.
        ("Workspace", "spec", "required", json!(["profile", "user"])),
        (
            "WorkspaceProfile",
            "spec",
            "required",
            json!(["displayName", "image"]),
        ),
        ("NodePool", "spec", "required", json!(["purpose"])),
        // mountPath is required by a CEL rule, only for mounted sources.
        ("DataSource", "spec", "required", Value::Null),
        (
            "DataSource",
            "spec.s3",
            "required",
            json!(["bucket", "endpoint"]),
        ),
        (
            "DataSource",
            "spec.irods",
            "required",
            json!(["host", "path", "zone"]),
        ),
        (
            "BatchJob",
            "spec",
            "required",
            json!(["command", "profile", "user"]),
        ),
    ];

    let mut wrong = Vec::new();
    for (kind, path, keyword, expected) in &checks {
        let crd = crd_json(kind);
        let actual = &node(root_schema(&crd), path)[*keyword];
        if !same(actual, expected) {
            wrong.push(format!(
                "{kind} {path}: {keyword} is {actual}, expected {expected}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Optional fields are nullable (kube's schema generation), so that `null` clears them.
    for (kind, path) in [
        ("Workspace", "spec.resources"),
        ("Workspace", "spec.kind"),
        ("DataSource", "spec.s3"),
        ("NodePool", "spec.gpu"),
    ] {
        let crd = crd_json(kind);
        assert_eq!(
            node(root_schema(&crd), path)["nullable"],
            true,
            "{kind} {path}"
        );
    }
}

/// One CEL rule: (kind, node path, rule, fieldPath, reason, message).
type RuleRow = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
);

fn rules_of(kind: &str) -> Vec<RuleRow> {
    let crd = crd_json(kind);
    let mut rows = Vec::new();
    walk(root_schema(&crd), "", &mut |path, schema| {
        for rule in schema
            .get("x-kubernetes-validations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let text = |k: &str| rule.get(k).and_then(Value::as_str).map(str::to_owned);
            rows.push((
                kind.to_owned(),
                path.to_owned(),
                text("rule").expect("a rule"),
                text("fieldPath"),
                text("reason"),
                text("message").expect("every rule has a message"),
            ));
        }
    });
    rows
}

#[test]
fn each_cel_rule_sits_where_it_belongs() {
    let row = |kind: &str,
               path: &str,
               rule: &str,
               field_path: Option<&str>,
               reason: Option<&str>,
               message: &str| {
        (
            kind.to_owned(),
            path.to_owned(),
            rule.to_owned(),
            field_path.map(str::to_owned),
            reason.map(str::to_owned),
            message.to_owned(),
        )
    };
    let gpu_type = |kind: &str, path: &str| {
        row(
            kind,
            path,
            GPU_TYPE_RULE,
            Some(".gpuType"),
            Some("FieldValueInvalid"),
            "gpuType requires gpus > 0",
        )
    };
    let env = |kind: &str| row(kind, "spec.env", ENV_RULE, None, None, ENV_MESSAGE);
    let credentials = |path: &str| {
        row(
            "DataSource",
            path,
            "!has(self.credentialsSecret) || !has(self.credentialsByGroup)",
            Some(".credentialsByGroup"),
            Some("FieldValueForbidden"),
            "credentialsSecret and credentialsByGroup are mutually exclusive",
        )
    };
    let workers = |kind: &str, path: &str| {
        row(
            kind,
            path,
            "self.min <= self.max",
            Some(".min"),
            Some("FieldValueInvalid"),
            "workers.min must not exceed workers.max",
        )
    };
    let unique_groups = |path: &str| {
        row(
            "DataSource",
            path,
            "self.all(x, self.exists_one(y, y.group == x.group))",
            None,
            None,
            "credentialsByGroup must not repeat a group",
        )
    };
    let mut expected: Vec<RuleRow> = vec![
        row(
            "Workspace",
            "spec",
            "self.user == oldSelf.user && self.serverName == oldSelf.serverName",
            None,
            Some("FieldValueForbidden"),
            "user and serverName are immutable",
        ),
        row(
            "Workspace",
            "spec.dataSources",
            "self.all(x, self.exists_one(y, x == y))",
            None,
            None,
            "dataSources must not repeat a name",
        ),
        env("Workspace"),
        gpu_type("Workspace", "spec.resources"),
        env("WorkspaceProfile"),
        gpu_type("WorkspaceProfile", "spec.defaultResources"),
        gpu_type("WorkspaceProfile", "spec.maxResources"),
        row(
            "NodePool",
            "spec",
            "self.purpose != 'gpu' || has(self.gpu)",
            Some(".gpu"),
            Some("FieldValueRequired"),
            "a gpu pool must describe its GPUs in spec.gpu",
        ),
        row(
            "DataSource",
            "spec",
            "[has(self.s3), has(self.irods), has(self.nfs), has(self.pvc)].filter(x, x).size() <= 1",
            None,
            Some("FieldValueInvalid"),
            "at most one of s3, irods, nfs or pvc may be set",
        ),
        row(
            "DataSource",
            "spec",
            "has(self.s3) || has(self.irods) || has(self.nfs) || has(self.pvc) || has(self.stac) || has(self.ogc)",
            None,
            Some("FieldValueRequired"),
            "one of s3, irods, nfs, pvc, stac or ogc must be set",
        ),
        row(
            "DataSource",
            "spec.ogc",
            "has(self.wms) || has(self.wmts) || has(self.wcs)",
            None,
            Some("FieldValueRequired"),
            "ogc needs at least one of wms, wmts or wcs",
        ),
        row(
            "DataSource",
            "spec",
            "has(self.mountPath) || !(has(self.nfs) || has(self.pvc) || has(self.csi))",
            Some(".mountPath"),
            Some("FieldValueRequired"),
            "mountPath is required with nfs, pvc or csi",
        ),
        credentials("spec.s3"),
        credentials("spec.irods"),
        unique_groups("spec.s3.credentialsByGroup"),
        unique_groups("spec.irods.credentialsByGroup"),
        row(
            "DataSource",
            "spec",
            "!has(self.csi) || has(self.s3) || has(self.irods)",
            Some(".csi"),
            Some("FieldValueForbidden"),
            "csi applies only to s3 and irods sources",
        ),
        row(
            "DataSource",
            "spec.mountPath",
            "!self.contains('/../') && !self.endsWith('/..')",
            None,
            None,
            "mountPath may not contain '..'",
        ),
        row(
            "BatchJob",
            "spec.env",
            "self.all(k, k.matches('^[A-Za-z_][A-Za-z0-9_]*$'))",
            None,
            None,
            "env names must be POSIX names",
        ),
        gpu_type("BatchJob", "spec.resources"),
        row(
            "BatchJob",
            "spec",
            "size(self.command) == 0 || size(self.command[0]) > 0",
            Some(".command"),
            Some("FieldValueInvalid"),
            "the command's program must not be empty",
        ),
        row(
            "BatchJob",
            "spec",
            "self.user == oldSelf.user && self.profile == oldSelf.profile && self.command == oldSelf.command",
            None,
            Some("FieldValueForbidden"),
            "user, profile and command are immutable",
        ),
        row(
            "BatchJob",
            "spec.dataSources",
            "self.all(x, self.exists_one(y, x == y))",
            None,
            None,
            "dataSources must not repeat a name",
        ),
        row(
            "NodePool",
            "spec",
            "!has(self.slurm) || self.purpose != 'interactive'",
            Some(".slurm"),
            Some("FieldValueForbidden"),
            "only a batch or gpu pool may be backed by Slurm",
        ),
        row(
            "NodePool",
            "spec",
            "!has(self.slurm) || !has(self.slurm.userMapping) || !(has(self.slurm.userMapping.fixed) && has(self.slurm.userMapping.template))",
            Some(".slurm"),
            Some("FieldValueForbidden"),
            "slurm.userMapping takes fixed or template, not both",
        ),
        row(
            "NodePool",
            "spec",
            "!(has(self.slurm) && has(self.kueue))",
            Some(".kueue"),
            Some("FieldValueForbidden"),
            "a pool backed by Slurm has no Kueue queue",
        ),
        // Dask: the worker range, and the profile's defaults within its maximum.
        gpu_type("Workspace", "spec.dask.workerResources"),
        workers("Workspace", "spec.dask.workers"),
        gpu_type("WorkspaceProfile", "spec.dask.defaults.workerResources"),
        gpu_type("WorkspaceProfile", "spec.dask.maxWorkerResources"),
        workers("WorkspaceProfile", "spec.dask.defaults.workers"),
        row(
            "WorkspaceProfile",
            "spec.dask",
            "!has(self.defaults) || !has(self.defaults.workers) || self.defaults.workers.max <= self.maxWorkers",
            Some(".maxWorkers"),
            Some("FieldValueInvalid"),
            "defaults.workers.max must not exceed maxWorkers",
        ),
    ];
    let mut actual: Vec<RuleRow> = KINDS.iter().flat_map(|(kind, _)| rules_of(kind)).collect();
    expected.sort();
    actual.sort();
    let missing: Vec<_> = expected.iter().filter(|r| !actual.contains(r)).collect();
    let extra: Vec<_> = actual.iter().filter(|r| !expected.contains(r)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "CEL rules differ from what this test expects.\nmissing: {missing:#?}\nunexpected: {extra:#?}"
    );
}

fn compilation_errors(compiled: &CompiledSchema, path: &str, out: &mut Vec<String>) {
    out.extend(
        compiled
            .compilation_errors()
            .iter()
            .map(|e| format!("{path}: {e}")),
    );
    for (name, prop) in &compiled.properties {
        compilation_errors(prop, &format!("{path}.{name}"), out);
    }
    if let Some(items) = &compiled.items {
        compilation_errors(items, &format!("{path}[]"), out);
    }
    if let Some(values) = &compiled.additional_properties {
        compilation_errors(values, &format!("{path}{{}}"), out);
    }
}

#[test]
fn every_cel_rule_compiles_and_is_well_formed() {
    let reasons = [
        "FieldValueInvalid",
        "FieldValueForbidden",
        "FieldValueRequired",
        "FieldValueDuplicate",
    ];
    let mut problems = Vec::new();
    for (kind, _) in KINDS {
        let crd = crd_json(kind);
        let schema = root_schema(&crd);
        let compiled = compile_schema(schema);
        compilation_errors(&compiled, kind, &mut problems);

        for (_, path, rule, field_path, reason, message) in rules_of(kind) {
            let at = format!("{kind} {path}: {rule}");
            let node = node(schema, &path);
            // The API server refuses a CRD whose fieldPath names no declared field.
            if let Some(fp) = &field_path {
                let target = fp.trim_start_matches('.');
                if node["properties"].get(target).is_none() {
                    problems.push(format!("{at}: fieldPath {fp} names no property"));
                }
            }
            if let Some(reason) = &reason
                && !reasons.contains(&reason.as_str())
            {
                problems.push(format!("{at}: unknown reason {reason}"));
            }
            if message.is_empty() || message.contains('\n') {
                problems.push(format!("{at}: the message must be one non-empty line"));
            }
            // Transition rules need a node that correlates old and new: not inside a list or map.
            if rule.contains("oldSelf") && (path.contains('[') || path.contains('{')) {
                problems.push(format!("{at}: a transition rule inside a list or map"));
            }
            let mut compiled_node = &compiled;
            for segment in path.split('.') {
                let name = segment.trim_end_matches("[]");
                compiled_node = &compiled_node.properties[name];
                if segment.ends_with("[]") {
                    compiled_node = compiled_node.items.as_deref().expect("items");
                }
            }
            // kube-cel's cost heuristic: unbounded comprehensions blow the API server's budget.
            // (Its scope check is not used: it takes comprehension variables for free ones.)
            for warning in estimate_rule_cost(&rule, compiled_node) {
                problems.push(format!("{at}: {}", warning.message));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn schemas_are_structural_documented_and_self_consistent() {
    let mut problems = Vec::new();
    for (kind, _) in KINDS {
        let crd = crd_json(kind);
        walk(root_schema(&crd), "", &mut |path, schema| {
            let at = format!("{kind} {path}");
            // A structural schema gives every node a type.
            let typed = schema.get("type").is_some()
                || schema.get("x-kubernetes-int-or-string") == Some(&json!(true))
                || schema.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
            if !typed {
                problems.push(format!("{at}: no type"));
            }
            for junctor in ["oneOf", "anyOf", "allOf", "not", "$ref"] {
                if schema.get(junctor).is_some() {
                    problems.push(format!("{at}: {junctor} (kept out of these schemas)"));
                }
            }
            // Properties are documented: `kubectl explain` shows these.
            let is_property = !path.is_empty() && !path.ends_with(']') && !path.ends_with('}');
            let documented = schema
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| !d.trim().is_empty());
            if is_property && !documented {
                problems.push(format!("{at}: no description"));
            }
            // Patterns compile (RE2 and the regex crate agree on the syntax used here).
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
                && let Err(e) = pattern_matches(pattern, "")
            {
                problems.push(format!("{at}: pattern does not compile: {e}"));
            }
            // The API server refuses a CRD whose defaults do not validate against their schema.
            if let Some(default) = schema.get("default") {
                let mut errors = Vec::new();
                validate_value(schema, default, path, &mut errors);
                for e in errors {
                    problems.push(format!("{at}: default {default} is invalid: {e}"));
                }
            }
        });
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The patterns mean what they say.
    let cases: &[(&str, &str, bool)] = &[
        (USER_PATTERN, "alice", true),
        (USER_PATTERN, "a.b_c-d", true),
        (USER_PATTERN, "Alice", false),
        (USER_PATTERN, "alice-", false),
        (patterns::DNS_LABEL_OR_EMPTY, "", true),
        (patterns::DNS_LABEL_OR_EMPTY, "training", true),
        (patterns::DNS_LABEL_OR_EMPTY, "gpu/training", false),
        (patterns::QUANTITY, "500m", true),
        (patterns::QUANTITY, "8Gi", true),
        (patterns::QUANTITY, "1.5e3", true),
        (patterns::QUANTITY, "8 GB", false),
        (patterns::QUANTITY, "8GB", false),
        (patterns::ABSOLUTE_PATH, "/data/sentinel-2", true),
        (patterns::ABSOLUTE_PATH, "data", false),
        (patterns::ABSOLUTE_PATH, "//data", false),
        (patterns::GROUP_NAME, "vo.example.org:role=member", true),
        (patterns::GROUP_NAME, "ocean-physics", true),
        (
            patterns::GROUP_NAME,
            "urn:geant:example.org:group:vo.example.org#aai.example.org",
            false,
        ),
        (GPU_TYPE_PATTERN, "a100", true),
        (GPU_TYPE_PATTERN, "A100", false),
    ];
    for (pattern, s, expected) in cases {
        assert_eq!(
            pattern_matches(pattern, s).unwrap(),
            *expected,
            "{s:?} against {pattern}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. The examples.

/// One YAML document of a file.
struct Document {
    /// `file#n`, for messages.
    at: String,
    /// Its text, for the typed parse.
    text: String,
    /// Its value, as kubectl sends it (YAML → JSON).
    value: Value,
}

impl Document {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }
}

/// Splits a multi-document YAML file on its `---` lines, dropping documents that hold only
/// comments; cross-checked against serde_saphyr's own multi-document reader.
fn documents(path: &Path) -> Vec<Document> {
    let text = read(path);
    let name = file_name(path);
    let mut chunks = vec![String::new()];
    for line in text.lines() {
        let marker = line.strip_prefix("---");
        if marker.is_some_and(|rest| rest.trim().is_empty() || rest.trim_start().starts_with('#')) {
            chunks.push(String::new());
        } else {
            let chunk = chunks.last_mut().expect("a chunk");
            chunk.push_str(line);
            chunk.push('\n');
        }
    }
    chunks.retain(|chunk| {
        chunk.lines().any(|l| {
            let l = l.trim();
            !l.is_empty() && !l.starts_with('#')
        })
    });

    let values: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("{name} is not valid YAML: {e}"));
    let values: Vec<Value> = values.into_iter().filter(|v| !v.is_null()).collect();
    assert_eq!(
        chunks.len(),
        values.len(),
        "{name}: {} documents between `---` lines, but serde_saphyr reads {}",
        chunks.len(),
        values.len()
    );
    chunks
        .into_iter()
        .zip(values)
        .enumerate()
        .map(|(i, (text, value))| {
            let single: Value =
                serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{name}#{}: {e}", i + 1));
            assert_eq!(single, value, "{name}#{}: split differently", i + 1);
            Document {
                at: format!("{name}#{} ({})", i + 1, value["metadata"]["name"]),
                text,
                value,
            }
        })
        .collect()
}

fn typed<T: DeserializeOwned + Serialize>(text: &str) -> Result<Value, String> {
    let object: T = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    Ok(serde_json::to_value(&object).expect("a resource serializes"))
}

/// Parses a document into the Rust type of its kind, and serializes it back.
fn parse_typed(doc: &Document) -> Result<Value, String> {
    match doc.kind() {
        "Workspace" => typed::<Workspace>(&doc.text),
        "WorkspaceProfile" => typed::<WorkspaceProfile>(&doc.text),
        "NodePool" => typed::<NodePool>(&doc.text),
        "DataSource" => typed::<DataSource>(&doc.text),
        "BatchJob" => typed::<BatchJob>(&doc.text),
        other => Err(format!("no Rust type for kind {other:?}")),
    }
}

/// Fields of `input` the typed round trip lost or changed (serde ignores unknown fields). Empty
/// values may vanish: the types skip serializing them.
fn lost_fields(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
    let empty = |v: &Value| match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    };
    match (input, output) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match b.get(key) {
                    Some(other) => lost_fields(value, other, &child, out),
                    None if empty(value) => {}
                    None => out.push(format!("{child} was dropped")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                lost_fields(x, y, &format!("{path}[{i}]"), out);
            }
        }
        (a, b) if same(a, b) => {}
        (a, b) => out.push(format!("{path}: {a} became {b}")),
    }
}

fn examples() -> Vec<Document> {
    yaml_files(&crds_dir().join("examples"))
        .iter()
        .flat_map(|path| documents(path))
        .collect()
}

#[test]
fn every_example_parses_into_the_rust_types_and_is_admitted() {
    let files: Vec<String> = yaml_files(&crds_dir().join("examples"))
        .iter()
        .map(|p| file_name(p))
        .collect();
    for expected in [
        "batchjobs.yaml",
        "datasources.yaml",
        "nodepools.yaml",
        "profiles.yaml",
        "workspaces.yaml",
    ] {
        assert!(
            files.iter().any(|f| f == expected),
            "crds/examples/{expected} is missing"
        );
    }

    let validators = validators();
    let docs = examples();
    let mut problems = Vec::new();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for doc in &docs {
        *kinds.entry(doc.kind().to_owned()).or_default() += 1;
        let Some(validator) = validators.get(doc.kind()) else {
            problems.push(format!("{}: unknown kind {:?}", doc.at, doc.kind()));
            continue;
        };
        match parse_typed(doc) {
            Ok(round_trip) => {
                let mut lost = Vec::new();
                lost_fields(&doc.value, &round_trip, "", &mut lost);
                problems.extend(lost.into_iter().map(|l| format!("{}: {l}", doc.at)));
            }
            Err(e) => problems.push(format!("{}: does not parse: {e}", doc.at)),
        }
        if let Err(refusal) = validator.create(&doc.value) {
            problems.push(format!("{}: refused: {refusal}", doc.at));
        }
        let namespace = doc.value["metadata"].get("namespace");
        if !validator.namespaced() && namespace.is_some() {
            problems.push(format!(
                "{}: a cluster-scoped resource with a namespace",
                doc.at
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let expected: BTreeMap<String, usize> = [
        ("BatchJob", 2),
        ("DataSource", 6),
        ("NodePool", 3),
        ("Workspace", 2),
        ("WorkspaceProfile", 4),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_owned(), n))
    .collect();
    assert_eq!(kinds, expected);
}

fn typed_examples<T: DeserializeOwned>(kind: &str) -> Vec<T> {
    examples()
        .iter()
        .filter(|doc| doc.kind() == kind)
        .map(|doc| serde_saphyr::from_str(&doc.text).expect("parses"))
        .collect()
}

fn name_of<T: kube::Resource>(r: &T) -> String {
    r.meta().name.clone().unwrap_or_default()
}

/// The groups the hub wrote on a workspace.
fn groups_of(ws: &Workspace) -> BTreeSet<String> {
    ws.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("atelier.dev/groups"))
        .map(|g| g.split(',').map(|s| s.trim().to_owned()).collect())
        .unwrap_or_default()
}

#[test]
fn the_examples_fit_together() {
    let pools: Vec<NodePool> = typed_examples("NodePool");
    let profiles: Vec<WorkspaceProfile> = typed_examples("WorkspaceProfile");
    let sources: Vec<DataSource> = typed_examples("DataSource");
    let workspaces: Vec<Workspace> = typed_examples("Workspace");
    let jobs: Vec<BatchJob> = typed_examples("BatchJob");

    let pool = |name: &str| pools.iter().find(|p| name_of(*p) == name);
    let profile = |name: &str| profiles.iter().find(|p| name_of(*p) == name);
    let source = |name: &str| sources.iter().find(|s| name_of(*s) == name);

    // One pool of each purpose; the GPU pool offers a100 and v100 and caps users and groups.
    for purpose in [
        PoolPurpose::Interactive,
        PoolPurpose::Gpu,
        PoolPurpose::Batch,
    ] {
        assert_eq!(
            pools.iter().filter(|p| p.spec.purpose == purpose).count(),
            1,
            "{purpose:?}"
        );
    }
    let gpu_pool = pools
        .iter()
        .find(|p| p.spec.purpose == PoolPurpose::Gpu)
        .unwrap();
    let offer = gpu_pool.spec.gpu.as_ref().expect("the GPU pool's offer");
    assert_eq!(offer.types, ["a100", "v100"]);
    assert!(
        gpu_pool
            .spec
            .tolerations
            .iter()
            .any(|t| t.key.as_deref() == Some("nvidia.com/gpu"))
    );
    let caps = gpu_pool.spec.caps.as_ref().expect("GPU caps");
    assert!(caps.per_user.is_some() && caps.per_group.is_some());
    let batch = pools
        .iter()
        .find(|p| p.spec.purpose == PoolPurpose::Batch)
        .unwrap();
    assert!(batch.spec.priority_class_name.is_some());

    for p in &profiles {
        if let Some(pool_name) = &p.spec.default_node_pool {
            assert!(
                pool(pool_name).is_some(),
                "{}: pool {pool_name}",
                name_of(p)
            );
        }
    }

    // A desktop's data sources exist, and the qgis profile shows an OGC-only source.
    for p in &profiles {
        for ds in p.spec.desktop.iter().flat_map(|d| &d.data_sources) {
            assert!(source(ds).is_some(), "{}: desktop source {ds}", name_of(p));
        }
    }
    let desktop = profile("qgis-desktop").and_then(|p| p.spec.desktop.as_ref());
    assert!(
        desktop.is_some_and(|d| d
            .data_sources
            .iter()
            .any(|ds| source(ds).is_some_and(|s| s.spec.ogc.is_some()))),
        "the qgis profile shows an OGC source"
    );

    for ws in &workspaces {
        let name = name_of(ws);
        let groups = groups_of(ws);
        let prof = profile(&ws.spec.profile).unwrap_or_else(|| panic!("{name}: no profile"));
        let allowed =
            |allowed: &[String]| allowed.is_empty() || allowed.iter().any(|g| groups.contains(g));
        assert!(
            allowed(&prof.spec.allowed_groups),
            "{name}: profile forbidden"
        );
        for ds in &ws.spec.data_sources {
            let ds_obj = source(ds).unwrap_or_else(|| panic!("{name}: no data source {ds}"));
            assert!(
                allowed(&ds_obj.spec.allowed_groups),
                "{name}: {ds} forbidden"
            );
        }
        if let Some(pool_name) = &ws.spec.node_pool {
            let p = pool(pool_name).unwrap_or_else(|| panic!("{name}: no pool {pool_name}"));
            assert!(allowed(&p.spec.allowed_groups), "{name}: pool forbidden");
        }
        let gpu_type = ws.spec.resources.as_ref().and_then(|r| r.gpu_type.as_ref());
        if let Some(gpu_type) = gpu_type {
            assert!(offer.types.contains(gpu_type), "{name}: {gpu_type}");
            assert!(
                allowed(&gpu_pool.spec.allowed_groups),
                "{name}: GPU pool forbidden"
            );
        }
    }
    for job in &jobs {
        assert!(profile(&job.spec.profile).is_some());
        for ds in &job.spec.data_sources {
            assert!(source(ds).is_some(), "{ds}");
        }
        if let Some(pool_name) = &job.spec.node_pool {
            assert_eq!(
                pool(pool_name).map(|p| p.spec.purpose),
                Some(PoolPurpose::Batch)
            );
        }
        // Each job passes the operator's rules as written (groups from the annotation the hub
        // writes), lands on the batch pool and is queued by its Kueue LocalQueue.
        let groups = job
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("atelier.dev/groups"))
            .map(|g| g.split(',').map(|s| s.trim().to_owned()).collect())
            .unwrap_or_default();
        let deref = atelier::policy::workspace::Dereferenced {
            profile: profile(&job.spec.profile).cloned(),
            pools: pools.clone(),
            data_sources: job
                .spec
                .data_sources
                .iter()
                .filter_map(|ds| source(ds).cloned())
                .collect(),
            groups,
            ..Default::default()
        };
        let v = atelier::policy::batch::validate_job(
            job,
            &deref,
            &atelier::config::OperatorConfig::default(),
        )
        .unwrap_or_else(|r| panic!("{}: refused: {r:?}", name_of(job)));
        assert_eq!(v.pool.name, "batch", "{}", name_of(job));
        assert_eq!(
            v.target,
            atelier::policy::batch::BatchTarget::Kubernetes {
                local_queue: Some("batch".into())
            }
        );
    }
    assert_eq!(jobs.len(), 2);

    // Alice's default server and Bob's named GPU server, as the README shows them.
    let alice = workspaces.iter().find(|w| w.spec.user == "alice").unwrap();
    assert_eq!(alice.spec.server_name, "");
    assert!(!alice.spec.data_sources.is_empty());
    let bob = workspaces.iter().find(|w| w.spec.user == "bob").unwrap();
    assert!(!bob.spec.server_name.is_empty());
    let res = bob.spec.resources.as_ref().unwrap();
    assert_eq!(res.gpus, Some(1));
    assert_eq!(res.gpu_type.as_deref(), Some("a100"));
    assert!(!groups_of(bob).is_empty());

    // Each data source backend is shown, and CSI mounts for s3 and irods.
    let s3 = sources.iter().find(|s| s.spec.s3.is_some()).unwrap();
    assert!(s3.spec.csi.is_some());
    assert!(s3.spec.s3.as_ref().unwrap().credentials_secret.is_some());
    // Credentials per virtual organisation, for groups that may use the source.
    let by_group = sources
        .iter()
        .find(|s| {
            s.spec
                .s3
                .as_ref()
                .is_some_and(|s3| !s3.credentials_by_group.is_empty())
        })
        .expect("an s3 source with credentialsByGroup");
    for entry in &by_group.spec.s3.as_ref().unwrap().credentials_by_group {
        assert!(by_group.spec.allowed_groups.contains(&entry.group));
    }
    // A STAC-only source, not mounted.
    let stac = sources
        .iter()
        .find(|s| s.spec.stac.is_some() && s.spec.s3.is_none())
        .expect("a STAC source");
    assert!(stac.spec.mount_path.is_none());
    let irods = sources.iter().find(|s| s.spec.irods.is_some()).unwrap();
    assert_eq!(
        irods.spec.csi.as_ref().map(|c| c.driver.as_str()),
        Some("irods.csi.cyverse.org")
    );
    assert!(
        irods
            .spec
            .irods
            .as_ref()
            .unwrap()
            .credentials_secret
            .is_some()
    );
}

#[test]
fn changing_the_owner_of_a_workspace_is_refused() {
    let validators = validators();
    let validator = &validators["Workspace"];
    let doc = examples()
        .into_iter()
        .find(|d| d.kind() == "Workspace" && d.value["spec"]["user"] == "alice")
        .expect("alice's workspace");
    let old = &doc.value;
    let admitted = |result: Result<Value, Refusal>| {
        if let Err(refusal) = result {
            panic!("refused: {refusal}");
        }
    };
    admitted(validator.update(old, old));

    let mut stolen = old.clone();
    stolen["spec"]["user"] = json!("mallory");
    admitted(validator.create(&stolen));
    let refusal = validator.update(&stolen, old).unwrap_err();
    assert_eq!(
        refusal.to_string(),
        format!(
            "Workspace.atelier.dev \"{}\" is invalid: spec: Forbidden: user and serverName are immutable",
            doc.name()
        )
    );

    let mut renamed = old.clone();
    renamed["spec"]["serverName"] = json!("other");
    assert!(validator.update(&renamed, old).is_err());
    // Stopping is an allowed update.
    let mut stopped = old.clone();
    stopped["spec"]["desiredState"] = json!("stopped");
    admitted(validator.update(&stopped, old));
}

// ---------------------------------------------------------------------------------------------
// 4. The invalid examples.

/// Files that must exist in `crds/examples/invalid/`, one per rule they break.
const REQUIRED_INVALID: &[&str] = &[
    "datasource-s3-and-nfs.yaml",
    "datasource-no-source.yaml",
    "datasource-mountpath-dotdot.yaml",
    "datasource-csi-on-nfs.yaml",
    "datasource-nfs-without-mountpath.yaml",
    "datasource-both-credentials.yaml",
    "datasource-duplicate-group.yaml",
    "datasource-csi-mode-typo.yaml",
    "datasource-stac-not-url.yaml",
    "datasource-ogc-empty.yaml",
    "datasource-ogc-not-url.yaml",
    "profile-desktop-bad-name.yaml",
    "workspace-gputype-without-gpus.yaml",
    "workspace-uppercase-user.yaml",
    "workspace-bad-memory.yaml",
    "workspace-unknown-kind.yaml",
    "workspace-too-many-gpus.yaml",
    "workspace-jupyterhub-env.yaml",
    "workspace-duplicate-datasources.yaml",
    "workspace-server-name-slash.yaml",
    "workspace-unknown-field.yaml",
    "nodepool-gpu-without-gpu.yaml",
    "workspace-dask-min-over-max.yaml",
    "profile-dask-defaults-over-max.yaml",
];

struct InvalidExample {
    file: String,
    expect: Vec<String>,
    doc: Document,
}

fn invalid_examples() -> Vec<InvalidExample> {
    yaml_files(&crds_dir().join("examples").join("invalid"))
        .iter()
        .map(|path| {
            let file = file_name(path);
            let expect: Vec<String> = read(path)
                .lines()
                .take_while(|l| l.starts_with('#'))
                .filter_map(|l| l.strip_prefix("# expect:"))
                .map(|e| e.trim().to_owned())
                .collect();
            assert!(
                !expect.is_empty(),
                "{file}: no `# expect: <error>` comment at the top"
            );
            let mut docs = documents(path);
            assert_eq!(docs.len(), 1, "{file}: one resource per file");
            InvalidExample {
                file,
                expect,
                doc: docs.remove(0),
            }
        })
        .collect()
}

fn refusal_of(validators: &BTreeMap<String, CrdValidator>, doc: &Document) -> Option<Refusal> {
    let validator = validators
        .get(doc.kind())
        .unwrap_or_else(|| panic!("{}: unknown kind {:?}", doc.at, doc.kind()));
    validator.create(&doc.value).err()
}

/// The errors that are the refusal's reasons (not the note that the rules were not checked).
fn reasons(refusal: &Refusal) -> Vec<&FieldError> {
    refusal
        .errors
        .iter()
        .filter(|e| e.detail != RULES_NOT_CHECKED)
        .collect()
}

#[test]
fn every_invalid_example_is_refused_with_its_expected_error() {
    let validators = validators();
    let examples = invalid_examples();
    let files: BTreeSet<&str> = examples.iter().map(|e| e.file.as_str()).collect();
    for required in REQUIRED_INVALID {
        assert!(
            files.contains(required),
            "crds/examples/invalid/{required} is missing"
        );
    }

    let mut problems = Vec::new();
    for example in &examples {
        let Some(refusal) = refusal_of(&validators, &example.doc) else {
            problems.push(format!("{}: admitted", example.file));
            continue;
        };
        let message = refusal.to_string();
        for expect in &example.expect {
            if !message.contains(expect.as_str()) {
                problems.push(format!(
                    "{}: refused, but not with {expect:?}:\n    {message}",
                    example.file
                ));
            }
        }
        // One rule per file, so that the file shows that rule and no other.
        if reasons(&refusal).len() != 1 {
            problems.push(format!(
                "{}: refused for more than one reason:\n    {message}",
                example.file
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Removes from `crd` what produced `error`: the CEL rule with its message, or the schema keyword.
/// `None` for errors no single keyword produces (unknown fields, wrong types).
fn remove_cause(crd: &mut Value, error: &FieldError) -> Option<String> {
    let schema = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let keyword = match error.kind {
        ErrorType::NotSupported => "enum",
        ErrorType::TooLong => "maxLength",
        ErrorType::TooMany => "maxItems",
        ErrorType::Invalid if error.detail.contains("in body should match") => "pattern",
        ErrorType::Invalid if error.detail.contains("less than or equal") => "maximum",
        ErrorType::Invalid if error.detail.contains("greater than or equal") => "minimum",
        ErrorType::Invalid if error.detail.contains("chars long") => "minLength",
        ErrorType::Invalid if error.detail.contains("items") => "minItems",
        ErrorType::Invalid | ErrorType::Forbidden | ErrorType::Required => {
            // A CEL rule: drop every rule with this message.
            let mut removed = 0;
            remove_rules(schema, &error.detail, &mut removed);
            return (removed > 0).then(|| format!("the CEL rule {:?}", error.detail));
        }
        _ => return None,
    };
    let node = node_for_instance_mut(schema, &error.field);
    let node = node.as_object_mut()?;
    node.remove(keyword)
        .map(|_| format!("{keyword} of {}", error.field))
}

fn remove_rules(schema: &mut Value, message: &str, removed: &mut usize) {
    if let Some(rules) = schema
        .get_mut("x-kubernetes-validations")
        .and_then(Value::as_array_mut)
    {
        let before = rules.len();
        rules.retain(|r| r["message"] != message);
        *removed += before - rules.len();
    }
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        for prop in props.values_mut() {
            remove_rules(prop, message, removed);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(sub) = schema.get_mut(key).filter(|s| s.is_object()) {
            remove_rules(sub, message, removed);
        }
    }
}

/// Mutation check: each invalid example is refused by exactly one rule; without that rule, the
/// same document is admitted. So every rule an invalid example names is load-bearing.
#[test]
fn without_its_rule_each_invalid_example_would_be_admitted() {
    let validators = validators();
    let mut not_mutable = Vec::new();
    let mut problems = Vec::new();
    for example in invalid_examples() {
        let Some(refusal) = refusal_of(&validators, &example.doc) else {
            continue; // reported by the test above
        };
        if refusal.status == Status::BadRequest {
            not_mutable.push(example.file);
            continue;
        }
        let [reason] = reasons(&refusal)[..] else {
            continue; // reported by the test above
        };
        let mut crd = crd_json(example.doc.kind());
        let Some(removed) = remove_cause(&mut crd, reason) else {
            not_mutable.push(example.file);
            continue;
        };
        let crd: CustomResourceDefinition =
            serde_json::from_value(crd).expect("the mutated CRD deserializes");
        if let Err(still) = CrdValidator::new(&crd).create(&example.doc.value) {
            problems.push(format!(
                "{}: still refused without {removed}: {still}",
                example.file
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Only the unknown-field and wrong-type examples have no single keyword to remove.
    not_mutable.sort();
    assert_eq!(
        not_mutable,
        [
            "workspace-unknown-field.yaml",
            "workspace-unquoted-cpu.yaml"
        ]
    );
}

#[test]
fn short_names_collide_with_no_built_in_nor_well_known_crd() {
    let mut ours = BTreeSet::new();
    for (kind, short) in KINDS {
        let crd = crd_json(kind);
        let names = &crd["spec"]["names"];
        let shorts: Vec<String> = names["shortNames"]
            .as_array()
            .expect("short names")
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
        assert_eq!(shorts, [short], "{kind}");
        for s in shorts {
            let s = s.as_str();
            if let Some((_, owner)) = TAKEN_SHORT_NAMES.iter().find(|(taken, _)| *taken == s) {
                panic!("{kind}: short name {s:?} is {owner}'s");
            }
            assert!(
                ours.insert(s.to_owned()),
                "{kind}: short name {s:?} used twice"
            );
            for other in KINDS.map(|(k, _)| k) {
                let crd = crd_json(other);
                assert_ne!(crd["spec"]["names"]["plural"], s, "{kind} vs {other}");
                assert_ne!(crd["spec"]["names"]["singular"], s, "{kind} vs {other}");
            }
        }
    }
    assert!(ours.contains("dsrc") && !ours.contains("ds"));
}
