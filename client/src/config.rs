//! Raw flags ([`Args`], clap) → a validated [`Config`] whose `Default`
//! documents every value, and the two addresses flags name: a WebSocket
//! server ([`Endpoint`]) and a read API ([`ApiUrl`]). A run is closed loop
//! (the default), open loop ([`Config::open_loop`]: `--rate`, `--ramp`) or
//! a connection-count test ([`HoldConfig`]: `--connections-only`). Every
//! check that spans several flags lives in [`Args::into_config`] or
//! [`Config::validate`] and names the flags it is about.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use chatflow_protocol::Rooms;
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser, ValueEnum};

use crate::error::{
    ApiUrlError, DurationError, EndpointError, Error, RampError, RateError, Result,
};
use crate::schedule::{Schedule, MAX_STAGES};

/// One server to load, `ws://host:port[/prefix]`. Rooms are reached at
/// `{base}/chat/{room}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`, as given (resolved at each connect, so a fleet behind DNS works).
    pub authority: String,
    /// A path prefix without a trailing slash (usually empty).
    pub prefix: String,
}

impl Endpoint {
    /// Parses `ws://host[:port][/prefix]` or `host:port`. The port defaults
    /// to 80, the WebSocket default.
    pub fn parse(text: &str) -> std::result::Result<Endpoint, EndpointError> {
        let rest = if let Some(rest) = text.strip_prefix("ws://") {
            rest
        } else if text.starts_with("wss://") {
            return Err(EndpointError::Tls);
        } else if text.contains("://") {
            return Err(EndpointError::NotWebSocket(text.to_string()));
        } else {
            text
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(EndpointError::NoHost(text.to_string()));
        }
        let authority = with_port(authority, 80).ok_or_else(|| EndpointError::BadAuthority {
            authority: authority.to_string(),
            text: text.to_string(),
        })?;
        let prefix = path.trim_end_matches('/');
        let prefix = prefix.strip_suffix("/chat").unwrap_or(prefix).to_string();
        Ok(Endpoint { authority, prefix })
    }

    /// The URL of a room on this server.
    pub fn room_url(&self, room: u32) -> String {
        format!("ws://{}{}/chat/{room}", self.authority, self.prefix)
    }

    /// The base URL, as printed in reports.
    pub fn base(&self) -> String {
        format!("ws://{}{}", self.authority, self.prefix)
    }
}

/// The port a `chatflow-server` serves its read API on (`--api-bind`'s default).
pub const API_PORT: u16 = 8082;

/// The read API's base URL, `http://host:port[/prefix]`; requests go to
/// `{base}/api/...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiUrl {
    /// `host:port` (the port defaults to 80, as in any http URL).
    pub authority: String,
    /// A path prefix without a trailing slash (usually empty).
    pub prefix: String,
}

impl ApiUrl {
    /// Parses `http://host[:port][/prefix]` or `host:port`.
    pub fn parse(text: &str) -> std::result::Result<ApiUrl, ApiUrlError> {
        let rest = if let Some(rest) = text.strip_prefix("http://") {
            rest
        } else if text.starts_with("https://") {
            return Err(ApiUrlError::Tls);
        } else if text.contains("://") {
            return Err(ApiUrlError::NotHttp(text.to_string()));
        } else {
            text
        };
        if rest.contains(['?', '#']) {
            return Err(ApiUrlError::Query(text.to_string()));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(ApiUrlError::NoHost(text.to_string()));
        }
        let authority = with_port(authority, 80).ok_or_else(|| ApiUrlError::BadAuthority {
            authority: authority.to_string(),
            text: text.to_string(),
        })?;
        Ok(ApiUrl {
            authority,
            prefix: path.trim_end_matches('/').to_string(),
        })
    }

    /// The API of a WebSocket server: the same host on [`API_PORT`] (a
    /// server's path prefix is a load balancer's route to its WebSocket,
    /// not to the API, so it is dropped).
    pub fn of_server(server: &Endpoint) -> ApiUrl {
        // `Endpoint::parse` always leaves `host:port` (IPv6 in brackets).
        let host = server
            .authority
            .rsplit_once(':')
            .map_or(server.authority.as_str(), |(host, _)| host);
        ApiUrl {
            authority: format!("{host}:{API_PORT}"),
            prefix: String::new(),
        }
    }

    /// `http://host:port[/prefix]`, as printed.
    pub fn base(&self) -> String {
        format!("http://{}{}", self.authority, self.prefix)
    }

    /// The URL of an endpoint, `path` starting with `/api/`.
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }
}

/// `host[:port]` → `host:port` with `default_port` if none is given;
/// `None` for an empty host or a port that is not a number.
fn with_port(authority: &str, default_port: u16) -> Option<String> {
    if authority.starts_with('[') {
        // IPv6 literal: the port follows the closing bracket.
        match authority.rsplit_once("]:") {
            Some((_, port)) if port.parse::<u16>().is_err() => None,
            Some(_) => Some(authority.to_string()),
            None => Some(format!("{authority}:{default_port}")),
        }
    } else if let Some((host, port)) = authority.rsplit_once(':') {
        if host.is_empty() || port.parse::<u16>().is_err() {
            return None;
        }
        Some(authority.to_string())
    } else {
        Some(format!("{authority}:{default_port}"))
    }
}

/// How progress is shown while a run goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProgressMode {
    /// A bar on a terminal, plain lines otherwise.
    Auto,
    /// Always the bar (stderr).
    Bar,
    /// Plain periodic lines (stderr), for logs and CI.
    Plain,
    /// Nothing (tests, scripts that only read summary.json).
    Off,
}

/// Whether sender threads are pinned to their connection's incoming CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PinMode {
    /// Only for servers on a loopback address.
    Auto,
    On,
    Off,
}

