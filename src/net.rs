//! Reachability of the network endpoints a workspace is given (a data source's S3 endpoint):
//! one TCP connection with a timeout, and a cache of the answers for the operator, so that a
//! reconciliation does not connect again for every Workspace naming the same endpoint.
//!
//! The hub probes before each start on the local backend (`hub::spawner`); the operator before
//! creating a Workspace's pod (`operator::workspace::reconcile::dereference`). A running
//! workspace is never stopped for an endpoint that stopped answering: a probe only guards a
//! start, where a clear error beats a kernel that hangs on its first read.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long a probe waits for the TCP connection.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long [`Probes`] trusts an answer.
pub const PROBE_TTL: Duration = Duration::from_secs(60);

/// Connects to the host and port of `url` within `timeout` (when the URL names no port: 80 for
/// `http`, else 443, as `policy::data` takes a URL without a scheme for https). The error says
/// why, in a few words: `connection refused`, `no connection within 2 s`, `not a URL (..)`.
pub async fn probe(url: &str, timeout: Duration) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("not a URL ({e})"))?;
    let host = uri.host().ok_or("no host in the URL")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let https = uri
        .scheme_str()
        .is_none_or(|s| s.eq_ignore_ascii_case("https"));
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err("connection refused".to_owned())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no connection within {} s", timeout.as_secs())),
    }
}

/// An answer of [`probe`] and when it was given, by URL.
type Answers = HashMap<String, (Result<(), String>, Instant)>;

/// The answers of [`probe`] by URL, each trusted for a while ([`PROBE_TTL`] by default).
#[derive(Debug)]
pub struct Probes {
    ttl: Duration,
    answers: Mutex<Answers>,
}

impl Default for Probes {
    fn default() -> Probes {
        Probes::with_ttl(PROBE_TTL)
    }
}

impl Probes {
    /// Probes whose answers are trusted for `ttl`.
    pub fn with_ttl(ttl: Duration) -> Probes {
        Probes {
            ttl,
            answers: Mutex::default(),
        }
    }

    fn answers(&self) -> std::sync::MutexGuard<'_, Answers> {
        self.answers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `url` answered within [`PROBE_TIMEOUT`], from the cache when the last probe is
    /// younger than the TTL.
    pub async fn check(&self, url: &str) -> Result<(), String> {
        if let Some(answer) = self.cached(url) {
            return answer;
        }
        let answer = probe(url, PROBE_TIMEOUT).await;
        let ttl = self.ttl;
        let mut answers = self.answers();
        answers.retain(|_, (_, at)| at.elapsed() < ttl);
        answers.insert(url.to_owned(), (answer.clone(), Instant::now()));
        answer
    }

    fn cached(&self, url: &str) -> Option<Result<(), String>> {
        self.answers()
            .get(url)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(answer, _)| answer.clone())
    }

    /// How many answers are cached.
    pub fn len(&self) -> usize {
        self.answers().len()
    }

    /// Whether no answer is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_probe_says_why_an_endpoint_does_not_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let open = format!("http://{}", listener.local_addr().expect("addr"));
        assert_eq!(probe(&open, PROBE_TIMEOUT).await, Ok(()));
        // A port nobody listens on: bind one, note it, close it.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            format!("http://{}", l.local_addr().expect("addr"))
        };
        assert_eq!(
            probe(&closed, PROBE_TIMEOUT).await,
            Err("connection refused".to_owned())
        );
        assert!(
            probe("no host here", PROBE_TIMEOUT)
                .await
                .is_err_and(|e| e.starts_with("not a URL"))
        );
    }

    #[tokio::test]
    async fn answers_are_cached_for_their_ttl() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let probes = Probes::with_ttl(Duration::from_millis(300));
        assert_eq!(probes.check(&url).await, Ok(()));
        // The endpoint goes away: the cached answer stands until the TTL ends.
        drop(listener);
        assert_eq!(probes.check(&url).await, Ok(()));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            probes.check(&url).await,
            Err("connection refused".to_owned())
        );
        assert_eq!(probes.len(), 1);
    }
}
