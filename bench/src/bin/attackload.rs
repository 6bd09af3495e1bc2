//! `attackload`: measures what hostile clients cost everyone else. A canary
//! connection sends one message at a time and times each ack, before,
//! during and after an attack, while the server's resident memory is
//! sampled from `/proc`. Attacks:
//!
//! - `slowloris`: N connections each send an unfinished request head, one
//!   byte every `--byte-interval-secs`; a connection the server drops is
//!   opened again, so N stay in play for the whole attack;
//! - `never-read`: N WebSocket members of the canary's room that send
//!   messages and never read anything (acks, broadcasts).
//!
//! It only reports; the server's limits (handshake timeout, slow-reader
//! bound, back-pressure) are what it exercises.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chatflow_bench::masked_text_frame;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use parking_lot::Mutex;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Attack {
    Slowloris,
    NeverRead,
}

#[derive(Parser, Debug)]
#[command(
    name = "attackload",
    about = "Canary latency and server memory before, during and after an attack"
)]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// The server's pid, for its resident memory (VmRSS).
    #[arg(long)]
    server_pid: u32,
    #[arg(long, value_enum)]
    attack: Attack,
    /// Attacking connections.
    #[arg(long, default_value_t = 2000)]
    attackers: usize,
    /// Seconds of each phase (before, during, after).
    #[arg(long, default_value_t = 20)]
    phase_secs: u64,
    /// Slowloris: seconds between two header bytes of one connection.
    #[arg(long, default_value_t = 5.0)]
    byte_interval_secs: f64,
    /// Never-read: messages per second each attacker sends (each is
    /// broadcast to every member of the room, the attackers included).
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    /// Room of the canary (and of the never-reading clients).
    #[arg(long, default_value_t = 1)]
    room: u32,
}

/// A canary phase's figures.
#[derive(Default)]
struct Phase {
    acks: Option<Histogram<u64>>,
    rss_kib: Vec<u64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let phase_len = Duration::from_secs(args.phase_secs);
    let record: Arc<Mutex<Histogram<u64>>> = Arc::new(Mutex::new(Histogram::new(3)?));
    let stop_canary = Arc::new(AtomicBool::new(false));
    let canary_errors = Arc::new(AtomicU64::new(0));
    let canary = {
        let (record, stop, errors) = (record.clone(), stop_canary.clone(), canary_errors.clone());
        let (addr, room) = (args.addr, args.room);
        thread::Builder::new()
            .name("canary".into())
            .spawn(move || canary(addr, room, &record, &stop, &errors))?
    };
    let mut phases = Vec::new();
    for name in ["before", "during", "after"] {
        let attack_stop = Arc::new(AtomicBool::new(false));
        let attack = (name == "during").then(|| {
            let stop = attack_stop.clone();
            let (attack, addr, n, room) = (args.attack, args.addr, args.attackers, args.room);
            let rate = args.rate;
            let interval = Duration::from_secs_f64(args.byte_interval_secs);
            thread::Builder::new()
                .name("attack".into())
                .spawn(move || match attack {
                    Attack::Slowloris => slowloris(addr, n, interval, &stop),
                    Attack::NeverRead => never_read(addr, room, n, rate, &stop),
                })
                .expect("spawning the attack thread")
        });
        record.lock().reset();
        let mut phase = Phase::default();
        let started = Instant::now();
        while started.elapsed() < phase_len {
            thread::sleep(Duration::from_secs(1));
            phase.rss_kib.push(rss_kib(args.server_pid)?);
        }
        attack_stop.store(true, Ordering::Relaxed);
        if let Some(attack) = attack {
            let opened = attack.join().expect("attack thread")?;
            println!("{name}: attack opened {opened} connections in all");
        }
        phase.acks = Some(record.lock().clone());
        report(name, &phase);
        phases.push(phase);
    }
    stop_canary.store(true, Ordering::Relaxed);
    canary.join().expect("canary thread")?;
    println!(
        "canary errors (timeouts, refusals, lost connections): {}",
        canary_errors.load(Ordering::Relaxed)
    );
    Ok(())
}

fn report(name: &str, phase: &Phase) {
    let h = phase.acks.as_ref().expect("recorded");
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let rss = &phase.rss_kib;
    println!(
        "{name:>6}: canary acks {:>6}  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms | server RSS MiB first {:.1} max {:.1} last {:.1}",
        h.len(),
        ms(0.5),
        ms(0.99),
        h.max() as f64 / 1000.0,
        *rss.first().unwrap_or(&0) as f64 / 1024.0,
        *rss.iter().max().unwrap_or(&0) as f64 / 1024.0,
        *rss.last().unwrap_or(&0) as f64 / 1024.0,
    );
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status: is the server running?"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

/// Any mask will do: the server only checks that there is one.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn chat_message(user: u32, n: u64) -> Vec<u8> {
    masked_text_frame(
        format!(
            r#"{{"userId":{user},"username":"user{user}","message":"m{n}","timestamp":"2026-12-01T00:00:00Z","messageType":"TEXT","clientMessageId":"c{n}"}}"#
        )
        .as_bytes(),
        MASK,
    )
}

