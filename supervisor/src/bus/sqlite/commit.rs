//! The group commit: one batch's publishes, settles and completions (and, with fsync, the
//! writes that join its window, `join.rs`) in one transaction with one fsync, then the
//! answers, the watchers and the new events' place in line.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::super::BusError;
use super::flow::hand_out_early;
use super::join::Join;
use super::overflow::route_overflow;
use super::store::{WriteBatch, WriteResult};
use super::writer::{COUNT_GRACE, MAX_DELETE, Settle, Writer};
use super::{Append, Cmd, Complete, Durability, RoutedAppend};

impl Writer {
    /// Phase 1: appends, settles and completions in one transaction, then the answers. With
    /// fsync, when events of this batch went to their consumers before the COMMIT
    /// (`hand_out_early`) and `join` is given (a lone write, see `Thread::run`), the
    /// transaction stays open up to [`SqliteBusOptions::join_window`] for the writes that
    /// arrive meanwhile: it is committed as soon as every one of those events was completed
    /// or settled (most often: one commit per event of a quick plugin instead of two), or
    /// when the window ends.
    pub(super) fn commit_writes(
        &mut self,
        writes: Writes,
        touched: &mut HashSet<String>,
        join: Option<&mut Join<'_>>,
    ) {
        let mut first = self.prepare(writes, true);
        let queued = |parts: &[Part]| -> i64 {
            parts
                .iter()
                .flat_map(|p| p.appends.iter())
                .map(|a| a.0.len() as i64)
                .sum()
        };
        if let Err(e) = self.store.begin(first.stores()) {
            self.fail(&e, vec![first], queued);
            return;
        }
        // With an fsync to wait for, consumers get the new events before it (see
        // `hand_out_early`); the answers and watchers still wait for the commit.
        let early_on = self.opts.durability == Durability::Fsync;
        let mut behind: HashSet<String> = HashSet::new();
        if let Err(e) = self.write_part(&mut first, early_on, &mut behind) {
            self.store.rollback();
            self.fail(&e, vec![first], queued);
            return;
        }
        let mut expecting: HashSet<u64> = first.early.clone();
        let mut weight = first.weight();
        let mut parts = vec![first];
        let window = self.opts.join_window;
        let mut failed = None;
        if let Some(join) = join
            && early_on
            && !window.is_zero()
            && !expecting.is_empty()
        {
            let deadline = Instant::now() + window;
            let max = self.opts.max_batch_events.max(1);
            while !expecting.is_empty() && weight < max {
                let cmds = join.next(deadline, max - weight);
                if cmds.is_empty() {
                    break;
                }
                let mut writes = Writes::default();
                for c in cmds {
                    let rest = writes.take(c);
                    debug_assert!(rest.is_none(), "a join window takes writes only");
                }
                let settled = writes.settles.iter().map(|s| s.0);
                for seq in settled.chain(writes.completes.iter().map(|c| c.seq)) {
                    expecting.remove(&seq);
                }
                let mut part = self.prepare(writes, false);
                weight += part.weight();
                // Its own early hand-outs are not waited for: under a stream of publishes
                // that would hold every commit for the whole window.
                let written = self.write_part(&mut part, early_on, &mut behind);
                parts.push(part);
                if let Err(e) = written {
                    failed = Some(e);
                    break;
                }
            }
            let joined: usize = parts[1..]
                .iter()
                .map(|p| p.appends.len() + p.settles.len() + p.completes.len())
                .sum();
            self.shared.metrics.add_joined(joined as u64);
        }
        let result = match failed {
            Some(e) => {
                self.store.rollback();
                Err(e)
            }
            None => self.store.finish(),
        };
        if let Err(e) = result {
            self.fail(&e, parts, queued);
            return;
        }
        self.shared.metrics.add_queued(-queued(&parts));
        self.shared.metrics.add_commit();
        for part in parts {
            self.answer(part, touched);
        }
    }

