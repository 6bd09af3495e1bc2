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
//!
//! Nothing published while it was away is lost: it remembers the last
//! position it forwarded in each room (taken from the frame's tail, or at
//! start from each room's history before the first subscription), and
//! after every subscription it reads each room's history from there
//! ([`super::stream`]: pipelined `XRANGE` over every room, a page of
//! [`FILL_PAGE`] at a time) and forwards what it finds, in order, before
//! any live broadcast. Subscribing first and reading second leaves no gap
//! (anything published after the subscription is live, anything before it
//! is in the history); a broadcast heard both ways is forwarded once,
//! since positions only grow within a room and anything at or before the
//! last forwarded position is dropped. A room whose history was trimmed
//! past that position while the subscription was down has lost broadcasts
//! for this server's clients: that is logged and counted (clients can
//! still resume from PostgreSQL with `?since=`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chatflow_broker::retry::{is_shutdown, wait};
use chatflow_broker::{Backoff, RedisConnector, RedisEndpoint, Shutdown};
use chatflow_protocol::{Position, Topology};
use parking_lot::Mutex;
use redis::Value;
use tungstenite::Utf8Bytes;

use super::link_state::LinkState;
use super::stream::{self, ReadError};
use crate::fanout::Fanout;

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a read waits before the thread looks at the shutdown signal
/// (a blocking Redis read cannot wait on a channel too).
const READ_TIMEOUT: Duration = Duration::from_millis(200);
/// Entries read per room per round trip when filling a gap: 1,000 frames
/// are ~300 KB, so even every room at once stays a few MB per round trip.
pub const FILL_PAGE: usize = 1_000;

