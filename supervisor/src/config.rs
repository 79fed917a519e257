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
    /// Where the REST API listens: IP:PORT (port 0 picks a free one) or unix:/path; repeat
    /// the flag (or separate with commas) for several listeners.
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<String>,
    /// Where the gRPC API listens: IP:PORT or unix:/path, repeatable, or `off`.
    #[arg(long, value_name = "ADDR")]
    pub grpc_listen: Vec<String>,
    /// Serve a non-loopback TCP listener even without TLS and authentication (logs a warning
    /// at every start).
    #[arg(long)]
    pub allow_insecure_remote: bool,
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
    "WORKMANAGER_LISTEN" [] = "127.0.0.1:25001", "comma-separated IP:PORT or unix:/path", "where the REST API listens (flag --listen, repeatable); a non-loopback IP needs TLS and tokens";
    "WORKMANAGER_GRPC_LISTEN" [] = "127.0.0.1:25002", "off, or comma-separated IP:PORT or unix:/path", "where the gRPC API listens (flag --grpc-listen, repeatable); same rules, TLS and tokens as WORKMANAGER_LISTEN";
    "OTEL_EXPORTER_OTLP_ENDPOINT" [] = "", "empty (no export), or an http(s) URL such as http://127.0.0.1:4317", "where OpenTelemetry traces go, over OTLP (gRPC, or OTLP/HTTP with OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf); the other standard OTEL_* variables (OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_HEADERS, ...) apply too";
    "WORKMANAGER_ALLOW_INSECURE_REMOTE" [] = "false", "true|false|1|0|yes|no|on|off", "serve a non-loopback TCP listener without TLS or tokens (flag --allow-insecure-remote); a warning is logged at every start";
    "WORKMANAGER_UNIX_SOCKET_GROUP" [] = "", "empty (the daemon's group), a group name or a numeric gid", "group of unix:/path sockets (mode 0660)";
    "WORKMANAGER_UNIX_PEER_SCOPES" [] = "", "empty, or comma-separated UID=SCOPE[ SCOPE...]", "scopes of Unix socket clients by peer uid; empty = every client that can open the socket has every scope";
    "WORKMANAGER_API_TOKENS" [] = "", "empty, or comma-separated NAME:SHA256HEX:SCOPE[ SCOPE...] (see workmanager token create)", "named bearer tokens, stored as sha256 hashes, with their scopes";
    "WORKMANAGER_METRICS_PUBLIC" [] = "false", "true|false|1|0|yes|no|on|off", "serve /metrics without a token (otherwise it needs the read scope)";
    "WORKMANAGER_TLS_CERT_FILE" [] = "", "empty, or a PEM certificate chain file", "TLS certificate of the TCP listeners (reloaded on SIGHUP)";
    "WORKMANAGER_TLS_KEY_FILE" [] = "", "empty, or a PEM private key file", "TLS private key (reloaded on SIGHUP)";
    "WORKMANAGER_TLS_CLIENT_CA_FILE" [] = "", "empty, or a PEM file of CA certificates", "CAs whose client certificates (mTLS) are accepted; clients without one may still use a token";
    "WORKMANAGER_TLS_CLIENT_SCOPES" [] = "", "empty, or comma-separated COMMON_NAME=SCOPE[ SCOPE...]", "scopes of client certificates by subject common name";
    "WORKMANAGER_ALLOWED_HOSTS" [] = "", "empty, or comma-separated host names", "Host header names accepted besides IP literals, localhost, the machine's host name and the TLS certificate's DNS names (DNS-rebinding guard)";
    "WORKMANAGER_ALLOWED_ORIGINS" [] = "", "empty, or comma-separated origins such as https://ops.example.com", "browser origins allowed to call the API (and answered with CORS headers); empty = CORS off, every Origin refused";
    "WORKMANAGER_MAX_CONCURRENT_REQUESTS" [] = "256", "1-65536", "requests served at once; more wait";
    "WORKMANAGER_RATE_LIMIT_PER_SECOND" [] = "100", "0 (off) or 1-1000000", "requests per second per token, client certificate or peer uid; over it: 429 with Retry-After";
    "WORKMANAGER_RATE_LIMIT_BURST" [] = "200", "1-1000000", "requests a token may send at once before the rate applies";
    "WORKMANAGER_MAX_SSE_PER_TOKEN" [] = "16", "1-10000", "open SSE subscriptions per token, client certificate or peer uid";
    "WORKMANAGER_DATA_DIR" [] = "./data", "a directory path", "registry, code blobs and packages (flag --data-dir)";
    "WORKMANAGER_API_TOKEN" [] = "", "empty, or 16-4096 visible ASCII characters", "bearer token required on every endpoint except /health and /health/live";
    "WORKMANAGER_LOG_FORMAT" [] = "text", "text|json", "log line format";
    "PACKAGE_MAX_BYTES" ["WORKMANAGER_MAX_CODE_BYTES"] = "67108864", "1024-1073741824", "largest accepted package, bytes (also the body limit of package uploads)";
    "PACKAGE_TRUSTED_KEYS" [] = "", "empty, or comma-separated minisign ed25519 public keys (base64, or paths to .pub files)", "when set, every package needs a valid minisign signature by one of these keys";
    "WORKMANAGER_REQUEST_TIMEOUT_SECONDS" [] = "120", "1-3600", "longest an API request may take";
    "WORKMANAGER_SHUTDOWN_TIMEOUT_SECONDS" [] = "10", "1-600", "how long shutdown waits for in-flight work";
    "WORKER_RETRY_ATTEMPTS" [] = "3", "0-20", "retries of a failed message before it is dead-lettered";
    "WORKER_RETRY_BASE_DELAY_MS" [] = "200", "10-60000", "retry delay base; delay = base * 2^attempt";
    "WORKER_RECOVERY_ON_START" [] = "true", "true|false|1|0|yes|no|on|off", "restart persisted running workers at start";
    "WORKER_RECOVERY_LEASE_TTL_SECONDS" [] = "300", "10-86400", "cluster registry: lease of the daemon that runs the start-up recovery (renewed while it runs); a finished recovery keeps daemons starting within this time from recovering again";
    "WORKER_RECOVERY_ACQUIRE_TIMEOUT_SECONDS" [] = "30", "1-600", "cluster registry: how long a starting daemon waits for another daemon's recovery to finish before it skips recovery and carries on";
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
    "RING_LANES" [] = "16", "0-256", "ring lanes per host: one per worker thread, which then reads its calls and writes its results itself; 0 sends every call through the host's frame loop";
    "RING_LANE_BYTES" [] = "65536", "a power of two, 4096-16777216", "size of each direction of a lane; calls and results over half of it take the control ring";
    "TIMEOUT_RECLAIM_GRACE_SECONDS" [] = "5", "0-3600", "how long a timed-out call may keep running before its host is killed and respawned";
    "HOST_RESPAWN_BACKOFF_MS" [] = "100", "1-60000", "delay before the second respawn of a series (the first death respawns at once); doubles per further consecutive death no call is charged with, up to 30 s";
    "HOST_LINK_READER" [] = "thread", "thread|runtime", "who reads each host's replies: thread: a reader thread per host (spins briefly, then sleeps on the ring's futex; the second vCPU shares the work: 1.35-1.54x the drained rate with batches here); runtime: a task on the async runtime woken by the host's doorbell eventfd (one thread wake-up less per call, less CPU per single event, all ring reading on the runtime's threads)";
    "HOST_STANDBY" [] = "1", "1|0 (also true|false|yes|no|on|off)", "keep one pre-spawned, sandboxed, idle host per engine that a respawn adopts (a .NET one has CoreCLR started); 0 turns it off";
    "HOST_RUNNER_PATH" [] = "", "a file path; empty = next to the workmanager binary", "the host-runner binary";
    "HOST_UID" [] = "65534", "1-4294967294, not the daemon's own uid", "uid the host processes run as when the daemon runs as root (hosts of a non-root daemon keep its uid, and /v1/hosts shows the layer missing)";
    "HOST_GID" [] = "65534", "1-4294967294", "gid the host processes run as when the daemon runs as root";
    "SANDBOX_LANDLOCK" [] = "on", "on|off", "apply Landlock to hosts where the kernel has it; off leaves the other layers to contain them (to prove they do)";
    "SANDBOX_REQUIRE" [] = "", "comma-separated layers from seccomp, landlock, pidns, netns, uid; empty = none", "sandbox layers without which no host may run: the daemon refuses to start when one is unavailable, and stops any host that comes up without it";
    "HOST_RLIMIT_AS_BYTES" [] = "0", "0 (no limit) or 67108864-1099511627776", "address-space limit (RLIMIT_AS) of each native host process (.NET hosts are bounded by HOST_DOTNET_GC_HEAP_HARD_LIMIT_BYTES instead)";
    "HOST_DOTNET_GC_HEAP_HARD_LIMIT_BYTES" [] = "0", "0 (no limit) or 16777216-1099511627776", "GC heap hard limit (GCHeapHardLimit) of each .NET host process, its memory bound in place of RLIMIT_AS; an allocation over it throws OutOfMemoryException in the worker";
    "BUS_DURABILITY" [] = "fsync", "fsync|os", "fsync: a publish is acknowledged after an fsync'd commit (survives power loss); os: after the write reaches the OS (survives a daemon crash or kill -9, not a power cut; ~4x the publish rate)";
    "RUNTIME_WORKER_THREADS" [] = "0", "0 (one less than the CPUs, at least 1) or 1-1024", "threads of the daemon's async runtime (HTTP, dispatcher, SSE); the bus writer, host links and hosts have threads of their own, and each extra idle runtime thread costs a wake-up of a sibling per wake-up from outside (docs/benchmarks.md, the event path's fourth pass)";
    "BUS_INLINE_COMMIT" [] = "os", "os|always|off", "embedded bus only: a lone publish, settle or completion (the writer idle, nothing queued) is committed on the calling thread instead of the bus writer's, saving two thread wake-ups; os: only with BUS_DURABILITY=os (an fsync would stall the async runtime); always: with fsync too; off: never";
    "BUS_WAL_PREALLOCATE" [] = "1", "1|0 (also true|false|yes|no|on|off)", "embedded bus only: at start, write the bus's WAL file with zeros up to what one checkpoint cycle uses (~33 MiB), so that each commit's fsync overwrites blocks the file has instead of also writing its growth (one fsync'd commit ~1.5x faster here until the first checkpoint); 0 lets the file grow as SQLite writes it";
    "BUS_JOIN_WINDOW_US" [] = "300", "0-10000", "embedded bus with BUS_DURABILITY=fsync only: how long a group commit whose events went to their workers before its fsync keeps its transaction open for their completions (and whatever else arrives), committing as soon as they are all in; a quick plugin's event then costs one fsync'd commit instead of two; 0 commits at once";
    "BUS_COMMIT_DELAY_US" [] = "100", "0-10000", "embedded bus only: how long a group commit waits to gather more publishes and completions when the previous commit carried several (a lone publish never waits); fewer, larger commits pace publishers to what the workers drain under load; 0 commits at once";
    "TOPIC_MAX_BACKLOG_EVENTS" [] = "100000", "0 (no limit) or 1-100000000", "events one topic may hold waiting for its workers; more are dead-lettered with reason overflow";
    "TOPIC_RETENTION_EVENTS" [] = "100000", "0 (no replay window) or 1-100000000", "replay window: events per topic kept after their outcome, for SSE resume (Last-Event-ID, ?after=, ?from=earliest)";
    "TOPIC_RETENTION_SECONDS" [] = "3600", "0 (no replay window) or 1-31536000", "replay window: how long an event is kept after it was published, once it reached its outcome";
    "DEAD_LETTER_MAX_EVENTS" [] = "100000", "1-100000000", "dead letters one <topic>-dead topic keeps for a consumer; beyond it the oldest are evicted and counted";
    "WORKER_HEARTBEAT_SECONDS" [] = "30", "0 (off) or 1-3600", "how often each started worker's heartbeat is published on workmanager.infra.worker";
    "VIRTUFIN_API_GATEWAY_URL" [] = "", "an http(s) base URL; empty = none", "where plugins' gateway calls for services other than pubsub, state and workmanager are forwarded";
    "STATE_MAX_KEYS" [] = "10000", "1-100000000", "keys one worker may hold in the gateway's state service; a Set of a new key beyond it is refused";
    "STATE_MAX_VALUE_BYTES" [] = "1048576", "1-1048576", "largest value of one state key; a larger Set is refused";
    "WORKER_LOG_LINES_PER_SECOND" [] = "200", "1-1000000", "log lines one worker may send per second (also the burst); more are dropped and counted";
    "WORKER_GATEWAY_CALLS_PER_SECOND" [] = "1000", "1-1000000", "gateway calls one worker may make per second (also the burst); more are answered with an error and counted";
    "HOST_GATEWAY_CALLS_IN_FLIGHT" [] = "64", "1-4096", "gateway calls of one host served at once; beyond it the daemon stops reading that host's frames until one finishes";
    "HOST_STDERR_LINE_MAX_BYTES" [] = "4096", "256-1048576", "longest host stderr line logged; longer lines are cut and the rest skipped";
    "HOST_STDERR_LINES_PER_SECOND" [] = "200", "1-1000000", "host stderr lines logged per host per second; more are dropped and counted";
    "PYTHON_BLOCKED_MODULES" [] = "subprocess,os,socket,requests,shutil,multiprocessing,pty,pathlib,urllib,http,ftplib,smtplib,poplib,imaplib,telnetlib,ssl,select,selectors,signal,mmap,fcntl,resource,posix", "comma-separated module names (a name covers its submodules); empty = none", "modules text/x-python workers may not import: checked with Python's ast at create (422 naming module and line) and by an import hook at run time";
    "PYTHON_DEFAULT_INDEX_URL" [] = "", "a package index URL (PEP 503 simple API, http(s) or file:); empty = pip's default index; none = no index (PYTHON_FIND_LINKS only)", "where the dependencies of application/x-python wheels (Requires-Dist) are installed from, by the daemon with pip";
    "PYTHON_FIND_LINKS" [] = "", "comma-separated folders or URLs of wheels; empty = none", "extra places pip looks for wheel dependencies (pip --find-links)";
    "PYTHON_ALLOWED_PACKAGES" [] = "", "comma-separated project names; empty = any", "the only projects a wheel's dependencies (direct and transitive) may be; anything else refuses the create with 422";
    "PYTHON_DEPENDENCY_INSTALL_TIMEOUT_SECONDS" [] = "60", "1-3600", "how long installing one wheel's dependencies may take; longer refuses the create with 422";
    "BUS_BACKEND" [] = "embedded", "embedded|jetstream", "where the bus lives: embedded (SQLite in the data directory, one machine) or jetstream (NATS JetStream at NATS_URL, shared by every daemon of a cluster; docs/cluster.md)";
    "REGISTRY_BACKEND" [] = "embedded", "embedded|jetstream (jetstream needs BUS_BACKEND=jetstream)", "where the registry, code store and worker state live: embedded (SQLite in the data directory) or jetstream (KV buckets and an object store on NATS, shared by every daemon of a cluster; docs/cluster.md)";
    "NATS_URL" [] = "nats://127.0.0.1:4222", "comma-separated nats:// or tls:// URLs of servers of one NATS cluster", "the NATS servers the jetstream backend connects to (any one is enough; the client fails over between them)";
    "NATS_CREDS_FILE" [] = "", "a file path; empty = none", "a NATS .creds file (user JWT and nkey seed) to authenticate with";
    "NATS_NKEY_SEED_FILE" [] = "", "a file path; empty = none", "a file holding an nkey seed (SU...) to authenticate with";
    "NATS_USER" [] = "", "a user name; empty = none", "user name for NATS user/password authentication (with NATS_PASSWORD)";
    "NATS_PASSWORD" [] = "", "a password; empty = none", "password for NATS user/password authentication; never logged";
    "NATS_TOKEN" [] = "", "a token; empty = none", "token for NATS token authentication; never logged";
    "NATS_TLS_REQUIRED" [] = "false", "true|false|1|0|yes|no|on|off", "refuse to talk to NATS without TLS (also implied by tls:// URLs and by the TLS files below)";
    "NATS_TLS_CA_FILE" [] = "", "a PEM file path; empty = the system roots", "CA certificates that sign the NATS servers' certificates";
    "NATS_TLS_CERT_FILE" [] = "", "a PEM file path; empty = none", "client certificate for NATS mutual TLS (with NATS_TLS_KEY_FILE)";
    "NATS_TLS_KEY_FILE" [] = "", "a PEM file path; empty = none", "private key of NATS_TLS_CERT_FILE";
    "NATS_STREAM_PREFIX" [] = "WORKMANAGER", "1-32 of A-Z, 0-9, '_'", "names the JetStream objects of one deployment: stream <P>_EVENTS, subjects <p>.t.<topic>, KV bucket <P>_ATTEMPTS; two deployments on one NATS need different prefixes";
    "NATS_STREAM_REPLICAS" [] = "1", "1-5", "replicas of the events stream and KV buckets (3 in a three-server NATS cluster survives the loss of one server)";
    "NATS_ACK_WAIT_SECONDS" [] = "30", "2-3600", "how long JetStream waits for a daemon's answer before it hands a delivery to another daemon; daemons send AckProgress every third of it during long calls, so this is how long a dead daemon's in-flight events wait";
    "NATS_DUPLICATE_WINDOW_SECONDS" [] = "120", "1-86400", "how long JetStream remembers a Nats-Msg-Id (the CloudEvent's source and id) to drop a duplicate publish";
    "NATS_CONNECT_TIMEOUT_SECONDS" [] = "10", "1-600", "how long start-up waits for the first connection to NATS before it fails";
    "NATS_LOCK_LEASE_SECONDS" [] = "15", "3-3600", "lease of a group lock across daemons: the holder renews it every third of this; the lease of a daemon that died is free after this";
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
                "WORKMANAGER_LISTEN" => Some(args.listen.join(","))
                    .filter(|v| !v.is_empty())
                    .map(|v| (v, Origin::Flag("--listen"))),
                "WORKMANAGER_GRPC_LISTEN" => Some(args.grpc_listen.join(","))
                    .filter(|v| !v.is_empty())
                    .map(|v| (v, Origin::Flag("--grpc-listen"))),
                "WORKMANAGER_ALLOW_INSECURE_REMOTE" => args
                    .allow_insecure_remote
                    .then(|| ("true".to_owned(), Origin::Flag("--allow-insecure-remote"))),
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

    pub(crate) fn get(&self, name: &'static str) -> (&str, &Origin) {
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

/// What hosts may send the daemon (issue 10; docs/security.md, "Host input limits").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInputSettings {
    /// `STATE_MAX_KEYS`.
    pub state_max_keys: u64,
    /// `STATE_MAX_VALUE_BYTES`.
    pub state_max_value_bytes: u64,
    /// `WORKER_LOG_LINES_PER_SECOND`.
    pub log_lines_per_second: u32,
    /// `WORKER_GATEWAY_CALLS_PER_SECOND`.
    pub gateway_calls_per_second: u32,
    /// `HOST_GATEWAY_CALLS_IN_FLIGHT`.
    pub gateway_calls_in_flight: u32,
    /// `HOST_STDERR_LINE_MAX_BYTES`.
    pub stderr_line_max_bytes: u32,
    /// `HOST_STDERR_LINES_PER_SECOND`.
    pub stderr_lines_per_second: u32,
}

