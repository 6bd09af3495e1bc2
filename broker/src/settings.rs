//! The settings server and consumer share — where RabbitMQ and Redis are,
//! as whom to connect, and the topology's names and arguments — declared
//! once as a clap struct both binaries `#[command(flatten)]`, validated in
//! one place ([`BrokerArgs::into_settings`], [`BrokerSettings::validate`]),
//! each default written once (in [`BrokerSettings::default`] and the
//! matching `default_value`s below, which a test keeps equal).
//!
//! Secrets are a [`Secret`]: `Debug` prints `***`, and clap never shows
//! their environment value or default in `--help`.

use std::fmt;
use std::time::Duration;

use chatflow_protocol::flags::{bad, seconds, ConfigError};
use chatflow_protocol::topology::DEFAULT_DELIVERY_LIMIT;
use chatflow_protocol::{Rooms, Topology};

/// A password: kept out of `Debug` output and logs. Read it only where it
/// is handed to the service ([`Secret::expose`]).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Secret {
    /// clap's value parser for a secret flag: the parsed `Args` (which
    /// derive `Debug`) never hold the plain text either.
    pub fn parse(value: &str) -> Result<Secret, std::convert::Infallible> {
        Ok(Secret::new(value))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// One service address, as `host:port` (IPv6 literals in brackets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        HostPort {
            host: host.into(),
            port,
        }
    }

    /// `127.0.0.1:port` (tests pointing a service at a proxy).
    pub fn loopback(port: u16) -> Self {
        HostPort::new("127.0.0.1", port)
    }

    /// Parses a comma-separated `host:port` list (`RABBITMQ_HOSTS`,
    /// `REDIS_SENTINELS`); `flag` names the setting in errors.
    pub fn parse_list(flag: &'static str, list: &str) -> Result<Vec<HostPort>, ConfigError> {
        let nodes = list
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| HostPort::parse(flag, item))
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err(bad(flag, "lists no host:port"));
        }
        Ok(nodes)
    }

    fn parse(flag: &'static str, item: &str) -> Result<HostPort, ConfigError> {
        let unparsable = || bad(flag, format!("{item:?} is not host:port"));
        let (host, port) = item.rsplit_once(':').ok_or_else(unparsable)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port: u16 = port.parse().map_err(|_| unparsable())?;
        if host.is_empty() || port == 0 {
            return Err(unparsable());
        }
        Ok(HostPort::new(host, port))
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", host_for_url(&self.host), self.port)
    }
}

/// Where and as whom AMQP connections are opened.
#[derive(Clone, Debug)]
pub struct AmqpEndpoint {
    /// The cluster's nodes (one for a single broker). A connection goes to
    /// the next node in turn and, if it cannot be reached, to the one after:
    /// a process's connections spread over the cluster, and a reconnect
    /// after a node loss lands on a node that is up.
    pub nodes: Vec<HostPort>,
    pub user: String,
    pub password: Secret,
    pub vhost: String,
    /// A broker that vanishes without closing the TCP connection is noticed
    /// after about two intervals.
    pub heartbeat: Duration,
    /// TCP connect and AMQP handshake timeout: an unreachable host fails an
    /// attempt instead of hanging a reconnect loop.
    pub connect_timeout: Duration,
    /// Where the next connection starts in `nodes` (shared by the clones
    /// of one endpoint, so one process's connections take turns).
    pub next_node: NodeCursor,
}

/// A counter shared between clones, for taking turns over nodes. Compares
/// and prints as nothing: it is not a setting.
#[derive(Clone, Default)]
pub struct NodeCursor(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl NodeCursor {
    /// The index to start from for the next attempt over `len` nodes.
    pub fn take_turn(&self, len: usize) -> usize {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % len.max(1)
    }
}

impl fmt::Debug for NodeCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeCursor")
    }
}

impl AmqpEndpoint {
    /// The broker's addresses without credentials, for messages and
    /// `/health` (`host:port`, comma-separated for a cluster).
    pub fn display(&self) -> String {
        let nodes: Vec<String> = self.nodes.iter().map(HostPort::to_string).collect();
        nodes.join(",")
    }

    /// One broker at `node` (tests pointing RabbitMQ at a proxy).
    pub fn set_single_node(&mut self, node: HostPort) {
        self.nodes = vec![node];
    }

    /// `x-quorum-initial-group-size` when none is configured: every listed
    /// node up to 3 (a majority of 3 survives one node's loss; more
    /// replicas cost every write another node's disk and vote). With one
    /// listed node, RabbitMQ's own default (every cluster member) stands:
    /// that one address may be a balancer in front of a cluster.
    pub fn default_group_size(&self) -> Option<u32> {
        (self.nodes.len() > 1).then(|| self.nodes.len().min(3) as u32)
    }
}

