//! Counters and the `/health` document. Each worker bumps only its own
//! cache-padded counters (no shared cache line on the hot path); readers sum
//! them.
//!
//! `/health` is readiness: `ready` (HTTP 200) only while this server can
//! take messages, 503 with the same document otherwise. Not ready: a
//! RabbitMQ publisher link is down (its messages are refused at once), the
//! Redis subscription has been down past `subscription_grace` (its clients
//! miss broadcasts), a worker is dead, or the server is `draining` or
//! `shutting_down` ([`crate::server`]'s stop). `status` says what is so
//! (`degraded` while anything is down, a subscription blip within its
//! grace too, though still ready) and `reasons` lists every problem.
//! `/livez` is liveness: 200 while the process runs.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use chatflow_broker::retry::is_shutdown;
use chatflow_broker::Shutdown;
use crossbeam_utils::CachePadded;
use serde::Serialize;

use crate::broker::{Broker, LinkRole};
use crate::config::Config;
use crate::latency::{LatencyCounts, LatencyHistogram};

/// One worker's counters.
#[derive(Default)]
pub struct WorkerStats {
    /// Open WebSocket connections held by this worker (a gauge).
    pub open_connections: AtomicU64,
    /// TCP connections accepted: each becomes a WebSocket or carries one
    /// plain HTTP request (or neither, if it stalls or breaks first).
    pub tcp_accepted: AtomicU64,
    /// WebSocket connections opened (the 101 was sent) and closed: their
    /// difference is `open_connections`.
    pub connections_accepted: AtomicU64,
    pub connections_closed: AtomicU64,
    pub messages_accepted: AtomicU64,
    pub messages_rejected: AtomicU64,
    pub messages_unavailable: AtomicU64,
    /// Accepted messages that were retries of one sent before (same
    /// `userId` and `clientMessageId`): acked with the first one's id.
    pub retries_recognized: AtomicU64,
    pub broadcast_frames_sent: AtomicU64,
    pub slow_reader_disconnects: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub handshake_timeouts: AtomicU64,
    pub refused_over_capacity: AtomicU64,
    /// Plain HTTP requests answered (health checks and refusals).
    pub http_requests: AtomicU64,
    /// WebSockets closed because a ping went unanswered.
    pub ping_timeouts: AtomicU64,
    /// `accept` calls that failed (out of descriptors, EMFILE/ENFILE, or
    /// memory); the worker retries on a timer, so one outage counts once
    /// per retry.
    pub accept_failures: AtomicU64,
    /// `presence_join`/`presence_leave` frames queued to members, and
    /// presence answers to requests.
    pub presence_frames_sent: AtomicU64,
    /// Accepted `JOIN`s that added no member: their connection already
    /// held `--presence-max-users-per-connection` users.
    pub presence_joins_over_limit: AtomicU64,
    /// Message read → accepted, the moment its ack is queued (with
    /// RabbitMQ, when its confirm arrives): every accepted message, once.
    pub ack_latency: LatencyHistogram,
    /// The worker's thread ended before the server stopped (it panicked,
    /// or its event loop failed): its connections are gone and `/health`
    /// says `degraded`.
    pub dead: AtomicBool,
    /// Stopping, the worker has closed all its WebSockets (it keeps
    /// answering HTTP until every worker has: see [`Shared::all_closed`]).
    pub closed: AtomicBool,
}

impl WorkerStats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// State every worker and the server handle share.
pub struct Shared {
    pub config: Config,
    pub started: Instant,
    /// WebSocket connections open or opening, against `max_connections`.
    pub connections: AtomicUsize,
    /// The server's stop signal (see [`crate::server`]): once given, new
    /// WebSockets are refused and `/health` says `shutting_down`.
    stopping: Shutdown,
    /// The drain before the stop: `/health` says `draining` (503) while
    /// everything else goes on as usual.
    draining: AtomicBool,
    pub workers: Vec<CachePadded<WorkerStats>>,
}

