//! Resuming: a connection opened with `?since={position}` gets every
//! message of its room after that position, in room order, then one
//! `recovery` frame, then live broadcasts — with no gap and no duplicate
//! at the seam.
//!
//! The room's history is read off this thread, a page at a time, by the
//! history thread ([`crate::broker::history`]); its answers come through
//! the worker's inbox ([`replayed`]). The connection is a member of its
//! room from the start, so live broadcasts reach it while the history is
//! read; [`Replay`] holds them, in order, and when the last page is in
//! (one with fewer entries than asked for) it sends the replayed entries,
//! the `recovery` frame, then the held broadcasts that come after the last
//! replayed position. Positions only grow within a room, and a broadcast
//! is appended to the history before it is published, so anything live
//! at or before the last replayed position was replayed: it is dropped,
//! then and afterwards (a broadcast read in the last page can still be on
//! its way through the subscriber), until the first live one after it.
//!
//! Bounds: at most `replay_max` messages are replayed (past it the
//! `recovery` frame says `LIMIT`); a page is asked for only once the
//! connection's output has drained, so a slow reader slows its own replay
//! instead of being cut off as a slow reader; at most `live_buffer` live
//! broadcasts are held — past it they are dropped, since they are in the
//! history too, and the replay reads on until it has passed them (one page
//! more than it otherwise would, asked after the drop).

use std::collections::VecDeque;

use chatflow_protocol::frame::recovery_json;
use chatflow_protocol::{Position, Recovery, RecoveryReason};
use slab::Slab;
use tungstenite::{Message, Utf8Bytes};

use crate::output::FrameSpan;

use super::{Connection, Context, Next, Phase, Stage};
use crate::broker::history::HistoryRequest;
use crate::config::HistoryConfig;
use crate::fanout::{HistoryPage, Page};

/// One connection's resume.
#[derive(Debug)]
pub(super) struct Replay {
    /// The connection's slab key, which the history's answer comes back to.
    key: usize,
    room: u32,
    since: Position,
    /// The last position sent to the client (`since` before any).
    delivered: Position,
    replayed: u64,
    from_database: u64,
    /// The history no longer held everything after `since`.
    trimmed: bool,
    /// What the history said about the gap (no database, a failed fill).
    note: Option<String>,
    /// The first request (which checks the retention) has been sent.
    asked_before: bool,
    stage: ReplayStage,
}

#[derive(Debug)]
enum ReplayStage {
    /// Reading the history.
    Reading(Reading),
    /// Done: live broadcasts at or before `delivered` were replayed.
    Seam,
}

#[derive(Debug, Default)]
struct Reading {
    /// A request is with the history thread, for this many entries.
    asked: Option<usize>,
    /// The next request waits for the connection's output to drain.
    waiting_for_output: bool,
    /// Live broadcasts held meanwhile, oldest first.
    live: VecDeque<(Position, Utf8Bytes)>,
    /// Live broadcasts were dropped since the request in flight was sent:
    /// its answer may not hold them, so one more page must be read.
    dropped_live: bool,
}

/// What becomes of a live broadcast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Live {
    /// Send it (it is not from the history, or the replay is over).
    Send,
    /// Send it; it is the first after the replay, which is now over.
    SendAndEnd,
    /// Held until the replay is done.
    Hold,
    /// Already replayed (or dropped while held: the history has it).
    Drop,
}

/// What a page asks of the connection next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Nothing: the answer was stale.
    Wait,
    /// Ask for the next page.
    Ask,
    /// The replay is over; the seam (`recovery` frame and held broadcasts)
    /// is queued.
    Done,
}

impl Replay {
    pub(super) fn new(key: usize, room: u32, since: Position) -> Self {
        Replay {
            key,
            room,
            since,
            delivered: since,
            replayed: 0,
            from_database: 0,
            trimmed: false,
            note: None,
            asked_before: false,
            stage: ReplayStage::Reading(Reading::default()),
        }
    }

