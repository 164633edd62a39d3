//! The append-only audit log: the store only inserts and lists; triggers in the schema refuse
//! updates and deletes. An event may carry a key (`event_key`, unique), which makes its insert
//! idempotent: the hub's audit spool (`hub::audit`) writes again events whose first insert met
//! a database outage.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::AssertSqlSafe;

use super::{Result, Store, check_limit, from_json, now, object_json, on_pool, ts};
use crate::store::models::{AuditAction, AuditEvent};

/// An event to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEvent {
    pub action: AuditAction,
    /// Who acted: a user or service name; `None` for the hub itself.
    pub actor: Option<String>,
    pub target_user: Option<String>,
    pub target_server: Option<String>,
    /// A JSON object.
    pub detail: Value,
}

impl NewAuditEvent {
    pub fn new(action: AuditAction) -> NewAuditEvent {
        NewAuditEvent {
            action,
            actor: None,
            target_user: None,
            target_server: None,
            detail: Value::Object(Default::default()),
        }
    }
}

/// Which events to list: newest first, filtered by all the fields that are set.
#[derive(Debug, Clone)]
pub struct AuditQuery {
    /// Keyset cursor: only events older than this id (the last id of the previous page).
    pub before_id: Option<i64>,
    /// Only events at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only events before this time.
    pub until: Option<DateTime<Utc>>,
    pub action: Option<AuditAction>,
    pub actor: Option<String>,
    pub target_user: Option<String>,
    /// 1 to [`MAX_PAGE_LIMIT`](crate::store::MAX_PAGE_LIMIT).
    pub limit: u32,
}

impl Default for AuditQuery {
    fn default() -> Self {
        AuditQuery {
            before_id: None,
            since: None,
            until: None,
            action: None,
            actor: None,
            target_user: None,
            limit: 100,
        }
    }
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    id: i64,
    occurred_at: DateTime<Utc>,
    action: String,
    actor: Option<String>,
    target_user: Option<String>,
    target_server: Option<String>,
    detail: String,
}

impl AuditRow {
    fn into_model(self) -> Result<AuditEvent> {
        Ok(AuditEvent {
            action: AuditAction::parse(&self.action)
                .ok_or_else(|| super::error::corrupt("audit_events.action", &self.action))?,
            detail: from_json("audit_events.detail", &self.detail)?,
            id: self.id,
            occurred_at: self.occurred_at,
            actor: self.actor,
            target_user: self.target_user,
            target_server: self.target_server,
        })
    }
}

/// A fresh key for [`Store::insert_audit_once`]: 128 random bits, as 32 lowercase hex digits.
pub fn new_audit_key() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random number generator failed");
    hex::encode(bytes)
}

impl Store {
    /// Appends an event, stamped with the current time (without a key: the hub writes through
    /// [`Store::insert_audit_once`]).
    pub async fn append_audit(&self, event: &NewAuditEvent) -> Result<AuditEvent> {
        let detail = object_json("audit detail", &event.detail)?;
        on_pool!(self, p => sqlx::query_as::<_, AuditRow>(
            "INSERT INTO audit_events (occurred_at, action, actor, target_user, target_server, \
             detail) VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
        )
        .bind(now())
        .bind(event.action.as_str())
        .bind(&event.actor)
        .bind(&event.target_user)
        .bind(&event.target_server)
        .bind(&detail)
        .fetch_one(p)
        .await?)
        .into_model()
    }

    /// Appends an event under `key`, a name for it unique among all events (made when the
    /// action happened, see [`new_audit_key`]), stamped `occurred_at` (the action's time, not the
    /// insert's): once only, so that writing it again (a retry after an insert whose answer was
    /// lost) changes nothing. Returns the stored event, or `None` when one with `key` was already
    /// there.
    pub async fn insert_audit_once(
        &self,
        key: &str,
        occurred_at: DateTime<Utc>,
        event: &NewAuditEvent,
    ) -> Result<Option<AuditEvent>> {
        let detail = object_json("audit detail", &event.detail)?;
        let row = on_pool!(self, p => sqlx::query_as::<_, AuditRow>(
            "INSERT INTO audit_events (occurred_at, action, actor, target_user, target_server, \
             detail, event_key) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (event_key) DO NOTHING RETURNING *",
        )
        .bind(ts(occurred_at))
        .bind(event.action.as_str())
        .bind(&event.actor)
        .bind(&event.target_user)
        .bind(&event.target_server)
        .bind(&detail)
        .bind(key)
        .fetch_optional(p)
        .await?);
        row.map(AuditRow::into_model).transpose()
    }

    /// Events newest first (by id, which follows insertion), one statement per page.
    pub async fn list_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEvent>> {
        let limit = check_limit(q.limit)?;
        let mut sql = String::from("SELECT * FROM audit_events WHERE TRUE");
        let mut n = 0;
        let mut condition = |set: bool, clause: &str| {
            if set {
                n += 1;
                sql.push_str(&format!(" AND {clause} ${n}"));
            }
        };
        // The binds below follow this order.
        condition(q.before_id.is_some(), "id <");
        condition(q.since.is_some(), "occurred_at >=");
        condition(q.until.is_some(), "occurred_at <");
        condition(q.action.is_some(), "action =");
        condition(q.actor.is_some(), "actor =");
        condition(q.target_user.is_some(), "target_user =");
        sql.push_str(&format!(
            " ORDER BY id DESC LIMIT CAST(${} AS BIGINT)",
            n + 1
        ));
        let rows = on_pool!(self, p => {
            let mut query = sqlx::query_as::<_, AuditRow>(AssertSqlSafe(sql));
            if let Some(id) = q.before_id {
                query = query.bind(id);
            }
            if let Some(since) = q.since {
                query = query.bind(ts(since));
            }
            if let Some(until) = q.until {
                query = query.bind(ts(until));
            }
            if let Some(action) = q.action {
                query = query.bind(action.as_str());
            }
            if let Some(actor) = &q.actor {
                query = query.bind(actor);
            }
            if let Some(user) = &q.target_user {
                query = query.bind(user);
            }
            query.bind(limit).fetch_all(p).await?
        });
        rows.into_iter().map(AuditRow::into_model).collect()
    }
}
