//! `brokerceiling` binary: flags → [`Command`], Ctrl-C and SIGTERM turned
//! into an orderly stop (the run settles what is in flight and deletes its
//! topology; a second signal exits at once), the run, its report. What it
//! measures: `chatflow_bench::ceiling` and `bench/README.md`.
//!
//! ```text
//! brokerceiling --in-flight 64 --seconds 20
//! brokerceiling --in-flight 1024 --publishers 4 --seconds 20 --json
//! brokerceiling --drain 200000 --in-flight 1024
//! ```
//!
//! Exit status: 0 done; 1 the run failed (the message says why; the
//! topology is deleted all the same); 2 bad flags (the message names the
//! flag); 130 interrupted (the figures up to then are printed).

use std::process::ExitCode;
use std::thread;

use chatflow_bench::ceiling::{self, topology, Args, Command, Config};
use chatflow_broker::{shutdown_signal, Shutdown};
use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() -> ExitCode {
    let command = match Args::parse().into_command() {
        Ok(command) => command,
        Err(e) => {
            eprintln!("brokerceiling: {e}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::DeleteTopology(settings) => {
            let namespace = &settings.topology.namespace;
            match topology::delete(&settings.amqp, &settings.topology) {
                Ok(()) => {
                    eprintln!("brokerceiling: deleted {namespace}'s queues and exchanges");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("brokerceiling: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run(config) => run(&config),
    }
}

fn run(config: &Config) -> ExitCode {
    let topology = &config.settings.topology;
    let left_behind = format!(
        "brokerceiling --delete-topology {} --rooms {}",
        topology.namespace,
        topology.rooms.count()
    );
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("brokerceiling: installing signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let handle = signals.handle();
    let (mut trigger, interrupt): (_, Shutdown) = shutdown_signal();
    let watcher = thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for (n, _) in signals.forever().enumerate() {
                if n == 0 {
                    eprintln!(
                        "brokerceiling: stopping: settling what is in flight and deleting the topology (again to exit at once)"
                    );
                    trigger.signal();
                } else {
                    eprintln!("brokerceiling: exiting now; if its queues remain: {left_behind}");
                    std::process::exit(130);
                }
            }
        })
        .expect("spawning the signal thread");
    let outcome = ceiling::run(config, &interrupt);
    handle.close();
    let _ = watcher.join();
    match outcome {
        Ok(outcome) => {
            let report = &outcome.report;
            if config.json {
                match serde_json::to_string_pretty(report) {
                    Ok(json) => println!("{json}"),
                    Err(e) => {
                        eprintln!("brokerceiling: encoding the report: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", report.text());
            }
            if report.interrupted {
                ExitCode::from(130)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("brokerceiling: {e}");
            ExitCode::FAILURE
        }
    }
}
