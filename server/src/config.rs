//! Server configuration: command-line flags with environment fallbacks,
//! validated once into a [`Config`] whose `Default` documents every value.

use std::net::SocketAddr;
use std::time::Duration;

use chatflow_broker::{BrokerArgs, BrokerSettings};
use chatflow_database::{DatabaseArgs, DatabaseSettings};
pub use chatflow_protocol::flags::ConfigError;
use chatflow_protocol::flags::{bad, seconds};
use chatflow_protocol::message::MAX_CLIENT_MESSAGE_BYTES;
use chatflow_protocol::Rooms;
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser, ValueEnum};

/// Where accepted messages go and where room broadcasts come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BrokerKind {
    /// RabbitMQ with publisher confirms (ack on confirm), room broadcasts
    /// from consumers over Redis pub/sub. The distributed system.
    Rabbitmq,
    /// In-process: every accepted message is broadcast at once to its room
    /// on every worker of this server. One server, no durability.
    Memory,
    /// Ack without delivering anything: the socket path alone, for
    /// benchmarks (the seed's first, echo-only server).
    None,
}

impl BrokerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerKind::Rabbitmq => "rabbitmq",
            BrokerKind::Memory => "memory",
            BrokerKind::None => "none",
        }
    }
}

/// Whether and how this server keeps presence (who is in each room,
/// `--presence`; see [`crate::presence`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PresenceMode {
    /// `shared` with `--broker rabbitmq` (the fleet shares Redis already),
    /// `local` otherwise.
    Auto,
    /// No presence: JOIN and LEAVE are messages like any other, and a
    /// `presence` request gets an `UNAVAILABLE` error.
    Off,
    /// This server's own connections only (one server, or a test).
    Local,
    /// Shared with every server of the namespace through Redis, with
    /// heartbeats and expiry.
    Shared,
}

impl PresenceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceMode::Auto => "auto",
            PresenceMode::Off => "off",
            PresenceMode::Local => "local",
            PresenceMode::Shared => "shared",
        }
    }
}

/// Presence: the membership model's timings and bounds
/// ([`crate::presence`] says what each one means for a client).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceConfig {
    pub mode: PresenceMode,
    /// How long a user whose last connection closed (without `LEAVE`)
    /// stays listed: a reconnect within it does not flap them out and in
    /// (a `LEAVE` removes at once). 5 s: a client's reconnect back-off
    /// starts at 100 ms and a balancer moves it to another server in
    /// well under that.
    pub grace: Duration,
    /// How often a `shared` server refreshes its presence in Redis (and
    /// reads the others' more often: [`PresenceConfig::poll`]).
    pub heartbeat: Duration,
    /// How long a server's presence outlives its last heartbeat: a server
    /// that died (kill -9, a lost host) drops out of every member list
    /// within this plus a poll and a frame interval. Three heartbeats: one
    /// late heartbeat on a busy host must not drop a live server.
    pub expiry: Duration,
    /// Each room's members get at most one `presence_join` and one
    /// `presence_leave` frame per interval (the changes in between are
    /// batched): a connection storm is a few frames per member, not one
    /// per arrival. The first change after a quiet interval goes out at
    /// once.
    pub frame_interval: Duration,
    /// Users one connection can make present (one person has one; a bot
    /// or a load generator multiplexing users over a socket has more).
    /// A `JOIN` past it is still a message — acked, broadcast, stored —
    /// but adds no member (counted in
    /// `chatflow_server_presence_joins_over_limit_total`).
    pub max_users_per_connection: usize,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            mode: PresenceMode::Auto,
            grace: Duration::from_secs(5),
            heartbeat: Duration::from_secs(2),
            expiry: Duration::from_secs(6),
            frame_interval: Duration::from_millis(500),
            max_users_per_connection: 1_000,
        }
    }
}

impl PresenceConfig {
    /// `auto` resolved for `broker` (never [`PresenceMode::Auto`]).
    pub fn mode_for(&self, broker: BrokerKind) -> PresenceMode {
        match (self.mode, broker) {
            (PresenceMode::Auto, BrokerKind::Rabbitmq) => PresenceMode::Shared,
            (PresenceMode::Auto, _) => PresenceMode::Local,
            (mode, _) => mode,
        }
    }

    /// How often a `shared` server reads the other servers' presence: a
    /// quarter second (or half a heartbeat, if that is shorter), so an
    /// arrival on another server reaches this one's members within it
    /// plus a frame interval. Each read is two small round trips, plus
    /// the rooms that changed.
    pub fn poll(&self) -> Duration {
        (self.heartbeat / 2).min(Duration::from_millis(250))
    }
}

