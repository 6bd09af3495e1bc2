//! Consumer configuration: command-line flags with environment fallbacks
//! (the deployment's variable names), validated once into a [`Config`]
//! whose `Default` documents every value. Every default works against
//! RabbitMQ and Redis on localhost.

use std::net::SocketAddr;
use std::time::Duration;

use chatflow_broker::{AmqpEndpoint, BrokerArgs, BrokerSettings};

use crate::assignment::{Assignment, QueueSlot, Standby};
pub use chatflow_database::Secret;
use chatflow_database::{DatabaseArgs, DatabaseSettings, Rollups};
pub use chatflow_protocol::flags::ConfigError;
use chatflow_protocol::flags::{bad, seconds};
use chatflow_protocol::{Rooms, Topology, SHARDS_PER_ROOM};
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser};

/// A validated consumer configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// RabbitMQ and Redis endpoints, and the topology: rooms, names and
    /// queue arguments (the same settings the server takes).
    pub services: BrokerSettings,
    /// How many AMQP connections the consumer channels are spread over.
    /// amiquip runs one I/O thread per connection and a failing connection
    /// takes all of its channels down, so a few connections bound the blast
    /// radius without paying an I/O thread per queue.
    pub amqp_connections: usize,
    /// Unacked deliveries the broker sends each consumer ahead. Bounds the
    /// memory a stalled consumer (Redis down) holds: prefetch × queues.
    pub prefetch: u16,
    /// Most deliveries broadcast in one Redis pipeline and acked with one
    /// `multiple` ack. A batch is flushed as soon as no more deliveries are
    /// ready, so it never waits for messages that are not coming.
    pub ack_batch: usize,
    /// Where `/health` and `/metrics` are served; port 0 picks a free port.
    pub metrics_bind: SocketAddr,
    /// Store every message in PostgreSQL and ack a delivery only after its
    /// row is committed. Off: ack after the broadcast.
    pub enable_persistence: bool,
    /// Run every thread under SCHED_BATCH (`chatflow_broker::sched`: a
    /// woken thread does not preempt the running one). The binary (and the
    /// drain benchmark) set it before starting the consumer; the library
    /// leaves its caller's threads alone.
    pub sched_batch: bool,
    /// PostgreSQL (with persistence on).
    pub database: Database,
    /// Each room's history: the Redis stream every broadcast is appended
    /// to, which servers resume clients from.
    pub history: History,
    /// First and longest wait between reconnect or retry attempts.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// On shutdown (or a standby's hand-back), how long a queue consumer
    /// waits for the rows it already handed to the writers to commit, so
    /// their deliveries are acked rather than redelivered.
    pub shutdown_grace: Duration,
    /// Names this consumer in the fleet's live statistics (its snapshot's
    /// Redis key and `consumerId`): 1..=64 characters, unique in the fleet.
    /// Default: hostname-pid.
    pub consumer_id: String,
    /// Which queues this process consumes, as owner or standby (default:
    /// instance 1 of 1, owning every queue).
    pub assignment: Assignment,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            services: BrokerSettings::default(),
            amqp_connections: 4,
            prefetch: 100,
            ack_batch: 100,
            metrics_bind: SocketAddr::from(([0, 0, 0, 0], 8083)),
            enable_persistence: true,
            sched_batch: true,
            database: Database::default(),
            history: History::default(),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(5),
            consumer_id: default_consumer_id(),
            assignment: Assignment::default(),
        }
    }
}

/// hostname-pid: unique per process on a host, and says where it runs.
fn default_consumer_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "consumer".to_string());
    format!("{host}-{}", std::process::id())
}

/// Where messages are stored and how they are written.
#[derive(Clone, Debug)]
pub struct Database {
    /// Where PostgreSQL is and as whom (the `DB_*` settings the server's
    /// read API shares).
    pub settings: DatabaseSettings,
    /// Writer threads, each with its own connection.
    pub writers: usize,
    /// Most rows per COPY batch.
    pub batch_rows: usize,
    /// Longest a row waits for its batch to fill.
    pub flush_interval: Duration,
    /// Apply `database/schema.sql` at start (idempotent). Off by default:
    /// `setup_database.sh` is the way to create the schema.
    pub apply_schema: bool,
    /// Maintain the analytics rollups with every batch. `Skip` only
    /// measures what they cost (the hidden `--no-rollups`, for the drain
    /// benchmark): it leaves the read API's analytics wrong.
    pub rollups: Rollups,
}

