//! The `chatflow-consumer` binary run as child processes, several against
//! the same queues: start one (its metrics port read from its first line
//! of output), read its `/health`, kill it with SIGKILL, stop it with
//! SIGTERM; and what RabbitMQ itself says about the queues' consumers
//! (`rabbitmqctl list_consumers`).
//!
//! Each process logs to a file of its own in the temporary directory,
//! deleted when the test passes and named in the output when it fails.
//! A process still running when its handle is dropped is killed, pass or
//! fail, so no test leaves one behind.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::TIMEOUT;

/// Milliseconds since the Unix epoch (the clock `/health`'s
/// `sinceUnixMs` uses; the processes run on this host).
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// One running `chatflow-consumer`.
pub struct ConsumerProcess {
    pub name: String,
    child: Child,
    /// Its `/health` and `/metrics`.
    pub addr: SocketAddr,
    log: PathBuf,
}

impl ConsumerProcess {
    /// Starts the binary with `env` and `args` (the consumer id is
    /// `name`; metrics on a free port) and waits for its start-up line.
    pub fn start(name: &str, env: &[(&str, &str)], args: &[&str]) -> ConsumerProcess {
        // Unique per start: tests of one binary share its pid and names.
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let log = std::env::temp_dir().join(format!(
            "chatflow-consumer-test-{}-{}-{name}.log",
            std::process::id(),
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        let mut child = Command::new(env!("CARGO_BIN_EXE_chatflow-consumer"))
            .args(args)
            .envs(env.iter().copied())
            .env("CONSUMER_ID", name)
            .env("METRICS_BIND", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(File::create(&log).expect("a log file"))
            .spawn()
            .expect("the consumer binary starts");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .split_once("health at http://")
            .and_then(|(_, rest)| rest.split_once("/health"))
            .map(|(addr, _)| addr.parse().expect("an address"));
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("{name} did not start: {line:?}\n{said}");
        };
        // It prints nothing more; reading on keeps its pipe from filling.
        thread::spawn(move || for _ in stdout.lines() {});
        ConsumerProcess {
            name: name.to_string(),
            child,
            addr,
            log,
        }
    }

    /// `/health`, whether ready (200) or not (503).
    pub fn health(&self) -> Value {
        let (status, body) = super::http_get(self.addr, "/health");
        assert!(
            matches!(status, 200 | 503),
            "{}: {status} {body}",
            self.name
        );
        serde_json::from_str(&body).expect("health is JSON")
    }

    /// `/health`'s queues by name.
    pub fn queues(&self) -> HashMap<String, Value> {
        let health = self.health();
        (health["queues"].as_array().expect("queues").iter())
            .map(|q| (q["queue"].as_str().unwrap().to_string(), q.clone()))
            .collect()
    }

    /// SIGKILL (no shutdown: its connections just close), and reaps it;
    /// returns when the signal was sent, in Unix ms.
    pub fn kill(&mut self) -> i64 {
        let at = unix_ms();
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
        at
    }

    /// SIGTERM: it must finish its work and exit 0 in time.
    pub fn stop(mut self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(sent.success(), "SIGTERM to {}", self.name);
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.name);
            thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{} exited with {status}", self.name);
    }
}

impl Drop for ConsumerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!("{}'s log: {}", self.name, self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// One consumer of a queue as RabbitMQ sees it.
#[derive(Clone, Debug)]
pub struct BrokerConsumer {
    pub tag: String,
    /// `active` (delivering to it) or `waiting` (single active consumer).
    pub active: bool,
    pub activity_status: String,
}

/// `rabbitmqctl list_consumers` for the queues of `namespace` (queue →
/// its consumers), or `None` where `rabbitmqctl` cannot be run (it is
/// optional: RabbitMQ on another host).
pub fn broker_consumers(namespace: &str) -> Option<HashMap<String, Vec<BrokerConsumer>>> {
    let output = Command::new("rabbitmqctl")
        .args(["list_consumers", "-q", "-p", "/", "--formatter", "json"])
        .args(["queue_name", "consumer_tag", "active", "activity_status"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let rows: Vec<Value> = serde_json::from_slice(&output.stdout).expect("rabbitmqctl's JSON");
    let mut queues: HashMap<String, Vec<BrokerConsumer>> = HashMap::new();
    for row in rows {
        let queue = row["queue_name"].as_str().unwrap_or_default();
        if !queue.starts_with(&format!("{namespace}.")) {
            continue;
        }
        queues
            .entry(queue.to_string())
            .or_default()
            .push(BrokerConsumer {
                tag: row["consumer_tag"].as_str().unwrap_or_default().to_string(),
                active: row["active"].as_bool().unwrap_or(false),
                activity_status: row["activity_status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            });
    }
    Some(queues)
}
