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

/// Where and as whom AMQP connections are opened.
#[derive(Clone, Debug)]
pub struct AmqpEndpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Secret,
    pub vhost: String,
    /// A broker that vanishes without closing the TCP connection is noticed
    /// after about two intervals.
    pub heartbeat: Duration,
    /// TCP connect and AMQP handshake timeout: an unreachable host fails an
    /// attempt instead of hanging a reconnect loop.
    pub connect_timeout: Duration,
}

impl AmqpEndpoint {
    /// The broker's address without credentials, for messages and `/health`.
    pub fn display(&self) -> String {
        format!("{}:{}", host_for_url(&self.host), self.port)
    }
}

/// Where Redis is.
#[derive(Clone, Debug)]
pub struct RedisEndpoint {
    pub host: String,
    pub port: u16,
    /// Connect, read and write timeout: a hung Redis turns into an error
    /// (and a retry) instead of a thread blocked for ever.
    pub timeout: Duration,
}

impl RedisEndpoint {
    pub fn url(&self) -> String {
        format!("redis://{}/", self.display())
    }

    pub fn display(&self) -> String {
        format!("{}:{}", host_for_url(&self.host), self.port)
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
                host: "127.0.0.1".to_string(),
                port: 5672,
                user: "guest".to_string(),
                password: Secret::new("guest"),
                vhost: "/".to_string(),
                heartbeat: Duration::from_secs(30),
                connect_timeout: Duration::from_secs(5),
            },
            redis: RedisEndpoint {
                host: "127.0.0.1".to_string(),
                port: 6379,
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
        non_empty("rabbitmq-host", &amqp.host)?;
        non_empty("rabbitmq-user", &amqp.user)?;
        non_empty("rabbitmq-vhost", &amqp.vhost)?;
        if amqp.port == 0 {
            return Err(bad("rabbitmq-port", "must not be 0"));
        }
        if amqp.heartbeat.as_secs() > u64::from(u16::MAX) {
            return Err(bad("amqp-heartbeat-secs", "must fit in 16 bits"));
        }
        non_empty("redis-host", &self.redis.host)?;
        if self.redis.port == 0 {
            return Err(bad("redis-port", "must not be 0"));
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
        let settings = BrokerSettings {
            amqp: AmqpEndpoint {
                host: self.rabbitmq_host,
                port: self.rabbitmq_port,
                user: self.rabbitmq_user,
                password: self.rabbitmq_password,
                vhost: self.rabbitmq_vhost,
                heartbeat: Duration::from_secs(self.amqp_heartbeat_secs.into()),
                connect_timeout: seconds("connect-timeout-secs", self.connect_timeout_secs)?,
            },
            redis: RedisEndpoint {
                host: self.redis_host,
                port: self.redis_port,
                timeout: seconds("redis-timeout-secs", self.redis_timeout_secs)?,
            },
            topology: Topology {
                queue_max_length: self.queue_max_length,
                delivery_limit: self.delivery_limit,
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
        s.redis.host = "::1".to_string();
        assert_eq!(s.redis.url(), "redis://[::1]:6379/");
        assert_eq!(s.amqp.display(), "127.0.0.1:5672");
    }
}
