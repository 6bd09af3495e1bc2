//! The paced messages of `--connections-only` ("probes"): a few sender
//! connections, each in one room, send their share of the probe schedule
//! (probe `k` by sender `k % senders`) at its intended time. A probe's
//! text names the run and `k` (`cf-probe {run:x} {k}`), so an idle
//! connection that receives its broadcast finds when it was sent in the
//! [`ProbeClock`] — no matching by server id, which the broadcast may
//! carry before the sender has seen its ack.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chatflow_protocol::message::USER_ID_MIN;
use chatflow_protocol::time::now_ms;
use chatflow_protocol::MessageType;

use crate::config::{Config, Endpoint};
use crate::connection::{Connection, Dial, Read1, ReadyWait};
use crate::latency::Latencies;
use crate::schedule::Schedule;
use crate::wire::{self, Encoder, Incoming};

/// When each probe was sent, shared by the senders (who write) and the
/// holders (who read).
pub struct ProbeClock {
    /// The probe schedule's start.
    pub origin: Instant,
    /// Names the run: in every probe's text and `clientMessageId`, which
    /// must never repeat across runs (a server's sent log would take a
    /// repeat within its dedup window for a retry and not broadcast it).
    pub run: u64,
    /// What every probe's text starts with: `cf-probe {run:x} `.
    pub prefix: String,
    /// Per probe: ns after `origin` it was sent, plus one (0: not yet).
    sent: Vec<AtomicU64>,
}