/// A validated run configuration. Tests build one with struct update syntax
/// over `Config::default()`.
#[derive(Clone, Debug)]
pub struct Config {
    /// Servers, used round-robin per connection. Default `ws://127.0.0.1:8080`.
    pub urls: Vec<Endpoint>,
    /// Rooms `1..=rooms`; must match the server. Default 20 (the seed's).
    pub rooms: u32,
    /// Messages in the whole run, warm-up included, in closed loop (an
    /// open loop's come from its schedule: [`Config::planned_total`]).
    /// Default 500,000 (the seed's normal load; 1,000,000 is its stress load).
    pub total: u64,
    /// Open loop: the main phase's schedule (`--rate`, `--ramp`). Each
    /// message goes out at its intended time (never before; late when the
    /// window is full or the sender is behind), and latency is measured
    /// from that time as well as from the actual send. `None` (the
    /// default): closed loop, each connection sending as fast as its
    /// window allows.
    pub open_loop: Option<Schedule>,
    /// `--connections-only`: hold idle connections and measure broadcast
    /// delivery to them instead of a load run. `None` by default.
    pub hold: Option<HoldConfig>,
    /// Main-phase sender threads, each with one persistent connection.
    /// Default 64. Must be at least `rooms`: each connection belongs to one
    /// room and every room needs a sender. With `hold`: how many
    /// connections are being opened at once.
    pub threads: usize,
    /// Messages a connection keeps in flight (pipelining). Default 1.
    pub window: usize,
    /// Warm-up threads, each with its own short-lived connection. Default 32;
    /// 0 skips the warm-up.
    pub warmup_threads: usize,
    /// Messages each warm-up thread sends. Default 1,000.
    pub warmup_messages: u64,
    /// Seeds the generator; `None` draws one (printed, so a run can be replayed).
    pub seed: Option<u64>,
    /// Retries of a failed send before the message counts as failed. Default 5.
    pub retries: u32,
    /// A message younger than this keeps retrying past `retries` (each
    /// attempt after its back-off, capped at `backoff_max`), so an outage
    /// of this length is waited out rather than counted as failures.
    /// Default 60 s; zero: `retries` alone decides.
    pub retry_window: Duration,
    /// First retry delay; doubles per attempt (with jitter). Default 100 ms,
    /// so five retries span about 3 s: a server restart is ridden through.
    pub backoff_base: Duration,
    /// Cap of one retry delay. Default 5 s.
    pub backoff_max: Duration,
    /// Consecutive connection failures that open a server's circuit breaker. Default 5.
    pub breaker_threshold: u32,
    /// How long an open breaker refuses connections before one probe. Default 1 s.
    pub breaker_cooldown: Duration,
    /// TCP connect plus WebSocket handshake. Default 5 s.
    pub connect_timeout: Duration,
    /// A message not acked within this is a lost connection. Default 10 s.
    pub ack_timeout: Duration,
    /// Measure delivery latency (the message's broadcast back to its
    /// sender). Default true; turn off against servers that do not broadcast
    /// (`--broker none`), or each connection waits `delivery_timeout` at the end.
    pub delivery: bool,
    /// A broadcast not seen this long after its ack counts as missing.
    /// Bounds the wait at the end of the run. Default 5 s.
    pub delivery_timeout: Duration,
    /// End the run when no message was acked for this long while work
    /// remains (a dead or hung server). Default 30 s.
    pub give_up_after: Duration,
    /// Where reports go; `None` → `results/<local timestamp>/`.
    pub out_dir: Option<PathBuf>,
    /// Draw the SVG charts. Default true.
    pub charts: bool,
    pub progress: ProgressMode,
    /// Interval of plain progress lines. Default 5 s.
    pub progress_interval: Duration,
    /// After Ctrl-C, how long in-flight messages may still be acked. Default 2 s.
    pub stop_grace: Duration,
    /// How often a blocked read wakes to check deadlines and Ctrl-C. Default
    /// 100 ms: a wake-up costs nothing measurable, a longer tick delays stops.
    pub tick: Duration,
    /// Run sender threads under SCHED_BATCH (Linux): a woken sender does
    /// not preempt whatever runs (on a shared box, the server), so wake-ups
    /// are handled in bunches with fewer context switches. Measured here at
    /// 64x1 against a 2-core server: +26% acks/s and less CPU on both sides.
    /// Harmless on a dedicated client machine. Default true.
    pub sched_batch: bool,
    /// Pin each sender thread to the CPU its connection's packets arrive on
    /// (SO_INCOMING_CPU), at each (re)connect. Default `Auto`: only for a
    /// server on loopback, where that CPU is the server thread's own, so
    /// every wake-up stays on one CPU (no cross-CPU interrupts, which a VM
    /// pays dearly for: +25-30% acks/s at 64x1 on this 2-core box, and less
    /// server CPU). For remote servers the CPU is the NIC queue's, which on
    /// a single-queue NIC would put every thread on one core: off.
    pub pin: PinMode,
    /// Generator batches buffered per room. Default 64 (×16 messages): tens
    /// of milliseconds of work at 600K msgs/s, so senders never wait.
    pub lane_batches: usize,
    /// After the report, fetch `/api/metrics` for the run's window into
    /// `metrics.json` and show the stored-message count. Default true;
    /// `--no-metrics` turns it off. A failed fetch never fails the run.
    pub metrics: bool,
    /// The read API; `None` → the first server's host on port 8082
    /// ([`ApiUrl::of_server`]).
    pub api_url: Option<ApiUrl>,
    /// How long the run waits for the stored count to reach the acked
    /// count. Default 5 s: the consumers commit up to ~0.5-1 s after an
    /// ack (their flush interval plus the COPY), so a healthy pipeline
    /// settles in about a second and 5 s leaves room for a backlog to drain.
    pub metrics_settle: Duration,
    /// Bound of one API request (connect, send, answer). Default 10 s.
    pub api_timeout: Duration,
    /// At the end of the main phase, each connection asks its server who
    /// is in its room (`{"type":"presence"}`) and checks that every user
    /// its own accepted JOINs made present (and no LEAVE removed) is
    /// listed; the report shows the counts. Default true;
    /// `--no-presence-check` turns it off.
    pub presence_check: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            urls: vec![Endpoint {
                authority: "127.0.0.1:8080".into(),
                prefix: String::new(),
            }],
            rooms: Rooms::DEFAULT.count(),
            total: 500_000,
            threads: 64,
            window: 1,
            warmup_threads: 32,
            warmup_messages: 1_000,
            seed: None,
            retries: 5,
            retry_window: Duration::from_secs(60),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(10),
            delivery: true,
            delivery_timeout: Duration::from_secs(5),
            give_up_after: Duration::from_secs(30),
            out_dir: None,
            charts: true,
            progress: ProgressMode::Auto,
            progress_interval: Duration::from_secs(5),
            stop_grace: Duration::from_secs(2),
            tick: Duration::from_millis(100),
            sched_batch: true,
            pin: PinMode::Auto,
            lane_batches: 64,
            metrics: true,
            api_url: None,
            metrics_settle: Duration::from_secs(5),
            api_timeout: Duration::from_secs(10),
            presence_check: true,
            open_loop: None,
            hold: None,
        }
    }
}

