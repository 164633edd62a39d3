//! Tests of `policy::data`.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use serde_json::{Value, json};

use super::{
    DataPaths, EnvValue, credentials_for, data_env, entry_name, intake_catalog, irods_auth_file,
    irods_environment, open_line, spec_problem,
};
use crate::api::v1alpha1::{DataSource, DataSourceSpec};
use crate::policy::workspace::validate::test_support::{data_sources, yaml};

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn paths() -> DataPaths {
    DataPaths {
        catalog: "/etc/atelier/data/catalog.yaml".into(),
        irods_environment: "/etc/atelier/irods/irods_environment.json".into(),
        irods_authentication: "/etc/atelier/irods/.irodsA".into(),
    }
}

/// One DataSource spec from YAML lines.
fn spec(text: &str) -> DataSourceSpec {
    let text: String = text.lines().map(|l| format!("  {l}\n")).collect();
    yaml::<DataSource>(&format!(
        "apiVersion: atelier.dev/v1alpha1\nkind: DataSource\nmetadata:\n  name: x\nspec:\n{text}"
    ))
    .spec
}

/// The env as `name → value`, a Secret's key shown as `secret:<name>/<key>` (as the builder
/// tests show `secretKeyRef`s).
fn shown(env: &[(String, EnvValue)]) -> BTreeMap<String, String> {
    env.iter()
        .map(|(k, v)| {
            let v = match v {
                EnvValue::Plain(p) => p.clone(),
                EnvValue::Secret { name, key } => format!("secret:{name}/{key}"),
            };
            (k.clone(), v)
        })
        .collect()
}

