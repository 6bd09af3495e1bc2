//! Opening the idle connections: which source address each one binds to
//! ([`source_plan`]), and the opener threads that connect them (blocking
//! connect and handshake, `--threads` at once) and hand each open one to a
//! holder. Connection `i` goes to room `i % rooms + 1`, server
//! `i % servers` and source `i % sources`; a failure is counted by its
//! reason, not retried: a connection-count test reports what the first
//! attempt met.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::config::{Config, HoldConfig};
use crate::connection::{Connection, Dial, IDLE_READ_BUFFER};
use crate::error::{Error, Result};
use crate::latency::Latencies;

use super::holder::{Idle, ToHolder};

/// Ephemeral ports of one source address when the kernel does not say:
/// Linux's default `ip_local_port_range`, 32768..=60999.
const DEFAULT_EPHEMERAL_PORTS: u32 = 28_232;

/// Connections planned per source address: three quarters of its
/// ephemeral ports, leaving the rest for everything else on the host
/// (the senders, the server's own clients, other tests).
fn per_source(ports: u32) -> usize {
    (ports as usize * 3 / 4).max(1)
}

/// The ephemeral ports one source address has towards one server address.
fn ephemeral_ports() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut it = text.split_whitespace().map(str::parse::<u32>);
            match (it.next(), it.next()) {
                (Some(Ok(lo)), Some(Ok(hi))) if hi >= lo => Some(hi - lo + 1),
                _ => None,
            }
        })
        .unwrap_or(DEFAULT_EPHEMERAL_PORTS)
}

/// The source address of each connection slot, round-robin: the
/// `--source-addrs` (each checked to be bindable), or for servers that
/// are all on IPv4 loopback 127.0.0.1..=127.0.0.K with K enough for
/// `connections` within each address's ports, or `[None]` (the OS picks).
pub fn source_plan(config: &Config, hold: &HoldConfig) -> Result<Vec<Option<IpAddr>>> {
    if !hold.source_addrs.is_empty() {
        for &addr in &hold.source_addrs {
            check_bindable(addr)?;
        }
        return Ok(hold.source_addrs.iter().copied().map(Some).collect());
    }
    let mut all_loopback = true;
    for server in &config.urls {
        let addrs: Vec<SocketAddr> = server
            .authority
            .to_socket_addrs()
            .map(Iterator::collect)
            .unwrap_or_default();
        all_loopback &=
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback() && a.is_ipv4());
    }
    if !all_loopback {
        return Ok(vec![None]);
    }
    Ok(
        loopback_sources(hold.connections, per_source(ephemeral_ports()))
            .into_iter()
            .map(Some)
            .collect(),
    )
}

/// 127.0.0.1, 127.0.0.2, ... enough for `connections` at `per_source`
/// each (the whole 127/8 is loopback on Linux).
fn loopback_sources(connections: usize, per_source: usize) -> Vec<IpAddr> {
    let count = connections.div_ceil(per_source).max(1);
    let first = u32::from(Ipv4Addr::new(127, 0, 0, 1));
    (0..count as u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(first + i)))
        .collect()
}

/// Refuses a `--source-addrs` address this host does not have, before any
/// connection is tried.
fn check_bindable(addr: IpAddr) -> Result<()> {
    use socket2::{Domain, Socket, Type};
    let target = SocketAddr::new(addr, 0);
    Socket::new(Domain::for_address(target), Type::STREAM, None)
        .and_then(|s| s.bind(&target.into()))
        .map_err(|e| Error::Config(format!("--source-addrs {addr}: cannot bind to it: {e}")))
}

/// What the openers share: the next slot to open, the counts the progress
/// display reads, the holders' inboxes.
pub struct Openers<'a> {
    pub config: &'a Config,
    pub hold: &'a HoldConfig,
    pub sources: &'a [Option<IpAddr>],
    pub holders: &'a [(Sender<ToHolder>, mio::Waker)],
    pub stop: &'a AtomicBool,
    pub next: AtomicUsize,
    pub opened: AtomicU64,
    pub failed: AtomicU64,
}

