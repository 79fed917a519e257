//! Settings, in two stages (ripgrep's lowargs/hiargs idea).
//!
//! 1. [`RawConfig::gather`] collects strings: command-line flags > environment > the optional
//!    TOML file > built-in defaults, remembering where each value came from.
//! 2. [`Config::from_raw`] parses and range-checks every value. A bad value stops the daemon
//!    at start with a message naming the setting, the value, where it came from and the
//!    accepted range.
//!
//! Names are the original WorkManager's where it has one (`WORKER_RETRY_ATTEMPTS`, ...); the
//! full list with defaults and ranges is [`SETTINGS`] (and docs/operations.md).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The command line of `workmanager serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Address the REST API listens on (IP:PORT; port 0 picks a free one).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Directory for the registry, code blobs and packages.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Optional TOML file with settings (same names as the environment variables).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// One setting: its name, the other names it is read under, its default and what it means.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The environment variable and TOML key.
    pub name: &'static str,
    /// Other accepted names (the original's alternative spellings).
    pub aliases: &'static [&'static str],
    /// The default, as text (empty = unset).
    pub default: &'static str,
    /// Accepted values, as the error message and the docs state them.
    pub range: &'static str,
    /// What it does.
    pub help: &'static str,
}

macro_rules! settings {
    ($( $name:literal [$($alias:literal),*] = $default:literal, $range:literal, $help:literal; )*) => {
        /// Every setting the daemon reads.
        pub const SETTINGS: &[Setting] = &[ $( Setting { name: $name, aliases: &[$($alias),*], default: $default, range: $range, help: $help } ),* ];
    };
}

settings! {
    "WORKMANAGER_LISTEN" [] = "127.0.0.1:25001", "IP:PORT", "address of the REST API (flag --listen)";
    "WORKMANAGER_DATA_DIR" [] = "./data", "a directory path", "registry, code blobs and packages (flag --data-dir)";
    "WORKMANAGER_API_TOKEN" [] = "", "empty, or 16-4096 visible ASCII characters", "bearer token required on every endpoint except /health and /health/live";
    "WORKMANAGER_LOG_FORMAT" [] = "text", "text|json", "log line format";
    "WORKMANAGER_MAX_CODE_BYTES" [] = "67108864", "1024-1073741824", "largest accepted package, bytes";
    "WORKMANAGER_REQUEST_TIMEOUT_SECONDS" [] = "120", "1-3600", "longest an API request may take";
    "WORKMANAGER_SHUTDOWN_TIMEOUT_SECONDS" [] = "10", "1-600", "how long shutdown waits for in-flight work";
    "WORKER_RETRY_ATTEMPTS" [] = "3", "0-20", "retries of a failed message before it is dead-lettered";
    "WORKER_RETRY_BASE_DELAY_MS" [] = "200", "10-60000", "retry delay base; delay = base * 2^attempt";
    "WORKER_RECOVERY_ON_START" [] = "true", "true|false|1|0|yes|no|on|off", "restart persisted running workers at start";
    "ALLOWED_CODE_SOURCE_HOSTS" ["AllowedCodeSourceHosts"] = "", "comma-separated host names; empty allows all", "hosts code URLs may point at";
    "CODE_FETCH_TIMEOUT_SECONDS" ["CodeFetchTimeoutSeconds"] = "30", "1-600", "timeout of a code download";
    "CODE_SOURCE_ALLOW_PRIVATE_NETWORKS" [] = "false", "true|false|1|0|yes|no|on|off", "allow code URLs that resolve to private, loopback or link-local addresses";
    "MESSAGE_HANDLING_TIMEOUT_SECONDS" ["MessageHandlingTimeoutSeconds"] = "30", "1-3600", "default deadline of one Process call";
    "GROUP_LOCK_MAX_RETRIES" [] = "3", "0-20", "attempts to take a group lock before the message is retried";
    "GROUP_LOCK_RETRY_BASE_DELAY_MS" [] = "500", "10-60000", "group lock retry delay base; doubles per retry";
    "CRASH_LOOP_MAX_CRASHES" [] = "5", "1-1000", "host crashes caused by one worker within the window that quarantine it";
    "CRASH_LOOP_WINDOW_SECONDS" [] = "60", "1-86400", "the crash-loop window";
    "HOST_POOL_SHARED_HOSTS_PER_ENGINE" [] = "1", "1-64", "shared host processes per engine";
    "HOST_POOL_MAX_HOSTS" [] = "64", "1-1024", "most host processes at once (shared and dedicated)";
    "RING_BYTES" [] = "1048576", "a power of two, 65536-268435456", "size of each shared-memory ring";
    "RING_MAX_FRAME_BYTES" [] = "262144", "1024 to RING_BYTES/2", "largest frame a ring carries";
    "TIMEOUT_RECLAIM_GRACE_SECONDS" [] = "5", "0-3600", "how long a timed-out call may keep running before its host is killed and respawned";
    "HOST_RESPAWN_BACKOFF_MS" [] = "100", "1-60000", "first delay before a crashed host is respawned; doubles per consecutive death no call is charged with, up to 30 s";
    "HOST_RUNNER_PATH" [] = "", "a file path; empty = next to the workmanager binary", "the host-runner binary";
    "HOST_RLIMIT_AS_BYTES" [] = "0", "0 (no limit) or 67108864-1099511627776", "address-space limit (RLIMIT_AS) of each host process";
    "BUS_DURABILITY" [] = "fsync", "fsync|os", "fsync: a publish is acknowledged after an fsync'd commit (survives power loss); os: after the write reaches the OS (survives a daemon crash or kill -9, not a power cut; ~4x the publish rate)";
    "TOPIC_MAX_BACKLOG_EVENTS" [] = "100000", "0 (no limit) or 1-100000000", "events one topic may hold waiting for its workers; more are dead-lettered with reason overflow";
    "TOPIC_RETENTION_EVENTS" [] = "100000", "0 (no replay window) or 1-100000000", "replay window: events per topic kept after their outcome, for SSE resume (Last-Event-ID, ?after=, ?from=earliest)";
    "TOPIC_RETENTION_SECONDS" [] = "3600", "0 (no replay window) or 1-31536000", "replay window: how long an event is kept after it was published, once it reached its outcome";
    "DEAD_LETTER_MAX_EVENTS" [] = "100000", "1-100000000", "dead letters one <topic>-dead topic keeps for a consumer; beyond it the oldest are evicted and counted";
    "WORKER_HEARTBEAT_SECONDS" [] = "30", "0 (off) or 1-3600", "how often each started worker's heartbeat is published on workmanager.infra.worker";
    "VIRTUFIN_API_GATEWAY_URL" [] = "", "an http(s) base URL; empty = none", "where plugins' gateway calls for services other than pubsub, state and workmanager are forwarded";
}

