//! A sender thread: one connection to one room at a time, up to `window`
//! messages in flight, retries with the workspace's jittered
//! [`Backoff`], the shared circuit breakers, ack and delivery latency, and
//! the records the CSV writer gets.
//!
//! Every message a sender takes from its lane ends in exactly one way:
//! acked, failed (counted, with a CSV row), or — only when the run is
//! stopped early — never sent (the report's `notSent`). That is what makes
//! the counts add up.
//!
//! The loop: fill the window (ready retries first, then fresh messages),
//! write every new frame with one flush, then read: block while nothing else
//! can be done, otherwise take only what already arrived, so a pipelined
//! connection handles many acks per wake-up and a window-1 connection does
//! exactly one write and one read per message.
//!
//! Open loop (a [`Spec::origin`]): a fresh message is ready only once it is
//! due, and a blocked read wakes at the next due time. A message sent late
//! (the window was full, or the thread behind) keeps its intended time:
//! its record carries how late it went out (`lag`), so latency can be
//! counted from the intended time as well as from the actual send.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatflow_broker::retry::Backoff;
use chatflow_protocol::presence::PresenceFrame;
use chatflow_protocol::time::now_ms;
use chatflow_protocol::MessageType;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use crossbeam_utils::CachePadded;

use crate::breaker::{Breaker, Permit};
use crate::config::{Config, PinMode};
use crate::connection::{Connection, Dial, Read1, ReadyWait};
use crate::csv::{Phase, Record, Status, NOT_SCHEDULED, RECORD_BATCH};
use crate::delivery::Deliveries;
use crate::generator::{Batch, Msg};
use crate::latency::Latencies;
use crate::refusals::{Outage, Refusals};
use crate::threads;
use crate::wire::{self, Encoder, Incoming};

/// Counters one thread publishes for the progress display and the give-up
/// watchdog. Single writer (plain stores), padded so threads never share a
/// cache line.
#[derive(Default)]
pub struct Slot {
    pub acked: AtomicU64,
    pub failed: AtomicU64,
}

/// What every sender thread shares: config, servers and their breakers,
/// stop signals, progress slots, the latest error.
pub struct Shared {
    pub config: Config,
    pub breakers: Vec<Breaker>,
    /// Per server: is it refusing messages (`UNAVAILABLE`), and its outages.
    pub refusals: Vec<Refusals>,
    next_endpoint: AtomicUsize,
    /// Ctrl-C: stop sending, let in-flight messages finish, report.
    pub stop: Arc<AtomicBool>,
    /// Given up (server dead or hung): stop now.
    abort: AtomicBool,
    abort_reason: Mutex<Option<String>>,
    pub slots: Vec<CachePadded<Slot>>,
    last_error: Mutex<Option<String>>,
    /// Names this run in every `clientMessageId` (`{run:x}-{slot}-{seq}`):
    /// servers treat a `(userId, clientMessageId)` seen within their dedup
    /// window as a retry of the same message, so names must never repeat
    /// across threads, nor across runs (even with the same `--seed`).
    pub run_id: u64,
    /// The run's start: second 0 of the error counts (and of the charts).
    pub started: Instant,
}

