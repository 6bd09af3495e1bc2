//! One load run from start to report: preflight (is every server there?),
//! the generator, the warm-up phase, the main phase (closed loop, or open
//! loop on its schedule), the CSV writer, then the charts, the `.hgrm`
//! histograms, the read API's document for the run's window
//! (`metrics.json`, waiting for the stored count to settle) and
//! `summary.json`. The calling thread watches: it drives the progress
//! display and gives the run up when nothing is acked for `give_up_after`
//! (a dead or hung server must end the run, not hang it; in an open loop,
//! counted from when a message was last due, so a slow schedule is not a
//! dead server).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use chatflow_broker::retry::Backoff;
use chatflow_protocol::time::now_ms;

use crate::charts;
use crate::config::Config;
use crate::connection::{Connection, Dial};
use crate::csv::{Aggregates, CsvWriter, Phase};
use crate::error::{Error, Result};
use crate::generator::{self, Batch, Pace, Plan, BATCH};
use crate::latency::Latencies;
use crate::metrics::fetch::Api;
use crate::metrics::json::pretty;
use crate::metrics::request::QueryParam;
use crate::metrics::settle::{settle, WaitEnd};
use crate::progress::Progress;
use crate::report::{
    rate, BothWays, Connections, DeliveryReport, Files, LittlesLaw, MetricsReport, OpenLoopReport,
    OutageReport, PhaseReport, PresenceReport, Report, RoomPresence, RunOutcome, RunWindow,
    Settings, StageReport, Totals, KEPT_UP_SHARE, LATE_MS,
};
use crate::schedule::Schedule;
use crate::sender::{self, Outcome, Shared, Spec};
use crate::threads;

/// How often the watching thread samples progress. Short, so a small run
/// ends promptly after its last thread; the sampling itself is a few loads.
const WATCH_TICK: Duration = Duration::from_millis(25);
/// An open loop's schedule starts this long after its sender threads do,
/// so their connections are open when the first messages fall due (a
/// loopback connect and handshake take well under a millisecond; threads
/// by the hundred take a while to start on two cores).
const OPEN_LOOP_START_DELAY: Duration = Duration::from_millis(250);

