//! The JupyterHub-compatible REST API under `/hub/api`: same paths, JSON shapes and status codes
//! as JupyterHub 5/6, so that `jupyterhub-singleuser`, `jupyterhub-idle-culler` and scripts written
//! for JupyterHub work unmodified.
//!
//! Every response carries `X-JupyterHub-Version`. Errors are JupyterHub's
//! `{"status": N, "message": "..."}` ([`HubError`]). Request bodies are read with [`JsonBody`]
//! and their fields with [`Fields`], whose errors name the field at fault.
//!
//! Costs: a list endpoint costs a bounded number of statements per page (never one per user), a
//! route on one user or server a handful of indexed lookups.

use std::collections::BTreeSet;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::map_response;
use axum::response::Response;
use axum::routing::{any, get, post};
use serde::Serialize;
use serde_json::{Map, Value};

use super::auth::Caller;
pub use super::auth::{allows_any, refusal, require_any};
use super::{HubError, HubResult, HubState, JUPYTERHUB_VERSION};
use crate::policy::names;
use crate::scopes::{Filter, Target, implies};
use crate::store::{self, StoreError, UserDetail};

pub mod activity;
pub mod groups;
pub mod hub;
pub mod jobs;
pub mod models;
pub mod progress;
pub mod proxy;
pub mod servers;
pub mod services;
pub mod tokens;
pub mod users;

/// The header naming the JupyterHub version the API speaks.
pub const VERSION_HEADER: &str = "x-jupyterhub-version";

/// `Accept` value of clients that understand paginated lists.
pub const PAGINATION_MEDIA_TYPE: &str = "application/jupyterhub-pagination+json";

/// Page size when the client accepts pagination and gives no `limit` (JupyterHub's
/// `api_page_default_limit`).
pub const DEFAULT_PAGE_LIMIT: u32 = 50;

/// The largest page a list request gets, whatever `limit` it asks for (JupyterHub's
/// `api_page_max_limit`); also the page of a client that does not accept pagination.
pub const MAX_PAGE_LIMIT: u32 = 200;

/// Every route of the REST API, with full paths (`/hub/api/...`), and the health check
/// `/hub/health`.
pub fn router() -> Router<HubState> {
    Router::new()
        .route("/hub/health", get(hub::health))
        .route("/hub/api", get(hub::root))
        .route("/hub/api/", get(hub::root))
        .route("/hub/api/info", get(hub::info))
        .route("/hub/api/shutdown", post(hub::shutdown))
        .route("/hub/api/proxy", get(proxy::get_routes).post(proxy::sync))
        .route("/hub/api/services", get(services::list))
        .route("/hub/api/services/{name}", get(services::get_one))
        .route("/hub/api/user", get(users::whoami))
        .route("/hub/api/users", get(users::list).post(users::create_many))
        .route(
            "/hub/api/users/{name}",
            get(users::get_one)
                .post(users::create_one)
                .patch(users::modify)
                .delete(users::remove),
        )
        .route("/hub/api/users/{name}/activity", post(activity::post))
        .route(
            "/hub/api/users/{name}/server",
            get(servers::get_default)
                .post(servers::start_default)
                .delete(servers::stop_default),
        )
        .route(
            "/hub/api/users/{name}/server/progress",
            get(progress::default_server),
        )
        // JupyterHub's `servers/([^/]*)`: an empty name is the default server.
        .route(
            "/hub/api/users/{name}/servers/",
            get(servers::get_default)
                .post(servers::start_default)
                .patch(servers::modify_default)
                .delete(servers::stop_default),
        )
        .route(
            "/hub/api/users/{name}/servers/{server}",
            get(servers::get_named)
                .put(servers::create_named)
                .post(servers::start_named)
                .patch(servers::modify)
                .delete(servers::stop_named),
        )
        .route(
            "/hub/api/users/{name}/servers/{server}/progress",
            get(progress::named_server),
        )
        .route(
            "/hub/api/users/{name}/jobs",
            get(jobs::list).post(jobs::submit),
        )
        .route("/hub/api/users/{name}/jobs/{job}", get(jobs::get_one))
        .route(
            "/hub/api/users/{name}/jobs/{job}/cancel",
            post(jobs::cancel),
        )
        .route("/hub/api/users/{name}/jobs/{job}/logs", get(jobs::logs))
        .route(
            "/hub/api/users/{name}/tokens",
            get(tokens::list).post(tokens::create),
        )
        .route(
            "/hub/api/users/{name}/tokens/{token_id}",
            get(tokens::get_one).delete(tokens::revoke),
        )
        .route(
            "/hub/api/groups",
            get(groups::list).post(groups::create_many),
        )
        .route(
            "/hub/api/groups/{name}",
            get(groups::get_one)
                .post(groups::create_one)
                .delete(groups::remove),
        )
        .route(
            "/hub/api/groups/{name}/users",
            post(groups::add_users).delete(groups::remove_users),
        )
        .route(
            "/hub/api/groups/{name}/properties",
            axum::routing::put(groups::set_properties),
        )
        .route("/hub/api/{*rest}", any(not_found))
        // Last: it applies to the routes above (a method a path does not have).
        .method_not_allowed_fallback(method_not_allowed)
        .layer(map_response(add_version_header))
}

