//! A server that answers `UNAVAILABLE` (its broker is down) is backing
//! off, not failing: the client stops spending fresh messages on it,
//! probes it with one message at a time at a slowing pace, rides out the
//! outage within the retry window with nothing failed, reports the outage
//! with its length, and moves to another server that takes messages.

mod common;

use std::time::Duration;

use chatflow_client::{Endpoint, RunOutcome};
use common::fake::{Fake, Quirks};
use common::*;

fn refusals(fake: &Fake) -> usize {
    fake.names.lock().unwrap().iter().filter(|n| n.2).count()
}

/// Refusing for 10 s, then acking: every message acked, none failed, one
/// outage of about 10 s reported, and a bounded number of attempts spent
/// on it (one probe per thread at a time, doubling back-off).
#[test]
fn an_outage_is_waited_out_without_failures_or_a_storm_of_attempts() {
    let fake = Fake::start(Quirks {
        unavailable_for: Duration::from_secs(10),
        ..Quirks::default()
    });
    let mut cfg = config(&fake.url(), "outage");
    cfg.give_up_after = Duration::from_secs(30);
    cfg.backoff_max = Duration::from_secs(1);
    let threads = cfg.threads.max(cfg.warmup_threads);
    let r = chatflow_client::run(cfg).unwrap();
    assert_eq!(r.outcome, RunOutcome::Completed);
    assert_eq!(
        (r.total.acked, r.total.failed),
        (2_000, 0),
        "{:?}",
        r.status_codes
    );
    let outages = &r.connections.outages;
    assert_eq!(outages.len(), 1, "{outages:?}");
    let o = &outages[0];
    assert!(o.end.is_some(), "it ended: {o:?}");
    assert!(
        (9.0..16.0).contains(&o.seconds),
        "about the 10 s it lasted: {o:?}"
    );
    // Without the back-off every thread keeps its window full of fresh
    // messages and retries each at once: thousands of attempts (8,885 in
    // 3 s when measured). With it, each thread probes with one message,
    // 20 ms doubling to the 1 s cap: ~16 probes a thread in 10 s.
    let spent = refusals(&fake);
    eprintln!("attempts spent during the outage: {spent} ({threads} threads)");
    assert!(spent <= threads * 25, "{spent} attempts during the outage");
    assert_eq!(o.refusals as usize, spent);
    // The wait shows in the latencies and in the back-off total.
    assert!(
        r.connections.longest_backoff_wait_seconds >= 5.0,
        "{:?}",
        r.connections
    );
    let max = [&r.warmup.ack_latency_ms, &r.ack_latency_ms]
        .iter()
        .filter_map(|l| l.as_ref().map(|l| l.max))
        .fold(0.0, f64::max);
    assert!(max >= 5_000.0, "the wait is in the latencies: max {max} ms");
    let text = r.render();
    assert!(text.contains("outage   ws://"), "{text}");
}

/// Two servers, one refusing the whole run: the other carries the load;
/// nothing fails, and the refusing one costs only probes.
#[test]
fn another_server_takes_over_a_refusing_servers_share() {
    let refusing = Fake::start(Quirks {
        unavailable_for: Duration::from_secs(3600),
        ..Quirks::default()
    });
    let fine = Fake::start(Quirks::default());
    let mut cfg = config(&refusing.url(), "takeover");
    cfg.urls = vec![
        Endpoint::parse(&refusing.url()).unwrap(),
        Endpoint::parse(&fine.url()).unwrap(),
    ];
    cfg.give_up_after = Duration::from_secs(15);
    let r = chatflow_client::run(cfg).unwrap();
    assert_eq!(
        (r.total.acked, r.total.failed),
        (2_000, 0),
        "{:?}",
        r.status_codes
    );
    let acked_by_fine = fine.names.lock().unwrap().len();
    assert!(acked_by_fine >= 2_000, "{acked_by_fine}");
    let spent = refusals(&refusing);
    eprintln!("attempts spent on the refusing server: {spent}");
    assert!(spent < 400, "{spent} attempts spent on the refusing server");
    let o = &r.connections.outages;
    assert_eq!(o.len(), 1, "{o:?}");
    assert!(o[0].end.is_none(), "still refusing at the end: {o:?}");
}
