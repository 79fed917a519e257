//! Downloading worker code from a URL, safely.
//!
//! Rules (the original's, tightened):
//! - `http` and `https` only;
//! - the host must be in `ALLOWED_CODE_SOURCE_HOSTS` when that list is set;
//! - every address the host resolves to must be public: private, loopback, link-local,
//!   unique-local, shared (CGNAT), multicast, broadcast, reserved and unspecified addresses are
//!   refused (also inside IPv4-mapped, IPv4-compatible, NAT64, local-use NAT64, 6to4 and
//!   Teredo IPv6 forms) unless
//!   `CODE_SOURCE_ALLOW_PRIVATE_NETWORKS=true`;
//! - the connection goes to exactly the addresses that were checked (the client is pinned to
//!   them), so a DNS answer that changes between check and connect (DNS rebinding) cannot
//!   reach an internal address;
//! - redirects are followed by hand (at most [`MAX_REDIRECTS`]), each hop checked like the
//!   first; a redirect from https to http is refused;
//! - no proxy from the environment, no credentials sent;
//! - the size limit is enforced while streaming (a lying or missing `Content-Length` does not
//!   help), and the whole download has one deadline;
//! - an optional sha256 (hex) must match.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use reqwest::Url;

use crate::codestore::sha256_hex;
use crate::config::CodeFetchSettings;

/// Most redirects followed for one download.
pub const MAX_REDIRECTS: usize = 5;

/// Why code could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is malformed or not http/https.
    #[error("code URL '{url}' is not usable: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The URL is refused by policy (allow-list or address range).
    #[error("code URL '{url}' is blocked: {reason}")]
    Blocked {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The download failed (DNS, connect, TLS, HTTP status, timeout, redirects).
    #[error("cannot fetch code from '{url}': {reason}")]
    Failed {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The download is larger than the limit.
    #[error("code at '{url}' is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        limit: u64,
    },
    /// The download does not have the sha256 the caller gave.
    #[error("code at '{url}' has sha256 {actual}, expected {expected}")]
    Sha256Mismatch {
        /// The URL.
        url: String,
        /// What the caller said.
        expected: String,
        /// What arrived.
        actual: String,
    },
}

/// Why an address is refused, if it is.
pub fn blocked_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => blocked_v6(v6),
    }
}

fn blocked_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified address")
    } else if ip.is_loopback() {
        Some("loopback address")
    } else if ip.is_private() {
        Some("private address")
    } else if ip.is_link_local() {
        Some("link-local address")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("shared (carrier-grade NAT) address")
    } else if ip.is_multicast() {
        Some("multicast address")
    } else if ip.is_broadcast() {
        Some("broadcast address")
    } else if o[0] >= 240 {
        Some("reserved address")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("IETF protocol assignment address")
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        Some("benchmarking address")
    } else {
        None
    }
}

fn blocked_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return blocked_v4(v4);
    }
    if ip.is_unspecified() {
        Some("unspecified address")
    } else if ip.is_loopback() {
        Some("loopback address")
    } else if (s[0] & 0xfe00) == 0xfc00 {
        Some("unique-local address")
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some("link-local address")
    } else if (s[0] & 0xffc0) == 0xfec0 {
        Some("site-local address")
    } else if ip.is_multicast() {
        Some("multicast address")
    } else if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        // Local-use NAT64 (RFC 8215): the operator's own translator, internal by definition.
        Some("local-use NAT64 address")
    } else if s[0] == 0x64 && s[1] == 0xff9b {
        // NAT64: the last 32 bits are an IPv4 address.
        blocked_v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ))
    } else if s[0] == 0x2001 && s[1] == 0 {
        // Teredo: the client's IPv4 address is the last 32 bits, inverted; the server's is
        // bits 32..64. Either one internal makes the address internal.
        let client = Ipv4Addr::from(!((u32::from(s[6]) << 16) | u32::from(s[7])));
        let server = Ipv4Addr::from((u32::from(s[2]) << 16) | u32::from(s[3]));
        blocked_v4(client).or_else(|| blocked_v4(server))
    } else if s[0] == 0x2002 {
        // 6to4: bits 16..48 are an IPv4 address.
        blocked_v4(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ))
    } else if s[..6] == [0; 6] {
        Some("IPv4-compatible address")
    } else {
        None
    }
}

