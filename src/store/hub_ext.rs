//! Additions for the hub's REST API.

use serde_json::Value;

use super::servers::ServerRow;
use super::{Result, Store, StoreError, object_json, on_pool};
use crate::store::models::Server;

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
}
