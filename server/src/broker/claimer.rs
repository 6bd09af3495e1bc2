//! The claim stage in front of each RabbitMQ publisher: takes the messages
//! workers hand over, claims the named ones in the sent log
//! ([`super::sent_log`], one Redis round trip per burst), and passes them on
//! to the publisher in the order they came, a retry's body already carrying
//! its first send's id.
//!
//! Why a thread of its own: when the publisher made the round trip itself,
//! every confirm and every other publish waited behind it (0.5–7 ms under
//! load), so at 64 messages in flight the broker sat idle during each claim.
//! Now the next burst is claimed while the publisher publishes the last one
//! and reads confirms; per-sender order holds because both stages keep
//! FIFO order and a sender always goes through the same pair.
//!
//! Refusals made here never reach the broker: while the publisher's link is
//! down (`UNAVAILABLE` at once, no claim written) and when the log cannot be
//! reached (a named message cannot be told from a retry). On shutdown, what
//! is still queued is refused; the publisher refuses what it has not taken
//! until this stage has gone, so nothing is left unanswered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, SendTimeoutError, Sender};

use super::link_state::LinkState;
use super::publish_metrics::PublishMetrics;
use super::rabbitmq::PublishRequest;
use super::sent_log::{Claim, SentLog};
use crate::fanout::{Fanout, FirstSent, PublishError, WorkerEvent};
use chatflow_broker::retry::is_shutdown;
use chatflow_broker::Shutdown;
use chatflow_protocol::Envelope;

/// Requests taken from the queue for one sent-log round trip.
const CLAIM_BURST: usize = 256;
/// Claimed messages waiting for the publisher: four bursts, so it always
/// has a full one ready. Small on purpose: what waits beyond it waits in
/// the workers' queue (`--publish-queue`), where the bound is enforced.
pub const HANDOVER_QUEUE: usize = 4 * CLAIM_BURST;
/// While the publisher's queue is full, how often shutdown is looked at.
const HANDOVER_POLL: Duration = Duration::from_millis(50);

/// A message ready to publish: new (`first` is `None`) or a retry whose
/// body already carries the first send's id and time.
pub struct Claimed {
    pub request: PublishRequest,
    pub first: Option<FirstSent>,
}

pub struct Claimer {
    index: usize,
    sent_log: SentLog,
    requests: Receiver<PublishRequest>,
    claimed: Sender<Claimed>,
    state: Arc<LinkState>,
    fanout: Fanout,
    metrics: Arc<PublishMetrics>,
    shutdown: Shutdown,
    /// Bursts refused for want of the sent log (its log thins out).
    claim_failures: u64,
}

/// The stage stopped handing over: shutdown was signalled, or the
/// publisher is gone (it drops its receiver only when it stops). Either
/// way the request at hand and the rest of its burst were refused.
struct Stopped;

