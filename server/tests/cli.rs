//! The command line as an operator meets it: secrets never shown, boolean
//! environment variables accepted in every usual spelling.

use std::process::Command;
use std::sync::Mutex;

use chatflow_server::Args;
use clap::Parser;

/// Tests here set process-wide environment variables: one at a time.
static ENV: Mutex<()> = Mutex::new(());

const SECRET: &str = "s3cr3t-rabbit-pw";

/// `--help` with the secret in the environment never prints it (clap would
/// show `[env: RABBITMQ_PASSWORD=…]` unless told not to).
#[test]
fn help_never_shows_secrets() {
    let output = Command::new(env!("CARGO_BIN_EXE_chatflow-server"))
        .arg("--help")
        .env("RABBITMQ_PASSWORD", SECRET)
        .output()
        .expect("runs chatflow-server --help");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("RABBITMQ_PASSWORD"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
}

/// A refused configuration names its flag and never echoes the secret; a
/// parsed one prints `***` for it.
#[test]
fn errors_and_debug_never_show_secrets() {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let output = Command::new(env!("CARGO_BIN_EXE_chatflow-server"))
        .args(["--rooms", "0"])
        .env("RABBITMQ_PASSWORD", SECRET)
        .output()
        .expect("runs chatflow-server");
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("--rooms"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
    let args = Args::try_parse_from(["chatflow-server", "--rabbitmq-password", SECRET]).unwrap();
    assert!(!format!("{args:?}").contains(SECRET));
    let config = args.into_config().unwrap();
    assert_eq!(config.services.amqp.password.expose(), SECRET);
    assert!(!format!("{config:?}").contains(SECRET));
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
        std::env::set_var("NO_PIN", value);
        std::env::set_var("SHARE_PORT", value);
        let config = Args::try_parse_from(["chatflow-server"])
            .unwrap_or_else(|e| panic!("NO_PIN={value}: {e}"))
            .into_config()
            .unwrap();
        assert_eq!(config.pin_workers, !expected, "NO_PIN={value}");
        assert_eq!(config.share_port, expected, "SHARE_PORT={value}");
    }
    std::env::set_var("NO_PIN", "maybe");
    let err = Args::try_parse_from(["chatflow-server"]).unwrap_err();
    assert!(err.to_string().contains("--no-pin"), "{err}");
    std::env::remove_var("NO_PIN");
    std::env::remove_var("SHARE_PORT");
}
