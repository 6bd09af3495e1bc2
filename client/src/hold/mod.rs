//! `--connections-only N`: a connection-count test instead of a load run.
//!
//! 1. Preflight, then N idle WebSocket connections are opened by
//!    `--threads` opener threads ([`open`]), each bound to a source address
//!    round-robin (127.0.0.1..127.0.0.K for a loopback server, so one host
//!    can pass the ~28K ports one source address has towards one server
//!    address) and handed to a holder.
//! 2. A few holder threads ([`holder`]) keep them on their own `mio::Poll`:
//!    nothing runs for an idle connection until a frame arrives.
//! 3. `--senders` extra connections send the probe schedule ([`probe`]),
//!    one room each; every idle connection of a probe's room should get its
//!    broadcast. The run waits (up to `--delivery-timeout` after the last
//!    ack) until all have, holds on for `--hold`, then closes everything.
//! 4. The report ([`report`]): setup rate and failures, per source address,
//!    probes, deliveries (delivered, missing, latency), connections lost;
//!    `summary.json` and `.hgrm` files.

pub mod holder;
pub mod open;
pub mod probe;
pub mod report;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use mio::{Poll, Waker};

use crate::config::{Config, HoldConfig};
use crate::error::{Error, Result};
use crate::latency::Latencies;
use crate::progress::Progress;
use crate::report::RunOutcome;
use crate::run::{make_out_dir, preflight};
use crate::threads;

use holder::{Held, Holder, ToHolder, WAKER};
use open::{Opened, Openers, OPEN_WATCH_TICK};
use probe::{ProbeClock, ProbeSender, Sent};
pub use report::HoldReport;
use report::{HeldReport, HoldDelivery, HoldFiles, HoldSettings, ProbeReport, SetupReport};

/// The probes start this long after the senders are started, so their
/// connections are open by the first one's time.
const PROBE_START_DELAY: Duration = Duration::from_millis(200);
/// How often the wait for deliveries and the hold look at the counts and
/// at Ctrl-C.
const WAIT_TICK: Duration = Duration::from_millis(20);