/// How Redis is found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisAddress {
    /// One Redis at this address.
    Direct(HostPort),
    /// Whichever node these Sentinels name master of `master_name` now:
    /// every (re)connect asks them, so after a failover connections go to
    /// the promoted replica.
    Sentinel {
        sentinels: Vec<HostPort>,
        master_name: String,
    },
}

/// Where Redis is.
#[derive(Clone, Debug)]
pub struct RedisEndpoint {
    pub address: RedisAddress,
    /// Connect, read and write timeout: a hung Redis turns into an error
    /// (and a retry) instead of a thread blocked for ever.
    pub timeout: Duration,
}

impl RedisEndpoint {
    /// Redis's address (or the Sentinels') for messages and `/health`.
    pub fn display(&self) -> String {
        match &self.address {
            RedisAddress::Direct(node) => node.to_string(),
            RedisAddress::Sentinel {
                sentinels,
                master_name,
            } => {
                let list: Vec<String> = sentinels.iter().map(HostPort::to_string).collect();
                format!("master {master_name:?} of sentinels {}", list.join(","))
            }
        }
    }

    /// One Redis at `node` (tests pointing Redis at a proxy).
    pub fn set_direct(&mut self, node: HostPort) {
        self.address = RedisAddress::Direct(node);
    }
}

/// The validated shared settings.
#[derive(Clone, Debug)]
pub struct BrokerSettings {
    pub amqp: AmqpEndpoint,
    pub redis: RedisEndpoint,
    /// Names (namespace), rooms and queue arguments. Server and consumer
    /// must agree on all of it: both declare the queues, and RabbitMQ
    /// refuses a re-declaration with other arguments.
    pub topology: Topology,
    /// How long a `(userId, clientMessageId)` names one message: servers
    /// answer a retry within it with the first message's ack (the sent
    /// log in Redis keeps names this long: at 5,000 named messages/s, 2
    /// minutes ≈ 100 MB), and consumers broadcast a repeated id once within
    /// it. It must outlast clients' retries.
    pub dedup_window: Duration,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            amqp: AmqpEndpoint {
                nodes: vec![HostPort::new("127.0.0.1", 5672)],
                user: "guest".to_string(),
                password: Secret::new("guest"),
                vhost: "/".to_string(),
                heartbeat: Duration::from_secs(30),
                connect_timeout: Duration::from_secs(5),
                next_node: NodeCursor::default(),
            },
            redis: RedisEndpoint {
                address: RedisAddress::Direct(HostPort::new("127.0.0.1", 6379)),
                timeout: Duration::from_secs(2),
            },
            topology: Topology::new("chatflow", Rooms::DEFAULT),
            dedup_window: Duration::from_secs(120),
        }
    }
}

impl BrokerSettings {
    /// The settings with another namespace and room count (tests).
    pub fn with_topology(mut self, namespace: &str, rooms: Rooms) -> Self {
        self.topology.namespace = namespace.to_string();
        self.topology.rooms = rooms;
        self
    }

    /// Every rule, for settings built without [`BrokerArgs`] (tests, library
    /// callers) as much as with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let amqp = &self.amqp;
        if amqp.nodes.is_empty() {
            return Err(bad("rabbitmq-hosts", "lists no host:port"));
        }
        for node in &amqp.nodes {
            non_empty("rabbitmq-host", &node.host)?;
            if node.port == 0 {
                return Err(bad("rabbitmq-port", "must not be 0"));
            }
        }
        non_empty("rabbitmq-user", &amqp.user)?;
        non_empty("rabbitmq-vhost", &amqp.vhost)?;
        if amqp.heartbeat.as_secs() > u64::from(u16::MAX) {
            return Err(bad("amqp-heartbeat-secs", "must fit in 16 bits"));
        }
        match &self.redis.address {
            RedisAddress::Direct(node) => {
                non_empty("redis-host", &node.host)?;
                if node.port == 0 {
                    return Err(bad("redis-port", "must not be 0"));
                }
            }
            RedisAddress::Sentinel {
                sentinels,
                master_name,
            } => {
                if sentinels.is_empty() {
                    return Err(bad("redis-sentinels", "lists no host:port"));
                }
                non_empty("redis-master-name", master_name)?;
            }
        }
        let topology = &self.topology;
        check_namespace(&topology.namespace)?;
        // Both are AMQP signed 32-bit queue arguments.
        if topology.delivery_limit == 0 || topology.delivery_limit > i32::MAX as u32 {
            return Err(bad("delivery-limit", "must be in 1..=2147483647"));
        }
        if let Some(max) = topology.queue_max_length {
            if max == 0 || max > i32::MAX as u32 {
                return Err(bad("queue-max-length", "must be in 1..=2147483647"));
            }
        }
        if let Some(size) = topology.quorum_initial_group_size {
            // A quorum queue's members are cluster nodes; RabbitMQ caps the
            // size at the cluster's, so only nonsense is refused here.
            if size == 0 || size > 255 {
                return Err(bad("quorum-initial-group-size", "must be in 1..=255"));
            }
        }
        Ok(())
    }
}

