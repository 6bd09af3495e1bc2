//! The live dashboard (server/API.md, "Live dashboard"): `GET /` serves one
//! self-contained page (`dashboard.html`: plain JS and SVG, nothing loaded
//! from anywhere else, no build step) that polls `GET /api/live` every
//! second and draws the fleet's rates, latencies, queue depths, writers,
//! connections and the health of every component over a rolling window.
//!
//! `/api/live` is `/api/metrics`'s `live` section alone: every server's and
//! consumer's snapshot (from Redis, or this server's own without it), the
//! sampled queue depths, the presence counts per room and the read pool's
//! counters. It runs no database
//! query, so it answers while PostgreSQL is down, and it costs one Redis
//! round trip per part at most (each bounded by the Redis timeout): cheap
//! enough to poll every second from a few browsers. It allows any origin:
//! it is read-only, carries no credentials, and the page may be opened
//! from elsewhere (a saved copy, another server) with `?api=`.

use chatflow_database::read::rfc3339;
use serde::Serialize;
use serde_json::Value;

use super::params::Params;
use super::reply::{ApiError, Timings};
use super::routes::DashboardRoute;
use super::ApiContext;

/// The page, compiled in: the binary serves it with nothing beside it.
/// It ends in `</html>`, not `}`, so the answer's timings (appended
/// inside a JSON object) leave it alone.
pub const PAGE: &str = include_str!("dashboard.html");

/// The page's own parameters (read by its script; checked here so a typo
/// or a bad value is a 400 naming it rather than a page that quietly
/// ignores it).
const PAGE_PARAMS: &[&str] = &["api", "every", "window"];
/// Poll interval, milliseconds: at least 200 (five polls a second is
/// plenty for a person), at most a minute.
const EVERY_MS: std::ops::RangeInclusive<i64> = 200..=60_000;
/// Rolling window, seconds: 10 s to an hour (3,600 points per series at
/// one poll a second is what an SVG path redraws smoothly).
const WINDOW_SECS: std::ops::RangeInclusive<i64> = 10..=3600;

/// What `handle` sends for a dashboard route: the body, its content type,
/// and whether any origin may read it.
pub struct Served {
    pub body: Vec<u8>,
    pub content_type: &'static str,
    pub any_origin: bool,
}

/// Answers a dashboard route (`GET` or `HEAD` only).
pub fn run(
    context: &ApiContext,
    route: DashboardRoute,
    method: &tiny_http::Method,
    query: &str,
    timings: &mut Timings,
) -> Result<Served, ApiError> {
    match method {
        tiny_http::Method::Get | tiny_http::Method::Head => {}
        other => return Err(ApiError::method_not_allowed(other.as_str())),
    }
    match route {
        DashboardRoute::Page => {
            check_page_params(&Params::parse(query, PAGE_PARAMS)?)?;
            Ok(Served {
                body: PAGE.as_bytes().to_vec(),
                content_type: "text/html; charset=utf-8",
                any_origin: false,
            })
        }
        DashboardRoute::Live => {
            Params::parse(query, &[])?;
            let body = serde_json::to_vec(&live(context, timings))
                .map_err(|e| ApiError::internal(format!("cannot serialise the answer: {e}")))?;
            Ok(Served {
                body,
                content_type: "application/json",
                any_origin: true,
            })
        }
    }
}

fn check_page_params(params: &Params) -> Result<(), ApiError> {
    params.number("every", EVERY_MS)?;
    params.number("window", WINDOW_SECS)?;
    if let Some(api) = params.text("api") {
        let base = api.starts_with("http://") || api.starts_with("https://");
        let path = api.starts_with('/') && !api.starts_with("//");
        if !(base || path) {
            return Err(ApiError::bad_request(
                Some("api"),
                "api must be a base URL (http://host:port) or a path on this host (/prefix)",
            ));
        }
    }
    Ok(())
}

/// `GET /api/live`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LiveDoc {
    generated_at: String,
    servers: Value,
    consumers: Value,
    queues: Value,
    /// Members per room (`{"error"}` with `--presence off`).
    presence: Value,
    database: DatabaseDoc,
}

#[derive(Serialize)]
struct DatabaseDoc {
    address: String,
    pool: chatflow_database::pool::PoolStats,
}

fn live(context: &ApiContext, timings: &mut Timings) -> LiveDoc {
    LiveDoc {
        generated_at: rfc3339(std::time::SystemTime::now()),
        servers: context.live.servers(timings),
        consumers: context.live.consumers(timings),
        queues: context.live.queues(timings),
        presence: super::presence::live(context),
        database: DatabaseDoc {
            address: context.database.clone(),
            pool: context.pool.stats(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The machine the dashboard runs on may have no internet, and a
    /// page that fetches a font or a script from a CDN would hang or
    /// break there: the page names no other origin.
    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for needle in ["http://", "https://", "//cdn", "@import", "url("] {
            assert!(!PAGE.contains(needle), "{needle} in dashboard.html");
        }
        assert!(!PAGE.contains(" src="), "no external script or image");
        assert!(PAGE.trim_end().ends_with("</html>"));
    }

    #[test]
    fn page_parameters_are_checked_and_named() {
        let check = |q: &str| check_page_params(&Params::parse(q, PAGE_PARAMS)?);
        assert!(check("").is_ok());
        assert!(check("every=500&window=600&api=http://10.0.0.5:8082").is_ok());
        assert!(check("api=/chatflow").is_ok());
        for (query, parameter) in [
            ("every=50", "every"),
            ("window=5", "window"),
            ("window=abc", "window"),
            ("api=javascript:alert(1)", "api"),
            ("api=//evil.example", "api"),
            ("refresh=1", "refresh"),
        ] {
            let e = check(query).unwrap_err();
            assert_eq!(
                (e.status, e.parameter.as_deref()),
                (400, Some(parameter)),
                "{query}"
            );
        }
    }
}
