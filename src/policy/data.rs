//! What a workspace gets of its data sources, as data: which credentials a user gets, the
//! environment, the Intake catalogue, and the iRODS client's files. Pure: both backends turn it
//! into their own objects (the operator into `env` entries with `secretKeyRef`, the local
//! backend into values read from the catalogue's Secrets, and files).
//!
//! # Credentials
//!
//! An s3 or irods source names either one `credentialsSecret` for everybody, or
//! `credentialsByGroup`: the first entry whose group the user is in wins, and a user in none of
//! them gets no credentials ([`credentials_for`]). Secrets hold the keys [`AWS_ACCESS_KEY_ID`]
//! and [`AWS_SECRET_ACCESS_KEY`] (s3) or [`IRODS_USER_NAME`] and [`IRODS_PASSWORD`] (irods).
//!
//! # The environment ([`data_env`])
//!
//! Sorted by name. Each source `<name>` gets its own `ATELIER_DATA_<NAME>_*` variables
//! (`<NAME>`: [`names::data_env_prefix`]), exactly as the operator's builder has always set
//! them:
//! - s3: `_ENDPOINT_URL`, `_BUCKET`, `_PREFIX`, `_URL` (`s3://bucket/prefix`), `_REGION` (when
//!   set); with credentials `_AWS_ACCESS_KEY_ID` and `_AWS_SECRET_ACCESS_KEY` (from the Secret),
//!   without `_ANONYMOUS=true`;
//! - irods: `_HOST`, `_PORT`, `_ZONE`, `_PATH`; with credentials `_IRODS_USER_NAME` and
//!   `_IRODS_PASSWORD`.
//!
//! The first s3 source (in name order) also sets what the clients read by themselves:
//! boto3/s3fs/fsspec `AWS_ENDPOINT_URL`, `FSSPEC_S3_ENDPOINT_URL`, `AWS_REGION` and
//! `AWS_DEFAULT_REGION` (when set), the keys as `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, or
//! `FSSPEC_S3_ANON=true` without credentials (so that a read fails with an access error, not a
//! missing-credentials one); GDAL's `/vsis3/` `AWS_S3_ENDPOINT` (`host[:port]`, no scheme),
//! `AWS_HTTPS` (`YES`/`NO`), `AWS_VIRTUAL_HOSTING` (`TRUE`/`FALSE`) and, without credentials,
//! `AWS_NO_SIGN_REQUEST=YES` (OSGeo/gdal `port/cpl_aws.cpp`). Every s3 source is also an rclone
//! remote named [`entry_name`] through `RCLONE_CONFIG_<ENTRY>_*` (`TYPE=s3`, `PROVIDER=Other`,
//! `ENDPOINT`, `REGION`, `ACCESS_KEY_ID`, `SECRET_ACCESS_KEY`, `FORCE_PATH_STYLE`; rclone/rclone
//! `docs/content/docs.md`, "Config file": remotes from the environment are named in upper case
//! and used in lower case).
//!
//! The first irods source sets the iRODS client's `IRODS_HOST`, `IRODS_PORT`,
//! `IRODS_ZONE_NAME`, `IRODS_USER_NAME`/`IRODS_PASSWORD` (with credentials), and
//! `IRODS_ENVIRONMENT_FILE` (always) and `IRODS_AUTHENTICATION_FILE` (with credentials) at the
//! paths the caller chose ([`DataPaths`]), which it fills with [`irods_environment`] and
//! [`irods_auth_file`]. A source with `stac` sets `ATELIER_STAC_<NAME>`; any source sets
//! `ATELIER_DATA_CATALOG`, the path of the catalogue [`intake_catalog`] writes.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use crate::api::v1alpha1::{DataSourceSpec, GroupCredentials, IrodsSource, S3Source, SecretRef};
use crate::policy::names;