impl Claimer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: usize,
        sent_log: SentLog,
        requests: Receiver<PublishRequest>,
        claimed: Sender<Claimed>,
        state: Arc<LinkState>,
        fanout: Fanout,
        metrics: Arc<PublishMetrics>,
        shutdown: Shutdown,
    ) -> Self {
        Claimer {
            index,
            sent_log,
            requests,
            claimed,
            state,
            fanout,
            metrics,
            shutdown,
            claim_failures: 0,
        }
    }

    /// Claims and hands over until shutdown or until every worker's sender
    /// is gone; then refuses what is still queued. Dropping `self` closes
    /// the publisher's queue, which is how the publisher learns this stage
    /// has gone.
    pub fn run(mut self) {
        loop {
            select! {
                recv(self.requests) -> request => {
                    let Ok(request) = request else { return };
                    let mut burst = Vec::with_capacity(16);
                    burst.push(request);
                    burst.extend(self.requests.try_iter().take(CLAIM_BURST - 1));
                    if self.claim_and_hand_over(burst).is_err() {
                        break;
                    }
                }
                recv(self.shutdown) -> _ => break,
            }
        }
        for request in self.requests.try_iter() {
            answer(&self.fanout, request, Err(PublishError::ShuttingDown));
        }
    }

    fn claim_and_hand_over(&mut self, burst: Vec<PublishRequest>) -> Result<(), Stopped> {
        if !self.state.is_up() {
            // The publisher would refuse them anyway; claiming names for
            // messages that are never sent only costs Redis writes.
            for request in burst {
                answer(&self.fanout, request, Err(PublishError::Unreachable));
            }
            return Ok(());
        }
        let mut answers = self.claim(&burst);
        let mut burst = burst.into_iter();
        while let Some(mut request) = burst.next() {
            let first = match (&request.claim, answers.as_mut()) {
                (None, _) => None,
                (Some(_), None) => {
                    answer(&self.fanout, request, Err(PublishError::SendLogUnreachable));
                    continue;
                }
                (Some(_), Some(answers)) => answers.next().flatten(),
            };
            if let Some(first) = first {
                match retry_body(&request.body, first) {
                    Some(body) => request.body = body,
                    None => {
                        // Our own envelope always decodes; never publish a
                        // second id for a named retry.
                        answer(&self.fanout, request, Err(PublishError::SendLogUnreachable));
                        continue;
                    }
                }
            }
            if let Err(stopped) = self.hand_over(Claimed { request, first }) {
                for rest in burst {
                    answer(&self.fanout, rest, Err(PublishError::ShuttingDown));
                }
                return Err(stopped);
            }
        }
        Ok(())
    }

    /// The sent log's answer for each named request of the burst, in
    /// order; `None` when the log could not be reached.
    fn claim(&mut self, burst: &[PublishRequest]) -> Option<std::vec::IntoIter<Option<FirstSent>>> {
        let claims: Vec<&Claim> = burst.iter().filter_map(|r| r.claim.as_ref()).collect();
        if claims.is_empty() {
            return Some(Vec::new().into_iter());
        }
        let start = Instant::now();
        let claimed = self.sent_log.claim(&claims);
        self.metrics.claim_latency.observe_duration(start.elapsed());
        match claimed {
            Ok(answers) => Some(answers.into_iter()),
            Err(reason) => {
                if self.claim_failures % 100 == 0 {
                    tracing::warn!(
                        "publisher-{}: sent log unavailable, refusing named messages: {reason}",
                        self.index
                    );
                }
                self.claim_failures += 1;
                None
            }
        }
    }

    /// Queues one message for the publisher, waiting while its queue is
    /// full (the workers' queue in front then fills, and workers refuse
    /// with `QUEUE_FULL`), but never past shutdown.
    fn hand_over(&self, mut claimed: Claimed) -> Result<(), Stopped> {
        loop {
            match self.claimed.send_timeout(claimed, HANDOVER_POLL) {
                Ok(()) => return Ok(()),
                Err(SendTimeoutError::Timeout(back)) => {
                    if is_shutdown(&self.shutdown) {
                        answer(&self.fanout, back.request, Err(PublishError::ShuttingDown));
                        return Err(Stopped);
                    }
                    claimed = back;
                }
                Err(SendTimeoutError::Disconnected(back)) => {
                    answer(&self.fanout, back.request, Err(PublishError::ShuttingDown));
                    return Err(Stopped);
                }
            }
        }
    }
}

fn answer(
    fanout: &Fanout,
    request: PublishRequest,
    result: Result<Option<FirstSent>, PublishError>,
) {
    let ticket = request.ticket;
    fanout.send_to(ticket.worker, WorkerEvent::Published { ticket, result });
}

/// The body of a retry: the envelope as the retry built it, with the
/// first send's id and server time, so storage and broadcast see one
/// message.
fn retry_body(body: &[u8], first: FirstSent) -> Option<Vec<u8>> {
    let mut envelope = Envelope::decode(body).ok()?;
    envelope.message_id = first.message_id;
    envelope.server_timestamp = first.server_time;
    Some(envelope.encode())
}
