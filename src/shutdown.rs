//! Stopping: the signal a running service waits for, and the clock every background task
//! ticks on ([`Every`]), which ends when the service stops. Background tasks get these from
//! here, not from `app`, so the modules that own them do not depend on start-up code.

use std::time::Duration;

use tokio::sync::watch;

/// Sender side: `true` once the service is stopping.
pub type StopSender = watch::Sender<bool>;
/// Receiver side, handed to every background task.
pub type Stopped = watch::Receiver<bool>;

/// A new stop signal (not stopping yet).
pub fn channel() -> (StopSender, Stopped) {
    watch::channel(false)
}

/// Resolves once `stopped` says the service is stopping.
pub async fn wait(mut stopped: Stopped) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// The clock of a background task: ticks every `period` (the first at once; late ticks are
/// delayed, not bunched) until the service stops.
pub struct Every {
    tick: tokio::time::Interval,
    stopped: Stopped,
}

impl Every {
    pub fn new(period: Duration, stopped: Stopped) -> Every {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Every { tick, stopped }
    }

    /// Waits for the next tick; false once the service is stopping.
    pub async fn tick(&mut self) -> bool {
        tokio::select! {
            _ = self.tick.tick() => true,
            _ = self.stopped.wait_for(|s| *s) => false,
        }
    }
}

/// Wait for SIGTERM or Ctrl-C.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