/// Key of the access key id in an s3 credentials Secret.
pub const AWS_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
/// Key of the secret access key in an s3 credentials Secret.
pub const AWS_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
/// Key of the user name in an irods credentials Secret.
pub const IRODS_USER_NAME: &str = "IRODS_USER_NAME";
/// Key of the password in an irods credentials Secret.
pub const IRODS_PASSWORD: &str = "IRODS_PASSWORD";
/// The iRODS user of a workspace without irods credentials (iRODS's anonymous account).
pub const IRODS_ANONYMOUS_USER: &str = "anonymous";
/// The variable that holds the path of the Intake catalogue.
pub const CATALOG_ENV: &str = "ATELIER_DATA_CATALOG";
/// Where a pod gets its Intake catalogue (the operator mounts a ConfigMap there): no data
/// source may be mounted at this path.
pub const POD_CATALOG_DIR: &str = "/etc/atelier/data";
/// Where a pod gets its iRODS client's files (an emptyDir): no data source may be mounted at
/// this path.
pub const POD_IRODS_DIR: &str = "/etc/atelier/irods";

/// The value of an environment variable: inline, or a key of a Secret (never inlined on
/// Kubernetes; the local backend reads it from the catalogue's Secrets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvValue {
    /// A plain value.
    Plain(String),
    /// A key of a Secret.
    Secret {
        /// Secret name.
        name: String,
        /// Key in the Secret.
        key: String,
    },
}

/// Where the caller puts the files [`data_env`] points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataPaths {
    /// The Intake catalogue ([`intake_catalog`]).
    pub catalog: String,
    /// `irods_environment.json` ([`irods_environment`]).
    pub irods_environment: String,
    /// `.irodsA` ([`irods_auth_file`]).
    pub irods_authentication: String,
}

/// The credentials `groups` get for a source: `(None, secret)` for its single
/// `credentialsSecret`, `(Some(group), secret)` for the first `credentialsByGroup` entry whose
/// group is among `groups`, `None` for no credentials (or a source that takes none).
pub fn credentials_for<'a>(
    spec: &'a DataSourceSpec,
    groups: &BTreeSet<String>,
) -> Option<(Option<&'a str>, &'a SecretRef)> {
    let (single, by_group) = credentials_of(spec);
    if let Some(secret) = single {
        return Some((None, secret));
    }
    by_group
        .iter()
        .find(|c| groups.contains(&c.group))
        .map(|c| (Some(c.group.as_str()), &c.secret))
}

/// The `credentialsSecret` and the `credentialsByGroup` of an s3 or irods source (none for the
/// others).
fn credentials_of(spec: &DataSourceSpec) -> (Option<&SecretRef>, &[GroupCredentials]) {
    match (&spec.s3, &spec.irods) {
        (Some(s3), _) => (s3.credentials_secret.as_ref(), &s3.credentials_by_group),
        (None, Some(irods)) => (
            irods.credentials_secret.as_ref(),
            &irods.credentials_by_group,
        ),
        (None, None) => (None, &[]),
    }
}

/// Every Secret a source names, each with what it is for, as the refusals name it: its
/// `credentialsSecret` (`credentials`), each `credentialsByGroup` entry (`credentials of group
/// <group>`), and `csi.nodePublishSecret`.
pub fn named_secrets(spec: &DataSourceSpec) -> Vec<(&SecretRef, String)> {
    let (single, by_group) = credentials_of(spec);
    let mut out: Vec<(&SecretRef, String)> = single
        .map(|secret| (secret, "credentials".to_owned()))
        .into_iter()
        .chain(
            by_group
                .iter()
                .map(|c| (&c.secret, format!("credentials of group {}", c.group))),
        )
        .collect();
    if let Some(secret) = spec
        .csi
        .as_ref()
        .and_then(|c| c.node_publish_secret.as_ref())
    {
        out.push((secret, "csi.nodePublishSecret".to_owned()));
    }
    out
}

