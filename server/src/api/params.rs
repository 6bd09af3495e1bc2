//! Query-string parameters → typed values, or a 400 that names the
//! parameter. Each endpoint declares the parameters it takes; anything
//! else, a parameter given twice, a bad percent-escape or bytes that are
//! not UTF-8 is refused, so a typo (`strat=`) never silently means "no
//! start".

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use chatflow_database::read::pages::Order;

use super::reply::ApiError;

/// The parameters of one request, decoded and checked against the names
/// its endpoint takes.
#[derive(Debug, Default)]
pub struct Params {
    values: BTreeMap<String, String>,
}

impl Params {
    /// Parses `query` (what follows `?`, form-encoded: `+` is a space),
    /// allowing only `allowed` names.
    pub fn parse(query: &str, allowed: &[&str]) -> Result<Params, ApiError> {
        let mut values = BTreeMap::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(raw_name).ok_or_else(|| {
                ApiError::bad_request(None, "a parameter name is not valid percent-encoded UTF-8")
            })?;
            let Some(&known) = allowed.iter().find(|a| **a == name) else {
                return Err(ApiError::bad_request(
                    Some(&name),
                    format!(
                        "unknown parameter {name:?}; this endpoint takes {}",
                        if allowed.is_empty() {
                            "none".to_string()
                        } else {
                            allowed.join(", ")
                        }
                    ),
                ));
            };
            let value = decode(raw_value).ok_or_else(|| {
                ApiError::bad_request(Some(known), "not valid percent-encoded UTF-8")
            })?;
            if values.insert(known.to_string(), value).is_some() {
                return Err(ApiError::bad_request(
                    Some(known),
                    format!("{known} is given more than once"),
                ));
            }
        }
        Ok(Params { values })
    }

    fn raw(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// An RFC 3339 instant.
    pub fn time(&self, name: &str) -> Result<Option<SystemTime>, ApiError> {
        let Some(text) = self.raw(name) else {
            return Ok(None);
        };
        let parsed = chrono::DateTime::parse_from_rfc3339(text).map_err(|_| {
            ApiError::bad_request(
                Some(name),
                format!(
                    "{name} is not an RFC 3339 timestamp like 2026-12-01T20:00:00Z: {:?}",
                    clip(text)
                ),
            )
        })?;
        Ok(Some(SystemTime::from(parsed)))
    }

    /// A whole number in `range`.
    pub fn number(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<Option<i64>, ApiError> {
        let Some(text) = self.raw(name) else {
            return Ok(None);
        };
        let value: i64 = text.parse().map_err(|_| {
            ApiError::bad_request(
                Some(name),
                format!("{name} is not a whole number: {:?}", clip(text)),
            )
        })?;
        if !range.contains(&value) {
            return Err(ApiError::bad_request(
                Some(name),
                format!(
                    "{name} {value} is not in {}..={}",
                    range.start(),
                    range.end()
                ),
            ));
        }
        Ok(Some(value))
    }

    /// `asc` or `desc`.
    pub fn order(&self) -> Result<Order, ApiError> {
        match self.raw("order") {
            None | Some("asc") => Ok(Order::Asc),
            Some("desc") => Ok(Order::Desc),
            Some(other) => Err(ApiError::bad_request(
                Some("order"),
                format!("order is asc or desc, not {:?}", clip(other)),
            )),
        }
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        self.raw(name)
    }
}

/// An aggregate endpoint's window: `end` defaults to now, `start` to an
/// hour before `end`; `start < end`, and at most `max` long.
pub fn aggregate_window(
    params: &Params,
    max: Duration,
) -> Result<chatflow_database::Window, ApiError> {
    let end = params.time("end")?.unwrap_or_else(SystemTime::now);
    let start = match params.time("start")? {
        Some(start) => start,
        None => end
            .checked_sub(Duration::from_secs(3600))
            .ok_or_else(|| ApiError::bad_request(Some("end"), "end is too early"))?,
    };
    let window = chatflow_database::Window::new(start, end)
        .ok_or_else(|| ApiError::bad_request(Some("start"), "start must be before end"))?;
    let length = Duration::from_secs_f64(window.seconds());
    if length > max {
        return Err(ApiError::bad_request(
            Some("start"),
            format!(
                "the window from start to end is {:.1} h; the most is {} h (--api-max-window-hours)",
                length.as_secs_f64() / 3600.0,
                max.as_secs() / 3600
            ),
        ));
    }
    Ok(window)
}

/// Percent-decoding of a form-encoded component; `None` on a bad escape or
/// bytes that are not UTF-8.
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// A value quoted in an error, cut short: an error must not echo a
/// megabyte back.
fn clip(text: &str) -> String {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_form_encoding_and_refuses_what_is_not_allowed() {
        let p = Params::parse(
            "start=2026-12-01T20%3A00%3A00%2B01%3A00&limit=5",
            &["start", "limit"],
        )
        .unwrap();
        assert_eq!(p.text("start"), Some("2026-12-01T20:00:00+01:00"));
        assert_eq!(p.number("limit", 1..=1000).unwrap(), Some(5));
        let unknown = Params::parse("strat=x", &["start"]).unwrap_err();
        assert_eq!(unknown.parameter.as_deref(), Some("strat"));
        let twice = Params::parse("limit=1&limit=2", &["limit"]).unwrap_err();
        assert_eq!(twice.parameter.as_deref(), Some("limit"));
        assert!(Params::parse("limit=%zz", &["limit"]).is_err());
        assert!(Params::parse("limit=%ff", &["limit"]).is_err(), "not UTF-8");
        assert!(Params::parse("", &[]).is_ok());
    }

    #[test]
    fn numbers_times_and_orders_name_the_parameter() {
        let p = Params::parse(
            "limit=5000&start=yesterday&order=up&topN=1e3",
            &["limit", "start", "order", "topN"],
        )
        .unwrap();
        let e = p.number("limit", 1..=1000).unwrap_err();
        assert!(e.error.contains("not in 1..=1000"), "{}", e.error);
        assert_eq!(
            p.time("start").unwrap_err().parameter.as_deref(),
            Some("start")
        );
        assert_eq!(p.order().unwrap_err().parameter.as_deref(), Some("order"));
        assert_eq!(
            p.number("topN", 1..=100).unwrap_err().parameter.as_deref(),
            Some("topN")
        );
        assert_eq!(clip(&"x".repeat(1000)).chars().count(), 65);
    }

    #[test]
    fn aggregate_windows_default_to_the_last_hour_and_are_bounded() {
        let p = Params::parse("", &[]).unwrap();
        let w = aggregate_window(&p, Duration::from_secs(7200)).unwrap();
        assert_eq!(w.end - w.start, 3_600_000_000);
        let reversed = Params::parse(
            "start=2026-12-01T21:00:00Z&end=2026-12-01T20:00:00Z",
            &["start", "end"],
        )
        .unwrap();
        assert!(aggregate_window(&reversed, Duration::from_secs(7200)).is_err());
        let long = Params::parse(
            "start=2026-11-01T00:00:00Z&end=2026-12-01T00:00:00Z",
            &["start", "end"],
        )
        .unwrap();
        let e = aggregate_window(&long, Duration::from_secs(7200)).unwrap_err();
        assert!(e.error.contains("720.0 h"), "{}", e.error);
    }
}
