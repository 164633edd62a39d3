//! Errors of the pages: rendered from `error.html` with the status (the REST API keeps its JSON
//! errors). Unexpected errors are logged with their cause and shown as a generic message.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::render::Page;
use crate::hub::HubError;
use crate::hub::error::{RETRY_AFTER_SECS, UNAVAILABLE_MESSAGE, database_unavailable};
use crate::store::StoreError;

/// An error a page handler returns.
#[derive(Debug)]
pub struct PageError {
    status: StatusCode,
    message: String,
    cause: Option<anyhow::Error>,
}

impl PageError {
    /// An error with `status`, showing `message` to the user.
    pub fn new(status: StatusCode, message: impl Into<String>) -> PageError {
        PageError {
            status,
            message: message.into(),
            cause: None,
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> PageError {
        PageError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> PageError {
        PageError::new(StatusCode::FORBIDDEN, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> PageError {
        PageError::new(StatusCode::NOT_FOUND, message)
    }

    /// 409.
    pub fn conflict(message: impl Into<String>) -> PageError {
        PageError::new(StatusCode::CONFLICT, message)
    }

    /// 503: the database is out of reach (the response carries `Retry-After`).
    pub fn unavailable() -> PageError {
        PageError::new(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE_MESSAGE)
    }

    /// 500, logged with `cause`, never shown; 503 when the cause is a database out of reach.
    pub fn unexpected(cause: impl Into<anyhow::Error>) -> PageError {
        let cause = cause.into();
        if database_unavailable(&cause) {
            tracing::warn!(error = %cause, "database unavailable");
            return PageError::unavailable();
        }
        PageError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "Something went wrong in the hub. The error has been logged.".to_owned(),
            cause: Some(cause),
        }
    }

    /// Maps a store error, naming `what` (e.g. "user alice") when it is not found.
    pub fn from_store(what: impl std::fmt::Display, err: StoreError) -> PageError {
        match err {
            StoreError::NotFound => PageError::not_found(format!("No {what}.")),
            StoreError::Conflict(m) => PageError::conflict(m),
            StoreError::Invalid(m) => PageError::bad_request(m),
            StoreError::Unavailable(e) => {
                tracing::warn!(error = %e, "database unavailable");
                PageError::unavailable()
            }
            other => PageError::unexpected(other),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What the user is shown.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<StoreError> for PageError {
    fn from(err: StoreError) -> PageError {
        PageError::from_store("such resource", err)
    }
}

impl From<HubError> for PageError {
    fn from(err: HubError) -> PageError {
        match err {
            HubError::Unexpected(cause) => PageError::unexpected(cause),
            other => PageError::new(other.status(), other.to_string()),
        }
    }
}

impl std::fmt::Display for PageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        if let Some(cause) = &self.cause {
            tracing::error!(error = ?cause, "unexpected error in a page");
        }
        let mut response = Page::new("error.html")
            .status(self.status)
            .insert("code", &self.status.as_u16())
            .insert("reason", self.status.canonical_reason().unwrap_or("Error"))
            .insert("message", &self.message)
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
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
    fn a_database_out_of_reach_is_the_503_page() {
        let unavailable = || StoreError::Unavailable(sqlx::Error::PoolTimedOut);
        for err in [
            PageError::from(unavailable()),
            PageError::unexpected(unavailable()),
            PageError::from(HubError::from(unavailable())),
        ] {
            assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(err.message(), UNAVAILABLE_MESSAGE);
            let response = err.into_response();
            assert_eq!(response.headers()[header::RETRY_AFTER], "5");
        }
    }
}
