//! Who is calling, and may they: tokens, scopes, principals.
//!
//! A request is made by a [`Principal`]: a named bearer token (`WORKMANAGER_API_TOKENS`, or
//! the legacy `WORKMANAGER_API_TOKEN` as the `admin` token `api-token`), a TLS client
//! certificate (by subject common name, `WORKMANAGER_TLS_CLIENT_SCOPES`), a Unix socket peer
//! (by uid, `WORKMANAGER_UNIX_PEER_SCOPES`, or every scope when that map is empty: the socket's
//! mode and group are the boundary), or nobody (anonymous: every scope, only while no token and
//! no client CA is configured, which the daemon allows on loopback TCP listeners only).
//!
//! Tokens are stored as sha256 hashes; a presented token is hashed and compared with every
//! stored hash in constant time (`subtle`), so neither the comparison nor the loop leaks which
//! byte or which token differed.
//!
//! Scopes: `admin` (every route, including the control-plane changes no other scope grants),
//! `invoke`, `publish:<topic glob>`, `subscribe:<topic glob>`, `read` (GETs and `/metrics`).
//! A glob has `*` (any run of characters) and `?` (one character). Publishing on the daemon's
//! own `workmanager.*` topics (lifecycle, infra, audit) needs `admin`.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// One permission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything.
    Admin,
    /// `POST /v1/workers/{id}/invoke`.
    Invoke,
    /// Publish on topics matching the glob.
    Publish(String),
    /// Subscribe (SSE) to topics matching the glob.
    Subscribe(String),
    /// GETs and `/metrics`.
    Read,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Admin => f.write_str("admin"),
            Scope::Invoke => f.write_str("invoke"),
            Scope::Publish(g) => write!(f, "publish:{g}"),
            Scope::Subscribe(g) => write!(f, "subscribe:{g}"),
            Scope::Read => f.write_str("read"),
        }
    }
}

/// The characters a topic glob may hold (topic characters plus `*` and `?`).
fn is_glob_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*' | '?')
}

impl Scope {
    /// Parses `admin`, `invoke`, `read`, `publish:<glob>`, `subscribe:<glob>`.
    pub fn parse(s: &str) -> Result<Scope, String> {
        let s = s.trim();
        let glob = |g: &str| {
            if !g.is_empty() && g.chars().all(is_glob_char) {
                Ok(g.to_owned())
            } else {
                Err(format!(
                    "scope '{s}': the topic glob must be 1 or more of A-Z a-z 0-9 . _ - * ?"
                ))
            }
        };
        match s {
            "admin" => Ok(Scope::Admin),
            "invoke" => Ok(Scope::Invoke),
            "read" => Ok(Scope::Read),
            "publish" | "subscribe" => Ok(if s == "publish" {
                Scope::Publish("*".into())
            } else {
                Scope::Subscribe("*".into())
            }),
            _ => {
                if let Some(g) = s.strip_prefix("publish:") {
                    Ok(Scope::Publish(glob(g)?))
                } else if let Some(g) = s.strip_prefix("subscribe:") {
                    Ok(Scope::Subscribe(glob(g)?))
                } else {
                    Err(format!(
                        "unknown scope '{s}': use admin, invoke, read, publish:<topic glob> or subscribe:<topic glob>"
                    ))
                }
            }
        }
    }

    /// Parses a space-separated list.
    pub fn parse_list(s: &str) -> Result<Vec<Scope>, String> {
        let scopes = s
            .split_whitespace()
            .map(Scope::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if scopes.is_empty() {
            return Err("no scope given".into());
        }
        Ok(scopes)
    }
}

/// What a route needs (the `scope` column of the route table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: health probes.
    Public,
    /// `admin`.
    Admin,
    /// `invoke`.
    Invoke,
    /// `read`.
    Read,
    /// `read`, unless `WORKMANAGER_METRICS_PUBLIC`.
    Metrics,
    /// `publish:<glob>` matching the `{topic}` path parameter.
    Publish,
    /// `subscribe:<glob>` matching the `{topic}` path parameter.
    Subscribe,
}