/// A number no other run uses: the clock's nanoseconds and the process
/// id, mixed (not the seed: two runs with the same seed must differ).
fn run_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = nanos ^ (u64::from(std::process::id()) << 40);
    // splitmix64's finaliser: nearby inputs give unrelated outputs.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Shared {
    pub fn new(config: Config, stop: Arc<AtomicBool>, slots: usize, started: Instant) -> Self {
        let breakers = config
            .urls
            .iter()
            .map(|_| {
                Breaker::new(
                    config.breaker_threshold,
                    config.breaker_cooldown,
                    config.connect_timeout,
                )
            })
            .collect();
        let config_urls = config.urls.len();
        Shared {
            config,
            breakers,
            next_endpoint: AtomicUsize::new(0),
            stop,
            abort: AtomicBool::new(false),
            abort_reason: Mutex::new(None),
            slots: (0..slots)
                .map(|_| CachePadded::new(Slot::default()))
                .collect(),
            last_error: Mutex::new(None),
            run_id: run_id(),
            refusals: (0..config_urls).map(|_| Refusals::default()).collect(),
            started,
        }
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }

    pub fn abort(&self, reason: String) {
        let mut r = self.abort_reason.lock().unwrap_or_else(|e| e.into_inner());
        r.get_or_insert(reason);
        self.abort.store(true, Ordering::Relaxed);
    }

    pub fn abort_reason(&self) -> Option<String> {
        self.abort_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_last_error(&self, e: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// (acked, failed) over every thread.
    pub fn totals(&self) -> (u64, u64) {
        self.slots.iter().fold((0, 0), |(a, f), s| {
            (
                a + s.acked.load(Ordering::Relaxed),
                f + s.failed.load(Ordering::Relaxed),
            )
        })
    }

    pub fn breaker_openings(&self) -> u64 {
        self.breakers.iter().map(Breaker::openings).sum()
    }

    /// The next server to connect to: round-robin over those whose breaker
    /// lets a connection through, those not refusing messages first; if
    /// no breaker lets one through, how long to wait.
    fn pick(&self, now: Instant) -> (usize, Permit) {
        let n = self.breakers.len();
        let start = self.next_endpoint.fetch_add(1, Ordering::Relaxed);
        let mut wait = Duration::MAX;
        for accepting_only in [true, false] {
            for k in 0..n {
                let i = (start + k) % n;
                if accepting_only && self.refusals[i].is_refusing() {
                    continue;
                }
                match self.breakers[i].acquire(now) {
                    Permit::Wait(d) => wait = wait.min(d),
                    permit => return (i, permit),
                }
            }
        }
        (0, Permit::Wait(wait))
    }

    /// Is a server other than `server` taking messages (not refusing, its
    /// breaker closed)? Then a thread on a refusing `server` moves there.
    fn another_accepts(&self, server: usize) -> bool {
        (0..self.breakers.len())
            .any(|i| i != server && !self.refusals[i].is_refusing() && self.breakers[i].is_closed())
    }

    /// Every server's outages so far.
    pub fn outages(&self) -> Vec<Vec<Outage>> {
        self.refusals.iter().map(Refusals::outages).collect()
    }

    /// `UNAVAILABLE` answers over every server.
    pub fn refusals_total(&self) -> u64 {
        self.refusals.iter().map(Refusals::total).sum()
    }
}

/// One sender thread's assignment.
pub struct Spec {
    /// Index into [`Shared::slots`].
    pub slot: usize,
    pub phase: Phase,
    pub room: u32,
    pub source: Receiver<Batch>,
    pub records: Sender<Vec<Record>>,
    /// Seeds backoff jitter and masking keys.
    pub seed: u64,
    /// Open loop: the main phase's start, from which each message's
    /// `due_ns` counts. `None`: closed loop (and the warm-up).
    pub origin: Option<Instant>,
}

/// What a thread did, merged into the report.
#[derive(Debug)]
pub struct Outcome {
    pub phase: Phase,
    pub acked: u64,
    pub failed: u64,
    pub retries: u64,
    pub connections: u64,
    pub reconnections: u64,
    pub ack: Latencies,
    pub delivery: Latencies,
    /// Open loop: delivery latency from the intended send time.
    pub delivery_corrected: Option<Latencies>,
    pub delivered: u64,
    pub delivery_missing: u64,
    pub unexpected_frames: u64,
    /// When its last message was acked or failed.
    pub last_done: Option<Instant>,
    /// Time messages spent waiting out back-offs, summed over messages,
    /// and the most any one message waited in all.
    pub backoff_wait: Duration,
    pub longest_wait: Duration,
    /// Reconnects that resumed the room with `?since=`, the messages the
    /// servers replayed on them, and resumes that said not everything
    /// missed could be replayed.
    pub resumes: u64,
    pub recovered: u64,
    pub unrecovered_resumes: u64,
    /// Failed attempts (error answers, timeouts, lost connections, failed
    /// connects) per second of the run: the charts' error bursts.
    pub errors_per_second: Vec<u64>,
    /// Presence frames received (`presence_join`, `presence_leave`, and
    /// the answers of the end-of-run check).
    pub presence_frames: u64,
    /// Main phase, `--presence-check`: what its connection's server said of
    /// the room at the end, against the users the connection holds.
    pub presence: Option<PresenceSeen>,
}

/// One connection's end-of-run presence check: the server's member list
/// of its room against the users this connection's accepted JOINs made
/// present (and no LEAVE on it removed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceSeen {
    pub room: u32,
    /// The room's members across the fleet, as the server counted them;
    /// `None` if it refused the request (`refused` says how).
    pub count: Option<u64>,
    pub refused: Option<String>,
    /// The users this connection holds.
    pub ours: BTreeSet<u32>,
    /// Those of `ours` the server did not list.
    pub missing: BTreeSet<u32>,
}

/// A message's first attempt: its name on the wire and when the clock
/// started. Every retry keeps both, so the server recognises the retry
/// (same `clientMessageId` and `userId`: idempotent sends) and the
/// latency measured includes every wait.
#[derive(Clone, Copy)]
struct First {
    /// Becomes the `clientMessageId` (with the thread's prefix).
    seq: u64,
    sent_at: Instant,
    sent_ms: i64,
    /// Time spent so far waiting out back-offs between its attempts.
    waited: Duration,
    /// Open loop: when it was due (ns after the phase's start;
    /// [`NOT_SCHEDULED`] in closed loop) and how late its first attempt
    /// went out.
    due_ns: u64,
    lag: Duration,
}

struct InFlight {
    msg: Msg,
    /// Attempts before this one.
    attempts: u32,
    first: First,
    /// This attempt (the ack timeout runs from it).
    attempt_at: Instant,
}

struct Retry {
    msg: Msg,
    /// Attempts made so far.
    attempts: u32,
    first: First,
    /// When its last attempt failed (the back-off runs from it).
    failed_at: Instant,
    not_before: Instant,
}

/// The messages a sender holds that are not in flight.
struct InHand {
    /// Taken from the lane, never sent (in due order in an open loop).
    fresh: VecDeque<Msg>,
    /// Failed attempts waiting out their back-off.
    retry: VecDeque<Retry>,
    /// Open loop: the phase's start (a fresh message is ready once due).
    origin: Option<Instant>,
}

