//! The REST API: [`router`] builds it from [`route_table`], one entry per method and path.
//!
//! Handlers are thin: they validate input into commands and call [`crate::control`]. Every
//! error leaves as [`error::ApiError`] (`{"error": {"code", "message"}}`), including unknown
//! routes, wrong methods, malformed JSON and wrong content types.
//!
//! **Boundary:** this module and `openapi.json` are the public REST contract; a test checks
//! that every route of the table is in the OpenAPI document.
//!
//! Each route of the table also names the scope it needs ([`auth::Need`]) and its body limit
//! ([`BodyClass`]); the middleware ([`router_with`]) enforces them, after the browser guard
//! ([`guard`]), and audits control-plane changes ([`crate::audit`]). docs/security.md, "The
//! control plane", is the operator's view.

pub mod auth;
pub mod cluster;
pub mod dead_letters;
pub mod error;
pub mod guard;
pub mod health;
pub mod hosts;
pub mod invoke_json;
pub mod topics;
pub mod ui;
pub mod workers;

use std::sync::Arc;
use wm_shared::sync::Locked as _;
use wm_shared::sync::RwLocked as _;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};

use futures_util::StreamExt as _;

use crate::audit::{self, Audit, AuditRecord};
use crate::config::SecuritySettings;
use crate::control::Control;
use crate::listen::{ListenerKind, Peer};
use auth::{Need, Principal};
use error::ApiError;

/// What every handler gets.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The control plane.
    pub control: Arc<Control>,
    /// Route policies, rate limiter, SSE counts, audit.
    pub security: Arc<Security>,
}

/// Which body limit a route has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyClass {
    /// 64 KiB: ids, tags, URLs.
    Small,
    /// A package as base64 in JSON: `PACKAGE_MAX_BYTES` * 4/3 + 64 KiB.
    PackageJson,
    /// A raw package: `PACKAGE_MAX_BYTES`.
    PackageRaw,
    /// An event (invoke, publish): from `RING_MAX_FRAME_BYTES` (see [`body_limit`]).
    Event,
}

