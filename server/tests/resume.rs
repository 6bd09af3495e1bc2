//! `?since=` at the server's edge, without services: a malformed position
//! is refused before the upgrade, and a server that keeps no history says
//! so in its `recovery` frame and goes live. (Resuming through the real
//! history — Redis, the consumer, two servers — is tested end to end in
//! `consumer/tests/recovery.rs`.)

mod common;

use chatflow_protocol::{Position, Recovery, RecoveryReason};
use chatflow_server::BrokerKind;
use chatflow_testkit::ws;
use common::*;

const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// A malformed `since` is an HTTP 400 with a JSON reason naming it, before
/// any upgrade; a well-formed one upgrades.
#[test]
fn a_malformed_since_is_a_400_before_the_upgrade() {
    let server = start(BrokerKind::Memory);
    let addr = server.local_addr();
    for bad in ["5", "", "1-x", "1-2-3", "-1-0", "1%2D0", "1-0&since=2-0"] {
        let (status, body) = http_get(addr, &format!("/chat/1?since={bad}"), UPGRADE);
        assert_eq!(status, 400, "since={bad}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            v["error"].as_str().unwrap().contains("since"),
            "since={bad}: {body}"
        );
    }
    // (connect_to asserts the 101.)
    drop(ws::connect_to(
        addr,
        "/chat/1?since=1733090000123-0",
        TIMEOUT,
    ));
    server.shutdown().unwrap();
}

/// On a server without a history (`--broker memory`), a resume gets one
/// `recovery` frame saying `UNAVAILABLE`, with its `since` as the position,
/// and then the room's live broadcasts like any member.
#[test]
fn without_a_history_a_resume_says_unavailable_and_goes_live() {
    let server = start(BrokerKind::Memory);
    let addr = server.local_addr();
    let since = Position::new(1_733_090_000_123, 4);
    let mut resumed = ws::connect_to(addr, &format!("/chat/1?since={since}"), TIMEOUT);
    let first = ws::next_json(&mut resumed).expect("the recovery frame");
    let recovery = Recovery::parse(&first.to_string()).expect("a recovery frame");
    assert!(!recovery.recovered);
    assert_eq!(recovery.reason, Some(RecoveryReason::Unavailable));
    assert_eq!((recovery.since, recovery.position), (since, since));
    assert_eq!(recovery.replayed, 0);

    let mut sender = connect(addr, 1);
    send(&mut sender, message(7, "live after the seam", "c1"));
    assert_eq!(
        recv_kind(&mut resumed, "message")["message"],
        "live after the seam"
    );
    server.shutdown().unwrap();
}
