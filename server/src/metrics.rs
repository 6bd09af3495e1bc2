//! `GET /metrics` on the API port (`--api-bind`, default 8082): this
//! server in the Prometheus/OpenMetrics text format, encoded by
//! `prometheus-client`. Everything `/health` counts, per worker; the
//! publishers' latency histograms; readiness and links; the API's own
//! requests and database pool; `process_*` and `chatflow_build_info`.
//!
//! Read at scrape time from the counters the workers already keep (their
//! own cache-padded atomics, see [`crate::stats`]): a scrape costs the
//! workers nothing, and the numbers are exactly `/health`'s. Requests to
//! the API port (scrapes included) are counted by route in
//! `chatflow_api_requests_total`, apart from the WebSocket port's
//! connections and its plain HTTP (health checks:
//! `chatflow_server_http_requests_total`).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chatflow_database::pool::ReadPool;
use chatflow_telemetry::build::BuildInfo;
use chatflow_telemetry::labels;
use chatflow_telemetry::process::ProcessMetrics;
use chatflow_telemetry::scrape::Labels;
use chatflow_telemetry::Scrape;
use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use crate::api::replica::ReplicaMonitor;
use crate::broker::publish_metrics::{PublisherGauges, PublishingSnapshot};
use crate::broker::{Broker, LinkRole};
use crate::fleet::QueueDepths;
use crate::presence::PresenceHandle;
use crate::stats::{Shared, WorkerStats};

/// The registry `/metrics` encodes, and the API's request counts.
pub struct ServerMetrics {
    registry: Registry,
    api: Arc<ApiRequests>,
}

impl ServerMetrics {
    /// `pool`: the read API's database pool, when it has one; `queues`:
    /// the RabbitMQ queue-depth sampler, with the RabbitMQ broker;
    /// `presence`: unless `--presence off`.
    pub fn new(
        shared: Arc<Shared>,
        broker: Arc<dyn Broker>,
        pool: Option<Arc<ReadPool>>,
        replica: Option<Arc<ReplicaMonitor>>,
        queues: Option<Arc<QueueDepths>>,
        presence: Option<PresenceHandle>,
    ) -> Self {
        let api = Arc::new(ApiRequests::default());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ServerCollector { shared, broker }));
        if let Some(queues) = queues {
            registry.register_collector(Box::new(QueueCollector(queues)));
        }
        if let Some(presence) = presence {
            registry.register_collector(Box::new(PresenceCollector(presence)));
        }
        registry.register_collector(Box::new(ApiCollector {
            requests: api.clone(),
            pool,
            replica,
        }));
        registry.register_collector(Box::new(ProcessMetrics));
        registry.register_collector(Box::new(BuildInfo {
            binary: "chatflow-server",
        }));
        ServerMetrics { registry, api }
    }

    /// Counts one answered API request (a scrape too).
    pub fn count_api_request(&self, route: &'static str, status: u16) {
        self.api.count(route, status);
    }

    /// The page.
    pub fn encode(&self) -> String {
        chatflow_telemetry::encode(&self.registry)
    }
}

/// API requests by (route, status class): a handful of series, a short
/// lock per request on the API's threads (never a worker's).
#[derive(Debug, Default)]
struct ApiRequests {
    counts: Mutex<Vec<((&'static str, u16), u64)>>,
}

impl ApiRequests {
    fn count(&self, route: &'static str, status: u16) {
        let mut counts = self.counts.lock();
        match counts.iter_mut().find(|(key, _)| *key == (route, status)) {
            Some((_, n)) => *n += 1,
            None => counts.push(((route, status), 1)),
        }
    }
}

struct ApiCollector {
    requests: Arc<ApiRequests>,
    pool: Option<Arc<ReadPool>>,
    replica: Option<Arc<ReplicaMonitor>>,
}

impl fmt::Debug for ApiCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiCollector")
    }
}

