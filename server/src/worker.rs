//! A worker: one thread pinned to one core, running its own mio event loop
//! over its own `SO_REUSEPORT` listener and its own connections.
//!
//! The worker owns the loop, the listener, the inbox and the lists that
//! carry work from one step to the end of the turn (flush, resume, later);
//! each connection decides its own transitions
//! ([`crate::connection`]) and answers every step with a [`Next`], which
//! the worker carries out in `Worker::apply`. Per event a connection
//! drains its socket until `WouldBlock` (mio is edge-triggered), handles
//! every frame, and queues replies; queued output is flushed once per loop
//! turn for every connection that got some, so a burst of acks or
//! broadcasts costs one `write` per connection, not one per frame.
//! Cross-thread input (broadcasts, publish results, history pages for
//! resuming connections, presence frames and answers, shutdown) arrives
//! through the worker's [`Inbox`] and its `mio::Waker`. The other way,
//! the turn's presence events (accepted JOINs and LEAVEs, closes of
//! connections that held members, presence requests) leave as one
//! channel send at the end of the turn ([`crate::presence::Outbox`]).
//! Nothing here blocks.
//!
//! Two things happen on a clock rather than on an event (the Poll's
//! timeout, never a timer per connection): the sweep (deadlines, pings,
//! stop progress) every `SWEEP_INTERVAL`, and, after `accept` failed for
//! want of descriptors, a retry of the accept queue every `ACCEPT_RETRY`.
//! The listener is edge-triggered: the connections already queued raise no
//! new event, so without the retry they would wait for the next
//! connection to arrive.
//!
//! Stopping ([`WorkerEvent::Shutdown`], step 3 of [`crate::server`]'s
//! order) goes through `Stop`: first every new message is refused while
//! the answers to those in flight arrive and are sent (up to
//! `confirm_timeout`; what is still unanswered then gets an `UNAVAILABLE`
//! timeout error), then every WebSocket gets its 1001 close and the grace
//! period to answer it. The listener stays open throughout: a balancer's
//! health check gets its 503 rather than "connection refused", and an
//! upgrade a 503 saying the server is shutting down.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::broker::Broker;
use crate::connection::{self, Connection, Context, Next};
use crate::fanout::{Inbox, PublishError, WorkerEvent};
use crate::presence::Outbox;
use crate::stats::{Shared, WorkerStats};

pub const LISTENER: Token = Token(usize::MAX - 1);
pub const WAKER: Token = Token(usize::MAX - 2);

/// How often deadlines and shutdown progress are checked.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// After a failed `accept` (no descriptor or memory to spare), the accept
/// queue is tried again this often until it works: soon enough that a
/// freed descriptor is used at once, rare enough to cost nothing (ten
/// failing syscalls a second).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// A failing `accept` is reported at most this often (with how many
/// failures were not), so a long outage does not flood the log.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Where a stopping worker is (see the module docs).
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// New messages are refused; the answers to those in flight are
    /// awaited until `deadline`.
    Confirming { deadline: Instant },
    /// Every WebSocket has its 1001 close; they may answer until
    /// `deadline`. A worker whose WebSockets are gone waits (answering
    /// HTTP) until every worker's are, so that the listeners close
    /// together.
    Closing { deadline: Instant },
}

pub struct Worker {
    index: usize,
    poll: Poll,
    listener: TcpListener,
    inbox: Inbox,
    conns: Slab<Connection>,
    cx: Context,
    next_connection_id: u64,
    /// Connections with queued output, flushed at the end of the turn.
    dirty: Vec<usize>,
    /// Connections to read next turn without an event: their read budget
    /// ran out, or their paused input may flow again.
    resume: Vec<usize>,
    /// Steps whose `Next` waits until the caller lets go of the connections
    /// (a broadcast holds the room index): slow readers and removals.
    later: Vec<(usize, Next)>,
    stop: Option<Stop>,
    /// When to try the accept queue again after a failed `accept`.
    accept_retry: Option<Instant>,
    /// When a failed `accept` was last reported, and how many were not
    /// reported since.
    accept_logged: Option<Instant>,
    accept_unlogged: u64,
}

