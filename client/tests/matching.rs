//! Ack and delivery matching under orders a server may legally produce
//! (a fake server makes them on purpose): every message is still counted
//! once, with the right latency kind.

mod common;

use chatflow_client::RunOutcome;
use common::fake::{Fake, Quirks};
use common::*;

fn run_against(
    fake: &Fake,
    window: usize,
    name: &str,
) -> (chatflow_client::Report, std::path::PathBuf) {
    let mut cfg = config(&fake.url(), name);
    cfg.window = window;
    let dir = cfg.out_dir.clone().unwrap();
    (chatflow_client::run(cfg).unwrap(), dir)
}

#[test]
fn broadcasts_that_overtake_their_ack_are_still_matched() {
    // Every broadcast arrives before its ack: all 2,000 deliveries observed.
    let fake = Fake::start(Quirks {
        broadcast_first: true,
        ..Quirks::default()
    });
    let (r, _) = run_against(&fake, 4, "overtake");
    assert_eq!(r.outcome, RunOutcome::Completed);
    assert_eq!((r.total.acked, r.total.failed), (2_000, 0));
    assert_eq!((r.delivery.observed, r.delivery.missing), (2_000, 0));
}

#[test]
fn acks_out_of_order_are_matched_by_client_message_id() {
    // Pairs answered second-first: nothing unexpected, nothing lost.
    let fake = Fake::start(Quirks {
        swap_pairs: true,
        ..Quirks::default()
    });
    let (r, dir) = run_against(&fake, 8, "swapped");
    assert_eq!((r.total.acked, r.total.failed), (2_000, 0));
    assert_eq!(r.unexpected_frames, 0);
    assert_eq!(r.delivery.observed, 2_000);
    assert_eq!(csv_rows(&dir).len(), 2_000);
}

#[test]
fn unavailable_errors_are_retried_until_acked() {
    // Every 7th message is refused as UNAVAILABLE: retried, then acked.
    let fake = Fake::start(Quirks {
        unavailable_every: 7,
        ..Quirks::default()
    });
    let (r, dir) = run_against(&fake, 2, "unavailable");
    assert_eq!((r.total.acked, r.total.failed), (2_000, 0));
    assert!(
        r.connections.retries >= 2_000 / 7,
        "{}",
        r.connections.retries
    );
    assert!(csv_rows(&dir).iter().all(|row| row[3] == "OK"));
    // Idempotent sends: a retry carries its first attempt's name, and no
    // two messages share one (names are unique across threads and runs).
    let names = fake.names.lock().unwrap().clone();
    let mut acked = std::collections::HashSet::new();
    for (user, name, refused) in &names {
        assert!(!name.is_empty());
        if !refused {
            assert!(
                acked.insert((*user, name.clone())),
                "{user}/{name} acked twice"
            );
        }
    }
    for (user, name, refused) in &names {
        if *refused {
            assert!(
                acked.contains(&(*user, name.clone())),
                "{user}/{name}: retried under another name"
            );
        }
    }
    assert_eq!(acked.len(), 2_000);
    // Latency runs from the first attempt: a retried message waited at
    // least half a back-off (20 ms, jittered to [10, 20) ms) before it got
    // through, and that wait is in the figures.
    let main = r.ack_latency_ms.expect("main-phase latencies");
    assert!(
        main.max >= 10.0,
        "max {} ms hides the retries' wait",
        main.max
    );
}
