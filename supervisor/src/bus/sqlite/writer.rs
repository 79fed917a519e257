//! The writer: the [`Store`] and all routing state, behind one mutex. Its thread ([`Thread`])
//! runs every queued command in arrival order, a batch at a time; a caller that finds it idle
//! runs a lone write itself through the same [`Writer::process`] (`queue.rs`).
//!
//! Per batch: (1) the group commit (`commit.rs`: publishes, settles, completions,
//! replay-window trims in one transaction, one fsync; with fsync, events nothing waits before
//! go to their consumers just before it, [`super::flow::hand_out_early`], and one event at a
//! time keeps the transaction open for its completion, `join.rs`), then the answers and the
//! watchers; (2) the pump: flow control
//! hands pending events to consumers' bounded buffers ([`super::flow`]), their attempt counts
//! queued for the next group commit, and drops the events of topics nobody consumes or holds.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use wm_shared::CloudEvent;

use super::super::{BusError, Delivery, Outcome, Published, ReplayPage, is_dead_letter_topic};
use super::commit::Writes;
use super::flow::{Plan, place};
use super::join::{Join, cmd_weight, is_write};
use super::store::{Store, now_ms, store_err};
use super::{Cmd, Shared, SqliteBusOptions, lock};

/// A settle waiting for the next commit, with its caller's answer.
pub(super) type Settle = (u64, Outcome, oneshot::Sender<Result<(), BusError>>);

/// An undelivered event held in memory.
pub(super) struct Entry {
    pub event: CloudEvent,
    /// Its FlatBuffer as stored, handed to the consumer with it (see [`Delivery::encoded`]).
    pub encoded: Option<Arc<Vec<u8>>>,
    /// Attempts so far (what the next hand-out adds one to).
    pub deliveries: u32,
}

pub(super) struct Slot {
    pub id: u64,
    pub name: String,
    pub tx: mpsc::Sender<Delivery>,
    pub starved: Arc<AtomicBool>,
}

#[derive(Default)]
pub(super) struct Topic {
    /// Undelivered events in memory, by sequence number.
    pub pending: BTreeMap<u64, Entry>,
    /// Set while the store holds undelivered events of this topic that are not in `pending`:
    /// every stored, undelivered event with `seq >= spilled_from`.
    pub spilled_from: Option<u64>,
    pub consumers: Vec<Slot>,
    /// Round-robin position among `consumers`.
    pub next: usize,
    /// Open events of this topic in the store: pending, spilled, or delivered and not yet
    /// settled (what `max_topic_backlog` limits).
    pub stored: u64,
}

/// Most open (stored, unsettled) events a topic may hold for a lone write on it to be applied
/// on the caller's thread: one event at a time has one open (its completion settles it); a
/// backlog means concurrent publishers or workers on the topic, whose writes the writer
/// thread group-commits. Per topic: one stopped worker's backlog does not turn inline
/// commits off for every other topic.
pub(super) const INLINE_MAX_OPEN: u64 = 4;
/// How often ended events older than `TOPIC_RETENTION_SECONDS` are deleted.
const EXPIRE_EVERY: Duration = Duration::from_secs(1);
/// How long a delivery count waits before it is stored: most deliveries are completed within
/// it, and the count of a settled event need not be stored at all. Idle, counts are stored
/// after [`FLUSH_AFTER`].
pub(super) const COUNT_GRACE: Duration = Duration::from_millis(10);
/// How long delivery counts wait, with nothing else to do, before a transaction of their own.
const FLUSH_AFTER: Duration = Duration::from_millis(2);
/// Most rows one expiry or trim deletes (the rest go next time).
pub(super) const MAX_DELETE: u64 = 50_000;
/// Writes in the last batch from which the next batch waits `commit_delay` to gather more.
const COMMIT_SIBLINGS: usize = 2;
/// A writer that waited longer than this (or than the commit delay, if longer) for its next
/// write has gone idle: the company the last batch had is gone, so the next write does not
/// wait for more (a lone publish long after a burst is committed at once).
const IDLE_AFTER: Duration = Duration::from_millis(1);

