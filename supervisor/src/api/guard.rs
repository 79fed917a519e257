//! Browser-borne attacks: DNS rebinding (`Host`), cross-site requests (`Origin`,
//! `Sec-Fetch-Site`) and "simple" requests a web page can send without a CORS preflight.
//!
//! The rules, in order (docs/security.md, "The control plane"):
//! 1. `Host` must be an IP literal, `localhost`, the machine's host name, a DNS name of the
//!    TLS certificate, or a name in `WORKMANAGER_ALLOWED_HOSTS` (TCP listeners only). DNS rebinding needs a DNS name that resolves to us, so a name we
//!    do not know is refused; IP literals cannot be rebound.
//! 2. A request carrying an `Origin` that is not in `WORKMANAGER_ALLOWED_ORIGINS` is refused,
//!    whatever its method. Browsers send `Origin` on every cross-site `fetch` and form POST;
//!    curl and scripts send none.
//! 3. A state-changing request (POST, PUT, PATCH, DELETE) marked by the browser as
//!    `Sec-Fetch-Site: cross-site` or `same-site` is refused unless its `Origin` is allowed.
//! 4. A state-changing request with a body needs a content type a form cannot send (JSON,
//!    CloudEvents, octet-stream, ...) or a non-simple header (`Authorization`, `ce-*`, `X-*`).
//!    Body-less POSTs (`start`, `stop`, `recover`) from curl pass: they carry no `Origin`; from
//!    a browser they carry one and rule 2 stops them.

use axum::http::{HeaderMap, Method, header};

use super::error::ApiError;
use crate::config::SecuritySettings;
use crate::listen::{ListenerKind, Peer};

/// The host part of a `Host` header (no port, no brackets, lower-case).
pub fn host_name(host: &str) -> String {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => host,
        }
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// This machine's host name (lower-case), one of the listener's own names.
fn own_hostname() -> Option<&'static str> {
    static NAME: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
    })
    .as_deref()
}

/// Whether `name` (from [`host_name`]) may be the `Host` of a request: an IP literal (DNS
/// rebinding needs a name), `localhost`, this machine's host name, or a configured name.
pub fn host_allowed(name: &str, allowed: &[String]) -> bool {
    name.parse::<std::net::IpAddr>().is_ok()
        || name == "localhost"
        || own_hostname() == Some(name)
        || allowed.iter().any(|a| a == name)
}

fn is_state_changing(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A header no HTML form and no preflight-free `fetch` can set.
fn has_non_simple_header(h: &HeaderMap) -> bool {
    h.contains_key(header::AUTHORIZATION)
        || h.keys().any(|k| {
            let k = k.as_str();
            k.starts_with("x-") || k.starts_with("ce-")
        })
}

/// A content type a form or a preflight-free `fetch` can send (or none).
fn is_simple_content_type(h: &HeaderMap) -> bool {
    let Some(ct) = h.get(header::CONTENT_TYPE) else {
        return true;
    };
    let mime = ct
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        mime.as_str(),
        "" | "text/plain" | "application/x-www-form-urlencoded" | "multipart/form-data"
    )
}

