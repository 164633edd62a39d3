//! The templates, embedded in the binary and compiled once, and [`Page`], a rendered page.

use std::sync::LazyLock;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tera::{Context, Tera};

use crate::store::{Session, User};

/// Every template, by name. Names end in `.html`, so tera autoescapes all of them.
const TEMPLATES_SOURCES: &[(&str, &str)] = &[
    ("base.html", include_str!("../../../templates/base.html")),
    ("error.html", include_str!("../../../templates/error.html")),
    ("login.html", include_str!("../../../templates/login.html")),
    ("home.html", include_str!("../../../templates/home.html")),
    ("spawn.html", include_str!("../../../templates/spawn.html")),
    (
        "spawn_pending.html",
        include_str!("../../../templates/spawn_pending.html"),
    ),
    ("token.html", include_str!("../../../templates/token.html")),
    ("jobs.html", include_str!("../../../templates/jobs.html")),
    ("admin.html", include_str!("../../../templates/admin.html")),
    (
        "consent.html",
        include_str!("../../../templates/consent.html"),
    ),
];

static TEMPLATES: LazyLock<Tera> = LazyLock::new(|| {
    let mut tera = Tera::new();
    tera.autoescape_on([".html"]);
    tera.add_raw_templates(TEMPLATES_SOURCES.iter().copied())
        .expect("the embedded templates compile (checked by the views tests)");
    tera
});

/// The content security policy of every page: no inline script or style, nothing from
/// elsewhere, no framing.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// A page to render: a template, its context and the response status.
pub struct Page {
    template: &'static str,
    context: Context,
    status: StatusCode,
}

/// The logged-in user as the layout shows it.
#[derive(Serialize)]
struct NavUser<'a> {
    name: &'a str,
    admin: bool,
}

impl Page {
    /// `template` with the layout's variables set for an anonymous visitor.
    pub fn new(template: &'static str) -> Page {
        let mut context = Context::new();
        context.insert("user", &None::<()>);
        context.insert("xsrf", "");
        context.insert("version", env!("CARGO_PKG_VERSION"));
        Page {
            template,
            context,
            status: StatusCode::OK,
        }
    }

    /// Shows `user` in the layout, with the session's CSRF token for the forms.
    pub fn user(mut self, user: &User, session: &Session) -> Page {
        self.context.insert(
            "user",
            &NavUser {
                name: &user.name,
                admin: user.admin,
            },
        );
        self.context.insert("xsrf", &session.csrf_token);
        self
    }

    /// Only the CSRF token (the login form of a browser that is not logged in).
    pub fn xsrf(mut self, session: &Session) -> Page {
        self.context.insert("xsrf", &session.csrf_token);
        self
    }

    /// Sets the template variable `key`.
    pub fn insert<T: Serialize + ?Sized>(mut self, key: &'static str, value: &T) -> Page {
        self.context.insert(key, value);
        self
    }

    /// The response status (200 by default).
    pub fn status(mut self, status: StatusCode) -> Page {
        self.status = status;
        self
    }

    /// The rendered HTML.
    pub fn render(&self) -> Result<String, tera::Error> {
        TEMPLATES.render(self.template, &self.context)
    }
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        match self.render() {
            Ok(body) => html(self.status, body),
            Err(e) => {
                tracing::error!(template = self.template, error = %e, "template rendering failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "500: the page could not be rendered",
                )
                    .into_response()
            }
        }
    }
}

/// An HTML response with the pages' headers: never cached (pages show tokens and CSRF
/// values), no sniffing, no framing, no inline scripts.
pub fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("same-origin"),
            ),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_compile() {
        for (name, _) in TEMPLATES_SOURCES {
            assert!(TEMPLATES.get_template_names().any(|n| n == *name), "{name}");
        }
    }

    #[test]
    fn error_page_escapes_the_message() {
        let html = Page::new("error.html")
            .insert("code", &400)
            .insert("reason", "Bad Request")
            .insert("message", "bad name <script>alert(1)</script>")
            .render()
            .unwrap();
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;&#x2F;script&gt;")
                || html.contains("&lt;script&gt;alert(1)&lt;/script&gt;")
        );
        assert!(!html.contains("<script>alert"));
    }
}