impl Default for Database {
    fn default() -> Self {
        Database {
            settings: DatabaseSettings::default(),
            writers: 4,
            batch_rows: 1000,
            flush_interval: Duration::from_millis(500),
            apply_schema: false,
            rollups: Rollups::Maintain,
        }
    }
}

/// The retention of each room's history stream (`{ns}:history:{room}`).
/// Both bounds are approximate (`~`): Redis trims whole nodes of the
/// stream (100 entries each by default), so a stream holds up to about a
/// node more than asked, and trimming costs next to nothing per append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History {
    /// Append every broadcast to its room's stream (and give it its
    /// position). Off only to measure what the append costs (the hidden
    /// `--no-history`): broadcasts then carry no position, and no client
    /// or server can resume.
    pub enabled: bool,
    /// Entries kept per room (`XADD … MAXLEN ~`). A 300-byte message
    /// frame takes about 350 bytes of Redis memory as a stream entry, so
    /// the default 10,000 is ~3.5 MB a room (70 MB for 20 rooms), which
    /// holds 20 s of a room at 500 messages/s — longer than a reconnect
    /// or a Redis subscription's back-off; older positions are filled from
    /// PostgreSQL by servers that have a database.
    pub max_len: u64,
    /// Entries older than this are trimmed too (`XTRIM … MINID ~`, by the
    /// Redis clock, checked at every append). `None`: by count only.
    pub max_age: Option<Duration>,
}

impl Default for History {
    fn default() -> Self {
        History {
            enabled: true,
            max_len: 10_000,
            max_age: None,
        }
    }
}

/// The longest standby delay (an hour: a standby that waits longer is not
/// standing by).
const MAX_STANDBY_DELAY: Duration = Duration::from_secs(3600);

/// The longest age a history may be kept by (a year: more is a mistake).
const MAX_HISTORY_AGE_SECS: u64 = 365 * 24 * 3600;

impl Database {
    /// A libpq-style connection string (values quoted, so any password
    /// works), naming the consumer in `pg_stat_activity`.
    pub fn connection_string(&self, connect_timeout: Duration) -> String {
        self.settings
            .connection_string("chatflow-consumer", connect_timeout)
    }

    pub fn display(&self) -> String {
        self.settings.display()
    }
}

impl Config {
    /// The names and queue arguments shared with the server.
    pub fn topology(&self) -> Topology {
        self.services.topology.clone()
    }

    pub fn rooms(&self) -> Rooms {
        self.services.topology.rooms
    }

    /// One consumer thread per queue this instance consumes: every
    /// (room, shard) queue, or only its own with `--no-standby`.
    pub fn consumer_count(&self) -> usize {
        self.assignment.queue_count(self.rooms().count())
    }

    /// The queues this instance consumes, in room-major order.
    pub fn queues(&self) -> Vec<QueueSlot> {
        self.assignment.queues(&self.services.topology)
    }

    /// Where and as whom AMQP connections are opened.
    pub fn amqp_endpoint(&self) -> AmqpEndpoint {
        self.services.amqp.clone()
    }

    /// The broker's address without credentials, for messages and `/health`.
    pub fn amqp_display(&self) -> String {
        self.services.amqp.display()
    }

    pub fn redis_display(&self) -> String {
        self.services.redis.display()
    }

    /// TCP connect (and handshake) timeout for every service.
    pub fn connect_timeout(&self) -> Duration {
        self.services.amqp.connect_timeout
    }

