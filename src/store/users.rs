//! Users and groups.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::AssertSqlSafe;

use super::error::conflict_as;
use super::servers::ServerRow;
use super::{
    BeginWrite, Engine, MAX_NAME_LEN, Result, Store, StoreError, check_limit, found, from_json,
    normalize_name, now, object_json, on_pool, placeholders, state_list,
};
use crate::store::models::{Group, GroupDetail, Server, ServerState, User, UserDetail};

/// JupyterHub's `state` filter of the users list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserStateFilter {
    /// Users with at least one running server.
    Ready,
    /// Users with at least one server running, starting or stopping.
    Active,
    /// Users with no active server.
    Inactive,
}

impl UserStateFilter {
    /// Parses JupyterHub's `state` query parameter.
    pub fn parse(s: &str) -> Option<UserStateFilter> {
        match s {
            "ready" => Some(UserStateFilter::Ready),
            "active" => Some(UserStateFilter::Active),
            "inactive" => Some(UserStateFilter::Inactive),
            _ => None,
        }
    }
}

/// JupyterHub's `sort` of the users list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UserSort {
    /// By internal id: creation order (JupyterHub's default).
    #[default]
    Id,
    Name,
    /// By last activity, users never active first (last when descending), then by id.
    LastActivity,
}

impl UserSort {
    /// Parses JupyterHub's `sort` query parameter (`id`, `name`, `last_activity`, each with an
    /// optional `-` prefix for descending order) into the sort and whether it descends.
    pub fn parse(s: &str) -> Option<(UserSort, bool)> {
        let (descending, key) = match s.strip_prefix('-') {
            Some(key) => (true, key),
            None => (false, s),
        };
        let sort = match key {
            "id" => UserSort::Id,
            "name" => UserSort::Name,
            "last_activity" => UserSort::LastActivity,
            _ => return None,
        };
        Some((sort, descending))
    }
}

/// A request for a page of users.
#[derive(Debug, Clone)]
pub struct UserQuery {
    pub state: Option<UserStateFilter>,
    pub sort: UserSort,
    pub descending: bool,
    /// Rows to skip (after `after`, when given).
    pub offset: u64,
    /// Keyset cursor: only users whose name sorts after this one (before it when descending).
    /// Only with [`UserSort::Name`]; the page's [`UserPage::next_after`] is the next cursor.
    pub after: Option<String>,
    /// 1 to [`MAX_PAGE_LIMIT`](crate::store::MAX_PAGE_LIMIT).
    pub limit: u32,
    /// Include stopped and failed servers in each user's `servers` (JupyterHub's
    /// `include_stopped_servers`); by default only active ones.
    pub include_stopped_servers: bool,
    /// Only these users (`None`: all users).
    pub only: Option<UserSubset>,
    /// Only users whose name contains this text, ignoring ASCII case (JupyterHub's
    /// `name_filter`, a substring match like its `name ILIKE '%…%'`).
    pub name_filter: Option<String>,
}

/// Some users: those named and the members of the groups named (what a `list:users` scope
/// filtered by `!user=` and `!group=` lets a caller list). Empty lists select no one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserSubset {
    pub users: Vec<String>,
    pub groups: Vec<String>,
}

impl Default for UserQuery {
    fn default() -> Self {
        UserQuery {
            state: None,
            sort: UserSort::Id,
            descending: false,
            offset: 0,
            after: None,
            limit: 50,
            include_stopped_servers: false,
            only: None,
            name_filter: None,
        }
    }
}

/// A page of users with their groups and servers.
#[derive(Debug, Clone, PartialEq)]
pub struct UserPage {
    pub items: Vec<UserDetail>,
    /// Users matching the state filter, on all pages (JupyterHub's `_pagination.total`).
    pub total: u64,
    pub offset: u64,
    pub limit: u32,
    /// The offset of the next page (relative to `after`, when given); `None` on the last page.
    pub next_offset: Option<u64>,
    /// The keyset cursor of the next page when sorting by name; `None` on the last page.
    pub next_after: Option<String>,
}

