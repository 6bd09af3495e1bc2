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
//! history as it is published ([`crate::broadcast`]; its reply is read
//! before the next ack, and a batch Redis did not take is published
//! again until it does);
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
//!
//! Several processes, one queue (single active consumer, see
//! [`crate::assignment`]): RabbitMQ delivers to one registration at a
//! time. Its standing is kept in [`Holding`]: `Waiting` from the
//! consume-ok, `Active` from the first delivery (the only sign AMQP gives).
//! A standby starts `Delayed` (`--standby-delay-secs`), and an active
//! standby hands its queue back as soon as the queue's owner advertises a
//! registration newer than its own ([`crate::owners`]): before touching
//! the delivery that showed it active, it leaves, like a shutdown, and
//! registers again (now behind the owner).
//!
//! Leaving a live channel — shutdown, the writer gone, handing back —
//! never sends `basic.cancel`. RabbitMQ (3.10's `rabbit_fifo`) answers a
//! cancel by activating the next waiting consumer at once while the
//! cancelled one keeps its unacked deliveries: whatever it then broadcasts
//! races the new consumer, and whatever it returns is redelivered *after*
//! messages the new one already took — either breaks per-sender order.
//! Instead the consumer takes nothing more, lets the rows it already
//! handed over commit (bounded by `--shutdown-grace-secs`) and acks them,
//! then closes the channel with its consumer still registered: the queue
//! puts every delivery still unacked back at its head, in delivery order,
//! and only then activates the next consumer, which gets them first.
//! So at every hand-over the new consumer starts exactly where the old one
//! stopped broadcasting; it may broadcast again (same `messageId`) what the
//! old one broadcast but could not ack, and storage keeps one row.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use amiquip::{Channel, Consumer, ConsumerMessage, ConsumerOptions, Delivery};
use chatflow_broker::retry::{wait, Backoff, Shutdown};
use chatflow_protocol::{Envelope, Rooms, Topology};
use crossbeam_channel::{never, select, Receiver, Sender, TryRecvError};

use crate::assignment::{Duty, Standby};
use crate::broadcast::{Batch, Broadcaster, Published};
use crate::counters::{add, QueueStats};
use crate::fault::{self, Site};
use crate::handoff::{Committed, Pending, Row};
use crate::holding::{unix_ms, Holding, Registration};
use crate::inhand::{InHand, Mark, Settle};
use crate::link::{ChannelLost, Lease, Request};
use crate::owners;
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
    /// A standby handed its queue back to the owner (it registers again).
    HandedBack,
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

/// A live registration's bookkeeping: `amqp_up` and the [`Holding`]
/// while it lasts, reset however the scope ends (a panic included), so
/// `/health` never shows a registration that is gone.
struct Registered<'a> {
    stats: &'a QueueStats,
    /// When it was made, Unix ms.
    at_ms: i64,
    active: bool,
}

impl<'a> Registered<'a> {
    fn start(stats: &'a QueueStats, tag: &str) -> Self {
        let at_ms = unix_ms();
        let registration = Registration {
            tag: tag.to_string(),
            at_ms,
            consumed_before: stats.consumed.load(Ordering::Relaxed),
        };
        *stats.holding.lock() = Holding::Waiting {
            since_ms: at_ms,
            registration,
        };
        stats.amqp_up.store(true, Ordering::Relaxed);
        Registered {
            stats,
            at_ms,
            active: false,
        }
    }

    /// A delivery arrived: this registration is the queue's active one.
    fn delivered(&mut self) {
        if self.active {
            return;
        }
        self.active = true;
        add(&self.stats.activations, 1);
        let mut holding = self.stats.holding.lock();
        if let Holding::Waiting { registration, .. } = &*holding {
            *holding = Holding::Active {
                since_ms: unix_ms(),
                registration: registration.clone(),
            };
        }
    }

    /// The queue's owner advertises a registration made after this one:
    /// it is registered, waiting behind us (see [`crate::owners`]).
    fn owner_is_back(&self) -> bool {
        let owner = self.stats.owner_registered_ms.load(Ordering::Relaxed);
        owner != 0 && owners::owner_is_newer(owner, self.at_ms)
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.stats.amqp_up.store(false, Ordering::Relaxed);
        *self.stats.holding.lock() = Holding::Unregistered {
            since_ms: unix_ms(),
        };
    }
}

/// Everything one queue consumer owns.
pub struct QueueConsumer {
    pub index: usize,
    pub name: String,
    pub room: u32,
    pub queue: String,
    /// Owner or standby of its queue.
    pub duty: Duty,
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
        if let (Duty::Standby, Standby::After(delay)) = (self.duty, config.assignment.standby) {
            if self.stand_by(delay) {
                return Ok(());
            }
        }
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
                Ended::HandedBack => {
                    add(&self.stats().yields, 1);
                    tracing::info!(
                        "{}: handed {} back to its owner (instance {}); registering again as its standby",
                        self.name,
                        self.queue,
                        self.shared.queue_of(self.index).owner
                    );
                    // At once: the owner has the queue; this registers
                    // behind it, to stand by again.
                    let request = Request {
                        slot: self.slot,
                        lost: ChannelLost::HandedBack,
                    };
                    if self.link.send(request).is_err() {
                        return Err(Stopped::LinkGone);
                    }
                }
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

