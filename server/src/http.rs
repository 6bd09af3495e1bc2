//! The plain-HTTP side of a new connection: the request head is read (with
//! `MSG_PEEK`, so an upgrade leaves it in the socket for tungstenite) and
//! routed before any WebSocket work happens.
//!
//! - `GET /health` → 200 with the health JSON;
//! - `GET /chat/{roomId}` with a WebSocket upgrade and a room in range →
//!   handed to tungstenite's handshake;
//! - everything else → an HTTP error with a JSON body saying what is wrong
//!   (400, 404, 405, 426, 431, 503), then close.

use chatflow_protocol::Rooms;
use tungstenite::handshake::server::{Callback, ErrorResponse, Request, Response};
use tungstenite::http::StatusCode;

/// Headers read at most; more is a 431.
const MAX_HEADERS: usize = 32;

/// What a complete request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Health,
    Chat { room: u32 },
    Refuse(HttpError),
}

/// An HTTP error answer.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub message: String,
    /// One extra header line (without CRLF), e.g. `Allow: GET`.
    pub header: Option<&'static str>,
}

fn refuse(status: u16, message: impl Into<String>) -> Route {
    Route::Refuse(HttpError {
        status,
        message: message.into(),
        header: None,
    })
}

/// The state of the bytes read so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// More bytes are needed.
    Partial,
    /// The head is `len` bytes long and asks for `route`.
    Complete { len: usize, route: Route },
}

/// Parses and routes a request head. `buf` holds what has arrived;
/// `full` says it is as large as a head may be.
pub fn route(buf: &[u8], full: bool, rooms: Rooms) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if full => {
            return Head::Complete {
                len: buf.len(),
                route: refuse(431, "request head too large"),
            }
        }
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Head::Complete {
                len: buf.len(),
                route: refuse(431, format!("more than {MAX_HEADERS} headers")),
            }
        }
        Err(e) => {
            return Head::Complete {
                len: buf.len(),
                route: refuse(400, format!("malformed HTTP request: {e}")),
            }
        }
    };
    let route = route_request(&req, rooms);
    Head::Complete { len, route }
}

fn route_request(req: &httparse::Request<'_, '_>, rooms: Rooms) -> Route {
    let path = req.path.unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path);
    if req.method != Some("GET") {
        return Route::Refuse(HttpError {
            status: 405,
            message: "only GET is served".to_string(),
            header: Some("Allow: GET"),
        });
    }
    if path == "/health" {
        return Route::Health;
    }
    let room = match chat_room(path, rooms) {
        Ok(room) => room,
        Err(route) => return route,
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    if !header("upgrade").is_some_and(|v| v.to_ascii_lowercase().contains("websocket")) {
        return Route::Refuse(HttpError {
            status: 426,
            message: format!("{path} is a WebSocket endpoint: send an Upgrade: websocket request"),
            header: Some("Upgrade: websocket"),
        });
    }
    if header("sec-websocket-version").map(str::trim) != Some("13") {
        return Route::Refuse(HttpError {
            status: 426,
            message: "only WebSocket version 13 is supported".to_string(),
            header: Some("Sec-WebSocket-Version: 13"),
        });
    }
    if header("sec-websocket-key").is_none() {
        return refuse(400, "missing Sec-WebSocket-Key header");
    }
    Route::Chat { room }
}

/// The room of a `/chat/{roomId}` path, or the error to answer.
fn chat_room(path: &str, rooms: Rooms) -> Result<u32, Route> {
    let Some(id) = path.strip_prefix("/chat/") else {
        return Err(refuse(
            404,
            format!("no such path {path:?}: connect to /chat/{{roomId}} or GET /health"),
        ));
    };
    let id = id.strip_suffix('/').unwrap_or(id);
    if id.is_empty() || id.len() > 9 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(refuse(
            400,
            format!("room id {id:?} is not a number; rooms are {rooms}"),
        ));
    }
    let room: u32 = id.parse().unwrap_or(0);
    if !rooms.contains(room) {
        return Err(refuse(
            404,
            format!("room {room} does not exist; rooms are {rooms}"),
        ));
    }
    Ok(room)
}