/// A page of groups with their members.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupPage {
    pub items: Vec<GroupDetail>,
    pub total: u64,
    pub next_offset: Option<u64>,
}

#[derive(sqlx::FromRow)]
struct GroupRow {
    id: i64,
    name: String,
    properties: String,
    created: DateTime<Utc>,
}

impl GroupRow {
    fn into_model(self) -> Result<Group> {
        Ok(Group {
            properties: from_json("groups.properties", &self.properties)?,
            id: self.id,
            name: self.name,
            created: self.created,
        })
    }
}

#[derive(sqlx::FromRow)]
struct Membership {
    owner_id: i64,
    name: String,
}

/// A row of [`details_sql`]: a user, one of their servers (none: all `s_` columns null)
/// and their groups as a JSON array.
#[derive(sqlx::FromRow)]
struct DetailRow {
    #[sqlx(flatten)]
    user: User,
    s_id: Option<i64>,
    s_name: Option<String>,
    s_display_name: Option<String>,
    s_profile: Option<String>,
    s_user_options: Option<String>,
    s_state: Option<String>,
    s_spawner_state: Option<String>,
    s_url: Option<String>,
    s_started: Option<DateTime<Utc>>,
    s_last_activity: Option<DateTime<Utc>>,
    s_created: Option<DateTime<Utc>>,
    group_names: String,
}

impl DetailRow {
    /// The row's server, if it has one.
    fn server(&mut self) -> Result<Option<Server>> {
        let Some(id) = self.s_id else {
            return Ok(None);
        };
        let missing = |column: &str| super::error::corrupt(column, "NULL");
        let row = ServerRow {
            id,
            user_id: self.user.id,
            name: self.s_name.take().ok_or_else(|| missing("servers.name"))?,
            display_name: self.s_display_name.take(),
            profile: self.s_profile.take(),
            user_options: self
                .s_user_options
                .take()
                .ok_or_else(|| missing("servers.user_options"))?,
            state: self
                .s_state
                .take()
                .ok_or_else(|| missing("servers.state"))?,
            spawner_state: self
                .s_spawner_state
                .take()
                .ok_or_else(|| missing("servers.spawner_state"))?,
            url: self.s_url.take(),
            started: self.s_started,
            last_activity: self.s_last_activity,
            created: self.s_created.ok_or_else(|| missing("servers.created"))?,
        };
        row.into_model().map(Some)
    }
}

/// The users of [`details_sql`]'s rows, in their order.
fn details_of(rows: Vec<DetailRow>) -> Result<Vec<UserDetail>> {
    let mut details: Vec<UserDetail> = Vec::new();
    for mut row in rows {
        let server = row.server()?;
        match details.last_mut() {
            Some(detail) if detail.user.id == row.user.id => detail.servers.extend(server),
            _ => details.push(UserDetail {
                groups: sorted(from_json("groups.name", &row.group_names)?),
                servers: server.into_iter().collect(),
                user: row.user,
            }),
        }
    }
    // Servers by name here, not in the statement: ordering the rows by user, then server name,
    // took PostgreSQL a sort over the page that ordering by user alone does not (bench/hub).
    for detail in &mut details {
        if detail.servers.len() > 1 {
            detail.servers.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        }
    }
    Ok(details)
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort_unstable();
    names
}

/// A LIKE pattern matching names that contain `text` (lowercased), with `%`, `_` and the escape
/// character `\` escaped.
fn like_contains(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars().flat_map(char::to_lowercase) {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

fn check_offset(offset: u64) -> Result<i64> {
    i64::try_from(offset).map_err(|_| StoreError::Invalid("offset is too large".to_owned()))
}

fn user_name(name: &str) -> Result<String> {
    if name.is_empty() {
        return Err(StoreError::Invalid("user name is empty".to_owned()));
    }
    normalize_name("user", name)
}

fn group_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(StoreError::Invalid(format!(
            "group name must have 1 to {MAX_NAME_LEN} characters"
        )));
    }
    Ok(())
}

fn user_conflict(name: &str) -> String {
    format!("a user named {name:?} exists (names are compared ignoring ASCII case)")
}

