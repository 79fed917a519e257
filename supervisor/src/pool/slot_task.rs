//! The task of one slot: spawn (or adopt a warm standby), load the slot's workers, serve the
//! host's frames, and when it dies report why, count crashes, quarantine, back off and start
//! again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::{Semaphore, watch};
use wm_shared::protocol::{GatewayCall, Log, Message};

use super::death::{DeathReport, attribute, header_violation};
use super::handle::{HostHandle, truncated};
use super::respawn::{LifecycleQueue, next_failures, respawn_delay};
use super::*;

impl Pool {
    /// Keeps a host alive for one slot until the slot closes.
    pub(super) async fn run_slot(self: Arc<Self>, slot: Arc<Slot>) {
        let mut failures: u32 = 0;
        let mut generation: u64 = 0;
        // `host.crashed` / `host.respawned` are durable publishes (an fsync each): they go out
        // in order beside the respawn instead of in front of it.
        let mut lifecycle = LifecycleQueue::default();
        while !slot.closed.is_cancelled() {
            generation += 1;
            let host_id = format!("{}.{generation}", slot.id);
            let spawned = tokio::select! {
                r = self.adopt_or_spawn(&host_id, slot.engine, &slot.limits) => r,
                _ = slot.closed.cancelled() => break,
            };
            let mut spawned = match spawned {
                Ok(s) => s,
                Err(e) => {
                    failures += 1;
                    let delay = backoff(
                        self.config.respawn_backoff_base,
                        self.config.respawn_backoff_max,
                        failures,
                    );
                    tracing::error!(slot = %slot.id, "{e}; retrying in {delay:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => continue,
                        _ = slot.closed.cancelled() => break,
                    }
                }
            };
            let started = Instant::now();
            let (death_tx, death_rx) = watch::channel(None);
            let handle = Arc::new(HostHandle {
                host_id: host_id.clone(),
                pid: spawned.pid,
                engine: slot.engine,
                link: spawned.link.clone(),
                layers: spawned.layers.clone(),
                in_flight: Mutex::new(HashMap::new()),
                death: death_rx,
                reclaim: Mutex::new(None),
                violation: Mutex::new(None),
                kill: tokio::sync::Notify::new(),
                violations: slot.violations.clone(),
                gateway_slots: Arc::new(Semaphore::new(
                    self.config.limits.gateway_in_flight_per_host.max(1),
                )),
                tmp_dir: spawned.tmp_dir.as_ref().map(|t| t.path.clone()),
            });
            tracing::info!(host = %host_id, pid = spawned.pid, sandbox = %spawned.ready.sandbox, "host ready");
            if generation > 1 {
                slot.restarts.fetch_add(1, Ordering::Relaxed);
                let (events, id, pid) = (self.events.clone(), host_id.clone(), spawned.pid);
                let restarts = slot.restarts.load(Ordering::Relaxed) as u32;
                lifecycle.then(async move { events.host_respawned(&id, pid, restarts).await });
            }

            // Reload every worker of the slot before anyone may call the new host.
            let specs: Vec<WorkerSpec> = lock(&slot.workers).values().cloned().collect();
            for spec in specs {
                let msg = load_message(&spec, self.config.load_timeout, &handle.link);
                let res =
                    tokio::time::timeout(self.config.load_timeout, handle.link.request(msg)).await;
                if !matches!(&res, Ok(Ok(Message::LoadResult(r))) if r.ok) {
                    handle.link.release_lanes(&spec.id);
                }
                let err = match res {
                    Ok(Ok(Message::LoadResult(r))) if r.ok => None,
                    Ok(Ok(Message::LoadResult(r))) => Some(r.error),
                    Ok(Ok(other)) => Some(format!("unexpected answer {other:?}")),
                    Ok(Err(e)) => Some(format!("host went away: {e}")),
                    Err(_) => Some("timed out".to_string()),
                };
                if let Some(error) = err {
                    tracing::error!(worker = %spec.id, host = %host_id, "reload after respawn failed: {error}");
                    let _ = self
                        .notify
                        .send(PoolEvent::ReloadFailed {
                            worker_id: spec.id.clone(),
                            error,
                        })
                        .await;
                }
            }
            slot.current.send_replace(Some(handle.clone()));

            let status = self.serve_host(&slot, &handle, &mut spawned).await;
            slot.current.send_replace(None);
            spawned.link.peer_died();

            let in_flight = lock(&handle.in_flight).clone();
            let records: Vec<CrashRecord> = spawned
                .region
                .crash_slots()
                .iter()
                .filter_map(|s| s.read())
                .collect();
            let placed: Vec<String> = lock(&slot.workers).keys().cloned().collect();
            let (crash, forged) = attribute(&records, &in_flight, &placed, &status);
            let mut violation = lock(&handle.violation).clone();
            if violation.is_none() {
                violation =
                    forged.or_else(|| header_violation(&spawned.region, &self.config.spawn));
            }
            let reclaimed = lock(&handle.reclaim).take();
            let report = Arc::new(DeathReport {
                host_id: host_id.clone(),
                pid: spawned.pid,
                status: status.clone(),
                crash,
                reclaimed,
                violation,
                in_flight,
            });
            let _ = death_tx.send(Some(report.clone()));

            let orderly = slot.closed.is_cancelled() && status == ExitStatus::Exited(0);
            if orderly {
                tracing::info!(host = %host_id, pid = spawned.pid, "host stopped");
                break;
            }
            slot.crashes.fetch_add(1, Ordering::Relaxed);
            let culprit = report
                .crash
                .as_ref()
                .map(|c| (c.worker_id.as_str(), c.msg_id))
                .or(report.reclaimed.as_ref().map(|(w, m)| (w.as_str(), *m)));
            let signal = match (&report.crash, &status) {
                (Some(c), _) => Some(c.signal),
                (None, ExitStatus::Signaled(s)) => Some(*s),
                _ => None,
            };
            tracing::error!(host = %host_id, pid = spawned.pid, culprit = ?culprit, "{}", report.cause());
            // Quarantine before anything awaits: a retry must not find the worker still placed.
            let quarantined = self.count_crashes(&slot, &report);
            let syscall = report.forbidden_syscall();
            let (events, id, pid, cause) = (
                self.events.clone(),
                host_id.clone(),
                spawned.pid,
                report.cause(),
            );
            let culprit = culprit.map(|(w, m)| (w.to_owned(), m));
            lifecycle.then(async move {
                let culprit = culprit.as_ref().map(|(w, m)| (w.as_str(), *m));
                events
                    .host_crashed(&id, pid, signal, culprit, &cause, syscall.as_deref())
                    .await;
            });
            if !quarantined.is_empty() {
                // The quarantine's own lifecycle events follow the crash they come from.
                lifecycle.flush().await;
            }
            for ev in quarantined {
                let _ = self.notify.send(ev).await;
            }
            if slot.closed.is_cancelled() {
                break;
            }
            failures = next_failures(
                failures,
                started.elapsed() >= self.config.stable_after,
                report.has_culprit(),
            );
            let delay = respawn_delay(
                self.config.respawn_backoff_base,
                self.config.respawn_backoff_max,
                failures,
            );
            if lock(&slot.workers).is_empty() && slot.dedicated {
                break;
            }
            // Not `sleep(ZERO)`: Tokio's timer would still wait for its next tick (up to 1 ms).
            if !delay.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = slot.closed.cancelled() => break,
                }
            }
        }
        lifecycle.flush().await;
        lock(&self.slots).retain(|s| !Arc::ptr_eq(s, &slot));
    }

    /// The engine's warm standby host if one is idle (then a new standby is spawned in the
    /// background), else a new host.
    async fn adopt_or_spawn(
        &self,
        host_id: &str,
        engine: EngineKind,
        limits: &WorkerLimits,
    ) -> Result<spawn::SpawnedHost, SpawnError> {
        if !limits.is_empty() {
            // A standby runs under the engine's limits; this host needs the worker's own.
            return self.spawner.spawn_with(host_id, engine, limits).await;
        }
        if let Some(h) = self.standbys.adopt(engine).await {
            tracing::info!(host = %host_id, pid = h.pid, "adopted the standby host");
            return Ok(h);
        }
        self.spawner.spawn(host_id, engine).await
    }

    /// Serves one host until its process exits; returns how it ended.
    ///
    /// What the host sends unasked is screened here ([`guard`]): a log line or gateway call
    /// must name a worker of this slot and be within its worker's rate. Gateway calls wait for
    /// a free place (`HOST_GATEWAY_CALLS_IN_FLIGHT`) and for room in the pool's bounded event
    /// channel; while they wait this host's frames stay in its ring, so a flooding host fills
    /// its own ring and blocks itself, not the daemon.
    async fn serve_host(
        &self,
        slot: &Arc<Slot>,
        handle: &Arc<HostHandle>,
        spawned: &mut spawn::SpawnedHost,
    ) -> ExitStatus {
        let mut stats = tokio::time::interval(self.config.stats_interval);
        stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                status = spawned.exit.wait() => return status,
                _ = handle.kill.notified() => spawned.exit.kill(),
                _ = slot.closed.cancelled() => return stop_host(spawned).await,
                frame = spawned.frames.recv() => match frame {
                    Some(Message::ProcessResult(r)) => {
                        if !handle.late_result(&r) {
                            slot.violations.add();
                            self.guard.violation(&handle.host_id, handle.pid, &format!(
                                "a result for message {} of worker '{}', which is not in flight there",
                                r.msg_id, truncated(&r.worker_id)));
                        }
                    }
                    Some(Message::Stats(s)) => slot.rss.store(s.rss_bytes, Ordering::Relaxed),
                    Some(Message::Pong { .. }) | Some(Message::Ready(_)) => {}
                    Some(Message::Log(log)) => self.screen_log(slot, handle, &log),
                    Some(Message::GatewayCall(call)) => {
                        let permit = tokio::select! {
                            p = handle.gateway_slots.clone().acquire_owned() => match p {
                                Ok(p) => p,
                                Err(_) => continue,
                            },
                            status = spawned.exit.wait() => return status,
                            _ = handle.kill.notified() => { spawned.exit.kill(); return spawned.exit.wait().await; }
                            _ = slot.closed.cancelled() => return stop_host(spawned).await,
                        };
                        if let Some(ev) = self.screen_call(slot, handle, call, permit) {
                            tokio::select! {
                                sent = self.notify.send(ev) => if sent.is_err() {
                                    tracing::debug!(host = %handle.host_id, "the runtime is gone; gateway call dropped");
                                },
                                status = spawned.exit.wait() => return status,
                                _ = handle.kill.notified() => { spawned.exit.kill(); return spawned.exit.wait().await; }
                                _ = slot.closed.cancelled() => return stop_host(spawned).await,
                            }
                        }
                    }
                    Some(other) => {
                        tracing::debug!(host = %handle.host_id, kind = other.kind(), "unexpected frame from host; ignored");
                    }
                    None => {
                        // The reader thread ended: the ring is closed. A host that broke the
                        // protocol may go on running: end it, and say why.
                        if let Some(LinkError::HostMisbehaved { reason }) = spawned.link.dead_reason() {
                            tracing::error!(host = %handle.host_id, pid = handle.pid, "host broke the protocol ({reason}); killing it");
                            lock(&handle.violation).get_or_insert(reason);
                            spawned.exit.kill();
                        }
                        return spawned.exit.wait().await;
                    }
                },
                _ = stats.tick() => {
                    // Skipped when the ring is full: a sample is not worth waiting for.
                    let _ = spawned.link.try_send(&Message::StatsRequest { request_id: next_request_id() });
                }
            }
        }
    }

    /// Logs a plugin's line if it names a worker of this host and is within its rate.
    fn screen_log(&self, slot: &Arc<Slot>, handle: &Arc<HostHandle>, log: &Log) {
        if !slot.carries(&log.worker_id) {
            slot.violations.add();
            self.guard.violation(
                &handle.host_id,
                handle.pid,
                &format!("a log line of worker '{}'", truncated(&log.worker_id)),
            );
            return;
        }
        if self.guard.allow(&log.worker_id, Rated::LogLine) {
            guard::emit_log(&handle.host_id, log);
        }
    }

    /// A gateway call the runtime should serve, or `None` when it was refused here (then an
    /// error reply is on its way to the plugin, holding `permit` until it is sent).
    fn screen_call(
        &self,
        slot: &Arc<Slot>,
        handle: &Arc<HostHandle>,
        call: GatewayCall,
        permit: OwnedSemaphorePermit,
    ) -> Option<PoolEvent> {
        let refusal = if !slot.carries(&call.worker_id) {
            slot.violations.add();
            let what = format!("a gateway call of worker '{}'", truncated(&call.worker_id));
            self.guard.violation(&handle.host_id, handle.pid, &what);
            format!(
                "refused: worker '{}' is not on this host",
                truncated(&call.worker_id)
            )
        } else if !self.guard.allow(&call.worker_id, Rated::GatewayCall) {
            format!(
                "refused: over WORKER_GATEWAY_CALLS_PER_SECOND ({} per second); retry later",
                self.config.limits.gateway_calls_per_second
            )
        } else {
            return Some(PoolEvent::GatewayCall {
                host: handle.clone(),
                call,
                permit,
            });
        };
        let host = handle.clone();
        let reply = crate::gateway::refusal(call.call_id, &refusal);
        tokio::spawn(async move {
            host.reply(reply).await;
            drop(permit);
        });
        None
    }

    /// Counts the death against its workers; returns the quarantines to announce.
    fn count_crashes(&self, slot: &Arc<Slot>, report: &DeathReport) -> Vec<PoolEvent> {
        let mut quarantined = Vec::new();
        let now = Instant::now();
        let window = self.config.crash_loop_window;
        for worker in report.charged_workers() {
            let count = {
                let mut times = lock(&self.crash_times);
                let q = times.entry(worker.clone()).or_default();
                q.push_back(now);
                while q.front().is_some_and(|t| now.duration_since(*t) > window) {
                    q.pop_front();
                }
                q.len()
            };
            if count >= self.config.crash_loop_count
                && lock(&slot.workers).remove(&worker).is_some()
            {
                lock(&self.placement).remove(&worker);
                lock(&self.crash_times).remove(&worker);
                let reason = format!(
                    "worker crashed its host {count} times within {window:?}; quarantined ({})",
                    report.cause()
                );
                tracing::error!(worker = %worker, "{reason}");
                quarantined.push(PoolEvent::Quarantined {
                    worker_id: worker,
                    reason,
                });
            }
        }
        quarantined
    }
}
