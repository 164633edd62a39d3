//! The user's servers: `/hub/home` (servers with start and stop buttons and a live progress
//! bar), the spawn form `/hub/spawn/<user>[/<server>]` with the profiles, node pools, GPUs and
//! data sources the owner's groups allow (the hub's catalogue, [`crate::hub::catalog`]), the
//! progress page `/hub/spawn-pending/<user>[/<server>]`, `/hub/stop/...`, and
//! `/hub/user/<user>/...`, where the proxy sends visitors of a server that is not running.
//!
//! Starts and stops go through [`crate::hub::spawner`], shared with the REST API, which checks a
//! start against the catalogue as the API does.
//!
//! The form works without JavaScript: each profile's choices are fields prefixed with the
//! profile's name (`<profile>/nodePool`, `<profile>/cpu`, `<profile>/memory`, `<profile>/gpus`,
//! `<profile>/gpuType`, `<profile>/dataSource/<name>`); those of the chosen `profile` become the
//! start's `user_options`, in the Workspace's field names (`profile`, `nodePool`, `resources`
//! {`cpu`, `memory`, `gpus`, `gpuType`}, `dataSources`).
//!
//! Data sources: the form shows each one's description, the credentials the owner's groups get
//! (`credentials: via group <g>`, `shared` or `none`, [`credentials_for`]) and its STAC link;
//! the home page shows each running server's sources with the line of Python that opens them
//! ([`open_line`]).

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{Page, PageError, found, hub_path, see_other, server_url, url_encode};
use crate::api::v1alpha1::DataSource;
use crate::hub::auth::session::safe_next;
use crate::hub::auth::session::{CsrfForm, LoggedIn};
use crate::hub::catalog::{Catalog, DataSourceChoice, ProfileChoice};
use crate::hub::spawner::{self, StartOptions, StartOutcome};
use crate::hub::{HubConfig, HubState};
use crate::policy::data::{credentials_for, open_line};
use crate::policy::names::is_valid_server_name;
use crate::scopes::{ScopeSet, Target};
use crate::store::{AuditAction, AuditQuery, Server, ServerState, StoreError, User};

/// The owner of a server, after checking that `me` holds `scope` on it: 403 without the scope
/// (whether or not the user exists), then 404.
struct Owner {
    user: User,
    groups: BTreeSet<String>,
}

async fn owner_for(
    hub: &HubState,
    me: &User,
    name: &str,
    server: &str,
    scope: &str,
) -> Result<Owner, PageError> {
    let user = match hub.store.get_user(name).await {
        Ok(user) => Some(user),
        Err(StoreError::NotFound | StoreError::Invalid(_)) => None,
        Err(e) => return Err(PageError::unexpected(e)),
    };
    let groups: BTreeSet<String> = match &user {
        Some(u) => hub
            .store
            .user_groups(u.id)
            .await
            .map_err(PageError::unexpected)?
            .into_iter()
            .collect(),
        None => BTreeSet::new(),
    };
    let target = Target::Server {
        user: name,
        server,
        groups: &groups,
    };
    if !ScopeSet::for_user(&me.name, me.admin).allows(scope, target) {
        return Err(PageError::forbidden(format!(
            "You may not use the servers of {name}."
        )));
    }
    let user = user.ok_or_else(|| PageError::not_found(format!("No user {name}.")))?;
    Ok(Owner { user, groups })
}

/// The owner's server named `server`, if it has a row.
async fn find_server(
    hub: &HubState,
    owner: &User,
    server: &str,
) -> Result<Option<Server>, PageError> {
    match hub.store.get_server(owner.id, server).await {
        Ok(s) => Ok(Some(s)),
        Err(StoreError::NotFound) => Ok(None),
        Err(e) => Err(PageError::unexpected(e)),
    }
}

fn check_server_name(server: &str) -> Result<(), PageError> {
    if is_valid_server_name(server) {
        Ok(())
    } else {
        Err(PageError::bad_request(format!(
            "{server:?} is not a valid server name: use 1 to 63 lowercase letters, digits and \
             '-', starting and ending with a letter or digit."
        )))
    }
}

