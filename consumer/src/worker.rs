//! One consumer thread (`consumer-r{room}s{shard}`): it owns one queue's
//! channel and consumer, its Redis connection and its in-hand deliveries.
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
//! of the good ones in one Redis pipeline (retried until Redis takes it);
//! then settle in tag order — one `ack(multiple)` per run of finished
//! deliveries, `nack(requeue = false)` for each undecodable one (and,
//! later, each one whose row the database refused), which the queue's
//! dead-letter exchange routes to the dead-letter queue. An ack is
//! only ever sent after the broadcast it stands for was published.
//!
//! A lost channel (stream ended, failed ack, cancelled consumer) drops
//! what is in hand — the broker redelivers it, flagged `redelivered` — and
//! asks the link for a new channel after a short back-off.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use amiquip::{Channel, Consumer, ConsumerMessage, ConsumerOptions, Delivery};
use chatflow_protocol::{Envelope, Topology};
use crossbeam_channel::{never, select, Receiver, Sender, TryRecvError};

use crate::broadcast::{Broadcaster, Published};
use crate::inhand::{InHand, Mark, Settle};
use crate::link::{Lease, Request};
use crate::stats::{add, Shared, ThreadStats};
use crate::writer::{Pending, Row};
use chatflow_broker::retry::{wait, Backoff, Shutdown};

/// Undecodable deliveries logged per thread before the log goes quiet
/// (they are all counted, and all in the dead-letter queue to inspect).
const POISON_LOG_LIMIT: u64 = 10;

/// A writer's report on rows it has dealt with, about deliveries received
/// on the channel of lease `epoch`.
#[derive(Clone, Debug, Default)]
pub struct Committed {
    pub epoch: u64,
    /// Committed: these deliveries may be acked.
    pub tags: Vec<u64>,
    /// Refused by the database on their own (a bad row, not an outage):
    /// these deliveries are poison, rejected to the dead-letter queue in
    /// tag order like undecodable ones.
    pub rejected: Vec<u64>,
}

impl Committed {
    /// Marks what the notice settles in `hand`.
    fn apply(self, hand: &mut InHand<Delivery>) {
        for tag in self.tags {
            hand.finish(tag);
        }
        for tag in self.rejected {
            hand.reject(tag);
        }
    }
}

/// Why [`Worker::consume`] returned.
enum Ended {
    Shutdown,
    Lost {
        error: String,
        /// Consuming failed at the start (e.g. the queue is missing).
        redeclare: bool,
    },
}

fn lost(error: impl ToString) -> Ended {
    Ended::Lost {
        error: error.to_string(),
        redeclare: false,
    }
}

/// What a non-delivery on the consumer stream means.
fn describe(message: ConsumerMessage) -> String {
    match message {
        ConsumerMessage::Delivery(_) => "unexpected delivery".to_string(),
        ConsumerMessage::ClientCancelled => "consumer cancelled".to_string(),
        ConsumerMessage::ServerCancelled => {
            "consumer cancelled by the broker (queue deleted?)".to_string()
        }
        ConsumerMessage::ClientClosedChannel => "channel closed".to_string(),
        ConsumerMessage::ServerClosedChannel(e) => format!("broker closed the channel: {e}"),
        ConsumerMessage::ClientClosedConnection => "connection closed".to_string(),
        ConsumerMessage::ServerClosedConnection(e) => format!("broker closed the connection: {e}"),
    }
}

/// The client timestamps (ms since the Unix epoch) an envelope may carry:
/// what RFC 3339 can state (years 0000..=9999), with a day of margin for
/// zone offsets. Servers never produce anything else, and far outside it a
/// row's timestamp cannot even be encoded (microseconds since 2000
/// overflow: a panic in a debug build's writer, a wrapped garbage value in
/// release), so such an envelope is poison from the start. (The server
/// timestamp travels as RFC 3339 text, which its parser already bounds.)
const CLIENT_TIMESTAMPS_MS: std::ops::RangeInclusive<i64> =
    -62_167_305_600_000..=253_402_387_199_999;

