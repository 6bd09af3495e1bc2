//! One queue consumer ([`QueueConsumer`], thread `consumer-r{room}s{shard}`):
//! it owns one queue's channel and AMQP consumer, its Redis connection and
//! its in-hand deliveries.
//!
//! The loop `select!`s over three inputs:
//! - deliveries: the first one that arrives starts a batch, which takes
//!   whatever else is *already* there (`try_recv`) up to `ack_batch` in
//!   hand, then is processed at once — a partial batch never waits for
//!   messages that are not coming (with a prefetch of 100 that would stall
//!   the queue), and under load batches grow by themselves;
//! - commit notices ([`Committed`]): PostgreSQL writers report rows
//!   stored (persistence on: a delivery is acked once its row is
//!   committed, in tag order, however the writers' commits interleave) and
//!   rows the database refused (rejected like undecodable deliveries);
//! - shutdown.
//!
//! Processing a batch: decode every delivery; publish the `message` frames
//! of the good ones in one Redis pipeline, each appended to its room's
//! history as it is published ([`crate::broadcast`]; retried until Redis
//! takes it);
//! then settle in tag order — one `ack(multiple)` per run of finished
//! deliveries, `nack(requeue = false)` for each undecodable one (and,
//! later, each one whose row the database refused), which the queue's
//! dead-letter exchange routes to the dead-letter queue. An ack is
//! only ever sent after the broadcast it stands for was published.
//!
//! A lost channel (stream ended, failed ack, cancelled consumer) drops
//! what is in hand — the broker redelivers it, flagged `redelivered` — and
//! asks the link for a new channel after a short back-off. A queue
//! consumer whose writer or link is gone cannot do its job any more: it
//! settles what it can, closes its channel and stops, saying why
//! ([`Stopped`]), which `/health` reports.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use amiquip::{Channel, Consumer, ConsumerMessage, ConsumerOptions, Delivery};
use chatflow_broker::retry::{wait, Backoff, Shutdown};
use chatflow_protocol::{Envelope, Rooms, Topology};
use crossbeam_channel::{never, select, Receiver, Sender, TryRecvError};

use crate::broadcast::{Batch, Broadcaster, Published};
use crate::counters::{add, QueueStats};
use crate::fault::{self, Site};
use crate::handoff::{Committed, Pending, Row};
use crate::inhand::{InHand, Mark, Settle};
use crate::link::{ChannelLost, Lease, Request};
use crate::recent::RecentIds;
use crate::state::Shared;

/// Undecodable deliveries logged per consumer before the log goes quiet
/// (they are all counted, and all in the dead-letter queue to inspect).
const POISON_LOG_LIMIT: u64 = 10;

/// The client timestamps (ms since the Unix epoch) an envelope may carry:
/// what RFC 3339 can state (years 0000..=9999), with a day of margin for
/// zone offsets. Servers never produce anything else, and far outside it a
/// row's timestamp cannot even be encoded (microseconds since 2000
/// overflow: a panic in a debug build's writer, a wrapped garbage value in
/// release), so such an envelope is poison from the start. (The server
/// timestamp travels as RFC 3339 text, which its parser already bounds.)
const CLIENT_TIMESTAMPS_MS: std::ops::RangeInclusive<i64> =
    -62_167_305_600_000..=253_402_387_199_999;

/// Why a delivery is poison: it goes to the dead-letter queue.
#[derive(Debug, thiserror::Error)]
pub enum Poison {
    #[error("not an envelope: {0}")]
    NotAnEnvelope(#[source] serde_json::Error),
    #[error("room {room} is not one of {rooms}")]
    UnknownRoom { room: u32, rooms: Rooms },
    #[error("clientTimestampMs {0} is outside years 0000..=9999")]
    ClientTimestamp(i64),
}

/// What a good delivery gives: where and what to broadcast, and (when it
/// is to be stored) its row.
#[derive(Debug)]
pub struct Broadcast {
    pub message_id: chatflow_protocol::MessageId,
    pub room: u32,
    /// The `message` frame, exactly as clients receive it.
    pub frame: String,
    /// Server timestamp, ms since the Unix epoch (for the lag).
    pub server_ms: i64,
    pub row: Option<Row>,
}

/// Decodes a delivery's body: its broadcast, or why it is poison.
pub fn decode(body: &[u8], topology: &Topology, with_row: bool) -> Result<Broadcast, Poison> {
    let envelope = Envelope::decode(body).map_err(Poison::NotAnEnvelope)?;
    if !topology.rooms.contains(envelope.room_id) {
        return Err(Poison::UnknownRoom {
            room: envelope.room_id,
            rooms: topology.rooms,
        });
    }
    if !CLIENT_TIMESTAMPS_MS.contains(&envelope.client_timestamp_ms) {
        return Err(Poison::ClientTimestamp(envelope.client_timestamp_ms));
    }
    if fault::armed() {
        fault::strike(Site::QueueConsumer, &envelope.message);
    }
    Ok(Broadcast {
        message_id: envelope.message_id,
        room: envelope.room_id,
        frame: envelope.broadcast_json(),
        server_ms: envelope.server_timestamp.0,
        row: with_row.then(|| Row::from_envelope(&envelope)),
    })
}

/// Why a queue consumer stopped before shutdown.
#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    #[error("its PostgreSQL writer is gone: nothing it consumes can be stored")]
    WriterGone,
    #[error("its AMQP link thread is gone: it cannot get a channel")]
    LinkGone,
}

