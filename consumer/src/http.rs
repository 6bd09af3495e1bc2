//! The health/metrics port: an accept thread (`consumer-http`) that hands
//! each connection to a short-lived thread of its own (`consumer-http-c`)
//! answering `GET /health` (JSON), `GET /livez` or `GET /metrics`
//! (Prometheus text), one request per connection.
//!
//! `/health` is readiness: 200 only while the status is `ok`, 503 with the
//! same document while `degraded` (a link, Redis or the database down, a
//! dead thread: see [`crate::health`]) or `shutting_down`. `/livez` is
//! liveness: 200 while the process runs, whatever its links do.
//!
//! Scrapes are rare and tiny, but the port is reachable by anyone, and one
//! slow or silent client must not hold it for the monitors that need it:
//!
//! - each connection has its own thread, so a client that dawdles only
//!   delays itself;
//! - each request head has one deadline ([`Limits::head_deadline`]),
//!   enforced by shrinking the read timeout to the time left before every
//!   read. A per-read timeout alone is no bound: a client sending one byte
//!   every 1.5 s kept a 2 s per-read timeout satisfied for as long as it
//!   liked. Past the deadline the client gets 408 and is closed;
//! - at most [`Limits::max_connections`] are served at once; past that a
//!   connection gets 503 at once from one thread (`consumer-http-b`) and
//!   is closed, so a flood of connections costs a bounded number of
//!   threads, each for a bounded time.
//!
//! The accept thread stops on the process's shutdown signal; `accept` has
//! no timeout, so [`HttpServer::join`] wakes it with a connection of its
//! own.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::health::Health;
use crate::metrics;
use crate::state::Shared;

/// A request head larger than this is refused (431).
const MAX_HEAD: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;
/// How long `stop` waits to connect to its own listener to wake it.
const WAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection refused past the cap stays half-open after its
/// 503: ample for a client to send its request and read the answer.
const REFUSED_LINGER: Duration = Duration::from_millis(500);
/// Refused connections waiting or held half-open at most (one descriptor
/// each); past that the oldest is closed early, or a new one at once.
const REFUSED_HELD: usize = 1024;

/// What one client may take of the port.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// From accept to a complete request head. 2 s: a scrape's head is one
    /// packet, sent at once; anything slower is broken or hostile.
    pub head_deadline: Duration,
    /// Connections served at once. 64: far more than the few monitors and
    /// scrapers a consumer has, few enough that a flood costs 64 small
    /// threads for `head_deadline` each.
    pub max_connections: usize,
    /// For writing the response (a few KiB: it fits the socket buffer of a
    /// client that reads nothing).
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            head_deadline: Duration::from_secs(2),
            max_connections: 64,
            write_timeout: Duration::from_secs(2),
        }
    }
}

/// The running endpoint.
pub struct HttpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: JoinHandle<()>,
}

impl HttpServer {
    pub fn start(listener: TcpListener, shared: Arc<Shared>) -> io::Result<HttpServer> {
        HttpServer::start_with(listener, shared, Limits::default())
    }

