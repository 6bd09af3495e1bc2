//! The run's report: every number, as `summary.json` (machine-readable, for
//! comparing runs) and as the text summary printed at the end, including
//! what the read API stored of the run ([`MetricsReport`]) and, for an open
//! loop, what was offered against what was achieved ([`OpenLoopReport`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use chatflow_protocol::MessageType;
use serde::Serialize;

use crate::csv::{Aggregates, Status};
use crate::error::{Error, Result};
use crate::latency::LatencyStats;
use crate::progress::group;

/// How the run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunOutcome {
    /// Every planned message was sent (acked or failed).
    Completed,
    /// Ctrl-C.
    Interrupted,
    /// Given up: nothing was acked for `--give-up-after`.
    Aborted,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub outcome: RunOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort_reason: Option<String>,
    /// The most recent connection or server error, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub started_at: String,
    pub settings: Settings,
    pub warmup: PhaseReport,
    pub main: PhaseReport,
    pub total: Totals,
    pub connections: Connections,
    pub littles_law: LittlesLaw,
    /// Main phase, from each message's (first) actual send.
    pub ack_latency_ms: Option<LatencyStats>,
    pub delivery: DeliveryReport,
    /// Open loop only: offered vs achieved, send lag, corrected latency,
    /// stages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_loop: Option<OpenLoopReport>,
    pub rooms: Vec<RoomReport>,
    pub message_types: BTreeMap<String, TypeCount>,
    pub status_codes: BTreeMap<String, u64>,
    /// Frames the client could not match (late acks after a timeout, unknown frames).
    pub unexpected_frames: u64,
    /// Who the servers said was in each room at the end, against this
    /// run's own members.
    pub presence: PresenceReport,
    /// Acked messages per second of the run, by ack time.
    pub acked_per_second: Vec<u64>,
    /// Failed attempts (error answers, timeouts, lost connections, failed
    /// connects) per second of the run.
    pub errors_per_second: Vec<u64>,
    /// The read API's view of the run's window (`metrics.json`).
    pub metrics: MetricsReport,
    pub files: Files,
}

/// What the read API says was stored in the run's window, fetched after
/// the run (see `metrics::settle`). Never a reason for the run to fail.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricsReport {
    /// False with `--no-metrics`.
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// The window asked for: run start → after the last ack, rounded
    /// outward to whole seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<RunWindow>,
    /// A document was fetched (and written to `metrics.json`).
    pub fetched: bool,
    /// Why no document, or why it has no stored count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The run's acked count, for comparison.
    pub acked: u64,
    /// `analytics.totalMessages` for the window; `null` when unknown.
    pub stored_messages: Option<u64>,
    /// Requests made while waiting for the count to settle.
    pub polls: u32,
    /// From the first request to the last answer.
    pub waited_seconds: f64,
    /// `--metrics-settle`.
    pub settle_limit_seconds: f64,
    /// How the wait ended: `reached`, `stalled`, `limit`, `noCount`,
    /// `interrupted` or `laterPollFailed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_ended: Option<&'static str>,
}

/// The end-of-run presence check (`--no-presence-check` turns it off):
/// each main-phase connection asked its server for its room's member list
/// and checked that every user its own accepted JOINs made present (less
/// its LEAVEs) was listed.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceReport {
    pub checked: bool,
    /// Connections whose server answered.
    pub connections: u64,
    /// Connections whose server refused the request (presence off, or a
    /// server without presence), and the code it answered.
    pub refused: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused_code: Option<String>,
    /// Connections that got no answer in time (or whose connection was gone).
    pub unanswered: u64,
    /// `presence_join`/`presence_leave` frames (and answers) received.
    pub frames: u64,
    /// Members the servers listed, over the rooms checked.
    pub listed: u64,
    /// This run's members (distinct users per room, over its connections).
    pub ours: u64,
    /// Of those, not listed by their connection's server.
    pub missing: u64,
    /// Every answered connection's users were all listed.
    pub matched: bool,
    pub rooms: Vec<RoomPresence>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomPresence {
    pub room_id: u32,
    /// The most the servers listed (the connections asked at slightly
    /// different moments).
    pub listed: u64,
    pub ours: u64,
    pub missing: u64,
}

