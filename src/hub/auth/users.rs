//! The user a login opens a session for: found, or created (and made admin) as the dev login
//! and the single sign-on login decide.

use super::super::HubState;
use crate::hub::page::PageError;
use crate::store::{StoreError, User};

/// The user called `name`, if there is one.
pub async fn find_user(hub: &HubState, name: &str) -> Result<Option<User>, PageError> {
    match hub.store.get_user(name).await {
        Ok(user) => Ok(Some(user)),
        Err(StoreError::NotFound) => Ok(None),
        Err(e) => Err(PageError::unexpected(e)),
    }
}

/// `found` (what [`find_user`] gave for `name`), else a new user `name`; made admin if `admin`.
pub async fn ensure_user(
    hub: &HubState,
    name: &str,
    found: Option<User>,
    admin: bool,
) -> Result<User, PageError> {
    let user = match found {
        Some(user) => user,
        None => match hub.store.create_user(name, admin).await {
            Ok(user) => user,
            // Created at the same moment by another login.
            Err(StoreError::Conflict(_)) => hub
                .store
                .get_user(name)
                .await
                .map_err(|e| PageError::from_store(format_args!("user {name}"), e))?,
            Err(e) => return Err(PageError::from_store(format_args!("user {name}"), e)),
        },
    };
    if admin && !user.admin {
        return hub
            .store
            .set_user_admin(name, true)
            .await
            .map_err(PageError::unexpected);
    }
    Ok(user)
}

/// The user a single sign-on login uses (created if missing, made admin if `admin`).
pub async fn find_or_create_oidc_user(
    hub: &HubState,
    name: &str,
    admin: bool,
) -> Result<User, PageError> {
    let found = find_user(hub, name).await?;
    ensure_user(hub, name, found, admin).await
}