fn owned(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Per virtual organisation: the ocean VO's key pair, then the atmosphere VO's.
const BY_GROUP: &str = "description: Argo floats, one key pair per VO
s3:
  endpoint: http://127.0.0.1:8333
  bucket: argo
  prefix: x.zarr
  credentialsByGroup:
    - {group: vo-ocean, secret: {name: ocean-s3}}
    - {group: vo-atmos, secret: {name: atmos-s3}}";

#[test]
fn credentials_single_secret_first_group_or_none() {
    let sources = data_sources();
    let argo = &sources
        .iter()
        .find(|d| d.name_any() == "argo-floats")
        .unwrap()
        .spec;
    // The single Secret, whatever the groups.
    let (group, secret) = credentials_for(argo, &set(&[])).unwrap();
    assert_eq!((group, secret.name.as_str()), (None, "argo-creds"));
    let irods = &sources
        .iter()
        .find(|d| d.name_any() == "irods-archive")
        .unwrap()
        .spec;
    assert_eq!(
        credentials_for(irods, &set(&["x"])).unwrap().1.name,
        "irods-creds"
    );
    // No credentials: anonymous s3, nfs and pvc take none.
    let sentinel = &sources
        .iter()
        .find(|d| d.name_any() == "sentinel")
        .unwrap()
        .spec;
    assert_eq!(credentials_for(sentinel, &set(&["physics"])), None);
    let scratch = &sources
        .iter()
        .find(|d| d.name_any() == "scratch")
        .unwrap()
        .spec;
    assert_eq!(credentials_for(scratch, &set(&["physics"])), None);

    // By group: the first entry the user is in, in the DataSource's order (not the groups').
    let by_group = spec(BY_GROUP);
    let pick = |groups: &[&str]| {
        credentials_for(&by_group, &set(groups)).map(|(g, s)| (g.unwrap(), s.name.clone()))
    };
    assert_eq!(pick(&["vo-ocean"]), Some(("vo-ocean", "ocean-s3".into())));
    assert_eq!(pick(&["vo-atmos"]), Some(("vo-atmos", "atmos-s3".into())));
    assert_eq!(
        pick(&["a-first", "vo-atmos", "vo-ocean"]),
        Some(("vo-ocean", "ocean-s3".into()))
    );
    assert_eq!(pick(&["other"]), None);
    assert_eq!(pick(&[]), None);

    // The same on irods.
    let irods_by_group = spec(
        "irods:
  host: irods.example.org
  zone: z
  path: /z/home/public
  credentialsByGroup:
    - {group: vo-ocean, secret: {name: ocean-irods}}",
    );
    assert_eq!(
        credentials_for(&irods_by_group, &set(&["vo-ocean"])).map(|(g, s)| (g, s.name.as_str())),
        Some((Some("vo-ocean"), "ocean-irods"))
    );
    assert_eq!(credentials_for(&irods_by_group, &set(&["x"])), None);
}

/// The variables this module adds to what the operator's builder has always set.
fn added(name: &str) -> bool {
    [
        "AWS_REGION",
        "AWS_S3_ENDPOINT",
        "AWS_HTTPS",
        "AWS_VIRTUAL_HOSTING",
        "AWS_NO_SIGN_REQUEST",
        "ATELIER_DATA_CATALOG",
        "IRODS_ENVIRONMENT_FILE",
        "IRODS_AUTHENTICATION_FILE",
    ]
    .contains(&name)
        || name.starts_with("RCLONE_CONFIG_")
        || name.starts_with("ATELIER_STAC_")
}

#[test]
fn data_env_reproduces_the_builders_variables_and_adds_the_clients() {
    // The sources of the builder test `every_data_source_kind`, as `validate` sorts them.
    let mut sources: Vec<(String, DataSourceSpec)> = data_sources()
        .into_iter()
        .filter(|d| {
            [
                "team-shared",
                "scratch",
                "irods-csi",
                "irods-archive",
                "sentinel",
                "era5",
                "argo-floats",
            ]
            .contains(&d.name_any().as_str())
        })
        .map(|d| (d.name_any(), d.spec))
        .collect();
    sources.sort_by(|a, b| a.0.cmp(&b.0));
    let env = data_env(&sources, &set(&["physics"]), &paths());

    // Sorted and unique.
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(names, sorted);

    let env = shown(&env);
    let (new, builders): (BTreeMap<_, _>, BTreeMap<_, _>) =
        env.into_iter().partition(|(k, _)| added(k));
    // Exactly what `operator::workspace::build` emits today for these sources (its test
    // `every_data_source_kind` reads the same file).
    let want: BTreeMap<String, String> = serde_json::from_str(include_str!(
        "../../tests/fixtures/builders/data-source-env.json"
    ))
    .expect("the expected environment");
    assert_eq!(builders, want);

    // What GDAL, rclone, Intake and the iRODS client read besides.
    let want_new = owned(&[
        ("AWS_REGION", "eu-west-1"),
        ("AWS_S3_ENDPOINT", "s3.example.org"),
        ("AWS_HTTPS", "YES"),
        ("AWS_VIRTUAL_HOSTING", "FALSE"),
        ("RCLONE_CONFIG_ARGO_FLOATS_TYPE", "s3"),
        ("RCLONE_CONFIG_ARGO_FLOATS_PROVIDER", "Other"),
        (
            "RCLONE_CONFIG_ARGO_FLOATS_ENDPOINT",
            "https://s3.example.org",
        ),
        ("RCLONE_CONFIG_ARGO_FLOATS_REGION", "eu-west-1"),
        ("RCLONE_CONFIG_ARGO_FLOATS_FORCE_PATH_STYLE", "true"),
        (
            "RCLONE_CONFIG_ARGO_FLOATS_ACCESS_KEY_ID",
            "secret:argo-creds/AWS_ACCESS_KEY_ID",
        ),
        (
            "RCLONE_CONFIG_ARGO_FLOATS_SECRET_ACCESS_KEY",
            "secret:argo-creds/AWS_SECRET_ACCESS_KEY",
        ),
        ("RCLONE_CONFIG_ERA5_TYPE", "s3"),
        ("RCLONE_CONFIG_ERA5_PROVIDER", "Other"),
        ("RCLONE_CONFIG_ERA5_ENDPOINT", "https://objects.example.org"),
        ("RCLONE_CONFIG_ERA5_FORCE_PATH_STYLE", "true"),
        (
            "RCLONE_CONFIG_ERA5_ACCESS_KEY_ID",
            "secret:era5-creds/AWS_ACCESS_KEY_ID",
        ),
        (
            "RCLONE_CONFIG_ERA5_SECRET_ACCESS_KEY",
            "secret:era5-creds/AWS_SECRET_ACCESS_KEY",
        ),
        ("RCLONE_CONFIG_SENTINEL_TYPE", "s3"),
        ("RCLONE_CONFIG_SENTINEL_PROVIDER", "Other"),
        (
            "RCLONE_CONFIG_SENTINEL_ENDPOINT",
            "https://sentinel.example.org",
        ),
        ("RCLONE_CONFIG_SENTINEL_FORCE_PATH_STYLE", "true"),
        ("ATELIER_DATA_CATALOG", "/etc/atelier/data/catalog.yaml"),
        (
            "IRODS_ENVIRONMENT_FILE",
            "/etc/atelier/irods/irods_environment.json",
        ),
        ("IRODS_AUTHENTICATION_FILE", "/etc/atelier/irods/.irodsA"),
    ]);
    assert_eq!(new, want_new);
}

#[test]
fn group_credentials_in_the_environment() {
    let sources = vec![("argo".to_owned(), spec(BY_GROUP))];
    let alice = shown(&data_env(&sources, &set(&["vo-atmos"]), &paths()));
    assert_eq!(
        alice,
        owned(&[
            ("ATELIER_DATA_ARGO_ENDPOINT_URL", "http://127.0.0.1:8333"),
            ("ATELIER_DATA_ARGO_BUCKET", "argo"),
            ("ATELIER_DATA_ARGO_PREFIX", "x.zarr"),
            ("ATELIER_DATA_ARGO_URL", "s3://argo/x.zarr"),
            (
                "ATELIER_DATA_ARGO_AWS_ACCESS_KEY_ID",
                "secret:atmos-s3/AWS_ACCESS_KEY_ID"
            ),
            (
                "ATELIER_DATA_ARGO_AWS_SECRET_ACCESS_KEY",
                "secret:atmos-s3/AWS_SECRET_ACCESS_KEY"
            ),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:8333"),
            ("FSSPEC_S3_ENDPOINT_URL", "http://127.0.0.1:8333"),
            ("AWS_S3_ENDPOINT", "127.0.0.1:8333"),
            ("AWS_HTTPS", "NO"),
            ("AWS_VIRTUAL_HOSTING", "FALSE"),
            ("AWS_ACCESS_KEY_ID", "secret:atmos-s3/AWS_ACCESS_KEY_ID"),
            (
                "AWS_SECRET_ACCESS_KEY",
                "secret:atmos-s3/AWS_SECRET_ACCESS_KEY"
            ),
            ("RCLONE_CONFIG_ARGO_TYPE", "s3"),
            ("RCLONE_CONFIG_ARGO_PROVIDER", "Other"),
            ("RCLONE_CONFIG_ARGO_ENDPOINT", "http://127.0.0.1:8333"),
            ("RCLONE_CONFIG_ARGO_FORCE_PATH_STYLE", "true"),
            (
                "RCLONE_CONFIG_ARGO_ACCESS_KEY_ID",
                "secret:atmos-s3/AWS_ACCESS_KEY_ID"
            ),
            (
                "RCLONE_CONFIG_ARGO_SECRET_ACCESS_KEY",
                "secret:atmos-s3/AWS_SECRET_ACCESS_KEY"
            ),
            ("ATELIER_DATA_CATALOG", "/etc/atelier/data/catalog.yaml"),
        ])
    );

    // bob is in no group of the source: anonymous, and nothing of any Secret.
    let bob = data_env(&sources, &set(&["other"]), &paths());
    assert!(
        bob.iter().all(|(_, v)| matches!(v, EnvValue::Plain(_))),
        "{bob:?}"
    );
    let bob = shown(&bob);
    assert_eq!(bob["FSSPEC_S3_ANON"], "true");
    assert_eq!(bob["AWS_NO_SIGN_REQUEST"], "YES");
    assert_eq!(bob["ATELIER_DATA_ARGO_ANONYMOUS"], "true");
    for absent in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "ATELIER_DATA_ARGO_AWS_ACCESS_KEY_ID",
        "RCLONE_CONFIG_ARGO_ACCESS_KEY_ID",
    ] {
        assert!(!bob.contains_key(absent), "{absent}");
    }
}