    /// Everything a group commit needs of some writes (one part of it: the first batch, or
    /// what joined during its window).
    fn prepare(&mut self, writes: Writes, with_trims: bool) -> Part {
        let Writes {
            appends,
            settles,
            completes,
        } = writes;
        let appends = route_overflow(self, appends);
        // Trims only with the first part: the rows of the others (unknown to `retained` until
        // the commit) are trimmed by the next commit.
        let trims = if with_trims {
            self.trims(&appends, &settles, &completes)
        } else {
            Vec::new()
        };
        let appends_ended: Vec<Vec<bool>> = appends
            .iter()
            .map(|(events, _, _)| events.iter().map(|(t, _, _)| self.ended(t)).collect())
            .collect();
        let completes_ended: Vec<bool> = completes
            .iter()
            .map(|c| {
                c.reply_event
                    .as_ref()
                    .is_some_and(|(t, _, _)| self.ended(t))
            })
            .collect();
        let due = self.due_counts(&settles, &completes);
        Part {
            appends,
            appends_ended,
            settles,
            completes,
            completes_ended,
            due,
            trims,
            done: None,
            early: HashSet::new(),
        }
    }

    /// Runs one part's statements in the open transaction; with `early_on`, then hands its
    /// new events to their consumers (`behind`: topics on which an event of an earlier part
    /// stayed behind, which later ones must not overtake).
    fn write_part(
        &mut self,
        part: &mut Part,
        early_on: bool,
        behind: &mut HashSet<String>,
    ) -> Result<(), BusError> {
        let batch = part.batch();
        let done = self.store.write(&batch)?;
        drop(batch);
        if early_on {
            part.early = hand_out_early(
                &mut self.topics,
                &mut self.deferred,
                &mut self.handed,
                &part.appends,
                &part.appends_ended,
                &done.appended,
                behind,
            );
        }
        part.done = Some(done);
        Ok(())
    }

    /// A group commit failed: everyone in it gets the error, nothing of it is stored.
    fn fail(&mut self, e: &BusError, parts: Vec<Part>, queued: impl Fn(&[Part]) -> i64) {
        self.shared.metrics.add_queued(-queued(&parts));
        tracing::error!(error = %e, "bus: a group commit failed; its publishes, settles and completions are refused");
        for part in parts {
            for seq in &part.early {
                self.handed.remove(seq);
            }
            self.deferred.extend(part.due);
            refuse(e, part.appends, part.settles, part.completes);
        }
    }

    /// After the COMMIT held: one part's answers, watchers and new events.
    fn answer(&mut self, part: Part, touched: &mut HashSet<String>) {
        let Some(done) = part.done else {
            return;
        };
        let early = part.early;
        for ((topic, _), (n, max)) in part.trims.into_iter().zip(done.trimmed) {
            self.evicted_rows(&topic, n, max);
        }
        for (((events, reply, _permit), seqs), ended) in part
            .appends
            .into_iter()
            .zip(done.appended)
            .zip(part.appends_ended)
        {
            // Counters first, so that whoever sees the answer sees them too.
            for ((topic, _, _), e) in events.iter().zip(&ended) {
                self.count_stored(topic, *e);
            }
            let _ = reply.send(Ok(seqs.clone()));
            for (((topic, event, blob), seq), e) in events.into_iter().zip(seqs).zip(ended) {
                let handed_out = early.contains(&seq);
                self.published(topic, event, blob, seq, e, handed_out, touched);
            }
        }
        for ((seq, outcome, reply), topic) in part.settles.into_iter().zip(done.settled) {
            if let Some(topic) = topic {
                self.settled(seq, &topic, &outcome);
            }
            let _ = reply.send(Ok(()));
        }
        let completed = part.completes.into_iter().zip(done.completed);
        for ((c, (topic, reply_seq)), e) in completed.zip(part.completes_ended) {
            if let Some(topic) = topic {
                self.settled(c.seq, &topic, &c.outcome);
            }
            if let (Some(seq), Some((rtopic, event, blob))) = (reply_seq, c.reply_event) {
                self.count_stored(&rtopic, e);
                self.published(rtopic, event, blob, seq, e, false, touched);
            }
            let _ = c.answer.send(Ok(()));
        }
    }

