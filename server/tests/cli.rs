//! The command line as an operator meets it: secrets never shown, boolean
//! environment variables accepted in every usual spelling. The checks
//! themselves are `chatflow_testkit::cli`'s, shared with the consumer.

use chatflow_server::{Args, Config};
use chatflow_testkit::cli::{
    assert_boolean_spellings, assert_help_hides_env, assert_hidden, assert_refusal_hides_env,
    env_lock, parse_config, BoolVar,
};
use clap::Parser;

const BIN: &str = env!("CARGO_BIN_EXE_chatflow-server");
const SECRET: &str = "s3cr3t-rabbit-pw";
const DB_SECRET: &str = "s3cr3t-postgres-pw";
const SECRET_ENV: &[(&str, &str)] = &[("RABBITMQ_PASSWORD", SECRET), ("DB_PASSWORD", DB_SECRET)];

/// `--help` with the secrets in the environment never prints them (clap
/// would show `[env: RABBITMQ_PASSWORD=…]` unless told not to).
#[test]
fn help_never_shows_secrets() {
    assert_help_hides_env(BIN, SECRET_ENV);
}

/// A refused configuration names its flag and never echoes the secret; a
/// parsed one prints `***` for it.
#[test]
fn errors_and_debug_never_show_secrets() {
    assert_refusal_hides_env(BIN, &["--rooms", "0"], SECRET_ENV, "--rooms");
    let _env = env_lock(); // clap reads the environment
    let args = Args::try_parse_from([
        "chatflow-server",
        "--rabbitmq-password",
        SECRET,
        "--db-password",
        DB_SECRET,
    ])
    .unwrap();
    assert_hidden("Args' Debug", &format!("{args:?}"), &[SECRET, DB_SECRET]);
    let config = args.into_config().unwrap();
    assert_eq!(config.services.amqp.password.expose(), SECRET);
    let api = config.api.as_ref().expect("the API is on by default");
    assert_eq!(api.database.password.expose(), DB_SECRET);
    assert_hidden(
        "Config's Debug",
        &format!("{config:?}"),
        &[SECRET, DB_SECRET],
    );
}

/// Every boolean variable takes 1/0, true/false, yes/no, on/off, and
/// anything else is refused naming its flag.
#[test]
fn boolean_variables_take_every_usual_spelling() {
    assert_boolean_spellings(
        &[
            BoolVar {
                env: "NO_PIN",
                flag: "--no-pin",
                read: |config: &Config| !config.pin_workers,
            },
            BoolVar {
                env: "NO_SCHED_BATCH",
                flag: "--no-sched-batch",
                read: |config: &Config| !config.sched_batch,
            },
            BoolVar {
                env: "SHARE_PORT",
                flag: "--share-port",
                read: |config: &Config| config.share_port,
            },
        ],
        || parse_config("chatflow-server", &[], Args::into_config),
    );
}