/// Runs a load test until done or `stop` is set (Ctrl-C), and writes the
/// report. `Err` only when the run could not start (bad config, unreachable
/// server) or the report could not be written; failed messages are counted
/// in the report instead.
pub fn run_until(config: Config, stop: Arc<AtomicBool>) -> Result<Report> {
    config.validate()?;
    let seed = config.seed.unwrap_or_else(rand::random);
    preflight(&config, &stop, seed)?;
    let dir = make_out_dir(config.out_dir.as_deref())?;
    let mut files = Files {
        csv: dir.join("messages.csv"),
        summary: dir.join("summary.json"),
        dir,
        ..Files::default()
    };

    let started_wall = chrono::Utc::now();
    let started_at = started_wall.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let start = Instant::now();
    let csv = CsvWriter::spawn(
        &files.csv,
        now_ms(),
        config.rooms,
        config.sched_batch,
        config.open_loop.clone(),
    )?;
    let warm_n = config.warmup_threads;
    let shared = Arc::new(Shared::new(
        config.clone(),
        stop,
        warm_n + config.threads,
        start,
    ));
    let room_of = |t: usize| (t % config.rooms as usize) as u32 + 1;

    // Lanes: warm-up lanes hold a whole quota (the generator never waits on
    // them); room lanes hold `lane_batches`.
    let warm_cap = (config.warmup_messages as usize).div_ceil(BATCH) + 1;
    let (warm_tx, warm_rx): (Vec<_>, Vec<_>) = (0..warm_n)
        .map(|t| {
            let (tx, rx) = crossbeam_channel::bounded::<Batch>(warm_cap);
            ((room_of(t), tx), rx)
        })
        .unzip();
    // An open loop's are unbounded: its generator paces itself, and a room
    // whose senders are stuck must not hold the others up.
    let (main_tx, main_rx): (Vec<_>, Vec<_>) = (0..config.rooms)
        .map(|_| match config.open_loop {
            Some(_) => crossbeam_channel::unbounded::<Batch>(),
            None => crossbeam_channel::bounded::<Batch>(config.lane_batches),
        })
        .unzip();
    let gen_stop = Arc::new(AtomicBool::new(false));
    let (origin_tx, origin_rx) = crossbeam_channel::bounded::<Instant>(1);
    let generator = {
        let plan = Plan {
            seed,
            rooms: config.rooms,
            warmup: warm_tx,
            warmup_messages: config.warmup_messages,
            main: main_tx,
            main_messages: config.main_total(),
            pace: config.open_loop.clone().map(|schedule| Pace {
                schedule,
                start: origin_rx,
            }),
        };
        let gen_stop = Arc::clone(&gen_stop);
        threads::spawn("generator", config.sched_batch, move || {
            generator::generate(plan, &gen_stop)
        })?
    };

    let mut progress = Progress::new(
        config.progress,
        config.progress_interval,
        config.planned_total(),
    );
    let mut watch = Watch::new(&config);
    let thread_seed = |slot: usize| seed ^ (slot as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F);

    let warm_start = Instant::now();
    let warm_specs = warm_rx
        .into_iter()
        .enumerate()
        .map(|(t, source)| Spec {
            slot: t,
            phase: Phase::Warmup,
            room: room_of(t),
            source,
            records: csv.tx.clone(),
            seed: thread_seed(t),
            origin: None,
        })
        .collect();
    let warm = run_phase(
        &shared,
        ("warm-up", "warmup"),
        warm_specs,
        &mut progress,
        &mut watch,
    )?;

    let mut main_start = Instant::now();
    let mut origin = None;
    let main = if shared.stopped() || shared.aborted() || config.main_total() == 0 {
        drop(main_rx);
        Vec::new()
    } else {
        if warm_n > 0 {
            progress.note("warm-up done; main phase");
        }
        if let Some(schedule) = &config.open_loop {
            let o = main_start + OPEN_LOOP_START_DELAY;
            // The generator holds the first second's messages; it cannot
            // have gone away (it waits for this, or for the stop flag).
            let _ = origin_tx.send(o);
            watch.open_loop(o, schedule.clone());
            main_start = o;
            origin = Some(o);
        }
        let specs = (0..config.threads)
            .map(|t| {
                let room = room_of(t);
                Spec {
                    slot: warm_n + t,
                    phase: Phase::Main,
                    room,
                    source: main_rx[room as usize - 1].clone(),
                    records: csv.tx.clone(),
                    seed: thread_seed(warm_n + t),
                    origin,
                }
            })
            .collect();
        drop(main_rx);
        run_phase(
            &shared,
            ("main", "sender"),
            specs,
            &mut progress,
            &mut watch,
        )?
    };
    let interrupted = shared.stopped();
    gen_stop.store(true, Ordering::Relaxed);
    let _ = generator.join();
    progress.finish();
    let agg = csv.finish()?;

    // Numbers.
    let (warmup, warm_ack, _) = phase_report(&warm, warm_n, config.warmup_total(), warm_start);
    let (main_report, main_ack, main_delivery) = phase_report(
        &main,
        if main.is_empty() { 0 } else { config.threads },
        config.main_total(),
        main_start,
    );
    let all: Vec<&Outcome> = warm.iter().chain(main.iter()).collect();
    let acked: u64 = all.iter().map(|o| o.acked).sum();
    let failed: u64 = all.iter().map(|o| o.failed).sum();
    let last_done = all.iter().filter_map(|o| o.last_done).max();
    let wall = last_done.map_or(0.0, |t| t.duration_since(start).as_secs_f64());
    let (rooms, message_types, status_codes) = Report::counts_from(&agg, main_report.wall_seconds);
    let in_flight = config.threads * config.window;
    let mean_ms = main_ack.mean_ms();
    let mut ack_for_chart = main_ack.clone();
    if ack_for_chart.count() == 0 {
        ack_for_chart.merge(&warm_ack);
    }
    let outcome = if shared.aborted() {
        RunOutcome::Aborted
    } else if interrupted {
        RunOutcome::Interrupted
    } else {
        RunOutcome::Completed
    };

    let main_offset = main_start.saturating_duration_since(start).as_secs_f64();
    let open = match (&config.open_loop, origin) {
        (Some(schedule), Some(_)) => Some(open_loop_report(
            schedule,
            &agg,
            &main,
            &main_report,
            main_offset,
            started_wall,
        )),
        _ => None,
    };
    let mut errors_per_second: Vec<u64> = Vec::new();
    for o in &all {
        if errors_per_second.len() < o.errors_per_second.len() {
            errors_per_second.resize(o.errors_per_second.len(), 0);
        }
        for (total, n) in errors_per_second.iter_mut().zip(&o.errors_per_second) {
            *total += n;
        }
    }

    let outages = outage_reports(&config, &shared, started_wall);
    if config.charts {
        let t = files.dir.join("throughput.svg");
        let marks = charts::Marks {
            outages: outages
                .iter()
                .map(|o| (o.start_offset_seconds, o.start_offset_seconds + o.seconds))
                .collect(),
            phases: phases(
                &config,
                warm_n > 0,
                !main.is_empty(),
                main_offset,
                wall.max(main_offset),
            ),
            errors: errors_per_second.clone(),
        };
        charts::throughput(
            &t,
            &agg.acked_per_second,
            &marks,
            "Acked messages per second",
        )?;
        files.throughput_chart = Some(t);
        let l = files.dir.join("latency.svg");
        charts::latency(
            &l,
            &[
                ("ack", ack_for_chart.percentile_curve()),
                ("delivery", main_delivery.percentile_curve()),
            ],
            "Latency by percentile (main phase)",
        )?;
        files.latency_chart = Some(l);
    }
    files.histograms = write_histograms(
        &files.dir,
        &main_ack,
        config.delivery.then_some(&main_delivery),
        open.as_ref().map(|(_, h)| h),
    )?;

    // The run's own time ends here; the metrics wait is not part of it.
    let elapsed = start.elapsed();
    let metrics = run_metrics(&config, &files.dir, started_wall, acked, &shared.stop);
    files.metrics = metrics.1;

    let report = Report {
        outcome,
        abort_reason: shared.abort_reason(),
        last_error: shared.last_error(),
        started_at,
        settings: Settings {
            mode: if config.open_loop.is_some() {
                "open"
            } else {
                "closed"
            },
            urls: config.urls.iter().map(|u| u.base()).collect(),
            rooms: config.rooms,
            messages: config.planned_total(),
            threads: config.threads,
            window: config.window,
            warmup_threads: config.warmup_threads,
            warmup_messages: config.warmup_messages,
            seed,
            retries: config.retries,
            retry_window_s: config.retry_window.as_secs_f64(),
            delivery: config.delivery,
            delivery_timeout_s: config.delivery_timeout.as_secs_f64(),
            ack_timeout_s: config.ack_timeout.as_secs_f64(),
            pin: config.pin,
            sched_batch: config.sched_batch,
        },
        warmup,
        total: Totals {
            planned: config.planned_total(),
            acked,
            failed,
            not_sent: config.planned_total().saturating_sub(acked + failed),
            wall_seconds: wall,
            throughput: rate(acked, wall),
            elapsed_seconds: elapsed.as_secs_f64(),
        },
        connections: Connections {
            opened: all.iter().map(|o| o.connections).sum(),
            reconnections: all.iter().map(|o| o.reconnections).sum(),
            retries: all.iter().map(|o| o.retries).sum(),
            breaker_openings: shared.breaker_openings(),
            refusals: shared.refusals_total(),
            backoff_wait_seconds: all.iter().map(|o| o.backoff_wait.as_secs_f64()).sum(),
            longest_backoff_wait_seconds: all
                .iter()
                .map(|o| o.longest_wait.as_secs_f64())
                .fold(0.0, f64::max),
            outages,
            resumes: all.iter().map(|o| o.resumes).sum(),
            recovered_messages: all.iter().map(|o| o.recovered).sum(),
            unrecovered_resumes: all.iter().map(|o| o.unrecovered_resumes).sum(),
        },
        littles_law: LittlesLaw {
            in_flight,
            mean_ack_latency_ms: mean_ms,
            predicted_throughput: if mean_ms > 0.0 {
                in_flight as f64 * 1000.0 / mean_ms
            } else {
                0.0
            },
            measured_throughput: main_report.throughput,
        },
        ack_latency_ms: main_report.ack_latency_ms.clone(),
        delivery: DeliveryReport {
            enabled: config.delivery,
            timeout_s: config.delivery_timeout.as_secs_f64(),
            observed: all.iter().map(|o| o.delivered).sum(),
            missing: all.iter().map(|o| o.delivery_missing).sum(),
            latency_ms: main_delivery.stats(),
        },
        open_loop: open.map(|(report, _)| report),
        main: main_report,
        rooms,
        message_types,
        status_codes,
        unexpected_frames: all.iter().map(|o| o.unexpected_frames).sum(),
        presence: presence_report(&config, &all),
        acked_per_second: agg.acked_per_second.clone(),
        errors_per_second,
        metrics: metrics.0,
        files,
    };
    report.write_json(&report.files.summary)?;
    Ok(report)
}

