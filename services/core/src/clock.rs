//! How far another host's clock is from this one's, learned from the timestamps on its
//! records, so that deadlines stamped by the encoder are compared on the decoder's clock
//! without the skew between the hosts.
//!
//! Each record stamped remotely at `remote` and read locally at `local` gives
//! `local − remote = skew + delay`, where the delay (queueing, transit) is never negative.
//! The smallest value over a sliding window is the skew plus the least delay of the
//! window: a few milliseconds when the pipeline keeps up. A backlog only raises values, so
//! the minimum ignores it once one fresh record is in the window. The estimate is capped at
//! `±max_ms`: skew beyond it is a broken clock, not something to follow.

use std::collections::VecDeque;

/// A sliding-window minimum of `local − remote`, capped. Time in ms since the epoch.
#[derive(Debug, Clone)]
pub struct ClockSkew {
    window_ms: u64,
    max_ms: i64,
    /// `(local, local − remote)`, increasing in both: the candidates for the minimum.
    candidates: VecDeque<(u64, i64)>,
}

impl ClockSkew {
    /// `window_ms`: how long a sample counts; `max_ms`: the largest skew followed.
    pub fn new(window_ms: u64, max_ms: u64) -> Self {
        Self { window_ms, max_ms: i64::try_from(max_ms).unwrap_or(i64::MAX), candidates: VecDeque::new() }
    }

    /// A record stamped `remote` by the other host, read `local` here.
    pub fn observe(&mut self, remote: i64, local: u64) {
        let diff = i64::try_from(local).unwrap_or(i64::MAX).saturating_sub(remote);
        while self.candidates.back().is_some_and(|(_, d)| *d >= diff) {
            self.candidates.pop_back();
        }
        self.candidates.push_back((local, diff));
        let horizon = local.saturating_sub(self.window_ms);
        while self.candidates.front().is_some_and(|(t, _)| *t < horizon) {
            self.candidates.pop_front();
        }
    }

    /// How far this clock is ahead of the other (negative: behind); 0 before any sample.
    pub fn offset_ms(&self) -> i64 {
        self.candidates.front().map_or(0, |(_, d)| (*d).clamp(-self.max_ms, self.max_ms))
    }

    /// A remote instant on this clock.
    pub fn to_local(&self, remote: i64) -> i64 {
        remote.saturating_add(self.offset_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_skew_is_learned_to_within_the_least_delay() {
        for skew in [-1000i64, 0, 1000] {
            let mut c = ClockSkew::new(10_000, 1500);
            for i in 0..200u64 {
                let remote = 1_000_000 + i as i64 * 10;
                let delay = 2 + (i * 7919 % 50) as i64; // 2..52 ms
                c.observe(remote, (remote + skew + delay) as u64);
            }
            let est = c.offset_ms();
            assert!((skew + 2..=skew + 3).contains(&est), "skew {skew}: estimated {est}");
            assert_eq!(c.to_local(5_000), 5_000 + est);
        }
    }

    #[test]
    fn a_backlog_is_forgotten_at_the_first_fresh_record_and_old_samples_expire() {
        let mut c = ClockSkew::new(1_000, 5_000);
        c.observe(0, 3_000); // read 3 s late (a backlog)
        assert_eq!(c.offset_ms(), 3_000);
        c.observe(3_000, 3_005);
        assert_eq!(c.offset_ms(), 5);
        // The window moves on: a later, slower sample is all that is left.
        c.observe(5_000, 5_020);
        assert_eq!(c.offset_ms(), 20);
    }

    #[test]
    fn skew_beyond_the_cap_is_not_followed() {
        let mut c = ClockSkew::new(1_000, 1_500);
        c.observe(0, 10_000);
        assert_eq!(c.offset_ms(), 1_500);
        c.observe(i64::MAX, 10_001);
        assert_eq!(c.offset_ms(), -1_500);
        assert_eq!(c.to_local(i64::MAX), i64::MAX - 1_500);
        assert_eq!(ClockSkew::new(1, 1).offset_ms(), 0);
    }
}
