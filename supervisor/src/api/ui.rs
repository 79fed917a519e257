//! The dashboard at `/ui`: plain HTML, CSS and JavaScript compiled into the binary (no
//! front-end build step, no third-party assets). Same authentication as the API: the files
//! need `read`; with tokens configured, an unauthenticated request gets a 401 with a Basic
//! challenge, the browser asks for a user name (any) and password (the API token), and sends
//! them on every later request, the page's API calls included, which then have that token's
//! scopes (docs/cli.md, "Dashboard").
//!
//! The page is served with a strict Content-Security-Policy (scripts and styles only from
//! `/ui/`, no inline code, no framing), so a plugin's text shown in it cannot run as script.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::auth::Need;

/// The dashboard routes and their scope (part of the route table's policies).
pub const ROUTES: &[(axum::http::Method, &str, Need)] = &[
    (axum::http::Method::GET, "/ui", Need::Read),
    (axum::http::Method::GET, "/ui/app.js", Need::Read),
    (axum::http::Method::GET, "/ui/app.css", Need::Read),
];

const INDEX: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The dashboard's routes; merged into the API router. Other methods get the API's 405 body.
pub fn router() -> Router {
    let page = |ct: &'static str, body: &'static str| {
        get(move || async move { asset(ct, body) }).fallback(super::method_not_allowed)
    };
    Router::new()
        .route("/ui", page("text/html; charset=utf-8", INDEX))
        .route("/ui/app.js", page("text/javascript; charset=utf-8", APP_JS))
        .route("/ui/app.css", page("text/css; charset=utf-8", APP_CSS))
}