/// The end-of-run presence check over every connection that made it
/// (see [`PresenceReport`]).
fn presence_report(config: &Config, all: &[&Outcome]) -> PresenceReport {
    let mut report = PresenceReport {
        checked: config.presence_check,
        frames: all.iter().map(|o| o.presence_frames).sum(),
        ..PresenceReport::default()
    };
    // room → (most listed, our users, missing users)
    let mut rooms: BTreeMap<u32, (u64, BTreeSet<u32>, BTreeSet<u32>)> = BTreeMap::new();
    for outcome in all {
        let Some(seen) = &outcome.presence else {
            if outcome.phase == Phase::Main && config.presence_check {
                report.unanswered += 1;
            }
            continue;
        };
        let Some(count) = seen.count else {
            report.refused += 1;
            report.refused_code.clone_from(&seen.refused);
            continue;
        };
        report.connections += 1;
        let room = rooms.entry(seen.room).or_default();
        room.0 = room.0.max(count);
        room.1.extend(&seen.ours);
        room.2.extend(&seen.missing);
    }
    for (room_id, (listed, ours, missing)) in rooms {
        report.listed += listed;
        report.ours += ours.len() as u64;
        report.missing += missing.len() as u64;
        report.rooms.push(RoomPresence {
            room_id,
            listed,
            ours: ours.len() as u64,
            missing: missing.len() as u64,
        });
    }
    report.matched = report.connections > 0 && report.missing == 0;
    report
}