/// A validated server configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address every worker's listener binds (with `SO_REUSEPORT`). Port 0
    /// picks a free port, shared by all workers.
    pub bind: SocketAddr,
    /// Worker threads, each pinned to one core. Default: one per core this
    /// process may use.
    pub workers: usize,
    /// Pin workers to cores. Off only where pinning is unwanted (a shared
    /// test machine running many servers at once).
    pub pin_workers: bool,
    /// Run every thread under SCHED_BATCH (`chatflow_broker::sched`: a
    /// woken thread does not preempt the running one). The binary sets it
    /// before starting the server; the library leaves its caller's threads
    /// alone.
    pub sched_batch: bool,
    pub broker: BrokerKind,
    /// Open (and opening) WebSocket connections over this are refused with
    /// HTTP 503 at the handshake.
    pub max_connections: usize,
    /// Bytes a connection may leave queued (the kernel would take no more)
    /// at the end of a loop turn before it is treated as a slow reader and
    /// closed (1008). Bounds memory per connection, to this plus one turn's
    /// output.
    pub max_pending_output: usize,
    /// `SO_SNDBUF` for client sockets; `None` leaves the kernel's
    /// autotuning (up to `net.ipv4.tcp_wmem`'s max, megabytes per socket).
    /// Output a slow reader leaves unread sits first in this kernel buffer,
    /// then in `max_pending_output`.
    pub socket_send_buffer: Option<usize>,
    /// tungstenite's per-connection read buffer. Allocated eagerly for every
    /// connection, so it dominates idle memory: 2 KiB holds ten typical
    /// messages while keeping an idle connection near 3 KiB.
    pub read_buffer_size: usize,
    /// Largest accepted frame/message. Anything larger is answered with a
    /// TOO_LARGE error and a 1009 close.
    pub max_message_size: usize,
    /// Longest HTTP request head read before the upgrade (431 past it).
    pub max_request_head: usize,
    /// Frames one message may arrive in. tungstenite bounds a message's
    /// bytes, not its frames: without this, a message of empty
    /// continuation frames could be fed forever. Browsers and our client
    /// send a chat message in one frame; 64 leaves room for any client
    /// that fragments an 8 KiB message.
    pub max_fragments: u32,
    /// A message whose frames have not all arrived this long after its
    /// first bytes ends the connection (1008): a client dribbling one
    /// message must not hold a buffer and a slot for ever.
    pub message_timeout: Duration,
    /// Opening handshakes that do not complete in this long are dropped, so
    /// half-open or stalled sockets cannot pile up.
    pub handshake_timeout: Duration,
    /// On shutdown, how long clients get to answer the 1001 close.
    pub shutdown_grace: Duration,
    /// On shutdown, how long `/health` answers 503 (`draining`) while the
    /// server goes on serving as usual, so that a load balancer takes it
    /// out of rotation before it stops accepting (tuning/haproxy.cfg's
    /// test profile notices within 0.75 s; its deployed 30 s checks may
    /// not, and its retries then move refused upgrades to another
    /// server). The binary's default is 10 s
    /// (`--drain-secs`); a library caller (a test) opts in, like `api`,
    /// so that stopping a test server does not take 10 s.
    pub drain: Duration,
    /// How long a published message may wait for the broker's confirm.
    /// Past it its client gets an `UNAVAILABLE` timeout error ("it may
    /// have been stored": a retry under its `clientMessageId` is safe)
    /// instead of silence — a confirm held back by a broker in trouble
    /// (a quorum queue electing a leader, say) otherwise left clients to
    /// their own timeouts. On shutdown, after the drain, it is also how
    /// long the messages in flight may wait so that their acks reach their
    /// clients before the 1001 close.
    pub confirm_timeout: Duration,
    /// How long the Redis subscription may be down before `/health` says
    /// 503: the subscriber reconnects within its back-off (from 100 ms),
    /// and a blip must not flap the server in and out of a balancer.
    /// (Publishing to RabbitMQ has no grace: with it down every message
    /// is refused.)
    pub subscription_grace: Duration,
    /// WebSocket pings and TCP keepalive: how dead peers are found.
    pub liveness: Liveness,
    /// Connections the kernel queues per worker listener before `accept`
    /// takes them (the `listen()` backlog): a reconnect storm after a
    /// server or balancer restart arrives faster than a worker accepts.
    /// The kernel caps it at `net.core.somaxconn` anyway, so the default
    /// is that value ([`default_listen_backlog`]): tuning the host
    /// (tuning/sysctl.conf raises it to 65,535) is what raises it.
    pub listen_backlog: u32,
    /// Join the `SO_REUSEPORT` group of another process already listening
    /// on `bind`. Off: start-up fails when the address is taken, so a second
    /// server started by mistake cannot silently take half the connections
    /// (and, with `--broker memory`, split every room in two).
    pub share_port: bool,
    /// Names this server in envelopes and `/health`.
    pub server_id: String,
    /// RabbitMQ and Redis endpoints, and the topology: rooms and names
    /// (the same settings the consumer takes).
    pub services: BrokerSettings,
    /// How accepted messages are handed to RabbitMQ (`--broker rabbitmq`).
    pub publishing: Publishing,
    /// Resuming clients from their room's history (`?since=`).
    pub history: HistoryConfig,
    /// Who is in each room (`--presence`).
    pub presence: PresenceConfig,
    /// The read API on its own port and threads (`None`: not served). The
    /// binary's default is `0.0.0.0:8082`; a library caller (a test)
    /// opts in, so that servers started side by side do not fight over
    /// one port.
    pub api: Option<ApiConfig>,
}

/// The read API (server/API.md): its port, threads, database pool and
/// the bounds every request is held to.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Where it listens (port 0 picks a free port).
    pub bind: SocketAddr,
    /// Threads answering requests (`api-N`), each one request at a time:
    /// queries block, so this bounds the database work in flight.
    pub threads: usize,
    /// Connections open at once (each on a thread of the HTTP server while
    /// it lasts); past it, new ones wait in the listen queue.
    pub max_connections: usize,
    /// A client that sends nothing (or reads nothing) for this long mid-
    /// request or between requests is disconnected.
    pub io_timeout: Duration,
    /// The primary: resumes fill from it (never behind), and the API reads
    /// it unless a replica is set.
    pub database: DatabaseSettings,
    /// A streaming replica the API's queries go to (`DB_READ_HOST`).
    pub replica: Option<DatabaseSettings>,
    /// Pooled connections (the most queries in flight).
    pub pool_size: u32,
    /// How long a request waits for a pooled connection before a 503.
    pub pool_timeout: Duration,
    /// PostgreSQL cancels an API query running longer (a 504).
    pub statement_timeout: Duration,
    /// Longest window the aggregate endpoints accept (a 400 past it).
    pub max_window: Duration,
    /// Longest window the analytics' per-user part (top users,
    /// participation) is computed for: it scans every message of the
    /// window (at 10M rows a day takes ~1 s, a week past the statement
    /// timeout). Longer windows get the rest of the analytics without it.
    pub max_user_window: Duration,
}