impl Collector for ApiCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        let mut s = Scrape::new(encoder);
        let counts = self.requests.counts.lock().clone();
        s.counters(
            "chatflow_api_requests",
            "Requests answered on the API port, by route and HTTP status (scrapes of /metrics included).",
            (counts.into_iter()).map(|((route, status), n)| (labels!("route" => route, "code" => status), n)),
        )?;
        if let Some(pool) = &self.pool {
            let stats = pool.stats();
            s.gauges(
                "chatflow_api_db_pool_connections",
                "The read API's PostgreSQL connections, by state.",
                [
                    (labels!("state" => "idle"), f64::from(stats.idle)),
                    (labels!("state" => "in_use"), f64::from(stats.in_use)),
                ],
            )?;
            s.gauge(
                "chatflow_api_db_pool_max_connections",
                "The read API's pool size (--api-pool-size).",
                f64::from(stats.max_size),
            )?;
            s.counter(
                "chatflow_api_db_pool_checkouts",
                "Connections taken from the read API's pool.",
                stats.checkouts,
            )?;
            s.counter(
                "chatflow_api_db_pool_timeouts",
                "Requests that found no free connection in time (answered 503).",
                stats.timeouts,
            )?;
        }
        if let Some(replica) = &self.replica {
            let report = replica.report();
            s.gauge(
                "chatflow_api_db_replica_up",
                "1 if the last sample of the read replica (DB_READ_HOST, once a second) worked.",
                if report.up() { 1.0 } else { 0.0 },
            )?;
            if let Some(state) = &report.state {
                s.gauge(
                    "chatflow_api_db_replica_in_recovery",
                    "1 while the read replica is a standby (0: it was promoted, or is a primary).",
                    if state.in_recovery { 1.0 } else { 0.0 },
                )?;
                if let Some(lag) = state.lag_seconds {
                    s.gauge(
                        "chatflow_api_db_replica_lag_seconds",
                        "How far the read replica's data is behind the primary (0 when it has replayed all it received).",
                        lag,
                    )?;
                }
            }
        }
        Ok(())
    }
}

struct ServerCollector {
    shared: Arc<Shared>,
    broker: Arc<dyn Broker>,
}

impl fmt::Debug for ServerCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerCollector")
    }
}

/// Every per-worker counter: (name without `_total`, help, field).
type WorkerCounter = (&'static str, &'static str, fn(&WorkerStats) -> &AtomicU64);

const WORKER_COUNTERS: &[WorkerCounter] = &[
    ("chatflow_server_tcp_accepted", "TCP connections accepted on the WebSocket port (WebSockets, health checks and refused requests).", |w| &w.tcp_accepted),
    ("chatflow_server_websocket_connections_opened", "WebSocket connections opened (101 sent).", |w| &w.connections_accepted),
    ("chatflow_server_websocket_connections_closed", "WebSocket connections closed, for any reason.", |w| &w.connections_closed),
    ("chatflow_server_http_requests", "Plain HTTP requests answered on the WebSocket port (/health, /livez, refusals): not WebSockets.", |w| &w.http_requests),
    ("chatflow_server_messages_accepted", "Messages accepted from clients (offered to the broker).", |w| &w.messages_accepted),
    ("chatflow_server_messages_rejected", "Messages refused as invalid (an error frame, the connection stays).", |w| &w.messages_rejected),
    ("chatflow_server_messages_unavailable", "Messages answered UNAVAILABLE (broker or sent log down, queue full, stopping).", |w| &w.messages_unavailable),
    ("chatflow_server_retries_recognized", "Messages that were retries of one sent before (same userId and clientMessageId).", |w| &w.retries_recognized),
    ("chatflow_server_broadcast_frames_sent", "Broadcast frames queued to room members.", |w| &w.broadcast_frames_sent),
    ("chatflow_server_slow_reader_disconnects", "Connections closed because they did not read their broadcasts.", |w| &w.slow_reader_disconnects),
    ("chatflow_server_protocol_errors", "WebSocket protocol violations (the connection is closed).", |w| &w.protocol_errors),
    ("chatflow_server_handshake_timeouts", "Connections whose HTTP request did not arrive in time.", |w| &w.handshake_timeouts),
    ("chatflow_server_refused_over_capacity", "WebSocket upgrades refused at --max-connections.", |w| &w.refused_over_capacity),
    ("chatflow_server_ping_timeouts", "WebSockets closed because a ping went unanswered.", |w| &w.ping_timeouts),
    ("chatflow_server_accept_failures", "accept() calls that failed (out of descriptors or memory).", |w| &w.accept_failures),
    ("chatflow_server_presence_frames_sent", "Presence frames queued to connections: presence_join, presence_leave, and answers to presence requests.", |w| &w.presence_frames_sent),
    ("chatflow_server_presence_joins_over_limit", "Accepted JOINs that added no member: their connection held --presence-max-users-per-connection users already.", |w| &w.presence_joins_over_limit),
];

