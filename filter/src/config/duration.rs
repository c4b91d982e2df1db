//! Durations written the way Envoy and Istio users write them: `30s`, `500ms`, `1.5s`, `2m`.

/// A non-negative duration in whole milliseconds (the core's time unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Millis(pub u64);

impl Millis {
    pub const fn from_secs(secs: u64) -> Self {
        Millis(secs * 1000)
    }
}

/// Parses `<number>[.<fraction>]<unit>` with unit `ms`, `s`, `m` or `h`.
/// A bare number is refused: `30` could mean seconds or milliseconds, and
/// guessing wrong by a factor of 1000 is worse than an error.
pub fn parse(text: &str) -> Result<Millis, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{text}` has no unit (use ms, s, m or h, e.g. \"30s\")"))?;
    let (number, unit) = text.split_at(split);
    let scale: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!(
                "`{text}` has unknown unit `{unit}` (use ms, s, m or h)"
            ))
        }
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err(format!("`{text}` has no number"));
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole
            .parse()
            .map_err(|_| format!("`{text}` is not a number followed by a unit"))?
    };
    let mut millis = whole
        .checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too large"))?;
    // Fractional digits beyond the unit's millisecond resolution are dropped.
    let mut place = scale;
    for digit in fraction.chars() {
        let digit = digit
            .to_digit(10)
            .ok_or_else(|| format!("`{text}` is not a number followed by a unit"))?;
        place /= 10;
        millis = millis
            .checked_add(u64::from(digit) * place)
            .ok_or_else(|| format!("`{text}` is too large"))?;
    }
    Ok(Millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_units_operators_write() {
        assert_eq!(parse("30s"), Ok(Millis(30_000)));
        assert_eq!(parse("500ms"), Ok(Millis(500)));
        assert_eq!(parse("1.5s"), Ok(Millis(1_500)));
        assert_eq!(parse("2m"), Ok(Millis(120_000)));
        assert_eq!(parse("1h"), Ok(Millis(3_600_000)));
        assert_eq!(parse("0s"), Ok(Millis(0)));
        assert_eq!(parse(".25s"), Ok(Millis(250)));
    }

    #[test]
    fn refuses_ambiguous_or_malformed_text() {
        assert!(parse("30").unwrap_err().contains("no unit"));
        assert!(parse("30d").unwrap_err().contains("unknown unit"));
        assert!(parse("s").is_err());
        assert!(parse("1.2.3s").is_err());
        assert!(parse("-1s").is_err());
        assert!(parse("99999999999999999999h").is_err());
    }
}