    /// A standby's start-up delay, so owners started at the same time
    /// register first; true if shutdown came meanwhile.
    fn stand_by(&self, delay: Duration) -> bool {
        if delay.is_zero() {
            return false;
        }
        *self.stats().holding.lock() = Holding::Delayed {
            until_ms: unix_ms() + delay.as_millis() as i64,
        };
        if wait(&self.shutdown, delay) {
            return true;
        }
        *self.stats().holding.lock() = Holding::default();
        false
    }

    /// Consumes on one channel until it is lost, shutdown comes, the
    /// writer is gone or (a standby) it hands the queue back.
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
        let mut registered = Registered::start(shared.queue(self.index), consumer.consumer_tag());
        let mut hand = InHand::default();
        match self.pump(&channel, &consumer, epoch, &mut hand, &mut registered) {
            ended @ (Ended::Shutdown | Ended::WriterGone | Ended::HandedBack) => {
                // This channel is done with: settle what can be settled,
                // then close it with the consumer still registered (no
                // cancel: see the module's documentation). amiquip's
                // `Consumer` cancels when dropped, so it is forgotten
                // instead, keeping its delivery stream open until the
                // channel's close-ok (its I/O thread fails the whole
                // connection if a registered consumer's stream is gone).
                // That leaks the stream's handle, a few hundred bytes per
                // leave (shutdowns and hand-backs, both rare); what the
                // broker had sent and was never taken is read off and
                // dropped here: the broker has put it back.
                self.leave(&channel, epoch, &mut hand);
                let unread = consumer.receiver().clone();
                std::mem::forget(consumer);
                if let Err(e) = channel.close() {
                    tracing::warn!("{}: closing its channel: {e}", self.name);
                }
                drop(registered);
                for _ in unread.try_iter() {}
                ended
            }
            ended => {
                // The channel is gone: what is in hand will be redelivered.
                // Dropping a consumer on a dead channel cannot disturb the
                // connection's other channels (there is nothing to cancel).
                drop(registered);
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
        registered: &mut Registered<'_>,
    ) -> Ended {
        let ack_batch = self.shared.config.ack_batch;
        let deliveries = consumer.receiver();
        let standby = self.duty == Duty::Standby;
        loop {
            select! {
                recv(deliveries) -> message => {
                    let first = match message {
                        Ok(ConsumerMessage::Delivery(delivery)) => delivery,
                        Ok(other) => return ChannelLost::from(other).into(),
                        Err(_) => return ChannelLost::StreamEnded.into(),
                    };
                    registered.delivered();
                    // Checked before anything of this batch is broadcast:
                    // untouched, it goes back to the owner first.
                    if standby && registered.owner_is_back() {
                        return Ended::HandedBack;
                    }
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
        &mut self,
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
            let broadcasts = frames.len() as u64;
            if self.broadcaster.send(frames, stats, &self.shutdown) == Published::GaveUp {
                // Shutdown came while Redis was refusing: the batch is not
                // held (nothing waits for it), and stays unacked — every
                // ack this channel still sends covers only earlier tags —
                // so it is redelivered to the next consumer.
                drop(decoded);
                return Err(Ended::Shutdown);
            }
            add(&stats.broadcasts, broadcasts);
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

    /// Acks and rejects what may be settled, in tag order. An ack stands
    /// for a broadcast, so the replies of the batches sent are read first
    /// (see [`crate::broadcast`]).
    fn settle(&mut self, channel: &Channel, hand: &mut InHand<Delivery>) -> Result<(), Ended> {
        let plan = hand.settle();
        let acks = plan
            .iter()
            .any(|step| matches!(step, Settle::AckUpTo { .. }));
        if acks && self.broadcaster.unconfirmed() > 0 {
            let stats = self.shared.queue(self.index);
            if self.broadcaster.confirm(stats, &self.shutdown) == Published::GaveUp {
                // As in `process`: unacked, so redelivered.
                return Err(Ended::Shutdown);
            }
        }
        for step in plan {
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

    /// Leaving a live channel (shutdown, the writer gone, handing back):
    /// take no more deliveries, and wait (bounded by the shutdown grace)
    /// for the rows already handed to the writers to commit, acking them,
    /// so they are not redelivered. Everything else in hand stays unacked
    /// and goes back to the queue when the channel closes.
    fn leave(&mut self, channel: &Channel, epoch: u64, hand: &mut InHand<Delivery>) {
        if self.rows.is_none() {
            // Persistence off: a broadcast delivery was acked at once;
            // what is left is unbroadcast.
            return;
        }
        let deadline = Instant::now() + self.shared.config.shutdown_grace;
        while !hand.is_empty() {
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