pub struct RedisSubscriber {
    pub state: Arc<LinkState>,
    reconnects: Arc<AtomicU64>,
    fills: Arc<FillStats>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// What the gap fills did, for `/health`'s broker detail.
#[derive(Debug, Default)]
pub struct FillStats {
    /// Broadcasts forwarded from the history after a (re)subscription.
    pub filled: AtomicU64,
    /// Live broadcasts dropped because the fill had forwarded them.
    pub duplicates: AtomicU64,
    /// Times a room's history had been trimmed past the last position
    /// forwarded: broadcasts lost for this server's clients.
    pub lost: AtomicU64,
}

/// The last position forwarded in each room (index = room).
struct Forwarded(Vec<Position>);

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
        let connector = RedisConnector::new(redis);
        let timeout = redis.timeout;
        let state = Arc::new(LinkState::default());
        let reconnects = Arc::new(AtomicU64::new(0));
        let fills = Arc::new(FillStats::default());
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let thread = {
            let (state, reconnects, fills) = (state.clone(), reconnects.clone(), fills.clone());
            std::thread::Builder::new()
                .name("redis-subscriber".to_string())
                .spawn(move || {
                    let mut ready = Some(ready_tx);
                    let seed = u64::from(std::process::id());
                    let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX, seed);
                    let mut subscribed_before = false;
                    // Where each room's history stood before the first
                    // subscription: what is forwarded starts after it.
                    let (mut data, mut forwarded) = match snapshot(&connector, &topology) {
                        Ok((data, forwarded)) => (Some(data), forwarded),
                        Err(e) => {
                            if let Some(ready) = ready.take() {
                                let _ = ready.send(Err(e.to_string()));
                            }
                            return;
                        }
                    };
                    while !is_shutdown(&shutdown) {
                        let mut connection = match connector.connect_with(timeout, Some(READ_TIMEOUT)) {
                            Ok(connection) => connection,
                            Err(e) => {
                                if let Some(ready) = ready.take() {
                                    let _ = ready.send(Err(e.to_string()));
                                    return;
                                }
                                let delay = backoff.next_delay();
                                tracing::warn!(
                                    "redis-subscriber: reconnecting failed: {e}; next attempt in {} ms",
                                    delay.as_millis()
                                );
                                state.set_down(format!("reconnecting: {e}"));
                                wait(&shutdown, delay);
                                continue;
                            }
                        };
                        // The PubSub lives as long as this loop turn: dropping
                        // it would unsubscribe.
                        let mut pubsub = connection.as_pubsub();
                        if let Err(e) = pubsub.psubscribe(topology.redis_pattern()) {
                            tracing::warn!("redis-subscriber: subscribing failed: {e}");
                            state.set_down(format!("subscribing: {e}"));
                            // Backs off like a failed connect: no tight loop
                            // against a Redis that takes connections but
                            // refuses subscriptions.
                            wait(&shutdown, backoff.next_delay());
                            continue;
                        }
                        // Subscribed: now whatever was published since the
                        // last forwarded position is in the history.
                        let (started, before) = (Instant::now(), fills.filled.load(Ordering::Relaxed));
                        let filled = fill_on(&mut data, &connector, |con| {
                            fill(con, &topology, &mut forwarded, &fanout, &fills)
                        });
                        match filled {
                            Ok(()) => {}
                            Err(e) => {
                                if let Some(ready) = ready.take() {
                                    let _ = ready.send(Err(e.to_string()));
                                    return;
                                }
                                tracing::warn!("redis-subscriber: filling from the history: {e}");
                                state.set_down(format!("filling from the history: {e}"));
                                wait(&shutdown, backoff.next_delay());
                                continue;
                            }
                        }
                        state.set_up();
                        backoff.reset();
                        if subscribed_before {
                            reconnects.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(
                                "redis-subscriber: resubscribed; {} broadcasts filled from the history in {} ms",
                                fills.filled.load(Ordering::Relaxed) - before,
                                started.elapsed().as_millis()
                            );
                        }
                        subscribed_before = true;
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(Ok(()));
                        }
                        match forward(
                            &mut pubsub,
                            &topology,
                            &fanout,
                            &shutdown,
                            &mut forwarded,
                            &fills,
                        ) {
                            Ok(()) => return,
                            Err(e) => {
                                tracing::warn!("redis-subscriber: connection lost: {e}");
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
            fills,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    pub fn fills(&self) -> &FillStats {
        &self.fills
    }

    /// The fills' counters in words, for `/health`.
    pub fn describe_fills(&self) -> String {
        let f = &self.fills;
        format!(
            "{} filled from the history after resubscribing, {} duplicates dropped, {} rooms found trimmed",
            f.filled.load(Ordering::Relaxed),
            f.duplicates.load(Ordering::Relaxed),
            f.lost.load(Ordering::Relaxed)
        )
    }

    pub fn join(&self) {
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }
}

/// Runs `read` on the history connection, first on the one kept from
/// before (if any) and, should that fail — it may have died with the
/// subscription — once more on a fresh one. The connection that worked is
/// kept for next time.
fn fill_on(
    data: &mut Option<redis::Connection>,
    connector: &RedisConnector,
    mut read: impl FnMut(&mut redis::Connection) -> Result<(), ReadError>,
) -> Result<(), ReadError> {
    if let Some(mut con) = data.take() {
        if read(&mut con).is_ok() {
            *data = Some(con);
            return Ok(());
        }
    }
    let mut con = connector.connect()?;
    read(&mut con)?;
    *data = Some(con);
    Ok(())
}

/// The newest entry of every room's history (`0-0` for none): where
/// forwarding starts; and the connection it was read on, for the fills.
fn snapshot(
    connector: &RedisConnector,
    topology: &Topology,
) -> Result<(redis::Connection, Forwarded), ReadError> {
    let mut con = connector.connect()?;
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for room in topology.rooms.iter() {
        stream::extent(&mut pipe, &topology.history_stream(room));
    }
    let replies: Vec<Value> = pipe.query(&mut con)?;
    let mut last = vec![Position::ZERO; topology.rooms.count() as usize + 1];
    for (room, reply) in topology.rooms.iter().zip(&replies) {
        last[room as usize] = stream::parse_extent(reply)?.last;
    }
    Ok((con, Forwarded(last)))
}

/// Forwards, room by room and in order, every entry of the history after
/// the last position forwarded (see the module docs).
fn fill(
    con: &mut redis::Connection,
    topology: &Topology,
    forwarded: &mut Forwarded,
    fanout: &Fanout,
    fills: &FillStats,
) -> Result<(), ReadError> {
    let mut rooms: Vec<u32> = topology.rooms.iter().collect();
    let mut first_round = true;
    while !rooms.is_empty() {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for &room in &rooms {
            let key = topology.history_stream(room);
            if first_round {
                stream::extent(&mut pipe, &key);
            }
            stream::read_after(&mut pipe, &key, forwarded.0[room as usize], FILL_PAGE);
        }
        let replies: Vec<Value> = pipe.query(con)?;
        let mut replies = replies.iter();
        let mut more = Vec::new();
        for room in rooms {
            let last = &mut forwarded.0[room as usize];
            if first_round {
                let extent = stream::parse_extent(replies.next().unwrap_or(&Value::Nil))?;
                if extent.exists && !extent.holds_all_after(*last) {
                    fills.lost.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "redis-subscriber: room {room}'s history was trimmed past {last} while the subscription was down: broadcasts were lost here"
                    );
                }
            }
            let entries = stream::parse_entries(replies.next().unwrap_or(&Value::Nil))?;
            if entries.len() == FILL_PAGE {
                more.push(room);
            }
            for entry in entries {
                if entry.position > *last {
                    *last = entry.position;
                    fanout.broadcast(room, entry.frame, Some(entry.position));
                    fills.filled.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        rooms = more;
        first_round = false;
    }
    Ok(())
}

/// Forwards broadcasts until shutdown (`Ok`) or a connection error,
/// dropping those a fill already forwarded.
fn forward(
    pubsub: &mut redis::PubSub<'_>,
    topology: &Topology,
    fanout: &Fanout,
    shutdown: &Shutdown,
    forwarded: &mut Forwarded,
    fills: &FillStats,
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
        let position = Position::of_frame(&frame);
        if let Some(position) = position {
            let last = &mut forwarded.0[room as usize];
            if position <= *last {
                fills.duplicates.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            *last = position;
        }
        fanout.broadcast(room, Utf8Bytes::from(frame), position);
    }
    Ok(())
}
