//! ChatFlow's wire types, shared by every crate: what a client sends, what the
//! server answers, what travels through the broker, how ids are made and how
//! messages are routed to rooms and shards.
//!
//! Layout:
//! - [`message`]: the client message, its parsing and every validation rule;
//! - [`flags`]: the configuration error naming a flag, shared by binaries;
//! - [`frame`]: the frames the server sends (`ack`, `error`, `message`,
//!   `recovery`);
//! - [`presence`]: the presence frames (the member list, arrivals and
//!   departures);
//! - [`position`]: positions in a room's history (stream entry ids), how
//!   they ride at the end of a frame, and their parsing;
//! - [`envelope`]: the queue envelope servers publish and consumers decode;
//! - [`id`]: message ids (UUIDv7: unique without coordination, time-ordered);
//! - [`routing`]: rooms, shards and routing keys;
//! - [`time`]: millisecond timestamps and their RFC 3339 form;
//! - [`topology`]: exchange, queue, channel, history-stream, stats-key and
//!   presence-key names and queue arguments (declaring them is `chatflow-broker`'s job).
//!
//! Nothing here does I/O; every function is cheap enough for a worker's hot
//! path and allocation-free where the input allows it.

pub mod envelope;
pub mod flags;
pub mod frame;
pub mod id;
pub mod message;
pub mod position;
pub mod presence;
pub mod routing;
pub mod time;
pub mod topology;

pub use envelope::Envelope;
pub use frame::{Ack, Broadcast, ErrorCode, ErrorFrame, Recovery, RecoveryReason, ServerFrame};
pub use id::{IdGenerator, MessageId};
pub use message::{
    ClientFrame, ClientMessage, Field, MessageType, Problem, Rejected, Rejection, Request,
};
pub use position::Position;
pub use routing::{routing_key, shard_of, Rooms, SHARDS_PER_ROOM};
pub use time::ServerTime;
pub use topology::Topology;