/// A complete HTTP/1.1 response that closes the connection.
pub fn response(
    status: u16,
    content_type: &str,
    body: &str,
    extra_header: Option<&str>,
) -> Vec<u8> {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let extra = extra_header.map(|h| format!("{h}\r\n")).unwrap_or_default();
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The response to a refused request: a JSON body with the reason.
pub fn error_response(error: &HttpError) -> Vec<u8> {
    let body = serde_json::json!({ "status": error.status, "error": error.message }).to_string();
    response(error.status, "application/json", &body, error.header)
}

/// The 503 for a server at `max_connections`.
pub fn over_capacity() -> HttpError {
    HttpError {
        status: 503,
        message: "server is at its connection limit; try another server or later".to_string(),
        header: Some("Retry-After: 1"),
    }
}

/// tungstenite's handshake callback. The path was routed already; this
/// re-checks it so the upgrade can never land in a room other than the one
/// the connection was counted in.
pub struct ChatPath {
    pub room: u32,
    pub rooms: Rooms,
}

impl Callback for ChatPath {
    fn on_request(self, request: &Request, response: Response) -> Result<Response, ErrorResponse> {
        match chat_room(request.uri().path(), self.rooms) {
            Ok(room) if room == self.room => Ok(response),
            _ => {
                let mut refusal =
                    ErrorResponse::new(Some("request changed during handshake".to_string()));
                *refusal.status_mut() = StatusCode::BAD_REQUEST;
                Err(refusal)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    fn routed(head: &str) -> Route {
        match route(head.as_bytes(), false, Rooms::DEFAULT) {
            Head::Complete { len, route } => {
                assert_eq!(len, head.len());
                route
            }
            Head::Partial => panic!("partial: {head:?}"),
        }
    }

    fn status(route: Route) -> u16 {
        match route {
            Route::Refuse(e) => e.status,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn chat_rooms_in_range_upgrade() {
        assert_eq!(
            routed(&format!("GET /chat/1 HTTP/1.1\r\n{UPGRADE}\r\n")),
            Route::Chat { room: 1 }
        );
        assert_eq!(
            routed(&format!("GET /chat/20 HTTP/1.1\r\n{UPGRADE}\r\n")),
            Route::Chat { room: 20 }
        );
    }

    #[test]
    fn bad_rooms_and_paths_are_refused() {
        assert_eq!(
            status(routed(&format!("GET /chat/0 HTTP/1.1\r\n{UPGRADE}\r\n"))),
            404
        );
        assert_eq!(
            status(routed(&format!("GET /chat/21 HTTP/1.1\r\n{UPGRADE}\r\n"))),
            404
        );
        assert_eq!(
            status(routed(&format!("GET /chat/abc HTTP/1.1\r\n{UPGRADE}\r\n"))),
            400
        );
        assert_eq!(
            status(routed(&format!("GET /chat/ HTTP/1.1\r\n{UPGRADE}\r\n"))),
            400
        );
        assert_eq!(
            status(routed(&format!("GET /other HTTP/1.1\r\n{UPGRADE}\r\n"))),
            404
        );
        assert_eq!(status(routed("POST /chat/1 HTTP/1.1\r\n\r\n")), 405);
        assert_eq!(status(routed("GET /chat/1 HTTP/1.1\r\n\r\n")), 426);
        assert_eq!(status(routed("garbage\r\n\r\n")), 400);
    }

    #[test]
    fn health_is_routed_with_or_without_a_query() {
        assert_eq!(routed("GET /health HTTP/1.1\r\n\r\n"), Route::Health);
        assert_eq!(
            routed("GET /health?verbose=1 HTTP/1.1\r\n\r\n"),
            Route::Health
        );
    }

    #[test]
    fn partial_and_oversized_heads() {
        assert_eq!(
            route(b"GET /chat/1 HTTP/1.1\r\nHost: x", false, Rooms::DEFAULT),
            Head::Partial
        );
        match route(b"GET /chat/1 HTTP/1.1\r\nHost: x", true, Rooms::DEFAULT) {
            Head::Complete { route, .. } => assert_eq!(status(route), 431),
            Head::Partial => panic!("a full buffer must not stay partial"),
        }
    }

    #[test]
    fn responses_are_well_formed() {
        let text = String::from_utf8(error_response(&over_capacity())).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("Retry-After: 1\r\n"));
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["status"], 503);
    }
}