/// An open loop's histograms over its whole main phase, for the `.hgrm`
/// files: ack latency from the intended time, send lag, and delivery
/// latency from the intended time (when measured).
struct OpenLoopHistograms {
    ack_corrected: Latencies,
    lag: Latencies,
    delivery_corrected: Option<Latencies>,
}

/// Offered against achieved, the send lag, latency both ways and each
/// stage, from the CSV writer's stage counts and the main phase's threads.
/// `offset`: the schedule's start, seconds after the run's.
fn open_loop_report(
    schedule: &Schedule,
    agg: &Aggregates,
    main: &[Outcome],
    phase: &PhaseReport,
    offset: f64,
    started: chrono::DateTime<chrono::Utc>,
) -> (OpenLoopReport, OpenLoopHistograms) {
    let mut ack = Latencies::long();
    let mut ack_corrected = Latencies::long();
    let mut lag = Latencies::long();
    let mut stages = Vec::with_capacity(schedule.stages().len());
    for (i, (stage, counted)) in schedule.stages().iter().zip(&agg.stages).enumerate() {
        ack.merge(&counted.ack);
        ack_corrected.merge(&counted.ack_corrected);
        lag.merge(&counted.lag);
        let seconds = stage.duration.as_secs_f64();
        stages.push(StageReport {
            stage: i + 1,
            rate: stage.rate,
            seconds,
            start_offset_seconds: offset + stage.start_ns as f64 / 1e9,
            planned: stage.messages,
            acked: counted.acked,
            failed: counted.failed,
            throughput: rate(counted.acked_in_window, seconds),
            ack_latency_ms: BothWays {
                corrected: counted.ack_corrected.stats(),
                uncorrected: counted.ack.stats(),
            },
            send_lag_ms: counted.lag.stats(),
        });
    }
    let mut delivery_corrected: Option<Latencies> = None;
    for o in main {
        if let Some(d) = &o.delivery_corrected {
            delivery_corrected
                .get_or_insert_with(Latencies::long)
                .merge(d);
        }
    }
    let send_lag = lag.stats();
    let late_us = (LATE_MS * 1000.0) as u64;
    let late = lag
        .hist()
        .iter_recorded()
        .filter(|v| v.value_iterated_to() > late_us)
        .map(|v| v.count_at_value())
        .sum();
    let offered = schedule.offered_rate();
    let achieved = phase.throughput;
    let kept_up =
        achieved >= KEPT_UP_SHARE * offered && send_lag.as_ref().is_none_or(|l| l.p99 <= LATE_MS);
    let started_at = started + chrono::Duration::milliseconds((offset * 1000.0) as i64);
    let mut main_delivery = Latencies::new();
    for o in main {
        main_delivery.merge(&o.delivery);
    }
    let report = OpenLoopReport {
        offered_rate: offered,
        scheduled_messages: schedule.total(),
        scheduled_seconds: schedule.duration().as_secs_f64(),
        achieved_rate: achieved,
        kept_up,
        started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        start_offset_seconds: offset,
        send_lag_ms: send_lag,
        late_messages: late,
        late_threshold_ms: LATE_MS,
        acked_after_schedule: agg.acked_after_schedule,
        ack_latency_ms: BothWays {
            corrected: ack_corrected.stats(),
            uncorrected: ack.stats(),
        },
        delivery_latency_ms: BothWays {
            corrected: delivery_corrected.as_ref().and_then(Latencies::stats),
            uncorrected: main_delivery.stats(),
        },
        stages,
    };
    let histograms = OpenLoopHistograms {
        ack_corrected,
        lag,
        delivery_corrected,
    };
    (report, histograms)
}

