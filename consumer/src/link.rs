//! AMQP connections ("links") and the channels leased from them.
//!
//! amiquip has no connection recovery, and `open_channel` needs the
//! connection mutably, so each connection is owned by one link thread
//! (`amqp-link-N`) that serves the queue consumers assigned to it:
//!
//! - a queue consumer that loses its channel (a delivery stream ending, a
//!   failed ack, a cancelled consumer) or closed it to hand its queue back
//!   asks its link for another
//!   ([`Request`], saying why: [`ChannelLost`]);
//! - the link opens one on its connection; if that fails the connection is
//!   dead: it is dropped, and the link reconnects with back-off,
//!   re-declares the topology and then opens the channel. Consumers of the
//!   same connection ask in turn and get channels on the new connection.
//!
//! Channels are opened on the link thread and moved to their consumer
//! thread (a `Channel` is `Send`, not `Sync`). Unacked deliveries of a lost
//! channel are redelivered by the broker, so nothing is replayed here.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use amiquip::{Channel, Connection, ConsumerMessage};
use chatflow_broker::amqp::ConnectError;
use chatflow_broker::retry::{wait, Backoff, Shutdown};
use chatflow_broker::Declare;
use chatflow_protocol::Topology;
use crossbeam_channel::{select, Receiver, Sender};

use crate::config::Config;
use crate::counters::{add, LinkStats};
use crate::state::Shared;

/// A channel handed to a queue consumer. `epoch` is unique per channel
/// ever opened, so late news about an old channel (e.g. a commit notice for
/// deliveries that are being redelivered) is recognised and ignored.
pub struct Lease {
    pub channel: Channel,
    pub epoch: u64,
}

