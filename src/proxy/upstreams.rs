//! The hubs behind the proxy: `--default-target` names one hub or several (comma-separated, all
//! on one database). Requests outside `/user/` go to each in turn (round robin), skipping a hub
//! found down for [`DOWN_FOR`]; after that it gets requests again, which is its re-probe.
//!
//! A request whose connection a hub refused (or reset before the request was written: hyper's
//! client reports both as connect errors) is sent to the next hub: safe, because the refusing
//! hub never saw any of it. A single target is tried once more instead: behind a Kubernetes
//! Service (the Helm chart's `hub` Service with `hub.replicas` > 1) the new connection most likely
//! reaches another pod, and the Service drops a dead pod once its readiness probe fails. The
//! body is taken back unread ([`RequestBody::reclaimable`]), so
//! nothing is buffered; a request whose body a hub had begun to read is not retried, nor is one
//! that failed after its connection was made (it was in flight on that hub).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use super::Error;
use super::body::{Reclaim, RequestBody};
use super::routes::Upstream;

/// How long a hub that refused a connection is left out of the rotation.
pub const DOWN_FOR: Duration = Duration::from_secs(2);

/// The hubs of `--default-target`, in turn.
pub(crate) struct Hubs {
    hubs: Vec<Hub>,
    next: AtomicUsize,
}

struct Hub {
    upstream: Arc<Upstream>,
    /// Until when it is left out (it refused a connection).
    down_until: Mutex<Option<Instant>>,
}

impl Hub {
    fn is_down(&self, now: Instant) -> bool {
        self.down_until
            .lock()
            .expect("hub lock poisoned")
            .is_some_and(|until| now < until)
    }
}

impl Hubs {
    /// Parses `targets`: one `http://host:port` or several, comma-separated.
    pub(crate) fn parse(targets: &str) -> Result<Hubs, Error> {
        let hubs = targets
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| {
                Ok(Hub {
                    upstream: Arc::new(Upstream::parse(t)?),
                    down_until: Mutex::new(None),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        if hubs.is_empty() {
            return Err(Error::InvalidTarget {
                target: targets.to_owned(),
                reason: "no hub",
            });
        }
        Ok(Hubs {
            hubs,
            next: AtomicUsize::new(0),
        })
    }

    /// How many hubs there are.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.hubs.len()
    }

    /// The next hub in turn that is not down (when all are, the next in turn anyway).
    pub(crate) fn pick(&self) -> Arc<Upstream> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let n = self.hubs.len();
        (0..n)
            .map(|i| &self.hubs[(start + i) % n])
            .find(|hub| !hub.is_down(now))
            .unwrap_or(&self.hubs[start % n])
            .upstream
            .clone()
    }

    /// Leaves `upstream` out for [`DOWN_FOR`].
    pub(crate) fn mark_down(&self, upstream: &Upstream) {
        if let Some(hub) = self.hubs.iter().find(|h| *h.upstream == *upstream) {
            *hub.down_until.lock().expect("hub lock poisoned") = Some(Instant::now() + DOWN_FOR);
            if self.hubs.len() > 1 {
                tracing::warn!(hub = %upstream.origin, "hub refused a connection: left out for a while");
            }
        }
    }

    /// The other hubs than `failed`, those not down first.
    fn others(&self, failed: &Upstream) -> Vec<Arc<Upstream>> {
        let now = Instant::now();
        let (mut up, down): (Vec<&Hub>, Vec<&Hub>) = self
            .hubs
            .iter()
            .filter(|h| *h.upstream != *failed)
            .partition(|h| !h.is_down(now));
        up.extend(down);
        up.into_iter().map(|h| h.upstream.clone()).collect()
    }

    /// After `failed` refused the connection of a request: marks it down and sends the request
    /// (its body taken back unread through `reclaim`) to the other hubs in turn until one takes
    /// it; with a single target, to that target once more. `None` when the body was read.
    pub(crate) async fn failover(
        &self,
        client: &Client<HttpConnector, RequestBody>,
        failed: &Upstream,
        head: (Method, HeaderMap),
        original: Option<&PathAndQuery>,
        reclaim: Reclaim,
    ) -> Option<Result<Response<Incoming>, hyper_util::client::legacy::Error>> {
        self.mark_down(failed);
        let mut others = self.others(failed);
        if others.is_empty() {
            // One target: once more, which through a Kubernetes Service (several hub pods
            // behind one address) most likely reaches another pod.
            others = self
                .hubs
                .iter()
                .filter(|h| *h.upstream == *failed)
                .map(|h| h.upstream.clone())
                .collect();
        }
        let (method, headers) = head;
        let mut body = reclaim.take()?;
        let mut last = None;
        for hub in others {
            let (sent, reclaim) = RequestBody::reclaimable(body);
            let mut request = Request::new(sent);
            *request.method_mut() = method.clone();
            *request.uri_mut() = hub.uri(original);
            *request.version_mut() = Version::HTTP_11;
            *request.headers_mut() = headers.clone();
            match client.request(request).await {
                Ok(resp) => return Some(Ok(resp)),
                Err(e) if e.is_connect() => {
                    self.mark_down(&hub);
                    match reclaim.take() {
                        Some(unread) => body = unread,
                        None => return Some(Err(e)),
                    }
                    last = Some(e);
                }
                Err(e) => return Some(Err(e)),
            }
        }
        last.map(Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_one_or_several_hubs() {
        assert_eq!(Hubs::parse("http://127.0.0.1:8081").unwrap().len(), 1);
        let hubs = Hubs::parse("http://127.0.0.1:8081, http://127.0.0.1:8082,").unwrap();
        assert_eq!(hubs.len(), 2);
        assert!(Hubs::parse("").is_err());
        assert!(Hubs::parse("http://a:1,ftp://b:2").is_err());
    }

    #[test]
    fn round_robin_skips_a_hub_that_is_down() {
        let hubs = Hubs::parse("http://a:1,http://b:2,http://c:3").unwrap();
        let picked: Vec<String> = (0..6).map(|_| hubs.pick().origin.clone()).collect();
        assert_eq!(picked, ["http://a:1", "http://b:2", "http://c:3"].repeat(2));
        assert_eq!(hubs.pick().origin, "http://a:1");
        let b = Upstream::parse("http://b:2").unwrap();
        hubs.mark_down(&b);
        for _ in 0..6 {
            assert_ne!(hubs.pick().origin, "http://b:2");
        }
        assert_eq!(
            hubs.others(&Upstream::parse("http://a:1").unwrap())
                .iter()
                .map(|u| u.origin.as_str())
                .collect::<Vec<_>>(),
            ["http://c:3", "http://b:2"]
        );
    }

    #[test]
    fn all_down_still_picks_one() {
        let hubs = Hubs::parse("http://a:1,http://b:2").unwrap();
        hubs.mark_down(&Upstream::parse("http://a:1").unwrap());
        hubs.mark_down(&Upstream::parse("http://b:2").unwrap());
        let origins: Vec<String> = (0..2).map(|_| hubs.pick().origin.clone()).collect();
        assert_eq!(origins, ["http://a:1", "http://b:2"]);
    }
}
