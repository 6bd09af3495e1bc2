//! Property tests for the two parsers a client reaches before any message:
//! the request-head router (`http::route`) and the WebSocket frame meter
//! (`socket::FrameMeter`), plus the seed corpus in `tests/corpus/`
//! (`http/*.txt` request heads, `frames/*.bin` client byte streams).
//!
//! Every input goes through the same checks: [`check_route`] for heads (a
//! well-formed answer, and an HTTP response for every refusal) and
//! [`check_meter`] for frame streams (the meter agrees, chunk by chunk, with
//! [`Model`], a whole-buffer reading of RFC 6455 §5.2 written for these
//! tests). The `Sec-WebSocket-Accept` key is checked against a SHA-1 and
//! base64 written here, not against the one the server uses.

use std::fs;
use std::path::Path;
use std::time::Instant;

use chatflow_protocol::Rooms;
use chatflow_server::http::{self, Head, HttpError, Route};
use chatflow_server::socket::{FrameMeter, Violation};
use chatflow_server::Config;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use serde_json::Value;

/// Moderate so the whole file runs in a few seconds in a debug build.
const CASES: u32 = 256;

/// The statuses `http::route` may refuse with (503 comes from the worker).
const ROUTE_STATUSES: [u16; 5] = [400, 404, 405, 426, 431];

// ---------------------------------------------------------------------------
// An independent Sec-WebSocket-Accept: SHA-1 (RFC 3174) and base64.

fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&(data.len() as u64 * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes(word.try_into().unwrap());
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            (e, d, c, b, a) = (d, c, b.rotate_left(30), a, t);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0; 20];
    for (chunk, x) in out.chunks_mut(4).zip(h) {
        chunk.copy_from_slice(&x.to_be_bytes());
    }
    out
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// RFC 6455 §4.2.2: base64(SHA-1(key + GUID)).
fn accept_key(key: &str) -> String {
    base64(&sha1(
        format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
    ))
}

// The helpers above reproduce RFC 3174's and RFC 6455's worked examples.
#[test]
fn independent_accept_key_matches_the_rfc_examples() {
    let hex: String = sha1(b"abc").iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, "a9993e364706816aba3e25717850c26c9cd0d89d");
    assert_eq!(base64(b"foob"), "Zm9vYg==");
    assert_eq!(
        accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

// ---------------------------------------------------------------------------
// Request heads: what holds for every input.

/// Routes `buf` and checks what must hold whatever it is: `Partial` only
/// when the buffer is not full; a complete head no longer than the buffer;
/// a refusal with a known status and a well-formed HTTP answer; an upgrade
/// to a room in range whose accept key answers the head's key.
fn check_route(buf: &[u8], full: bool, rooms: Rooms) -> Head {
    let head = http::route(buf, full, rooms);
    let shown = || String::from_utf8_lossy(&buf[..buf.len().min(300)]).into_owned();
    match &head {
        Head::Partial => assert!(!full, "a full buffer stayed Partial: {:?}", shown()),
        Head::Complete { len, route } => {
            assert!(
                *len <= buf.len(),
                "len {len} > {}: {:?}",
                buf.len(),
                shown()
            );
            match route {
                Route::Refuse(error) => {
                    assert!(ROUTE_STATUSES.contains(&error.status), "{error:?}");
                    check_error_response(error);
                }
                Route::Chat { room, accept, .. } => {
                    assert!(rooms.contains(*room), "room {room} not in {rooms}");
                    let key = header_value(&buf[..*len], "sec-websocket-key")
                        .unwrap_or_else(|| panic!("upgrade without a key: {:?}", shown()));
                    assert_eq!(*accept, accept_key(&key), "{:?}", shown());
                }
                Route::Health | Route::Live => {}
            }
        }
    }
    head
}

/// The value of the only `name` header in `head`, read line by line.
fn header_value(head: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(head);
    let mut values = text.lines().skip(1).filter_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name)
            .then(|| v.trim_matches([' ', '\t', '\r']).to_string())
    });
    let value = values.next();
    assert!(values.next().is_none(), "two {name} headers were accepted");
    value
}

/// The answer to a refusal is one complete HTTP/1.1 response: its status,
/// a Content-Length equal to the body's length, and a JSON body with the
/// same status and the refusal's message.
fn check_error_response(error: &HttpError) {
    let bytes = http::error_response(error);
    let text = std::str::from_utf8(&bytes).expect("the response is UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let prefix = format!("HTTP/1.1 {} ", error.status);
    assert!(
        status_line.starts_with(&prefix) && status_line.len() > prefix.len(),
        "{status_line:?}"
    );
    let headers: Vec<(&str, &str)> = lines
        .map(|l| {
            l.split_once(": ")
                .unwrap_or_else(|| panic!("bad line {l:?}"))
        })
        .collect();
    let values = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
            .collect()
    };
    assert_eq!(values("content-length"), [body.len().to_string()], "{text}");
    assert_eq!(values("content-type"), ["application/json"], "{text}");
    assert_eq!(values("connection"), ["close"], "{text}");
    if let Some(extra) = error.header {
        assert!(head.split("\r\n").any(|l| l == extra), "{text}");
    }
    let v: Value = serde_json::from_str(body).expect("the body is JSON");
    assert_eq!(v["status"], error.status, "{text}");
    assert_eq!(v["error"], error.message.as_str(), "{text}");
    // A real HTTP parser reads the same response, with nothing left over.
    let mut parsed = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut parsed);
    assert_eq!(
        response.parse(&bytes).unwrap(),
        httparse::Status::Complete(head.len() + 4)
    );
    assert_eq!(response.code, Some(error.status));
}