/// One place the REST API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket path (`unix:/path`).
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl ListenAddr {
    /// Parses `IP:PORT` or `unix:/path`.
    pub fn parse(s: &str) -> Option<ListenAddr> {
        let s = s.trim();
        if let Some(path) = s.strip_prefix("unix:") {
            return (!path.is_empty()).then(|| ListenAddr::Unix(PathBuf::from(path)));
        }
        s.parse().ok().map(ListenAddr::Tcp)
    }
}

/// TLS files of the TCP listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// PEM CA certificates for client certificates (mTLS), if any.
    pub client_ca_file: Option<PathBuf>,
}

/// Who may call the API, from where, how often (docs/security.md, "The control plane").
#[derive(Debug, Clone, Default)]
pub struct SecuritySettings {
    /// Named tokens (the legacy `WORKMANAGER_API_TOKEN` is added as `api-token`, admin).
    pub tokens: Vec<crate::api::auth::TokenEntry>,
    /// Scopes of Unix socket peers by uid (empty: every peer has every scope).
    pub unix_peer_scopes: Vec<(u32, Vec<crate::api::auth::Scope>)>,
    /// Group of Unix sockets (`None`: the daemon's).
    pub unix_socket_group: Option<u32>,
    /// TLS for the TCP listeners.
    pub tls: Option<TlsSettings>,
    /// Scopes of client certificates by subject common name.
    pub client_cert_scopes: Vec<(String, Vec<crate::api::auth::Scope>)>,
    /// Serve `/metrics` without a token.
    pub metrics_public: bool,
    /// Serve non-loopback TCP without TLS or tokens.
    pub allow_insecure_remote: bool,
    /// Extra accepted `Host` names (lower-case).
    pub allowed_hosts: Vec<String>,
    /// Accepted `Origin`s (and CORS origins).
    pub allowed_origins: Vec<String>,
    /// Requests served at once.
    pub max_concurrent_requests: usize,
    /// Requests per second per principal (0: off).
    pub rate_per_second: u32,
    /// Burst per principal.
    pub rate_burst: u32,
    /// SSE subscriptions per principal.
    pub max_sse_per_principal: usize,
    /// Trusted minisign public keys; empty = signatures not required.
    pub trusted_keys: Vec<minisign_verify::PublicKey>,
}

