//! Bad and hostile clients: oversized and binary frames, abrupt disconnects,
//! slow readers, many connections, and graceful shutdown. In every case the
//! server keeps serving everyone else.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use chatflow_server::{BrokerKind, Config, Server};
use common::*;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

/// An oversized frame gets TOO_LARGE and a 1009 close; others are unharmed.
#[test]
fn oversized_frame_is_refused_and_others_keep_working() {
    let server = start(BrokerKind::Memory);
    let addr = server.local_addr();
    let mut bystander = connect(addr, 1);
    let mut big = connect(addr, 1);
    let huge = "x".repeat(64 * 1024);
    big.send(Message::text(huge)).unwrap();
    let error = recv(&mut big);
    assert_eq!(error["code"], "TOO_LARGE");
    match big.read() {
        Ok(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Size),
        other => panic!("expected a 1009 close, got {other:?}"),
    }
    assert_eq!(
        request(&mut bystander, message(1, "fine", "1"))["type"],
        "ack"
    );
    server.shutdown().unwrap();
}

/// A binary frame gets UNSUPPORTED_FRAME and the connection stays open.
#[test]
fn binary_frame_gets_an_error_and_the_connection_stays_open() {
    let server = start(BrokerKind::None);
    let mut client = connect(server.local_addr(), 1);
    client.send(Message::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(recv(&mut client)["code"], "UNSUPPORTED_FRAME");
    assert_eq!(
        request(&mut client, message(1, "text works", "1"))["type"],
        "ack"
    );
    server.shutdown().unwrap();
}

/// Clients that vanish mid-handshake, mid-frame, or with invalid bytes do not
/// disturb the server.
#[test]
fn abrupt_disconnects_do_not_hurt_the_server() {
    let server = start(BrokerKind::Memory);
    let addr = server.local_addr();
    let mut bystander = connect(addr, 5);
    // Half a request head, then gone.
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /chat/5 HTTP/1.1\r\nHost: x\r\nUpgr")
            .unwrap();
    }
    // Connected and silent, then gone.
    for _ in 0..20 {
        drop(TcpStream::connect(addr).unwrap());
    }
    // A full handshake, then half a frame (a masked text header promising
    // 100 bytes, and 3 of them), then gone.
    for _ in 0..20 {
        let ws = connect(addr, 5);
        let tungstenite::stream::MaybeTlsStream::Plain(mut raw) = ws.into_inner() else {
            unreachable!()
        };
        raw.write_all(&[0x81, 0x80 | 100, 1, 2, 3, 4, b'a', b'b', b'c'])
            .unwrap();
    }
    // Garbage instead of HTTP.
    for _ in 0..5 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"\x00\x01\x02 not http at all\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply:?}");
    }
    assert_eq!(
        request(&mut bystander, message(3, "still fine", "1"))["type"],
        "ack"
    );
    eventually("the vanished clients are cleaned up", || {
        health(addr)["connections"] == 1
    });
    server.shutdown().unwrap();
}

/// A member that never reads is disconnected once its unsent output passes
/// the bound, while the rest of its room keeps receiving everything.
#[test]
fn slow_reader_is_disconnected_and_the_room_keeps_flowing() {
    let server = Server::start(Config {
        max_pending_output: 8 * 1024,
        socket_send_buffer: Some(8 * 1024),
        ..config(BrokerKind::Memory)
    })
    .unwrap();
    let addr = server.local_addr();
    // The slow reader: a tiny receive buffer, and it never reads.
    let slow = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    slow.set_recv_buffer_size(4096).unwrap();
    slow.connect(&addr.into()).unwrap();
    let (_slow_ws, _) =
        tungstenite::client(format!("ws://{addr}/chat/9"), TcpStream::from(slow)).unwrap();

    let mut sender = connect(addr, 9);
    let mut reader = connect(addr, 9);
    let text = "y".repeat(400);
    let batches = 200;
    for batch in 0..batches {
        for i in 0..20 {
            send(&mut sender, message(2, &text, &format!("{batch}-{i}")));
        }
        for _ in 0..20 {
            recv_kind(&mut sender, "ack");
        }
        for _ in 0..20 {
            let frame = recv_kind(&mut reader, "message");
            assert_eq!(frame["message"].as_str().unwrap().len(), 400);
        }
        if health(addr)["totals"]["slowReaderDisconnects"] == 1 && batch > 5 {
            break;
        }
    }
    assert_eq!(health(addr)["totals"]["slowReaderDisconnects"], 1);
    // And the room still flows after the disconnect.
    send(&mut sender, message(2, "after", "last"));
    assert_eq!(recv_kind(&mut reader, "message")["message"], "after");
    server.shutdown().unwrap();
}