impl PresenceReport {
    fn render(&self, s: &mut String) {
        if !self.checked {
            return;
        }
        if self.connections == 0 {
            let why = match (&self.refused_code, self.unanswered) {
                (Some(code), _) => format!("the servers refused the request ({code}: presence off, or a server without it)"),
                (None, n) if n > 0 => format!("{n} connection(s) got no answer in time"),
                _ => "no connection was left to ask".to_string(),
            };
            let _ = writeln!(s, "presence not checked: {why}");
            return;
        }
        let _ = writeln!(
            s,
            "presence {} rooms: the servers list {} members, {} of them this run's{}; {} presence frames received",
            self.rooms.len(),
            group(self.listed),
            group(self.ours),
            if self.matched {
                " (every connection's own members listed)".to_string()
            } else {
                String::new()
            },
            group(self.frames)
        );
        if !self.matched {
            let rooms: Vec<String> = (self.rooms.iter())
                .filter(|r| r.missing > 0)
                .map(|r| format!("room {}: {}", r.room_id, r.missing))
                .collect();
            let _ = writeln!(
                s,
                "presence MISMATCH: {} of this run's members are not in their server's list ({})",
                group(self.missing),
                rooms.join(", ")
            );
        }
        if self.refused > 0 || self.unanswered > 0 {
            let _ = writeln!(
                s,
                "presence {} connection(s) refused, {} unanswered",
                self.refused, self.unanswered
            );
        }
    }
}

/// A half-open window `[start, end)`, RFC 3339.
#[derive(Clone, Debug, Serialize)]
pub struct RunWindow {
    pub start: String,
    pub end: String,
}

/// The settings the run used (enough to repeat it).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    /// `closed` (each connection as fast as its window allows) or `open`
    /// (`--rate`/`--ramp`: messages at their scheduled times).
    pub mode: &'static str,
    pub urls: Vec<String>,
    pub rooms: u32,
    pub messages: u64,
    pub threads: usize,
    pub window: usize,
    pub warmup_threads: usize,
    pub warmup_messages: u64,
    pub seed: u64,
    pub retries: u32,
    pub retry_window_s: f64,
    pub delivery: bool,
    pub delivery_timeout_s: f64,
    pub ack_timeout_s: f64,
    /// Sender threads pinned to their connection's incoming CPU.
    pub pin: crate::config::PinMode,
    /// Sender threads under SCHED_BATCH.
    pub sched_batch: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseReport {
    pub threads: usize,
    pub planned: u64,
    pub acked: u64,
    pub failed: u64,
    /// Phase start → its last message acked or failed.
    pub wall_seconds: f64,
    /// Acked messages per second.
    pub throughput: f64,
    pub ack_latency_ms: Option<LatencyStats>,
    pub delivery_latency_ms: Option<LatencyStats>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub planned: u64,
    pub acked: u64,
    pub failed: u64,
    /// Never sent because the run stopped early (Ctrl-C or given up).
    pub not_sent: u64,
    /// Run start → last message acked or failed.
    pub wall_seconds: f64,
    pub throughput: f64,
    /// Including the wait for late broadcasts and the polite closes.
    pub elapsed_seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Connections {
    pub opened: u64,
    pub reconnections: u64,
    pub retries: u64,
    pub breaker_openings: u64,
    /// `UNAVAILABLE` answers over every server (each one attempt).
    pub refusals: u64,
    /// Time messages spent waiting out back-offs, summed over messages,
    /// and the most any one message waited.
    pub backoff_wait_seconds: f64,
    pub longest_backoff_wait_seconds: f64,
    /// Periods a server refused messages: first `UNAVAILABLE` → first ack
    /// again.
    pub outages: Vec<OutageReport>,
    /// Reconnects that resumed their room with `?since=`; the messages the
    /// servers replayed on them (said while the thread was away); resumes
    /// the server said could not replay everything (history trimmed).
    pub resumes: u64,
    pub recovered_messages: u64,
    pub unrecovered_resumes: u64,
}

/// One server's outage as the client saw it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutageReport {
    pub server: String,
    /// RFC 3339.
    pub start: String,
    /// `null` if it still lasted when the run ended.
    pub end: Option<String>,
    pub seconds: f64,
    /// `UNAVAILABLE` answers meanwhile: the attempts it cost.
    pub refusals: u64,
    /// Seconds since the run started (for the chart).
    pub start_offset_seconds: f64,
}

