//! `chatflow-client`: flags → a run's [`chatflow_client::Config`] (Ctrl-C →
//! a stop flag, run — a load run, or with `--connections-only` a
//! connection-count test — print the summary, exit with the run's status),
//! or `chatflow-client metrics` → one `/api/metrics` request printed as
//! tables.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{CommandFactory, Parser};

use chatflow_client::{Args, Cli, Command, Error, MetricsArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Metrics(args)) => metrics(args),
        None => run(cli.run),
    }
}

/// A usage error in clap's form and status (2), under `subcommand`'s usage.
fn usage_error(subcommand: Option<&str>, e: Error) -> ! {
    let mut cmd = Cli::command();
    if let Some(name) = subcommand {
        cmd.build();
        if let Some(sub) = cmd.find_subcommand_mut(name) {
            sub.error(clap::error::ErrorKind::ValueValidation, e).exit();
        }
    }
    cmd.error(clap::error::ErrorKind::ValueValidation, e).exit()
}

fn metrics(args: MetricsArgs) -> ExitCode {
    let request = match args.into_request() {
        Ok(r) => r,
        Err(e) => usage_error(Some("metrics"), e),
    };
    match chatflow_client::metrics::show(&request) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chatflow-client metrics: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(args: Args) -> ExitCode {
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => usage_error(None, e),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The first signal asks the run to stop and report; a second one,
        // with the flag already set, exits at once.
        let installed =
            signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&stop))
                .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&stop)));
        if let Err(e) = installed {
            eprintln!("warning: cannot install the signal handler: {e}");
        }
    }
    if config.hold.is_some() {
        return match chatflow_client::hold::run_until(config, stop) {
            Ok(report) => {
                print!("{}", report.render());
                ExitCode::from(report.exit_code())
            }
            Err(e) => failed(e),
        };
    }
    match chatflow_client::run_until(config, stop) {
        Ok(report) => {
            print!("{}", report.render());
            ExitCode::from(report.exit_code())
        }
        Err(e) => failed(e),
    }
}

/// A run that could not start or report: 130 when interrupted first, else 1.
fn failed(e: Error) -> ExitCode {
    match e {
        Error::Interrupted => {
            eprintln!("chatflow-client: {e}");
            ExitCode::from(130)
        }
        e => {
            eprintln!("chatflow-client: error: {e}");
            ExitCode::FAILURE
        }
    }
}
