//! What queue consumers and PostgreSQL writers hand each other: rows to
//! store one way ([`Pending`], each a [`Row`] — `chatflow-database`'s
//! stored message — with the delivery it came from), and what became of
//! them the other ([`Committed`]). Neutral
//! ground: both sides import this module, neither imports the other.

pub use chatflow_database::Row;

/// A row on its way to a writer, with the delivery it came from. A queue
/// consumer sends its batch's rows as one `Vec<Pending>`.
pub struct Pending {
    pub row: Row,
    /// Index of the queue consumer to tell when it is committed.
    pub consumer: usize,
    /// The consumer's channel lease the delivery came on (tags are per
    /// channel).
    pub epoch: u64,
    pub delivery_tag: u64,
    /// The broker redelivered it: it may already be stored.
    pub redelivered: bool,
}

impl AsRef<Row> for Pending {
    fn as_ref(&self) -> &Row {
        &self.row
    }
}

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
