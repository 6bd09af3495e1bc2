//! Presence end to end (`crate::presence` has the model): real servers
//! sharing presence through the machine's Redis in a namespace of their
//! own (its keys deleted after), real WebSocket clients. Users joining on
//! two servers are listed in one member list from either, over the
//! WebSocket and over HTTP; a user with two connections leaves only when
//! both are gone; a reconnect within the grace does not flap; a server
//! killed with SIGKILL loses its users within the bound; join and leave
//! frames reach members on the other server; a storm of 2,000 joins is a
//! bounded number of frames per member; malformed requests get an error
//! and hurt no one; with RabbitMQ, presence is shared by default and a
//! JOIN counts once confirmed.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::process::Stdio;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use chatflow_protocol::Rooms;
use chatflow_server::config::{ApiConfig, PresenceConfig};
use chatflow_server::{BrokerKind, Config, PresenceMode, Server};
use chatflow_testkit::{http_request, PresenceGuard};
use common::*;
use serde_json::{json, Value};

const ROOMS: u32 = 2;

/// A port nothing listens on (bound, then released).
fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A test server `id` in `namespace` (two rooms) with `broker` and
/// `presence` (tuned by the caller), its API on port 0 over a database
/// nobody runs: presence needs none.
fn server_with(namespace: &str, id: &str, broker: BrokerKind, presence: PresenceConfig) -> Server {
    let mut config = config(broker);
    config.server_id = id.to_string();
    config.services.topology.namespace = namespace.to_string();
    config.services.topology.rooms = Rooms::new(ROOMS).unwrap();
    config.presence = presence;
    let mut api = ApiConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        threads: 2,
        pool_size: 1,
        ..ApiConfig::default()
    };
    api.database.port = dead_port();
    config.api = Some(api);
    Server::start(config).expect("server starts")
}

/// Shared presence with the defaults.
fn shared() -> PresenceConfig {
    PresenceConfig {
        mode: PresenceMode::Shared,
        ..PresenceConfig::default()
    }
}

/// A chat message of `kind` (`JOIN`, `LEAVE`, `TEXT`) from `user`.
fn said(user: u32, kind: &str) -> String {
    json!({
        "userId": user,
        "username": format!("user{user}"),
        "message": format!("{kind} from {user}"),
        "timestamp": "2026-11-27T02:00:00.123Z",
        "messageType": kind,
    })
    .to_string()
}

/// A client that keeps every presence_join/presence_leave frame it reads.
struct Member {
    client: Client,
    changes: Vec<Value>,
}

impl Member {
    fn connect(addr: SocketAddr, room: u32) -> Member {
        Member {
            client: connect(addr, room),
            changes: Vec::new(),
        }
    }

    /// The next frame; presence changes are kept on the way.
    fn next(&mut self) -> Value {
        let frame = recv(&mut self.client);
        if matches!(
            frame["type"].as_str(),
            Some("presence_join" | "presence_leave")
        ) {
            self.changes.push(frame.clone());
        }
        frame
    }

    /// Sends `text` and returns its reply (an ack or error), past
    /// broadcasts and presence frames.
    fn ask_reply(&mut self, text: String) -> Value {
        send(&mut self.client, text);
        loop {
            let frame = self.next();
            if matches!(frame["type"].as_str(), Some("ack" | "error")) {
                return frame;
            }
        }
    }

    fn say(&mut self, user: u32, kind: &str) {
        let reply = self.ask_reply(said(user, kind));
        assert_eq!(reply["type"], "ack", "{kind} of {user}: {reply}");
    }