/// Namespaces end up in AMQP names (≤ 255 bytes with the rest of a queue
/// name) and Redis channel names and patterns: short, and free of anything
/// either side treats specially.
fn check_namespace(namespace: &str) -> Result<(), ConfigError> {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    if namespace.is_empty() || namespace.len() > 64 || !namespace.bytes().all(ok) {
        return Err(bad(
            "namespace",
            format!("{namespace:?} is not 1..=64 characters of A-Z a-z 0-9 - _"),
        ));
    }
    Ok(())
}

fn non_empty(flag: &'static str, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        Err(bad(flag, "must not be empty"))
    } else {
        Ok(())
    }
}

/// URL host form: IPv6 literals go in brackets.
pub fn host_for_url(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// The shared flags, with their environment variables. Flatten into a
/// binary's `Args` with `#[command(flatten)]`.
#[derive(Debug, clap::Args)]
pub struct BrokerArgs {
    /// RabbitMQ host.
    #[arg(long, env = "RABBITMQ_HOST", default_value = "127.0.0.1")]
    pub rabbitmq_host: String,
    /// RabbitMQ AMQP port.
    #[arg(long, env = "RABBITMQ_PORT", default_value_t = 5672)]
    pub rabbitmq_port: u16,
    /// A RabbitMQ cluster's nodes, comma-separated host:port (replaces
    /// --rabbitmq-host/--rabbitmq-port): connections take turns over them
    /// and a reconnect goes to the next node that answers.
    #[arg(long, env = "RABBITMQ_HOSTS")]
    pub rabbitmq_hosts: Option<String>,
    /// Nodes holding a replica of each new quorum queue (default: every
    /// node of --rabbitmq-hosts up to 3; with one host, RabbitMQ's own
    /// default, every cluster member).
    #[arg(long, env = "QUORUM_INITIAL_GROUP_SIZE")]
    pub quorum_initial_group_size: Option<u32>,
    /// RabbitMQ user.
    #[arg(long, env = "RABBITMQ_USER", default_value = "guest")]
    pub rabbitmq_user: String,
    /// RabbitMQ password (default guest; never printed; prefer the
    /// environment variable: flags show in `ps`).
    #[arg(
        long,
        env = "RABBITMQ_PASSWORD",
        default_value = "guest",
        value_parser = Secret::parse,
        hide_env_values = true,
        hide_default_value = true
    )]
    pub rabbitmq_password: Secret,
    /// RabbitMQ virtual host.
    #[arg(long, env = "RABBITMQ_VHOST", default_value = "/")]
    pub rabbitmq_vhost: String,
    /// AMQP heartbeat in seconds (0 turns heartbeats off).
    #[arg(long, env = "AMQP_HEARTBEAT_SECS", default_value_t = 30)]
    pub amqp_heartbeat_secs: u16,
    /// Seconds a RabbitMQ connection (TCP and AMQP handshake) may take.
    #[arg(long, env = "CONNECT_TIMEOUT_SECS", default_value_t = 5.0)]
    pub connect_timeout_secs: f64,
    /// Redis host (room broadcasts travel over its pub/sub).
    #[arg(long, env = "REDIS_HOST", default_value = "127.0.0.1")]
    pub redis_host: String,
    /// Redis port.
    #[arg(long, env = "REDIS_PORT", default_value_t = 6379)]
    pub redis_port: u16,
    /// Redis Sentinels, comma-separated host:port (replaces
    /// --redis-host/--redis-port): every connection goes to the master
    /// they name, so a failover is followed without a restart.
    #[arg(long, env = "REDIS_SENTINELS")]
    pub redis_sentinels: Option<String>,
    /// The master name the Sentinels monitor (with --redis-sentinels).
    #[arg(long, env = "REDIS_MASTER_NAME", default_value = "chatflow")]
    pub redis_master_name: String,
    /// Redis connect/read/write timeout in seconds.
    #[arg(long, env = "REDIS_TIMEOUT_SECS", default_value_t = 2.0)]
    pub redis_timeout_secs: f64,
    /// Number of rooms (rooms are 1..=ROOMS; 5 queues each).
    #[arg(long, env = "ROOMS", default_value_t = 20)]
    pub rooms: u32,
    /// Prefix of every exchange, queue and Redis channel name (server and
    /// consumer must agree).
    #[arg(long, env = "NAMESPACE", default_value = "chatflow")]
    pub namespace: String,
    /// Redeliveries before a queue dead-letters a message (server and
    /// consumer must agree).
    #[arg(long, env = "DELIVERY_LIMIT", default_value_t = DEFAULT_DELIVERY_LIMIT)]
    pub delivery_limit: u32,
    /// Per-queue length past which RabbitMQ refuses new messages (server
    /// and consumer must agree; default unbounded).
    #[arg(long, env = "QUEUE_MAX_LENGTH")]
    pub queue_max_length: Option<u32>,
    /// Seconds a (userId, clientMessageId) names one message: a retry within
    /// it gets the first one's ack, never a second message.
    #[arg(long, env = "DEDUP_WINDOW_SECS", default_value_t = 120.0)]
    pub dedup_window_secs: f64,
}