fn label(server: &str) -> String {
    if server.is_empty() {
        "Default server".to_owned()
    } else {
        format!("Server {server}")
    }
}

/// The progress event stream of the REST API.
fn progress_url(user: &str, server: &str) -> String {
    if server.is_empty() {
        format!("/hub/api/users/{}/server/progress", url_encode(user))
    } else {
        format!(
            "/hub/api/users/{}/servers/{}/progress",
            url_encode(user),
            url_encode(server)
        )
    }
}

/// A server as the pages show it.
#[derive(Serialize)]
struct ServerView {
    name: String,
    label: String,
    state: &'static str,
    ready: bool,
    starting: bool,
    stopping: bool,
    active: bool,
    profile: Option<String>,
    started: String,
    last_activity: String,
    url: String,
    spawn_url: String,
    stop_url: String,
    pending_url: String,
    progress_url: String,
    /// The data sources of a running server, and how to open each.
    data: Vec<OpenView>,
}

/// A data source of a running server as the home page shows it: its description and the line
/// of Python that opens it ([`open_line`]), or none when the catalogue no longer has it.
#[derive(Serialize)]
struct OpenView {
    name: String,
    description: String,
    open_line: Option<String>,
}

/// The data sources a server was started with (`user_options.dataSources`), as the home page
/// shows them.
fn open_views(catalog: &Catalog, server: &Server) -> Vec<OpenView> {
    let names = server
        .user_options
        .get("dataSources")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    names
        .iter()
        .filter_map(Value::as_str)
        .map(|name| match find_source(catalog, name) {
            Some(d) => OpenView {
                name: name.to_owned(),
                description: d.spec.description.clone(),
                open_line: Some(open_line(name, &d.spec)),
            },
            None => OpenView {
                name: name.to_owned(),
                description: "No longer in the catalogue.".to_owned(),
                open_line: None,
            },
        })
        .collect()
}

fn find_source<'a>(catalog: &'a Catalog, name: &str) -> Option<&'a DataSource> {
    catalog
        .data_sources
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some(name))
}

impl ServerView {
    fn of(config: &HubConfig, user: &str, name: &str, server: Option<&Server>) -> ServerView {
        let state = server.map_or(ServerState::Stopped, |s| s.state);
        let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
            t.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                .unwrap_or_default()
        };
        ServerView {
            name: name.to_owned(),
            label: label(name),
            state: state.as_str(),
            ready: state == ServerState::Running,
            starting: state == ServerState::Starting,
            stopping: state == ServerState::Stopping,
            active: state.is_active(),
            profile: server.and_then(|s| s.profile.clone()),
            started: time(server.and_then(|s| s.started)),
            last_activity: time(server.and_then(|s| s.last_activity)),
            url: config.server_url(user, name),
            spawn_url: hub_path("/hub/spawn", user, name),
            stop_url: hub_path("/hub/stop", user, name),
            pending_url: hub_path("/hub/spawn-pending", user, name),
            progress_url: progress_url(user, name),
            data: match server {
                Some(s) if state == ServerState::Running => open_views(&config.catalog.get(), s),
                _ => Vec::new(),
            },
        }
    }
}

// ---- home -----------------------------------------------------------------------------------

/// `GET /hub/home`: the user's servers.
pub async fn home(State(hub): State<HubState>, me: LoggedIn) -> Result<Page, PageError> {
    let servers = hub
        .store
        .list_user_servers(me.user.id)
        .await
        .map_err(PageError::unexpected)?;
    let mut views = Vec::with_capacity(servers.len() + 1);
    if !servers.iter().any(|s| s.name.is_empty()) {
        views.push(ServerView::of(&hub.config, &me.user.name, "", None));
    }
    views.extend(
        servers
            .iter()
            .map(|s| ServerView::of(&hub.config, &me.user.name, &s.name, Some(s))),
    );
    let (pattern, max) = hub.config.server_name_rule.html_pattern();
    Ok(Page::new("home.html")
        .user(&me.user, &me.session)
        .insert("servers", &views)
        .insert("spawn_url", &hub_path("/hub/spawn", &me.user.name, ""))
        .insert("server_name_pattern", &pattern)
        .insert("server_name_max", &max))
}