/// Adds `X-JupyterHub-Version` to a response.
async fn add_version_header(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(VERSION_HEADER, HeaderValue::from_static(JUPYTERHUB_VERSION));
    response
}

async fn not_found() -> HubError {
    HubError::NotFound("Not found".into())
}

/// A method the path does not have: JupyterHub's JSON error, where axum's own 405 has an empty
/// body (axum still adds the `Allow` header).
async fn method_not_allowed() -> HubError {
    HubError::Status(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed".into())
}

// ---- request bodies -------------------------------------------------------------------------

/// A JSON request body, read whatever its `Content-Type` (JupyterHub's clients do not always set
/// one); `None` when the body is empty. Malformed JSON is a 400 saying where.
#[derive(Debug)]
pub struct JsonBody(pub Option<Value>);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = HubError;

    async fn from_request(req: Request, state: &S) -> Result<JsonBody, HubError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| HubError::BadRequest(format!("cannot read the request body: {e}")))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(None));
        }
        let body: Value = serde_json::from_slice(&bytes)
            .map_err(|e| HubError::BadRequest(format!("Malformed JSON body: {e}")))?;
        if let Some(field) = nul_at(&body, "") {
            return Err(HubError::BadRequest(format!(
                "{}: a NUL character is not allowed",
                if field.is_empty() {
                    "the body".to_owned()
                } else {
                    format!("field {field:?}")
                }
            )));
        }
        Ok(JsonBody(Some(body)))
    }
}

/// Where in `v` (under `path`) the first string or key holding a NUL character is: PostgreSQL
/// stores none in text or jsonb (SQLite would), so both engines refuse them alike, naming it.
fn nul_at(v: &Value, path: &str) -> Option<String> {
    match v {
        Value::String(s) => s.contains('\0').then(|| path.to_owned()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| nul_at(item, &format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            let at = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            if key.contains('\0') {
                Some(at)
            } else {
                nul_at(item, &at)
            }
        }),
        _ => None,
    }
}

/// The fields of a JSON object body, read with errors that name the field.
pub struct Fields<'a> {
    what: &'static str,
    map: &'a Map<String, Value>,
}

/// A short rendering of a JSON value for error messages.
fn shown(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!("{}…", &s[..s.floor_char_boundary(60)])
    } else {
        s
    }
}

