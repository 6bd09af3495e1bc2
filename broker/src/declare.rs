//! Declaring the topology on RabbitMQ: the direct exchange, a quorum queue
//! per (room, shard) bound by its routing key, and the dead-letter path
//! (a quorum queue as well, so no single node's loss blocks a declaration).
//! Server and consumer both declare at start-up and after every reconnect;
//! declaring is idempotent, and fails if the arguments differ from an
//! existing queue's (which is why both take them from the same settings).

use amiquip::{
    AmqpValue, Channel, ExchangeDeclareOptions, ExchangeType, FieldTable, QueueDeclareOptions,
    QueueDeleteOptions,
};
use chatflow_protocol::{routing_key, Topology};

/// Declaring (and deleting, for tests) a [`Topology`] on a channel.
pub trait Declare {
    /// Declares exchange, queues, bindings and the dead-letter path.
    fn declare(&self, channel: &Channel) -> amiquip::Result<()>;
    /// Deletes everything [`Declare::declare`] made (tests, benchmarks).
    fn delete(&self, channel: &Channel) -> amiquip::Result<()>;
}

impl Declare for Topology {
    /// Declares exchange, queues, bindings and the dead-letter path.
    fn declare(&self, channel: &Channel) -> amiquip::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let exchange =
            channel.exchange_declare(ExchangeType::Direct, self.exchange(), durable.clone())?;
        let dlx =
            channel.exchange_declare(ExchangeType::Fanout, self.dead_letter_exchange(), durable)?;
        // A quorum queue too: a classic queue lives on one node, and while
        // that node is down every declaration of the topology — each
        // publisher's and consumer's reconnect — fails (404, "home node …
        // is down"), which stopped all publishing for a node's whole outage.
        let mut dlq_arguments = FieldTable::new();
        dlq_arguments.insert(
            "x-queue-type".into(),
            AmqpValue::LongString("quorum".into()),
        );
        if let Some(size) = self.quorum_initial_group_size {
            dlq_arguments.insert(
                "x-quorum-initial-group-size".into(),
                AmqpValue::LongInt(size as i32),
            );
        }
        let dlq = channel.queue_declare(
            self.dead_letter_queue(),
            QueueDeclareOptions {
                durable: true,
                arguments: dlq_arguments,
                ..QueueDeclareOptions::default()
            },
        )?;
        dlq.bind(&dlx, "", FieldTable::new())?;

        let mut arguments = FieldTable::new();
        arguments.insert(
            "x-queue-type".into(),
            AmqpValue::LongString("quorum".into()),
        );
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AmqpValue::LongString(self.dead_letter_exchange()),
        );
        arguments.insert(
            "x-delivery-limit".into(),
            AmqpValue::LongInt(self.delivery_limit as i32),
        );
        if self.single_active_consumer {
            arguments.insert("x-single-active-consumer".into(), AmqpValue::Boolean(true));
        }
        if let Some(size) = self.quorum_initial_group_size {
            arguments.insert(
                "x-quorum-initial-group-size".into(),
                AmqpValue::LongInt(size as i32),
            );
        }
        if let Some(max) = self.queue_max_length {
            arguments.insert("x-max-length".into(), AmqpValue::LongInt(max as i32));
            arguments.insert(
                "x-overflow".into(),
                AmqpValue::LongString("reject-publish".into()),
            );
        }
        for (room, shard) in self.shards() {
            let queue = channel.queue_declare(
                self.queue(room, shard),
                QueueDeclareOptions {
                    durable: true,
                    arguments: arguments.clone(),
                    ..QueueDeclareOptions::default()
                },
            )?;
            queue.bind(&exchange, routing_key(room, shard), FieldTable::new())?;
        }
        Ok(())
    }

    /// Deletes everything [`declare`](Self::declare) made (tests).
    fn delete(&self, channel: &Channel) -> amiquip::Result<()> {
        for (room, shard) in self.shards() {
            channel.queue_delete(self.queue(room, shard), QueueDeleteOptions::default())?;
        }
        channel.queue_delete(self.dead_letter_queue(), QueueDeleteOptions::default())?;
        channel.exchange_delete(self.exchange(), false)?;
        channel.exchange_delete(self.dead_letter_exchange(), false)?;
        Ok(())
    }
}