/// One opener thread's account.
#[derive(Debug, Default)]
pub struct Opened {
    /// Connections opened per room (index room-1).
    pub per_room: Vec<u64>,
    /// Opened per local address, as the socket reports it (so the binding
    /// is checked, not assumed), and failed per planned source.
    pub per_source: BTreeMap<String, u64>,
    pub failed_per_source: BTreeMap<String, u64>,
    /// Why connections failed: the error text, and how many.
    pub failures: BTreeMap<String, u64>,
    /// Connect + handshake time of each opened connection.
    pub setup: Latencies,
    /// When its last attempt ended.
    pub last_done: Option<Instant>,
}

impl Openers<'_> {
    /// Opens slots until none are left (or Ctrl-C): the body of an opener
    /// thread.
    pub fn run(&self) -> Opened {
        let rooms = self.config.rooms as usize;
        let mut out = Opened {
            per_room: vec![0; rooms],
            ..Opened::default()
        };
        loop {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.hold.connections {
                break;
            }
            let room = (i % rooms) as u32 + 1;
            let endpoint = &self.config.urls[i % self.config.urls.len()];
            let source = self.sources[i % self.sources.len()];
            let dial = Dial {
                source,
                read_buffer: IDLE_READ_BUFFER,
                ..Dial::sender(self.config.connect_timeout, self.config.tick, 1)
            };
            let started = Instant::now();
            let result = Connection::open(endpoint, room, None, &dial);
            let now = Instant::now();
            out.last_done = Some(now);
            match result {
                Ok(conn) => {
                    out.setup.record(now - started);
                    out.per_room[room as usize - 1] += 1;
                    let local = conn
                        .local_ip()
                        .map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
                    *out.per_source.entry(local).or_default() += 1;
                    let (inbox, waker) = &self.holders[i % self.holders.len()];
                    // A holder outlives the openers; if one died, its
                    // connection is dropped here and the report says so
                    // through the holder's own failure.
                    if inbox
                        .send(ToHolder::Hold(Box::new(Idle::new(conn, room))))
                        .is_ok()
                    {
                        let _ = waker.wake();
                    }
                    self.opened.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    *out.failures.entry(e.to_string()).or_default() += 1;
                    let planned = source.map_or_else(|| "any".to_string(), |ip| ip.to_string());
                    *out.failed_per_source.entry(planned).or_default() += 1;
                    self.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        out
    }
}

/// Sums the openers' accounts.
pub fn merge(all: Vec<Opened>, rooms: usize) -> Opened {
    let mut total = Opened {
        per_room: vec![0; rooms],
        ..Opened::default()
    };
    for o in all {
        for (t, n) in total.per_room.iter_mut().zip(&o.per_room) {
            *t += n;
        }
        for (k, n) in o.per_source {
            *total.per_source.entry(k).or_default() += n;
        }
        for (k, n) in o.failed_per_source {
            *total.failed_per_source.entry(k).or_default() += n;
        }
        for (k, n) in o.failures {
            *total.failures.entry(k).or_default() += n;
        }
        total.setup.merge(&o.setup);
        total.last_done = total.last_done.max(o.last_done);
    }
    total
}

/// How long the openers wait between progress samples.
pub const OPEN_WATCH_TICK: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_sources_cover_the_connections_at_their_share_each() {
        let at = |n: usize, per: usize| {
            loopback_sources(n, per)
                .iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(at(200, 21_174), ["127.0.0.1"]);
        assert_eq!(at(100_000, 21_174).len(), 5);
        assert_eq!(at(100_000, 21_174)[4], "127.0.0.5");
        // Past 127.0.0.255 the next octet carries.
        assert_eq!(at(300, 1)[299], "127.0.1.44");
        assert_eq!(per_source(28_232), 21_174);
    }

    #[test]
    fn an_address_this_host_lacks_is_refused_by_name() {
        let e = check_bindable("192.0.2.1".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("--source-addrs 192.0.2.1"), "{e}");
        check_bindable("127.0.0.2".parse().unwrap()).unwrap();
    }
}