// ---- spawn form -----------------------------------------------------------------------------

/// The query of the spawn and progress pages: `server_name` (the "new named server" form of
/// the home page) and `next`, where to go once the server runs (the proxy sends visitors of a
/// stopped server here with the page they asked for).
#[derive(Deserialize)]
pub struct SpawnQuery {
    #[serde(default)]
    server_name: Option<String>,
    #[serde(default)]
    next: Option<String>,
}

/// The on-site `next` of a query, if any.
fn next_of(query: Result<Query<SpawnQuery>, QueryRejection>) -> (Option<String>, Option<String>) {
    match query {
        Ok(Query(q)) => (q.server_name, q.next.and_then(|n| safe_next(&n))),
        Err(_) => (None, None),
    }
}

/// `path` with `?next=` when there is one.
fn with_next(path: &str, next: Option<&str>) -> String {
    match next {
        Some(next) => format!("{path}?next={}", url_encode(next)),
        None => path.to_owned(),
    }
}

/// `GET /hub/spawn`: the user's own default server.
pub async fn spawn_own(me: LoggedIn) -> Response {
    found(&hub_path("/hub/spawn", &me.user.name, ""))
}

/// `GET /hub/spawn/{user}[?server_name=]`.
pub async fn spawn_page_default(
    State(hub): State<HubState>,
    me: LoggedIn,
    Path(user): Path<String>,
    query: Result<Query<SpawnQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let (named, next) = next_of(query);
    let named = named.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
    if let Some(server) = named {
        check_server_name(&server)?;
        return Ok(found(&with_next(
            &hub_path("/hub/spawn", &user, &server),
            next.as_deref(),
        )));
    }
    spawn_page(&hub, &me, &user, "", next.as_deref()).await
}

/// `GET /hub/spawn/{user}/{server}`.
pub async fn spawn_page_named(
    State(hub): State<HubState>,
    me: LoggedIn,
    Path((user, server)): Path<(String, String)>,
    query: Result<Query<SpawnQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let (_, next) = next_of(query);
    spawn_page(&hub, &me, &user, &server, next.as_deref()).await
}

/// A profile as the form shows it.
#[derive(Serialize)]
struct ProfileView {
    #[serde(flatten)]
    choice: ProfileChoice,
    checked: bool,
    /// Its data sources, with what the owner gets of each.
    data: Vec<SourceView>,
}

/// A data source as the form shows it: the catalogue's choice, the credentials the owner would
/// get ([`credentials_for`]) and its STAC catalogue.
#[derive(Serialize)]
struct SourceView {
    #[serde(flatten)]
    choice: DataSourceChoice,
    /// `via group <g>`, `shared` (one Secret for everybody) or `none` for an s3 or irods
    /// source; `None` for a source that takes no credentials (nfs, pvc, STAC only).
    credentials: Option<String>,
    /// Its STAC catalogue, when that is an http(s) URL (never a `javascript:` link).
    stac: Option<String>,
}

fn source_view(
    catalog: &Catalog,
    groups: &BTreeSet<String>,
    choice: DataSourceChoice,
) -> SourceView {
    let spec = find_source(catalog, &choice.name).map(|d| &d.spec);
    let credentials = spec
        .filter(|s| s.s3.is_some() || s.irods.is_some())
        .map(|s| match credentials_for(s, groups) {
            Some((Some(group), _)) => format!("via group {group}"),
            Some((None, _)) => "shared".to_owned(),
            None => "none".to_owned(),
        });
    let stac = spec.and_then(|s| s.stac.clone()).filter(|url| {
        let lower = url.to_ascii_lowercase();
        lower.starts_with("https://") || lower.starts_with("http://")
    });
    SourceView {
        choice,
        credentials,
        stac,
    }
}

