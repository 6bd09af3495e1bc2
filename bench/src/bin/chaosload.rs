//! `chaosload`: the recorder of `bench/chaos.sh`. Senders push uniquely
//! named messages through every server into every room (retrying through
//! the other server when one fails, with the same `clientMessageId`, so an
//! idempotent server never stores a retry twice) and record every acked
//! id; listeners — one per room on each server — record every broadcast,
//! and reconnect with `?since=<last position>` whenever their connection
//! drops. When told to stop (a file appears, or `--duration` ends), the
//! senders finish, the listeners wait for quiet, and the recorder checks
//! PostgreSQL and prints one line: acked, stored exactly once, missing,
//! duplicate rows, rows never acked, broadcasts missing at any listener,
//! per-sender order broken at any listener — plus `summary.json` with the
//! details and `events.csv` (every ack with its latency from the first
//! attempt, every broadcast heard, with Unix milliseconds) from which the
//! scripts measure failover gaps.
//!
//! ```text
//! chaosload --url ws://127.0.0.1:18301 --url ws://127.0.0.1:18302 --rooms 2 \
//!     --senders 8 --rate 300 --stop-file /tmp/stop --db-name chatflow_chaos --out DIR
//! ```

use std::collections::{HashMap, HashSet};
use std::io::ErrorKind;
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

#[derive(Debug, Parser)]
#[command(
    name = "chaosload",
    about = "Records what a chaos run acked, stored and broadcast"
)]
struct Args {
    /// Servers (repeat): `ws://host:port`.
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    #[arg(long, default_value_t = 2)]
    rooms: u32,
    /// Sender threads (each bound to a room, starting on server i % urls).
    #[arg(long, default_value_t = 8)]
    senders: usize,
    /// Messages per second over all senders.
    #[arg(long, default_value_t = 300)]
    rate: u64,
    /// Stop when this file exists (or after --duration).
    #[arg(long)]
    stop_file: Option<PathBuf>,
    #[arg(long, default_value_t = 600)]
    duration_secs: u64,
    /// How long a message may keep retrying before it counts as failed.
    #[arg(long, default_value_t = 120)]
    retry_window_secs: u64,
    /// After the senders finish: how long the listeners may stay quiet
    /// before the recorder stops waiting for missing broadcasts.
    #[arg(long, default_value_t = 15)]
    settle_secs: u64,
    #[arg(long, default_value = "127.0.0.1")]
    db_host: String,
    #[arg(long, default_value_t = 5432)]
    db_port: u16,
    /// RabbitMQ nodes for --delete-topology (host:port,...; default the
    /// local broker).
    #[arg(long, env = "RABBITMQ_HOSTS")]
    rabbitmq_hosts: Option<String>,
    #[arg(long, default_value = "chatflow")]
    db_name: String,
    /// Where summary.json goes.
    #[arg(long, required_unless_present = "delete_topology")]
    out: Option<PathBuf>,
    /// Instead of a run: delete this namespace's queues and exchanges
    /// (with --rooms rooms) and exit (the chaos script's clean-up).
    #[arg(long, value_name = "NAMESPACE")]
    delete_topology: Option<String>,
}

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

/// (server, room) → (sender, seq) of each message the first time it was
/// heard there, in arrival order.
type Arrivals = HashMap<(usize, u32), Vec<(usize, u64)>>;

/// What every thread adds to.
#[derive(Default)]
struct Record {
    /// Message name (the text and clientMessageId) → acked message id.
    acked: Mutex<HashMap<String, String>>,
    failed: AtomicU64,
    attempts: AtomicU64,
    /// (server, room) → message ids received.
    heard: Mutex<HashMap<(usize, u32), HashSet<String>>>,
    /// Per-sender order is checked on it.
    arrivals: Mutex<Arrivals>,
    /// `events.csv` lines.
    events: Mutex<Vec<String>>,
    reconnects: AtomicU64,
    recovered_frames: AtomicU64,
    unrecovered: AtomicU64,
    /// Ids the senders' rooms were sent to: room of each acked name.
    room_of: Mutex<HashMap<String, u32>>,
}

