//! The live dashboard (`GET /`, server/API.md) in a real browser: Debian's
//! Chromium, headless, loads the page from a running server
//! (`--broker memory`, its database unreachable: nothing shared is used),
//! lets it poll `/api/live` for a few seconds of virtual time, and dumps
//! the DOM the page built. The page writes every number it draws into
//! data-* attributes, so the checks read what was drawn: lines with points
//! from live traffic, the parts this broker has not shown as unavailable,
//! and the error banner while the API does not answer — and gone again
//! when it answers again.
//!
//! Chromium runs in its own process group, killed as a whole when its
//! [`Browser`] is dropped (also when a check fails), and with a fresh
//! profile directory that is removed then.

mod common;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use chatflow_server::config::ApiConfig;
use chatflow_server::{BrokerKind, Config, Server};
use chatflow_testkit::http_request;
use common::*;
use redis::Commands as _;
use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";
/// Virtual time the page gets: five polls at one a second.
const BUDGET_MS: u64 = 5000;
/// Real time a browser run may take before it is killed (start-up on a
/// busy two-core machine takes a few seconds; virtual time runs faster
/// than the clock).
const BROWSER_DEADLINE: Duration = Duration::from_secs(40);

/// A port nothing listens on (bound, then released).
fn dead_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A memory-broker server with its API on port 0, whose database is a
/// dead port: the dashboard must not need PostgreSQL, Redis or RabbitMQ.
fn server() -> Server {
    let mut api = ApiConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        threads: 2,
        pool_size: 2,
        pool_timeout: Duration::from_millis(500),
        ..ApiConfig::default()
    };
    api.database.port = dead_port();
    Server::start(Config {
        api: Some(api),
        ..config(BrokerKind::Memory)
    })
    .expect("server starts")
}

/// Traffic for the page to draw: one client sending (and reading its acks
/// and broadcasts) until stopped, one idle client in another room, so
/// both show among the connections; the idle one joined as a user, so
/// room 2 has one member.
struct Traffic {
    stop: Arc<AtomicBool>,
    sender: Option<JoinHandle<u64>>,
    _idle: Client,
}

impl Traffic {
    fn start(addr: SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let mut client = connect(addr, 1);
        let mut idle = connect(addr, 2);
        let mut join: Value = serde_json::from_str(&message(8, "here", "j")).unwrap();
        join["messageType"] = "JOIN".into();
        assert_eq!(request(&mut idle, join.to_string())["type"], "ack");
        let sender = {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut acked = 0;
                while !stop.load(Ordering::Relaxed) {
                    let reply = request(&mut client, message(7, "hello", &format!("m{acked}")));
                    assert_eq!(reply["type"], "ack", "{reply}");
                    acked += 1;
                    thread::sleep(Duration::from_millis(5));
                }
                acked
            })
        };
        Traffic {
            stop,
            sender: Some(sender),
            _idle: idle,
        }
    }

    /// Stops sending; the number of messages acked.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.sender.take().unwrap().join().expect("the sender")
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn live(api: SocketAddr) -> Value {
    let response = http_request(api, "GET", "/api/live", TIMEOUT);
    assert_eq!(response.status, 200, "{}", response.body);
    serde_json::from_str(&response.body).expect("JSON")
}

/// Waits until this server's snapshot shows traffic: a rate and acks.
fn wait_for_traffic(api: SocketAddr) {
    eventually("the snapshot shows accepted messages and acks", || {
        let doc = live(api);
        let me = &doc["servers"]["servers"][0];
        me["acceptedPerSecond"].as_f64() > Some(0.0)
            && me["ackLatencyMs"]["count"].as_u64() > Some(0)
    });
}

/// Headless Chromium dumping the DOM of one page after [`BUDGET_MS`] of
/// virtual time. Dropping it kills its whole process group and removes
/// its profile.
struct Browser {
    child: Child,
    profile: PathBuf,
}