    pub fn start_with(
        listener: TcpListener,
        shared: Arc<Shared>,
        limits: Limits,
    ) -> io::Result<HttpServer> {
        let addr = listener.local_addr()?;
        let (busy, refused) = crossbeam_channel::bounded(REFUSED_HELD);
        let threads = shared.threads.clone();
        let refuser = threads.spawn("consumer-http-b", move || refuse_busy(refused))?;
        // If this spawn fails, `busy` is dropped with its closure and the
        // refuser ends by itself.
        let serving = shared.clone();
        let thread = threads.spawn("consumer-http", move || {
            serve(listener, &serving, limits, busy, refuser)
        })?;
        Ok(HttpServer {
            addr,
            shared,
            thread,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// After the shutdown signal: wakes the accept thread, which stops
    /// accepting, and joins it (it joins the connection threads, each done
    /// within its deadline and write timeout, and the refuser).
    pub fn join(self) {
        debug_assert!(
            self.shared.is_shutting_down(),
            "HttpServer::join before the shutdown signal would wait for ever"
        );
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, WAKE_TIMEOUT);
        // Its panics are caught and recorded (see `threads`).
        let _ = self.thread.join();
    }
}

fn serve(
    listener: TcpListener,
    shared: &Arc<Shared>,
    limits: Limits,
    busy: Sender<TcpStream>,
    refuser: JoinHandle<()>,
) {
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    for stream in listener.incoming() {
        if shared.is_shutting_down() {
            break;
        }
        match stream {
            Ok(stream) => {
                reap(&mut connections);
                if connections.len() >= limits.max_connections {
                    // Full too: this one is closed at once, unanswered.
                    let _ = busy.try_send(stream);
                    continue;
                }
                let shared = shared.clone();
                let spawned = thread::Builder::new()
                    .name("consumer-http-c".to_string())
                    // A client that hangs up or times out is its own problem.
                    .spawn(move || drop(answer(stream, &shared, limits)));
                match spawned {
                    Ok(thread) => connections.push(thread),
                    // Out of threads: the connection (moved into the
                    // closure) is closed; do not spin on it.
                    Err(e) => {
                        tracing::warn!("consumer-http: cannot start a connection thread: {e}");
                        thread::sleep(Duration::from_millis(100));
                    }
                }
            }
            Err(e) => {
                // E.g. out of descriptors: do not spin on it.
                tracing::warn!("consumer-http: accept failed: {e}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    drop(busy);
    for thread in connections.into_iter().chain([refuser]) {
        let _ = thread.join();
    }
}

/// Joins the connection threads that are done, so the rest is what counts
/// against the cap.
fn reap(connections: &mut Vec<JoinHandle<()>>) {
    let mut i = 0;
    while i < connections.len() {
        if connections[i].is_finished() {
            let _ = connections.swap_remove(i).join();
        } else {
            i += 1;
        }
    }
}

/// The `consumer-http-b` thread: answers each connection past the cap
/// with 503 at once, then holds it half-open for [`REFUSED_LINGER`] before
/// closing it. The 503 goes out before the request has even arrived;
/// closing right away would make the client's request meet a closed
/// socket, and the reset that answers it can destroy the 503 before the
/// client reads it. Never blocks: the sockets are non-blocking, and a
/// fresh socket's send buffer takes the few hundred bytes at once (if not,
/// the client just sees the close).
fn refuse_busy(refused: Receiver<TcpStream>) {
    let busy = response(
        503,
        "application/json",
        &error_body(
            503,
            "too many connections to the metrics port; retry shortly",
        ),
        Some("Retry-After: 1"),
    );
    let mut held: VecDeque<(Instant, TcpStream)> = VecDeque::new();
    loop {
        let next = match held.front() {
            Some((until, _)) => refused.recv_deadline(*until),
            None => refused.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match next {
            Ok(mut stream) => {
                if stream.set_nonblocking(true).is_ok() && stream.write_all(&busy).is_ok() {
                    let _ = stream.shutdown(Shutdown::Write);
                    if held.len() >= REFUSED_HELD {
                        if let Some((_, oldest)) = held.pop_front() {
                            discard_input(oldest);
                        }
                    }
                    held.push_back((Instant::now() + REFUSED_LINGER, stream));
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let now = Instant::now();
        while held.front().is_some_and(|(until, _)| *until <= now) {
            if let Some((_, stream)) = held.pop_front() {
                discard_input(stream);
            }
        }
    }
    for (_, stream) in held {
        discard_input(stream);
    }
}

/// Sends FIN after the answer, then closes.
fn close_after_answer(stream: TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    discard_input(stream);
}

/// Discards what the client already sent (up to 64 KiB, so a client that
/// keeps sending cannot keep us here), then closes: closing with unread
/// input sends a reset, which can destroy the answer before the client
/// reads it.
fn discard_input(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(true);
    let mut scratch = [0u8; 4096];
    for _ in 0..16 {
        if !matches!(stream.read(&mut scratch), Ok(n) if n > 0) {
            break;
        }
    }
}

fn answer(mut stream: TcpStream, shared: &Shared, limits: Limits) -> io::Result<()> {
    stream.set_write_timeout(Some(limits.write_timeout))?;
    let Some(response) = read_request(&mut stream, shared, Instant::now() + limits.head_deadline)?
    else {
        return Ok(());
    };
    stream.write_all(&response)?;
    stream.flush()?;
    close_after_answer(stream);
    Ok(())
}

/// Reads a request head until `deadline` and returns the response to it
/// (408 past the deadline); `None` if the client hung up first.
fn read_request(
    stream: &mut TcpStream,
    shared: &Shared,
    deadline: Instant,
) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Some(request_timeout()));
        }
        // The whole head shares one deadline: each read may only wait for
        // what is left of it.
        stream.set_read_timeout(Some(left))?;
        let n = match stream.read(&mut buf[len..]) {
            Ok(0) => return Ok(None),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(Some(request_timeout()))
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                return Ok(Some(route(request.method, request.path, shared)));
            }
            Ok(httparse::Status::Partial) if len == buf.len() => {
                return Ok(Some(error(431, "request head too large")));
            }
            Ok(httparse::Status::Partial) => continue,
            Err(e) => return Ok(Some(error(400, &format!("malformed HTTP request: {e}")))),
        }
    }
}

fn request_timeout() -> Vec<u8> {
    error(408, "the request head did not arrive in time")
}

/// The response to a complete request head.
pub fn route(method: Option<&str>, path: Option<&str>, shared: &Shared) -> Vec<u8> {
    if method != Some("GET") {
        return response(
            405,
            "application/json",
            &error_body(405, "only GET is served"),
            Some("Allow: GET"),
        );
    }
    let path = path.unwrap_or("/");
    match path.split('?').next().unwrap_or(path) {
        "/health" => {
            let health = Health::of(shared);
            // Readiness: a monitor or orchestrator acting on the status code
            // must see a consumer that is not doing all its job.
            let status = if health.status == "ok" { 200 } else { 503 };
            let body = serde_json::to_string(&health).unwrap_or_default();
            response(status, "application/json", &body, None)
        }
        "/livez" => {
            let body = serde_json::json!({
                "status": "alive",
                "uptimeSeconds": shared.started.elapsed().as_secs_f64(),
            })
            .to_string();
            response(200, "application/json", &body, None)
        }
        "/metrics" => response(
            200,
            chatflow_telemetry::CONTENT_TYPE,
            &metrics::encode(shared),
            None,
        ),
        other => error(
            404,
            &format!("no such path {other:?}: try /health, /livez or /metrics"),
        ),
    }
}

fn error_body(status: u16, message: &str) -> String {
    serde_json::json!({ "status": status, "error": message }).to_string()
}

fn error(status: u16, message: &str) -> Vec<u8> {
    response(
        status,
        "application/json",
        &error_body(status, message),
        None,
    )
}

fn response(status: u16, content_type: &str, body: &str, extra_header: Option<&str>) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let extra = extra_header.map(|h| format!("{h}\r\n")).unwrap_or_default();
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::for_tests;
    use chatflow_broker::ShutdownTrigger;
    use std::sync::atomic::Ordering;

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn routes_health_metrics_and_refusals() {
        let (mut trigger, shared) = for_tests(1);
        // Nothing is connected yet: degraded is not ready.
        let health = text(route(Some("GET"), Some("/health?x=1"), &shared));
        assert!(health.starts_with("HTTP/1.1 503 "), "{health}");
        assert!(health.contains("\"status\":\"degraded\""), "{health}");
        shared.counters.links[0]
            .connected
            .store(true, Ordering::Relaxed);
        for q in &shared.counters.queues {
            q.amqp_up.store(true, Ordering::Relaxed);
        }
        let health = text(route(Some("GET"), Some("/health?x=1"), &shared));
        assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
        let body = health.split("\r\n\r\n").nth(1).unwrap();
        assert!(health.contains(&format!("Content-Length: {}\r\n", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(v["status"].is_string());
        let metrics = text(route(Some("GET"), Some("/metrics"), &shared));
        assert!(metrics.contains("application/openmetrics-text"));
        assert!(metrics.contains("chatflow_consumer_consumed_total{room=\"1\"} 0"));
        assert!(text(route(Some("POST"), Some("/health"), &shared)).starts_with("HTTP/1.1 405"));
        assert!(text(route(Some("GET"), Some("/nope"), &shared)).starts_with("HTTP/1.1 404"));
        let live = text(route(Some("GET"), Some("/livez"), &shared));
        assert!(live.starts_with("HTTP/1.1 200 OK\r\n"), "{live}");
        assert!(live.contains("\"status\":\"alive\""), "{live}");
        trigger.signal();
        assert!(text(route(Some("GET"), Some("/health"), &shared)).starts_with("HTTP/1.1 503"));
        assert!(text(route(Some("GET"), Some("/livez"), &shared)).starts_with("HTTP/1.1 200"));
    }

    /// A server on a free port with `limits`, and its shutdown trigger.
    fn serving(limits: Limits) -> (ShutdownTrigger, HttpServer) {
        let (trigger, shared) = for_tests(1);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = HttpServer::start_with(listener, Arc::new(shared), limits).unwrap();
        (trigger, server)
    }

    fn stop((mut trigger, server): (ShutdownTrigger, HttpServer)) {
        trigger.signal();
        server.join();
    }

    /// Sends `head` and reads until the server closes.
    fn exchange(addr: SocketAddr, head: &str) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = stream.read_to_string(&mut out);
        out
    }

    #[test]
    fn a_head_that_misses_its_deadline_gets_408() {
        let limits = Limits {
            head_deadline: Duration::from_millis(300),
            ..Limits::default()
        };
        let running = serving(limits);
        let server = &running.1;
        let started = Instant::now();
        let slow = exchange(server.local_addr(), "GET /health HTTP/1.1\r\nHost: x\r\n");
        assert!(
            slow.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{slow}"
        );
        assert!(started.elapsed() >= limits.head_deadline);
        let quick = exchange(server.local_addr(), "GET /livez HTTP/1.1\r\n\r\n");
        assert!(quick.starts_with("HTTP/1.1 200 OK\r\n"), "{quick}");
        stop(running);
    }

    #[test]
    fn past_the_cap_connections_get_503_until_a_slot_frees() {
        let limits = Limits {
            head_deadline: Duration::from_millis(500),
            max_connections: 1,
            ..Limits::default()
        };
        let running = serving(limits);
        let server = &running.1;
        let addr = server.local_addr();
        let _idle = TcpStream::connect(addr).unwrap();
        let busy = exchange(addr, "GET /health HTTP/1.1\r\n\r\n");
        assert!(
            busy.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{busy}"
        );
        assert!(busy.contains("Retry-After: 1\r\n"), "{busy}");
        // The idle connection is timed out at its deadline, freeing its slot.
        thread::sleep(limits.head_deadline + Duration::from_millis(200));
        let ok = exchange(addr, "GET /livez HTTP/1.1\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        stop(running);
    }
}
