//! The health/metrics port: one small blocking thread (`consumer-http`)
//! answering `GET /health` (JSON) and `GET /metrics` (Prometheus text), one
//! request per connection. Scrapes are rare and tiny; a thread that serves
//! them one at a time with short socket timeouts is all this needs, and a
//! slow or silent client costs at most those timeouts.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::stats::Shared;

/// A request head larger than this is refused (431).
const MAX_HEAD: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;
/// Read/write timeout per connection.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// The running endpoint.
pub struct HttpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    pub fn start(listener: TcpListener, shared: Arc<Shared>) -> io::Result<HttpServer> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = thread::Builder::new()
            .name("consumer-http".to_string())
            .spawn(move || serve(listener, &shared, &stopping))?;
        Ok(HttpServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and joins the thread. `accept` has no timeout, so the
    /// thread is woken by a connection of our own.
    pub fn stop(&mut self) -> thread::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, IO_TIMEOUT);
        match self.thread.take() {
            Some(thread) => thread.join(),
            None => Ok(()),
        }
    }
}

fn serve(listener: TcpListener, shared: &Shared, stop: &AtomicBool) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        match stream {
            Ok(stream) => {
                // A client that hangs up or times out is its own problem.
                let _ = answer(stream, shared);
            }
            Err(e) => {
                // E.g. out of descriptors: do not spin on it.
                eprintln!("consumer-http: accept failed: {e}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn answer(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    let response = loop {
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                break route(request.method, request.path, shared);
            }
            Ok(httparse::Status::Partial) if len == buf.len() => {
                break error(431, "request head too large");
            }
            Ok(httparse::Status::Partial) => continue,
            Err(e) => break error(400, &format!("malformed HTTP request: {e}")),
        }
    };
    stream.write_all(&response)?;
    stream.flush()
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
            let health = shared.health();
            // Degraded is still 200: the process is alive and recovering by
            // itself; the body says what is wrong. 503 only while stopping.
            let status = if health.status == "shutting_down" {
                503
            } else {
                200
            };
            let body = serde_json::to_string(&health).unwrap_or_default();
            response(status, "application/json", &body, None)
        }
        "/metrics" => response(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            &shared.prometheus(),
            None,
        ),
        other => error(
            404,
            &format!("no such path {other:?}: try /health or /metrics"),
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
    use crate::config::Config;

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn routes_health_metrics_and_refusals() {
        let config = Config {
            rooms: chatflow_protocol::Rooms::new(1).unwrap(),
            amqp_connections: 1,
            ..Config::default()
        };
        let shared = Shared::new(config, vec![0; 5]);
        let health = text(route(Some("GET"), Some("/health?x=1"), &shared));
        assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
        let body = health.split("\r\n\r\n").nth(1).unwrap();
        assert!(health.contains(&format!("Content-Length: {}\r\n", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(v["status"].is_string());
        let metrics = text(route(Some("GET"), Some("/metrics"), &shared));
        assert!(metrics.contains("text/plain; version=0.0.4"));
        assert!(metrics.contains("chatflow_consumer_consumed_total{room=\"1\"} 0"));
        assert!(text(route(Some("POST"), Some("/health"), &shared)).starts_with("HTTP/1.1 405"));
        assert!(text(route(Some("GET"), Some("/nope"), &shared)).starts_with("HTTP/1.1 404"));
        shared.shutting_down.store(true, Ordering::Relaxed);
        assert!(text(route(Some("GET"), Some("/health"), &shared)).starts_with("HTTP/1.1 503"));
    }
}
