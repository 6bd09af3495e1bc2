//! `chatflow-broker`: the plumbing to RabbitMQ and Redis that server and
//! consumer share, so each concern is written once.
//!
//! Layout:
//! - [`settings`]: the shared flags (`BrokerArgs`, flattened into both
//!   binaries), their validation, and [`Secret`];
//! - [`amqp`] (feature `amqp`): opening AMQP connections with `TCP_NODELAY`;
//! - [`declare`] (feature `amqp`): declaring the topology on RabbitMQ;
//! - [`fleet`] (feature `redis`): the fleet registry, every server's and
//!   consumer's live snapshot in Redis, written and read under one set of
//!   rules;
//! - [`redis_link`] (feature `redis`): opening Redis connections, straight
//!   or to the master Redis Sentinel names;
//! - [`retry`]: the one jittered back-off and the one shutdown signal;
//! - [`sched`]: SCHED_BATCH for every thread of a process.
//!
//! The names themselves (exchange, queues, channels) are wire facts and
//! live in `chatflow-protocol`'s `topology`; this crate does the I/O.

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "amqp")]
pub mod declare;
#[cfg(feature = "redis")]
pub mod fleet;
#[cfg(feature = "redis")]
pub mod redis_link;
pub mod retry;
pub mod sched;
pub mod settings;

#[cfg(feature = "amqp")]
pub use declare::Declare;
#[cfg(feature = "redis")]
pub use redis_link::RedisConnector;
pub use retry::{shutdown_signal, Backoff, Shutdown, ShutdownTrigger};
pub use settings::{
    AmqpEndpoint, BrokerArgs, BrokerSettings, HostPort, RedisAddress, RedisEndpoint, Secret,
};