/// When an open loop counts as having kept up: it achieved at least this
/// share of the offered rate...
pub const KEPT_UP_SHARE: f64 = 0.95;
/// ...and 99% of its messages went out no later than this after their
/// intended time (ms). Larger than any wake-up delay of a healthy client
/// thread, small beside the latencies a backlog produces.
pub const LATE_MS: f64 = 10.0;

/// An open loop's account: what was offered and what the system took,
/// how far behind its schedule the senders fell, latency from the
/// intended send time beside latency from the actual send, and each stage.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenLoopReport {
    /// Scheduled messages / the schedule's length.
    pub offered_rate: f64,
    pub scheduled_messages: u64,
    pub scheduled_seconds: f64,
    /// Acked main-phase messages / (schedule start → last message done).
    pub achieved_rate: f64,
    /// Achieved at least [`KEPT_UP_SHARE`] of the offered rate and sent
    /// 99% of messages within [`LATE_MS`] of their time.
    pub kept_up: bool,
    /// When the schedule started (RFC 3339), and seconds after the run's start.
    pub started_at: String,
    pub start_offset_seconds: f64,
    /// How late messages went out: first attempt − intended time, ms.
    pub send_lag_ms: Option<LatencyStats>,
    /// Messages that went out more than [`LATE_MS`] late.
    pub late_messages: u64,
    pub late_threshold_ms: f64,
    /// Acks that arrived after the schedule's end.
    pub acked_after_schedule: u64,
    pub ack_latency_ms: BothWays,
    pub delivery_latency_ms: BothWays,
    pub stages: Vec<StageReport>,
}

/// Latency two ways, ms: `corrected` from each message's intended send
/// time (coordinated omission corrected, as wrk2 reports it),
/// `uncorrected` from its actual (first) send.
#[derive(Clone, Debug, Serialize)]
pub struct BothWays {
    pub corrected: Option<LatencyStats>,
    pub uncorrected: Option<LatencyStats>,
}

/// One stage of an open loop.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageReport {
    /// 1-based, in `--ramp` order.
    pub stage: usize,
    pub rate: f64,
    pub seconds: f64,
    /// Seconds after the run's start (for the chart).
    pub start_offset_seconds: f64,
    /// Messages due in the stage, and how they ended.
    pub planned: u64,
    pub acked: u64,
    pub failed: u64,
    /// Acks that arrived while the stage ran, per second of it.
    pub throughput: f64,
    /// Of the messages due in the stage.
    pub ack_latency_ms: BothWays,
    pub send_lag_ms: Option<LatencyStats>,
}

