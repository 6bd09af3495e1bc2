//! `chatflow-server` binary: flags → [`Config`], start, wait for SIGINT or
//! SIGTERM, shut down gracefully.

use anyhow::Context;
use chatflow_server::{Args, Server};
use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() -> anyhow::Result<()> {
    let config = match Args::parse().into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("chatflow-server: {e}");
            std::process::exit(2);
        }
    };
    raise_descriptor_limit();
    // Registered before any thread starts, so no signal is missed.
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
    let (workers, broker) = (config.workers, config.broker);
    let server = Server::start(config)?;
    println!(
        "chatflow-server listening on {} ({workers} workers, broker {}); WebSocket at ws://{}/chat/{{roomId}}, health at http://{}/health",
        server.local_addr(),
        broker.as_str(),
        server.local_addr(),
        server.local_addr(),
    );
    match server.api_addr() {
        Some(addr) => println!("chatflow-server read API at http://{addr}/api/metrics"),
        None => println!("chatflow-server read API off"),
    }
    if let Some(signal) = signals.forever().next() {
        eprintln!("chatflow-server: signal {signal}: shutting down");
    }
    server.shutdown()?;
    eprintln!("chatflow-server: stopped");
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
