//! A connection-count test's report ([`HoldReport`]): `summary.json` and
//! the text summary. Setup (how fast the connections opened, which
//! failed and why, per source address), the probes (sent, acked), their
//! delivery to the idle connections (delivered, missing, latency) and the
//! hold (connections lost while held).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::latency::LatencyStats;
use crate::progress::group;
use crate::report::RunOutcome;

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HoldReport {
    /// Always `connectionsOnly` (tells it from a load run's summary).
    pub mode: &'static str,
    pub outcome: RunOutcome,
    pub started_at: String,
    pub settings: HoldSettings,
    pub setup: SetupReport,
    pub probes: ProbeReport,
    pub delivery: HoldDelivery,
    pub held: HeldReport,
    pub files: HoldFiles,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HoldSettings {
    pub urls: Vec<String>,
    pub rooms: u32,
    pub connections: usize,
    /// The source addresses used round-robin (`any`: the OS chose).
    pub source_addrs: Vec<String>,
    /// Connections opened at once (`--threads`).
    pub openers: usize,
    pub senders: usize,
    pub probe_rate: f64,
    pub probe_messages: u64,
    pub hold_seconds: f64,
    pub connect_timeout_s: f64,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SetupReport {
    pub attempted: u64,
    pub opened: u64,
    pub failed: u64,
    /// First attempt → last attempt's end.
    pub seconds: f64,
    /// Opened connections per second of that.
    pub rate: f64,
    /// Connect + WebSocket handshake of each opened connection.
    pub setup_ms: Option<LatencyStats>,
    /// Why connections failed: the error, and how many.
    pub failures: BTreeMap<String, u64>,
    /// Opened per local address (as each socket reports it), and failed
    /// per planned source.
    pub per_source: BTreeMap<String, u64>,
    pub failed_per_source: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeReport {
    pub planned: u64,
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    pub ack_latency_ms: Option<LatencyStats>,
    /// How late the probes went out after their intended times.
    pub send_lag_ms: Option<LatencyStats>,
    pub errors: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HoldDelivery {
    /// Acked probes × the idle connections opened in their room.
    pub expected: u64,
    pub delivered: u64,
    /// `expected − delivered` (never negative; see `extra`).
    pub missing: u64,
    /// Broadcasts beyond a connection's expected count (duplicates).
    pub extra: u64,
    /// Connections still open at the end that got every probe of their
    /// room, and those that got fewer.
    pub connections_complete: u64,
    pub connections_incomplete: u64,
    /// From a probe's send to its broadcast at an idle connection.
    pub latency_ms: Option<LatencyStats>,
    /// Broadcasts that were not this run's probes, and probes with no
    /// send time (neither should happen on a server of one's own).
    pub foreign: u64,
    pub unmatched: u64,
    /// `--delivery-timeout`, and how long the wait after the last ack took.
    pub timeout_s: f64,
    pub waited_seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldReport {
    /// From the end of the setup to the close.
    pub seconds: f64,
    /// Connections lost while held, and why.
    pub lost: u64,
    pub lost_reasons: BTreeMap<String, u64>,
    /// Open at the end.
    pub still_open: u64,
    /// A holder thread's poll failed (its connections were dropped).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub holder_errors: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HoldFiles {
    pub dir: PathBuf,
    pub summary: PathBuf,
    /// `delivery-latency.hgrm` (and `setup-latency.hgrm`), ms.
    pub histograms: Vec<PathBuf>,
}

/// Error texts listed in the summary: the most frequent few.
const SHOWN_REASONS: usize = 5;

impl HoldReport {
    /// 0 every connection opened, every probe acked and delivered, none
    /// lost; 3 any of that not so; 130 interrupted.
    pub fn exit_code(&self) -> u8 {
        let clean = self.setup.failed == 0
            && self.probes.failed == 0
            && self.delivery.missing == 0
            && self.held.lost == 0
            && self.held.holder_errors.is_empty();
        match self.outcome {
            RunOutcome::Interrupted => 130,
            RunOutcome::Aborted => 3,
            RunOutcome::Completed if clean => 0,
            RunOutcome::Completed => 3,
        }
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::io(path, std::io::Error::other(e)))?;
        std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let st = &self.settings;
        let _ = writeln!(
            s,
            "ChatFlow connection test: {} ({} | {} idle connections | {} rooms | {} senders)",
            match self.outcome {
                RunOutcome::Completed => "completed",
                RunOutcome::Interrupted => "INTERRUPTED",
                RunOutcome::Aborted => "GIVEN UP",
            },
            st.urls.join(", "),
            group(st.connections as u64),
            st.rooms,
            st.senders
        );
        let u = &self.setup;
        let _ = write!(
            s,
            "setup    {} of {} opened, {} failed in {:.2} s: {} connections/s ({} at once)",
            group(u.opened),
            group(u.attempted),
            group(u.failed),
            u.seconds,
            group(u.rate.round() as u64),
            st.openers
        );
        if let Some(l) = &u.setup_ms {
            let _ = write!(
                s,
                "; connect+handshake p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
                l.p50, l.p99, l.max
            );
        }
        s.push('\n');
        let sources: Vec<String> = u
            .per_source
            .iter()
            .map(|(addr, n)| format!("{addr} {}", group(*n)))
            .collect();
        let _ = writeln!(s, "sources  {}", sources.join(", "));
        reasons(&mut s, "failed  ", &u.failures);
        let p = &self.probes;
        let _ = write!(
            s,
            "probes   {} of {} sent at {} msgs/s from {} senders: {} acked, {} failed",
            group(p.sent),
            group(p.planned),
            st.probe_rate,
            st.senders,
            group(p.acked),
            group(p.failed)
        );
        if let Some(l) = &p.ack_latency_ms {
            let _ = write!(s, "; ack p50 {:.3} ms, p99 {:.3} ms", l.p50, l.p99);
        }
        s.push('\n');
        reasons(&mut s, "  failed", &p.errors);
        let d = &self.delivery;
        let _ = writeln!(
            s,
            "delivery {} of {} broadcasts reached the idle connections, {} missing{} ({} connections got every probe of their room, {} missed some)",
            group(d.delivered),
            group(d.expected),
            group(d.missing),
            if d.extra > 0 {
                format!(", {} extra", group(d.extra))
            } else {
                String::new()
            },
            group(d.connections_complete),
            group(d.connections_incomplete)
        );
        if d.foreign > 0 || d.unmatched > 0 {
            let _ = writeln!(
                s,
                "         {} broadcasts were not this run's probes, {} probes had no send time",
                group(d.foreign),
                group(d.unmatched)
            );
        }
        match &d.latency_ms {
            Some(l) => {
                let _ = writeln!(
                    s,
                    "latency (ms)        {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                    "mean", "p50", "p95", "p99", "p99.9", "min", "max"
                );
                let _ = writeln!(
                    s,
                    "  delivery          {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                    l.mean, l.p50, l.p95, l.p99, l.p999, l.min, l.max
                );
            }
            None => {
                let _ = writeln!(s, "latency  no probe broadcast observed");
            }
        }
        let h = &self.held;
        let _ = writeln!(
            s,
            "held     {} connections for {:.1} s; {} lost, {} open at the end",
            group(u.opened),
            h.seconds,
            group(h.lost),
            group(h.still_open)
        );
        reasons(&mut s, "  lost  ", &h.lost_reasons);
        for e in &h.holder_errors {
            let _ = writeln!(s, "  holder {e}");
        }
        let f = &self.files;
        let _ = writeln!(s, "report   {}", f.dir.display());
        let _ = writeln!(s, "  {}", f.summary.display());
        for file in &f.histograms {
            let _ = writeln!(s, "  {}", file.display());
        }
        s
    }
}

/// The most frequent reasons, one line each: `label  N x reason`.
fn reasons(s: &mut String, label: &str, counts: &BTreeMap<String, u64>) {
    let mut by_count: Vec<(&String, &u64)> = counts.iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (why, n) in by_count.iter().take(SHOWN_REASONS) {
        let _ = writeln!(s, "{label} {} x {why}", group(**n));
    }
    if by_count.len() > SHOWN_REASONS {
        let _ = writeln!(
            s,
            "{label} ... {} more reasons in summary.json",
            by_count.len() - SHOWN_REASONS
        );
    }
}
