//! The command line as an operator meets it: secrets never shown, boolean
//! environment variables accepted in every usual spelling, bad instance
//! settings refused naming their flag. The shared checks are
//! `chatflow_testkit::cli`'s, used by the server too.

use chatflow_consumer::assignment::Standby;
use chatflow_consumer::{Args, Config};
use chatflow_testkit::cli::{
    assert_boolean_spellings, assert_help_hides_env, assert_hidden, assert_refusal_hides_env,
    env_lock, parse_config, run, BoolVar,
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
                env: "NO_SCHED_BATCH",
                flag: "--no-sched-batch",
                read: |config: &Config| !config.sched_batch,
            },
            BoolVar {
                env: "APPLY_SCHEMA",
                flag: "--apply-schema",
                read: |config: &Config| config.database.apply_schema,
            },
            BoolVar {
                env: "CONSUMER_NO_STANDBY",
                flag: "--no-standby",
                read: |config: &Config| config.assignment.standby == Standby::Off,
            },
        ],
        || parse_config("chatflow-consumer", &[], Args::into_config),
    );
}

/// Bad instance settings, as flags or in the environment, stop the binary
/// with exit 2 and an error naming the flag, before it connects anywhere.
#[test]
fn bad_instance_settings_exit_2_naming_the_flag() {
    for (args, env, flag) in [
        (&["--instances", "0"][..], &[][..], "--instances"),
        (
            &["--rooms", "1", "--instances", "6"][..],
            &[][..],
            "--instances",
        ),
        (
            &["--instances", "2", "--instance", "3"][..],
            &[][..],
            "--instance:",
        ),
        (&["--instance", "0"][..], &[][..], "--instance:"),
        (&[][..], &[("CONSUMER_INSTANCES", "two")][..], "--instances"),
        (
            &[][..],
            &[("CONSUMER_INSTANCES", "3"), ("CONSUMER_INSTANCE", "4")][..],
            "--instance:",
        ),
        (
            &["--standby-delay-secs=-1"][..],
            &[][..],
            "--standby-delay-secs",
        ),
        (
            &[][..],
            &[("STANDBY_DELAY_SECS", "soon")][..],
            "--standby-delay-secs",
        ),
        (
            &[][..],
            &[("CONSUMER_NO_STANDBY", "maybe")][..],
            "--no-standby",
        ),
    ] {
        let mut env = env.to_vec();
        env.extend_from_slice(SECRET_ENV);
        let output = run(BIN, args, &env);
        let text = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}:\n{text}");
        assert!(
            text.contains(flag),
            "{args:?} {env:?}: does not name {flag}:\n{text}"
        );
        assert_hidden("the error", &text, &[RABBIT_SECRET, DB_SECRET]);
    }
}
