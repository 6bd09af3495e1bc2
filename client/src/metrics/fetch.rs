//! `GET /api/metrics` over plain HTTP with `ureq` (blocking, no TLS, no
//! async runtime): one [`Api`] per base URL with a connect timeout and a
//! whole-request timeout, the answer read into a [`Fetched`] (the body as
//! sent plus its tolerant [`Document`]), every failure an [`ApiError`] that
//! names the URL, and for a 400 the parameter and the flag that set it.

use std::time::Duration;

use serde_json::Value;

use crate::config::ApiUrl;
use crate::error::ApiError;
use crate::metrics::document::Document;
use crate::metrics::request::QueryParam;

/// The metrics endpoint's path.
pub const METRICS_PATH: &str = "/api/metrics";

/// Longest connect: a read API on a LAN or loopback answers a SYN in
/// well under a millisecond, so 3 s already means "not there"; the whole
/// request may still take up to the configured timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Largest body read. A document with two lists at the API's `limit` cap
/// (1,000 messages of at most 8 KiB) and an hour of per-second counts is
/// under 20 MiB; more is not a metrics document.
const MAX_BODY: u64 = 32 << 20;

/// A read API client.
pub struct Api {
    base: ApiUrl,
    agent: ureq::Agent,
    timeout: Duration,
}

/// A fetched document: the body exactly as sent (for `--json` and
/// `metrics.json`) and its typed reading (for the tables and the run's
/// stored count).
#[derive(Clone, Debug)]
pub struct Fetched {
    pub url: String,
    pub body: String,
    pub document: Document,
}

