//! `wsload`: a lean WebSocket load generator for measuring the server alone.
//!
//! Each thread runs one mio event loop over many connections (no thread
//! per connection, so the generator costs little CPU beside the server on
//! the same cores). Every connection keeps `--window` messages in flight:
//! it sends a pre-built, pre-masked frame (the same bytes every time, so no
//! per-message work) and sends the next one when an ack arrives. Latency is
//! send → ack, measured per message in a FIFO (acks come back in order on a
//! connection). Other frames (room broadcasts) are counted and skipped.
//!
//! This is a benchmark tool, not the product's load client
//! (`chatflow-client`), which generates realistic traffic and reports far
//! more; `wsload` exists to tell the server's cost from the client's.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chatflow_bench::{frame_len, masked_text_frame};
use clap::Parser;
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "wsload",
    about = "Lean WebSocket load generator for chatflow-server"
)]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Concurrent connections (spread over the threads and rooms).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Messages in flight per connection.
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Generator threads (each one event loop).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Seconds of warm-up before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Rooms to spread connections over (1..=rooms).
    #[arg(long, default_value_t = 20)]
    rooms: u32,
    /// Message text length in characters.
    #[arg(long, default_value_t = 40)]
    text_len: usize,
    /// Pin generator thread i to core i (off by default: it shares cores
    /// with the server under test).
    #[arg(long)]
    pin: bool,
}

struct Conn {
    stream: TcpStream,
    handshaken: bool,
    frame: Vec<u8>,
    /// Output not yet written.
    out: Vec<u8>,
    inbuf: Vec<u8>,
    sent_at: VecDeque<Instant>,
}

struct Totals {
    acks: u64,
    other_frames: u64,
    histogram: Histogram<u64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.connections == 0 || args.window == 0 || args.threads == 0 {
        bail!("--connections, --window and --threads must be at least 1");
    }
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let handles: Vec<_> = (0..args.threads)
        .map(|t| {
            let args = args.clone();
            let (measuring, stop) = (measuring.clone(), stop.clone());
            let core = cores.get(t % cores.len().max(1)).copied();
            std::thread::Builder::new()
                .name(format!("wsload-{t}"))
                .spawn(move || {
                    if args.pin {
                        if let Some(core) = core {
                            core_affinity::set_for_current(core);
                        }
                    }
                    let share = args.connections / args.threads
                        + usize::from(t < args.connections % args.threads);
                    drive(&args, t, share, &measuring, &stop)
                })
                .expect("spawn")
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(args.warmup));
    measuring.store(true, Ordering::SeqCst);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(args.duration));
    stop.store(true, Ordering::SeqCst);
    let elapsed = started.elapsed().as_secs_f64();
    let mut total = Totals {
        acks: 0,
        other_frames: 0,
        histogram: Histogram::new_with_bounds(1_000, 600_000_000_000, 3)?,
    };
    for h in handles {
        let t = h.join().expect("generator thread")?;
        total.acks += t.acks;
        total.other_frames += t.other_frames;
        total.histogram.add(&t.histogram)?;
    }
    let ms = |q: f64| total.histogram.value_at_quantile(q) as f64 / 1e6;
    println!(
        "connections={} window={} threads={} seconds={elapsed:.1} acks={} acks_per_sec={:.0} other_frames_per_sec={:.0} latency_ms p50={:.3} p99={:.3} p99.9={:.3} max={:.3}",
        args.connections,
        args.window,
        args.threads,
        total.acks,
        total.acks as f64 / elapsed,
        total.other_frames as f64 / elapsed,
        ms(0.5),
        ms(0.99),
        ms(0.999),
        total.histogram.max() as f64 / 1e6,
    );
    Ok(())
}

/// One generator thread: connects its share, then sends and counts until
/// told to stop.
fn drive(
    args: &Args,
    thread: usize,
    count: usize,
    measuring: &AtomicBool,
    stop: &AtomicBool,
) -> anyhow::Result<Totals> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut conns = Vec::with_capacity(count);
    for i in 0..count {
        let global = thread + i * args.threads;
        let room = (global as u32 % args.rooms) + 1;
        let mut stream = TcpStream::connect(args.addr).context("connecting")?;
        poll.registry().register(
            &mut stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let request = format!(
            "GET /chat/{room} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            args.addr
        );
        let user = (global % 100_000) + 1;
        let text = "x".repeat(args.text_len);
        let json = format!(
            r#"{{"userId":"{user}","username":"user{user}","message":"{text}","timestamp":"2026-11-27T02:00:00.000Z","messageType":"TEXT"}}"#
        );
        conns.push(Conn {
            stream,
            handshaken: false,
            frame: masked_text_frame(json.as_bytes(), [0x12, 0x34, 0x56, 0x78]),
            out: request.into_bytes(),
            inbuf: Vec::with_capacity(64 * 1024),
            sent_at: VecDeque::with_capacity(args.window),
        });
    }
    let mut totals = Totals {
        acks: 0,
        other_frames: 0,
        histogram: Histogram::new_with_bounds(1_000, 600_000_000_000, 3)?,
    };
    let mut scratch = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        let counting = measuring.load(Ordering::Relaxed);
        for event in events.iter() {
            let conn = &mut conns[event.token().0];
            if event.is_readable() {
                read_all(conn, &mut scratch, counting, &mut totals, args.window)?;
            }
            write_out(conn)?;
        }
    }
    Ok(totals)
}

fn read_all(
    conn: &mut Conn,
    scratch: &mut [u8],
    counting: bool,
    totals: &mut Totals,
    window: usize,
) -> anyhow::Result<()> {
    loop {
        match conn.stream.read(scratch) {
            Ok(0) => bail!("server closed a connection"),
            Ok(n) => conn.inbuf.extend_from_slice(&scratch[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut pos = 0;
    if !conn.handshaken {
        let Some(end) = conn.inbuf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Ok(());
        };
        if !conn.inbuf.starts_with(b"HTTP/1.1 101") {
            bail!(
                "handshake refused: {}",
                String::from_utf8_lossy(&conn.inbuf[..end])
            );
        }
        pos = end + 4;
        conn.handshaken = true;
        for _ in 0..window {
            conn.out.extend_from_slice(&conn.frame);
            conn.sent_at.push_back(Instant::now());
        }
    }
    let now = Instant::now();
    while let Some((header, len)) = frame_len(&conn.inbuf[pos..]) {
        let payload = &conn.inbuf[pos + header..pos + header + len];
        if payload.starts_with(br#"{"type":"ack""#) {
            if let Some(sent) = conn.sent_at.pop_front() {
                if counting {
                    totals.acks += 1;
                    totals
                        .histogram
                        .saturating_record(now.duration_since(sent).as_nanos() as u64);
                }
            }
            conn.out.extend_from_slice(&conn.frame);
            conn.sent_at.push_back(now);
        } else if payload.starts_with(br#"{"type":"error""#) {
            bail!("server error: {}", String::from_utf8_lossy(payload));
        } else if counting {
            totals.other_frames += 1;
        }
        pos += header + len;
    }
    conn.inbuf.drain(..pos);
    Ok(())
}

fn write_out(conn: &mut Conn) -> anyhow::Result<()> {
    while !conn.out.is_empty() {
        match conn.stream.write(&conn.out) {
            Ok(n) => {
                conn.out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