pub(super) struct Writer {
    pub store: Store,
    pub topics: HashMap<String, Topic>,
    pub ready: bool,
    pub shared: Arc<Shared>,
    pub opts: SqliteBusOptions,
    /// Registered workers and their topics: these topics' events wait, never dropped.
    pub held: HashMap<String, String>,
    /// Rows per topic in the store (open, and ended inside the replay window).
    pub retained: HashMap<String, u64>,
    /// The highest sequence number per topic that left the replay window.
    pub evicted: HashMap<String, u64>,
    pub last_expiry: Instant,
    /// Deliveries handed out whose attempt count is not stored yet: it goes into the next
    /// group commit, or into a small transaction of its own after [`FLUSH_AFTER`] without one.
    pub deferred: Vec<(u64, Instant)>,
    /// Writes (publishes, settles, completions) in the last batch: the sign of concurrent
    /// writers that [`SqliteBusOptions::commit_delay`] waits for.
    pub last_batch: usize,
    /// Events out with their consumers (handed out, not settled or given back), by sequence
    /// number: their topic, which a settle or completion does not name (see
    /// [`Writer::is_quiet`]). Bounded by the consumers' buffers and calls in flight.
    pub handed: HashMap<u64, String>,
    /// When the last batch was committed: `last_batch` speaks for the writers only while
    /// they keep coming (see [`IDLE_AFTER`]).
    pub last_batch_at: Instant,
}

impl Writer {
    /// Loads what an earlier run left open, up to the memory window per topic.
    pub fn recover(&mut self) -> Result<(), rusqlite::Error> {
        let census = self.store.census()?;
        let stored: u64 = census.open.iter().map(|(_, n, _)| n).sum();
        self.shared
            .metrics
            .set_stored(i64::try_from(stored).unwrap_or(i64::MAX));
        self.retained = census.rows.into_iter().collect();
        self.evicted = census.evicted;
        for (t, n, oldest) in census.open {
            let topic = self.topics.entry(t.clone()).or_default();
            topic.spilled_from = Some(oldest);
            topic.stored = n;
            self.reload(&t)?;
        }
        if stored > 0 {
            tracing::info!(
                events = stored,
                "bus: unsettled events from an earlier run will be delivered again"
            );
        }
        Ok(())
    }

    /// Refills `pending` of a spilled topic from the store.
    fn reload(&mut self, name: &str) -> Result<(), rusqlite::Error> {
        let window = self.opts.memory_window.max(1);
        let Some(topic) = self.topics.get(name) else {
            return Ok(());
        };
        let Some(from) = topic.spilled_from else {
            return Ok(());
        };
        let room = window.saturating_sub(topic.pending.len());
        if room == 0 {
            return Ok(());
        }
        let rows = self.store.load_open(name, from, room)?;
        let topic = self.topics.entry(name.to_string()).or_default();
        topic.spilled_from = if rows.len() < room {
            None
        } else {
            rows.last().map(|(s, _, _)| *s + 1)
        };
        for (seq, blob, deliveries) in rows {
            match CloudEvent::from_flatbuffer(&blob) {
                Ok(event) => {
                    let encoded = Some(Arc::new(blob));
                    topic.pending.insert(
                        seq,
                        Entry {
                            event,
                            encoded,
                            deliveries,
                        },
                    );
                }
                // Only a damaged disk gets here; the row stays for an operator to inspect.
                Err(e) => {
                    tracing::error!(seq, topic = name, error = %e, "bus: stored event is corrupt and is skipped")
                }
            }
        }
        Ok(())
    }