/// Where a value came from (for error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag.
    Flag(&'static str),
    /// An environment variable (the name it was found under).
    Env(String),
    /// The TOML file.
    File(PathBuf),
    /// The built-in default.
    Default,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "flag {flag}"),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::File(path) => write!(f, "config file {}", path.display()),
            Origin::Default => write!(f, "default"),
        }
    }
}

/// Why the settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("config file {path} is not valid TOML: {source}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: toml::de::Error,
    },
    /// The config file names a setting we do not know (a typo would otherwise go unnoticed).
    #[error("config file {path}: unknown setting '{key}' (see docs/operations.md for the list)")]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A value is out of range or malformed.
    #[error("invalid value '{value}' for {name} (from {origin}): expected {range}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// The value given.
        value: String,
        /// Where it came from.
        origin: Origin,
        /// What is accepted.
        range: String,
    },
}

/// Stage one: every setting as a string, with its origin.
#[derive(Debug, Clone)]
pub struct RawConfig {
    values: BTreeMap<&'static str, (String, Origin)>,
}

impl RawConfig {
    /// Collects the settings from flags, then `env`, then the TOML file, then the defaults.
    ///
    /// `env` is a lookup function so tests need not touch the process environment.
    pub fn gather(
        args: &ServeArgs,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<RawConfig, ConfigError> {
        let config_path = args.config.clone().or_else(|| {
            env("WORKMANAGER_CONFIG")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        });
        let file = match &config_path {
            Some(path) => read_toml(path)?,
            None => BTreeMap::new(),
        };
        let mut values = BTreeMap::new();
        for s in SETTINGS {
            let flag = match s.name {
                "WORKMANAGER_LISTEN" => args.listen.clone().map(|v| (v, Origin::Flag("--listen"))),
                "WORKMANAGER_DATA_DIR" => args
                    .data_dir
                    .as_ref()
                    .map(|v| (v.display().to_string(), Origin::Flag("--data-dir"))),
                _ => None,
            };
            let from_env = || {
                std::iter::once(s.name)
                    .chain(s.aliases.iter().copied())
                    .find_map(|n| env(n).map(|v| (v, Origin::Env(n.to_owned()))))
            };
            let from_file = || {
                std::iter::once(s.name)
                    .chain(s.aliases.iter().copied())
                    .find_map(|n| file.get(n).cloned())
                    .zip(config_path.clone().map(Origin::File))
            };
            let value = flag
                .or_else(from_env)
                .or_else(from_file)
                .unwrap_or_else(|| (s.default.to_owned(), Origin::Default));
            values.insert(s.name, value);
        }
        Ok(RawConfig { values })
    }

    fn get(&self, name: &'static str) -> (&str, &Origin) {
        match self.values.get(name) {
            Some((v, o)) => (v.as_str(), o),
            None => ("", &Origin::Default),
        }
    }
}

fn read_toml(path: &PathBuf) -> Result<BTreeMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.clone(),
        source,
    })?;
    let table: toml::Table = text.parse().map_err(|source| ConfigError::ParseFile {
        path: path.clone(),
        source,
    })?;
    let mut out = BTreeMap::new();
    for (key, value) in table {
        let known = SETTINGS
            .iter()
            .any(|s| s.name == key || s.aliases.contains(&key.as_str()));
        if !known {
            return Err(ConfigError::UnknownKey {
                path: path.clone(),
                key,
            });
        }
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        };
        out.insert(key, text);
    }
    Ok(out)
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Settings for downloading code from URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeFetchSettings {
    /// Allowed host names (lower-case); empty allows every host.
    pub allowed_hosts: Vec<String>,
    /// Timeout of one download.
    pub timeout: Duration,
    /// Whether private, loopback and link-local addresses are allowed.
    pub allow_private_networks: bool,
    /// Largest download, bytes.
    pub max_bytes: u64,
}

