//! The command line as an operator meets it: secrets never shown, boolean
//! environment variables accepted in every usual spelling.

use std::process::Command;
use std::sync::Mutex;

use chatflow_consumer::Args;
use clap::Parser;

/// Tests here set process-wide environment variables: one at a time.
static ENV: Mutex<()> = Mutex::new(());

const RABBIT_SECRET: &str = "s3cr3t-rabbit-pw";
const DB_SECRET: &str = "s3cr3t-db-pw";

/// `--help` with the secrets in the environment never prints them.
#[test]
fn help_never_shows_secrets() {
    let output = Command::new(env!("CARGO_BIN_EXE_chatflow-consumer"))
        .arg("--help")
        .env("RABBITMQ_PASSWORD", RABBIT_SECRET)
        .env("DB_PASSWORD", DB_SECRET)
        .output()
        .expect("runs chatflow-consumer --help");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("RABBITMQ_PASSWORD") && text.contains("DB_PASSWORD"));
    assert!(
        !text.contains(RABBIT_SECRET) && !text.contains(DB_SECRET),
        "{text}"
    );
}

/// A refused configuration names its flag and never echoes a secret; a
/// parsed one prints `***` for each.
#[test]
fn errors_and_debug_never_show_secrets() {
    let output = Command::new(env!("CARGO_BIN_EXE_chatflow-consumer"))
        .args(["--rooms", "0"])
        .env("RABBITMQ_PASSWORD", RABBIT_SECRET)
        .env("DB_PASSWORD", DB_SECRET)
        .output()
        .expect("runs chatflow-consumer");
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("--rooms"), "{text}");
    assert!(
        !text.contains(RABBIT_SECRET) && !text.contains(DB_SECRET),
        "{text}"
    );
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let args = Args::try_parse_from([
        "chatflow-consumer",
        "--rabbitmq-password",
        RABBIT_SECRET,
        "--db-password",
        DB_SECRET,
    ])
    .unwrap();
    let debug = format!("{args:?}");
    assert!(
        !debug.contains(RABBIT_SECRET) && !debug.contains(DB_SECRET),
        "{debug}"
    );
    let debug = format!("{:?}", args.into_config().unwrap());
    assert!(
        !debug.contains(RABBIT_SECRET) && !debug.contains(DB_SECRET),
        "{debug}"
    );
}

/// Every boolean variable takes 1/0, true/false, yes/no, on/off.
#[test]
fn boolean_variables_take_every_usual_spelling() {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    for (value, expected) in [
        ("1", true),
        ("true", true),
        ("TRUE", true),
        ("yes", true),
        ("on", true),
        ("0", false),
        ("false", false),
        ("no", false),
        ("off", false),
    ] {
        // Serialised by ENV above; no other test of this binary reads them.
        std::env::set_var("ENABLE_PERSISTENCE", value);
        std::env::set_var("APPLY_SCHEMA", value);
        let config = Args::try_parse_from(["chatflow-consumer"])
            .unwrap_or_else(|e| panic!("{value}: {e}"))
            .into_config()
            .unwrap();
        assert_eq!(
            config.enable_persistence, expected,
            "ENABLE_PERSISTENCE={value}"
        );
        assert_eq!(
            config.database.apply_schema, expected,
            "APPLY_SCHEMA={value}"
        );
    }
    std::env::set_var("APPLY_SCHEMA", "maybe");
    let err = Args::try_parse_from(["chatflow-consumer"]).unwrap_err();
    assert!(err.to_string().contains("--apply-schema"), "{err}");
    std::env::remove_var("ENABLE_PERSISTENCE");
    std::env::remove_var("APPLY_SCHEMA");
}
