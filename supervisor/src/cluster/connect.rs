//! The daemon's NATS connection.
//!
//! One client per daemon, built from [`NatsSettings`]: every URL (the client fails over and
//! also learns the cluster's other servers), one way of authenticating, TLS when asked for,
//! and reconnecting forever: a daemon that loses NATS keeps serving `/health/live`, reports
//! not ready ([`NatsConnection::is_connected`]) and carries on when NATS is back.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::{Client, ConnectOptions, ServerAddr, connection::State};

use super::settings::{NatsAuth, NatsSettings};

/// A connected NATS client and its JetStream context.
#[derive(Clone, Debug)]
pub struct NatsConnection {
    /// The core client.
    pub client: Client,
    /// JetStream on it.
    pub jetstream: async_nats::jetstream::Context,
}

impl NatsConnection {
    /// True while the client is connected to some server.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }
}

async fn options(s: &NatsSettings, name: &str) -> anyhow::Result<ConnectOptions> {
    let mut o = match &s.auth {
        NatsAuth::None => ConnectOptions::new(),
        NatsAuth::CredsFile(p) => ConnectOptions::with_credentials_file(p)
            .await
            .with_context(|| format!("reading NATS_CREDS_FILE {}", p.display()))?,
        NatsAuth::NkeySeedFile(p) => {
            let seed = tokio::fs::read_to_string(p)
                .await
                .with_context(|| format!("reading NATS_NKEY_SEED_FILE {}", p.display()))?;
            ConnectOptions::with_nkey(seed.trim().to_owned())
        }
        NatsAuth::UserPassword { user, password } => {
            ConnectOptions::with_user_and_password(user.clone(), password.0.clone())
        }
        NatsAuth::Token(t) => ConnectOptions::with_token(t.0.clone()),
    };
    let tls_urls = s.urls.iter().any(|u| u.starts_with("tls://"));
    if s.tls_required || tls_urls || s.tls_ca_file.is_some() || s.tls_client.is_some() {
        o = o.require_tls(true);
    }
    if let Some(ca) = &s.tls_ca_file {
        o = o.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &s.tls_client {
        o = o.add_client_certificate(cert.clone(), key.clone());
    }
    // Reconnect forever, with the client's own backoff: NATS being away is an outage to
    // ride out (readiness says so), not a reason for the daemon to exit.
    Ok(o.name(name)
        .connection_timeout(s.connect_timeout.min(Duration::from_secs(5)))
        .max_reconnects(None)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("NATS connected"),
                async_nats::Event::Disconnected => {
                    tracing::warn!("NATS connection lost; reconnecting (the daemon reports not ready meanwhile)")
                }
                other => tracing::info!(event = %other, "NATS client event"),
            }
        }))
}

/// Connects to NATS; retries until `connect_timeout`, then fails with what went wrong.
pub async fn connect(s: &NatsSettings, name: &str) -> anyhow::Result<NatsConnection> {
    let addrs: Vec<ServerAddr> = s
        .urls
        .iter()
        .map(|u| {
            u.parse::<ServerAddr>()
                .with_context(|| format!("NATS_URL entry '{u}' is not a server address"))
        })
        .collect::<anyhow::Result<_>>()?;
    let deadline = Instant::now() + s.connect_timeout;
    loop {
        let o = options(s, name).await?;
        match o.connect(addrs.clone()).await {
            Ok(client) => {
                let jetstream = async_nats::jetstream::new(client.clone());
                return Ok(NatsConnection { client, jetstream });
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot connect to NATS at {} within {:?} (NATS_URL, NATS_CONNECT_TIMEOUT_SECONDS; check that nats-server runs with JetStream (-js) and the credentials)",
                    s.urls.join(","),
                    s.connect_timeout
                )));
            }
            Err(e) => {
                tracing::debug!(error = %e, "NATS not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}