impl Worker {
    /// Builds a worker on the calling thread (already pinned): its Poll,
    /// listener registration and per-thread state.
    pub fn new(
        index: usize,
        poll: Poll,
        mut listener: TcpListener,
        inbox: Inbox,
        shared: Arc<Shared>,
        broker: Arc<dyn Broker>,
        presence: Option<Outbox>,
    ) -> io::Result<Self> {
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Worker {
            index,
            poll,
            listener,
            inbox,
            conns: Slab::with_capacity(1024),
            cx: Context::new(index, shared, broker, presence),
            next_connection_id: 0,
            dirty: Vec::new(),
            resume: Vec::new(),
            later: Vec::new(),
            stop: None,
            accept_retry: None,
            accept_logged: None,
            accept_unlogged: 0,
        })
    }

    /// Runs until shutdown completes. Only a failing Poll ends it early.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut last_sweep = Instant::now();
        loop {
            let timeout = if self.resume.is_empty() {
                let retry =
                    (self.accept_retry).map(|at| at.saturating_duration_since(Instant::now()));
                Some(retry.map_or(SWEEP_INTERVAL, |r| r.min(SWEEP_INTERVAL)))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut woken = false;
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => woken = true,
                    // A hang-up or error is handled by the read that reports it.
                    Token(key) => self.ready(
                        key,
                        event.is_readable() || event.is_read_closed() || event.is_error(),
                        event.is_writable(),
                    ),
                }
            }
            if woken {
                self.drain_inbox();
            }
            if self.accept_retry.is_some_and(|at| Instant::now() >= at) {
                self.accept_retry = None;
                self.accept();
            }
            for key in std::mem::take(&mut self.resume) {
                self.ready(key, true, false);
            }
            if last_sweep.elapsed() >= SWEEP_INTERVAL {
                last_sweep = Instant::now();
                self.sweep();
            }
            // After the inbox (answers just sent) and before the flush
            // (closes just queued go out behind them).
            let stopped = self.advance_stop();
            // Before the flush: a client that reads the ack of its JOIN
            // and then asks who is here finds itself in the answer.
            self.cx.send_presence();
            self.flush_dirty();
            if stopped {
                break;
            }
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.remove(key);
        }
        self.cx.send_presence();
        Ok(())
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _peer)) => self.admit(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // Interrupted, or a connection reset while it was queued:
                // the rest of the queue is still there.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    // Out of descriptors (EMFILE, ENFILE) or memory: the
                    // pending connections stay queued, and no new event
                    // will say so. Retry on the Poll's timeout.
                    WorkerStats::bump(&self.cx.stats().accept_failures);
                    self.accept_retry = Some(Instant::now() + ACCEPT_RETRY);
                    self.report_accept_failure(&e);
                    return;
                }
            }
        }
    }

    /// Logs a failed `accept`, at most once per [`ACCEPT_LOG_INTERVAL`].
    fn report_accept_failure(&mut self, error: &io::Error) {
        let now = Instant::now();
        if self
            .accept_logged
            .is_some_and(|at| now.saturating_duration_since(at) < ACCEPT_LOG_INTERVAL)
        {
            self.accept_unlogged += 1;
            return;
        }
        let unlogged = std::mem::take(&mut self.accept_unlogged);
        tracing::warn!(
            "worker-{}: accept failed: {error}; retrying every {} ms ({unlogged} more failure(s) since the last report)",
            self.index,
            ACCEPT_RETRY.as_millis()
        );
        self.accept_logged = Some(now);
    }

    fn admit(&mut self, mut stream: TcpStream) {
        // Small frames must not wait for Nagle: acks are latency.
        let _ = stream.set_nodelay(true);
        if let Some(size) = self.cx.shared().config.socket_send_buffer {
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(size);
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if self
            .poll
            .registry()
            .register(&mut stream, Token(key), Interest::READABLE)
            .is_err()
        {
            return;
        }
        self.next_connection_id += 1;
        entry.insert(Connection::new(stream, self.next_connection_id));
        WorkerStats::bump(&self.cx.stats().tcp_accepted);
    }

    /// Hands a readiness event to its connection.
    fn ready(&mut self, key: usize, readable: bool, writable: bool) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let next = conn.ready(key, readable, writable, &mut self.cx);
        self.apply(key, next);
    }

    /// Does what a connection's step asked for.
    fn apply(&mut self, key: usize, next: Next) {
        match next {
            Next::Keep { flush, resume } => {
                if resume {
                    self.resume.push(key);
                }
                if flush {
                    // Its interest is brought up to date after the flush.
                    if let Some(conn) = self.conns.get_mut(key) {
                        mark_dirty(&mut self.dirty, key, conn);
                    }
                } else {
                    self.sync_interest(key);
                }
            }
            Next::SlowReader => {
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.close_slow_reader(&self.cx);
                }
                self.remove(key);
            }
            Next::Remove => self.remove(key),
        }
    }

    /// Applies what waited in `later`.
    fn apply_later(&mut self) {
        let mut later = std::mem::take(&mut self.later);
        for (key, next) in later.drain(..) {
            self.apply(key, next);
        }
        // Reuse the allocation (`apply` never adds to `later`).
        self.later = later;
    }

    fn drain_inbox(&mut self) {
        let Worker {
            inbox,
            conns,
            cx,
            dirty,
            later,
            ..
        } = self;
        let mut shutdown = false;
        inbox.drain(|event| match event {
            WorkerEvent::Broadcast {
                room,
                frame,
                position,
            } => {
                connection::deliver(conns, cx, room, &frame, position, |key, conn, next| {
                    defer(dirty, later, key, conn, next)
                });
            }
            WorkerEvent::Published { ticket, result } => {
                if let Some((key, next)) = connection::published(conns, cx, ticket, result) {
                    defer(dirty, later, key, &mut conns[key], next);
                }
            }
            WorkerEvent::Shutdown => shutdown = true,
            WorkerEvent::History(page) => {
                if let Some((key, next)) = connection::replayed(conns, cx, *page) {
                    defer(dirty, later, key, &mut conns[key], next);
                }
            }
            WorkerEvent::PresenceFrame { room, frame } => {
                connection::deliver_presence(conns, cx, room, &frame, |key, conn, next| {
                    defer(dirty, later, key, conn, next)
                });
            }
            WorkerEvent::PresenceAnswer {
                key,
                connection_id,
                frame,
            } => {
                let answer = connection::presence_answered(conns, cx, key, connection_id, frame);
                if let Some((key, next)) = answer {
                    defer(dirty, later, key, &mut conns[key], next);
                }
            }
        });
        self.apply_later();
        if shutdown {
            self.begin_shutdown();
        }
    }

    /// Starts the worker's part of the stop (see the module docs and
    /// [`crate::server`]).
    fn begin_shutdown(&mut self) {
        if self.stop.is_some() {
            return;
        }
        self.cx.stop_publishing();
        let deadline = Instant::now() + self.cx.shared().config.confirm_timeout;
        self.stop = Some(Stop::Confirming { deadline });
    }

    /// Moves the stop on when its step is done; true once the worker may
    /// exit.
    fn advance_stop(&mut self) -> bool {
        let now = Instant::now();
        match self.stop {
            None => false,
            Some(Stop::Confirming { deadline }) => {
                if self.cx.in_flight() > 0 && now < deadline {
                    return false;
                }
                self.time_out_in_flight();
                let deadline = now + self.cx.shared().config.shutdown_grace;
                self.stop = Some(Stop::Closing { deadline });
                self.close_websockets();
                false
            }
            Some(Stop::Closing { deadline }) => {
                let shared = self.cx.shared();
                let open = self.cx.stats().open_connections.load(Ordering::Relaxed);
                if open > 0 && now < deadline {
                    return false;
                }
                shared.worker_closed(self.index);
                shared.all_closed() || now >= deadline
            }
        }
    }

    /// The broker did not answer every message in time: their clients get
    /// an `UNAVAILABLE` timeout error (it may have been stored) before the
    /// close, not silence.
    fn time_out_in_flight(&mut self) {
        let tickets = self.cx.in_flight_tickets();
        if tickets.is_empty() {
            return;
        }
        tracing::warn!(
            "worker-{}: {} message(s) still unconfirmed after {:?}: answered UNAVAILABLE",
            self.index,
            tickets.len(),
            self.cx.shared().config.confirm_timeout
        );
        for ticket in tickets {
            let answer = connection::published(
                &mut self.conns,
                &mut self.cx,
                ticket,
                Err(PublishError::Timeout),
            );
            if let Some((key, next)) = answer {
                defer(
                    &mut self.dirty,
                    &mut self.later,
                    key,
                    &mut self.conns[key],
                    next,
                );
            }
        }
        self.apply_later();
    }

    /// Sends every live WebSocket its 1001 close.
    fn close_websockets(&mut self) {
        for (key, conn) in self.conns.iter_mut() {
            let next = conn.shut_down();
            if next != Next::WAIT {
                self.later.push((key, next));
            }
        }
        self.apply_later();
    }

    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.dirty = false;
            let next = conn.flush_output(&mut self.cx);
            self.apply(key, next);
        }
        // Reuse the allocation.
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
        // Every connection that queued one of the turn's room frames was
        // dirty, so it has written it or kept a copy.
        self.cx.end_turn();
    }

    /// Registers the interest a connection's state calls for.
    fn sync_interest(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !conn.sync_interest(self.poll.registry(), key) {
            self.remove(key);
        }
    }

    /// Lets every connection check its deadlines. While closing, a
    /// WebSocket that opened late (its 101 was on its way at the stop) gets
    /// its close too.
    fn sweep(&mut self) {
        if matches!(self.stop, Some(Stop::Closing { .. })) {
            self.close_websockets();
        }
        let now = Instant::now();
        for (key, conn) in self.conns.iter_mut() {
            let next = conn.sweep(now, &mut self.cx);
            if next != Next::WAIT {
                self.later.push((key, next));
            }
        }
        self.apply_later();
    }

    fn remove(&mut self, key: usize) {
        let Some(mut conn) = self.conns.try_remove(key) else {
            return;
        };
        if let Some((moved, slot)) = conn.release(&mut self.cx, self.poll.registry()) {
            if let Some(moved) = self.conns.get_mut(moved) {
                moved.set_slot(slot);
            }
        }
    }
}