/// `Partial` is prefix-closed: once some prefix of `buf` is complete, no
/// longer prefix goes back to waiting. Checks the prefix lengths `at`.
fn check_partial_prefix_closed(buf: &[u8], at: impl IntoIterator<Item = usize>, rooms: Rooms) {
    let mut lengths: Vec<usize> = at.into_iter().filter(|&k| k <= buf.len()).collect();
    lengths.sort_unstable();
    lengths.dedup();
    let mut complete_at = None;
    for k in lengths {
        match check_route(&buf[..k], false, rooms) {
            Head::Partial => assert!(
                complete_at.is_none(),
                "prefix {k} is Partial after prefix {complete_at:?} was Complete: {:?}",
                String::from_utf8_lossy(&buf[..k])
            ),
            Head::Complete { .. } => complete_at = complete_at.or(Some(k)),
        }
    }
}

fn status_of(head: &Head) -> Option<u16> {
    match head {
        Head::Complete {
            route: Route::Refuse(e),
            ..
        } => Some(e.status),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Request heads: generators.

/// Which required part of an upgrade a header line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Host,
    Upgrade,
    Connection,
    Version,
    Key,
    Extra,
}

/// A valid upgrade request head, kept in parts so one can be broken.
#[derive(Clone, Debug)]
struct UpgradeHead {
    rooms: Rooms,
    room: u32,
    key: String,
    method: &'static str,
    target: String,
    version: &'static str,
    headers: Vec<(Part, String)>,
}

impl UpgradeHead {
    fn bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} {}\r\n", self.method, self.target, self.version);
        for (_, line) in &self.headers {
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    fn replace(&mut self, part: Part, line: String) {
        for (p, l) in &mut self.headers {
            if *p == part {
                *l = line.clone();
            }
        }
    }
}

/// `name` with each letter's case chosen at random.
fn cased(name: &'static str) -> impl Strategy<Value = String> {
    vec(any::<bool>(), name.len()).prop_map(move |upper| {
        name.chars()
            .zip(upper)
            .map(|(c, u)| {
                if u {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect()
    })
}

/// Optional whitespace (RFC 9110 OWS).
fn ows() -> impl Strategy<Value = &'static str> {
    select(vec!["", " ", "  ", "\t", " \t "])
}

fn header(name: &'static str, value: BoxedStrategy<String>) -> impl Strategy<Value = String> {
    (cased(name), ows(), value, ows()).prop_map(|(n, a, v, b)| format!("{n}:{a}{v}{b}"))
}

/// A comma-separated list holding `token` (random case) among `others`.
fn listing(token: &'static str, others: Vec<&'static str>) -> BoxedStrategy<String> {
    (
        cased(token),
        vec(select(others), 0..3),
        any::<Index>(),
        select(vec![",", ", ", " ,\t"]),
    )
        .prop_map(|(token, others, at, sep)| {
            let mut list: Vec<String> = others.into_iter().map(str::to_string).collect();
            list.insert(at.index(list.len() + 1), token);
            list.join(sep)
        })
        .boxed()
}

/// A header that is none of the ones the router reads.
fn extra_header() -> impl Strategy<Value = String> {
    const READ: [&str; 7] = [
        "host",
        "upgrade",
        "connection",
        "sec-websocket-key",
        "sec-websocket-version",
        "content-length",
        "transfer-encoding",
    ];
    prop_oneof![
        9 => (
            "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,16}"
                .prop_filter("a header the router reads", |n| {
                    !READ.iter().any(|r| r.eq_ignore_ascii_case(n))
                }),
            ows(),
            "([!-~]([ -~]{0,30}[!-~])?)?",
        )
            .prop_map(|(n, s, v)| format!("{n}:{s}{v}")),
        1 => Just("Content-Length: 0".to_string()),
    ]
}

/// A room count, a room in it, and the path naming it (leading zeros, a
/// trailing slash and a query allowed; no `since` parameter, which has
/// rules of its own: `http`'s unit tests).
fn chat_target() -> impl Strategy<Value = (Rooms, u32, String)> {
    prop_oneof![Just(20u32), 1u32..=10_000]
        .prop_flat_map(|count| (Just(count), 1..=count))
        .prop_flat_map(|(count, room)| {
            (
                Just(count),
                Just(room),
                0usize..=8,
                any::<bool>(),
                proptest::option::of("\\?([A-Za-z0-9._~!$&'()*+,;=:@/?-]|%[0-9A-Fa-f]{2}){0,12}")
                    .prop_filter("no since parameter", |query| {
                        !query.as_deref().is_some_and(|q| {
                            q[1..].split('&').any(|pair| pair.starts_with("since="))
                        })
                    }),
            )
        })
        .prop_map(|(count, room, zeros, slash, query)| {
            let digits = room.to_string();
            let zeros = "0".repeat(zeros.min(9 - digits.len()));
            let slash = if slash { "/" } else { "" };
            let query = query.unwrap_or_default();
            let target = format!("/chat/{zeros}{digits}{slash}{query}");
            (Rooms::new(count).unwrap(), room, target)
        })
}

/// A valid upgrade: random room, header order and case, extra headers, key,
/// and the one `Host` an HTTP/1.1 request must have (RFC 9112 §3.2).
fn upgrade_head() -> impl Strategy<Value = UpgradeHead> {
    (
        chat_target(),
        any::<[u8; 16]>(),
        (
            header(
                "Upgrade",
                listing("websocket", vec!["h2c", "HTTP/2.0", "foo/1"]),
            ),
            header(
                "Connection",
                listing("upgrade", vec!["keep-alive", "close", "TE"]),
            ),
            header("Sec-WebSocket-Version", Just("13".to_string()).boxed()),
            (cased("Sec-WebSocket-Key"), ows(), ows()),
            header(
                "Host",
                "[a-z0-9-]{1,12}(\\.[a-z0-9-]{1,12}){0,2}(:[0-9]{1,5})?".boxed(),
            ),
        ),
        vec(extra_header(), 0..=20),
        vec(any::<u32>(), 1..8),
    )
        .prop_map(|((rooms, room, target), key, parts, extra, order)| {
            let (upgrade, connection, version, (name, a, b), host) = parts;
            let key = base64(&key);
            let mut headers = vec![
                (Part::Host, host),
                (Part::Upgrade, upgrade),
                (Part::Connection, connection),
                (Part::Version, version),
                (Part::Key, format!("{name}:{a}{key}{b}")),
            ];
            headers.extend(extra.into_iter().map(|l| (Part::Extra, l)));
            let mut keyed: Vec<_> = headers
                .into_iter()
                .enumerate()
                .map(|(i, h)| ((order[i % order.len()], i), h))
                .collect();
            keyed.sort_by_key(|(k, _)| *k);
            UpgradeHead {
                rooms,
                room,
                key,
                method: "GET",
                target,
                version: "HTTP/1.1",
                headers: keyed.into_iter().map(|(_, h)| h).collect(),
            }
        })
}

/// One way to break a valid upgrade, and the status it must get.
#[derive(Clone, Debug)]
enum Break {
    Drop(Part),
    Version(&'static str),
    Key(String),
    SecondKey(String),
    SecondHost(String),
    Room(u32),
    Method(&'static str),
    Http10,
    Body(String),
    TargetChar(char),
}

impl Break {
    fn apply(&self, head: &mut UpgradeHead) -> u16 {
        match self {
            Break::Drop(part) => {
                head.headers.retain(|(p, _)| p != part);
                match part {
                    Part::Upgrade | Part::Version => 426,
                    _ => 400,
                }
            }
            Break::Version(v) => {
                head.replace(Part::Version, format!("Sec-WebSocket-Version: {v}"));
                426
            }
            Break::Key(k) => {
                head.replace(Part::Key, format!("Sec-WebSocket-Key: {k}"));
                400
            }
            Break::SecondKey(k) => {
                head.headers
                    .push((Part::Key, format!("sec-websocket-key: {k}")));
                400
            }
            Break::SecondHost(h) => {
                head.headers.push((Part::Host, format!("host: {h}")));
                400
            }
            Break::Room(seed) => {
                let count = head.rooms.count();
                let room = match seed % 4 {
                    0 => 0,
                    _ => count + 1 + seed % (999_999_999 - count),
                };
                head.target = format!("/chat/{room}");
                404
            }
            Break::Method(m) => {
                head.method = m;
                405
            }
            Break::Http10 => {
                head.version = "HTTP/1.0";
                400
            }
            Break::Body(line) => {
                head.headers.push((Part::Extra, line.clone()));
                400
            }
            Break::TargetChar(c) => {
                head.target.push_str("?a");
                head.target.push(*c);
                400
            }
        }
    }
}

fn a_break() -> impl Strategy<Value = Break> {
    let bad_key = prop_oneof![
        vec(any::<u8>(), 0..=40)
            .prop_filter("not 16 bytes", |k| k.len() != 16)
            .prop_map(|k| base64(&k)),
        (
            any::<[u8; 16]>(),
            0usize..22,
            select(vec!['-', '_', '=', '.', '!', ' ', '~'])
        )
            .prop_map(|(k, at, c)| {
                let mut key: Vec<char> = base64(&k).chars().collect();
                key[at] = c;
                key.into_iter().collect()
            }),
    ];
    prop_oneof![
        select(vec![
            Part::Host,
            Part::Upgrade,
            Part::Connection,
            Part::Version,
            Part::Key
        ])
        .prop_map(Break::Drop),
        select(vec!["8", "12", "14", "", "13, 13", "13 8", "1.3", "0x0d"]).prop_map(Break::Version),
        bad_key.prop_map(Break::Key),
        any::<[u8; 16]>().prop_map(|k| Break::SecondKey(base64(&k))),
        "[a-z.]{0,12}".prop_map(Break::SecondHost),
        any::<u32>().prop_map(Break::Room),
        select(vec![
            "POST", "PUT", "HEAD", "OPTIONS", "DELETE", "get", "Get", "PRI"
        ])
        .prop_map(Break::Method),
        Just(Break::Http10),
        prop_oneof![
            (1u64..).prop_map(|n| format!("Content-Length: {n}")),
            Just("content-length: 00".to_string()),
            "[a-z]{1,8}".prop_map(|t| format!("Transfer-Encoding: {t}")),
            Just("Content-Length: 0\r\nTransfer-Encoding: chunked".to_string()),
        ]
        .prop_map(Break::Body),
        select(vec![
            '"', '<', '>', '{', '}', '\\', '^', '`', '|', '#', '[', ']', 'é'
        ])
        .prop_map(Break::TargetChar),
    ]
}

/// Bytes shaped like a request head, for the router's deeper paths.
fn head_soup() -> impl Strategy<Value = Vec<u8>> {
    let token = select(vec![
        &b"GET"[..],
        b" ",
        b"/chat/",
        b"/health",
        b"1",
        b"20",
        b"0",
        b"?",
        b"%",
        b"\"",
        b"/",
        b" HTTP/1.1",
        b" HTTP/1.0",
        b"\r\n",
        b"\n",
        b"\r",
        b": ",
        b":",
        b",",
        b"\t",
        b"Upgrade",
        b"websocket",
        b"Connection",
        b"upgrade",
        b"Sec-WebSocket-Key",
        b"dGhlIHNhbXBsZSBub25jZQ==",
        b"Sec-WebSocket-Version",
        b"13",
        b"Content-Length",
        b"Transfer-Encoding",
        b"chunked",
        b"\0",
        b"\xff",
        b"\xc3\xa9",
    ]);
    vec(token, 0..60).prop_map(|t| t.concat())
}

// ---------------------------------------------------------------------------
// Frame streams: a whole-buffer model of RFC 6455 §5.2 framing.

/// What a meter must report for a byte stream and a fragment limit.
#[derive(Debug)]
struct Model {
    /// Where each frame header complete in the stream ends, in order.
    header_ends: Vec<usize>,
    /// The frame whose header exceeds the limit, if one does.
    violation: Option<usize>,
    /// Stream positions that are message boundaries (between frames, no
    /// fragmented data message open), ascending.
    boundaries: Vec<usize>,
}

impl Model {
    fn new(bytes: &[u8], max_fragments: u32) -> Model {
        let mut header_ends = vec![];
        let mut boundaries = vec![0];
        let mut violation = None;
        let mut fragments: u64 = 0;
        let mut pos = 0usize;
        while let Some(&[b0, b1]) = bytes.get(pos..pos + 2) {
            let extended = match b1 & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let header_len = 2 + extended + if b1 & 0x80 != 0 { 4 } else { 0 };
            let Some(header) = bytes.get(pos..pos + header_len) else {
                break;
            };
            let len: u128 = match extended {
                0 => u128::from(b1 & 0x7f),
                n => header[2..2 + n]
                    .iter()
                    .fold(0, |acc, &b| (acc << 8) | u128::from(b)),
            };
            let (data, fin) = (b0 & 0x0f < 8, b0 & 0x80 != 0);
            let header_end = pos + header_len;
            let end = header_end as u128 + len;
            header_ends.push(header_end);
            if data {
                fragments += 1;
                if fragments > u64::from(max_fragments) && violation.is_none() {
                    violation = Some(header_ends.len() - 1);
                }
                if fin {
                    fragments = 0;
                }
            }
            if end > bytes.len() as u128 {
                break;
            }
            pos = end as usize;
            if fragments == 0 {
                boundaries.push(pos);
            }
        }
        Model {
            header_ends,
            violation,
            boundaries,
        }
    }

    fn at_boundary(&self, pos: usize) -> bool {
        self.boundaries.binary_search(&pos).is_ok()
    }
}

/// How a meter run ended.
#[derive(Debug, PartialEq, Eq)]
enum Metered {
    /// Every byte fed; `frames` headers counted; at a message boundary or not.
    Fed { frames: u64, boundary: bool },
    /// Refused when the `frames`-th header completed.
    TooManyFragments { frames: u64 },
}

/// Feeds `bytes` to a fresh meter in chunks of the sizes in `chunks`
/// (cycled), checking after every feed that it agrees with the model:
/// frames counted, boundary or not, the clock kept while incomplete, the
/// limit tripped exactly at the frame that exceeds it.
fn check_meter(bytes: &[u8], max_fragments: u32, chunks: &[usize]) -> Metered {
    let model = Model::new(bytes, max_fragments);
    let mut meter = FrameMeter::new(max_fragments);
    let mut sizes = chunks.iter().cycle();
    let (mut pos, mut frames, mut headers_done) = (0usize, 0u64, 0usize);
    let mut since: Option<Instant> = None;
    while pos < bytes.len() {
        let end = pos + sizes.next().unwrap().clamp(&1, &(bytes.len() - pos));
        let fed = meter.feed(&bytes[pos..end]);
        frames += u64::from(meter.take_frames());
        while model
            .header_ends
            .get(headers_done)
            .is_some_and(|&h| h <= end)
        {
            headers_done += 1;
        }
        match fed {
            Err(Violation::TooManyFragments) => {
                let at = model
                    .violation
                    .expect("refused, but no message is too long");
                let header_end = model.header_ends[at];
                assert!(
                    pos < header_end && header_end <= end,
                    "refused in chunk {pos}..{end}, the frame's header ends at {header_end}"
                );
                assert_eq!(frames, at as u64 + 1, "frames counted up to the refusal");
                return Metered::TooManyFragments { frames };
            }
            Ok(()) => {
                if let Some(at) = model.violation {
                    assert!(model.header_ends[at] > end, "limit not tripped");
                }
                assert_eq!(frames, headers_done as u64, "frames counted up to {end}");
                let incomplete = meter.incomplete_since();
                assert_eq!(
                    incomplete.is_none(),
                    model.at_boundary(end),
                    "incomplete_since after {end} bytes"
                );
                if let (Some(before), Some(now)) = (since, incomplete) {
                    assert_eq!(before, now, "the clock restarted mid-message");
                }
                since = incomplete;
            }
        }
        pos = end;
    }
    Metered::Fed {
        frames,
        boundary: meter.incomplete_since().is_none(),
    }
}

/// How a generated frame writes its payload length.
#[derive(Clone, Copy, Debug)]
enum LenForm {
    Shortest,
    U16,
    U64,
}

/// One generated frame.
#[derive(Clone, Debug)]
struct FrameSpec {
    fin: bool,
    rsv: u8,
    opcode: u8,
    masked: bool,
    len: usize,
    form: LenForm,
}

impl FrameSpec {
    fn data(opcode: u8, fin: bool, len: usize) -> FrameSpec {
        FrameSpec {
            fin,
            rsv: 0,
            opcode,
            masked: true,
            len,
            form: LenForm::Shortest,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.push((u8::from(self.fin) << 7) | (self.rsv << 4) | self.opcode);
        let mask = if self.masked { 0x80 } else { 0 };
        let form = match self.form {
            LenForm::Shortest if self.len < 126 => None,
            LenForm::Shortest if self.len <= 0xffff => Some(LenForm::U16),
            LenForm::Shortest => Some(LenForm::U64),
            LenForm::U16 if self.len <= 0xffff => Some(LenForm::U16),
            _ => Some(LenForm::U64),
        };
        match form {
            None => out.push(mask | self.len as u8),
            Some(LenForm::U16) => {
                out.push(mask | 126);
                out.extend_from_slice(&(self.len as u16).to_be_bytes());
            }
            Some(_) => {
                out.push(mask | 127);
                out.extend_from_slice(&(self.len as u64).to_be_bytes());
            }
        }
        if self.masked {
            out.extend_from_slice(&[0x37, 0xfa, 0x21, 0x3d]);
        }
        out.resize(out.len() + self.len, 0x5a);
    }
}

fn write_frames(frames: &[FrameSpec]) -> Vec<u8> {
    let mut out = vec![];
    for f in frames {
        f.write(&mut out);
    }
    out
}

/// Payload lengths across the three encodings, the 64-bit one rarely.
fn payload_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        40 => 0usize..=125,
        8 => 126usize..=1_500,
        1 => 65_536usize..=66_000,
    ]
}

/// A well-formed control frame (RFC 6455 §5.5: final, at most 125 bytes).
fn control_frame() -> impl Strategy<Value = FrameSpec> {
    (select(vec![8u8, 9, 10]), 0usize..=125).prop_map(|(op, len)| FrameSpec::data(op, true, len))
}

/// A well-formed data message: 1..=12 fragments with control frames
/// interleaved.
fn message() -> impl Strategy<Value = Vec<FrameSpec>> {
    (
        1usize..=12,
        select(vec![1u8, 2]),
        vec(
            (
                payload_len(),
                proptest::option::weighted(0.3, control_frame()),
            ),
            12,
        ),
    )
        .prop_map(|(n, kind, parts)| {
            let mut frames = vec![];
            for (i, (len, control)) in parts.into_iter().take(n).enumerate() {
                let opcode = if i == 0 { kind } else { 0 };
                frames.push(FrameSpec::data(opcode, i == n - 1, len));
                if let (Some(c), true) = (control, i + 1 < n) {
                    frames.push(c);
                }
            }
            frames
        })
}

/// Any frame header at all: RSV bits, reserved opcodes, unmasked, control
/// frames not final, lengths in a longer form than needed.
fn any_frame() -> impl Strategy<Value = FrameSpec> {
    (
        any::<bool>(),
        0u8..8,
        0u8..16,
        any::<bool>(),
        0usize..=300,
        select(vec![LenForm::Shortest, LenForm::U16, LenForm::U64]),
    )
        .prop_map(|(fin, rsv, opcode, masked, len, form)| FrameSpec {
            fin,
            rsv,
            opcode,
            masked,
            len,
            form,
        })
}

/// Read sizes: byte by byte, small, buffer-sized, or all at once.
fn chunking() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        vec(1usize..=8, 1..5),
        vec(1usize..=3_000, 1..5),
        Just(vec![2048]),
        Just(vec![usize::MAX]),
    ]
}

// ---------------------------------------------------------------------------
// Properties.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    // Any bytes get a well-formed answer, and a head once complete never goes back to Partial.
    #[test]
    fn any_bytes_get_a_well_formed_route(
        bytes in prop_oneof![vec(any::<u8>(), 0..200), head_soup()],
        rooms in (1u32..=10_000).prop_map(|n| Rooms::new(n).unwrap()),
    ) {
        check_route(&bytes, false, rooms);
        check_route(&bytes, true, rooms);
        check_partial_prefix_closed(&bytes, 0..=bytes.len(), rooms);
    }

    // A valid upgrade built from parts routes to its room with the RFC 6455 accept key.
    #[test]
    fn valid_upgrades_route_to_chat_with_the_rfc_accept_key(head in upgrade_head()) {
        let bytes = head.bytes();
        let expected = Head::Complete {
            len: bytes.len(),
            route: Route::Chat { room: head.room, accept: accept_key(&head.key), since: None },
        };
        prop_assert_eq!(check_route(&bytes, false, head.rooms), expected);
        let full = check_route(&bytes, true, head.rooms);
        let upgraded = matches!(full, Head::Complete { route: Route::Chat { .. }, .. });
        prop_assert!(upgraded, "full buffer: {:?}", full);
    }

    // Bytes after a valid head (body, pipelined request, early frame) are refused with 400.
    #[test]
    fn bytes_after_a_valid_head_are_refused(
        head in upgrade_head(),
        trailing in vec(any::<u8>(), 1..64),
    ) {
        let mut bytes = head.bytes();
        let len = bytes.len();
        bytes.extend_from_slice(&trailing);
        let answer = check_route(&bytes, false, head.rooms);
        let whole_head = matches!(answer, Head::Complete { len: l, .. } if l == len);
        prop_assert!(whole_head, "{:?}", answer);
        prop_assert_eq!(status_of(&answer), Some(400));
    }

    // Every proper prefix of a valid head waits for more bytes.
    #[test]
    fn prefixes_of_a_valid_head_are_partial(
        head in upgrade_head(),
        cuts in vec(any::<Index>(), 24),
    ) {
        let bytes = head.bytes();
        let n = bytes.len();
        let ends = (0..8).chain(n - 8..n);
        for k in ends.chain(cuts.iter().map(|c| c.index(n))) {
            let answer = check_route(&bytes[..k], false, head.rooms);
            prop_assert_eq!(answer, Head::Partial, "prefix {}", k);
        }
    }

    // A valid head with one part broken gets the status documented for that part.
    #[test]
    fn one_broken_part_gets_its_status(mut head in upgrade_head(), broken in a_break()) {
        let status = broken.apply(&mut head);
        let bytes = head.bytes();
        let answer = check_route(&bytes, false, head.rooms);
        prop_assert_eq!(status_of(&answer), Some(status), "{:?}", String::from_utf8_lossy(&bytes));
    }

    // Well-formed masked streams, any chunking: exact frame count, boundaries, fragment limit.
    #[test]
    fn well_formed_streams_are_metered_exactly(
        stream in vec(prop_oneof![
            3 => message(),
            1 => control_frame().prop_map(|c| vec![c]),
        ], 0..8),
        max_fragments in 1u32..=8,
        cut in proptest::option::weighted(0.3, any::<Index>()),
        chunks in chunking(),
    ) {
        // What construction says: the frame that trips the limit.
        let mut tripping = None;
        let mut index = 0u64;
        for frames in &stream {
            let mut data = 0;
            for f in frames {
                index += 1;
                if f.opcode < 8 {
                    data += 1;
                    if data == max_fragments + 1 && tripping.is_none() {
                        tripping = Some(index);
                    }
                }
            }
        }
        let frames: Vec<FrameSpec> = stream.into_iter().flatten().collect();
        let mut bytes = write_frames(&frames);
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        let model = Model::new(&bytes, max_fragments);
        let metered = check_meter(&bytes, max_fragments, &chunks);
        match (cut, tripping) {
            (None, Some(at)) => {
                prop_assert_eq!(model.violation.map(|i| i as u64 + 1), Some(at));
                prop_assert_eq!(metered, Metered::TooManyFragments { frames: at });
            }
            // Whole messages only: every frame counted, at a boundary.
            (None, None) => prop_assert_eq!(
                metered,
                Metered::Fed { frames: frames.len() as u64, boundary: true }
            ),
            (Some(_), _) => {}
        }
    }

    // Any frame headers (RSV, unmasked, odd opcodes, long lengths), cut anywhere, match the model.
    #[test]
    fn any_frame_headers_are_metered_like_the_model(
        frames in vec(any_frame(), 0..40),
        max_fragments in 1u32..=8,
        cut in any::<Index>(),
        chunks in chunking(),
    ) {
        let mut bytes = write_frames(&frames);
        bytes.truncate(cut.index(bytes.len() + 1));
        check_meter(&bytes, max_fragments, &chunks);
    }

    // Arbitrary bytes never panic the meter and agree with the model in any chunking.
    #[test]
    fn any_bytes_are_metered_like_the_model(
        bytes in vec(any::<u8>(), 0..512),
        max_fragments in 1u32..=8,
        chunks in chunking(),
    ) {
        check_meter(&bytes, max_fragments, &chunks);
    }
}

// ---------------------------------------------------------------------------
// The seed corpus.

fn corpus(kind: &str, ext: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(kind);
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// What a corpus head must get.
#[derive(Clone, Copy, Debug)]
enum HeadExpect {
    Status(u16),
    Partial,
    Health,
    Chat(u32),
}

/// Every file in `tests/corpus/http/` and what the worker's router must
/// answer to it (read as the worker peeks: at most `max_request_head`
/// bytes, with the default 20 rooms).
const HTTP_CORPUS: &[(&str, HeadExpect)] = {
    use HeadExpect::*;
    &[
        ("bad_path_absolute_form.txt", Status(400)),
        ("bad_path_asterisk.txt", Status(400)),
        ("bad_path_backslash.txt", Status(400)),
        ("bad_path_dotdot.txt", Status(400)),
        ("bad_path_double_slash.txt", Status(404)),
        ("bad_path_fragment.txt", Status(400)),
        ("bad_path_nul.txt", Status(400)),
        ("bad_path_percent_room.txt", Status(400)),
        ("bad_path_utf8_digit.txt", Status(400)),
        ("connection_missing.txt", Status(400)),
        ("connection_upgradex.txt", Status(400)),
        ("empty.txt", Partial),
        ("frame_before_101.txt", Status(400)),
        ("garbage_binary.txt", Status(400)),
        ("garbage_text.txt", Status(400)),
        ("get_lowercase.txt", Status(405)),
        ("h2_preface.txt", Status(400)),
        ("header_name_space.txt", Status(400)),
        ("header_no_colon.txt", Status(400)),
        ("headers_32.txt", Chat(1)),
        ("headers_33.txt", Status(431)),
        ("health.txt", Health),
        ("health_http10.txt", Health),
        ("health_with_body.txt", Status(400)),
        ("health_with_query.txt", Health),
        ("health_without_host.txt", Status(400)),
        // RFC 9112 §3.2: exactly one Host, whatever its value.
        ("host_empty.txt", Chat(1)),
        ("host_missing.txt", Status(400)),
        ("host_twice.txt", Status(400)),
        ("host_twice_same.txt", Status(400)),
        ("http09.txt", Status(400)),
        ("http10_upgrade.txt", Status(400)),
        ("http2_version.txt", Status(400)),
        ("huge_head_9k.txt", Status(431)),
        ("key_23_chars.txt", Status(400)),
        ("key_25_chars.txt", Status(400)),
        ("key_empty.txt", Status(400)),
        ("key_missing.txt", Status(400)),
        ("key_no_padding.txt", Status(400)),
        ("key_surrounded_by_spaces.txt", Chat(1)),
        ("key_twice.txt", Status(400)),
        ("key_url_safe_alphabet.txt", Status(400)),
        ("method_connect.txt", Status(405)),
        ("method_post.txt", Status(405)),
        ("never_ending_head.txt", Status(431)),
        ("never_ending_request_line.txt", Status(431)),
        ("nul_in_header_value.txt", Status(400)),
        ("partial_head.txt", Partial),
        ("pipelined_request.txt", Status(400)),
        ("query_bad_percent.txt", Status(400)),
        ("query_bad_since.txt", Status(400)),
        ("query_brace.txt", Status(400)),
        ("query_ok.txt", Chat(3)),
        ("query_quote.txt", Status(400)),
        ("room_0.txt", Status(404)),
        ("room_21.txt", Status(404)),
        ("room_999999999.txt", Status(404)),
        ("room_leading_zeros.txt", Chat(1)),
        ("room_negative.txt", Status(400)),
        ("room_ten_digits.txt", Status(400)),
        ("room_trailing_slash.txt", Chat(7)),
        ("smuggle_cl0_te.txt", Status(400)),
        ("smuggle_cl_list.txt", Status(400)),
        ("smuggle_cl_te.txt", Status(400)),
        ("smuggle_double_cl.txt", Status(400)),
        ("smuggle_te_cl.txt", Status(400)),
        ("smuggle_te_health.txt", Status(400)),
        ("smuggle_te_obs_fold.txt", Status(400)),
        ("smuggle_te_space_before_colon.txt", Status(400)),
        ("smuggle_te_tab.txt", Status(400)),
        ("tls_client_hello.txt", Status(400)),
        ("upgrade_in_connection_only.txt", Status(426)),
        ("upgrade_missing.txt", Status(426)),
        ("upgrade_websocketx.txt", Status(426)),
        ("valid_upgrade.txt", Chat(1)),
        ("valid_upgrade_mixed_case.txt", Chat(2)),
        ("version_8.txt", Status(426)),
        ("version_missing.txt", Status(426)),
        ("version_twice.txt", Status(426)),
    ]
};

// Every corpus head passes the route checks (whole, full, by prefix) and gets its known answer.
#[test]
fn http_corpus_gets_its_known_answers() {
    let files = corpus("http", "txt");
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    let listed: Vec<&str> = HTTP_CORPUS.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, listed, "tests/corpus/http and HTTP_CORPUS disagree");
    let max = Config::default().max_request_head;
    let rooms = Rooms::DEFAULT;
    let mut wrong = vec![];
    for ((name, bytes), (_, expect)) in files.iter().zip(HTTP_CORPUS) {
        check_route(bytes, false, rooms);
        check_route(bytes, true, rooms);
        // Every prefix of a small file; a sample of a large one.
        let stride = (bytes.len() / 512).max(1);
        let ends = (0..=bytes.len()).step_by(stride).chain([bytes.len()]);
        check_partial_prefix_closed(bytes, ends, rooms);
        let peeked = &bytes[..bytes.len().min(max)];
        let answer = check_route(peeked, peeked.len() == max, rooms);
        let ok = match (expect, &answer) {
            (HeadExpect::Partial, Head::Partial) => true,
            (HeadExpect::Status(s), _) => status_of(&answer) == Some(*s),
            (HeadExpect::Health, Head::Complete { route, .. }) => *route == Route::Health,
            (HeadExpect::Chat(room), Head::Complete { route, .. }) => {
                matches!(route, Route::Chat { room: r, .. } if r == room)
            }
            _ => false,
        };
        if !ok {
            wrong.push(format!("{name}: expected {expect:?}, got {answer:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// What a corpus byte stream must get from a meter with the default
/// fragment limit.
const FRAME_CORPUS: &[(&str, Metered)] = {
    use Metered::*;
    &[
        (
            "big_frame_70000.bin",
            Fed {
                frames: 1,
                boundary: true,
            },
        ),
        (
            "close_mid_message.bin",
            Fed {
                frames: 2,
                boundary: false,
            },
        ),
        (
            "continuation_without_start.bin",
            Fed {
                frames: 1,
                boundary: true,
            },
        ),
        (
            "control_not_final_in_message.bin",
            Fed {
                frames: 3,
                boundary: true,
            },
        ),
        // 20,000 empty continuations: refused at the 65th data frame.
        (
            "empty_continuation_flood_20000.bin",
            TooManyFragments { frames: 65 },
        ),
        (
            "fragments_64.bin",
            Fed {
                frames: 64,
                boundary: true,
            },
        ),
        ("fragments_65.bin", TooManyFragments { frames: 65 }),
        (
            "length_2pow63.bin",
            Fed {
                frames: 1,
                boundary: false,
            },
        ),
        (
            "length_2pow63_unmasked.bin",
            Fed {
                frames: 1,
                boundary: false,
            },
        ),
        (
            "length_u64_max.bin",
            Fed {
                frames: 1,
                boundary: false,
            },
        ),
        (
            "new_message_inside_fragmented.bin",
            Fed {
                frames: 3,
                boundary: true,
            },
        ),
        (
            "non_minimal_lengths.bin",
            Fed {
                frames: 3,
                boundary: true,
            },
        ),
        // Control frames do not count as fragments, however many.
        (
            "ping_flood_inside_message.bin",
            Fed {
                frames: 20_002,
                boundary: true,
            },
        ),
        (
            "reserved_opcodes.bin",
            Fed {
                frames: 10,
                boundary: true,
            },
        ),
        (
            "rsv_bits.bin",
            Fed {
                frames: 7,
                boundary: true,
            },
        ),
        (
            "truncated_extended_length.bin",
            Fed {
                frames: 0,
                boundary: false,
            },
        ),
        (
            "truncated_header.bin",
            Fed {
                frames: 0,
                boundary: false,
            },
        ),
        (
            "truncated_mask.bin",
            Fed {
                frames: 0,
                boundary: false,
            },
        ),
        (
            "truncated_payload.bin",
            Fed {
                frames: 1,
                boundary: false,
            },
        ),
        (
            "unmasked.bin",
            Fed {
                frames: 3,
                boundary: true,
            },
        ),
        (
            "unmasked_and_masked.bin",
            Fed {
                frames: 4,
                boundary: true,
            },
        ),
    ]
};

// Every corpus stream matches the model in several chunkings and gets its known answer.
#[test]
fn frame_corpus_gets_its_known_answers() {
    let files = corpus("frames", "bin");
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    let listed: Vec<&str> = FRAME_CORPUS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names, listed,
        "tests/corpus/frames and FRAME_CORPUS disagree"
    );
    let max = Config::default().max_fragments;
    let mut wrong = vec![];
    for ((name, bytes), (_, expect)) in files.iter().zip(FRAME_CORPUS) {
        for chunks in [&[usize::MAX][..], &[2048], &[1], &[7, 1, 300]] {
            let metered = check_meter(bytes, max, chunks);
            if metered != *expect {
                wrong.push(format!(
                    "{name} in {chunks:?}: expected {expect:?}, got {metered:?}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