impl Browser {
    fn dump_dom(url: &str, budget_ms: u64) -> String {
        assert!(
            std::path::Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: run scripts/ensure-tools.sh chromium"
        );
        let profile = std::env::temp_dir().join(unique_namespace("chromium-profile"));
        std::fs::create_dir_all(&profile).unwrap();
        let child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("--virtual-time-budget={budget_ms}"))
            .arg("--dump-dom")
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group: renderers and helpers die with it.
            .process_group(0)
            .spawn()
            .expect("chromium starts");
        let mut browser = Browser { child, profile };
        let stdout = reader(browser.child.stdout.take().unwrap());
        let stderr = reader(browser.child.stderr.take().unwrap());
        let started = Instant::now();
        let status = loop {
            if let Some(status) = browser.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < BROWSER_DEADLINE,
                "chromium did not finish within {BROWSER_DEADLINE:?}"
            );
            thread::sleep(Duration::from_millis(50));
        };
        browser.kill_group();
        let dom = stdout.join().unwrap();
        let errors = stderr.join().unwrap();
        assert!(
            status.success() && dom.contains("</html>"),
            "chromium exited with {status}; stderr:\n{errors}\nstdout:\n{dom}"
        );
        dom
    }

    /// SIGKILL to every process of the group (gone already is fine).
    fn kill_group(&self) {
        // SAFETY: kill(2) with a negative pid signals that process group
        // and touches no memory of ours.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.kill_group();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn reader(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// The attributes of every `<tag …>` in `html`, in document order.
fn tags(html: &str, tag: &str) -> Vec<HashMap<String, String>> {
    let open = format!("<{tag} ");
    let mut found = Vec::new();
    let mut rest = html;
    while let Some(at) = rest.find(&open) {
        rest = &rest[at + open.len()..];
        let end = rest.find('>').unwrap_or(rest.len());
        found.push(attributes(&rest[..end]));
        rest = &rest[end..];
    }
    found
}

/// `name="value"` pairs (and bare names, as empty values).
fn attributes(mut text: &str) -> HashMap<String, String> {
    let mut map = HashMap::new();
    loop {
        text = text.trim_start_matches([' ', '/', '\n']);
        if text.is_empty() {
            return map;
        }
        let name_end = text.find(['=', ' ', '/']).unwrap_or(text.len());
        let name = text[..name_end].to_string();
        text = &text[name_end..];
        if let Some(quoted) = text.strip_prefix("=\"") {
            let close = quoted.find('"').unwrap_or(quoted.len());
            map.insert(name, quoted[..close].to_string());
            text = &quoted[(close + 1).min(quoted.len())..];
        } else {
            map.insert(name, String::new());
        }
    }
}

/// One chart as drawn: its figure's attributes and its lines'.
struct Chart {
    figure: HashMap<String, String>,
    paths: Vec<HashMap<String, String>>,
}

impl Chart {
    fn state(&self) -> &str {
        &self.figure["data-state"]
    }

    fn line(&self, series: &str) -> &HashMap<String, String> {
        self.paths
            .iter()
            .find(|p| p["data-series"] == series)
            .unwrap_or_else(|| panic!("no line {series:?} in {:?}", self.figure))
    }

    /// The points a line has, and the last value it drew.
    fn points_and_last(&self, series: &str) -> (usize, f64) {
        let line = self.line(series);
        let points = line["data-points"].parse().unwrap();
        let last = line["data-last"].parse().unwrap_or(f64::NAN);
        (points, last)
    }
}

/// Every chart of the page by `data-chart`.
fn charts(dom: &str) -> HashMap<String, Chart> {
    let mut charts = HashMap::new();
    for part in dom.split("<figure ").skip(1) {
        let figure = attributes(&part[..part.find('>').unwrap()]);
        let end = part.find("</figure>").unwrap_or(part.len());
        let paths = tags(&part[..end], "path");
        charts.insert(figure["data-chart"].clone(), Chart { figure, paths });
    }
    charts
}

/// Each health tile's state by component.
fn health(dom: &str) -> HashMap<String, String> {
    tags(dom, "div")
        .into_iter()
        .filter(|t| t.contains_key("data-component"))
        .map(|t| (t["data-component"].clone(), t["data-health"].clone()))
        .collect()
}

fn body(dom: &str) -> HashMap<String, String> {
    tags(dom, "body").remove(0)
}

fn banner(dom: &str) -> (HashMap<String, String>, String) {
    let at = dom.find("<div id=\"banner\"").expect("the banner element");
    let part = &dom[at + 1..];
    let attrs = attributes(&part[4..part.find('>').unwrap()]);
    let text = &part[part.find('>').unwrap() + 1..part.find("</div>").unwrap()];
    (attrs, text.to_string())
}

fn number(attrs: &HashMap<String, String>, name: &str) -> u64 {
    attrs[name]
        .parse()
        .unwrap_or_else(|_| panic!("{name}: {attrs:?}"))
}

/// The page loads from the server alone, polls it and draws its charts
/// from live traffic: rates and ack latency above zero, one line per
/// worker adding up to the open connections; without Redis, RabbitMQ or a
/// consumer those parts say they are unavailable and the page goes on.
#[test]
fn the_page_draws_live_traffic_and_marks_what_this_broker_lacks() {
    let server = server();
    let api = server.api_addr().unwrap();
    let page = http_request(api, "GET", "/", TIMEOUT);
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    let traffic = Traffic::start(server.local_addr());
    wait_for_traffic(api);
    let response = http_request(api, "GET", "/api/live", TIMEOUT);
    assert_eq!(response.header("Access-Control-Allow-Origin"), Some("*"));

    let dom = Browser::dump_dom(&format!("http://{api}/"), BUDGET_MS);
    let acked = traffic.stop();
    assert!(acked > 0);

    let body = body(&dom);
    assert!(!body.contains_key("data-render-error"), "{body:?}");
    assert_eq!(body["data-state"], "ok", "{body:?}");
    assert!(number(&body, "data-polls") >= 3, "{body:?}");
    assert_eq!(number(&body, "data-outages"), 0);
    assert!(
        banner(&dom).0.contains_key("hidden"),
        "no banner while it answers"
    );

    let charts = charts(&dom);
    let throughput = &charts["throughput"];
    assert_eq!(throughput.state(), "data");
    for series in ["in", "out"] {
        let (points, last) = throughput.points_and_last(series);
        assert!(
            points >= 3 && last > 0.0,
            "{series}: {points} points, last {last}"
        );
        let d = &throughput.line(series)["d"];
        assert!(
            d.starts_with('M') && d.matches('L').count() >= 2,
            "{series}: {d}"
        );
    }
    let (_, p99) = charts["ack"].points_and_last("p99");
    assert!(p99 > 0.0, "ack p99 {p99}");
    let connections = &charts["connections"];
    assert_eq!(connections.paths.len(), 2, "one line per worker");
    let open: f64 = (connections.paths.iter())
        .map(|p| p["data-last"].parse::<f64>().unwrap())
        .sum();
    assert_eq!(open, 2.0, "the sender and the idle client");
    // The idle client's JOIN: one member, in room 2 (presence is local
    // with --broker memory).
    let presence = &charts["presence"];
    assert_eq!(presence.state(), "data");
    assert_eq!(presence.points_and_last("total").1, 1.0);
    assert_eq!(presence.points_and_last("room-2").1, 1.0);
    assert!(
        presence.paths.iter().all(|p| p["data-series"] != "room-1"),
        "room 1 has no member"
    );
    for name in ["lag", "queues", "rows", "commit"] {
        let chart = &charts[name];
        assert_eq!(chart.state(), "unavailable", "{name}");
        assert_eq!(
            chart.figure["data-reason"], "not available with --broker memory",
            "{name}"
        );
        assert!(chart.paths.is_empty(), "{name}");
    }

    let tiles = health(&dom);
    assert_eq!(tiles["api"], "ok");
    assert_eq!(tiles["server:test"], "ok");
    for component in ["rabbitmq", "redis", "postgresql"] {
        assert_eq!(tiles[component], "unavailable", "{component}: {tiles:?}");
    }
    assert!(dom.contains("data-server=\"test\""), "the servers table");
    server.shutdown().unwrap();
}

/// A relay in front of the API that answers `/api/live` requests number
/// `fail` (counting from 1) with a dropped connection, as an API that
/// stopped answering, and relays everything else (one request per
/// connection).
struct FlakyApi {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    dropped: Arc<AtomicU64>,
}

impl FlakyApi {
    fn start(upstream: SocketAddr, fail: std::ops::RangeInclusive<u64>) -> FlakyApi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let acceptor = {
            let (stop, dropped) = (stop.clone(), dropped.clone());
            thread::spawn(move || {
                let polls = Arc::new(AtomicU64::new(0));
                let mut relays = Vec::new();
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let (polls, dropped, fail) = (polls.clone(), dropped.clone(), fail.clone());
                    relays.push(thread::spawn(move || {
                        let _ = relay(client, upstream, &polls, &fail, &dropped);
                    }));
                }
                for relay in relays {
                    let _ = relay.join();
                }
            })
        };
        FlakyApi {
            addr,
            stop,
            acceptor: Some(acceptor),
            dropped,
        }
    }
}

