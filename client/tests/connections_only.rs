//! `--connections-only` against a real in-process server: idle connections
//! spread over two source addresses (as their sockets report), every
//! probe's broadcast counted at every idle connection of its room, setup
//! failures counted by reason, and a source address this host lacks
//! refused by name.

mod common;

use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use chatflow_client::schedule::Schedule;
use chatflow_client::{Config, HoldConfig, HoldReport, RunOutcome};
use chatflow_server::{BrokerKind, Server};
use common::*;

fn hold_config(url: &str, name: &str, hold: HoldConfig) -> Config {
    Config {
        hold: Some(hold),
        // Connections opened at once.
        threads: 16,
        ..config(url, name)
    }
}

fn run(cfg: Config) -> HoldReport {
    chatflow_client::hold::run_until(cfg, Arc::new(AtomicBool::new(false))).unwrap()
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

#[test]
fn two_hundred_idle_connections_over_two_source_addresses_all_hear_every_probe() {
    // 200 connections, 10 per room, half from 127.0.0.1 and half from
    // 127.0.0.2; 40 probes (2 per room from 20 senders) → 400 broadcasts,
    // every one delivered, none lost.
    let server = start_server(BrokerKind::Memory);
    let url = format!("ws://{}", server.local_addr());
    let cfg = hold_config(
        &url,
        "hold",
        HoldConfig {
            connections: 200,
            source_addrs: ips(&["127.0.0.1", "127.0.0.2"]),
            senders: 20,
            probes: Schedule::for_messages(20.0, 40).unwrap(),
            ..HoldConfig::default()
        },
    );
    let dir = cfg.out_dir.clone().unwrap();
    let r = run(cfg);
    server.shutdown().unwrap();

    assert_eq!(r.outcome, RunOutcome::Completed);
    assert_eq!(r.exit_code(), 0, "{}", r.render());
    assert_eq!(
        (r.setup.attempted, r.setup.opened, r.setup.failed),
        (200, 200, 0)
    );
    let per_source: Vec<(&str, u64)> = r
        .setup
        .per_source
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(per_source, vec![("127.0.0.1", 100), ("127.0.0.2", 100)]);
    assert!(r.setup.rate > 0.0 && r.setup.setup_ms.as_ref().unwrap().count == 200);
    assert_eq!(
        (r.probes.planned, r.probes.sent, r.probes.acked),
        (40, 40, 40)
    );
    let d = &r.delivery;
    assert_eq!(
        (d.expected, d.delivered, d.missing, d.extra),
        (400, 400, 0, 0)
    );
    assert_eq!((d.connections_complete, d.connections_incomplete), (200, 0));
    assert_eq!((d.foreign, d.unmatched), (0, 0));
    assert_eq!(d.latency_ms.as_ref().unwrap().count, 400);
    assert_eq!((r.held.lost, r.held.still_open), (0, 200));

    let s = summary(&dir);
    assert_eq!(s["mode"], "connectionsOnly");
    assert_eq!(s["setup"]["perSource"]["127.0.0.2"], 100);
    assert_eq!(s["delivery"]["delivered"], 400);
    let hgrm = std::fs::read_to_string(dir.join("delivery-latency.hgrm")).unwrap();
    assert!(hgrm.contains("Total count    =          400"), "{hgrm}");
    let text = r.render();
    assert!(
        text.contains("sources  127.0.0.1 100, 127.0.0.2 100"),
        "{text}"
    );
    assert!(text.contains("delivery 400 of 400 broadcasts reached the idle connections, 0 missing"));
}

#[test]
fn connections_past_the_servers_limit_are_counted_as_failures_with_their_reason() {
    // A server that takes 60 WebSockets: of 100 idle connections at most
    // 60 open, the rest fail with its 503 and are listed by reason; the
    // exit status says the test did not pass.
    let server = Server::start(chatflow_server::Config {
        bind: "127.0.0.1:0".parse().unwrap(),
        workers: 2,
        pin_workers: false,
        broker: BrokerKind::Memory,
        max_connections: 60,
        shutdown_grace: Duration::from_millis(300),
        ..chatflow_server::Config::default()
    })
    .unwrap();
    let cfg = Config {
        rooms: 20,
        ..hold_config(
            &format!("ws://{}", server.local_addr()),
            "hold-limit",
            HoldConfig {
                connections: 100,
                senders: 2,
                probes: Schedule::for_messages(20.0, 4).unwrap(),
                ..HoldConfig::default()
            },
        )
    };
    let r = run(cfg);
    server.shutdown().unwrap();
    assert_eq!(r.setup.attempted, 100);
    assert!(r.setup.opened <= 60, "{}", r.render());
    assert!(r.setup.failed >= 40, "{}", r.render());
    assert!(
        r.setup.failures.keys().all(|why| why.contains("503")),
        "{:?}",
        r.setup.failures
    );
    assert_eq!(r.setup.failures.values().sum::<u64>(), r.setup.failed);
    assert_eq!(r.exit_code(), 3);
    assert!(r.render().contains("failed   "), "{}", r.render());
}

#[test]
fn a_source_address_this_host_lacks_is_refused_by_name() {
    let server = start_server(BrokerKind::Memory);
    let out = Command::new(env!("CARGO_BIN_EXE_chatflow-client"))
        .args(["--url", &format!("ws://{}", server.local_addr())])
        .args(["--connections-only", "10", "--source-addrs", "192.0.2.1"])
        .args(["--progress", "off", "--no-metrics"])
        .args(["--out", out_dir("hold-bad-source").to_str().unwrap()])
        .output()
        .unwrap();
    server.shutdown().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--source-addrs 192.0.2.1: cannot bind"),
        "{err}"
    );
}
