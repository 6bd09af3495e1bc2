//! A server's life as a load balancer and its clients see it: `/health`
//! is readiness (503 while draining and stopping, `/livez` 200 all along),
//! a SIGTERM drains without failing a message (every in-flight message is
//! answered before the 1001 close, and a client that moves to another
//! server loses nothing and doubles nothing), the binary does the same on
//! a real signal, and a peer that stops answering pings is closed.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use chatflow_broker::shutdown_signal;
use chatflow_protocol::Envelope;
use chatflow_server::broker::{Broker, Outcome};
use chatflow_server::config::Liveness;
use chatflow_server::fanout::{Fanout, PublishError, Ticket, WorkerEvent};
use chatflow_server::{BrokerKind, Config, Server};
use common::*;
use crossbeam_channel::{unbounded, Sender};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

/// `GET /livez`: it must answer 200 with its tiny body.
fn assert_live(addr: SocketAddr) {
    let (status, body) = http_get(addr, "/livez", "");
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("livez is JSON");
    assert_eq!(body["status"], "alive");
}

/// Confirms every message `delay` after it was published, from its own
/// thread (a publisher-confirm broker with a slow disk), and records the
/// text of every message it took: how a test counts duplicates.
struct SlowConfirms {
    requests: Sender<(Instant, Ticket)>,
    delay: Duration,
    published: Published,
}

impl SlowConfirms {
    fn start(fanout: Fanout, delay: Duration, published: Published) -> Arc<dyn Broker> {
        let (requests, incoming) = unbounded::<(Instant, Ticket)>();
        thread::spawn(move || {
            // Due times only grow (one delay for all), so in order is on time.
            for (due, ticket) in incoming {
                thread::sleep(due.saturating_duration_since(Instant::now()));
                fanout.send_to(
                    ticket.worker,
                    WorkerEvent::Published {
                        ticket,
                        result: Ok(None),
                    },
                );
            }
        });
        Arc::new(SlowConfirms {
            requests,
            delay,
            published,
        })
    }
}

impl Broker for SlowConfirms {
    fn kind(&self) -> BrokerKind {
        BrokerKind::Memory
    }

    fn publish(&self, ticket: Ticket, envelope: &Envelope<'_>, _: Option<&str>) -> Outcome {
        self.published
            .lock()
            .unwrap()
            .push(envelope.message.to_string());
        let _ = self.requests.send((Instant::now() + self.delay, ticket));
        Outcome::Pending
    }
}

/// The text of every message a broker took.
type Published = Arc<Mutex<Vec<String>>>;

/// How long [`SlowConfirms`] holds each confirm: long enough that a
/// window of messages is always in flight when the stop comes.
const DELAY: Duration = Duration::from_millis(100);

fn slow_server(config: Config, published: &Published) -> Server {
    let published = published.clone();
    Server::start_with(
        config,
        Box::new(move |_, fanout| Ok(SlowConfirms::start(fanout, DELAY, published))),
    )
    .expect("server starts")
}

/// Before the stop /health is 200; from the stop on it is 503 — `draining`
/// while WebSockets are still accepted and acked, then `shutting_down`
/// while the listener still answers (health 503, upgrades 503) until the
/// last WebSocket has closed — and /livez is 200 throughout.
#[test]
fn health_is_503_from_the_drain_until_exit_and_livez_200_throughout() {
    let server = Server::start(Config {
        // Far longer than the test: the drain ends when the test says so.
        drain: Duration::from_secs(600),
        // Likewise: the closing step ends when the last client answers.
        shutdown_grace: Duration::from_secs(600),
        ..config(BrokerKind::Memory)
    })
    .unwrap();
    let addr = server.local_addr();
    let (status, h) = health_with_status(addr);
    assert_eq!((status, &h["status"]), (200, &"ok".into()), "{h}");
    assert_live(addr);
    let mut stays = connect(addr, 1);
    assert_eq!(
        request(&mut stays, message(1, "before", "b"))["type"],
        "ack"
    );

    let (mut hurry, hurried) = shutdown_signal();
    let stopping = thread::spawn(move || server.shutdown_hurried_by(&hurried));
    eventually("health says draining", || {
        health(addr)["status"] == "draining"
    });
    let (status, h) = health_with_status(addr);
    assert_eq!(status, 503);
    assert!(
        h["reasons"][0].as_str().unwrap().contains("draining"),
        "{h}"
    );
    // Draining is serving as usual: new WebSockets, messages, acks.
    let mut newcomer = connect(addr, 2);
    assert_eq!(
        request(&mut newcomer, message(2, "during", "d"))["type"],
        "ack"
    );
    assert_eq!(
        request(&mut stays, message(1, "during", "d"))["type"],
        "ack"
    );
    assert_live(addr);
    // The newcomer answers its close at once; `stays` does not read yet.
    drop(newcomer);

    hurry.signal();
    eventually("health says shutting_down", || {
        health(addr)["status"] == "shutting_down"
    });
    assert_eq!(health_with_status(addr).0, 503);
    let (status, body) = http_get(
        addr,
        "/chat/1",
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    );
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("shutting down"), "{body}");
    assert_live(addr);

    // The last WebSocket reads its 1001 and answers it: the server exits.
    let close = loop {
        match stays.read().expect("the close frame") {
            Message::Close(frame) => break frame,
            _ => continue,
        }
    };
    assert_eq!(close.expect("a close frame").code, CloseCode::Away);
    let _ = stays.flush();
    stopping.join().unwrap().expect("clean shutdown");
}