/// The throughput chart's phases: the warm-up, then the main phase, or
/// each stage of an open loop (labelled with its rate). Seconds since the
/// run's start; `main_offset` is when the main phase (or its schedule)
/// began, `end` the run's last message.
fn phases(
    config: &Config,
    warmup: bool,
    main: bool,
    main_offset: f64,
    end: f64,
) -> Vec<(f64, f64, String)> {
    let mut out = Vec::new();
    if warmup {
        out.push((0.0, main_offset, "warm-up".to_string()));
    }
    if !main {
        return out;
    }
    match &config.open_loop {
        Some(schedule) => {
            let stages = schedule.stages();
            for (i, st) in stages.iter().enumerate() {
                let from = main_offset + st.start_ns as f64 / 1e9;
                let to = from + st.duration.as_secs_f64();
                let label = match stages.len() {
                    1 => format!("main: {}/s", rate_text(st.rate)),
                    _ => format!("stage {}: {}/s", i + 1, rate_text(st.rate)),
                };
                out.push((from, to, label));
            }
        }
        None => out.push((main_offset, end, "main".to_string())),
    }
    out
}

/// A rate as a label: grouped digits, decimals only when it has them.
fn rate_text(rate: f64) -> String {
    if rate.fract() == 0.0 {
        crate::progress::group(rate as u64)
    } else {
        format!("{rate}")
    }
}