#[test]
fn endpoints_virtual_hosting_stac_and_irods_without_credentials() {
    let sources = vec![
        (
            "archive".to_owned(),
            spec(
                "irods:
  host: irods.example.org
  zone: z
  path: /z/home/public",
            ),
        ),
        (
            "cmems".to_owned(),
            spec(
                "s3:
  endpoint: https://s3.waw3-1.example.eu:8443/some/path
  bucket: cmems
  region: waw3-1
  virtualHosting: true
stac: https://stac.example.org/collections/cmems",
            ),
        ),
        (
            "sentinel-stac".to_owned(),
            spec("stac: https://earth-search.example.org/v1"),
        ),
    ];
    let env = shown(&data_env(&sources, &set(&[]), &paths()));
    assert_eq!(env["AWS_S3_ENDPOINT"], "s3.waw3-1.example.eu:8443");
    assert_eq!(env["AWS_HTTPS"], "YES");
    assert_eq!(env["AWS_VIRTUAL_HOSTING"], "TRUE");
    assert_eq!(env["AWS_REGION"], "waw3-1");
    assert_eq!(env["AWS_DEFAULT_REGION"], "waw3-1");
    assert_eq!(env["RCLONE_CONFIG_CMEMS_FORCE_PATH_STYLE"], "false");
    assert_eq!(env["RCLONE_CONFIG_CMEMS_REGION"], "waw3-1");
    assert_eq!(
        env["ATELIER_STAC_CMEMS"],
        "https://stac.example.org/collections/cmems"
    );
    assert_eq!(
        env["ATELIER_STAC_SENTINEL_STAC"],
        "https://earth-search.example.org/v1"
    );
    // irods without credentials: the environment file (for the anonymous user), no password.
    assert_eq!(
        env["IRODS_ENVIRONMENT_FILE"],
        "/etc/atelier/irods/irods_environment.json"
    );
    for absent in [
        "IRODS_AUTHENTICATION_FILE",
        "IRODS_USER_NAME",
        "IRODS_PASSWORD",
    ] {
        assert!(!env.contains_key(absent), "{absent}");
    }
    assert_eq!(env["IRODS_HOST"], "irods.example.org");

    // A STAC-only workspace: its URL and the catalogue, nothing of S3.
    let stac_only = shown(&data_env(&sources[2..], &set(&[]), &paths()));
    assert_eq!(
        stac_only,
        owned(&[
            (
                "ATELIER_STAC_SENTINEL_STAC",
                "https://earth-search.example.org/v1"
            ),
            ("ATELIER_DATA_CATALOG", "/etc/atelier/data/catalog.yaml"),
        ])
    );
    // No sources, no variables.
    assert!(data_env(&[], &set(&[]), &paths()).is_empty());
}

