//! The span contexts of each group's predictions, kept until the group's last hard
//! deadline passes (plus the late linger) so results can link to what they were made of.

use opentelemetry::trace::{Link, SpanContext};
use std::collections::{BTreeSet, HashMap};

#[derive(Default)]
struct Spans {
    expires_at: u64,
    /// `(member index or -1 for parity, span)`
    spans: Vec<(i32, SpanContext)>,
}

/// Span contexts by group, expiring by time.
#[derive(Default)]
pub struct GroupLinks {
    groups: HashMap<String, Spans>,
    expiry: BTreeSet<(u64, String)>,
}

impl GroupLinks {
    pub fn add(&mut self, group_id: &str, index: i32, span: SpanContext, expires_at: u64) {
        if !span.is_valid() {
            return;
        }
        let entry = self.groups.entry(group_id.to_string()).or_default();
        if entry.expires_at < expires_at {
            self.expiry.remove(&(entry.expires_at, group_id.to_string()));
            entry.expires_at = expires_at;
            self.expiry.insert((expires_at, group_id.to_string()));
        }
        entry.spans.push((index, span));
    }

    /// Links for a result of member `index`: its own prediction if it was the answer,
    /// otherwise the parity's and the other members' (what a reconstruction used).
    pub fn links_for(&self, group_id: &str, index: i32, reconstructed: bool) -> Vec<Link> {
        let Some(g) = self.groups.get(group_id) else { return Vec::new() };
        g.spans
            .iter()
            .filter(|(i, _)| if reconstructed { *i != index } else { *i == index })
            .map(|(_, sc)| Link::with_context(sc.clone()))
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