/// Why [`QueueConsumer::consume`] returned.
enum Ended {
    Shutdown,
    /// Boxed: amiquip's errors are large, and this travels up every
    /// `Result` of the hot path.
    Lost(Box<ChannelLost>),
    /// Rows cannot be handed over: the writer's input is closed.
    WriterGone,
}

impl From<ChannelLost> for Ended {
    fn from(lost: ChannelLost) -> Self {
        Ended::Lost(Box::new(lost))
    }
}

/// A delivery of a batch after decoding.
enum Decoded {
    /// Broadcast; with persistence on, its row to store.
    Good(Option<Row>),
    /// Undecodable: for the dead-letter queue.
    Poison,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Clears a "consuming" flag however the scope ends (a panic included), so
/// `/health` never counts a dead consumer as connected.
struct Consuming<'a>(&'a AtomicBool);

impl<'a> Consuming<'a> {
    fn start(flag: &'a AtomicBool) -> Self {
        flag.store(true, Ordering::Relaxed);
        Consuming(flag)
    }
}

impl Drop for Consuming<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Everything one queue consumer owns.
pub struct QueueConsumer {
    pub index: usize,
    pub name: String,
    pub room: u32,
    pub queue: String,
    pub topology: Topology,
    pub shared: Arc<Shared>,
    pub broadcaster: Broadcaster,
    /// This consumer's link and its slot there.
    pub link: Sender<Request>,
    pub slot: usize,
    pub leases: Receiver<Lease>,
    pub commits: Receiver<Committed>,
    /// Where rows go to be stored (persistence on); their commits come
    /// back on `commits`.
    pub rows: Option<Sender<Vec<Pending>>>,
    pub shutdown: Shutdown,
    /// Ids broadcast lately: a repeat is not broadcast again.
    pub recent: RecentIds,
}

impl QueueConsumer {
    fn stats(&self) -> &QueueStats {
        self.shared.queue(self.index)
    }

    /// Consumes until shutdown, getting a new channel whenever one is lost.
    /// Returns early only if it cannot go on (its writer or link gone).
    pub fn run(mut self, first: Lease) -> Result<(), Stopped> {
        let config = &self.shared.config;
        let mut backoff = Backoff::new(config.retry_min, config.retry_max, self.index as u64);
        let mut lease = Some(first);
        loop {
            let current = match lease.take() {
                Some(current) => current,
                None => select! {
                    recv(self.leases) -> next => match next {
                        Ok(next) => {
                            add(&self.stats().channel_reopens, 1);
                            next
                        }
                        Err(_) => return Err(Stopped::LinkGone),
                    },
                    recv(self.shutdown) -> _ => return Ok(()),
                },
            };
            let started = Instant::now();
            match self.consume(current) {
                Ended::Shutdown => return Ok(()),
                Ended::WriterGone => return Err(Stopped::WriterGone),
                Ended::Lost(lost) => {
                    tracing::warn!("{}: lost its channel: {lost}", self.name);
                    // A channel that worked for a while earns a quick retry;
                    // one failing at once (queue missing, broker refusing)
                    // backs off further each time.
                    if started.elapsed() > self.shared.config.retry_max {
                        backoff.reset();
                    }
                    if wait(&self.shutdown, backoff.next_delay()) {
                        return Ok(());
                    }
                    let request = Request {
                        slot: self.slot,
                        lost: *lost,
                    };
                    if self.link.send(request).is_err() {
                        return Err(Stopped::LinkGone);
                    }
                }
            }
        }
    }