    /// Nothing to do: store the delivery counts that waited [`FLUSH_AFTER`] for a commit,
    /// expire old events. (Younger counts are left: with lone writes committed inline, the
    /// writer thread times out while events are still being completed, and most of those
    /// counts are moot a few microseconds later.)
    fn idle(&mut self) {
        if self
            .deferred
            .first()
            .is_some_and(|(_, at)| at.elapsed() >= FLUSH_AFTER)
        {
            self.flush_deferred();
        }
        if self.last_expiry.elapsed() >= EXPIRE_EVERY {
            self.last_expiry = Instant::now();
            self.expire();
        }
    }

    fn flush_deferred(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        let seqs: Vec<u64> = self.deferred.iter().map(|(s, _)| *s).collect();
        match self.store.record(&seqs, &[], &[]) {
            Ok(_) => {
                self.deferred.clear();
                self.shared.metrics.add_commit();
            }
            Err(e) => {
                tracing::warn!(events = self.deferred.len(), error = %e, "bus: cannot store delivery counts; retried with the next commit");
            }
        }
    }

    /// How long the writer thread may sleep before [`Writer::idle`] has work: until the
    /// oldest deferred count is [`FLUSH_AFTER`] old, else [`EXPIRE_EVERY`].
    fn next_wait(&self) -> Duration {
        match self.deferred.first() {
            Some((_, at)) => FLUSH_AFTER
                .saturating_sub(at.elapsed())
                .max(Duration::from_micros(100)),
            None => EXPIRE_EVERY,
        }
    }

    /// Whether the bus was shut down (no command may be applied any more).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Whether the topics `cmd` writes to are quiet enough for it to be applied inline (see
    /// [`INLINE_MAX_OPEN`]): a publish's topic; a settle's or completion's input topic (and
    /// a completion's reply topic). A backlog elsewhere (a stopped worker's) does not matter.
    pub fn is_quiet(&self, cmd: &Cmd) -> bool {
        let quiet = |topic: &str| {
            self.topics
                .get(topic)
                .is_none_or(|t| t.stored <= INLINE_MAX_OPEN)
        };
        let input = |seq: &u64| self.handed.get(seq).is_none_or(|t| quiet(t));
        match cmd {
            Cmd::Append { topic, .. } => quiet(topic),
            Cmd::Settle { seq, .. } => input(seq),
            Cmd::Complete(c) => {
                input(&c.seq) && c.reply_event.as_ref().is_none_or(|(t, _, _)| quiet(t))
            }
            _ => true,
        }
    }

    /// Whether delivery counts wait for a commit.
    pub fn has_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// Applies one write on the caller's thread (the writer was idle; see `queue.rs`): the
    /// same `process` as a batch of one from the writer thread, without the expiry (bounded
    /// but up to tens of thousands of deletes: the writer thread's job, at its next wake).
    pub fn apply_inline(&mut self, cmd: Cmd) {
        self.last_batch = usize::from(is_write(&cmd));
        self.shared.metrics.add_inline_write();
        self.process(vec![cmd], false, None);
        self.last_batch_at = Instant::now();
    }

