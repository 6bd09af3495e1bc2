//! `brokerceiling` against the machine's RabbitMQ, as its users run it:
//! the binary, two rooms (10 quorum queues) per run, its JSON report read
//! back, and the broker checked afterwards for anything left behind (a
//! passive declaration of every queue and exchange must fail). A
//! `TopologyGuard` deletes the namespace again should a check fail.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use amiquip::Connection;
use chatflow_broker::Declare;
use chatflow_protocol::{Rooms, Topology};
use chatflow_testkit::services::AMQP_URL;
use chatflow_testkit::{unique_namespace, TopologyGuard};
use serde_json::Value;

/// Far more than a 2,000-message run takes even on a loaded machine; a
/// hung run is killed and fails the test instead of hanging it.
const RUN_LIMIT: Duration = Duration::from_secs(120);

fn ceiling(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_brokerceiling"));
    command
        .args(["--rabbitmq-hosts", "127.0.0.1:5672"])
        .args(args)
        .env_remove("RABBITMQ_HOSTS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Waits for `child` (killing it past [`RUN_LIMIT`]): status, stdout, stderr.
fn finish(mut child: Child) -> (ExitStatus, String, String) {
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for brokerceiling") {
            break status;
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("brokerceiling still running after {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut stdout).expect("stdout");
    }
    if let Some(mut err) = child.stderr.take() {
        err.read_to_string(&mut stderr).expect("stderr");
    }
    (status, stdout, stderr)
}

fn run(args: &[&str]) -> (ExitStatus, String, String) {
    finish(ceiling(args).spawn().expect("starting brokerceiling"))
}

fn topology(namespace: &str, rooms: u32) -> Topology {
    Topology::new(namespace, Rooms::new(rooms).unwrap())
}

/// Names of `topology`'s queues, and of its exchanges, that still exist.
fn left_behind(topology: &Topology) -> Vec<String> {
    let mut connection = Connection::insecure_open(AMQP_URL).expect("RabbitMQ");
    let mut queues: Vec<String> = topology
        .shards()
        .map(|(room, shard)| topology.queue(room, shard))
        .collect();
    queues.push(topology.dead_letter_queue());
    let mut found = Vec::new();
    // A failed passive declaration closes its channel: one channel each.
    for queue in queues {
        let channel = connection.open_channel(None).expect("channel");
        if channel.queue_declare_passive(queue.clone()).is_ok() {
            found.push(format!("queue {queue}"));
            let _ = channel.close();
        }
    }
    for exchange in [topology.exchange(), topology.dead_letter_exchange()] {
        let channel = connection.open_channel(None).expect("channel");
        if channel.exchange_declare_passive(exchange.clone()).is_ok() {
            found.push(format!("exchange {exchange}"));
            let _ = channel.close();
        }
    }
    let _ = connection.close();
    found
}

fn report(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not a JSON report ({e}): {stdout}"))
}

fn count(v: &Value, path: &[&str]) -> u64 {
    let mut at = v;
    for key in path {
        at = &at[*key];
    }
    at.as_u64()
        .unwrap_or_else(|| panic!("{path:?} is not a count in {v}"))
}

fn rate(v: &Value, path: &[&str]) -> f64 {
    let mut at = v;
    for key in path {
        at = &at[*key];
    }
    at.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {v}"))
}

#[test]
fn a_run_publishes_confirms_and_consumes_every_message_and_leaves_no_queue() {
    let namespace = unique_namespace("ceiling-run");
    let topology = topology(&namespace, 2);
    let _guard = TopologyGuard(topology.clone());
    let (status, stdout, stderr) = run(&[
        "--namespace",
        &namespace,
        "--rooms",
        "2",
        "--messages",
        "2000",
        "--in-flight",
        "16",
        "--json",
    ]);
    assert!(status.success(), "{status}: {stderr}");
    let r = report(&stdout);
    assert_eq!(r["mode"], "publish");
    // The publishing window in wall-clock time, for outside CPU samples:
    // inside this test's run, and as long as the reported seconds.
    let (started, ended) = (
        rate(&r, &["publish", "startedAtUnixS"]),
        rate(&r, &["publish", "endedAtUnixS"]),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        now - 600.0 < started && started < ended && ended <= now,
        "{r}"
    );
    assert!(
        (ended - started - rate(&r, &["publish", "seconds"])).abs() < 0.01,
        "{r}"
    );
    assert_eq!((count(&r, &["queues"]), count(&r, &["inFlight"])), (10, 16));
    assert_eq!(count(&r, &["publish", "published"]), 2000);
    assert_eq!(count(&r, &["publish", "confirmed"]), 2000);
    assert_eq!(count(&r, &["publish", "nacked"]), 0);
    assert_eq!(count(&r, &["publish", "confirmLatencyMs", "count"]), 2000);
    assert_eq!(count(&r, &["consume", "consumed"]), 2000, "{r}");
    assert!(rate(&r, &["publish", "perSecond"]) > 0.0, "{r}");
    assert!(rate(&r, &["consume", "perSecond"]) > 0.0, "{r}");
    let p50 = rate(&r, &["publish", "confirmLatencyMs", "p50"]);
    let p99 = rate(&r, &["publish", "confirmLatencyMs", "p99"]);
    assert!(0.0 < p50 && p50 <= p99, "{r}");
    // The product's envelopes, not a token payload.
    assert!(rate(&r, &["messageBytes"]) > 200.0, "{r}");
    assert_eq!(left_behind(&topology), Vec::<String>::new());
}

#[test]
fn a_drain_consumes_the_whole_backlog_and_leaves_no_queue() {
    let namespace = unique_namespace("ceiling-drain");
    let topology = topology(&namespace, 2);
    let _guard = TopologyGuard(topology.clone());
    let (status, stdout, stderr) = run(&[
        "--namespace",
        &namespace,
        "--rooms",
        "2",
        "--drain",
        "1000",
        "--in-flight",
        "16",
        "--json",
    ]);
    assert!(status.success(), "{status}: {stderr}");
    let r = report(&stdout);
    assert_eq!(r["mode"], "drain");
    assert_eq!(count(&r, &["publish", "confirmed"]), 1000);
    assert!(
        r.get("consume").is_none(),
        "no consumers while the backlog builds"
    );
    // Every confirmed message was in a queue when the consumers started.
    assert_eq!(count(&r, &["drain", "readyAtStart"]), 1000, "{r}");
    assert_eq!(count(&r, &["drain", "consumed"]), 1000, "{r}");
    assert!(rate(&r, &["drain", "perSecond"]) > 0.0, "{r}");
    // The drain's window in wall-clock time (for outside CPU samples):
    // after the backlog was confirmed, as long as the reported seconds.
    let (started, ended) = (
        rate(&r, &["drain", "startedAtUnixS"]),
        rate(&r, &["drain", "endedAtUnixS"]),
    );
    assert!(
        rate(&r, &["publish", "endedAtUnixS"]) <= started && started < ended,
        "{r}"
    );
    assert!(
        (ended - started - rate(&r, &["drain", "seconds"])).abs() < 0.01,
        "{r}"
    );
    assert_eq!(left_behind(&topology), Vec::<String>::new());
}

#[test]
fn ctrl_c_stops_the_run_reports_it_and_deletes_the_topology() {
    let namespace = unique_namespace("ceiling-int");
    let topology = topology(&namespace, 2);
    let _guard = TopologyGuard(topology.clone());
    let mut child = ceiling(&[
        "--namespace",
        &namespace,
        "--rooms",
        "2",
        "--seconds",
        "600",
        "--in-flight",
        "4",
        "--json",
    ])
    .spawn()
    .expect("starting brokerceiling");
    // Interrupt once it says it is publishing (its queues exist then).
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut said = String::new();
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).expect("stderr") == 0 {
            panic!("brokerceiling ended before publishing: {said}");
        }
        said += &line;
        if line.contains("publishing") {
            break;
        }
    }
    assert!(
        left_behind(&topology).len() >= 10,
        "the run's queues exist while it runs"
    );
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let (status, stdout, _) = finish(child);
    assert_eq!(status.code(), Some(130), "{status}");
    let r = report(&stdout);
    assert_eq!(r["interrupted"], true);
    assert_eq!(
        count(&r, &["publish", "published"]),
        count(&r, &["publish", "confirmed"]),
        "what was in flight is settled before it stops: {r}"
    );
    assert_eq!(left_behind(&topology), Vec::<String>::new());
}

#[test]
fn a_namespace_in_use_is_refused_and_left_as_it_was_until_deleted_on_request() {
    let namespace = unique_namespace("ceiling-busy");
    let topology = topology(&namespace, 1);
    let _guard = TopologyGuard(topology.clone());
    let mut connection = Connection::insecure_open(AMQP_URL).expect("RabbitMQ");
    let channel = connection.open_channel(None).expect("channel");
    topology.declare(&channel).expect("declaring");
    let _ = channel.close();
    let _ = connection.close();
    let (status, _, stderr) = run(&[
        "--namespace",
        &namespace,
        "--rooms",
        "1",
        "--messages",
        "10",
    ]);
    assert_eq!(status.code(), Some(1), "{status}: {stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
    assert_eq!(
        left_behind(&topology).len(),
        8,
        "5 queues, the dead-letter queue, 2 exchanges"
    );
    // What a killed run leaves is deleted on request.
    let (status, _, stderr) = run(&["--delete-topology", &namespace, "--rooms", "1"]);
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(left_behind(&topology), Vec::<String>::new());
}
