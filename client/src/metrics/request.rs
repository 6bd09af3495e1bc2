//! What to ask the read API: the query parameters with the flag that set
//! each ([`QueryParam`]), and the `metrics` subcommand's flags
//! ([`MetricsArgs`]) → a validated [`MetricsRequest`] (the API's base URL
//! is a [`ApiUrl`], parsed in `config` beside the WebSocket [`Endpoint`](crate::config::Endpoint)).
//!
//! Parameter names and ranges are the API's to check (it refuses unknown,
//! repeated and out-of-range parameters with a 400 naming the parameter);
//! the client checks only what it can name better itself: `KEY=VALUE`
//! syntax, the same key given twice, and the shortcuts' types.

use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::ArgAction;

use crate::config::{parse_duration, ApiUrl};
use crate::error::{Error, ParamError, Result};

/// A `--param` value: `KEY=VALUE`, split at the first `=` (the value may
/// hold more).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    pub key: String,
    pub value: String,
}

/// Parses `KEY=VALUE`; the key is a plain name, the value anything
/// (percent-encoded when sent).
pub fn parse_param(text: &str) -> std::result::Result<Param, ParamError> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(ParamError::NoEquals(text.to_string()));
    };
    if key.is_empty() {
        return Err(ParamError::EmptyKey(text.to_string()));
    }
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(ParamError::BadKey(key.to_string()));
    }
    Ok(Param {
        key: key.to_string(),
        value: value.to_string(),
    })
}

/// Checks a `--start`/`--end` value is an RFC 3339 time with an offset
/// (what the API accepts), so the mistake is named by its flag.
fn parse_time(text: &str) -> std::result::Result<String, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|_| text.to_string())
        .map_err(|e| format!("expected an RFC 3339 time such as 2026-12-01T20:00:00Z ({e})"))
}

/// One query parameter to send, with the flag that set it (for errors).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryParam {
    pub key: String,
    pub value: String,
    /// `--room`, `--param`, or `run` for the parameters a load run sets.
    pub flag: String,
}

impl QueryParam {
    pub fn new(key: &str, value: impl Into<String>, flag: &str) -> Self {
        QueryParam {
            key: key.to_string(),
            value: value.into(),
            flag: flag.to_string(),
        }
    }
}

/// `chatflow-client metrics`: one `GET /api/metrics`, shown as tables.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 the document was fetched (parts of it may say why they are missing); 1 the API is unreachable, timed out, unavailable (503, 504) or answered anything else (404, not JSON); 2 bad flags or parameters the API refused (400, naming the parameter)."
)]
pub struct MetricsArgs {
    /// The read API's base URL (a server's --api-bind).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8082")]
    pub api_url: String,
    /// A query parameter, passed as given (repeatable), e.g. --param roomId=5.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    pub params: Vec<Param>,
    /// The room whose messages are listed (roomId; default: the busiest in the window).
    #[arg(long, value_name = "N")]
    pub room: Option<u32>,
    /// The user whose history and rooms are listed (userId; default: the busiest).
    #[arg(long, value_name = "N")]
    pub user: Option<u32>,
    /// Window start, RFC 3339 (start; default: an hour before --end).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub start: Option<String>,
    /// Window end, RFC 3339, exclusive (end; default: now).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub end: Option<String>,
    /// Messages in each message list of the document (limit; API default 100).
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Entries of the top users and top rooms tables (topN; API default 10).
    #[arg(long, value_name = "N")]
    pub top: Option<u32>,
    /// Print the raw document, pretty, instead of tables.
    #[arg(long, value_name = "BOOL", value_parser = BoolishValueParser::new())]
    #[arg(action = ArgAction::Set, num_args = 0..=1, require_equals = true)]
    #[arg(default_missing_value = "true", default_value_t = false)]
    pub json: bool,
    /// Message lines shown per message list (the document may hold more).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub lines: usize,
    /// Bound of the whole request (connect, send, answer).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub api_timeout: Duration,
}

/// A validated `metrics` request.
#[derive(Clone, Debug)]
pub struct MetricsRequest {
    pub api: ApiUrl,
    /// In the order sent: the shortcuts, then `--param`s as given.
    pub params: Vec<QueryParam>,
    pub timeout: Duration,
    pub json: bool,
    pub lines: usize,
}