/// Throughput predicted from concurrency and mean latency (L = λW → λ = L/W),
/// beside the measured one. A large gap means the senders were not kept busy.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LittlesLaw {
    pub in_flight: usize,
    pub mean_ack_latency_ms: f64,
    pub predicted_throughput: f64,
    pub measured_throughput: f64,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryReport {
    pub enabled: bool,
    pub timeout_s: f64,
    /// Acked messages whose broadcast came back to the sender.
    pub observed: u64,
    /// Acked messages whose broadcast did not come back in time.
    pub missing: u64,
    /// Main phase.
    pub latency_ms: Option<LatencyStats>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomReport {
    pub room: u32,
    pub acked: u64,
    pub throughput: f64,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeCount {
    pub acked: u64,
    pub percent: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Files {
    pub dir: PathBuf,
    pub csv: PathBuf,
    pub summary: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput_chart: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_chart: Option<PathBuf>,
    /// The read API's document for the run's window; only when fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<PathBuf>,
    /// HdrHistogram percentile distributions (`.hgrm`, ms) of the main
    /// phase: ack and delivery latency, and in an open loop also from the
    /// intended send time and the send lag.
    pub histograms: Vec<PathBuf>,
}

impl Report {
    /// Rooms, types and statuses from the CSV writer's counts.
    pub fn counts_from(
        agg: &Aggregates,
        main_wall: f64,
    ) -> (
        Vec<RoomReport>,
        BTreeMap<String, TypeCount>,
        BTreeMap<String, u64>,
    ) {
        let rooms = agg
            .main_acked_per_room
            .iter()
            .enumerate()
            .map(|(i, &acked)| RoomReport {
                room: i as u32 + 1,
                acked,
                throughput: rate(acked, main_wall),
            })
            .collect();
        let acked_total: u64 = agg.acked_per_type.iter().sum();
        let types = MessageType::ALL
            .iter()
            .zip(agg.acked_per_type)
            .map(|(k, acked)| {
                (
                    k.as_str().to_string(),
                    TypeCount {
                        acked,
                        percent: if acked_total == 0 {
                            0.0
                        } else {
                            acked as f64 * 100.0 / acked_total as f64
                        },
                    },
                )
            })
            .collect();
        let statuses = Status::ALL
            .iter()
            .zip(agg.per_status)
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| (s.as_str().to_string(), n))
            .collect();
        (rooms, types, statuses)
    }

    /// Writes `summary.json` into the report directory.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::io(path, std::io::Error::other(e)))?;
        std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
    }

    /// The process exit status the binary uses (see `--help`).
    pub fn exit_code(&self) -> u8 {
        match self.outcome {
            RunOutcome::Interrupted => 130,
            RunOutcome::Aborted => 3,
            RunOutcome::Completed if self.total.failed > 0 => 3,
            RunOutcome::Completed => 0,
        }
    }

    /// The text summary.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let st = &self.settings;
        let _ = writeln!(
            s,
            "ChatFlow load run: {} ({} | {} loop | {} threads x window {} | {} rooms | seed {})",
            match self.outcome {
                RunOutcome::Completed => "completed",
                RunOutcome::Interrupted => "INTERRUPTED",
                RunOutcome::Aborted => "GIVEN UP",
            },
            st.urls.join(", "),
            st.mode,
            st.threads,
            st.window,
            st.rooms,
            st.seed
        );
        if let Some(r) = &self.abort_reason {
            let _ = writeln!(s, "  reason: {r}");
        }
        for (name, p) in [("warm-up", &self.warmup), ("main", &self.main)] {
            if p.threads == 0 {
                let _ = writeln!(s, "{name:<8} skipped");
                continue;
            }
            let _ = writeln!(
                s,
                "{name:<8} {:>3} threads  {:>9} planned  {:>9} acked  {:>6} failed  {:>8.2} s  {:>9} msgs/s",
                p.threads,
                group(p.planned),
                group(p.acked),
                group(p.failed),
                p.wall_seconds,
                group(p.throughput as u64)
            );
        }
        let t = &self.total;
        let _ = writeln!(
            s,
            "total    {} acked, {} failed, {} not sent of {}; {:.2} s, {} msgs/s ({:.2} s elapsed, with the end-of-run delivery wait and closes)",
            group(t.acked),
            group(t.failed),
            group(t.not_sent),
            group(t.planned),
            t.wall_seconds,
            group(t.throughput as u64),
            t.elapsed_seconds
        );
        self.metrics.render(&mut s);
        self.presence.render(&mut s);
        if let Some(o) = &self.open_loop {
            o.render(&mut s);
        }
        let c = &self.connections;
        let _ = writeln!(
            s,
            "conns    {} opened, {} reconnections, {} retries, {} circuit-breaker openings",
            group(c.opened),
            group(c.reconnections),
            group(c.retries),
            c.breaker_openings
        );
        if c.refusals > 0 || c.backoff_wait_seconds > 0.0 {
            let _ = writeln!(
                s,
                "backoff  {} UNAVAILABLE answers; messages waited {:.1} s in back-off in all, one at most {:.1} s",
                group(c.refusals),
                c.backoff_wait_seconds,
                c.longest_backoff_wait_seconds
            );
        }
        if c.resumes > 0 {
            let _ = writeln!(
                s,
                "resume   {} reconnects resumed their room: {} messages recovered{}",
                group(c.resumes),
                group(c.recovered_messages),
                if c.unrecovered_resumes > 0 {
                    format!(
                        ", {} resumes could not replay everything",
                        c.unrecovered_resumes
                    )
                } else {
                    String::new()
                }
            );
        }
        for o in &c.outages {
            let _ = writeln!(
                s,
                "outage   {} refused messages from {} for {:.1} s{} ({} refusals)",
                o.server,
                o.start,
                o.seconds,
                if o.end.is_none() {
                    // No ack from it since: still refusing, or every
                    // sender moved to another server and none probed it
                    // again, so its end was never seen.
                    " or more (no ack from it again before the run ended: still refusing, or no sender went back to it)"
                } else {
                    ""
                },
                group(o.refusals)
            );
        }
        let l = &self.littles_law;
        if self.open_loop.is_some() {
            // The rate is given, so Little's law says how much of the
            // allowed concurrency it needed (L = λW).
            let _ = writeln!(
                s,
                "Little   {} msgs/s x {:.3} ms mean ack latency = {:.1} messages in flight on average, of {} allowed",
                group(l.measured_throughput as u64),
                l.mean_ack_latency_ms,
                l.measured_throughput * l.mean_ack_latency_ms / 1000.0,
                l.in_flight
            );
        } else {
            let _ = writeln!(
                s,
                "Little   {} in flight / {:.3} ms mean ack latency = {} msgs/s predicted; {} measured",
                l.in_flight,
                l.mean_ack_latency_ms,
                group(l.predicted_throughput as u64),
                group(l.measured_throughput as u64)
            );
        }
        let _ = writeln!(
            s,
            "latency (ms, main)  {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "mean", "p50", "p95", "p99", "p99.9", "min", "max"
        );
        let line = |s: &mut String, name: &str, l: &LatencyStats| {
            let _ = writeln!(
                s,
                "  {name:<19}{:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                l.mean, l.p50, l.p95, l.p99, l.p999, l.min, l.max
            );
        };
        let open = self.open_loop.as_ref();
        if let Some(c) = open.and_then(|o| o.ack_latency_ms.corrected.as_ref()) {
            line(&mut s, "ack (intended)", c);
        }
        let (ack, delivery) = match open {
            Some(_) => ("ack (actual)", "delivery (actual)"),
            None => ("ack", "delivery"),
        };
        match &self.ack_latency_ms {
            Some(a) => line(&mut s, ack, a),
            None => {
                let _ = writeln!(s, "  ack               none observed");
            }
        }
        let d = &self.delivery;
        if let Some(c) = open.and_then(|o| o.delivery_latency_ms.corrected.as_ref()) {
            line(&mut s, "delivery (intended)", c);
        }
        match (&d.latency_ms, d.enabled) {
            (Some(l), _) => line(&mut s, delivery, l),
            (None, false) => {
                let _ = writeln!(s, "  delivery          not measured (--no-delivery)");
            }
            (None, true) => {
                let _ = writeln!(
                    s,
                    "  delivery          none observed: no broadcast came back within {:.1} s (a server with --broker none sends none; use --no-delivery)",
                    d.timeout_s
                );
            }
        }
        if open.is_some() {
            let _ = writeln!(
                s,
                "  (intended: from each message's scheduled send time, coordinated omission corrected; actual: from when it went out)"
            );
        }
        if d.enabled && d.missing > 0 && d.observed > 0 {
            let _ = writeln!(
                s,
                "  delivery: {} of {} acked messages were not broadcast back within {:.1} s",
                group(d.missing),
                group(d.observed + d.missing),
                d.timeout_s
            );
        }
        if !self.rooms.is_empty() && self.main.acked > 0 {
            let rates: Vec<f64> = self.rooms.iter().map(|r| r.throughput).collect();
            let min = rates.iter().cloned().fold(f64::INFINITY, f64::min);
            let max = rates.iter().cloned().fold(0.0, f64::max);
            let _ = writeln!(
                s,
                "rooms    {} rooms, main phase msgs/s per room: min {}, mean {}, max {}",
                self.rooms.len(),
                group(min as u64),
                group((rates.iter().sum::<f64>() / rates.len() as f64) as u64),
                group(max as u64)
            );
            let mut row = String::new();
            for r in &self.rooms {
                let _ = write!(row, " {}:{}", r.room, group(r.throughput as u64));
            }
            let _ = writeln!(s, "        {}", row.trim_start());
        }
        let types: Vec<String> = self
            .message_types
            .iter()
            .map(|(k, v)| format!("{k} {} ({:.1}%)", group(v.acked), v.percent))
            .collect();
        let _ = writeln!(s, "types    {}", types.join(", "));
        let statuses: Vec<String> = self
            .status_codes
            .iter()
            .map(|(k, v)| format!("{k} {}", group(*v)))
            .collect();
        let _ = writeln!(s, "status   {}", statuses.join(", "));
        if let Some(e) = &self.last_error {
            let _ = writeln!(s, "last error  {e}");
        }
        let f = &self.files;
        let _ = writeln!(s, "report   {}", f.dir.display());
        let _ = writeln!(s, "  {}", f.summary.display());
        let _ = writeln!(s, "  {}", f.csv.display());
        for file in [&f.throughput_chart, &f.latency_chart, &f.metrics]
            .into_iter()
            .flatten()
            .chain(&f.histograms)
        {
            let _ = writeln!(s, "  {}", file.display());
        }
        s
    }
}