/// Runs a connection-count test (`config.hold` must be set) until done or
/// `stop` (Ctrl-C), and writes its report. `Err` only when it could not
/// start (bad config, unreachable server, a source address this host lacks)
/// or the report could not be written.
pub fn run_until(config: Config, stop: Arc<AtomicBool>) -> Result<HoldReport> {
    config.validate()?;
    let hold = config
        .hold
        .clone()
        .ok_or_else(|| Error::Config("--connections-only is not set".into()))?;
    let seed = config.seed.unwrap_or_else(rand::random);
    preflight(&config, &stop, seed)?;
    let sources = open::source_plan(&config, &hold)?;
    let dir = make_out_dir(config.out_dir.as_deref())?;
    let mut files = HoldFiles {
        summary: dir.join("summary.json"),
        dir,
        ..HoldFiles::default()
    };
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);

    // Holders first, so every opened connection has a home at once.
    let holder_count = hold.holder_threads.min(hold.connections).max(1);
    let mut inboxes = Vec::with_capacity(holder_count);
    let mut published = Vec::with_capacity(holder_count);
    let mut holders = Vec::with_capacity(holder_count);
    for h in 0..holder_count {
        let poll = Poll::new().map_err(|e| poll_error("create a poll", e))?;
        let waker =
            Waker::new(poll.registry(), WAKER).map_err(|e| poll_error("create a waker", e))?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let count = Arc::new(CachePadded::new(AtomicU64::new(0)));
        let holder = Holder::new(poll, rx, Arc::clone(&count));
        holders.push(threads::spawn(
            &format!("holder-{h}"),
            config.sched_batch,
            move || holder.run(),
        )?);
        inboxes.push((tx, waker));
        published.push(count);
    }

    let mut progress = Progress::new(
        config.progress,
        config.progress_interval,
        hold.connections as u64,
    );
    let (opened, setup_seconds) =
        open_all(&config, &hold, &sources, &inboxes, &stop, &mut progress)?;
    let held_from = Instant::now();
    let open_now: u64 = opened.per_room.iter().sum();

    let interrupted = || stop.load(Ordering::Relaxed);
    let mut sent: Vec<Sent> = Vec::new();
    let mut waited = Duration::ZERO;
    let run = rand::random::<u64>();
    if !interrupted() && open_now > 0 {
        progress.note(&format!(
            "{} connections open; {} probes from {} senders",
            crate::progress::group(open_now),
            hold.probes.total(),
            hold.senders
        ));
        let clock = Arc::new(ProbeClock::new(
            Instant::now() + PROBE_START_DELAY,
            run,
            hold.probes.total(),
        ));
        for (inbox, waker) in &inboxes {
            let _ = inbox.send(ToHolder::Clock(Arc::clone(&clock)));
            let _ = waker.wake();
        }
        sent = send_probes(&config, &hold, &sources, &clock, seed, &stop)?;
        let expected = expected_total(&config, &opened, &sent);
        let wait_from = Instant::now();
        let deadline = wait_from + config.delivery_timeout;
        while !interrupted() && Instant::now() < deadline && delivered(&published) < expected {
            std::thread::sleep(WAIT_TICK);
        }
        waited = wait_from.elapsed();
    }
    let hold_until = held_from + hold.hold;
    if !interrupted() && !hold.hold.is_zero() {
        progress.note(&format!(
            "holding the connections until {:.1} s after the setup (--hold; Ctrl-C ends it)",
            hold.hold.as_secs_f64()
        ));
    }
    while !interrupted() && Instant::now() < hold_until {
        std::thread::sleep(WAIT_TICK.max((hold_until - Instant::now()).min(config.tick)));
    }
    let held_seconds = held_from.elapsed().as_secs_f64();
    progress.finish();

    let per_room_expected = expected_per_room(&config, &sent);
    for (inbox, waker) in &inboxes {
        let _ = inbox.send(ToHolder::Finish {
            expected_per_room: per_room_expected.clone(),
        });
        let _ = waker.wake();
    }
    let mut held_all: Vec<Held> = Vec::with_capacity(holders.len());
    for h in holders {
        held_all.push(h.join().map_err(|_| Error::Panicked { thread: "holder" })?);
    }

    let outcome = if interrupted() {
        RunOutcome::Interrupted
    } else {
        RunOutcome::Completed
    };
    let mut delivery = Latencies::new();
    for h in &held_all {
        delivery.merge(&h.latency);
    }
    files.histograms = write_histograms(
        &files.dir,
        &[
            ("delivery-latency.hgrm", &delivery),
            ("setup-latency.hgrm", &opened.setup),
        ],
    )?;
    let mut report = build_report(
        &config,
        &hold,
        &sources,
        Built {
            outcome,
            started_at,
            opened,
            setup_seconds,
            sent,
            held: held_all,
            delivery,
            held_seconds,
            waited,
        },
    );
    report.files = files;
    report.write_json(&report.files.summary)?;
    Ok(report)
}

fn poll_error(what: &str, e: std::io::Error) -> Error {
    Error::Spawn {
        name: format!("holder ({what})"),
        source: e,
    }
}