    /// Topics that will be over their replay window once this commit is in, with how many of
    /// their oldest ended rows to delete: no more than the topic has ended rows stored. (The
    /// trim's query walks the topic's rows oldest first to find ended ones; a topic whose
    /// rows are all open — a backlog beyond the window — would otherwise be walked in full by
    /// every commit that appends to it, to delete nothing.)
    fn trims(
        &self,
        appends: &[RoutedAppend],
        settles: &[Settle],
        completes: &[Complete],
    ) -> Vec<(String, u64)> {
        let window = self.window_events();
        let mut adding: HashMap<&str, u64> = HashMap::new();
        let appended = appends.iter().flat_map(|(events, _, _)| events.iter());
        for (topic, _, _) in appended {
            *adding.entry(topic.as_str()).or_default() += 1;
        }
        for (topic, _, _) in completes.iter().filter_map(|c| c.reply_event.as_ref()) {
            *adding.entry(topic.as_str()).or_default() += 1;
        }
        // Rows of the topic that this commit ends: its events stored already ended, and the
        // inputs it settles (the trim runs last in the transaction, so it may delete them).
        let mut ending: HashMap<&str, u64> = HashMap::new();
        let stored = appends
            .iter()
            .flat_map(|(events, _, _)| events.iter().map(|(t, _, _)| t))
            .chain(
                completes
                    .iter()
                    .filter_map(|c| c.reply_event.as_ref().map(|r| &r.0)),
            );
        for topic in stored.filter(|t| self.ended(t)) {
            *ending.entry(topic.as_str()).or_default() += 1;
        }
        let inputs = settles
            .iter()
            .map(|s| s.0)
            .chain(completes.iter().map(|c| c.seq));
        for topic in inputs.filter_map(|seq| self.handed.get(&seq)) {
            *ending.entry(topic.as_str()).or_default() += 1;
        }
        adding
            .into_iter()
            .filter_map(|(topic, n)| {
                let retained = self.retained.get(topic).copied().unwrap_or(0);
                let open = self.topics.get(topic).map_or(0, |t| t.stored);
                let ended = retained.saturating_sub(open) + ending.get(topic).copied().unwrap_or(0);
                let over = (retained + n).saturating_sub(window);
                let trim = over.min(ended).min(MAX_DELETE);
                (trim > 0).then(|| (topic.to_string(), trim))
            })
            .collect()
    }

    /// Whether an event published on `topic` now is stored already ended: nobody consumes or
    /// holds the topic, so it is kept only for the replay window and counted as dropped (no
    /// second statement to drop it).
    fn ended(&self, topic: &str) -> bool {
        self.droppable(topic)
            && self
                .topics
                .get(topic)
                .is_none_or(|t| t.consumers.is_empty())
    }

    /// The delivery counts to store with this commit: those older than [`COUNT_GRACE`]. The
    /// counts of events this commit settles are forgotten (moot once settled).
    fn due_counts(&mut self, settles: &[Settle], completes: &[Complete]) -> Vec<(u64, Instant)> {
        let ending: HashSet<u64> = settles
            .iter()
            .map(|s| s.0)
            .chain(completes.iter().map(|c| c.seq))
            .collect();
        self.deferred.retain(|(seq, _)| !ending.contains(seq));
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deferred)
            .into_iter()
            .partition(|(_, at)| at.elapsed() >= COUNT_GRACE);
        self.deferred = waiting;
        due
    }

    /// Counts one stored event of `topic` (ended: as dropped).
    fn count_stored(&self, topic: &str, ended: bool) {
        let metrics = &self.shared.metrics;
        metrics.add_published(topic, 1);
        if ended {
            metrics.add_dropped(topic, 1);
        } else {
            metrics.add_stored(1);
        }
    }

    /// The replay window in events (0 when either retention setting is 0).
    fn window_events(&self) -> u64 {
        if self.opts.retention.is_zero() {
            0
        } else {
            self.opts.retention_events
        }
    }
}