impl Need {
    /// The scope to name in a 403, for `topic`.
    pub fn scope_name(self, topic: Option<&str>) -> String {
        let t = topic.unwrap_or("*");
        match self {
            Need::Public => "none".into(),
            Need::Admin => "admin".into(),
            Need::Invoke => "invoke".into(),
            Need::Read | Need::Metrics => "read".into(),
            Need::Publish => format!("publish:{t}"),
            Need::Subscribe => format!("subscribe:{t}"),
        }
    }
}

/// Whether `text` matches `glob` (`*` any run, `?` one character).
pub fn glob_match(glob: &str, text: &str) -> bool {
    let (g, t): (Vec<char>, Vec<char>) = (glob.chars().collect(), text.chars().collect());
    let (mut gi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match g.get(gi) {
            Some('*') => {
                star = Some((gi, ti));
                gi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                gi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sg, st)) => {
                    gi = sg + 1;
                    ti = st + 1;
                    star = Some((sg, st + 1));
                }
                None => return false,
            },
        }
    }
    g[gi..].iter().all(|&c| c == '*')
}

/// Whether `scopes` grant `need` (on `topic` for publish/subscribe).
pub fn allows(scopes: &[Scope], need: Need, topic: Option<&str>, metrics_public: bool) -> bool {
    if need == Need::Public || (need == Need::Metrics && metrics_public) {
        return true;
    }
    scopes.iter().any(|s| match (s, need) {
        (Scope::Admin, _) => true,
        (Scope::Invoke, Need::Invoke) => true,
        (Scope::Read, Need::Read | Need::Metrics) => true,
        // The daemon's own topics (lifecycle, infra, audit) cannot be forged with a publish
        // scope: only admin publishes there.
        (Scope::Publish(g), Need::Publish) => {
            topic.is_some_and(|t| !t.starts_with("workmanager.") && glob_match(g, t))
        }
        (Scope::Subscribe(g), Need::Subscribe) => topic.is_some_and(|t| glob_match(g, t)),
        _ => false,
    })
}

/// A named token: its sha256 and scopes.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenEntry {
    /// The name (audit logs, rate-limit key, 403 messages).
    pub name: String,
    /// sha256 of the token.
    pub sha256: [u8; 32],
    /// What it may do.
    pub scopes: Vec<Scope>,
}

impl fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEntry")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// sha256 of a token.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Parses `WORKMANAGER_API_TOKENS`: comma-separated `NAME:SHA256HEX:SCOPE[ SCOPE...]`.
pub fn parse_tokens(s: &str) -> Result<Vec<TokenEntry>, String> {
    let mut out: Vec<TokenEntry> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let mut parts = item.splitn(3, ':');
        let (Some(name), Some(hash), Some(scopes)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "token entry '{}' is not NAME:SHA256HEX:SCOPES",
                item.split(':').next().unwrap_or("")
            ));
        };
        if !valid_name(name) {
            return Err(format!(
                "token name '{name}': use 1-64 of A-Z a-z 0-9 . _ -"
            ));
        }
        let bytes = hex::decode(hash.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| format!("token '{name}': the hash must be 64 hex digits (sha256)"))?;
        if out.iter().any(|t| t.name == name) {
            return Err(format!("token name '{name}' is used twice"));
        }
        let scopes = Scope::parse_list(scopes).map_err(|e| format!("token '{name}': {e}"))?;
        out.push(TokenEntry {
            name: name.to_owned(),
            sha256: bytes,
            scopes,
        });
    }
    Ok(out)
}

/// Parses `KEY=SCOPE[ SCOPE...]` entries (comma-separated), for the uid and certificate maps.
pub fn parse_scope_map(s: &str) -> Result<Vec<(String, Vec<Scope>)>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .map(|item| {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| format!("entry '{item}' is not KEY=SCOPES"))?;
            let scopes = Scope::parse_list(v).map_err(|e| format!("entry '{k}': {e}"))?;
            Ok((k.trim().to_owned(), scopes))
        })
        .collect()
}