/// 2,000 concurrent connections over 20 rooms each send a message and get
/// their ack plus every broadcast of their room.
#[test]
fn two_thousand_concurrent_connections_exchange_messages() {
    assert!(
        raise_fd_limit() >= 5000,
        "this test needs 5,000 descriptors"
    );
    let server = start(BrokerKind::Memory);
    let addr = server.local_addr();
    const THREADS: usize = 8;
    const PER_THREAD: usize = 250;
    const ROOMS: usize = 20;
    let per_room = THREADS * PER_THREAD / ROOMS;
    let connected = Arc::new(Barrier::new(THREADS));
    let sent = Arc::new(Barrier::new(THREADS));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (connected, sent) = (connected.clone(), sent.clone());
            thread::spawn(move || {
                let rooms: Vec<u32> = (0..PER_THREAD)
                    .map(|i| ((t * PER_THREAD + i) % ROOMS) as u32 + 1)
                    .collect();
                let mut clients: Vec<Client> =
                    rooms.iter().map(|&room| connect(addr, room)).collect();
                connected.wait();
                for (i, client) in clients.iter_mut().enumerate() {
                    send(
                        client,
                        message((t * PER_THREAD + i) as u32 + 1, "hi all", &i.to_string()),
                    );
                }
                sent.wait();
                for (i, client) in clients.iter_mut().enumerate() {
                    let (mut acks, mut broadcasts) = (0, 0);
                    while acks < 1 || broadcasts < per_room {
                        match recv(client)["type"].as_str().unwrap() {
                            "ack" => acks += 1,
                            "message" => broadcasts += 1,
                            other => panic!("connection {i}: unexpected {other}"),
                        }
                    }
                    assert_eq!((acks, broadcasts), (1, per_room));
                }
                clients.len()
            })
        })
        .collect();
    let total: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(total, 2000);
    let totals = &health(addr)["totals"];
    assert_eq!(totals["messagesAccepted"], 2000);
    assert_eq!(totals["broadcastFramesSent"], 2000 * per_room as u64);
    server.shutdown().unwrap();
}

/// Shutdown closes every client with 1001, refuses nothing mid-flight,
/// and returns once the workers have exited.
#[test]
fn graceful_shutdown_closes_clients_with_1001() {
    let server = Server::start(Config {
        shutdown_grace: Duration::from_secs(120),
        ..config(BrokerKind::Memory)
    })
    .unwrap();
    let addr = server.local_addr();
    let clients: Vec<Client> = (0..10).map(|i| connect(addr, i + 1)).collect();
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            thread::spawn(move || loop {
                match client.read() {
                    Ok(Message::Close(frame)) => return frame.map(|f| f.code),
                    Ok(_) => continue,
                    Err(e) => panic!("expected a close frame, got {e}"),
                }
            })
        })
        .collect();
    let started = std::time::Instant::now();
    server.shutdown().unwrap();
    for reader in readers {
        assert_eq!(reader.join().unwrap(), Some(CloseCode::Away));
    }
    // Clients answered the close, so shutdown did not wait out its grace
    // (a two-minute grace; the bound only tells "answered" from "waited").
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(
        TcpStream::connect(addr).is_err(),
        "nothing listens after shutdown"
    );
}
