//! Live state shared by every request of a process, fed by Redis subscriptions and readers:
//! pub/sub fan-out ([`pubsub`]), lock-release wake-ups ([`wake`]), queue wake-ups and task
//! events ([`queues`]), per-namespace change-log readers ([`changes`]), the keyspace relay
//! ([`relay`]) and agent presence ([`presence`]). Each subscription is one Redis connection
//! per process whatever the number of sockets and requests using it, and each is drained by
//! the one dispatcher loop below. Uses `store` and `domain` only.

pub mod changes;
pub mod presence;
pub mod pubsub;
pub mod queues;
pub mod relay;
pub mod wake;

use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// What a dispatcher hands its handler.
pub enum Delivery<T> {
    Item(T),
    /// The subscriber's buffer overflowed and this many items were lost.
    Lagged(u64),
}

/// Run `handle` for everything `rx` receives until its sender closes: the one dispatcher loop
/// behind every subscription of the process.
pub fn dispatch<T, F>(mut rx: broadcast::Receiver<T>, mut handle: F) -> JoinHandle<()>
where
    T: Clone + Send + 'static,
    F: FnMut(Delivery<T>) + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(m) => handle(Delivery::Item(m)),
                Err(broadcast::error::RecvError::Lagged(n)) => handle(Delivery::Lagged(n)),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

/// The part of a message's channel after `prefix`, and its payload as text.
fn message_in<'a>(msg: &'a fred::types::Message, prefix: &str) -> Option<(&'a str, Option<String>)> {
    let rest = msg.channel.strip_prefix(prefix)?;
    Some((rest, msg.value.as_string()))
}