/// Finds the token whose hash matches `presented`: every stored hash is compared, in
/// constant time, whatever matched earlier.
pub fn find_token<'a>(tokens: &'a [TokenEntry], presented: &str) -> Option<&'a TokenEntry> {
    let h = hash_token(presented);
    let mut found = None;
    for t in tokens {
        if bool::from(t.sha256.ct_eq(&h)) {
            found = Some(t);
        }
    }
    found
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// For logs and the audit: `token:<name>`, `cert:CN=<cn>`, `uid:<n>` or `anonymous`.
    pub who: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// Whether per-principal limits (rate, SSE subscriptions) apply: tokens, certificates and
    /// mapped uids, not anonymous loopback callers.
    pub limited: bool,
}

impl Principal {
    /// Anonymous with every scope (auth off; loopback only).
    pub fn anonymous() -> Principal {
        Principal {
            who: "anonymous".into(),
            scopes: vec![Scope::Admin],
            limited: false,
        }
    }
}

/// A new random token: 32 bytes from the OS, URL-safe base64, prefixed `wm_`.
pub fn new_token() -> std::io::Result<String> {
    use base64::Engine as _;
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(format!(
        "wm_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The password of an HTTP Basic `Authorization` value (`Basic base64(user:password)`), which
/// the dashboard's users type the API token into; `None` for anything else.
pub fn basic_password(value: &str) -> Option<String> {
    use base64::Engine as _;
    let b64 = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (_, password) = text.split_once(':')?;
    (!password.is_empty()).then(|| password.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_carry_the_token_as_password() {
        use base64::Engine as _;
        let b = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert_eq!(basic_password(&b("ops:tok-1")).as_deref(), Some("tok-1"));
        assert_eq!(basic_password(&b(":a:b")).as_deref(), Some("a:b"));
        assert_eq!(basic_password(&b("ops:")), None);
        assert_eq!(basic_password(&b("no-colon")), None);
        assert_eq!(basic_password("Bearer x"), None);
        assert_eq!(basic_password("Basic !!!"), None);
    }

    #[test]
    fn globs() {
        assert!(glob_match("orders.*", "orders.eu"));
        assert!(glob_match("*", "x"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("orders.*", "payments"));
        assert!(glob_match("*.dead", "orders.dead"));
        assert!(!glob_match("orders", "orders.eu"));
    }

    #[test]
    fn tokens_parse_and_match_by_hash() {
        let h = hex::encode(hash_token("secret-one"));
        let list = parse_tokens(&format!(
            "ci:{h}:admin, team:{}:publish:orders.* read",
            hex::encode(hash_token("secret-two"))
        ))
        .unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(
            list[1].scopes,
            vec![Scope::Publish("orders.*".into()), Scope::Read]
        );
        assert_eq!(find_token(&list, "secret-two").unwrap().name, "team");
        assert!(find_token(&list, "secret-three").is_none());
        assert!(parse_tokens("x:abc:admin").is_err());
        assert!(parse_tokens(&format!("x:{h}:root")).is_err());
        assert!(
            !format!("{:?}", list[0]).contains(&h),
            "Debug hides the hash"
        );
    }

    #[test]
    fn scopes_grant_what_they_name() {
        let team = [Scope::Publish("orders.*".into())];
        assert!(allows(&team, Need::Publish, Some("orders.eu"), false));
        assert!(!allows(&team, Need::Publish, Some("payments"), false));
        assert!(!allows(&team, Need::Read, None, false));
        assert!(allows(&team, Need::Metrics, None, true));
        assert!(allows(&[Scope::Admin], Need::Subscribe, Some("x"), false));
        assert!(allows(&[Scope::Read], Need::Metrics, None, false));
        assert!(!allows(&[Scope::Read], Need::Admin, None, false));
    }
}