fn render_spawn(
    hub: &HubState,
    me: &LoggedIn,
    owner: &Owner,
    server: &str,
    next: Option<&str>,
    error: Option<&str>,
    chosen: Option<&str>,
) -> Result<Page, PageError> {
    let catalog = hub.config.catalog.get();
    let mut choices = catalog.choices_for(&owner.groups);
    let open = !choices.is_empty();
    // Profiles whose kind the backend cannot run are not offered (/hub/admin says why).
    choices.retain(|c| spawner::profile_runs(hub, &catalog, &c.name));
    if open && choices.is_empty() {
        return Err(PageError::forbidden(
            "No profile open to you can run on this hub now: an administrator sees why on the \
             admin page.",
        ));
    }
    if choices.is_empty() {
        return Err(PageError::forbidden(format!(
            "No profile is open to {}: ask an administrator to add them to a group.",
            owner.user.name
        )));
    }
    let checked = chosen
        .filter(|c| choices.iter().any(|p| p.name == *c))
        .map(str::to_owned)
        .unwrap_or_else(|| choices[0].name.clone());
    let profiles: Vec<ProfileView> = choices
        .into_iter()
        .map(|choice| ProfileView {
            checked: choice.name == checked,
            data: choice
                .data_sources
                .iter()
                .cloned()
                .map(|d| source_view(&catalog, &owner.groups, d))
                .collect(),
            choice,
        })
        .collect();
    Ok(Page::new("spawn.html")
        .user(&me.user, &me.session)
        .insert("owner", &owner.user.name)
        .insert("server", server)
        .insert("label", &label(server))
        .insert("for_other", &(owner.user.id != me.user.id))
        .insert("profiles", &profiles)
        .insert("action", &hub_path("/hub/spawn", &owner.user.name, server))
        .insert("next", next.unwrap_or(""))
        .insert("error", &error))
}

async fn spawn_page(
    hub: &HubState,
    me: &LoggedIn,
    user: &str,
    server: &str,
    next: Option<&str>,
) -> Result<Response, PageError> {
    check_server_name(server)?;
    let owner = owner_for(hub, &me.user, user, server, "servers").await?;
    let Some(row) = find_server(hub, &owner.user, server).await? else {
        // A new server: its name must follow the hub's rule (the start checks again).
        spawner::check_new_server_name(hub.config.server_name_rule, server)?;
        return Ok(render_spawn(hub, me, &owner, server, next, None, None)?.into_response());
    };
    match row.state {
        ServerState::Running => {
            return Ok(found(
                &hub.config
                    .location(next.unwrap_or(&server_url(user, server))),
            ));
        }
        ServerState::Starting | ServerState::Stopping => {
            return Ok(found(&with_next(
                &hub_path("/hub/spawn-pending", user, server),
                next,
            )));
        }
        ServerState::Stopped | ServerState::Failed => {}
    }
    Ok(render_spawn(hub, me, &owner, server, next, None, None)?.into_response())
}

/// The spawn form's Dask fields, under the profile's name (`<profile>/dask`, ...).
const DASK_ENABLED: &str = "dask";
const DASK_MIN: &str = "dask_min";
const DASK_MAX: &str = "dask_max";

/// The spawn form's fields (but `_xsrf`): `profile`, `next`, and each profile's choices
/// (see the module documentation).
pub type SpawnForm = BTreeMap<String, String>;

