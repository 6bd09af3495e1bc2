//! A holder thread: keeps idle connections open on its own `mio::Poll`
//! (edge-triggered; a connection is read only when something arrived, and
//! then drained until nothing is left), answers the server's pings
//! (tungstenite queues the pong and sends it on the next read), and counts
//! each probe broadcast a connection receives with its delivery latency.
//!
//! Messages to a holder ([`ToHolder`]) come on its channel with a wake of
//! its [`mio::Waker`]; `Finish` ends it and says how many broadcasts each
//! room's connections should have had, so the holder can count the
//! connections that missed some.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, TryRecvError};
use crossbeam_utils::CachePadded;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::connection::{Connection, Read1};
use crate::latency::Latencies;
use crate::wire::{self, Incoming};

use super::probe::ProbeClock;

/// The waker's token; connections use their slot index.
pub const WAKER: Token = Token(usize::MAX);
/// Readiness events taken per poll.
const EVENTS: usize = 1024;
/// How long a poll waits when nothing happens: the holder notices a lost
/// inbox (the run is gone) at least this often.
const POLL_TIMEOUT: Duration = Duration::from_millis(200);

/// One held connection.
pub struct Idle {
    conn: Connection,
    room: u32,
    /// Probe broadcasts it received.
    delivered: u64,
}

impl Idle {
    pub fn new(conn: Connection, room: u32) -> Idle {
        Idle {
            conn,
            room,
            delivered: 0,
        }
    }
}

/// What a holder is told.
pub enum ToHolder {
    /// Hold this connection (boxed: a connection is ~340 bytes, the other
    /// messages a few words).
    Hold(Box<Idle>),
    /// The probes are about to go: when each was sent is in this clock
    /// (broadcasts before it are counted as foreign).
    Clock(Arc<ProbeClock>),
    /// Stop: each room's connections should have received
    /// `expected_per_room[room - 1]` probe broadcasts.
    Finish { expected_per_room: Vec<u64> },
}

/// A holder's account.
#[derive(Debug, Default)]
pub struct Held {
    /// Connections it was given.
    pub held: u64,
    /// Probe broadcasts received, and their latency from the probe's send.
    pub delivered: u64,
    pub latency: Latencies,
    /// Broadcasts that were not this run's probes (other traffic in the
    /// rooms of a shared server), and probe texts with no send time.
    pub foreign: u64,
    pub unmatched: u64,
    /// Connections the server closed or that failed, by reason.
    pub lost: BTreeMap<String, u64>,
    /// Connections still open at the end that received every probe of
    /// their room, and fewer (more counts as complete, and as `extra`).
    pub complete: u64,
    pub incomplete: u64,
    pub extra: u64,
    /// A poll that failed (ends the holder; its connections are dropped).
    pub error: Option<String>,
}

/// The holder's side: its poll, its connections, its inbox.
pub struct Holder {
    poll: Poll,
    inbox: Receiver<ToHolder>,
    clock: Option<Arc<ProbeClock>>,
    /// Probe broadcasts received so far, for the run's wait.
    published: Arc<CachePadded<AtomicU64>>,
    conns: Vec<Option<Idle>>,
    out: Held,
}

impl Holder {
    pub fn new(
        poll: Poll,
        inbox: Receiver<ToHolder>,
        published: Arc<CachePadded<AtomicU64>>,
    ) -> Holder {
        Holder {
            poll,
            inbox,
            clock: None,
            published,
            conns: Vec::new(),
            out: Held::default(),
        }
    }

    /// Runs until `Finish` (or its inbox is gone, or the poll fails).
    pub fn run(mut self) -> Held {
        let mut events = Events::with_capacity(EVENTS);
        loop {
            match self.poll.poll(&mut events, Some(POLL_TIMEOUT)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.out.error = Some(format!("poll failed: {e}"));
                    return self.out;
                }
            }
            for ev in events.iter() {
                if ev.token() != WAKER {
                    self.drain(ev.token().0);
                }
            }
            loop {
                match self.inbox.try_recv() {
                    Ok(ToHolder::Hold(idle)) => self.hold(*idle),
                    Ok(ToHolder::Clock(clock)) => self.clock = Some(clock),
                    Ok(ToHolder::Finish { expected_per_room }) => {
                        return self.finish(&expected_per_room)
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return self.finish(&[]),
                }
            }
            self.published.store(self.out.delivered, Ordering::Relaxed);
        }
    }

    fn hold(&mut self, idle: Idle) {
        let token = self.conns.len();
        let fd = idle.conn.raw_fd();
        self.out.held += 1;
        match self
            .poll
            .registry()
            .register(&mut SourceFd(&fd), Token(token), Interest::READABLE)
        {
            Ok(()) => {
                self.conns.push(Some(idle));
                // Anything that came before the registration.
                self.drain(token);
            }
            Err(e) => {
                *self
                    .out
                    .lost
                    .entry(format!("cannot poll it: {e}"))
                    .or_default() += 1;
            }
        }
    }

    /// Reads everything that arrived on connection `token`.
    fn drain(&mut self, token: usize) {
        let Some(Some(idle)) = self.conns.get_mut(token) else {
            return;
        };
        loop {
            match idle.conn.read(false) {
                Read1::Text(text) => {
                    let Incoming::Broadcast(b) = wire::classify(text.as_str()) else {
                        continue;
                    };
                    let Some(clock) = self.clock.as_deref() else {
                        self.out.foreign += 1;
                        continue;
                    };
                    match wire::probe_index(b, &clock.prefix) {
                        Some(k) => match clock.sent_since_origin(k) {
                            Some(sent) => {
                                let now = clock.origin.elapsed();
                                self.out.latency.record(now.saturating_sub(sent));
                                self.out.delivered += 1;
                                idle.delivered += 1;
                            }
                            None => self.out.unmatched += 1,
                        },
                        None => self.out.foreign += 1,
                    }
                }
                Read1::Nothing => return,
                Read1::Lost(why) => {
                    let fd = idle.conn.raw_fd();
                    let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                    *self.out.lost.entry(why).or_default() += 1;
                    self.conns[token] = None;
                    return;
                }
            }
        }
    }

    /// Counts complete and incomplete connections, closes them (a close
    /// frame, no wait: the server may be closing thousands), hands over.
    fn finish(mut self, expected_per_room: &[u64]) -> Held {
        for idle in self.conns.drain(..).flatten() {
            let expected = expected_per_room
                .get(idle.room as usize - 1)
                .copied()
                .unwrap_or(0);
            if idle.delivered >= expected {
                self.out.complete += 1;
                self.out.extra += idle.delivered - expected;
            } else {
                self.out.incomplete += 1;
            }
            idle.conn.close(Duration::ZERO);
        }
        self.published.store(self.out.delivered, Ordering::Relaxed);
        self.out
    }
}