    /// The room's whole member list over the WebSocket, every page:
    /// (count, [(userId, connections)]).
    fn list(&mut self) -> (u64, Vec<(u32, u32)>) {
        let mut members = Vec::new();
        let mut after: Option<u64> = None;
        loop {
            let request = match after {
                Some(a) => json!({"type": "presence", "after": a}),
                None => json!({"type": "presence"}),
            };
            send(&mut self.client, request.to_string());
            let page = loop {
                let frame = self.next();
                match frame["type"].as_str() {
                    Some("presence") => break frame,
                    Some("error") => panic!("presence request refused: {frame}"),
                    _ => {}
                }
            };
            for m in page["members"].as_array().unwrap() {
                members.push((
                    m["userId"].as_u64().unwrap() as u32,
                    m["connections"].as_u64().unwrap() as u32,
                ));
            }
            match page["nextAfter"].as_u64() {
                Some(next) => after = Some(next),
                None => return (page["count"].as_u64().unwrap(), members),
            }
        }
    }

    fn users(&mut self) -> Vec<u32> {
        let (count, members) = self.list();
        assert_eq!(count as usize, members.len());
        members.into_iter().map(|(user, _)| user).collect()
    }

    /// The change of `kind` that lists `user`: one kept already, or the
    /// next one read.
    fn wait_for(&mut self, kind: &str, user: u32) -> Value {
        if let Some(kept) = (self.changes.iter()).find(|f| f["type"] == kind && lists(f, user)) {
            return kept.clone();
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            assert!(Instant::now() < deadline, "no {kind} for {user}");
            let frame = self.next();
            if frame["type"] == kind && lists(&frame, user) {
                return frame;
            }
        }
    }

    /// The kept changes of `kind` that list `user`.
    fn changes_of(&self, kind: &str, user: u32) -> usize {
        (self.changes.iter())
            .filter(|f| f["type"] == kind && lists(f, user))
            .count()
    }
}

fn lists(frame: &Value, user: u32) -> bool {
    (frame["users"].as_array().unwrap().iter()).any(|u| u["userId"] == user)
}

/// Polls `member`'s list until it holds exactly `users`.
fn eventually_lists(member: &mut Member, users: &[u32]) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let now = member.users();
        if now == users {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "listed {now:?}, expected {users:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn get(api: SocketAddr, path: &str) -> (u16, Value) {
    let response = http_request(api, "GET", path, TIMEOUT);
    let body = serde_json::from_str(&response.body)
        .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {}", response.body));
    (response.status, body)
}