impl MetricsArgs {
    /// Flags → a validated request. The error names the flag(s).
    pub fn into_request(self) -> Result<MetricsRequest> {
        let api = ApiUrl::parse(&self.api_url).map_err(|source| Error::ApiUrl {
            text: self.api_url.clone(),
            source,
        })?;
        if self.api_timeout.is_zero() {
            return Err(Error::Config(
                "--api-timeout must be greater than zero".into(),
            ));
        }
        let shortcuts = [
            ("start", "--start", self.start),
            ("end", "--end", self.end),
            ("roomId", "--room", self.room.map(|v| v.to_string())),
            ("userId", "--user", self.user.map(|v| v.to_string())),
            ("limit", "--limit", self.limit.map(|v| v.to_string())),
            ("topN", "--top", self.top.map(|v| v.to_string())),
        ];
        let mut params: Vec<QueryParam> = shortcuts
            .into_iter()
            .filter_map(|(key, flag, value)| value.map(|v| QueryParam::new(key, v, flag)))
            .collect();
        for p in self.params {
            // The API refuses a repeated parameter too; here the message can
            // say which two flags collide.
            if let Some(earlier) = params.iter().find(|q| q.key == p.key) {
                let earlier = if earlier.flag == "--param" {
                    format!("--param {}={}", earlier.key, earlier.value)
                } else {
                    earlier.flag.clone()
                };
                return Err(Error::Config(format!(
                    "--param {}={}: {} is already set by {earlier}",
                    p.key, p.value, p.key
                )));
            }
            params.push(QueryParam::new(&p.key, p.value, "--param"));
        }
        Ok(MetricsRequest {
            api,
            params,
            timeout: self.api_timeout,
            json: self.json,
            lines: self.lines,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The subcommand's flags alone, as a parser.
    #[derive(Debug, Parser)]
    struct Cmd {
        #[command(flatten)]
        args: MetricsArgs,
    }

    fn request(args: &[&str]) -> std::result::Result<MetricsRequest, String> {
        chatflow_testkit::cli::parse_config::<Cmd, _, _>("metrics", args, |c| c.args.into_request())
    }

    #[test]
    fn params_split_at_the_first_equals_and_refuse_bad_syntax() {
        assert_eq!(
            parse_param("start=a=b").unwrap(),
            Param {
                key: "start".into(),
                value: "a=b".into()
            }
        );
        assert_eq!(parse_param("roomId=").unwrap().value, "");
        assert!(matches!(
            parse_param("roomId"),
            Err(ParamError::NoEquals(_))
        ));
        assert!(matches!(parse_param("=5"), Err(ParamError::EmptyKey(_))));
        assert!(matches!(parse_param("a b=5"), Err(ParamError::BadKey(_))));
    }

    #[test]
    fn shortcuts_and_params_become_query_parameters_in_order() {
        let r = request(&[
            "--room",
            "5",
            "--param",
            "order=desc",
            "--start",
            "2026-12-01T20:00:00Z",
            "--top",
            "3",
        ])
        .unwrap();
        let sent: Vec<(&str, &str, &str)> = r
            .params
            .iter()
            .map(|p| (p.key.as_str(), p.value.as_str(), p.flag.as_str()))
            .collect();
        assert_eq!(
            sent,
            [
                ("start", "2026-12-01T20:00:00Z", "--start"),
                ("roomId", "5", "--room"),
                ("topN", "3", "--top"),
                ("order", "desc", "--param"),
            ]
        );
        assert_eq!(r.api.base(), "http://127.0.0.1:8082");
        assert_eq!((r.lines, r.json), (10, false));
    }

    #[test]
    fn refusals_name_their_flag() {
        chatflow_testkit::cli::assert_refusals_name_their_flag(
            request,
            &[
                (&["--param", "roomId"][..], "--param"),
                (&["--param", "=1"][..], "--param"),
                (&["--room", "five"][..], "--room"),
                (&["--start", "yesterday"][..], "--start"),
                (&["--end", "2026-12-01 20:00"][..], "--end"),
                (&["--api-url", "https://h"][..], "--api-url"),
                (&["--api-timeout", "0s"][..], "--api-timeout"),
                (&["--json=maybe"][..], "--json"),
                // The same key twice names both flags.
                (&["--room", "5", "--param", "roomId=6"][..], "--room"),
                (&["--param", "a=1", "--param", "a=2"][..], "--param a=1"),
            ],
        );
    }
}
