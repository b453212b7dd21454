//! The decoder's memory of the answers it gave, so that no query is answered twice.
//!
//! The join remembers a finished group only until its last hard deadline plus the late
//! linger, and forgets everything when partitions move or a service restarts. A replayed
//! input (a worker or encoder that crashed before committing, a decoder that took over a
//! partition) can then bring a query back after its answer went out. [`Answers`] keeps
//! every answer given for `keep_ms`, fed by the decoder's own results and, when
//! partitions are assigned, by the answers read back from the results topic (the
//! changelog of answers, as Kafka Streams restores a state store).
//!
//! A query is named by its id and the client's `sent_at_ms`: a replay carries both
//! unchanged, while a client that reuses an id for a new query stamps a new time.
//! Pure state, time as an argument.

use crate::recent::Recent;

/// Answers given within the last `keep_ms`.
#[derive(Debug)]
pub struct Answers {
    keep_ms: u64,
    /// By (query id, sent at ms).
    given: Recent<(String, i64), ()>,
}

impl Answers {
    pub fn new(keep_ms: u64) -> Self {
        Self { keep_ms, given: Recent::default() }
    }

    /// Records an answer for `query_id` sent at `sent_at_ms`; false if it was answered
    /// already (within `keep_ms`), and then the answer must not go out again.
    pub fn record(&mut self, query_id: &str, sent_at_ms: i64, now: u64) -> bool {
        self.given.forget_before(now.saturating_sub(self.keep_ms), |_, _| {});
        self.given.insert((query_id.to_string(), sent_at_ms), (), now)
    }

    /// Whether the query was answered within `keep_ms`.
    pub fn contains(&self, query_id: &str, sent_at_ms: i64) -> bool {
        // A lookup by borrowed parts would need a custom key type; ids are short.
        self.given.contains_key(&(query_id.to_string(), sent_at_ms))
    }

    pub fn len(&self) -> usize {
        self.given.len()
    }

    pub fn is_empty(&self) -> bool {
        self.given.is_empty()
    }

    /// Forgets everything (the decoder's state is rebuilt from the results topic).
    pub fn clear(&mut self) {
        self.given.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn a_second_answer_for_the_same_query_is_refused_until_it_is_forgotten() {
        let mut a = Answers::new(1000);
        assert!(a.record("q1", 5, 100));
        assert!(!a.record("q1", 5, 200), "a replayed answer");
        assert!(a.record("q1", 6, 200), "the same id sent again later is a new query");
        assert!(a.contains("q1", 5));
        assert!(a.record("q2", 5, 1099));
        // q1@5 was recorded at 100: forgotten once 1000 ms have passed.
        assert!(a.record("q1", 5, 1101));
        assert_eq!(a.len(), 3);
        a.clear();
        assert!(a.is_empty());
    }

    proptest! {
        /// Against a model: an answer is refused exactly when the same query was recorded
        /// less than keep_ms before, and memory holds only what is within keep_ms.
        #[test]
        fn refuses_exactly_the_answers_given_within_the_window(steps in proptest::collection::vec((0u8..6, 0u64..400), 1..200)) {
            let keep = 500;
            let mut a = Answers::new(keep);
            let mut model: HashMap<u8, u64> = HashMap::new();
            let mut now = 0u64;
            for (q, dt) in steps {
                now += dt;
                let fresh = model.get(&q).is_none_or(|at| *at < now.saturating_sub(keep));
                prop_assert_eq!(a.record(&format!("q{q}"), 1, now), fresh);
                if fresh {
                    model.insert(q, now);
                }
                prop_assert!(a.len() <= model.values().filter(|at| **at >= now.saturating_sub(keep)).count());
            }
        }
    }
}