impl Drop for FlakyApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the acceptor out of `accept` so it sees `stop`.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn relay(
    mut client: TcpStream,
    upstream: SocketAddr,
    polls: &AtomicU64,
    fail: &std::ops::RangeInclusive<u64>,
    dropped: &AtomicU64,
) -> io::Result<()> {
    client.set_read_timeout(Some(TIMEOUT))?;
    let mut head = Vec::new();
    let mut byte = [0; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 {
            return Ok(()); // a connection opened and never used
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let target = head.split(' ').nth(1).unwrap_or("/").to_string();
    if target.starts_with("/api/live") {
        let n = polls.fetch_add(1, Ordering::SeqCst) + 1;
        if fail.contains(&n) {
            dropped.fetch_add(1, Ordering::SeqCst);
            return client.shutdown(Shutdown::Both);
        }
    }
    let mut server = TcpStream::connect(upstream)?;
    server.set_read_timeout(Some(TIMEOUT))?;
    write!(
        server,
        "GET {target} HTTP/1.1\r\nHost: {upstream}\r\nConnection: close\r\n\r\n"
    )?;
    io::copy(&mut server, &mut client)?;
    client.shutdown(Shutdown::Both)
}

/// Polls 3 to 5 get no answer: the banner comes up (one outage counted)
/// and the lines break; the polls after it succeed, the banner goes and
/// the lines go on.
#[test]
fn the_banner_comes_when_the_api_stops_answering_and_goes_when_it_is_back() {
    let server = server();
    let api = server.api_addr().unwrap();
    let traffic = Traffic::start(server.local_addr());
    wait_for_traffic(api);
    let flaky = FlakyApi::start(api, 3..=5);

    let dom = Browser::dump_dom(&format!("http://{}/", flaky.addr), 9000);
    traffic.stop();
    assert!(
        flaky.dropped.load(Ordering::SeqCst) >= 1,
        "the outage happened"
    );

    let body = body(&dom);
    assert!(!body.contains_key("data-render-error"), "{body:?}");
    assert_eq!(number(&body, "data-outages"), 1, "{body:?}");
    assert_eq!(body["data-state"], "ok", "recovered: {body:?}");
    assert_eq!(number(&body, "data-failures"), 0);
    assert!(banner(&dom).0.contains_key("hidden"), "the banner went");
    let charts = charts(&dom);
    let throughput = &charts["throughput"];
    let (points, last) = throughput.points_and_last("in");
    assert!(points >= 4 && last > 0.0, "{points} points, last {last}");
    let d = &throughput.line("in")["d"];
    assert!(d.matches('M').count() >= 2, "the outage is a gap: {d}");
    drop(flaky);
    server.shutdown().unwrap();
}

/// Pointed (`?api=`) at a port where nothing answers, the page still
/// loads, says so in the banner on every poll, and draws no line.
#[test]
fn the_banner_says_the_api_is_down_when_nothing_answers() {
    let server = server();
    let api = server.api_addr().unwrap();
    let dead = format!("http://127.0.0.1:{}", dead_port());
    let refused = http_request(api, "GET", "/?every=5", TIMEOUT);
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.body.contains("\"parameter\":\"every\""),
        "{}",
        refused.body
    );

    let dom = Browser::dump_dom(&format!("http://{api}/?api={dead}"), BUDGET_MS);
    let body = body(&dom);
    assert!(!body.contains_key("data-render-error"), "{body:?}");
    assert_eq!(body["data-state"], "error", "{body:?}");
    assert!(number(&body, "data-failures") >= 3, "{body:?}");
    assert_eq!(number(&body, "data-outages"), 1);
    let (attrs, text) = banner(&dom);
    assert!(!attrs.contains_key("hidden"), "the banner shows");
    assert!(
        text.contains(&format!("The API at {dead}/api/live is not answering")),
        "{text}"
    );
    for (name, chart) in charts(&dom) {
        assert!(chart.paths.is_empty(), "{name} drew a line without data");
    }
    server.shutdown().unwrap();
}

/// A consumer's snapshot in the fleet registry, shaped as
/// consumer/src/snapshot.rs publishes it (server/API.md), re-published
/// fresh every 500 ms until dropped; its keys are deleted then. The
/// numbers are fixed so the page's drawing of them can be checked exactly.
struct ConsumerInRegistry {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    keys: Vec<String>,
}

impl ConsumerInRegistry {
    const ID: &'static str = "c-dash";

    fn start(topology: &chatflow_protocol::Topology) -> ConsumerInRegistry {
        use chatflow_broker::fleet::Registry;
        use chatflow_testkit::services::REDIS_URL;
        let registry = Registry::consumers(topology);
        let keys = vec![registry.index().to_string(), registry.key(Self::ID)];
        let stop = Arc::new(AtomicBool::new(false));
        let mut con = redis::Client::open(REDIS_URL)
            .unwrap()
            .get_connection()
            .expect("Redis");
        let thread = {
            let stop = stop.clone();
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let now = chatflow_protocol::time::now_ms();
                    let doc = serde_json::json!({
                        "consumerId": Self::ID, "status": "ok", "reason": null,
                        "publishedAt": chatflow_protocol::ServerTime(now).to_string(),
                        "ageSeconds": 0.0, "uptimeSeconds": 12.0, "queues": 10,
                        "consumedPerSecond": 40.0, "broadcastsPerSecond": 40.0, "rowsPerSecond": 38.5,
                        "lagMs": {"count": 200, "p50": 3, "p95": 7, "p99": 11, "max": 40},
                        "database": {
                            "writers": 4, "writersConnected": 4, "rows": 1000, "batches": 20,
                            "retries": 0, "duplicateBatches": 0, "rowsDeadLettered": 0,
                            "copyCommitMs": {"count": 20, "p50": 4.1, "p95": 8.0, "p99": 12.5, "max": 14.0},
                            "batchRows": {"count": 20, "p50": 50, "p95": 60, "p99": 60, "max": 60}
                        },
                        "totals": {"consumed": 1000}
                    });
                    let ttl = Duration::from_secs(10);
                    (registry.publish(&mut con, Self::ID, &doc.to_string(), ttl, now))
                        .expect("publishing the consumer's snapshot");
                    thread::sleep(Duration::from_millis(500));
                }
            })
        };
        ConsumerInRegistry {
            stop,
            thread: Some(thread),
            keys,
        }
    }
}