/// Every `{{env(VAR)}}` in a text.
fn env_refs(text: &str) -> Vec<String> {
    text.split("{{env(")
        .skip(1)
        .map(|rest| rest.split(")}}").next().unwrap().to_owned())
        .collect()
}

#[test]
fn intake_catalogue_entries() {
    let mut sources = vec![
        ("argo".to_owned(), spec(BY_GROUP)),
        (
            "argo-nc".to_owned(),
            spec(
                "description: Argo profiles as NetCDF
s3:
  endpoint: https://s3.example.org
  bucket: argo
  prefix: profiles/
  region: eu-west-1",
            ),
        ),
        (
            "era5".to_owned(),
            spec(
                "s3:
  endpoint: https://objects.example.org
  bucket: era5
  prefix: single-levels.zarr/
  credentialsSecret: {name: era5-creds}
csi:
  driver: ru.yandex.s3.csi
mountPath: /data/era5",
            ),
        ),
        (
            "grid".to_owned(),
            spec(
                "description: iRODS collection
irods:
  host: irods.example.org
  zone: z
  path: /z/home/public/grid.nc",
            ),
        ),
        (
            "scratch".to_owned(),
            spec(
                "nfs:
  server: nfs.example.org
  path: /export/scratch
mountPath: /scratch",
            ),
        ),
        (
            "stac-1".to_owned(),
            spec(
                "description: Earth Search
stac: https://earth-search.example.org/v1",
            ),
        ),
    ];
    sources.sort_by(|a, b| a.0.cmp(&b.0));
    let groups = set(&["vo-ocean"]);
    let text = intake_catalog(&sources, &groups, true);
    let catalog: Value = serde_saphyr::from_str(&text).expect("the catalogue is YAML");
    assert!(text.ends_with('\n'));
    assert_eq!(
        catalog,
        json!({
            "metadata": {"version": 1},
            "sources": {
                "argo": {
                    "description": "Argo floats, one key pair per VO",
                    "driver": "zarr",
                    "args": {
                        "urlpath": "s3://argo/x.zarr",
                        "storage_options": {
                            "endpoint_url": "http://127.0.0.1:8333",
                            "key": "{{env(ATELIER_DATA_ARGO_AWS_ACCESS_KEY_ID)}}",
                            "secret": "{{env(ATELIER_DATA_ARGO_AWS_SECRET_ACCESS_KEY)}}",
                            "config_kwargs": {"s3": {"addressing_style": "path"}},
                        },
                    },
                    "metadata": {"data_source": "argo", "credentials_group": "vo-ocean"},
                },
                "argo_nc": {
                    "description": "Argo profiles as NetCDF",
                    "driver": "netcdf",
                    "args": {
                        "urlpath": "s3://argo/profiles/*.nc",
                        "xarray_kwargs": {"engine": "h5netcdf"},
                        "storage_options": {
                            "endpoint_url": "https://s3.example.org",
                            "anon": true,
                            "client_kwargs": {"region_name": "eu-west-1"},
                            "config_kwargs": {"s3": {"addressing_style": "path"}},
                        },
                    },
                    "metadata": {"data_source": "argo-nc"},
                },
                "era5": {
                    "description": "DataSource era5",
                    "driver": "zarr",
                    "args": {"urlpath": "/data/era5"},
                    "metadata": {
                        "data_source": "era5",
                        "mount_path": "/data/era5",
                        "mounted": true,
                    },
                },
                "grid": {
                    "description": "iRODS collection",
                    "driver": "netcdf",
                    "args": {
                        "urlpath": "irods://irods.example.org:1247/z/home/public/grid.nc",
                        "xarray_kwargs": {"engine": "netcdf4"},
                    },
                    "metadata": {
                        "data_source": "grid",
                        "irods": {
                            "host": "irods.example.org",
                            "port": 1247,
                            "zone": "z",
                            "path": "/z/home/public/grid.nc",
                        },
                    },
                },
                "scratch": {
                    "description": "DataSource scratch",
                    "driver": "netcdf",
                    "args": {
                        "urlpath": "/scratch/*.nc",
                        "xarray_kwargs": {"engine": "netcdf4"},
                    },
                    "metadata": {"data_source": "scratch", "mount_path": "/scratch", "mounted": true},
                },
                "stac_1": {
                    "description": "Earth Search",
                    "driver": "stac_catalog",
                    "args": {"url": "https://earth-search.example.org/v1"},
                    "metadata": {"data_source": "stac-1", "stac": "https://earth-search.example.org/v1"},
                },
            },
        })
    );

    // The catalogue holds references to variables the environment sets, never a value.
    let env = shown(&data_env(&sources, &groups, &paths()));
    let refs = env_refs(&text);
    assert_eq!(refs.len(), 2);
    for var in refs {
        assert!(env[&var].starts_with("secret:"), "{var}");
    }

    // Where nothing is mounted (the local backend), the s3 source opens over s3 instead.
    let local: Value = serde_saphyr::from_str(&intake_catalog(&sources, &groups, false)).unwrap();
    let era5 = &local["sources"]["era5"];
    assert_eq!(era5["args"]["urlpath"], "s3://era5/single-levels.zarr");
    assert_eq!(
        era5["args"]["storage_options"]["key"],
        "{{env(ATELIER_DATA_ERA5_AWS_ACCESS_KEY_ID)}}"
    );
    assert_eq!(era5["metadata"]["mounted"], false);
    assert_eq!(local["sources"]["scratch"]["metadata"]["mounted"], false);

    // No sources: an empty catalogue.
    let empty: Value = serde_saphyr::from_str(&intake_catalog(&[], &groups, true)).unwrap();
    assert_eq!(empty, json!({"metadata": {"version": 1}, "sources": {}}));
}

