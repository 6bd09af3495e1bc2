//! Validation helpers shared by every binary's configuration: the error
//! that names the offending flag, and the checks more than one binary
//! makes.

use std::time::Duration;

/// A flag whose value is out of bounds: `invalid value for --FLAG: REASON`.
#[derive(Debug, thiserror::Error)]
#[error("invalid value for --{flag}: {reason}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub reason: String,
}

/// The error for `flag`.
pub fn bad(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        reason: reason.into(),
    }
}

/// A duration given in seconds: finite, positive, at most an hour.
pub fn seconds(flag: &'static str, secs: f64) -> Result<Duration, ConfigError> {
    if secs.is_finite() && secs > 0.0 && secs <= 3600.0 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(bad(
            flag,
            format!("{secs} is not a number of seconds in (0, 3600]"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_flag_and_seconds_are_bounded() {
        assert_eq!(
            bad("workers", "must be 1").to_string(),
            "invalid value for --workers: must be 1"
        );
        assert!(seconds("grace", 0.0).is_err());
        assert!(seconds("grace", f64::NAN).is_err());
        assert!(seconds("grace", 3601.0).is_err());
        assert_eq!(seconds("grace", 1.5).unwrap(), Duration::from_millis(1500));
    }
}
