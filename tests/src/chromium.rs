//! Headless Chromium (Debian's `chromium`) driven over the Chrome DevTools Protocol through
//! `--remote-debugging-pipe`: commands go to the browser's fd 3 and answers come from its fd 4,
//! each a JSON message ended by a NUL byte. No WebSocket client is needed.
//!
//! [`Browser::open`] starts it on a page; [`Browser::eval`] runs JavaScript in the page and
//! returns the value; [`Browser::screenshot`] saves a PNG. Dropping the browser kills it.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// How long one protocol command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A running headless Chromium with one attached page.
pub struct Browser {
    child: Child,
    to_browser: std::fs::File,
    from_browser: mpsc::Receiver<Value>,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
}

/// The Chromium binary: `CHROMIUM` or `chromium` on the PATH.
pub fn binary() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("chromium"))
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given, which has room for two.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created by pipe2 and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Browser {
    /// Starts Chromium (1280x900 window) and opens `url` in its page.
    pub fn open(url: &str) -> Browser {
        Browser::open_with_headers(url, &[])
    }

    /// [`Browser::open`], sending `headers` with every request of the page (what a browser
    /// does with credentials after a login prompt, which headless Chromium cannot answer).
    pub fn open_with_headers(url: &str, headers: &[(&str, &str)]) -> Browser {
        use std::os::fd::AsRawFd;
        let profile = tempfile::tempdir().expect("a Chromium profile directory");
        // commands: we write `cmd_w`, Chromium reads fd 3; answers: Chromium writes fd 4.
        let (cmd_r, cmd_w) = pipe();
        let (ans_r, ans_w) = pipe();
        let (cr, aw) = (cmd_r.as_raw_fd(), ans_w.as_raw_fd());
        let mut cmd = Command::new(binary());
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--window-size=1280,900",
            "--remote-debugging-pipe",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: the closure runs in the child between fork and exec and calls only dup2 and
        // fcntl, which are async-signal-safe; the descriptors it names are open in the child
        // (inherited from this process, which keeps them until spawn returns).
        unsafe {
            cmd.pre_exec(move || {
                // dup2 onto a different number clears O_CLOEXEC on the copy.
                for (from, to) in [(cr, 3), (aw, 4)] {
                    if from == to {
                        let flags = libc::fcntl(from, libc::F_GETFD);
                        libc::fcntl(from, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
                    } else if libc::dup2(from, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "starting {} ({e}); run scripts/install-deps.sh (Debian's chromium)",
                binary().display()
            )
        });
        drop(cmd_r);
        drop(ans_w);
        let (tx, rx) = mpsc::channel();
        let mut reader = std::fs::File::from(ans_r);
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 64 * 1024];
            loop {
                let n = match reader.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = buf.iter().position(|b| *b == 0) {
                    let msg: Vec<u8> = buf.drain(..=end).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&msg[..msg.len() - 1])
                        && tx.send(v).is_err()
                    {
                        return;
                    }
                }
            }
        });
        let mut b = Browser {
            child,
            to_browser: std::fs::File::from(cmd_w),
            from_browser: rx,
            next_id: 1,
            session: String::new(),
            _profile: profile,
        };
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let target = loop {
            let targets = b.command(None, "Target.getTargets", json!({}));
            if let Some(t) = targets["targetInfos"]
                .as_array()
                .and_then(|a| a.iter().find(|t| t["type"] == "page"))
            {
                break t["targetId"].as_str().unwrap_or_default().to_owned();
            }
            assert!(Instant::now() < deadline, "Chromium opened no page");
            std::thread::sleep(Duration::from_millis(100));
        };
        let attached = b.command(
            None,
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        );
        b.session = attached["sessionId"]
            .as_str()
            .expect("a session")
            .to_owned();
        b.page("Page.enable", json!({}));
        if !headers.is_empty() {
            let map: serde_json::Map<String, Value> = headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), json!(v)))
                .collect();
            b.page("Network.enable", json!({}));
            b.page("Network.setExtraHTTPHeaders", json!({"headers": map}));
        }
        b.page("Page.navigate", json!({"url": url}));
        b
    }

    /// Sends a command (to the browser, or to a session) and waits for its result.
    fn command(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(0);
        self.to_browser
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("sending {method} to Chromium: {e}"));
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from_browser
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("Chromium did not answer {method}"));
            if v["id"] == id {
                assert!(v["error"].is_null(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
        }
    }

    fn page(&mut self, method: &str, params: Value) -> Value {
        let s = self.session.clone();
        self.command(Some(&s), method, params)
    }

    /// Evaluates `expression` in the page (promises are awaited) and returns its value.
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self.page(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("{expression}: {ex}");
        }
        r["result"]["value"].clone()
    }

    /// Evaluates `expression` until it returns `true`, or panics with `what` after `timeout`
    /// (a page still loading counts as not yet).
    pub fn wait_for(&mut self, what: &str, timeout: Duration, expression: &str) {
        let deadline = Instant::now() + timeout;
        let guarded = format!(
            "(() => {{ try {{ return !!({expression}); }} catch (_) {{ return false; }} }})()"
        );
        while Instant::now() < deadline {
            if self.eval(&guarded) == json!(true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what} ({expression})");
    }

    /// Saves a PNG of the viewport to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let r = self.page("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap_or_default())
            .expect("a base64 screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