/// One statement reading the users `users_sql` selects (a `SELECT` of `users` rows, with its
/// own order and limit) with their servers (the active ones, or all) and their groups: one
/// row per user and server (one row with no server for a user without), in `order` (an
/// order of the users, on alias `u`, that keeps each user's rows together; `details_of` sorts
/// each user's servers by name).
/// The groups come as a JSON array of names, in no order (`details_of` sorts them).
/// `label` names the statement in a SQL comment.
fn details_sql(
    engine: Engine,
    label: &str,
    users_sql: &str,
    order: &str,
    include_stopped_servers: bool,
) -> String {
    let state_filter = if include_stopped_servers {
        String::new()
    } else {
        format!(" AND s.state IN ({})", state_list(&ServerState::ACTIVE))
    };
    // Unordered: `details_of` sorts them (an ordered aggregate makes SQLite build a sorter per
    // user).
    let groups = match engine {
        // Each membership's group looked up by key: joined, PostgreSQL hashed the groups once
        // per user (a third of the culler's page in the database, bench/hub).
        Engine::Postgres => {
            "COALESCE((SELECT json_agg((SELECT g.name FROM groups g \
             WHERE g.id = ug.group_id)) FROM user_groups ug \
             WHERE ug.user_id = u.id)::text, '[]')"
        }
        Engine::Sqlite => {
            "(SELECT json_group_array(g.name) FROM user_groups ug \
             JOIN groups g ON g.id = ug.group_id WHERE ug.user_id = u.id)"
        }
    };
    format!(
        "/* {label} */ SELECT u.id, u.name, u.admin, u.created, u.last_activity, \
         s.id AS s_id, s.name AS s_name, s.display_name AS s_display_name, \
         s.profile AS s_profile, s.user_options AS s_user_options, s.state AS s_state, \
         s.spawner_state AS s_spawner_state, s.url AS s_url, s.started AS s_started, \
         s.last_activity AS s_last_activity, s.created AS s_created, \
         {groups} AS group_names \
         FROM ({users_sql}) u LEFT JOIN servers s ON s.user_id = u.id{state_filter} \
         ORDER BY {order}"
    )
}