impl OpenLoopReport {
    /// The offered-vs-achieved line (with the verdict) and, for a ramp,
    /// one line per stage.
    fn render(&self, s: &mut String) {
        let lag = self.send_lag_ms.as_ref();
        let _ = write!(
            s,
            "open     offered {} msgs/s for {:.1} s ({} messages); achieved {} msgs/s",
            group(self.offered_rate.round() as u64),
            self.scheduled_seconds,
            group(self.scheduled_messages),
            group(self.achieved_rate.round() as u64)
        );
        if self.kept_up {
            let _ = writeln!(
                s,
                "; kept up (send lag p99 {:.1} ms, max {:.1} ms)",
                lag.map_or(0.0, |l| l.p99),
                lag.map_or(0.0, |l| l.max)
            );
        } else {
            let sent = lag.map_or(0, |l| l.count);
            let _ = writeln!(
                s,
                "\n         COULD NOT KEEP UP: the senders fell behind schedule by up to {} (p99 {}); {} of {} messages went out more than {} ms late; {} acks came after the schedule's end",
                human_ms(lag.map_or(0.0, |l| l.max)),
                human_ms(lag.map_or(0.0, |l| l.p99)),
                group(self.late_messages),
                group(sent),
                self.late_threshold_ms,
                group(self.acked_after_schedule)
            );
        }
        if self.stages.len() < 2 {
            return;
        }
        let _ = writeln!(
            s,
            "stage    {:>9} {:>7} {:>9} {:>9} {:>7} {:>9}  {:>17} {:>11} {:>9}",
            "rate/s",
            "s",
            "planned",
            "acked",
            "failed",
            "msgs/s",
            "ack p99 intended",
            "actual",
            "lag p99"
        );
        for st in &self.stages {
            let p99 = |l: &Option<LatencyStats>| l.as_ref().map_or(f64::NAN, |l| l.p99);
            let _ = writeln!(
                s,
                "  {:<6} {:>9} {:>7.1} {:>9} {:>9} {:>7} {:>9}  {:>14.3} ms {:>8.3} ms {:>6.1} ms",
                st.stage,
                group(st.rate.round() as u64),
                st.seconds,
                group(st.planned),
                group(st.acked),
                group(st.failed),
                group(st.throughput.round() as u64),
                p99(&st.ack_latency_ms.corrected),
                p99(&st.ack_latency_ms.uncorrected),
                p99(&st.send_lag_ms)
            );
        }
    }
}