/// The body limit of a class, in bytes.
///
/// An event travels to a plugin in one ring frame, so an invoke body (JSON, data possibly
/// base64) gets the frame size * 4/3 + 64 KiB. A publish may be a batch: 16 frames
/// (4 MiB with the default 256 KiB frame).
pub fn body_limit(config: &crate::config::Config, class: BodyClass, path: &str) -> usize {
    let n = match class {
        BodyClass::Small => 64 * 1024,
        BodyClass::PackageJson => config.max_code_bytes / 3 * 4 + 64 * 1024,
        BodyClass::PackageRaw => config.max_code_bytes,
        BodyClass::Event if path.starts_with("/v1/topics/") => config.ring_max_frame_bytes * 16,
        BodyClass::Event => config.ring_max_frame_bytes / 3 * 4 + 64 * 1024,
    };
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// One route: method, path (axum syntax), the scope it needs, its body limit and handler.
pub struct Route {
    /// HTTP method.
    pub method: Method,
    /// Path with `{param}` placeholders, as in the OpenAPI document.
    pub path: &'static str,
    /// The scope a caller needs.
    pub need: Need,
    /// The body limit.
    pub body: BodyClass,
    /// The handler.
    pub handler: MethodRouter<AppState>,
}

fn r(
    method: Method,
    path: &'static str,
    need: Need,
    body: BodyClass,
    handler: MethodRouter<AppState>,
) -> Route {
    Route {
        method,
        path,
        need,
        body,
        handler,
    }
}

/// Every route of the API (the topics routes of the bus are merged in by [`router`]; their
/// scopes are [`topics::ROUTES`]). The scope column is what a caller needs: a new route cannot
/// be added without one, and a test checks every scope on every route.
pub fn route_table() -> Vec<Route> {
    use BodyClass::{Event, PackageJson, PackageRaw, Small};
    use Need::{Admin, Invoke, Metrics, Public, Read};
    vec![
        r(
            Method::POST,
            "/v1/workers",
            Admin,
            PackageJson,
            post(workers::create),
        ),
        r(Method::GET, "/v1/workers", Read, Small, get(workers::list)),
        r(
            Method::POST,
            "/v1/workers/recover",
            Admin,
            Small,
            post(workers::recover),
        ),
        r(
            Method::GET,
            "/v1/workers/{id}",
            Read,
            Small,
            get(workers::get),
        ),
        r(
            Method::DELETE,
            "/v1/workers/{id}",
            Admin,
            Small,
            delete(workers::delete),
        ),
        r(
            Method::POST,
            "/v1/workers/{id}/start",
            Admin,
            Small,
            post(workers::start),
        ),
        r(
            Method::POST,
            "/v1/workers/{id}/stop",
            Admin,
            Small,
            post(workers::stop),
        ),
        r(
            Method::POST,
            "/v1/workers/{id}/code",
            Admin,
            PackageJson,
            post(workers::load_code),
        ),
        r(
            Method::PUT,
            "/v1/workers/{id}/code",
            Admin,
            PackageRaw,
            put(workers::put_code),
        ),
        r(
            Method::POST,
            "/v1/workers/{id}/code-from-url",
            Admin,
            Small,
            post(workers::code_from_url),
        ),
        r(
            Method::GET,
            "/v1/workers/{id}/history",
            Read,
            Small,
            get(workers::history),
        ),
        r(
            Method::GET,
            "/v1/workers/{id}/tags",
            Read,
            Small,
            get(workers::get_tags),
        ),
        r(
            Method::PUT,
            "/v1/workers/{id}/tags",
            Admin,
            Small,
            put(workers::put_tags),
        ),
        r(
            Method::GET,
            "/v1/workers/{id}/tags/{key}",
            Read,
            Small,
            get(workers::get_tag),
        ),
        r(
            Method::PUT,
            "/v1/workers/{id}/tags/{key}",
            Admin,
            Small,
            put(workers::put_tag),
        ),
        r(
            Method::DELETE,
            "/v1/workers/{id}/tags/{key}",
            Admin,
            Small,
            delete(workers::delete_tag),
        ),
        r(
            Method::POST,
            "/v1/workers/{id}/invoke",
            Invoke,
            Event,
            post(workers::invoke),
        ),
        r(
            Method::POST,
            "/v1/gateway/invoke-json",
            Read,
            PackageJson,
            post(invoke_json::invoke_json),
        ),
        r(Method::GET, "/v1/hosts", Read, Small, get(hosts::hosts)),
        r(Method::GET, "/v1/engines", Read, Small, get(hosts::engines)),
        r(
            Method::GET,
            "/v1/cluster",
            Read,
            Small,
            get(cluster::cluster),
        ),
        r(Method::GET, "/health", Public, Small, get(health::health)),
        r(
            Method::GET,
            "/health/live",
            Public,
            Small,
            get(health::live),
        ),
        r(
            Method::GET,
            "/metrics",
            Metrics,
            Small,
            get(health::metrics),
        ),
        r(
            Method::GET,
            "/openapi.json",
            Read,
            Small,
            get(health::openapi),
        ),
    ]
}

/// The scope and body limit of one method and path (the route table's policy columns).
#[derive(Debug, Clone)]
pub struct RoutePolicy {
    /// HTTP method.
    pub method: Method,
    /// Path template.
    pub path: &'static str,
    /// What a caller needs.
    pub need: Need,
    /// Which body limit applies.
    pub body: BodyClass,
}

/// The policies of every route, the bus's topic routes included.
pub fn route_policies() -> Vec<RoutePolicy> {
    route_table()
        .into_iter()
        .map(|r| RoutePolicy {
            method: r.method,
            path: r.path,
            need: r.need,
            body: r.body,
        })
        .chain(topics::ROUTES.iter().map(|(m, p, need)| RoutePolicy {
            method: m.clone(),
            path: p,
            need: *need,
            body: BodyClass::Event,
        }))
        .chain(dead_letters::ROUTES.iter().map(|(m, p, need)| RoutePolicy {
            method: m.clone(),
            path: p,
            need: *need,
            body: BodyClass::Small,
        }))
        .chain(ui::ROUTES.iter().map(|(m, p, need)| RoutePolicy {
            method: m.clone(),
            path: p,
            need: *need,
            body: BodyClass::Small,
        }))
        .collect()
}

/// Matches `path` against a template with `{param}` segments, handing each parameter to
/// `param` in order; false if it does not match. Allocates nothing (it runs per request).
fn match_template<'a>(template: &str, path: &'a str, mut param: impl FnMut(&'a str)) -> bool {
    let mut t = template.split('/');
    let mut p = path.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(ts), Some(ps)) => {
                if ts.starts_with('{') {
                    if ps.is_empty() {
                        return false;
                    }
                    param(ps);
                } else if ts != ps {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// The index in `policies` of a request's route; static segments win over parameters (the
/// match with the fewest parameters, the first of equals).
fn find_policy_index(policies: &[RoutePolicy], method: &Method, path: &str) -> Option<usize> {
    policies
        .iter()
        .enumerate()
        .filter(|(_, p)| p.method == *method)
        .filter_map(|(i, p)| {
            let mut n = 0usize;
            match_template(p.path, path, |_| n += 1).then_some((i, n))
        })
        .min_by_key(|(_, n)| *n)
        .map(|(i, _)| i)
}

/// The path parameters of `path` under `template` (which it must match), in order.
fn path_params<'a>(template: &str, path: &'a str) -> Vec<&'a str> {
    let mut params = Vec::new();
    match_template(template, path, |p| params.push(p));
    params
}

/// The first path parameter of `path` under `template`: the topic of the topic routes, the
/// worker of the worker routes.
fn first_param<'a>(template: &str, path: &'a str) -> Option<&'a str> {
    let mut first = None;
    match_template(template, path, |p| {
        first.get_or_insert(p);
    });
    first
}