impl SecuritySettings {
    /// Whether callers must authenticate (a token or a client CA is configured).
    pub fn auth_enabled(&self) -> bool {
        !self.tokens.is_empty()
            || self
                .tls
                .as_ref()
                .is_some_and(|t| t.client_ca_file.is_some())
    }
}

/// Stage two: the validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the REST API listens (at least one).
    pub listen: Vec<ListenAddr>,
    /// Where the gRPC API listens (empty: `off`).
    pub grpc_listen: Vec<ListenAddr>,
    /// Where traces are exported (`OTEL_EXPORTER_OTLP_ENDPOINT`), if anywhere.
    pub otlp_endpoint: Option<String>,
    /// Tokens, TLS, browser guards, limits.
    pub security: SecuritySettings,
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
    /// Ring lanes per host (one per worker thread).
    pub ring_lanes: u32,
    /// Bytes of each direction of a lane.
    pub ring_lane_bytes: u64,
    /// How long a timed-out call may keep running before its host is reclaimed.
    pub timeout_reclaim_grace: Duration,
    /// First respawn delay of a crashed host.
    pub host_respawn_backoff: Duration,
    /// `HOST_STANDBY`: keep a warm idle host per engine for respawns.
    pub host_standby: bool,
    /// Who reads each host's replies (`HOST_LINK_READER`).
    pub host_link_reader: crate::pool::LinkReader,
    /// The host-runner binary (`None`: next to the running `workmanager`).
    pub host_runner_path: Option<PathBuf>,
    /// RLIMIT_AS of each native host, if any.
    pub host_rlimit_as: Option<u64>,
    /// GCHeapHardLimit of each .NET host, if any.
    pub host_dotnet_gc_heap_hard_limit: Option<u64>,
    /// The uid and gid hosts switch to when the daemon runs as root.
    pub host_ids: (u32, u32),
    /// Apply Landlock to hosts (`SANDBOX_LANDLOCK`).
    pub sandbox_landlock: bool,
    /// Layers no host may run without (`SANDBOX_REQUIRE`).
    pub sandbox_require: Vec<crate::pool::layers::Layer>,
    /// Base URL of the external API gateway for forwarded gateway calls.
    pub gateway_url: Option<String>,
    /// How hard a publish is made durable before it is acknowledged (`true`: fsync).
    pub bus_fsync: bool,
    /// How long a busy group commit gathers more writes (`BUS_COMMIT_DELAY_US`).
    pub bus_commit_delay: Duration,
    /// How long a group commit waits for the completions of events it handed out early
    /// (`BUS_JOIN_WINDOW_US`).
    pub bus_join_window: Duration,
    /// `BUS_WAL_PREALLOCATE`: the bus's WAL written to one checkpoint cycle's size at start.
    pub bus_wal_preallocate: bool,
    /// When a lone write is committed on the calling thread (`BUS_INLINE_COMMIT`).
    pub bus_inline_commit: crate::bus::InlineCommit,
    /// Threads of the async runtime (`RUNTIME_WORKER_THREADS`; 0: one less than the CPUs).
    pub runtime_worker_threads: usize,
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
    /// Limits on what hosts may send.
    pub host_input: HostInputSettings,
    /// `PYTHON_BLOCKED_MODULES`: the Python engine's import policy.
    pub python_blocked_modules: Vec<String>,
    /// How wheel dependencies are installed (`PYTHON_DEFAULT_INDEX_URL` and friends).
    pub python_deps: crate::python_deps::DepsSettings,
    /// Bus and registry backends, NATS connection (docs/cluster.md).
    pub cluster: crate::cluster::ClusterSettings,
}

