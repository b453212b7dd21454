//! Injected service time, to make a worker a straggler on purpose.
//!
//! Each batch gets `fixed + Exp(mean)` extra milliseconds, plus `episode_extra` while a
//! slow episode is on. Episodes start as a Poisson process (`episode_rate` per second)
//! and last `episode_ms`, imitating the paper's background transfers that slow random
//! instances for a while. Seeded, so a benchmark run can be repeated exactly.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp};
use std::time::Duration;

/// Flags of the delay model (all zero: no injected delay).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DelayArgs {
    /// Extra service time (ms) added to every batch.
    #[arg(long, env = "PARM_DELAY_FIXED_MS", default_value_t = 0.0)]
    pub delay_fixed_ms: f64,
    /// Mean (ms) of an exponentially distributed extra service time per batch.
    #[arg(long, env = "PARM_DELAY_EXP_MS", default_value_t = 0.0)]
    pub delay_exp_ms: f64,
    /// Slow episodes per second (Poisson); 0 disables them.
    #[arg(long, env = "PARM_SLOW_EPISODE_RATE", default_value_t = 0.0)]
    pub slow_episode_rate: f64,
    /// Length (ms) of a slow episode.
    #[arg(long, env = "PARM_SLOW_EPISODE_MS", default_value_t = 500.0)]
    pub slow_episode_ms: f64,
    /// Extra service time (ms) per batch during a slow episode.
    #[arg(long, env = "PARM_SLOW_EXTRA_MS", default_value_t = 100.0)]
    pub slow_extra_ms: f64,
    /// Seed of the delay model's random numbers.
    #[arg(long, env = "PARM_DELAY_SEED", default_value_t = 1)]
    pub delay_seed: u64,
}

/// The state of the delay model: its RNG and the current or next slow episode.
pub struct DelayModel {
    args: DelayArgs,
    rng: StdRng,
    /// `(start, end)` of the current or next episode, in ms on the caller's clock.
    episode: Option<(f64, f64)>,
}

impl DelayModel {
    pub fn new(args: DelayArgs) -> Self {
        let rng = StdRng::seed_from_u64(args.delay_seed);
        Self { args, rng, episode: None }
    }

    pub fn is_active(&self) -> bool {
        self.args.delay_fixed_ms > 0.0 || self.args.delay_exp_ms > 0.0 || self.args.slow_episode_rate > 0.0
    }

    /// Extra service time for a batch processed at `now_ms`.
    pub fn extra(&mut self, now_ms: f64) -> Duration {
        let mut ms = self.args.delay_fixed_ms.max(0.0);
        if self.args.delay_exp_ms > 0.0 {
            if let Ok(exp) = Exp::new(1.0 / self.args.delay_exp_ms) {
                ms += exp.sample(&mut self.rng);
            }
        }
        if self.in_episode(now_ms) {
            ms += self.args.slow_extra_ms.max(0.0);
        }
        Duration::from_secs_f64(ms / 1000.0)
    }

    fn in_episode(&mut self, now: f64) -> bool {
        let rate = self.args.slow_episode_rate;
        if rate <= 0.0 {
            return false;
        }
        loop {
            let (start, end) = match self.episode {
                Some(e) => e,
                None => {
                    let gap_ms = -(1.0 - self.rng.gen::<f64>()).ln() / rate * 1000.0;
                    let e = (now + gap_ms, now + gap_ms + self.args.slow_episode_ms);
                    self.episode = Some(e);
                    e
                }
            };
            if now < start {
                return false;
            }
            if now < end {
                return true;
            }
            // That episode is over: draw the next one from its end.
            let gap_ms = -(1.0 - self.rng.gen::<f64>()).ln() / rate * 1000.0;
            self.episode = Some((end + gap_ms, end + gap_ms + self.args.slow_episode_ms));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_flags_no_delay() {
        let mut d = DelayModel::new(DelayArgs::default());
        assert!(!d.is_active());
        assert_eq!(d.extra(0.0), Duration::ZERO);
    }

    #[test]
    fn fixed_and_exponential_parts_have_the_right_mean() {
        let mut d = DelayModel::new(DelayArgs { delay_fixed_ms: 2.0, delay_exp_ms: 3.0, ..Default::default() });
        let n = 20_000;
        let mean = (0..n).map(|i| d.extra(i as f64).as_secs_f64() * 1000.0).sum::<f64>() / n as f64;
        assert!((mean - 5.0).abs() < 0.2, "mean {mean}");
    }

    #[test]
    fn episodes_cover_the_expected_share_of_time() {
        // 1 episode/s of 250 ms: on average 250/(1000+250) = 20% of the time is slow.
        let args = DelayArgs { slow_episode_rate: 1.0, slow_episode_ms: 250.0, slow_extra_ms: 10.0, delay_seed: 7, ..Default::default() };
        let mut d = DelayModel::new(args);
        let steps = 200_000;
        let slow = (0..steps).filter(|i| d.extra(*i as f64).as_millis() >= 10).count();
        let share = slow as f64 / steps as f64;
        assert!((share - 0.2).abs() < 0.05, "share {share}");
    }
}