impl ApiConfig {
    /// What the API's queries read: the replica if one is set.
    pub fn reads(&self) -> &DatabaseSettings {
        self.replica.as_ref().unwrap_or(&self.database)
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            bind: SocketAddr::from(([0, 0, 0, 0], 8082)),
            threads: 4,
            max_connections: 256,
            io_timeout: Duration::from_secs(10),
            database: DatabaseSettings::default(),
            replica: None,
            pool_size: 8,
            pool_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(5),
            max_window: Duration::from_secs(168 * 3600),
            max_user_window: Duration::from_secs(24 * 3600),
        }
    }
}

impl Config {
    /// Rooms `1..=N`: connections to others are refused.
    pub fn rooms(&self) -> Rooms {
        self.services.topology.rooms
    }
}

/// How the server finds peers that are gone without a FIN (a crashed
/// host, a cut cable, a NAT that forgot the connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    /// An open WebSocket from which nothing has arrived for this long is
    /// sent a ping (`None`: never). 25 s: under the idle timeouts of
    /// common proxies and NATs (HAProxy's `timeout tunnel` in
    /// tuning/haproxy.cfg is 60 s), so a quiet client's tunnel stays up.
    pub ping_interval: Option<Duration>,
    /// A pinged WebSocket from which nothing (a pong, or any other frame)
    /// has arrived for this long is closed with 1001 and counted
    /// (`pingTimeouts`). 10 s: a live client answers within a round
    /// trip; this leaves room for a busy one.
    pub pong_timeout: Duration,
    /// `SO_KEEPALIVE` on client sockets (`None`: off). It also covers a
    /// connection that is not yet (or no longer) a WebSocket, and keeps
    /// conntrack/NAT entries alive.
    pub tcp_keepalive: Option<TcpKeepalive>,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            ping_interval: Some(Duration::from_secs(25)),
            pong_timeout: Duration::from_secs(10),
            tcp_keepalive: Some(TcpKeepalive::default()),
        }
    }
}

/// TCP keepalive: after `idle` with nothing exchanged the kernel probes
/// every `interval`, and drops the connection after `probes` unanswered
/// ones (Linux's defaults, 2 h + 9 × 75 s, find a dead peer after more
/// than two hours).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpKeepalive {
    /// 60 s: above the ping interval, so an open WebSocket's pings keep
    /// it from ever probing; only silent sockets are probed.
    pub idle: Duration,
    pub interval: Duration,
    /// 6 probes 10 s apart: a dead peer is dropped 2 minutes after it
    /// went silent.
    pub probes: u32,
}

impl Default for TcpKeepalive {
    fn default() -> Self {
        TcpKeepalive {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            probes: 6,
        }
    }
}

/// How the RabbitMQ broker publishes.
#[derive(Clone, Debug)]
pub struct Publishing {
    /// Publisher threads, each with its own AMQP connection and confirm
    /// channel. A sender always uses the same one, so its order holds.
    pub publishers: usize,
    /// Publishes waiting for a publisher thread, per thread; past it new
    /// messages are refused at once instead of queueing without bound.
    pub publish_queue: usize,
}

/// How a resume (`/chat/{roomId}?since={position}`) is read and bounded.
#[derive(Clone, Debug)]
pub struct HistoryConfig {
    /// Most messages one resume replays (history and database together);
    /// past it the `recovery` frame says `LIMIT`. The default is the
    /// consumer's default retention, so a client whose position is still
    /// held gets all of it; at ~300 bytes a message that is ~3 MB sent to
    /// one client, a page at a time.
    pub replay_max: usize,
    /// Entries read per request to the history thread (one `XRANGE`). A
    /// page is queued on the connection at once, so it must stay well
    /// under `max_pending_output`: 100 messages are ~30 KB. The next page
    /// is asked for once the connection's output has drained, so a slow
    /// reader slows its own replay instead of being cut off.
    pub page: usize,
    /// Live broadcasts a resuming connection holds while its replay is
    /// read. Past it they are dropped — they are in the history too — and
    /// the replay reads on until it has passed them.
    pub live_buffer: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            replay_max: 10_000,
            page: 100,
            live_buffer: 1_000,
        }
    }
}

impl Default for Publishing {
    fn default() -> Self {
        Publishing {
            publishers: 1,
            publish_queue: 65_536,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: SocketAddr::from(([0, 0, 0, 0], 8080)),
            workers: available_cores(),
            pin_workers: true,
            sched_batch: true,
            broker: BrokerKind::Rabbitmq,
            max_connections: 100_000,
            max_pending_output: 256 * 1024,
            socket_send_buffer: None,
            read_buffer_size: 2 * 1024,
            max_message_size: MAX_CLIENT_MESSAGE_BYTES,
            max_request_head: 8 * 1024,
            max_fragments: 64,
            message_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(2),
            drain: Duration::ZERO,
            confirm_timeout: Duration::from_secs(5),
            subscription_grace: Duration::from_secs(5),
            liveness: Liveness::default(),
            listen_backlog: default_listen_backlog(),
            share_port: false,
            server_id: default_server_id(),
            services: BrokerSettings::default(),
            publishing: Publishing::default(),
            history: HistoryConfig::default(),
            presence: PresenceConfig::default(),
            api: None,
        }
    }
}

/// Cores this process may run on (respects taskset and cpusets).
pub fn available_cores() -> usize {
    core_affinity::get_core_ids()
        .map(|ids| ids.len())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Where Linux says how long an accept queue may be.
const SOMAXCONN: &str = "/proc/sys/net/core/somaxconn";

/// The largest `--listen-backlog`: a million connections waiting for one
/// listener is far past anything useful, and it stays an `i32` for
/// `listen()`.
const MAX_LISTEN_BACKLOG: u32 = 1 << 20;

/// The host's `net.core.somaxconn`, if it can be read.
fn somaxconn() -> Option<u32> {
    std::fs::read_to_string(SOMAXCONN).ok()?.trim().parse().ok()
}

/// The listen backlog when none is asked for: the host's somaxconn (what
/// the kernel would cap a larger one to), clamped to 128..=65535, or
/// 4096 (Linux's default somaxconn since 5.4) when it cannot be read.
/// The floor keeps a badly tuned host (somaxconn 16) from dropping a
/// reconnect burst of a few hundred; past 65,535 waiting connections per
/// worker a client would wait longer for its accept than it waits to
/// retry, so a larger queue only hides an overloaded server.
pub fn default_listen_backlog() -> u32 {
    backlog_for(somaxconn())
}

fn backlog_for(somaxconn: Option<u32>) -> u32 {
    somaxconn.map_or(4096, |n| n.clamp(128, 65_535))
}

fn default_server_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "server".to_string());
    format!("{host}-{}", std::process::id())
}