impl<'a> Fields<'a> {
    /// The fields of `body`, which must be a JSON object (`what` names it in errors).
    pub fn of(what: &'static str, body: &'a Value) -> HubResult<Fields<'a>> {
        match body {
            Value::Object(map) => Ok(Fields { what, map }),
            other => Err(HubError::BadRequest(format!(
                "{what} must be a JSON object, not {}",
                shown(other)
            ))),
        }
    }

    /// 400 if the object has a field not in `allowed`.
    pub fn only(&self, allowed: &[&str]) -> HubResult<()> {
        match self.map.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(HubError::BadRequest(format!(
                "unexpected field {k:?} in {}; allowed: {}",
                self.what,
                allowed.join(", ")
            ))),
            None => Ok(()),
        }
    }

    /// Whether the field is present (even if null).
    pub fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// The raw value of a field, if present and not null.
    pub fn value(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn wrong(&self, key: &str, expected: &str, v: &Value) -> HubError {
        HubError::BadRequest(format!(
            "field {key:?} of {} must be {expected}, not {}",
            self.what,
            shown(v)
        ))
    }

    /// An optional string field.
    pub fn opt_str(&self, key: &str) -> HubResult<Option<&'a str>> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong(key, "a string", v)),
        }
    }

    /// An optional boolean field.
    pub fn opt_bool(&self, key: &str) -> HubResult<Option<bool>> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong(key, "true or false", v)),
        }
    }

    /// An optional integer field.
    pub fn opt_i64(&self, key: &str) -> HubResult<Option<i64>> {
        match self.value(key) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "an integer", v)),
        }
    }

    /// An optional list of strings.
    pub fn opt_str_list(&self, key: &str) -> HubResult<Option<Vec<String>>> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(self.wrong(key, "a list of strings", item)),
                })
                .collect::<HubResult<Vec<_>>>()
                .map(Some),
            Some(v) => Err(self.wrong(key, "a list of strings", v)),
        }
    }

    /// An optional JSON object field.
    pub fn opt_object(&self, key: &str) -> HubResult<Option<&'a Map<String, Value>>> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(v) => Err(self.wrong(key, "a JSON object", v)),
        }
    }
}

// ---- names ----------------------------------------------------------------------------------

/// 400 unless `name` can name an existing user or server ([`names::check_name`]: what the
/// store accepts, and not `.` or `..`). Names of new users and servers must also pass the rules
/// of `policy::names` (see [`check_new_user_name`] and the spawner).
pub fn check_name(what: &'static str, name: &str) -> HubResult<()> {
    names::check_name(what, name).map_err(HubError::BadRequest)
}

/// 400 unless `name` is a valid name for a new user.
pub fn check_new_user_name(name: &str) -> HubResult<()> {
    check_name("user", name)?;
    if !names::is_valid_user_name(name) {
        return Err(HubError::BadRequest(format!(
            "Invalid username {name:?}: 1 to 63 characters of a-z, 0-9, '.', '_' and '-', \
             starting and ending with a letter or digit"
        )));
    }
    Ok(())
}

// ---- loading and authorising ----------------------------------------------------------------

/// A user as a route sees it: with groups and all servers (stopped ones too).
pub struct LoadedUser {
    pub detail: UserDetail,
    pub groups: BTreeSet<String>,
}

impl LoadedUser {
    /// The scope target of the user.
    pub fn target(&self) -> Target<'_> {
        Target::User {
            name: &self.detail.user.name,
            groups: &self.groups,
        }
    }

    /// The scope target of one of the user's servers.
    pub fn server_target<'a>(&'a self, server: &'a str) -> Target<'a> {
        Target::Server {
            user: &self.detail.user.name,
            server,
            groups: &self.groups,
        }
    }

    /// The user's server named exactly `name`.
    pub fn server(&self, name: &str) -> Option<&store::Server> {
        self.detail.servers.iter().find(|s| s.name == name)
    }
}

