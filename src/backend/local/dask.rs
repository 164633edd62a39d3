//! A server's local Dask cluster: `dask scheduler` and `dask worker` processes beside the
//! server, from the same Python environment, on 127.0.0.1, mutually authenticated with TLS.
//!
//! Each cluster gets its own certificate authority, made afresh at every start (rcgen, ring):
//! one certificate and key, signed by that CA, which the scheduler, the workers and the server's
//! kernels present (`--tls-ca-file/--tls-cert/--tls-key`, and distributed's
//! `distributed.comm.tls.*` configuration through `DASK_DISTRIBUTED__…` variables, which
//! `Security()` reads when `Client()` is given no argument: distributed's `client.py` falls back
//! to `dask.config.get("scheduler-address")` and `Security()`, `security.py` reads
//! `distributed.comm.tls.ca-file`, `…client.cert`, `…client.key` and
//! `distributed.comm.require-encryption`). Both sides require a certificate signed by the
//! cluster's CA (distributed's TLS contexts use `CERT_REQUIRED` and no host name check), so
//! another workspace's kernel, with its own CA, fails the handshake. The files live in the
//! server's private run directory (mode 0700, files 0600) and go with it.
//!
//! The processes join the server's process group: stopping the server, a failed or abandoned
//! start, and the stop of a leftover after a hub crash all take them with it.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};

use crate::backend::{DASHBOARD_SEGMENT, LocalDask};

/// The CA certificate file in the server's run directory.
pub const CA_FILE: &str = "dask-ca.pem";
/// The cluster's certificate (scheduler, workers and clients).
pub const CERT_FILE: &str = "dask-tls.pem";
/// Its private key.
pub const KEY_FILE: &str = "dask-tls.key";

/// How long a worker waits for a vanished scheduler before it exits (`--death-timeout`).
const WORKER_DEATH_TIMEOUT_SECS: u32 = 60;

/// What the handle keeps of a running cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaskHandle {
    /// The scheduler process (in the server's process group).
    pub scheduler_pid: u32,
    /// Its start time (field 22 of `/proc/<pid>/stat`).
    pub scheduler_start_time: u64,
    /// `tls://127.0.0.1:<port>`.
    pub address: String,
    /// Where its dashboard listens, `http://127.0.0.1:<port>` (served under the server's prefix
    /// plus `dask/`).
    pub dashboard: String,
    /// The worker processes (their nannies).
    #[serde(default)]
    pub worker_pids: Vec<u32>,
}

/// The TLS files of a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

/// PEM texts of a fresh CA and of a certificate it signed for `127.0.0.1`/`localhost`, usable
/// by servers and clients: `(ca, cert, key)`.
pub fn make_tls(common_name: &str) -> Result<(String, String, String), rcgen::Error> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, format!("Atelier Dask CA {common_name}"));
    ca.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()])?;
    leaf.subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    leaf.distinguished_name
        .push(DnType::CommonName, format!("Atelier Dask {common_name}"));
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok((ca_cert.pem(), cert.pem(), key.serialize_pem()))
}

/// Writes a fresh CA, certificate and key into `dir` (created with mode 0700 when missing;
/// files 0600, never overwritten: the directory is made afresh at each start).
pub fn write_tls(dir: &Path, common_name: &str) -> std::io::Result<TlsFiles> {
    let (ca, cert, key) = make_tls(common_name)
        .map_err(|e| std::io::Error::other(format!("making the cluster's certificates: {e}")))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let write = |name: &str, text: &str| -> std::io::Result<PathBuf> {
        let path = dir.join(name);
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        out.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
        Ok(path)
    };
    Ok(TlsFiles {
        ca: write(CA_FILE, &ca)?,
        cert: write(CERT_FILE, &cert)?,
        key: write(KEY_FILE, &key)?,
    })
}

/// The `dask` program beside the server's (`jupyterhub-singleuser` given as a path: the same
/// Python environment), else `dask` on `PATH`.
pub fn dask_program(server_program: &str) -> String {
    let server = Path::new(server_program);
    if server_program.contains('/')
        && let Some(dir) = server.parent()
    {
        let dask = dir.join("dask");
        if dask.is_file() {
            return dask.to_string_lossy().into_owned();
        }
    }
    "dask".to_owned()
}

