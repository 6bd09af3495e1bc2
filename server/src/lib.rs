//! `chatflow-server`: the thread-per-core WebSocket server.
//!
//! Layout:
//! - [`config`]: flags and environment → a validated [`Config`];
//! - [`server`]: [`Server::start`] / [`Server::shutdown`] — worker threads,
//!   broker, orderly stop;
//! - [`worker`]: one pinned thread's mio event loop;
//! - [`connection`]: one client's socket and phase (routing, HTTP response,
//!   handshake, open WebSocket);
//! - [`http`]: request-head routing, `/health`, HTTP errors;
//! - [`socket`]: the client socket that skips `recv` calls known to block;
//! - [`rooms`]: a worker's room-membership index;
//! - [`fanout`]: worker inboxes and wakers (all cross-thread input);
//! - [`broker`]: the boundary to "where messages go" (memory, none);
//! - [`stats`]: per-worker counters and the health document.
//!
//! No async runtime: every worker owns its sockets outright and nothing it
//! does blocks.

pub mod broker;
pub mod config;
pub mod connection;
pub mod fanout;
pub mod http;
pub mod rooms;
pub mod server;
pub mod socket;
pub mod stats;
pub mod worker;

pub use config::{Args, BrokerKind, Config};
pub use server::Server;