impl Collector for ServerCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        let mut s = Scrape::new(encoder);
        let workers = &self.shared.workers;
        let per_worker = |field: fn(&WorkerStats) -> &AtomicU64| {
            (workers.iter().enumerate())
                .map(move |(i, w)| (labels!("worker" => i), field(w).load(Ordering::Relaxed)))
        };
        for &(name, help, field) in WORKER_COUNTERS {
            s.counters(name, help, per_worker(field))?;
        }
        s.gauges(
            "chatflow_server_connections",
            "Open WebSocket connections, per worker.",
            per_worker(|w| &w.open_connections).map(|(l, n)| (l, n as f64)),
        )?;
        s.gauges(
            "chatflow_server_worker_up",
            "1 while the worker's thread runs; 0 if it died (its connections are gone).",
            (workers.iter().enumerate()).map(|(i, w)| {
                let dead = w.dead.load(Ordering::Acquire);
                (labels!("worker" => i), if dead { 0.0 } else { 1.0 })
            }),
        )?;
        s.gauge(
            "chatflow_server_max_connections",
            "WebSocket connections allowed at once (--max-connections).",
            self.shared.config.max_connections as f64,
        )?;
        let health = self.shared.health(&*self.broker);
        s.flag(
            "chatflow_server_ready",
            "1 while /health answers 200 (this server can take messages).",
            health.ready,
        )?;
        s.flag(
            "chatflow_server_draining",
            "1 while the server drains before it stops (/health answers 503).",
            self.shared.is_draining(),
        )?;
        let down = self.broker.health().down;
        let links_down = |role: LinkRole| down.iter().filter(|d| d.role == role).count() as f64;
        s.gauges(
            "chatflow_server_links_down",
            "Links to RabbitMQ (publishing) or Redis (broadcasts) that are down now.",
            [
                (
                    labels!("role" => "publishing"),
                    links_down(LinkRole::Publishing),
                ),
                (
                    labels!("role" => "broadcasts"),
                    links_down(LinkRole::Broadcasts),
                ),
            ],
        )?;
        if let Some(p) = self.broker.publishing() {
            s.histogram(
                "chatflow_server_ack_latency_seconds",
                "Accepted on a worker to the broker's confirm at the publisher: the server's share of a client's ack latency.",
                &p.ack_latency,
            )?;
            s.histogram(
                "chatflow_server_broker_confirm_latency_seconds",
                "basic.publish to RabbitMQ's confirm.",
                &p.confirm_latency,
            )?;
            s.histogram(
                "chatflow_server_sent_log_claim_seconds",
                "One Redis round trip claiming a burst of named messages (idempotent sends).",
                &p.claim_latency,
            )?;
            s.gauges(
                "chatflow_server_publishes_in_flight",
                "Messages published to RabbitMQ and not yet confirmed, per publisher.",
                per_publisher(&p, |g| g.in_flight as f64),
            )?;
            s.gauges(
                "chatflow_server_publish_queue_depth",
                "Messages waiting in a publisher's queue (--publish-queue bounds it).",
                per_publisher(&p, |g| g.queued as f64),
            )?;
            s.gauges(
                "chatflow_server_publisher_up",
                "1 while the publisher's RabbitMQ link is up.",
                per_publisher(&p, |g| if g.up { 1.0 } else { 0.0 }),
            )?;
            s.counters(
                "chatflow_server_confirms_overdue",
                "Messages answered UNAVAILABLE because no confirm came within --confirm-timeout-secs.",
                per_publisher(&p, |g| g.confirms_overdue),
            )?;
            s.counters(
                "chatflow_server_publisher_channel_reopens",
                "Channels reopened after a nack (a channel opened during a quorum queue's election can keep nacking).",
                per_publisher(&p, |g| g.channel_reopens),
            )?;
        }
        Ok(())
    }
}

