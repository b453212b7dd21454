//! The encoder's side of coding: which queries form a group, and where each part goes.
//!
//! Queries are grouped per input partition, in offset order: a group closes when it has
//! `k` members or when its oldest member has waited `linger_ms`. A group's id is derived
//! from its input partition and its first and last offsets, so a replay of the same offsets
//! with the same timing rebuilds the same groups. A group closed early by the linger can
//! come out differently on replay (only for queries that were in flight); it then gets a
//! different id, so the decoder never mixes the parts of two different groupings.

use std::collections::BTreeMap;

/// A query waiting in an open group, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending<Q> {
    pub offset: i64,
    pub query: Q,
}

/// A closed coding group, ready to be encoded and sent.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedGroup<Q> {
    pub id: String,
    pub input_partition: i32,
    pub first_offset: i64,
    pub members: Vec<Pending<Q>>,
}

#[derive(Debug)]
struct OpenGroup<Q> {
    opened_at: u64,
    members: Vec<Pending<Q>>,
}

/// Builds coding groups of `k` queries per input partition.
#[derive(Debug)]
pub struct GroupBuilder<Q> {
    k: usize,
    linger_ms: u64,
    open: BTreeMap<i32, OpenGroup<Q>>,
}

impl<Q> GroupBuilder<Q> {
    /// `k` is the group size (at least 1); `linger_ms` the longest a query waits for company.
    pub fn new(k: usize, linger_ms: u64) -> Self {
        assert!(k >= 1, "k must be at least 1");
        Self { k, linger_ms, open: BTreeMap::new() }
    }

    /// Adds a query; returns the group it completed, if any.
    pub fn push(&mut self, input_partition: i32, offset: i64, query: Q, now: u64) -> Option<ClosedGroup<Q>> {
        let group = self
            .open
            .entry(input_partition)
            .or_insert_with(|| OpenGroup { opened_at: now, members: Vec::with_capacity(self.k) });
        group.members.push(Pending { offset, query });
        if group.members.len() >= self.k {
            self.close(input_partition)
        } else {
            None
        }
    }

    /// Closes every group whose linger has run out at `now`.
    pub fn poll_expired(&mut self, now: u64) -> Vec<ClosedGroup<Q>> {
        let due: Vec<i32> = self
            .open
            .iter()
            .filter(|(_, g)| now >= g.opened_at + self.linger_ms)
            .map(|(p, _)| *p)
            .collect();
        due.into_iter().filter_map(|p| self.close(p)).collect()
    }

    /// Closes all open groups, e.g. when partitions are revoked or at shutdown.
    pub fn flush(&mut self) -> Vec<ClosedGroup<Q>> {
        let all: Vec<i32> = self.open.keys().copied().collect();
        all.into_iter().filter_map(|p| self.close(p)).collect()
    }

    /// Drops the open group of a partition without closing it (its queries will be
    /// replayed by whoever owns the partition next).
    pub fn forget(&mut self, input_partition: i32) {
        self.open.remove(&input_partition);
    }

    /// When the next linger runs out, if any group is open.
    pub fn next_deadline(&self) -> Option<u64> {
        self.open.values().map(|g| g.opened_at + self.linger_ms).min()
    }

    fn close(&mut self, input_partition: i32) -> Option<ClosedGroup<Q>> {
        let group = self.open.remove(&input_partition)?;
        let first_offset = group.members.first()?.offset;
        let last_offset = group.members.last()?.offset;
        Some(ClosedGroup {
            id: group_id(input_partition, first_offset, last_offset),
            input_partition,
            first_offset,
            members: group.members,
        })
    }
}

/// The deterministic id of the group of offsets `first..=last` of `input_partition`.
pub fn group_id(input_partition: i32, first_offset: i64, last_offset: i64) -> String {
    format!("p{input_partition}-o{first_offset}-{last_offset}")
}

/// The model-queries partition of member `index` of a group: consecutive partitions
/// starting from the group's first offset, so the members of a group land on distinct
/// partitions whenever there are at least k of them, and load spreads evenly.
pub fn member_partition(first_offset: i64, index: usize, partitions: i32) -> i32 {
    let p = partitions.max(1) as u64;
    ((first_offset as u64).wrapping_add(index as u64) % p) as i32
}

/// The partition of the decoder-side topics (manifests, predictions, parity predictions)
/// for a group: a stable hash (FNV-1a) of its id, the same in every service.
pub fn group_partition(group_id: &str, partitions: i32) -> i32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in group_id.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % partitions.max(1) as u64) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_at_k_and_on_linger() {
        let mut b = GroupBuilder::new(2, 10);
        assert!(b.push(0, 5, "a", 100).is_none());
        let g = b.push(0, 6, "b", 101).unwrap();
        assert_eq!(g.id, "p0-o5-6");
        assert_eq!(g.members.len(), 2);
        assert!(b.push(1, 0, "c", 200).is_none());
        assert_eq!(b.next_deadline(), Some(210));
        assert!(b.poll_expired(209).is_empty());
        let lone = b.poll_expired(210);
        assert_eq!(lone.len(), 1);
        assert_eq!(lone[0].members[0].query, "c");
        assert_eq!(b.next_deadline(), None);
    }

    #[test]
    fn a_different_grouping_on_replay_gets_different_ids() {
        // First run: the linger closed {5} alone, then {6, 7}.
        let mut first = GroupBuilder::new(2, 10);
        first.push(0, 5, (), 0);
        let a = first.poll_expired(10).remove(0).id;
        first.push(0, 6, (), 11);
        let b = first.push(0, 7, (), 12).unwrap().id;
        // Replay: 5 and 6 arrive together.
        let mut replay = GroupBuilder::new(2, 10);
        replay.push(0, 5, (), 100);
        let c = replay.push(0, 6, (), 100).unwrap().id;
        assert_eq!((a.as_str(), b.as_str(), c.as_str()), ("p0-o5-5", "p0-o6-7", "p0-o5-6"));
    }

    #[test]
    fn members_of_a_group_get_distinct_partitions() {
        for first in 0..50i64 {
            for k in 1..=4usize {
                let parts: std::collections::HashSet<i32> = (0..k).map(|i| member_partition(first, i, 4)).collect();
                assert_eq!(parts.len(), k);
            }
        }
        assert_eq!(group_partition("p0-o1-2", 3), group_partition("p0-o1-2", 3));
        assert!((0..3).contains(&group_partition("p9-o77", 3)));
    }
}
