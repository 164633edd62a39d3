//! A real `dask-gateway-server` (PyPI `dask-gateway-server[local]`, pinned in
//! `.ci/peers-requirements.txt`) as a JupyterHub service of a hub: its local backend
//! (`UnsafeLocalBackend`: scheduler and workers are processes of the gateway's user, from the
//! peers venv's `dask`), `JupyterHubAuthenticator` asking the hub's API who a token is, and its
//! own proxy serving the HTTP API under `/services/dask-gateway` (what the hub's proxy routes
//! there) and the schedulers' TLS connections on a TCP port. Everything on 127.0.0.1, free
//! ports; the process leads its own process group, killed when dropped.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::launch;
use super::stack::{Proc, ProcInfo, free_port, kill_leftovers, processes};

/// The service's name, as daskhub registers it.
pub const SERVICE: &str = "dask-gateway";
/// Where the hub's proxy serves it (JupyterHub's `/services/<name>/`), and the prefix the
/// gateway's own proxy serves under (daskhub's `gateway.prefix`).
pub const PREFIX: &str = "/services/dask-gateway";

/// A running `dask-gateway-server`.
pub struct DaskGateway {
    pub proc: Proc,
    /// The gateway's HTTP proxy: the service's URL, `http://127.0.0.1:<port>`.
    pub http_port: u16,
    /// The schedulers' proxy (TLS, routed by SNI): `gateway://127.0.0.1:<port>`.
    pub tcp_port: u16,
    /// Where clusters' working directories (and the scheduler and worker processes' cwd) are.
    pub clusters_dir: PathBuf,
}

impl DaskGateway {
    /// Starts `dask-gateway-server` from `venv` in `dir` (config, log and clusters there),
    /// authenticating with the hub API `hub_api` (`http://…/hub/api`) with the service token
    /// `token`, and requiring `access:services!service=dask-gateway` of its users
    /// (`jupyterhub_service_name`). Waits until its API answers on its own proxy.
    pub async fn start(venv: &Path, dir: &Path, hub_api: &str, token: &str) -> DaskGateway {
        std::fs::create_dir_all(dir).expect("gateway dir");
        let (api_port, http_port, tcp_port) = (free_port(), free_port(), free_port());
        let clusters_dir = dir.join("clusters");
        let dask = venv.join("bin/dask");
        let config = format!(
            r#"c.DaskGateway.address = "127.0.0.1:{api_port}"
c.DaskGateway.backend_class = "dask_gateway_server.backends.local.UnsafeLocalBackend"
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.JupyterHubAuthenticator"
c.JupyterHubAuthenticator.jupyterhub_api_url = "{hub_api}"
c.JupyterHubAuthenticator.jupyterhub_service_name = "{SERVICE}"
c.Proxy.address = "127.0.0.1:{http_port}"
c.Proxy.tcp_address = "127.0.0.1:{tcp_port}"
c.Proxy.prefix = "{PREFIX}"
c.UnsafeLocalBackend.clusters_directory = "{clusters}"
c.LocalClusterConfig.scheduler_cmd = ["{dask}", "scheduler"]
c.LocalClusterConfig.worker_cmd = ["{dask}", "worker"]
c.LocalClusterConfig.worker_cores = 1
c.LocalClusterConfig.worker_memory = "1 G"
c.LocalClusterConfig.cluster_max_workers = 4
"#,
            clusters = clusters_dir.display(),
            dask = dask.display(),
        );
        let config_path = dir.join("dask_gateway_config.py");
        std::fs::write(&config_path, config).expect("write the gateway config");
        let mut command = Command::new(venv.join("bin/dask-gateway-server"));
        command
            .arg("-f")
            .arg(&config_path)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir)
            // Its token for the hub API, as JupyterHub hands a service its token.
            .env("JUPYTERHUB_API_TOKEN", token)
            .process_group(0);
        let health = format!("http://127.0.0.1:{http_port}{PREFIX}/api/health");
        let proc = launch::spawn_answering(
            "dask-gateway",
            command,
            dir,
            &health,
            Duration::from_secs(60),
        )
        .await;
        DaskGateway {
            proc,
            http_port,
            tcp_port,
            clusters_dir,
        }
    }

    /// The service's URL, as the hub registers it: the gateway's own HTTP proxy.
    pub fn service_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Its API's base, on its own proxy.
    pub fn url(&self) -> String {
        format!("{}{PREFIX}", self.service_url())
    }

    /// `DASK_GATEWAY__PROXY_ADDRESS`: where clients reach the schedulers.
    pub fn proxy_address(&self) -> String {
        format!("gateway://127.0.0.1:{}", self.tcp_port)
    }

    /// Stops the gateway and everything it started: its process group (the server, its Go
    /// proxy), then the schedulers and workers of clusters still up (the local backend starts
    /// each in a session of its own, working in its cluster's directory). Returns how many of
    /// those were left.
    pub fn stop(&mut self) -> usize {
        self.proc.kill_group();
        kill_leftovers(&self.clusters_dir.to_string_lossy())
    }

    /// The live scheduler and worker processes of the gateway's clusters.
    pub fn cluster_processes(&self) -> Vec<ProcInfo> {
        let dir = self.clusters_dir.to_string_lossy();
        processes()
            .into_iter()
            .filter(|p| p.alive() && p.belongs_to(&dir))
            .collect()
    }
}

impl Drop for DaskGateway {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