fn has_body(h: &HeaderMap) -> bool {
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

/// Applies the rules of the module docs to one request.
pub fn check(
    sec: &SecuritySettings,
    own_names: &[String],
    peer: Option<&Peer>,
    method: &Method,
    authority: Option<&str>,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let over_tcp = peer.is_none_or(|p| p.kind != ListenerKind::Unix);
    if over_tcp {
        let host = authority.or_else(|| headers.get(header::HOST).and_then(|v| v.to_str().ok()));
        if let Some(host) = host {
            let name = host_name(host);
            if !host_allowed(&name, &sec.allowed_hosts) && !own_names.contains(&name) {
                return Err(ApiError::HostNotAllowed(format!(
                    "Host '{name}' is not a name of this daemon (DNS-rebinding guard); call it by IP address or localhost, or add the name to WORKMANAGER_ALLOWED_HOSTS"
                )));
            }
        }
    }
    let origin = headers.get(header::ORIGIN).map(|v| {
        v.to_str()
            .unwrap_or("")
            .trim()
            .trim_end_matches('/')
            .to_ascii_lowercase()
    });
    // The dashboard (`/ui`) calls the API from its own origin. A same-origin request names
    // our own Host (already checked above against DNS rebinding), so it is no cross-site one.
    let host = authority.or_else(|| headers.get(header::HOST).and_then(|v| v.to_str().ok()));
    let same_origin = |o: &str| {
        over_tcp
            && host.is_some_and(|h| {
                let h = h.trim().to_ascii_lowercase();
                o == format!("http://{h}") || o == format!("https://{h}")
            })
    };
    let origin_allowed = match &origin {
        None => false,
        Some(o) => sec.allowed_origins.iter().any(|a| a == o) || same_origin(o),
    };
    if let Some(o) = &origin
        && !origin_allowed
    {
        return Err(ApiError::OriginNotAllowed(format!(
            "requests from web pages are refused (Origin '{o}'); add the origin to WORKMANAGER_ALLOWED_ORIGINS to allow it"
        )));
    }
    if !is_state_changing(method) {
        return Ok(());
    }
    let fetch_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_ascii_lowercase();
    if matches!(fetch_site.as_str(), "cross-site" | "same-site") && !origin_allowed {
        return Err(ApiError::OriginNotAllowed(format!(
            "a {fetch_site} browser request cannot change state here; call the API from a script or an allowed origin (WORKMANAGER_ALLOWED_ORIGINS)"
        )));
    }
    if has_body(headers) && is_simple_content_type(headers) && !has_non_simple_header(headers) {
        return Err(ApiError::UnsupportedMediaType(
            "a request that changes state needs Content-Type: application/json (or a CloudEvents type, or application/octet-stream for raw packages); form and text/plain bodies are refused so that web pages cannot send them".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in list {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn host_names() {
        assert_eq!(host_name("127.0.0.1:25001"), "127.0.0.1");
        assert_eq!(host_name("[::1]:80"), "::1");
        assert_eq!(host_name("Evil.Example.:80"), "evil.example");
        assert!(host_allowed("::1", &[]));
        assert!(host_allowed("localhost", &[]));
        assert!(!host_allowed("evil.example", &[]));
        assert!(host_allowed("wm.internal", &["wm.internal".into()]));
    }

    #[test]
    fn browser_forms_are_refused_and_curl_is_not() {
        let sec = SecuritySettings::default();
        let post = Method::POST;
        // curl -X POST .../start
        assert!(
            check(
                &sec,
                &[],
                None,
                &post,
                None,
                &headers(&[("host", "127.0.0.1")])
            )
            .is_ok()
        );
        // A form POST from another site.
        let form = headers(&[
            ("host", "127.0.0.1"),
            ("origin", "https://evil.example"),
            ("content-type", "application/x-www-form-urlencoded"),
            ("content-length", "3"),
        ]);
        assert_eq!(
            check(&sec, &[], None, &post, None, &form)
                .unwrap_err()
                .code(),
            "origin_not_allowed"
        );
        // text/plain body without Origin (an old browser, or a proxy that strips it).
        let text = headers(&[
            ("host", "127.0.0.1"),
            ("content-type", "text/plain"),
            ("content-length", "3"),
        ]);
        assert_eq!(
            check(&sec, &[], None, &post, None, &text)
                .unwrap_err()
                .code(),
            "unsupported_media_type"
        );
        let json = headers(&[
            ("host", "127.0.0.1"),
            ("content-type", "application/json"),
            ("content-length", "3"),
        ]);
        assert!(check(&sec, &[], None, &post, None, &json).is_ok());
        // The dashboard's own requests: Origin is this daemon's Host.
        let own = headers(&[
            ("host", "127.0.0.1:25001"),
            ("origin", "http://127.0.0.1:25001"),
            ("sec-fetch-site", "same-origin"),
            ("content-type", "application/json"),
            ("content-length", "3"),
        ]);
        assert!(check(&sec, &[], None, &post, None, &own).is_ok());
        let other_port = headers(&[
            ("host", "127.0.0.1:25001"),
            ("origin", "http://127.0.0.1:8080"),
            ("content-type", "application/json"),
            ("content-length", "3"),
        ]);
        assert_eq!(
            check(&sec, &[], None, &post, None, &other_port)
                .unwrap_err()
                .code(),
            "origin_not_allowed"
        );
        let rebinding = headers(&[("host", "attacker.example:25001")]);
        assert_eq!(
            check(&sec, &[], None, &Method::GET, None, &rebinding)
                .unwrap_err()
                .code(),
            "host_not_allowed"
        );
        let nav = headers(&[("host", "localhost"), ("sec-fetch-site", "cross-site")]);
        assert!(check(&sec, &[], None, &post, None, &nav).is_err());
        assert!(check(&sec, &[], None, &Method::GET, None, &nav).is_ok());
    }
}
