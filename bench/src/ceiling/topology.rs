//! The run's own topology: declared with the product's declaration
//! (`chatflow_broker::Declare`: the direct exchange, a quorum queue per
//! (room, shard) with the product's arguments, the dead-letter path) in a
//! namespace nobody else uses, and deleted again however the run ends.
//!
//! The machine's RabbitMQ is shared and has been seen to wedge after
//! hundreds of quorum queues were left behind, so deletion is owned by a
//! guard ([`Declared`]): [`Declared::delete`] at the end of a run, and
//! `Drop` on every other way out (an error, a panic unwinding). Each uses a
//! connection of its own, so a broken run connection cannot prevent it.

use amiquip::{Channel, Connection};
use chatflow_broker::amqp::ConnectError;
use chatflow_broker::{AmqpEndpoint, Declare};
use chatflow_protocol::Topology;

/// Why the topology could not be declared or deleted.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("namespace {0:?} is in use (its exchange exists), and the run would delete it at the end: choose another --namespace")]
    InUse(String),
    #[error("declaring namespace {namespace:?}: {cause}")]
    Declare {
        namespace: String,
        cause: Box<amiquip::Error>,
    },
    #[error("deleting namespace {namespace:?}: {cause}")]
    Delete {
        namespace: String,
        cause: Box<amiquip::Error>,
    },
}

/// A declared topology, deleted when this is (or by [`Declared::delete`]).
pub struct Declared {
    endpoint: AmqpEndpoint,
    topology: Topology,
    /// Deleted already: nothing for `Drop` to do.
    deleted: bool,
}

impl Declared {
    /// Declares `topology`, refusing a namespace that already has an
    /// exchange: this run deletes what it declares, and must never delete
    /// someone else's queues.
    pub fn new(endpoint: &AmqpEndpoint, topology: &Topology) -> Result<Declared, TopologyError> {
        let mut connection = chatflow_broker::amqp::connect(endpoint)?;
        let result = declare_fresh(&mut connection, topology);
        let _ = connection.close();
        // From here on the guard owns deletion, even of a half-made
        // topology (a declaration that failed part-way).
        let mut declared = Declared {
            endpoint: endpoint.clone(),
            topology: topology.clone(),
            deleted: false,
        };
        match result {
            Ok(()) => Ok(declared),
            Err(e @ TopologyError::InUse(_)) => {
                declared.deleted = true; // not ours
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Deletes the topology now, saying whether it worked.
    pub fn delete(mut self) -> Result<(), TopologyError> {
        self.deleted = true;
        delete(&self.endpoint, &self.topology)
    }
}

impl Drop for Declared {
    fn drop(&mut self) {
        if !self.deleted {
            if let Err(e) = delete(&self.endpoint, &self.topology) {
                eprintln!(
                    "brokerceiling: {e}; delete it with: brokerceiling --delete-topology {} --rooms {}",
                    self.topology.namespace,
                    self.topology.rooms.count()
                );
            }
        }
    }
}

fn declare_fresh(connection: &mut Connection, topology: &Topology) -> Result<(), TopologyError> {
    let declare_error = |e| TopologyError::Declare {
        namespace: topology.namespace.clone(),
        cause: Box::new(e),
    };
    // A failed passive declaration closes its channel: use one for it alone.
    let probe = connection.open_channel(None).map_err(declare_error)?;
    if probe.exchange_declare_passive(topology.exchange()).is_ok() {
        let _ = probe.close();
        return Err(TopologyError::InUse(topology.namespace.clone()));
    }
    let channel: Channel = connection.open_channel(None).map_err(declare_error)?;
    topology.declare(&channel).map_err(declare_error)?;
    let _ = channel.close();
    Ok(())
}

/// Deletes `topology`'s queues and exchanges over a connection of its own
/// (deleting what does not exist is not an error in RabbitMQ).
pub fn delete(endpoint: &AmqpEndpoint, topology: &Topology) -> Result<(), TopologyError> {
    let mut connection = chatflow_broker::amqp::connect(endpoint)?;
    let deleted = connection
        .open_channel(None)
        .and_then(|channel| {
            topology.delete(&channel)?;
            channel.close()
        })
        .map_err(|e| TopologyError::Delete {
            namespace: topology.namespace.clone(),
            cause: Box::new(e),
        });
    let _ = connection.close();
    deleted
}

/// Messages ready in the topology's queues (a passive declaration each).
pub fn ready_messages(connection: &mut Connection, topology: &Topology) -> amiquip::Result<u64> {
    let channel = connection.open_channel(None)?;
    let mut ready = 0;
    for (room, shard) in topology.shards() {
        let queue = channel.queue_declare_passive(topology.queue(room, shard))?;
        ready += u64::from(queue.declared_message_count().unwrap_or(0));
    }
    let _ = channel.close();
    Ok(ready)
}
