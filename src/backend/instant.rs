//! `instant`: a backend whose servers are ready the moment they are asked for, and are nothing.
//!
//! It is the counterpart of the instant spawner JupyterHub's own benchmarks and tests use (a
//! `Spawner` whose `start` returns a URL at once): with it, a start through the hub measures the
//! hub alone (its checks, its rows, its progress events, its answers), not a process or a pod.
//! The benchmarks (`examples/bench_hub.rs`, `bench/hub`) and the resilience tests drive it; the
//! `atelier` command never offers it, since nothing runs behind its servers.
//!
//! Every server's URL is the configured `target` (an address nothing needs to answer at, unless
//! a test puts a server there). The handle carries that URL, so a hub restarted on the same
//! database finds its servers running again, as a local backend finds its processes.

use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{BackendError, BackendStatus, ProgressEvent, SpawnRequest, Spawned, WorkspaceBackend};

/// The instant backend (see the module's documentation).
#[derive(Clone, Debug)]
pub struct InstantBackend {
    target: String,
}

impl InstantBackend {
    /// Servers that all "run" at `target` (e.g. `http://127.0.0.1:9`).
    pub fn new(target: impl Into<String>) -> InstantBackend {
        InstantBackend {
            target: target.into(),
        }
    }
}

impl Default for InstantBackend {
    /// Servers at the discard port of loopback: nothing answers there.
    fn default() -> InstantBackend {
        InstantBackend::new("http://127.0.0.1:9")
    }
}

fn url_of(handle: &Value) -> Result<String, BackendError> {
    handle
        .get("instant")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| BackendError::BadHandle(handle.to_string()))
}

impl WorkspaceBackend for InstantBackend {
    fn kind(&self) -> &'static str {
        "instant"
    }

    fn start<'a>(
        &'a self,
        request: SpawnRequest,
        progress: mpsc::Sender<ProgressEvent>,
    ) -> BoxFuture<'a, Result<Spawned, BackendError>> {
        Box::pin(async move {
            let _ = request;
            // One event, as a real backend sends at least one before it is ready; a full
            // channel (nobody reading) is not an error.
            let _ = progress.try_send(ProgressEvent {
                progress: 50,
                message: "Server ready at once (instant backend)".to_owned(),
                ready: false,
                failed: false,
            });
            Ok(Spawned {
                url: self.target.clone(),
                handle: json!({ "instant": self.target }),
            })
        })
    }

    fn stop<'a>(&'a self, handle: &'a Value) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move { url_of(handle).map(|_| ()) })
    }

    fn poll<'a>(&'a self, handle: &'a Value) -> BoxFuture<'a, Result<BackendStatus, BackendError>> {
        Box::pin(async move { url_of(handle).map(|url| BackendStatus::Running { url }) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_at_once_and_finds_its_servers_again() {
        let backend = InstantBackend::new("http://127.0.0.1:4321");
        let (tx, mut rx) = mpsc::channel(4);
        let request: SpawnRequest = serde_json::from_value(json!({
            "user": "ada", "server": "", "groups": [], "env": {}, "user_options": {}
        }))
        .expect("request");
        let spawned = backend.start(request, tx).await.expect("start");
        assert_eq!(spawned.url, "http://127.0.0.1:4321");
        assert!(rx.recv().await.is_some(), "one progress event");
        assert_eq!(
            backend.poll(&spawned.handle).await.expect("poll"),
            BackendStatus::Running {
                url: "http://127.0.0.1:4321".to_owned()
            }
        );
        backend.stop(&spawned.handle).await.expect("stop");
        assert!(matches!(
            backend.poll(&json!({"pid": 1})).await,
            Err(BackendError::BadHandle(_))
        ));
    }
}