/// A connection-count test (`--connections-only N`): N idle WebSocket
/// connections held open, then a few paced messages whose broadcasts every
/// idle connection of their room should receive.
#[derive(Clone, Debug)]
pub struct HoldConfig {
    /// Idle connections, spread round-robin over the rooms and servers.
    pub connections: usize,
    /// Local addresses the connections are bound to before connecting,
    /// round-robin. Empty (the default): for servers on loopback,
    /// 127.0.0.1..=127.0.0.K with K enough to stay within each address's
    /// ephemeral ports (one source address has ~28K ports towards one
    /// server address: the 64K limit is per source address); otherwise the
    /// OS picks the source (no binding).
    pub source_addrs: Vec<IpAddr>,
    /// Extra connections that send the paced messages, room `i % rooms + 1`
    /// each. Default: one per room, so every idle connection hears some.
    pub senders: usize,
    /// When the paced messages are sent (`--rate`, `-n` or `--duration`).
    /// Default 50 messages at 10 per second: enough to measure delivery to
    /// every connection, few enough to be "idle" connections still.
    pub probes: Schedule,
    /// How long to keep holding after the deliveries are counted (to watch
    /// the server with N connections). Default zero.
    pub hold: Duration,
    /// Threads that read the idle connections, each with its own poll.
    /// Default 2: an idle connection costs nothing until a broadcast comes,
    /// and on a shared box the server needs the cores.
    pub holder_threads: usize,
}

/// `--rate` in `--connections-only` mode when not given: a "small paced
/// set" of messages (see [`HoldConfig::probes`]).
pub const HOLD_PROBE_RATE: f64 = 10.0;
/// `-n` in `--connections-only` mode when not given.
pub const HOLD_PROBE_MESSAGES: u64 = 50;
/// `-n` when not given: the seed's normal load.
pub const DEFAULT_MESSAGES: u64 = 500_000;
/// Most idle connections one client holds: past this, file descriptors,
/// ports (even spread over source addresses) and memory give out first.
pub const MAX_HELD: usize = 2_000_000;
/// Most sender connections in `--connections-only` mode ("a few").
pub const MAX_HOLD_SENDERS: usize = 1_000;

impl Default for HoldConfig {
    fn default() -> Self {
        HoldConfig {
            connections: 1_000,
            source_addrs: Vec::new(),
            senders: Rooms::DEFAULT.count() as usize,
            probes: Schedule::for_messages(HOLD_PROBE_RATE, HOLD_PROBE_MESSAGES)
                .expect("a valid literal schedule"),
            hold: Duration::ZERO,
            holder_threads: 2,
        }
    }
}

/// Largest window: beyond it the server's per-connection output bound, not
/// the client, decides.
pub const MAX_WINDOW: usize = 4096;
/// A sanity bound; a 2-core box cannot use more and the OS may refuse.
pub const MAX_THREADS: usize = 10_000;
/// Retries beyond this only hide an outage.
pub const MAX_RETRIES: u32 = 20;

impl Config {
    /// Messages of the warm-up phase.
    pub fn warmup_total(&self) -> u64 {
        self.warmup_threads as u64 * self.warmup_messages
    }

    /// Messages of the main phase.
    pub fn main_total(&self) -> u64 {
        match &self.open_loop {
            Some(schedule) => schedule.total(),
            None => self.total.saturating_sub(self.warmup_total()),
        }
    }

    /// Messages the whole run plans, warm-up included.
    pub fn planned_total(&self) -> u64 {
        match &self.open_loop {
            Some(schedule) => self.warmup_total() + schedule.total(),
            None => self.total,
        }
    }

    /// The read API the run's metrics come from: `--api-url`, or the first
    /// server's host on port 8082.
    pub fn api(&self) -> ApiUrl {
        match (&self.api_url, self.urls.first()) {
            (Some(api), _) => api.clone(),
            (None, Some(server)) => ApiUrl::of_server(server),
            (None, None) => ApiUrl::parse("127.0.0.1:8082").expect("a valid literal"),
        }
    }

    /// Checks every rule; the message names the flag(s).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.urls.is_empty() {
            return bad("--url: at least one server URL is needed".into());
        }
        if let Err(e) = Rooms::new(self.rooms) {
            return bad(format!("--rooms: {e}"));
        }
        if self.threads == 0 || self.threads > MAX_THREADS {
            return bad(format!(
                "--threads must be in 1..={MAX_THREADS}, got {}",
                self.threads
            ));
        }
        // Holding idle connections needs no sender per room.
        if self.hold.is_none() && (self.threads as u64) < u64::from(self.rooms) {
            return bad(format!(
                "--threads {} is less than --rooms {}: each connection sends to one room and every room needs a sender; raise --threads or lower --rooms",
                self.threads, self.rooms
            ));
        }
        if self.window == 0 || self.window > MAX_WINDOW {
            return bad(format!(
                "--window must be in 1..={MAX_WINDOW}, got {}",
                self.window
            ));
        }
        if self.warmup_threads > MAX_THREADS {
            return bad(format!(
                "--warmup-threads must be at most {MAX_THREADS}, got {}",
                self.warmup_threads
            ));
        }
        if self.warmup_threads > 0 && self.warmup_messages == 0 {
            return bad("--warmup-messages must be at least 1 (or use --warmup-threads 0)".into());
        }
        if let Some(hold) = &self.hold {
            hold.validate(self.open_loop.is_some())?;
        }
        // Only a closed loop is sized by `total`.
        let closed = self.open_loop.is_none() && self.hold.is_none();
        if closed && self.total == 0 {
            return bad("--messages must be at least 1".into());
        }
        if closed && self.warmup_total() > self.total {
            return bad(format!(
                "--messages {} is less than the warm-up's {} (--warmup-threads {} x --warmup-messages {})",
                self.total,
                self.warmup_total(),
                self.warmup_threads,
                self.warmup_messages
            ));
        }
        if self.retries > MAX_RETRIES {
            return bad(format!(
                "--retries must be at most {MAX_RETRIES}, got {}",
                self.retries
            ));
        }
        if self.breaker_threshold == 0 {
            return bad("--breaker-threshold must be at least 1".into());
        }
        for (flag, d) in [
            ("--connect-timeout", self.connect_timeout),
            ("--ack-timeout", self.ack_timeout),
            ("--give-up-after", self.give_up_after),
            ("--breaker-cooldown", self.breaker_cooldown),
            ("--api-timeout", self.api_timeout),
        ] {
            if d.is_zero() {
                return bad(format!("{flag} must be greater than zero"));
            }
        }
        if self.backoff_max < self.backoff_base {
            return bad("--backoff-max must be at least --backoff".into());
        }
        if self.tick.is_zero() || self.lane_batches == 0 {
            return bad("tick and lane_batches must be greater than zero".into());
        }
        Ok(())
    }
}

