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

/// Install the SIGTERM and SIGINT handlers now, and return the future that resolves at the
/// first of them. Installed at the start of `serve`, before the listener and the embedded
/// Redis: a SIGTERM that arrives while the service is still starting is caught (and shuts it
/// down once started) instead of killing it by the default action.
pub fn signal() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, Signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async fn first(s: Option<Signal>) {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        Box::pin(async move {
            tokio::select! {
                _ = first(term) => {},
                _ = first(int) => {},
            }
        })
    }
    #[cfg(not(unix))]
    Box::pin(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