/// Stage two: the validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the REST API listens.
    pub listen: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The bearer token guarding the API, if any.
    pub api_token: Option<String>,
    /// Log format.
    pub log_format: LogFormat,
    /// Largest package accepted, bytes.
    pub max_code_bytes: u64,
    /// Longest an API request may take.
    pub request_timeout: Duration,
    /// How long shutdown waits for in-flight work.
    pub shutdown_timeout: Duration,
    /// Retries of a failed message.
    pub retry_attempts: u32,
    /// Retry delay base.
    pub retry_base_delay: Duration,
    /// Whether persisted running workers are restarted at start.
    pub recovery_on_start: bool,
    /// Code URL rules.
    pub code_fetch: CodeFetchSettings,
    /// Default deadline of a Process call.
    pub message_timeout: Duration,
    /// Group lock attempts.
    pub group_lock_max_retries: u32,
    /// Group lock retry delay base.
    pub group_lock_retry_base_delay: Duration,
    /// Crashes within the window that quarantine a worker.
    pub crash_loop_max_crashes: u32,
    /// The crash-loop window.
    pub crash_loop_window: Duration,
    /// Shared host processes per engine.
    pub shared_hosts_per_engine: u32,
    /// Most host processes at once.
    pub max_hosts: u32,
    /// Bytes of each ring.
    pub ring_bytes: u64,
    /// Largest frame a ring carries.
    pub ring_max_frame_bytes: u64,
    /// How long a timed-out call may keep running before its host is reclaimed.
    pub timeout_reclaim_grace: Duration,
    /// First respawn delay of a crashed host.
    pub host_respawn_backoff: Duration,
    /// The host-runner binary (`None`: next to the running `workmanager`).
    pub host_runner_path: Option<PathBuf>,
    /// RLIMIT_AS of each host, if any.
    pub host_rlimit_as: Option<u64>,
    /// Base URL of the external API gateway for forwarded gateway calls.
    pub gateway_url: Option<String>,
    /// How hard a publish is made durable before it is acknowledged (`true`: fsync).
    pub bus_fsync: bool,
    /// Events one topic may hold before publishes overflow into `<topic>-dead` (0: no limit).
    pub topic_max_backlog: u64,
    /// Replay window: events per topic kept after their outcome (0: none).
    pub topic_retention_events: u64,
    /// Replay window: how long (0: none).
    pub topic_retention: Duration,
    /// Dead letters a `-dead` topic keeps before the oldest are evicted.
    pub dead_letter_max_events: u64,
    /// Worker heartbeat period (`None`: off).
    pub heartbeat: Option<Duration>,
}

/// Parses `true/false/1/0/yes/no/on/off` (any case), as the original does.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