/// Parses `250ms`, `5s`, `1.5s`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, DurationError> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    match number.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 && v * scale < 1e9 => {
            Ok(Duration::from_secs_f64(v * scale))
        }
        _ => Err(DurationError(text.to_string())),
    }
}

/// The command line. Defaults are the seed system's load run.
///
/// The boolean flags (`--no-delivery`, `--no-charts`, `--no-sched-batch`,
/// `--no-metrics`, `--no-presence-check`) mean "yes" alone and also take a value, `--no-charts=BOOL`, spelled
/// 1/0, true/false, yes/no or on/off like every boolean in the workspace,
/// so a script can pass a variable through. The client reads no
/// environment variables.
#[derive(Debug, Parser)]
#[command(
    name = "chatflow-client",
    version,
    about = "ChatFlow load tester: warm-up then main phase over WebSocket, closed loop or open loop (--rate/--ramp), ack and delivery latency, CSV, summary.json, .hgrm histograms and SVG charts; --connections-only for connection-count tests.",
    after_help = RUN_EXIT_STATUS
)]
pub struct Args {
    /// Server base URL(s), `ws://host:port`; repeat or comma-separate for a
    /// fleet (connections go round-robin).
    #[arg(
        long = "url",
        value_name = "URL",
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8080"
    )]
    pub urls: Vec<String>,
    /// Total messages, warm-up included [default: 500000] (the seed's
    /// stress run is 1000000). With --rate: the main phase's share is sent
    /// at that rate. With --connections-only: the paced messages [default: 50].
    #[arg(
        short = 'n',
        long = "messages",
        value_name = "N",
        conflicts_with = "duration"
    )]
    pub messages: Option<u64>,
    /// Open loop: N messages per second in all, at constant arrival
    /// (message k of the main phase is due k/N s after its start), spread
    /// over the connections. Latency is also measured from each message's
    /// intended send time (coordinated omission corrected, as wrk2 does).
    /// The warm-up stays closed loop. With --connections-only: the paced
    /// messages' rate [default: 10].
    #[arg(long, value_name = "N", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// How long the open loop sends at --rate (instead of -n: rate x
    /// duration messages after the warm-up).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Open loop in stages, RATE:DURATION[,RATE:DURATION...], e.g.
    /// 1000:30s,5000:60s (instead of --rate, --duration and -n); the report
    /// gives each stage's throughput and latency.
    #[arg(
        long,
        value_name = "STAGES",
        value_parser = parse_ramp,
        conflicts_with_all = ["rate", "duration", "messages", "connections_only"]
    )]
    pub ramp: Option<Schedule>,
    /// Instead of a load run: hold N idle connections (spread over source
    /// addresses 127.0.0.1..127.0.0.K for a loopback server), then send a
    /// few paced messages (--rate, -n/--duration) from --senders extra
    /// connections and measure their broadcast delivery to the idle ones.
    #[arg(long, value_name = "N")]
    pub connections_only: Option<usize>,
    /// With --connections-only: local addresses to bind the idle
    /// connections to, round-robin (comma-separated; they must exist on
    /// this host) [default: 127.0.0.1..127.0.0.K for a loopback server,
    /// none otherwise].
    #[arg(
        long,
        value_name = "IPS",
        value_delimiter = ',',
        requires = "connections_only"
    )]
    pub source_addrs: Vec<IpAddr>,
    /// With --connections-only: sender connections, one room each
    /// [default: --rooms, one per room].
    #[arg(long, value_name = "N", requires = "connections_only")]
    pub senders: Option<usize>,
    /// With --connections-only: keep holding this long after the
    /// deliveries are counted (Ctrl-C ends it) [default: 0s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "connections_only")]
    pub hold: Option<Duration>,
    /// Main-phase sender threads (one persistent connection each). With
    /// --connections-only: connections opened at once.
    #[arg(short = 't', long, value_name = "N", default_value_t = 64)]
    pub threads: usize,
    /// Messages each connection keeps in flight (pipelined). In an open
    /// loop the most it may: a message due while its connection's window is
    /// full waits, and is late.
    #[arg(short = 'w', long, value_name = "N", default_value_t = 1)]
    pub window: usize,
    /// Warm-up threads (each its own connection, closed after); 0 skips the warm-up.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub warmup_threads: usize,
    /// Messages per warm-up thread.
    #[arg(long, value_name = "N", default_value_t = 1_000)]
    pub warmup_messages: u64,
    /// Rooms 1..=N (must match the server).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub rooms: u32,
    /// Generator seed, for reproducible runs (default: random, printed).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Retries of a failed send.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub retries: u32,
    /// How long a message may keep retrying past --retries (an outage this
    /// long is waited out; 0: --retries alone).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub retry_window: Duration,
    /// First retry delay (doubles per retry, with jitter).
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = parse_duration)]
    pub backoff: Duration,
    /// Longest retry delay.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub backoff_max: Duration,
    /// Consecutive connection failures that open the circuit breaker.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub breaker_threshold: u32,
    /// How long the open breaker waits before a probe connection.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub breaker_cooldown: Duration,
    /// Connect plus handshake timeout.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// A message not acked within this counts as a lost connection.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub ack_timeout: Duration,
    /// Do not measure delivery latency (use against `--broker none` servers,
    /// which broadcast nothing).
    #[arg(long, value_name = "BOOL", value_parser = BoolishValueParser::new())]
    #[arg(action = ArgAction::Set, num_args = 0..=1, require_equals = true)]
    #[arg(default_missing_value = "true", default_value_t = false)]
    pub no_delivery: bool,
    /// A broadcast not seen this long after its ack counts as missing (bounds
    /// the wait at the end of the run).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub delivery_timeout: Duration,
    /// End the run when nothing was acked for this long.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub give_up_after: Duration,
    /// Report directory (default results/<timestamp>/).
    #[arg(short = 'o', long = "out", value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Skip the SVG charts.
    #[arg(long, value_name = "BOOL", value_parser = BoolishValueParser::new())]
    #[arg(action = ArgAction::Set, num_args = 0..=1, require_equals = true)]
    #[arg(default_missing_value = "true", default_value_t = false)]
    pub no_charts: bool,
    /// Keep sender threads in the normal scheduling class instead of
    /// SCHED_BATCH (which avoids preempting a server on the same machine).
    #[arg(long, value_name = "BOOL", value_parser = BoolishValueParser::new())]
    #[arg(action = ArgAction::Set, num_args = 0..=1, require_equals = true)]
    #[arg(default_missing_value = "true", default_value_t = false)]
    pub no_sched_batch: bool,
    /// Pin each sender thread to the CPU its connection's packets arrive on
    /// (auto: only when the server is on loopback).
    #[arg(long, value_enum, default_value_t = PinMode::Auto)]
    pub pin: PinMode,
    /// Progress display.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    /// Interval of plain progress lines.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub progress_interval: Duration,
    /// The read API for the end-of-run metrics.json (default: the first
    /// --url's host, port 8082).
    #[arg(long, value_name = "URL")]
    pub api_url: Option<String>,
    /// Do not fetch metrics.json and the stored-message count at the end.
    #[arg(long, value_name = "BOOL", value_parser = BoolishValueParser::new())]
    #[arg(action = ArgAction::Set, num_args = 0..=1, require_equals = true)]
    #[arg(default_missing_value = "true", default_value_t = false)]
    pub no_metrics: bool,
    /// Do not ask the servers who is in each room at the end (and check
    /// this run's own members against it).
    #[arg(long, value_name = "BOOL", value_parser = BoolishValueParser::new())]
    #[arg(action = ArgAction::Set, num_args = 0..=1, require_equals = true)]
    #[arg(default_missing_value = "true", default_value_t = false)]
    pub no_presence_check: bool,
    /// How long to wait at the end for the stored count to reach the acked
    /// count (the consumers commit asynchronously).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub metrics_settle: Duration,
    /// Bound of one read-API request (connect, send, answer).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub api_timeout: Duration,
}

