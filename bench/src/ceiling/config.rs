//! `brokerceiling`'s command line ([`Args`]) and the validated run it
//! describes ([`Command`], [`Config`]): every refusal names its flag.
//!
//! The defaults copy the product's shape: 20 rooms (100 quorum queues), one
//! publisher connection (the server's `PUBLISHERS` default), and consumers
//! as `chatflow-consumer` runs them (4 AMQP connections, prefetch 100,
//! batch acks of up to 100). The namespace is always one of its own unless
//! given, because the run deletes its topology at the end.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chatflow_broker::{BrokerSettings, HostPort, Secret};
use chatflow_protocol::flags::{bad, seconds, ConfigError};
use chatflow_protocol::Rooms;
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser};

/// Seconds a run publishes when neither `--messages` nor `--seconds` is
/// given: long enough for RabbitMQ's disk syncs and queue ticks to average
/// out, short enough to run beside a full-path benchmark.
pub const DEFAULT_SECONDS: f64 = 10.0;
/// More unconfirmed publishes than any client shape here (1,000 × 64)
/// would keep outstanding.
pub const MAX_IN_FLIGHT: usize = 100_000;
/// The server's own bound on `PUBLISHERS`.
pub const MAX_PUBLISHERS: usize = 64;
/// Each consumer connection is a broker socket and an amiquip I/O thread.
pub const MAX_CONSUMER_CONNECTIONS: usize = 64;

/// `brokerceiling`: what RabbitMQ alone delivers in ChatFlow's topology.
#[derive(Debug, Parser)]
#[command(
    name = "brokerceiling",
    about = "RabbitMQ alone in ChatFlow's topology: the product's quorum queues and \
             envelopes, persistent publishes with confirms at a fixed number in flight, \
             consumers acking in batches. Prints the confirmed publish rate, confirm \
             latency and the consume rate (or, with --drain, how fast a backlog drains). \
             Deletes its queues and exchanges at the end, on errors and on Ctrl-C."
)]
pub struct Args {
    /// Rooms 1..=N (5 quorum queues each).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub rooms: u32,
    /// Stop after this many publishes (all publishers together).
    #[arg(long, value_name = "N", conflicts_with = "seconds")]
    pub messages: Option<u64>,
    /// Publish for this long [default: 10].
    #[arg(long, value_name = "SECS")]
    pub seconds: Option<f64>,
    /// Unconfirmed publishes kept outstanding over all publishers (64 ≈
    /// the client's 64 connections × window 1; 1024 ≈ 64 × 16).
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub in_flight: usize,
    /// Publisher connections (one confirm channel each); --in-flight is
    /// spread over them.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub publishers: usize,
    /// Consume while publishing (one consumer per queue, acking).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = ArgAction::Set,
          value_parser = BoolishValueParser::new())]
    pub consume: bool,
    /// Instead: publish a backlog of N messages with no consumer, then start
    /// the consumers and time how fast they drain it.
    #[arg(long, value_name = "N", conflicts_with_all = ["messages", "seconds", "consume"])]
    pub drain: Option<u64>,
    /// RabbitMQ nodes, comma-separated host:port (publisher and consumer
    /// connections take turns over them).
    #[arg(long, env = "RABBITMQ_HOSTS", default_value = "127.0.0.1:5672")]
    pub rabbitmq_hosts: String,
    /// RabbitMQ user.
    #[arg(long, env = "RABBITMQ_USER", default_value = "guest")]
    pub rabbitmq_user: String,
    /// RabbitMQ password (default guest; never printed).
    #[arg(long, env = "RABBITMQ_PASSWORD", default_value = "guest",
          value_parser = Secret::parse, hide_env_values = true, hide_default_value = true)]
    pub rabbitmq_password: Secret,
    /// RabbitMQ virtual host.
    #[arg(long, env = "RABBITMQ_VHOST", default_value = "/")]
    pub rabbitmq_vhost: String,
    /// Nodes holding a replica of each queue (default as the product:
    /// every listed node up to 3; with one, RabbitMQ's default).
    #[arg(long, env = "QUORUM_INITIAL_GROUP_SIZE", value_name = "N")]
    pub quorum_initial_group_size: Option<u32>,
    /// AMQP connections the consumers' channels are spread over (the
    /// consumer's default).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub consumer_connections: usize,
    /// Unacked deliveries each queue's consumer is sent ahead (the
    /// consumer's default).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub prefetch: u16,
    /// Most deliveries acked with one `multiple` ack (the consumer's
    /// default; at most --prefetch).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub ack_batch: usize,
    /// Namespace of the exchange and queues [default: ceiling-PID-NANOS-N].
    /// It must not be in use: the run deletes it at the end.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// Instead of a run: delete this namespace's queues and exchanges (with
    /// --rooms rooms) and exit — for a run that was killed outright.
    #[arg(long, value_name = "NAMESPACE", conflicts_with_all = ["messages", "seconds", "drain", "namespace"])]
    pub delete_topology: Option<String>,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Run(Config),
    /// Delete a namespace's topology (`settings.topology`) and exit.
    DeleteTopology(BrokerSettings),
}

