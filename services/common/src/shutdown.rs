//! Graceful shutdown through one watch signal (as in mini-redis): every loop selects on
//! [`Shutdown::wait`] and finishes its in-flight work before returning.

use tokio::sync::watch;

/// The sending side: call [`ShutdownTrigger::trigger`] once to stop every listener.
#[derive(Clone, Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// The listening side, cheap to clone into every task.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new trigger and its listener.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// Completes once shutdown was triggered (at once if it already was).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }
}

/// A shutdown listener that fires on Ctrl-C or SIGTERM, for the binaries.
pub fn on_signals() -> Shutdown {
    let (trigger, shutdown) = channel();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("shutting down");
        trigger.trigger();
    });
    shutdown
}