/// The run's exit statuses, in `--help`.
pub(crate) const RUN_EXIT_STATUS: &str = "Exit status: 0 every message acked; 1 could not run (e.g. server unreachable); 2 bad flags; 3 some messages failed or the run was given up (--connections-only: a connection failed or was lost, a probe failed or a broadcast went missing); 130 interrupted (Ctrl-C; the report is still written).";

impl Args {
    /// Flags → validated config. The error names the flag.
    pub fn into_config(self) -> Result<Config> {
        let mut urls = Vec::with_capacity(self.urls.len());
        for u in &self.urls {
            urls.push(Endpoint::parse(u).map_err(|source| Error::Url {
                text: u.clone(),
                source,
            })?);
        }
        let api_url = match &self.api_url {
            Some(text) => Some(ApiUrl::parse(text).map_err(|source| Error::ApiUrl {
                text: text.clone(),
                source,
            })?),
            None => None,
        };
        let warmup_total = self.warmup_threads as u64 * self.warmup_messages;
        let (total, open_loop, hold) = match self.connections_only {
            Some(connections) => {
                let hold = self.hold_config(connections)?;
                (0, None, Some(hold))
            }
            None => {
                let (total, open_loop) = self.load_shape(warmup_total)?;
                (total, open_loop, None)
            }
        };
        let config = Config {
            urls,
            rooms: self.rooms,
            total,
            open_loop,
            hold,
            threads: self.threads,
            window: self.window,
            warmup_threads: self.warmup_threads,
            warmup_messages: self.warmup_messages,
            seed: self.seed,
            retries: self.retries,
            retry_window: self.retry_window,
            backoff_base: self.backoff,
            backoff_max: self.backoff_max,
            breaker_threshold: self.breaker_threshold,
            breaker_cooldown: self.breaker_cooldown,
            connect_timeout: self.connect_timeout,
            ack_timeout: self.ack_timeout,
            delivery: !self.no_delivery,
            delivery_timeout: self.delivery_timeout,
            give_up_after: self.give_up_after,
            out_dir: self.out,
            charts: !self.no_charts,
            progress: self.progress,
            progress_interval: self.progress_interval,
            sched_batch: !self.no_sched_batch,
            pin: self.pin,
            metrics: !self.no_metrics,
            presence_check: !self.no_presence_check,
            api_url,
            metrics_settle: self.metrics_settle,
            api_timeout: self.api_timeout,
            ..Config::default()
        };
        config.validate()?;
        Ok(config)
    }

    /// Closed loop (`-n`), or the open loop's schedule (`--rate` with `-n`
    /// or `--duration`, or `--ramp`). clap already refused `-n` with
    /// `--duration` and `--ramp` with the others.
    fn load_shape(&self, warmup_total: u64) -> Result<(u64, Option<Schedule>)> {
        let bad = |m: String| Err(Error::Config(m));
        match (&self.ramp, self.rate, self.duration) {
            (Some(ramp), _, _) => Ok((warmup_total + ramp.total(), Some(ramp.clone()))),
            (None, Some(rate), Some(duration)) => match Schedule::constant(rate, duration) {
                Ok(s) => Ok((warmup_total + s.total(), Some(s))),
                Err(e) => bad(format!(
                    "--rate {rate} for --duration {}: {e}",
                    seconds(duration)
                )),
            },
            (None, Some(rate), None) => {
                let n = self.messages.unwrap_or(DEFAULT_MESSAGES);
                if n <= warmup_total {
                    return bad(format!(
                        "--messages {n} leaves no message for the open loop (--rate) after the warm-up's {warmup_total} (--warmup-threads {} x --warmup-messages {}); raise -n, use --duration, or --warmup-threads 0",
                        self.warmup_threads, self.warmup_messages
                    ));
                }
                match Schedule::for_messages(rate, n - warmup_total) {
                    Ok(s) => Ok((n, Some(s))),
                    Err(e) => bad(format!("--rate {rate} with --messages {n}: {e}")),
                }
            }
            (None, None, Some(_)) => bad(
                "--duration is how long an open loop sends: give --rate with it (or use --ramp); a closed-loop run is sized by -n/--messages".into(),
            ),
            (None, None, None) => Ok((self.messages.unwrap_or(DEFAULT_MESSAGES), None)),
        }
    }