impl Config {
    /// Validates every raw value.
    pub fn from_raw(raw: &RawConfig) -> Result<Config, ConfigError> {
        let invalid = |name: &'static str, range: &str| {
            let (v, o) = raw.get(name);
            ConfigError::Invalid {
                name,
                value: v.to_owned(),
                origin: o.clone(),
                range: range.to_owned(),
            }
        };
        let range_of = |name: &str| {
            SETTINGS
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.range)
                .unwrap_or("")
        };
        let int = |name: &'static str, lo: u64, hi: u64| -> Result<u64, ConfigError> {
            let (v, _) = raw.get(name);
            match v.trim().parse::<u64>() {
                Ok(n) if (lo..=hi).contains(&n) => Ok(n),
                _ => Err(invalid(name, range_of(name))),
            }
        };
        let u32_in = |name: &'static str, lo: u32, hi: u32| -> Result<u32, ConfigError> {
            int(name, lo.into(), hi.into()).map(|n| u32::try_from(n).unwrap_or(hi))
        };
        let boolean = |name: &'static str| -> Result<bool, ConfigError> {
            parse_bool(raw.get(name).0).ok_or_else(|| invalid(name, range_of(name)))
        };
        let secs =
            |name: &'static str, lo: u64, hi: u64| int(name, lo, hi).map(Duration::from_secs);
        let millis =
            |name: &'static str, lo: u64, hi: u64| int(name, lo, hi).map(Duration::from_millis);

        let listen = raw
            .get("WORKMANAGER_LISTEN")
            .0
            .trim()
            .parse::<SocketAddr>()
            .map_err(|_| {
                invalid(
                    "WORKMANAGER_LISTEN",
                    "IP:PORT such as 127.0.0.1:25001 or [::1]:25001",
                )
            })?;
        let data_dir = raw.get("WORKMANAGER_DATA_DIR").0.trim();
        if data_dir.is_empty() {
            return Err(invalid("WORKMANAGER_DATA_DIR", "a directory path"));
        }
        let token = raw.get("WORKMANAGER_API_TOKEN").0.trim();
        let api_token = if token.is_empty() {
            None
        } else if (16..=4096).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_graphic())
        {
            Some(token.to_owned())
        } else {
            // The message must not echo a secret: replace the value.
            let (_, origin) = raw.get("WORKMANAGER_API_TOKEN");
            return Err(ConfigError::Invalid {
                name: "WORKMANAGER_API_TOKEN",
                value: format!("<{} characters, hidden>", token.len()),
                origin: origin.clone(),
                range: range_of("WORKMANAGER_API_TOKEN").to_owned(),
            });
        };
        let log_format = match raw
            .get("WORKMANAGER_LOG_FORMAT")
            .0
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => return Err(invalid("WORKMANAGER_LOG_FORMAT", "text|json")),
        };
        let max_code_bytes = int("WORKMANAGER_MAX_CODE_BYTES", 1024, 1 << 30)?;
        let allowed_hosts = raw
            .get("ALLOWED_CODE_SOURCE_HOSTS")
            .0
            .split([',', ';', ' '])
            .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect::<Vec<_>>();
        if allowed_hosts.iter().any(|h| {
            !h.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        }) {
            return Err(invalid(
                "ALLOWED_CODE_SOURCE_HOSTS",
                range_of("ALLOWED_CODE_SOURCE_HOSTS"),
            ));
        }
        let ring_bytes = int("RING_BYTES", 65536, 1 << 28)?;
        if !ring_bytes.is_power_of_two() {
            return Err(invalid("RING_BYTES", range_of("RING_BYTES")));
        }
        let ring_max_frame_bytes =
            int("RING_MAX_FRAME_BYTES", 1024, ring_bytes / 2).map_err(|_| {
                invalid(
                    "RING_MAX_FRAME_BYTES",
                    &format!("1024-{} (RING_BYTES/2)", ring_bytes / 2),
                )
            })?;
        let host_rlimit_as = match int("HOST_RLIMIT_AS_BYTES", 0, 1 << 40)? {
            0 => None,
            n if n < 64 << 20 => {
                return Err(invalid(
                    "HOST_RLIMIT_AS_BYTES",
                    range_of("HOST_RLIMIT_AS_BYTES"),
                ));
            }
            n => Some(n),
        };
        let host_runner_path = Some(raw.get("HOST_RUNNER_PATH").0.trim().to_string())
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        let gateway_url = Some(raw.get("VIRTUFIN_API_GATEWAY_URL").0.trim().to_string())
            .filter(|u| !u.is_empty());
        if let Some(u) = &gateway_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(invalid(
                "VIRTUFIN_API_GATEWAY_URL",
                range_of("VIRTUFIN_API_GATEWAY_URL"),
            ));
        }
        Ok(Config {
            listen,
            data_dir: PathBuf::from(data_dir),
            api_token,
            log_format,
            max_code_bytes,
            request_timeout: secs("WORKMANAGER_REQUEST_TIMEOUT_SECONDS", 1, 3600)?,
            shutdown_timeout: secs("WORKMANAGER_SHUTDOWN_TIMEOUT_SECONDS", 1, 600)?,
            retry_attempts: u32_in("WORKER_RETRY_ATTEMPTS", 0, 20)?,
            retry_base_delay: millis("WORKER_RETRY_BASE_DELAY_MS", 10, 60_000)?,
            recovery_on_start: boolean("WORKER_RECOVERY_ON_START")?,
            code_fetch: CodeFetchSettings {
                allowed_hosts,
                timeout: secs("CODE_FETCH_TIMEOUT_SECONDS", 1, 600)?,
                allow_private_networks: boolean("CODE_SOURCE_ALLOW_PRIVATE_NETWORKS")?,
                max_bytes: max_code_bytes,
            },
            message_timeout: secs("MESSAGE_HANDLING_TIMEOUT_SECONDS", 1, 3600)?,
            group_lock_max_retries: u32_in("GROUP_LOCK_MAX_RETRIES", 0, 20)?,
            group_lock_retry_base_delay: millis("GROUP_LOCK_RETRY_BASE_DELAY_MS", 10, 60_000)?,
            crash_loop_max_crashes: u32_in("CRASH_LOOP_MAX_CRASHES", 1, 1000)?,
            crash_loop_window: secs("CRASH_LOOP_WINDOW_SECONDS", 1, 86_400)?,
            shared_hosts_per_engine: u32_in("HOST_POOL_SHARED_HOSTS_PER_ENGINE", 1, 64)?,
            max_hosts: u32_in("HOST_POOL_MAX_HOSTS", 1, 1024)?,
            ring_bytes,
            ring_max_frame_bytes,
            timeout_reclaim_grace: secs("TIMEOUT_RECLAIM_GRACE_SECONDS", 0, 3600)?,
            host_respawn_backoff: millis("HOST_RESPAWN_BACKOFF_MS", 1, 60_000)?,
            host_runner_path,
            host_rlimit_as,
            gateway_url,
            bus_fsync: match raw
                .get("BUS_DURABILITY")
                .0
                .trim()
                .to_ascii_lowercase()
                .as_str()
            {
                "fsync" => true,
                "os" => false,
                _ => return Err(invalid("BUS_DURABILITY", "fsync|os")),
            },
            topic_max_backlog: int("TOPIC_MAX_BACKLOG_EVENTS", 0, 100_000_000)?,
            topic_retention_events: int("TOPIC_RETENTION_EVENTS", 0, 100_000_000)?,
            topic_retention: secs("TOPIC_RETENTION_SECONDS", 0, 31_536_000)?,
            dead_letter_max_events: int("DEAD_LETTER_MAX_EVENTS", 1, 100_000_000)?,
            heartbeat: Some(secs("WORKER_HEARTBEAT_SECONDS", 0, 3600)?).filter(|d| !d.is_zero()),
        })
    }

    /// Flags, then the process environment, then the file, then defaults; validated.
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        let env = |name: &str| std::env::var(name).ok();
        Config::from_raw(&RawConfig::gather(args, &env)?)
    }

    /// Defaults only (plus the given data directory): what tests start from.
    pub fn defaults_with_data_dir(data_dir: PathBuf) -> Config {
        let args = ServeArgs {
            listen: Some("127.0.0.1:0".to_owned()),
            data_dir: Some(data_dir),
            config: None,
        };
        let none = |_: &str| None;
        // The built-in defaults are valid by construction; the test below checks it.
        match RawConfig::gather(&args, &none).and_then(|raw| Config::from_raw(&raw)) {
            Ok(c) => c,
            Err(e) => unreachable!("built-in defaults are invalid: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(args: ServeArgs, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |n: &str| map.get(n).cloned();
        Config::from_raw(&RawConfig::gather(&args, &lookup)?)
    }

    #[test]
    fn defaults_are_valid_and_match_the_original() {
        let c = load(ServeArgs::default(), &[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:25001");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.retry_attempts, 3);
        assert_eq!(c.retry_base_delay, Duration::from_millis(200));
        assert!(c.recovery_on_start);
        assert_eq!(c.code_fetch.timeout, Duration::from_secs(30));
        assert_eq!(c.message_timeout, Duration::from_secs(30));
        assert!(!c.code_fetch.allow_private_networks);
        assert_eq!(c.group_lock_max_retries, 3);
        assert_eq!(c.group_lock_retry_base_delay, Duration::from_millis(500));
        assert!(c.api_token.is_none());
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wm.toml");
        std::fs::write(
            &file,
            "WORKMANAGER_LISTEN = \"127.0.0.1:3\"\nWORKER_RETRY_ATTEMPTS = 7\nCODE_FETCH_TIMEOUT_SECONDS = 9\nALLOWED_CODE_SOURCE_HOSTS = [\"a.example\", \"B.example\"]\n",
        )
        .unwrap();
        let args = ServeArgs {
            listen: Some("127.0.0.1:1".into()),
            data_dir: None,
            config: Some(file.clone()),
        };
        let c = load(
            args,
            &[
                ("WORKMANAGER_LISTEN", "127.0.0.1:2"),
                ("WORKER_RETRY_ATTEMPTS", "5"),
            ],
        )
        .unwrap();
        assert_eq!(c.listen.port(), 1);
        assert_eq!(c.retry_attempts, 5);
        assert_eq!(c.code_fetch.timeout, Duration::from_secs(9));
        assert_eq!(c.code_fetch.allowed_hosts, vec!["a.example", "b.example"]);
        // The config file path itself may come from the environment.
        let c = load(
            ServeArgs::default(),
            &[("WORKMANAGER_CONFIG", file.to_str().unwrap())],
        )
        .unwrap();
        assert_eq!(c.listen.port(), 3);
    }

    #[test]
    fn original_aliases_are_read() {
        let c = load(ServeArgs::default(), &[("CodeFetchTimeoutSeconds", "12")]).unwrap();
        assert_eq!(c.code_fetch.timeout, Duration::from_secs(12));
    }

    #[test]
    fn booleans_accept_the_original_spellings() {
        for (v, want) in [
            ("yes", true),
            ("OFF", false),
            ("1", true),
            ("no", false),
            ("on", true),
        ] {
            let c = load(ServeArgs::default(), &[("WORKER_RECOVERY_ON_START", v)]).unwrap();
            assert_eq!(c.recovery_on_start, want, "{v}");
        }
    }

    #[test]
    fn invalid_values_name_setting_value_and_range() {
        let err = load(ServeArgs::default(), &[("WORKER_RETRY_ATTEMPTS", "99")]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("WORKER_RETRY_ATTEMPTS"), "{msg}");
        assert!(msg.contains("'99'"), "{msg}");
        assert!(msg.contains("0-20"), "{msg}");
        assert!(msg.contains("environment variable"), "{msg}");

        let err = load(
            ServeArgs::default(),
            &[("WORKER_RECOVERY_ON_START", "maybe")],
        )
        .unwrap_err();
        assert!(err.to_string().contains("true|false|1|0|yes|no|on|off"));
        let err = load(ServeArgs::default(), &[("RING_BYTES", "100000")]).unwrap_err();
        assert!(err.to_string().contains("power of two"));
        let err = load(ServeArgs::default(), &[("WORKMANAGER_LOG_FORMAT", "xml")]).unwrap_err();
        assert!(err.to_string().contains("text|json"));
        let err = load(ServeArgs::default(), &[("WORKMANAGER_API_TOKEN", "short")]).unwrap_err();
        assert!(
            !err.to_string().contains("short"),
            "a secret must not be echoed"
        );
    }

    #[test]
    fn every_setting_is_documented() {
        let doc = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md");
        let doc = std::fs::read_to_string(&doc).unwrap();
        for s in SETTINGS {
            assert!(
                doc.contains(&format!("| `{}`", s.name)),
                "{} is missing from docs/operations.md",
                s.name
            );
        }
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wm.toml");
        std::fs::write(&file, "WORKER_RETRY_ATEMPTS = 3\n").unwrap();
        let args = ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        };
        let err = load(args, &[]).unwrap_err();
        assert!(err.to_string().contains("WORKER_RETRY_ATEMPTS"));
    }
}
