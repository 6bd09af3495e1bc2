//! The message generator: one thread that draws every message (seeded, so a
//! run is reproducible) and fills bounded channels ahead of the senders, so
//! no sender ever waits on data creation.
//!
//! Draws: userId uniform in 1..=100000, username `user{userId}`, text from a
//! pool of 50, roomId uniform in 1..=rooms, 90% TEXT / 5% JOIN / 5% LEAVE.
//! The timestamp is not drawn here: senders stamp it at the send, so it
//! means "when this was sent" (the server stores it; queueing here would
//! make it lie).
//!
//! A connection belongs to one room (`/chat/{room}`), so the main phase has
//! one channel ("lane") per room, shared by that room's sender threads; the
//! warm-up has one lane per warm-up thread holding exactly its quota.
//! Messages travel in batches of [`BATCH`] to cut channel operations 16-fold.
//!
//! In an open loop ([`Pace`]) each main-phase message also carries when it
//! is due (its index in the [`Schedule`]), and the generator stays at most
//! [`OPEN_LOOP_LEAD`] ahead of that schedule, handing over partial batches
//! before it sleeps so no message reaches its lane after its time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chatflow_protocol::message::{USER_ID_MAX, USER_ID_MIN};
use chatflow_protocol::MessageType;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::schedule::Schedule;

/// The pool of message texts. Plain ASCII without quotes or backslashes, so
/// they go into JSON verbatim (a unit test checks).
pub const TEXTS: [&str; 50] = [
    "hi",
    "hello everyone",
    "good morning",
    "good evening",
    "how are you?",
    "doing great, thanks",
    "anyone here?",
    "what's up",
    "brb",
    "back now",
    "lol",
    "that is hilarious",
    "agreed",
    "I disagree",
    "can you share the link?",
    "here it is",
    "thanks!",
    "you're welcome",
    "see you later",
    "bye",
    "has anyone tried the new release?",
    "yes, it is much faster",
    "the build is green again",
    "who is on call this week?",
    "I am, ping me if anything breaks",
    "coffee time",
    "lunch in 10 minutes?",
    "count me in",
    "the meeting moved to 3pm",
    "can we reschedule?",
    "works for me",
    "let's ship it",
    "not yet, one more test",
    "the load test starts now",
    "p99 looks good",
    "throughput is up 20%",
    "latency spiked for a second",
    "it was a GC pause upstream",
    "rollback?",
    "no, it recovered",
    "nice work team",
    "happy friday",
    "weekend plans?",
    "hiking if the weather holds",
    "reading a good book",
    "any recommendations?",
    "Designing Data-Intensive Applications",
    "classic, highly recommended",
    "good night all",
    "see you tomorrow",
];

/// One message to send. The username is derived (`user{user_id}`) and the
/// text is an index into [`TEXTS`]: 16 bytes, copied, never allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msg {
    pub user_id: u32,
    pub room: u16,
    pub text: u8,
    pub kind: MessageType,
    /// Open loop: when it is due, ns after the main phase's start (0 in
    /// closed loop and in the warm-up, where it means nothing).
    pub due_ns: u64,
}

impl Msg {
    pub fn text(&self) -> &'static str {
        TEXTS[usize::from(self.text)]
    }
}

/// Messages per channel item.
pub const BATCH: usize = 16;

/// Up to [`BATCH`] messages, by value (no allocation per batch).
#[derive(Clone, Copy, Debug)]
pub struct Batch {
    len: u8,
    msgs: [Msg; BATCH],
}

impl Batch {
    const EMPTY: Msg = Msg {
        user_id: 0,
        room: 0,
        text: 0,
        kind: MessageType::Text,
        due_ns: 0,
    };

    pub fn new() -> Self {
        Batch {
            len: 0,
            msgs: [Self::EMPTY; BATCH],
        }
    }

    fn push(&mut self, m: Msg) {
        self.msgs[usize::from(self.len)] = m;
        self.len += 1;
    }

