//! The hub's one HTTP error type: JupyterHub's JSON error shape `{"status": N, "message": "..."}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::store::StoreError;

/// An error a handler returns. Unexpected errors are logged, never shown.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// 400, naming the field or value at fault.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no or invalid credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: authenticated but not allowed (the message names the missing scope).
    #[error("{0}")]
    Forbidden(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409: the state forbids it (already running, name taken, ...).
    #[error("{0}")]
    Conflict(String),
    /// 503 / 424 and friends: a dependency is not ready.
    #[error("{1}")]
    Status(StatusCode, String),
    /// 500: logged with its cause, shown as a generic message.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// `Result` of the hub's handlers.
pub type HubResult<T> = Result<T, HubError>;

impl HubError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            HubError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HubError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            HubError::Forbidden(_) => StatusCode::FORBIDDEN,
            HubError::NotFound(_) => StatusCode::NOT_FOUND,
            HubError::Conflict(_) => StatusCode::CONFLICT,
            HubError::Status(code, _) => *code,
            HubError::Unexpected(err) if database_unavailable(err) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            HubError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// 503: the database is out of reach; the message says so and the response carries
    /// `Retry-After`.
    pub fn database_unavailable() -> HubError {
        HubError::Status(
            StatusCode::SERVICE_UNAVAILABLE,
            UNAVAILABLE_MESSAGE.to_owned(),
        )
    }

    /// Maps a store error, naming `what` (e.g. "user alice") for NotFound.
    pub fn from_store(what: impl std::fmt::Display, err: StoreError) -> HubError {
        match err {
            StoreError::NotFound => HubError::NotFound(format!("{what} not found")),
            StoreError::Conflict(m) => HubError::Conflict(m),
            StoreError::Invalid(m) => HubError::BadRequest(m),
            StoreError::Unavailable(e) => {
                tracing::warn!(error = %e, "database unavailable");
                HubError::database_unavailable()
            }
            other => HubError::Unexpected(anyhow::Error::new(other)),
        }
    }
}

impl From<StoreError> for HubError {
    fn from(err: StoreError) -> HubError {
        HubError::from_store("resource", err)
    }
}

/// What a client is told while the database is out of reach.
pub const UNAVAILABLE_MESSAGE: &str =
    "The hub's database is unavailable; try again in a few seconds";

/// Seconds a 503 asks the client to wait (`Retry-After`).
pub const RETRY_AFTER_SECS: u32 = 5;

/// Whether `err` (an error of the hub's own code, with its chain of causes) comes from a
/// database out of reach ([`StoreError::Unavailable`], or an sqlx error that says so).
pub fn database_unavailable(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<StoreError>()
            .is_some_and(StoreError::is_unavailable)
            || cause
                .downcast_ref::<sqlx::Error>()
                .is_some_and(crate::store::is_unavailable)
    })
}

impl IntoResponse for HubError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            HubError::Unexpected(err) if database_unavailable(err) => {
                tracing::warn!(error = %err, "database unavailable");
                UNAVAILABLE_MESSAGE.to_owned()
            }
            HubError::Unexpected(err) => {
                tracing::error!(error = ?err, "unexpected error");
                "Unhandled error in the hub".to_owned()
            }
            other => other.to_string(),
        };
        let mut response = (
            status,
            Json(serde_json::json!({"status": status.as_u16(), "message": message})),
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_out_of_reach_is_a_503_with_retry_after() {
        let from_store = HubError::from(StoreError::from(sqlx::Error::PoolTimedOut));
        let wrapped = HubError::Unexpected(anyhow::Error::new(StoreError::Unavailable(
            sqlx::Error::PoolClosed,
        )));
        for err in [from_store, wrapped] {
            assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
            let response = err.into_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers()[header::RETRY_AFTER], "5");
        }
        // Anything else unexpected stays a 500, without Retry-After.
        let other = HubError::from(StoreError::from(sqlx::Error::ColumnNotFound("x".into())));
        let response = other.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!response.headers().contains_key(header::RETRY_AFTER));
    }
}
