//! The plain-HTTP side of a new connection: the request head is read (with
//! `MSG_PEEK`, so nothing is consumed before we know what it asks for) and
//! routed before any WebSocket work happens.
//!
//! - `GET /health` → the health JSON: 200 when ready, 503 when not
//!   ([`crate::stats`] says when);
//! - `GET /livez` → 200 with a tiny JSON body while the process runs;
//! - `GET /chat/{roomId}` with a valid WebSocket upgrade and a room in range
//!   → the `101 Switching Protocols` answer is computed here, and the
//!   connection becomes a WebSocket once it is written; a `since={position}`
//!   query parameter (a room position, `{ms}-{seq}`) makes it resume after
//!   that position, and a malformed one is a 400 (other parameters are
//!   ignored);
//! - everything else → an HTTP error with a JSON body saying what is wrong
//!   (400, 404, 405, 426, 431, 503), then close.
//!
//! The upgrade is checked here in full (RFC 6455 §4.2.1) instead of by
//! tungstenite's handshake: a request its handshake refuses ends in a bare
//! TCP close, with no answer saying why.

use chatflow_protocol::{Position, Rooms};
use tungstenite::handshake::derive_accept_key;
use tungstenite::http::StatusCode;

/// Headers read at most; more is a 431.
const MAX_HEADERS: usize = 32;

/// What a complete request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Health,
    Live,
    /// A valid upgrade to `room`; `accept` is the `Sec-WebSocket-Accept`
    /// value derived from the client's key; `since`: resume after this
    /// position of the room's history.
    Chat {
        room: u32,
        accept: String,
        since: Option<Position>,
    },
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

/// Parses and routes a request head. `buf` holds everything that has
/// arrived; `full` says it is as large as a head may be.
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
    let route = route_request(&req, buf.len() > len, rooms);
    Head::Complete { len, route }
}