fn connect(url: &str, room: u32, since: Option<&str>) -> Option<Ws> {
    let target = match since {
        Some(position) => format!("{url}/chat/{room}?since={position}"),
        None => format!("{url}/chat/{room}"),
    };
    let (ws, _) = tungstenite::connect(target).ok()?;
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let _ = s.set_nodelay(true);
    }
    Some(ws)
}

/// Reads one frame; `Ok(None)` on a read timeout, `Err` when the
/// connection is gone.
fn read(ws: &mut Ws) -> Result<Option<Value>, ()> {
    match ws.read() {
        Ok(Message::Text(t)) => Ok(serde_json::from_str(t.as_str()).ok()),
        Ok(Message::Close(_)) => Err(()),
        Ok(_) => Ok(None),
        Err(tungstenite::Error::Io(e))
            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
        {
            Ok(None)
        }
        Err(_) => Err(()),
    }
}

fn listener(
    urls: Arc<Vec<String>>,
    server: usize,
    room: u32,
    record: Arc<Record>,
    done: Arc<AtomicBool>,
) {
    let mut position: Option<String> = None;
    let mut ws: Option<Ws> = None;
    while !done.load(Ordering::Relaxed) {
        let Some(conn) = ws.as_mut() else {
            ws = connect(&urls[server], room, position.as_deref());
            if ws.is_none() {
                thread::sleep(Duration::from_millis(200));
            } else if position.is_some() {
                record.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        };
        match read(conn) {
            Ok(Some(frame)) => match frame["type"].as_str() {
                Some("message") => {
                    if let Some(id) = frame["messageId"].as_str() {
                        let mut heard = record.heard.lock().unwrap();
                        let first = heard
                            .entry((server, room))
                            .or_default()
                            .insert(id.to_string());
                        drop(heard);
                        let order = frame["message"].as_str().and_then(sender_and_seq);
                        if let (true, Some(order)) = (first, order) {
                            let mut arrivals = record.arrivals.lock().unwrap();
                            arrivals.entry((server, room)).or_default().push(order);
                        }
                        let event = format!("heard,{},{server},{room}", unix_ms());
                        record.events.lock().unwrap().push(event);
                    }
                    if let Some(p) = frame["position"].as_str() {
                        position = Some(p.to_string());
                    }
                }
                Some("recovery") => {
                    record.recovered_frames.fetch_add(1, Ordering::Relaxed);
                    if frame["recovered"] == false {
                        record.unrecovered.fetch_add(1, Ordering::Relaxed);
                        eprintln!("chaosload: server {server} room {room}: not recovered: {frame}");
                    }
                    if let Some(p) = frame["position"].as_str() {
                        position = Some(p.to_string());
                    }
                }
                _ => {}
            },
            Ok(None) => {}
            Err(()) => ws = None,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn sender(
    urls: Arc<Vec<String>>,
    index: usize,
    room: u32,
    run: String,
    pace: Duration,
    retry_window: Duration,
    record: Arc<Record>,
    stop: Arc<AtomicBool>,
) {
    let mut server = index % urls.len();
    let mut ws: Option<Ws> = None;
    let mut seq = 0u64;
    let user = 1 + (index as u32 * 7919) % 100_000;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            thread::sleep(next - now);
        }
        next += pace;
        seq += 1;
        let name = format!("chaos-{run}-{index}-{seq}");
        let text = json!({
            "userId": user, "username": format!("user{user}"), "message": name,
            "timestamp": "2026-12-01T00:00:00.000Z", "messageType": "TEXT", "clientMessageId": name,
        })
        .to_string();
        let first = Instant::now();
        let mut backoff = Duration::from_millis(50);
        let acked = loop {
            if first.elapsed() > retry_window {
                break None;
            }
            if ws.is_none() {
                ws = connect(&urls[server], room, None);
                if ws.is_none() {
                    server = (server + 1) % urls.len();
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
            let conn = ws.as_mut().expect("connected");
            record.attempts.fetch_add(1, Ordering::Relaxed);
            if conn.send(Message::text(text.clone())).is_err() {
                ws = None;
                server = (server + 1) % urls.len();
                continue;
            }
            // Wait for this message's answer (broadcasts are skipped).
            let deadline = Instant::now() + Duration::from_secs(10);
            let answer = loop {
                if Instant::now() > deadline {
                    break Err(());
                }
                match read(conn) {
                    Ok(Some(f)) if f["clientMessageId"] == name.as_str() => break Ok(f),
                    Ok(_) => {}
                    Err(()) => break Err(()),
                }
            };
            match answer {
                Ok(f) if f["type"] == "ack" => break f["messageId"].as_str().map(str::to_string),
                Ok(_) => {
                    // UNAVAILABLE: back off, then try the other server.
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    ws = None;
                    server = (server + 1) % urls.len();
                }
                Err(()) => {
                    ws = None;
                    server = (server + 1) % urls.len();
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        };
        match acked {
            Some(id) => {
                let event = format!("ack,{},{}", unix_ms(), first.elapsed().as_millis());
                record.events.lock().unwrap().push(event);
                record.acked.lock().unwrap().insert(name.clone(), id);
                record.room_of.lock().unwrap().insert(name, room);
            }
            None => {
                record.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Deletes a namespace's topology on the local RabbitMQ.
fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// (sender index, seq) of a message name `chaos-{run}-{index}-{seq}`.
fn sender_and_seq(name: &str) -> Option<(usize, u64)> {
    let mut parts = name.rsplitn(3, '-');
    let seq = parts.next()?.parse().ok()?;
    let index = parts.next()?.parse().ok()?;
    Some((index, seq))
}

/// Arrivals where a sender's message came after a later one of the same
/// sender (each listener's first hearings, in order).
fn order_violations(arrivals: &Arrivals) -> usize {
    let mut violations = 0;
    for heard in arrivals.values() {
        let mut last: HashMap<usize, u64> = HashMap::new();
        for &(sender, seq) in heard {
            let previous = last.entry(sender).or_insert(0);
            if seq < *previous {
                violations += 1;
                eprintln!("chaosload: sender {sender}: seq {seq} heard after {previous}");
            } else {
                *previous = seq;
            }
        }
    }
    violations
}

fn delete_topology(namespace: &str, rooms: u32, nodes: Option<&str>) -> anyhow::Result<()> {
    use chatflow_broker::Declare;
    let mut settings = chatflow_broker::BrokerSettings::default().with_topology(
        namespace,
        chatflow_protocol::Rooms::new(rooms).map_err(anyhow::Error::msg)?,
    );
    if let Some(list) = nodes {
        settings.amqp.nodes = chatflow_broker::HostPort::parse_list("rabbitmq-hosts", list)?;
    }
    let mut connection = chatflow_broker::amqp::connect(&settings.amqp)?;
    let channel = connection.open_channel(None)?;
    settings.topology.delete(&channel)?;
    let _ = channel.close();
    let _ = connection.close();
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(namespace) = &args.delete_topology {
        return delete_topology(namespace, args.rooms, args.rabbitmq_hosts.as_deref());
    }
    let out = args
        .out
        .clone()
        .expect("required without --delete-topology");
    std::fs::create_dir_all(&out)?;
    let urls = Arc::new(args.urls.clone());
    let record = Arc::new(Record::default());
    let stop = Arc::new(AtomicBool::new(false));
    let listeners_done = Arc::new(AtomicBool::new(false));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let run = format!("{:x}", nanos ^ (u64::from(std::process::id()) << 40));

    let mut listeners = Vec::new();
    for server in 0..urls.len() {
        for room in 1..=args.rooms {
            let (urls, record, done) = (urls.clone(), record.clone(), listeners_done.clone());
            listeners.push(thread::spawn(move || {
                listener(urls, server, room, record, done)
            }));
        }
    }
    thread::sleep(Duration::from_millis(500));
    let pace = Duration::from_secs_f64(args.senders as f64 / args.rate.max(1) as f64);
    let mut senders = Vec::new();
    for index in 0..args.senders {
        let room = 1 + index as u32 % args.rooms;
        let (urls, record, stop, run) = (urls.clone(), record.clone(), stop.clone(), run.clone());
        let retry_window = Duration::from_secs(args.retry_window_secs);
        senders.push(thread::spawn(move || {
            sender(urls, index, room, run, pace, retry_window, record, stop)
        }));
    }
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(args.duration_secs)
        && !args.stop_file.as_ref().is_some_and(|f| f.exists())
    {
        thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        let _ = s.join();
    }
    // Listeners: until every acked message was heard on every listener of
    // its room, or nothing new for --settle-secs.
    let missing_broadcasts = |record: &Record| -> usize {
        let acked = record.acked.lock().unwrap();
        let rooms = record.room_of.lock().unwrap();
        let heard = record.heard.lock().unwrap();
        let empty = HashSet::new();
        let mut missing = 0;
        for server in 0..urls.len() {
            for (name, id) in acked.iter() {
                let room = rooms[name];
                if !heard.get(&(server, room)).unwrap_or(&empty).contains(id) {
                    missing += 1;
                }
            }
        }
        missing
    };
    let mut last = usize::MAX;
    let mut quiet_since = Instant::now();
    loop {
        let missing = missing_broadcasts(&record);
        if missing == 0 {
            break;
        }
        if missing != last {
            last = missing;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() > Duration::from_secs(args.settle_secs) {
            break;
        }
        thread::sleep(Duration::from_millis(250));
    }
    listeners_done.store(true, Ordering::Relaxed);
    for l in listeners {
        let _ = l.join();
    }

    // The database: rows of this run, by their text (the message's name).
    let acked = record.acked.lock().unwrap().clone();
    let mut db = postgres::Client::connect(
        &format!(
            "host={} port={} user=postgres dbname={}",
            args.db_host, args.db_port, args.db_name
        ),
        postgres::NoTls,
    )
    .context("connecting to the chaos database")?;
    let mut stored: HashMap<String, Vec<String>> = HashMap::new();
    let pattern = format!("chaos-{run}-%");
    // Rows land within a flush interval of their ack; wait for the count
    // to settle.
    let mut previous = -1i64;
    for _ in 0..60 {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM messages WHERE message LIKE $1",
                &[&pattern],
            )?
            .get(0);
        if n == previous && n as usize >= acked.len() {
            break;
        }
        previous = n;
        thread::sleep(Duration::from_millis(500));
    }
    for row in db.query(
        "SELECT message, message_id::text FROM messages WHERE message LIKE $1",
        &[&pattern],
    )? {
        stored.entry(row.get(0)).or_default().push(row.get(1));
    }
    let stored_once = acked
        .iter()
        .filter(|(name, id)| {
            stored
                .get(*name)
                .is_some_and(|ids| ids.len() == 1 && ids[0] == **id)
        })
        .count();
    let missing = acked
        .keys()
        .filter(|name| !stored.contains_key(*name))
        .count();
    let duplicates: usize = stored.values().map(|ids| ids.len().saturating_sub(1)).sum();
    let never_acked = stored
        .keys()
        .filter(|name| !acked.contains_key(*name))
        .count();
    let broadcasts_missing = missing_broadcasts(&record);
    let failed = record.failed.load(Ordering::Relaxed);
    let order_broken = order_violations(&record.arrivals.lock().unwrap());
    let mut events = record.events.lock().unwrap().join("\n");
    events.push('\n');
    std::fs::write(out.join("events.csv"), events)?;
    let line = format!(
        "acked {} stored-once {} missing {} duplicate-rows {} never-acked {} broadcasts-missing {} order-violations {} failed {} attempts {} listener-resumes {} unrecovered {}",
        acked.len(),
        stored_once,
        missing,
        duplicates,
        never_acked,
        broadcasts_missing,
        order_broken,
        failed,
        record.attempts.load(Ordering::Relaxed),
        record.reconnects.load(Ordering::Relaxed),
        record.unrecovered.load(Ordering::Relaxed),
    );
    let summary = json!({
        "run": run,
        "acked": acked.len(),
        "storedOnce": stored_once,
        "missing": missing,
        "duplicateRows": duplicates,
        "neverAcked": never_acked,
        "broadcastsMissing": broadcasts_missing,
        "orderViolations": order_broken,
        "failed": failed,
        "attempts": record.attempts.load(Ordering::Relaxed),
        "listenerResumes": record.reconnects.load(Ordering::Relaxed),
        "recoveryFrames": record.recovered_frames.load(Ordering::Relaxed),
        "unrecovered": record.unrecovered.load(Ordering::Relaxed),
        "line": line,
    });
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    println!("{line}");
    Ok(())
}