/// The `user_options` of the form's choices for `profile`: `profile`, `nodePool`, `resources`
/// and `dataSources`, empty fields left out. A GPU count that is not a whole number is a 400
/// naming the field; every other value is checked with the start.
fn form_options(form: &SpawnForm, profile: &str) -> Result<Value, PageError> {
    let field = |name: &str| {
        form.get(&format!("{profile}/{name}"))
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };
    let mut options = Map::new();
    options.insert("profile".into(), Value::String(profile.to_owned()));
    if let Some(pool) = field("nodePool") {
        options.insert("nodePool".into(), Value::String(pool.to_owned()));
    }
    let mut resources = Map::new();
    for key in ["cpu", "memory"] {
        if let Some(q) = field(key) {
            resources.insert(key.into(), Value::String(q.to_owned()));
        }
    }
    if let Some(gpus) = field("gpus") {
        let n: i64 = gpus.parse().map_err(|_| {
            PageError::bad_request(format!(
                "invalid user_options.resources.gpus: {gpus:?} is not a whole number"
            ))
        })?;
        if n > 0 {
            resources.insert("gpus".into(), Value::from(n));
            if let Some(t) = field("gpuType") {
                resources.insert("gpuType".into(), Value::String(t.to_owned()));
            }
        }
    }
    if !resources.is_empty() {
        options.insert("resources".into(), Value::Object(resources));
    }
    let prefix = format!("{profile}/dataSource/");
    let sources: Vec<Value> = form
        .keys()
        .filter_map(|k| k.strip_prefix(&prefix))
        .map(|name| Value::String(name.to_owned()))
        .collect();
    if !sources.is_empty() {
        options.insert("dataSources".into(), Value::Array(sources));
    }
    // A profile offering Dask has its "workers: min–max" inputs on the form: the checkbox
    // says whether the workspace gets a cluster, the pair how many workers.
    let offered = [DASK_MIN, DASK_MAX]
        .iter()
        .any(|f| form.contains_key(&format!("{profile}/{f}")));
    if offered {
        let mut dask = Map::new();
        let enabled = field(DASK_ENABLED).is_some();
        dask.insert("enabled".into(), Value::Bool(enabled));
        if enabled {
            let number = |name: &str, default: Option<&str>| -> Result<Option<i64>, PageError> {
                let Some(v) = field(name).or(default) else {
                    return Ok(None);
                };
                v.parse().map(Some).map_err(|_| {
                    PageError::bad_request(format!(
                        "invalid user_options.dask.workers.{}: {v:?} is not a whole number",
                        name.trim_start_matches("dask_")
                    ))
                })
            };
            match (number(DASK_MIN, None)?, number(DASK_MAX, None)?) {
                (Some(min), Some(max)) => {
                    dask.insert("workers".into(), json!({"min": min, "max": max}));
                }
                (None, None) => {}
                _ => {
                    return Err(PageError::bad_request(
                        "invalid user_options.dask.workers: give both min and max, or neither",
                    ));
                }
            }
        }
        options.insert("dask".into(), Value::Object(dask));
    }
    Ok(Value::Object(options))
}

/// `POST /hub/spawn/{user}`.
pub async fn spawn_default(
    State(hub): State<HubState>,
    Path(user): Path<String>,
    form: CsrfForm<SpawnForm>,
) -> Result<Response, PageError> {
    spawn(&hub, form, &user, "").await
}

/// `POST /hub/spawn/{user}/{server}`.
pub async fn spawn_named(
    State(hub): State<HubState>,
    Path((user, server)): Path<(String, String)>,
    form: CsrfForm<SpawnForm>,
) -> Result<Response, PageError> {
    spawn(&hub, form, &user, &server).await
}

/// Starts the server with the chosen profile (403 for a profile the owner's groups do not
/// allow), then to the progress page (or straight to the server when it is ready at once).
async fn spawn(
    hub: &HubState,
    form: CsrfForm<SpawnForm>,
    user: &str,
    server: &str,
) -> Result<Response, PageError> {
    let me = form.logged_in()?;
    check_server_name(server)?;
    let owner = owner_for(hub, &me.user, user, server, "servers").await?;
    let next = safe_next(form.form.get("next").map_or("", String::as_str));
    let wanted = form.form.get("profile").cloned().unwrap_or_default();
    // The form again, with why the start was refused, under the refusal's status.
    let refused = |err: PageError| -> Result<Response, PageError> {
        if err.status().is_server_error() {
            return Err(err);
        }
        Ok(render_spawn(
            hub,
            &me,
            &owner,
            server,
            next.as_deref(),
            Some(err.message()),
            Some(&wanted),
        )?
        .status(err.status())
        .into_response())
    };
    let options = if hub.config.catalog.get().is_empty() || wanted.is_empty() {
        // No catalogue, or no choice sent: the default profile the owner may use.
        StartOptions::default()
    } else {
        match form_options(&form.form, &wanted) {
            Ok(user_options) => StartOptions {
                profile: Some(wanted.clone()),
                user_options: Some(user_options),
                ..StartOptions::default()
            },
            Err(err) => return refused(err),
        }
    };
    // The catalogue's rules first, so that a refusal is shown as such (the start checks again).
    let groups: Vec<String> = owner.groups.iter().cloned().collect();
    let options = match spawner::check_start(hub, &owner.user.name, server, &groups, None, options)
    {
        Ok(options) => StartOptions {
            actor: Some(me.user.name.clone()),
            ..options
        },
        Err(err) => return refused(PageError::from(err)),
    };
    let pending = with_next(
        &hub_path("/hub/spawn-pending", user, server),
        next.as_deref(),
    );
    match spawner::start_server(hub, &owner.user, server, options).await {
        Ok(StartOutcome::Ready) => Ok(see_other(
            &hub.config
                .location(next.as_deref().unwrap_or(&server_url(user, server))),
        )),
        Ok(StartOutcome::Pending) => Ok(see_other(&pending)),
        Err(err) => {
            // Already running or starting (a double click, another tab), or failed at once: the
            // progress page tells which.
            match find_server(hub, &owner.user, server).await? {
                Some(row)
                    if matches!(
                        row.state,
                        ServerState::Running | ServerState::Starting | ServerState::Failed
                    ) =>
                {
                    tracing::info!(user, server, error = %err, "spawn from the web page refused");
                    Ok(see_other(&pending))
                }
                _ => refused(PageError::from(err)),
            }
        }
    }
}

