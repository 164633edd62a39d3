//! `/hub/token`: the user's API tokens and the OAuth tokens issued to their servers; create a
//! token (note, expiry; its value is shown once), revoke one.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, Utc};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Page, PageError, see_other};
use crate::hub::HubState;
use crate::hub::auth::session::{CsrfForm, LoggedIn};
use crate::scopes::ScopeSet;
use crate::store::{self, AuditAction, NewAuditEvent, NewToken, StoreError, Token, TokenOwner};

/// Longest token note accepted.
const MAX_NOTE_LEN: usize = 200;

/// The expiries the form offers, in seconds (0: never).
const EXPIRY_CHOICES: &[(i64, &str)] = &[
    (0, "Never"),
    (3600, "1 hour"),
    (86_400, "1 day"),
    (7 * 86_400, "1 week"),
    (30 * 86_400, "30 days"),
    (365 * 86_400, "1 year"),
];

#[derive(Serialize)]
struct Choice {
    seconds: i64,
    label: &'static str,
}

/// A token as the page lists it (never its value, which is not stored).
#[derive(Serialize)]
struct TokenRow {
    id: i64,
    prefix: String,
    kind: &'static str,
    note: String,
    client: Option<String>,
    scopes: String,
    created: String,
    expires: String,
    last_activity: String,
    expired: bool,
}

fn time(t: Option<DateTime<Utc>>, none: &str) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| none.to_owned())
}

impl TokenRow {
    fn of(t: &Token, now: DateTime<Utc>) -> TokenRow {
        TokenRow {
            id: t.id,
            prefix: t.prefix.clone(),
            kind: if t.oauth_client_id.is_some() {
                "OAuth"
            } else {
                "API"
            },
            note: t.note.clone().unwrap_or_default(),
            client: t.oauth_client_id.clone(),
            scopes: t.scopes.join(" "),
            created: time(Some(t.created), ""),
            expires: time(t.expires_at, "never"),
            last_activity: time(t.last_activity, "never"),
            expired: t.is_expired(now),
        }
    }
}

async fn token_page(
    hub: &HubState,
    me: &LoggedIn,
    new_token: Option<&str>,
    error: Option<&str>,
) -> Result<Page, PageError> {
    let now = store::now();
    let tokens = hub
        .store
        .list_tokens(&TokenOwner::User(me.user.id))
        .await
        .map_err(PageError::unexpected)?;
    let rows: Vec<TokenRow> = tokens.iter().map(|t| TokenRow::of(t, now)).collect();
    let choices: Vec<Choice> = EXPIRY_CHOICES
        .iter()
        .map(|(seconds, label)| Choice {
            seconds: *seconds,
            label,
        })
        .collect();
    Ok(Page::new("token.html")
        .user(&me.user, &me.session)
        .insert("tokens", &rows)
        .insert("choices", &choices)
        .insert("new_token", &new_token)
        .insert("error", &error))
}

/// `GET /hub/token`.
pub async fn page(State(hub): State<HubState>, me: LoggedIn) -> Result<Page, PageError> {
    token_page(&hub, &me, None, None).await
}

/// The token form.
#[derive(Deserialize)]
pub struct NewTokenForm {
    #[serde(default)]
    note: String,
    #[serde(default)]
    expires_in: String,
}

/// `POST /hub/token`: creates a token with the user's own scopes (JupyterHub's `inherit`, as
/// of now: the token never holds more than its owner at the time of use) and shows its value
/// once, in this response.
pub async fn create(
    State(hub): State<HubState>,
    form: CsrfForm<NewTokenForm>,
) -> Result<Response, PageError> {
    let me = form.logged_in()?;
    let form = form.form;
    let note = form.note.trim();
    if note.chars().count() > MAX_NOTE_LEN || note.chars().any(char::is_control) {
        return bad_request(
            &hub,
            &me,
            "The note must be at most 200 characters, without control characters.",
        )
        .await;
    }
    let seconds = match form.expires_in.trim() {
        "" => 0,
        s => match s.parse::<i64>() {
            Ok(n) if EXPIRY_CHOICES.iter().any(|(secs, _)| *secs == n) => n,
            _ => return bad_request(&hub, &me, "Choose an expiry from the list.").await,
        },
    };
    let now = store::now();
    let mut new = NewToken::new(
        TokenOwner::User(me.user.id),
        ScopeSet::for_user(&me.user.name, me.user.admin).to_strings(),
    );
    new.note = Some(if note.is_empty() {
        "Requested via token page".to_owned()
    } else {
        note.to_owned()
    });
    new.expires_at = (seconds > 0).then(|| now + Duration::seconds(seconds));
    let (value, token) = hub
        .store
        .create_token(&new)
        .await
        .map_err(PageError::unexpected)?;
    let mut event = NewAuditEvent::new(AuditAction::TokenCreate);
    event.actor = Some(me.user.name.clone());
    event.target_user = Some(me.user.name.clone());
    event.detail = json!({"token_id": token.id, "expires_in": seconds, "via": "token page"});
    hub.audit.record(event).await;
    Ok(token_page(&hub, &me, Some(&value), None)
        .await?
        .into_response())
}

async fn bad_request(hub: &HubState, me: &LoggedIn, message: &str) -> Result<Response, PageError> {
    Ok(token_page(hub, me, None, Some(message))
        .await?
        .status(StatusCode::BAD_REQUEST)
        .into_response())
}

/// `POST /hub/token/{id}/revoke`: revokes one of the user's tokens.
pub async fn revoke(
    State(hub): State<HubState>,
    Path(id): Path<i64>,
    form: CsrfForm<IgnoredAny>,
) -> Result<Response, PageError> {
    let me = form.logged_in()?;
    let token = match hub.store.get_token(id).await {
        Ok(token) if token.owner == TokenOwner::User(me.user.id) => token,
        Ok(_) | Err(StoreError::NotFound) => {
            return Err(PageError::not_found("You have no such token."));
        }
        Err(e) => return Err(PageError::unexpected(e)),
    };
    match hub.store.revoke_token(token.id).await {
        Ok(()) | Err(StoreError::NotFound) => {}
        Err(e) => return Err(PageError::unexpected(e)),
    }
    let mut event = NewAuditEvent::new(AuditAction::TokenRevoke);
    event.actor = Some(me.user.name.clone());
    event.target_user = Some(me.user.name.clone());
    event.detail = json!({"token_id": token.id, "via": "token page"});
    hub.audit.record(event).await;
    Ok(see_other("/hub/token"))
}