impl InHand {
    /// Is a message ready to go: a fresh one (due, in an open loop), or a
    /// retry whose back-off is over?
    #[inline]
    fn has_ready(&self, now: Instant) -> bool {
        self.fresh_ready(now) || self.retry.iter().any(|r| r.not_before <= now)
    }

    /// Is the next fresh message ready (there, and due in an open loop)?
    #[inline]
    fn fresh_ready(&self, now: Instant) -> bool {
        match (self.fresh.front(), self.origin) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(m), Some(origin)) => origin + Duration::from_nanos(m.due_ns) <= now,
        }
    }

    /// Open loop: when the next fresh message is due.
    fn next_due(&self) -> Option<Instant> {
        let origin = self.origin?;
        self.fresh
            .front()
            .map(|m| origin + Duration::from_nanos(m.due_ns))
    }

    /// The next message to attempt, the attempts it already made and its
    /// first attempt (none yet for a fresh one): a retry whose back-off is
    /// over first, then a fresh one.
    #[inline]
    fn next_ready(&mut self, now: Instant) -> Option<(Msg, u32, Option<First>)> {
        if let Some(k) = self.retry.iter().position(|r| r.not_before <= now) {
            return Some(self.take_retry(k, now));
        }
        self.next_fresh(now)
    }

    #[inline]
    fn next_fresh(&mut self, now: Instant) -> Option<(Msg, u32, Option<First>)> {
        if !self.fresh_ready(now) {
            return None;
        }
        self.fresh.pop_front().map(|m| (m, 0, None))
    }

    /// The probe of a refusing server: the oldest message waiting, whatever
    /// its own back-off says (the probe's timing is the thread's), or, with
    /// none waiting, one fresh message.
    fn next_probe(&mut self, now: Instant) -> Option<(Msg, u32, Option<First>)> {
        if !self.retry.is_empty() {
            return Some(self.take_retry(0, now));
        }
        self.next_fresh(now)
    }

    fn take_retry(&mut self, k: usize, now: Instant) -> (Msg, u32, Option<First>) {
        let r = self.retry.remove(k).expect("a retry at k");
        let mut first = r.first;
        first.waited += now.saturating_duration_since(r.failed_at);
        (r.msg, r.attempts, Some(first))
    }

    fn is_empty(&self) -> bool {
        self.fresh.is_empty() && self.retry.is_empty()
    }
}

/// Runs a sender thread to completion (started by [`threads::spawn`],
/// which applies SCHED_BATCH).
pub fn run(shared: &Shared, spec: Spec) -> Outcome {
    SenderThread::new(shared, spec).run()
}

struct SenderThread<'a> {
    shared: &'a Shared,
    cfg: &'a Config,
    spec: Spec,
    conn: Option<Connection>,
    /// Which server (`--url` index) `conn` is to.
    server: usize,
    /// The last room `position` broadcast to this thread ("" before one):
    /// a reconnect resumes after it.
    position: String,
    /// While the server refuses messages: the wait between this thread's
    /// probes (doubling per refusal, reset by an ack), and when the next
    /// may go.
    probe_backoff: Backoff,
    probe_not_before: Instant,
    /// Open loop: waits for input or the next due time to the millisecond
    /// (a blocking read's SO_RCVTIMEO overshoots by several ms). `None` in
    /// closed loop, or if no poll could be made (then reads wait as in
    /// closed loop, less precisely).
    ready: Option<ReadyWait>,
    /// Consecutive failed connects: doubles the wait before the next one.
    connect_backoff: Backoff,
    connect_not_before: Instant,
    encoder: Encoder,
    hand: InHand,
    source_done: bool,
    inflight: VecDeque<InFlight>,
    seq: u64,
    /// Ctrl-C seen: send nothing more, so reads may block.
    stopping: bool,
    deliveries: Option<Deliveries>,
    records: Vec<Record>,
    /// Message retries' delays, by attempt count (see [`Self::retry_delay`]).
    retry_backoff: Backoff,
    /// The users the current connection made present: its acked JOINs, less
    /// its acked LEAVEs (a new connection holds none).
    joined: HashSet<u32>,
    out: Outcome,
}

impl<'a> SenderThread<'a> {
    fn new(shared: &'a Shared, spec: Spec) -> Self {
        let cfg = &shared.config;
        SenderThread {
            shared,
            cfg,
            conn: None,
            server: 0,
            position: String::new(),
            ready: spec.origin.and_then(|_| ReadyWait::new().ok()),
            connect_backoff: Backoff::new(cfg.backoff_base, cfg.backoff_max, spec.seed),
            probe_backoff: Backoff::new(cfg.backoff_base, cfg.backoff_max, spec.seed ^ 0x9e37_79b9),
            probe_not_before: Instant::now(),
            connect_not_before: Instant::now(),
            encoder: Encoder::new(spec.seed, format!("{:x}-{}-", shared.run_id, spec.slot)),
            hand: InHand {
                fresh: VecDeque::with_capacity(cfg.window + crate::generator::BATCH),
                retry: VecDeque::new(),
                origin: spec.origin,
            },
            source_done: false,
            inflight: VecDeque::with_capacity(cfg.window),
            seq: 0,
            stopping: false,
            deliveries: cfg
                .delivery
                .then(|| Deliveries::new(cfg.delivery_timeout, cfg.window, spec.origin.is_some())),
            records: Vec::with_capacity(RECORD_BATCH),
            // Any value other than the connect back-off's seed.
            retry_backoff: Backoff::new(
                cfg.backoff_base,
                cfg.backoff_max,
                spec.seed ^ 0x5851_F42D_4C95_7F2D,
            ),
            out: Outcome {
                phase: spec.phase,
                acked: 0,
                failed: 0,
                retries: 0,
                connections: 0,
                reconnections: 0,
                ack: Latencies::new(),
                delivery: Latencies::new(),
                delivery_corrected: None,
                delivered: 0,
                delivery_missing: 0,
                unexpected_frames: 0,
                last_done: None,
                backoff_wait: Duration::ZERO,
                longest_wait: Duration::ZERO,
                resumes: 0,
                recovered: 0,
                unrecovered_resumes: 0,
                errors_per_second: Vec::new(),
                presence_frames: 0,
                presence: None,
            },
            joined: HashSet::new(),
            spec,
        }
    }