/// The dashboard's path prefix: the server's prefix plus [`DASHBOARD_SEGMENT`], without the
/// trailing `/` (`--dashboard-prefix`).
pub fn dashboard_prefix(server_prefix: &str) -> String {
    format!(
        "{}/{DASHBOARD_SEGMENT}",
        server_prefix.trim_end_matches('/')
    )
}

/// `dask scheduler` on `port` (TLS) with its dashboard on `dashboard_port` under `prefix`.
pub fn scheduler_argv(
    program: &str,
    port: u16,
    dashboard_port: u16,
    dashboard_prefix: &str,
    tls: &TlsFiles,
    spec: &LocalDask,
) -> Vec<String> {
    let mut argv = vec![
        program.to_owned(),
        "scheduler".to_owned(),
        "--protocol=tls".to_owned(),
        "--host=127.0.0.1".to_owned(),
        format!("--port={port}"),
        format!("--dashboard-address=127.0.0.1:{dashboard_port}"),
        format!("--dashboard-prefix={dashboard_prefix}"),
        "--no-jupyter".to_owned(),
    ];
    argv.extend(tls_args(tls));
    if let Some(secs) = spec.idle_timeout_seconds.filter(|s| *s > 0) {
        argv.push(format!("--idle-timeout={secs}s"));
    }
    argv
}

/// `dask worker` number `index` of the scheduler at `address`.
pub fn worker_argv(
    program: &str,
    address: &str,
    name: &str,
    tls: &TlsFiles,
    spec: &LocalDask,
) -> Vec<String> {
    let mut argv = vec![
        program.to_owned(),
        "worker".to_owned(),
        address.to_owned(),
        "--host=127.0.0.1".to_owned(),
        "--nworkers=1".to_owned(),
        format!("--nthreads={}", spec.threads.max(1)),
        format!("--name={name}"),
        "--no-dashboard".to_owned(),
        format!("--death-timeout={WORKER_DEATH_TIMEOUT_SECS}"),
    ];
    if let Some(bytes) = spec.memory_limit {
        argv.push(format!("--memory-limit={bytes}"));
    }
    argv.extend(tls_args(tls));
    argv
}

fn tls_args(tls: &TlsFiles) -> [String; 3] {
    [
        format!("--tls-ca-file={}", tls.ca.display()),
        format!("--tls-cert={}", tls.cert.display()),
        format!("--tls-key={}", tls.key.display()),
    ]
}

/// distributed's TLS configuration for every process of the cluster and for the server's
/// kernels (clients): the CA, the certificate as client, scheduler and worker certificate, and
/// encryption required.
pub fn tls_env(tls: &TlsFiles) -> Vec<(String, String)> {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let mut env = vec![
        (
            "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION".to_owned(),
            "True".to_owned(),
        ),
        (
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE".to_owned(),
            path(&tls.ca),
        ),
    ];
    for role in ["CLIENT", "SCHEDULER", "WORKER"] {
        env.push((
            format!("DASK_DISTRIBUTED__COMM__TLS__{role}__CERT"),
            path(&tls.cert),
        ));
        env.push((
            format!("DASK_DISTRIBUTED__COMM__TLS__{role}__KEY"),
            path(&tls.key),
        ));
    }
    env
}

/// What the server gets: the scheduler's address (`Client()` with no argument connects to it),
/// the TLS configuration, and the dashboard's link (`dashboard_link` of the client and
/// dask-labextension), `<public server URL or prefix>dask/status`.
pub fn server_env(address: &str, tls: &TlsFiles, dashboard_link: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("DASK_SCHEDULER_ADDRESS".to_owned(), address.to_owned()),
        (
            "DASK_DISTRIBUTED__DASHBOARD__LINK".to_owned(),
            dashboard_link.to_owned(),
        ),
    ];
    env.extend(tls_env(tls));
    env
}

/// The dashboard's link for a server at `prefix`, on `public` (the server's public URL,
/// `JUPYTERHUB_PUBLIC_URL`) when known, else the path alone.
pub fn dashboard_link(public: Option<&str>, prefix: &str) -> String {
    let base = match public {
        Some(public) if !public.is_empty() => public,
        _ => prefix,
    };
    format!("{}/{DASHBOARD_SEGMENT}/status", base.trim_end_matches('/'))
}