/// Writes the main phase's latency histograms as `.hgrm` files in `dir`:
/// ack latency (from the actual send), delivery latency when measured, and
/// for an open loop both from the intended time and the send lag.
fn write_histograms(
    dir: &Path,
    ack: &Latencies,
    delivery: Option<&Latencies>,
    open: Option<&OpenLoopHistograms>,
) -> Result<Vec<PathBuf>> {
    let mut files: Vec<(&str, &Latencies)> = vec![("ack-latency.hgrm", ack)];
    if let Some(d) = delivery {
        files.push(("delivery-latency.hgrm", d));
    }
    if let Some(o) = open {
        files.push(("ack-latency-corrected.hgrm", &o.ack_corrected));
        if let (Some(d), Some(_)) = (&o.delivery_corrected, delivery) {
            files.push(("delivery-latency-corrected.hgrm", d));
        }
        files.push(("send-lag.hgrm", &o.lag));
    }
    let mut written = Vec::with_capacity(files.len());
    for (name, hist) in files {
        let path = dir.join(name);
        std::fs::write(&path, hist.hgrm()).map_err(|e| Error::io(&path, e))?;
        written.push(path);
    }
    Ok(written)
}

/// Every server's outages, for the report and the chart.
fn outage_reports(
    config: &Config,
    shared: &Shared,
    started: chrono::DateTime<chrono::Utc>,
) -> Vec<OutageReport> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let started_ms = started.timestamp_millis();
    let stamp = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for (server, outages) in config.urls.iter().zip(shared.outages()) {
        for o in outages {
            out.push(OutageReport {
                server: server.base(),
                start: stamp(o.start_ms),
                end: o.end_ms.map(stamp),
                seconds: o.seconds(now_ms),
                refusals: o.refusals,
                start_offset_seconds: (o.start_ms - started_ms) as f64 / 1000.0,
            });
        }
    }
    out.sort_by(|a, b| a.start.cmp(&b.start));
    out
}

/// Fetches the read API's document for the run's window, waiting up to
/// `metrics_settle` for the stored count to reach `acked`, and writes it
/// to `metrics.json` in `dir`. Never fails the run: a failure is the
/// report's reason (and no `metrics.json` is written).
fn run_metrics(
    config: &Config,
    dir: &Path,
    started: chrono::DateTime<chrono::Utc>,
    acked: u64,
    stop: &AtomicBool,
) -> (MetricsReport, Option<PathBuf>) {
    let mut report = MetricsReport {
        enabled: config.metrics,
        acked,
        settle_limit_seconds: config.metrics_settle.as_secs_f64(),
        ..MetricsReport::default()
    };
    if !config.metrics {
        return (report, None);
    }
    let api = config.api();
    report.api_url = Some(api.base());
    let window = run_window(started, chrono::Utc::now());
    let params = [
        QueryParam::new("start", window.start.clone(), "run"),
        QueryParam::new("end", window.end.clone(), "run"),
    ];
    report.window = Some(window);
    let settled = settle(
        &Api::new(&api, config.api_timeout),
        &params,
        acked,
        config.metrics_settle,
        stop,
    );
    report.polls = settled.polls;
    report.waited_seconds = settled.waited.as_secs_f64();
    report.wait_ended = settled.end.map(WaitEnd::as_str);
    let fetched = match settled.result {
        Ok(f) => f,
        Err(e) => {
            report.reason = Some(e.to_string());
            return (report, None);
        }
    };
    report.stored_messages = settled.stored;
    if settled.stored.is_none() {
        report.reason = Some(match fetched.document.analytics.why_not() {
            Some(why) => format!("analytics: {why}"),
            None => "analytics has no totalMessages".into(),
        });
    }
    let path = dir.join("metrics.json");
    match std::fs::write(&path, pretty(&fetched.body)) {
        Ok(()) => {
            report.fetched = true;
            (report, Some(path))
        }
        Err(e) => {
            report.stored_messages = None;
            report.reason = Some(format!("cannot write {}: {e}", path.display()));
            (report, None)
        }
    }
}

