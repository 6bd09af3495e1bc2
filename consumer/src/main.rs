//! `chatflow-consumer` binary: flags → [`Config`](chatflow_consumer::Config),
//! start, wait for SIGINT or SIGTERM, shut down (finishing in-hand work),
//! exit 0.

use anyhow::Context;
use chatflow_consumer::{Args, Consumer};
use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() -> anyhow::Result<()> {
    let config = match Args::parse().into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("chatflow-consumer: {e}");
            std::process::exit(2);
        }
    };
    // Registered before any thread starts, so no signal is missed.
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
    let summary = format!(
        "{} consumers ({} rooms × 5 queues, prefetch {}, ack batch {}) over {} AMQP connections to {}, broadcasting to Redis at {}, namespace {:?}",
        config.consumer_count(),
        config.rooms().count(),
        config.prefetch,
        config.ack_batch,
        config.amqp_connections,
        config.amqp_display(),
        config.redis_display(),
        config.services.topology.namespace,
    );
    let consumer = Consumer::start(config).context("chatflow-consumer could not start")?;
    println!(
        "chatflow-consumer: {summary}; health at http://{}/health, metrics at http://{}/metrics",
        consumer.metrics_addr(),
        consumer.metrics_addr()
    );
    if let Some(signal) = signals.forever().next() {
        eprintln!("chatflow-consumer: signal {signal}: finishing in-hand work and shutting down");
    }
    consumer.shutdown()?;
    eprintln!("chatflow-consumer: stopped");
    Ok(())
}