// ---- progress -------------------------------------------------------------------------------

/// `GET /hub/spawn-pending/{user}`.
pub async fn pending_default(
    State(hub): State<HubState>,
    me: LoggedIn,
    Path(user): Path<String>,
    query: Result<Query<SpawnQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let (_, next) = next_of(query);
    pending(&hub, &me, &user, "", next.as_deref()).await
}

/// `GET /hub/spawn-pending/{user}/{server}`.
pub async fn pending_named(
    State(hub): State<HubState>,
    me: LoggedIn,
    Path((user, server)): Path<(String, String)>,
    query: Result<Query<SpawnQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let (_, next) = next_of(query);
    pending(&hub, &me, &user, &server, next.as_deref()).await
}

/// Why the server's last start failed, from the audit log (where every hub process finds it).
async fn last_failure(hub: &HubState, user: &str, server: &str) -> Option<String> {
    let events = hub
        .store
        .list_audit(&AuditQuery {
            action: Some(AuditAction::ServerStart),
            target_user: Some(user.to_owned()),
            limit: 20,
            ..AuditQuery::default()
        })
        .await
        .ok()?;
    let last = events
        .iter()
        .find(|e| e.target_server.as_deref() == Some(server))?;
    if last.detail.get("failed").and_then(Value::as_bool) == Some(true) {
        last.detail
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_owned)
    } else {
        None
    }
}

async fn pending(
    hub: &HubState,
    me: &LoggedIn,
    user: &str,
    server: &str,
    next: Option<&str>,
) -> Result<Response, PageError> {
    check_server_name(server)?;
    let owner = owner_for(hub, &me.user, user, server, "servers").await?;
    let row = find_server(hub, &owner.user, server).await?;
    let state = row.as_ref().map_or(ServerState::Stopped, |s| s.state);
    let ready_url = hub
        .config
        .location(next.unwrap_or(&server_url(user, server)));
    if state == ServerState::Running {
        return Ok(found(&ready_url));
    }
    let failure = if state == ServerState::Failed {
        last_failure(hub, user, server).await
    } else {
        None
    };
    Ok(Page::new("spawn_pending.html")
        .user(&me.user, &me.session)
        .insert("owner", &owner.user.name)
        .insert(
            "server",
            &ServerView::of(&hub.config, user, server, row.as_ref()),
        )
        .insert("ready_url", &ready_url)
        .insert(
            "spawn_url",
            &with_next(&hub_path("/hub/spawn", user, server), next),
        )
        .insert("failure", &failure)
        .into_response())
}

// ---- stop -----------------------------------------------------------------------------------

/// The stop form.
#[derive(Deserialize)]
pub struct StopForm {
    /// Where to go back to (the home or admin page).
    #[serde(default)]
    next: String,
}