impl Shared {
    pub fn new(config: Config, stopping: Shutdown) -> Self {
        let workers = (0..config.workers)
            .map(|_| CachePadded::new(WorkerStats::default()))
            .collect();
        Shared {
            config,
            started: Instant::now(),
            connections: AtomicUsize::new(0),
            stopping,
            draining: AtomicBool::new(false),
            workers,
        }
    }

    /// Whether the server's stop has been signalled. Asked per upgrade and
    /// per `/health`, never per message.
    pub fn is_stopping(&self) -> bool {
        is_shutdown(&self.stopping)
    }

    /// The drain has begun: `/health` answers 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Records that worker `index` is gone for good.
    pub fn worker_died(&self, index: usize) {
        if let Some(worker) = self.workers.get(index) {
            worker.dead.store(true, Ordering::Release);
        }
    }

    /// Stopping, worker `index` has closed all its WebSockets.
    pub fn worker_closed(&self, index: usize) {
        if let Some(worker) = self.workers.get(index) {
            worker.closed.store(true, Ordering::Release);
        }
    }

    /// Stopping, every worker (but the dead) has closed all its
    /// WebSockets: the workers exit together, so a listener does not
    /// close (and reset the connections queued on it) while another is
    /// still answering health checks.
    pub fn all_closed(&self) -> bool {
        (self.workers.iter())
            .all(|w| w.closed.load(Ordering::Acquire) || w.dead.load(Ordering::Acquire))
    }

    /// The workers whose threads ended before the server stopped.
    pub fn dead_workers(&self) -> Vec<usize> {
        (self.workers.iter().enumerate())
            .filter(|(_, w)| w.dead.load(Ordering::Acquire))
            .map(|(i, _)| i)
            .collect()
    }

