//! `/metrics`: the [`Health`] document in the Prometheus text exposition
//! format (version 0.0.4), every name prefixed `chatflow_consumer_`.
//!
//! Written by hand: a dozen families, encoded from the same document
//! `/health` serves, so the two never disagree.

use std::fmt::Write as _;

use crate::health::{Health, Quantiles};

const PREFIX: &str = "chatflow_consumer_";

/// Writes metric families into a string.
struct Encoder {
    out: String,
}

impl Encoder {
    /// `# HELP` and `# TYPE` of a family.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {PREFIX}{name} {help}");
        let _ = writeln!(self.out, "# TYPE {PREFIX}{name} {kind}");
    }

    /// One sample; `suffix` is appended to the name (`{room="1"}`, `_count`).
    fn sample(&mut self, name: &str, suffix: &str, value: f64) {
        let _ = writeln!(self.out, "{PREFIX}{name}{suffix} {value}");
    }

    /// Counters without labels: (name, help, value) each.
    fn counters(&mut self, table: &[(&str, &str, u64)]) {
        for &(name, help, value) in table {
            self.family(name, "counter", help);
            self.sample(name, "", value as f64);
        }
    }

    fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, "gauge", help);
        self.sample(name, "", value);
    }

    fn flag(&mut self, name: &str, help: &str, on: bool) {
        self.gauge(name, help, if on { 1.0 } else { 0.0 });
    }

    /// A summary: quantiles as labels (scaled to the base unit), and the
    /// observation count.
    fn summary(&mut self, name: &str, help: &str, q: &Quantiles, scale: f64) {
        self.family(name, "summary", help);
        for (quantile, value) in [("0.5", q.p50), ("0.99", q.p99), ("1", q.max)] {
            let labels = format!("{{quantile=\"{quantile}\"}}");
            self.sample(name, &labels, value as f64 * scale);
        }
        self.sample(name, "_count", q.count as f64);
    }
}

/// `/metrics` in the Prometheus text format.
pub fn encode(health: &Health) -> String {
    let mut m = Encoder {
        out: String::with_capacity(4096),
    };
    m.family(
        "consumed_total",
        "counter",
        "Deliveries taken from RabbitMQ, per room.",
    );
    for room in &health.per_room {
        let labels = format!("{{room=\"{}\"}}", room.room);
        m.sample("consumed_total", &labels, room.consumed as f64);
    }
    let t = &health.totals;
    m.counters(&[
        (
            "broadcasts_total",
            "Message frames published to Redis.",
            t.broadcasts,
        ),
        (
            "broadcasts_suppressed_total",
            "Deliveries not broadcast again: their id was broadcast lately.",
            t.broadcasts_suppressed,
        ),
        ("acked_total", "Deliveries acked to RabbitMQ.", t.acked),
        (
            "redelivered_total",
            "Deliveries flagged redelivered by the broker.",
            t.redelivered,
        ),
        (
            "dead_lettered_total",
            "Deliveries rejected to the dead-letter queue (undecodable, or their row refused by the database).",
            t.dead_lettered,
        ),
        ("batches_total", "Redis pipelines published.", t.batches),
        ("redis_errors_total", "Failed Redis attempts.", t.redis_errors),
        (
            "redis_reconnects_total",
            "Redis connections re-established after a failure.",
            t.redis_reconnects,
        ),
        (
            "amqp_reconnects_total",
            "AMQP connections re-established after a loss.",
            t.amqp_reconnects,
        ),
        (
            "channel_reopens_total",
            "Consumer channels lost and opened again.",
            t.channel_reopens,
        ),
    ]);
    m.flag(
        "rabbitmq_connected",
        "1 when every consumer is consuming on a live channel.",
        health.rabbitmq.connected,
    );
    m.gauge(
        "consumers_connected",
        "Consumers consuming on a live channel.",
        health.rabbitmq.consumers_connected as f64,
    );
    m.flag(
        "redis_connected",
        "1 when Redis answers and every consumer's last publish succeeded.",
        health.redis.connected,
    );
    m.flag(
        "degraded",
        "1 while /health reports degraded.",
        health.status == "degraded",
    );
    m.gauge(
        "dead_threads",
        "Threads that panicked or stopped before shutdown (their queues stall until a restart).",
        health.dead_threads.len() as f64,
    );
    if let Some(db) = &health.database {
        m.flag(
            "database_connected",
            "1 when every PostgreSQL writer's last batch committed.",
            db.connected,
        );
        m.counters(&[
            (
                "rows_stored_total",
                "Rows committed to PostgreSQL.",
                db.rows,
            ),
            ("copy_batches_total", "Batches committed.", db.batches),
            (
                "duplicate_batches_total",
                "Batches written through the deduplicating staging path.",
                db.duplicate_batches,
            ),
            (
                "duplicates_dropped_total",
                "Redelivered rows already stored, dropped by ON CONFLICT.",
                db.duplicates_dropped,
            ),
            (
                "write_retries_total",
                "Failed batch attempts, retried.",
                db.retries,
            ),
            (
                "rows_dead_lettered_total",
                "Rows PostgreSQL refused on their own, rejected to the dead-letter queue.",
                db.rows_dead_lettered,
            ),
            (
                "batch_splits_total",
                "Refused writes split in two to find the refused rows.",
                db.batch_splits,
            ),
        ]);
        m.summary(
            "copy_seconds",
            "COPY and commit of one batch.",
            &db.copy_latency_us,
            1e-6,
        );
    }
    let l = &health.latency;
    m.summary(
        "redis_publish_seconds",
        "Redis pipeline round trip.",
        &l.redis_publish_us,
        1e-6,
    );
    m.summary(
        "lag_seconds",
        "Server timestamp to broadcast published.",
        &l.lag_ms,
        1e-3,
    );
    m.summary("batch_size", "Deliveries per batch.", &l.batch_size, 1.0);
    m.gauge(
        "uptime_seconds",
        "Seconds since start.",
        health.uptime_seconds,
    );
    m.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::add;
    use crate::state::for_tests;

    #[test]
    fn prometheus_text_has_help_type_and_samples() {
        let (_trigger, s) = for_tests(2);
        add(&s.counters.queues[6].consumed, 9);
        let text = encode(&Health::of(&s));
        assert!(text.contains("# TYPE chatflow_consumer_consumed_total counter\n"));
        assert!(
            text.contains("chatflow_consumer_consumed_total{room=\"2\"} 9\n"),
            "{text}"
        );
        assert!(text.contains("chatflow_consumer_dead_lettered_total 0\n"));
        assert!(text.contains("chatflow_consumer_redis_publish_seconds_count 0\n"));
        assert!(text.contains("chatflow_consumer_redis_publish_seconds{quantile=\"0.99\"} 0\n"));
        assert!(text.contains("chatflow_consumer_dead_threads 0\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("chatflow_consumer_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