/// Whether a variable of the server's environment is the server's alone: the hub's token and
/// the single-user server's settings stay out of the scheduler's and workers' environment.
pub fn server_only(var: &str) -> bool {
    var.starts_with("JUPYTERHUB_") || var.starts_with("JPY_")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> TlsFiles {
        TlsFiles {
            ca: "/r/ca.pem".into(),
            cert: "/r/c.pem".into(),
            key: "/r/k.key".into(),
        }
    }

    fn spec() -> LocalDask {
        LocalDask {
            workers: 2,
            threads: 2,
            memory_limit: Some(2 << 30),
            idle_timeout_seconds: Some(600),
        }
    }

    #[test]
    fn argv_of_scheduler_and_worker() {
        assert_eq!(
            scheduler_argv("/v/bin/dask", 1, 2, "/user/alice/dask", &tls(), &spec()),
            [
                "/v/bin/dask",
                "scheduler",
                "--protocol=tls",
                "--host=127.0.0.1",
                "--port=1",
                "--dashboard-address=127.0.0.1:2",
                "--dashboard-prefix=/user/alice/dask",
                "--no-jupyter",
                "--tls-ca-file=/r/ca.pem",
                "--tls-cert=/r/c.pem",
                "--tls-key=/r/k.key",
                "--idle-timeout=600s",
            ]
        );
        let mut no_idle = spec();
        no_idle.idle_timeout_seconds = Some(0);
        assert!(
            !scheduler_argv("dask", 1, 2, "/p", &tls(), &no_idle)
                .iter()
                .any(|a| a.starts_with("--idle-timeout"))
        );
        assert_eq!(
            worker_argv("dask", "tls://127.0.0.1:1", "alice-0", &tls(), &spec()),
            [
                "dask",
                "worker",
                "tls://127.0.0.1:1",
                "--host=127.0.0.1",
                "--nworkers=1",
                "--nthreads=2",
                "--name=alice-0",
                "--no-dashboard",
                "--death-timeout=60",
                "--memory-limit=2147483648",
                "--tls-ca-file=/r/ca.pem",
                "--tls-cert=/r/c.pem",
                "--tls-key=/r/k.key",
            ]
        );
    }

    #[test]
    fn server_environment() {
        let env: std::collections::BTreeMap<_, _> = server_env(
            "tls://127.0.0.1:9",
            &tls(),
            &dashboard_link(None, "/user/alice/gpu/"),
        )
        .into_iter()
        .collect();
        assert_eq!(env["DASK_SCHEDULER_ADDRESS"], "tls://127.0.0.1:9");
        assert_eq!(
            env["DASK_DISTRIBUTED__DASHBOARD__LINK"],
            "/user/alice/gpu/dask/status"
        );
        assert_eq!(env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"], "True");
        assert_eq!(env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"], "/r/ca.pem");
        assert_eq!(env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT"], "/r/c.pem");
        assert_eq!(env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY"], "/r/k.key");
        assert_eq!(
            dashboard_link(Some("https://hub.example/user/alice/"), "/user/alice/"),
            "https://hub.example/user/alice/dask/status"
        );
        assert_eq!(dashboard_prefix("/user/alice/"), "/user/alice/dask");
        assert!(server_only("JUPYTERHUB_API_TOKEN") && server_only("JPY_API_TOKEN"));
        assert!(!server_only("AWS_SECRET_ACCESS_KEY") && !server_only("PATH"));
    }

    #[test]
    fn tls_files_are_private_and_fresh_per_cluster() {
        let dir = std::env::temp_dir().join(format!("atelier-dask-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = write_tls(&dir, "alice").unwrap();
        for path in [&files.ca, &files.cert, &files.key] {
            let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let ca = std::fs::read_to_string(&files.ca).unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
        assert!(
            std::fs::read_to_string(&files.key)
                .unwrap()
                .contains("PRIVATE KEY-----")
        );
        // Never overwritten in place.
        assert!(write_tls(&dir, "alice").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        // Another cluster, another CA.
        assert_ne!(make_tls("a").unwrap().0, make_tls("a").unwrap().0);
    }

    #[test]
    fn dask_beside_the_server() {
        let dir = std::env::temp_dir().join(format!("atelier-dask-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("dask"), "").unwrap();
        let server = dir.join("jupyterhub-singleuser").display().to_string();
        assert_eq!(
            dask_program(&server),
            dir.join("dask").display().to_string()
        );
        assert_eq!(dask_program("jupyterhub-singleuser"), "dask");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(dask_program(&server), "dask");
    }
}