    /// Takes a connection slot, or says the server is full.
    pub fn try_open_connection(&self) -> bool {
        let max = self.config.max_connections;
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn close_connection(&self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn totals(&self) -> Totals {
        let sum = |f: fn(&WorkerStats) -> &AtomicU64| -> u64 {
            self.workers
                .iter()
                .map(|w| f(w).load(Ordering::Relaxed))
                .sum()
        };
        Totals {
            tcp_accepted: sum(|w| &w.tcp_accepted),
            connections_accepted: sum(|w| &w.connections_accepted),
            connections_closed: sum(|w| &w.connections_closed),
            messages_accepted: sum(|w| &w.messages_accepted),
            messages_rejected: sum(|w| &w.messages_rejected),
            messages_unavailable: sum(|w| &w.messages_unavailable),
            retries_recognized: sum(|w| &w.retries_recognized),
            broadcast_frames_sent: sum(|w| &w.broadcast_frames_sent),
            slow_reader_disconnects: sum(|w| &w.slow_reader_disconnects),
            protocol_errors: sum(|w| &w.protocol_errors),
            handshake_timeouts: sum(|w| &w.handshake_timeouts),
            refused_over_capacity: sum(|w| &w.refused_over_capacity),
            http_requests: sum(|w| &w.http_requests),
            ping_timeouts: sum(|w| &w.ping_timeouts),
            accept_failures: sum(|w| &w.accept_failures),
            presence_frames_sent: sum(|w| &w.presence_frames_sent),
            presence_joins_over_limit: sum(|w| &w.presence_joins_over_limit),
        }
    }

    /// Every worker's ack latencies since start, summed.
    pub fn ack_latency(&self) -> LatencyCounts {
        let mut counts = LatencyCounts::default();
        for worker in &self.workers {
            worker.ack_latency.add_to(&mut counts);
        }
        counts
    }

    /// The `/health` document (see the module docs for when it is ready).
    pub fn health(&self, broker: &dyn Broker) -> Health {
        let broker_kind = broker.kind().as_str();
        let broker = broker.health();
        let dead_workers = self.dead_workers();
        let mut reasons = Vec::new();
        let stopping = self.is_stopping();
        let draining = self.is_draining();
        // Not every problem makes it unready: a subscription blip does not.
        let mut ready = !stopping && !draining;
        if stopping {
            reasons.push("shutting down: new WebSockets are refused".to_string());
        } else if draining {
            reasons.push(
                "draining: still serving, but about to stop; connect to another server".to_string(),
            );
        }
        let grace = self.config.subscription_grace;
        for link in &broker.down {
            let secs = link.down_for.as_secs_f64();
            let (name, why) = (&link.name, &link.reason);
            reasons.push(match link.role {
                LinkRole::Publishing => {
                    ready = false;
                    format!("{name} down for {secs:.1} s, messages refused: {why}")
                }
                LinkRole::Broadcasts if link.down_for > grace => {
                    ready = false;
                    format!("{name} down for {secs:.1} s, broadcasts missed: {why}")
                }
                LinkRole::Broadcasts => format!(
                    "{name} down for {secs:.1} s (still ready within the {} s grace), broadcasts missed: {why}",
                    grace.as_secs_f64()
                ),
            });
        }
        if !dead_workers.is_empty() {
            ready = false;
            reasons.push(format!(
                "worker(s) {dead_workers:?} dead: their connections are gone"
            ));
        }
        let status = if stopping {
            "shutting_down"
        } else if draining {
            "draining"
        } else if !reasons.is_empty() {
            "degraded"
        } else {
            "ok"
        };
        Health {
            status,
            ready,
            reasons,
            server_id: self.config.server_id.clone(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            connections: self.connections.load(Ordering::Relaxed),
            max_connections: self.config.max_connections,
            workers: self.config.workers,
            dead_workers,
            rooms: self.config.rooms().count(),
            broker: BrokerStatus {
                kind: broker_kind,
                connected: broker.connected,
                detail: broker.detail,
            },
            connections_per_worker: self
                .workers
                .iter()
                .map(|w| w.open_connections.load(Ordering::Relaxed))
                .collect(),
            totals: self.totals(),
            ack_latency: self.ack_latency(),
        }
    }

    /// The `/livez` body: the process runs (nothing else is asked).
    pub fn livez(&self) -> String {
        serde_json::json!({
            "status": "alive",
            "serverId": self.config.server_id,
            "uptimeSeconds": self.started.elapsed().as_secs_f64(),
        })
        .to_string()
    }
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub tcp_accepted: u64,
    pub connections_accepted: u64,
    pub connections_closed: u64,
    pub messages_accepted: u64,
    pub messages_rejected: u64,
    pub messages_unavailable: u64,
    pub retries_recognized: u64,
    pub broadcast_frames_sent: u64,
    pub slow_reader_disconnects: u64,
    pub protocol_errors: u64,
    pub handshake_timeouts: u64,
    pub refused_over_capacity: u64,
    pub http_requests: u64,
    pub ping_timeouts: u64,
    pub accept_failures: u64,
    pub presence_frames_sent: u64,
    pub presence_joins_over_limit: u64,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// `ok`, `degraded`, `draining` or `shutting_down`.
    pub status: &'static str,
    /// Whether this server can take messages now: `/health` answers 200
    /// if so, 503 (with this document) if not.
    pub ready: bool,
    /// What is wrong (empty when nothing is): why it is not ready, or a
    /// subscription blip it is still ready through.
    pub reasons: Vec<String>,
    pub server_id: String,
    pub uptime_seconds: f64,
    pub connections: usize,
    pub max_connections: usize,
    pub workers: usize,
    /// Indexes of workers whose threads died (see [`WorkerStats::dead`]).
    pub dead_workers: Vec<usize>,
    pub rooms: u32,
    /// Open WebSockets per worker: shows how evenly `SO_REUSEPORT` spreads.
    pub connections_per_worker: Vec<u64>,
    pub broker: BrokerStatus,
    pub totals: Totals,
    /// Ack latencies since start, for the fleet snapshot's quantiles of
    /// the last 10 s; not in `/health` (since-start quantiles would hide a
    /// slow spell under the hours before it).
    #[serde(skip)]
    pub ack_latency: LatencyCounts,
}

impl Health {
    /// `/health`'s status code: 200 only when ready.
    pub fn http_status(&self) -> u16 {
        if self.ready {
            200
        } else {
            503
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerStatus {
    pub kind: &'static str,
    pub connected: bool,
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chatflow_broker::shutdown_signal;
    use chatflow_protocol::Envelope;
    use parking_lot::Mutex;

    use super::*;
    use crate::broker::{BrokerHealth, LinkDown, Outcome};
    use crate::config::BrokerKind;
    use crate::fanout::Ticket;

    /// A broker whose links are down as the test says.
    #[derive(Default)]
    struct Links(Mutex<Vec<LinkDown>>);

    impl Broker for Links {
        fn kind(&self) -> BrokerKind {
            BrokerKind::Rabbitmq
        }
        fn publish(&self, _: Ticket, _: &Envelope<'_>, _: Option<&str>) -> Outcome {
            Outcome::Accepted
        }
        fn health(&self) -> BrokerHealth {
            let down = self.0.lock().clone();
            BrokerHealth {
                connected: down.is_empty(),
                detail: String::new(),
                down,
            }
        }
    }

    fn down(role: LinkRole, secs: u64) -> LinkDown {
        LinkDown {
            name: "link".to_string(),
            role,
            down_for: Duration::from_secs(secs),
            reason: "cut".to_string(),
        }
    }

    #[test]
    fn ready_only_when_publishing_works_the_subscription_is_back_in_time_and_no_stop() {
        let config = Config {
            workers: 2,
            subscription_grace: Duration::from_secs(5),
            ..Config::default()
        };
        let (mut stop, stopping) = shutdown_signal();
        let shared = Shared::new(config, stopping);
        let broker = Links::default();
        let health = shared.health(&broker);
        assert_eq!((health.status, health.http_status()), ("ok", 200));
        assert!(health.reasons.is_empty());

        // A subscription blip within its grace: degraded, but ready.
        *broker.0.lock() = vec![down(LinkRole::Broadcasts, 2)];
        let health = shared.health(&broker);
        assert_eq!((health.status, health.http_status()), ("degraded", 200));
        assert!(health.reasons[0].contains("still ready"), "{health:?}");
        assert!(!health.broker.connected);
        *broker.0.lock() = vec![down(LinkRole::Broadcasts, 6)];
        let health = shared.health(&broker);
        assert_eq!((health.status, health.http_status()), ("degraded", 503));
        assert!(
            health.reasons[0].contains("broadcasts missed"),
            "{health:?}"
        );
        // Publishing has no grace.
        *broker.0.lock() = vec![down(LinkRole::Publishing, 0)];
        let health = shared.health(&broker);
        assert_eq!((health.status, health.http_status()), ("degraded", 503));
        assert!(health.reasons[0].contains("messages refused"), "{health:?}");

        broker.0.lock().clear();
        shared.worker_died(1);
        let health = shared.health(&broker);
        assert_eq!((health.status, health.http_status()), ("degraded", 503));
        assert!(health.reasons[0].contains("[1] dead"), "{health:?}");

        shared.start_draining();
        let health = shared.health(&broker);
        assert_eq!((health.status, health.http_status()), ("draining", 503));
        stop.signal();
        let health = shared.health(&broker);
        assert_eq!(
            (health.status, health.http_status()),
            ("shutting_down", 503)
        );
        let json = serde_json::to_value(&health).unwrap();
        assert_eq!(json["ready"], false);
        assert_eq!(json["reasons"].as_array().unwrap().len(), 2, "{json}");
    }
}
