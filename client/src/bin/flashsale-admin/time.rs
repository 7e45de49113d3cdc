//! Times and durations on the command line: parsing `T` arguments
//! (RFC 3339, `now`, `+10m`, Unix milliseconds) and showing times in tables.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in time as the protocol carries it: milliseconds since the Unix epoch.
pub type EpochMs = u64;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> EpochMs {
    // A clock before 1970 is a broken clock; 0 is as good an answer as any.
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// Parses a time given on the command line, relative to `now`:
/// `now`; `+DURATION` (humantime: `+10m`, `+2h`, `+1h 30m`); Unix
/// milliseconds (`1795694400000`); or RFC 3339 in UTC (`2026-11-26T12:00:00Z`,
/// fractions allowed).
pub fn parse_time_at(text: &str, now: EpochMs) -> Result<EpochMs, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    if let Some(offset) = text.strip_prefix('+') {
        let offset = humantime::parse_duration(offset.trim())
            .map_err(|e| format!("`{text}`: not a duration after `+` ({e}); try +10m or +2h"))?;
        let offset = u64::try_from(offset.as_millis()).unwrap_or(u64::MAX);
        return now
            .checked_add(offset)
            .ok_or_else(|| format!("`{text}`: too far in the future"));
    }
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map_err(|_| format!("`{text}`: too large for milliseconds since the epoch"));
    }
    let time = humantime::parse_rfc3339(text).map_err(|e| {
        format!(
            "`{text}`: not a time ({e}); use RFC 3339 in UTC (2026-11-26T12:00:00Z), \
             `now`, `+10m`, or Unix milliseconds"
        )
    })?;
    let since = time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("`{text}`: before 1970"))?;
    u64::try_from(since.as_millis()).map_err(|_| format!("`{text}`: too far in the future"))
}

/// clap value parser for a time `T` (see [`parse_time_at`]), relative to now.
pub fn parse_time(text: &str) -> Result<EpochMs, String> {
    parse_time_at(text, now_ms())
}

/// One end of a sale window on the command line: a time, or `none` for an open end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowEnd {
    /// `none`: no bound on this side.
    Open,
    /// A time in milliseconds since the epoch.
    At(EpochMs),
}

impl WindowEnd {
    /// The protocol's form: `None` for an open end.
    pub fn to_ms(self) -> Option<EpochMs> {
        match self {
            Self::Open => None,
            Self::At(ms) => Some(ms),
        }
    }
}

/// clap value parser for a window end: `none` or a time `T`.
pub fn parse_window_end(text: &str) -> Result<WindowEnd, String> {
    if text.trim().eq_ignore_ascii_case("none") {
        Ok(WindowEnd::Open)
    } else {
        parse_time(text).map(WindowEnd::At)
    }
}

/// clap value parser for the refresh interval of `watch`: plain seconds
/// (`2`, `0.5`) or a humantime duration (`500ms`, `1m`).
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("`{text}`: not a usable number of seconds"));
    }
    humantime::parse_duration(text).map_err(|e| format!("`{text}`: not a duration ({e})"))
}

/// A time for people: RFC 3339 in UTC, to the second.
pub fn format_ms(ms: EpochMs) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// A time that may be absent, for tables: `-` when absent.
pub fn format_opt_ms(ms: Option<EpochMs>) -> String {
    ms.map_or_else(|| "-".to_owned(), format_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: EpochMs = 1_795_694_400_000; // 2026-11-26T12:00:00Z

    #[test]
    fn now_is_now() {
        assert_eq!(parse_time_at("now", NOW), Ok(NOW));
        assert_eq!(parse_time_at("NOW", NOW), Ok(NOW));
    }

    #[test]
    fn relative_times_add_to_now() {
        assert_eq!(parse_time_at("+10m", NOW), Ok(NOW + 600_000));
        assert_eq!(parse_time_at("+2h", NOW), Ok(NOW + 7_200_000));
        assert_eq!(parse_time_at("+1h 30m", NOW), Ok(NOW + 5_400_000));
    }

    #[test]
    fn rfc3339_and_unix_milliseconds_are_absolute() {
        assert_eq!(parse_time_at("2026-11-26T12:00:00Z", 0), Ok(NOW));
        assert_eq!(parse_time_at("2026-11-26T12:00:00.250Z", 0), Ok(NOW + 250));
        assert_eq!(parse_time_at("1795694400000", 0), Ok(NOW));
    }

    #[test]
    fn nonsense_is_refused_with_a_hint() {
        for bad in [
            "",
            "tomorrow",
            "+",
            "+ten minutes",
            "2026-13-01T00:00:00Z",
            "-5m",
        ] {
            let err = parse_time_at(bad, NOW).expect_err(bad);
            assert!(err.contains('`'), "{bad}: {err}");
        }
    }

    #[test]
    fn window_ends_accept_none() {
        assert_eq!(parse_window_end("none"), Ok(WindowEnd::Open));
        assert_eq!(parse_window_end("1795694400000"), Ok(WindowEnd::At(NOW)));
    }

    #[test]
    fn intervals_are_seconds_or_durations() {
        assert_eq!(parse_interval("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_interval("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_interval("-1").is_err());
    }

    #[test]
    fn times_format_as_rfc3339() {
        assert_eq!(format_ms(NOW), "2026-11-26T12:00:00Z");
        assert_eq!(format_opt_ms(None), "-");
    }
}
