//! The per-message record, and the thread that writes them as CSV
//! (`timestamp,messageType,latencyMs,statusCode,roomId`, one row per message)
//! and aggregates them into the time series, per-room and per-type counts
//! the report and charts need. Senders hand over batches of records on a
//! channel; nothing on the send path formats or writes.
//!
//! In an open loop it also counts each stage ([`StageAgg`]): its messages'
//! latency from the actual send and from the intended time, how late they
//! went out, and the acks that arrived while it ran. The CSV's `latencyMs`
//! stays from the actual send (the format is the seed's).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use chatflow_protocol::{MessageType, ServerTime};
use crossbeam_channel::{Receiver, Sender};

use crate::error::{Error, Result};
use crate::latency::Latencies;
use crate::schedule::Schedule;
use crate::threads;
use crate::wire::push_u64;

/// How a message ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    Ok,
    /// Server error codes (the wire names).
    BadJson,
    ValidationFailed,
    TooLarge,
    UnsupportedFrame,
    Unavailable,
    /// An error code this client does not know.
    ServerError,
    /// The connection could not be opened or was lost before the ack, on
    /// every attempt.
    ConnectionFailed,
    /// No ack within the ack timeout.
    Timeout,
    /// In flight when the run was given up (server dead or hung).
    Aborted,
    /// In flight when the run was interrupted (Ctrl-C).
    Interrupted,
}

impl Status {
    pub const ALL: [Status; 11] = [
        Status::Ok,
        Status::BadJson,
        Status::ValidationFailed,
        Status::TooLarge,
        Status::UnsupportedFrame,
        Status::Unavailable,
        Status::ServerError,
        Status::ConnectionFailed,
        Status::Timeout,
        Status::Aborted,
        Status::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadJson => "BAD_JSON",
            Status::ValidationFailed => "VALIDATION_FAILED",
            Status::TooLarge => "TOO_LARGE",
            Status::UnsupportedFrame => "UNSUPPORTED_FRAME",
            Status::Unavailable => "UNAVAILABLE",
            Status::ServerError => "SERVER_ERROR",
            Status::ConnectionFailed => "CONNECTION_FAILED",
            Status::Timeout => "TIMEOUT",
            Status::Aborted => "ABORTED",
            Status::Interrupted => "INTERRUPTED",
        }
    }

    /// A server error code; `retry` says whether sending again may succeed
    /// (only UNAVAILABLE: the broker is down; the rest would fail again).
    pub fn from_code(code: &str) -> (Status, bool) {
        match code {
            "UNAVAILABLE" => (Status::Unavailable, true),
            "BAD_JSON" => (Status::BadJson, false),
            "VALIDATION_FAILED" => (Status::ValidationFailed, false),
            "TOO_LARGE" => (Status::TooLarge, false),
            "UNSUPPORTED_FRAME" => (Status::UnsupportedFrame, false),
            _ => (Status::ServerError, false),
        }
    }
}

/// Which phase a message belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Warmup,
    Main,
}

/// One finished message (acked or given up on).
#[derive(Clone, Copy, Debug)]
pub struct Record {
    /// Wall-clock send time of the first attempt, Unix ms.
    pub sent_ms: i64,
    /// First attempt → ack (or → failure), µs.
    pub latency_us: u32,
    /// Open loop: when it was due, µs after the main phase's start
    /// ([`NOT_SCHEDULED`] otherwise), the stage it was due in, and how
    /// late its first attempt went out (latency from the intended time is
    /// `lag_us + latency_us`).
    pub due_us: u64,
    pub stage: u16,
    pub lag_us: u32,
    pub room: u16,
    pub kind: MessageType,
    pub status: Status,
    pub phase: Phase,
}

/// Records per batch handed to the writer: one channel operation and one
/// allocation per 512 messages.
pub const RECORD_BATCH: usize = 512;

/// `Record::due_us` of a message without an intended time.
pub const NOT_SCHEDULED: u64 = u64::MAX;

/// One open-loop stage, from its messages' records.
#[derive(Clone, Debug)]
pub struct StageAgg {
    /// Messages due in this stage that were acked, and that failed.
    pub acked: u64,
    pub failed: u64,
    /// Acks that arrived while this stage ran, whichever stage their
    /// message was due in: the stage's throughput.
    pub acked_in_window: u64,
    /// Its acked messages' latency from the actual send, and from the
    /// intended time.
    pub ack: Latencies,
    pub ack_corrected: Latencies,
    /// How late its messages' first attempts went out.
    pub lag: Latencies,
}

impl StageAgg {
    fn new() -> Self {
        StageAgg {
            acked: 0,
            failed: 0,
            acked_in_window: 0,
            ack: Latencies::long(),
            ack_corrected: Latencies::long(),
            lag: Latencies::long(),
        }
    }
}

