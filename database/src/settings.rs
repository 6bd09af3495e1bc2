//! Where PostgreSQL is and as whom to connect: the `DB_*` settings the
//! consumer (writers) and the server (read API) share, declared once
//! ([`DatabaseArgs`], flattened into both binaries) and validated into
//! [`DatabaseSettings`]. The password is a [`Secret`]: never in `--help`,
//! `Debug` or an error message.

use std::time::Duration;

pub use chatflow_broker::Secret;
use chatflow_protocol::flags::{bad, ConfigError};
use clap::Args;

/// The shared `DB_*` flags.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL host.
    #[arg(long, env = "DB_HOST", default_value = "127.0.0.1")]
    pub db_host: String,
    /// PostgreSQL port.
    #[arg(long, env = "DB_PORT", default_value_t = 5432)]
    pub db_port: u16,
    /// PostgreSQL user (setup_database.sh creates it).
    #[arg(long, env = "DB_USER", default_value = "postgres")]
    pub db_user: String,
    /// PostgreSQL password (empty: none, for trust authentication; never printed).
    #[arg(
        long,
        env = "DB_PASSWORD",
        default_value = "",
        value_parser = Secret::parse,
        hide_env_values = true,
        hide_default_value = true
    )]
    pub db_password: Secret,
    /// PostgreSQL database.
    #[arg(long, env = "DB_NAME", default_value = "chatflow")]
    pub db_name: String,
}

impl DatabaseArgs {
    /// Checks every value (each refusal names its flag).
    pub fn into_settings(self) -> Result<DatabaseSettings, ConfigError> {
        let settings = DatabaseSettings {
            host: self.db_host,
            port: self.db_port,
            user: self.db_user,
            password: self.db_password,
            name: self.db_name,
        };
        settings.validate()?;
        Ok(settings)
    }
}

/// A validated database endpoint. `Default` is the local trust-auth setup
/// every default of ChatFlow works against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseSettings {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Secret,
    pub name: String,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            host: "127.0.0.1".to_string(),
            port: 5432,
            user: "postgres".to_string(),
            password: Secret::default(),
            name: "chatflow".to_string(),
        }
    }
}

impl DatabaseSettings {
    /// What a library caller (not going through [`DatabaseArgs`]) could get
    /// wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (flag, value) in [
            ("db-host", &self.host),
            ("db-user", &self.user),
            ("db-name", &self.name),
        ] {
            if value.trim().is_empty() {
                return Err(bad(flag, "must not be empty"));
            }
        }
        if self.port == 0 {
            return Err(bad("db-port", "must be 1..=65535"));
        }
        Ok(())
    }

    /// A libpq-style connection string (values quoted, so any password
    /// works). `application` names the connection in `pg_stat_activity`.
    pub fn connection_string(&self, application: &str, connect_timeout: Duration) -> String {
        let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        let mut s = format!(
            "host={} port={} user={} dbname={} connect_timeout={} application_name={}",
            quote(&self.host),
            self.port,
            quote(&self.user),
            quote(&self.name),
            connect_timeout.as_secs().max(1),
            quote(application),
        );
        if !self.password.is_empty() {
            s.push_str(&format!(" password={}", quote(self.password.expose())));
        }
        s
    }

    /// `user@host:port/name`, for messages and health documents (no
    /// password).
    pub fn display(&self) -> String {
        format!(
            "{}@{}:{}/{}",
            self.user,
            chatflow_broker::settings::host_for_url(&self.host),
            self.port,
            self.name
        )
    }
}

/// Hides the password of a libpq-style connection string in messages. A
/// quoted value (`password='a b\'c'`) ends at its closing unescaped quote,
/// not at the first space.
pub fn redact(connection: &str) -> String {
    const KEY: &str = "password=";
    let mut out = String::with_capacity(connection.len());
    let mut rest = connection;
    while let Some(at) = rest.find(KEY) {
        let is_key = at == 0 || rest[..at].ends_with(char::is_whitespace);
        out.push_str(&rest[..at + KEY.len()]);
        let value = &rest[at + KEY.len()..];
        if !is_key {
            rest = value;
            continue;
        }
        out.push_str("***");
        let mut chars = value.char_indices();
        let end = match chars.next() {
            Some((_, '\'')) => {
                let mut escaped = false;
                let mut end = value.len();
                for (i, c) in chars {
                    match c {
                        _ if escaped => escaped = false,
                        '\\' => escaped = true,
                        '\'' => {
                            end = i + 1;
                            break;
                        }
                        _ => {}
                    }
                }
                end
            }
            _ => value.find(char::is_whitespace).unwrap_or(value.len()),
        };
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_quote_every_value_and_hide_the_password() {
        let settings = DatabaseSettings {
            password: Secret::new("it's \\ secret"),
            ..DatabaseSettings::default()
        };
        let conn = settings.connection_string("chatflow-test", Duration::from_secs(5));
        assert_eq!(
            conn,
            r"host='127.0.0.1' port=5432 user='postgres' dbname='chatflow' connect_timeout=5 application_name='chatflow-test' password='it\'s \\ secret'"
        );
        assert!(!redact(&conn).contains("secret"));
        assert_eq!(
            redact("host=h password='a b\\'c' options='-c x=1'"),
            "host=h password=*** options='-c x=1'"
        );
        assert_eq!(redact("password=plain user=u"), "password=*** user=u");
        assert!(!format!("{settings:?}").contains("secret"));
        assert_eq!(settings.display(), "postgres@127.0.0.1:5432/chatflow");
    }

    #[test]
    fn empty_values_name_their_flag() {
        let empty_host = DatabaseSettings {
            host: " ".into(),
            ..DatabaseSettings::default()
        };
        assert!(empty_host
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--db-host"));
        let no_port = DatabaseSettings {
            port: 0,
            ..DatabaseSettings::default()
        };
        assert!(no_port
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--db-port"));
    }
}
