//! The span contexts of each group's predictions, kept until the group's last hard
//! deadline passes (plus the late linger) so results can link to what they were made of.
//! Pure state, time as an argument; generic over the span type (the decoder keeps
//! OpenTelemetry span contexts, and turns them into links).

use std::collections::{BTreeSet, HashMap};

/// The spans of one group, and when they may be dropped.
struct Spans<S> {
    expires_at: u64,
    /// `(member index, or -1 − j for parity j, span)`
    spans: Vec<(i32, S)>,
}

/// Span contexts by group, expiring by time.
pub struct GroupLinks<S> {
    groups: HashMap<String, Spans<S>>,
    expiry: BTreeSet<(u64, String)>,
}

impl<S> Default for GroupLinks<S> {
    fn default() -> Self {
        Self { groups: HashMap::new(), expiry: BTreeSet::new() }
    }
}

impl<S: Clone> GroupLinks<S> {
    /// Keeps the span of member `index` (-1 − j: parity j) of `group_id` until `expires_at`
    /// (a group lives as long as its latest expiry).
    pub fn add(&mut self, group_id: &str, index: i32, span: S, expires_at: u64) {
        let entry = self.groups.entry(group_id.to_string()).or_insert_with(|| Spans { expires_at: 0, spans: Vec::new() });
        if entry.expires_at < expires_at {
            self.expiry.remove(&(entry.expires_at, group_id.to_string()));
            entry.expires_at = expires_at;
            self.expiry.insert((expires_at, group_id.to_string()));
        }
        entry.spans.push((index, span));
    }

    /// What a result of member `index` links to: its own prediction if it was the answer,
    /// otherwise the parity's and the other members' (what a reconstruction used).
    pub fn links_for(&self, group_id: &str, index: i32, reconstructed: bool) -> Vec<S> {
        let Some(g) = self.groups.get(group_id) else { return Vec::new() };
        g.spans
            .iter()
            .filter(|(i, _)| if reconstructed { *i != index } else { *i == index })
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Drops groups whose time is up.
    pub fn expire(&mut self, now: u64) {
        while let Some((t, id)) = self.expiry.first().cloned() {
            if t > now {
                break;
            }
            self.expiry.remove(&(t, id.clone()));
            self.groups.remove(&id);
        }
    }

    pub fn clear(&mut self) {
        self.groups.clear();
        self.expiry.clear();
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_links_to_its_own_prediction_or_to_what_rebuilt_it_until_the_group_expires() {
        let mut l = GroupLinks::default();
        l.add("g", 0, "m0", 100);
        l.add("g", 1, "m1", 100);
        l.add("g", -1, "parity", 150);
        l.add("h", 0, "h0", 120);
        assert_eq!(l.links_for("g", 0, false), ["m0"]);
        assert_eq!(l.links_for("g", 0, true), ["m1", "parity"]);
        assert!(l.links_for("nope", 0, false).is_empty());
        l.expire(120);
        assert_eq!(l.len(), 1, "h expired at 120; g lives to its latest expiry, 150");
        l.expire(150);
        assert!(l.is_empty());
        l.add("g", 0, "again", 10);
        l.clear();
        assert!(l.links_for("g", 0, false).is_empty());
    }
}
