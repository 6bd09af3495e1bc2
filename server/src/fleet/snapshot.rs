//! The SERVER SNAPSHOT (server/API.md): what this server says about itself
//! once a second — status and reasons, connections (per worker too),
//! per-second rates, ack-latency quantiles and the `/health` totals — and
//! the window of totals its rates come from.
//!
//! Rates are differences of totals over the last [`RATE_WINDOW`] of
//! samples, never per-event timestamps: the workers only count, and the
//! publisher subtracts two numbers (the consumer's rates work the same way).
//! Ack latency works alike over the last 10 s
//! ([`LatencyWindow`](crate::latency::LatencyWindow)).
//!
//! Fields are only ever added (`reasons`, `connectionsPerWorker` and
//! `ackLatencyMs` came after the first version): a reader of another
//! version relays what it does not know, and the dashboard shows a field
//! it misses as absent.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatflow_protocol::ServerTime;
use parking_lot::Mutex;
use serde::Serialize;

use super::round3;
use crate::latency::LatencyQuantiles;
use crate::stats::{Health, Totals};

/// Rates are averaged over this window: long enough to smooth bursts,
/// short enough to show a stall within seconds (the consumer's window).
pub const RATE_WINDOW: Duration = Duration::from_secs(5);

/// One server's snapshot, camelCase as published.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerSnapshot {
    pub server_id: String,
    /// `ok`, `degraded`, `draining` or `shutting_down`, as `/health` says.
    pub status: &'static str,
    /// What is wrong, as `/health` lists it (empty when nothing is).
    pub reasons: Vec<String>,
    pub published_at: ServerTime,
    /// 0 when published; a reader replaces it with the age it sees.
    pub age_seconds: f64,
    pub uptime_seconds: f64,
    pub workers: usize,
    /// WebSocket connections open or opening.
    pub connections: usize,
    /// Open WebSockets per worker, worker 0 first.
    pub connections_per_worker: Vec<u64>,
    pub accepted_per_second: f64,
    pub broadcast_frames_per_second: f64,
    pub unavailable_per_second: f64,
    pub rejected_per_second: f64,
    /// Message read → ack queued (with RabbitMQ: its confirm arrived),
    /// over the last 10 s, milliseconds.
    pub ack_latency_ms: LatencyQuantiles,
    pub totals: Totals,
}

/// Per-second rates of the totals the snapshot shows.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub accepted: f64,
    pub broadcast_frames: f64,
    pub unavailable: f64,
    pub rejected: f64,
}

impl ServerSnapshot {
    /// The snapshot of `health` with `rates` and the recent `ack_latency`,
    /// published `at`.
    pub fn of(
        health: &Health,
        rates: Rates,
        ack_latency: LatencyQuantiles,
        at: ServerTime,
    ) -> Self {
        ServerSnapshot {
            server_id: health.server_id.clone(),
            status: health.status,
            reasons: health.reasons.clone(),
            published_at: at,
            age_seconds: 0.0,
            uptime_seconds: round3(health.uptime_seconds),
            workers: health.workers,
            connections: health.connections,
            connections_per_worker: health.connections_per_worker.clone(),
            accepted_per_second: rates.accepted,
            broadcast_frames_per_second: rates.broadcast_frames,
            unavailable_per_second: rates.unavailable,
            rejected_per_second: rates.rejected,
            ack_latency_ms: ack_latency,
            totals: health.totals.clone(),
        }
    }
}

/// The last [`RATE_WINDOW`] of totals, one sample a second.
#[derive(Default)]
pub struct TotalsWindow {
    samples: VecDeque<(Instant, Totals)>,
}

impl TotalsWindow {
    /// Adds a sample and forgets those that fell out of the window (two
    /// are always kept, so a rate exists however late a sample comes).
    pub fn push(&mut self, at: Instant, totals: Totals) {
        self.samples.push_back((at, totals));
        while self.samples.len() > 2 && self.span() > RATE_WINDOW {
            self.samples.pop_front();
        }
    }

    fn span(&self) -> Duration {
        match (self.samples.front(), self.samples.back()) {
            (Some((first, _)), Some((last, _))) => last.duration_since(*first),
            _ => Duration::ZERO,
        }
    }

    /// Rates between the window's first and last sample (zero until there
    /// are two).
    pub fn rates(&self) -> Rates {
        let (Some((t0, a)), Some((t1, b))) = (self.samples.front(), self.samples.back()) else {
            return Rates::default();
        };
        let secs = t1.duration_since(*t0).as_secs_f64();
        if secs <= 0.0 {
            return Rates::default();
        }
        let rate = |a: u64, b: u64| round3(b.saturating_sub(a) as f64 / secs);
        Rates {
            accepted: rate(a.messages_accepted, b.messages_accepted),
            broadcast_frames: rate(a.broadcast_frames_sent, b.broadcast_frames_sent),
            unavailable: rate(a.messages_unavailable, b.messages_unavailable),
            rejected: rate(a.messages_rejected, b.messages_rejected),
        }
    }
}