#[test]
fn irods_environment_file() {
    let sources = data_sources();
    let irods = sources
        .iter()
        .find(|d| d.name_any() == "irods-csi")
        .and_then(|d| d.spec.irods.clone())
        .unwrap();
    assert_eq!(
        irods_environment(&irods, "alice"),
        json!({
            "irods_host": "irods2.example.org",
            "irods_port": 1248,
            "irods_zone_name": "otherZone",
            "irods_user_name": "alice",
            "irods_home": "/otherZone/home/alice",
            "irods_cwd": "/otherZone/projects",
        })
    );
}

#[test]
fn irods_auth_file_matches_python_irodsclient() {
    // `irods.password_obfuscation.encode(password, uid=, mtime=)` of python-irodsclient 3.3.0.
    let cases: &[(&str, u32, u32, &str)] = &[
        ("s3cret", 0, 0, ".qpz\"le*T$/%2\0"),
        ("s3cret", 1000, 0, ".jisuee#Mw(x+\0"),
        ("s3cret", 1000, 1_733_490_000, ".jns*je#Mw(x+\0"),
        ("p@ss w0rd/é~", 1001, 65535, ".ky)+ue!@.* /9+y4é~\0"),
        ("", 0, 0, ".qpz\"le\0"),
        (
            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            u32::MAX,
            u32::MAX,
            ".y-79)e7GHDGE5FH17GHDGE5FH17GHDGE5FH17GHDGE5FH1\0",
        ),
    ];
    for (password, uid, mtime, want) in cases {
        assert_eq!(
            irods_auth_file(password, *uid, *mtime),
            *want,
            "{password:?} uid={uid} mtime={mtime}"
        );
    }
    // A NUL ends the password, as in the original.
    assert_eq!(irods_auth_file("s3cret\0more", 0, 0), ".qpz\"le*T$/%2\0");
}

