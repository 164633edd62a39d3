//! The Kubernetes client, as the operator and the hub's kubernetes backend build it.

use std::task::{Context, Poll};

use anyhow::Context as _;
use http::{HeaderValue, Method, Request, Uri, header};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::client::ClientBuilder;

/// A client from the environment (in-cluster or kubeconfig) sending `User-Agent: <user_agent>`
/// (the operator's: `crate::operator::OPERATOR_USER_AGENT`; the hub's kubernetes backend has its own).
pub async fn kube_client(user_agent: &'static str) -> anyhow::Result<Client> {
    Ok(Client::try_from(kube_config(user_agent).await?)?)
}

/// [`kube_client`] that calls `on_request(verb, resource)` ([`request_labels`]) for every
/// request it sends, before sending it: the operator's request counter.
pub async fn counting_kube_client<F>(
    user_agent: &'static str,
    on_request: F,
) -> anyhow::Result<Client>
where
    F: Fn(&'static str, String) + Clone + Send + 'static,
{
    let builder = ClientBuilder::try_from(kube_config(user_agent).await?)?;
    Ok(builder.with_layer(&CountRequests(on_request)).build())
}

async fn kube_config(user_agent: &'static str) -> anyhow::Result<kube::Config> {
    let mut config = kube::Config::infer()
        .await
        .context("no Kubernetes configuration (in-cluster or KUBECONFIG)")?;
    config
        .headers
        .push((header::USER_AGENT, HeaderValue::from_static(user_agent)));
    Ok(config)
}

/// A tower layer on the kube client's stack (kube's `ClientBuilder::with_layer`; kube-rs/kube
/// `examples/custom_client.rs` stacks its own layers the same way) that reports each request's
/// [`request_labels`] to a callback. It sits outside kube's own layers, so it counts what the
/// caller asked for, once per request.
#[derive(Clone, Debug)]
pub struct CountRequests<F>(pub F);

impl<S, F: Clone> tower::Layer<S> for CountRequests<F> {
    type Service = Counted<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        Counted {
            inner,
            on_request: self.0.clone(),
        }
    }
}

/// The service of [`CountRequests`].
#[derive(Clone, Debug)]
pub struct Counted<S, F> {
    inner: S,
    on_request: F,
}

impl<S, F, B> tower::Service<Request<B>> for Counted<S, F>
where
    S: tower::Service<Request<B>>,
    F: Fn(&'static str, String),
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (verb, resource) = request_labels(request.method(), request.uri());
        (self.on_request)(verb, resource);
        self.inner.call(request)
    }
}

/// The API server's verb and the resource (with its subresource: `workspaces/status`) of a
/// request, as the API server's audit log and `apiserver_request_total` label it: `get`, `list`,
/// `watch`, `create`, `update`, `patch`, `delete`, `deletecollection` (k8s.io/apiserver
/// `pkg/endpoints/request/requestinfo.go`). A path outside `/api` and `/apis` (discovery of
/// `/version`, say) is resource `-`, verb the method in lower case.
pub fn request_labels(method: &Method, uri: &Uri) -> (&'static str, String) {
    let parts: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let rest: &[&str] = match parts.as_slice() {
        ["api", _version, rest @ ..] | ["apis", _, _version, rest @ ..] => rest,
        _ => &[],
    };
    // `namespaces/<ns>/<resource>/...`, unless it is a Namespace (or its status/finalize).
    let rest = match rest {
        ["namespaces", _ns, resource, tail @ ..]
            if !(tail.is_empty() && matches!(*resource, "status" | "finalize")) =>
        {
            &rest[2..]
        }
        other => other,
    };
    let (resource, named) = match rest {
        [] => {
            let verb = match *method {
                Method::GET => "get",
                Method::POST => "post",
                Method::PUT => "put",
                Method::PATCH => "patch",
                Method::DELETE => "delete",
                _ => "other",
            };
            return (verb, "-".to_owned());
        }
        [resource] => ((*resource).to_owned(), false),
        [resource, _name] => ((*resource).to_owned(), true),
        [resource, _name, sub, ..] => (format!("{resource}/{sub}"), true),
    };
    let watch = uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let verb = match (method, named) {
        (&Method::GET, true) if watch => "watch",
        (&Method::GET, true) => "get",
        (&Method::GET, false) if watch => "watch",
        (&Method::GET, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "other",
    };
    (verb, resource)
}

/// A Kubernetes time as chrono's.
pub fn chrono_time(t: &Time) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

/// A chrono time as Kubernetes', truncated to seconds (what the API server stores).
pub fn kube_time(t: &chrono::DateTime<chrono::Utc>) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(t.timestamp()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(method: Method, uri: &str) -> (&'static str, String) {
        request_labels(&method, &uri.parse().expect("a URI"))
    }

    #[test]
    fn requests_are_labelled_with_the_api_servers_verb_and_resource() {
        let cases = [
            (
                Method::GET,
                "/apis/atelier.dev/v1alpha1/workspaces?limit=500",
                "list",
                "workspaces",
            ),
            (
                Method::GET,
                "/apis/atelier.dev/v1alpha1/workspaces?watch=true&resourceVersion=7",
                "watch",
                "workspaces",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/team/pods?labelSelector=a%3Db",
                "list",
                "pods",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/team/services/ws-alice",
                "get",
                "services",
            ),
            (
                Method::PATCH,
                "/apis/atelier.dev/v1alpha1/namespaces/team/workspaces/alice/status?fieldManager=x",
                "patch",
                "workspaces/status",
            ),
            (
                Method::PATCH,
                "/api/v1/namespaces/atelier-u-alice",
                "patch",
                "namespaces",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/atelier-u-alice/status",
                "get",
                "namespaces/status",
            ),
            (
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/team/events",
                "create",
                "events",
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/team/pods/ws-alice",
                "delete",
                "pods",
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/team/pods",
                "deletecollection",
                "pods",
            ),
            (
                Method::PUT,
                "/apis/coordination.k8s.io/v1/namespaces/a/leases/l",
                "update",
                "leases",
            ),
            (Method::GET, "/version", "get", "-"),
        ];
        for (method, uri, verb, resource) in cases {
            assert_eq!(labels(method, uri), (verb, resource.to_owned()), "{uri}");
        }
    }

    #[tokio::test]
    async fn the_layer_reports_each_request_before_sending_it() {
        use std::sync::{Arc, Mutex};
        use tower::{Layer as _, Service as _};
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = {
            let seen = seen.clone();
            move |verb: &'static str, resource: String| {
                seen.lock()
                    .expect("lock")
                    .push(format!("{verb} {resource}"));
            }
        };
        let (mock, mut handle) = tower_test::mock::pair::<Request<()>, ()>();
        let mut service = CountRequests(record).layer(mock);
        handle.allow(2);
        let requests = [
            ("GET", "/api/v1/namespaces/a/secrets?labelSelector=x"),
            ("PATCH", "/api/v1/namespaces/a/pods/p"),
        ];
        for (method, uri) in requests {
            let request = Request::builder()
                .method(method)
                .uri(uri)
                .body(())
                .expect("a request");
            std::future::poll_fn(|cx| service.poll_ready(cx))
                .await
                .expect("ready");
            let response = service.call(request);
            let (_, send) = handle.next_request().await.expect("forwarded");
            send.send_response(());
            response.await.expect("answered");
        }
        assert_eq!(*seen.lock().expect("lock"), ["list secrets", "patch pods"]);
    }
}
