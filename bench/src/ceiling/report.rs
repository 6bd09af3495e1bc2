//! What a `brokerceiling` run measured: one [`Report`], printed as text or
//! as one JSON document (`--json`, camelCase fields, rates in msgs/s,
//! latencies in ms) for scripts such as `bench/full_path.sh`.

use hdrhistogram::Histogram;
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// `publish` or `drain`.
    pub mode: &'static str,
    pub rabbitmq: String,
    pub namespace: String,
    pub rooms: u32,
    pub queues: usize,
    pub in_flight: usize,
    pub publishers: usize,
    pub consumer_connections: usize,
    pub prefetch: u16,
    pub ack_batch: usize,
    /// Mean envelope size.
    pub message_bytes: f64,
    pub publish: PublishReport,
    /// Publish mode with consumers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consume: Option<ConsumeReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainReport>,
    /// Ctrl-C ended the run early: its figures cover what was done.
    pub interrupted: bool,
    /// How busy the machine was (a shared box makes every figure noisy).
    pub machine: Machine,
}

/// The machine's load at the end of the run (Linux; `None` elsewhere).
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    /// `/proc/loadavg`: 1, 5 and 15 minutes.
    pub load_average: Option<[f64; 3]>,
    /// `/proc/pressure/io`, "some" over 60 s: the share of time some task
    /// waited for I/O, in percent (quorum queues fsync: a busy disk slows
    /// every confirm).
    pub io_pressure_percent: Option<f64>,
}

impl Machine {
    pub fn now() -> Machine {
        let load_average = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|text| {
                let mut fields = text.split_whitespace().map(str::parse::<f64>);
                match (fields.next(), fields.next(), fields.next()) {
                    (Some(Ok(a)), Some(Ok(b)), Some(Ok(c))) => Some([a, b, c]),
                    _ => None,
                }
            });
        let io_pressure_percent = std::fs::read_to_string("/proc/pressure/io")
            .ok()
            .and_then(|text| some_avg60(&text));
        Machine {
            load_average,
            io_pressure_percent,
        }
    }
}

/// `avg60` of the `some` line of a PSI file.
fn some_avg60(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    let field = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("avg60="))?;
    field.parse().ok()
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishReport {
    pub published: u64,
    pub confirmed: u64,
    pub nacked: u64,
    /// First publish → last confirm.
    pub seconds: f64,
    /// The first publish and the last confirm, in Unix seconds: the window
    /// `bench/cpu_budget.py` reads the broker's CPU over (0 when nothing
    /// was confirmed).
    pub started_at_unix_s: f64,
    pub ended_at_unix_s: f64,
    /// Confirmed messages per second.
    pub per_second: f64,
    /// Publish → confirm.
    pub confirm_latency_ms: Latency,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumeReport {
    /// Deliveries acked.
    pub consumed: u64,
    /// First publish → last ack.
    pub seconds: f64,
    pub per_second: f64,
    /// Confirmed but not yet consumed when the last confirm came: how far
    /// the consumers were behind.
    pub behind_at_publish_end: u64,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainReport {
    /// Confirmed messages in the backlog.
    pub backlog: u64,
    /// Ready in the queues when the consumers started (RabbitMQ's count).
    pub ready_at_start: u64,
    pub consumed: u64,
    /// Consumers started → last ack.
    pub seconds: f64,
    /// The consumers' start and the last ack, in Unix seconds: the window
    /// `bench/drain_ratio.sh` reads each process's CPU over (0 when
    /// nothing was acked).
    pub started_at_unix_s: f64,
    pub ended_at_unix_s: f64,
    pub per_second: f64,
    /// Consumers started → first ack.
    pub first_ack_ms: f64,
    /// First ack → last ack.
    pub per_second_from_first_ack: f64,
}

/// Mean and percentiles, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    /// From a histogram of microseconds.
    pub fn from_micros(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

/// Messages per second, 0 for an empty interval.
pub fn rate(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

impl Report {
    /// The human-readable summary.
    pub fn text(&self) -> String {
        let mut out = format!(
            "brokerceiling: RabbitMQ {} alone, {} rooms ({} quorum queues), {:.0}-byte envelopes, persistent, confirmed\n",
            self.rabbitmq, self.rooms, self.queues, self.message_bytes
        );
        let p = &self.publish;
        let l = &p.confirm_latency_ms;
        let what = if self.mode == "drain" {
            "backlog published"
        } else {
            "published"
        };
        out += &format!(
            "{what}: {} ({} confirmed, {} nacked) in {:.2} s at {} in flight over {} publisher(s): {:.0} msgs/s\n",
            p.published, p.confirmed, p.nacked, p.seconds, self.in_flight, self.publishers, p.per_second
        );
        out += &format!(
            "confirm latency ms: mean {:.2}, p50 {:.2}, p99 {:.2}, max {:.2}\n",
            l.mean, l.p50, l.p99, l.max
        );
        if let Some(c) = &self.consume {
            out += &format!(
                "consumed: {} in {:.2} s: {:.0} msgs/s ({} behind when publishing ended; {} consumers on {} connections, prefetch {}, ack batch {})\n",
                c.consumed, c.seconds, c.per_second, c.behind_at_publish_end,
                self.queues, self.consumer_connections, self.prefetch, self.ack_batch
            );
        }
        if let Some(d) = &self.drain {
            out += &format!(
                "drained: {} of {} ({} ready at start) in {:.2} s: {:.0} msgs/s ({:.0} msgs/s from the first ack, {:.0} ms after start; {} consumers on {} connections, prefetch {}, ack batch {})\n",
                d.consumed, d.backlog, d.ready_at_start, d.seconds, d.per_second,
                d.per_second_from_first_ack, d.first_ack_ms,
                self.queues, self.consumer_connections, self.prefetch, self.ack_batch
            );
        }
        if let Some([one, five, fifteen]) = self.machine.load_average {
            out += &format!("machine: load average {one:.2} {five:.2} {fifteen:.2}");
            if let Some(io) = self.machine.io_pressure_percent {
                out += &format!(", I/O pressure {io:.0}% (some, 60 s)");
            }
            out += "\n";
        }
        if self.interrupted {
            out += "interrupted: the figures cover the run up to Ctrl-C\n";
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_in_milliseconds_and_rates_survive_empty_runs() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for us in [1_000, 2_000, 3_000, 100_000] {
            h.record(us).unwrap();
        }
        let l = Latency::from_micros(&h);
        assert_eq!(l.count, 4);
        assert!((l.p50 - 2.0).abs() < 0.01, "{l:?}");
        assert!((l.max - 100.0).abs() < 0.1, "{l:?}");
        assert!((l.mean - 26.5).abs() < 0.1, "{l:?}");
        let empty = Histogram::<u64>::new(3).unwrap();
        assert_eq!(Latency::from_micros(&empty).count, 0);
        assert_eq!(rate(10, 0.0), 0.0);
        assert_eq!(rate(10, 2.0), 5.0);
    }

    #[test]
    fn io_pressure_is_read_from_the_some_line() {
        let psi = "some avg10=21.49 avg60=47.56 avg300=44.20 total=486837056\n\
                   full avg10=10.38 avg60=30.27 avg300=28.76 total=289318387\n";
        assert_eq!(some_avg60(psi), Some(47.56));
        assert_eq!(some_avg60("full avg60=3.0"), None);
    }
}