/// The policy of a request and its path parameters; static segments win over parameters.
pub fn find_policy<'a, 'p>(
    policies: &'p [RoutePolicy],
    method: &Method,
    path: &'a str,
) -> Option<(&'p RoutePolicy, Vec<&'a str>)> {
    let p = policies.get(find_policy_index(policies, method, path)?)?;
    Some((p, path_params(p.path, path)))
}

/// The route a request matched, found once per request by the outermost layer ([`count`])
/// and read by the inner ones ([`guard`], [`authorize`]): an index into the policies.
#[derive(Clone, Copy)]
struct Matched(Option<usize>);

/// The policy of `req`: the one [`count`] found, or (a router without it) found now.
fn policy_of<'p>(policies: &'p [RoutePolicy], req: &Request) -> Option<&'p RoutePolicy> {
    let index = match req.extensions().get::<Matched>() {
        Some(Matched(i)) => *i,
        None => find_policy_index(policies, req.method(), req.uri().path()),
    };
    policies.get(index?)
}

/// The whole API with its middleware (auth, request counting, body limit, fallbacks).
pub fn router(state: AppState) -> Router {
    router_with(state, Router::new())
}

/// [`router`] plus `extra` routes (which must not set a fallback), all behind the same
/// middleware.
///
/// Layers, outermost first: request counting, the global concurrency limit (tower's
/// `GlobalConcurrencyLimitLayer`: requests over it wait), CORS (only with allowed origins),
/// the browser guard and early body-size check ([`guard`]), then authorization, rate limits,
/// SSE caps and the audit (`authorize`).
pub fn router_with(state: AppState, extra: Router) -> Router {
    let config = state.control.config().clone();
    let mut merged: Vec<(&'static str, MethodRouter<AppState>)> = Vec::new();
    for route in route_table() {
        let limit = body_limit(&config, route.body, route.path);
        let handler = route.handler.layer(DefaultBodyLimit::max(limit));
        match merged.iter_mut().find(|(p, _)| *p == route.path) {
            Some((_, mr)) => *mr = std::mem::take(mr).merge(handler),
            None => merged.push((route.path, handler)),
        }
    }
    let mut app = Router::new();
    for (path, mr) in merged {
        app = app.route(path, mr.fallback(method_not_allowed));
    }
    let sec = &config.security;
    let mut app = app
        .with_state(state.clone())
        .merge(ui::router())
        .merge(extra)
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard));
    if !sec.allowed_origins.is_empty() {
        let origins = sec
            .allowed_origins
            .iter()
            .filter_map(|o| header::HeaderValue::from_str(o).ok())
            .collect::<Vec<_>>();
        app = app.layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
                .allow_headers(tower_http::cors::AllowHeaders::mirror_request()),
        );
    }
    app.layer(tower::limit::GlobalConcurrencyLimitLayer::new(
        sec.max_concurrent_requests,
    ))
    .layer(axum::middleware::from_fn_with_state(state, count))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route; see /openapi.json".to_owned())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

