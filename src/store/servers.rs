//! Users' servers and their lifecycle.
//!
//! Each transition is one conditional `UPDATE … WHERE state IN (…)`: of two hub processes that
//! start the same server at once, exactly one succeeds and the other gets `Conflict`.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::AssertSqlSafe;

use super::error::conflict_as;
use super::{
    Result, Store, StoreError, check_limit, from_json, normalize_name, now, object_json, on_pool,
    state_list, ts,
};
use crate::store::models::{Server, ServerState, ServerWithOwner};

/// What a start request sets; `None` keeps the value of the previous start (JupyterHub reuses
/// the previous `user_options` when a start gives none).
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    pub profile: Option<String>,
    /// A JSON object.
    pub user_options: Option<Value>,
    pub display_name: Option<String>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct ServerRow {
    pub(super) id: i64,
    pub(super) user_id: i64,
    pub(super) name: String,
    pub(super) display_name: Option<String>,
    pub(super) profile: Option<String>,
    pub(super) user_options: String,
    pub(super) state: String,
    pub(super) spawner_state: String,
    pub(super) url: Option<String>,
    pub(super) started: Option<DateTime<Utc>>,
    pub(super) last_activity: Option<DateTime<Utc>>,
    pub(super) created: DateTime<Utc>,
}

impl ServerRow {
    pub(crate) fn into_model(self) -> Result<Server> {
        Ok(Server {
            state: ServerState::parse(&self.state)
                .ok_or_else(|| super::error::corrupt("servers.state", &self.state))?,
            user_options: from_json("servers.user_options", &self.user_options)?,
            spawner_state: from_json("servers.spawner_state", &self.spawner_state)?,
            id: self.id,
            user_id: self.user_id,
            name: self.name,
            display_name: self.display_name,
            profile: self.profile,
            url: self.url,
            started: self.started,
            last_activity: self.last_activity,
            created: self.created,
        })
    }
}

#[derive(sqlx::FromRow)]
struct ServerWithOwnerRow {
    #[sqlx(flatten)]
    server: ServerRow,
    user_name: String,
}

impl Store {
    /// Creates a stopped server named `name` (`""` for the default server) for the user.
    /// `Conflict` if the user has a server whose name equals `name` ignoring ASCII case;
    /// `NotFound` if the user does not exist.
    pub async fn create_server(&self, user_id: i64, name: &str) -> Result<Server> {
        let _changed = self.users_changing();
        let norm = normalize_name("server", name)?;
        on_pool!(self, p => sqlx::query_as::<_, ServerRow>(
            "INSERT INTO servers (user_id, name, name_norm, created) VALUES ($1, $2, $3, $4) \
             RETURNING *",
        )
        .bind(user_id)
        .bind(name)
        .bind(&norm)
        .bind(now())
        .fetch_one(p)
        .await
        .map_err(|e| conflict_as(e, || format!(
            "the user has a server named {name:?} (names are compared ignoring ASCII case)"
        )))?)
        .into_model()
    }

    /// The user's server named exactly `name`.
    pub async fn get_server(&self, user_id: i64, name: &str) -> Result<Server> {
        on_pool!(self, p => sqlx::query_as::<_, ServerRow>(
            "SELECT * FROM servers WHERE user_id = $1 AND name = $2",
        )
        .bind(user_id)
        .bind(name)
        .fetch_optional(p)
        .await?)
        .ok_or(StoreError::NotFound)?
        .into_model()
    }

    /// The server `server` of the user named `user`, in one statement (a route's lookup).
    pub async fn get_server_by_names(&self, user: &str, server: &str) -> Result<Server> {
        on_pool!(self, p => sqlx::query_as::<_, ServerRow>(
            "SELECT s.* FROM servers s JOIN users u ON u.id = s.user_id \
             WHERE u.name = $1 AND s.name = $2",
        )
        .bind(user)
        .bind(server)
        .fetch_optional(p)
        .await?)
        .ok_or(StoreError::NotFound)?
        .into_model()
    }