impl Api {
    /// A client of the API at `base`; `timeout` bounds each whole request.
    pub fn new(base: &ApiUrl, timeout: Duration) -> Api {
        let agent = ureq::Agent::config_builder()
            .timeout_connect(Some(CONNECT_TIMEOUT.min(timeout)))
            .timeout_global(Some(timeout))
            // Error statuses carry the API's `{"error","parameter"}` body:
            // read it instead of getting a bare status code.
            .http_status_as_error(false)
            // The client reads no environment variables, proxies included.
            .proxy(None)
            .user_agent(concat!("chatflow-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Api {
            base: base.clone(),
            agent,
            timeout,
        }
    }

    /// `GET /api/metrics` with `params` as the query string.
    pub fn metrics(&self, params: &[QueryParam]) -> Result<Fetched, ApiError> {
        let url = self.base.endpoint(METRICS_PATH);
        let shown = shown_url(&url, params);
        let request = params
            .iter()
            .fold(self.agent.get(&url), |r, p| r.query(&p.key, &p.value));
        let mut response = request.call().map_err(|e| self.failure(&shown, e))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(|e| match e {
                e @ (ureq::Error::Timeout(_) | ureq::Error::Io(_)) => self.failure(&shown, e),
                other => ApiError::BadBody {
                    url: shown.clone(),
                    detail: other.to_string(),
                },
            })?;
        if status != 200 {
            return Err(refusal(shown, status, &body, params));
        }
        let value: Value = serde_json::from_str(&body).map_err(|e| ApiError::BadBody {
            url: shown.clone(),
            detail: format!("{e} (body starts {:?})", head(&body)),
        })?;
        let document = Document::from_value(value).map_err(|detail| ApiError::BadBody {
            url: shown.clone(),
            detail,
        })?;
        Ok(Fetched {
            url: shown,
            body,
            document,
        })
    }

    /// A transport failure as the user reads it.
    fn failure(&self, url: &str, e: ureq::Error) -> ApiError {
        match e {
            ureq::Error::Timeout(phase) => ApiError::Timeout {
                url: url.to_string(),
                seconds: self.timeout.as_secs_f64(),
                phase: phase.to_string(),
            },
            ureq::Error::HostNotFound => ApiError::Unreachable {
                url: url.to_string(),
                detail: "host not found".into(),
            },
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => ApiError::Timeout {
                url: url.to_string(),
                seconds: self.timeout.as_secs_f64(),
                phase: "read".into(),
            },
            ureq::Error::Io(io) => ApiError::Unreachable {
                url: url.to_string(),
                detail: io.to_string(),
            },
            other => ApiError::Unreachable {
                url: url.to_string(),
                detail: other.to_string(),
            },
        }
    }
}

/// The URL with its query, as printed in errors (unencoded: it is for
/// reading, not for pasting into a shell).
fn shown_url(url: &str, params: &[QueryParam]) -> String {
    if params.is_empty() {
        return url.to_string();
    }
    let query: Vec<String> = params
        .iter()
        .map(|p| format!("{}={}", p.key, p.value))
        .collect();
    format!("{url}?{}", query.join("&"))
}

/// An error status → [`ApiError::Status`], with the body's `error`,
/// `parameter` and `retryAfterSeconds` when it is the API's JSON, else
/// the start of whatever came.
fn refusal(url: String, status: u16, body: &str, params: &[QueryParam]) -> ApiError {
    let json: Option<Value> = serde_json::from_str(body).ok();
    let field = |name: &str| {
        json.as_ref()
            .and_then(|j| j.get(name))
            .filter(|v| !v.is_null())
    };
    let error = match field("error") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None if body.trim().is_empty() => "(empty body)".into(),
        None => format!("unexpected body {:?}", head(body)),
    };
    let parameter = field("parameter").map(|p| match p {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    let flag = parameter.as_ref().and_then(|name| {
        params
            .iter()
            .find(|p| &p.key == name)
            .map(|p| match p.flag.as_str() {
                "--param" => format!("--param {}={}", p.key, p.value),
                flag => flag.to_string(),
            })
    });
    ApiError::Status {
        url,
        status,
        error,
        parameter,
        flag,
        retry_after_seconds: field("retryAfterSeconds").and_then(Value::as_f64),
    }
}

/// The first 200 characters of a body, for error messages.
fn head(body: &str) -> String {
    body.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_parameter_and_its_flag() {
        let params = [
            QueryParam::new("roomId", "99", "--room"),
            QueryParam::new("strat", "x", "--param"),
        ];
        let e = refusal(
            "u".into(),
            400,
            r#"{"error": "roomId 99 is outside 1..=20", "parameter": "roomId"}"#,
            &params,
        );
        assert_eq!(e.exit_code(), 2);
        assert_eq!(
            e.to_string(),
            "u: HTTP 400: roomId 99 is outside 1..=20 (parameter roomId, set by --room)"
        );
        let e = refusal(
            "u".into(),
            400,
            r#"{"error": "unknown parameter", "parameter": "strat"}"#,
            &params,
        );
        assert!(
            e.to_string()
                .ends_with("(parameter strat, set by --param strat=x)"),
            "{e}"
        );
    }

    #[test]
    fn a_503_says_when_to_retry_and_other_bodies_are_shown() {
        let e = refusal(
            "u".into(),
            503,
            r#"{"error": "database unavailable: timed out", "retryAfterSeconds": 1}"#,
            &[],
        );
        assert_eq!(e.exit_code(), 1);
        assert_eq!(
            e.to_string(),
            "u: HTTP 503: database unavailable: timed out (retry after 1 s)"
        );
        let e = refusal(
            "u".into(),
            504,
            r#"{"error": "cancelled", "parameter": null}"#,
            &[],
        );
        assert_eq!(e.to_string(), "u: HTTP 504: cancelled");
        let e = refusal("u".into(), 502, "<html>bad gateway</html>", &[]);
        assert_eq!(
            e.to_string(),
            "u: HTTP 502: unexpected body \"<html>bad gateway</html>\""
        );
        assert_eq!(
            refusal("u".into(), 500, "", &[]).to_string(),
            "u: HTTP 500: (empty body)"
        );
    }

    #[test]
    fn the_shown_url_carries_the_query() {
        let params = [QueryParam::new(
            "start",
            "2026-12-01T20:00:00+01:00",
            "--start",
        )];
        assert_eq!(
            shown_url("http://h:1/api/metrics", &params),
            "http://h:1/api/metrics?start=2026-12-01T20:00:00+01:00"
        );
        assert_eq!(
            shown_url("http://h:1/api/metrics", &[]),
            "http://h:1/api/metrics"
        );
    }
}