/// The user named `name` with groups and servers, or `None`. 400 for a name no user can have.
pub async fn load_user(hub: &HubState, name: &str) -> HubResult<Option<LoadedUser>> {
    check_name("user", name)?;
    match hub.store.get_user_detail(name, true).await {
        Ok(detail) => {
            let groups = detail.groups.iter().cloned().collect();
            Ok(Some(LoadedUser { detail, groups }))
        }
        Err(StoreError::NotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Loads user `name` and checks that the caller holds one of `scopes` on them: 403 without any
/// of the scopes, 404 with them on other users only (whether or not the user exists, as
/// JupyterHub does for filtered scopes) and when the caller could act on such a user but there
/// is none.
pub async fn authorized_user(
    hub: &HubState,
    caller: &Caller,
    name: &str,
    scopes: &[&str],
) -> HubResult<LoadedUser> {
    let loaded = load_user(hub, name).await?;
    let none = BTreeSet::new();
    let target = match &loaded {
        Some(u) => u.target(),
        None => Target::User {
            name,
            groups: &none,
        },
    };
    require_any(caller, scopes, target)?;
    loaded.ok_or_else(|| HubError::NotFound(format!("No such user: {name}")))
}

/// The resources a caller's scope reaches when it is not unfiltered.
#[derive(Debug, Default)]
pub struct Reach {
    /// Unfiltered: everything.
    pub all: bool,
    /// `!user=` filters.
    pub users: BTreeSet<String>,
    /// `!group=` filters.
    pub groups: BTreeSet<String>,
}

/// What the caller's scopes implying `needed` reach (`!server=` and `!service=` filters reach no
/// list of users).
pub fn reach(caller: &Caller, needed: &str) -> Reach {
    let mut reach = Reach::default();
    for scope in caller.scopes.iter() {
        if !implies(&scope.name, needed) {
            continue;
        }
        match &scope.filter {
            Filter::All => reach.all = true,
            Filter::User(u) => {
                reach.users.insert(u.clone());
            }
            Filter::Group(g) => {
                reach.groups.insert(g.clone());
            }
            Filter::Server(..) | Filter::Service(_) => {}
        }
    }
    reach
}

// ---- pagination -----------------------------------------------------------------------------

/// `offset` and `limit` of a list request, as JupyterHub reads them.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub offset: u64,
    pub limit: u32,
    /// Whether the client sent `Accept: application/jupyterhub-pagination+json`.
    pub paginated: bool,
}

/// Whether the client accepts the pagination media type.
pub fn accepts_pagination(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case(PAGINATION_MEDIA_TYPE)
        })
}

/// The value of query parameter `key` (last one wins), percent-decoded.
pub fn query_param(query: &[(String, String)], key: &str) -> Option<String> {
    query
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}

impl Page {
    /// Reads `offset` and `limit`: a client that does not accept pagination gets the largest
    /// page when it gives no limit; limits are clamped to 1..=[`MAX_PAGE_LIMIT`] (JupyterHub
    /// 6.1.1's `get_api_pagination`).
    pub fn from_request(query: &[(String, String)], headers: &HeaderMap) -> HubResult<Page> {
        let paginated = accepts_pagination(headers);
        let bad = || {
            HubError::BadRequest("Invalid argument type, offset and limit must be integers".into())
        };
        let offset = match query_param(query, "offset") {
            Some(v) => v.trim().parse::<i64>().map_err(|_| bad())?.unsigned_abs(),
            None => 0,
        };
        let max = MAX_PAGE_LIMIT;
        let limit = match query_param(query, "limit") {
            Some(v) => v.trim().parse::<i64>().map_err(|_| bad())?.unsigned_abs(),
            None if paginated => u64::from(DEFAULT_PAGE_LIMIT),
            None => u64::from(max),
        };
        Ok(Page {
            offset,
            limit: limit.clamp(1, u64::from(max)) as u32,
            paginated,
        })
    }

    /// The response: the bare list, or JupyterHub's paginated model whose `next.url` is the
    /// absolute URL of this request with `offset` and `limit` of the next page (the idle culler
    /// fetches it as is).
    pub fn listing<T: Serialize>(
        &self,
        items: T,
        total: u64,
        next_offset: Option<u64>,
        uri: &Uri,
        headers: &HeaderMap,
        public_url: &str,
    ) -> Listing<T> {
        if !self.paginated {
            return Listing::Bare(items);
        }
        let next = next_offset.map(|offset| NextPage {
            offset,
            limit: self.limit,
            url: next_url(uri, headers, public_url, offset, self.limit),
        });
        Listing::Paginated {
            items,
            _pagination: Pagination {
                offset: self.offset,
                limit: self.limit,
                total,
                next,
            },
        }
    }
}