/// `chatflow-server`: thread-per-core WebSocket chat server.
#[derive(Debug, Parser)]
#[command(name = "chatflow-server", version, about)]
pub struct Args {
    /// Address to listen on (WebSocket at /chat/{roomId}, plain HTTP at /health).
    #[arg(long, env = "BIND", default_value = "0.0.0.0:8080")]
    pub bind: String,
    /// Worker threads, one per core (default: every core this process may use).
    #[arg(long, env = "WORKERS")]
    pub workers: Option<usize>,
    /// Do not pin workers to cores (NO_PIN: 1/0, true/false, yes/no, on/off).
    #[arg(long, env = "NO_PIN", value_parser = BoolishValueParser::new(), action = ArgAction::SetTrue)]
    pub no_pin: bool,
    /// Keep the normal scheduling policy instead of SCHED_BATCH, under which
    /// a woken thread does not preempt the running one: fewer context
    /// switches on a box shared with the services (NO_SCHED_BATCH: 1/0,
    /// true/false, yes/no, on/off).
    #[arg(long, env = "NO_SCHED_BATCH", value_parser = BoolishValueParser::new(), action = ArgAction::SetTrue)]
    pub no_sched_batch: bool,
    /// Where accepted messages go.
    #[arg(long, env = "BROKER", value_enum, default_value = "rabbitmq")]
    pub broker: BrokerKind,
    /// Refuse WebSocket connections past this many with HTTP 503.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,
    /// Close a connection (1008) whose unsent output passes this many bytes.
    #[arg(long, env = "MAX_PENDING_OUTPUT", default_value_t = 256 * 1024)]
    pub max_pending_output: usize,
    /// SO_SNDBUF of client sockets in bytes (default: kernel autotuning).
    #[arg(long, env = "SOCKET_SEND_BUFFER")]
    pub socket_send_buffer: Option<usize>,
    /// Per-connection read buffer in bytes.
    #[arg(long, env = "READ_BUFFER_SIZE", default_value_t = 2 * 1024)]
    pub read_buffer_size: usize,
    /// Seconds a client gets to answer the close on shutdown.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 2.0)]
    pub shutdown_grace_secs: f64,
    /// On SIGTERM/SIGINT, seconds /health answers 503 while the server goes
    /// on serving, so a load balancer notices before it stops accepting (0: none).
    #[arg(long, env = "DRAIN_SECS", default_value_t = 10.0)]
    pub drain_secs: f64,
    /// Seconds a message may wait for the broker's confirm before its
    /// client gets UNAVAILABLE (may be stored; retry with the same
    /// clientMessageId); also how long shutdown waits for in-flight acks.
    #[arg(long, env = "CONFIRM_TIMEOUT_SECS", default_value_t = 5.0)]
    pub confirm_timeout_secs: f64,
    /// Seconds the Redis subscription may be down before /health says 503.
    #[arg(long, env = "SUBSCRIPTION_GRACE_SECS", default_value_t = 5.0)]
    pub subscription_grace_secs: f64,
    /// Ping a WebSocket silent for this many seconds (0: never).
    #[arg(long, env = "PING_INTERVAL_SECS", default_value_t = 25.0)]
    pub ping_interval_secs: f64,
    /// Close (1001) a pinged WebSocket silent for this many more seconds.
    #[arg(long, env = "PONG_TIMEOUT_SECS", default_value_t = 10.0)]
    pub pong_timeout_secs: f64,
    /// No SO_KEEPALIVE on client sockets (NO_TCP_KEEPALIVE: 1/0, true/false, yes/no, on/off).
    #[arg(long, env = "NO_TCP_KEEPALIVE", value_parser = BoolishValueParser::new(), action = ArgAction::SetTrue)]
    pub no_tcp_keepalive: bool,
    /// Seconds a client socket may be silent before TCP keepalive probes it.
    #[arg(long, env = "TCP_KEEPALIVE_IDLE_SECS", default_value_t = 60)]
    pub tcp_keepalive_idle_secs: u64,
    /// Seconds between TCP keepalive probes (6 unanswered drop the connection).
    #[arg(long, env = "TCP_KEEPALIVE_INTERVAL_SECS", default_value_t = 10)]
    pub tcp_keepalive_interval_secs: u64,
    /// Seconds an opening handshake may take.
    #[arg(long, env = "HANDSHAKE_TIMEOUT_SECS", default_value_t = 10.0)]
    pub handshake_timeout_secs: f64,
    /// Frames one WebSocket message may be split into (more: close 1009).
    #[arg(long, env = "MAX_FRAGMENTS", default_value_t = 64)]
    pub max_fragments: u32,
    /// Seconds the frames of one message may take to arrive (more: close 1008).
    #[arg(long, env = "MESSAGE_TIMEOUT_SECS", default_value_t = 10.0)]
    pub message_timeout_secs: f64,
    /// Connections queued per worker listener before accept (default: the
    /// host's net.core.somaxconn, which also caps it; 4096 if unreadable).
    #[arg(long, env = "LISTEN_BACKLOG")]
    pub listen_backlog: Option<u32>,
    /// Share the port with another process already listening on it
    /// (SO_REUSEPORT); without this, start-up fails if the port is taken.
    #[arg(long, env = "SHARE_PORT", value_parser = BoolishValueParser::new(), action = ArgAction::SetTrue)]
    pub share_port: bool,
    /// This server's id in envelopes and /health (default: hostname-pid).
    #[arg(long, env = "SERVER_ID")]
    pub server_id: Option<String>,
    #[command(flatten)]
    pub services: BrokerArgs,
    /// Publisher threads (each an AMQP connection with a confirm channel).
    #[arg(long, env = "PUBLISHERS", default_value_t = 1)]
    pub publishers: usize,
    /// Most messages replayed to a client resuming with ?since= (more: the
    /// recovery frame says LIMIT).
    #[arg(long, env = "HISTORY_REPLAY_MAX", default_value_t = 10_000)]
    pub history_replay_max: usize,
    /// Presence (who is in each room): auto is shared over Redis with
    /// --broker rabbitmq, local otherwise.
    #[arg(long, env = "PRESENCE", value_enum, default_value = "auto")]
    pub presence: PresenceMode,
    /// Seconds a user whose last connection closed without LEAVE stays
    /// listed, so a reconnect does not flap (0: removed at once).
    #[arg(long, env = "PRESENCE_GRACE_SECS", default_value_t = 5.0)]
    pub presence_grace_secs: f64,
    /// Seconds between a shared server's presence heartbeats in Redis.
    #[arg(long, env = "PRESENCE_HEARTBEAT_SECS", default_value_t = 2.0)]
    pub presence_heartbeat_secs: f64,
    /// Heartbeats a server's presence outlives its last one by (a dead
    /// server's users disappear within that).
    #[arg(long, env = "PRESENCE_EXPIRY_HEARTBEATS", default_value_t = 3)]
    pub presence_expiry_heartbeats: u32,
    /// Seconds between one room's presence_join (or presence_leave) frames.
    #[arg(long, env = "PRESENCE_FRAME_INTERVAL_SECS", default_value_t = 0.5)]
    pub presence_frame_interval_secs: f64,
    /// Users one connection can make present with JOIN.
    #[arg(
        long,
        env = "PRESENCE_MAX_USERS_PER_CONNECTION",
        default_value_t = 1_000
    )]
    pub presence_max_users_per_connection: usize,
    /// Where the read API listens (history, analytics, /api/metrics), or "off".
    #[arg(long, env = "API_BIND", default_value = "0.0.0.0:8082")]
    pub api_bind: String,
    /// Threads answering API requests, one query at a time each.
    #[arg(long, env = "API_THREADS", default_value_t = 4)]
    pub api_threads: usize,
    /// API connections open at once (more wait in the listen queue).
    #[arg(long, env = "API_MAX_CONNECTIONS", default_value_t = 256)]
    pub api_max_connections: usize,
    /// Seconds an API client may stay silent mid-request or between requests.
    #[arg(long, env = "API_IO_TIMEOUT_SECS", default_value_t = 10.0)]
    pub api_io_timeout_secs: f64,
    /// Seconds PostgreSQL lets one API query run before cancelling it (504).
    #[arg(long, env = "API_STATEMENT_TIMEOUT_SECS", default_value_t = 5.0)]
    pub api_statement_timeout_secs: f64,
    /// Longest window, in hours, the aggregate endpoints accept.
    #[arg(long, env = "API_MAX_WINDOW_HOURS", default_value_t = 168)]
    pub api_max_window_hours: u32,
    /// Longest window, in hours, the analytics' top users and participation
    /// are computed for (they scan every message of the window).
    #[arg(long, env = "API_MAX_USER_WINDOW_HOURS", default_value_t = 24)]
    pub api_max_user_window_hours: u32,
    /// PostgreSQL connections in the API's pool.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 8)]
    pub db_pool_size: u32,
    /// Seconds an API request waits for a pooled connection (503 past it).
    #[arg(long, env = "DB_POOL_TIMEOUT_SECS", default_value_t = 2.0)]
    pub db_pool_timeout_secs: f64,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// A streaming replica the read API queries instead of the primary
    /// (same user, password and database name); resumes that fall back to
    /// the database still read the primary, which is never behind.
    #[arg(long, env = "DB_READ_HOST")]
    pub db_read_host: Option<String>,
    /// The replica's port (default: --db-port).
    #[arg(long, env = "DB_READ_PORT")]
    pub db_read_port: Option<u16>,
    /// Log format (RUST_LOG picks the events).
    #[command(flatten)]
    pub log: chatflow_telemetry::LogArgs,
}