/// The latest snapshot, shared by the publisher (which writes it once a
/// second) and readers (the API, `source: "local"` without Redis). A clone
/// is another handle on the same value.
#[derive(Clone, Default)]
pub struct Latest(Arc<Mutex<Option<ServerSnapshot>>>);

impl Latest {
    /// The latest snapshot (`None` before the first one).
    pub fn get(&self) -> Option<ServerSnapshot> {
        self.0.lock().clone()
    }

    pub fn set(&self, snapshot: ServerSnapshot) {
        *self.0.lock() = Some(snapshot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(accepted: u64, frames: u64, unavailable: u64, rejected: u64) -> Totals {
        Totals {
            messages_accepted: accepted,
            broadcast_frames_sent: frames,
            messages_unavailable: unavailable,
            messages_rejected: rejected,
            ..Totals::default()
        }
    }

    #[test]
    fn rates_are_differences_over_the_window() {
        let mut w = TotalsWindow::default();
        let t0 = Instant::now();
        assert_eq!(w.rates(), Rates::default());
        w.push(t0, totals(0, 0, 0, 0));
        assert_eq!(w.rates(), Rates::default(), "one sample: no rate yet");
        w.push(t0 + Duration::from_secs(2), totals(100, 1000, 4, 2));
        assert_eq!(
            w.rates(),
            Rates {
                accepted: 50.0,
                broadcast_frames: 500.0,
                unavailable: 2.0,
                rejected: 1.0
            }
        );
    }

    #[test]
    fn old_samples_leave_the_window() {
        let mut w = TotalsWindow::default();
        let t0 = Instant::now();
        // 10 a second for 10 s, then nothing for 6 s: the rate drops to 0.
        for s in 0..=10 {
            w.push(t0 + Duration::from_secs(s), totals(s * 10, 0, 0, 0));
        }
        assert_eq!(w.rates().accepted, 10.0);
        for s in 11..=16 {
            w.push(t0 + Duration::from_secs(s), totals(100, 0, 0, 0));
        }
        assert_eq!(w.rates().accepted, 0.0);
        assert!(w.samples.len() <= 6);
    }

    #[test]
    fn the_snapshot_has_the_api_shape() {
        let health = Health {
            status: "ok",
            ready: true,
            reasons: vec![],
            server_id: "s-1".to_string(),
            uptime_seconds: 12.3456,
            connections: 3,
            max_connections: 10,
            workers: 2,
            dead_workers: vec![],
            rooms: 20,
            connections_per_worker: vec![1, 2],
            broker: crate::stats::BrokerStatus {
                kind: "memory",
                connected: true,
                detail: String::new(),
            },
            totals: totals(7, 70, 0, 1),
            ack_latency: Default::default(),
        };
        let rates = Rates {
            accepted: 1.5,
            ..Rates::default()
        };
        let ack = LatencyQuantiles {
            count: 7,
            p50: 0.2,
            p95: 0.9,
            p99: 1.3,
            max: 2.0,
        };
        let snapshot = ServerSnapshot::of(&health, rates, ack, ServerTime(0));
        let json = serde_json::to_value(snapshot).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut want = vec![
            "serverId",
            "status",
            "reasons",
            "publishedAt",
            "ageSeconds",
            "uptimeSeconds",
            "workers",
            "connections",
            "connectionsPerWorker",
            "acceptedPerSecond",
            "broadcastFramesPerSecond",
            "unavailablePerSecond",
            "rejectedPerSecond",
            "ackLatencyMs",
            "totals",
        ];
        let mut keys = keys;
        keys.sort_unstable();
        want.sort_unstable();
        assert_eq!(keys, want);
        assert_eq!(json["publishedAt"], "1970-01-01T00:00:00.000Z");
        assert_eq!(json["uptimeSeconds"], 12.346);
        assert_eq!(json["acceptedPerSecond"], 1.5);
        assert_eq!(json["totals"]["messagesAccepted"], 7);
        assert_eq!(json["connectionsPerWorker"], serde_json::json!([1, 2]));
        assert_eq!(
            json["ackLatencyMs"],
            serde_json::json!({"count": 7, "p50": 0.2, "p95": 0.9, "p99": 1.3, "max": 2.0})
        );
        assert_eq!(json["reasons"], serde_json::json!([]));
    }
}