    fn run(mut self) -> Outcome {
        loop {
            if self.shared.aborted() {
                self.give_up(Status::Aborted);
                break;
            }
            if self.shared.stopped() {
                self.stop_gracefully();
                break;
            }
            let now = Instant::now();
            self.check_deadlines(now);
            // A refusing server keeps only its probes; with nothing in
            // flight, a thread moves to a server that takes messages.
            if self.conn.is_some()
                && self.inflight.is_empty()
                && self.shared.refusals[self.server].is_refusing()
                && self.shared.another_accepts(self.server)
            {
                self.conn = None;
            }
            if self.inflight.len() < self.cfg.window {
                self.take_fresh();
                // An open loop connects before its first message is due, so
                // the connect is not part of that message's lag.
                let early_connect = self.conn.is_none()
                    && self.spec.origin.is_some()
                    && !self.hand.fresh.is_empty();
                if self.ready_to_send(now) || early_connect {
                    if self.conn.is_none() {
                        if now < self.connect_not_before {
                            self.sleep_until(self.connect_not_before);
                            continue;
                        }
                        if !self.connect() {
                            continue;
                        }
                    }
                    self.send_ready();
                }
            }
            if self.inflight.is_empty() {
                if self.hand.fresh.is_empty() && self.hand.retry.is_empty() && self.source_done {
                    break;
                }
                self.idle();
                continue;
            }
            self.read_round(false);
        }
        self.finish()
    }

    /// Is this thread's server refusing messages?
    fn refusing(&self) -> bool {
        self.conn.is_some() && self.shared.refusals[self.server].is_refusing()
    }

    /// Is there something to send now: a message ready, or — to a
    /// refusing server — a probe due (one at a time)?
    fn ready_to_send(&self, now: Instant) -> bool {
        if self.refusing() {
            self.inflight.is_empty() && now >= self.probe_not_before && !self.hand.is_empty()
        } else {
            self.hand.has_ready(now)
        }
    }

    /// Tops up `fresh` from the lane without blocking.
    fn take_fresh(&mut self) {
        while self.hand.fresh.len() < self.cfg.window && !self.source_done {
            match self.spec.source.try_recv() {
                Ok(batch) => self.hand.fresh.extend(batch.messages().iter().copied()),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.source_done = true,
            }
        }
    }

    /// Could something be sent now? (Room in the window and a message
    /// ready here or waiting in the lane.)
    fn can_send_more(&self, now: Instant) -> bool {
        if self.stopping || self.inflight.len() >= self.cfg.window {
            return false;
        }
        if self.refusing() {
            // One probe at a time: nothing more until it is answered.
            return self.ready_to_send(now);
        }
        if self.spec.origin.is_some() {
            // Open loop: the lane's messages are due after those in hand,
            // and `take_fresh` tops the hand up to the window first; only
            // a lane it did not empty leaves more to take now.
            return self.hand.has_ready(now)
                || (self.hand.fresh.len() < self.cfg.window && !self.spec.source.is_empty());
        }
        self.hand.has_ready(now) || !self.spec.source.is_empty()
    }

    /// Open loop: the latest a blocked read may wait — the next fresh
    /// message's due time while the window has room (`None`: no such
    /// bound; a read blocks up to a tick).
    fn wake_for_due(&self) -> Option<Instant> {
        if self.inflight.len() >= self.cfg.window || self.refusing() {
            return None;
        }
        // A tick at most: Ctrl-C and the ack timeout are checked between.
        let tick = Instant::now() + self.cfg.tick;
        self.hand.next_due().map(|due| due.min(tick))
    }