fn peer_of(req: &Request) -> Option<Peer> {
    req.extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|ConnectInfo(p)| p.clone())
}

/// Host, Origin and content-type rules, then the route's body limit on `Content-Length`.
async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let config = state.control.config();
    let checked = {
        let tls_names = state.security.tls_names.read_locked();
        guard::check(
            &config.security,
            &tls_names,
            req.extensions()
                .get::<ConnectInfo<Peer>>()
                .map(|ConnectInfo(p)| p),
            req.method(),
            req.uri().authority().map(|a| a.as_str()),
            req.headers(),
        )
    };
    if let Err(e) = checked {
        tracing::warn!(code = e.code(), method = %req.method(), path = %req.uri().path(), "request refused: {e}");
        return reject(e);
    }
    if let Some(policy) = policy_of(&state.security.policies, &req) {
        let limit = body_limit(config, policy.body, req.uri().path());
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            let what = match policy.body {
                BodyClass::PackageJson | BodyClass::PackageRaw => " (PACKAGE_MAX_BYTES)",
                BodyClass::Event => " (from RING_MAX_FRAME_BYTES)",
                BodyClass::Small => "",
            };
            return reject(ApiError::TooLarge(format!(
                "the request body is larger than the limit of {limit} bytes of {} {}{what}",
                policy.method, policy.path
            )));
        }
    }
    next.run(req).await
}

/// Per-daemon security state: the route policies, the rate limiter, SSE counts, the audit.
pub struct Security {
    policies: Vec<RoutePolicy>,
    limiter: Option<governor::DefaultKeyedRateLimiter<String>>,
    sse: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// The TLS certificate's DNS names: the TCP listeners' own names for the Host guard.
    tls_names: std::sync::RwLock<Vec<String>>,
    /// The audit trail.
    pub audit: Arc<Audit>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security").finish_non_exhaustive()
    }
}

impl Security {
    /// Builds it from the settings.
    pub fn new(sec: &SecuritySettings) -> Security {
        let limiter = std::num::NonZeroU32::new(sec.rate_per_second).map(|rate| {
            let burst = std::num::NonZeroU32::new(sec.rate_burst).unwrap_or(rate);
            governor::RateLimiter::keyed(governor::Quota::per_second(rate).allow_burst(burst))
        });
        Security {
            policies: route_policies(),
            limiter,
            sse: std::sync::Mutex::default(),
            tls_names: std::sync::RwLock::default(),
            audit: Arc::new(Audit::default()),
        }
    }

    /// Sets the names the Host guard accepts from the TLS certificate (at start and reload).
    pub fn set_tls_names(&self, names: Vec<String>) {
        *self.tls_names.write_locked() = names;
    }
}

/// Decrements a principal's SSE count when the stream ends.
struct SseSlot {
    state: AppState,
    who: String,
}

impl Drop for SseSlot {
    fn drop(&mut self) {
        let mut map = self.state.security.sse.locked();
        if let Some(n) = map.get_mut(&self.who) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.who);
            }
        }
    }
}

