//! `chatflow-server`: the thread-per-core WebSocket server.
//!
//! Layout (one line of purpose each; no two of these modules import each
//! other, and types sent between threads live with their receiver):
//! - [`config`]: flags and environment → a validated [`Config`];
//! - [`server`]: [`Server::start`] / [`Server::shutdown`] — worker threads,
//!   which broker runs, and the one documented stop order (drain, stop
//!   accepting, answer what is in flight, close with 1001);
//! - [`worker`]: one pinned thread's mio event loop — accept (retried on
//!   a timer at the descriptor limit), inbox, flush/resume lists, sweep,
//!   its part of the stop; it dispatches events to connections and
//!   carries out the [`connection::Next`] they answer;
//! - [`connection`]: one client's socket, phase and every transition
//!   (`handshake`: routing, HTTP answer, lingering; `websocket`: frames,
//!   messages, replies, broadcasts, closes; `liveness`: pings and closing
//!   a peer that stopped answering; `replay`: resuming after `?since=`,
//!   the seam between history and live; `context`: the per-worker state
//!   the steps share);
//! - [`http`]: request-head routing, `/health`, `/livez`, HTTP errors;
//! - [`socket`]: the client socket that skips `recv` calls known to block,
//!   meters frames and budgets each turn;
//! - [`rooms`]: a worker's room-membership index;
//! - [`fanout`]: worker inboxes and wakers (all cross-thread input) and the
//!   types their events carry (`Ticket`, `PublishError`, `HistoryPage`);
//! - [`broker`]: the boundary to "where messages go" (`memory`, `none`,
//!   `rabbitmq` with `redis_subscriber` and its gap fill, the `history`
//!   thread resuming clients, `stream` reading rooms' history streams,
//!   `sent_log` for idempotent sends, and `link_state` for their
//!   `/health`);
//! - [`latency`]: the lock-free ack-latency histogram each worker records
//!   into, and its quantiles over the last 10 s;
//! - [`stats`]: per-worker counters, dead workers and the health document
//!   (readiness: when `/health` says 200 and when 503);
//! - [`api`]: the read API on its own port and threads (server/API.md):
//!   history, analytics and `/api/metrics` over a PostgreSQL pool;
//! - [`fleet`]: live fleet statistics for the read API — this server's
//!   snapshot published to Redis (`fleet-stats`), every server's and
//!   consumer's read back, and RabbitMQ queue depths (`queue-depths`);
//! - [`live`]: the API's view of those live stats;
//! - [`presence`]: who is in each room, from JOIN/LEAVE and live
//!   connections, shared across the fleet through Redis (the `presence`
//!   and `presence-redis` threads), and the frames that tell members.
//!
//! No async runtime: every worker owns its sockets outright and nothing it
//! does blocks.

pub mod api;
pub mod broker;
pub mod config;
pub mod connection;
pub mod fanout;
pub mod fleet;
pub mod http;
pub mod latency;
pub mod live;
pub mod metrics;
pub mod output;
pub mod presence;
pub mod rooms;
pub mod server;
pub mod socket;
pub mod stats;
pub mod worker;

pub use config::{Args, BrokerKind, Config, PresenceMode};
pub use server::Server;