/// A list answer: the bare list, or JupyterHub's paginated model.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Listing<T> {
    Bare(T),
    Paginated { items: T, _pagination: Pagination },
}

/// JupyterHub's `_pagination`.
#[derive(Serialize)]
pub struct Pagination {
    offset: u64,
    limit: u32,
    total: u64,
    next: Option<NextPage>,
}

/// JupyterHub's `_pagination.next`.
#[derive(Serialize)]
pub struct NextPage {
    offset: u64,
    limit: u32,
    url: String,
}

/// A JSON answer serialized once into a buffer of about `size_hint` bytes (axum's `Json`
/// starts from 128 bytes and grows by copying, which shows on pages of 200 users).
pub fn json_response(value: &impl Serialize, size_hint: usize) -> HubResult<Response> {
    let mut body = Vec::with_capacity(size_hint);
    serde_json::to_writer(&mut body, value)
        .map_err(|e| HubError::Unexpected(anyhow::anyhow!("cannot serialize the answer: {e}")))?;
    let mut response = Response::new(axum::body::Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// A list request (`GET /users`, `/groups`, `/proxy`): its query, and what its page and the
/// next page's URL are read from. The page is read when the handler asks (`/proxy` checks its
/// scope first, as JupyterHub does).
pub struct ListRequest {
    /// The query parameters, percent-decoded.
    pub query: Vec<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    public_url: String,
}

impl FromRequestParts<HubState> for ListRequest {
    type Rejection = HubError;

    async fn from_request_parts(parts: &mut Parts, hub: &HubState) -> Result<Self, HubError> {
        let Query(query) = Query::<Vec<(String, String)>>::from_request_parts(parts, hub)
            .await
            .map_err(|e| HubError::BadRequest(format!("Malformed query string: {e}")))?;
        Ok(ListRequest {
            query,
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
            public_url: hub.config.public_url.clone(),
        })
    }
}

impl ListRequest {
    /// The page asked for ([`Page::from_request`]): 400 for an `offset` or `limit` that is not
    /// an integer.
    pub fn page(&self) -> HubResult<Page> {
        Page::from_request(&self.query, &self.headers)
    }

    /// The response for `page` ([`Page::listing`]) as a JSON value.
    pub fn respond(
        &self,
        page: &Page,
        items: Vec<Value>,
        total: u64,
        next_offset: Option<u64>,
    ) -> Value {
        serde_json::to_value(self.listing(page, items, total, next_offset)).unwrap_or(Value::Null)
    }

    /// [`ListRequest::respond`] of any serializable items, to be serialized as it is.
    pub fn listing<T: Serialize>(
        &self,
        page: &Page,
        items: T,
        total: u64,
        next_offset: Option<u64>,
    ) -> Listing<T> {
        page.listing(
            items,
            total,
            next_offset,
            &self.uri,
            &self.headers,
            &self.public_url,
        )
    }
}

/// The absolute URL of the request (scheme from `X-Forwarded-Proto`, host from `Host`, falling
/// back to the public URL) with `offset` and `limit` replaced.
fn next_url(uri: &Uri, headers: &HeaderMap, public_url: &str, offset: u64, limit: u32) -> String {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').next().unwrap_or("").trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let origin = match header("host").or_else(|| uri.authority().map(|a| a.to_string())) {
        Some(host) => {
            let scheme = header("x-forwarded-proto").unwrap_or_else(|| "http".to_owned());
            format!("{scheme}://{host}")
        }
        None => public_url.trim_end_matches('/').to_owned(),
    };
    let mut query: Vec<String> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or("");
            !pair.is_empty() && key != "offset" && key != "limit"
        })
        .map(str::to_owned)
        .collect();
    query.push(format!("offset={offset}"));
    query.push(format!("limit={limit}"));
    format!("{origin}{}?{}", uri.path(), query.join("&"))
}