#[test]
fn entry_names_and_open_lines() {
    assert_eq!(entry_name("argo-floats"), "argo_floats");
    assert_eq!(entry_name("era5.v2"), "era5_v2");
    let s3 = spec(BY_GROUP);
    assert_eq!(
        open_line("argo-floats", &s3),
        r#"intake.open_catalog(os.environ["ATELIER_DATA_CATALOG"]).argo_floats.to_dask()"#
    );
    // Not a Python identifier, a keyword, or a catalogue attribute: by subscript.
    for (name, entry) in [
        ("2m-temperature", "2m_temperature"),
        ("global", "global"),
        ("items", "items"),
    ] {
        assert_eq!(
            open_line(name, &s3),
            format!(
                r#"intake.open_catalog(os.environ["ATELIER_DATA_CATALOG"])["{entry}"].to_dask()"#
            )
        );
    }
    // A STAC-only source opens with pystac-client.
    let stac = spec("stac: https://earth-search.example.org/v1");
    assert_eq!(
        open_line("earth-search", &stac),
        r#"pystac_client.Client.open(os.environ["ATELIER_STAC_EARTH_SEARCH"])"#
    );
}

#[test]
fn the_fixture_sources_are_well_formed() {
    for d in data_sources() {
        assert_eq!(spec_problem(&d.spec), None, "{}", d.name_any());
    }
    assert_eq!(spec_problem(&spec(BY_GROUP)), None);
    assert_eq!(
        spec_problem(&spec("description: nothing")).as_deref(),
        Some("one of s3, irods, nfs, pvc, stac or ogc must be set")
    );
}