impl ProbeClock {
    pub fn new(origin: Instant, run: u64, probes: u64) -> ProbeClock {
        ProbeClock {
            origin,
            run,
            prefix: format!("cf-probe {run:x} "),
            sent: (0..probes).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Probe `k` goes out at `at` (stored before the write, so any
    /// broadcast of it finds the time).
    fn mark_sent(&self, k: u64, at: Instant) {
        if let Some(slot) = self.sent.get(k as usize) {
            let ns = at.saturating_duration_since(self.origin).as_nanos() as u64;
            slot.store(ns + 1, Ordering::Release);
        }
    }

    /// When probe `k` was sent, after `origin`; `None` if it was not.
    pub fn sent_since_origin(&self, k: u64) -> Option<Duration> {
        match self.sent.get(k as usize)?.load(Ordering::Acquire) {
            0 => None,
            ns => Some(Duration::from_nanos(ns - 1)),
        }
    }
}

/// One probe sender's assignment.
pub struct ProbeSender<'a> {
    pub config: &'a Config,
    pub schedule: &'a Schedule,
    pub clock: &'a ProbeClock,
    /// Sender `index` of `senders`: its probes are `index, index + senders, ...`.
    pub index: usize,
    pub senders: usize,
    pub room: u32,
    pub endpoint: &'a Endpoint,
    pub source: Option<IpAddr>,
    pub seed: u64,
    pub stop: &'a AtomicBool,
}

/// What a probe sender did.
#[derive(Debug)]
pub struct Sent {
    pub room: u32,
    pub planned: u64,
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    /// Send → ack.
    pub ack: Latencies,
    /// How late each probe went out after its intended time.
    pub lag: Latencies,
    /// Why probes failed, and how many.
    pub errors: BTreeMap<String, u64>,
}

impl ProbeSender<'_> {
    /// Sends this sender's probes at their times and collects their acks
    /// (up to `--ack-timeout` after the last send).
    pub fn run(&self) -> Sent {
        let mine: Vec<u64> = (self.index as u64..self.schedule.total())
            .step_by(self.senders)
            .collect();
        let mut out = Sent {
            room: self.room,
            planned: mine.len() as u64,
            sent: 0,
            acked: 0,
            failed: 0,
            ack: Latencies::new(),
            lag: Latencies::new(),
            errors: BTreeMap::new(),
        };
        let dial = Dial {
            source: self.source,
            ..Dial::sender(self.config.connect_timeout, self.config.tick, 1)
        };
        let mut conn = match Connection::open(self.endpoint, self.room, None, &dial) {
            Ok(conn) => conn,
            Err(e) => {
                out.failed = out.planned;
                out.errors
                    .insert(format!("sender connection: {e}"), out.planned);
                return out;
            }
        };
        // Probes go out at their times to the millisecond (see ReadyWait).
        let mut ready = ReadyWait::new().ok().filter(|r| r.attach(&conn).is_ok());
        let mut inflight: VecDeque<(u64, Instant)> = VecDeque::new();
        let ended = self
            .send_all(&mine, &mut conn, &mut ready, &mut inflight, &mut out)
            .and_then(|()| self.await_acks(&mut conn, &mut ready, &mut inflight, &mut out));
        let unanswered = inflight.len() as u64;
        let why = match &ended {
            Ok(()) => format!(
                "no ack within {:.1} s (--ack-timeout)",
                self.config.ack_timeout.as_secs_f64()
            ),
            Err(why) => format!("sender connection lost: {why}"),
        };
        if unanswered > 0 {
            out.failed += unanswered;
            *out.errors.entry(why).or_default() += unanswered;
        }
        let unsent = out.planned - out.sent;
        if unsent > 0 {
            out.failed += unsent;
            let why = match &ended {
                Ok(()) => "not sent: interrupted".to_string(),
                Err(why) => format!("not sent: the sender connection was lost ({why})"),
            };
            *out.errors.entry(why).or_default() += unsent;
        }
        if ended.is_ok() {
            conn.close(self.config.tick);
        }
        out
    }

    /// Sends each of `mine` at its time, reading acks while it waits.
    /// `Err`: the connection was lost (why).
    fn send_all(
        &self,
        mine: &[u64],
        conn: &mut Connection,
        ready: &mut Option<ReadyWait>,
        inflight: &mut VecDeque<(u64, Instant)>,
        out: &mut Sent,
    ) -> Result<(), String> {
        // Any valid user; one per sender.
        let user = USER_ID_MIN + self.index as u32;
        let name = format!("{:x}-p{}-", self.clock.run, self.index);
        let mut encoder = Encoder::new(self.seed, name);
        let mut text = String::new();
        for &k in mine {
            let due = self.clock.origin + Duration::from_nanos(self.schedule.due_ns(k));
            while Instant::now() < due && !self.stop.load(Ordering::Relaxed) {
                // A tick at most, so Ctrl-C is seen.
                let until = due.min(Instant::now() + self.config.tick);
                read_one(conn, ready, until, inflight, out)?;
            }
            if self.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let now = Instant::now();
            text.clear();
            text.push_str(&self.clock.prefix);
            text.push_str(&k.to_string());
            encoder.encode_text(conn.out(), user, &text, MessageType::Text, k, now_ms());
            self.clock.mark_sent(k, now);
            conn.flush().map_err(|e| format!("write failed: {e}"))?;
            out.sent += 1;
            out.lag.record(now.saturating_duration_since(due));
            inflight.push_back((k, now));
        }
        Ok(())
    }

    /// Reads until every probe is answered or `--ack-timeout` passes.
    fn await_acks(
        &self,
        conn: &mut Connection,
        ready: &mut Option<ReadyWait>,
        inflight: &mut VecDeque<(u64, Instant)>,
        out: &mut Sent,
    ) -> Result<(), String> {
        let deadline = Instant::now() + self.config.ack_timeout;
        while !inflight.is_empty()
            && Instant::now() < deadline
            && !self.stop.load(Ordering::Relaxed)
        {
            read_one(
                conn,
                ready,
                deadline.min(Instant::now() + self.config.tick),
                inflight,
                out,
            )?;
        }
        Ok(())
    }
}

/// One read: an ack or error for a probe in flight is counted (broadcasts
/// of the sender's own room are the idle connections' to count).
fn read_one(
    conn: &mut Connection,
    ready: &mut Option<ReadyWait>,
    until: Instant,
    inflight: &mut VecDeque<(u64, Instant)>,
    out: &mut Sent,
) -> Result<(), String> {
    let text = match conn.read_by(ready.as_mut(), until) {
        Read1::Text(t) => t,
        Read1::Nothing => return Ok(()),
        Read1::Lost(why) => return Err(why),
    };
    let (seq, error) = match wire::classify(text.as_str()) {
        Incoming::Ack { seq, .. } => (seq, None),
        Incoming::Error { seq, code } => (seq, Some(code.to_string())),
        _ => return Ok(()),
    };
    let Some(i) = seq.and_then(|s| inflight.iter().position(|(k, _)| *k == s)) else {
        return Ok(());
    };
    let (_, sent) = inflight.remove(i).expect("a position found above");
    match error {
        None => {
            out.acked += 1;
            out.ack.record(sent.elapsed());
        }
        Some(code) => {
            out.failed += 1;
            *out.errors.entry(code).or_default() += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_knows_only_what_was_sent() {
        let origin = Instant::now();
        let clock = ProbeClock::new(origin, 0xab, 3);
        assert_eq!(clock.prefix, "cf-probe ab ");
        assert_eq!(clock.sent_since_origin(1), None);
        clock.mark_sent(1, origin + Duration::from_millis(7));
        assert_eq!(clock.sent_since_origin(1), Some(Duration::from_millis(7)));
        // Sent at the origin itself is still "sent".
        clock.mark_sent(0, origin);
        assert_eq!(clock.sent_since_origin(0), Some(Duration::ZERO));
        assert_eq!(clock.sent_since_origin(99), None);
    }
}
