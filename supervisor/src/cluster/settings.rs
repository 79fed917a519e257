//! The cluster settings: which backends, and how to reach NATS.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{ConfigError, RawConfig, parse_bool};

/// Where the bus (or the registry) lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite in the data directory: one machine (the default).
    Embedded,
    /// NATS JetStream, shared by every daemon of a cluster.
    JetStream,
}

/// A secret value: `Debug` never shows it, so a logged config cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How the daemon proves who it is to NATS (at most one way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials (a server without authorization).
    None,
    /// A `.creds` file (user JWT + nkey seed).
    CredsFile(PathBuf),
    /// A file with an nkey seed.
    NkeySeedFile(PathBuf),
    /// User and password.
    UserPassword { user: String, password: Secret },
    /// A token.
    Token(Secret),
}

/// How to reach NATS and how to name and size what the daemon creates there.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// One or more server URLs.
    pub urls: Vec<String>,
    /// Credentials.
    pub auth: NatsAuth,
    /// Refuse plain connections.
    pub tls_required: bool,
    /// CA bundle for the servers' certificates.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key (mutual TLS).
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Prefix of the stream, subject and bucket names (`WORKMANAGER`).
    pub prefix: String,
    /// Replicas of streams and buckets.
    pub replicas: usize,
    /// JetStream's ack wait of the worker consumers.
    pub ack_wait: Duration,
    /// JetStream's duplicate window of the events stream.
    pub duplicate_window: Duration,
    /// How long start-up waits for NATS.
    pub connect_timeout: Duration,
    /// Lease time of group locks (the lock bucket's max age).
    pub lock_lease: Duration,
}

/// The validated cluster settings.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// `BUS_BACKEND`.
    pub bus: Backend,
    /// `REGISTRY_BACKEND` (`JetStream` only with a JetStream bus).
    pub registry: Backend,
    /// `NATS_*`.
    pub nats: NatsSettings,
    /// `WORKER_RECOVERY_LEASE_TTL_SECONDS`: how long the recovery leader's lease lasts (and
    /// how long a finished recovery keeps later-starting daemons from recovering again).
    pub recovery_lease_ttl: Duration,
    /// `WORKER_RECOVERY_ACQUIRE_TIMEOUT_SECONDS`: how long a daemon waits for the lease.
    pub recovery_acquire_timeout: Duration,
}

