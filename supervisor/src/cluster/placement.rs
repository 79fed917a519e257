//! Placement: which daemons run a worker.
//!
//! Every daemon computes the same answer without a coordinator: rendezvous (highest random
//! weight) hashing of the worker id over the live members (`<P>_MEMBERS` heartbeats). A
//! worker without `replicas` runs on every daemon; with `replicas: N` on the N members whose
//! `sha256(instance, worker id)` is highest. When a member leaves, only the workers it carried
//! move, each to the next member in its own order.

use std::sync::RwLock;
use wm_shared::sync::RwLocked as _;

use serde::Serialize;

use crate::registry::{Status, WorkerRecord};

/// Where a worker runs, as `GET /v1/workers/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementView {
    /// The `replicas` asked for (`null`: every daemon).
    pub replicas: Option<u32>,
    /// The daemons it is placed on (`workmanager@host:pid`); empty unless `RUNNING`.
    pub instances: Vec<String>,
}

/// This daemon's view of the live members.
#[derive(Debug)]
pub struct Placement {
    me: String,
    /// Sorted, always holding `me`.
    members: RwLock<Vec<String>>,
}

fn weight(instance: &str, worker: &str) -> [u8; 32] {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(instance.as_bytes());
    h.update([0]);
    h.update(worker.as_bytes());
    h.finalize().into()
}

/// The `replicas` members (all when `None`) a worker is placed on, highest weight first.
pub fn place(members: &[String], worker: &str, replicas: Option<u32>) -> Vec<String> {
    let mut ranked: Vec<(&String, [u8; 32])> =
        members.iter().map(|m| (m, weight(m, worker))).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let n = replicas.map_or(ranked.len(), |r| r as usize);
    ranked.into_iter().take(n).map(|(m, _)| m.clone()).collect()
}

impl Placement {
    /// A daemon alone (embedded mode, or a cluster member before it has read the members).
    pub fn alone(me: String) -> Placement {
        Placement {
            members: RwLock::new(vec![me.clone()]),
            me,
        }
    }

    /// This daemon's instance id.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Replaces the live members (this daemon is always one); true if they changed.
    pub fn set_members(&self, mut members: Vec<String>) -> bool {
        if !members.contains(&self.me) {
            members.push(self.me.clone());
        }
        members.sort();
        members.dedup();
        let mut cur = self.members.write_locked();
        if *cur == members {
            return false;
        }
        *cur = members;
        true
    }

    /// The live members.
    pub fn members(&self) -> Vec<String> {
        self.members.read_locked().clone()
    }

    /// Whether `w` should be loaded here when it is `RUNNING`.
    pub fn is_here(&self, w: &WorkerRecord) -> bool {
        w.replicas.is_none() || place(&self.members(), &w.id, w.replicas).contains(&self.me)
    }

    /// Where `w` runs.
    pub fn view(&self, w: &WorkerRecord) -> PlacementView {
        PlacementView {
            replicas: w.replicas,
            instances: if w.status == Status::Running {
                place(&self.members(), &w.id, w.replicas)
            } else {
                Vec::new()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("workmanager@h:{i}")).collect()
    }

    #[test]
    fn all_members_agree_and_replicas_limit_the_count() {
        let m = members(5);
        let mut shuffled = m.clone();
        shuffled.reverse();
        for w in ["a", "b", "c", "0b9e-uuid"] {
            let one = place(&m, w, Some(2));
            assert_eq!(one.len(), 2);
            assert_eq!(
                one,
                place(&shuffled, w, Some(2)),
                "order of members matters not"
            );
            assert_eq!(place(&m, w, None).len(), 5);
        }
        assert_eq!(
            place(&m, "a", Some(9)).len(),
            5,
            "more replicas than members: all"
        );
    }

    #[test]
    fn a_leaving_member_moves_only_its_workers() {
        let m = members(4);
        let workers: Vec<String> = (0..200).map(|i| format!("w{i}")).collect();
        let before: Vec<String> = workers
            .iter()
            .map(|w| place(&m, w, Some(1))[0].clone())
            .collect();
        let gone = m[1].clone();
        let rest: Vec<String> = m.iter().filter(|x| **x != gone).cloned().collect();
        let mut moved = 0;
        for (w, b) in workers.iter().zip(&before) {
            let after = place(&rest, w, Some(1))[0].clone();
            if *b == gone {
                moved += 1;
                assert_ne!(after, gone);
            } else {
                assert_eq!(after, *b, "worker {w} moved though its daemon stayed");
            }
        }
        // Spread: each of 4 members got some of 200 workers.
        assert!(moved > 10 && moved < 100, "moved {moved}");
    }
}