/// Refuses a redirect that downgrades `https` to `http` (the package would travel in clear
/// text after the caller asked for TLS).
pub fn check_redirect(from: &Url, to: &Url) -> Result<(), FetchError> {
    if from.scheme() == "https" && to.scheme() == "http" {
        return Err(FetchError::Blocked {
            url: from.as_str().to_owned(),
            reason: format!(
                "it redirects from https to http ({to}); serve the package over https throughout"
            ),
        });
    }
    Ok(())
}

/// Downloads code under the configured rules.
#[derive(Debug, Clone)]
pub struct CodeFetcher {
    settings: CodeFetchSettings,
}

impl CodeFetcher {
    /// A fetcher with these rules.
    pub fn new(settings: CodeFetchSettings) -> CodeFetcher {
        CodeFetcher { settings }
    }

    /// Checks scheme and host of `url` (no DNS yet).
    pub fn check_url(&self, url: &str) -> Result<Url, FetchError> {
        let bad = |reason: &str| FetchError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let parsed = Url::parse(url).map_err(|e| bad(&format!("{e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad(&format!(
                "scheme '{}' is not allowed; use http or https",
                parsed.scheme()
            )));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| bad("the URL has no host"))?
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let allowed = &self.settings.allowed_hosts;
        if !allowed.is_empty() && !allowed.contains(&host) {
            return Err(FetchError::Blocked {
                url: url.to_owned(),
                reason: format!("host '{host}' is not in ALLOWED_CODE_SOURCE_HOSTS"),
            });
        }
        Ok(parsed)
    }

    /// Resolves the URL's host and checks every address; returns them with the URL's port.
    async fn resolve_checked(&self, url: &Url) -> Result<Vec<SocketAddr>, FetchError> {
        let text = url.as_str().to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let addrs: Vec<SocketAddr> = match url.host() {
            Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
            Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
            Some(url::Host::Domain(d)) => tokio::net::lookup_host((d, port))
                .await
                .map_err(|e| FetchError::Failed {
                    url: text.clone(),
                    reason: format!("cannot resolve host '{d}': {e}"),
                })?
                .collect(),
            None => {
                return Err(FetchError::BadUrl {
                    url: text,
                    reason: "the URL has no host".into(),
                });
            }
        };
        if addrs.is_empty() {
            return Err(FetchError::Failed {
                url: text,
                reason: "the host resolved to no address".into(),
            });
        }
        if !self.settings.allow_private_networks {
            for a in &addrs {
                if let Some(reason) = blocked_reason(a.ip()) {
                    return Err(FetchError::Blocked {
                        url: text,
                        reason: format!(
                            "{} resolves to {}, a {reason}; set CODE_SOURCE_ALLOW_PRIVATE_NETWORKS=true to allow it",
                            url.host_str().unwrap_or(""),
                            a.ip()
                        ),
                    });
                }
            }
        }
        Ok(addrs)
    }

    /// Downloads `url`, following up to [`MAX_REDIRECTS`] checked redirects, within the
    /// timeout and size limit; checks `sha256` (hex) when given.
    pub async fn fetch(&self, url: &str, sha256: Option<&str>) -> Result<Vec<u8>, FetchError> {
        let first = self.check_url(url)?;
        let deadline = self.settings.timeout;
        let bytes = match tokio::time::timeout(deadline, self.fetch_following(first)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(FetchError::Failed {
                    url: url.to_owned(),
                    reason: format!(
                        "timed out after {} s (CODE_FETCH_TIMEOUT_SECONDS)",
                        deadline.as_secs()
                    ),
                });
            }
        };
        if let Some(expected) = sha256 {
            let actual = sha256_hex(&bytes);
            if !actual.eq_ignore_ascii_case(expected.trim()) {
                return Err(FetchError::Sha256Mismatch {
                    url: url.to_owned(),
                    expected: expected.trim().to_ascii_lowercase(),
                    actual,
                });
            }
        }
        Ok(bytes)
    }

    async fn fetch_following(&self, mut url: Url) -> Result<Vec<u8>, FetchError> {
        for _hop in 0..=MAX_REDIRECTS {
            let addrs = self.resolve_checked(&url).await?;
            let failed = |reason: String| FetchError::Failed {
                url: url.as_str().to_owned(),
                reason,
            };
            let mut builder = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .user_agent(concat!("workmanager/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(10));
            if let Some(url::Host::Domain(d)) = url.host() {
                // INVARIANT: the connection goes only to the addresses checked above.
                builder = builder.resolve_to_addrs(d, &addrs);
            }
            let client = builder
                .build()
                .map_err(|e| failed(format!("cannot build the HTTP client: {e}")))?;
            let mut resp = client
                .get(url.clone())
                .send()
                .await
                .map_err(|e| failed(error_chain(&e)))?;
            let status = resp.status();
            if status.is_redirection() {
                let location = resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| failed(format!("HTTP {status} without a Location header")))?;
                let next = url
                    .join(location)
                    .map_err(|e| failed(format!("bad redirect Location '{location}': {e}")))?;
                check_redirect(&url, &next)?;
                url = self.check_url(next.as_str())?;
                continue;
            }
            if !status.is_success() {
                return Err(failed(format!("the server answered HTTP {status}")));
            }
            let limit = self.settings.max_bytes;
            let too_large = || FetchError::TooLarge {
                url: url.as_str().to_owned(),
                limit,
            };
            if resp.content_length().is_some_and(|n| n > limit) {
                return Err(too_large());
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| failed(format!("download interrupted: {}", error_chain(&e))))?
            {
                if body.len() as u64 + chunk.len() as u64 > limit {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            return Ok(body);
        }
        Err(FetchError::Failed {
            url: url.as_str().to_owned(),
            reason: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }
}

/// `e: cause: cause` for an error chain (reqwest hides the useful part in sources).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_ipv6_forms_that_embed_internal_ipv4() {
        for (ip, blocked) in [
            ("::ffff:10.0.0.1", true),                       // mapped
            ("::ffff:8.8.8.8", false),                       // mapped, public
            ("2002:c0a8:0101::1", true),                     // 6to4 of 192.168.1.1
            ("2002:0808:0808::1", false),                    // 6to4 of 8.8.8.8
            ("64:ff9b::7f00:1", true),                       // NAT64 of 127.0.0.1
            ("64:ff9b::808:808", false),                     // NAT64 of 8.8.8.8
            ("64:ff9b:1::808:808", true),                    // local-use NAT64
            ("2001:0:4136:e378:8000:63bf:f5ff:fffe", true),  // Teredo, client 10.0.0.1
            ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", false), // Teredo, client 8.8.8.8
            ("2001:0:0a00:0001:8000:63bf:f7f7:f7f7", true),  // Teredo, server 10.0.0.1
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(blocked_reason(ip).is_some(), blocked, "{ip}");
        }
    }

    #[test]
    fn https_to_http_redirects_are_refused() {
        let a = Url::parse("https://code.example/p.nupkg").unwrap();
        let b = Url::parse("http://code.example/p.nupkg").unwrap();
        let err = check_redirect(&a, &b).unwrap_err();
        assert!(matches!(err, FetchError::Blocked { .. }), "{err}");
        assert!(check_redirect(&b, &a).is_ok());
        assert!(check_redirect(&a, &a).is_ok());
    }

    #[test]
    fn blocks_internal_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(blocked_reason(ip).is_some(), "{ip} should be blocked");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(blocked_reason(ip).is_none(), "{ip} should be allowed");
        }
    }

    fn fetcher(hosts: &[&str]) -> CodeFetcher {
        CodeFetcher::new(CodeFetchSettings {
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            timeout: Duration::from_secs(5),
            allow_private_networks: false,
            max_bytes: 1024,
        })
    }

    #[test]
    fn scheme_and_allow_list() {
        let f = fetcher(&[]);
        assert!(matches!(
            f.check_url("ftp://x/y"),
            Err(FetchError::BadUrl { .. })
        ));
        assert!(matches!(
            f.check_url("file:///etc/passwd"),
            Err(FetchError::BadUrl { .. })
        ));
        assert!(matches!(
            f.check_url("not a url"),
            Err(FetchError::BadUrl { .. })
        ));
        assert!(f.check_url("https://example.com/x.nupkg").is_ok());
        let f = fetcher(&["feed.example"]);
        assert!(f.check_url("https://FEED.example./x").is_ok());
        assert!(matches!(
            f.check_url("https://evil.example/x"),
            Err(FetchError::Blocked { .. })
        ));
    }

    #[tokio::test]
    async fn refuses_loopback_literals_and_names() {
        let f = fetcher(&[]);
        for url in [
            "http://127.0.0.1:1/x",
            "http://[::1]:1/x",
            "http://localhost:1/x",
        ] {
            match f.fetch(url, None).await {
                Err(FetchError::Blocked { reason, .. }) => {
                    assert!(reason.contains("loopback"), "{reason}")
                }
                other => panic!("{url}: expected blocked, got {other:?}"),
            }
        }
    }
}
