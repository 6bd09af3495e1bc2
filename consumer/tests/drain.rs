//! A server drained (SIGTERM) under load, over the real path (RabbitMQ, the
//! consumer, Redis, PostgreSQL): the load client, spread over two servers,
//! moves off the draining one and retries there what crossed the close;
//! with idempotent sends no message fails and none is stored twice.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use chatflow_client::{Endpoint, ProgressMode};
use chatflow_consumer::Consumer;
use chatflow_testkit::database::TestDatabase;
use common::chat::*;
use common::{namespace, persistent, wait_until, Broker};

#[test]
fn a_drain_under_load_fails_nothing_and_stores_nothing_twice() {
    const TOTAL: u64 = 6_000;
    let ns = namespace();
    let db = TestDatabase::new(&ns);
    let config = persistent(&ns, 2, &db.name);
    let _broker = Broker::new(&config);
    let consumer = Consumer::start(config).expect("consumer starts");
    let a = draining_server(&ns, 2, "server-a", Duration::from_millis(500));
    let b = server(&ns, 2, "server-b");
    let urls = [&a, &b].map(|s| Endpoint::parse(&format!("ws://{}", s.local_addr())).unwrap());
    // The run's report goes to a directory of its own, removed at the end
    // (not results/ in the crate).
    let out = std::env::temp_dir().join(format!("chatflow-drain-{ns}"));
    let report_dir = out.clone();

    let load = thread::spawn(move || {
        chatflow_client::run(chatflow_client::Config {
            urls: urls.to_vec(),
            rooms: 2,
            total: TOTAL,
            threads: 8,
            window: 8,
            warmup_threads: 0,
            seed: Some(11),
            progress: ProgressMode::Off,
            charts: false,
            delivery_timeout: Duration::from_secs(5),
            out_dir: Some(report_dir),
            ..chatflow_client::Config::default()
        })
        .expect("the run completes")
    });
    // A sixth of the way in, the drain; the load goes on meanwhile.
    wait_until("a sixth of the messages stored", || {
        db.rows() >= TOTAL as i64 / 6
    });
    let drained_while_loading = Arc::new(AtomicBool::new(false));
    let stopping = {
        let flag = drained_while_loading.clone();
        let load_running = !load.is_finished();
        thread::spawn(move || {
            a.shutdown().expect("a clean drain");
            flag.store(load_running, Ordering::Relaxed);
        })
    };
    let report = load.join().unwrap();
    stopping.join().unwrap();

    assert!(
        drained_while_loading.load(Ordering::Relaxed),
        "the drain began while the load ran"
    );
    assert!(
        report.connections.reconnections > 0 && report.connections.retries > 0,
        "the client moved off the drained server and retried what crossed \
         the close: {:?}",
        report.connections
    );
    assert_eq!(report.total.failed, 0, "{:?}", report.total);
    assert_eq!(report.total.acked, TOTAL, "{:?}", report.total);
    wait_until("every acked message stored", || db.rows() >= TOTAL as i64);
    // Past the flush interval, nothing more arrives: exactly one row each.
    thread::sleep(Duration::from_secs(1));
    assert_eq!(db.rows(), TOTAL as i64, "no message stored twice");
    let ids: HashSet<String> = db.ids().into_iter().collect();
    assert_eq!(ids.len() as u64, TOTAL);
    assert_eq!(
        db.count("SELECT count(DISTINCT server_id) FROM messages"),
        2,
        "both servers accepted messages"
    );
    b.shutdown().unwrap();
    consumer.shutdown().unwrap();
    let _ = std::fs::remove_dir_all(&out);
}