    /// `--connections-only N` and its flags.
    fn hold_config(&self, connections: usize) -> Result<HoldConfig> {
        let rate = self.rate.unwrap_or(HOLD_PROBE_RATE);
        let probes = match self.duration {
            Some(d) => Schedule::constant(rate, d),
            None => Schedule::for_messages(rate, self.messages.unwrap_or(HOLD_PROBE_MESSAGES)),
        }
        .map_err(|e| {
            Error::Config(format!(
                "--connections-only: the paced messages (--rate, -n or --duration): {e}"
            ))
        })?;
        Ok(HoldConfig {
            connections,
            source_addrs: self.source_addrs.clone(),
            senders: self.senders.unwrap_or(self.rooms as usize),
            probes,
            hold: self.hold.unwrap_or(Duration::ZERO),
            ..HoldConfig::default()
        })
    }
}

impl HoldConfig {
    /// The connection-count test's own rules; `open_loop` says whether an
    /// open-loop schedule was also set (it cannot be).
    fn validate(&self, open_loop: bool) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if open_loop {
            return bad(
                "--connections-only sends its own paced messages: --ramp does not apply".into(),
            );
        }
        if self.connections == 0 || self.connections > MAX_HELD {
            return bad(format!(
                "--connections-only must be in 1..={MAX_HELD}, got {}",
                self.connections
            ));
        }
        if self.senders == 0 || self.senders > MAX_HOLD_SENDERS {
            return bad(format!(
                "--senders must be in 1..={MAX_HOLD_SENDERS}, got {}",
                self.senders
            ));
        }
        if self.holder_threads == 0 {
            return bad("holder_threads must be at least 1".into());
        }
        if self.source_addrs.iter().any(|a| a.is_unspecified()) {
            return bad(format!(
                "--source-addrs: {} is not an address of this host (0.0.0.0/:: bind to any)",
                self.source_addrs
                    .iter()
                    .find(|a| a.is_unspecified())
                    .expect("checked")
            ));
        }
        Ok(())
    }
}

/// A duration as the user typed it, roughly (`1.5s`).
fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// Parses `--rate`: messages per second, a number above zero.
pub fn parse_rate(text: &str) -> std::result::Result<f64, RateError> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(RateError(text.to_string())),
    }
}