/// The values of every header called `name`.
fn header_values<'h>(
    req: &'h httparse::Request<'_, '_>,
    name: &'h str,
) -> impl Iterator<Item = &'h [u8]> + 'h {
    req.headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// Whether a comma-separated header (any of its occurrences) lists `token`.
fn lists_token(req: &httparse::Request<'_, '_>, name: &str, token: &str) -> bool {
    header_values(req, name)
        .flat_map(|value| value.split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

fn route_request(req: &httparse::Request<'_, '_>, trailing_bytes: bool, rooms: Rooms) -> Route {
    let target = req.path.unwrap_or("/");
    if req.method != Some("GET") {
        return Route::Refuse(HttpError {
            status: 405,
            message: "only GET is served".to_string(),
            header: Some("Allow: GET"),
        });
    }
    if let Err(problem) = check_target(target) {
        return refuse(400, format!("malformed request target: {problem}"));
    }
    // RFC 9112 §3.2: an HTTP/1.1 request with no Host, or more than one,
    // MUST get a 400 (RFC 6455 §4.2.1 requires it of an upgrade too).
    if req.version == Some(1) && header_values(req, "host").count() != 1 {
        return refuse(400, "an HTTP/1.1 request needs exactly one Host header");
    }
    // One request per connection, none with a body: bytes after the head
    // are a body, a pipelined request or a frame sent before the upgrade
    // was answered, and a GET with a body is a request-smuggling shape.
    let has_body = header_values(req, "transfer-encoding").next().is_some()
        || header_values(req, "content-length").any(|v| v.trim_ascii() != b"0");
    if has_body || trailing_bytes {
        return refuse(
            400,
            "bytes after the request head (a body, a pipelined request, or data sent before the answer): send one GET without a body and wait for its answer",
        );
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/health" => return Route::Health,
        "/livez" => return Route::Live,
        _ => {}
    }
    let room = match chat_room(path, rooms) {
        Ok(room) => room,
        Err(route) => return route,
    };
    let since = match since(query) {
        Ok(since) => since,
        Err(route) => return route,
    };
    if req.version != Some(1) {
        return refuse(400, "a WebSocket upgrade needs HTTP/1.1");
    }
    if !lists_token(req, "upgrade", "websocket") {
        return Route::Refuse(HttpError {
            status: 426,
            message: format!("{path} is a WebSocket endpoint: send an Upgrade: websocket request"),
            header: Some("Upgrade: websocket"),
        });
    }
    if !lists_token(req, "connection", "upgrade") {
        return refuse(
            400,
            "a WebSocket upgrade needs a Connection header listing Upgrade",
        );
    }
    let mut versions = header_values(req, "sec-websocket-version");
    if versions.next().map(<[u8]>::trim_ascii) != Some(b"13") || versions.next().is_some() {
        return Route::Refuse(HttpError {
            status: 426,
            message: "only WebSocket version 13 is supported".to_string(),
            header: Some("Sec-WebSocket-Version: 13"),
        });
    }
    let mut keys = header_values(req, "sec-websocket-key");
    let key = match (keys.next().map(<[u8]>::trim_ascii), keys.next()) {
        (Some(key), None) if is_websocket_key(key) => key,
        (None, _) => return refuse(400, "missing Sec-WebSocket-Key header"),
        (Some(_), Some(_)) => return refuse(400, "more than one Sec-WebSocket-Key header"),
        (Some(_), None) => {
            return refuse(
                400,
                "Sec-WebSocket-Key must be 16 random bytes in base64 (24 characters)",
            )
        }
    };
    Route::Chat {
        room,
        accept: derive_accept_key(key),
        since,
    }
}

/// The `since` parameter of a chat target's query, if there is one.
/// Positions are digits and a dash, so a well-formed one needs no percent
/// escapes; anything else (an escape included) is refused, as is a second
/// `since`.
fn since(query: &str) -> Result<Option<Position>, Route> {
    let mut found = None;
    for pair in query.split('&') {
        let Some(value) = pair.strip_prefix("since=") else {
            continue;
        };
        if found.is_some() {
            return Err(refuse(400, "more than one since parameter"));
        }
        let position = Position::parse(value).map_err(|e| {
            let shown: String = value.chars().take(48).collect();
            refuse(400, format!("since={shown:?} is not a position: {e}"))
        })?;
        found = Some(position);
    }
    Ok(found)
}

/// RFC 6455 §4.1: the key is 16 bytes, base64-encoded: 22 characters of
/// the base64 alphabet, then `==`.
fn is_websocket_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// An origin-form request target: RFC 3986 path and query characters and
/// well-formed percent escapes. httparse lets through characters no URI
/// may hold unescaped (`"`, `<`, `{`, `\`, …).
fn check_target(target: &str) -> Result<(), &'static str> {
    let bytes = target.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err("it must start with /");
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3);
            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                return Err("a % not followed by two hex digits");
            }
            i += 3;
            continue;
        }
        if !(b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?".contains(&b)) {
            return Err("a character a URI cannot hold unescaped");
        }
        i += 1;
    }
    Ok(())
}