impl Args {
    /// Checks every value and builds the [`Config`].
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let defaults = Config::default();
        let bind = self.bind.parse().map_err(|e| {
            bad(
                "bind",
                format!("{:?} is not an address like 0.0.0.0:8080 ({e})", self.bind),
            )
        })?;
        let workers = self.workers.unwrap_or(defaults.workers);
        if !(1..=1024).contains(&workers) {
            return Err(bad("workers", format!("{workers} is not in 1..=1024")));
        }
        if self.max_connections == 0 {
            return Err(bad("max-connections", "must be at least 1"));
        }
        if !(4 * 1024..=1 << 30).contains(&self.max_pending_output) {
            return Err(bad(
                "max-pending-output",
                format!(
                    "{} is not in 4096..=1073741824 bytes",
                    self.max_pending_output
                ),
            ));
        }
        if !(256..=1 << 20).contains(&self.read_buffer_size) {
            return Err(bad(
                "read-buffer-size",
                format!("{} is not in 256..=1048576 bytes", self.read_buffer_size),
            ));
        }
        if let Some(n) = self.socket_send_buffer {
            if !(4 * 1024..=64 << 20).contains(&n) {
                return Err(bad(
                    "socket-send-buffer",
                    format!("{n} is not in 4096..=67108864 bytes"),
                ));
            }
        }
        if !(1..=4096).contains(&self.max_fragments) {
            return Err(bad(
                "max-fragments",
                format!("{} is not in 1..=4096", self.max_fragments),
            ));
        }
        if !(1..=64).contains(&self.publishers) {
            return Err(bad(
                "publishers",
                format!("{} is not in 1..=64", self.publishers),
            ));
        }
        if !(1..=1_000_000).contains(&self.history_replay_max) {
            return Err(bad(
                "history-replay-max",
                format!("{} is not in 1..=1000000", self.history_replay_max),
            ));
        }
        let listen_backlog = match self.listen_backlog {
            None => defaults.listen_backlog,
            Some(n) if (1..=MAX_LISTEN_BACKLOG).contains(&n) => n,
            Some(n) => {
                let cap = somaxconn().map_or(String::new(), |m| {
                    format!("; the kernel caps it at net.core.somaxconn, {m} here")
                });
                return Err(bad(
                    "listen-backlog",
                    format!("{n} is not in 1..={MAX_LISTEN_BACKLOG}{cap}"),
                ));
            }
        };
        let api = self.api_config()?;
        let liveness = self.liveness()?;
        let presence = self.presence_config()?;
        let server_id = match self.server_id {
            Some(id) if id.is_empty() || id.len() > 64 => {
                return Err(bad("server-id", "must be 1..=64 characters"))
            }
            Some(id) => id,
            None => defaults.server_id.clone(),
        };
        Ok(Config {
            bind,
            workers,
            pin_workers: !self.no_pin,
            sched_batch: !self.no_sched_batch,
            broker: self.broker,
            max_connections: self.max_connections,
            max_pending_output: self.max_pending_output,
            socket_send_buffer: self.socket_send_buffer,
            read_buffer_size: self.read_buffer_size,
            shutdown_grace: seconds("shutdown-grace-secs", self.shutdown_grace_secs)?,
            drain: seconds_or_zero("drain-secs", self.drain_secs)?,
            confirm_timeout: seconds("confirm-timeout-secs", self.confirm_timeout_secs)?,
            subscription_grace: seconds_or_zero(
                "subscription-grace-secs",
                self.subscription_grace_secs,
            )?,
            liveness,
            handshake_timeout: seconds("handshake-timeout-secs", self.handshake_timeout_secs)?,
            max_fragments: self.max_fragments,
            message_timeout: seconds("message-timeout-secs", self.message_timeout_secs)?,
            listen_backlog,
            share_port: self.share_port,
            server_id,
            services: self.services.into_settings()?,
            publishing: Publishing {
                publishers: self.publishers,
                ..Publishing::default()
            },
            history: HistoryConfig {
                replay_max: self.history_replay_max,
                ..HistoryConfig::default()
            },
            presence,
            api,
            ..defaults
        })
    }

    /// Presence's timings and bound.
    fn presence_config(&self) -> Result<PresenceConfig, ConfigError> {
        let heartbeat = seconds("presence-heartbeat-secs", self.presence_heartbeat_secs)?;
        if heartbeat < Duration::from_millis(100) {
            return Err(bad(
                "presence-heartbeat-secs",
                format!(
                    "{} is below 0.1 s: every heartbeat is a Redis round trip",
                    self.presence_heartbeat_secs
                ),
            ));
        }
        if !(2..=100).contains(&self.presence_expiry_heartbeats) {
            return Err(bad(
                "presence-expiry-heartbeats",
                format!(
                    "{} is not in 2..=100 (one late heartbeat must not drop a live server)",
                    self.presence_expiry_heartbeats
                ),
            ));
        }
        let frame_interval = seconds(
            "presence-frame-interval-secs",
            self.presence_frame_interval_secs,
        )?;
        if !(1..=100_000).contains(&self.presence_max_users_per_connection) {
            return Err(bad(
                "presence-max-users-per-connection",
                format!(
                    "{} is not in 1..=100000",
                    self.presence_max_users_per_connection
                ),
            ));
        }
        Ok(PresenceConfig {
            mode: self.presence,
            grace: seconds_or_zero("presence-grace-secs", self.presence_grace_secs)?,
            heartbeat,
            expiry: heartbeat * self.presence_expiry_heartbeats,
            frame_interval,
            max_users_per_connection: self.presence_max_users_per_connection,
        })
    }

    /// Pings and keepalive.
    fn liveness(&self) -> Result<Liveness, ConfigError> {
        let ping = seconds_or_zero("ping-interval-secs", self.ping_interval_secs)?;
        // Linux takes TCP_KEEPIDLE and TCP_KEEPINTVL in whole seconds,
        // at most 32767.
        let keepalive_secs = |flag, secs: u64| {
            if (1..=32_767).contains(&secs) {
                Ok(Duration::from_secs(secs))
            } else {
                Err(bad(flag, format!("{secs} is not in 1..=32767 seconds")))
            }
        };
        let idle = keepalive_secs("tcp-keepalive-idle-secs", self.tcp_keepalive_idle_secs)?;
        let interval = keepalive_secs(
            "tcp-keepalive-interval-secs",
            self.tcp_keepalive_interval_secs,
        )?;
        Ok(Liveness {
            ping_interval: (!ping.is_zero()).then_some(ping),
            pong_timeout: seconds("pong-timeout-secs", self.pong_timeout_secs)?,
            tcp_keepalive: (!self.no_tcp_keepalive).then_some(TcpKeepalive {
                idle,
                interval,
                ..TcpKeepalive::default()
            }),
        })
    }

    /// The read API's settings, or `None` for `--api-bind off`.
    /// The replica's settings: the primary's with `--db-read-host`/port.
    fn replica(&self, primary: &DatabaseSettings) -> Result<Option<DatabaseSettings>, ConfigError> {
        if self.db_read_port.is_some() && self.db_read_host.is_none() {
            return Err(bad("db-read-port", "needs --db-read-host"));
        }
        let Some(host) = &self.db_read_host else {
            return Ok(None);
        };
        if host.trim().is_empty() {
            return Err(bad("db-read-host", "must not be empty"));
        }
        let port = self.db_read_port.unwrap_or(primary.port);
        if port == 0 {
            return Err(bad("db-read-port", "must not be 0"));
        }
        Ok(Some(DatabaseSettings {
            host: host.clone(),
            port,
            ..primary.clone()
        }))
    }

    fn api_config(&self) -> Result<Option<ApiConfig>, ConfigError> {
        if self.api_bind.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let bind = self.api_bind.parse().map_err(|e| {
            bad(
                "api-bind",
                format!(
                    "{:?} is not an address like 0.0.0.0:8082, nor \"off\" ({e})",
                    self.api_bind
                ),
            )
        })?;
        if !(1..=256).contains(&self.api_threads) {
            return Err(bad(
                "api-threads",
                format!("{} is not in 1..=256", self.api_threads),
            ));
        }
        if !(1..=100_000).contains(&self.api_max_connections) {
            return Err(bad(
                "api-max-connections",
                format!("{} is not in 1..=100000", self.api_max_connections),
            ));
        }
        if !(1..=1024).contains(&self.db_pool_size) {
            return Err(bad(
                "db-pool-size",
                format!("{} is not in 1..=1024", self.db_pool_size),
            ));
        }
        if !(1..=8784).contains(&self.api_max_window_hours) {
            return Err(bad(
                "api-max-window-hours",
                format!(
                    "{} is not in 1..=8784 (a leap year)",
                    self.api_max_window_hours
                ),
            ));
        }
        if !(1..=self.api_max_window_hours).contains(&self.api_max_user_window_hours) {
            return Err(bad(
                "api-max-user-window-hours",
                format!(
                    "{} is not in 1..={} (--api-max-window-hours)",
                    self.api_max_user_window_hours, self.api_max_window_hours
                ),
            ));
        }
        let database = self.database.clone().into_settings()?;
        Ok(Some(ApiConfig {
            bind,
            threads: self.api_threads,
            max_connections: self.api_max_connections,
            io_timeout: seconds("api-io-timeout-secs", self.api_io_timeout_secs)?,
            database: database.clone(),
            replica: self.replica(&database)?,
            pool_size: self.db_pool_size,
            pool_timeout: seconds("db-pool-timeout-secs", self.db_pool_timeout_secs)?,
            statement_timeout: seconds(
                "api-statement-timeout-secs",
                self.api_statement_timeout_secs,
            )?,
            max_window: Duration::from_secs(u64::from(self.api_max_window_hours) * 3600),
            max_user_window: Duration::from_secs(u64::from(self.api_max_user_window_hours) * 3600),
        }))
    }
}

