//! The machine's shared services, as the tests reach them: RabbitMQ
//! (guest/guest), Redis and PostgreSQL on 127.0.0.1 at their usual ports
//! (`scripts/ensure-services.sh` starts them). Other tests and other
//! people use the same services at the same time, so a test works in its
//! own namespace ([`crate::unique_namespace`]), deletes what it declared
//! ([`TopologyGuard`]) and never stops a service: an outage is made with a
//! [`crate::Proxy`] in front of it.

use std::net::SocketAddr;

use amiquip::Connection;
use chatflow_broker::Declare;
use chatflow_protocol::Topology;
use redis::Commands as _;

/// RabbitMQ as the tests' own connections reach it (never through a proxy).
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=30";
/// Redis as the tests' own connections reach it.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/";

/// RabbitMQ's AMQP port, for a proxy's upstream.
pub fn amqp_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5672))
}

/// Redis's port, for a proxy's upstream.
pub fn redis_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 6379))
}

/// PostgreSQL's port, for a proxy's upstream.
pub fn postgres_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5432))
}

/// Deletes a test's RabbitMQ topology (its queues, dead-letter queue and
/// exchanges), its rooms' Redis history streams and its servers' presence
/// keys when dropped, pass or fail, over connections of its own.
pub struct TopologyGuard(pub Topology);

impl Drop for TopologyGuard {
    fn drop(&mut self) {
        // A panic here would abort a test that is already unwinding; a
        // queue or stream left behind is only untidy.
        if let Err(e) = delete(&self.0) {
            eprintln!("clean-up of namespace {}: {e}", self.0.namespace);
        }
        if let Err(e) = delete_history(&self.0) {
            eprintln!("clean-up of namespace {}'s history: {e}", self.0.namespace);
        }
        if let Err(e) = delete_presence(&self.0.namespace) {
            eprintln!("clean-up of namespace {}'s presence: {e}", self.0.namespace);
        }
    }
}

/// Deletes every presence key of `namespace` (`{ns}:presence:*`: servers'
/// members, versions and index). They expire by themselves within
/// seconds; a test deletes them anyway, so nothing it made outlives it.
pub fn delete_presence(namespace: &str) -> redis::RedisResult<()> {
    let mut con = redis::Client::open(REDIS_URL)?.get_connection()?;
    // SCAN, not KEYS: the Redis is shared, and KEYS would stall it for
    // everyone while it walks the whole keyspace.
    let keys: Vec<String> = {
        let pattern = format!("{namespace}:presence:*");
        let found = con.scan_match::<_, String>(&pattern)?;
        found.filter_map(Result::ok).collect()
    };
    for chunk in keys.chunks(500) {
        redis::cmd("DEL").arg(chunk).query::<()>(&mut con)?;
    }
    Ok(())
}

/// [`delete_presence`] when dropped (for tests without a RabbitMQ
/// topology to guard).
pub struct PresenceGuard(pub String);

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        if let Err(e) = delete_presence(&self.0) {
            eprintln!("clean-up of namespace {}'s presence: {e}", self.0);
        }
    }
}

/// [`delete_history`] when dropped (for tests that append to the history
/// without a RabbitMQ topology to guard).
pub struct HistoryGuard(pub Topology);

impl Drop for HistoryGuard {
    fn drop(&mut self) {
        if let Err(e) = delete_history(&self.0) {
            eprintln!("clean-up of namespace {}'s history: {e}", self.0.namespace);
        }
    }
}

/// Deletes every room's history stream (the consumers make them).
pub fn delete_history(topology: &Topology) -> redis::RedisResult<()> {
    let keys: Vec<String> = topology
        .rooms
        .iter()
        .map(|room| topology.history_stream(room))
        .collect();
    let mut con = redis::Client::open(REDIS_URL)?.get_connection()?;
    redis::cmd("DEL").arg(keys).query(&mut con)
}

/// Deletes everything `topology.declare` makes.
fn delete(topology: &Topology) -> amiquip::Result<()> {
    let mut connection = Connection::insecure_open(AMQP_URL)?;
    let deleted = connection
        .open_channel(None)
        .and_then(|channel| topology.delete(&channel));
    let _ = connection.close();
    deleted
}
