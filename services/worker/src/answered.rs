//! What is already answered, so a worker can skip work nobody waits for any more: a member
//! query whose result is out (reconstructed, or answered by a faster copy), and a parity
//! query whose members are all answered. This is the cancellation of the paper's serving
//! system (clipper-parm cancels a queued original once it is reconstructed and drops a
//! queued parity once its originals are back); here a queue is a Kafka partition's
//! backlog, so skipping a record costs one read.
//!
//! Pure state, fed from `PREFIX.results` by the worker loop; entries are forgotten after
//! `keep_ms`, which bounds memory.

use std::collections::{HashMap, VecDeque};

/// Query ids and groups seen on the results topic recently.
#[derive(Debug)]
pub struct Answered {
    keep_ms: u64,
    queries: HashMap<String, u64>,
    /// Distinct answered query ids per group.
    groups: HashMap<String, Vec<String>>,
    /// (seen at, query id, group id), oldest first, for forgetting.
    order: VecDeque<(u64, String, String)>,
}

impl Answered {
    pub fn new(keep_ms: u64) -> Self {
        Self { keep_ms, queries: HashMap::new(), groups: HashMap::new(), order: VecDeque::new() }
    }

    /// A result for `query_id` of `group_id` was seen at `now` (ms).
    pub fn record(&mut self, query_id: &str, group_id: &str, now: u64) {
        self.forget_before(now.saturating_sub(self.keep_ms));
        if self.queries.insert(query_id.to_string(), now).is_some() {
            return; // a duplicate result
        }
        self.groups.entry(group_id.to_string()).or_default().push(query_id.to_string());
        self.order.push_back((now, query_id.to_string(), group_id.to_string()));
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

    fn forget_before(&mut self, t: u64) {
        while self.order.front().is_some_and(|(at, _, _)| *at < t) {
            let Some((_, q, g)) = self.order.pop_front() else { break };
            self.queries.remove(&q);
            if let Some(v) = self.groups.get_mut(&g) {
                v.retain(|x| *x != q);
                if v.is_empty() {
                    self.groups.remove(&g);
                }
            }
        }
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