/// Everything the report needs that is counted per message.
#[derive(Clone, Debug, Default)]
pub struct Aggregates {
    pub rows: u64,
    /// Acked messages per second of the run (by ack time), index = second.
    pub acked_per_second: Vec<u64>,
    /// Main-phase acked messages per room (index room-1).
    pub main_acked_per_room: Vec<u64>,
    /// Acked messages per type, all phases ([`MessageType::ALL`] order).
    pub acked_per_type: [u64; 3],
    /// Messages per final status, all phases ([`Status::ALL`] order).
    pub per_status: [u64; 11],
    /// Open loop: one per stage of the schedule.
    pub stages: Vec<StageAgg>,
    /// Open loop: acks that arrived after the schedule's end (the backlog
    /// of a system that fell behind).
    pub acked_after_schedule: u64,
}

pub struct CsvWriter {
    pub tx: Sender<Vec<Record>>,
    handle: JoinHandle<Result<Aggregates>>,
}

impl CsvWriter {
    /// Starts the writer thread on `path`. `start_ms` is the run's start
    /// (wall clock, Unix ms), the origin of the time series.
    /// `sched_batch`: run it under SCHED_BATCH like the senders.
    /// `schedule`: an open loop's, to count its stages.
    pub fn spawn(
        path: &Path,
        start_ms: i64,
        rooms: u32,
        sched_batch: bool,
        schedule: Option<Schedule>,
    ) -> Result<CsvWriter> {
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let path = path.to_path_buf();
        let handle = threads::spawn("csv-writer", sched_batch, move || {
            write_all(rx, file, path, start_ms, rooms, schedule)
        })?;
        Ok(CsvWriter { tx, handle })
    }

    /// Waits for every sender to be gone, then for the file to be complete.
    pub fn finish(self) -> Result<Aggregates> {
        drop(self.tx);
        self.handle.join().unwrap_or_else(|_| {
            Err(Error::Panicked {
                thread: "CSV writer",
            })
        })
    }
}

fn write_all(
    rx: Receiver<Vec<Record>>,
    file: File,
    path: PathBuf,
    start_ms: i64,
    rooms: u32,
    schedule: Option<Schedule>,
) -> Result<Aggregates> {
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut agg = Aggregates {
        main_acked_per_room: vec![0; rooms as usize],
        stages: (0..schedule.as_ref().map_or(0, |s| s.stages().len()))
            .map(|_| StageAgg::new())
            .collect(),
        ..Aggregates::default()
    };
    let mut line = Vec::with_capacity(128);
    let io = |e| Error::io(&path, e);
    out.write_all(b"timestamp,messageType,latencyMs,statusCode,roomId\n")
        .map_err(io)?;
    for batch in rx {
        for r in &batch {
            line.clear();
            format_row(&mut line, r);
            out.write_all(&line).map_err(io)?;
            count(&mut agg, r, start_ms);
            if let Some(schedule) = &schedule {
                count_stage(&mut agg, r, schedule);
            }
        }
    }
    out.flush().map_err(io)?;
    Ok(agg)
}

fn count(agg: &mut Aggregates, r: &Record, start_ms: i64) {
    agg.rows += 1;
    let status = Status::ALL.iter().position(|s| *s == r.status).unwrap_or(0);
    agg.per_status[status] += 1;
    if r.status != Status::Ok {
        return;
    }
    let done_ms = r.sent_ms + i64::from(r.latency_us / 1000);
    let second = ((done_ms - start_ms).max(0) / 1000) as usize;
    if agg.acked_per_second.len() <= second {
        agg.acked_per_second.resize(second + 1, 0);
    }
    agg.acked_per_second[second] += 1;
    let kind = MessageType::ALL
        .iter()
        .position(|k| *k == r.kind)
        .unwrap_or(0);
    agg.acked_per_type[kind] += 1;
    if r.phase == Phase::Main {
        if let Some(c) = agg
            .main_acked_per_room
            .get_mut(usize::from(r.room).wrapping_sub(1))
        {
            *c += 1;
        }
    }
}

/// An open-loop record into its stage (and the stage its ack fell in).
fn count_stage(agg: &mut Aggregates, r: &Record, schedule: &Schedule) {
    if r.due_us == NOT_SCHEDULED {
        return;
    }
    let Some(stage) = agg.stages.get_mut(usize::from(r.stage)) else {
        return;
    };
    stage.lag.record(Duration::from_micros(u64::from(r.lag_us)));
    if r.status != Status::Ok {
        stage.failed += 1;
        return;
    }
    stage.acked += 1;
    let latency = u64::from(r.latency_us);
    let corrected = latency + u64::from(r.lag_us);
    stage.ack.record(Duration::from_micros(latency));
    stage.ack_corrected.record(Duration::from_micros(corrected));
    let acked_at_ns = (r.due_us + corrected).saturating_mul(1_000);
    match schedule.stage_at(acked_at_ns) {
        Some(i) => agg.stages[i].acked_in_window += 1,
        None => agg.acked_after_schedule += 1,
    }
}