/// If the thread unwinds (a panic) with connections still held, their
/// connection slots and the open-connection gauge are given back, so a dead
/// worker does not shrink `max_connections` for the rest of the process,
/// and presence hears that their users lost them. (After a clean `run`
/// there is nothing left to give back.) Nothing here may panic: it can run
/// during unwinding.
impl Drop for Worker {
    fn drop(&mut self) {
        if self.conns.is_empty() {
            return;
        }
        for (_, conn) in self.conns.iter_mut() {
            if conn.counted() {
                self.cx.shared().close_connection();
            }
            conn.forget_presence(&mut self.cx);
        }
        self.cx.send_presence();
        self.cx.stats().open_connections.store(0, Ordering::Relaxed);
    }
}

fn mark_dirty(dirty: &mut Vec<usize>, key: usize, conn: &mut Connection) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(key);
    }
}

/// [`Worker::apply`] for steps taken while the connections are borrowed:
/// a flush is listed at once, anything that ends a connection waits in
/// `later`.
fn defer(
    dirty: &mut Vec<usize>,
    later: &mut Vec<(usize, Next)>,
    key: usize,
    conn: &mut Connection,
    next: Next,
) {
    match next {
        Next::FLUSH => mark_dirty(dirty, key, conn),
        Next::WAIT => {}
        other => later.push((key, other)),
    }
}