impl ClusterSettings {
    /// Validates the `BUS_BACKEND`, `REGISTRY_BACKEND` and `NATS_*` settings.
    pub fn from_raw(raw: &RawConfig) -> Result<ClusterSettings, ConfigError> {
        let invalid = |name: &'static str, range: &str| {
            let (v, o) = raw.get(name);
            ConfigError::Invalid {
                name,
                value: v.to_owned(),
                origin: o.clone(),
                range: range.to_owned(),
            }
        };
        let text = |name: &'static str| raw.get(name).0.trim().to_owned();
        let path = |name: &'static str| {
            Some(text(name))
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        };
        let int = |name: &'static str, lo: u64, hi: u64| -> Result<u64, ConfigError> {
            text(name)
                .parse::<u64>()
                .ok()
                .filter(|n| (lo..=hi).contains(n))
                .ok_or_else(|| invalid(name, &format!("an integer {lo}-{hi}")))
        };
        let backend = |name: &'static str| match text(name).to_ascii_lowercase().as_str() {
            "embedded" => Ok(Backend::Embedded),
            "jetstream" => Ok(Backend::JetStream),
            _ => Err(invalid(name, "embedded|jetstream")),
        };
        let bus = backend("BUS_BACKEND")?;
        let registry = backend("REGISTRY_BACKEND")?;
        if registry == Backend::JetStream && bus != Backend::JetStream {
            // Workers shared by every daemon but events kept per daemon would lose the
            // events published on a daemon the worker is not placed on.
            return Err(invalid(
                "REGISTRY_BACKEND",
                "embedded, or jetstream together with BUS_BACKEND=jetstream (docs/cluster.md)",
            ));
        }

        let urls: Vec<String> = crate::config::comma_items(&text("NATS_URL"))
            .map(str::to_owned)
            .collect();
        let url_ok = |u: &String| {
            url::Url::parse(u).is_ok_and(|p| {
                matches!(p.scheme(), "nats" | "tls") && p.host_str().is_some_and(|h| !h.is_empty())
            })
        };
        if urls.is_empty() || !urls.iter().all(url_ok) {
            return Err(invalid(
                "NATS_URL",
                "comma-separated nats://host:port or tls://host:port URLs",
            ));
        }

        let secret =
            |name: &'static str| Some(raw.get(name).0.to_owned()).filter(|s| !s.is_empty());
        let user = Some(text("NATS_USER")).filter(|s| !s.is_empty());
        let mut ways = Vec::new();
        if let Some(p) = path("NATS_CREDS_FILE") {
            ways.push(("NATS_CREDS_FILE", NatsAuth::CredsFile(p)));
        }
        if let Some(p) = path("NATS_NKEY_SEED_FILE") {
            ways.push(("NATS_NKEY_SEED_FILE", NatsAuth::NkeySeedFile(p)));
        }
        match (user, secret("NATS_PASSWORD")) {
            (Some(user), Some(pw)) => ways.push((
                "NATS_USER",
                NatsAuth::UserPassword {
                    user,
                    password: Secret(pw),
                },
            )),
            (None, None) => {}
            (Some(_), None) => {
                return Err(invalid("NATS_PASSWORD", "a password when NATS_USER is set"));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "NATS_USER",
                    "a user name when NATS_PASSWORD is set",
                ));
            }
        }
        if let Some(t) = secret("NATS_TOKEN") {
            ways.push(("NATS_TOKEN", NatsAuth::Token(Secret(t))));
        }
        if ways.len() > 1 {
            let names: Vec<&str> = ways.iter().map(|(n, _)| *n).collect();
            return Err(invalid(
                ways[1].0,
                &format!(
                    "one way to authenticate to NATS, not several ({} are set): keep one of NATS_CREDS_FILE, NATS_NKEY_SEED_FILE, NATS_USER+NATS_PASSWORD, NATS_TOKEN",
                    names.join(", ")
                ),
            ));
        }
        let auth = ways.pop().map(|(_, a)| a).unwrap_or(NatsAuth::None);

        let tls_required = parse_bool(raw.get("NATS_TLS_REQUIRED").0)
            .ok_or_else(|| invalid("NATS_TLS_REQUIRED", "true|false|1|0|yes|no|on|off"))?;
        let tls_client = match (path("NATS_TLS_CERT_FILE"), path("NATS_TLS_KEY_FILE")) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "NATS_TLS_KEY_FILE",
                    "the key of NATS_TLS_CERT_FILE (both or neither)",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "NATS_TLS_CERT_FILE",
                    "the certificate of NATS_TLS_KEY_FILE (both or neither)",
                ));
            }
        };
        let prefix = text("NATS_STREAM_PREFIX");
        if prefix.is_empty()
            || prefix.len() > 32
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(invalid("NATS_STREAM_PREFIX", "1-32 of A-Z, 0-9, '_'"));
        }
        Ok(ClusterSettings {
            bus,
            registry,
            recovery_lease_ttl: Duration::from_secs(int(
                "WORKER_RECOVERY_LEASE_TTL_SECONDS",
                10,
                86_400,
            )?),
            recovery_acquire_timeout: Duration::from_secs(int(
                "WORKER_RECOVERY_ACQUIRE_TIMEOUT_SECONDS",
                1,
                600,
            )?),
            nats: NatsSettings {
                urls,
                auth,
                tls_required,
                tls_ca_file: path("NATS_TLS_CA_FILE"),
                tls_client,
                prefix,
                replicas: usize::try_from(int("NATS_STREAM_REPLICAS", 1, 5)?).unwrap_or(1),
                ack_wait: Duration::from_secs(int("NATS_ACK_WAIT_SECONDS", 2, 3600)?),
                duplicate_window: Duration::from_secs(int(
                    "NATS_DUPLICATE_WINDOW_SECONDS",
                    1,
                    86_400,
                )?),
                connect_timeout: Duration::from_secs(int("NATS_CONNECT_TIMEOUT_SECONDS", 1, 600)?),
                lock_lease: Duration::from_secs(int("NATS_LOCK_LEASE_SECONDS", 3, 3600)?),
            },
        })
    }
}