/// Opens a WebSocket by hand: the 101's head is read and checked.
fn upgrade(addr: SocketAddr, room: u32) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET /chat/{room} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte)?;
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        bail!("upgrade refused: {}", String::from_utf8_lossy(&head));
    }
    Ok(stream)
}

/// Reads one server frame (servers do not mask): (opcode, payload).
fn read_frame(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    stream.read_exact(&mut h)?;
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            stream.read_exact(&mut b)?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            stream.read_exact(&mut b)?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0; len as usize];
    stream.read_exact(&mut payload)?;
    Ok((h[0] & 0x0f, payload))
}

/// One message at a time: send, wait for its ack (skipping broadcasts),
/// record the time. Reconnects if the connection is lost.
fn canary(
    addr: SocketAddr,
    room: u32,
    record: &Mutex<Histogram<u64>>,
    stop: &AtomicBool,
    errors: &AtomicU64,
) -> anyhow::Result<()> {
    let mut stream = upgrade(addr, room).context("canary connection")?;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let sent = Instant::now();
        let result = stream.write_all(&chat_message(7, n)).and_then(|()| loop {
            let (opcode, payload) = read_frame(&mut stream)?;
            if opcode == 8 {
                return Err(std::io::Error::new(ErrorKind::ConnectionAborted, "closed"));
            }
            if payload.starts_with(br#"{"type":"ack""#) {
                return Ok(());
            }
            if payload.starts_with(br#"{"type":"error""#) {
                return Err(std::io::Error::other(
                    String::from_utf8_lossy(&payload).into_owned(),
                ));
            }
        });
        match result {
            Ok(()) => {
                let us = sent.elapsed().as_micros().max(1) as u64;
                let _ = record.lock().record(us);
            }
            Err(e) => {
                errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("canary: {e}; reconnecting");
                thread::sleep(Duration::from_millis(100));
                stream = upgrade(addr, room).context("canary reconnection")?;
            }
        }
        // 200 messages a second: enough samples for a p99 per phase
        // without the canary becoming load itself.
        thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Keeps `n` connections trickling a request head that never ends.
fn slowloris(
    addr: SocketAddr,
    n: usize,
    interval: Duration,
    stop: &AtomicBool,
) -> anyhow::Result<u64> {
    let open = |opened: &mut u64| -> Option<TcpStream> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
        s.set_nonblocking(true).ok()?;
        *opened += 1;
        s.write_all(b"GET /chat/1 HTTP/1.1\r\nX-a: ").ok()?;
        Some(s)
    };
    let mut opened = 0;
    let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| open(&mut opened)).collect();
    // Every connection sends one byte per interval, spread evenly.
    let pause = interval.div_f64(n.max(1) as f64);
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let alive = conns[i].as_mut().is_some_and(|s| match s.write(b"a") {
            Ok(_) => true,
            Err(e) => e.kind() == ErrorKind::WouldBlock,
        });
        if !alive {
            conns[i] = open(&mut opened);
        }
        i = (i + 1) % n;
        thread::sleep(pause);
    }
    Ok(opened)
}

/// `n` members of `room` that send and never read.
fn never_read(
    addr: SocketAddr,
    room: u32,
    n: usize,
    rate: f64,
    stop: &AtomicBool,
) -> anyhow::Result<u64> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let s = upgrade(addr, room)?;
        s.set_nonblocking(true)?;
        conns.push(Some(s));
    }
    let opened = conns.len() as u64;
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for (user, conn) in conns.iter_mut().enumerate() {
            let Some(s) = conn else { continue };
            sent += 1;
            match s.write(&chat_message(1000 + user as u32, sent)) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                // Closed by the server (a slow reader): stays closed.
                Err(_) => *conn = None,
            }
        }
        // `rate` rounds a second: rate × N messages a second, each
        // broadcast to every member of the room.
        thread::sleep(Duration::from_secs_f64(1.0 / rate.max(0.01)));
    }
    let closed = conns.iter().filter(|c| c.is_none()).count();
    println!("never-read: {closed} of {n} attackers were disconnected by the server");
    Ok(opened)
}