/// Opens every connection (`--threads` at once) and shows progress; the
/// openers' accounts merged, and how long the setup took.
fn open_all(
    config: &Config,
    hold: &HoldConfig,
    sources: &[Option<IpAddr>],
    inboxes: &[(crossbeam_channel::Sender<ToHolder>, Waker)],
    stop: &AtomicBool,
    progress: &mut Progress,
) -> Result<(Opened, f64)> {
    let openers = Openers {
        config,
        hold,
        sources,
        holders: inboxes,
        stop,
        next: AtomicUsize::new(0),
        opened: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    };
    let started = Instant::now();
    let threads = config.threads.min(hold.connections).max(1);
    let all = std::thread::scope(|scope| -> Result<Vec<Opened>> {
        let mut handles = Vec::with_capacity(threads);
        for t in 0..threads {
            let openers = &openers;
            handles.push(threads::spawn_scoped(
                scope,
                &format!("opener-{t}"),
                config.sched_batch,
                move || openers.run(),
            )?);
        }
        while !handles.iter().all(|h| h.is_finished()) {
            std::thread::sleep(OPEN_WATCH_TICK);
            progress.update(
                "connect",
                openers.opened.load(Ordering::Relaxed),
                openers.failed.load(Ordering::Relaxed),
            );
        }
        let mut all = Vec::with_capacity(handles.len());
        for h in handles {
            all.push(h.join().map_err(|_| Error::Panicked { thread: "opener" })?);
        }
        Ok(all)
    })?;
    progress.update(
        "connect",
        openers.opened.load(Ordering::Relaxed),
        openers.failed.load(Ordering::Relaxed),
    );
    let opened = open::merge(all, config.rooms as usize);
    let seconds = opened
        .last_done
        .map_or(0.0, |t| t.saturating_duration_since(started).as_secs_f64());
    Ok((opened, seconds))
}