/// Whether `include_stopped_servers` is set (present and not `0`/`false`).
pub fn include_stopped(query: &[(String, String)]) -> bool {
    query_param(query, "include_stopped_servers")
        .is_some_and(|v| !matches!(v.to_ascii_lowercase().as_str(), "0" | "false"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_url_replaces_offset_and_limit() {
        let uri: Uri = "/hub/api/users?state=ready&offset=0&limit=100"
            .parse()
            .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("host", "127.0.0.1:8081".parse().unwrap());
        assert_eq!(
            next_url(&uri, &headers, "http://x", 100, 100),
            "http://127.0.0.1:8081/hub/api/users?state=ready&offset=100&limit=100"
        );
        assert_eq!(
            next_url(&uri, &HeaderMap::new(), "https://vre.example.org/", 5, 5),
            "https://vre.example.org/hub/api/users?state=ready&offset=5&limit=5"
        );
    }

    #[test]
    fn pagination_header_is_recognised() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            "application/json, application/jupyterhub-pagination+json"
                .parse()
                .unwrap(),
        );
        assert!(accepts_pagination(&headers));
        assert!(!accepts_pagination(&HeaderMap::new()));
    }

    #[tokio::test]
    async fn nul_characters_in_bodies_are_refused_naming_the_field() {
        // Found by tests/fuzz_api.rs on PostgreSQL: a token's `note` with a NUL was a 500
        // (PostgreSQL stores no NUL in text or jsonb).
        let body = |text: &str| {
            let req = axum::http::Request::builder()
                .body(axum::body::Body::from(text.to_owned()))
                .unwrap();
            JsonBody::from_request(req, &())
        };
        for (text, field) in [
            (r#""a\u0000""#, "the body"),
            (r#"{"note": "a\u0000b"}"#, "field \"note\""),
            (r#"{"groups": ["ok", "\u0000"]}"#, "field \"groups[1]\""),
            (
                r#"{"properties": {"k": {"\u0000": 1}}}"#,
                "field \"properties.k.\\0\"",
            ),
        ] {
            match body(text).await {
                Err(HubError::BadRequest(m)) => {
                    assert_eq!(
                        m,
                        format!("{field}: a NUL character is not allowed"),
                        "{text}"
                    )
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(
            body(r#"{"note": "a\\u0000"}"#).await,
            Ok(JsonBody(Some(_)))
        ));
    }

    #[tokio::test]
    async fn methods_a_path_lacks_get_a_json_405() {
        use http_body_util::BodyExt;
        use tower::Service;
        // Found by tests/fuzz_api.rs: `PUT /users/{name}/servers/` (the default server, which
        // has no PUT) answered axum's 405 with an empty body.
        let store = store::Store::connect("sqlite::memory:").await.unwrap();
        let hub = super::super::Hub::new(
            store,
            std::sync::Arc::new(crate::backend::instant::InstantBackend::default()),
            super::super::HubConfig::new("http://vre.test", "http://vre.test/hub/api"),
        );
        let mut app = super::super::router(hub);
        for (method, path) in [
            ("PUT", "/hub/api/users/alice/servers/"),
            ("PATCH", "/hub/api/groups"),
            ("DELETE", "/hub/api/users/alice/activity"),
        ] {
            let req = axum::http::Request::builder()
                .method(method)
                .uri(path)
                .body(axum::body::Body::from("{}"))
                .unwrap();
            let resp = app.call(req).await.unwrap();
            assert_eq!(
                resp.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            assert!(
                resp.headers().contains_key(header::ALLOW),
                "{method} {path}"
            );
            assert!(
                resp.headers().contains_key(VERSION_HEADER),
                "{method} {path}"
            );
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                body,
                serde_json::json!({"status": 405, "message": "Method Not Allowed"})
            );
        }
    }

    #[test]
    fn names_with_separators_or_controls_are_refused() {
        for bad in ["../", "a/b", "..", "a\u{1}b", &"a".repeat(300)] {
            assert!(check_name("user", bad).is_err(), "{bad:?}");
        }
        assert!(check_name("user", "Alice").is_ok());
        assert!(check_new_user_name("Alice").is_err());
        assert!(check_new_user_name("alice").is_ok());
        assert_eq!(names::escape_segment("a b/c"), "a%20b%2Fc");
    }
}
