//! The encoder's side of coding: which queries form a group, and where each part goes.
//!
//! Queries are grouped per input partition, in offset order: a group closes when it has
//! `k` members or when its oldest member has waited `linger_ms`. Each query learns its
//! group and position the moment it arrives ([`Slot`]), so the encoder sends it to its
//! model worker at once and only the parity query and the manifest wait for the group to
//! close. A group's id is its input partition and first offset, so a replay of the same
//! offsets with the same timing rebuilds the same groups; a group closed early by the
//! linger can come out with other members on replay (only for queries that were in
//! flight), which the decoder's join tolerates (see `join`).

use std::collections::BTreeMap;

/// A query waiting in an open group, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending<Q> {
    pub offset: i64,
    pub query: Q,
}

/// Where a query landed: its group and its position in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub group_id: String,
    pub first_offset: i64,
    pub index: usize,
}

/// A closed coding group, ready to be encoded and sent.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedGroup<Q> {
    pub id: String,
    pub input_partition: i32,
    pub first_offset: i64,
    pub members: Vec<Pending<Q>>,
}

/// A coding group still filling on one input partition: when it opened, its members so far.
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

    /// Adds a query (it lands where [`Self::peek_slot`] said); returns the group it
    /// completed, if any.
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

    /// Where the next query of `input_partition` would land, without adding it.
    pub fn peek_slot(&self, input_partition: i32, offset: i64) -> Slot {
        match self.open.get(&input_partition).and_then(|g| g.members.first().map(|m| (m.offset, g.members.len()))) {
            Some((first_offset, len)) => Slot { group_id: group_id(input_partition, first_offset), first_offset, index: len },
            None => Slot { group_id: group_id(input_partition, offset), first_offset: offset, index: 0 },
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

    /// Closes the open group of `input_partition` now, if there is one (the encoder closes a
    /// group early to give a query bound for a slow worker a group of its own).
    pub fn close_now(&mut self, input_partition: i32) -> Option<ClosedGroup<Q>> {
        self.close(input_partition)
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
        Some(ClosedGroup {
            id: group_id(input_partition, first_offset),
            input_partition,
            first_offset,
            members: group.members,
        })
    }
}

/// The deterministic id of the group that starts at `first_offset` of `input_partition`.
pub fn group_id(input_partition: i32, first_offset: i64) -> String {
    format!("p{input_partition}-o{first_offset}")
}

/// The model-queries partition of member `index` of a group.
///
/// Slots advance through the partitions like a round robin: the group's first offset plus
/// the member's index, modulo the partition count P. So load spreads evenly, and a group's
/// k members land on k distinct partitions whenever there are at least k of them. Each
/// round of P slots then maps slots to partitions through a permutation of its own (seeded
/// by the round number, so a replay lands where the first run did): a worker's partners
/// change from round to round. With a fixed pairing (slots straight to partitions), two
/// workers slowed at the same time would make every group they share unrecoverable for as
/// long as both are slow, and their backlogs would only grow; with rotating partners, a
/// slow worker's queries mostly share a group with healthy workers and get reconstructed.
///
/// This builds the round's permutation on every call; the encoder keeps one round at a
/// time in a [`MemberPartitions`] instead.
pub fn member_partition(first_offset: i64, index: usize, partitions: i32) -> i32 {
    MemberPartitions::new(partitions).get(first_offset, index)
}

/// [`member_partition`] for one partition count, keeping the current round's permutation
/// so that the encoder's hot path builds one permutation per round instead of one per member.
#[derive(Debug, Clone)]
pub struct MemberPartitions {
    partitions: u64,
    round: Option<u64>,
    permutation: Vec<i32>,
}

impl MemberPartitions {
    pub fn new(partitions: i32) -> Self {
        Self { partitions: partitions.max(1) as u64, round: None, permutation: Vec::new() }
    }

    /// The partition of member `index` of the group that starts at `first_offset`.
    pub fn get(&mut self, first_offset: i64, index: usize) -> i32 {
        let p = self.partitions;
        let first = first_offset.max(0) as u64;
        let round = first / p;
        if self.round != Some(round) {
            self.permutation = round_permutation(round, p as usize);
            self.round = Some(round);
        }
        self.permutation[((first % p + index as u64) % p) as usize]
    }
}

/// A seeded permutation of `0..n` for one round of slots (Fisher-Yates over splitmix64).
fn round_permutation(round: u64, n: usize) -> Vec<i32> {
    let mut state = round.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5851_f42d_4c95_7f2d;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut perm: Vec<i32> = (0..n as i32).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        perm.swap(i, j);
    }
    perm
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
        assert_eq!(b.peek_slot(0, 5), Slot { group_id: "p0-o5".into(), first_offset: 5, index: 0 });
        assert!(b.push(0, 5, "a", 100).is_none());
        let slot = b.peek_slot(0, 6);
        assert_eq!((slot.group_id.as_str(), slot.index), ("p0-o5", 1));
        let g = b.push(0, 6, "b", 101).unwrap();
        assert_eq!(g.id, "p0-o5");
        assert_eq!(g.members.len(), 2);
        assert!(b.push(1, 0, "c", 200).is_none());
        assert_eq!(b.next_deadline(), Some(210));
        assert!(b.poll_expired(209).is_empty());
        let lone = b.poll_expired(210);
        assert_eq!(lone.len(), 1);
        assert_eq!(lone[0].members[0].query, "c");
        assert_eq!(b.next_deadline(), None);
        assert!(b.push(1, 1, "d", 300).is_none());
        let early = b.close_now(1).unwrap();
        assert_eq!((early.id.as_str(), early.members.len()), ("p1-o1", 1));
        assert!(b.close_now(1).is_none(), "nothing open any more");
        assert_eq!(b.peek_slot(1, 2).index, 0, "the next query starts a group");
    }

    #[test]
    fn a_replay_keeps_each_query_at_the_same_place() {
        // First run: the linger closed {5} alone, then {6, 7}. Replay: 5 and 6 together.
        // Group ids may then name different member sets, but a (group, index) pair always
        // names the same input offset: first offset + index.
        let mut first = GroupBuilder::new(2, 10);
        first.push(0, 5, (), 0);
        assert_eq!(first.poll_expired(10)[0].id, "p0-o5");
        let s6 = first.peek_slot(0, 6);
        first.push(0, 6, (), 11);
        let mut replay = GroupBuilder::new(2, 10);
        replay.push(0, 5, (), 100);
        let r6 = replay.peek_slot(0, 6);
        assert_eq!((s6.first_offset + s6.index as i64), 6);
        assert_eq!((r6.first_offset + r6.index as i64), 6);
        assert_ne!(s6.group_id, r6.group_id);
    }

    #[test]
    fn members_of_a_group_get_distinct_partitions() {
        for first in 0..500i64 {
            for p in [2, 3, 4, 12, 13] {
                for k in 1..=(p as usize).min(8) {
                    let parts: std::collections::HashSet<i32> = (0..k).map(|i| member_partition(first, i, p)).collect();
                    assert_eq!(parts.len(), k, "first {first}, k {k}, {p} partitions");
                    assert!(parts.iter().all(|x| (0..p).contains(x)));
                }
            }
        }
    }

    #[test]
    fn group_partitions_are_fnv1a_and_spread_evenly() {
        // Every service (and a replay after an upgrade) must put a group on the same
        // partition: the values are FNV-1a's, computed independently (in Python).
        let fnv = [("p0-o1-2", 3, 1), ("p9-o77", 3, 2), ("p3-o123456", 3, 1), ("", 3, 2), ("p0-o1-2", 7, 4), ("p9-o77", 7, 6)];
        for (id, partitions, want) in fnv {
            assert_eq!(group_partition(id, partitions), want, "{id:?} over {partitions}");
        }
        assert_eq!(group_partition("p0-o1", 0), 0, "no partitions: the first, not a division by zero");
        let mut load = [0u32; 3];
        for o in 0..3000 {
            load[group_partition(&format!("p0-o{o}"), 3) as usize] += 1;
        }
        assert!(load.iter().all(|&n| (800..1200).contains(&n)), "{load:?}");
    }

    #[test]
    fn load_is_even_and_partners_rotate() {
        // k = 2 over 12 partitions, 600 full groups (100 rounds): every partition gets the
        // same number of members, and each one shares groups with most of the others.
        let (k, p) = (2usize, 12i32);
        let mut load = vec![0u32; p as usize];
        let mut partners = vec![std::collections::HashSet::new(); p as usize];
        for g in 0..600i64 {
            let parts: Vec<i32> = (0..k).map(|i| member_partition(g * k as i64, i, p)).collect();
            for &x in &parts {
                load[x as usize] += 1;
            }
            partners[parts[0] as usize].insert(parts[1]);
            partners[parts[1] as usize].insert(parts[0]);
        }
        assert!(load.iter().all(|&n| n == 100), "{load:?}");
        assert!(partners.iter().all(|s| s.len() >= 9), "{partners:?}");
        // The encoder's cached rounds agree with a fresh computation (a replay by another
        // process), whatever order they are asked in.
        let mut cached = MemberPartitions::new(p);
        for first in [0i64, 1, 12, 13, 5, 40, 7, 1234, 11] {
            for i in 0..k {
                assert_eq!(cached.get(first, i), member_partition(first, i, p), "first {first}, member {i}");
            }
        }
    }
}