/// Like [`seconds`], with 0 meaning none.
fn seconds_or_zero(flag: &'static str, secs: f64) -> Result<Duration, ConfigError> {
    if secs == 0.0 {
        Ok(Duration::ZERO)
    } else {
        seconds(flag, secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        chatflow_testkit::cli::parse_config("chatflow-server", args, Args::into_config)
    }

    #[test]
    fn a_read_replica_takes_the_api_queries_and_the_primary_keeps_the_rest() {
        let c = parse(&["--db-read-host", "10.0.0.9", "--db-port", "5441"]).unwrap();
        let api = c.api.unwrap();
        assert_eq!(api.database.port, 5441);
        let replica = api.replica.as_ref().unwrap();
        assert_eq!((replica.host.as_str(), replica.port), ("10.0.0.9", 5441));
        assert_eq!(replica.name, api.database.name);
        assert_eq!(api.reads(), replica);
        let c = parse(&["--db-read-host", "r", "--db-read-port", "5442"]).unwrap();
        assert_eq!(c.api.unwrap().reads().port, 5442);
        assert_eq!(parse(&[]).unwrap().api.unwrap().replica, None);
        for (args, flag) in [
            (&["--db-read-port", "5442"][..], "--db-read-port"),
            (&["--db-read-host", " "][..], "--db-read-host"),
            (
                &["--db-read-host", "r", "--db-read-port", "0"][..],
                "--db-read-port",
            ),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.bind.port(), 8080);
        assert_eq!(c.broker, BrokerKind::Rabbitmq);
        let amqp = &c.services.amqp;
        assert_eq!(
            (amqp.display().as_str(), amqp.user.as_str()),
            ("127.0.0.1:5672", "guest")
        );
        assert_eq!(c.rooms().count(), 20);
        assert!(c.workers >= 1);
        assert!(c.sched_batch);
        assert!(!parse(&["--no-sched-batch"]).unwrap().sched_batch);
        let api = c.api.expect("the binary serves the API by default");
        assert_eq!(api.bind.port(), 8082);
        assert_eq!(api.threads, ApiConfig::default().threads);
        assert_eq!(api.max_window, ApiConfig::default().max_window);
        assert_eq!(api.database, DatabaseSettings::default());
        assert!(parse(&["--api-bind", "off"]).unwrap().api.is_none());
        assert_eq!(c.history.replay_max, HistoryConfig::default().replay_max);
        assert_eq!(
            parse(&["--history-replay-max", "50"])
                .unwrap()
                .history
                .replay_max,
            50
        );
        // The binary drains; a library caller opts in.
        assert_eq!(c.drain, Duration::from_secs(10));
        assert_eq!(Config::default().drain, Duration::ZERO);
        assert_eq!(c.liveness, Liveness::default());
        assert_eq!(c.subscription_grace, Config::default().subscription_grace);
        assert_eq!(c.confirm_timeout, Config::default().confirm_timeout);
        assert_eq!(c.presence, PresenceConfig::default());
        assert_eq!(
            c.presence.mode_for(BrokerKind::Rabbitmq),
            PresenceMode::Shared
        );
        assert_eq!(c.presence.mode_for(BrokerKind::Memory), PresenceMode::Local);
        assert_eq!(c.presence.expiry, 3 * c.presence.heartbeat);
        assert_eq!(c.presence.poll(), Duration::from_millis(250));
    }

    #[test]
    fn presence_flags_set_mode_timings_and_bound() {
        let c = parse(&[
            "--broker",
            "memory",
            "--presence",
            "shared",
            "--presence-grace-secs",
            "0",
            "--presence-heartbeat-secs",
            "0.4",
            "--presence-expiry-heartbeats",
            "4",
            "--presence-frame-interval-secs",
            "0.25",
            "--presence-max-users-per-connection",
            "3",
        ])
        .unwrap();
        let p = &c.presence;
        assert_eq!(p.mode_for(c.broker), PresenceMode::Shared);
        assert_eq!(p.grace, Duration::ZERO);
        assert_eq!(p.heartbeat, Duration::from_millis(400));
        assert_eq!(p.expiry, Duration::from_millis(1600));
        assert_eq!(p.poll(), Duration::from_millis(200));
        assert_eq!(p.frame_interval, Duration::from_millis(250));
        assert_eq!(p.max_users_per_connection, 3);
        let off = parse(&["--presence", "off"]).unwrap();
        assert_eq!(
            off.presence.mode_for(BrokerKind::Rabbitmq),
            PresenceMode::Off
        );
    }

    #[test]
    fn zero_turns_the_drain_and_pings_off() {
        let c = parse(&[
            "--drain-secs",
            "0",
            "--ping-interval-secs",
            "0",
            "--no-tcp-keepalive",
            "--subscription-grace-secs",
            "0",
        ])
        .unwrap();
        assert_eq!(c.drain, Duration::ZERO);
        assert_eq!(c.subscription_grace, Duration::ZERO);
        assert_eq!(c.liveness.ping_interval, None);
        assert_eq!(c.liveness.tcp_keepalive, None);
        let c = parse(&[
            "--tcp-keepalive-idle-secs",
            "30",
            "--pong-timeout-secs",
            "1.5",
        ])
        .unwrap();
        assert_eq!(
            c.liveness.tcp_keepalive.unwrap().idle,
            Duration::from_secs(30)
        );
        assert_eq!(c.liveness.pong_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn the_listen_backlog_follows_somaxconn_unless_asked() {
        // Default: the host's somaxconn, clamped, or 4096 when unreadable.
        assert_eq!(backlog_for(Some(65_535)), 65_535);
        assert_eq!(backlog_for(Some(4096)), 4096);
        assert_eq!(backlog_for(Some(16)), 128);
        assert_eq!(backlog_for(Some(2_000_000)), 65_535);
        assert_eq!(backlog_for(None), 4096);
        assert_eq!(parse(&[]).unwrap().listen_backlog, default_listen_backlog());
        assert_eq!(Config::default().listen_backlog, default_listen_backlog());
        // Asked for: taken as given within 1..=2^20.
        let c = parse(&["--listen-backlog", "1024"]).unwrap();
        assert_eq!(c.listen_backlog, 1024);
        assert_eq!(
            parse(&["--listen-backlog", "1048576"])
                .unwrap()
                .listen_backlog,
            1 << 20
        );
        let zero = parse(&["--listen-backlog", "0"]).unwrap_err();
        assert!(
            zero.contains("--listen-backlog") && zero.contains("0 is not in 1..=1048576"),
            "{zero}"
        );
    }

    #[test]
    fn bad_values_name_their_flag() {
        chatflow_testkit::cli::assert_refusals_name_their_flag(
            parse,
            &[
                (&["--bind", "nowhere"][..], "--bind"),
                (&["--workers", "0"][..], "--workers"),
                (&["--rooms", "0"][..], "--rooms"),
                (&["--max-pending-output", "10"][..], "--max-pending-output"),
                (&["--read-buffer-size", "1"][..], "--read-buffer-size"),
                (&["--shutdown-grace-secs", "0"][..], "--shutdown-grace-secs"),
                (&["--drain-secs", "4000"][..], "--drain-secs"),
                (
                    &["--confirm-timeout-secs", "0"][..],
                    "--confirm-timeout-secs",
                ),
                (&["--pong-timeout-secs", "0"][..], "--pong-timeout-secs"),
                (
                    &["--ping-interval-secs", "4000"][..],
                    "--ping-interval-secs",
                ),
                (
                    &["--tcp-keepalive-idle-secs", "0"][..],
                    "--tcp-keepalive-idle-secs",
                ),
                (&["--broker", "kafka"][..], "--broker"),
                (&["--workers", "many"][..], "--workers"),
                (&["--publishers", "0"][..], "--publishers"),
                (&["--history-replay-max", "0"][..], "--history-replay-max"),
                (&["--max-fragments", "0"][..], "--max-fragments"),
                (&["--listen-backlog", "0"][..], "--listen-backlog"),
                (&["--listen-backlog", "2000000"][..], "--listen-backlog"),
                (&["--listen-backlog=-1"][..], "--listen-backlog"),
                (
                    &["--message-timeout-secs", "0"][..],
                    "--message-timeout-secs",
                ),
                (&["--namespace", "a b"][..], "--namespace"),
                (&["--rabbitmq-port", "99999"][..], "--rabbitmq-port"),
                (&["--api-bind", "port 8082"][..], "--api-bind"),
                (&["--api-threads", "0"][..], "--api-threads"),
                (&["--db-pool-size", "0"][..], "--db-pool-size"),
                (
                    &["--db-pool-timeout-secs", "0"][..],
                    "--db-pool-timeout-secs",
                ),
                (
                    &["--api-statement-timeout-secs", "0"][..],
                    "--api-statement-timeout-secs",
                ),
                (
                    &["--api-max-window-hours", "0"][..],
                    "--api-max-window-hours",
                ),
                (&["--db-host", ""][..], "--db-host"),
                (
                    &["--api-max-user-window-hours", "200"][..],
                    "--api-max-user-window-hours",
                ),
                (&["--presence", "everyone"][..], "--presence"),
                (&["--presence-grace-secs=-1"][..], "--presence-grace-secs"),
                (
                    &["--presence-heartbeat-secs", "0.01"][..],
                    "--presence-heartbeat-secs",
                ),
                (
                    &["--presence-expiry-heartbeats", "1"][..],
                    "--presence-expiry-heartbeats",
                ),
                (
                    &["--presence-frame-interval-secs", "0"][..],
                    "--presence-frame-interval-secs",
                ),
                (
                    &["--presence-max-users-per-connection", "0"][..],
                    "--presence-max-users-per-connection",
                ),
            ],
        );
    }
}
