//! Counters and the `/health` document. Each worker bumps only its own
//! cache-padded counters (no shared cache line on the hot path); readers sum
//! them.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use chatflow_broker::retry::is_shutdown;
use chatflow_broker::Shutdown;
use crossbeam_utils::CachePadded;
use serde::Serialize;

use crate::broker::Broker;
use crate::config::Config;

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
    /// The worker's thread ended before the server stopped (it panicked,
    /// or its event loop failed): its connections are gone and `/health`
    /// says `degraded`.
    pub dead: AtomicBool,
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
            workers,
        }
    }

    /// Whether the server's stop has been signalled. Asked per upgrade and
    /// per `/health`, never per message.
    pub fn is_stopping(&self) -> bool {
        is_shutdown(&self.stopping)
    }

    /// Records that worker `index` is gone for good.
    pub fn worker_died(&self, index: usize) {
        if let Some(worker) = self.workers.get(index) {
            worker.dead.store(true, Ordering::Release);
        }
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
        }
    }

    /// The `/health` document: `degraded` while the broker is disconnected
    /// or a worker is dead.
    pub fn health(&self, broker: &dyn Broker) -> Health {
        let broker_kind = broker.kind().as_str();
        let broker = broker.health();
        let dead_workers = self.dead_workers();
        let status = if self.is_stopping() {
            "shutting_down"
        } else if !broker.connected || !dead_workers.is_empty() {
            "degraded"
        } else {
            "ok"
        };
        Health {
            status,
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
        }
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
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub status: &'static str,
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
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerStatus {
    pub kind: &'static str,
    pub connected: bool,
    pub detail: String,
}
