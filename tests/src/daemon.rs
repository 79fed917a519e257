//! Runs the real `workmanager serve` binary for end-to-end tests.
//!
//! [`Daemon::start`] launches it on `127.0.0.1:0` with a data directory (a fresh temporary one
//! unless the options name one, for restart tests), waits for `<data-dir>/listen.addr` and for
//! `/health` to report ready, and gives the base URL. [`Daemon::stop`] sends SIGTERM and
//! waits; [`Daemon::kill9`] is the crash. Dropping a running daemon kills it, so a failing test
//! never leaves one behind. Every wait has a deadline and fails with the daemon's log.
//!
//! [`http`] is a small blocking HTTP/1.1 client (one request per connection), enough for the
//! tests and free of an async runtime.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long start-up (bind + recovery) may take before the test fails.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long a SIGTERM'd daemon may take to exit.
const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// How to start a daemon.
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// Environment variables (settings) for the daemon, on top of a cleared `WORKMANAGER_*`.
    pub env: Vec<(String, String)>,
    /// Use this data directory (kept after the daemon stops) instead of a fresh temporary one.
    pub data_dir: Option<PathBuf>,
    /// Do not wait for `/health` to be ready (for start-up failure tests).
    pub no_wait: bool,
    /// Extra arguments after `serve`.
    pub args: Vec<String>,
    /// `--listen` values (default: `127.0.0.1:0`).
    pub listen: Vec<String>,
    /// Run this `workmanager` binary (its `host-runner` beside it) instead of this build's:
    /// benchmarks compare an older build in the same run.
    pub binary: Option<PathBuf>,
}

impl DaemonOptions {
    /// Adds a setting.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Adds a `--listen` value (the first replaces the default `127.0.0.1:0`).
    pub fn listen(mut self, addr: &str) -> Self {
        self.listen.push(addr.to_owned());
        self
    }

    /// Runs `path` instead of this build's `workmanager` (see [`DaemonOptions::binary`]).
    pub fn binary(mut self, path: &Path) -> Self {
        self.binary = Some(path.to_path_buf());
        self
    }

    /// Adds a command-line argument after `serve`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// Uses (and keeps) this data directory.
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }
}

/// A running `workmanager serve`.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    addr: Option<SocketAddr>,
    unix: Option<PathBuf>,
    tls: bool,
    data_dir: PathBuf,
    log_path: PathBuf,
    _temp: tempfile::TempDir,
}

/// Path of the `workmanager` binary, built once per test process (a no-op when up to date).
pub fn workmanager_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let bin = crate::bin_dir().join("workmanager");
            // `cargo test -p workmanager-tests` builds the supervisor library but not its
            // binary: build it into the same target directory and profile.
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            let mut cmd = Command::new(cargo);
            cmd.current_dir(crate::workspace_root())
                // Selecting this package too gives the same feature resolution as
                // `cargo test -p workmanager-tests`, so the two builds do not undo each other.
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "workmanager-tests",
                    "-p",
                    "workmanager-supervisor",
                    "--bin",
                    "workmanager",
                    // The daemon runs plugins in host-runners found next to its binary.
                    "-p",
                    "workmanager-host-runner",
                    "--bin",
                    "host-runner",
                ])
                .arg("--target-dir")
                .arg(crate::target_dir());
            // Cargo gives tests the variables of *this* package (CARGO_PKG_NAME, ...); build
            // scripts such as ring's list some of them in `rerun-if-env-changed`, so passing
            // them on would rebuild those crates on every test run.
            for (k, _) in std::env::vars_os() {
                let k = k.to_string_lossy();
                let package_scoped = [
                    "CARGO_PKG_",
                    "CARGO_MANIFEST_",
                    "CARGO_CRATE_",
                    "CARGO_BIN_",
                    "CARGO_CFG_",
                ]
                .iter()
                .any(|p| k.starts_with(p))
                    || [
                        "CARGO_PRIMARY_PACKAGE",
                        "CARGO_TARGET_TMPDIR",
                        "CARGO_RUSTC_CURRENT_DIR",
                        "OUT_DIR",
                    ]
                    .contains(&k.as_ref());
                if package_scoped {
                    cmd.env_remove(k.as_ref());
                }
            }
            if crate::bin_dir().file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let status = cmd
                .status()
                .unwrap_or_else(|e| panic!("cannot run cargo to build workmanager: {e}"));
            assert!(status.success(), "building workmanager failed: {status}");
            assert!(bin.is_file(), "{} missing after the build", bin.display());
            bin
        })
        .clone()
}

