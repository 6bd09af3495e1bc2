//! A deliberately awkward fake server (blocking tungstenite, a thread per
//! connection) for orders the real server may never produce: broadcasts
//! that overtake their ack, acks out of order, UNAVAILABLE errors, a stall
//! of every connection at once. Each connection receives only the
//! broadcasts of its own messages.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use chatflow_protocol::frame::{ack_json, broadcast_json, error_json};
use chatflow_protocol::{
    Ack, Broadcast, ClientFrame, ErrorCode, ErrorFrame, IdGenerator, ServerTime,
};
use tungstenite::{Message, WebSocket};

#[derive(Clone, Copy, Default)]
pub struct Quirks {
    /// Send the broadcast before the ack.
    pub broadcast_first: bool,
    /// Answer messages in pairs, the second one first.
    pub swap_pairs: bool,
    /// Every n-th message (server-wide) gets UNAVAILABLE instead of an ack.
    pub unavailable_every: u64,
    /// Every message that arrives within this long of the fake's start gets
    /// UNAVAILABLE (a broker outage as the client sees it).
    pub unavailable_for: Duration,
    /// `(at, length)`: a message that arrives in `[at, at + length)` after
    /// the fake's start is answered only when that window ends, and its
    /// connection reads nothing meanwhile (the whole server stalls, as in
    /// a long GC pause).
    pub stall: Option<(Duration, Duration)>,
}

pub struct Fake {
    pub addr: SocketAddr,
    /// Every message's `(userId, clientMessageId)` and whether it was
    /// refused, in arrival order (refusals counted are the attempts an
    /// outage cost).
    pub names: Arc<Mutex<Vec<(u32, String, bool)>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Fake {
    pub fn start(quirks: Quirks) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let counter = Arc::new(AtomicU64::new(0));
        let names: Arc<Mutex<Vec<(u32, String, bool)>>> = Arc::default();
        let names2 = Arc::clone(&names);
        let stop2 = Arc::clone(&stop);
        let started = std::time::Instant::now();
        let accept = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (stop, counter) = (Arc::clone(&stop2), Arc::clone(&counter));
                        let names = Arc::clone(&names2);
                        std::thread::spawn(move || {
                            serve(s, quirks, started, &stop, &counter, &names)
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Fake {
            addr,
            names,
            stop,
            accept: Some(accept),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn serve(
    stream: TcpStream,
    q: Quirks,
    started: std::time::Instant,
    stop: &AtomicBool,
    counter: &AtomicU64,
    names: &Mutex<Vec<(u32, String, bool)>>,
) {
    stream.set_nonblocking(false).unwrap();
    stream.set_nodelay(true).unwrap();
    let Ok(mut ws) = tungstenite::accept(stream) else {
        return;
    };
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let mut ids = IdGenerator::new();
    let mut held: Option<Vec<String>> = None;
    while !stop.load(Ordering::Relaxed) {
        let text = match ws.read() {
            Ok(Message::Text(t)) => t.as_str().to_string(),
            Ok(Message::Close(_)) => {
                let _ = ws.flush();
                return;
            }
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Nothing more is coming soon: release a held reply.
                if let Some(frames) = held.take() {
                    send(&mut ws, frames);
                }
                continue;
            }
            Err(_) => return,
        };
        // A request (the end-of-run presence check): this fake keeps no
        // presence, as a server with `--presence off` answers.
        let m = match ClientFrame::parse(&text).expect("the client sends valid frames") {
            ClientFrame::Message(m) => m,
            ClientFrame::Request(_) => {
                let e = ErrorFrame::new(ErrorCode::Unavailable, "presence is off (fake)");
                send(&mut ws, vec![error_json(&e)]);
                continue;
            }
        };
        if let Some((at, length)) = q.stall {
            let (from, to) = (started + at, started + at + length);
            let now = std::time::Instant::now();
            if now >= from && now < to {
                std::thread::sleep(to - now);
            }
        }
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        let refuse = (q.unavailable_every > 0 && n % q.unavailable_every == 0)
            || started.elapsed() < q.unavailable_for;
        names.lock().unwrap().push((
            m.user_id,
            m.client_message_id
                .as_deref()
                .unwrap_or_default()
                .to_string(),
            refuse,
        ));
        let frames = if refuse {
            let mut e = ErrorFrame::new(ErrorCode::Unavailable, "broker unavailable (fake)");
            e.client_message_id = m.client_message_id.clone();
            vec![error_json(&e)]
        } else {
            let id = ids.next_id(m.timestamp_ms);
            let now = ServerTime::now();
            let ack = ack_json(&Ack::new(
                id,
                1,
                now,
                m.client_message_id.as_deref(),
                Some(&m.timestamp),
            ));
            let b = broadcast_json(&Broadcast {
                message_id: id,
                room_id: 1,
                user_id: m.user_id,
                username: m.username.clone(),
                message: m.message.clone(),
                message_type: m.message_type,
                timestamp: m.timestamp.clone(),
                server_timestamp: now,
            });
            if q.broadcast_first {
                vec![b, ack]
            } else {
                vec![ack, b]
            }
        };
        if q.swap_pairs {
            match held.take() {
                None => held = Some(frames),
                Some(first) => {
                    send(&mut ws, frames);
                    send(&mut ws, first);
                }
            }
        } else {
            send(&mut ws, frames);
        }
    }
}

fn send(ws: &mut WebSocket<TcpStream>, frames: Vec<String>) {
    for f in frames {
        let _ = ws.write(Message::text(f));
    }
    let _ = ws.flush();
}