/// What is wrong with a DataSource spec, if anything: the rules of its CRD (which the API
/// server enforces, but a catalogue read from files never met), and group credentials on an s3
/// CSI mount without `csi.nodePublishSecret` (a driver mounts a bucket once per volume handle,
/// so the mount needs one Secret for all its users).
pub fn spec_problem(spec: &DataSourceSpec) -> Option<String> {
    let backends = [
        spec.s3.is_some(),
        spec.irods.is_some(),
        spec.nfs.is_some(),
        spec.pvc.is_some(),
    ]
    .into_iter()
    .filter(|b| *b)
    .count();
    if backends > 1 {
        return Some("at most one of s3, irods, nfs or pvc may be set".into());
    }
    if backends == 0 && spec.stac.is_none() && spec.ogc.is_none() {
        return Some("one of s3, irods, nfs, pvc, stac or ogc must be set".into());
    }
    if spec.csi.is_some() && spec.s3.is_none() && spec.irods.is_none() {
        return Some("csi applies only to s3 and irods sources".into());
    }
    let mounted = spec.nfs.is_some() || spec.pvc.is_some() || spec.csi.is_some();
    if mounted && spec.mount_path.is_none() {
        return Some("mountPath is required with nfs, pvc or csi".into());
    }
    let (single, by_group) = match (&spec.s3, &spec.irods) {
        (Some(s3), _) => (s3.credentials_secret.is_some(), &s3.credentials_by_group),
        (None, Some(irods)) => (
            irods.credentials_secret.is_some(),
            &irods.credentials_by_group,
        ),
        (None, None) => return None,
    };
    if single && !by_group.is_empty() {
        return Some("credentialsSecret and credentialsByGroup are mutually exclusive".into());
    }
    let mut seen = BTreeSet::new();
    if let Some(dup) = by_group.iter().find(|c| !seen.insert(c.group.as_str())) {
        return Some(format!(
            "credentialsByGroup names group {} twice",
            dup.group
        ));
    }
    let shared_mount = spec
        .csi
        .as_ref()
        .is_some_and(|c| c.node_publish_secret.is_none());
    if spec.s3.is_some() && !by_group.is_empty() && shared_mount {
        return Some(
            "an s3 source with credentialsByGroup is mounted with one Secret for all its users: set csi.nodePublishSecret"
                .into(),
        );
    }
    None
}