    /// Checks what a library caller (not going through [`Args`]) could get
    /// wrong; [`Args::into_config`] runs the same checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.services.validate()?;
        if self.enable_persistence {
            let db = &self.database;
            db.settings.validate()?;
            if !(1..=64).contains(&db.writers) {
                return Err(bad("writers", format!("{} is not in 1..=64", db.writers)));
            }
            if !(1..=100_000).contains(&db.batch_rows) {
                return Err(bad(
                    "batch-rows",
                    format!("{} is not in 1..=100000", db.batch_rows),
                ));
            }
            if db.flush_interval.is_zero() {
                return Err(bad("flush-interval-ms", "must be at least 1"));
            }
        }
        if self.prefetch == 0 {
            return Err(bad("prefetch", "must be at least 1"));
        }
        if self.ack_batch == 0 || self.ack_batch > self.prefetch as usize {
            return Err(bad(
                "ack-batch",
                format!(
                    "{} is not in 1..={} (the prefetch: a batch can never hold more)",
                    self.ack_batch, self.prefetch
                ),
            ));
        }
        let queues = self.rooms().count() * SHARDS_PER_ROOM;
        let a = &self.assignment;
        if !(1..=queues).contains(&a.instances) {
            return Err(bad(
                "instances",
                format!(
                    "{} is not in 1..={queues} (every instance owns at least one of the ROOMS×5 queues)",
                    a.instances
                ),
            ));
        }
        if !(1..=a.instances).contains(&a.instance) {
            return Err(bad(
                "instance",
                format!("{} is not in 1..={} (--instances)", a.instance, a.instances),
            ));
        }
        if let Standby::After(delay) = a.standby {
            if delay > MAX_STANDBY_DELAY {
                return Err(bad(
                    "standby-delay-secs",
                    format!(
                        "{} s is not in 0..={}",
                        delay.as_secs_f64(),
                        MAX_STANDBY_DELAY.as_secs()
                    ),
                ));
            }
        }
        if self.amqp_connections == 0 || self.amqp_connections > self.consumer_count() {
            return Err(bad(
                "amqp-connections",
                format!(
                    "{} is not in 1..={} (one per consumed queue at most)",
                    self.amqp_connections,
                    self.consumer_count()
                ),
            ));
        }
        if !(1..=100_000_000).contains(&self.history.max_len) {
            return Err(bad(
                "history-max-len",
                format!("{} is not in 1..=100000000", self.history.max_len),
            ));
        }
        if let Some(age) = self.history.max_age {
            if age.is_zero() || age.as_secs() > MAX_HISTORY_AGE_SECS {
                return Err(bad(
                    "history-max-age-secs",
                    format!("{} s is not in 1..={MAX_HISTORY_AGE_SECS}", age.as_secs()),
                ));
            }
        }
        if self.consumer_id.is_empty() || self.consumer_id.len() > 64 {
            return Err(bad("consumer-id", "must be 1..=64 characters"));
        }
        if self.retry_min.is_zero() || self.retry_min > self.retry_max {
            return Err(bad(
                "retry",
                "retry_min must be positive and at most retry_max",
            ));
        }
        Ok(())
    }
}