impl Drop for ConsumerInRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let client = redis::Client::open(chatflow_testkit::services::REDIS_URL);
        if let Ok(mut con) = client.and_then(|c| c.get_connection()) {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&self.keys).query(&mut con);
        }
    }
}

/// Deletes, when dropped, the sent log a namespace's messages left in
/// Redis (`{ns}:sent:*`, one key per `clientMessageId`; they would expire
/// by themselves in 120 s).
struct SentLogGuard(String);

impl Drop for SentLogGuard {
    fn drop(&mut self) {
        let client = redis::Client::open(chatflow_testkit::services::REDIS_URL);
        let Ok(mut con) = client.and_then(|c| c.get_connection()) else {
            return;
        };
        let pattern = format!("{}:sent:*", self.0);
        let keys: Vec<String> = match con.scan_match(&pattern) {
            Ok(keys) => keys.filter_map(Result::ok).collect(),
            Err(_) => return,
        };
        for chunk in keys.chunks(500) {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(chunk).query(&mut con);
        }
    }
}

/// With RabbitMQ and Redis (two rooms, a namespace of its own, deleted
/// after) and a consumer's snapshot in the registry: the fleet comes from
/// Redis, messages nobody consumes show as queue depth sampled from
/// RabbitMQ, the consumer's lag, rows and COPY+commit latency are drawn
/// as it reported them, presence (shared through Redis) has the idle
/// client's member, and every component is healthy.
#[test]
fn with_rabbitmq_and_a_consumer_every_part_is_drawn_and_healthy() {
    let namespace = unique_namespace("dashboard");
    let mut config = rabbit_config(&namespace, 2);
    let _guard = TopologyGuard(config.services.topology.clone());
    let _sent = SentLogGuard(namespace.clone());
    let mut api = ApiConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        threads: 2,
        pool_size: 2,
        ..ApiConfig::default()
    };
    api.database.port = dead_port();
    config.api = Some(api);
    let topology = config.services.topology.clone();
    let server = Server::start(config).expect("server with RabbitMQ starts");
    let api = server.api_addr().unwrap();
    let _consumer = ConsumerInRegistry::start(&topology);
    let traffic = Traffic::start(server.local_addr());
    wait_for_traffic(api);
    eventually("queue depths sampled and the consumer listed", || {
        let doc = live(api);
        doc["queues"]["totalMessages"].as_u64() > Some(0)
            && doc["consumers"]["consumers"][0]["consumerId"] == ConsumerInRegistry::ID
    });

    let dom = Browser::dump_dom(&format!("http://{api}/"), BUDGET_MS);
    traffic.stop();

    let body = body(&dom);
    assert!(!body.contains_key("data-render-error"), "{body:?}");
    assert_eq!(body["data-state"], "ok", "{body:?}");
    let tiles = health(&dom);
    for component in [
        "api",
        "server:test",
        "consumer:c-dash",
        "rabbitmq",
        "redis",
        "postgresql",
    ] {
        assert_eq!(tiles[component], "ok", "{component}: {tiles:?}");
    }
    let charts = charts(&dom);
    for name in CHART_NAMES {
        assert_eq!(charts[name].state(), "data", "{name}");
    }
    let (_, total) = charts["queues"].points_and_last("total");
    let (_, room) = charts["queues"].points_and_last("room-1");
    let (_, joined) = charts["queues"].points_and_last("room-2");
    assert!(
        total > 0.0 && room == total - 1.0 && joined == 1.0,
        "room 1 holds the sender's messages, room 2 the idle client's JOIN: {room} and {joined} of {total}"
    );
    assert_eq!(charts["throughput"].points_and_last("consumed").1, 40.0);
    assert_eq!(charts["lag"].points_and_last("p99").1, 11.0);
    assert_eq!(charts["rows"].points_and_last("rows").1, 38.5);
    assert_eq!(charts["commit"].points_and_last("p99").1, 12.5);
    assert!(
        dom.contains("data-room=\"2\""),
        "the shard table lists both rooms"
    );
    // Presence is shared through Redis with RabbitMQ: the same member.
    assert_eq!(charts["presence"].points_and_last("room-2").1, 1.0);
    server.shutdown().unwrap();
}

/// Every chart the page draws.
const CHART_NAMES: [&str; 8] = [
    "throughput",
    "ack",
    "lag",
    "queues",
    "rows",
    "commit",
    "connections",
    "presence",
];