/// Who is calling: a bearer token, a client certificate, a Unix peer, or anonymous.
fn identify(
    sec: &SecuritySettings,
    peer: Option<&Peer>,
    headers: &axum::http::HeaderMap,
) -> Result<Option<Principal>, ApiError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let bearer = authorization
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .map(str::to_owned)
        // HTTP Basic with the token as the password (any user name): what a browser sends
        // after its login prompt, so the dashboard (`/ui`) takes the same tokens.
        .or_else(|| authorization.and_then(auth::basic_password));
    let bearer = bearer.as_deref();
    if let Some(b) = bearer
        && !sec.tokens.is_empty()
    {
        return match auth::find_token(&sec.tokens, b) {
            Some(t) => Ok(Some(Principal {
                who: format!("token:{}", t.name),
                scopes: t.scopes.clone(),
                limited: true,
            })),
            None => Err(ApiError::Unauthorized),
        };
    }
    match peer {
        Some(p) if p.kind == ListenerKind::Unix => {
            let uid = p
                .uid
                .map_or_else(|| "unknown".to_owned(), |u| u.to_string());
            if sec.unix_peer_scopes.is_empty() {
                return Ok(Some(Principal {
                    who: format!("uid:{uid}"),
                    scopes: vec![auth::Scope::Admin],
                    limited: false,
                }));
            }
            let scopes = sec
                .unix_peer_scopes
                .iter()
                .find(|(u, _)| Some(*u) == p.uid)
                .map(|(_, s)| s.clone())
                .unwrap_or_default();
            Ok(Some(Principal {
                who: format!("uid:{uid}"),
                scopes,
                limited: true,
            }))
        }
        Some(Peer {
            client_cn: Some(cn),
            ..
        }) => Ok(Some(Principal {
            who: format!("cert:CN={cn}"),
            scopes: sec
                .client_cert_scopes
                .iter()
                .find(|(n, _)| n == cn)
                .map(|(_, s)| s.clone())
                .unwrap_or_default(),
            limited: true,
        })),
        _ if sec.auth_enabled() => Ok(None),
        _ => Ok(Some(Principal::anonymous())),
    }
}

/// Authorizes a call that does not come through the REST router (the gRPC API): the caller
/// is identified by the REST rules ([`identify`]: bearer token, client certificate, Unix peer,
/// anonymous on loopback), must hold the scope `need` names, and counts against its rate limit.
/// `what` names the call in the 403 message.
pub fn authorize_call(
    state: &AppState,
    peer: Option<&Peer>,
    headers: &axum::http::HeaderMap,
    need: Need,
    what: &str,
) -> Result<Principal, ApiError> {
    let sec = &state.control.config().security;
    if need == Need::Public {
        return Ok(Principal::anonymous());
    }
    let principal = match identify(sec, peer, headers) {
        Ok(Some(p)) => p,
        Ok(None) | Err(_) => {
            tracing::warn!(call = %what, "call refused: no valid credentials");
            return Err(ApiError::Unauthorized);
        }
    };
    if !auth::allows(&principal.scopes, need, None, sec.metrics_public) {
        let scope = need.scope_name(None);
        tracing::warn!(who = %principal.who, call = %what, scope = %scope, "call refused: missing scope");
        return Err(ApiError::Forbidden(format!(
            "{} lacks the scope '{scope}' that {what} needs; use a token that has it (workmanager token create --scope {scope})",
            principal.who
        )));
    }
    check_rate(state, &principal)?;
    Ok(principal)
}