/// `chatflow-consumer`: RabbitMQ consumers that broadcast every message to
/// its room's Redis channel, then ack.
#[derive(Debug, Parser)]
#[command(name = "chatflow-consumer", version, about)]
pub struct Args {
    #[command(flatten)]
    pub services: BrokerArgs,
    /// AMQP connections the ROOMS×5 consumer channels are spread over.
    #[arg(long, env = "AMQP_CONNECTIONS", default_value_t = 4)]
    pub amqp_connections: usize,
    /// Unacked deliveries per consumer.
    #[arg(long, env = "PREFETCH", default_value_t = 100)]
    pub prefetch: u16,
    /// Most deliveries per Redis pipeline and per `multiple` ack.
    #[arg(long, env = "ACK_BATCH", default_value_t = 100)]
    pub ack_batch: usize,
    /// Address of the /health and /metrics endpoints.
    #[arg(long, env = "METRICS_BIND", default_value = "0.0.0.0:8083")]
    pub metrics_bind: String,
    /// Store messages in PostgreSQL and ack after commit (1/0, true/false,
    /// yes/no, on/off).
    #[arg(
        long,
        env = "ENABLE_PERSISTENCE",
        default_value = "true",
        value_parser = BoolishValueParser::new(),
        action = ArgAction::Set
    )]
    pub enable_persistence: bool,
    /// Keep the normal scheduling policy instead of SCHED_BATCH, under which
    /// a woken thread does not preempt the running one: fewer context
    /// switches on a box shared with the services (NO_SCHED_BATCH: 1/0,
    /// true/false, yes/no, on/off).
    #[arg(long, env = "NO_SCHED_BATCH", value_parser = BoolishValueParser::new(), action = ArgAction::SetTrue)]
    pub no_sched_batch: bool,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Writer threads (each its own connection, binary COPY).
    #[arg(long, env = "WRITERS", default_value_t = 4)]
    pub writers: usize,
    /// Most rows per COPY batch.
    #[arg(long, env = "BATCH_ROWS", default_value_t = 1000)]
    pub batch_rows: usize,
    /// Milliseconds a row waits at most for its batch to fill.
    #[arg(long, env = "FLUSH_INTERVAL_MS", default_value_t = 500)]
    pub flush_interval_ms: u64,
    /// Apply database/schema.sql at start (idempotent; APPLY_SCHEMA: 1/0,
    /// true/false, yes/no, on/off).
    #[arg(long, env = "APPLY_SCHEMA", value_parser = BoolishValueParser::new(), action = ArgAction::SetTrue)]
    pub apply_schema: bool,
    /// Benchmarks only: store rows without maintaining the rollups, to
    /// measure what they cost. Leaves the read API's analytics wrong.
    #[arg(long, hide = true, action = ArgAction::SetTrue)]
    pub no_rollups: bool,
    /// Seconds a queue consumer waits on shutdown for the rows it handed
    /// over to commit (then acks them; the rest is redelivered).
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 5.0)]
    pub shutdown_grace_secs: f64,
    /// Messages kept per room in its history stream (approximately), which
    /// clients and servers resume from.
    #[arg(long, env = "HISTORY_MAX_LEN", default_value_t = 10_000)]
    pub history_max_len: u64,
    /// Also trim a room's history of messages older than this many seconds
    /// (0: by count only).
    #[arg(long, env = "HISTORY_MAX_AGE_SECS", default_value_t = 0)]
    pub history_max_age_secs: u64,
    /// Benchmarks only: broadcast without appending to the rooms' history
    /// streams, to measure what the append costs. Nobody can resume.
    #[arg(long, hide = true, action = ArgAction::SetTrue)]
    pub no_history: bool,
    /// This consumer's id in the fleet's live statistics (default:
    /// hostname-pid).
    #[arg(long, env = "CONSUMER_ID")]
    pub consumer_id: Option<String>,
    /// Consumer processes sharing the queues: each owns a balanced share
    /// (queue i, in room-major order, is instance i mod N + 1's).
    #[arg(long, env = "CONSUMER_INSTANCES", default_value_t = 1)]
    pub instances: u32,
    /// Which of the --instances this process is, 1..=N.
    #[arg(long, env = "CONSUMER_INSTANCE", default_value_t = 1)]
    pub instance: u32,
    /// Consume only this instance's own queues, standing by for none of
    /// the others (CONSUMER_NO_STANDBY: 1/0, true/false, yes/no, on/off).
    #[arg(long, env = "CONSUMER_NO_STANDBY", value_parser = BoolishValueParser::new(), action = ArgAction::SetTrue)]
    pub no_standby: bool,
    /// Seconds after start before registering as the standby of the other
    /// instances' queues (so owners started at the same time come first).
    #[arg(long, env = "STANDBY_DELAY_SECS", default_value_t = 5.0)]
    pub standby_delay_secs: f64,
    /// Log format (RUST_LOG picks the events).
    #[command(flatten)]
    pub log: chatflow_telemetry::LogArgs,
}

