//! The command line as an operator meets it: secrets never shown, boolean
//! environment variables accepted in every usual spelling. The checks
//! themselves are `chatflow_testkit::cli`'s, shared with the server.

use chatflow_consumer::{Args, Config};
use chatflow_testkit::cli::{
    assert_boolean_spellings, assert_help_hides_env, assert_hidden, assert_refusal_hides_env,
    env_lock, parse_config, BoolVar,
};
use clap::Parser;

const BIN: &str = env!("CARGO_BIN_EXE_chatflow-consumer");
const RABBIT_SECRET: &str = "s3cr3t-rabbit-pw";
const DB_SECRET: &str = "s3cr3t-db-pw";
const SECRET_ENV: &[(&str, &str)] = &[
    ("RABBITMQ_PASSWORD", RABBIT_SECRET),
    ("DB_PASSWORD", DB_SECRET),
];

/// `--help` with the secrets in the environment never prints them.
#[test]
fn help_never_shows_secrets() {
    assert_help_hides_env(BIN, SECRET_ENV);
}

/// A refused configuration names its flag and never echoes a secret; a
/// parsed one prints `***` for each.
#[test]
fn errors_and_debug_never_show_secrets() {
    assert_refusal_hides_env(BIN, &["--rooms", "0"], SECRET_ENV, "--rooms");
    let _env = env_lock(); // clap reads the environment
    let args = Args::try_parse_from([
        "chatflow-consumer",
        "--rabbitmq-password",
        RABBIT_SECRET,
        "--db-password",
        DB_SECRET,
    ])
    .unwrap();
    let secrets = [RABBIT_SECRET, DB_SECRET];
    assert_hidden("Args' Debug", &format!("{args:?}"), &secrets);
    let config = args.into_config().unwrap();
    assert_hidden("Config's Debug", &format!("{config:?}"), &secrets);
}

/// Every boolean variable takes 1/0, true/false, yes/no, on/off, and
/// anything else is refused naming its flag.
#[test]
fn boolean_variables_take_every_usual_spelling() {
    assert_boolean_spellings(
        &[
            BoolVar {
                env: "ENABLE_PERSISTENCE",
                flag: "--enable-persistence",
                read: |config: &Config| config.enable_persistence,
            },
            BoolVar {
                env: "APPLY_SCHEMA",
                flag: "--apply-schema",
                read: |config: &Config| config.database.apply_schema,
            },
        ],
        || parse_config("chatflow-consumer", &[], Args::into_config),
    );
}