/// A validated run.
#[derive(Debug)]
pub struct Config {
    /// Where RabbitMQ is, and the topology (namespace, rooms, the product's
    /// queue arguments).
    pub settings: BrokerSettings,
    pub mode: Mode,
    /// Unconfirmed publishes outstanding over all publishers.
    pub in_flight: usize,
    pub publishers: usize,
    pub consumers: ConsumerShape,
    pub json: bool,
}

/// The two measurements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// Publish (with or without consumers) until `until`: the confirmed
    /// rate at `in_flight` messages outstanding.
    Publish { until: Until, consume: bool },
    /// Publish `backlog` messages with no consumer, then start the
    /// consumers and time the drain.
    Drain { backlog: u64 },
}

/// When a publish phase ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// After this many publishes in all.
    Messages(u64),
    /// When this much time has passed since the first publish.
    Elapsed(Duration),
}

/// How the consumers read, as `chatflow-consumer` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsumerShape {
    pub connections: usize,
    pub prefetch: u16,
    pub ack_batch: usize,
}

impl Args {
    /// Checks every value and builds the [`Command`].
    pub fn into_command(self) -> Result<Command, ConfigError> {
        let rooms = Rooms::new(self.rooms).map_err(|e| bad("rooms", e))?;
        let namespace = match (&self.delete_topology, &self.namespace) {
            (Some(namespace), _) | (None, Some(namespace)) => namespace.clone(),
            (None, None) => own_namespace(),
        };
        let mut settings = BrokerSettings::default().with_topology(&namespace, rooms);
        let amqp = &mut settings.amqp;
        amqp.nodes = HostPort::parse_list("rabbitmq-hosts", &self.rabbitmq_hosts)?;
        amqp.user = self.rabbitmq_user;
        amqp.password = self.rabbitmq_password;
        amqp.vhost = self.rabbitmq_vhost;
        settings.topology.quorum_initial_group_size = self
            .quorum_initial_group_size
            .or_else(|| settings.amqp.default_group_size());
        settings.validate()?;
        if self.delete_topology.is_some() {
            return Ok(Command::DeleteTopology(settings));
        }

        if self.in_flight == 0 || self.in_flight > MAX_IN_FLIGHT {
            return Err(bad(
                "in-flight",
                format!("{} is not in 1..={MAX_IN_FLIGHT}", self.in_flight),
            ));
        }
        if self.publishers == 0 || self.publishers > MAX_PUBLISHERS {
            return Err(bad(
                "publishers",
                format!("{} is not in 1..={MAX_PUBLISHERS}", self.publishers),
            ));
        }
        if self.publishers > self.in_flight {
            return Err(bad(
                "publishers",
                format!(
                    "{} publishers cannot share {} in flight (each needs at least one)",
                    self.publishers, self.in_flight
                ),
            ));
        }
        let consumers = ConsumerShape {
            connections: self.consumer_connections,
            prefetch: self.prefetch,
            ack_batch: self.ack_batch,
        };
        if consumers.connections == 0 || consumers.connections > MAX_CONSUMER_CONNECTIONS {
            return Err(bad(
                "consumer-connections",
                format!(
                    "{} is not in 1..={MAX_CONSUMER_CONNECTIONS}",
                    consumers.connections
                ),
            ));
        }
        if consumers.prefetch == 0 {
            return Err(bad("prefetch", "must be at least 1"));
        }
        if consumers.ack_batch == 0 || consumers.ack_batch > usize::from(consumers.prefetch) {
            return Err(bad(
                "ack-batch",
                format!(
                    "{} is not in 1..={} (the prefetch: a batch can never hold more)",
                    consumers.ack_batch, consumers.prefetch
                ),
            ));
        }
        let mode = match (self.drain, self.messages, self.seconds) {
            (Some(0), _, _) => return Err(bad("drain", "must be at least 1")),
            (Some(backlog), _, _) => Mode::Drain { backlog },
            (None, Some(0), _) => return Err(bad("messages", "must be at least 1")),
            (None, Some(n), _) => Mode::Publish {
                until: Until::Messages(n),
                consume: self.consume,
            },
            (None, None, secs) => Mode::Publish {
                until: Until::Elapsed(seconds("seconds", secs.unwrap_or(DEFAULT_SECONDS))?),
                consume: self.consume,
            },
        };
        Ok(Command::Run(Config {
            settings,
            mode,
            in_flight: self.in_flight,
            publishers: self.publishers,
            consumers,
            json: self.json,
        }))
    }
}