impl Args {
    /// Checks every value and builds the [`Config`].
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let defaults = Config::default();
        let metrics_bind = self.metrics_bind.parse().map_err(|e| {
            bad(
                "metrics-bind",
                format!(
                    "{:?} is not an address like 0.0.0.0:8083 ({e})",
                    self.metrics_bind
                ),
            )
        })?;
        let config = Config {
            services: self.services.into_settings()?,
            amqp_connections: self.amqp_connections,
            prefetch: self.prefetch,
            ack_batch: self.ack_batch,
            metrics_bind,
            enable_persistence: self.enable_persistence,
            sched_batch: !self.no_sched_batch,
            database: Database {
                settings: self.database.into_settings()?,
                writers: self.writers,
                batch_rows: self.batch_rows,
                flush_interval: Duration::from_millis(self.flush_interval_ms),
                apply_schema: self.apply_schema,
                rollups: if self.no_rollups {
                    Rollups::Skip
                } else {
                    Rollups::Maintain
                },
            },
            shutdown_grace: seconds("shutdown-grace-secs", self.shutdown_grace_secs)?,
            history: History {
                enabled: !self.no_history,
                max_len: self.history_max_len,
                max_age: (self.history_max_age_secs > 0)
                    .then(|| Duration::from_secs(self.history_max_age_secs)),
            },
            consumer_id: self.consumer_id.unwrap_or(defaults.consumer_id.clone()),
            assignment: Assignment {
                instances: self.instances,
                instance: self.instance,
                standby: if self.no_standby {
                    Standby::Off
                } else {
                    Standby::After(standby_delay(self.standby_delay_secs)?)
                },
            },
            ..defaults
        };
        config.validate()?;
        Ok(config)
    }
}

