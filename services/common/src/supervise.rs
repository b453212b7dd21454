//! Exactly-once sessions that heal: a service session that fails after it started (its
//! transaction aborted or fenced) is replaced by a fresh one in the same process, as a
//! restart would be, up to [`MAX_RESTARTS`] within [`RESTART_WINDOW`].

use crate::delivery::Delivery;
use crate::shutdown::Shutdown;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Session restarts allowed within [`RESTART_WINDOW`] before the service gives up.
pub const MAX_RESTARTS: usize = 5;
/// The window in which [`MAX_RESTARTS`] are counted.
pub const RESTART_WINDOW: Duration = Duration::from_secs(600);

/// Runs a service session; in exactly-once mode a session that fails after it started
/// is replaced by a fresh one (its transaction aborted or fenced, nothing committed past
/// it), up to [`MAX_RESTARTS`] within [`RESTART_WINDOW`]. `session` gets the shutdown
/// listener and a flag to set once it is up: a session that fails while starting (bad
/// flags, a missing model) ends the service at once.
pub async fn supervise<F, Fut>(service: &str, delivery: Delivery, shutdown: Shutdown, session: F) -> anyhow::Result<()>
where
    F: FnMut(Shutdown, Arc<AtomicBool>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    supervise_with_backoff(service, delivery, shutdown, Duration::from_millis(500), session).await
}

/// [`supervise`], waiting `backoff` × n before the n-th fresh session.
async fn supervise_with_backoff<F, Fut>(service: &str, delivery: Delivery, shutdown: Shutdown, backoff: Duration, mut session: F) -> anyhow::Result<()>
where
    F: FnMut(Shutdown, Arc<AtomicBool>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut restarts: VecDeque<Instant> = VecDeque::new();
    loop {
        let started = Arc::new(AtomicBool::new(false));
        let result = session(shutdown.clone(), started.clone()).await;
        let err = match result {
            Ok(()) => return Ok(()),
            Err(e) if delivery != Delivery::ExactlyOnce || !started.load(Ordering::SeqCst) || shutdown.is_triggered() => return Err(e),
            Err(e) => e,
        };
        let now = Instant::now();
        while restarts.front().is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW) {
            restarts.pop_front();
        }
        restarts.push_back(now);
        let times = restarts.len();
        if times > MAX_RESTARTS {
            return Err(err.context(format!(
                "{service}: {times} transaction failures within {RESTART_WINDOW:?}; if another process runs with the same --instance-id, give each its own"
            )));
        }
        metrics::counter!(crate::metrics::names::SESSION_RESTARTS).increment(1);
        tracing::warn!(%service, times, error = %format!("{err:#}"), "exactly-once: the transaction failed; starting a fresh session from the committed offsets");
        tokio::time::sleep(backoff * times as u32).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::anyhow;
    use std::sync::atomic::AtomicUsize;

    /// Runs `supervise` on sessions that each start (or not) and then fail (or not), as
    /// `plan` says in turn; returns the result and how many sessions ran.
    async fn supervised(delivery: Delivery, plan: Vec<(bool, bool)>) -> (anyhow::Result<()>, usize) {
        let runs = Arc::new(AtomicUsize::new(0));
        let (_trigger, shutdown) = crate::shutdown::channel();
        let r = runs.clone();
        let result = supervise_with_backoff("test", delivery, shutdown, Duration::from_millis(1), move |_, started| {
            let i = r.fetch_add(1, Ordering::SeqCst);
            let (starts, fails) = plan.get(i).copied().unwrap_or((true, false));
            async move {
                started.store(starts, Ordering::SeqCst);
                if fails { Err(anyhow!("session {i} failed")) } else { Ok(()) }
            }
        })
        .await;
        (result, runs.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn exactly_once_sessions_that_fail_after_starting_are_started_afresh_up_to_the_limit() {
        let (r, runs) = supervised(Delivery::ExactlyOnce, vec![(true, true), (true, true), (true, false)]).await;
        assert!(r.is_ok());
        assert_eq!(runs, 3);
        let (r, runs) = supervised(Delivery::ExactlyOnce, vec![(true, true); 10]).await;
        assert!(format!("{:#}", r.unwrap_err()).contains("transaction failures"));
        assert_eq!(runs, MAX_RESTARTS + 1);
    }

    #[tokio::test]
    async fn a_session_that_fails_while_starting_or_at_least_once_ends_the_service() {
        let (r, runs) = supervised(Delivery::ExactlyOnce, vec![(false, true), (true, false)]).await;
        assert!(r.is_err());
        assert_eq!(runs, 1);
        let (r, runs) = supervised(Delivery::AtLeastOnce, vec![(true, true), (true, false)]).await;
        assert!(r.is_err());
        assert_eq!(runs, 1);
    }
}