    /// Runs one batch; false once shut down. `expire`: delete what left the replay window
    /// first when it is time.
    fn process(&mut self, batch: Vec<Cmd>, expire: bool, join: Option<&mut Join<'_>>) -> bool {
        if expire && self.last_expiry.elapsed() >= EXPIRE_EVERY {
            self.last_expiry = Instant::now();
            self.expire();
        }
        let mut writes = Writes::default();
        let mut replays = Vec::new();
        let mut touched: HashSet<String> = HashSet::new();
        let mut shutdown = Vec::new();
        let mut pump_all = false;
        let mut given_back: Vec<Delivery> = Vec::new();
        let mut recount: Vec<(u64, u32)> = Vec::new();
        for cmd in batch {
            let Some(cmd) = writes.take(cmd) else {
                continue;
            };
            match cmd {
                // Taken into `writes` above.
                Cmd::Append { .. } | Cmd::Settle { .. } | Cmd::Complete(_) => {}
                Cmd::Replay {
                    topic,
                    after,
                    limit,
                    reply,
                } => replays.push((topic, after, limit, reply)),
                // A deleted worker's topic may have nobody left: let the pump decide.
                Cmd::Hold { worker, topic } => pump_all |= self.hold(worker, topic),
                Cmd::Subscribe {
                    topic,
                    name,
                    id,
                    tx,
                    starved,
                } => {
                    tracing::debug!(topic, consumer = name, "bus: consumer subscribed");
                    let slot = Slot {
                        id,
                        name,
                        tx,
                        starved,
                    };
                    let t = self.topics.entry(topic.clone()).or_default();
                    t.consumers.push(slot);
                    touched.insert(topic);
                }
                Cmd::Unsubscribe { topic, id, rx } => {
                    self.unsubscribe(&topic, id, rx, &mut recount);
                    touched.insert(topic);
                }
                Cmd::Pump { topic } => {
                    touched.insert(topic);
                }
                Cmd::Release { deliveries } => given_back.extend(deliveries),
                Cmd::Ready => {
                    self.ready = true;
                    pump_all = true;
                }
                Cmd::Shutdown { reply } => shutdown.push(reply),
                Cmd::Wake => {}
            }
        }

        if !recount.is_empty()
            && let Err(e) = self.store.set_deliveries(&recount)
        {
            tracing::warn!(error = %e, "bus: cannot store the attempt count of events given back");
        }
        if !given_back.is_empty() {
            self.release(given_back, &mut touched);
        }
        if !writes.is_empty() {
            self.commit_writes(writes, &mut touched, join);
        }
        for (topic, after, limit, reply) in replays {
            let _ = reply.send(self.replay(&topic, after, limit));
        }
        if pump_all {
            touched.extend(self.topics.keys().cloned());
        }
        if !touched.is_empty() {
            self.pump(touched);
        }
        if !shutdown.is_empty() {
            self.shutdown();
            for reply in shutdown {
                let _ = reply.send(());
            }
            return false;
        }
        true
    }

    /// Worker `worker` holds `topic` (`Some`), or no longer exists; true if a hold was lifted.
    fn hold(&mut self, worker: String, topic: Option<String>) -> bool {
        let lifted = match topic {
            Some(t) => {
                self.held.insert(worker, t);
                false
            }
            None => self.held.remove(&worker).is_some(),
        };
        tracing::debug!(held = self.held.len(), lifted, "bus: held topics changed");
        lifted
    }

    /// Consumer `id` leaves `topic`. What it had buffered but never returned goes back in
    /// line, not counted as an attempt (`recount` collects the counts to store).
    fn unsubscribe(
        &mut self,
        topic: &str,
        id: u64,
        mut rx: mpsc::Receiver<Delivery>,
        recount: &mut Vec<(u64, u32)>,
    ) {
        let t = self.topics.entry(topic.to_string()).or_default();
        if let Some(pos) = t.consumers.iter().position(|s| s.id == id) {
            let slot = t.consumers.remove(pos);
            tracing::debug!(topic, consumer = slot.name, "bus: consumer left");
        }
        // Permits into `rx` are only taken and used under the writer's lock (which whoever
        // runs this holds), so none is outstanding and this drains it all.
        rx.close();
        while let Ok(d) = rx.try_recv() {
            let deliveries = d.deliveries.saturating_sub(1);
            recount.push((d.seq, deliveries));
            let entry = Entry {
                event: d.event,
                encoded: d.encoded,
                deliveries,
            };
            self.handed.remove(&d.seq);
            t.pending.insert(d.seq, entry);
        }
    }

