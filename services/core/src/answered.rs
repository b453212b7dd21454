//! What is already answered, so a worker can skip work nobody waits for any more: a member
//! query whose result is out (reconstructed, or answered by a faster copy), and a parity
//! query whose members are all answered. This is the cancellation of the paper's serving
//! system (clipper-parm cancels a queued original once it is reconstructed and drops a
//! queued parity once its originals are back); here a queue is a Kafka partition's
//! backlog, so skipping a record costs one read.
//!
//! Pure state, fed from `PREFIX.results` by the worker loop (`parm_worker`); entries are forgotten after
//! `keep_ms`, which bounds memory.

use crate::recent::Recent;
use std::collections::HashMap;

/// Query ids and groups seen on the results topic recently: what a worker may skip.
#[derive(Debug)]
pub struct Answered {
    keep_ms: u64,
    /// Query id → its group id.
    queries: Recent<String, String>,
    /// Distinct answered query ids per group.
    groups: HashMap<String, Vec<String>>,
}

impl Answered {
    pub fn new(keep_ms: u64) -> Self {
        Self { keep_ms, queries: Recent::default(), groups: HashMap::new() }
    }

    /// A result for `query_id` of `group_id` was seen at `now` (ms).
    pub fn record(&mut self, query_id: &str, group_id: &str, now: u64) {
        let groups = &mut self.groups;
        self.queries.forget_before(now.saturating_sub(self.keep_ms), |q, g| {
            if let Some(v) = groups.get_mut(&g) {
                v.retain(|x| *x != q);
                if v.is_empty() {
                    groups.remove(&g);
                }
            }
        });
        if self.queries.insert(query_id.to_string(), group_id.to_string(), now) {
            self.groups.entry(group_id.to_string()).or_default().push(query_id.to_string());
        } // else a duplicate result
    }

    pub fn query(&self, query_id: &str) -> bool {
        self.queries.contains_key(query_id)
    }

    /// Whether `members` distinct queries of the group are answered.
    pub fn group(&self, group_id: &str, members: u32) -> bool {
        self.groups.get(group_id).is_some_and(|q| q.len() >= members as usize)
    }

    pub fn len(&self) -> usize {
        self.queries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_whole_groups_are_answered_and_forgotten() {
        let mut a = Answered::new(1000);
        a.record("q1", "g", 0);
        assert!(a.query("q1") && !a.query("q2"));
        assert!(!a.group("g", 2), "one of two members");
        a.record("q1", "g", 1); // a duplicate result does not count twice
        assert!(!a.group("g", 2));
        a.record("q2", "g", 2);
        assert!(a.group("g", 2));
        a.record("q3", "h", 1500);
        assert!(!a.query("q1") && !a.group("g", 1), "forgotten after keep_ms");
        assert_eq!(a.len(), 1);
    }
}
