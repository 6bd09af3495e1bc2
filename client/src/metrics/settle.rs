//! The end of a load run: fetch the document for the run's window and,
//! because the consumers commit asynchronously (a message is stored up to
//! ~0.5-1 s after its ack: the flush interval plus the COPY and commit),
//! poll until the stored count (`analytics.totalMessages`) reaches the
//! acked count, stops growing, or the wait's bound passes.
//!
//! A stored count below the acked count after the wait is a finding about
//! the pipeline, not a client error; a fetch that fails is reported, never
//! raised: metrics must not fail a load run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::ApiError;
use crate::metrics::fetch::{Api, Fetched};
use crate::metrics::request::QueryParam;

/// Between polls: the consumers' default flush interval (500 ms), since
/// polling faster than batches commit learns nothing new, and each poll
/// is a whole `/api/metrics` (its top users scan the window's rows).
pub const POLL_EVERY: Duration = Duration::from_millis(500);

/// A count unchanged this long has stopped growing: four flush intervals
/// without a commit for the window means no batch of it is still coming
/// (a backlog draining would keep the count moving).
pub const STALL_AFTER: Duration = Duration::from_secs(2);

/// How the wait went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitEnd {
    /// The stored count reached the acked count.
    Reached,
    /// The count did not grow for [`STALL_AFTER`].
    Stalled,
    /// The wait's bound passed while the count was still growing.
    Limit,
    /// The document has no stored count (its analytics part failed).
    NoCount,
    /// Ctrl-C: one fetch, no wait.
    Interrupted,
    /// A later poll failed; the last good document is kept.
    LaterPollFailed,
}

impl WaitEnd {
    /// As in `summary.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            WaitEnd::Reached => "reached",
            WaitEnd::Stalled => "stalled",
            WaitEnd::Limit => "limit",
            WaitEnd::NoCount => "noCount",
            WaitEnd::Interrupted => "interrupted",
            WaitEnd::LaterPollFailed => "laterPollFailed",
        }
    }
}

/// What the polling got.
#[derive(Debug)]
pub struct Settled {
    /// The last document fetched, or the first fetch's error.
    pub result: Result<Fetched, ApiError>,
    /// `analytics.totalMessages` of that document.
    pub stored: Option<u64>,
    pub polls: u32,
    /// From the first request to the last answer.
    pub waited: Duration,
    /// `None` when the first fetch failed.
    pub end: Option<WaitEnd>,
}

/// Fetches the document with `params` until its stored count reaches
/// `acked`, stops growing or `bound` passes; `stop` (Ctrl-C) ends the wait
/// after the current fetch.
pub fn settle(
    api: &Api,
    params: &[QueryParam],
    acked: u64,
    bound: Duration,
    stop: &AtomicBool,
) -> Settled {
    let started = Instant::now();
    let mut polls = 0;
    let mut last: Option<(Fetched, Option<u64>)> = None;
    let mut grew_at = started;
    let end = loop {
        polls += 1;
        let fetched = match api.metrics(params) {
            Ok(f) => f,
            Err(e) => match last {
                None => {
                    return Settled {
                        result: Err(e),
                        stored: None,
                        polls,
                        waited: started.elapsed(),
                        end: None,
                    }
                }
                Some(_) => break WaitEnd::LaterPollFailed,
            },
        };
        let stored = fetched.document.stored_messages();
        let before = last.as_ref().and_then(|(_, n)| *n);
        last = Some((fetched, stored));
        let Some(n) = stored else {
            break WaitEnd::NoCount;
        };
        if n >= acked {
            break WaitEnd::Reached;
        }
        if stop.load(Ordering::Relaxed) {
            break WaitEnd::Interrupted;
        }
        if before.is_some_and(|b| n > b) {
            grew_at = Instant::now();
        }
        let now = Instant::now();
        if now.duration_since(grew_at) >= STALL_AFTER {
            break WaitEnd::Stalled;
        }
        let left = bound.saturating_sub(now.duration_since(started));
        if left.is_zero() {
            break WaitEnd::Limit;
        }
        thread::sleep(POLL_EVERY.min(left));
    };
    let (fetched, stored) = last.expect("a document was fetched before any break");
    Settled {
        result: Ok(fetched),
        stored,
        polls,
        waited: started.elapsed(),
        end: Some(end),
    }
}
