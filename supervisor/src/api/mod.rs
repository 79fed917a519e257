//! The REST API: [`router`] builds it from [`route_table`], one entry per method and path.
//!
//! Handlers are thin: they validate input into commands and call [`crate::control`]. Every
//! error leaves as [`error::ApiError`] (`{"error": {"code", "message"}}`), including unknown
//! routes, wrong methods, malformed JSON and wrong content types.
//!
//! **Boundary:** this module and `openapi.json` are the public REST contract; a test checks
//! that every route of the table is in the OpenAPI document.

pub mod error;
pub mod health;
pub mod hosts;
pub mod topics;
pub mod workers;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};

use crate::control::Control;
use error::ApiError;

/// What every handler gets.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The control plane.
    pub control: Arc<Control>,
}

/// One route: method, path (axum syntax) and handler.
pub struct Route {
    /// HTTP method.
    pub method: Method,
    /// Path with `{param}` placeholders, as in the OpenAPI document.
    pub path: &'static str,
    /// The handler.
    pub handler: MethodRouter<AppState>,
}

fn r(method: Method, path: &'static str, handler: MethodRouter<AppState>) -> Route {
    Route {
        method,
        path,
        handler,
    }
}

/// Every route of the API (the topics routes of the bus are merged in by [`router`]).
pub fn route_table() -> Vec<Route> {
    vec![
        r(Method::POST, "/v1/workers", post(workers::create)),
        r(Method::GET, "/v1/workers", get(workers::list)),
        r(Method::POST, "/v1/workers/recover", post(workers::recover)),
        r(Method::GET, "/v1/workers/{id}", get(workers::get)),
        r(Method::DELETE, "/v1/workers/{id}", delete(workers::delete)),
        r(Method::POST, "/v1/workers/{id}/start", post(workers::start)),
        r(Method::POST, "/v1/workers/{id}/stop", post(workers::stop)),
        r(
            Method::POST,
            "/v1/workers/{id}/code",
            post(workers::load_code),
        ),
        r(Method::PUT, "/v1/workers/{id}/code", put(workers::put_code)),
        r(
            Method::POST,
            "/v1/workers/{id}/code-from-url",
            post(workers::code_from_url),
        ),
        r(
            Method::GET,
            "/v1/workers/{id}/history",
            get(workers::history),
        ),
        r(Method::GET, "/v1/workers/{id}/tags", get(workers::get_tags)),
        r(Method::PUT, "/v1/workers/{id}/tags", put(workers::put_tags)),
        r(
            Method::GET,
            "/v1/workers/{id}/tags/{key}",
            get(workers::get_tag),
        ),
        r(
            Method::PUT,
            "/v1/workers/{id}/tags/{key}",
            put(workers::put_tag),
        ),
        r(
            Method::DELETE,
            "/v1/workers/{id}/tags/{key}",
            delete(workers::delete_tag),
        ),
        r(
            Method::POST,
            "/v1/workers/{id}/invoke",
            post(workers::invoke),
        ),
        r(Method::GET, "/v1/hosts", get(hosts::hosts)),
        r(Method::GET, "/v1/engines", get(hosts::engines)),
        r(Method::GET, "/health", get(health::health)),
        r(Method::GET, "/health/live", get(health::live)),
        r(Method::GET, "/metrics", get(health::metrics)),
        r(Method::GET, "/openapi.json", get(health::openapi)),
    ]
}

/// The whole API with its middleware (auth, request counting, body limit, fallbacks).
pub fn router(state: AppState) -> Router {
    router_with(state, Router::new())
}

/// [`router`] plus `extra` routes (which must not set a fallback), all behind the same
/// middleware.
pub fn router_with(state: AppState, extra: Router) -> Router {
    let config = state.control.config();
    // A base64 package is 4/3 of its size; leave room for the JSON around it.
    let body_limit =
        usize::try_from(config.max_code_bytes / 3 * 4 + (1 << 20)).unwrap_or(usize::MAX);
    let mut merged: Vec<(&'static str, MethodRouter<AppState>)> = Vec::new();
    for route in route_table() {
        match merged.iter_mut().find(|(p, _)| *p == route.path) {
            Some((_, mr)) => *mr = std::mem::take(mr).merge(route.handler),
            None => merged.push((route.path, route.handler)),
        }
    }
    let mut app = Router::new();
    for (path, mr) in merged {
        app = app.route(path, mr.fallback(method_not_allowed));
    }
    app.with_state(state.clone())
        .merge(extra)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .layer(axum::middleware::from_fn_with_state(state, count))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route; see /openapi.json".to_owned())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Paths reachable without the bearer token (probes).
fn is_public(path: &str) -> bool {
    path == "/health" || path == "/health/live"
}

/// Compares in time independent of where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authorize(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.control.config().api_token
        && !is_public(req.uri().path())
    {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => {}
            _ => return ApiError::Unauthorized.into_response(),
        }
    }
    next.run(req).await
}

async fn count(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().as_str().to_owned();
    let resp = next.run(req).await;
    state
        .control
        .metrics()
        .http_request(&method, resp.status().as_u16());
    resp
}