    /// Puts deliveries given back into line again (with the attempt count they carry), unless
    /// they were settled meanwhile.
    fn release(&mut self, deliveries: Vec<Delivery>, touched: &mut HashSet<String>) {
        let counts: Vec<(u64, u32)> = deliveries.iter().map(|d| (d.seq, d.deliveries)).collect();
        match self.store.set_deliveries(&counts) {
            Ok(open) => {
                for (d, open) in deliveries.into_iter().zip(open) {
                    self.handed.remove(&d.seq);
                    if open {
                        touched.insert(d.topic.clone());
                        self.topics.entry(d.topic).or_default().pending.insert(
                            d.seq,
                            Entry {
                                event: d.event,
                                encoded: d.encoded,
                                deliveries: d.deliveries,
                            },
                        );
                    }
                }
            }
            Err(e) => {
                tracing::error!(events = counts.len(), error = %e, "bus: cannot release events; they are delivered again after a restart")
            }
        }
    }

    fn replay(&mut self, topic: &str, after: u64, limit: usize) -> Result<ReplayPage, BusError> {
        let rows = self
            .store
            .replay(topic, after, limit)
            .map_err(store_err("read a topic's history"))?;
        let mut events = Vec::with_capacity(rows.len());
        for (seq, blob) in rows {
            match CloudEvent::from_flatbuffer(&blob) {
                Ok(event) => events.push(Arc::new(Published::new(seq, topic.to_string(), event))),
                Err(e) => {
                    tracing::error!(seq, topic, error = %e, "bus: stored event is corrupt and is not replayed")
                }
            }
        }
        Ok(ReplayPage {
            events,
            evicted_through: self.evicted.get(topic).copied().unwrap_or(0),
        })
    }

    /// After a commit: event `seq` of `topic` ended.
    pub(super) fn settled(&mut self, seq: u64, topic: &str, outcome: &Outcome) {
        self.shared.metrics.add_stored(-1);
        self.shared.metrics.add_settled(outcome.label());
        self.handed.remove(&seq);
        if let Some(t) = self.topics.get_mut(topic) {
            t.pending.remove(&seq);
            t.stored = t.stored.saturating_sub(1);
        }
        tracing::trace!(seq, topic, outcome = outcome.label(), "bus: event settled");
    }

    /// After a commit: `n` rows of `topic` up to `max` left the replay window.
    pub(super) fn evicted_rows(&mut self, topic: &str, n: u64, max: u64) {
        if let Some(r) = self.retained.get_mut(topic) {
            *r = r.saturating_sub(n);
        }
        if max > 0 {
            let e = self.evicted.entry(topic.to_string()).or_default();
            *e = (*e).max(max);
        }
    }

