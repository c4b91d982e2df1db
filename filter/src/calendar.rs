//! Calendar dates from day counts, for the status document's RFC 3339 times
//! and the bench's report headers: no date crate for one formula.

/// The proleptic Gregorian date (year, month, day) of a day count since
/// 1970-01-01 (Howard Hinnant's `civil_from_days`, for days >= 0: eras of
/// 400 years).
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Day by day from 1970 (every month's length by the Gregorian rules)
    /// against the closed form, over 600 years.
    #[test]
    fn dates_match_a_day_by_day_calendar() {
        let (mut y, mut m, mut d) = (1970u64, 1u64, 1u64);
        for days in 0..219_147u64 {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
            let len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }
}
