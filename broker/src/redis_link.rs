//! Opening Redis connections for server and consumer alike: to one Redis,
//! or to whichever node the Sentinels name master at the moment of
//! connecting.
//!
//! Every Redis user in ChatFlow (the server's subscriber, sent log,
//! history reads and fleet snapshots; the consumer's broadcasters) already
//! drops a connection on any error and opens a new one with back-off. So
//! following a failover needs nothing more than this: each new connection
//! asks the Sentinels where the master is, and checks with `ROLE` that the
//! node it reached is a master — during a failover a Sentinel may still
//! name the dead or demoted node, and a write there would fail anyway
//! (`READONLY`), so refusing it here turns it into one more retry.

use std::time::Duration;

use redis::{
    Connection, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo, RedisError,
    RedisResult, Value,
};

use crate::settings::{HostPort, NodeCursor, RedisAddress, RedisEndpoint};

/// Opens connections to the Redis an endpoint names. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RedisConnector {
    endpoint: RedisEndpoint,
    /// Which Sentinel to ask first: they take turns, so no one Sentinel
    /// answers every reconnect, and a dead one is skipped after a failed
    /// attempt rather than being the first asked every time.
    next_sentinel: NodeCursor,
}

impl RedisConnector {
    pub fn new(endpoint: &RedisEndpoint) -> Self {
        RedisConnector {
            endpoint: endpoint.clone(),
            next_sentinel: NodeCursor::default(),
        }
    }

    pub fn endpoint(&self) -> &RedisEndpoint {
        &self.endpoint
    }

    /// Redis's address (or the Sentinels') for messages.
    pub fn display(&self) -> String {
        self.endpoint.display()
    }

    /// A connection whose connect, reads and writes each give up after the
    /// endpoint's timeout.
    pub fn connect(&self) -> RedisResult<Connection> {
        let timeout = self.endpoint.timeout;
        self.connect_with(timeout, Some(timeout))
    }

    /// A connection with its own connect and read timeouts (a subscriber
    /// polls with a short read timeout); writes give up after the
    /// endpoint's timeout.
    pub fn connect_with(
        &self,
        connect_timeout: Duration,
        read_timeout: Option<Duration>,
    ) -> RedisResult<Connection> {
        let connection = match &self.endpoint.address {
            RedisAddress::Direct(node) => open(node, connect_timeout)?,
            RedisAddress::Sentinel {
                sentinels,
                master_name,
            } => {
                let master = self.ask_sentinels(sentinels, master_name, connect_timeout)?;
                let mut connection = open(&master, connect_timeout)?;
                connection.set_read_timeout(Some(connect_timeout))?;
                check_is_master(&mut connection, &master)?;
                connection
            }
        };
        connection.set_read_timeout(read_timeout)?;
        connection.set_write_timeout(Some(self.endpoint.timeout))?;
        Ok(connection)
    }

    /// The master's address as the first Sentinel that answers gives it.
    fn ask_sentinels(
        &self,
        sentinels: &[HostPort],
        master_name: &str,
        timeout: Duration,
    ) -> RedisResult<HostPort> {
        let first = self.next_sentinel.take_turn(sentinels.len());
        let mut last: Option<RedisError> = None;
        for i in 0..sentinels.len() {
            let sentinel = &sentinels[(first + i) % sentinels.len()];
            let answer = open(sentinel, timeout).and_then(|mut con| {
                con.set_read_timeout(Some(timeout))?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(master_name)
                    .query::<Option<(String, u16)>>(&mut con)
            });
            match answer {
                Ok(Some((host, port))) => return Ok(HostPort::new(host, port)),
                Ok(None) => {
                    last = Some(RedisError::from((
                        ErrorKind::MasterNameNotFoundBySentinel,
                        "no such master",
                        format!("sentinel {sentinel} monitors no master named {master_name:?}"),
                    )))
                }
                Err(e) => {
                    last = Some(RedisError::from((
                        ErrorKind::Io,
                        "sentinel unreachable",
                        format!("sentinel {sentinel}: {e}"),
                    )))
                }
            }
        }
        Err(last.unwrap_or_else(|| RedisError::from((ErrorKind::EmptySentinelList, "no sentinel"))))
    }
}

/// A plain TCP connection to `node`. redis-rs's `CLIENT SETINFO` after
/// connecting is skipped: its replies are read one by one, each with the
/// whole timeout, so a Redis that accepts and then stalls would hold a
/// connect for twice the timeout.
fn open(node: &HostPort, timeout: Duration) -> RedisResult<Connection> {
    let info: ConnectionInfo =
        ConnectionAddr::Tcp(node.host.clone(), node.port).into_connection_info()?;
    let settings = info.redis_settings().clone().set_skip_set_lib_name();
    redis::Client::open(info.set_redis_settings(settings))?.get_connection_with_timeout(timeout)
}

/// Refuses a node that is not (or no longer) a master.
fn check_is_master(connection: &mut Connection, node: &HostPort) -> RedisResult<()> {
    let role: Vec<Value> = redis::cmd("ROLE").query(connection)?;
    let is_master = matches!(role.first(), Some(Value::BulkString(b)) if b == b"master")
        || matches!(role.first(), Some(Value::SimpleString(s)) if s == "master");
    if is_master {
        Ok(())
    } else {
        Err(RedisError::from((
            ErrorKind::Io,
            "not a master",
            format!("{node} is not a master (a failover is under way): retrying"),
        )))
    }
}