/// One sample per publisher, labelled with its index.
fn per_publisher<T>(
    p: &PublishingSnapshot,
    value: impl Fn(&PublisherGauges) -> T,
) -> Vec<(Labels, T)> {
    (p.publishers.iter().enumerate())
        .map(|(i, g)| (labels!("publisher" => i), value(g)))
        .collect()
}

/// Presence's counts (kept by its thread in atomics: a scrape asks it
/// nothing): members per room across the fleet and held here, the
/// servers seen, and, shared, the Redis link.
struct PresenceCollector(PresenceHandle);

impl fmt::Debug for PresenceCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresenceCollector")
    }
}

impl Collector for PresenceCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        let mut s = Scrape::new(encoder);
        let counts = self.0.counts();
        s.gauges(
            "chatflow_server_presence_members",
            "Members of each room across the fleet, as this server sees it (the same on every server of a fleet: take one, max by (room)).",
            (counts.rooms.iter()).map(|r| (labels!("room" => r.room_id), r.count as f64)),
        )?;
        s.gauges(
            "chatflow_server_presence_local_members",
            "Members of each room held by this server's connections (in their grace too).",
            (counts.rooms.iter()).map(|r| (labels!("room" => r.room_id), r.local as f64)),
        )?;
        s.gauge(
            "chatflow_server_presence_servers",
            "Servers whose members this server counts, itself included.",
            counts.servers as f64,
        )?;
        if let Some(redis) = &counts.redis {
            s.flag(
                "chatflow_server_presence_redis_up",
                "1 while presence is shared through Redis (its last write, heartbeat or read worked).",
                redis.connected,
            )?;
            s.counter(
                "chatflow_server_presence_redis_failures",
                "Presence writes, heartbeats and reads of Redis that failed.",
                redis.failures,
            )?;
        }
        Ok(())
    }
}

/// The queue-depth sampler's latest poll (every 2 s): ready messages and
/// consumers per room queue. Every server with the API on samples the
/// same queues, so a dashboard takes one server's (`max by (room)`).
struct QueueCollector(Arc<QueueDepths>);

impl fmt::Debug for QueueCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("QueueCollector")
    }
}

impl Collector for QueueCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        let mut s = Scrape::new(encoder);
        let part = self.0.latest();
        s.flag(
            "chatflow_rabbitmq_queue_sample_ok",
            "1 when the latest poll of the room queues succeeded (the depths below are from the last good one).",
            part.error.is_none(),
        )?;
        let Some(sample) = part.sample else {
            return Ok(());
        };
        s.gauge(
            "chatflow_rabbitmq_queue_sample_age_seconds",
            "Seconds since the depths below were polled.",
            sample.age_seconds,
        )?;
        let shards = |value: fn(&crate::fleet::queues::RoomDepth, usize) -> f64| {
            (sample.rooms.iter())
                .flat_map(move |room| {
                    (0..room.shards.len()).map(move |shard| {
                        (
                            labels!("room" => room.room_id, "shard" => shard),
                            value(room, shard),
                        )
                    })
                })
                .collect::<Vec<(Labels, f64)>>()
        };
        s.gauges(
            "chatflow_rabbitmq_queue_messages_ready",
            "Ready messages in each room's shard queue (RabbitMQ's passive declare; unacked ones are not counted).",
            shards(|room, shard| room.shards[shard] as f64),
        )?;
        s.gauges(
            "chatflow_rabbitmq_room_consumers",
            "Consumers on a room's queues, over its shards (5 when the consumer fleet is whole).",
            (sample.rooms.iter())
                .map(|room| (labels!("room" => room.room_id), room.consumers as f64)),
        )
    }
}
