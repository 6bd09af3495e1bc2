//! One plain HTTP/1.1 GET over a fresh connection, for `/health`,
//! `/metrics` and refused upgrades. Both servers answer a GET and close
//! the connection, so the response is read to end of stream.

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
    #[should_panic(expected = "not an HTTP/1.x response")]
    fn anything_else_panics() {
        parse("SSH-2.0-OpenSSH\r\n");
    }
}
