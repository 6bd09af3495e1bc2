//! `/metrics`: the consumer in the Prometheus/OpenMetrics text format,
//! encoded by `prometheus-client`, every own name prefixed
//! `chatflow_consumer_`: the counters and flags of the [`Health`] document
//! (read from the same state, so the two never disagree), Prometheus
//! histograms (cumulative buckets, `_sum`, `_count`) of consumer lag,
//! Redis publish time, batch sizes and the writers' COPY + commit, the
//! queues this instance holds by duty and role
//! (`chatflow_consumer_queues{duty, role}`), and the standard `process_*`
//! and `chatflow_build_info`.

use std::fmt;

use chatflow_telemetry::build::BuildInfo;
use chatflow_telemetry::labels;
use chatflow_telemetry::process::ProcessMetrics;
use chatflow_telemetry::{HistogramSnapshot, Scrape};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use crate::counters::QueueBucketsSnapshot;
use crate::health::Health;
use crate::holding::ROLES;
use crate::state::Shared;

/// What one scrape read: owned, so the registry's collector needs no
/// reference into the running consumer.
struct Reading {
    health: Health,
    queues: QueueBucketsSnapshot,
    copy: HistogramSnapshot,
    batch_rows: HistogramSnapshot,
}

impl fmt::Debug for Reading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Reading")
    }
}

/// `/metrics` in the OpenMetrics text format.
pub fn encode(shared: &Shared) -> String {
    let (copy, batch_rows) = shared.counters.writer_buckets();
    let reading = Reading {
        health: Health::of(shared),
        queues: shared.counters.queue_buckets(),
        copy,
        batch_rows,
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(reading));
    registry.register_collector(Box::new(ProcessMetrics));
    registry.register_collector(Box::new(BuildInfo {
        binary: "chatflow-consumer",
    }));
    chatflow_telemetry::encode(&registry)
}

const P: &str = "chatflow_consumer_";