/// Two servers, one member list: users who joined on either are listed
/// on both, over the WebSocket and over HTTP, with the counts per room;
/// bad parameters are a 400 naming them.
#[test]
fn users_joining_on_two_servers_are_in_one_member_list_from_either() {
    let namespace = unique_namespace("presence-two");
    let _guard = PresenceGuard(namespace.clone());
    let a = server_with(&namespace, "a", BrokerKind::Memory, shared());
    let b = server_with(&namespace, "b", BrokerKind::Memory, shared());
    let mut on_a = Member::connect(a.local_addr(), 1);
    let mut on_b = Member::connect(b.local_addr(), 1);
    let mut also_b = Member::connect(b.local_addr(), 1);
    on_a.say(1, "JOIN");
    // Its own JOIN is in the answer to the request that follows its ack.
    assert_eq!(on_a.users(), [1]);
    on_b.say(2, "JOIN");
    also_b.say(3, "JOIN");
    // A TEXT makes no one present; a room is its own.
    on_a.say(4, "TEXT");
    let mut room2 = Member::connect(a.local_addr(), 2);
    room2.say(5, "JOIN");
    eventually_lists(&mut on_a, &[1, 2, 3]);
    eventually_lists(&mut on_b, &[1, 2, 3]);
    assert_eq!(room2.users(), [5]);

    for api in [a.api_addr().unwrap(), b.api_addr().unwrap()] {
        let (status, doc) = get(api, "/api/rooms/1/presence");
        assert_eq!(status, 200, "{doc}");
        assert_eq!(
            (doc["roomId"].clone(), doc["count"].clone()),
            (json!(1), json!(3))
        );
        assert_eq!(
            (doc["mode"].clone(), doc["servers"].clone()),
            (json!("shared"), json!(2))
        );
        let users: Vec<u64> = (doc["members"].as_array().unwrap().iter())
            .map(|m| m["userId"].as_u64().unwrap())
            .collect();
        assert_eq!(users, [1, 2, 3]);
        assert_eq!(doc["members"][1]["username"], "user2");
        assert_eq!(doc["members"][1]["connections"], 1);
        assert!(doc["nextAfter"].is_null());
        let (_, page) = get(api, "/api/rooms/1/presence?limit=2&after=1");
        assert_eq!(page["members"].as_array().unwrap().len(), 2, "{page}");
        assert_eq!(page["nextAfter"], json!(null), "{page}");
        let (_, page) = get(api, "/api/rooms/1/presence?limit=1");
        assert_eq!(page["nextAfter"], json!(1), "{page}");
        for (path, parameter) in [
            ("/api/rooms/1/presence?limit=0", "limit"),
            ("/api/rooms/1/presence?after=x", "after"),
            ("/api/rooms/1/presence?after=-1", "after"),
            ("/api/rooms/1/presence?since=1", "since"),
            ("/api/rooms/3/presence", "roomId"),
            ("/api/presence?room=1", "room"),
        ] {
            let (status, doc) = get(api, path);
            assert_eq!(
                (status, doc["parameter"].as_str()),
                (400, Some(parameter)),
                "{path}: {doc}"
            );
        }
    }
    eventually("both count the rooms", || {
        [&a, &b].iter().all(|server| {
            let (_, doc) = get(server.api_addr().unwrap(), "/api/presence");
            doc["rooms"][0]["count"] == 3 && doc["rooms"][1]["count"] == 1 && doc["total"] == 4
        })
    });
    let (_, counts) = get(a.api_addr().unwrap(), "/api/presence");
    assert_eq!(counts["rooms"][0]["local"], 1, "{counts}");
    assert_eq!(counts["local"], 2, "{counts}");
    assert_eq!(counts["servers"], 2, "{counts}");
    assert_eq!(counts["redis"]["connected"], true, "{counts}");
    // The dashboard's document carries the same counts.
    let (_, live) = get(a.api_addr().unwrap(), "/api/live");
    assert_eq!(live["presence"]["rooms"][0]["count"], 3, "{live}");
    drop((on_a, on_b, also_b, room2));
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

/// One user, two connections, on two servers: closing one keeps them
/// listed (its grace passes and they stay: the other holds them);
/// closing the other removes them once the grace is over, and a member
/// watching hears one presence_leave, after the second close only.
#[test]
fn a_user_with_two_connections_leaves_only_when_both_are_gone() {
    let namespace = unique_namespace("presence-twice");
    let _guard = PresenceGuard(namespace.clone());
    let grace = Duration::from_millis(300);
    let tuned = PresenceConfig { grace, ..shared() };
    let a = server_with(&namespace, "a", BrokerKind::Memory, tuned.clone());
    let b = server_with(&namespace, "b", BrokerKind::Memory, tuned);
    let mut watcher = Member::connect(a.local_addr(), 1);
    watcher.say(99, "JOIN");
    let mut first = Member::connect(a.local_addr(), 1);
    let mut second = Member::connect(b.local_addr(), 1);
    first.say(7, "JOIN");
    second.say(7, "JOIN");
    eventually("user 7 listed with both connections", || {
        watcher.list().1 == [(7, 2), (99, 1)]
    });
    watcher.wait_for("presence_join", 7);

    drop(first);
    eventually("one connection left", || {
        watcher.list().1 == [(7, 1), (99, 1)]
    });
    // Well past the grace (and a poll of the other server): still there.
    thread::sleep(grace * 4 + Duration::from_secs(1));
    assert_eq!(watcher.list().1, [(7, 1), (99, 1)]);
    assert_eq!(watcher.changes_of("presence_leave", 7), 0);

    drop(second);
    let leave = watcher.wait_for("presence_leave", 7);
    assert_eq!(leave["count"], 1, "{leave}");
    assert_eq!(watcher.users(), [99]);
    assert_eq!(watcher.changes_of("presence_leave", 7), 1);
    assert_eq!(watcher.changes_of("presence_join", 7), 1);
    drop(watcher);
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

/// A user who reconnects within the grace (here long, 30 s) is never
/// announced as gone; an explicit LEAVE removes them at once, grace or
/// not; LEAVE on a connection that never joined them changes nothing.
#[test]
fn a_reconnect_within_the_grace_does_not_flap_and_leave_is_at_once() {
    let namespace = unique_namespace("presence-grace");
    let _guard = PresenceGuard(namespace.clone());
    let tuned = PresenceConfig {
        grace: Duration::from_secs(30),
        ..shared()
    };
    let a = server_with(&namespace, "a", BrokerKind::Memory, tuned.clone());
    let b = server_with(&namespace, "b", BrokerKind::Memory, tuned);
    let mut watcher = Member::connect(b.local_addr(), 1);
    watcher.say(99, "JOIN");
    let mut user = Member::connect(a.local_addr(), 1);
    user.say(7, "JOIN");
    watcher.wait_for("presence_join", 7);

    drop(user);
    eventually("listed with no connection (the grace runs)", || {
        watcher.list().1 == [(7, 0), (99, 1)]
    });
    let mut again = Member::connect(a.local_addr(), 1);
    again.say(7, "JOIN");
    eventually("back with a connection", || {
        watcher.list().1 == [(7, 1), (99, 1)]
    });
    // Someone else's LEAVE for 7, on a connection that never joined 7.
    let mut other = Member::connect(a.local_addr(), 1);
    other.say(7, "LEAVE");
    again.say(7, "LEAVE");
    watcher.wait_for("presence_leave", 7);
    assert_eq!(watcher.users(), [99]);
    assert_eq!(
        watcher.changes_of("presence_join", 7),
        1,
        "{:?}",
        watcher.changes
    );
    assert_eq!(
        watcher.changes_of("presence_leave", 7),
        1,
        "{:?}",
        watcher.changes
    );
    drop((watcher, again, other));
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

/// A member on one server hears who arrives and leaves on the other, as
/// presence_join / presence_leave frames with the room's count.
#[test]
fn join_and_leave_frames_reach_members_on_the_other_server() {
    let namespace = unique_namespace("presence-frames");
    let _guard = PresenceGuard(namespace.clone());
    let a = server_with(&namespace, "a", BrokerKind::Memory, shared());
    let b = server_with(&namespace, "b", BrokerKind::Memory, shared());
    let mut watcher = Member::connect(a.local_addr(), 2);
    watcher.say(1, "JOIN");
    let own = watcher.wait_for("presence_join", 1);
    assert_eq!(own["roomId"], 2, "{own}");
    let mut far = Member::connect(b.local_addr(), 2);
    far.say(2, "JOIN");
    let joined = watcher.wait_for("presence_join", 2);
    assert_eq!(
        (joined["count"].clone(), joined["more"].clone()),
        (json!(2), json!(0)),
        "{joined}"
    );
    assert_eq!(joined["users"][0]["username"], "user2", "{joined}");
    // The arrival's own connection hears about itself and the others too.
    assert_eq!(far.users(), [1, 2]);
    far.say(2, "LEAVE");
    let left = watcher.wait_for("presence_leave", 2);
    assert_eq!(left["count"], 1, "{left}");
    // A client that never joined nor asked hears none of it.
    let mut reader = connect(b.local_addr(), 2);
    far.say(3, "JOIN");
    watcher.wait_for("presence_join", 3);
    chatflow_testkit::ws::set_read_timeout(&mut reader, Duration::from_millis(300));
    while let Some(frame) = chatflow_testkit::ws::next_json(&mut reader) {
        assert_eq!(frame["type"], "message", "{frame}");
    }
    drop((watcher, far, reader));
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

/// A server killed with SIGKILL cleans nothing up: its users disappear
/// from the other server's list once its presence expires, within the
/// bound (expiry + a poll + a frame interval, with room for a busy
/// machine), and that server's members hear them leave. The defaults:
/// heartbeat 2 s, expiry 3 heartbeats.
#[test]
fn a_killed_servers_users_disappear_within_the_bound() {
    let namespace = unique_namespace("presence-kill");
    let _guard = PresenceGuard(namespace.clone());
    let child = memory_binary(1)
        .args(["--presence", "shared", "--drain-secs", "0"])
        .args(["--rooms", &ROOMS.to_string(), "--namespace", &namespace])
        .args(["--server-id", "doomed"])
        .stderr(Stdio::null())
        .spawn()
        .expect("the server binary starts");
    let mut child = Reaper(child);
    let (doomed, _stdout) = listening_addr(&mut child.0);
    let survivor = server_with(&namespace, "survivor", BrokerKind::Memory, shared());
    let mut watcher = Member::connect(survivor.local_addr(), 1);
    watcher.say(100, "JOIN");
    let mut victims: Vec<Member> = (1..=3)
        .map(|user| {
            let mut member = Member::connect(doomed, 1);
            member.say(user, "JOIN");
            member
        })
        .collect();
    eventually_lists(&mut watcher, &[1, 2, 3, 100]);
    eventually_lists(&mut victims[0], &[1, 2, 3, 100]);

    let config = PresenceConfig::default();
    let bound = config.expiry + config.poll() + config.frame_interval;
    child.0.kill().expect("SIGKILL");
    let killed = Instant::now();
    let _ = child.0.wait();
    let slack = Duration::from_secs(5);
    loop {
        if watcher.users() == [100] {
            break;
        }
        assert!(
            killed.elapsed() < bound + slack,
            "still listed {:?} after the kill",
            killed.elapsed()
        );
        thread::sleep(Duration::from_millis(20));
    }
    let gone = killed.elapsed();
    eprintln!(
        "kill -9: its users left the other server's list {:.2} s after the kill (bound {:.2} s: expiry {:.1} s + poll + frame interval)",
        gone.as_secs_f64(),
        bound.as_secs_f64(),
        config.expiry.as_secs_f64()
    );
    // Not before the expiry's last heartbeat could have run out.
    assert!(gone >= config.expiry - config.heartbeat, "{gone:?}");
    for user in 1..=3 {
        watcher.wait_for("presence_leave", user);
    }
    victims.clear();
    drop(watcher);
    survivor.shutdown().unwrap();
}

/// 2,000 connections join at once, half on each of two servers: every
/// member gets a handful of presence_join frames — one per frame interval
/// at most, batched — not one per arrival, and the last says 2,000.
#[test]
fn a_storm_of_2000_joins_is_a_bounded_number_of_frames_per_member() {
    assert!(
        raise_fd_limit() >= 5_000,
        "this test needs 5,000 descriptors"
    );
    let namespace = unique_namespace("presence-storm");
    let _guard = PresenceGuard(namespace.clone());
    // Acks without broadcasts (`--broker none`): what is measured is
    // presence's frames, not 2,000 JOIN messages broadcast to 2,000.
    let a = server_with(&namespace, "a", BrokerKind::None, shared());
    let b = server_with(&namespace, "b", BrokerKind::None, shared());
    let interval = PresenceConfig::default().frame_interval;
    const THREADS: usize = 8;
    const PER_THREAD: usize = 250;
    const TOTAL: usize = THREADS * PER_THREAD;
    let connected = Arc::new(Barrier::new(THREADS + 1));
    let settled = Arc::new(Barrier::new(THREADS + 1));
    let addrs = [a.local_addr(), b.local_addr()];
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (connected, settled) = (connected.clone(), settled.clone());
            let addr = addrs[t % 2];
            thread::spawn(move || {
                let mut clients: Vec<Client> = (0..PER_THREAD).map(|_| connect(addr, 1)).collect();
                connected.wait();
                for (i, client) in clients.iter_mut().enumerate() {
                    send(client, said((t * PER_THREAD + i) as u32 + 1, "JOIN"));
                }
                settled.wait();
                // Everything has arrived by now: read what is there.
                (clients.iter_mut())
                    .map(|client| {
                        chatflow_testkit::ws::set_read_timeout(client, Duration::from_millis(20));
                        let (mut acks, mut frames, mut last_count) = (0, 0, 0);
                        while let Some(frame) = chatflow_testkit::ws::next_json(client) {
                            match frame["type"].as_str() {
                                Some("ack") => acks += 1,
                                Some("presence_join") => {
                                    frames += 1;
                                    last_count = frame["count"].as_u64().unwrap();
                                }
                                other => panic!("unexpected {other:?}: {frame}"),
                            }
                        }
                        assert_eq!(acks, 1);
                        (frames, last_count)
                    })
                    .collect::<Vec<(u64, u64)>>()
            })
        })
        .collect();
    connected.wait();
    let started = Instant::now();
    eventually("both servers count 2,000 members", || {
        [&a, &b].iter().all(|server| {
            let (_, doc) = get(server.api_addr().unwrap(), "/api/presence");
            doc["rooms"][0]["count"] == TOTAL as u64
        })
    });
    let storm = started.elapsed();
    // The last batch goes out within an interval (and a poll) of the last
    // change; wait that out, twice over.
    thread::sleep(2 * (interval + Duration::from_millis(250)));
    settled.wait();
    let per_member: Vec<(u64, u64)> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("a storm thread"))
        .collect();
    assert_eq!(per_member.len(), TOTAL);
    let most = per_member.iter().map(|&(f, _)| f).max().unwrap();
    let mean = per_member.iter().map(|&(f, _)| f).sum::<u64>() as f64 / TOTAL as f64;
    // At most one join frame per interval from a member's own JOIN to the
    // end of the storm, plus the first (sent at once) and the last.
    let bound = (storm.as_secs_f64() / interval.as_secs_f64()).ceil() as u64 + 4;
    eprintln!(
        "storm: {TOTAL} joins in {:.2} s; presence_join frames per member: mean {mean:.1}, max {most} (bound {bound}; unbatched it would be up to {TOTAL})",
        storm.as_secs_f64()
    );
    assert!(
        most <= bound,
        "{most} frames for one member (bound {bound})"
    );
    assert!(
        per_member.iter().all(|&(f, _)| f >= 1),
        "every member heard something"
    );
    assert!(
        per_member.iter().all(|&(_, count)| count == TOTAL as u64),
        "every member's last frame counts all 2,000"
    );
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

/// Malformed presence requests get an error frame naming the field and
/// the connection goes on; a flood of requests is bounded (refused past 8
/// waiting, then answered again once read); a neighbour is untouched.
/// Presence off: the request says so, JOIN is a plain message. A
/// connection holds at most `--presence-max-users-per-connection` users.
#[test]
fn bad_presence_requests_get_an_error_and_hurt_no_one() {
    let namespace = unique_namespace("presence-hostile");
    let _guard = PresenceGuard(namespace.clone());
    let tuned = PresenceConfig {
        max_users_per_connection: 3,
        ..PresenceConfig::default()
    };
    let server = server_with(&namespace, "h", BrokerKind::Memory, tuned);
    let addr = server.local_addr();
    let mut canary = Member::connect(addr, 1);
    canary.say(50, "JOIN");
    let mut hostile = Member::connect(addr, 1);
    for (text, code, field, reason) in [
        (
            r#"{"type":"presense"}"#,
            "VALIDATION_FAILED",
            "type",
            "UNKNOWN_VALUE",
        ),
        (r#"{"type":7}"#, "VALIDATION_FAILED", "type", "WRONG_TYPE"),
        (
            r#"{"type":"presence","after":-5}"#,
            "VALIDATION_FAILED",
            "after",
            "OUT_OF_RANGE",
        ),
        (
            r#"{"type":"presence","after":"x"}"#,
            "VALIDATION_FAILED",
            "after",
            "WRONG_TYPE",
        ),
        (
            r#"{"type":"presence","type":"presence"}"#,
            "BAD_JSON",
            "",
            "",
        ),
        (r#"{"type":"presence","after":1e999}"#, "BAD_JSON", "", ""),
    ] {
        let reply = hostile.ask_reply(text.to_string());
        assert_eq!(
            (reply["type"].as_str(), reply["code"].as_str()),
            (Some("error"), Some(code)),
            "{text}: {reply}"
        );
        if !field.is_empty() {
            assert_eq!(
                (reply["field"].as_str(), reply["reason"].as_str()),
                (Some(field), Some(reason)),
                "{text}: {reply}"
            );
        }
    }
    // A flood without reading: past 8 waiting, refused; each answered once.
    for _ in 0..100 {
        send(&mut hostile.client, json!({"type": "presence"}).to_string());
    }
    let (mut answers, mut refused) = (0, 0);
    while answers + refused < 100 {
        let frame = hostile.next();
        match frame["type"].as_str() {
            Some("presence") => answers += 1,
            Some("error") => {
                assert_eq!(frame["code"], "UNAVAILABLE", "{frame}");
                refused += 1;
            }
            _ => {}
        }
    }
    assert!(
        answers >= 8 && refused >= 1,
        "{answers} answered, {refused} refused"
    );
    assert_eq!(hostile.users(), [50], "answered again once read");
    assert_eq!(canary.users(), [50]);
    canary.say(50, "TEXT");

    // Three users on one connection; a fourth JOIN is acked, not counted.
    for user in 1..=4 {
        hostile.say(user, "JOIN");
    }
    assert_eq!(hostile.users(), [1, 2, 3, 50]);
    assert_eq!(health(addr)["totals"]["presenceJoinsOverLimit"], 1);
    drop((canary, hostile));
    server.shutdown().unwrap();

    // Presence off.
    let off = server_with(
        &namespace,
        "off",
        BrokerKind::Memory,
        PresenceConfig {
            mode: PresenceMode::Off,
            ..PresenceConfig::default()
        },
    );
    let mut client = Member::connect(off.local_addr(), 1);
    client.say(1, "JOIN");
    let reply = client.ask_reply(json!({"type": "presence"}).to_string());
    assert_eq!(reply["code"], "UNAVAILABLE", "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("--presence off"),
        "{reply}"
    );
    let (status, doc) = get(off.api_addr().unwrap(), "/api/presence");
    assert_eq!(status, 503, "{doc}");
    let (_, live) = get(off.api_addr().unwrap(), "/api/live");
    assert!(
        live["presence"]["error"].as_str().unwrap().contains("off"),
        "{live}"
    );
    drop(client);
    off.shutdown().unwrap();
}

/// With RabbitMQ presence is shared by default (`--presence auto`), and
/// a JOIN counts once the broker confirmed it (its ack is out).
#[test]
fn with_rabbitmq_presence_is_shared_by_default() {
    let namespace = unique_namespace("presence-rabbit");
    let config_a = Config {
        server_id: "ra".to_string(),
        ..rabbit_config(&namespace, ROOMS)
    };
    let _guard = TopologyGuard(config_a.services.topology.clone());
    assert_eq!(config_a.presence.mode, PresenceMode::Auto);
    let config_b = Config {
        server_id: "rb".to_string(),
        ..config_a.clone()
    };
    let a = Server::start(config_a).expect("server a starts");
    let b = Server::start(config_b).expect("server b starts");
    let mut on_a = Member::connect(a.local_addr(), 1);
    let mut on_b = Member::connect(b.local_addr(), 1);
    on_a.say(11, "JOIN");
    assert_eq!(on_a.users(), [11]);
    on_b.say(12, "JOIN");
    eventually_lists(&mut on_a, &[11, 12]);
    eventually_lists(&mut on_b, &[11, 12]);
    drop((on_a, on_b));
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}
