//! One request: route, authorize, forward (streaming both ways), or answer in the proxy's name.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::auth::Access;
use super::body::{RequestBody, ResponseBody};
use super::paths::dashboard_server;
use super::paths::user_host_credentials;
use super::paths::{
    SESSION_COOKIE, credentials, is_browser_navigation, is_upgrade, login_url, parse_user_path,
    path_and_query, remove_hop_by_hop, server_label, spawn_url, strip_session_cookie,
};
use super::routes::{Resolved, SERVICES_PREFIX, Upstream, dashboard_owner};
use super::splice::splice;
use super::{ConnCtx, HEALTH_PATH, Phase, Proxy};
use crate::config::user_domain::{HostKind, user_label};
use crate::policy::names::service_prefix;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Where a forwarded request goes.
enum Dest {
    /// The default target (the hub).
    Hub,
    /// A hub service with a URL; its cookies stay under `prefix`.
    Service { name: String, prefix: String },
    /// A user's server.
    User {
        user: String,
        server: String,
        /// The route came from the cache: a refused connection is worth a fresh lookup.
        cached: bool,
        browser: bool,
        /// Prefix of links to the hub (the public URL on a user's host, else empty).
        hub_base: String,
    },
}

impl Proxy {
    /// Answers one request.
    pub(crate) async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        ctx: ConnCtx,
    ) -> Response<ResponseBody> {
        if req.uri().path() == HEALTH_PATH {
            return self.health();
        }
        let browser = is_browser_navigation(req.method(), req.headers());
        // With a user domain: which host the request is for, and whether that is the right one.
        let on_user_host = match self.check_host(&req, browser) {
            Ok(on_user_host) => on_user_host,
            Err(refusal) => return *refusal,
        };
        if req.uri().path().starts_with(SERVICES_PREFIX)
            && let Some((service, upstream)) = self
                .services
                .iter()
                .find(|(s, _)| s.matches(req.uri().path()))
        {
            // As configurable-http-proxy: no check here, the service checks its callers.
            let dest = Dest::Service {
                name: service.name.clone(),
                prefix: service.prefix(),
            };
            let upstream = upstream.clone();
            return self.forward(req, &ctx, &upstream, dest).await;
        }
        let Some(user_path) = parse_user_path(req.uri().path()) else {
            let hub = self.hubs.pick();
            return self.forward(req, &ctx, &hub, Dest::Hub).await;
        };
        let user = user_path.user.into_owned();
        let segment = user_path.segment.map(std::borrow::Cow::into_owned);
        // Absolute links to the hub from a user's host; paths otherwise.
        let hub_base = if on_user_host {
            self.config.public_url.as_str()
        } else {
            ""
        };

        // Without any credential nothing else is worth asking. On a user's host, a browser's
        // page load without one goes to the server, which logs it in through the hub's OAuth
        // (the hub's cookie is not sent there); other requests need a credential.
        let mut gate = self.auth.as_ref();
        let creds = match &self.auth {
            Some(_) => {
                let creds = if on_user_host {
                    user_host_credentials(req.uri(), req.headers())
                } else {
                    credentials(req.uri(), req.headers())
                };
                if creds.is_empty() {
                    if on_user_host && browser {
                        gate = None;
                    } else {
                        return unauthenticated(browser, path_and_query(req.uri()));
                    }
                }
                creds
            }
            None => Vec::new(),
        };
        // `/user/<name>/[<server>/]dask/…`: the server's Dask dashboard, when it has one.
        let dashboard = dashboard_server(req.uri().path()).map(std::borrow::Cow::into_owned);
        let resolved = match &dashboard {
            Some(server) => match self.routes.resolve_dashboard(&user, server).await {
                Ok(Some(resolved)) => Ok(resolved),
                Ok(None) => self.routes.resolve(&user, segment.as_deref()).await,
                Err(e) => Err(e),
            },
            None => self.routes.resolve(&user, segment.as_deref()).await,
        };
        // A dashboard is the server's owner's as the server is; it has no login of its own, so
        // it never goes without a credential the proxy checks.
        let owner_server = dashboard_owner(resolved.as_ref().map_or("", |r| r.server()));
        if owner_server.is_some() && self.auth.is_some() && gate.is_none() {
            return unauthenticated(browser, path_and_query(req.uri()));
        }
        let resolved = match resolved {
            Ok(resolved) => resolved,
            Err(e) => {
                tracing::error!(error = %e, user, "route lookup failed");
                return json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the routing table is unavailable",
                );
            }
        };
        if let Some(gate) = gate {
            let server = dashboard_owner(resolved.server()).unwrap_or(resolved.server());
            match gate.check(&creds, &user, server).await {
                Ok(Access::Allowed) => {}
                Ok(Access::Forbidden) => {
                    return forbidden(browser, &server_label(&user, server), hub_base);
                }
                // A stale login cookie of the server: the server logs the browser in again.
                Ok(Access::Unauthenticated)
                    if on_user_host && browser && dashboard_owner(resolved.server()).is_none() => {}
                Ok(Access::Unauthenticated) => {
                    return unauthenticated(browser, path_and_query(req.uri()));
                }
                Err(e) => {
                    tracing::error!(error = %e, user, "authorization failed");
                    return json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "authorization is unavailable",
                    );
                }
            }
        }
        match resolved {
            Resolved::Down { server } => {
                not_running(browser, &user, &server, path_and_query(req.uri()), hub_base)
            }
            Resolved::Up {
                server,
                upstream,
                cached,
            } => {
                let dest = Dest::User {
                    user,
                    server,
                    cached,
                    browser,
                    hub_base: hub_base.to_owned(),
                };
                self.forward(req, &ctx, &upstream, dest).await
            }
        }
    }

    /// With a user domain: `Ok(true)` for a request on a user's host for that user's server,
    /// `Ok(false)` for a request on the hub's host for anything but a user's server, and the
    /// refusal for everything else (a server on another user's host or on the hub's host, the
    /// hub on a user's host, an unknown host under the domain). Without one: `Ok(false)`.
    fn check_host(
        &self,
        req: &Request<Incoming>,
        browser: bool,
    ) -> Result<bool, Box<Response<ResponseBody>>> {
        let Some(domain) = &self.config.user_domain else {
            return Ok(false);
        };
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or("");
        let user_path = parse_user_path(req.uri().path());
        match (domain.classify(host), user_path) {
            (HostKind::Hub, None) => Ok(false),
            (HostKind::Hub, Some(p)) => {
                // A link of path mode: a page load goes to the server's own host.
                match domain.origin(&self.config.public_url, &p.user) {
                    Ok(origin) if browser => Err(Box::new(redirect(&format!(
                        "{origin}{}",
                        path_and_query(req.uri())
                    )))),
                    _ => Err(Box::new(json_error(
                        StatusCode::NOT_FOUND,
                        "users' servers are served on their own hosts",
                    ))),
                }
            }
            (HostKind::User(label), Some(p)) if user_label(&p.user).is_ok_and(|l| l == label) => {
                Ok(true)
            }
            (HostKind::User(_), Some(_)) => Err(Box::new(json_error(
                StatusCode::NOT_FOUND,
                "this server is not served on this host",
            ))),
            (HostKind::User(_), None) => Err(Box::new(json_error(
                StatusCode::NOT_FOUND,
                "the hub is not served on users' hosts",
            ))),
            (HostKind::Unknown, _) => Err(Box::new(json_error(
                StatusCode::NOT_FOUND,
                "no one is served on this host",
            ))),
        }
    }

    fn health(&self) -> Response<ResponseBody> {
        json_response(
            StatusCode::OK,
            serde_json::json!({"status": "ok", "routes": self.routes.len()}),
        )
    }

    /// Forwards `req` to `upstream`, and on a refused connection to a cached route, once more to
    /// where a fresh lookup says the server now is.
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        ctx: &ConnCtx,
        upstream: &Upstream,
        dest: Dest,
    ) -> Response<ResponseBody> {
        let upgrade = is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let original = parts.uri.path_and_query().cloned();
        prepare_headers(
            &mut parts.headers,
            ctx.remote.ip(),
            upgrade,
            !matches!(dest, Dest::Hub),
        );
        let retry = matches!(dest, Dest::User { cached: true, .. } | Dest::Hub)
            .then(|| (parts.method.clone(), parts.headers.clone()));
        parts.uri = upstream.uri(original.as_ref());
        parts.version = Version::HTTP_11;
        let (body, reclaim) = if retry.is_some() {
            let (body, reclaim) = RequestBody::reclaimable(body);
            (body, Some(reclaim))
        } else {
            (RequestBody::owned(body), None)
        };

        let cookie_prefix = match &dest {
            Dest::Hub => None,
            Dest::Service { prefix, .. } => Some(prefix.clone()),
            Dest::User { user, server, .. } => Some(service_prefix(user, server)),
        };
        let error = match self.client.request(Request::from_parts(parts, body)).await {
            Ok(resp) => return respond(resp, client_upgrade, ctx, cookie_prefix.as_deref()),
            Err(e) => e,
        };
        let (user, server, browser, hub_base) = match dest {
            Dest::User {
                user,
                server,
                browser,
                hub_base,
                ..
            } => (user, server, browser, hub_base),
            Dest::Service { name, .. } => {
                tracing::warn!(error = %error, service = %name, "service did not answer");
                return json_error(
                    StatusCode::BAD_GATEWAY,
                    &format!("service {name} did not answer"),
                );
            }
            Dest::Hub => {
                let mut error = error;
                if let (Some(head), Some(reclaim), true) = (retry, reclaim, error.is_connect())
                    && let Some(result) = (self.hubs)
                        .failover(&self.client, upstream, head, original.as_ref(), reclaim)
                        .await
                {
                    match result {
                        Ok(resp) => return respond(resp, client_upgrade, ctx, None),
                        Err(e) => error = e,
                    }
                }
                tracing::warn!(error = %error, target = %upstream.origin, "the hub did not answer");
                return json_error(StatusCode::BAD_GATEWAY, "the hub is not reachable");
            }
        };
        let label = server_label(&user, &server);
        let bad_gateway = || {
            json_error(
                StatusCode::BAD_GATEWAY,
                &format!("server {label} did not answer"),
            )
        };
        let (Some((method, headers)), Some(reclaim), true) = (retry, reclaim, error.is_connect())
        else {
            tracing::warn!(error = %error, server = %label, "upstream failed");
            return bad_gateway();
        };
        // A stale route, maybe: the server stopped, or moved.
        let fresh = match self.routes.lookup(&user, &server).await {
            Ok(Some(fresh)) if fresh.origin != upstream.origin => fresh,
            Ok(Some(_)) => {
                tracing::warn!(error = %error, server = %label, "upstream refused the connection");
                return bad_gateway();
            }
            Ok(None) => {
                let original = original.as_ref().map_or("/", PathAndQuery::as_str);
                return not_running(browser, &user, &server, original, &hub_base);
            }
            Err(e) => {
                tracing::error!(error = %e, server = %label, "route lookup failed");
                return json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the routing table is unavailable",
                );
            }
        };
        let Some(body) = reclaim.take() else {
            return bad_gateway();
        };
        let mut retry = Request::new(RequestBody::owned(body));
        *retry.method_mut() = method;
        *retry.uri_mut() = fresh.uri(original.as_ref());
        *retry.version_mut() = Version::HTTP_11;
        *retry.headers_mut() = headers;
        match self.client.request(retry).await {
            Ok(resp) => respond(resp, client_upgrade, ctx, cookie_prefix.as_deref()),
            Err(e) => {
                tracing::warn!(error = %e, server = %label, "upstream failed after a fresh lookup");
                bad_gateway()
            }
        }
    }
}