/// The items of a comma-separated setting, trimmed, empty ones skipped.
pub(crate) fn comma_items(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// A comma-separated list of dotted module names (`os`, `asyncio.subprocess`).
fn python_modules(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for m in comma_items(text) {
        let ok = m.split('.').all(|part| {
            let mut c = part.chars();
            c.next()
                .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
                && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        });
        if !ok {
            return Err(format!(
                "comma-separated dotted module names such as os,subprocess; {m:?} is not one"
            ));
        }
        if !out.iter().any(|o| o == m) {
            out.push(m.to_string());
        }
    }
    Ok(out)
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
    /// Threads for the async runtime: `RUNTIME_WORKER_THREADS`, or one less than the CPUs
    /// (at least 1), leaving a CPU to the bus writer, the host links and the hosts. Every
    /// idle runtime thread costs a sibling wake-up per outside wake-up (tokio keeps a
    /// searcher), which a per-event path of ~10 hand-offs feels.
    pub fn worker_threads(&self) -> usize {
        match self.runtime_worker_threads {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| n.get().saturating_sub(1))
                .max(1),
            n => n,
        }
    }

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

        let listen_list = |name: &'static str, hint: &str| {
            comma_items(raw.get(name).0)
                .map(ListenAddr::parse)
                .collect::<Option<Vec<_>>>()
                .filter(|l| !l.is_empty())
                .ok_or_else(|| invalid(name, hint))
        };
        let listen = listen_list(
            "WORKMANAGER_LISTEN",
            "IP:PORT such as 127.0.0.1:25001 or [::1]:25001, or unix:/path; comma-separated for several",
        )?;
        let grpc_listen = if raw
            .get("WORKMANAGER_GRPC_LISTEN")
            .0
            .trim()
            .eq_ignore_ascii_case("off")
        {
            Vec::new()
        } else {
            listen_list(
                "WORKMANAGER_GRPC_LISTEN",
                "off, or IP:PORT such as 127.0.0.1:25002, or unix:/path; comma-separated for several",
            )?
        };
        let otlp_endpoint = Some(raw.get("OTEL_EXPORTER_OTLP_ENDPOINT").0.trim().to_owned())
            .filter(|e| !e.is_empty());
        if let Some(e) = &otlp_endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(invalid(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                range_of("OTEL_EXPORTER_OTLP_ENDPOINT"),
            ));
        }
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
        let max_code_bytes = int("PACKAGE_MAX_BYTES", 1024, 1 << 30)?;
        let security = security_settings(raw, api_token.as_deref(), &listen, &invalid)?;
        if let Some(remote) = grpc_listen.iter().find_map(|l| match l {
            ListenAddr::Tcp(a) if !a.ip().is_loopback() => Some(a),
            _ => None,
        }) && !((security.tls.is_some() && security.auth_enabled())
            || security.allow_insecure_remote)
        {
            return Err(invalid(
                "WORKMANAGER_GRPC_LISTEN",
                &format!(
                    "a loopback address, unix:/path or off: refusing to serve gRPC on {remote} without TLS and authentication; set WORKMANAGER_TLS_CERT_FILE, WORKMANAGER_TLS_KEY_FILE and WORKMANAGER_API_TOKENS (docs/security.md), or pass --allow-insecure-remote to accept the risk"
                ),
            ));
        }
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
        let ring_lane_bytes = int("RING_LANE_BYTES", 4096, 16 << 20)?;
        if !ring_lane_bytes.is_power_of_two() {
            return Err(invalid("RING_LANE_BYTES", range_of("RING_LANE_BYTES")));
        }
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
        let host_dotnet_gc_heap_hard_limit =
            match int("HOST_DOTNET_GC_HEAP_HARD_LIMIT_BYTES", 0, 1 << 40)? {
                0 => None,
                n if n < 16 << 20 => {
                    return Err(invalid(
                        "HOST_DOTNET_GC_HEAP_HARD_LIMIT_BYTES",
                        range_of("HOST_DOTNET_GC_HEAP_HARD_LIMIT_BYTES"),
                    ));
                }
                n => Some(n),
            };
        let host_runner_path = Some(raw.get("HOST_RUNNER_PATH").0.trim().to_string())
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        let host_uid = u32_in("HOST_UID", 1, u32::MAX - 1)?;
        let host_gid = u32_in("HOST_GID", 1, u32::MAX - 1)?;
        // SAFETY: geteuid has no preconditions.
        if host_uid == unsafe { libc::geteuid() } {
            return Err(invalid(
                "HOST_UID",
                "an unprivileged uid other than the daemon's own (hosts must not be able to signal or read the daemon)",
            ));
        }
        let sandbox_landlock = match raw
            .get("SANDBOX_LANDLOCK")
            .0
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "on" | "true" | "1" | "yes" => true,
            "off" | "false" | "0" | "no" => false,
            _ => return Err(invalid("SANDBOX_LANDLOCK", "on|off")),
        };
        let sandbox_require = crate::pool::layers::parse_required(raw.get("SANDBOX_REQUIRE").0)
            .map_err(|e| invalid("SANDBOX_REQUIRE", &e))?;
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
            grpc_listen,
            otlp_endpoint,
            security,
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
            ring_lanes: u32_in("RING_LANES", 0, 256)?,
            ring_lane_bytes,
            timeout_reclaim_grace: secs("TIMEOUT_RECLAIM_GRACE_SECONDS", 0, 3600)?,
            host_respawn_backoff: millis("HOST_RESPAWN_BACKOFF_MS", 1, 60_000)?,
            host_standby: boolean("HOST_STANDBY")?,
            host_link_reader: match raw
                .get("HOST_LINK_READER")
                .0
                .trim()
                .to_ascii_lowercase()
                .as_str()
            {
                "thread" => crate::pool::LinkReader::Thread,
                "runtime" => crate::pool::LinkReader::Runtime,
                _ => return Err(invalid("HOST_LINK_READER", "thread|runtime")),
            },
            host_runner_path,
            host_rlimit_as,
            host_dotnet_gc_heap_hard_limit,
            host_ids: (host_uid, host_gid),
            sandbox_landlock,
            sandbox_require,
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
            bus_commit_delay: Duration::from_micros(int("BUS_COMMIT_DELAY_US", 0, 10_000)?),
            bus_join_window: Duration::from_micros(int("BUS_JOIN_WINDOW_US", 0, 10_000)?),
            bus_wal_preallocate: boolean("BUS_WAL_PREALLOCATE")?,
            bus_inline_commit: match raw
                .get("BUS_INLINE_COMMIT")
                .0
                .trim()
                .to_ascii_lowercase()
                .as_str()
            {
                "os" => crate::bus::InlineCommit::Os,
                "always" => crate::bus::InlineCommit::Always,
                "off" => crate::bus::InlineCommit::Off,
                _ => return Err(invalid("BUS_INLINE_COMMIT", "os|always|off")),
            },
            runtime_worker_threads: int("RUNTIME_WORKER_THREADS", 0, 1024)? as usize,
            topic_max_backlog: int("TOPIC_MAX_BACKLOG_EVENTS", 0, 100_000_000)?,
            topic_retention_events: int("TOPIC_RETENTION_EVENTS", 0, 100_000_000)?,
            topic_retention: secs("TOPIC_RETENTION_SECONDS", 0, 31_536_000)?,
            dead_letter_max_events: int("DEAD_LETTER_MAX_EVENTS", 1, 100_000_000)?,
            heartbeat: Some(secs("WORKER_HEARTBEAT_SECONDS", 0, 3600)?).filter(|d| !d.is_zero()),
            host_input: HostInputSettings {
                state_max_keys: int("STATE_MAX_KEYS", 1, 100_000_000)?,
                state_max_value_bytes: int("STATE_MAX_VALUE_BYTES", 1, 1 << 20)?,
                log_lines_per_second: u32_in("WORKER_LOG_LINES_PER_SECOND", 1, 1_000_000)?,
                gateway_calls_per_second: u32_in("WORKER_GATEWAY_CALLS_PER_SECOND", 1, 1_000_000)?,
                gateway_calls_in_flight: u32_in("HOST_GATEWAY_CALLS_IN_FLIGHT", 1, 4096)?,
                stderr_line_max_bytes: u32_in("HOST_STDERR_LINE_MAX_BYTES", 256, 1 << 20)?,
                stderr_lines_per_second: u32_in("HOST_STDERR_LINES_PER_SECOND", 1, 1_000_000)?,
            },
            python_blocked_modules: python_modules(raw.get("PYTHON_BLOCKED_MODULES").0)
                .map_err(|e| invalid("PYTHON_BLOCKED_MODULES", &e))?,
            python_deps: crate::python_deps::DepsSettings {
                index_url: raw.get("PYTHON_DEFAULT_INDEX_URL").0.trim().to_string(),
                find_links: comma_items(raw.get("PYTHON_FIND_LINKS").0)
                    .map(String::from)
                    .collect(),
                allowed: comma_items(raw.get("PYTHON_ALLOWED_PACKAGES").0)
                    .map(wm_shared::package::python_wheel::normalize_name)
                    .collect(),
                timeout: secs("PYTHON_DEPENDENCY_INSTALL_TIMEOUT_SECONDS", 1, 3600)?,
            },
            cluster: crate::cluster::ClusterSettings::from_raw(raw)?,
        })
    }

    /// The TCP listeners that are not loopback addresses.
    pub fn remote_listeners(&self) -> Vec<SocketAddr> {
        self.listen
            .iter()
            .filter_map(|l| match l {
                ListenAddr::Tcp(a) if !a.ip().is_loopback() => Some(*a),
                _ => None,
            })
            .collect()
    }

    /// Flags, then the process environment, then the file, then defaults; validated.
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        let env = |name: &str| std::env::var(name).ok();
        Config::from_raw(&RawConfig::gather(args, &env)?)
    }

    /// Defaults only (plus the given data directory): what tests start from.
    pub fn defaults_with_data_dir(data_dir: PathBuf) -> Config {
        let args = ServeArgs {
            listen: vec!["127.0.0.1:0".to_owned()],
            grpc_listen: vec!["127.0.0.1:0".to_owned()],
            data_dir: Some(data_dir),
            ..ServeArgs::default()
        };
        let none = |_: &str| None;
        // The built-in defaults are valid by construction; the test below checks it.
        match RawConfig::gather(&args, &none).and_then(|raw| Config::from_raw(&raw)) {
            Ok(c) => c,
            Err(e) => unreachable!("built-in defaults are invalid: {e}"),
        }
    }
}

