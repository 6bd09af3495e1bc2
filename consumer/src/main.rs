//! `chatflow-consumer` binary: flags → [`Config`](chatflow_consumer::Config),
//! start, wait for SIGINT or SIGTERM, shut down (finishing in-hand work),
//! exit 0.

use anyhow::Context;
use chatflow_consumer::{Args, Consumer};
use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Err(e) = chatflow_telemetry::logging::init(&args.log) {
        eprintln!("chatflow-consumer: {e}");
        std::process::exit(2);
    }
    let config = match args.into_config() {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("chatflow-consumer: {e}");
            std::process::exit(2);
        }
    };
    // The effective configuration, defaults filled in (persistence and the
    // database included); secrets are `Secret`s, whose Debug shows ***.
    tracing::info!(
        version = chatflow_telemetry::build::VERSION,
        commit = chatflow_telemetry::build::GIT_COMMIT,
        persistence = config.enable_persistence,
        "starting with {config:?}"
    );
    // Before the consumer starts a thread: they all inherit the policy.
    if config.sched_batch {
        if let Err(e) = chatflow_broker::sched::set_batch() {
            tracing::warn!("SCHED_BATCH refused ({e}): threads keep the normal policy");
        }
    }
    // Registered before any thread starts, so no signal is missed.
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
    let owned = config
        .queues()
        .iter()
        .filter(|q| q.duty == chatflow_consumer::assignment::Duty::Owner)
        .count();
    let summary = format!(
        "instance {} of {}: {} consumers ({owned} owned, {} standing by; of {} rooms × 5 queues), prefetch {}, ack batch {}, over {} AMQP connections to {}, broadcasting to Redis at {}, namespace {:?}",
        config.assignment.instance,
        config.assignment.instances,
        config.consumer_count(),
        config.consumer_count() - owned,
        config.rooms().count(),
        config.prefetch,
        config.ack_batch,
        config.amqp_connections,
        config.amqp_display(),
        config.redis_display(),
        config.services.topology.namespace,
    );
    let consumer = match Consumer::start(config).context("chatflow-consumer could not start") {
        Ok(consumer) => consumer,
        Err(e) => {
            tracing::error!("{e:#}");
            return Err(e);
        }
    };
    tracing::info!("started: {summary}");
    println!(
        "chatflow-consumer: {summary}; health at http://{}/health, metrics at http://{}/metrics",
        consumer.metrics_addr(),
        consumer.metrics_addr()
    );
    if let Some(signal) = signals.forever().next() {
        tracing::info!("signal {signal}: finishing in-hand work and shutting down");
    }
    let stopped = consumer.shutdown();
    match &stopped {
        Ok(()) => tracing::info!("stopped"),
        Err(e) => tracing::error!("stopped with an error: {e:#}"),
    }
    stopped?;
    Ok(())
}