/// The headers sent upstream: hop-by-hop ones dropped (the handshake's kept for an upgrade),
/// `X-Forwarded-*` added, the hub's session cookie withheld (`withhold_session`: from users'
/// servers and services). `Host` stays as the client sent it, as configurable-http-proxy does.
fn prepare_headers(headers: &mut HeaderMap, remote: IpAddr, upgrade: bool, withhold_session: bool) {
    remove_hop_by_hop(headers, upgrade);
    let ip = remote.to_string();
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {ip}"),
        _ => ip,
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if !headers.contains_key(&X_FORWARDED_HOST)
        && let Some(host) = headers.get(header::HOST).cloned()
    {
        headers.insert(X_FORWARDED_HOST, host);
    }
    if withhold_session {
        strip_session_cookie(headers);
    }
}

/// Drops the `Set-Cookie` headers of a user's server that could reach beyond that server (cookie
/// tossing): one naming a hub cookie, one with a `Domain` attribute (it would reach other hosts
/// of the domain, other users' hosts with `--user-domain`), and one with a `Path` outside the
/// server's `prefix` (e.g. `Path=/hub/`, where the hub would read it). A cookie without `Path`
/// gets the directory of the request's path (RFC 6265 §5.1.4), which is inside the prefix.
fn drop_tossed_cookies(headers: &mut HeaderMap, prefix: &str) {
    if !headers.contains_key(header::SET_COOKIE) {
        return;
    }
    let all: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for value in all {
        if cookie_stays_on_server(&value, prefix) {
            headers.append(header::SET_COOKIE, value);
        } else {
            tracing::warn!(
                prefix,
                cookie = cookie_name(&value),
                "dropped a Set-Cookie of a user's server that reaches beyond it"
            );
        }
    }
}

