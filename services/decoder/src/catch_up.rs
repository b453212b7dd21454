//! Whether a decoder that just got its partitions has replayed them up to where they
//! ended when it got them. Until then deadlines do not act: a decoder restarted after a
//! long pause would otherwise answer UNAVAILABLE for queries whose real predictions are
//! waiting further down its own input.

use std::collections::HashMap;
use std::time::Instant;

/// The replay targets of one assignment.
#[derive(Debug)]
pub struct CatchUp {
    /// `(topic, partition)` → offset to reach (the high watermark at assignment).
    targets: HashMap<(String, i32), i64>,
    give_up_at: Instant,
}

impl CatchUp {
    /// `targets` holds, per partition, the end offset to reach; partitions already there
    /// can be left out.
    pub fn new(targets: HashMap<(String, i32), i64>, give_up_at: Instant) -> Self {
        Self { targets, give_up_at }
    }

    /// Records that `offset` of a partition was read.
    pub fn observe(&mut self, topic: &str, partition: i32, offset: i64) {
        let key = (topic.to_string(), partition);
        if self.targets.get(&key).is_some_and(|end| offset + 1 >= *end) {
            self.targets.remove(&key);
        }
    }

    /// True once every partition reached its target, or time ran out.
    pub fn done(&self, now: Instant) -> bool {
        self.targets.is_empty() || now >= self.give_up_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn done_when_every_partition_reaches_its_end_or_time_is_up() {
        let now = Instant::now();
        let mut c = CatchUp::new(HashMap::from([(("a".into(), 0), 10), (("b".into(), 1), 3)]), now + Duration::from_secs(5));
        c.observe("a", 0, 9);
        assert!(!c.done(now));
        c.observe("b", 1, 2);
        assert!(c.done(now));
        let c = CatchUp::new(HashMap::from([(("a".into(), 0), 10)]), now + Duration::from_secs(5));
        assert!(c.done(now + Duration::from_secs(6)));
    }
}