/// `--standby-delay-secs`: 0 (register at once) up to an hour.
fn standby_delay(secs: f64) -> Result<Duration, ConfigError> {
    if secs.is_finite() && (0.0..=MAX_STANDBY_DELAY.as_secs_f64()).contains(&secs) {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(bad(
            "standby-delay-secs",
            format!(
                "{secs} is not a number of seconds in 0..={}",
                MAX_STANDBY_DELAY.as_secs()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assignment::{Duty, DEFAULT_STANDBY_DELAY};

    fn parse(args: &[&str]) -> Result<Config, String> {
        chatflow_testkit::cli::parse_config("chatflow-consumer", args, Args::into_config)
    }

    #[test]
    fn defaults_are_valid_and_local() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.rooms().count(), 20);
        assert_eq!(c.consumer_count(), 100);
        assert_eq!(c.prefetch, 100);
        assert_eq!(c.ack_batch, 100);
        assert_eq!(c.amqp_connections, 4);
        assert_eq!(c.metrics_bind.port(), 8083);
        assert!(c.enable_persistence);
        assert!(c.sched_batch);
        assert!(!parse(&["--no-sched-batch"]).unwrap().sched_batch);
        assert_eq!(c.database.writers, 4);
        assert_eq!(c.database.batch_rows, 1000);
        assert_eq!(c.history, History::default());
        assert_eq!(
            parse(&["--history-max-len", "500", "--history-max-age-secs", "60"])
                .unwrap()
                .history,
            History {
                enabled: true,
                max_len: 500,
                max_age: Some(Duration::from_secs(60)),
            }
        );
        assert!(!parse(&["--no-history"]).unwrap().history.enabled);
        assert_eq!(
            c.database.connection_string(Duration::from_secs(5)),
            "host='127.0.0.1' port=5432 user='postgres' dbname='chatflow' connect_timeout=5 application_name='chatflow-consumer'"
        );
        let amqp = c.amqp_endpoint();
        assert_eq!(
            (amqp.display().as_str(), amqp.vhost.as_str()),
            ("127.0.0.1:5672", "/")
        );
        assert_eq!(amqp.heartbeat, Duration::from_secs(30));
        assert_eq!(c.topology().queue(3, 4), "chatflow.room.3.4");
        assert!(c.consumer_id.ends_with(&format!("-{}", std::process::id())));
        assert_eq!(parse(&["--consumer-id", "c-7"]).unwrap().consumer_id, "c-7");
        assert_eq!(c.assignment, Assignment::default());
        assert_eq!(c.assignment.standby, Standby::After(DEFAULT_STANDBY_DELAY));
    }

    #[test]
    fn instances_pick_a_share_and_standby_can_be_off() {
        let c = parse(&["--rooms", "2", "--instances", "2", "--instance", "2"]).unwrap();
        assert_eq!(
            c.consumer_count(),
            10,
            "own share plus standby for the rest"
        );
        let owned = c.queues().iter().filter(|q| q.duty == Duty::Owner).count();
        assert_eq!(owned, 5);
        let c = parse(&[
            "--rooms",
            "2",
            "--instances",
            "3",
            "--instance",
            "3",
            "--no-standby",
            "--amqp-connections",
            "1",
        ])
        .unwrap();
        assert_eq!(c.assignment.standby, Standby::Off);
        assert_eq!(c.consumer_count(), 3, "queues 2, 5, 8 of 10");
        let c = parse(&["--standby-delay-secs", "0"]).unwrap();
        assert_eq!(c.assignment.standby, Standby::After(Duration::ZERO));
    }

    #[test]
    fn bad_values_name_their_flag() {
        chatflow_testkit::cli::assert_refusals_name_their_flag(
            parse,
            &[
                (&["--rooms", "0"][..], "--rooms"),
                (&["--prefetch", "0"][..], "--prefetch"),
                (&["--ack-batch", "0"][..], "--ack-batch"),
                (&["--ack-batch", "101"][..], "--ack-batch"),
                (&["--amqp-connections", "0"][..], "--amqp-connections"),
                (
                    &["--rooms", "1", "--amqp-connections", "6"][..],
                    "--amqp-connections",
                ),
                (&["--metrics-bind", "nowhere"][..], "--metrics-bind"),
                (&["--namespace", "a b"][..], "--namespace"),
                (&["--namespace", ""][..], "--namespace"),
                (&["--redis-timeout-secs", "0"][..], "--redis-timeout-secs"),
                (&["--rabbitmq-port", "0"][..], "--rabbitmq-port"),
                (&["--rabbitmq-port", "many"][..], "--rabbitmq-port"),
                (
                    &["--enable-persistence", "maybe"][..],
                    "--enable-persistence",
                ),
                (&["--writers", "0"][..], "--writers"),
                (&["--batch-rows", "0"][..], "--batch-rows"),
                (&["--flush-interval-ms", "0"][..], "--flush-interval-ms"),
                (&["--db-port", "x"][..], "--db-port"),
                (&["--consumer-id", ""][..], "--consumer-id"),
                (&["--history-max-len", "0"][..], "--history-max-len"),
                (
                    &["--history-max-age-secs", "99999999999"][..],
                    "--history-max-age-secs",
                ),
                (&["--consumer-id", &"c".repeat(65)][..], "--consumer-id"),
                (&["--instances", "0"][..], "--instances"),
                (&["--rooms", "1", "--instances", "6"][..], "--instances"),
                (&["--instances", "x"][..], "--instances"),
                (&["--instance", "0"][..], "--instance:"),
                (&["--instances", "2", "--instance", "3"][..], "--instance:"),
                (&["--instance=-1"][..], "--instance"),
                (&["--standby-delay-secs=-1"][..], "--standby-delay-secs"),
                (&["--standby-delay-secs", "NaN"][..], "--standby-delay-secs"),
                (
                    &["--standby-delay-secs", "3601"][..],
                    "--standby-delay-secs",
                ),
                (
                    &[
                        "--rooms",
                        "1",
                        "--instances",
                        "5",
                        "--no-standby",
                        "--amqp-connections",
                        "2",
                    ][..],
                    "--amqp-connections",
                ),
            ],
        );
    }

    #[test]
    fn persistence_can_be_turned_off_and_passwords_are_quoted() {
        assert!(
            !parse(&["--enable-persistence", "false"])
                .unwrap()
                .enable_persistence
        );
        let c = parse(&["--db-password", "it's \\ secret"]).unwrap();
        let conn = c.database.connection_string(Duration::from_secs(5));
        assert!(conn.ends_with(r"password='it\'s \\ secret'"), "{conn}");
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn credentials_are_never_printed() {
        let c = parse(&["--rabbitmq-password", "p@ss/w%rd"]).unwrap();
        assert_eq!(c.amqp_endpoint().password.expose(), "p@ss/w%rd");
        assert!(!format!("{c:?}").contains("p@ss"));
    }
}