impl Config {
    /// Publisher `index`'s share of the in-flight count (they differ by at
    /// most one; [`Args::into_command`] makes sure none is 0).
    pub fn window(&self, index: usize) -> usize {
        share(self.in_flight as u64, self.publishers, index) as usize
    }

    /// Publisher `index`'s share of the publishes, if the phase is sized by
    /// a count.
    pub fn quota(&self, until: Until, index: usize) -> Until {
        match until {
            Until::Messages(n) => Until::Messages(share(n, self.publishers, index)),
            elapsed => elapsed,
        }
    }
}

/// `total` split over `parts`: part `index` gets the quotient, plus one
/// for the first `total % parts`.
fn share(total: u64, parts: usize, index: usize) -> u64 {
    let parts = parts as u64;
    total / parts + u64::from((index as u64) < total % parts)
}

/// `ceiling-{pid}-{nanos}-{n}`: unique on the machine, and says what made
/// it (should one ever be left behind).
fn own_namespace() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("ceiling-{}-{nanos}-{n}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        let argv = std::iter::once("brokerceiling").chain(args.iter().copied());
        let args = Args::try_parse_from(argv).map_err(|e| e.to_string())?;
        args.into_command().map_err(|e| e.to_string())
    }

    fn config(args: &[&str]) -> Config {
        match parse(args) {
            Ok(Command::Run(config)) => config,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn defaults_are_the_products_shape() {
        let c = config(&[]);
        assert_eq!(c.settings.topology.rooms.count(), 20);
        assert!(c.settings.topology.namespace.starts_with("ceiling-"));
        assert_eq!(c.settings.amqp.nodes, vec![HostPort::loopback(5672)]);
        assert_eq!((c.in_flight, c.publishers), (64, 1));
        assert_eq!(
            c.consumers,
            ConsumerShape {
                connections: 4,
                prefetch: 100,
                ack_batch: 100
            }
        );
        assert_eq!(
            c.mode,
            Mode::Publish {
                until: Until::Elapsed(Duration::from_secs(10)),
                consume: true
            }
        );
        // The product's queue arguments.
        assert!(c.settings.topology.single_active_consumer);
        assert_eq!(c.settings.topology.quorum_initial_group_size, None);
    }

    #[test]
    fn the_two_modes_and_their_sizes() {
        let c = config(&["--messages", "2000", "--consume", "false", "--rooms", "2"]);
        assert_eq!(
            c.mode,
            Mode::Publish {
                until: Until::Messages(2000),
                consume: false
            }
        );
        assert_eq!(c.settings.topology.shards().count(), 10);
        let c = config(&["--seconds", "2.5"]);
        assert_eq!(
            c.mode,
            Mode::Publish {
                until: Until::Elapsed(Duration::from_millis(2500)),
                consume: true
            }
        );
        let c = config(&["--drain", "200000", "--in-flight", "1024"]);
        assert_eq!(c.mode, Mode::Drain { backlog: 200_000 });
    }

    #[test]
    fn in_flight_and_messages_are_shared_out_evenly() {
        let c = config(&["--in-flight", "10", "--publishers", "4", "--messages", "7"]);
        let windows: Vec<usize> = (0..4).map(|i| c.window(i)).collect();
        assert_eq!(windows, vec![3, 3, 2, 2]);
        let quotas: Vec<Until> = (0..4).map(|i| c.quota(Until::Messages(7), i)).collect();
        assert_eq!(
            quotas,
            [2, 2, 2, 1].map(Until::Messages).to_vec(),
            "every message is someone's"
        );
        let elapsed = Until::Elapsed(Duration::from_secs(3));
        assert_eq!(c.quota(elapsed, 3), elapsed);
    }

    #[test]
    fn a_cluster_replicates_as_the_product_does() {
        let c = config(&["--rabbitmq-hosts", "a:5672,b:5672,c:5672,d:5672"]);
        assert_eq!(c.settings.amqp.nodes.len(), 4);
        assert_eq!(c.settings.topology.quorum_initial_group_size, Some(3));
        let c = config(&[
            "--rabbitmq-hosts",
            "a:1,b:1",
            "--quorum-initial-group-size",
            "1",
        ]);
        assert_eq!(c.settings.topology.quorum_initial_group_size, Some(1));
    }

    #[test]
    fn delete_topology_names_the_namespace_to_delete() {
        match parse(&["--delete-topology", "ceiling-1-2", "--rooms", "3"]) {
            Ok(Command::DeleteTopology(s)) => {
                assert_eq!(s.topology.namespace, "ceiling-1-2");
                assert_eq!(s.topology.rooms.count(), 3);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusals_name_their_flag() {
        for (args, flag) in [
            (&["--rooms", "0"][..], "--rooms"),
            (&["--in-flight", "0"][..], "--in-flight"),
            (&["--in-flight", "100001"][..], "--in-flight"),
            (&["--publishers", "0"][..], "--publishers"),
            (
                &["--publishers", "65", "--in-flight", "100"][..],
                "--publishers",
            ),
            (
                &["--publishers", "8", "--in-flight", "4"][..],
                "--publishers",
            ),
            (&["--messages", "0"][..], "--messages"),
            (&["--seconds", "0"][..], "--seconds"),
            (&["--seconds", "nan"][..], "--seconds"),
            (&["--messages", "5", "--seconds", "5"][..], "--seconds"),
            (&["--drain", "0"][..], "--drain"),
            (&["--drain", "5", "--seconds", "5"][..], "--seconds"),
            (&["--drain", "5", "--consume", "false"][..], "--consume"),
            (&["--consume", "maybe"][..], "--consume"),
            (
                &["--consumer-connections", "0"][..],
                "--consumer-connections",
            ),
            (&["--prefetch", "0"][..], "--prefetch"),
            (&["--ack-batch", "101"][..], "--ack-batch"),
            (&["--rabbitmq-hosts", "nowhere"][..], "--rabbitmq-hosts"),
            (&["--namespace", "a.b"][..], "--namespace"),
            (
                &["--quorum-initial-group-size", "0"][..],
                "--quorum-initial-group-size",
            ),
        ] {
            let err = parse(args).expect_err(&format!("{args:?} was accepted"));
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }

    #[test]
    fn own_namespaces_are_valid_and_differ() {
        let a = config(&[]).settings.topology.namespace;
        let b = config(&[]).settings.topology.namespace;
        assert_ne!(a, b);
    }
}