    pub async fn get_server_by_id(&self, id: i64) -> Result<Server> {
        on_pool!(self, p => sqlx::query_as::<_, ServerRow>("SELECT * FROM servers WHERE id = $1")
            .bind(id)
            .fetch_optional(p)
            .await?)
        .ok_or(StoreError::NotFound)?
        .into_model()
    }

    /// All the user's servers, sorted by name.
    pub async fn list_user_servers(&self, user_id: i64) -> Result<Vec<Server>> {
        on_pool!(self, p => sqlx::query_as::<_, ServerRow>(
            "SELECT * FROM servers WHERE user_id = $1 ORDER BY name",
        )
        .bind(user_id)
        .fetch_all(p)
        .await?)
        .into_iter()
        .map(ServerRow::into_model)
        .collect()
    }

    /// Servers in any of `states` with their owners' names, by id after `after_id`, one
    /// statement per page: the proxy's routing table, the operator's and the culler's sweeps.
    pub async fn list_servers_in_states(
        &self,
        states: &[ServerState],
        after_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ServerWithOwner>> {
        if states.is_empty() {
            return Ok(Vec::new());
        }
        let limit = check_limit(limit)?;
        let states = state_list(states);
        let sql = format!(
            "SELECT s.*, u.name AS user_name FROM servers s JOIN users u ON u.id = s.user_id \
             WHERE s.state IN ({states}) AND s.id > $1 ORDER BY s.id LIMIT CAST($2 AS BIGINT)"
        );
        on_pool!(self, p => sqlx::query_as::<_, ServerWithOwnerRow>(AssertSqlSafe(sql))
            .bind(after_id.unwrap_or(0))
            .bind(limit)
            .fetch_all(p)
            .await?)
        .into_iter()
        .map(|row| {
            Ok(ServerWithOwner {
                user_name: row.user_name,
                server: row.server.into_model()?,
            })
        })
        .collect()
    }

    /// Stopped or Failed → Starting, at `at` (which becomes `started`). `Conflict` in any other
    /// state.
    pub async fn begin_start(
        &self,
        id: i64,
        request: &StartRequest,
        at: DateTime<Utc>,
    ) -> Result<Server> {
        let _changed = self.users_changing();
        let options = match &request.user_options {
            Some(v) => Some(object_json("user_options", v)?),
            None => None,
        };
        let row = on_pool!(self, p => sqlx::query_as::<_, ServerRow>(
            "UPDATE servers SET state = 'starting', profile = COALESCE($2, profile), \
             user_options = COALESCE($3, user_options), \
             display_name = COALESCE($4, display_name), url = NULL, started = $5, \
             last_activity = CASE WHEN last_activity IS NULL OR last_activity < $5 \
                 THEN $5 ELSE last_activity END \
             WHERE id = $1 AND state IN ('stopped', 'failed') RETURNING *",
        )
        .bind(id)
        .bind(&request.profile)
        .bind(&options)
        .bind(&request.display_name)
        .bind(ts(at))
        .fetch_optional(p)
        .await?);
        self.transitioned(id, row, "start").await
    }

    /// Starting → Running at `url`, with the backend's handle. `Conflict` in any other state.
    pub async fn mark_running(
        &self,
        id: i64,
        url: &str,
        spawner_state: &Value,
        at: DateTime<Utc>,
    ) -> Result<Server> {
        let _changed = self.users_changing();
        let spawner_state = object_json("spawner_state", spawner_state)?;
        let row = on_pool!(self, p => sqlx::query_as::<_, ServerRow>(
            "UPDATE servers SET state = 'running', url = $2, spawner_state = $3, \
             last_activity = CASE WHEN last_activity IS NULL OR last_activity < $4 \
                 THEN $4 ELSE last_activity END \
             WHERE id = $1 AND state = 'starting' RETURNING *",
        )
        .bind(id)
        .bind(url)
        .bind(&spawner_state)
        .bind(ts(at))
        .fetch_optional(p)
        .await?);
        self.transitioned(id, row, "mark running").await
    }

    /// Starting or Running → Stopping. `Conflict` in any other state.
    pub async fn begin_stop(&self, id: i64) -> Result<Server> {
        let _changed = self.users_changing();
        let row = on_pool!(self, p => sqlx::query_as::<_, ServerRow>(
            "UPDATE servers SET state = 'stopping' \
             WHERE id = $1 AND state IN ('starting', 'running') RETURNING *",
        )
        .bind(id)
        .fetch_optional(p)
        .await?);
        self.transitioned(id, row, "stop").await
    }

    /// Any state → Stopped, forgetting the URL (the backend reports the server gone). The
    /// backend's handle stays until [`Store::set_spawner_state`] replaces it.
    pub async fn mark_stopped(&self, id: i64) -> Result<Server> {
        let _changed = self.users_changing();
        on_pool!(self, p => sqlx::query_as::<_, ServerRow>(
            "UPDATE servers SET state = 'stopped', url = NULL WHERE id = $1 RETURNING *",
        )
        .bind(id)
        .fetch_optional(p)
        .await?)
        .ok_or(StoreError::NotFound)?
        .into_model()
    }

    /// Starting, Running or Stopping → Failed, forgetting the URL. `Conflict` when stopped or
    /// already failed.
    pub async fn mark_failed(&self, id: i64) -> Result<Server> {
        let _changed = self.users_changing();
        let row = on_pool!(self, p => sqlx::query_as::<_, ServerRow>(
            "UPDATE servers SET state = 'failed', url = NULL \
             WHERE id = $1 AND state IN ('starting', 'running', 'stopping') RETURNING *",
        )
        .bind(id)
        .fetch_optional(p)
        .await?);
        self.transitioned(id, row, "mark failed").await
    }

    /// Replaces the backend's handle (a JSON object).
    pub async fn set_spawner_state(&self, id: i64, spawner_state: &Value) -> Result<Server> {
        let _changed = self.users_changing();
        let spawner_state = object_json("spawner_state", spawner_state)?;
        on_pool!(self, p => sqlx::query_as::<_, ServerRow>(
            "UPDATE servers SET spawner_state = $2 WHERE id = $1 RETURNING *",
        )
        .bind(id)
        .bind(&spawner_state)
        .fetch_optional(p)
        .await?)
        .ok_or(StoreError::NotFound)?
        .into_model()
    }

    /// Moves the server's last activity forward to `at`; an older `at` changes nothing.
    /// Returns whether it moved.
    pub async fn touch_server_activity(&self, id: i64, at: DateTime<Utc>) -> Result<bool> {
        self.touch_last_activity("servers", id, at).await
    }

    /// Deletes a stopped or failed server with its OAuth client and that client's tokens.
    /// `Conflict` while it is active.
    pub async fn delete_server(&self, id: i64) -> Result<()> {
        let _changed = self.users_changing();
        let result = (async {
            let deleted = on_pool!(self, p => sqlx::query(
            "DELETE FROM servers WHERE id = $1 AND state IN ('stopped', 'failed')",
        )
        .bind(id)
        .execute(p)
        .await?
        .rows_affected());
            if deleted == 0 {
                let server = self.get_server_by_id(id).await?;
                return Err(StoreError::Conflict(format!(
                    "server is {}: stop it before deleting it",
                    server.state.as_str()
                )));
            }
            Ok(())
        })
        .await;
        self.auth_changed();
        result
    }

    /// The result of a conditional transition: the updated server, or why there was none.
    async fn transitioned(&self, id: i64, row: Option<ServerRow>, verb: &str) -> Result<Server> {
        match row {
            Some(row) => row.into_model(),
            None => {
                let server = self.get_server_by_id(id).await?;
                Err(StoreError::Conflict(format!(
                    "cannot {verb} a server that is {}",
                    server.state.as_str()
                )))
            }
        }
    }
}
