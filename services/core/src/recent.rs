//! A map that forgets by age: what was recorded within a time window, oldest dropped
//! first. The decoder's [`crate::answers::Answers`] and the worker's
//! [`crate::answered::Answered`] both remember "seen lately" this way, which bounds their
//! memory by the window rather than by the traffic's history.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// Entries keyed by `K`, each with a value and the time (ms) it was recorded.
#[derive(Debug)]
pub struct Recent<K, V> {
    entries: HashMap<K, (u64, V)>,
    /// (recorded at, key), in the order recorded, for forgetting.
    order: VecDeque<(u64, K)>,
}

impl<K, V> Default for Recent<K, V> {
    fn default() -> Self {
        Self { entries: HashMap::new(), order: VecDeque::new() }
    }
}

impl<K: Hash + Eq + Clone, V> Recent<K, V> {
    /// Records `key` with `value` at `now`; false (and nothing changes) if `key` is held.
    pub fn insert(&mut self, key: K, value: V, now: u64) -> bool {
        if self.entries.contains_key(&key) {
            return false;
        }
        self.entries.insert(key.clone(), (now, value));
        self.order.push_back((now, key));
        true
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.contains_key(key)
    }

    /// Forgets what was recorded before `cutoff`, oldest first, handing each entry to
    /// `forgotten`. (A clock that stepped back leaves a newer entry in front; what is
    /// behind it is forgotten when it goes.)
    pub fn forget_before(&mut self, cutoff: u64, mut forgotten: impl FnMut(K, V)) {
        while self.order.front().is_some_and(|(at, _)| *at < cutoff) {
            let Some((at, key)) = self.order.pop_front() else { break };
            if self.entries.get(&key).is_some_and(|(held_at, _)| *held_at == at) {
                if let Some((_, value)) = self.entries.remove(&key) {
                    forgotten(key, value);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_kept_once_and_forgotten_oldest_first() {
        let mut r = Recent::default();
        assert!(r.insert("a", 1, 10));
        assert!(!r.insert("a", 2, 11), "held: refused");
        assert!(r.insert("b", 3, 20));
        let mut gone = Vec::new();
        r.forget_before(20, |k, v| gone.push((k, v)));
        assert_eq!(gone, [("a", 1)], "only what was recorded before the cutoff");
        assert!(!r.contains_key("a") && r.contains_key("b"));
        assert!(r.insert("a", 4, 21), "forgotten: recorded afresh");
        assert_eq!(r.len(), 2);
        r.clear();
        assert!(r.is_empty());
    }
}