/// The security settings; refuses a non-loopback TCP listener without TLS and tokens unless
/// `--allow-insecure-remote`.
fn security_settings(
    raw: &RawConfig,
    legacy_token: Option<&str>,
    listen: &[ListenAddr],
    invalid: &dyn Fn(&'static str, &str) -> ConfigError,
) -> Result<SecuritySettings, ConfigError> {
    use crate::api::auth;
    let text = |name: &'static str| raw.get(name).0.trim().to_owned();
    let with_reason = |name: &'static str, reason: String| {
        let (v, o) = raw.get(name);
        ConfigError::Invalid {
            name,
            value: v.to_owned(),
            origin: o.clone(),
            range: reason,
        }
    };
    let boolean = |name: &'static str| {
        parse_bool(raw.get(name).0).ok_or_else(|| invalid(name, "true|false|1|0|yes|no|on|off"))
    };
    let int = |name: &'static str, lo: u64, hi: u64| -> Result<u64, ConfigError> {
        match raw.get(name).0.trim().parse::<u64>() {
            Ok(n) if (lo..=hi).contains(&n) => Ok(n),
            _ => Err(invalid(
                name,
                SETTINGS
                    .iter()
                    .find(|s| s.name == name)
                    .map(|s| s.range)
                    .unwrap_or(""),
            )),
        }
    };
    let mut tokens = auth::parse_tokens(&text("WORKMANAGER_API_TOKENS")).map_err(|e| {
        // Never echo the list: it holds hashes an operator may consider secret.
        let (_, origin) = raw.get("WORKMANAGER_API_TOKENS");
        ConfigError::Invalid {
            name: "WORKMANAGER_API_TOKENS",
            value: "<hidden>".into(),
            origin: origin.clone(),
            range: format!("comma-separated NAME:SHA256HEX:SCOPE[ SCOPE...] ({e})"),
        }
    })?;
    if let Some(t) = legacy_token {
        tokens.push(auth::TokenEntry {
            name: "api-token".into(),
            sha256: auth::hash_token(t),
            scopes: vec![auth::Scope::Admin],
        });
    }
    let unix_peer_scopes = auth::parse_scope_map(&text("WORKMANAGER_UNIX_PEER_SCOPES"))
        .and_then(|m| {
            m.into_iter()
                .map(|(k, v)| {
                    k.parse::<u32>()
                        .map(|uid| (uid, v))
                        .map_err(|_| format!("'{k}' is not a numeric uid"))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|e| {
            with_reason(
                "WORKMANAGER_UNIX_PEER_SCOPES",
                format!("comma-separated UID=SCOPE[ SCOPE...] ({e})"),
            )
        })?;
    let client_cert_scopes = auth::parse_scope_map(&text("WORKMANAGER_TLS_CLIENT_SCOPES"))
        .map_err(|e| {
            with_reason(
                "WORKMANAGER_TLS_CLIENT_SCOPES",
                format!("comma-separated COMMON_NAME=SCOPE[ SCOPE...] ({e})"),
            )
        })?;
    let group = text("WORKMANAGER_UNIX_SOCKET_GROUP");
    let unix_socket_group = if group.is_empty() {
        None
    } else {
        Some(resolve_group(&group).ok_or_else(|| {
            with_reason(
                "WORKMANAGER_UNIX_SOCKET_GROUP",
                "a group name from /etc/group or a numeric gid".into(),
            )
        })?)
    };
    let path =
        |name: &'static str| Some(PathBuf::from(text(name))).filter(|p| !p.as_os_str().is_empty());
    let tls = match (
        path("WORKMANAGER_TLS_CERT_FILE"),
        path("WORKMANAGER_TLS_KEY_FILE"),
    ) {
        (Some(cert_file), Some(key_file)) => Some(TlsSettings {
            cert_file,
            key_file,
            client_ca_file: path("WORKMANAGER_TLS_CLIENT_CA_FILE"),
        }),
        (None, None) => {
            if path("WORKMANAGER_TLS_CLIENT_CA_FILE").is_some() {
                return Err(with_reason(
                    "WORKMANAGER_TLS_CLIENT_CA_FILE",
                    "client certificates need TLS: set WORKMANAGER_TLS_CERT_FILE and WORKMANAGER_TLS_KEY_FILE too".into(),
                ));
            }
            None
        }
        (Some(_), None) => {
            return Err(with_reason(
                "WORKMANAGER_TLS_KEY_FILE",
                "a PEM private key file (WORKMANAGER_TLS_CERT_FILE is set)".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(with_reason(
                "WORKMANAGER_TLS_CERT_FILE",
                "a PEM certificate file (WORKMANAGER_TLS_KEY_FILE is set)".into(),
            ));
        }
    };
    let list = |name: &'static str| {
        raw.get(name)
            .0
            .split(',')
            .map(|h| h.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect::<Vec<_>>()
    };
    let allowed_origins = list("WORKMANAGER_ALLOWED_ORIGINS");
    if allowed_origins
        .iter()
        .any(|o| !(o.starts_with("http://") || o.starts_with("https://")))
    {
        return Err(invalid(
            "WORKMANAGER_ALLOWED_ORIGINS",
            "comma-separated origins such as https://ops.example.com",
        ));
    }
    let trusted_keys = comma_items(raw.get("PACKAGE_TRUSTED_KEYS").0)
        .map(crate::signature::load_public_key)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| with_reason("PACKAGE_TRUSTED_KEYS", e))?;
    let s = SecuritySettings {
        tokens,
        unix_peer_scopes,
        unix_socket_group,
        tls,
        client_cert_scopes,
        metrics_public: boolean("WORKMANAGER_METRICS_PUBLIC")?,
        allow_insecure_remote: boolean("WORKMANAGER_ALLOW_INSECURE_REMOTE")?,
        allowed_hosts: list("WORKMANAGER_ALLOWED_HOSTS"),
        allowed_origins,
        max_concurrent_requests: usize::try_from(int(
            "WORKMANAGER_MAX_CONCURRENT_REQUESTS",
            1,
            65_536,
        )?)
        .unwrap_or(256),
        rate_per_second: u32::try_from(int("WORKMANAGER_RATE_LIMIT_PER_SECOND", 0, 1_000_000)?)
            .unwrap_or(100),
        rate_burst: u32::try_from(int("WORKMANAGER_RATE_LIMIT_BURST", 1, 1_000_000)?)
            .unwrap_or(200),
        max_sse_per_principal: usize::try_from(int("WORKMANAGER_MAX_SSE_PER_TOKEN", 1, 10_000)?)
            .unwrap_or(16),
        trusted_keys,
    };
    let remote: Vec<String> = listen
        .iter()
        .filter_map(|l| match l {
            ListenAddr::Tcp(a) if !a.ip().is_loopback() => Some(a.to_string()),
            _ => None,
        })
        .collect();
    let secure = s.tls.is_some() && s.auth_enabled();
    if !(remote.is_empty() || secure || s.allow_insecure_remote) {
        let (v, o) = raw.get("WORKMANAGER_LISTEN");
        return Err(ConfigError::Invalid {
            name: "WORKMANAGER_LISTEN",
            value: v.to_owned(),
            origin: o.clone(),
            range: format!(
                "a loopback address or unix:/path: refusing to serve {} without TLS and authentication; set WORKMANAGER_TLS_CERT_FILE, WORKMANAGER_TLS_KEY_FILE and WORKMANAGER_API_TOKENS (docs/security.md), or put a TLS reverse proxy in front of a loopback listener, or pass --allow-insecure-remote to accept the risk",
                remote.join(", ")
            ),
        });
    }
    Ok(s)
}

/// A group name (from /etc/group) or a numeric gid.
fn resolve_group(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Some(gid);
    }
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|line| {
        let mut f = line.split(':');
        (f.next() == Some(name))
            .then(|| f.nth(1).and_then(|g| g.parse().ok()))
            .flatten()
    })
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
        assert_eq!(
            c.listen,
            vec![ListenAddr::parse("127.0.0.1:25001").unwrap()]
        );
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
            listen: vec!["127.0.0.1:1".into()],
            config: Some(file.clone()),
            ..ServeArgs::default()
        };
        let c = load(
            args,
            &[
                ("WORKMANAGER_LISTEN", "127.0.0.1:2"),
                ("WORKER_RETRY_ATTEMPTS", "5"),
            ],
        )
        .unwrap();
        assert_eq!(c.listen, vec![ListenAddr::parse("127.0.0.1:1").unwrap()]);
        assert_eq!(c.retry_attempts, 5);
        assert_eq!(c.code_fetch.timeout, Duration::from_secs(9));
        assert_eq!(c.code_fetch.allowed_hosts, vec!["a.example", "b.example"]);
        // The config file path itself may come from the environment.
        let c = load(
            ServeArgs::default(),
            &[("WORKMANAGER_CONFIG", file.to_str().unwrap())],
        )
        .unwrap();
        assert_eq!(c.listen, vec![ListenAddr::parse("127.0.0.1:3").unwrap()]);
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
    fn host_link_reader_defaults_to_thread_and_names_its_values() {
        use crate::pool::LinkReader;
        let c = load(ServeArgs::default(), &[]).unwrap();
        assert_eq!(c.host_link_reader, LinkReader::Thread);
        for (v, want) in [
            ("runtime", LinkReader::Runtime),
            ("THREAD", LinkReader::Thread),
        ] {
            let c = load(ServeArgs::default(), &[("HOST_LINK_READER", v)]).unwrap();
            assert_eq!(c.host_link_reader, want, "{v}");
        }
        let err = load(ServeArgs::default(), &[("HOST_LINK_READER", "async")]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("HOST_LINK_READER") && msg.contains("thread|runtime"),
            "{msg}"
        );
    }

    #[test]
    fn bus_inline_commit_defaults_to_os_and_names_its_values() {
        use crate::bus::InlineCommit;
        let c = load(ServeArgs::default(), &[]).unwrap();
        assert_eq!(c.bus_inline_commit, InlineCommit::Os);
        for (v, want) in [
            ("always", InlineCommit::Always),
            ("OFF", InlineCommit::Off),
            ("os", InlineCommit::Os),
        ] {
            let c = load(ServeArgs::default(), &[("BUS_INLINE_COMMIT", v)]).unwrap();
            assert_eq!(c.bus_inline_commit, want, "{v}");
        }
        let err = load(ServeArgs::default(), &[("BUS_INLINE_COMMIT", "fsync")]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("BUS_INLINE_COMMIT") && msg.contains("os|always|off"),
            "{msg}"
        );
    }

    #[test]
    fn bus_wal_preallocate_is_on_by_default_and_a_boolean() {
        let c = load(ServeArgs::default(), &[]).unwrap();
        assert!(c.bus_wal_preallocate);
        let c = load(ServeArgs::default(), &[("BUS_WAL_PREALLOCATE", "off")]).unwrap();
        assert!(!c.bus_wal_preallocate);
        let err = load(ServeArgs::default(), &[("BUS_WAL_PREALLOCATE", "33")]).unwrap_err();
        assert!(err.to_string().contains("BUS_WAL_PREALLOCATE"), "{err}");
    }

    #[test]
    fn bus_join_window_defaults_to_the_bus_default_and_is_bounded() {
        let c = load(ServeArgs::default(), &[]).unwrap();
        assert_eq!(
            c.bus_join_window,
            Duration::from_micros(crate::bus::JOIN_WINDOW_DEFAULT_US)
        );
        let c = load(ServeArgs::default(), &[("BUS_JOIN_WINDOW_US", "0")]).unwrap();
        assert!(c.bus_join_window.is_zero());
        let err = load(ServeArgs::default(), &[("BUS_JOIN_WINDOW_US", "10001")]).unwrap_err();
        assert!(err.to_string().contains("BUS_JOIN_WINDOW_US"), "{err}");
    }

    #[test]
    fn bus_commit_delay_defaults_to_100_us_and_is_bounded() {
        let c = load(ServeArgs::default(), &[]).unwrap();
        assert_eq!(c.bus_commit_delay, Duration::from_micros(100));
        let c = load(ServeArgs::default(), &[("BUS_COMMIT_DELAY_US", "0")]).unwrap();
        assert!(c.bus_commit_delay.is_zero());
        let err = load(ServeArgs::default(), &[("BUS_COMMIT_DELAY_US", "10001")]).unwrap_err();
        assert!(err.to_string().contains("BUS_COMMIT_DELAY_US"), "{err}");
        assert!(err.to_string().contains("0-10000"), "{err}");
    }

    #[test]
    fn runtime_worker_threads_default_leaves_a_cpu_and_is_bounded() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let c = load(ServeArgs::default(), &[]).unwrap();
        assert_eq!(c.worker_threads(), (cpus - 1).max(1));
        let c = load(ServeArgs::default(), &[("RUNTIME_WORKER_THREADS", "3")]).unwrap();
        assert_eq!(c.worker_threads(), 3);
        let err = load(ServeArgs::default(), &[("RUNTIME_WORKER_THREADS", "1025")]).unwrap_err();
        assert!(err.to_string().contains("RUNTIME_WORKER_THREADS"), "{err}");
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
    fn several_listeners_and_unix_sockets() {
        let args = ServeArgs {
            listen: vec!["127.0.0.1:1".into(), "unix:/run/wm.sock".into()],
            ..ServeArgs::default()
        };
        let c = load(args, &[]).unwrap();
        assert_eq!(
            c.listen,
            vec![
                ListenAddr::parse("127.0.0.1:1").unwrap(),
                ListenAddr::Unix("/run/wm.sock".into())
            ]
        );
        let c = load(
            ServeArgs::default(),
            &[("WORKMANAGER_LISTEN", "[::1]:5, unix:/tmp/a")],
        )
        .unwrap();
        assert_eq!(c.listen.len(), 2);
        assert!(load(ServeArgs::default(), &[("WORKMANAGER_LISTEN", "unix:")]).is_err());
    }

    #[test]
    fn remote_listener_needs_tls_and_tokens_or_the_override() {
        let remote = ServeArgs {
            listen: vec!["0.0.0.0:25001".into()],
            ..ServeArgs::default()
        };
        let err = load(remote.clone(), &[]).unwrap_err().to_string();
        assert!(err.contains("--allow-insecure-remote"), "{err}");
        assert!(err.contains("0.0.0.0:25001"), "{err}");
        // Tokens alone are not enough: they would travel in clear text.
        let h = hex::encode(crate::api::auth::hash_token("t"));
        let tokens = format!("ci:{h}:admin");
        assert!(load(remote.clone(), &[("WORKMANAGER_API_TOKENS", &tokens)]).is_err());
        let ok = load(
            remote.clone(),
            &[
                ("WORKMANAGER_API_TOKENS", &tokens),
                ("WORKMANAGER_TLS_CERT_FILE", "/c.pem"),
                ("WORKMANAGER_TLS_KEY_FILE", "/k.pem"),
            ],
        );
        assert!(ok.is_ok());
        let forced = ServeArgs {
            allow_insecure_remote: true,
            ..remote
        };
        assert!(load(forced, &[]).unwrap().security.allow_insecure_remote);
    }

    #[test]
    fn grpc_listens_on_25002_by_default_follows_the_listener_rules_and_can_be_off() {
        let c = load(ServeArgs::default(), &[]).unwrap();
        assert_eq!(
            c.grpc_listen,
            vec![ListenAddr::parse("127.0.0.1:25002").unwrap()]
        );
        assert_eq!(c.otlp_endpoint, None);
        let flag = ServeArgs {
            grpc_listen: vec!["127.0.0.1:7".into(), "unix:/run/g.sock".into()],
            ..ServeArgs::default()
        };
        let c = load(flag, &[("WORKMANAGER_GRPC_LISTEN", "127.0.0.1:9")]).unwrap();
        assert_eq!(c.grpc_listen.len(), 2, "the flag wins over the environment");
        let off = load(ServeArgs::default(), &[("WORKMANAGER_GRPC_LISTEN", "off")]).unwrap();
        assert!(off.grpc_listen.is_empty());
        let err = load(
            ServeArgs::default(),
            &[("WORKMANAGER_GRPC_LISTEN", "nowhere")],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("WORKMANAGER_GRPC_LISTEN"), "{err}");
        // A remote gRPC address needs TLS and tokens, as a remote REST one does.
        let err = load(
            ServeArgs::default(),
            &[("WORKMANAGER_GRPC_LISTEN", "0.0.0.0:25002")],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--allow-insecure-remote"), "{err}");
        let h = hex::encode(crate::api::auth::hash_token("t"));
        let secure = load(
            ServeArgs::default(),
            &[
                ("WORKMANAGER_GRPC_LISTEN", "0.0.0.0:25002"),
                ("WORKMANAGER_API_TOKENS", &format!("ci:{h}:admin")),
                ("WORKMANAGER_TLS_CERT_FILE", "/c.pem"),
                ("WORKMANAGER_TLS_KEY_FILE", "/k.pem"),
            ],
        );
        assert!(secure.is_ok());
        let otlp = load(
            ServeArgs::default(),
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")],
        )
        .unwrap();
        assert_eq!(otlp.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4317"));
        assert!(
            load(
                ServeArgs::default(),
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "127.0.0.1:4317")]
            )
            .is_err()
        );
    }

    #[test]
    fn tokens_come_from_the_config_file_as_a_list() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wm.toml");
        let a = hex::encode(crate::api::auth::hash_token("token-a"));
        let b = hex::encode(crate::api::auth::hash_token("token-b"));
        std::fs::write(
            &file,
            format!(
                "WORKMANAGER_API_TOKENS = [\"deployer:{a}:admin\", \"orders:{b}:publish:orders.* subscribe:orders.*\"]\nWORKMANAGER_LISTEN = [\"127.0.0.1:1\", \"unix:/tmp/wm.sock\"]\n"
            ),
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        };
        let c = load(args, &[]).unwrap();
        let names: Vec<_> = c.security.tokens.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["deployer", "orders"]);
        assert_eq!(c.security.tokens[1].scopes.len(), 2);
        assert_eq!(c.listen.len(), 2);
    }

    #[test]
    fn token_lists_are_validated_without_echo() {
        let err = load(
            ServeArgs::default(),
            &[("WORKMANAGER_API_TOKENS", "ci:0123:admin")],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("64 hex digits"), "{err}");
        assert!(!err.contains("0123"), "{err}");
        let c = load(
            ServeArgs::default(),
            &[("WORKMANAGER_API_TOKEN", "legacy-token-0123456789")],
        )
        .unwrap();
        assert_eq!(c.security.tokens[0].name, "api-token");
        assert!(c.security.auth_enabled());
        let c = load(
            ServeArgs::default(),
            &[("WORKMANAGER_MAX_CODE_BYTES", "4096")],
        )
        .unwrap();
        assert_eq!(c.max_code_bytes, 4096, "the old name stays an alias");
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
