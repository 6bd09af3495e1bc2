//! Connections follow a cluster: AMQP connections go past a dead node to
//! one that answers, and Redis connections go to whichever node Sentinel
//! names master, also right after a failover. Against real servers: the
//! shared RabbitMQ, and a small Redis master + replica + Sentinel that
//! this test starts on spare ports (and kills at the end, also on failure).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use chatflow_broker::{BrokerSettings, HostPort, RedisAddress, RedisConnector, RedisEndpoint};

#[test]
fn an_amqp_connection_goes_past_a_dead_node_to_a_live_one() {
    let mut settings = BrokerSettings::default();
    // Port 1: nothing listens, the connect is refused at once.
    settings.amqp.nodes = vec![HostPort::loopback(1), HostPort::loopback(5672)];
    settings.amqp.connect_timeout = Duration::from_secs(2);
    // Whichever node each attempt starts at, it ends on the live one.
    for _ in 0..3 {
        let connection =
            chatflow_broker::amqp::connect(&settings.amqp).expect("the live node answers");
        connection.close().unwrap();
    }
    settings.amqp.nodes = vec![HostPort::loopback(1), HostPort::loopback(2)];
    let err = chatflow_broker::amqp::connect(&settings.amqp).unwrap_err();
    assert!(err.to_string().contains("127.0.0.1:"), "{err}");
}

/// A port nothing listens on now (the kernel's pick for a port-0 bind).
fn spare_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A redis-server (or Sentinel) child, killed with -9 when dropped.
struct RedisProcess(Child);

impl RedisProcess {
    fn start(dir: &Path, name: &str, config: &str, sentinel: bool) -> RedisProcess {
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, config).unwrap();
        let mut command = Command::new("redis-server");
        command.arg(&path);
        if sentinel {
            command.arg("--sentinel");
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/ensure-services.sh)");
        RedisProcess(child)
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

fn role(node: u16) -> Option<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{node}/")).ok()?;
    let mut con = client
        .get_connection_with_timeout(Duration::from_millis(500))
        .ok()?;
    let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut con).ok()?;
    match role.first()? {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

#[test]
fn redis_connections_follow_a_sentinel_failover() {
    let dir = std::env::temp_dir().join(format!("chatflow-sentinel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (master, replica, sentinel) = (spare_port(), spare_port(), spare_port());
    let base = "bind 127.0.0.1\nsave \"\"\nappendonly no\n";
    let mut master_process = Some(RedisProcess::start(
        &dir,
        "master",
        &format!("{base}port {master}\n"),
        false,
    ));
    let _replica_process = RedisProcess::start(
        &dir,
        "replica",
        &format!("{base}port {replica}\nreplicaof 127.0.0.1 {master}\n"),
        false,
    );
    wait_for("the replica to sync", Duration::from_secs(20), || {
        let client = redis::Client::open(format!("redis://127.0.0.1:{replica}/")).ok()?;
        let mut con = client.get_connection().ok()?;
        let info: String = redis::cmd("INFO").arg("replication").query(&mut con).ok()?;
        info.contains("master_link_status:up").then_some(())
    });
    // One Sentinel with quorum 1: enough to fail over, quick to agree.
    let _sentinel_process = RedisProcess::start(
        &dir,
        "sentinel",
        &format!(
            "port {sentinel}\nbind 127.0.0.1\nsentinel monitor cf 127.0.0.1 {master} 1\n\
             sentinel down-after-milliseconds cf 500\nsentinel failover-timeout cf 3000\n"
        ),
        true,
    );
    let endpoint = RedisEndpoint {
        address: RedisAddress::Sentinel {
            sentinels: vec![
                HostPort::loopback(spare_port()),
                HostPort::loopback(sentinel),
            ],
            master_name: "cf".to_string(),
        },
        timeout: Duration::from_secs(1),
    };
    let connector = RedisConnector::new(&endpoint);
    // The dead first Sentinel is skipped; the live one names the master.
    let mut con = wait_for(
        "a connection to the master",
        Duration::from_secs(20),
        || connector.connect().ok(),
    );
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("before")
        .query(&mut con)
        .unwrap();
    let port: u16 = redis::cmd("CONFIG")
        .arg("GET")
        .arg("port")
        .query::<Vec<String>>(&mut con)
        .unwrap()[1]
        .parse()
        .unwrap();
    assert_eq!(port, master);
    wait_for(
        "the write to reach the replica",
        Duration::from_secs(10),
        || {
            let client = redis::Client::open(format!("redis://127.0.0.1:{replica}/")).ok()?;
            let mut con = client.get_connection().ok()?;
            let value: Option<String> = redis::cmd("GET").arg("k").query(&mut con).ok()?;
            (value.as_deref() == Some("before")).then_some(())
        },
    );

    // kill -9 of the master: connections fail until Sentinel promotes the
    // replica, and then land on it without any change of settings.
    master_process.take();
    let killed = Instant::now();
    let mut after = wait_for(
        "a connection to the promoted replica",
        Duration::from_secs(30),
        || connector.connect().ok(),
    );
    println!(
        "failover followed {} ms after the master's kill",
        killed.elapsed().as_millis()
    );
    assert_eq!(role(replica).as_deref(), Some("master"));
    let value: String = redis::cmd("GET").arg("k").query(&mut after).unwrap();
    assert_eq!(value, "before");
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("after")
        .query(&mut after)
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