    fn total(&self) -> u64 {
        self.replayed + self.from_database
    }

    /// The request for the next page (see [`HistoryConfig`]). One entry
    /// more than the replay may still carry is asked for, so "exactly at
    /// the limit" and "past it" are told apart.
    pub(super) fn request(
        &mut self,
        worker: usize,
        connection_id: u64,
        config: &HistoryConfig,
    ) -> HistoryRequest {
        let max = config.replay_max as u64;
        let left = max.saturating_sub(self.total()) as usize;
        let count = config.page.min(left + 1).max(1);
        let first = (!self.asked_before).then_some(config.replay_max);
        self.asked_before = true;
        if let ReplayStage::Reading(reading) = &mut self.stage {
            reading.asked = Some(count);
            reading.waiting_for_output = false;
            reading.dropped_live = false;
        }
        HistoryRequest {
            worker,
            key: self.key,
            connection_id,
            room: self.room,
            after: self.delivered,
            count,
            first,
        }
    }

    /// The next request must wait until the output has drained.
    pub(super) fn wait_for_output(&mut self) {
        if let ReplayStage::Reading(reading) = &mut self.stage {
            reading.waiting_for_output = true;
        }
    }

    pub(super) fn waiting_for_output(&self) -> bool {
        matches!(&self.stage, ReplayStage::Reading(r) if r.waiting_for_output)
    }

    /// A live broadcast arrived (see the module docs).
    pub(super) fn on_live(
        &mut self,
        position: Option<Position>,
        frame: &Utf8Bytes,
        hold: usize,
    ) -> Live {
        // Not from the history: it cannot be placed in its order.
        let Some(position) = position else {
            return Live::Send;
        };
        if position <= self.delivered {
            return Live::Drop;
        }
        match &mut self.stage {
            ReplayStage::Reading(reading) => {
                if reading.live.len() >= hold {
                    reading.live.clear();
                    reading.dropped_live = true;
                    return Live::Drop;
                }
                reading.live.push_back((position, frame.clone()));
                Live::Hold
            }
            ReplayStage::Seam => Live::SendAndEnd,
        }
    }

    /// A page from the history: what to send goes to `out`, in order.
    pub(super) fn on_page(
        &mut self,
        result: Result<Page, String>,
        config: &HistoryConfig,
        out: &mut Vec<Utf8Bytes>,
    ) -> Step {
        let ReplayStage::Reading(reading) = &mut self.stage else {
            return Step::Wait;
        };
        let Some(asked) = reading.asked.take() else {
            return Step::Wait;
        };
        let read_on = reading.dropped_live;
        let page = match result {
            Ok(page) => page,
            Err(why) => return self.finish(Some(RecoveryReason::Unavailable), Some(why), out),
        };
        let max = config.replay_max as u64;
        self.trimmed |= page.trimmed;
        if page.note.is_some() {
            self.note = page.note;
        }
        let mut limited = page.database_truncated;
        for frame in page.from_database {
            if self.total() >= max {
                limited = true;
                break;
            }
            out.push(frame);
            self.from_database += 1;
        }
        let full = page.entries.len() >= asked;
        for (position, frame) in page.entries {
            if position <= self.delivered {
                continue;
            }
            if self.total() >= max {
                limited = true;
                break;
            }
            out.push(frame);
            self.delivered = position;
            self.replayed += 1;
        }
        if limited {
            let detail =
                format!("more than {max} messages follow since: resume from position for the rest");
            return self.finish(Some(RecoveryReason::Limit), Some(detail), out);
        }
        if full || read_on {
            return Step::Ask;
        }
        self.finish(None, None, out)
    }

    /// The history could not be asked: the replay ends unrecovered.
    pub(super) fn fail(&mut self, why: String, out: &mut Vec<Utf8Bytes>) {
        self.finish(Some(RecoveryReason::Unavailable), Some(why), out);
    }