/// Answers everyone of a group commit that failed with its error.
fn refuse(
    e: &BusError,
    appends: Vec<RoutedAppend>,
    settles: Vec<Settle>,
    completes: Vec<Complete>,
) {
    let err = || match e {
        BusError::Store { step, source } => BusError::Store {
            step,
            source: source.clone(),
        },
        _ => BusError::Closed,
    };
    for (_, reply, _) in appends {
        let _ = reply.send(Err(err()));
    }
    for (_, _, reply) in settles {
        let _ = reply.send(Err(err()));
    }
    for c in completes {
        let _ = c.answer.send(Err(err()));
    }
}

/// The writes of a batch, by kind: what one group commit appends, settles and completes.
#[derive(Default)]
pub(super) struct Writes {
    pub appends: Vec<Append>,
    pub settles: Vec<Settle>,
    pub completes: Vec<Complete>,
}

impl Writes {
    /// Keeps `cmd` if it is a write; gives back any other command.
    pub fn take(&mut self, cmd: Cmd) -> Option<Cmd> {
        match cmd {
            Cmd::Append {
                topic,
                events,
                reply,
                _permit,
            } => self.appends.push((topic, events, reply, _permit)),
            Cmd::Settle {
                seq,
                outcome,
                reply,
            } => self.settles.push((seq, outcome, reply)),
            Cmd::Complete(c) => self.completes.push(*c),
            other => return Some(other),
        }
        None
    }

    pub fn is_empty(&self) -> bool {
        self.appends.is_empty() && self.settles.is_empty() && self.completes.is_empty()
    }
}

/// One part of a group commit: the first batch, or writes that joined its window.
struct Part {
    appends: Vec<RoutedAppend>,
    appends_ended: Vec<Vec<bool>>,
    settles: Vec<Settle>,
    completes: Vec<Complete>,
    completes_ended: Vec<bool>,
    /// Delivery counts stored with it (put back in line if the commit fails).
    due: Vec<(u64, Instant)>,
    trims: Vec<(String, u64)>,
    /// What its statements did (set once they ran).
    done: Option<WriteResult>,
    /// Its events handed out before the COMMIT.
    early: HashSet<u64>,
}

impl Part {
    fn batch(&self) -> WriteBatch<'_> {
        WriteBatch {
            appends: self
                .appends
                .iter()
                .zip(&self.appends_ended)
                .map(|((events, _, _), ended)| {
                    events
                        .iter()
                        .zip(ended)
                        .map(|((t, _, blob), e)| (t.as_str(), blob.as_slice(), *e))
                        .collect()
                })
                .collect(),
            settles: self.settles.iter().map(|s| s.0).collect(),
            completes: self
                .completes
                .iter()
                .zip(&self.completes_ended)
                .map(|(c, e)| {
                    let reply = c.reply_event.as_ref();
                    (
                        c.seq,
                        reply.map(|(t, _, blob)| (t.as_str(), blob.as_slice(), *e)),
                    )
                })
                .collect(),
            delivered: self.due.iter().map(|(s, _)| *s).collect(),
            trims: self.trims.iter().map(|(t, n)| (t.as_str(), *n)).collect(),
        }
    }

    fn stores(&self) -> bool {
        !self.appends.is_empty() || self.completes.iter().any(|c| c.reply_event.is_some())
    }

    /// Events and commands in it, as the batch limit counts them.
    fn weight(&self) -> usize {
        let events: usize = self.appends.iter().map(|a| a.0.len().max(1)).sum();
        events + self.settles.len() + self.completes.len()
    }
}