/// [`Store::list_users`]'s two statements on `engine`, `count` and `page`, and the values to
/// bind to both first (`subset_binds`; the page's then take the name cursor if any, the limit
/// plus one and the offset). A pure function: `bench/hub/ready_page.sql` holds its page for the
/// culler's walk, checked against it by `sql_tests`.
pub(crate) fn list_users_sql(engine: Engine, q: &UserQuery) -> Result<ListUsersSql> {
    if q.after.is_some() && q.sort != UserSort::Name {
        return Err(StoreError::Invalid(
            "a name cursor needs the users sorted by name".to_owned(),
        ));
    }
    // Bind parameters in order: the subset's names, then the cursor, the limit, the offset.
    let mut subset_binds: Vec<String> = Vec::new();
    let mut subset = String::new();
    if let Some(only) = &q.only {
        let mut any = Vec::new();
        if !only.users.is_empty() {
            any.push(format!(
                "u.name IN ({})",
                placeholders(subset_binds.len() + 1, only.users.len())
            ));
            subset_binds.extend(only.users.iter().cloned());
        }
        if !only.groups.is_empty() {
            any.push(format!(
                "u.id IN (SELECT ug.user_id FROM user_groups ug \
                 JOIN groups g ON g.id = ug.group_id WHERE g.name IN ({}))",
                placeholders(subset_binds.len() + 1, only.groups.len())
            ));
            subset_binds.extend(only.groups.iter().cloned());
        }
        if any.is_empty() {
            any.push("FALSE".to_owned());
        }
        subset = format!(" AND ({})", any.join(" OR "));
    }
    // Names are ASCII and `name_norm` is the name lowercased, so a lowercased pattern
    // matches ignoring case on both engines (PostgreSQL's LIKE is case-sensitive).
    let name_pattern = q
        .name_filter
        .as_deref()
        .filter(|f| !f.is_empty())
        .map(like_contains);
    if let Some(pattern) = &name_pattern {
        subset.push_str(&format!(
            " AND u.name_norm LIKE ${} ESCAPE '\\'",
            subset_binds.len() + 1
        ));
        subset_binds.push(pattern.clone());
    }
    let running = state_list(&[ServerState::Running]);
    let active = state_list(&ServerState::ACTIVE);
    let (filter, servers_count) = match q.state {
        None => (String::new(), None),
        Some(UserStateFilter::Ready) => (
            format!(" AND u.id IN (SELECT user_id FROM servers WHERE state IN ({running}))"),
            Some(format!(
                "SELECT COUNT(DISTINCT user_id) FROM servers WHERE state IN ({running})"
            )),
        ),
        Some(UserStateFilter::Active) => (
            format!(" AND u.id IN (SELECT user_id FROM servers WHERE state IN ({active}))"),
            Some(format!(
                "SELECT COUNT(DISTINCT user_id) FROM servers WHERE state IN ({active})"
            )),
        ),
        Some(UserStateFilter::Inactive) => (
            format!(" AND u.id NOT IN (SELECT user_id FROM servers WHERE state IN ({active}))"),
            Some(format!(
                "SELECT (SELECT COUNT(*) FROM users) - \
                 (SELECT COUNT(DISTINCT user_id) FROM servers WHERE state IN ({active}))"
            )),
        ),
    };
    // Over all users, a state's total is counted from the servers alone.
    let count = match servers_count {
        Some(count) if q.only.is_none() && name_pattern.is_none() => count,
        _ => format!("SELECT COUNT(*) FROM users u WHERE TRUE{subset}{filter}"),
    };
    let count = format!("/* list_users:count */ {count}");
    let (dir, cmp, nulls) = if q.descending {
        ("DESC", "<", "NULLS LAST")
    } else {
        ("ASC", ">", "NULLS FIRST")
    };
    let order = match q.sort {
        UserSort::Id => format!("u.id {dir}"),
        UserSort::Name => format!("u.name {dir}"),
        UserSort::LastActivity => format!("u.last_activity {dir} {nulls}, u.id {dir}"),
    };
    // The culler's walk (users with a ready or active server, by id, nothing else filtering
    // them) takes the page's ids straight off the `servers_state` index: a skipped user
    // costs an index step, not a lookup of the user's row.
    let servers_states = match q.state {
        Some(UserStateFilter::Ready) => Some(&running),
        Some(UserStateFilter::Active) => Some(&active),
        _ => None,
    };
    let page = match servers_states {
        Some(states) if q.sort == UserSort::Id && q.only.is_none() && name_pattern.is_none() => {
            // `CAST`: see `sql_tests::no_limit_is_a_bare_parameter`.
            let ids = format!(
                "SELECT user_id FROM servers WHERE state IN ({states}) GROUP BY user_id \
                 ORDER BY user_id {dir} LIMIT CAST($1 AS BIGINT) OFFSET $2"
            );
            match engine {
                // PostgreSQL's planner, given `IN (…)` of a page of ids, hashes them and
                // reads every user (a sequential scan of the table, once analyzed); given
                // an array, it looks the page's users up by key.
                Engine::Postgres => {
                    format!("SELECT u.* FROM users u WHERE u.id = ANY(ARRAY({ids}))")
                }
                Engine::Sqlite => format!("SELECT u.* FROM users u WHERE u.id IN ({ids})"),
            }
        }
        _ => {
            let mut page = format!("SELECT u.* FROM users u WHERE TRUE{subset}{filter}");
            let mut n = subset_binds.len();
            if q.after.is_some() {
                n += 1;
                page.push_str(&format!(" AND u.name {cmp} ${n}"));
            }
            page.push_str(&format!(
                " ORDER BY {order} LIMIT CAST(${} AS BIGINT) OFFSET ${}",
                n + 1,
                n + 2
            ));
            page
        }
    };
    let page = details_sql(
        engine,
        "list_users:page",
        &page,
        &order,
        q.include_stopped_servers,
    );
    Ok(ListUsersSql {
        count,
        page,
        subset_binds,
    })
}