    /// Consumes on one channel until it is lost, shutdown comes or the
    /// writer is gone.
    fn consume(&mut self, lease: Lease) -> Ended {
        let Lease { channel, epoch } = lease;
        if let Err(e) = channel.qos(0, self.shared.config.prefetch, false) {
            return ChannelLost::Qos(e).into();
        }
        let consumer = match channel.basic_consume(self.queue.clone(), ConsumerOptions::default()) {
            Ok(consumer) => consumer,
            Err(source) => {
                return ChannelLost::Consume {
                    queue: self.queue.clone(),
                    source,
                }
                .into()
            }
        };
        let shared = self.shared.clone();
        let consuming = Consuming::start(&shared.queue(self.index).amqp_up);
        let mut hand = InHand::default();
        match self.pump(&channel, &consumer, epoch, &mut hand) {
            ended @ (Ended::Shutdown | Ended::WriterGone) => {
                // Either way this channel is done with: settle what can
                // be settled and close it in order.
                self.stop(&channel, &consumer, epoch, &mut hand);
                drop(consuming);
                drop(consumer);
                if let Err(e) = channel.close() {
                    tracing::warn!("{}: closing its channel: {e}", self.name);
                }
                ended
            }
            ended => {
                // The channel is gone: what is in hand will be redelivered.
                // Dropping a consumer on a dead channel cannot disturb the
                // connection's other channels (there is nothing to cancel).
                drop(consumer);
                drop(channel);
                ended
            }
        }
    }

    /// The steady state: batches of deliveries, commit notices, shutdown.
    fn pump(
        &mut self,
        channel: &Channel,
        consumer: &Consumer<'_>,
        epoch: u64,
        hand: &mut InHand<Delivery>,
    ) -> Ended {
        let ack_batch = self.shared.config.ack_batch;
        let deliveries = consumer.receiver();
        loop {
            select! {
                recv(deliveries) -> message => {
                    let first = match message {
                        Ok(ConsumerMessage::Delivery(delivery)) => delivery,
                        Ok(other) => return ChannelLost::from(other).into(),
                        Err(_) => return ChannelLost::StreamEnded.into(),
                    };
                    let mut batch = Vec::with_capacity(ack_batch);
                    batch.push(first);
                    while hand.len() + batch.len() < ack_batch {
                        match deliveries.try_recv() {
                            Ok(ConsumerMessage::Delivery(delivery)) => batch.push(delivery),
                            // The channel died under the batch: it cannot be
                            // acked, so it is not broadcast either; the broker
                            // redelivers it.
                            Ok(other) => return ChannelLost::from(other).into(),
                            Err(TryRecvError::Disconnected) => {
                                return ChannelLost::StreamEnded.into()
                            }
                            Err(TryRecvError::Empty) => break,
                        }
                    }
                    if let Err(ended) = self.process(channel, epoch, batch, hand) {
                        return ended;
                    }
                }
                recv(self.commits) -> notice => match notice {
                    Ok(notice) => {
                        if let Err(ended) = self.on_notice(channel, epoch, notice, hand) {
                            return ended;
                        }
                    }
                    // Nobody can send commits any more: stop listening.
                    Err(_) => self.commits = never(),
                },
                recv(self.shutdown) -> _ => return Ended::Shutdown,
            }
        }
    }

    /// Marks what a writer's notice settles, and settles it. A notice about
    /// an earlier channel is ignored: those deliveries are being
    /// redelivered and will be committed and acked anew.
    fn on_notice(
        &self,
        channel: &Channel,
        epoch: u64,
        notice: Committed,
        hand: &mut InHand<Delivery>,
    ) -> Result<(), Ended> {
        if notice.epoch != epoch {
            return Ok(());
        }
        for tag in notice.tags {
            hand.finish(tag);
        }
        for tag in notice.rejected {
            hand.reject(tag);
        }
        self.settle(channel, hand)
    }