/// Why a queue consumer gave its channel up.
#[derive(Debug, thiserror::Error)]
pub enum ChannelLost {
    #[error("qos: {0}")]
    Qos(#[source] amiquip::Error),
    /// Consuming failed at the start (e.g. the queue is missing).
    #[error("consuming {queue}: {source}")]
    Consume {
        queue: String,
        source: amiquip::Error,
    },
    #[error("ack: {0}")]
    Ack(#[source] amiquip::Error),
    #[error("nack: {0}")]
    Nack(#[source] amiquip::Error),
    #[error("delivery stream ended (connection gone)")]
    StreamEnded,
    #[error("unexpected delivery")]
    UnexpectedDelivery,
    #[error("consumer cancelled")]
    Cancelled,
    #[error("consumer cancelled by the broker (queue deleted?)")]
    CancelledByBroker,
    #[error("channel closed")]
    ChannelClosed,
    #[error("broker closed the channel: {0}")]
    BrokerClosedChannel(#[source] amiquip::Error),
    #[error("connection closed")]
    ConnectionClosed,
    #[error("broker closed the connection: {0}")]
    BrokerClosedConnection(#[source] amiquip::Error),
    /// Not lost: a standby closed it to hand its queue back to the owner,
    /// and wants a new one to stand by again.
    #[error("handed its queue back to the owner")]
    HandedBack,
}

impl ChannelLost {
    /// Declare the topology again before the next channel: consuming
    /// itself failed, so the queue may be gone.
    pub fn needs_redeclare(&self) -> bool {
        matches!(self, ChannelLost::Consume { .. })
    }
}

impl From<ConsumerMessage> for ChannelLost {
    /// What a message other than a delivery on the consumer stream means.
    fn from(message: ConsumerMessage) -> Self {
        match message {
            ConsumerMessage::Delivery(_) => ChannelLost::UnexpectedDelivery,
            ConsumerMessage::ClientCancelled => ChannelLost::Cancelled,
            ConsumerMessage::ServerCancelled => ChannelLost::CancelledByBroker,
            ConsumerMessage::ClientClosedChannel => ChannelLost::ChannelClosed,
            ConsumerMessage::ServerClosedChannel(e) => ChannelLost::BrokerClosedChannel(e),
            ConsumerMessage::ClientClosedConnection => ChannelLost::ConnectionClosed,
            ConsumerMessage::ServerClosedConnection(e) => ChannelLost::BrokerClosedConnection(e),
        }
    }
}

/// A queue consumer's request to its link for a new channel.
#[derive(Debug)]
pub struct Request {
    /// The consumer's slot on this link.
    pub slot: usize,
    /// Why the previous channel was lost (for the log, and whether to
    /// declare the topology again).
    pub lost: ChannelLost,
}

/// Why a link could not be (re)established or could not lease a channel.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("declaring the topology: {0}")]
    Declare(#[source] amiquip::Error),
    #[error("opening a channel: {0}")]
    OpenChannel(#[source] amiquip::Error),
}

/// Opens one AMQP connection (with `TCP_NODELAY`, see
/// [`chatflow_broker::amqp`]).
pub fn connect(config: &Config) -> Result<Connection, LinkError> {
    Ok(chatflow_broker::amqp::connect(&config.amqp_endpoint())?)
}

/// Declares the topology on a short-lived channel of `connection`.
pub fn declare(connection: &mut Connection, topology: &Topology) -> Result<(), LinkError> {
    let channel = connection.open_channel(None).map_err(LinkError::Declare)?;
    topology
        .declare(&channel)
        .and_then(|()| channel.close())
        .map_err(LinkError::Declare)
}

/// Opens a channel for a queue consumer, with a new epoch.
pub fn lease(connection: &mut Connection, shared: &Shared) -> Result<Lease, LinkError> {
    Ok(Lease {
        channel: connection
            .open_channel(None)
            .map_err(LinkError::OpenChannel)?,
        epoch: shared.next_epoch(),
    })
}

/// One link thread's state.
pub struct Link {
    pub index: usize,
    pub connection: Option<Connection>,
    /// Lease senders, by slot.
    pub slots: Vec<Sender<Lease>>,
    pub requests: Receiver<Request>,
    pub shutdown: Shutdown,
    pub shared: Arc<Shared>,
}

impl Link {
    fn name(&self) -> String {
        format!("amqp-link-{}", self.index)
    }

    fn stats(&self) -> &LinkStats {
        &self.shared.counters.links[self.index]
    }

    /// Records the connection state; an error is kept (as text, for
    /// `/health`) until the next one.
    fn set_connected(&self, connected: bool, error: Option<&LinkError>) {
        let stats = self.stats();
        stats.connected.store(connected, Ordering::Relaxed);
        if let Some(error) = error {
            *stats.last_error.lock() = Some(error.to_string());
        }
    }

    /// Serves requests until every consumer of this link has exited, then
    /// closes the connection (after its channels, which the consumers
    /// closed on their way out).
    pub fn run(mut self) {
        self.set_connected(self.connection.is_some(), None);
        loop {
            select! {
                recv(self.requests) -> request => match request {
                    Ok(request) => self.serve(request),
                    Err(_) => break,
                },
                recv(self.shutdown) -> _ => break,
            }
        }
        // Shutdown: wait for the consumers to close their channels and exit
        // (dropping their request senders); requests now go unanswered.
        while self.requests.recv().is_ok() {}
        if let Some(connection) = self.connection.take() {
            if let Err(e) = connection.close() {
                tracing::warn!("{}: closing the connection: {e}", self.name());
            }
        }
        self.set_connected(false, None);
    }

    /// Opens a channel for `request`, on the current connection or, if it
    /// is dead, on a new one; retries until it has one or shutdown comes.
    fn serve(&mut self, request: Request) {
        let shared = self.shared.clone();
        let config = &shared.config;
        let mut backoff = Backoff::new(config.retry_min, config.retry_max, self.index as u64);
        let mut redeclare = request.lost.needs_redeclare();
        let mut failures: u64 = 0;
        loop {
            if let Some(connection) = self.connection.as_mut() {
                let leased = if redeclare {
                    declare(connection, &config.topology())
                } else {
                    Ok(())
                }
                .and_then(|()| lease(connection, &shared));
                match leased {
                    Ok(lease) => {
                        // The consumer may have exited meanwhile (shutdown):
                        // the lease is dropped, which closes the channel.
                        let _ = self.slots[request.slot].send(lease);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(
                            "{}: connection to {} unusable ({e}; a consumer reported: {}); reconnecting",
                            self.name(),
                            config.amqp_display(),
                            request.lost
                        );
                        self.set_connected(false, Some(&e));
                        // Dropping closes it; on a dead connection that is
                        // immediate (its I/O thread is gone).
                        self.connection = None;
                    }
                }
            }
            if wait(&self.shutdown, backoff.next_delay()) {
                return;
            }
            let reconnected = connect(config).and_then(|mut c| {
                declare(&mut c, &config.topology())?;
                Ok(c)
            });
            match reconnected {
                Ok(connection) => {
                    tracing::info!("{}: reconnected to {}", self.name(), config.amqp_display());
                    add(&self.stats().reconnects, 1);
                    self.set_connected(true, None);
                    self.connection = Some(connection);
                    redeclare = false;
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures % 20 == 0 {
                        tracing::warn!(
                            "{}: cannot reconnect to {} ({e}); retrying (attempt {failures})",
                            self.name(),
                            config.amqp_display()
                        );
                    }
                    self.set_connected(false, Some(&e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_failed_consume_asks_for_a_redeclare() {
        let consume = ChannelLost::Consume {
            queue: "q".to_string(),
            source: amiquip::Error::ClientClosedChannel,
        };
        assert!(consume.needs_redeclare());
        assert!(consume.to_string().starts_with("consuming q: "));
        for lost in [
            ChannelLost::StreamEnded,
            ChannelLost::from(ConsumerMessage::ServerCancelled),
            ChannelLost::Ack(amiquip::Error::ClientClosedChannel),
        ] {
            assert!(!lost.needs_redeclare(), "{lost}");
        }
        assert_eq!(
            ChannelLost::from(ConsumerMessage::ClientClosedConnection).to_string(),
            "connection closed"
        );
    }
}