    /// Queues the seam: the `recovery` frame, then the held broadcasts
    /// that come after the last replayed position.
    fn finish(
        &mut self,
        reason: Option<RecoveryReason>,
        detail: Option<String>,
        out: &mut Vec<Utf8Bytes>,
    ) -> Step {
        let ReplayStage::Reading(reading) = std::mem::replace(&mut self.stage, ReplayStage::Seam)
        else {
            return Step::Wait;
        };
        let reason = reason.or(self.trimmed.then_some(RecoveryReason::Trimmed));
        let mut details: Vec<String> = Vec::new();
        if self.trimmed {
            details.push("since is older than the room's retained history".to_string());
        }
        details.extend(self.note.take());
        details.extend(detail);
        let frame = Recovery {
            room_id: self.room,
            since: self.since,
            recovered: reason.is_none(),
            reason,
            replayed: self.replayed,
            from_database: self.from_database,
            position: self.delivered,
            detail: (!details.is_empty()).then(|| details.join("; ")),
        };
        out.push(Utf8Bytes::from(recovery_json(&frame)));
        for (position, frame) in reading.live {
            if position > self.delivered {
                out.push(frame);
                self.delivered = position;
            }
        }
        Step::Done
    }
}

impl Connection {
    /// Starts resuming after `since` (the connection has just joined
    /// `room`): asks for the first page.
    pub(super) fn start_replay(
        &mut self,
        key: usize,
        room: u32,
        since: Position,
        cx: &mut Context,
    ) -> Next {
        self.replay = Some(Box::new(Replay::new(key, room, since)));
        self.ask_history(cx)
    }

    /// Sends the next request to the history thread; if it cannot take
    /// one, the replay ends with `UNAVAILABLE`.
    fn ask_history(&mut self, cx: &mut Context) -> Next {
        let Some(replay) = self.replay.as_deref_mut() else {
            return Next::WAIT;
        };
        let request = replay.request(cx.index(), self.id, &cx.shared.config.history);
        let refused = match cx.broker.history() {
            Some(history) => history.ask(request).err(),
            None => {
                Some("this server keeps no history to resume from (its broker is not rabbitmq)")
            }
        };
        let Some(why) = refused else {
            return Next::WAIT;
        };
        let mut out = Vec::new();
        replay.fail(why.to_string(), &mut out);
        self.send_all(out)
    }

    /// A live broadcast for this connection: sent, or held or dropped by
    /// its replay. `None` when not sent.
    pub(super) fn offer(
        &mut self,
        frame: &Utf8Bytes,
        span: FrameSpan,
        position: Option<Position>,
        hold: usize,
    ) -> Option<super::websocket::Sent> {
        if let Some(replay) = self.replay.as_deref_mut() {
            match replay.on_live(position, frame, hold) {
                Live::Hold | Live::Drop => return None,
                Live::SendAndEnd => self.replay = None,
                Live::Send => {}
            }
        }
        Some(self.queue_frame(span))
    }

    /// Once the output has drained (the end-of-turn flush): a replay that
    /// waited for it asks for its next page.
    pub(super) fn resume_replay(&mut self, cx: &mut Context) -> Next {
        match self.replay.as_deref() {
            Some(replay) if replay.waiting_for_output() => self.ask_history(cx),
            _ => Next::WAIT,
        }
    }

    fn take_page(&mut self, result: Result<Page, String>, cx: &mut Context) -> Next {
        if !matches!(
            self.phase,
            Phase::Open {
                stage: Stage::Live,
                ..
            }
        ) {
            return Next::WAIT;
        }
        let Some(replay) = self.replay.as_deref_mut() else {
            return Next::WAIT;
        };
        let mut out = Vec::new();
        let step = replay.on_page(result, &cx.shared.config.history, &mut out);
        let next = self.send_all(out);
        if step != Step::Ask || next.ends() {
            return next;
        }
        if self.blocked_on_write {
            if let Some(replay) = self.replay.as_deref_mut() {
                replay.wait_for_output();
            }
            return next;
        }
        next.and(self.ask_history(cx))
    }