/// The run's window for the API: `[start, end)` rounded outward to whole
/// seconds, so every message of the run is inside even with the server's
/// clock a few hundred milliseconds off (one machine, or NTP-synced ones).
fn run_window(
    start: chrono::DateTime<chrono::Utc>,
    end: chrono::DateTime<chrono::Utc>,
) -> RunWindow {
    use chrono::{SecondsFormat, SubsecRound};
    let floor = start.trunc_subsecs(0);
    let mut ceil = end.trunc_subsecs(0);
    if ceil < end {
        ceil += chrono::Duration::seconds(1);
    }
    RunWindow {
        start: floor.to_rfc3339_opts(SecondsFormat::Secs, true),
        end: ceil.to_rfc3339_opts(SecondsFormat::Secs, true),
    }
}

/// Runs one phase's threads and watches them until all are done. `names`:
/// the phase as shown in progress, and its threads' name prefix (`top -H`,
/// perf).
fn run_phase(
    shared: &Arc<Shared>,
    (name, prefix): (&str, &str),
    specs: Vec<Spec>,
    progress: &mut Progress,
    watch: &mut Watch,
) -> Result<Vec<Outcome>> {
    let mut handles: Vec<JoinHandle<Outcome>> = Vec::with_capacity(specs.len());
    for spec in specs {
        let for_thread = Arc::clone(shared);
        let thread_name = format!("{prefix}-{}", spec.slot);
        let sched_batch = shared.config.sched_batch;
        match threads::spawn(&thread_name, sched_batch, move || {
            sender::run(&for_thread, spec)
        }) {
            Ok(h) => handles.push(h),
            Err(e) => {
                shared.abort(format!("could not start thread {thread_name}"));
                for h in handles {
                    let _ = h.join();
                }
                return Err(e);
            }
        }
    }
    while !handles.iter().all(JoinHandle::is_finished) {
        thread::sleep(WATCH_TICK);
        let (acked, failed) = shared.totals();
        progress.update(name, acked, failed);
        watch.check(shared, acked, failed);
    }
    let mut outcomes = Vec::with_capacity(handles.len());
    for h in handles {
        match h.join() {
            Ok(o) => outcomes.push(o),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    let (acked, failed) = shared.totals();
    progress.update(name, acked, failed);
    Ok(outcomes)
}

/// Gives the run up when nothing is acked for `give_up_after` while work
/// remains. In an open loop the silence counts from the first message due
/// after the last ack: a schedule with seconds between messages is not a
/// dead server.
struct Watch {
    give_up_after: Duration,
    planned: u64,
    last_acked: u64,
    since: Instant,
    /// Open loop: the schedule's start and the schedule.
    open: Option<(Instant, Schedule)>,
}

impl Watch {
    fn new(config: &Config) -> Self {
        Watch {
            give_up_after: config.give_up_after,
            planned: config.planned_total(),
            last_acked: 0,
            since: Instant::now(),
            open: None,
        }
    }

    /// The main phase is an open loop starting at `origin`.
    fn open_loop(&mut self, origin: Instant, schedule: Schedule) {
        self.open = Some((origin, schedule));
    }

    /// Since when nothing has been acked that should have been: the last
    /// ack, or in an open loop the first message due after it.
    fn silent_since(&self) -> Instant {
        let Some((origin, schedule)) = &self.open else {
            return self.since;
        };
        let after = self.since.saturating_duration_since(*origin).as_nanos() as u64;
        match schedule.next_due_at_or_after(after) {
            Some(due) => (*origin + Duration::from_nanos(due)).max(self.since),
            // Everything was due before the last ack: silent since then.
            None => self.since,
        }
    }

    fn check(&mut self, shared: &Shared, acked: u64, failed: u64) {
        let now = Instant::now();
        if acked != self.last_acked {
            self.last_acked = acked;
            self.since = now;
            return;
        }
        let silent = now.saturating_duration_since(self.silent_since()) >= self.give_up_after;
        if acked + failed < self.planned && silent && !shared.aborted() {
            let last = shared
                .last_error()
                .unwrap_or_else(|| "no error seen".into());
            shared.abort(format!(
                "nothing was acked for {:.1} s (--give-up-after); last error: {last}",
                self.give_up_after.as_secs_f64()
            ));
        }
    }
}

/// Sums a phase's threads: counts, wall time, merged histograms.
fn phase_report(
    outcomes: &[Outcome],
    threads: usize,
    planned: u64,
    start: Instant,
) -> (PhaseReport, Latencies, Latencies) {
    let mut ack = Latencies::new();
    let mut delivery = Latencies::new();
    for o in outcomes {
        ack.merge(&o.ack);
        delivery.merge(&o.delivery);
    }
    let acked = outcomes.iter().map(|o| o.acked).sum();
    let failed = outcomes.iter().map(|o| o.failed).sum();
    let wall = outcomes
        .iter()
        .filter_map(|o| o.last_done)
        .max()
        .map_or(0.0, |t| t.saturating_duration_since(start).as_secs_f64());
    let report = PhaseReport {
        threads,
        planned: if threads == 0 { 0 } else { planned },
        acked,
        failed,
        wall_seconds: wall,
        throughput: rate(acked, wall),
        ack_latency_ms: ack.stats(),
        delivery_latency_ms: delivery.stats(),
    };
    (report, ack, delivery)
}

/// Connects to room 1 of every server, with the configured retries and
/// back-off, so an unreachable server is reported clearly before anything
/// starts.
pub(crate) fn preflight(config: &Config, stop: &AtomicBool, seed: u64) -> Result<()> {
    for endpoint in &config.urls {
        let started = Instant::now();
        let mut attempts = 0;
        let mut backoff = Backoff::new(config.backoff_base, config.backoff_max, seed);
        loop {
            if stop.load(Ordering::Relaxed) {
                return Err(Error::Interrupted);
            }
            attempts += 1;
            let dial = Dial::sender(config.connect_timeout, config.tick, 1);
            match Connection::open(endpoint, 1, None, &dial) {
                Ok(conn) => {
                    conn.close(config.tick);
                    break;
                }
                Err(last) if attempts > config.retries => {
                    return Err(Error::Unreachable {
                        url: endpoint.room_url(1),
                        attempts,
                        seconds: started.elapsed().as_secs_f64(),
                        last,
                    })
                }
                Err(_) => {
                    let until = Instant::now() + backoff.next_delay();
                    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                        thread::sleep(config.tick.min(until - Instant::now()));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The report directory: as given, or `results/<UTC timestamp>/` (suffixed
/// if two runs start in the same second).
pub(crate) fn make_out_dir(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = given {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        return Ok(dir.to_path_buf());
    }
    let base = PathBuf::from("results");
    std::fs::create_dir_all(&base).map_err(|e| Error::io(&base, e))?;
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string();
    for n in 1.. {
        let dir = if n == 1 {
            base.join(&stamp)
        } else {
            base.join(format!("{stamp}-{n}"))
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&dir, e)),
        }
    }
    unreachable!("an unbounded range always yields")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn an_open_loop_is_silent_only_from_the_first_message_due_after_the_last_ack() {
        // One message a second: an ack at 0.1 s leaves nothing due until
        // 1 s, so the silence the give-up counts starts there; in closed
        // loop it starts at the ack.
        let mut w = Watch::new(&Config::default());
        let origin = Instant::now();
        w.since = origin + Duration::from_millis(100);
        assert_eq!(w.silent_since(), w.since);
        w.open_loop(
            origin,
            Schedule::constant(1.0, Duration::from_secs(5)).unwrap(),
        );
        assert_eq!(w.silent_since(), origin + Duration::from_secs(1));
        // After the last message was due: from the ack itself.
        w.since = origin + Duration::from_millis(4_500);
        assert_eq!(w.silent_since(), w.since);
    }

    #[test]
    fn the_run_window_is_rounded_outward_to_whole_seconds() {
        let at = |ms: i64| chrono::Utc.timestamp_millis_opt(ms).unwrap();
        let w = run_window(at(1_796_155_200_250), at(1_796_155_212_001));
        assert_eq!(w.start, "2026-12-01T20:00:00Z");
        assert_eq!(w.end, "2026-12-01T20:00:13Z");
        // A whole second stays as it is.
        assert_eq!(
            run_window(at(1_796_155_200_000), at(1_796_155_201_000)).end,
            "2026-12-01T20:00:01Z"
        );
    }
}