/// The per-principal rate limit (`WORKMANAGER_RATE_LIMIT_PER_SECOND`) for non-REST calls.
fn check_rate(state: &AppState, principal: &Principal) -> Result<(), ApiError> {
    let sec = &state.control.config().security;
    if principal.limited
        && let Some(limiter) = &state.security.limiter
        && let Err(not_until) = limiter.check_key(&principal.who)
    {
        use governor::clock::Clock as _;
        let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
        let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        return Err(ApiError::RateLimited {
            message: format!(
                "{} is over its rate limit of {} requests per second (WORKMANAGER_RATE_LIMIT_PER_SECOND); retry after {retry_after} s",
                principal.who, sec.rate_per_second
            ),
            retry_after: retry_after.max(1),
        });
    }
    Ok(())
}

/// Authentication, the route's scope, the per-principal rate limit and SSE cap, the audit.
async fn authorize(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let control = state.control.clone();
    let sec = &control.config().security;
    // The URI shares the request's bytes: cloning it copies no path.
    let uri = req.uri().clone();
    let path = uri.path();
    let method = req.method().clone();
    let found = policy_of(&state.security.policies, &req);
    if found
        .is_some_and(|p| p.need == Need::Public || (p.need == Need::Metrics && sec.metrics_public))
    {
        return next.run(req).await;
    }
    let peer = peer_of(&req);
    let principal = match identify(sec, peer.as_ref(), req.headers()) {
        Ok(Some(p)) => p,
        Ok(None) | Err(_) => {
            tracing::warn!(method = %method, path = %path, "request refused: no valid credentials");
            let mut resp = reject(ApiError::Unauthorized);
            if path == "/ui" || path.starts_with("/ui/") {
                // The browser asks for the token (as the password) and sends it from then on.
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static(
                        "Basic realm=\"workmanager: any user name, the API token as password\", charset=\"UTF-8\"",
                    ),
                );
            }
            return resp;
        }
    };
    let Some(policy) = found else {
        // Unknown route or method: authenticated callers learn it is unknown (404/405).
        return next.run(req).await;
    };
    let first = first_param(policy.path, path);
    let topic = first.filter(|_| matches!(policy.need, Need::Publish | Need::Subscribe));
    if !auth::allows(&principal.scopes, policy.need, topic, sec.metrics_public) {
        let scope = policy.need.scope_name(topic);
        tracing::warn!(who = %principal.who, method = %method, path = %path, scope = %scope, "request refused: missing scope");
        return reject(ApiError::Forbidden(format!(
            "{} lacks the scope '{scope}' that {method} {} needs; use a token that has it (workmanager token create --scope {scope})",
            principal.who, policy.path
        )));
    }
    if principal.limited
        && let Some(limiter) = &state.security.limiter
        && let Err(not_until) = limiter.check_key(&principal.who)
    {
        use governor::clock::Clock as _;
        let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
        let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        return reject(ApiError::RateLimited {
            message: format!(
                "{} is over its rate limit of {} requests per second (WORKMANAGER_RATE_LIMIT_PER_SECOND); retry after {retry_after} s",
                principal.who, sec.rate_per_second
            ),
            retry_after: retry_after.max(1),
        });
    }
    let mut slot = None;
    if policy.need == Need::Subscribe && principal.limited {
        let mut map = state.security.sse.locked();
        let n = map.entry(principal.who.clone()).or_default();
        if *n >= sec.max_sse_per_principal {
            return reject(ApiError::RateLimited {
                message: format!(
                    "{} already has {} open subscriptions, the limit (WORKMANAGER_MAX_SSE_PER_TOKEN); close one first",
                    principal.who, sec.max_sse_per_principal
                ),
                retry_after: 5,
            });
        }
        *n += 1;
        slot = Some(SseSlot {
            state: state.clone(),
            who: principal.who.clone(),
        });
    }
    let action = (policy.need == Need::Admin)
        .then(|| audit::action_of(method.as_str(), policy.path))
        .flatten();
    // Only the audit needs the caller's name afterwards.
    let who = action.is_some().then(|| principal.who.clone());
    req.extensions_mut().insert(principal);
    let resp = next.run(req).await;
    if let Some(slot) = slot {
        let (parts, body) = resp.into_parts();
        let stream = body.into_data_stream().map(move |chunk| {
            let _held = &slot;
            chunk
        });
        return Response::from_parts(parts, axum::body::Body::from_stream(stream));
    }
    let (Some(action), Some(who)) = (action, who) else {
        return resp;
    };
    // The audit: who, what, which worker, which package.
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let view: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    // The first parameter names a worker only on worker routes (dead-letter routes: a topic).
    let worker_id = first
        .filter(|_| policy.path.starts_with("/v1/workers"))
        .map(str::to_owned)
        .or_else(|| view["id"].as_str().map(str::to_owned));
    let package_sha256 = view["code"]["sha256"].as_str().map(str::to_owned);
    state.security.audit.record(&AuditRecord {
        who,
        action,
        request: format!("{method} {path}"),
        worker_id,
        package_sha256,
        status,
        remote: match &peer {
            Some(Peer { addr: Some(a), .. }) => a.to_string(),
            Some(_) => "unix".into(),
            None => "in-process".into(),
        },
    });
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// Marks a response as a guard's refusal, for `workmanager_api_rejections_total`.
#[derive(Clone, Copy)]
struct Rejected(&'static str);

fn reject(e: ApiError) -> Response {
    let code = e.code();
    let mut resp = e.into_response();
    resp.extensions_mut().insert(Rejected(code));
    resp
}

async fn count(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    // The route is matched here once; the inner layers read it from the extensions.
    let index = find_policy_index(&state.security.policies, req.method(), req.uri().path());
    req.extensions_mut().insert(Matched(index));
    // The request's span (OpenTelemetry's HTTP server span when traces are exported), named
    // by the route template, continuing a `traceparent` header.
    let route = index
        .and_then(|i| state.security.policies.get(i))
        .map_or("unknown route", |p| p.path);
    let span = tracing::info_span!("http.request", otel.name = %format!("{method} {route}"), otel.kind = "server",
        http.request.method = %method, http.route = route, http.response.status_code = tracing::field::Empty);
    crate::telemetry::continue_from_headers(&span, req.headers());
    let resp = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    span.record(
        "http.response.status_code",
        i64::from(resp.status().as_u16()),
    );
    if let Some(Rejected(code)) = resp.extensions().get::<Rejected>() {
        state.control.metrics().rejection(code);
    }
    state
        .control
        .metrics()
        .http_request(method.as_str(), resp.status().as_u16());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_is_found_once_with_its_parameters() {
        let policies = route_policies();
        for (i, p) in policies.iter().enumerate() {
            // Every parameter filled in: the route itself, or one with fewer parameters
            // (a static segment wins, e.g. POST /v1/workers/recover over a `{id}`).
            let path = p
                .path
                .split('/')
                .map(|s| if s.starts_with('{') { "p1" } else { s })
                .collect::<Vec<_>>()
                .join("/");
            let found = find_policy_index(&policies, &p.method, &path).expect("found");
            let params = p.path.matches('{').count();
            let found_params = policies[found].path.matches('{').count();
            assert!(
                found == i || found_params < params,
                "{} {} found {}",
                p.method,
                p.path,
                policies[found].path
            );
            if found == i && params > 0 {
                assert_eq!(first_param(p.path, &path), Some("p1"));
                assert_eq!(path_params(p.path, &path), vec!["p1"; params]);
            }
        }
        let topic = find_policy(&policies, &Method::POST, "/v1/topics/orders.in/events");
        let (policy, params) = topic.expect("the publish route");
        assert_eq!(
            (policy.path, policy.need, params),
            (
                "/v1/topics/{topic}/events",
                Need::Publish,
                vec!["orders.in"]
            )
        );
        // An empty parameter, a missing or extra segment, another method: no route.
        for (m, path) in [
            (Method::POST, "/v1/topics//events"),
            (Method::POST, "/v1/topics/t"),
            (Method::POST, "/v1/topics/t/events/x"),
            (Method::PATCH, "/v1/topics/t/events"),
        ] {
            assert_eq!(find_policy_index(&policies, &m, path), None, "{m} {path}");
        }
    }
}