impl NatsSettings {
    /// Settings for a server at `url` with the defaults (tests, benchmarks).
    pub fn for_url(url: &str) -> NatsSettings {
        NatsSettings {
            urls: vec![url.to_owned()],
            auth: NatsAuth::None,
            tls_required: false,
            tls_ca_file: None,
            tls_client: None,
            prefix: "WORKMANAGER".into(),
            replicas: 1,
            ack_wait: Duration::from_secs(30),
            duplicate_window: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            lock_lease: Duration::from_secs(15),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServeArgs;

    fn settings(env: &[(&str, &str)]) -> Result<ClusterSettings, ConfigError> {
        let lookup = |n: &str| {
            env.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| (*v).to_owned())
        };
        let raw = RawConfig::gather(&ServeArgs::default(), &lookup)?;
        ClusterSettings::from_raw(&raw)
    }

    #[test]
    fn defaults_are_the_embedded_single_machine() {
        let s = settings(&[]).unwrap();
        assert_eq!((s.bus, s.registry), (Backend::Embedded, Backend::Embedded));
        assert_eq!(s.nats.urls, ["nats://127.0.0.1:4222"]);
        assert_eq!(s.nats.auth, NatsAuth::None);
        assert_eq!(s.nats.replicas, 1);
    }

    #[test]
    fn several_urls_credentials_and_tls() {
        let s = settings(&[
            ("BUS_BACKEND", "JetStream"),
            ("NATS_URL", "tls://a:4222, tls://b:4222,nats://c"),
            ("NATS_USER", "wm"),
            ("NATS_PASSWORD", "s3cret"),
            ("NATS_TLS_CERT_FILE", "/c.pem"),
            ("NATS_TLS_KEY_FILE", "/k.pem"),
            ("NATS_STREAM_REPLICAS", "3"),
        ])
        .unwrap();
        assert_eq!(s.bus, Backend::JetStream);
        assert_eq!(s.nats.urls.len(), 3);
        assert!(matches!(&s.nats.auth, NatsAuth::UserPassword { user, .. } if user == "wm"));
        assert!(
            !format!("{s:?}").contains("s3cret"),
            "secrets stay out of Debug"
        );
        assert_eq!(s.nats.replicas, 3);
        assert!(s.nats.tls_client.is_some());
    }

    #[test]
    fn bad_values_name_the_setting() {
        for (env, name) in [
            (vec![("BUS_BACKEND", "redis")], "BUS_BACKEND"),
            (vec![("REGISTRY_BACKEND", "jetstream")], "REGISTRY_BACKEND"),
            (vec![("REGISTRY_BACKEND", "redis")], "REGISTRY_BACKEND"),
            (
                vec![("WORKER_RECOVERY_LEASE_TTL_SECONDS", "5")],
                "WORKER_RECOVERY_LEASE_TTL_SECONDS",
            ),
            (
                vec![("WORKER_RECOVERY_ACQUIRE_TIMEOUT_SECONDS", "0")],
                "WORKER_RECOVERY_ACQUIRE_TIMEOUT_SECONDS",
            ),
            (vec![("NATS_URL", "http://x:80")], "NATS_URL"),
            (vec![("NATS_URL", " , ")], "NATS_URL"),
            (
                vec![("NATS_TOKEN", "t"), ("NATS_CREDS_FILE", "/c")],
                "NATS_TOKEN",
            ),
            (vec![("NATS_USER", "u")], "NATS_PASSWORD"),
            (vec![("NATS_TLS_CERT_FILE", "/c")], "NATS_TLS_KEY_FILE"),
            (vec![("NATS_STREAM_PREFIX", "wm")], "NATS_STREAM_PREFIX"),
            (vec![("NATS_STREAM_REPLICAS", "0")], "NATS_STREAM_REPLICAS"),
            (
                vec![("NATS_ACK_WAIT_SECONDS", "1")],
                "NATS_ACK_WAIT_SECONDS",
            ),
        ] {
            let e = settings(&env).unwrap_err().to_string();
            assert!(e.contains(name), "{env:?}: {e}");
        }
    }
}