/// The Intake (and rclone) entry name of a source: the name with every character other than a
/// letter or digit replaced by `_` (`argo-floats` → `argo_floats`). Two sources the validation
/// admits together never share one (they would share their environment prefix).
pub fn entry_name(source: &str) -> String {
    source
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// `ATELIER_STAC_<NAME>`: the variable holding a source's STAC URL.
pub fn stac_env_name(source: &str) -> String {
    format!("ATELIER_STAC_{}", entry_name(source).to_ascii_uppercase())
}

/// Python keywords, and the public attributes of the catalogue `intake.open_catalog` returns
/// (a `YAMLFileCatalog` of intake 2.0.9, `dir()` of one), which shadow an entry of that name
/// (`cat.items` is the method): such entries are opened as `cat["name"]`.
const NOT_AN_ATTRIBUTE: &[&str] = &[
    "False",
    "None",
    "True",
    "and",
    "as",
    "assert",
    "async",
    "await",
    "break",
    "class",
    "continue",
    "def",
    "del",
    "elif",
    "else",
    "except",
    "finally",
    "for",
    "from",
    "global",
    "if",
    "import",
    "in",
    "is",
    "lambda",
    "nonlocal",
    "not",
    "or",
    "pass",
    "raise",
    "return",
    "try",
    "while",
    "with",
    "yield",
    "access",
    "add",
    "auth",
    "autoreload",
    "cat",
    "classname",
    "close",
    "configure_new",
    "container",
    "describe",
    "description",
    "discover",
    "dtype",
    "entry",
    "filesystem",
    "filter",
    "force_reload",
    "from_dict",
    "get",
    "getenv",
    "getshell",
    "gui",
    "has_been_persisted",
    "is_persisted",
    "items",
    "keys",
    "kwargs",
    "metadata",
    "name",
    "name_from_path",
    "npartitions",
    "on_server",
    "parse",
    "partition_access",
    "path",
    "pmode",
    "pop",
    "read",
    "read_chunked",
    "read_partition",
    "reload",
    "save",
    "search",
    "serialize",
    "shape",
    "storage_options",
    "text",
    "to_dask",
    "to_spark",
    "ttl",
    "updated",
    "user_parameters",
    "values",
    "version",
    "walk",
    "yaml",
];

/// The line of Python that opens a source in a workspace, as the home page shows it: its
/// Intake entry (`intake.open_catalog(os.environ["ATELIER_DATA_CATALOG"]).argo_floats.to_dask()`),
/// or, for a source that is only a STAC catalogue, `pystac_client` on its `ATELIER_STAC_<NAME>`.
pub fn open_line(source: &str, spec: &DataSourceSpec) -> String {
    let backend =
        spec.s3.is_some() || spec.irods.is_some() || spec.nfs.is_some() || spec.pvc.is_some();
    if !backend && spec.stac.is_some() {
        return format!(
            "pystac_client.Client.open(os.environ[\"{}\"])",
            stac_env_name(source)
        );
    }
    let entry = entry_name(source);
    let identifier = entry.starts_with(|c: char| c.is_ascii_alphabetic())
        && !NOT_AN_ATTRIBUTE.contains(&entry.as_str());
    let access = if identifier {
        format!(".{entry}")
    } else {
        format!("[\"{entry}\"]")
    };
    format!("intake.open_catalog(os.environ[\"{CATALOG_ENV}\"]){access}.to_dask()")
}

/// The environment of a workspace for its `sources` (sorted by name, as `validate` gives them),
/// for a user in `groups`; see the module documentation. Sorted by variable name.
pub fn data_env(
    sources: &[(String, DataSourceSpec)],
    groups: &BTreeSet<String>,
    paths: &DataPaths,
) -> Vec<(String, EnvValue)> {
    let mut env: BTreeMap<String, EnvValue> = BTreeMap::new();
    let mut set = |name: String, value: EnvValue| {
        env.insert(name, value);
    };
    let plain = |v: &str| EnvValue::Plain(v.to_owned());
    let secret = |s: &SecretRef, key: &str| EnvValue::Secret {
        name: s.name.clone(),
        key: key.to_owned(),
    };
    let (mut first_s3, mut first_irods) = (true, true);
    for (name, spec) in sources {
        let p = names::data_env_prefix(name);
        let credentials = credentials_for(spec, groups).map(|(_, s)| s);
        if let Some(s3) = &spec.s3 {
            let prefix = s3.prefix.trim_start_matches('/');
            set(format!("{p}_ENDPOINT_URL"), plain(&s3.endpoint));
            set(format!("{p}_BUCKET"), plain(&s3.bucket));
            set(format!("{p}_PREFIX"), plain(&s3.prefix));
            set(
                format!("{p}_URL"),
                EnvValue::Plain(format!("s3://{}/{prefix}", s3.bucket)),
            );
            if let Some(region) = &s3.region {
                set(format!("{p}_REGION"), plain(region));
            }
            match credentials {
                Some(c) => {
                    for key in [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY] {
                        set(format!("{p}_{key}"), secret(c, key));
                    }
                }
                None => set(format!("{p}_ANONYMOUS"), plain("true")),
            }
            let remote = format!("RCLONE_CONFIG_{}", entry_name(name).to_ascii_uppercase());
            set(format!("{remote}_TYPE"), plain("s3"));
            set(format!("{remote}_PROVIDER"), plain("Other"));
            set(format!("{remote}_ENDPOINT"), plain(&s3.endpoint));
            if let Some(region) = &s3.region {
                set(format!("{remote}_REGION"), plain(region));
            }
            set(
                format!("{remote}_FORCE_PATH_STYLE"),
                plain(if s3.virtual_hosting { "false" } else { "true" }),
            );
            if let Some(c) = credentials {
                set(
                    format!("{remote}_ACCESS_KEY_ID"),
                    secret(c, AWS_ACCESS_KEY_ID),
                );
                set(
                    format!("{remote}_SECRET_ACCESS_KEY"),
                    secret(c, AWS_SECRET_ACCESS_KEY),
                );
            }
            if std::mem::take(&mut first_s3) {
                set("AWS_ENDPOINT_URL".into(), plain(&s3.endpoint));
                set("FSSPEC_S3_ENDPOINT_URL".into(), plain(&s3.endpoint));
                if let Some(region) = &s3.region {
                    set("AWS_REGION".into(), plain(region));
                    set("AWS_DEFAULT_REGION".into(), plain(region));
                }
                let (https, authority) = endpoint_parts(&s3.endpoint);
                set("AWS_S3_ENDPOINT".into(), plain(authority));
                set("AWS_HTTPS".into(), plain(if https { "YES" } else { "NO" }));
                set(
                    "AWS_VIRTUAL_HOSTING".into(),
                    plain(if s3.virtual_hosting { "TRUE" } else { "FALSE" }),
                );
                match credentials {
                    Some(c) => {
                        for key in [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY] {
                            set(key.into(), secret(c, key));
                        }
                    }
                    None => {
                        set("FSSPEC_S3_ANON".into(), plain("true"));
                        set("AWS_NO_SIGN_REQUEST".into(), plain("YES"));
                    }
                }
            }
        }
        if let Some(irods) = &spec.irods {
            set(format!("{p}_HOST"), plain(&irods.host));
            set(format!("{p}_PORT"), EnvValue::Plain(irods.port.to_string()));
            set(format!("{p}_ZONE"), plain(&irods.zone));
            set(format!("{p}_PATH"), plain(&irods.path));
            if let Some(c) = credentials {
                for key in [IRODS_USER_NAME, IRODS_PASSWORD] {
                    set(format!("{p}_{key}"), secret(c, key));
                }
            }
            if std::mem::take(&mut first_irods) {
                set("IRODS_HOST".into(), plain(&irods.host));
                set("IRODS_PORT".into(), EnvValue::Plain(irods.port.to_string()));
                set("IRODS_ZONE_NAME".into(), plain(&irods.zone));
                set(
                    "IRODS_ENVIRONMENT_FILE".into(),
                    plain(&paths.irods_environment),
                );
                if let Some(c) = credentials {
                    for key in [IRODS_USER_NAME, IRODS_PASSWORD] {
                        set(key.into(), secret(c, key));
                    }
                    set(
                        "IRODS_AUTHENTICATION_FILE".into(),
                        plain(&paths.irods_authentication),
                    );
                }
            }
        }
        if let Some(stac) = &spec.stac {
            set(stac_env_name(name), plain(stac));
        }
    }
    if !sources.is_empty() {
        set(CATALOG_ENV.into(), plain(&paths.catalog));
    }
    env.into_iter().collect()
}

/// Whether an endpoint URL is https, and its `host[:port]` (what GDAL's `AWS_S3_ENDPOINT`
/// takes).
fn endpoint_parts(endpoint: &str) -> (bool, &str) {
    let (https, rest) = match endpoint.split_once("://") {
        Some((scheme, rest)) => (scheme.eq_ignore_ascii_case("https"), rest),
        None => (true, endpoint),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    (https, authority)
}

/// The Intake driver of the data at `path` (an s3 prefix, an iRODS or NFS path, a mount path),
/// and whether it is one store or file (else a directory, opened as its `*.nc` files): a Zarr
/// store (`*.zarr`), a NetCDF/HDF5 file or a glob of them, or a directory.
fn shape(path: &str) -> (&'static str, bool) {
    let lower = path.trim_end_matches('/').to_ascii_lowercase();
    if lower.ends_with(".zarr") {
        ("zarr", true)
    } else {
        let file = [".nc", ".nc4", ".netcdf", ".h5", ".hdf5", ".he5"]
            .iter()
            .any(|ext| lower.ends_with(ext))
            || lower.contains('*');
        ("netcdf", file)
    }
}

/// The `urlpath` of data at `base` of the given shape.
fn urlpath(base: &str, single: bool) -> String {
    let base = base.trim_end_matches('/');
    if single {
        base.to_owned()
    } else {
        format!("{base}/*.nc")
    }
}

/// `a` joined to `b` with one `/`.
fn join(a: &str, b: &str) -> String {
    let b = b.trim_start_matches('/');
    if b.is_empty() {
        a.to_owned()
    } else {
        format!("{}/{b}", a.trim_end_matches('/'))
    }
}

/// The `{{env(VAR)}}` reference Intake expands when the entry is opened.
fn env_ref(var: &str) -> String {
    format!("{{{{env({var})}}}}")
}

/// s3fs's `storage_options` for an s3 source: the endpoint, region and addressing style, and
/// the keys as references to the source's own variables (never their values), or `anon`.
fn s3_storage_options(name: &str, s3: &S3Source, credentials: bool) -> Value {
    let p = names::data_env_prefix(name);
    let mut options = Map::new();
    options.insert("endpoint_url".into(), json!(s3.endpoint));
    if credentials {
        options.insert(
            "key".into(),
            json!(env_ref(&format!("{p}_{AWS_ACCESS_KEY_ID}"))),
        );
        options.insert(
            "secret".into(),
            json!(env_ref(&format!("{p}_{AWS_SECRET_ACCESS_KEY}"))),
        );
    } else {
        options.insert("anon".into(), json!(true));
    }
    if let Some(region) = &s3.region {
        options.insert("client_kwargs".into(), json!({"region_name": region}));
    }
    let style = if s3.virtual_hosting {
        "virtual"
    } else {
        "path"
    };
    options.insert(
        "config_kwargs".into(),
        json!({"s3": {"addressing_style": style}}),
    );
    Value::Object(options)
}

/// The Intake v1 catalogue (YAML) of a workspace's `sources` for a user in `groups`: one entry
/// per source, named [`entry_name`], with its description.
///
/// - A source whose data is mounted (`mounted`: the backend mounts; nfs, pvc, or s3/irods with
///   `csi`) opens from its mount path.
/// - Otherwise an s3 source opens from `s3://bucket/prefix` with s3fs `storage_options` that
///   reference the source's variables as `{{env(ATELIER_DATA_<NAME>_AWS_...)}}` (the catalogue
///   holds no secret), or `anon: true` without credentials.
/// - An irods source that is not mounted points at `irods://host:port/path` (listed, with its
///   connection in `metadata.irods`; python-irodsclient reaches it through the environment).
/// - `*.zarr` opens with the `zarr` driver, anything else with `netcdf` (a directory: its
///   `*.nc` files), with `engine: h5netcdf` over s3 and `netcdf4` for files.
/// - A STAC-only source is a `stac_catalog` entry; a backend's `stac` is in its `metadata`.
pub fn intake_catalog(
    sources: &[(String, DataSourceSpec)],
    groups: &BTreeSet<String>,
    mounted: bool,
) -> String {
    let mut entries = Map::new();
    for (name, spec) in sources {
        let description = if spec.description.is_empty() {
            format!("DataSource {name}")
        } else {
            spec.description.clone()
        };
        let mut metadata = Map::new();
        metadata.insert("data_source".into(), json!(name));
        if let Some(stac) = &spec.stac {
            metadata.insert("stac".into(), json!(stac));
        }
        let mount = spec.mount_path.as_deref().filter(|_| {
            mounted && (spec.nfs.is_some() || spec.pvc.is_some() || spec.csi.is_some())
        });
        if let Some(path) = spec.mount_path.as_deref() {
            metadata.insert("mount_path".into(), json!(path));
            metadata.insert("mounted".into(), json!(mount.is_some()));
        }
        let credentials = credentials_for(spec, groups);
        if let Some((Some(group), _)) = credentials {
            metadata.insert("credentials_group".into(), json!(group));
        }
        // What the data is: the bucket's prefix, the collection or export path, else the
        // mount path (a claim).
        let data_path = match (&spec.s3, &spec.irods, &spec.nfs) {
            (Some(s3), _, _) => s3.prefix.clone(),
            (None, Some(irods), _) => irods.path.clone(),
            (None, None, Some(nfs)) => nfs.path.clone(),
            _ => spec.mount_path.clone().unwrap_or_default(),
        };
        let (driver, single) = shape(&data_path);
        let (driver, args) = if let Some(mount) = mount {
            // A mount shows the bucket's prefix, the collection or the export.
            (driver, file_args(driver, urlpath(mount, single), "netcdf4"))
        } else if let Some(s3) = &spec.s3 {
            let base = join(&format!("s3://{}", s3.bucket), &s3.prefix);
            let mut args = file_args(driver, urlpath(&base, single), "h5netcdf");
            args.insert(
                "storage_options".into(),
                s3_storage_options(name, s3, credentials.is_some()),
            );
            (driver, args)
        } else if let Some(irods) = &spec.irods {
            let base = format!("irods://{}:{}{}", irods.host, irods.port, irods.path);
            (driver, file_args(driver, urlpath(&base, single), "netcdf4"))
        } else if let Some(path) = spec.mount_path.as_deref().filter(|_| spec.stac.is_none()) {
            // nfs or pvc where nothing is mounted (the local backend): the path it would have.
            (driver, file_args(driver, urlpath(path, single), "netcdf4"))
        } else if let Some(stac) = &spec.stac {
            let mut args = Map::new();
            args.insert("url".into(), json!(stac));
            ("stac_catalog", args)
        } else {
            continue;
        };
        if let Some(irods) = &spec.irods {
            metadata.insert(
                "irods".into(),
                json!({
                    "host": irods.host,
                    "port": irods.port,
                    "zone": irods.zone,
                    "path": irods.path,
                }),
            );
        }
        entries.insert(
            entry_name(name),
            json!({
                "description": description,
                "driver": driver,
                "args": Value::Object(args),
                "metadata": Value::Object(metadata),
            }),
        );
    }
    let catalog = json!({
        "metadata": {"version": 1},
        "sources": Value::Object(entries),
    });
    let mut text = serde_saphyr::to_string(&catalog).expect("a JSON value serializes to YAML");
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// `args` of a file entry: `urlpath`, and the xarray engine of a NetCDF entry.
fn file_args(driver: &str, urlpath: String, engine: &str) -> Map<String, Value> {
    let mut args = Map::new();
    args.insert("urlpath".into(), json!(urlpath));
    if driver == "netcdf" {
        args.insert("xarray_kwargs".into(), json!({"engine": engine}));
    }
    args
}

/// The iRODS client environment (`irods_environment.json`) of `user` for `irods`, as
/// python-irodsclient reads it (irods/python-irodsclient `irods/session.py`,
/// `_configure_account`: every `irods_*` key) and the icommands do.
pub fn irods_environment(irods: &IrodsSource, user: &str) -> Value {
    json!({
        "irods_host": irods.host,
        "irods_port": irods.port,
        "irods_zone_name": irods.zone,
        "irods_user_name": user,
        "irods_home": format!("/{}/home/{user}", irods.zone),
        "irods_cwd": irods.path,
    })
}

/// `irods_cwd` of the iRODS client environment [`IRODS_INIT_SCRIPT`] writes: the collection
/// of the source (variable of the init container only; [`irods_init_env`]).
pub const IRODS_CWD: &str = "IRODS_CWD";

/// The Python program (run as `python3 -c`) with which a Kubernetes workspace writes its iRODS
/// client files before the server starts (the operator's `irods-env` init container, in the
/// workspace's image and as the server's uid, which salts `.irodsA`). It reads only its
/// environment ([`irods_init_env`]): `IRODS_HOST`, `IRODS_PORT`, `IRODS_ZONE_NAME`,
/// [`IRODS_CWD`] and, with credentials, `IRODS_USER_NAME` and `IRODS_PASSWORD` (secretKeyRef);
/// it writes `$IRODS_ENVIRONMENT_FILE` with the keys of [`irods_environment`] (the anonymous user
/// without credentials) and, with credentials, `$IRODS_AUTHENTICATION_FILE` as
/// python-irodsclient's own writer does (irods/python-irodsclient `irods/client_init.py`,
/// `_write_encoded_auth_value`: umask 077, `irods.password_obfuscation.encode(password)` with
/// the process's uid and the current time, which the iCommands compare with the file's
/// mtime). It prints the paths only, never a value; an empty password fails, naming the key.
pub const IRODS_INIT_SCRIPT: &str = r#"import json, os, sys
e = os.environ
password = e.get("IRODS_PASSWORD")
user = e.get("IRODS_USER_NAME") or "anonymous"
if "IRODS_USER_NAME" in e and not password:
    sys.exit("irods-env: the credentials Secret's IRODS_PASSWORD is empty")
zone = e["IRODS_ZONE_NAME"]
environment = {
    "irods_host": e["IRODS_HOST"],
    "irods_port": int(e["IRODS_PORT"]),
    "irods_zone_name": zone,
    "irods_user_name": user,
    "irods_home": "/" + zone + "/home/" + user,
    "irods_cwd": e["IRODS_CWD"],
}
os.umask(0o077)
with open(e["IRODS_ENVIRONMENT_FILE"], "w") as f:
    json.dump(environment, f, indent=2, sort_keys=True)
    f.write("\n")
print("irods-env: wrote " + e["IRODS_ENVIRONMENT_FILE"])
if password:
    from irods.password_obfuscation import encode
    with open(e["IRODS_AUTHENTICATION_FILE"], "w") as f:
        f.write(encode(password))
    print("irods-env: wrote " + e["IRODS_AUTHENTICATION_FILE"])
"#;

/// The environment of [`IRODS_INIT_SCRIPT`] for `sources` and a user in `groups`, or `None`
/// without an irods source: the first irods source in name order (the one whose `IRODS_*`
/// variables [`data_env`] sets), the user's credentials as Secret keys, the files' paths.
/// Sorted by name; its `IRODS_*` entries but [`IRODS_CWD`] are exactly those of [`data_env`].
pub fn irods_init_env(
    sources: &[(String, DataSourceSpec)],
    groups: &BTreeSet<String>,
    paths: &DataPaths,
) -> Option<Vec<(String, EnvValue)>> {
    let (spec, irods) = sources
        .iter()
        .find_map(|(_, spec)| spec.irods.as_ref().map(|i| (spec, i)))?;
    let plain = |v: &str| EnvValue::Plain(v.to_owned());
    let mut env = BTreeMap::from([
        ("IRODS_HOST".to_owned(), plain(&irods.host)),
        (
            "IRODS_PORT".to_owned(),
            EnvValue::Plain(irods.port.to_string()),
        ),
        ("IRODS_ZONE_NAME".to_owned(), plain(&irods.zone)),
        (IRODS_CWD.to_owned(), plain(&irods.path)),
        (
            "IRODS_ENVIRONMENT_FILE".to_owned(),
            plain(&paths.irods_environment),
        ),
    ]);
    if let Some((_, secret)) = credentials_for(spec, groups) {
        for key in [IRODS_USER_NAME, IRODS_PASSWORD] {
            env.insert(
                key.to_owned(),
                EnvValue::Secret {
                    name: secret.name.clone(),
                    key: key.to_owned(),
                },
            );
        }
        env.insert(
            "IRODS_AUTHENTICATION_FILE".to_owned(),
            plain(&paths.irods_authentication),
        );
    }
    Some(env.into_iter().collect())
}

/// python-irodsclient's `seq_list` (irods/python-irodsclient `irods/password_obfuscation.py`).
const SEQ_LIST: [u32; 16] = [
    0xd768b678, 0xedfdaf56, 0x2420231b, 0x987098d8, 0xc1bdfeee, 0xf572341f, 0x478def3a, 0xa830d343,
    0x774dfa2a, 0x6720731e, 0x346fa320, 0x6ffdf43a, 0x7723a320, 0xdf67d02e, 0x86ad240a, 0xe76d342e,
];

/// python-irodsclient's `wheel`: the characters the obfuscation rotates; others pass through.
const WHEEL: &[u8; 77] =
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!\"#$%&'()*+,-./";

/// The content of an `.irodsA` file holding `password` for the process user `uid`, as
/// python-irodsclient 3.x writes it: a port of `encode(s, uid, mtime)` of
/// irods/python-irodsclient `irods/password_obfuscation.py` (the iCommands' `obfEncodeByKey`
/// scheme, salted with the uid; a client running under another uid cannot decode it). `mtime`
/// is the file's modification time in seconds; python-irodsclient's `decode` ignores it. The
/// result ends with a NUL character, as the original's does.
pub fn irods_auth_file(password: &str, uid: u32, mtime: u32) -> String {
    // seq_index is always 0 in the original ("never checked. Let's use zero.").
    let seq_index: u32 = 0;
    let seq = SEQ_LIST[seq_index as usize];
    let mut to_encode: Vec<char> = Vec::with_capacity(password.chars().count() + 5);
    to_encode.push(char::from(b'S' - ((seq_index & 0x7) * 2) as u8));
    for nibble in [
        (mtime >> 4) & 0xf,
        mtime & 0xf,
        (mtime >> 12) & 0xf,
        (mtime >> 8) & 0xf,
    ] {
        to_encode.push(char::from(b'a' + nibble as u8));
    }
    to_encode.extend(password.chars());

    let mut encoded: Vec<char> = vec!['.'];
    let mut bitshift: u32 = 0;
    for c in to_encode {
        if c == '\0' {
            break;
        }
        let offset = u64::from((seq >> bitshift) & 0x1f) + u64::from(uid & 0xf5f);
        bitshift += 3;
        if bitshift > 28 {
            bitshift = 0;
        }
        let position = u8::try_from(c)
            .ok()
            .and_then(|b| WHEEL.iter().position(|w| *w == b));
        match position {
            Some(i) => {
                let rotated = (i as u64 + offset) % WHEEL.len() as u64;
                encoded.push(char::from(WHEEL[rotated as usize]));
            }
            None => encoded.push(c),
        }
    }
    // The seq_index, not encoded, goes in at position 6 (after the dot and five characters).
    let at = encoded.len().min(6);
    encoded.insert(at, char::from(b'e' + seq_index as u8));
    encoded.push('\0');
    encoded.into_iter().collect()
}

#[cfg(test)]
#[path = "data_tests.rs"]
mod tests;
