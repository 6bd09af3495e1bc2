//! The server's Redis subscriber: one thread PSUBSCRIBEs to every room's
//! channel and hands each broadcast to every worker through the fan-out.
//! The payload is the `message` frame as clients receive it, so it is
//! forwarded without re-encoding.
//!
//! redis-rs does not resubscribe after a reconnect (a classic way for a chat
//! server to go silently deaf after a Redis restart), so this thread does:
//! on any error it marks itself down, backs off (the shared jittered
//! [`Backoff`], cut short by shutdown), reconnects and subscribes again;
//! `/health` shows the outage and the reconnect count.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use chatflow_broker::retry::{is_shutdown, wait};
use chatflow_broker::{Backoff, RedisEndpoint, Shutdown};
use chatflow_protocol::Topology;
use parking_lot::Mutex;
use tungstenite::Utf8Bytes;

use super::link_state::LinkState;
use crate::fanout::Fanout;

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a read waits before the thread looks at the shutdown signal
/// (a blocking Redis read cannot wait on a channel too).
const READ_TIMEOUT: Duration = Duration::from_millis(200);

pub struct RedisSubscriber {
    pub state: Arc<LinkState>,
    reconnects: Arc<AtomicU64>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl RedisSubscriber {
    /// Starts the subscriber and waits for its first subscription, so a
    /// wrong address fails the start and a started server hears every
    /// broadcast published after it. The thread ends on `shutdown`.
    pub fn start(
        redis: &RedisEndpoint,
        topology: Topology,
        fanout: Fanout,
        shutdown: Shutdown,
    ) -> anyhow::Result<Self> {
        let client = redis::Client::open(redis.url())?;
        let connect_timeout = redis.timeout;
        let state = Arc::new(LinkState::default());
        let reconnects = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let thread = {
            let (state, reconnects) = (state.clone(), reconnects.clone());
            std::thread::Builder::new()
                .name("redis-subscriber".to_string())
                .spawn(move || {
                    let mut ready = Some(ready_tx);
                    let seed = u64::from(std::process::id());
                    let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX, seed);
                    let mut subscribed_before = false;
                    while !is_shutdown(&shutdown) {
                        let mut connection = match connect(&client, connect_timeout) {
                            Ok(connection) => connection,
                            Err(e) => {
                                if let Some(ready) = ready.take() {
                                    let _ = ready.send(Err(e));
                                    return;
                                }
                                state.set_down(format!("reconnecting: {e}"));
                                wait(&shutdown, backoff.next_delay());
                                continue;
                            }
                        };
                        // The PubSub lives as long as this loop turn: dropping
                        // it would unsubscribe.
                        let mut pubsub = connection.as_pubsub();
                        if let Err(e) = pubsub.psubscribe(topology.redis_pattern()) {
                            state.set_down(format!("subscribing: {e}"));
                            // Backs off like a failed connect: no tight loop
                            // against a Redis that takes connections but
                            // refuses subscriptions.
                            wait(&shutdown, backoff.next_delay());
                            continue;
                        }
                        state.set_up();
                        backoff.reset();
                        if subscribed_before {
                            reconnects.fetch_add(1, Ordering::Relaxed);
                            eprintln!("redis-subscriber: resubscribed");
                        }
                        subscribed_before = true;
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(Ok(()));
                        }
                        match forward(&mut pubsub, &topology, &fanout, &shutdown) {
                            Ok(()) => return,
                            Err(e) => {
                                eprintln!("redis-subscriber: connection lost: {e}");
                                state.set_down(format!("connection lost: {e}"));
                            }
                        }
                    }
                })?
        };
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                anyhow::bail!("Redis at {}: {e}", redis.display());
            }
            Err(_) => anyhow::bail!("the Redis subscriber thread exited during start-up"),
        }
        Ok(RedisSubscriber {
            state,
            reconnects,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    pub fn join(&self) {
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }
}

fn connect(client: &redis::Client, timeout: Duration) -> redis::RedisResult<redis::Connection> {
    let connection = client.get_connection_with_timeout(timeout)?;
    connection.set_read_timeout(Some(READ_TIMEOUT))?;
    Ok(connection)
}

/// Forwards broadcasts until shutdown (`Ok`) or a connection error.
fn forward(
    pubsub: &mut redis::PubSub<'_>,
    topology: &Topology,
    fanout: &Fanout,
    shutdown: &Shutdown,
) -> redis::RedisResult<()> {
    while !is_shutdown(shutdown) {
        let message = match pubsub.get_message() {
            Ok(message) => message,
            Err(e) if e.is_timeout() => continue,
            Err(e) => return Err(e),
        };
        let Some(room) = topology.room_of_channel(message.get_channel_name().as_bytes()) else {
            continue;
        };
        // Consumers publish our own JSON; anything else is not forwarded.
        let Ok(frame) = String::from_utf8(message.get_payload_bytes().to_vec()) else {
            continue;
        };
        fanout.broadcast(room, Utf8Bytes::from(frame));
    }
    Ok(())
}