/// One client of the fleet: sends `total` messages (texts `m-0`, `m-1`,
/// …) keeping [`WINDOW`] in flight, to `servers[0]` and, once that server
/// closes it, to the next. A "server is shutting down" refusal makes it
/// stop sending there (and resend elsewhere); so does a message still
/// unanswered at the close, which (the server's guarantee) it never
/// published: it crossed the close frame on the wire.
#[derive(Default)]
struct Mover {
    /// The texts acked on each connection, in the order of `servers`.
    acked_on: Vec<HashSet<String>>,
    /// Refused with a "never sent" UNAVAILABLE.
    refused: usize,
    /// Unanswered when the close came.
    crossed: usize,
    /// Answers saying a message may or may not have been stored.
    doubtful: Vec<serde_json::Value>,
    closes: Vec<CloseCode>,
}

const WINDOW: usize = 16;

fn run_mover(servers: &[SocketAddr], total: usize, mut at: impl FnMut(usize)) -> Mover {
    let mut mover = Mover::default();
    let mut acked = 0;
    let mut to_send: Vec<usize> = (0..total).rev().collect();
    for &addr in servers {
        let mut client = connect(addr, 1);
        let mut in_flight: HashSet<usize> = HashSet::new();
        let mut here = HashSet::new();
        let mut refused_here = false;
        let closed = loop {
            while !refused_here && in_flight.len() < WINDOW {
                let Some(i) = to_send.pop() else { break };
                send(&mut client, message(7, &format!("m-{i}"), &i.to_string()));
                in_flight.insert(i);
            }
            if in_flight.is_empty() && to_send.is_empty() {
                break None;
            }
            let frame = match client.read().expect("an answer or a close") {
                Message::Text(text) => serde_json::from_str::<serde_json::Value>(&text).unwrap(),
                Message::Close(frame) => break frame,
                _ => continue,
            };
            if frame["type"] == "message" {
                continue;
            }
            let i: usize = frame["clientMessageId"].as_str().unwrap().parse().unwrap();
            assert!(in_flight.remove(&i), "one answer per message: {frame}");
            match frame["type"].as_str().unwrap() {
                "ack" => {
                    assert!(here.insert(format!("m-{i}")), "{frame}");
                    acked += 1;
                    at(acked);
                }
                _ if frame["message"] == PublishError::ShuttingDown.message() => {
                    mover.refused += 1;
                    refused_here = true;
                    to_send.push(i);
                }
                _ => mover.doubtful.push(frame),
            }
        };
        mover.acked_on.push(here);
        if let Some(frame) = closed {
            mover.closes.push(frame.code);
            mover.crossed += in_flight.len();
            to_send.extend(in_flight);
        }
        if to_send.is_empty() {
            break;
        }
    }
    mover
}