/// The name of a `Set-Cookie` value (`""` when it has none).
fn cookie_name(value: &HeaderValue) -> &str {
    let text = value.to_str().unwrap_or("");
    text.split(';')
        .next()
        .and_then(|pair| pair.split_once('='))
        .map_or("", |(name, _)| name.trim())
}

/// Whether a `Set-Cookie` of the server at `prefix` is confined to it (see
/// [`drop_tossed_cookies`]). Attributes are matched case-insensitively, as browsers do, and
/// every `Path` counts (the last one wins in a browser).
fn cookie_stays_on_server(value: &HeaderValue, prefix: &str) -> bool {
    let Ok(text) = value.to_str() else {
        return false;
    };
    if cookie_name(value).eq_ignore_ascii_case(SESSION_COOKIE) {
        return false;
    }
    let bare = prefix.trim_end_matches('/');
    for attribute in text.split(';').skip(1) {
        let (key, val) = attribute.split_once('=').unwrap_or((attribute, ""));
        let (key, val) = (key.trim(), val.trim());
        if key.eq_ignore_ascii_case("domain") {
            return false;
        }
        // A Path not starting with `/` is ignored by browsers (the default path applies).
        if key.eq_ignore_ascii_case("path")
            && val.starts_with('/')
            && val != bare
            && !val.starts_with(prefix)
        {
            return false;
        }
    }
    true
}