    /// Decodes, broadcasts and settles one batch.
    fn process(
        &mut self,
        channel: &Channel,
        epoch: u64,
        batch: Vec<Delivery>,
        hand: &mut InHand<Delivery>,
    ) -> Result<(), Ended> {
        let size = batch.len() as u64;
        add(&self.stats().consumed, size);
        let redelivered = batch.iter().filter(|d| d.redelivered).count() as u64;
        if redelivered > 0 {
            add(&self.stats().redelivered, redelivered);
        }
        let mut frames = Batch::with_capacity(batch.len());
        let mut oldest_ms = i64::MAX;
        // Each broadcast message's server time, for its lag.
        let mut sent_ms = Vec::with_capacity(batch.len());
        let mut decoded = Vec::with_capacity(batch.len());
        for delivery in batch {
            match decode(&delivery.body, &self.topology, self.rows.is_some()) {
                Ok(good) if !self.recent.first_time(good.message_id, Instant::now()) => {
                    // Broadcast already (a retry republished under its first
                    // id, or a redelivery): stored (deduplicated) and acked
                    // as usual, not shown to the room twice.
                    add(&self.stats().broadcasts_suppressed, 1);
                    decoded.push((delivery, Decoded::Good(good.row)));
                }
                Ok(good) => {
                    frames.push(good.room, good.frame);
                    oldest_ms = oldest_ms.min(good.server_ms);
                    sent_ms.push(good.server_ms);
                    decoded.push((delivery, Decoded::Good(good.row)));
                }
                Err(poison) => {
                    self.log_poison(&delivery, &poison);
                    decoded.push((delivery, Decoded::Poison));
                }
            }
        }
        if !frames.is_empty() {
            let stats = self.shared.queue(self.index);
            if self.broadcaster.publish(&frames, stats, &self.shutdown) == Published::GaveUp {
                // Unpublished: pending, a barrier no ack passes; redelivered
                // to the next consumer.
                for (delivery, decoded) in decoded {
                    let mark = match decoded {
                        Decoded::Good(_) => Mark::Pending,
                        Decoded::Poison => Mark::Poison,
                    };
                    hand.push(delivery, mark);
                }
                return Err(Ended::Shutdown);
            }
            add(&stats.broadcasts, frames.len() as u64);
            add(&stats.batches, 1);
            let now = now_ms();
            let mut h = stats.histograms.lock();
            h.batch_size.saturating_record(size);
            // The batch's oldest message: how far behind this queue is.
            h.lag_ms
                .saturating_record(now.saturating_sub(oldest_ms).max(1) as u64);
            drop(h);
            stats.buckets.batch.observe(size as f64);
            for ms in sent_ms {
                (stats.buckets.lag).observe(now.saturating_sub(ms).max(0) as f64 / 1000.0);
            }
        }
        match &self.rows {
            // Persistence off: the broadcast is the work an ack stands for.
            None => {
                for (delivery, decoded) in decoded {
                    let mark = match decoded {
                        Decoded::Good(_) => Mark::Finished,
                        Decoded::Poison => Mark::Poison,
                    };
                    hand.push(delivery, mark);
                }
            }
            // Persistence on: pending until the writers report the commit.
            // The batch goes over as one message; the channel holds more
            // batches than all consumers can have in hand (queues ×
            // prefetch), so this send does not block.
            Some(rows) => {
                let mut batch_rows = Vec::with_capacity(decoded.len());
                for (delivery, decoded) in decoded {
                    // Good deliveries have rows here (`with_row` above).
                    let Decoded::Good(Some(row)) = decoded else {
                        hand.push(delivery, Mark::Poison);
                        continue;
                    };
                    batch_rows.push(Pending {
                        row,
                        consumer: self.index,
                        epoch,
                        delivery_tag: delivery.delivery_tag(),
                        redelivered: delivery.redelivered,
                    });
                    hand.push(delivery, Mark::Pending);
                }
                if !batch_rows.is_empty() && rows.send(batch_rows).is_err() {
                    return Err(Ended::WriterGone);
                }
            }
        }
        self.settle(channel, hand)
    }

    /// Acks and rejects what may be settled, in tag order.
    fn settle(&self, channel: &Channel, hand: &mut InHand<Delivery>) -> Result<(), Ended> {
        for step in hand.settle() {
            match step {
                Settle::AckUpTo { delivery, count } => {
                    delivery.ack_multiple(channel).map_err(ChannelLost::Ack)?;
                    add(&self.stats().acked, count as u64);
                }
                Settle::Reject(delivery) => {
                    delivery.nack(channel, false).map_err(ChannelLost::Nack)?;
                    add(&self.stats().dead_lettered, 1);
                }
            }
        }
        Ok(())
    }