/// SIGTERM-style drain under load: a client with 16 messages always in
/// flight on the stopping server gets, before its 1001 close, the ack of
/// every message that server published (the rest were refused as never
/// sent, or crossed the close unpublished); it moves to a second server
/// and finishes there: every message acked once, none failed, none
/// published twice.
#[test]
fn a_drain_under_load_answers_every_in_flight_message_before_the_1001() {
    const TOTAL: usize = 300;
    let (on_first, on_second) = (Arc::default(), Arc::default());
    let stopping = Arc::new(Mutex::new(None));
    let first = slow_server(
        Config {
            drain: Duration::from_millis(300),
            ..config(BrokerKind::Memory)
        },
        &on_first,
    );
    let second = slow_server(config(BrokerKind::Memory), &on_second);
    let addrs = [first.local_addr(), second.local_addr()];
    let mut first = Some(first);
    let mover = run_mover(&addrs, TOTAL, |acked| {
        // A third of the way in, SIGTERM the first server (from another
        // thread, as a signal would: the client goes on meanwhile).
        if acked == TOTAL / 3 {
            if let Some(server) = first.take() {
                *stopping.lock().unwrap() = Some(thread::spawn(move || server.shutdown()));
            }
        }
    });
    let stopped = stopping
        .lock()
        .unwrap()
        .take()
        .expect("the first server was stopped");
    stopped.join().unwrap().expect("clean shutdown");

    assert_eq!(mover.closes, [CloseCode::Away], "closed once, with 1001");
    assert!(mover.doubtful.is_empty(), "{:?}", mover.doubtful);
    let on_first: HashSet<String> = on_first.lock().unwrap().iter().cloned().collect();
    assert_eq!(
        on_first, mover.acked_on[0],
        "every message the stopping server published was acked before its close"
    );
    assert!(on_first.len() > TOTAL / 3, "the drain went on serving");
    let acked: usize = mover.acked_on.iter().map(HashSet::len).sum();
    assert_eq!(acked, TOTAL, "every message acked, once");
    let on_second = on_second.lock().unwrap();
    let all: HashSet<&String> = on_first.iter().chain(on_second.iter()).collect();
    assert_eq!(all.len(), TOTAL, "every message reached a broker");
    assert_eq!(
        on_first.len() + on_second.len(),
        TOTAL,
        "none twice: refused and crossed messages never reached one ({} refused, {} crossed)",
        mover.refused,
        mover.crossed
    );
    second.shutdown().unwrap();
}

/// The binary on a real SIGTERM: /health turns 503 (`draining`) while its
/// WebSocket goes on acking; a second signal skips the rest of the drain;
/// the client gets 1001, and the process exits 0.
#[test]
fn the_binary_drains_on_sigterm_and_exits_0() {
    let namespace = unique_namespace("sigterm");
    let child = memory_binary(1)
        .args(["--drain-secs", "600", "--namespace", &namespace])
        .stderr(Stdio::piped())
        .spawn()
        .expect("the server binary starts");
    let mut child = Reaper(child);
    let child = &mut child.0;
    // Held open to the end: printing to a closed pipe fails.
    let (addr, _stdout) = listening_addr(child);
    assert_eq!(health_with_status(addr).0, 200);
    let mut client = connect(addr, 3);
    assert_eq!(
        request(&mut client, message(3, "before", "a"))["type"],
        "ack"
    );

    signal(child, libc::SIGTERM);
    eventually("health says draining", || {
        health(addr)["status"] == "draining"
    });
    assert_eq!(
        request(&mut client, message(3, "during", "b"))["type"],
        "ack"
    );

    signal(child, libc::SIGTERM);
    let close = loop {
        match client.read().expect("the close frame") {
            Message::Close(frame) => break frame,
            _ => continue,
        }
    };
    assert_eq!(close.expect("a close frame").code, CloseCode::Away);
    let _ = client.flush();
    let status = wait_for_exit(child);
    assert_eq!(status.code(), Some(0), "exit 0");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(stderr.contains("draining"), "{stderr}");
    assert!(
        stderr.contains("skipping the rest of the drain"),
        "{stderr}"
    );
}

/// Every thread of a running binary, by name, with its scheduling policy
/// (field 41 of `/proc/PID/task/TID/stat`: 0 SCHED_OTHER, 3 SCHED_BATCH).
fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue; // the thread ended
        };
        let name = stat[stat.find('(').unwrap() + 1..stat.rfind(')').unwrap()].to_string();
        // Fields after "(name) ": the state is field 3, the policy field 41.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        threads.push((name, fields[41 - 3].parse().unwrap()));
    }
    threads
}