    /// Open loop: handles the next frame to arrive before `until` (what
    /// already arrived first). True if one did.
    fn await_input(&mut self, until: Instant) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            self.sleep_until(until);
            return false;
        };
        match conn.read_by(self.ready.as_mut(), until) {
            Read1::Text(text) => {
                self.on_text(text.as_str());
                true
            }
            Read1::Nothing => false,
            Read1::Lost(why) => {
                self.lost(Status::ConnectionFailed, why);
                false
            }
        }
    }

    /// Nothing in flight and nothing ready: wait for the lane or a retry's
    /// backoff, still reading broadcasts that are awaited.
    fn idle(&mut self) {
        let awaiting = self.deliveries.as_ref().is_some_and(|d| d.awaiting() > 0);
        if awaiting && self.conn.is_some() {
            self.read_round(true);
        }
        let now = Instant::now();
        let next_retry = if self.refusing() {
            Some(self.probe_not_before)
        } else {
            self.hand.retry.iter().map(|r| r.not_before).min()
        };
        if let Some(due) = self.hand.next_due().filter(|_| !self.refusing()) {
            // Open loop, the next message not due yet: wait for its time on
            // the socket, so broadcasts are stamped as they arrive.
            let until = next_retry
                .map_or(due, |r| r.min(due))
                .min(now + self.cfg.tick);
            self.await_input(until);
            return;
        }
        // While broadcasts are awaited, wake often so their arrival is
        // stamped promptly; otherwise a tick bounds Ctrl-C latency.
        let cap = if awaiting {
            Duration::from_millis(1)
        } else {
            self.cfg.tick
        };
        let wait = next_retry
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or(cap)
            .min(cap);
        if !self.source_done && self.hand.fresh.is_empty() {
            match self.spec.source.recv_timeout(wait) {
                Ok(batch) => self.hand.fresh.extend(batch.messages().iter().copied()),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.source_done = true,
            }
        } else if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }

    fn sleep_until(&self, t: Instant) {
        let d = t
            .saturating_duration_since(Instant::now())
            .min(self.cfg.tick);
        if !d.is_zero() {
            std::thread::sleep(d);
        }
    }

    /// Opens a connection to this thread's room on the next server whose
    /// breaker allows it. False if it failed or the breakers say wait.
    fn connect(&mut self) -> bool {
        let now = Instant::now();
        let (i, permit) = self.shared.pick(now);
        let probe = match permit {
            Permit::Wait(d) => {
                // Waiting for an open breaker spends no attempt.
                self.connect_not_before = now + d.min(self.cfg.breaker_cooldown);
                return false;
            }
            Permit::Probe => true,
            Permit::Go => false,
        };
        let endpoint = &self.cfg.urls[i];
        // A reconnect resumes the room where this thread left it: the
        // server replays what was broadcast meanwhile.
        let since = (!self.position.is_empty()).then_some(self.position.as_str());
        if since.is_some() {
            self.out.resumes += 1;
        }
        let dial = Dial::sender(self.cfg.connect_timeout, self.cfg.tick, self.cfg.window);
        match Connection::open(endpoint, self.spec.room, since, &dial) {
            Ok(conn) => {
                self.shared.breakers[i].success();
                self.server = i;
                if self.out.connections > 0 {
                    self.out.reconnections += 1;
                }
                self.out.connections += 1;
                self.connect_backoff.reset();
                self.joined.clear();
                if self
                    .ready
                    .as_ref()
                    .is_some_and(|r| r.attach(&conn).is_err())
                {
                    // Reads still wait, to SO_RCVTIMEO's precision.
                    self.ready = None;
                }
                let pin = match self.cfg.pin {
                    PinMode::On => true,
                    PinMode::Off => false,
                    PinMode::Auto => conn.peer_is_loopback(),
                };
                if pin {
                    if let Some(cpu) = conn.incoming_cpu() {
                        threads::pin_to(cpu);
                    }
                }
                self.conn = Some(conn);
                true
            }
            Err(e) => {
                let now = Instant::now();
                self.shared.breakers[i].failure(now, probe);
                self.shared.set_last_error(e.to_string());
                self.connect_not_before = now + self.connect_backoff.next_delay();
                // The messages that were to go out on it each spent an attempt.
                let mut spent = Vec::with_capacity(self.cfg.window);
                while spent.len() < self.cfg.window {
                    match self.hand.next_ready(now) {
                        Some(m) => spent.push(m),
                        None => break,
                    }
                }
                let now_wall = now_ms();
                for (msg, attempts, first) in spent {
                    // A re-attempt that died at connect is a retry too.
                    if attempts > 0 {
                        self.out.retries += 1;
                    }
                    let first = first.unwrap_or_else(|| self.first_attempt(&msg, now, now_wall));
                    let latency = now.saturating_duration_since(first.sent_at);
                    self.attempt_failed(
                        msg,
                        attempts + 1,
                        Status::ConnectionFailed,
                        true,
                        first,
                        latency.as_micros() as u64,
                    );
                }
                false
            }
        }
    }

    /// Encodes every message the window has room for, then one flush.
    fn send_ready(&mut self) {
        if self.conn.is_none() {
            return;
        }
        let now = Instant::now();
        let wall = now_ms();
        // A refusing server gets one probe at a time, the oldest message
        // waiting, when this thread's probe back-off allows; no fresh
        // messages are spent on it.
        let refusing = self.refusing();
        let limit = if refusing { 1 } else { self.cfg.window };
        while self.inflight.len() < limit {
            let next = if refusing {
                if now < self.probe_not_before {
                    break;
                }
                self.hand.next_probe(now)
            } else {
                self.hand.next_ready(now)
            };
            let Some((msg, attempts, first)) = next else {
                break;
            };
            if attempts > 0 {
                self.out.retries += 1;
            }
            let first = match first {
                Some(first) => first,
                None => self.first_attempt(&msg, now, wall),
            };
            let conn = self.conn.as_mut().expect("checked above");
            self.encoder.encode(conn.out(), &msg, first.seq, wall);
            self.inflight.push_back(InFlight {
                msg,
                attempts,
                first,
                attempt_at: now,
            });
        }
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if let Err(e) = conn.flush() {
            self.lost(Status::ConnectionFailed, format!("write failed: {e}"));
        }
    }

    /// Reads frames: blocks (up to a tick) while there is nothing else to
    /// do, otherwise takes only what already arrived. `drain_only`: never block.
    fn read_round(&mut self, drain_only: bool) {
        loop {
            let wait =
                !drain_only && !self.inflight.is_empty() && !self.can_send_more(Instant::now());
            if let Some(until) = if wait { self.wake_for_due() } else { None } {
                // Open loop with room in the window: input, or the next
                // message's time, whichever comes first.
                if !self.await_input(until) {
                    break;
                }
                if self.inflight.is_empty() && !drain_only {
                    break;
                }
                continue;
            }
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            match conn.read(wait) {
                Read1::Text(text) => self.on_text(text.as_str()),
                Read1::Nothing => break,
                Read1::Lost(why) => {
                    self.lost(Status::ConnectionFailed, why);
                    break;
                }
            }
            if self.inflight.is_empty() && !drain_only {
                // Everything acked: send more before reading on.
                break;
            }
        }
        self.publish();
    }

    /// Publishes this thread's counts for the progress display and the
    /// give-up watchdog.
    fn publish(&self) {
        let slot = &self.shared.slots[self.spec.slot];
        slot.acked.store(self.out.acked, Ordering::Relaxed);
        slot.failed.store(self.out.failed, Ordering::Relaxed);
    }

    fn on_text(&mut self, text: &str) {
        match wire::classify(text) {
            Incoming::Ack { seq, id } => {
                let Some(f) = self.take_inflight(seq) else {
                    return;
                };
                let now = Instant::now();
                let refusals = &self.shared.refusals[self.server];
                if refusals.is_refusing() {
                    refusals.accepted(now_ms());
                }
                self.probe_backoff.reset();
                self.waited(f.first);
                // From the first attempt: a retried message's latency
                // includes every wait before it got through.
                let latency = now.saturating_duration_since(f.first.sent_at);
                self.out.ack.record(latency);
                self.out.acked += 1;
                self.out.last_done = Some(now);
                self.record(f.msg, &f.first, latency, Status::Ok);
                if let Some(d) = self.deliveries.as_mut() {
                    d.acked(id.0, f.first.sent_at, f.first.lag, now);
                }
                match f.msg.kind {
                    MessageType::Text => {}
                    MessageType::Join => {
                        self.joined.insert(f.msg.user_id);
                    }
                    MessageType::Leave => {
                        self.joined.remove(&f.msg.user_id);
                    }
                }
            }
            Incoming::Error { seq, code } => {
                let Some(f) = self.take_inflight(seq) else {
                    return;
                };
                let (status, retryable) = Status::from_code(code);
                if status == Status::Unavailable {
                    // The server says "back off": it is refusing until it
                    // acks again, and this thread probes it at a slowing
                    // pace meanwhile.
                    self.shared.refusals[self.server].refused(now_ms());
                    self.probe_not_before = Instant::now() + self.probe_backoff.next_delay();
                }
                self.shared.set_last_error(wire::error_text(text));
                let latency = f.first.sent_at.elapsed();
                self.attempt_failed(
                    f.msg,
                    f.attempts + 1,
                    status,
                    retryable,
                    f.first,
                    latency.as_micros() as u64,
                );
            }
            Incoming::Broadcast(text) => {
                if let Some(p) = wire::broadcast_position(text) {
                    // Reused buffer: no allocation per broadcast.
                    self.position.clear();
                    self.position.push_str(p);
                }
                if let Some(d) = self.deliveries.as_mut() {
                    if d.awaiting() > 0 || !self.inflight.is_empty() {
                        let inflight = &self.inflight;
                        d.broadcast(
                            text,
                            |user| inflight.iter().any(|f| f.msg.user_id == user),
                            Instant::now,
                        );
                    }
                }
            }
            Incoming::Recovery {
                replayed,
                recovered,
            } => {
                self.out.recovered += replayed;
                if !recovered {
                    self.out.unrecovered_resumes += 1;
                }
            }
            Incoming::Presence(_) => self.out.presence_frames += 1,
            Incoming::Other => self.out.unexpected_frames += 1,
        }
    }

    /// The end-of-run presence check (see [`PresenceSeen`]): asks for the
    /// room's member list, a page at a time, and compares. `None` if the
    /// connection is gone or the answer does not come within the ack
    /// timeout.
    fn check_presence(&mut self) -> Option<PresenceSeen> {
        let deadline = Instant::now() + self.cfg.ack_timeout;
        let mut seen = PresenceSeen {
            room: self.spec.room,
            count: None,
            refused: None,
            ours: self.joined.iter().copied().collect(),
            missing: BTreeSet::new(),
        };
        let mut listed = HashSet::new();
        let mut after: Option<u32> = None;
        loop {
            let request = match after {
                Some(a) => format!(r#"{{"type":"presence","after":{a}}}"#),
                None => r#"{"type":"presence"}"#.to_string(),
            };
            let conn = self.conn.as_mut()?;
            self.encoder.encode_raw(conn.out(), request.as_bytes());
            conn.flush().ok()?;
            let next = loop {
                if Instant::now() >= deadline {
                    return None;
                }
                let text = match conn.read(true) {
                    Read1::Text(text) => text,
                    Read1::Nothing => continue,
                    Read1::Lost(_) => return None,
                };
                match wire::classify(text.as_str()) {
                    Incoming::Presence(frame) => {
                        self.out.presence_frames += 1;
                        if let Some(PresenceFrame::Presence(list)) = PresenceFrame::parse(frame) {
                            listed.extend(list.members.iter().map(|m| m.user_id));
                            seen.count = Some(list.count);
                            break list.next_after;
                        }
                    }
                    // No clientMessageId: the answer to the request (an old
                    // server reads it as a message without a userId).
                    Incoming::Error { seq: None, code } => {
                        seen.refused = Some(code.to_string());
                        return Some(seen);
                    }
                    _ => {}
                }
            };
            match next {
                Some(a) => after = Some(a),
                None => break,
            }
        }
        seen.missing = seen
            .ours
            .iter()
            .filter(|u| !listed.contains(u))
            .copied()
            .collect();
        Some(seen)
    }

    /// Takes the in-flight entry an ack or error is for: by echoed sequence
    /// (the oldest first: acks come back in order), or the oldest if not
    /// echoed. None (counted as unexpected) if nothing in flight matches.
    /// Inlined: called once per ack, and as a call it costs ~45
    /// instructions a message more (callgrind, one sender at window 1).
    #[inline(always)]
    fn take_inflight(&mut self, seq: Option<u64>) -> Option<InFlight> {
        let k = match seq {
            None => (!self.inflight.is_empty()).then_some(0),
            Some(s) => self.inflight.iter().position(|f| f.first.seq == s),
        };
        let f = k.and_then(|k| self.inflight.remove(k));
        if f.is_none() {
            self.out.unexpected_frames += 1;
        }
        f
    }

    /// One attempt of `msg` failed (`attempts` made so far): retry after a
    /// backoff if allowed, otherwise count it failed.
    fn attempt_failed(
        &mut self,
        msg: Msg,
        attempts: u32,
        status: Status,
        retryable: bool,
        first: First,
        latency_us: u64,
    ) {
        // A message keeps trying while it has attempts left, or while it is
        // younger than the retry window: an outage of that length is waited
        // out instead of failing every message caught in it.
        let within_window = first.sent_at.elapsed() < self.cfg.retry_window;
        let now = Instant::now();
        self.error_at(now);
        if retryable && (attempts <= self.cfg.retries || within_window) {
            let not_before = now + self.retry_delay(attempts);
            self.hand.retry.push_back(Retry {
                msg,
                attempts,
                first,
                failed_at: now,
                not_before,
            });
        } else {
            self.waited(first);
            self.fail(msg, &first, latency_us, status);
        }
    }

    /// Counts a failed attempt in its second of the run.
    fn error_at(&mut self, now: Instant) {
        let second = now.saturating_duration_since(self.shared.started).as_secs() as usize;
        let per = &mut self.out.errors_per_second;
        if per.len() <= second {
            per.resize(second + 1, 0);
        }
        per[second] += 1;
    }

    /// A message is done (acked or failed): its back-off waits count.
    fn waited(&mut self, first: First) {
        self.out.backoff_wait += first.waited;
        self.out.longest_wait = self.out.longest_wait.max(first.waited);
    }

    /// A message's first attempt (sent now, or failing before it reached
    /// the wire because its connection could not be opened): it gets its
    /// name and clock now, and in an open loop how late that is.
    fn first_attempt(&mut self, msg: &Msg, now: Instant, wall: i64) -> First {
        self.seq += 1;
        let (due_ns, lag) = match self.spec.origin {
            Some(origin) => (
                msg.due_ns,
                now.saturating_duration_since(origin + Duration::from_nanos(msg.due_ns)),
            ),
            None => (NOT_SCHEDULED, Duration::ZERO),
        };
        First {
            seq: self.seq,
            sent_at: now,
            sent_ms: wall,
            waited: Duration::ZERO,
            due_ns,
            lag,
        }
    }

    fn fail(&mut self, msg: Msg, first: &First, latency_us: u64, status: Status) {
        self.out.failed += 1;
        self.out.last_done = Some(Instant::now());
        self.record(msg, first, Duration::from_micros(latency_us), status);
    }

    /// The connection is gone: every message in flight spent an attempt.
    fn lost(&mut self, status: Status, why: String) {
        self.conn = None;
        self.shared.set_last_error(why);
        let inflight: Vec<InFlight> = self.inflight.drain(..).collect();
        for f in inflight {
            let latency = f.first.sent_at.elapsed().as_micros() as u64;
            self.attempt_failed(f.msg, f.attempts + 1, status, true, f.first, latency);
        }
        if let Some(d) = self.deliveries.as_mut() {
            d.abandon();
        }
    }

    fn check_deadlines(&mut self, now: Instant) {
        if let Some(d) = self.deliveries.as_mut() {
            d.expire(now);
        }
        let timed_out = self
            .inflight
            .front()
            .is_some_and(|f| now.saturating_duration_since(f.attempt_at) > self.cfg.ack_timeout);
        if timed_out {
            let why = format!(
                "no ack within {:.1} s (--ack-timeout)",
                self.cfg.ack_timeout.as_secs_f64()
            );
            self.lost(Status::Timeout, why);
        }
    }

    /// The wait before a message's next attempt, `attempts` having failed:
    /// `--backoff` doubled per failed attempt up to `--backoff-max`,
    /// jittered so threads that failed together do not come back together
    /// ([`Backoff::delay_after`]: in-flight entries carry only their
    /// attempt count, not a back-off each).
    fn retry_delay(&mut self, attempts: u32) -> Duration {
        self.retry_backoff.delay_after(attempts)
    }

    fn record(&mut self, msg: Msg, first: &First, latency: Duration, status: Status) {
        self.records.push(Record {
            sent_ms: first.sent_ms,
            latency_us: u32::try_from(latency.as_micros()).unwrap_or(u32::MAX),
            due_us: match first.due_ns {
                NOT_SCHEDULED => NOT_SCHEDULED,
                ns => ns / 1_000,
            },
            stage: self
                .cfg
                .open_loop
                .as_ref()
                .filter(|_| first.due_ns != NOT_SCHEDULED)
                .and_then(|s| s.stage_at(first.due_ns))
                .map_or(0, |i| i as u16),
            lag_us: u32::try_from(first.lag.as_micros()).unwrap_or(u32::MAX),
            room: msg.room,
            kind: msg.kind,
            status,
            phase: self.spec.phase,
        });
        if self.records.len() >= RECORD_BATCH {
            self.flush_records();
        }
    }

    fn flush_records(&mut self) {
        if self.records.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.records, Vec::with_capacity(RECORD_BATCH));
        // The writer outlives every sender; if it died, the error surfaces
        // when it is joined.
        let _ = self.spec.records.send(batch);
    }

    /// Ctrl-C: send nothing new; in-flight messages get `stop_grace` to be
    /// acked; whatever is left counts as failed (interrupted).
    fn stop_gracefully(&mut self) {
        self.stopping = true;
        self.fail_retries(Status::Interrupted);
        self.hand.fresh.clear();
        let deadline = Instant::now() + self.cfg.stop_grace;
        while !self.inflight.is_empty() && self.conn.is_some() && Instant::now() < deadline {
            self.read_round(false);
            // A lost connection queued retries: they are not sent now.
            self.fail_retries(Status::Interrupted);
        }
        self.give_up(Status::Interrupted);
    }

    /// Every retry still waiting out its back-off fails with `status`
    /// (stamped at its first attempt, its latency the time since).
    fn fail_retries(&mut self, status: Status) {
        let now = Instant::now();
        for r in std::mem::take(&mut self.hand.retry) {
            let latency = now.saturating_duration_since(r.first.sent_at);
            self.fail(r.msg, &r.first, latency.as_micros() as u64, status);
        }
    }

    /// Everything still in hand fails with `status`; unsent fresh messages
    /// are left uncounted (the report's notSent).
    fn give_up(&mut self, status: Status) {
        let inflight: Vec<InFlight> = self.inflight.drain(..).collect();
        for f in inflight {
            let latency = f.first.sent_at.elapsed().as_micros() as u64;
            self.fail(f.msg, &f.first, latency, status);
        }
        self.fail_retries(status);
        self.hand.fresh.clear();
        if status == Status::Aborted {
            // A dead server: closing politely would only wait.
            self.conn = None;
        }
    }

    /// Waits (bounded by the delivery timeout) for awaited broadcasts,
    /// closes politely, hands over the rest.
    fn finish(mut self) -> Outcome {
        let deadline = self.deliveries.as_ref().and_then(Deliveries::last_deadline);
        if let Some(deadline) = deadline {
            while self.deliveries.as_ref().is_some_and(|d| d.awaiting() > 0)
                && !self.shared.stopped()
                && !self.shared.aborted()
                && Instant::now() < deadline
            {
                let Some(conn) = self.conn.as_mut() else {
                    break;
                };
                match conn.read(true) {
                    Read1::Text(t) => self.on_text(t.as_str()),
                    Read1::Nothing => {}
                    Read1::Lost(why) => self.lost(Status::ConnectionFailed, why),
                }
                if let Some(d) = self.deliveries.as_mut() {
                    d.expire(Instant::now());
                }
            }
        }
        if let Some(d) = self.deliveries.as_mut() {
            d.abandon();
            self.out.delivered = d.observed;
            self.out.delivery_missing = d.missing;
            self.out.delivery = std::mem::take(&mut d.latencies);
            self.out.delivery_corrected = d.corrected.take();
        }
        let check = self.cfg.presence_check
            && self.spec.phase == Phase::Main
            && !self.shared.stopped()
            && !self.shared.aborted();
        if check {
            self.out.presence = self.check_presence();
        }
        if let Some(conn) = self.conn.take() {
            conn.close(self.cfg.tick * 5);
        }
        self.flush_records();
        self.publish();
        self.out
    }
}