/// The upstream's response as the client gets it; on `101 Switching Protocols` the two
/// upgraded connections are spliced together. `cookie_prefix`: a user server's prefix, whose
/// `Set-Cookie` headers must stay within it.
fn respond(
    mut resp: Response<Incoming>,
    client_upgrade: Option<OnUpgrade>,
    ctx: &ConnCtx,
    cookie_prefix: Option<&str>,
) -> Response<ResponseBody> {
    if let Some(prefix) = cookie_prefix {
        drop_tossed_cookies(resp.headers_mut(), prefix);
    }
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return json_error(
                StatusCode::BAD_GATEWAY,
                "the upstream switched protocols unasked",
            );
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let mut phase = ctx.phase.clone();
        tokio::spawn(async move {
            let (client, upstream) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok(both) => both,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade failed");
                    return;
                }
            };
            tokio::select! {
                result = splice(TokioIo::new(client), TokioIo::new(upstream)) => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "upgraded connection ended");
                    }
                }
                _ = phase.wait_for(|p| *p != Phase::Running) => {}
            }
        });
        let (mut parts, _) = resp.into_parts();
        remove_hop_by_hop(&mut parts.headers, true);
        return Response::from_parts(parts, Either::Right(Full::default()));
    }
    let (mut parts, body) = resp.into_parts();
    remove_hop_by_hop(&mut parts.headers, false);
    Response::from_parts(parts, Either::Left(body))
}

/// `{"status": N, "message": "..."}`, JupyterHub's error shape.
pub(crate) fn json_error(status: StatusCode, message: &str) -> Response<ResponseBody> {
    json_response(
        status,
        serde_json::json!({"status": status.as_u16(), "message": message}),
    )
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<ResponseBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn redirect(location: &str) -> Response<ResponseBody> {
    let mut resp = Response::new(Either::Right(Full::default()));
    *resp.status_mut() = StatusCode::FOUND;
    if let Ok(value) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, value);
    }
    resp
}

/// No valid credential: a browser goes to the hub's login page, an API client gets 401.
fn unauthenticated(browser: bool, original: &str) -> Response<ResponseBody> {
    if browser {
        redirect(&login_url(original))
    } else {
        json_error(
            StatusCode::UNAUTHORIZED,
            "authentication required: a token or a hub session",
        )
    }
}

/// Another user's server: a browser gets a page saying so (with a way back to the hub), an API
/// client JupyterHub's JSON error.
fn forbidden(browser: bool, label: &str, hub_base: &str) -> Response<ResponseBody> {
    let message = format!("access to server {label} is not allowed to this credential");
    if !browser {
        return json_error(StatusCode::FORBIDDEN, &message);
    }
    let page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>403 Forbidden</title></head>\n<body><h1>403 Forbidden</h1>\
         <p>You may not use the server {}.</p><p><a href=\"{}/hub/home\">Back to your \
         servers</a></p></body></html>\n",
        escape_html(label),
        escape_html(hub_base)
    );
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(page))));
    *resp.status_mut() = StatusCode::FORBIDDEN;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// No server of the path runs: a browser goes to the hub's spawn page, an API client gets 503.