/// `POST /hub/stop/{user}`.
pub async fn stop_default(
    State(hub): State<HubState>,
    Path(user): Path<String>,
    form: CsrfForm<StopForm>,
) -> Result<Response, PageError> {
    stop(&hub, form, &user, "").await
}

/// `POST /hub/stop/{user}/{server}`.
pub async fn stop_named(
    State(hub): State<HubState>,
    Path((user, server)): Path<(String, String)>,
    form: CsrfForm<StopForm>,
) -> Result<Response, PageError> {
    stop(&hub, form, &user, &server).await
}

async fn stop(
    hub: &HubState,
    form: CsrfForm<StopForm>,
    user: &str,
    server: &str,
) -> Result<Response, PageError> {
    let me = form.logged_in()?;
    let owner = owner_for(hub, &me.user, user, server, "delete:servers").await?;
    if let Some(row) = find_server(hub, &owner.user, server).await? {
        spawner::stop_server(hub, &owner.user.name, &row, Some(&me.user.name)).await?;
    }
    Ok(see_other(&hub.config.location(
        safe_next(&form.form.next).as_deref().unwrap_or("/hub/home"),
    )))
}

// ---- /hub/user/... --------------------------------------------------------------------------

/// `GET /hub/user/{user}[/]`.
pub async fn user_root(
    State(hub): State<HubState>,
    me: LoggedIn,
    uri: Uri,
) -> Result<Response, PageError> {
    user_redirect(&hub, &me, &uri).await
}

/// `GET /hub/user/{user}/{*rest}`.
pub async fn user_path(
    State(hub): State<HubState>,
    me: LoggedIn,
    uri: Uri,
) -> Result<Response, PageError> {
    user_redirect(&hub, &me, &uri).await
}

/// Percent-decodes a path segment.
fn decode_segment(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Like JupyterHub's `/hub/user/<name>/<path>`: the proxy sends here the visitors of a server it
/// has no route for. A running server (the route just appeared) → back to `/user/...`; else the
/// spawn page (or the progress page while it starts). The first path segment names a server when
/// the user has a server of that name, else the path is the default server's.
async fn user_redirect(hub: &HubState, me: &LoggedIn, uri: &Uri) -> Result<Response, PageError> {
    let raw = uri.path().strip_prefix("/hub/user/").unwrap_or_default();
    let (raw_user, raw_rest) = raw.split_once('/').unwrap_or((raw, ""));
    let user = decode_segment(raw_user)
        .ok_or_else(|| PageError::bad_request("Invalid user name in the path."))?;
    let first = raw_rest.split('/').next().unwrap_or_default();
    let first = decode_segment(first).unwrap_or_default();
    let owner_row = match hub.store.get_user(&user).await {
        Ok(u) => Some(u),
        Err(StoreError::NotFound | StoreError::Invalid(_)) => None,
        Err(e) => return Err(PageError::unexpected(e)),
    };
    let server = match &owner_row {
        Some(owner) if !first.is_empty() => match hub.store.get_server(owner.id, &first).await {
            Ok(_) => first,
            Err(StoreError::NotFound | StoreError::Invalid(_)) => String::new(),
            Err(e) => return Err(PageError::unexpected(e)),
        },
        _ => String::new(),
    };
    let owner = owner_for(hub, &me.user, &user, &server, "access:servers").await?;
    let row = find_server(hub, &owner.user, &server).await?;
    // The page asked for, on the server.
    let mut original = format!("/user/{raw_user}/{raw_rest}");
    if let Some(query) = uri.query() {
        original.push('?');
        original.push_str(query);
    }
    match row.map(|s| s.state) {
        Some(ServerState::Running) => Ok(found(&hub.config.location(&original))),
        Some(ServerState::Starting | ServerState::Stopping) => Ok(found(&with_next(
            &hub_path("/hub/spawn-pending", &user, &server),
            safe_next(&original).as_deref(),
        ))),
        _ => Ok(found(&with_next(
            &hub_path("/hub/spawn", &user, &server),
            safe_next(&original).as_deref(),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_decode() {
        assert_eq!(decode_segment("alice").as_deref(), Some("alice"));
        assert_eq!(decode_segment("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(decode_segment("%zz"), None);
    }
}
