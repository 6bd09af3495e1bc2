//! AMQP connections ("links") and the channels leased from them.
//!
//! amiquip has no connection recovery, and `open_channel` needs the
//! connection mutably, so each connection is owned by one link thread
//! (`amqp-link-N`) that serves the consumer threads assigned to it:
//!
//! - a consumer that loses its channel (a delivery stream ending, a failed
//!   ack, a cancelled consumer) asks its link for another ([`Request`]);
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

use amiquip::{Channel, Connection};
use chatflow_protocol::Topology;
use crossbeam_channel::{select, Receiver, Sender};

use crate::config::Config;
use crate::stats::{add, Shared};
use chatflow_broker::retry::{wait, Backoff, Shutdown};
use chatflow_broker::Declare;

/// A channel handed to a consumer thread. `epoch` is unique per channel
/// ever opened, so late news about an old channel (e.g. a commit notice for
/// deliveries that are being redelivered) is recognised and ignored.
pub struct Lease {
    pub channel: Channel,
    pub epoch: u64,
}

/// A consumer thread's request to its link.
#[derive(Debug)]
pub struct Request {
    /// The consumer's slot on this link.
    pub slot: usize,
    /// Why the previous channel was lost (for the log and `/health`).
    pub error: String,
    /// Consuming itself failed (e.g. the queue is gone): declare the
    /// topology again before handing out a channel.
    pub redeclare: bool,
}

/// Why a link could not be (re)established.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Connect(#[from] chatflow_broker::amqp::ConnectError),
    #[error("declaring the topology: {0}")]
    Declare(#[from] amiquip::Error),
}

/// Opens one AMQP connection (with `TCP_NODELAY`, see
/// [`chatflow_broker::amqp`]).
pub fn connect(config: &Config) -> Result<Connection, chatflow_broker::amqp::ConnectError> {
    chatflow_broker::amqp::connect(&config.amqp_endpoint())
}

/// Declares the topology on a short-lived channel of `connection`.
pub fn declare(connection: &mut Connection, topology: &Topology) -> amiquip::Result<()> {
    let channel = connection.open_channel(None)?;
    topology.declare(&channel)?;
    channel.close()
}

pub fn lease(connection: &mut Connection, shared: &Shared) -> amiquip::Result<Lease> {
    Ok(Lease {
        channel: connection.open_channel(None)?,
        epoch: shared.epochs.fetch_add(1, Ordering::Relaxed),
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

    fn set_connected(&self, connected: bool, error: Option<String>) {
        let stats = &self.shared.links[self.index];
        stats.connected.store(connected, Ordering::Relaxed);
        if error.is_some() {
            *stats.last_error.lock() = error;
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
                eprintln!("{}: closing the connection: {e}", self.name());
            }
        }
        self.set_connected(false, None);
    }

    fn serve(&mut self, request: Request) {
        let shared = self.shared.clone();
        let config = &shared.config;
        let mut backoff = Backoff::new(config.retry_min, config.retry_max, self.index as u64);
        let mut redeclare = request.redeclare;
        let mut failures: u64 = 0;
        loop {
            if let Some(connection) = self.connection.as_mut() {
                let declared = if redeclare {
                    declare(connection, &config.topology())
                } else {
                    Ok(())
                };
                match declared.and_then(|()| lease(connection, &shared)) {
                    Ok(lease) => {
                        // The consumer may have exited meanwhile (shutdown):
                        // the lease is dropped, which closes the channel.
                        let _ = self.slots[request.slot].send(lease);
                        return;
                    }
                    Err(e) => {
                        eprintln!(
                            "{}: connection to {} unusable ({e}; a consumer reported: {}); reconnecting",
                            self.name(),
                            config.amqp_display(),
                            request.error
                        );
                        self.set_connected(false, Some(e.to_string()));
                        // Dropping closes it; on a dead connection that is
                        // immediate (its I/O thread is gone).
                        self.connection = None;
                    }
                }
            }
            if wait(&self.shutdown, backoff.next_delay()) {
                return;
            }
            let reconnected = connect(config)
                .map_err(LinkError::Connect)
                .and_then(|mut c| {
                    declare(&mut c, &config.topology()).map_err(LinkError::Declare)?;
                    Ok(c)
                });
            match reconnected {
                Ok(connection) => {
                    eprintln!("{}: reconnected to {}", self.name(), config.amqp_display());
                    add(&self.shared.links[self.index].reconnects, 1);
                    self.set_connected(true, None);
                    self.connection = Some(connection);
                    redeclare = false;
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures % 20 == 0 {
                        eprintln!(
                            "{}: cannot reconnect to {} ({e}); retrying (attempt {failures})",
                            self.name(),
                            config.amqp_display()
                        );
                    }
                    self.set_connected(false, Some(e.to_string()));
                }
            }
        }
    }
}