/// A good delivery's room, broadcast frame, server time and (when it is to
/// be stored) row, or why it is poison.
fn broadcast_of(
    body: &[u8],
    topology: &Topology,
    with_row: bool,
) -> Result<(u32, String, i64, Option<Row>), String> {
    let envelope = Envelope::decode(body).map_err(|e| format!("not an envelope: {e}"))?;
    if !topology.rooms.contains(envelope.room_id) {
        return Err(format!(
            "room {} is not one of {}",
            envelope.room_id, topology.rooms
        ));
    }
    if !CLIENT_TIMESTAMPS_MS.contains(&envelope.client_timestamp_ms) {
        return Err(format!(
            "clientTimestampMs {} is outside years 0000..=9999",
            envelope.client_timestamp_ms
        ));
    }
    Ok((
        envelope.room_id,
        envelope.broadcast_json(),
        envelope.server_timestamp.0,
        with_row.then(|| Row::from_envelope(&envelope)),
    ))
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

/// Everything one consumer thread owns.
pub struct Worker {
    pub index: usize,
    pub name: String,
    pub room: u32,
    pub queue: String,
    pub topology: Topology,
    /// This room's Redis channel, named once.
    pub redis_channel: String,
    pub shared: Arc<Shared>,
    pub broadcaster: Broadcaster,
    /// This thread's link and its slot there.
    pub link: Sender<Request>,
    pub slot: usize,
    pub leases: Receiver<Lease>,
    pub commits: Receiver<Committed>,
    /// Where rows go to be stored (persistence on); their commits come
    /// back on `commits`.
    pub rows: Option<Sender<Vec<Pending>>>,
    pub shutdown: Shutdown,
}

impl Worker {
    fn stats(&self) -> &ThreadStats {
        &self.shared.threads[self.index]
    }

    /// Consumes until shutdown, getting a new channel whenever one is lost.
    pub fn run(mut self, first: Lease) {
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
                        Err(_) => return,
                    },
                    recv(self.shutdown) -> _ => return,
                },
            };
            let started = Instant::now();
            match self.consume(current) {
                Ended::Shutdown => return,
                Ended::Lost { error, redeclare } => {
                    self.stats().amqp_up.store(false, Ordering::Relaxed);
                    eprintln!("{}: lost its channel: {error}", self.name);
                    // A channel that worked for a while earns a quick retry;
                    // one failing at once (queue missing, broker refusing)
                    // backs off further each time.
                    if started.elapsed() > self.shared.config.retry_max {
                        backoff.reset();
                    }
                    if wait(&self.shutdown, backoff.next_delay()) {
                        return;
                    }
                    let request = Request {
                        slot: self.slot,
                        error,
                        redeclare,
                    };
                    if self.link.send(request).is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Consumes on one channel until it is lost or shutdown comes.
    fn consume(&mut self, lease: Lease) -> Ended {
        let Lease { channel, epoch } = lease;
        if let Err(e) = channel.qos(0, self.shared.config.prefetch, false) {
            return lost(format!("qos: {e}"));
        }
        let consumer = match channel.basic_consume(self.queue.clone(), ConsumerOptions::default()) {
            Ok(consumer) => consumer,
            Err(e) => {
                return Ended::Lost {
                    error: format!("consuming {}: {e}", self.queue),
                    redeclare: true,
                }
            }
        };
        self.stats().amqp_up.store(true, Ordering::Relaxed);
        let mut hand = InHand::default();
        match self.pump(&channel, &consumer, epoch, &mut hand) {
            Ended::Shutdown => {
                self.stop(&channel, &consumer, epoch, &mut hand);
                self.stats().amqp_up.store(false, Ordering::Relaxed);
                drop(consumer);
                if let Err(e) = channel.close() {
                    eprintln!("{}: closing its channel: {e}", self.name);
                }
                Ended::Shutdown
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
                        Ok(other) => return lost(describe(other)),
                        Err(_) => return lost("delivery stream ended (connection gone)"),
                    };
                    let mut batch = Vec::with_capacity(ack_batch);
                    batch.push(first);
                    while hand.len() + batch.len() < ack_batch {
                        match deliveries.try_recv() {
                            Ok(ConsumerMessage::Delivery(delivery)) => batch.push(delivery),
                            // The channel died under the batch: it cannot be
                            // acked, so it is not broadcast either; the broker
                            // redelivers it.
                            Ok(other) => return lost(describe(other)),
                            Err(TryRecvError::Disconnected) => {
                                return lost("delivery stream ended (connection gone)")
                            }
                            Err(TryRecvError::Empty) => break,
                        }
                    }
                    if let Err(ended) = self.process(channel, epoch, batch, hand) {
                        return ended;
                    }
                }
                recv(self.commits) -> notice => match notice {
                    Ok(notice) if notice.epoch == epoch => {
                        notice.apply(hand);
                        if let Err(ended) = self.settle(channel, hand) {
                            return ended;
                        }
                    }
                    // About an earlier channel: those deliveries are being
                    // redelivered and will be committed and acked anew.
                    Ok(_) => {}
                    // Nobody can send commits any more: stop listening.
                    Err(_) => self.commits = never(),
                },
                recv(self.shutdown) -> _ => return Ended::Shutdown,
            }
        }
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
        let mut pipe = redis::pipe();
        let mut frames = 0u64;
        let mut oldest_ms = i64::MAX;
        let mut decoded = Vec::with_capacity(batch.len());
        for delivery in batch {
            match broadcast_of(&delivery.body, &self.topology, self.rows.is_some()) {
                Ok((room, frame, server_ms, row)) => {
                    if room == self.room {
                        pipe.publish(&self.redis_channel, frame.as_bytes()).ignore();
                    } else {
                        pipe.publish(self.topology.redis_channel(room), frame.as_bytes())
                            .ignore();
                    }
                    frames += 1;
                    oldest_ms = oldest_ms.min(server_ms);
                    decoded.push((delivery, Decoded::Good(row)));
                }
                Err(reason) => {
                    self.log_poison(&delivery, &reason);
                    decoded.push((delivery, Decoded::Poison));
                }
            }
        }
        let mut published = Published::Yes;
        if frames > 0 {
            let stats = &self.shared.threads[self.index];
            published = self.broadcaster.publish(&pipe, stats, &self.shutdown);
            if published == Published::Yes {
                let stats = self.stats();
                add(&stats.broadcasts, frames);
                add(&stats.batches, 1);
                let mut h = stats.histograms.lock();
                h.batch_size.saturating_record(size);
                // The batch's oldest message: how far behind this queue is.
                h.lag_ms
                    .saturating_record(now_ms().saturating_sub(oldest_ms).max(1) as u64);
            }
        }
        if published == Published::GaveUp {
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
                    return Err(Ended::Shutdown);
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
                    delivery
                        .ack_multiple(channel)
                        .map_err(|e| lost(format!("ack: {e}")))?;
                    add(&self.stats().acked, count as u64);
                }
                Settle::Reject(delivery) => {
                    delivery
                        .nack(channel, false)
                        .map_err(|e| lost(format!("nack: {e}")))?;
                    add(&self.stats().dead_lettered, 1);
                }
            }
        }
        Ok(())
    }

    /// Shutdown on a live channel: cancel the consumer, take what the
    /// broker had already sent until it confirms the cancel, then broadcast
    /// and settle it. Cancelling and draining before the consumer is dropped
    /// matters: dropping a busy consumer can tear the whole connection down.
    fn stop(
        &mut self,
        channel: &Channel,
        consumer: &Consumer<'_>,
        epoch: u64,
        hand: &mut InHand<Delivery>,
    ) {
        if let Err(e) = consumer.cancel() {
            eprintln!(
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
                    eprintln!("{}: cancel not confirmed ({e}); closing anyway", self.name);
                    break;
                }
            }
        }
        let ack_batch = self.shared.config.ack_batch;
        while !tail.is_empty() {
            let rest = tail.split_off(ack_batch.min(tail.len()));
            let batch = std::mem::replace(&mut tail, rest);
            if self.process(channel, epoch, batch, hand).is_err() {
                // Redis gave up or the channel failed: the rest stays unacked
                // and is redelivered to the next consumer.
                return;
            }
        }
        // Rows still being written: wait (bounded) for their commits, so
        // their deliveries are acked now rather than redelivered later.
        while !hand.is_empty() && self.rows.is_some() {
            match self.commits.recv_deadline(deadline) {
                Ok(notice) if notice.epoch == epoch => {
                    notice.apply(hand);
                    if self.settle(channel, hand).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }

    fn log_poison(&self, delivery: &Delivery, reason: &str) {
        let seen = self.stats().dead_lettered.load(Ordering::Relaxed);
        if seen < POISON_LOG_LIMIT {
            let body = &delivery.body[..delivery.body.len().min(120)];
            eprintln!(
                "{}: dead-lettering an undecodable message (tag {}, {reason}): {:?}",
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
    use chatflow_protocol::{ClientMessage, IdGenerator, Rooms, ServerFrame, ServerTime};

    #[test]
    fn envelopes_become_message_frames_and_garbage_is_poison() {
        let topology = Topology::new("t", Rooms::new(2).unwrap());
        let msg = ClientMessage::parse(
            r#"{"userId":"7","username":"user7","message":"hi","timestamp":"2026-11-27T02:00:00Z","messageType":"TEXT"}"#,
        )
        .unwrap();
        let id = IdGenerator::with_instance(1).next_id(1_795_744_800_000);
        let envelope = Envelope::accepted(&msg, 2, id, ServerTime(1_795_744_800_000), "s");
        let (room, frame, server_ms, row) =
            broadcast_of(&envelope.encode(), &topology, true).unwrap();
        let row = row.expect("a row when asked for one");
        assert_eq!(row.message_id, id.as_uuid());
        assert_eq!(row.user_id, 7);
        assert_eq!((room, server_ms), (2, 1_795_744_800_000));
        assert_eq!(frame, envelope.broadcast_json());
        assert!(matches!(
            ServerFrame::parse(&frame),
            Ok(ServerFrame::Message(_))
        ));

        assert!(broadcast_of(b"{not json", &topology, false).is_err());
        let elsewhere = Envelope::accepted(&msg, 3, id, ServerTime(0), "s");
        let err = broadcast_of(&elsewhere.encode(), &topology, false).unwrap_err();
        assert!(err.contains("room 3"), "{err}");

        // Timestamps no server produces, which a row could not even encode.
        for ms in [i64::MAX, i64::MIN] {
            let mut far = envelope.clone();
            far.client_timestamp_ms = ms;
            let err = broadcast_of(&far.encode(), &topology, true).unwrap_err();
            assert!(err.contains("clientTimestampMs"), "{err}");
        }
        // The edges of RFC 3339 years are fine.
        for ms in [-62_167_219_200_000, 253_402_300_799_999] {
            let mut edge = envelope.clone();
            edge.client_timestamp_ms = ms; // 0000-01-01T00:00:00Z, 9999-12-31T23:59:59.999Z
            assert!(broadcast_of(&edge.encode(), &topology, true).is_ok());
        }
    }
}