/// The room of a `/chat/{roomId}` path, or the error to answer.
fn chat_room(path: &str, rooms: Rooms) -> Result<u32, Route> {
    let Some(id) = path.strip_prefix("/chat/") else {
        return Err(refuse(
            404,
            format!("no such path {path:?}: connect to /chat/{{roomId}}, or GET /health or /livez"),
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

/// The `101 Switching Protocols` answer that completes an upgrade. No
/// extension or subprotocol is agreed to, so a client that offered
/// compression must send plain frames.
pub fn switching_protocols(accept: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    /// Routes `head` with one `Host` header added after the request line
    /// (every HTTP/1.1 request needs one; see `host_is_required`).
    fn routed(head: &str) -> Route {
        let head = match head.split_once("\r\n") {
            Some((line, rest)) => format!("{line}\r\nHost: x\r\n{rest}"),
            None => head.to_string(),
        };
        match route(head.as_bytes(), false, Rooms::DEFAULT) {
            Head::Complete { len, route } => {
                assert!(len <= head.len());
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

    fn room_of(route: Route) -> u32 {
        match route {
            Route::Chat { room, .. } => room,
            other => panic!("expected an upgrade, got {other:?}"),
        }
    }

    #[test]
    fn chat_rooms_in_range_upgrade_with_the_rfc_accept_key() {
        assert_eq!(
            routed(&format!("GET /chat/1 HTTP/1.1\r\n{UPGRADE}\r\n")),
            Route::Chat {
                room: 1,
                // RFC 6455 §1.3's worked example.
                accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".to_string(),
                since: None,
            }
        );
        assert_eq!(
            room_of(routed(&format!(
                "GET /chat/20?since=5-0 HTTP/1.1\r\n{UPGRADE}\r\n"
            ))),
            20
        );
        // Header names and tokens are case-insensitive; Connection may list
        // several tokens, Upgrade several protocols.
        let mixed = format!(
            "GET /chat/2 HTTP/1.1\r\nupgrade: h2c, WebSocket\r\nconnection: keep-alive, UPGRADE\r\nsec-websocket-version: 13\r\nsec-websocket-key: {KEY}\r\n\r\n"
        );
        assert_eq!(room_of(routed(&mixed)), 2);
    }

    #[test]
    fn since_resumes_after_a_position_and_a_malformed_one_is_refused() {
        let since =
            |query: &str| match routed(&format!("GET /chat/3{query} HTTP/1.1\r\n{UPGRADE}\r\n")) {
                Route::Chat { since, .. } => Ok(since),
                Route::Refuse(e) => Err((e.status, e.message)),
                other => panic!("{other:?}"),
            };
        assert_eq!(
            since("?since=1733090000123-4"),
            Ok(Some(Position::new(1_733_090_000_123, 4)))
        );
        assert_eq!(since("?x=1&since=0-0&y"), Ok(Some(Position::ZERO)));
        assert_eq!(since(""), Ok(None));
        assert_eq!(since("?sincere=1"), Ok(None));
        for bad in [
            "?since=",
            "?since=5",
            "?since=abc",
            "?since=1-2-3",
            "?since=1%2D2",
            "?since=99999999999999999999-0",
            "?since=1-0&since=2-0",
        ] {
            let (status, message) = since(bad).unwrap_err();
            assert_eq!(status, 400, "{bad}");
            assert!(message.contains("since"), "{bad}: {message}");
        }
    }

    #[test]
    fn bad_rooms_and_paths_are_refused() {
        for (target, expected) in [
            ("/chat/0", 404),
            ("/chat/21", 404),
            ("/chat/abc", 400),
            ("/chat/", 400),
            ("/other", 404),
        ] {
            let head = format!("GET {target} HTTP/1.1\r\n{UPGRADE}\r\n");
            assert_eq!(status(routed(&head)), expected, "{target}");
        }
        assert_eq!(status(routed("POST /chat/1 HTTP/1.1\r\n\r\n")), 405);
        assert_eq!(status(routed("GET /chat/1 HTTP/1.1\r\n\r\n")), 426);
        assert_eq!(status(routed("garbage\r\n\r\n")), 400);
    }

    #[test]
    fn every_upgrade_tungstenite_would_refuse_gets_an_answer() {
        let with = |headers: &str| format!("GET /chat/1 HTTP/1.1\r\n{headers}\r\n");
        let v13 = "Sec-WebSocket-Version: 13\r\n";
        let key = format!("Sec-WebSocket-Key: {KEY}\r\n");
        let cases = [
            // No Connection header, or one without Upgrade.
            (with(&format!("Upgrade: websocket\r\n{v13}{key}")), 400),
            (
                with(&format!(
                    "Upgrade: websocket\r\nConnection: keep-alive\r\n{v13}{key}"
                )),
                400,
            ),
            // Upgrade to something else.
            (
                with(&format!(
                    "Upgrade: websocketx\r\nConnection: Upgrade\r\n{v13}{key}"
                )),
                426,
            ),
            // Short, empty, not base64, or two keys.
            (
                with(&format!(
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n{v13}Sec-WebSocket-Key: abc\r\n"
                )),
                400,
            ),
            (
                with(&format!(
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n{v13}Sec-WebSocket-Key:\r\n"
                )),
                400,
            ),
            (
                with(&format!(
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n{v13}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=!\r\n"
                )),
                400,
            ),
            (
                with(&format!(
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n{v13}{key}{key}"
                )),
                400,
            ),
            // Another version, or two.
            (
                with(&format!(
                    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\n{key}"
                )),
                426,
            ),
            (
                with(&format!(
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n{v13}{v13}{key}"
                )),
                426,
            ),
            // HTTP/1.0.
            (format!("GET /chat/1 HTTP/1.0\r\n{UPGRADE}\r\n"), 400),
            // Characters no URI holds, bad escapes.
            (format!("GET /chat/1?a=\"b\" HTTP/1.1\r\n{UPGRADE}\r\n"), 400),
            (format!("GET /chat/1?a=%zz HTTP/1.1\r\n{UPGRADE}\r\n"), 400),
            (format!("GET /chat/1?{{x}} HTTP/1.1\r\n{UPGRADE}\r\n"), 400),
            // Absolute-form and asterisk targets.
            (
                format!("GET http://x/chat/1 HTTP/1.1\r\n{UPGRADE}\r\n"),
                400,
            ),
            (format!("GET * HTTP/1.1\r\n{UPGRADE}\r\n"), 400),
            // Bodies, declared either way.
            (
                format!("GET /chat/1 HTTP/1.1\r\n{UPGRADE}Content-Length: 5\r\n\r\n"),
                400,
            ),
            (
                format!("GET /chat/1 HTTP/1.1\r\n{UPGRADE}Transfer-Encoding: chunked\r\n\r\n"),
                400,
            ),
            (
                "GET /health HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n"
                    .to_string(),
                400,
            ),
        ];
        for (head, expected) in cases {
            assert_eq!(status(routed(&head)), expected, "{head:?}");
        }
    }

    #[test]
    fn host_is_required_once_in_http_1_1() {
        let without = format!("GET /chat/1 HTTP/1.1\r\n{UPGRADE}\r\n");
        let twice = format!("GET /chat/1 HTTP/1.1\r\nHost: a\r\nHost: b\r\n{UPGRADE}\r\n");
        for head in [without, twice, "GET /health HTTP/1.1\r\n\r\n".to_string()] {
            match route(head.as_bytes(), false, Rooms::DEFAULT) {
                Head::Complete { route, .. } => assert_eq!(status(route), 400, "{head:?}"),
                Head::Partial => panic!("partial: {head:?}"),
            }
        }
        // HTTP/1.0 has no Host requirement.
        assert_eq!(
            route(b"GET /health HTTP/1.0\r\n\r\n", false, Rooms::DEFAULT),
            Head::Complete {
                len: 24,
                route: Route::Health
            }
        );
    }

    #[test]
    fn bytes_after_the_head_are_refused() {
        let head = format!("GET /chat/1 HTTP/1.1\r\nHost: x\r\n{UPGRADE}\r\n");
        for trailing in [
            &b"x"[..],
            b"GET /health HTTP/1.1\r\n\r\n",
            &[0x81, 0x82, 1, 2, 3, 4, 5, 6],
        ] {
            let mut bytes = head.clone().into_bytes();
            bytes.extend_from_slice(trailing);
            match route(&bytes, false, Rooms::DEFAULT) {
                Head::Complete { len, route } => {
                    assert_eq!(len, head.len());
                    assert_eq!(status(route), 400);
                }
                Head::Partial => panic!("complete head seen as partial"),
            }
        }
        // A zero Content-Length is no body.
        assert_eq!(
            routed("GET /health HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            Route::Health
        );
    }

    #[test]
    fn health_is_routed_with_or_without_a_query() {
        assert_eq!(routed("GET /livez HTTP/1.1\r\n\r\n"), Route::Live);
        assert_eq!(routed("GET /health HTTP/1.1\r\n\r\n"), Route::Health);
        assert_eq!(routed("GET /health HTTP/1.0\r\n\r\n"), Route::Health);
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
        let many: String = (0..40).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(
            status(routed(&format!("GET /health HTTP/1.1\r\n{many}\r\n"))),
            431
        );
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
        let upgrade = String::from_utf8(switching_protocols("abc=")).unwrap();
        assert!(upgrade.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(upgrade.ends_with("Sec-WebSocket-Accept: abc=\r\n\r\n"));
    }
}
