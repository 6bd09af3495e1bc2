//! `chatflow-server` binary: flags → [`Config`], start, wait for SIGINT or
//! SIGTERM, shut down gracefully: drain (`/health` 503 while serving on
//! for `--drain-secs`), answer what is in flight, close with 1001, exit 0
//! (the order is [`Server::shutdown`]'s). A second signal cuts the drain
//! short.

use anyhow::Context;
use chatflow_broker::shutdown_signal;
use chatflow_server::{Args, Server};
use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Err(e) = chatflow_telemetry::logging::init(&args.log) {
        eprintln!("chatflow-server: {e}");
        std::process::exit(2);
    }
    let config = match args.into_config() {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("chatflow-server: {e}");
            std::process::exit(2);
        }
    };
    raise_descriptor_limit();
    // Before the server starts a thread: they all inherit the policy.
    if config.sched_batch {
        if let Err(e) = chatflow_broker::sched::set_batch() {
            tracing::warn!("SCHED_BATCH refused ({e}): threads keep the normal policy");
        }
    }
    // The effective configuration, every default filled in; secrets are
    // `Secret`s, whose Debug shows ***.
    tracing::info!(
        version = chatflow_telemetry::build::VERSION,
        commit = chatflow_telemetry::build::GIT_COMMIT,
        "starting with {config:?}"
    );
    // Registered before any thread starts, so no signal is missed.
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
    let (workers, broker, drain) = (config.workers, config.broker, config.drain);
    let server = Server::start(config)?;
    println!(
        "chatflow-server listening on {} ({workers} workers, broker {}); WebSocket at ws://{}/chat/{{roomId}}, health at http://{}/health",
        server.local_addr(),
        broker.as_str(),
        server.local_addr(),
        server.local_addr(),
    );
    match server.api_addr() {
        Some(addr) => println!(
            "chatflow-server read API at http://{addr}/api/metrics, Prometheus metrics at http://{addr}/metrics"
        ),
        None => println!("chatflow-server read API off (no /metrics either)"),
    }
    tracing::info!(
        "listening on {} ({workers} workers, broker {}); API {}",
        server.local_addr(),
        broker.as_str(),
        server
            .api_addr()
            .map_or("off".to_string(), |a| a.to_string())
    );
    if let Some(signal) = signals.forever().next() {
        tracing::info!(
            "signal {signal}: draining for {} s (/health says 503), then shutting down; a second signal skips the drain",
            drain.as_secs_f64()
        );
    }
    let (mut hurry, hurried) = shutdown_signal();
    let handle = signals.handle();
    let second = std::thread::Builder::new()
        .name("signals".to_string())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                tracing::info!("signal {signal} again: skipping the rest of the drain");
                hurry.signal();
            }
        })
        .context("spawning the signal thread")?;
    let stopped = server.shutdown_hurried_by(&hurried);
    handle.close();
    let _ = second.join();
    if let Err(e) = &stopped {
        tracing::error!("stopped with an error: {e:#}");
    }
    stopped?;
    Ok(())
}

/// Every client connection is a descriptor: lift the soft limit to the hard
/// one (run-server.sh and tuning/limits.conf raise the hard one).
fn raise_descriptor_limit() {
    // SAFETY: plain syscalls on a stack value; failure leaves the limit as is.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