/// `2026-11-27T02:00:00.123Z,TEXT,0.734,OK,7`
pub fn format_row(line: &mut Vec<u8>, r: &Record) {
    line.extend_from_slice(&ServerTime(r.sent_ms).to_rfc3339_bytes());
    line.push(b',');
    line.extend_from_slice(r.kind.as_str().as_bytes());
    line.push(b',');
    push_u64(line, u64::from(r.latency_us / 1000));
    line.push(b'.');
    let frac = r.latency_us % 1000;
    line.extend_from_slice(&[
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
    line.push(b',');
    line.extend_from_slice(r.status.as_str().as_bytes());
    line.push(b',');
    push_u64(line, u64::from(r.room));
    line.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(sent_ms: i64, latency_us: u32, room: u16, status: Status, phase: Phase) -> Record {
        Record {
            sent_ms,
            latency_us,
            due_us: NOT_SCHEDULED,
            stage: 0,
            lag_us: 0,
            room,
            kind: MessageType::Join,
            status,
            phase,
        }
    }

    #[test]
    fn rows_have_the_documented_columns() {
        let mut line = Vec::new();
        format_row(
            &mut line,
            &rec(1_795_744_800_123, 12_034, 7, Status::Ok, Phase::Main),
        );
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "2026-11-27T02:00:00.123Z,JOIN,12.034,OK,7\n"
        );
    }

    #[test]
    fn the_writer_writes_every_row_and_aggregates_them() {
        // 3 records in 2 batches → header + 3 rows; seconds, rooms and
        // statuses counted; failures excluded from throughput.
        let dir = std::env::temp_dir().join(format!("chatflow-csv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.csv");
        let w = CsvWriter::spawn(&path, 1_000_000, 3, false, None).unwrap();
        w.tx.send(vec![
            rec(1_000_100, 500, 1, Status::Ok, Phase::Warmup),
            rec(1_002_000, 1_500, 2, Status::Ok, Phase::Main),
        ])
        .unwrap();
        w.tx.send(vec![rec(1_002_500, 100, 3, Status::Timeout, Phase::Main)])
            .unwrap();
        let agg = w.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 4);
        assert!(text.starts_with("timestamp,messageType,latencyMs,statusCode,roomId\n"));
        assert!(text.contains(",TIMEOUT,3\n"));
        assert_eq!(agg.rows, 3);
        assert_eq!(agg.acked_per_second, vec![1, 0, 1]);
        assert_eq!(agg.main_acked_per_room, vec![0, 1, 0]);
        assert_eq!(agg.acked_per_type, [0, 2, 0]);
        assert_eq!(agg.per_status[0], 2);
        assert!(agg.stages.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn open_loop_records_are_counted_by_stage_and_by_the_window_their_ack_fell_in() {
        // Two 1-second stages. A message due at 0.5 s, sent 0.2 s late and
        // acked 0.4 s after that, counts in stage 1 (due) with 0.4 s from
        // the send and 0.6 s from its intended time, its ack in stage 2's
        // window (at 1.1 s); one acked after the schedule's end; a failure
        // counts its lag only.
        let dir = std::env::temp_dir().join(format!("chatflow-csv-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.csv");
        let schedule = Schedule::ramp(&[
            (10.0, Duration::from_secs(1)),
            (10.0, Duration::from_secs(1)),
        ])
        .unwrap();
        let w = CsvWriter::spawn(&path, 1_000_000, 1, false, Some(schedule)).unwrap();
        let scheduled = |due_us: u64, stage: u16, lag_us: u32, latency_us: u32, status| Record {
            due_us,
            stage,
            lag_us,
            ..rec(1_000_000, latency_us, 1, status, Phase::Main)
        };
        w.tx.send(vec![
            scheduled(500_000, 0, 200_000, 400_000, Status::Ok),
            scheduled(1_900_000, 1, 0, 300_000, Status::Ok),
            scheduled(1_000_000, 1, 50_000, 10_000, Status::Timeout),
            rec(1_000_000, 10, 1, Status::Ok, Phase::Warmup),
        ])
        .unwrap();
        let agg = w.finish().unwrap();
        let (a, b) = (&agg.stages[0], &agg.stages[1]);
        assert_eq!((a.acked, a.failed, a.acked_in_window), (1, 0, 0));
        assert_eq!((b.acked, b.failed, b.acked_in_window), (1, 1, 1));
        assert_eq!(agg.acked_after_schedule, 1);
        let ms = |l: &Latencies| l.stats().unwrap().max;
        assert!((ms(&a.ack) - 400.0).abs() < 1.0);
        assert!((ms(&a.ack_corrected) - 600.0).abs() < 1.0);
        assert!((ms(&a.lag) - 200.0).abs() < 1.0);
        assert_eq!(b.lag.count(), 2, "the failure's lag counts too");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