/// Milliseconds as a person reads a delay: `850 ms`, `12.3 s`.
fn human_ms(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

impl MetricsReport {
    /// The summary's stored-count line, right under the acked count.
    fn render(&self, s: &mut String) {
        if !self.enabled {
            let _ = writeln!(s, "metrics  off (--no-metrics)");
            return;
        }
        if !self.fetched {
            let why = self.reason.as_deref().unwrap_or("unknown reason");
            let _ = writeln!(s, "metrics  not fetched: {why}");
            return;
        }
        let Some(stored) = self.stored_messages else {
            let why = self
                .reason
                .as_deref()
                .unwrap_or("no analytics.totalMessages");
            let _ = writeln!(s, "metrics  fetched, but no stored count: {why}");
            return;
        };
        let _ = write!(
            s,
            "stored   {} of {} acked messages in the run's window ({} poll{} over {:.1} s)",
            group(stored),
            group(self.acked),
            self.polls,
            if self.polls == 1 { "" } else { "s" },
            self.waited_seconds
        );
        if stored < self.acked {
            let after = match self.wait_ended {
                Some("stalled") => "after the count stopped growing".to_string(),
                Some("interrupted") => "when interrupted (no wait)".to_string(),
                Some("laterPollFailed") => "when a later poll failed".to_string(),
                _ => format!(
                    "after {:.1} s (--metrics-settle)",
                    self.settle_limit_seconds
                ),
            };
            let _ = write!(
                s,
                "\n         {} acked but not stored {after}: a finding about the pipeline (consumer backlog, lost or dead-lettered rows), not a client error",
                group(self.acked - stored)
            );
        } else if stored > self.acked {
            let _ = write!(
                s,
                "\n         {} more than acked: other traffic in the window, or a retried message stored twice",
                group(stored - self.acked)
            );
        }
        s.push('\n');
    }
}

/// Messages per second; 0 for an empty interval.
pub fn rate(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}