    /// After a commit: event `seq` was stored on `topic`; watchers see it, and it joins the
    /// topic's line (in memory if the window has room, else on disk) unless it was handed
    /// out before the commit (`handed_out`, see `flow::hand_out_early`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn published(
        &mut self,
        topic: String,
        event: CloudEvent,
        blob: Vec<u8>,
        seq: u64,
        ended: bool,
        handed_out: bool,
        touched: &mut HashSet<String>,
    ) {
        let window = self.opts.memory_window.max(1);
        *self.retained.entry(topic.clone()).or_default() += 1;
        let watcher = {
            let map = super::lock(&self.shared.watchers);
            map.get(&topic).cloned()
        };
        // An ended event is not kept in memory: the watchers get it without a copy.
        let (for_watchers, event) = if ended {
            (Some(event), None)
        } else {
            (watcher.as_ref().map(|_| event.clone()), Some(event))
        };
        if let (Some(w), Some(e)) = (&watcher, for_watchers) {
            let _ = w.send(Arc::new(Published::new(seq, topic.clone(), e)));
        }
        if let Some(w) = watcher
            && w.receiver_count() == 0
        {
            let mut map = super::lock(&self.shared.watchers);
            if map.get(&topic).is_some_and(|w| w.receiver_count() == 0) {
                map.remove(&topic);
            }
        }
        let Some(event) = event else {
            // Already settled as dropped: nothing to hand out.
            return;
        };
        let t = self.topics.entry(topic.clone()).or_default();
        t.stored += 1;
        if handed_out {
            return;
        }
        if t.spilled_from.is_none() {
            if t.pending.len() >= window {
                t.spilled_from = Some(seq);
            } else {
                t.pending.insert(
                    seq,
                    Entry {
                        event,
                        encoded: Some(Arc::new(blob)),
                        deliveries: 0,
                    },
                );
            }
        }
        touched.insert(topic);
    }

    /// Deletes ended events older than the replay window, and evicts the oldest dead letters
    /// of dead-letter topics over their limit.
    fn expire(&mut self) {
        let age = i64::try_from(self.opts.retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff = if self.opts.retention_events == 0 {
            i64::MAX
        } else {
            now_ms().saturating_sub(age)
        };
        match self.store.expire(cutoff, MAX_DELETE) {
            Ok(gone) => {
                for (topic, (n, max)) in gone {
                    self.evicted_rows(&topic, n, max);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "bus: cannot expire old events; retried in a second")
            }
        }
        super::overflow::evict_dead_letters(self);
    }

    /// Phase 2: hands pending events to consumers (their attempt counts queued for the next commit)
    /// and, once ready, drops the events of topics nobody consumes or holds.
    fn pump(&mut self, mut topics: HashSet<String>) {
        // Bounded rounds so that one huge backlog cannot starve the command queue.
        for _ in 0..16 {
            if topics.is_empty() {
                return;
            }
            let mut again = HashSet::new();
            for name in &topics {
                let needs_reload = self.topics.get(name).is_some_and(|t| {
                    t.spilled_from.is_some()
                        && t.pending.len() < self.opts.memory_window.max(1) / 2 + 1
                });
                if needs_reload && let Err(e) = self.reload(name) {
                    tracing::error!(topic = name, error = %e, "bus: cannot read stored events");
                }
            }
            let mut plans = Vec::new();
            for name in &topics {
                if let Some(plan) = self.plan(name) {
                    if plan.more {
                        again.insert(name.clone());
                    }
                    plans.push(plan);
                }
            }
            if plans.iter().all(Plan::is_empty) {
                return;
            }
            if let Err(e) = self.record(&mut plans) {
                tracing::error!(error = %e, "bus: cannot record deliveries; they are retried on the next event");
                return;
            }
            self.apply(plans);
            topics = again;
        }
        // Still more to do: come back after the queued commands.
        for name in topics {
            if let Some(slot) = self.topics.get(&name).and_then(|t| t.consumers.first()) {
                slot.starved.store(true, Ordering::Release);
            }
        }
    }

    /// Whether the events of `topic` may be dropped when nobody consumes it: only once ready,
    /// never for a topic a registered worker holds, never for a dead-letter topic.
    pub(super) fn droppable(&self, topic: &str) -> bool {
        self.ready && !is_dead_letter_topic(topic) && !self.held.values().any(|t| t == topic)
    }

    /// Picks consumers for pending events of topic `name` (without changing anything yet).
    fn plan(&mut self, name: &str) -> Option<Plan> {
        const MAX_PER_ROUND: usize = 4_096;
        let droppable = self.droppable(name);
        let t = self.topics.get_mut(name)?;
        t.consumers.retain(|s| !s.tx.is_closed());
        let mut plan = Plan {
            topic: name.to_string(),
            deliver: Vec::new(),
            drop: Vec::new(),
            drop_spilled_from: None,
            spilled_dropped: 0,
            more: false,
        };
        if t.consumers.is_empty() {
            if droppable {
                plan.drop = t.pending.keys().copied().collect();
                plan.drop_spilled_from = t.spilled_from;
            }
            return Some(plan);
        }
        // Room first, then as many keys: a backlog of thousands is not walked (and copied)
        // on every pump when the consumers have room for a few.
        let want = t.pending.len().min(MAX_PER_ROUND);
        let mut permits = Vec::new();
        while permits.len() < want {
            match place(t) {
                Some(permit) => permits.push(permit),
                None => break,
            }
        }
        plan.more = permits.len() == MAX_PER_ROUND && t.pending.len() > MAX_PER_ROUND;
        plan.deliver = t.pending.keys().copied().zip(permits).collect();
        if plan.deliver.len() == t.pending.len() && t.spilled_from.is_some() {
            plan.more = true;
        }
        Some(plan)
    }

    /// Counts the planned deliveries (deferred to the next group commit when there is
    /// nothing else to write) and settles the planned drops.
    fn record(&mut self, plans: &mut [Plan]) -> Result<(), rusqlite::Error> {
        let delivered: Vec<u64> = plans
            .iter()
            .flat_map(|p| p.deliver.iter().map(|(s, _)| *s))
            .collect();
        if plans
            .iter()
            .all(|p| p.drop.is_empty() && p.drop_spilled_from.is_none())
        {
            let now = Instant::now();
            self.deferred
                .extend(delivered.into_iter().map(|s| (s, now)));
            return Ok(());
        }
        let dropped: Vec<u64> = plans.iter().flat_map(|p| p.drop.iter().copied()).collect();
        let from: Vec<(&str, u64)> = plans
            .iter()
            .filter_map(|p| p.drop_spilled_from.map(|f| (p.topic.as_str(), f)))
            .collect();
        let counts = self.store.record(&delivered, &dropped, &from)?;
        let mut counts = counts.into_iter();
        for p in plans.iter_mut() {
            if p.drop_spilled_from.is_some() {
                p.spilled_dropped = counts.next().unwrap_or(0);
            }
        }
        self.shared.metrics.add_commit();
        Ok(())
    }

    /// After [`Writer::record`] committed: sends the deliveries, forgets the drops.
    fn apply(&mut self, plans: Vec<Plan>) {
        let metrics = &self.shared.metrics;
        for p in plans {
            let Some(t) = self.topics.get_mut(&p.topic) else {
                continue;
            };
            let mut redelivered = 0;
            for (seq, permit) in p.deliver {
                let Some(entry) = t.pending.remove(&seq) else {
                    continue;
                };
                let deliveries = entry.deliveries.saturating_add(1);
                if deliveries > 1 {
                    redelivered += 1;
                }
                self.handed.insert(seq, p.topic.clone());
                permit.send(Delivery {
                    seq,
                    topic: p.topic.clone(),
                    event: entry.event,
                    deliveries,
                    encoded: entry.encoded,
                });
            }
            metrics.add_redelivered(redelivered);
            let mut dropped = p.drop.len() as u64;
            for seq in &p.drop {
                t.pending.remove(seq);
            }
            if p.drop_spilled_from.is_some() {
                t.spilled_from = None;
                dropped += p.spilled_dropped;
            }
            if dropped > 0 {
                tracing::debug!(
                    topic = p.topic,
                    dropped,
                    "bus: events dropped, no worker consumes the topic"
                );
                metrics.add_stored(-(dropped as i64));
                metrics.add_dropped(&p.topic, dropped);
                t.stored = t.stored.saturating_sub(dropped);
            }
            if t.consumers.is_empty()
                && t.pending.is_empty()
                && t.spilled_from.is_none()
                && t.stored == 0
            {
                self.topics.remove(&p.topic);
            }
        }
    }

    fn shutdown(&mut self) {
        self.flush_deferred();
        self.shared.closed.store(true, Ordering::Release);
        super::lock(&self.shared.watchers).clear();
        // Dropping the senders ends every consumer's `recv`.
        self.topics.clear();
        self.handed.clear();
        self.store.close();
    }
}