    /// Queues frames in order; stops at the first that ends the connection.
    fn send_all(&mut self, frames: Vec<Utf8Bytes>) -> Next {
        let mut next = Next::WAIT;
        for frame in frames {
            next = next.and(self.send(Message::Text(frame)).next());
            if next.ends() {
                break;
            }
        }
        next
    }
}

/// The history's answer for one of this worker's connections, if it is
/// still there (keys are reused: the id says it is the same one). Returns
/// its key and what to do with it.
pub fn replayed(
    conns: &mut Slab<Connection>,
    cx: &mut Context,
    page: HistoryPage,
) -> Option<(usize, Next)> {
    let conn = conns
        .get_mut(page.key)
        .filter(|c| c.id == page.connection_id)?;
    Some((page.key, conn.take_page(page.result, cx)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(replay_max: usize, page: usize) -> HistoryConfig {
        HistoryConfig {
            replay_max,
            page,
            live_buffer: 4,
        }
    }

    fn frame(n: u64) -> Utf8Bytes {
        Utf8Bytes::from(format!("m{n}"))
    }

    fn entries(range: std::ops::RangeInclusive<u64>) -> Vec<(Position, Utf8Bytes)> {
        range.map(|n| (Position::new(n, 0), frame(n))).collect()
    }

    fn page(range: std::ops::RangeInclusive<u64>) -> Result<Page, String> {
        Ok(Page {
            entries: entries(range),
            ..Page::default()
        })
    }

    fn texts(out: &[Utf8Bytes]) -> Vec<String> {
        out.iter()
            .map(|f| match Recovery::parse(f) {
                Some(r) => format!("recovery:{}:{}", r.recovered, r.replayed),
                None => f.to_string(),
            })
            .collect()
    }

    fn live(replay: &mut Replay, n: u64) -> Live {
        replay.on_live(Some(Position::new(n, 0)), &frame(n), 4)
    }

    #[test]
    fn pages_then_the_seam_then_live_with_no_gap_or_duplicate() {
        let config = config(100, 3);
        let mut replay = Replay::new(7, 1, Position::new(10, 0));
        let first = replay.request(0, 9, &config);
        assert_eq!(
            (first.after, first.count, first.first),
            (Position::new(10, 0), 3, Some(100))
        );
        // Live broadcasts arrive while the history is read: 14 and 15 are
        // in the history too, 16 is not yet.
        assert_eq!(live(&mut replay, 9), Live::Drop);
        assert_eq!(live(&mut replay, 14), Live::Hold);
        assert_eq!(live(&mut replay, 15), Live::Hold);
        let mut out = Vec::new();
        assert_eq!(replay.on_page(page(11..=13), &config, &mut out), Step::Ask);
        let second = replay.request(0, 9, &config);
        assert_eq!((second.after, second.first), (Position::new(13, 0), None));
        assert_eq!(live(&mut replay, 16), Live::Hold);
        assert_eq!(replay.on_page(page(14..=15), &config, &mut out), Step::Done);
        assert_eq!(
            texts(&out),
            ["m11", "m12", "m13", "m14", "m15", "recovery:true:5", "m16"]
        );
        // 16 may still come again from the subscriber; 17 is new.
        assert_eq!(live(&mut replay, 16), Live::Drop);
        assert_eq!(live(&mut replay, 17), Live::SendAndEnd);
        let recovery = Recovery::parse(&out[5]).unwrap();
        assert_eq!(recovery.position, Position::new(15, 0));
        assert_eq!(recovery.since, Position::new(10, 0));
    }

    #[test]
    fn a_full_hold_is_dropped_and_read_back_from_the_history() {
        let config = config(100, 10);
        let mut replay = Replay::new(0, 1, Position::ZERO);
        replay.request(0, 1, &config);
        for n in 5..=8 {
            assert_eq!(live(&mut replay, n), Live::Hold);
        }
        // The fifth does not fit: the hold is dropped, history has them.
        assert_eq!(live(&mut replay, 9), Live::Drop);
        assert_eq!(live(&mut replay, 10), Live::Hold);
        let mut out = Vec::new();
        // The page in flight was read before 9 and 10 were appended.
        assert_eq!(replay.on_page(page(1..=8), &config, &mut out), Step::Ask);
        replay.request(0, 1, &config);
        assert_eq!(replay.on_page(page(9..=10), &config, &mut out), Step::Done);
        let expected: Vec<String> = (1..=10)
            .map(|n| format!("m{n}"))
            .chain(["recovery:true:10".to_string()])
            .collect();
        assert_eq!(texts(&out), expected);
    }

    #[test]
    fn the_limit_is_exact_and_said() {
        // Exactly replay_max messages: recovered.
        let config = config(5, 10);
        let mut replay = Replay::new(0, 1, Position::ZERO);
        assert_eq!(replay.request(0, 1, &config).count, 6);
        let mut out = Vec::new();
        assert_eq!(replay.on_page(page(1..=5), &config, &mut out), Step::Done);
        assert_eq!(texts(&out).last().unwrap(), "recovery:true:5");
        // One more: LIMIT, and the position to resume from.
        let mut replay = Replay::new(0, 1, Position::ZERO);
        replay.request(0, 1, &config);
        let mut out = Vec::new();
        assert_eq!(replay.on_page(page(1..=6), &config, &mut out), Step::Done);
        let recovery = Recovery::parse(out.last().unwrap()).unwrap();
        assert_eq!(recovery.reason, Some(RecoveryReason::Limit));
        assert_eq!(
            (recovery.replayed, recovery.position),
            (5, Position::new(5, 0))
        );
    }

    #[test]
    fn a_trimmed_history_is_filled_and_said() {
        let config = config(100, 10);
        let mut replay = Replay::new(0, 1, Position::new(3, 0));
        replay.request(0, 1, &config);
        let filled = Page {
            entries: entries(50..=52),
            trimmed: true,
            from_database: vec![frame(4), frame(5)],
            ..Page::default()
        };
        let mut out = Vec::new();
        assert_eq!(replay.on_page(Ok(filled), &config, &mut out), Step::Done);
        assert_eq!(
            texts(&out),
            ["m4", "m5", "m50", "m51", "m52", "recovery:false:3"]
        );
        let recovery = Recovery::parse(out.last().unwrap()).unwrap();
        assert_eq!(recovery.reason, Some(RecoveryReason::Trimmed));
        assert_eq!(recovery.from_database, 2);
    }

    #[test]
    fn an_unreadable_history_still_delivers_what_was_held() {
        let config = config(100, 10);
        let mut replay = Replay::new(0, 1, Position::new(3, 0));
        replay.request(0, 1, &config);
        assert_eq!(live(&mut replay, 7), Live::Hold);
        let mut out = Vec::new();
        let step = replay.on_page(Err("Redis down".to_string()), &config, &mut out);
        assert_eq!(step, Step::Done);
        let recovery = Recovery::parse(&out[0]).unwrap();
        assert_eq!(recovery.reason, Some(RecoveryReason::Unavailable));
        assert_eq!(recovery.detail.as_deref(), Some("Redis down"));
        assert_eq!(texts(&out[1..]), ["m7"]);
        // A stale answer afterwards changes nothing.
        assert_eq!(replay.on_page(page(1..=2), &config, &mut out), Step::Wait);
        // Broadcasts not from the history pass whatever the stage.
        assert_eq!(replay.on_live(None, &frame(0), 4), Live::Send);
    }
}