impl BrokerArgs {
    /// Checks every value and builds the [`BrokerSettings`].
    pub fn into_settings(self) -> Result<BrokerSettings, ConfigError> {
        let rooms = Rooms::new(self.rooms).map_err(|e| bad("rooms", e))?;
        let nodes = match &self.rabbitmq_hosts {
            Some(list) => HostPort::parse_list("rabbitmq-hosts", list)?,
            None => vec![HostPort::new(self.rabbitmq_host, self.rabbitmq_port)],
        };
        let redis_address = match &self.redis_sentinels {
            Some(list) => RedisAddress::Sentinel {
                sentinels: HostPort::parse_list("redis-sentinels", list)?,
                master_name: self.redis_master_name,
            },
            None => RedisAddress::Direct(HostPort::new(self.redis_host, self.redis_port)),
        };
        let amqp = AmqpEndpoint {
            nodes,
            user: self.rabbitmq_user,
            password: self.rabbitmq_password,
            vhost: self.rabbitmq_vhost,
            heartbeat: Duration::from_secs(self.amqp_heartbeat_secs.into()),
            connect_timeout: seconds("connect-timeout-secs", self.connect_timeout_secs)?,
            next_node: NodeCursor::default(),
        };
        let quorum_initial_group_size = self
            .quorum_initial_group_size
            .or_else(|| amqp.default_group_size());
        let settings = BrokerSettings {
            amqp,
            redis: RedisEndpoint {
                address: redis_address,
                timeout: seconds("redis-timeout-secs", self.redis_timeout_secs)?,
            },
            topology: Topology {
                queue_max_length: self.queue_max_length,
                delivery_limit: self.delivery_limit,
                quorum_initial_group_size,
                ..Topology::new(self.namespace, rooms)
            },
            dedup_window: seconds("dedup-window-secs", self.dedup_window_secs)?,
        };
        settings.validate()?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Probe {
        #[command(flatten)]
        broker: BrokerArgs,
    }

    fn parse(args: &[&str]) -> Result<BrokerSettings, String> {
        let mut full = vec!["probe"];
        full.extend_from_slice(args);
        Probe::try_parse_from(full)
            .map_err(|e| e.to_string())?
            .broker
            .into_settings()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn flag_defaults_equal_the_documented_defaults() {
        let parsed = parse(&[]).unwrap();
        let documented = BrokerSettings::default();
        assert_eq!(format!("{parsed:?}"), format!("{documented:?}"));
        assert_eq!(parsed.amqp.password, documented.amqp.password);
    }

    #[test]
    fn bad_values_name_their_flag() {
        for (args, flag) in [
            (&["--rooms", "0"][..], "--rooms"),
            (&["--namespace", "a b"][..], "--namespace"),
            (&["--namespace", "a.b"][..], "--namespace"),
            (&["--namespace", ""][..], "--namespace"),
            (&["--redis-timeout-secs", "0"][..], "--redis-timeout-secs"),
            (
                &["--connect-timeout-secs", "0"][..],
                "--connect-timeout-secs",
            ),
            (&["--rabbitmq-port", "0"][..], "--rabbitmq-port"),
            (&["--rabbitmq-port", "many"][..], "--rabbitmq-port"),
            (&["--redis-port", "0"][..], "--redis-port"),
            (&["--rabbitmq-host", " "][..], "--rabbitmq-host"),
            (&["--delivery-limit", "0"][..], "--delivery-limit"),
            (&["--queue-max-length", "0"][..], "--queue-max-length"),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
        let long = "n".repeat(65);
        assert!(parse(&["--namespace", &long])
            .unwrap_err()
            .contains("--namespace"));
    }

    #[test]
    fn credentials_reach_the_broker_unchanged_and_are_never_printed() {
        let s = parse(&[
            "--rabbitmq-password",
            "p@ss/w%rd",
            "--rabbitmq-vhost",
            "chat",
        ])
        .unwrap();
        // Passed to SASL PLAIN as they are: no URL to encode them into.
        assert_eq!(s.amqp.password.expose(), "p@ss/w%rd");
        assert_eq!(s.amqp.vhost, "chat");
        assert!(!format!("{s:?}").contains("p@ss"));
    }

    #[test]
    fn ipv6_hosts_are_bracketed_in_addresses() {
        let mut s = BrokerSettings::default();
        s.redis.set_direct(HostPort::new("::1", 6379));
        assert_eq!(s.redis.display(), "[::1]:6379");
        assert_eq!(s.amqp.display(), "127.0.0.1:5672");
    }

    #[test]
    fn a_cluster_is_a_list_of_nodes_and_replicates_queues_on_up_to_three() {
        let s = parse(&["--rabbitmq-hosts", "10.0.0.1:5672, [::1]:5673,rmq3:5674"]).unwrap();
        assert_eq!(
            s.amqp.nodes,
            vec![
                HostPort::new("10.0.0.1", 5672),
                HostPort::new("::1", 5673),
                HostPort::new("rmq3", 5674)
            ]
        );
        assert_eq!(s.amqp.display(), "10.0.0.1:5672,[::1]:5673,rmq3:5674");
        assert_eq!(s.topology.quorum_initial_group_size, Some(3));
        let five = parse(&["--rabbitmq-hosts", "a:1,b:1,c:1,d:1,e:1"]).unwrap();
        assert_eq!(five.topology.quorum_initial_group_size, Some(3));
        let two = parse(&["--rabbitmq-hosts", "a:1,b:1"]).unwrap();
        assert_eq!(two.topology.quorum_initial_group_size, Some(2));
        // One host: RabbitMQ's default (it may be a balancer).
        assert_eq!(parse(&[]).unwrap().topology.quorum_initial_group_size, None);
        let set = parse(&[
            "--rabbitmq-hosts",
            "a:1,b:1,c:1",
            "--quorum-initial-group-size",
            "1",
        ]);
        assert_eq!(set.unwrap().topology.quorum_initial_group_size, Some(1));
    }

    #[test]
    fn connections_take_turns_over_the_nodes() {
        let s = parse(&["--rabbitmq-hosts", "a:1,b:1,c:1"]).unwrap();
        let clone = s.amqp.clone();
        let turns: Vec<usize> = (0..4)
            .map(|i| if i % 2 == 0 { &s.amqp } else { &clone })
            .map(|e| e.next_node.take_turn(e.nodes.len()))
            .collect();
        assert_eq!(turns, vec![0, 1, 2, 0]);
    }

    #[test]
    fn sentinels_replace_the_redis_address() {
        let s = parse(&["--redis-sentinels", "127.0.0.1:26391,127.0.0.1:26392"]).unwrap();
        assert_eq!(
            s.redis.address,
            RedisAddress::Sentinel {
                sentinels: vec![HostPort::loopback(26391), HostPort::loopback(26392)],
                master_name: "chatflow".to_string(),
            }
        );
        assert!(s.redis.display().contains("\"chatflow\""));
    }

    #[test]
    fn bad_lists_name_their_flag() {
        for (args, flag) in [
            (&["--rabbitmq-hosts", ""][..], "--rabbitmq-hosts"),
            (&["--rabbitmq-hosts", "a"][..], "--rabbitmq-hosts"),
            (&["--rabbitmq-hosts", "a:0"][..], "--rabbitmq-hosts"),
            (&["--rabbitmq-hosts", "a:1,:5"][..], "--rabbitmq-hosts"),
            (&["--rabbitmq-hosts", "a:x"][..], "--rabbitmq-hosts"),
            (&["--redis-sentinels", ","][..], "--redis-sentinels"),
            (
                &["--redis-sentinels", "s:1", "--redis-master-name", " "][..],
                "--redis-master-name",
            ),
            (
                &["--quorum-initial-group-size", "0"][..],
                "--quorum-initial-group-size",
            ),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }
}
