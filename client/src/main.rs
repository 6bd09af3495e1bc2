//! `chatflow-client`: flags → [`chatflow_client::Config`], Ctrl-C → a stop
//! flag, run, print the summary, exit with the run's status.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{CommandFactory, Parser};

use chatflow_client::{Args, Error};

fn main() -> ExitCode {
    let config = match Args::parse().into_config() {
        Ok(c) => c,
        // Same form and status (2) as clap's own flag errors.
        Err(e) => Args::command()
            .error(clap::error::ErrorKind::ValueValidation, e)
            .exit(),
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
    match chatflow_client::run_until(config, stop) {
        Ok(report) => {
            print!("{}", report.render());
            ExitCode::from(report.exit_code())
        }
        Err(e @ Error::Interrupted) => {
            eprintln!("chatflow-client: {e}");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("chatflow-client: error: {e}");
            ExitCode::FAILURE
        }
    }
}
