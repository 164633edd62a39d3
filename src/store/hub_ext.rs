//! Additions for the hub's REST API.

use serde_json::Value;

use super::error::conflict_as;
use super::servers::ServerRow;
use super::{BeginWrite, Result, Store, StoreError, normalize_name, object_json, on_pool};
use crate::store::models::{Server, ServerWithOwner};

#[derive(sqlx::FromRow)]
struct RouteRow {
    #[sqlx(flatten)]
    server: ServerRow,
    user_name: String,
}

/// A page of the running servers (`GET /hub/api/proxy`'s routing table).
#[derive(Debug, Clone, PartialEq)]
pub struct RunningPage {
    /// By owner name, then server name.
    pub items: Vec<ServerWithOwner>,
    /// Running servers on all pages.
    pub total: u64,
}

/// What `PATCH /users/{name}/servers/{server}` changes; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct ServerChanges {
    /// A new name (not the default server's `""`).
    pub name: Option<String>,
    pub display_name: Option<String>,
    /// A JSON object.
    pub user_options: Option<Value>,
}

impl Store {
    /// Sets the display name and user options (a JSON object) a stopped or failed server will
    /// start with (JupyterHub's `PUT /users/{name}/servers/{server}` body); `None` keeps the
    /// current value. `Conflict` while the server is active.
    pub async fn set_server_options(
        &self,
        id: i64,
        display_name: Option<&str>,
        user_options: Option<&Value>,
    ) -> Result<Server> {
        let _changed = self.users_changing();
        let options = match user_options {
            Some(v) => Some(object_json("user_options", v)?),
            None => None,
        };
        let row = on_pool!(self, p => sqlx::query_as::<_, ServerRow>(
            "UPDATE servers SET display_name = COALESCE($2, display_name), \
             user_options = COALESCE($3, user_options) \
             WHERE id = $1 AND state IN ('stopped', 'failed') RETURNING *",
        )
        .bind(id)
        .bind(display_name)
        .bind(&options)
        .fetch_optional(p)
        .await?);
        match row {
            Some(row) => row.into_model(),
            None => {
                let server = self.get_server_by_id(id).await?;
                Err(StoreError::Conflict(format!(
                    "server is {}: stop it before modifying it",
                    server.state.as_str()
                )))
            }
        }
    }

    /// Renames a stopped (or failed) server and sets its display name and user options, in one
    /// transaction (JupyterHub 6's `PATCH /users/{name}/servers/{server}`). A rename deletes the
    /// server's OAuth clients with their codes and tokens: they name the old server, and the
    /// next start registers the new one's.
    ///
    /// `NotFound` if there is no such server; `Invalid` while it is active (starting, running
    /// or stopping) or for a name the store refuses (including `""`: no server can become the
    /// default one); `Conflict` if the user has another server whose name equals the new one
    /// ignoring ASCII case.
    pub async fn modify_server(&self, id: i64, changes: &ServerChanges) -> Result<Server> {
        let _changed = self.users_changing();
        let result = (async {
        let norm = match changes.name.as_deref() {
            Some("") => {
                return Err(StoreError::Invalid(
                    "a server cannot be renamed to the default server's name \"\"".to_owned(),
                ));
            }
            Some(name) => Some(normalize_name("server", name)?),
            None => None,
        };
        let options = match &changes.user_options {
            Some(v) => Some(object_json("user_options", v)?),
            None => None,
        };
        let new_name = changes.name.as_deref();
        let row = on_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            let before = sqlx::query_as::<_, ServerRow>("SELECT * FROM servers WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?
                .into_model()?;
            if before.state.is_active() {
                return Err(StoreError::Invalid(format!(
                    "server {:?} is {}: stop it before modifying it",
                    before.name,
                    before.state.as_str()
                )));
            }
            let row = sqlx::query_as::<_, ServerRow>(
                "UPDATE servers SET name = COALESCE($2, name), name_norm = COALESCE($3, name_norm), \
                 display_name = COALESCE($4, display_name), \
                 user_options = COALESCE($5, user_options) \
                 WHERE id = $1 AND state IN ('stopped', 'failed') RETURNING *",
            )
            .bind(id)
            .bind(new_name)
            .bind(&norm)
            .bind(&changes.display_name)
            .bind(&options)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| conflict_as(e, || format!(
                "the user has a server named {:?} (names are compared ignoring ASCII case)",
                new_name.unwrap_or_default()
            )))?;
            if new_name.is_some_and(|n| n != before.name) {
                sqlx::query("DELETE FROM oauth_clients WHERE server_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            row
        });
        row.into_model()
        })
        .await;
        self.auth_changed();
        result
    }

    /// A page of the running servers with their owners' names, sorted by owner then server
    /// name, and how many run in all: two statements driven by the `servers_state` index, whose
    /// cost follows the number of running servers, not of users.
    pub async fn running_servers_page(&self, offset: u64, limit: u32) -> Result<RunningPage> {
        let limit = super::check_limit(limit)?;
        let offset = i64::try_from(offset)
            .map_err(|_| StoreError::Invalid("offset is too large".to_owned()))?;
        let (total, rows) = on_pool!(self, p => {
            let total = sqlx::query_scalar::<_, i64>(
                "/* running_servers:count */ SELECT COUNT(*) FROM servers WHERE state = 'running'",
            )
            .fetch_one(p)
            .await?;
            let rows = sqlx::query_as::<_, RouteRow>(
                "/* running_servers:page */ SELECT s.*, u.name AS user_name FROM servers s \
                 JOIN users u ON u.id = s.user_id WHERE s.state = 'running' \
                 ORDER BY u.name, s.name LIMIT CAST($1 AS BIGINT) OFFSET $2",
            )
            .bind(limit)
            .bind(offset)
            .fetch_all(p)
            .await?;
            (total, rows)
        });
        let items = rows
            .into_iter()
            .map(|row| {
                Ok(ServerWithOwner {
                    user_name: row.user_name,
                    server: row.server.into_model()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RunningPage {
            items,
            total: u64::try_from(total).unwrap_or(0),
        })
    }
}
