//! Plain HTTP/1.1 requests over a fresh connection: [`http_get`] for
//! `/health`, `/metrics` and refused upgrades (both servers answer a GET
//! and close the connection, so the response is read to end of stream),
//! and [`http_request`] for any method, asking the server to close
//! (`Connection: close`, for servers that keep connections alive) and
//! keeping the headers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// GETs `path` from `addr` with extra `headers` (each ending in `\r\n`, or
/// empty); returns (status, body). Connecting and reading each give up
/// after `timeout`.
pub fn http_get(addr: SocketAddr, path: &str, headers: &str, timeout: Duration) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .unwrap_or_else(|e| panic!("GET {path}: {addr} does not answer: {e}"));
    stream.set_read_timeout(Some(timeout)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n{headers}\r\n").unwrap();
    let mut raw = String::new();
    stream
        .read_to_string(&mut raw)
        .unwrap_or_else(|e| panic!("GET {path}: reading the response: {e}"));
    parse(&raw)
}

/// A whole response.
#[derive(Debug)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Header lines, as (name, value).
    pub headers: Vec<(String, String)>,
    /// Everything after the head.
    pub body: String,
}

impl HttpResponse {
    /// (status, body).
    pub fn into_parts(self) -> (u16, String) {
        (self.status, self.body)
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `method target` to `addr` with `Connection: close` and reads the
/// whole response. Connecting and reading each give up after `timeout`.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    timeout: Duration,
) -> HttpResponse {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .unwrap_or_else(|e| panic!("{method} {target}: {addr} does not answer: {e}"));
    stream.set_read_timeout(Some(timeout)).unwrap();
    write!(
        stream,
        "{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("{method} {target}: reading the response: {e}"));
    let raw = String::from_utf8_lossy(&raw);
    let (status, body) = parse(&raw);
    let head = raw.split_once("\r\n\r\n").map_or(&*raw, |(head, _)| head);
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut response = HttpResponse {
        status,
        headers,
        body,
    };
    if response
        .header("Transfer-Encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        response.body = dechunk(&response.body)
            .unwrap_or_else(|| panic!("{method} {target}: a malformed chunked body"));
    }
    response
}

/// The data of a `Transfer-Encoding: chunked` body.
fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// (status, body) of a whole response; panics on anything else.
fn parse(raw: &str) -> (u16, String) {
    let status = raw
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.x response: {raw:?}"));
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_whole_body() {
        let raw = "HTTP/1.1 503 Service Unavailable\r\nA: b\r\n\r\nline\r\n\r\nmore";
        assert_eq!(parse(raw), (503, "line\r\n\r\nmore".to_string()));
        assert_eq!(parse("HTTP/1.1 200 OK\r\n\r\n"), (200, String::new()));
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk("5\r\nhello\r\n1;x=y\r\n!\r\n0\r\n\r\n").as_deref(),
            Some("hello!")
        );
        assert_eq!(dechunk("5\r\nhel"), None);
    }

    #[test]
    #[should_panic(expected = "not an HTTP/1.x response")]
    fn anything_else_panics() {
        parse("SSH-2.0-OpenSSH\r\n");
    }
}