    fn is_full(&self) -> bool {
        usize::from(self.len) == BATCH
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn messages(&self) -> &[Msg] {
        &self.msgs[..usize::from(self.len)]
    }
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

/// The seeded draws. Separate streams for warm-up and main phase, so the
/// main phase's messages do not depend on the warm-up's size.
pub struct Draw {
    rng: SmallRng,
    rooms: u32,
}

impl Draw {
    pub fn new(seed: u64, stream: u64, rooms: u32) -> Self {
        // SplitMix-style mixing: nearby seeds and streams give unrelated states.
        let mixed = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Draw {
            rng: SmallRng::seed_from_u64(mixed),
            rooms,
        }
    }

    pub fn room(&mut self) -> u32 {
        self.rng.random_range(1..=self.rooms)
    }

    /// A message for `room`.
    pub fn message(&mut self, room: u32) -> Msg {
        let user_id = self.rng.random_range(USER_ID_MIN..=USER_ID_MAX);
        let text = self.rng.random_range(0..TEXTS.len()) as u8;
        let kind = match self.rng.random_range(0..100u32) {
            0..90 => MessageType::Text,
            90..95 => MessageType::Join,
            _ => MessageType::Leave,
        };
        Msg {
            user_id,
            room: room as u16,
            text,
            kind,
            due_ns: 0,
        }
    }

    /// A message in a uniformly drawn room (the main phase's draw).
    pub fn any_room(&mut self) -> Msg {
        let room = self.room();
        self.message(room)
    }
}

/// What the generator thread was asked to produce.
pub struct Plan {
    pub seed: u64,
    pub rooms: u32,
    /// One lane per warm-up thread: (its room, its channel). Each gets
    /// `warmup_messages`.
    pub warmup: Vec<(u32, Sender<Batch>)>,
    pub warmup_messages: u64,
    /// One lane per room (index room-1).
    pub main: Vec<Sender<Batch>>,
    pub main_messages: u64,
    /// Open loop: stamp and pace the main phase by this schedule
    /// (`main_messages` is its total). `None`: closed loop, as fast as the
    /// lanes take them.
    pub pace: Option<Pace>,
}

/// An open loop's main phase, as the generator needs it.
pub struct Pace {
    pub schedule: Schedule,
    /// The phase's start (each `due_ns` counts from it), sent once it is
    /// fixed; the generator fills the first [`OPEN_LOOP_LEAD`] before that.
    pub start: Receiver<Instant>,
}

/// How far ahead of the schedule the generator runs in an open loop: a
/// second of messages waits in the lanes. Far more than any wake-up or
/// channel delay, so a sender never waits for its message, and little
/// memory even at 1M msgs/s (16 MB). The lanes are unbounded then, so one
/// room whose senders are stuck never holds up the other rooms' messages.
pub const OPEN_LOOP_LEAD: Duration = Duration::from_secs(1);
/// Once ahead, the generator sleeps this much past the point where it may
/// go on, so it produces in bursts and wakes at most ~200 times a second.
const PACE_SLACK: Duration = Duration::from_millis(5);
/// How often a paced generator waiting for the phase's start, or asleep,
/// looks at the stop flag.
const PACE_POLL: Duration = Duration::from_millis(50);

/// How long the generator sleeps when the lane it must fill is full. It
/// polls instead of blocking in `send`: a blocked sender would be woken by
/// every single `recv` (a futex wake per message); polling refills in bulk.
/// A lane holds 1,024 messages, 30 ms of a room's share at 600K msgs/s, so a
/// 1 ms poll never lets one run dry, and 1,000 wake-ups a second cost nothing.
const FULL_LANE_POLL: Duration = Duration::from_millis(1);

/// Runs the generator until the plan is produced or `stop` is set. Dropping
/// the senders at the end tells each sender thread its lane is exhausted.
/// Returns the number of messages handed to lanes.
pub fn generate(plan: Plan, stop: &AtomicBool) -> u64 {
    let mut produced = 0;
    // Warm-up: round-robin over the warm-up threads, so they all start at once.
    let mut draw = Draw::new(plan.seed, 1, plan.rooms);
    let mut batches: Vec<Batch> = vec![Batch::new(); plan.warmup.len()];
    for _ in 0..plan.warmup_messages {
        for (i, (room, tx)) in plan.warmup.iter().enumerate() {
            batches[i].push(draw.message(*room));
            if batches[i].is_full() && !push(tx, &mut batches[i], stop) {
                return produced;
            }
            produced += 1;
        }
    }
    for (i, (_, tx)) in plan.warmup.iter().enumerate() {
        if !batches[i].is_empty() && !push(tx, &mut batches[i], stop) {
            return produced;
        }
    }
    drop(plan.warmup);

    let mut draw = Draw::new(plan.seed, 2, plan.rooms);
    let mut batches: Vec<Batch> = vec![Batch::new(); plan.main.len()];
    let mut origin: Option<Instant> = None;
    for k in 0..plan.main_messages {
        let mut m = draw.any_room();
        if let Some(pace) = &plan.pace {
            m.due_ns = pace.schedule.due_ns(k);
            if !keep_pace(pace, m.due_ns, &mut origin, &plan.main, &mut batches, stop) {
                return produced;
            }
        }
        let lane = usize::from(m.room) - 1;
        batches[lane].push(m);
        if batches[lane].is_full() && !push(&plan.main[lane], &mut batches[lane], stop) {
            return produced;
        }
        produced += 1;
    }
    for (lane, tx) in plan.main.iter().enumerate() {
        if !batches[lane].is_empty() && !push(tx, &mut batches[lane], stop) {
            return produced;
        }
    }
    produced
}

/// Waits until a message due at `due_ns` may be generated: no more than
/// [`OPEN_LOOP_LEAD`] before its time. Every partial batch goes to its lane
/// before a wait, so nothing waits in here past its time. False when told
/// to stop (or the run is gone).
fn keep_pace(
    pace: &Pace,
    due_ns: u64,
    origin: &mut Option<Instant>,
    lanes: &[Sender<Batch>],
    batches: &mut [Batch],
    stop: &AtomicBool,
) -> bool {
    let lead = OPEN_LOOP_LEAD.as_nanos() as u64;
    if due_ns < lead {
        return true;
    }
    let start = match *origin {
        Some(start) => start,
        None => {
            if !flush_partial(lanes, batches, stop) {
                return false;
            }
            loop {
                match pace.start.recv_timeout(PACE_POLL) {
                    Ok(start) => break *origin.insert(start),
                    Err(RecvTimeoutError::Timeout) if !stop.load(Ordering::Relaxed) => {}
                    Err(_) => return false,
                }
            }
        }
    };
    let may_go = start + Duration::from_nanos(due_ns - lead);
    if Instant::now() >= may_go {
        return true;
    }
    if !flush_partial(lanes, batches, stop) {
        return false;
    }
    let wake = may_go + PACE_SLACK;
    loop {
        let now = Instant::now();
        if now >= wake {
            return true;
        }
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep((wake - now).min(PACE_POLL));
    }
}

/// Hands every non-empty batch to its lane.
fn flush_partial(lanes: &[Sender<Batch>], batches: &mut [Batch], stop: &AtomicBool) -> bool {
    for (tx, batch) in lanes.iter().zip(batches.iter_mut()) {
        if !batch.is_empty() && !push(tx, batch, stop) {
            return false;
        }
    }
    true
}

/// Hands a batch to its lane, waiting while the lane is full. False when
/// told to stop or when every receiver is gone.
fn push(tx: &Sender<Batch>, batch: &mut Batch, stop: &AtomicBool) -> bool {
    let mut item = std::mem::take(batch);
    loop {
        match tx.try_send(item) {
            Ok(()) => return true,
            Err(TrySendError::Disconnected(_)) => return false,
            Err(TrySendError::Full(back)) => {
                if stop.load(Ordering::Relaxed) {
                    return false;
                }
                item = back;
                std::thread::sleep(FULL_LANE_POLL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_need_no_json_escaping() {
        for t in TEXTS {
            assert_eq!(serde_json::to_string(t).unwrap(), format!("\"{t}\""));
            assert!(!t.is_empty() && t.len() <= 500);
        }
    }

    #[test]
    fn distribution_over_rooms_users_and_types_is_within_tolerance() {
        // Fixed seed: 200,000 draws; uniform rooms within ±3% of 10,000 each,
        // types within ±0.5 points of 90/5/5, users spread over the whole range.
        let mut d = Draw::new(42, 2, 20);
        let n = 200_000;
        let mut rooms = [0u32; 21];
        let mut kinds = [0u32; 3];
        let (mut lo, mut hi, mut user_sum) = (u32::MAX, 0, 0u64);
        for _ in 0..n {
            let m = d.any_room();
            rooms[usize::from(m.room)] += 1;
            kinds[MessageType::ALL.iter().position(|k| *k == m.kind).unwrap()] += 1;
            lo = lo.min(m.user_id);
            hi = hi.max(m.user_id);
            user_sum += u64::from(m.user_id);
        }
        assert_eq!(rooms[0], 0);
        for (room, &count) in rooms.iter().enumerate().skip(1) {
            assert!((9_700..=10_300).contains(&count), "room {room}: {count}");
        }
        let pct = |c: u32| f64::from(c) * 100.0 / f64::from(n);
        assert!((pct(kinds[0]) - 90.0).abs() < 0.5, "TEXT {}", pct(kinds[0]));
        assert!((pct(kinds[1]) - 5.0).abs() < 0.5, "JOIN {}", pct(kinds[1]));
        assert!((pct(kinds[2]) - 5.0).abs() < 0.5, "LEAVE {}", pct(kinds[2]));
        assert!(lo < 100 && hi > 99_900, "users {lo}..{hi}");
        let mean = user_sum as f64 / f64::from(n);
        assert!((mean - 50_000.0).abs() < 500.0, "mean user {mean}");
    }

    #[test]
    fn the_same_seed_gives_the_same_messages() {
        let a: Vec<Msg> = {
            let mut d = Draw::new(7, 2, 20);
            (0..1000).map(|_| d.any_room()).collect()
        };
        let mut d = Draw::new(7, 2, 20);
        assert!(a.iter().all(|m| *m == d.any_room()));
        let mut other = Draw::new(8, 2, 20);
        assert!(a.iter().any(|m| *m != other.any_room()));
    }

    #[test]
    fn generate_fills_each_lane_with_its_share_and_closes_them() {
        // Warm-up lanes get exactly their quota in their room; main lanes
        // carry only their room; every message is accounted for.
        let (w0, wr0) = crossbeam_channel::unbounded();
        let (w1, wr1) = crossbeam_channel::unbounded();
        let lanes: Vec<_> = (0..3).map(|_| crossbeam_channel::unbounded()).collect();
        let plan = Plan {
            seed: 1,
            rooms: 3,
            warmup: vec![(1, w0), (3, w1)],
            warmup_messages: 21,
            main: lanes.iter().map(|(tx, _)| tx.clone()).collect(),
            main_messages: 1000,
            pace: None,
        };
        let rxs: Vec<_> = lanes.into_iter().map(|(_, rx)| rx).collect();
        let produced = generate(plan, &AtomicBool::new(false));
        assert_eq!(produced, 2 * 21 + 1000);
        let msgs = |rx: &crossbeam_channel::Receiver<Batch>| -> Vec<Msg> {
            rx.try_iter().flat_map(|b| b.messages().to_vec()).collect()
        };
        let w = msgs(&wr0);
        assert_eq!(w.len(), 21);
        assert!(w.iter().all(|m| m.room == 1));
        assert!(msgs(&wr1).iter().all(|m| m.room == 3));
        let mut main = 0;
        for (i, rx) in rxs.iter().enumerate() {
            let m = msgs(rx);
            assert!(m.iter().all(|m| usize::from(m.room) == i + 1));
            main += m.len();
            // Every sender dropped: the lane reports exhaustion.
            assert!(rx.recv().is_err());
        }
        assert_eq!(main, 1000);
    }

    #[test]
    fn an_open_loop_is_stamped_and_never_generated_more_than_the_lead_ahead() {
        // 1,000 msgs/s for 1.5 s: every message carries its due time (1 ms
        // apart, in order within each lane); none is generated more than
        // OPEN_LOOP_LEAD before it is due, so the last 499 wait until the
        // phase is ~0.5 s old.
        let lanes: Vec<_> = (0..2).map(|_| crossbeam_channel::unbounded()).collect();
        let (start_tx, start_rx) = crossbeam_channel::bounded(1);
        let schedule = Schedule::constant(1000.0, Duration::from_millis(1500)).unwrap();
        let plan = Plan {
            seed: 3,
            rooms: 2,
            warmup: Vec::new(),
            warmup_messages: 0,
            main: lanes.iter().map(|(tx, _)| tx.clone()).collect(),
            main_messages: schedule.total(),
            pace: Some(Pace {
                schedule,
                start: start_rx,
            }),
        };
        let rxs: Vec<_> = lanes.into_iter().map(|(_, rx)| rx).collect();
        let start = Instant::now();
        start_tx.send(start).unwrap();
        let stop = AtomicBool::new(false);
        let mut lanes: Vec<Vec<u64>> = vec![Vec::new(); 2];
        let take = |lanes: &mut Vec<Vec<u64>>| {
            for (rx, lane) in rxs.iter().zip(lanes.iter_mut()) {
                lane.extend(
                    rx.try_iter()
                        .flat_map(|b| b.messages().to_vec())
                        .map(|m| m.due_ns),
                );
            }
        };
        let produced = std::thread::scope(|s| {
            let gen = s.spawn(|| generate(plan, &stop));
            std::thread::sleep(Duration::from_millis(100));
            take(&mut lanes);
            // Only messages due within the lead of now (1 per ms).
            let now_ms = start.elapsed().as_millis() as usize;
            let early: usize = lanes.iter().map(Vec::len).sum();
            assert!(early <= now_ms + 1_001, "{early} messages by {now_ms} ms");
            gen.join().unwrap()
        });
        assert!(start.elapsed() >= Duration::from_millis(495));
        assert_eq!(produced, 1_500);
        take(&mut lanes);
        let mut all = Vec::new();
        for lane in lanes {
            assert!(lane.windows(2).all(|w| w[0] < w[1]));
            all.extend(lane);
        }
        all.sort_unstable();
        assert_eq!(all, (0..1_500).map(|k| k * 1_000_000).collect::<Vec<_>>());
    }
}
