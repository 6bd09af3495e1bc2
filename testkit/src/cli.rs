//! The command line as an operator meets it, checked the same way for
//! every binary: secrets given in the environment never appear in `--help`
//! or in an error, and boolean variables accept every usual spelling.
//!
//! clap reads the process environment while parsing, and the boolean check
//! sets variables in it: tests that parse or set variables take
//! [`env_lock`] first, so they never see each other's values.

use std::fmt::Display;
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

/// The spellings a boolean variable must take, with what each means.
pub const BOOLEAN_SPELLINGS: [(&str, bool); 9] = [
    ("1", true),
    ("true", true),
    ("TRUE", true),
    ("yes", true),
    ("on", true),
    ("0", false),
    ("false", false),
    ("no", false),
    ("off", false),
];

/// A spelling no boolean variable may take.
pub const NOT_A_BOOLEAN: &str = "maybe";

/// Serialises the tests of one binary that read or set environment
/// variables; a test that panicked while holding it does not poison it.
pub fn env_lock() -> MutexGuard<'static, ()> {
    static ENV: Mutex<()> = Mutex::new(());
    ENV.lock().unwrap_or_else(|e| e.into_inner())
}

/// Panics if any of `secrets` appears in `text` (`what` names the text).
pub fn assert_hidden(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!text.contains(secret), "{what} shows {secret:?}:\n{text}");
    }
}

/// Runs `bin` with `args` and the variables `env` added to its environment.
/// Holds [`env_lock`] while it runs: the child inherits this process's
/// environment, which a concurrent [`assert_boolean_spellings`] may have
/// set to a value the child would refuse (seen: `ENABLE_PERSISTENCE=maybe`
/// failing another test's run). So never call it holding the lock.
pub fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let _env = env_lock();
    Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("runs {bin}: {e}"))
}

/// `bin --help` with `env` set succeeds, names every variable of `env`
/// and shows none of their values (clap would print `[env: NAME=value]`
/// unless told not to).
pub fn assert_help_hides_env(bin: &str, env: &[(&str, &str)]) {
    let output = run(bin, &["--help"], env);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{bin} --help failed:\n{text}");
    for (name, _) in env {
        assert!(text.contains(name), "--help does not name {name}:\n{text}");
    }
    let values: Vec<&str> = env.iter().map(|(_, value)| *value).collect();
    assert_hidden("--help", &text, &values);
}

/// `bin args` with `env` set is refused as a usage error (exit 2) that
/// names `flag` and shows none of the values of `env`.
pub fn assert_refusal_hides_env(bin: &str, args: &[&str], env: &[(&str, &str)], flag: &str) {
    let output = run(bin, args, env);
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{bin} {args:?}:\n{text}");
    assert!(
        text.contains(flag),
        "the error does not name {flag}:\n{text}"
    );
    let values: Vec<&str> = env.iter().map(|(_, value)| *value).collect();
    assert_hidden("the error", &text, &values);
}

/// A boolean environment variable and where its value lands.
pub struct BoolVar<T> {
    /// The variable, e.g. `SHARE_PORT`.
    pub env: &'static str,
    /// Its flag, which a refusal must name, e.g. `--share-port`.
    pub flag: &'static str,
    /// Whether the parsed configuration says the variable was true (for
    /// a `NO_…` variable, the negation of the field it turns off).
    pub read: fn(&T) -> bool,
}

/// Sets every variable of `vars` to each of [`BOOLEAN_SPELLINGS`] in turn
/// and checks that `parse` (flags and environment → configuration) reads
/// the meaning; then sets each in turn to [`NOT_A_BOOLEAN`] and checks the
/// refusal names its flag. Holds [`env_lock`] and removes the variables
/// again, pass or fail.
pub fn assert_boolean_spellings<T, E: Display>(
    vars: &[BoolVar<T>],
    mut parse: impl FnMut() -> Result<T, E>,
) {
    let _env = env_lock();
    let _unset = Unset(vars.iter().map(|var| var.env).collect());
    for (spelling, meaning) in BOOLEAN_SPELLINGS {
        for var in vars {
            std::env::set_var(var.env, spelling);
        }
        let parsed = parse().unwrap_or_else(|e| panic!("every variable {spelling:?}: {e}"));
        for var in vars {
            assert_eq!((var.read)(&parsed), meaning, "{}={spelling}", var.env);
        }
    }
    for refused in vars {
        for var in vars {
            std::env::remove_var(var.env);
        }
        std::env::set_var(refused.env, NOT_A_BOOLEAN);
        match parse() {
            Ok(_) => panic!("{}={NOT_A_BOOLEAN} was accepted", refused.env),
            Err(e) => assert!(
                e.to_string().contains(refused.flag),
                "{}={NOT_A_BOOLEAN}: the error does not name {}: {e}",
                refused.env,
                refused.flag
            ),
        }
    }
}

/// Removes its variables when dropped.
struct Unset(Vec<&'static str>);

impl Drop for Unset {
    fn drop(&mut self) {
        for name in &self.0 {
            std::env::remove_var(name);
        }
    }
}

/// Parses `args` as the command line of `bin` with clap and validates the
/// result with `into`: the configuration, or the error's text (clap's or
/// the check's).
pub fn parse_config<A: clap::Parser, C, E: Display>(
    bin: &str,
    args: &[&str],
    into: impl FnOnce(A) -> Result<C, E>,
) -> Result<C, String> {
    let args = A::try_parse_from(std::iter::once(bin).chain(args.iter().copied()))
        .map_err(|e| e.to_string())?;
    into(args).map_err(|e| e.to_string())
}

/// Asserts that each command line in `cases` is refused with an error that
/// names its flag.
pub fn assert_refusals_name_their_flag<C>(
    parse: impl Fn(&[&str]) -> Result<C, String>,
    cases: &[(&[&str], &str)],
) {
    for (args, flag) in cases {
        match parse(args) {
            Ok(_) => panic!("{args:?} was accepted; expected a refusal naming {flag}"),
            Err(e) => assert!(e.contains(flag), "{args:?}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for a binary's parser: one boolean variable.
    fn parse() -> Result<bool, String> {
        match std::env::var("CHATFLOW_TESTKIT_FLAG").as_deref() {
            Ok("1" | "true" | "TRUE" | "yes" | "on") => Ok(true),
            Ok("0" | "false" | "no" | "off") | Err(_) => Ok(false),
            Ok(other) => Err(format!("--flag: {other:?} is not a boolean")),
        }
    }

    #[test]
    fn a_parser_taking_every_spelling_passes() {
        assert_boolean_spellings(
            &[BoolVar {
                env: "CHATFLOW_TESTKIT_FLAG",
                flag: "--flag",
                read: |on: &bool| *on,
            }],
            parse,
        );
        assert!(std::env::var("CHATFLOW_TESTKIT_FLAG").is_err(), "removed");
    }

    #[test]
    #[should_panic(expected = "shows \"pw\"")]
    fn a_shown_secret_panics() {
        assert_hidden("the output", "password=pw", &["pw"]);
    }
}