impl Collector for Reading {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        let mut s = Scrape::new(encoder);
        let name = |n: &str| format!("{P}{n}");
        let health = &self.health;
        s.counters(
            &name("consumed"),
            "Deliveries taken from RabbitMQ, per room.",
            (health.per_room.iter()).map(|r| (labels!("room" => r.room), r.consumed)),
        )?;
        let t = &health.totals;
        for (n, help, value) in [
            ("broadcasts", "Message frames published to Redis.", t.broadcasts),
            ("broadcasts_suppressed", "Deliveries not broadcast again: their id was broadcast lately.", t.broadcasts_suppressed),
            ("acked", "Deliveries acked to RabbitMQ.", t.acked),
            ("redelivered", "Deliveries flagged redelivered by the broker.", t.redelivered),
            ("dead_lettered", "Deliveries rejected to the dead-letter queue (undecodable, or their row refused by the database).", t.dead_lettered),
            ("batches", "Redis pipelines published.", t.batches),
            ("redis_errors", "Failed Redis attempts.", t.redis_errors),
            ("redis_reconnects", "Redis connections re-established after a failure.", t.redis_reconnects),
            ("amqp_reconnects", "AMQP connections re-established after a loss.", t.amqp_reconnects),
            ("channel_reopens", "Consumer channels lost and opened again.", t.channel_reopens),
        ] {
            s.counter(&name(n), help, value)?;
        }
        s.flag(
            &name("rabbitmq_connected"),
            "1 when every consumer is consuming on a live channel.",
            health.rabbitmq.connected,
        )?;
        s.gauge(
            &name("consumers_connected"),
            "Consumers consuming on a live channel.",
            health.rabbitmq.consumers_connected as f64,
        )?;
        s.flag(
            &name("redis_connected"),
            "1 when Redis answers and every consumer's last publish succeeded.",
            health.redis.connected,
        )?;
        s.flag(
            &name("degraded"),
            "1 while /health reports degraded.",
            health.status == "degraded",
        )?;
        s.gauge(
            &name("dead_threads"),
            "Threads that panicked or stopped before shutdown (their queues stall until a restart).",
            health.dead_threads.len() as f64,
        )?;
        let instance = &health.instance;
        s.gauges(
            &name("queues"),
            "Queues this instance consumes, by duty (owner: its own share; standby: another instance's) and role (active: delivered to on its current registration, RabbitMQ's single active consumer; waiting: registered, nothing delivered yet — behind the active consumer, or an idle queue; unregistered; delayed: a standby before its start-up delay ends).",
            [("owner", &instance.owned), ("standby", &instance.standing_by)]
                .into_iter()
                .flat_map(|(duty, counts)| {
                    ROLES.iter().map(move |role| {
                        (labels!("duty" => duty, "role" => role), counts.of(role) as f64)
                    })
                }),
        )?;
        s.gauge(
            &name("instance"),
            "This process's instance number K (--instance) of chatflow_consumer_instances (--instances).",
            instance.instance as f64,
        )?;
        s.gauge(
            &name("instances"),
            "Consumer instances sharing the queues (--instances).",
            instance.instances as f64,
        )?;
        s.counter(
            &name("activations"),
            "Queue registrations that got their first delivery (became the active consumer): at start, and each takeover.",
            instance.activations,
        )?;
        s.counter(
            &name("standby_yields"),
            "Standby registrations handed back to the queue's owner once it registered again.",
            instance.yields,
        )?;
        s.histogram(
            &name("lag_seconds"),
            "Server timestamp to broadcast published, per message: time spent in the broker and the consumer.",
            &self.queues.lag,
        )?;
        s.histogram(
            &name("redis_publish_seconds"),
            "A batch's Redis pipeline (its broadcasts and history appends): the time spent writing it and reading its reply, which is read before the batch is acked, not at once.",
            &self.queues.publish,
        )?;
        s.histogram(
            &name("batch_deliveries"),
            "Deliveries per batch taken from a queue.",
            &self.queues.batch,
        )?;
        if let Some(db) = &health.database {
            s.flag(
                &name("database_connected"),
                "1 when every PostgreSQL writer's last batch committed.",
                db.connected,
            )?;
            s.gauge(
                &name("writers_connected"),
                "PostgreSQL writers whose last batch committed.",
                db.writers_connected as f64,
            )?;
            for (n, help, value) in [
                ("rows_stored", "Rows committed to PostgreSQL.", db.rows),
                ("copy_batches", "Batches committed.", db.batches),
                (
                    "duplicate_batches",
                    "Batches written through the deduplicating staging path.",
                    db.duplicate_batches,
                ),
                (
                    "duplicates_dropped",
                    "Redelivered rows already stored, dropped by ON CONFLICT.",
                    db.duplicates_dropped,
                ),
                (
                    "write_retries",
                    "Failed batch attempts, retried.",
                    db.retries,
                ),
                (
                    "rows_dead_lettered",
                    "Rows PostgreSQL refused on their own, rejected to the dead-letter queue.",
                    db.rows_dead_lettered,
                ),
                (
                    "batch_splits",
                    "Refused writes split in two to find the refused rows.",
                    db.batch_splits,
                ),
            ] {
                s.counter(&name(n), help, value)?;
            }
            s.histogram(
                &name("copy_seconds"),
                "COPY and commit of one batch.",
                &self.copy,
            )?;
            s.histogram(
                &name("batch_rows"),
                "Rows per committed batch.",
                &self.batch_rows,
            )?;
        }
        s.gauge(
            &name("uptime_seconds"),
            "Seconds since start.",
            health.uptime_seconds,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::add;
    use crate::state::for_tests;

    #[test]
    fn the_page_has_counters_histograms_and_process_metrics() {
        let (_trigger, s) = for_tests(2);
        add(&s.counters.queues[6].consumed, 9);
        s.counters.queues[0].buckets.lag.observe(0.004);
        s.counters.queues[3].buckets.lag.observe(0.2);
        let text = encode(&s);
        for line in [
            "# TYPE chatflow_consumer_consumed counter",
            "chatflow_consumer_consumed_total{room=\"2\"} 9",
            "chatflow_consumer_dead_lettered_total 0",
            "# TYPE chatflow_consumer_lag_seconds histogram",
            "chatflow_consumer_lag_seconds_count 2",
            "chatflow_consumer_lag_seconds_bucket{le=\"0.005\"} 1",
            "chatflow_consumer_lag_seconds_bucket{le=\"+Inf\"} 2",
            "chatflow_consumer_redis_publish_seconds_count 0",
            "chatflow_consumer_dead_threads 0.0",
            "chatflow_consumer_queues{duty=\"owner\",role=\"unregistered\"} 10.0",
            "chatflow_consumer_queues{duty=\"standby\",role=\"active\"} 0.0",
            "chatflow_consumer_instances 1.0",
            "chatflow_consumer_standby_yields_total 0",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
        assert!(
            text.contains("chatflow_build_info{binary=\"chatflow-consumer\""),
            "{text}"
        );
        let lag_sum = (text.lines())
            .find_map(|l| l.strip_prefix("chatflow_consumer_lag_seconds_sum "))
            .unwrap();
        assert!(
            (lag_sum.parse::<f64>().unwrap() - 0.204).abs() < 1e-6,
            "{lag_sum}"
        );
    }
}
