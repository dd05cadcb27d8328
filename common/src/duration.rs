//! Human durations as operators type them (`90s`, `30m`, `48h`, `7d`), parsed to seconds and
//! printed back in the largest exact unit.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("duration must be a whole number followed by s, m, h or d (e.g. 48h)")]
    Malformed,
    #[error("duration is out of range")]
    OutOfRange,
}

/// Parses `<n><unit>` with unit `s`, `m`, `h` or `d` into seconds.
pub fn parse_secs(s: &str) -> Result<u64, DurationError> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or(DurationError::Malformed)?;
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(DurationError::Malformed);
    }
    let n: u64 = num.parse().map_err(|_| DurationError::OutOfRange)?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(DurationError::Malformed),
    };
    n.checked_mul(mult).ok_or(DurationError::OutOfRange)
}

/// Formats seconds in the largest unit that divides them exactly (`172800` -> `2d`,
/// `3660` -> `61m`). Zero is `0s`.
pub fn format_secs(secs: u64) -> String {
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs != 0 && secs.is_multiple_of(size) {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!(parse_secs("90s"), Ok(90));
        assert_eq!(parse_secs("30m"), Ok(1_800));
        assert_eq!(parse_secs("48h"), Ok(172_800));
        assert_eq!(parse_secs("7d"), Ok(604_800));
        assert_eq!(parse_secs(" 5s "), Ok(5));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "h", "48", "48x", "4 8h", "-1h", "1.5h", "48hh"] {
            assert_eq!(parse_secs(bad), Err(DurationError::Malformed), "{bad:?}");
        }
        assert_eq!(
            parse_secs("99999999999999999999d"),
            Err(DurationError::OutOfRange)
        );
        assert_eq!(
            parse_secs("999999999999999999d"),
            Err(DurationError::OutOfRange)
        );
    }

    #[test]
    fn formats_round_trip() {
        for s in ["90s", "30m", "5h", "2d", "0s"] {
            assert_eq!(format_secs(parse_secs(s).unwrap()), s);
        }
        assert_eq!(format_secs(172_800), "2d");
        assert_eq!(format_secs(3_660), "61m");
    }
}