/// See [`list_users_sql`].
pub(crate) struct ListUsersSql {
    pub count: String,
    pub page: String,
    pub subset_binds: Vec<String>,
}

impl Store {
    // ---- users ----------------------------------------------------------------------------

    /// Creates a user. `Conflict` if a user of that name, ignoring ASCII case, exists.
    pub async fn create_user(&self, name: &str, admin: bool) -> Result<User> {
        let _changed = self.users_changing();
        let norm = user_name(name)?;
        on_pool!(self, p => sqlx::query_as::<_, User>(
            "INSERT INTO users (name, name_norm, admin, created) VALUES ($1, $2, $3, $4) \
             RETURNING *",
        )
        .bind(name)
        .bind(&norm)
        .bind(admin)
        .bind(now())
        .fetch_one(p)
        .await
        .map_err(|e| conflict_as(e, || user_conflict(name))))
    }

    /// The user named exactly `name`.
    pub async fn get_user(&self, name: &str) -> Result<User> {
        on_pool!(self, p => sqlx::query_as::<_, User>("SELECT * FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(p)
            .await?)
        .ok_or(StoreError::NotFound)
    }

    pub async fn get_user_by_id(&self, id: i64) -> Result<User> {
        on_pool!(self, p => sqlx::query_as::<_, User>("SELECT * FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(p)
            .await?)
        .ok_or(StoreError::NotFound)
    }

    /// The user with groups and servers, in one statement (`user_details:one`).
    pub async fn get_user_detail(
        &self,
        name: &str,
        include_stopped_servers: bool,
    ) -> Result<UserDetail> {
        let sql = details_sql(
            self.engine(),
            "user_details:one",
            "SELECT * FROM users WHERE name = $1",
            "u.id",
            include_stopped_servers,
        );
        let rows = on_pool!(self, p => sqlx::query_as::<_, DetailRow>(AssertSqlSafe(sql))
            .bind(name)
            .fetch_all(p)
            .await?);
        let mut details = details_of(rows)?;
        details.pop().ok_or(StoreError::NotFound)
    }

    pub async fn set_user_admin(&self, name: &str, admin: bool) -> Result<User> {
        let _changed = self.users_changing();
        let result = (async {
            on_pool!(self, p => sqlx::query_as::<_, User>(
            "UPDATE users SET admin = $2 WHERE name = $1 RETURNING *",
        )
        .bind(name)
        .bind(admin)
        .fetch_optional(p)
        .await?)
            .ok_or(StoreError::NotFound)
        })
        .await;
        self.auth_changed();
        result
    }

    /// Renames a user (JupyterHub's `PATCH /users/{name}`). Their servers, tokens and groups
    /// follow; audit events keep the old name.
    pub async fn rename_user(&self, name: &str, new_name: &str) -> Result<User> {
        let _changed = self.users_changing();
        let result = (async {
            let norm = user_name(new_name)?;
            on_pool!(self, p => sqlx::query_as::<_, User>(
            "UPDATE users SET name = $2, name_norm = $3 WHERE name = $1 RETURNING *",
        )
        .bind(name)
        .bind(new_name)
        .bind(&norm)
        .fetch_optional(p)
        .await
        .map_err(|e| conflict_as(e, || user_conflict(new_name)))?)
            .ok_or(StoreError::NotFound)
        })
        .await;
        self.auth_changed();
        result
    }

    /// Deletes a user with their servers, tokens, sessions, OAuth codes and group memberships.
    pub async fn delete_user(&self, name: &str) -> Result<()> {
        let _changed = self.users_changing();
        let result = (async {
            found(
                on_pool!(self, p => sqlx::query("DELETE FROM users WHERE name = $1")
            .bind(name)
            .execute(p)
            .await?
            .rows_affected()),
            )
        })
        .await;
        self.auth_changed();
        result
    }

    /// Moves the user's last activity forward to `at`; an older `at` changes nothing. Returns
    /// whether it moved.
    pub async fn touch_user_activity(&self, user_id: i64, at: DateTime<Utc>) -> Result<bool> {
        self.touch_last_activity("users", user_id, at).await
    }

    /// A page of users with their groups and servers.
    ///
    /// Costs two statements whatever the page size, never one per user, sent at once on two
    /// connections: the total (`list_users:count`) and the page with its users' servers and
    /// groups (`list_users:page`, [`details_sql`]). The statements carry these names as
    /// SQL comments. The `ready`
    /// and `active` filters, page and total, are driven by the `servers_state` index: their
    /// cost follows the number of running servers, not the number of users. With
    /// [`UserQuery::only`] the total counts the subset.
    ///
    /// [`UserQuery::name_filter`] is JupyterHub's substring match (`name ILIKE '%…%'`): no
    /// B-tree index serves a pattern that starts with `%`, so its page and total read the
    /// `name_norm` column of every user (an index-only scan of the unique index on PostgreSQL when
    /// the planner prefers it): about one scan per statement, never one statement per user.
    pub async fn list_users(&self, q: &UserQuery) -> Result<UserPage> {
        let limit = check_limit(q.limit)?;
        let offset = check_offset(q.offset)?;
        let ListUsersSql {
            count,
            page,
            subset_binds,
        } = list_users_sql(self.engine(), q)?;

        // The total and the page on two connections at once: one round trip's wait, not two.
        let (total, rows) = on_pool!(self, p => {
            let mut count = sqlx::query_scalar::<_, i64>(AssertSqlSafe(count));
            let mut query = sqlx::query_as::<_, DetailRow>(AssertSqlSafe(page));
            for name in &subset_binds {
                count = count.bind(name.as_str());
                query = query.bind(name.as_str());
            }
            if let Some(after) = &q.after {
                query = query.bind(after);
            }
            // One more row than asked tells whether there is a next page.
            let query = query.bind(limit + 1).bind(offset);
            tokio::try_join!(count.fetch_one(p), query.fetch_all(p))?
        });
        let mut items = details_of(rows)?;
        let more = items.len() > q.limit as usize;
        items.truncate(q.limit as usize);
        let next_offset = more.then(|| q.offset + items.len() as u64);
        let next_after = match (more, q.sort) {
            (true, UserSort::Name) => items.last().map(|d| d.user.name.clone()),
            _ => None,
        };
        Ok(UserPage {
            items,
            total: u64::try_from(total).unwrap_or(0),
            offset: q.offset,
            limit: q.limit,
            next_offset,
            next_after,
        })
    }

    // ---- groups ---------------------------------------------------------------------------

    /// Creates a group with `properties` (a JSON object).
    pub async fn create_group(&self, name: &str, properties: &Value) -> Result<Group> {
        let _changed = self.users_changing();
        group_name(name)?;
        let properties = object_json("group properties", properties)?;
        on_pool!(self, p => sqlx::query_as::<_, GroupRow>(
            "INSERT INTO groups (name, properties, created) VALUES ($1, $2, $3) RETURNING *",
        )
        .bind(name)
        .bind(&properties)
        .bind(now())
        .fetch_one(p)
        .await
        .map_err(|e| conflict_as(e, || format!("a group named {name:?} exists")))?)
        .into_model()
    }

    /// The group with its members, in two statements.
    pub async fn get_group(&self, name: &str) -> Result<GroupDetail> {
        let (row, members) = on_pool!(self, p => {
            let row = sqlx::query_as::<_, GroupRow>("SELECT * FROM groups WHERE name = $1")
                .bind(name)
                .fetch_optional(p)
                .await?
                .ok_or(StoreError::NotFound)?;
            let members = sqlx::query_scalar::<_, String>(
                "SELECT u.name FROM user_groups ug JOIN users u ON u.id = ug.user_id \
                 WHERE ug.group_id = $1 ORDER BY u.name",
            )
            .bind(row.id)
            .fetch_all(p)
            .await?;
            (row, members)
        });
        Ok(GroupDetail {
            group: row.into_model()?,
            users: members,
        })
    }

    /// A page of groups sorted by name with their members, in three statements (the total,
    /// the page, the page's members).
    pub async fn list_groups(&self, offset: u64, limit: u32) -> Result<GroupPage> {
        let limit_sql = check_limit(limit)?;
        let offset_sql = check_offset(offset)?;
        let (total, mut rows) = on_pool!(self, p => {
            let total = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM groups")
                .fetch_one(p)
                .await?;
            let rows = sqlx::query_as::<_, GroupRow>(
                "SELECT * FROM groups ORDER BY name LIMIT CAST($1 AS BIGINT) OFFSET $2",
            )
            .bind(limit_sql + 1)
            .bind(offset_sql)
            .fetch_all(p)
            .await?;
            (total, rows)
        });
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let mut members: HashMap<i64, Vec<String>> = HashMap::new();
        if !rows.is_empty() {
            let sql = format!(
                "SELECT ug.group_id AS owner_id, u.name FROM user_groups ug \
                 JOIN users u ON u.id = ug.user_id WHERE ug.group_id IN ({}) ORDER BY u.name",
                placeholders(1, rows.len())
            );
            let found = on_pool!(self, p => {
                let mut query = sqlx::query_as::<_, Membership>(AssertSqlSafe(sql));
                for row in &rows {
                    query = query.bind(row.id);
                }
                query.fetch_all(p).await?
            });
            for m in found {
                members.entry(m.owner_id).or_default().push(m.name);
            }
        }
        let next_offset = more.then(|| offset + rows.len() as u64);
        let items = rows
            .into_iter()
            .map(|row| {
                let users = members.remove(&row.id).unwrap_or_default();
                Ok(GroupDetail {
                    group: row.into_model()?,
                    users,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(GroupPage {
            items,
            total: u64::try_from(total).unwrap_or(0),
            next_offset,
        })
    }

    /// Deletes a group (its members stay).
    pub async fn delete_group(&self, name: &str) -> Result<()> {
        let _changed = self.users_changing();
        let result = (async {
            found(
                on_pool!(self, p => sqlx::query("DELETE FROM groups WHERE name = $1")
            .bind(name)
            .execute(p)
            .await?
            .rows_affected()),
            )
        })
        .await;
        self.auth_changed();
        result
    }

    /// Replaces the group's properties (a JSON object).
    pub async fn set_group_properties(&self, name: &str, properties: &Value) -> Result<Group> {
        let _changed = self.users_changing();
        let properties = object_json("group properties", properties)?;
        on_pool!(self, p => sqlx::query_as::<_, GroupRow>(
            "UPDATE groups SET properties = $2 WHERE name = $1 RETURNING *",
        )
        .bind(name)
        .bind(&properties)
        .fetch_optional(p)
        .await?)
        .ok_or(StoreError::NotFound)?
        .into_model()
    }

    /// Adds the named users to the group; members already in it stay. `NotFound` (and no
    /// change) if the group or any user does not exist.
    pub async fn add_group_members(&self, group: &str, users: &[String]) -> Result<()> {
        let _changed = self.users_changing();
        let result = (async {
            let names: BTreeSet<&str> = users.iter().map(String::as_str).collect();
            if names.is_empty() {
                return Ok(());
            }
            let count_sql = format!(
                "SELECT COUNT(*) FROM users WHERE name IN ({})",
                placeholders(1, names.len())
            );
            let insert_sql = format!(
                "INSERT INTO user_groups (user_id, group_id) \
             SELECT id, $1 FROM users WHERE name IN ({}) ON CONFLICT DO NOTHING",
                placeholders(2, names.len())
            );
            on_pool!(self, p => {
                let mut tx = p.begin_write().await?;
                let group_id = sqlx::query_scalar::<_, i64>("SELECT id FROM groups WHERE name = $1")
                    .bind(group)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or(StoreError::NotFound)?;
                let mut count = sqlx::query_scalar::<_, i64>(AssertSqlSafe(count_sql));
                let mut insert = sqlx::query(AssertSqlSafe(insert_sql)).bind(group_id);
                for name in &names {
                    count = count.bind(*name);
                    insert = insert.bind(*name);
                }
                if count.fetch_one(&mut *tx).await? != names.len() as i64 {
                    return Err(StoreError::NotFound);
                }
                insert.execute(&mut *tx).await?;
                tx.commit().await?;
            });
            Ok(())
        })
        .await;
        self.auth_changed();
        result
    }

    /// Removes the named users from the group; names that are not members are ignored.
    pub async fn remove_group_members(&self, group: &str, users: &[String]) -> Result<()> {
        let _changed = self.users_changing();
        let result = (async {
            let names: BTreeSet<&str> = users.iter().map(String::as_str).collect();
            let group_id = on_pool!(self, p => {
                sqlx::query_scalar::<_, i64>("SELECT id FROM groups WHERE name = $1")
                    .bind(group)
                    .fetch_optional(p)
                    .await?
            })
            .ok_or(StoreError::NotFound)?;
            if names.is_empty() {
                return Ok(());
            }
            let sql = format!(
                "DELETE FROM user_groups WHERE group_id = $1 AND user_id IN \
             (SELECT id FROM users WHERE name IN ({}))",
                placeholders(2, names.len())
            );
            on_pool!(self, p => {
                let mut query = sqlx::query(AssertSqlSafe(sql)).bind(group_id);
                for name in &names {
                    query = query.bind(*name);
                }
                query.execute(p).await?;
            });
            Ok(())
        })
        .await;
        self.auth_changed();
        result
    }

    /// The names of the user's groups, sorted.
    pub async fn user_groups(&self, user_id: i64) -> Result<Vec<String>> {
        Ok(on_pool!(self, p => sqlx::query_scalar::<_, String>(
            "SELECT g.name FROM user_groups ug JOIN groups g ON g.id = ug.group_id \
             WHERE ug.user_id = $1 ORDER BY g.name",
        )
        .bind(user_id)
        .fetch_all(p)
        .await?))
    }

    /// Makes the user a member of exactly the named groups, creating the missing ones (with
    /// empty properties), in one transaction: the sync of groups from an identity provider at
    /// login.
    pub async fn set_user_groups(&self, user_id: i64, groups: &[String]) -> Result<()> {
        let _changed = self.users_changing();
        let result = (async {
            let names: BTreeSet<&str> = groups.iter().map(String::as_str).collect();
            for name in &names {
                group_name(name)?;
            }
            let created = now();
            on_pool!(self, p => {
                let mut tx = p.begin_write().await?;
                let exists = sqlx::query_scalar::<_, i64>("SELECT id FROM users WHERE id = $1")
                    .bind(user_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                if exists.is_none() {
                    return Err(StoreError::NotFound);
                }
                if names.is_empty() {
                    sqlx::query("DELETE FROM user_groups WHERE user_id = $1")
                        .bind(user_id)
                        .execute(&mut *tx)
                        .await?;
                } else {
                    for name in &names {
                        sqlx::query(
                            "INSERT INTO groups (name, properties, created) VALUES ($1, '{}', $2) \
                             ON CONFLICT (name) DO NOTHING",
                        )
                        .bind(*name)
                        .bind(created)
                        .execute(&mut *tx)
                        .await?;
                    }
                    let list = placeholders(2, names.len());
                    let mut delete = sqlx::query(AssertSqlSafe(format!(
                        "DELETE FROM user_groups WHERE user_id = $1 AND group_id NOT IN \
                         (SELECT id FROM groups WHERE name IN ({list}))"
                    )))
                    .bind(user_id);
                    let mut insert = sqlx::query(AssertSqlSafe(format!(
                        "INSERT INTO user_groups (user_id, group_id) \
                         SELECT $1, id FROM groups WHERE name IN ({list}) ON CONFLICT DO NOTHING"
                    )))
                    .bind(user_id);
                    for name in &names {
                        delete = delete.bind(*name);
                        insert = insert.bind(*name);
                    }
                    delete.execute(&mut *tx).await?;
                    insert.execute(&mut *tx).await?;
                }
                tx.commit().await?;
            });
            Ok(())
        })
        .await;
        self.auth_changed();
        result
    }
}
