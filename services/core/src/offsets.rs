//! Which input offsets are safe to commit.
//!
//! A service may commit an input partition only up to the oldest message that is still
//! needed: a message is *held* while the work it started (an open group, an unsent batch)
//! is unfinished. The committable offset of a partition is the oldest held offset, or one
//! past the newest observed offset when nothing is held. A crash then replays exactly the
//! unfinished work.

use std::collections::{BTreeMap, HashMap};

/// Where an input message came from: a topic (by the service's own index), partition, offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    pub topic: u8,
    pub partition: i32,
    pub offset: i64,
}

/// One partition: the next offset after the highest seen, and the offsets still held
/// (with how many holders each) below which nothing may be committed.
#[derive(Debug, Default)]
struct PartitionState {
    next: i64,
    held: BTreeMap<i64, u32>,
}

/// Tracks observed and held offsets per (topic, partition).
#[derive(Debug, Default)]
pub struct OffsetTracker {
    parts: HashMap<(u8, i32), PartitionState>,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that a message was read (whether or not it is held).
    pub fn observe(&mut self, o: Origin) {
        let st = self.parts.entry((o.topic, o.partition)).or_default();
        st.next = st.next.max(o.offset + 1);
    }

    /// Marks a message as still needed; it must be released once.
    pub fn hold(&mut self, o: Origin) {
        self.observe(o);
        let st = self.parts.entry((o.topic, o.partition)).or_default();
        *st.held.entry(o.offset).or_insert(0) += 1;
    }

    /// Releases one hold on a message.
    pub fn release(&mut self, o: Origin) {
        if let Some(st) = self.parts.get_mut(&(o.topic, o.partition)) {
            if let Some(n) = st.held.get_mut(&o.offset) {
                *n -= 1;
                if *n == 0 {
                    st.held.remove(&o.offset);
                }
            }
        }
    }

    /// The offset to commit for a partition (the next one to read after a restart).
    pub fn committable(&self, topic: u8, partition: i32) -> Option<i64> {
        let st = self.parts.get(&(topic, partition))?;
        Some(st.held.keys().next().copied().unwrap_or(st.next).min(st.next))
    }

    /// One past the newest offset observed of a partition.
    pub fn observed_next(&self, topic: u8, partition: i32) -> Option<i64> {
        self.parts.get(&(topic, partition)).map(|st| st.next)
    }

    /// Committable offsets of every partition seen, as `(topic, partition, offset)`.
    pub fn all_committable(&self) -> Vec<(u8, i32, i64)> {
        let mut out: Vec<_> = self
            .parts
            .keys()
            .filter_map(|&(t, p)| self.committable(t, p).map(|o| (t, p, o)))
            .collect();
        out.sort_unstable();
        out
    }

    /// Forgets a partition, e.g. after it was revoked.
    pub fn forget(&mut self, topic: u8, partition: i32) {
        self.parts.remove(&(topic, partition));
    }

    /// Number of messages held across all partitions.
    pub fn held_count(&self) -> usize {
        self.parts.values().map(|s| s.held.values().map(|&n| n as usize).sum::<usize>()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(offset: i64) -> Origin {
        Origin { topic: 0, partition: 0, offset }
    }

    #[test]
    fn commits_up_to_the_oldest_held_message() {
        let mut t = OffsetTracker::new();
        assert_eq!(t.committable(0, 0), None);
        t.hold(o(3));
        t.hold(o(4));
        t.observe(o(5));
        assert_eq!(t.committable(0, 0), Some(3));
        t.release(o(4));
        assert_eq!(t.committable(0, 0), Some(3));
        t.release(o(3));
        assert_eq!(t.committable(0, 0), Some(6));
        assert_eq!(t.held_count(), 0);
    }
}
