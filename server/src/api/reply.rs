//! Answers: an endpoint's document or an [`ApiError`], with the time each
//! query took ([`Timings`]) and the whole request's, as one JSON body.
//!
//! The document is serialised first, then the timings are appended to its
//! object, so `totalMs` covers serialisation too.

use std::fmt::Write as _;
use std::time::Instant;

use chatflow_database::pool::PoolError;
use postgres::error::SqlState;
use serde::Serialize;

/// What went wrong, as the client sees it: a status, a sentence, the
/// parameter at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub error: String,
    pub parameter: Option<String>,
    /// Seconds, for `Retry-After` (503 only).
    pub retry_after: Option<u32>,
}

impl ApiError {
    fn new(status: u16, error: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: error.into(),
            parameter: None,
            retry_after: None,
        }
    }

    /// 400, naming the parameter (if the fault is one parameter's).
    pub fn bad_request(parameter: Option<&str>, error: impl Into<String>) -> ApiError {
        ApiError {
            parameter: parameter.map(str::to_string),
            ..ApiError::new(400, error)
        }
    }

    pub fn not_found(path: &str) -> ApiError {
        let shown: String = path.chars().take(200).collect();
        ApiError::new(404, format!("no such endpoint: {shown}"))
    }

    pub fn internal(error: impl Into<String>) -> ApiError {
        ApiError::new(500, error)
    }

    pub fn method_not_allowed(method: &str) -> ApiError {
        ApiError::new(405, format!("method {method} is not allowed here; use GET"))
    }

    /// 503: try again soon.
    pub fn unavailable(error: impl Into<String>) -> ApiError {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(503, error)
        }
    }

    /// A checkout that failed: the database is down or every connection
    /// stayed busy.
    pub fn from_pool(error: &PoolError) -> ApiError {
        ApiError::unavailable(format!("database unavailable: {error}"))
    }

    /// A query that failed, by what the failure says about the database.
    pub fn from_query(error: &postgres::Error, statement_timeout_secs: f64) -> ApiError {
        let text = chatflow_database::describe(error);
        match error.code() {
            Some(code) if *code == SqlState::QUERY_CANCELED => ApiError::new(
                504,
                format!(
                    "the query ran past the {statement_timeout_secs} s statement timeout (--api-statement-timeout-secs) and was cancelled: narrow the window"
                ),
            ),
            Some(code)
                if *code == SqlState::UNDEFINED_TABLE || *code == SqlState::UNDEFINED_FUNCTION =>
            {
                ApiError::unavailable(format!(
                    "the database has no (or an old) ChatFlow schema: run database/setup_database.sh ({text})"
                ))
            }
            Some(code) if matches!(&code.code()[..2], "08" | "53" | "57" | "58") => {
                ApiError::unavailable(format!("database unavailable: {text}"))
            }
            None => ApiError::unavailable(format!("database unavailable: {text}")),
            Some(_) => ApiError::new(500, format!("query failed: {text}")),
        }
    }
}

/// Each query's (or Redis / RabbitMQ read's) duration, in order.
#[derive(Debug, Default)]
pub struct Timings {
    entries: Vec<(&'static str, f64)>,
}

impl Timings {
    /// Runs `f`, recording how long it took under `name`.
    pub fn time<T>(&mut self, name: &'static str, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = f();
        self.entries
            .push((name, started.elapsed().as_secs_f64() * 1000.0));
        out
    }

    /// `"timingsMs":{…},"totalMs":x`.
    fn write(&self, out: &mut Vec<u8>, started: Instant) {
        let mut text = String::from("\"timingsMs\":{");
        for (i, (name, ms)) in self.entries.iter().enumerate() {
            let comma = if i == 0 { "" } else { "," };
            // A name that repeats (a query run twice) keeps each entry.
            let _ = write!(text, "{comma}\"{name}\":{ms:.3}");
        }
        let total = started.elapsed().as_secs_f64() * 1000.0;
        let _ = write!(text, "}},\"totalMs\":{total:.3}");
        out.extend_from_slice(text.as_bytes());
    }
}

/// A finished answer: status, body, `Retry-After`.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub retry_after: Option<u32>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody<'a> {
    error: &'a str,
    parameter: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_seconds: Option<u32>,
}

/// The answer for `result` (a document's JSON object, or an error), with
/// `timings` appended to the object.
pub fn answer(result: Result<Vec<u8>, ApiError>, timings: &Timings, started: Instant) -> Answer {
    let (status, retry_after, body) = match result {
        Ok(body) => (200, None, body),
        Err(error) => (error.status, error.retry_after, error_body(&error)),
    };
    Answer {
        status,
        body: with_timings(body, timings, started),
        retry_after,
    }
}

fn error_body(error: &ApiError) -> Vec<u8> {
    serde_json::to_vec(&ErrorBody {
        error: &error.error,
        parameter: error.parameter.as_deref(),
        retry_after_seconds: error.retry_after,
    })
    .unwrap_or_else(|_| br#"{"error":"internal error"}"#.to_vec())
}

/// Appends the timings inside the body's top-level object.
fn with_timings(mut body: Vec<u8>, timings: &Timings, started: Instant) -> Vec<u8> {
    if body.last() != Some(&b'}') {
        return body; // not an object: nothing to append to
    }
    body.pop();
    if body.last() != Some(&b'{') {
        body.push(b',');
    }
    timings.write(&mut body, started);
    body.push(b'}');
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_are_appended_inside_the_object() {
        let mut timings = Timings::default();
        timings.time("roomMessages", || ());
        let a = answer(Ok(br#"{"count":1}"#.to_vec()), &timings, Instant::now());
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(v["count"], 1);
        assert!(v["timingsMs"]["roomMessages"].as_f64().unwrap() >= 0.0);
        assert!(v["totalMs"].as_f64().unwrap() >= 0.0);
        let empty = answer(Ok(b"{}".to_vec()), &Timings::default(), Instant::now());
        let v: serde_json::Value = serde_json::from_slice(&empty.body).unwrap();
        assert!(v["totalMs"].is_number());
    }

    #[test]
    fn errors_carry_status_parameter_and_retry() {
        let a = answer(
            Err(ApiError::bad_request(Some("limit"), "too big")),
            &Timings::default(),
            Instant::now(),
        );
        assert_eq!(a.status, 400);
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(v["parameter"], "limit");
        assert_eq!(v["error"], "too big");
        let u = answer(
            Err(ApiError::unavailable("down")),
            &Timings::default(),
            Instant::now(),
        );
        assert_eq!((u.status, u.retry_after), (503, Some(1)));
        let v: serde_json::Value = serde_json::from_slice(&u.body).unwrap();
        assert_eq!(v["retryAfterSeconds"], 1);
        assert!(v["parameter"].is_null());
    }
}
