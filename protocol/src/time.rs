//! Millisecond timestamps: the server's clock, the fixed-width RFC 3339 form
//! servers put on the wire, and the parsing of client timestamps.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Milliseconds since the Unix epoch (UTC), as assigned by a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerTime(pub i64);

impl ServerTime {
    pub fn now() -> Self {
        ServerTime(now_ms())
    }

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`, always 24 bytes (years 0..=9999).
    /// Hand-rolled because it runs once per message on a worker's hot path.
    pub fn to_rfc3339_bytes(self) -> [u8; 24] {
        let ms = self.0.rem_euclid(1000) as u32;
        let secs = self.0.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400) as u32;
        let (y, m, d) = civil_from_days(days);
        let y = y.clamp(0, 9999) as u32;
        let mut out = *b"0000-00-00T00:00:00.000Z";
        put_digits(&mut out[0..4], y);
        put_digits(&mut out[5..7], m);
        put_digits(&mut out[8..10], d);
        put_digits(&mut out[11..13], sod / 3600);
        put_digits(&mut out[14..16], sod / 60 % 60);
        put_digits(&mut out[17..19], sod % 60);
        put_digits(&mut out[20..23], ms);
        out
    }
}

impl fmt::Display for ServerTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.to_rfc3339_bytes();
        // The buffer only ever holds ASCII digits and punctuation.
        f.write_str(std::str::from_utf8(&bytes).map_err(|_| fmt::Error)?)
    }
}

impl Serialize for ServerTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let bytes = self.to_rfc3339_bytes();
        s.serialize_str(std::str::from_utf8(&bytes).map_err(serde::ser::Error::custom)?)
    }
}

impl<'de> Deserialize<'de> for ServerTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        parse_rfc3339_ms(&s)
            .map(ServerTime)
            .ok_or_else(|| de::Error::custom(format!("not an RFC 3339 timestamp: {s:?}")))
    }
}

/// The wall clock in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Parses an RFC 3339 / ISO 8601 timestamp with a `Z` or numeric offset and
/// optional fraction into milliseconds since the epoch.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

fn put_digits(out: &mut [u8], mut value: u32) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_epoch_and_known_instants() {
        assert_eq!(ServerTime(0).to_string(), "1970-01-01T00:00:00.000Z");
        // 2026-11-27T02:00:00.123Z
        let ms = parse_rfc3339_ms("2026-11-27T02:00:00.123Z").unwrap();
        assert_eq!(ServerTime(ms).to_string(), "2026-11-27T02:00:00.123Z");
        let leap = parse_rfc3339_ms("2024-02-29T23:59:59.999Z").unwrap();
        assert_eq!(ServerTime(leap).to_string(), "2024-02-29T23:59:59.999Z");
    }

    #[test]
    fn formatting_agrees_with_chrono_over_a_range() {
        for ms in (-86_400_000_i64 * 400..86_400_000 * 40_000).step_by(86_400_000 * 7 + 3_723_456) {
            let ours = ServerTime(ms).to_string();
            let theirs = chrono::DateTime::from_timestamp_millis(ms)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string();
            assert_eq!(ours, theirs, "ms={ms}");
        }
    }

    #[test]
    fn parses_offsets_and_fractions() {
        let z = parse_rfc3339_ms("2026-11-27T02:00:00Z").unwrap();
        assert_eq!(parse_rfc3339_ms("2026-11-27T03:00:00+01:00"), Some(z));
        assert_eq!(parse_rfc3339_ms("2026-11-27T02:00:00.5Z"), Some(z + 500));
        assert_eq!(parse_rfc3339_ms("garbage"), None);
        assert_eq!(parse_rfc3339_ms("2026-13-01T00:00:00Z"), None);
    }

    #[test]
    fn serde_round_trip() {
        let t = ServerTime(1_795_744_800_123);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<ServerTime>(&json).unwrap(), t);
    }
}
