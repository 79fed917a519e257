//! Real `nats-server` processes for the cluster tests: one server, or a three-server
//! JetStream cluster, on free loopback ports with their stores in temp directories. Killed
//! when dropped. `scripts/install-deps.sh` installs the server (Debian's 2.9.10).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `nats-server` binary: `NATS_SERVER_BIN`, else the one on `PATH`.
pub fn nats_server_bin() -> PathBuf {
    std::env::var_os("NATS_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// One `nats-server` with JetStream.
pub struct NatsServer {
    child: Option<Child>,
    args: Vec<String>,
    /// Client port.
    pub port: u16,
    /// Its store and log live here.
    dir: tempfile::TempDir,
    name: String,
}

impl NatsServer {
    /// A single server with JetStream on a free port.
    pub fn start() -> NatsServer {
        Self::spawn("n1", free_port(), None)
    }

    fn spawn(name: &str, port: u16, cluster: Option<(u16, &[u16])>) -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir for nats-server");
        let mut args = vec![
            "-js".to_string(),
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-sd".into(),
            dir.path().join("store").display().to_string(),
            "-n".into(),
            name.to_string(),
            "-l".into(),
            dir.path().join("server.log").display().to_string(),
        ];
        if let Some((cport, peers)) = cluster {
            args.push("--cluster_name".into());
            args.push("wmtest".into());
            args.push("--cluster".into());
            args.push(format!("nats://127.0.0.1:{cport}"));
            let routes: Vec<String> = peers
                .iter()
                .filter(|p| **p != cport)
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            args.push("--routes".into());
            args.push(routes.join(","));
        }
        let mut s = NatsServer {
            child: None,
            args,
            port,
            dir,
            name: name.to_string(),
        };
        s.restart();
        s
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The store directory.
    pub fn store(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILLs the server (its store stays).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and store (after [`NatsServer::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new(nats_server_bin())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); run scripts/install-deps.sh (Debian package nats-server)",
                    nats_server_bin().display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server {} did not listen on {} within 20 s; its log:\n{}",
                self.name,
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three servers forming one JetStream cluster (R3 streams survive one server's loss).
pub struct NatsCluster {
    /// The servers.
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts three clustered servers and waits until JetStream has a meta leader.
    pub fn start() -> NatsCluster {
        let cports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let servers = (0..3)
            .map(|i| {
                NatsServer::spawn(
                    &format!("n{}", i + 1),
                    free_port(),
                    Some((cports[i], &cports)),
                )
            })
            .collect();
        let c = NatsCluster { servers };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c
            .servers
            .iter()
            .any(|s| s.log().contains("JetStream cluster new metadata leader"))
            && !c.servers.iter().any(|s| {
                s.log()
                    .contains("Self is new JetStream cluster metadata leader")
            })
        {
            assert!(
                Instant::now() < deadline,
                "the NATS cluster elected no JetStream leader within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// Every server's URL, comma-separated (`NATS_URL`).
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}