    /// Leaving a live channel (shutdown, or the writer gone): cancel the
    /// consumer, take what the broker had already sent until it confirms
    /// the cancel, then broadcast and settle it. Cancelling and draining
    /// before the consumer is dropped matters: dropping a busy consumer can
    /// tear the whole connection down.
    fn stop(
        &mut self,
        channel: &Channel,
        consumer: &Consumer<'_>,
        epoch: u64,
        hand: &mut InHand<Delivery>,
    ) {
        if let Err(e) = consumer.cancel() {
            tracing::warn!(
                "{}: cancel failed ({e}); in-hand deliveries will be redelivered",
                self.name
            );
            return;
        }
        let deadline = Instant::now() + self.shared.config.shutdown_grace;
        let mut tail = Vec::new();
        loop {
            match consumer.receiver().recv_deadline(deadline) {
                Ok(ConsumerMessage::Delivery(delivery)) => tail.push(delivery),
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!("{}: cancel not confirmed ({e}); closing anyway", self.name);
                    break;
                }
            }
        }
        let ack_batch = self.shared.config.ack_batch;
        while !tail.is_empty() {
            let rest = tail.split_off(ack_batch.min(tail.len()));
            let batch = std::mem::replace(&mut tail, rest);
            if self.process(channel, epoch, batch, hand).is_err() {
                // Redis gave up, the writer is gone or the channel failed:
                // the rest stays unacked and is redelivered to the next
                // consumer.
                return;
            }
        }
        // Rows still being written: wait (bounded) for their commits, so
        // their deliveries are acked now rather than redelivered later.
        while !hand.is_empty() && self.rows.is_some() {
            let Ok(notice) = self.commits.recv_deadline(deadline) else {
                break;
            };
            if self.on_notice(channel, epoch, notice, hand).is_err() {
                return;
            }
        }
    }

    fn log_poison(&self, delivery: &Delivery, poison: &Poison) {
        let seen = self.stats().dead_lettered.load(Ordering::Relaxed);
        if seen < POISON_LOG_LIMIT {
            let body = &delivery.body[..delivery.body.len().min(120)];
            tracing::warn!(
                "{}: dead-lettering an undecodable message (tag {}, {poison}): {:?}",
                self.name,
                delivery.delivery_tag(),
                String::from_utf8_lossy(body)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatflow_protocol::{ClientMessage, IdGenerator, ServerFrame, ServerTime};

    #[test]
    fn envelopes_become_message_frames_and_garbage_is_poison() {
        let topology = Topology::new("t", Rooms::new(2).unwrap());
        let msg = ClientMessage::parse(
            r#"{"userId":"7","username":"user7","message":"hi","timestamp":"2026-11-27T02:00:00Z","messageType":"TEXT"}"#,
        )
        .unwrap();
        let id = IdGenerator::with_instance(1).next_id(1_795_744_800_000);
        let envelope = Envelope::accepted(&msg, 2, id, ServerTime(1_795_744_800_000), "s");
        let good = decode(&envelope.encode(), &topology, true).unwrap();
        let row = good.row.expect("a row when asked for one");
        assert_eq!(row.message_id, id.as_uuid());
        assert_eq!(row.user_id, 7);
        assert_eq!((good.room, good.server_ms), (2, 1_795_744_800_000));
        assert_eq!(good.frame, envelope.broadcast_json());
        assert!(matches!(
            ServerFrame::parse(&good.frame),
            Ok(ServerFrame::Message(_))
        ));

        assert!(matches!(
            decode(b"{not json", &topology, false),
            Err(Poison::NotAnEnvelope(_))
        ));
        let elsewhere = Envelope::accepted(&msg, 3, id, ServerTime(0), "s");
        let err = decode(&elsewhere.encode(), &topology, false).unwrap_err();
        assert!(matches!(err, Poison::UnknownRoom { room: 3, .. }), "{err}");
        assert!(err.to_string().contains("room 3"), "{err}");

        // Timestamps no server produces, which a row could not even encode.
        for ms in [i64::MAX, i64::MIN] {
            let mut far = envelope.clone();
            far.client_timestamp_ms = ms;
            let err = decode(&far.encode(), &topology, true).unwrap_err();
            assert!(
                matches!(err, Poison::ClientTimestamp(t) if t == ms),
                "{err}"
            );
            assert!(err.to_string().contains("clientTimestampMs"), "{err}");
        }
        // The edges of RFC 3339 years are fine.
        for ms in [-62_167_219_200_000, 253_402_300_799_999] {
            let mut edge = envelope.clone();
            edge.client_timestamp_ms = ms; // 0000-01-01T00:00:00Z, 9999-12-31T23:59:59.999Z
            assert!(decode(&edge.encode(), &topology, true).is_ok());
        }
    }
}