/// Parses `--ramp`: `RATE:DURATION` stages separated by commas. The error
/// names the stage as written.
pub fn parse_ramp(text: &str) -> std::result::Result<Schedule, RampError> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    if parts.iter().all(|p| p.is_empty()) {
        return Err(RampError::Empty);
    }
    if parts.len() > MAX_STAGES {
        return Err(RampError::TooManyStages {
            count: parts.len(),
            max: MAX_STAGES,
        });
    }
    let stage_error = |i: usize, problem: String| RampError::Stage {
        number: i + 1,
        text: parts[i].to_string(),
        problem,
    };
    let mut stages = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            return Err(stage_error(i, "it is empty".into()));
        }
        let Some((rate, duration)) = part.split_once(':') else {
            return Err(stage_error(
                i,
                "no ':' between the rate and the duration".into(),
            ));
        };
        let rate = parse_rate(rate).map_err(|_| {
            stage_error(
                i,
                format!(
                    "the rate {:?} is not a number of messages per second above zero",
                    rate.trim()
                ),
            )
        })?;
        if duration.trim().is_empty() {
            return Err(stage_error(i, "no duration after ':'".into()));
        }
        let duration = parse_duration(duration).map_err(|_| {
            stage_error(
                i,
                format!(
                    "the duration {:?} is not one (such as 500ms, 30s, 1.5s or 2m)",
                    duration.trim()
                ),
            )
        })?;
        stages.push((rate, duration));
    }
    Schedule::ramp(&stages).map_err(|(i, e)| stage_error(i, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_defaults_and_reject_tls() {
        let e = Endpoint::parse("ws://127.0.0.1:8080").unwrap();
        assert_eq!(e.room_url(7), "ws://127.0.0.1:8080/chat/7");
        assert_eq!(
            Endpoint::parse("localhost:9000/").unwrap().base(),
            "ws://localhost:9000"
        );
        assert_eq!(Endpoint::parse("ws://h").unwrap().authority, "h:80");
        // A URL that already names /chat does not get it twice.
        assert_eq!(
            Endpoint::parse("ws://h:1/chat/").unwrap().room_url(2),
            "ws://h:1/chat/2"
        );
        assert_eq!(
            Endpoint::parse("ws://h:1/lb").unwrap().room_url(2),
            "ws://h:1/lb/chat/2"
        );
        assert_eq!(Endpoint::parse("wss://h:1"), Err(EndpointError::Tls));
        assert!(matches!(
            Endpoint::parse("http://h:1"),
            Err(EndpointError::NotWebSocket(_))
        ));
        for bad in ["ws://h:notaport", "ws://:80"] {
            assert!(
                matches!(
                    Endpoint::parse(bad),
                    Err(EndpointError::BadAuthority { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            Endpoint::parse("ws:///chat"),
            Err(EndpointError::NoHost(_))
        ));
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("soon"), Err(DurationError("soon".into())));
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn defaults_are_the_seed_load_and_valid() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.pin, PinMode::Auto);
        assert!(c.sched_batch && c.delivery);
        assert_eq!(c.warmup_total(), 32_000);
        assert_eq!(c.main_total(), 468_000);
    }

    /// Why `config` is refused, as the user reads it.
    fn refusal(config: Config) -> String {
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn cross_flag_errors_name_the_flags() {
        let e = refusal(Config {
            threads: 8,
            ..Config::default()
        });
        assert!(e.contains("--threads") && e.contains("--rooms"), "{e}");
        let e = refusal(Config {
            total: 100,
            ..Config::default()
        });
        assert!(
            e.contains("--messages") && e.contains("--warmup-threads"),
            "{e}"
        );
        let e = refusal(Config {
            window: 0,
            ..Config::default()
        });
        assert!(e.contains("--window"), "{e}");
    }

    #[test]
    fn flags_map_to_config() {
        let args = Args::try_parse_from([
            "chatflow-client",
            "--url",
            "ws://a:1,ws://b:2",
            "-n",
            "1000000",
            "--window",
            "32",
            "--no-delivery",
            "--ack-timeout",
            "2s",
            "--pin",
            "off",
            "--no-sched-batch",
        ])
        .unwrap();
        let c = args.into_config().unwrap();
        assert_eq!(c.pin, PinMode::Off);
        assert!(!c.sched_batch);
        assert_eq!(c.urls.len(), 2);
        assert_eq!(c.total, 1_000_000);
        assert_eq!(c.window, 32);
        assert!(!c.delivery);
        assert_eq!(c.ack_timeout, Duration::from_secs(2));
    }

    #[test]
    fn boolean_flags_take_every_usual_spelling() {
        // Alone a flag means yes; `=VALUE` takes 1/0, true/false, yes/no, on/off.
        let parse = |args: &[&str]| {
            Args::try_parse_from(std::iter::once("chatflow-client").chain(args.iter().copied()))
                .map(|a| a.into_config().unwrap())
        };
        let c = parse(&[]).unwrap();
        assert!(c.delivery && c.charts && c.sched_batch && c.presence_check);
        let c = parse(&[
            "--no-delivery",
            "--no-charts",
            "--no-sched-batch",
            "--no-metrics",
            "--no-presence-check",
        ])
        .unwrap();
        assert!(!c.delivery && !c.charts && !c.sched_batch && !c.metrics && !c.presence_check);
        for (value, yes) in chatflow_testkit::cli::BOOLEAN_SPELLINGS {
            let c = parse(&[
                &format!("--no-delivery={value}"),
                &format!("--no-charts={value}"),
                &format!("--no-sched-batch={value}"),
                &format!("--no-metrics={value}"),
                &format!("--no-presence-check={value}"),
            ])
            .unwrap_or_else(|e| panic!("{value}: {e}"));
            assert_eq!(
                (
                    c.delivery,
                    c.charts,
                    c.sched_batch,
                    c.metrics,
                    c.presence_check
                ),
                (!yes, !yes, !yes, !yes, !yes),
                "{value}"
            );
        }
        let e = parse(&["--no-charts=maybe"]).unwrap_err();
        assert!(e.to_string().contains("--no-charts"), "{e}");
        // A value only with `=`: a separate word is not taken as one.
        assert!(parse(&["--no-charts", "yes"]).is_err());
    }

    #[test]
    fn the_run_api_is_given_or_derived_from_the_first_server() {
        let parse = |args: &[&str]| {
            Args::try_parse_from(std::iter::once("chatflow-client").chain(args.iter().copied()))
                .unwrap()
                .into_config()
        };
        let c = parse(&["--url", "ws://10.0.0.5:9000,ws://10.0.0.6:9000"]).unwrap();
        assert_eq!(c.api().base(), "http://10.0.0.5:8082");
        assert!(c.metrics);
        let c = parse(&[
            "--api-url",
            "http://api:1/x",
            "--no-metrics",
            "--metrics-settle",
            "1.5s",
        ])
        .unwrap();
        assert_eq!(c.api().base(), "http://api:1/x");
        assert!(!c.metrics);
        assert_eq!(c.metrics_settle, Duration::from_millis(1500));
        let e = parse(&["--api-url", "https://api"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--api-url"), "{e}");
        let e = parse(&["--api-timeout", "0"]).unwrap_err().to_string();
        assert!(e.contains("--api-timeout"), "{e}");
    }

    #[test]
    fn api_urls_parse_with_defaults_and_refuse_tls_and_queries() {
        let u = ApiUrl::parse("http://127.0.0.1:8082").unwrap();
        assert_eq!(
            u.endpoint("/api/metrics"),
            "http://127.0.0.1:8082/api/metrics"
        );
        assert_eq!(ApiUrl::parse("h:9/lb/").unwrap().base(), "http://h:9/lb");
        assert_eq!(ApiUrl::parse("http://h").unwrap().authority, "h:80");
        assert_eq!(ApiUrl::parse("https://h"), Err(ApiUrlError::Tls));
        assert!(matches!(
            ApiUrl::parse("ws://h:1"),
            Err(ApiUrlError::NotHttp(_))
        ));
        assert!(matches!(
            ApiUrl::parse("http://h:1/?x=1"),
            Err(ApiUrlError::Query(_))
        ));
        assert!(matches!(
            ApiUrl::parse("http:///api"),
            Err(ApiUrlError::NoHost(_))
        ));
        assert!(matches!(
            ApiUrl::parse("http://h:port"),
            Err(ApiUrlError::BadAuthority { .. })
        ));
    }

    #[test]
    fn a_servers_api_is_its_host_on_port_8082() {
        let of = |ws: &str| ApiUrl::of_server(&Endpoint::parse(ws).unwrap()).base();
        assert_eq!(of("ws://10.1.2.3:8080"), "http://10.1.2.3:8082");
        assert_eq!(of("ws://chat.local/lb/chat"), "http://chat.local:8082");
        assert_eq!(of("ws://[::1]:9000"), "http://[::1]:8082");
    }

    /// Flags → config, or the error text.
    fn parse(args: &[&str]) -> std::result::Result<Config, String> {
        let args =
            Args::try_parse_from(std::iter::once("chatflow-client").chain(args.iter().copied()))
                .map_err(|e| e.to_string())?;
        args.into_config().map_err(|e| e.to_string())
    }

    #[test]
    fn closed_loop_stays_the_default() {
        let c = parse(&[]).unwrap();
        assert!(c.open_loop.is_none() && c.hold.is_none());
        assert_eq!((c.total, c.planned_total()), (500_000, 500_000));
    }

    #[test]
    fn rate_with_duration_or_messages_makes_an_open_loop() {
        // --rate 2000 --duration 3s: 6,000 main messages after the warm-up.
        let c = parse(&["--rate", "2000", "--duration", "3s"]).unwrap();
        let s = c.open_loop.as_ref().unwrap();
        assert_eq!((s.total(), s.offered_rate()), (6_000, 2_000.0));
        assert_eq!(c.planned_total(), 32_000 + 6_000);
        assert_eq!(c.main_total(), 6_000);
        // --rate with -n: the main phase's share at that rate.
        let c = parse(&["--rate", "500", "-n", "33000"]).unwrap();
        let s = c.open_loop.as_ref().unwrap();
        assert_eq!((s.total(), s.duration()), (1_000, Duration::from_secs(2)));
        assert_eq!(c.planned_total(), 33_000);
        // Fractional rates are rates.
        let c = parse(&["--rate", "2.5", "--duration", "2s", "--warmup-threads", "0"]).unwrap();
        assert_eq!(c.open_loop.unwrap().total(), 5);
    }

    #[test]
    fn open_loop_flag_errors_name_the_flags() {
        let e = parse(&["-n", "1000", "--rate", "10", "--duration", "5s"]).unwrap_err();
        assert!(e.contains("--messages") && e.contains("--duration"), "{e}");
        let e = parse(&["--duration", "5s"]).unwrap_err();
        assert!(e.contains("--duration") && e.contains("--rate"), "{e}");
        let e = parse(&["--rate", "fast"]).unwrap_err();
        assert!(e.contains("--rate") && e.contains("fast"), "{e}");
        let e = parse(&["--rate", "0"]).unwrap_err();
        assert!(e.contains("--rate"), "{e}");
        let e = parse(&["--rate", "1000", "-n", "100"]).unwrap_err();
        assert!(
            e.contains("--messages") && e.contains("--warmup-threads"),
            "{e}"
        );
        let e = parse(&["--rate", "1", "--duration", "100ms"]).unwrap_err();
        assert!(e.contains("--rate") && e.contains("no message"), "{e}");
        let e = parse(&["--ramp", "10:1s", "--rate", "5"]).unwrap_err();
        assert!(e.contains("--ramp") && e.contains("--rate"), "{e}");
    }

    #[test]
    fn ramp_stages_parse_into_a_schedule() {
        let c = parse(&["--ramp", "1000:30s, 5000:1m", "--warmup-threads", "0"]).unwrap();
        let s = c.open_loop.unwrap();
        assert!(s.is_ramp());
        assert_eq!(s.stages().len(), 2);
        assert_eq!(
            (s.stages()[1].rate, s.stages()[1].messages),
            (5000.0, 300_000)
        );
        assert_eq!(s.total(), 330_000);
    }

    #[test]
    fn malformed_ramp_stages_are_named() {
        // Each bad value: the flag, the stage's number and text, and why.
        for (value, stage, why) in [
            ("1000:30s,5000", "stage 2 \"5000\"", "no ':'"),
            (
                "1000:30s,abc:5s",
                "stage 2 \"abc:5s\"",
                "messages per second",
            ),
            ("0:5s", "stage 1 \"0:5s\"", "above zero"),
            ("100:soon", "stage 1 \"100:soon\"", "duration"),
            ("100:", "stage 1 \"100:\"", "no duration"),
            ("100:0s", "stage 1 \"100:0s\"", "zero"),
            ("100:1s,,5:1s", "stage 2 \"\"", "empty"),
            ("1:100ms", "stage 1 \"1:100ms\"", "no message"),
        ] {
            let e = parse(&["--ramp", value]).unwrap_err();
            assert!(e.contains("--ramp"), "{value}: {e}");
            assert!(e.contains(stage), "{value}: {e}");
            assert!(e.contains(why), "{value}: {e}");
        }
        let e = parse(&["--ramp", ""]).unwrap_err();
        assert!(e.contains("--ramp") && e.contains("no stages"), "{e}");
        let many = vec!["1:1s"; MAX_STAGES + 1].join(",");
        let e = parse(&["--ramp", &many]).unwrap_err();
        assert!(e.contains("65 stages"), "{e}");
    }

    #[test]
    fn connections_only_takes_its_own_flags() {
        let c = parse(&[
            "--connections-only",
            "200",
            "--source-addrs",
            "127.0.0.1,127.0.0.2",
            "--rate",
            "20",
            "-n",
            "40",
        ])
        .unwrap();
        let h = c.hold.unwrap();
        assert_eq!(h.connections, 200);
        assert_eq!(h.source_addrs.len(), 2);
        assert_eq!(h.senders, 20, "one per room by default");
        assert_eq!(
            (h.probes.total(), h.probes.duration()),
            (40, Duration::from_secs(2))
        );
        assert!(c.open_loop.is_none());
        let h = parse(&["--connections-only", "5", "--rooms", "2"])
            .unwrap()
            .hold
            .unwrap();
        assert_eq!((h.senders, h.probes.total()), (2, HOLD_PROBE_MESSAGES));
        // A holder needs no sender per room: few opener threads are fine.
        assert!(parse(&["--connections-only", "5", "--threads", "2"]).is_ok());
        let e = parse(&["--source-addrs", "127.0.0.2"]).unwrap_err();
        assert!(
            e.contains("--source-addrs") && e.contains("--connections-only"),
            "{e}"
        );
        let e = parse(&["--connections-only", "5", "--source-addrs", "nowhere"]).unwrap_err();
        assert!(e.contains("--source-addrs"), "{e}");
        let e = parse(&["--connections-only", "5", "--source-addrs", "0.0.0.0"]).unwrap_err();
        assert!(e.contains("--source-addrs"), "{e}");
        let e = parse(&["--connections-only", "0"]).unwrap_err();
        assert!(e.contains("--connections-only"), "{e}");
        let e = parse(&["--connections-only", "5", "--ramp", "1:1s"]).unwrap_err();
        assert!(
            e.contains("--ramp") && e.contains("--connections-only"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_flag_value_is_named() {
        let e = Args::try_parse_from(["chatflow-client", "--threads", "many"]).unwrap_err();
        assert!(e.to_string().contains("--threads"), "{e}");
        let e = Args::try_parse_from(["chatflow-client", "--ack-timeout", "soon"]).unwrap_err();
        assert!(e.to_string().contains("--ack-timeout"), "{e}");
    }
}