fn not_running(
    browser: bool,
    user: &str,
    server: &str,
    original: &str,
    hub_base: &str,
) -> Response<ResponseBody> {
    if browser {
        redirect(&format!("{hub_base}{}", spawn_url(user, server, original)))
    } else {
        json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("server {} is not running", server_label(user, server)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_a_page_for_browsers_and_json_for_clients() {
        let page = forbidden(true, "<b>alice</b>", "");
        assert_eq!(page.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            page.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let Either::Right(body) = page.into_body() else {
            panic!("a full body")
        };
        let text = futures::executor::block_on(http_body_util::BodyExt::collect(body))
            .unwrap()
            .to_bytes();
        let text = std::str::from_utf8(&text).unwrap();
        assert!(text.contains("&lt;b&gt;alice&lt;/b&gt;"), "{text}");
        assert!(!text.contains("<b>alice"), "{text}");
        let json = forbidden(false, "alice", "");
        assert_eq!(json.status(), StatusCode::FORBIDDEN);
        assert_eq!(json.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn set_cookies_of_a_user_server_stay_within_its_prefix() {
        let kept = |cookie: &str, prefix: &str| {
            let mut h = HeaderMap::new();
            h.append(header::SET_COOKIE, HeaderValue::from_str(cookie).unwrap());
            h.append(header::SET_COOKIE, HeaderValue::from_static("ok=1"));
            drop_tossed_cookies(&mut h, prefix);
            let left: Vec<_> = h.get_all(header::SET_COOKIE).iter().collect();
            assert!(
                left.contains(&&HeaderValue::from_static("ok=1")),
                "{cookie}"
            );
            left.len() == 2
        };
        let alice = "/user/alice/";
        let gpu = "/user/alice/gpu/";
        // JupyterHub's single-user server's own cookies: kept.
        assert!(kept(
            "jupyterhub-user-alice=x; Path=/user/alice/; HttpOnly",
            alice
        ));
        assert!(kept("_xsrf=x; Path=/user/alice/gpu/", gpu));
        assert!(kept("a=b; Path=/user/alice", alice));
        assert!(kept("a=b; path=/user/alice/lab/", alice));
        assert!(kept("a=b", alice));
        assert!(kept("a=b; Path=relative", alice));
        assert!(kept("a=b; SameSite=Lax; Secure; Max-Age=10", alice));
        // Tossed: a hub cookie, a path outside, a Domain.
        assert!(!kept("atelier-session=evil; Path=/user/alice/", alice));
        assert!(!kept("Atelier-Session=evil", alice));
        assert!(!kept("x=1; Path=/hub/", alice));
        assert!(!kept("x=1; Path=/", alice));
        assert!(!kept("x=1; PATH=/hub", alice));
        assert!(!kept("x=1; Path=/user/alicex/", alice));
        assert!(!kept("x=1; Path=/user/bob/", alice));
        assert!(
            !kept("x=1; Path=/user/alice/", gpu),
            "the default server's path"
        );
        assert!(
            !kept("x=1; Path=/user/alice/gpu/; Path=/", gpu),
            "the last Path wins"
        );
        assert!(!kept("x=1; Domain=example.org", alice));
        assert!(!kept("x=1; Path=/user/alice/; domain=127.0.0.1", alice));
    }

    #[test]
    fn forwarded_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("example.org"));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("atelier-session=s; a=1"),
        );
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        prepare_headers(&mut h, "10.1.2.3".parse().unwrap(), false, true);
        assert_eq!(h[&X_FORWARDED_FOR], "10.1.2.3");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "example.org");
        assert_eq!(h[header::HOST], "example.org");
        assert_eq!(h[header::COOKIE], "a=1");
        assert!(!h.contains_key(header::CONNECTION));

        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("atelier-session=s"),
        );
        prepare_headers(&mut h, "127.0.0.1".parse().unwrap(), false, false);
        assert_eq!(h[&X_FORWARDED_FOR], "1.1.1.1, 127.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[header::COOKIE], "atelier-session=s");
    }

    #[test]
    fn redirects_and_errors() {
        let r = not_running(true, "alice", "gpu", "/user/alice/gpu/?a=1", "");
        assert_eq!(r.status(), StatusCode::FOUND);
        assert_eq!(
            r.headers()[header::LOCATION],
            "/hub/spawn/alice/gpu?next=%2Fuser%2Falice%2Fgpu%2F%3Fa%3D1"
        );
        let r = not_running(false, "alice", "gpu", "/user/alice/gpu/", "");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let r = unauthenticated(true, "/user/a/");
        assert_eq!(
            r.headers()[header::LOCATION],
            "/hub/login?next=%2Fuser%2Fa%2F"
        );
        assert_eq!(
            unauthenticated(false, "/").status(),
            StatusCode::UNAUTHORIZED
        );
    }
}