impl Daemon {
    /// Starts a daemon and waits until it is ready (unless `opts.no_wait`).
    pub fn start(opts: DaemonOptions) -> Daemon {
        let temp = tempfile::Builder::new()
            .prefix("wm-daemon-")
            .tempdir()
            .expect("creating a temporary directory");
        // Hosts run under HOST_UID (the daemon runs as root here): they must be able to pass
        // through this directory to the data directory's packages, as through any production
        // data directory's parents. Traversal only: nobody else can list it.
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o711));
        }
        let data_dir = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| temp.path().join("data"));
        // A kill -9'd predecessor leaves its address files behind.
        let _ = std::fs::remove_file(data_dir.join("listen.addr"));
        let _ = std::fs::remove_file(data_dir.join("listen.addrs"));
        let _ = std::fs::remove_file(data_dir.join("grpc.addr"));
        let log_path = temp.path().join("daemon.log");
        let log = std::fs::File::create(&log_path).expect("creating the daemon log");
        let mut cmd = Command::new(opts.binary.clone().unwrap_or_else(workmanager_bin));
        cmd.arg("serve");
        if opts.listen.is_empty() {
            cmd.arg("--listen").arg("127.0.0.1:0");
        }
        for l in &opts.listen {
            cmd.arg("--listen").arg(l);
        }
        // gRPC on a free port too (the default 25002 would clash between parallel tests),
        // unless the test chose (flag or setting).
        if !opts.args.iter().any(|a| a.starts_with("--grpc-listen"))
            && !opts.env.iter().any(|(k, _)| k == "WORKMANAGER_GRPC_LISTEN")
        {
            cmd.arg("--grpc-listen").arg("127.0.0.1:0");
        }
        cmd.arg("--data-dir")
            .arg(&data_dir)
            .args(&opts.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, _) in std::env::vars() {
            if k.starts_with("WORKMANAGER_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("WORKMANAGER_LOG", "info");
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawning workmanager");
        let tls = opts
            .env
            .iter()
            .any(|(k, v)| k == "WORKMANAGER_TLS_CERT_FILE" && !v.is_empty());
        let mut d = Daemon {
            child: Some(child),
            addr: None,
            unix: None,
            tls,
            data_dir,
            log_path,
            _temp: temp,
        };
        if !opts.no_wait {
            d.wait_ready();
        }
        d
    }

    /// Waits for the address file, then for `/health` to answer 200.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_DEADLINE;
        let addr_file = self.data_dir.join("listen.addr");
        loop {
            if let Some(status) = self.try_wait() {
                panic!(
                    "workmanager exited during start-up ({status}):\n{}",
                    self.log()
                );
            }
            // `listen.addrs` (every listener) is complete once `listen.addr` exists.
            if let Ok(first) = std::fs::read_to_string(&addr_file)
                && first.ends_with('\n')
            {
                let text =
                    std::fs::read_to_string(self.data_dir.join("listen.addrs")).unwrap_or(first);
                self.addr = text
                    .lines()
                    .find_map(|l| l.trim().parse::<SocketAddr>().ok());
                self.unix = text
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("unix:").map(PathBuf::from));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "workmanager did not bind in time:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        loop {
            let ready = if self.tls {
                // The harness speaks plain HTTP: read the log instead.
                self.log().contains("recovery finished; ready")
            } else if let Some(addr) = self.addr {
                http::request(addr, "GET", "/health", &[], b"").is_ok_and(|r| r.status == 200)
            } else if let Some(path) = &self.unix {
                http::request_unix(path, "GET", "/health", &[], b"").is_ok_and(|r| r.status == 200)
            } else {
                false
            };
            if ready {
                return;
            }
            if let Some(status) = self.try_wait() {
                panic!(
                    "workmanager exited during start-up ({status}):\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "workmanager did not become ready in time:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for the process to exit by itself (for start-up failures), with a deadline.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + STOP_DEADLINE;
        loop {
            if let Some(s) = self.try_wait() {
                self.child = None;
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "workmanager did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("the daemon has no address yet")
    }

    /// The first address the gRPC API listens on (`<data-dir>/grpc.addr`, written before
    /// `listen.addr`), e.g. `127.0.0.1:40123` or `unix:/path`; `None` with `--grpc-listen off`.
    pub fn grpc_addr(&self) -> Option<String> {
        std::fs::read_to_string(self.data_dir.join("grpc.addr"))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }

    /// The Unix socket it listens on, if any.
    pub fn unix_socket(&self) -> Option<&Path> {
        self.unix.as_deref()
    }

    /// One request over the Unix socket listener.
    pub fn request_unix(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> http::Response {
        let sock = self
            .unix
            .as_ref()
            .expect("the daemon has no unix: listener");
        http::request_unix(sock, method, path, headers, body).unwrap_or_else(|e| {
            panic!(
                "{method} {path} over {} failed: {e}\n{}",
                sock.display(),
                self.log()
            )
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The daemon's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self.pid() {
            let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
            // SAFETY: kill(2) has no memory preconditions; `pid` is our own child, which has
            // not been reaped yet (we hold its `Child` and have not waited on it), so the pid
            // cannot have been reused by another process.
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// SIGHUP (reload the TLS files).
    pub fn hangup(&self) {
        self.signal(libc::SIGHUP);
    }

    /// SIGTERM, then waits for a clean exit; returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit()
    }

    /// SIGKILL (a crash), then reaps the process.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit();
    }

    /// One request to the daemon.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> http::Response {
        http::request(self.addr(), method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path} failed: {e}\n{}", self.log()))
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> http::Response {
        self.request("GET", path, &[], b"")
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> http::Response {
        self.request("DELETE", path, &[], b"")
    }

    /// `POST path` without a body.
    pub fn post(&self, path: &str) -> http::Response {
        self.request("POST", path, &[], b"")
    }

    /// `method path` with a JSON body.
    pub fn send_json(&self, method: &str, path: &str, body: &serde_json::Value) -> http::Response {
        self.request(
            method,
            path,
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal(libc::SIGKILL);
            if let Some(mut c) = self.child.take() {
                let _ = c.wait();
            }
        }
    }
}

pub mod http {
    //! A minimal blocking HTTP/1.1 client: one request per connection (`Connection: close`),
    //! `Content-Length` or read-to-end bodies. Enough for tests; not a general client.

    use super::*;

    /// A response.
    #[derive(Debug, Clone)]
    pub struct Response {
        /// Status code.
        pub status: u16,
        /// Headers, names lower-cased.
        pub headers: Vec<(String, String)>,
        /// The body.
        pub body: Vec<u8>,
    }

    impl Response {
        /// The body as JSON (panics with the body text if it is not).
        pub fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).unwrap_or_else(|e| {
                panic!(
                    "response ({}) is not JSON: {e}: {}",
                    self.status,
                    String::from_utf8_lossy(&self.body)
                )
            })
        }

        /// The body as text.
        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }

        /// A header's value.
        pub fn header(&self, name: &str) -> Option<&str> {
            let name = name.to_ascii_lowercase();
            self.headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.as_str())
        }

        /// The `error.code` of an error body.
        pub fn error_code(&self) -> String {
            self.json()["error"]["code"]
                .as_str()
                .unwrap_or_else(|| panic!("not an error body ({}): {}", self.status, self.text()))
                .to_owned()
        }
    }

    /// Sends one request; 60 s I/O timeout.
    pub fn request(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        request_with_timeout(addr, method, path, headers, body, Duration::from_secs(60))
    }

    /// Sends one request with the given I/O timeout (each read and write).
    pub fn request_with_timeout(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> std::io::Result<Response> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        exchange(s, &addr.to_string(), method, path, headers, body)
    }

    /// Sends one request over a Unix socket (`Host: localhost`); 60 s I/O timeout.
    pub fn request_unix(
        sock: &Path,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let s = std::os::unix::net::UnixStream::connect(sock)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.set_write_timeout(Some(Duration::from_secs(60)))?;
        exchange(s, "localhost", method, path, headers, body)
    }

    /// Writes one request on `s` and reads the whole answer. A `host` header in `headers`
    /// replaces the default one.
    pub fn exchange(
        mut s: impl Read + Write,
        host: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let own_host = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host"));
        let host_line = if own_host {
            String::new()
        } else {
            format!("Host: {host}\r\n")
        };
        // A `content-length` in `headers` replaces ours (to announce more than is sent).
        let own_len = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
        let len_line = if own_len {
            String::new()
        } else {
            format!("Content-Length: {}\r\n", body.len())
        };
        let mut head =
            format!("{method} {path} HTTP/1.1\r\n{host_line}Connection: close\r\n{len_line}");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        // A server may answer (413) and close before it read the whole body: keep what it
        // said rather than failing on the broken pipe.
        let sent = s
            .write_all(head.as_bytes())
            .and_then(|()| s.write_all(body));
        let mut raw = Vec::new();
        let read = s.read_to_end(&mut raw);
        match (sent, read) {
            (_, Ok(_)) if !raw.is_empty() => parse(&raw),
            (Err(e), _) | (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(_)) => parse(&raw),
        }
    }

    fn bad(what: &str) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
    }

    /// Parses a whole response (status line, headers, body; chunked bodies are decoded).
    pub fn parse(raw: &[u8]) -> std::io::Result<Response> {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| bad("no end of headers"))?;
        let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers are not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("bad status line"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut body = raw[end + 4..].to_vec();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        if chunked {
            body = dechunk(&body)?;
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    fn dechunk(mut b: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let eol = b
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("bad chunk"))?;
            let size_text = std::str::from_utf8(&b[..eol]).map_err(|_| bad("bad chunk size"))?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            b = &b[eol + 2..];
            if size == 0 {
                return Ok(out);
            }
            if b.len() < size + 2 {
                return Err(bad("truncated chunk"));
            }
            out.extend_from_slice(&b[..size]);
            b = &b[size + 2..];
        }
    }
}