/// The writer thread: takes queued commands a batch at a time and applies them under the
/// writer's lock (which a caller applying a lone write inline takes too, see `queue.rs`).
pub(super) struct Thread {
    pub state: Arc<Mutex<Writer>>,
    /// Commands sent and not yet applied: decremented here, under the lock, once applied.
    pub pending: Arc<AtomicUsize>,
    /// Set (under the lock) while this thread sleeps up to [`EXPIRE_EVERY`].
    pub parked_long: Arc<AtomicBool>,
}

impl Thread {
    pub fn run(self, rx: std::sync::mpsc::Receiver<Cmd>) {
        let (max, commit_delay) = {
            let w = lock(&self.state);
            (w.opts.max_batch_events.max(1), w.opts.commit_delay)
        };
        // Commands a join window took from the channel without applying them: they start the
        // next batch, ahead of anything still in the channel.
        let mut carry: VecDeque<Cmd> = VecDeque::new();
        loop {
            let first = match carry.pop_front() {
                Some(c) => c,
                None => {
                    let wait = {
                        let w = lock(&self.state);
                        let wait = w.next_wait();
                        self.parked_long
                            .store(wait >= EXPIRE_EVERY, Ordering::Release);
                        wait
                    };
                    match rx.recv_timeout(wait) {
                        Ok(c) => c,
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                            lock(&self.state).idle();
                            continue;
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            // Group commit under load: when the last batch had company (several writers at
            // once), let the next one gather for `commit_delay` before it commits, so one
            // fsync and one set of WAL pages serve more events. A lone publish or completion
            // (nothing else in flight) never waits, nor does the first write after the writer
            // went idle.
            let gather = {
                let w = lock(&self.state);
                !commit_delay.is_zero()
                    && w.last_batch >= COMMIT_SIBLINGS
                    && w.last_batch_at.elapsed() <= IDLE_AFTER.max(commit_delay)
                    && is_write(&first)
            };
            if gather {
                std::thread::sleep(commit_delay);
            }
            let mut weight = cmd_weight(&first);
            let mut batch = vec![first];
            while weight < max {
                match carry.pop_front().map_or_else(|| rx.try_recv().ok(), Some) {
                    Some(c) => {
                        weight += cmd_weight(&c);
                        batch.push(c);
                    }
                    None => break,
                }
            }
            let applied = batch.iter().filter(|c| !matches!(c, Cmd::Wake)).count();
            if applied == 0 {
                // Only woken to look at the timers again: no need to hold the lock that a
                // caller may want for a lone write right now.
                continue;
            }
            let mut w = lock(&self.state);
            // A join window only for one event at a time (a lone write of one event, after a
            // batch without company): with several writers at once the commit delay gathers
            // them instead, and a batch publish handed out early would hold its 202 for many
            // completions (docs/benchmarks.md, "Sixth pass").
            let written: usize = batch.iter().filter(|c| is_write(c)).map(cmd_weight).sum();
            let lone = w.last_batch < COMMIT_SIBLINGS && written < COMMIT_SIBLINGS;
            w.last_batch = batch.iter().filter(|c| is_write(c)).count();
            let mut join = Join::new(&rx, &mut carry);
            let go_on = w.process(batch, true, lone.then_some(&mut join));
            w.last_batch_at = Instant::now();
            // Under the lock: a caller that takes it next sees these as applied.
            self.pending
                .fetch_sub(applied + join.taken, Ordering::SeqCst);
            drop(w);
            if !go_on {
                break;
            }
        }
        // Whatever arrives after the shutdown is refused (once `rx` is dropped, sends fail).
        let w = lock(&self.state);
        let after = carry
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()));
        for cmd in after {
            refuse_closed(cmd, &w.shared.metrics);
        }
    }
}

/// Answers a command that arrived after the shutdown: the bus is closed.
fn refuse_closed(cmd: Cmd, metrics: &super::super::BusMetrics) {
    match cmd {
        Cmd::Append { reply, events, .. } => {
            metrics.add_queued(-(events.len() as i64));
            let _ = reply.send(Err(BusError::Closed));
        }
        Cmd::Settle { reply, .. } => {
            let _ = reply.send(Err(BusError::Closed));
        }
        Cmd::Complete(c) => {
            let _ = c.answer.send(Err(BusError::Closed));
        }
        Cmd::Replay { reply, .. } => {
            let _ = reply.send(Err(BusError::Closed));
        }
        Cmd::Shutdown { reply } => {
            let _ = reply.send(());
        }
        _ => {}
    }
}