/// The binary runs its threads under SCHED_BATCH unless told
/// `--no-sched-batch` (the policy a process's threads inherit from the
/// one that starts them).
#[test]
fn the_binary_runs_its_threads_under_sched_batch_unless_told_not_to() {
    const SCHED_OTHER: u32 = 0;
    const SCHED_BATCH: u32 = 3;
    for (extra, expected) in [(None, SCHED_BATCH), (Some("--no-sched-batch"), SCHED_OTHER)] {
        let child = memory_binary(2)
            .args(["--drain-secs", "0"])
            .args(extra)
            .env_remove("NO_SCHED_BATCH")
            .stderr(Stdio::null())
            .spawn()
            .expect("the server binary starts");
        let mut child = Reaper(child);
        let (_addr, _stdout) = listening_addr(&mut child.0);
        let threads = thread_policies(child.0.id());
        let workers = threads.iter().filter(|(n, _)| n.starts_with("worker-"));
        assert_eq!(workers.count(), 2, "{threads:?}");
        // main sets it before any thread starts: every thread has it,
        // workers, publishers and the main thread alike.
        for (name, policy) in &threads {
            assert_eq!(*policy, expected, "{name} with {extra:?}: {threads:?}");
        }
        signal(&child.0, libc::SIGTERM);
        wait_for_exit(&mut child.0);
    }
}

/// A peer that did the handshake and then never reads nor answers is
/// pinged after `ping_interval`, closed with 1001 `pong_timeout` later
/// and counted; a client that reads (so answers pings) stays connected.
#[test]
fn a_client_that_stops_answering_pings_is_closed_with_1001() {
    let ping = Duration::from_secs(1);
    let pong = Duration::from_secs(1);
    let server = Server::start(Config {
        liveness: Liveness {
            ping_interval: Some(ping),
            pong_timeout: pong,
            ..Liveness::default()
        },
        ..config(BrokerKind::Memory)
    })
    .unwrap();
    let addr = server.local_addr();
    let opened = Instant::now();
    let mut silent = TcpStream::connect(addr).unwrap();
    write!(
        silent,
        "GET /chat/1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut alive = connect(addr, 1);
    eventually("both are open", || health(addr)["connections"] == 2);

    // `alive` reads all along: tungstenite answers each ping as it reads.
    chatflow_testkit::ws::set_read_timeout(&mut alive, Duration::from_millis(100));
    eventually("the silent peer is closed", || {
        let _ = chatflow_testkit::ws::next_json(&mut alive);
        health(addr)["totals"]["pingTimeouts"] == 1
    });
    let elapsed = opened.elapsed();
    assert!(
        elapsed >= ping + pong,
        "not before ping + pong: {elapsed:?}"
    );
    assert_eq!(health(addr)["connections"], 1);
    chatflow_testkit::ws::set_read_timeout(&mut alive, TIMEOUT);
    assert_eq!(
        request(&mut alive, message(1, "still here", "s"))["type"],
        "ack"
    );

    // What the silent peer was sent: the 101, a ping, then a 1001 close.
    silent.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut bytes = Vec::new();
    let _ = silent.read_to_end(&mut bytes);
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(bytes.starts_with(b"HTTP/1.1 101 "));
    let frames = &bytes[head_end..];
    assert_eq!(&frames[..2], &[0x89, 0x00], "an empty ping");
    assert_eq!(frames[2], 0x88, "then a close");
    assert_eq!(u16::from_be_bytes([frames[4], frames[5]]), 1001);
    server.shutdown().unwrap();
}

/// The Redis subscription cut (through a proxy, so only this server's
/// link) past its grace makes /health 503 ("broadcasts missed") while
/// /livez stays 200; once the subscriber is back it is 200 and ok again.
#[test]
fn health_is_503_once_the_subscription_is_down_past_its_grace() {
    use chatflow_testkit::services::{amqp_addr, redis_addr};
    use chatflow_testkit::Proxy;

    let namespace = unique_namespace("sub-grace");
    let redis = Proxy::start(redis_addr());
    let amqp = Proxy::start(amqp_addr());
    let mut config = rabbit_config(&namespace, 1);
    config
        .services
        .redis
        .set_direct(chatflow_broker::HostPort::loopback(redis.port()));
    config
        .services
        .amqp
        .set_single_node(chatflow_broker::HostPort::loopback(amqp.port()));
    config.subscription_grace = Duration::from_secs(1);
    let _guard = TopologyGuard(config.services.topology.clone());
    let server = Server::start(config).expect("server starts");
    let addr = server.local_addr();
    assert_eq!(health_with_status(addr).0, 200);

    redis.cut();
    // Every answer on the way agrees with its own `ready` (the helper checks).
    eventually("not ready past the grace", || {
        health_with_status(addr).0 == 503
    });
    let h = health(addr);
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(
        h["reasons"][0]
            .as_str()
            .unwrap()
            .contains("broadcasts missed"),
        "{h}"
    );
    assert_live(addr);

    redis.restore();
    eventually("ready and ok again", || {
        let (status, h) = health_with_status(addr);
        status == 200 && h["status"] == "ok"
    });
    server.shutdown().unwrap();
}