/// Starts the probe senders (sender `j` in room `j % rooms + 1`) and
/// collects their accounts.
fn send_probes(
    config: &Config,
    hold: &HoldConfig,
    sources: &[Option<IpAddr>],
    clock: &ProbeClock,
    seed: u64,
    stop: &AtomicBool,
) -> Result<Vec<Sent>> {
    std::thread::scope(|scope| -> Result<Vec<Sent>> {
        let mut handles = Vec::with_capacity(hold.senders);
        for j in 0..hold.senders {
            let sender = ProbeSender {
                config,
                schedule: &hold.probes,
                clock,
                index: j,
                senders: hold.senders,
                room: (j % config.rooms as usize) as u32 + 1,
                endpoint: &config.urls[j % config.urls.len()],
                source: sources[j % sources.len()],
                seed: seed ^ (j as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                stop,
            };
            handles.push(threads::spawn_scoped(
                scope,
                &format!("probe-{j}"),
                config.sched_batch,
                move || sender.run(),
            )?);
        }
        handles
            .into_iter()
            .map(|h| {
                h.join().map_err(|_| Error::Panicked {
                    thread: "probe sender",
                })
            })
            .collect()
    })
}

/// Probe broadcasts each room's idle connections should get: the acked
/// probes of that room.
fn expected_per_room(config: &Config, sent: &[Sent]) -> Vec<u64> {
    let mut per_room = vec![0; config.rooms as usize];
    for s in sent {
        per_room[s.room as usize - 1] += s.acked;
    }
    per_room
}

/// Broadcasts expected at all idle connections: per room, its acked probes
/// × its opened connections.
fn expected_total(config: &Config, opened: &Opened, sent: &[Sent]) -> u64 {
    expected_per_room(config, sent)
        .iter()
        .zip(&opened.per_room)
        .map(|(probes, conns)| probes * conns)
        .sum()
}

fn delivered(published: &[Arc<CachePadded<AtomicU64>>]) -> u64 {
    published.iter().map(|c| c.load(Ordering::Relaxed)).sum()
}

/// Everything the report is made of.
struct Built {
    outcome: RunOutcome,
    started_at: String,
    opened: Opened,
    setup_seconds: f64,
    sent: Vec<Sent>,
    held: Vec<Held>,
    /// The holders' delivery latencies, merged.
    delivery: Latencies,
    held_seconds: f64,
    waited: Duration,
}

fn build_report(
    config: &Config,
    hold: &HoldConfig,
    sources: &[Option<IpAddr>],
    b: Built,
) -> HoldReport {
    let opened_total: u64 = b.opened.per_room.iter().sum();
    let failed_total: u64 = b.opened.failures.values().sum();
    let mut ack = Latencies::new();
    let mut lag = Latencies::new();
    let mut errors = std::collections::BTreeMap::new();
    for s in &b.sent {
        ack.merge(&s.ack);
        lag.merge(&s.lag);
        for (why, n) in &s.errors {
            *errors.entry(why.clone()).or_default() += n;
        }
    }
    let mut lost_reasons = std::collections::BTreeMap::new();
    let mut holder_errors = Vec::new();
    for h in &b.held {
        for (why, n) in &h.lost {
            *lost_reasons.entry(why.clone()).or_default() += n;
        }
        holder_errors.extend(h.error.clone());
    }
    let sum = |f: fn(&Held) -> u64| b.held.iter().map(f).sum::<u64>();
    let expected = expected_total(config, &b.opened, &b.sent);
    let delivered = sum(|h| h.delivered);
    let lost: u64 = lost_reasons.values().sum();
    let setup_stats = b.opened.setup.stats();
    HoldReport {
        mode: "connectionsOnly",
        outcome: b.outcome,
        started_at: b.started_at,
        settings: HoldSettings {
            urls: config.urls.iter().map(|u| u.base()).collect(),
            rooms: config.rooms,
            connections: hold.connections,
            source_addrs: sources
                .iter()
                .map(|s| s.map_or_else(|| "any".to_string(), |ip| ip.to_string()))
                .collect(),
            openers: config.threads.min(hold.connections).max(1),
            senders: hold.senders,
            probe_rate: hold.probes.offered_rate(),
            probe_messages: hold.probes.total(),
            hold_seconds: hold.hold.as_secs_f64(),
            connect_timeout_s: config.connect_timeout.as_secs_f64(),
        },
        setup: SetupReport {
            attempted: opened_total + failed_total,
            opened: opened_total,
            failed: failed_total,
            seconds: b.setup_seconds,
            rate: crate::report::rate(opened_total, b.setup_seconds),
            setup_ms: setup_stats,
            failures: b.opened.failures.clone(),
            per_source: b.opened.per_source.clone(),
            failed_per_source: b.opened.failed_per_source.clone(),
        },
        probes: ProbeReport {
            planned: hold.probes.total(),
            sent: b.sent.iter().map(|s| s.sent).sum(),
            acked: b.sent.iter().map(|s| s.acked).sum(),
            failed: if b.sent.is_empty() {
                0
            } else {
                b.sent.iter().map(|s| s.failed).sum()
            },
            ack_latency_ms: ack.stats(),
            send_lag_ms: lag.stats(),
            errors,
        },
        delivery: HoldDelivery {
            expected,
            delivered,
            missing: expected.saturating_sub(delivered),
            extra: sum(|h| h.extra),
            connections_complete: sum(|h| h.complete),
            connections_incomplete: sum(|h| h.incomplete),
            latency_ms: b.delivery.stats(),
            foreign: sum(|h| h.foreign),
            unmatched: sum(|h| h.unmatched),
            timeout_s: config.delivery_timeout.as_secs_f64(),
            waited_seconds: b.waited.as_secs_f64(),
        },
        held: HeldReport {
            seconds: b.held_seconds,
            lost,
            lost_reasons,
            still_open: sum(|h| h.complete + h.incomplete),
            holder_errors,
        },
        files: HoldFiles::default(),
    }
}

/// Writes each histogram as a `.hgrm` file (ms) in `dir`: here
/// `delivery-latency.hgrm` (probe send → broadcast at an idle connection)
/// and `setup-latency.hgrm` (connect + handshake).
fn write_histograms(
    dir: &std::path::Path,
    files: &[(&str, &Latencies)],
) -> Result<Vec<std::path::PathBuf>> {
    let mut written = Vec::with_capacity(files.len());
    for (name, hist) in files {
        let path = dir.join(name);
        std::fs::write(&path, hist.hgrm()).map_err(|e| Error::io(&path, e))?;
        written.push(path);
    }
    Ok(written)
}
