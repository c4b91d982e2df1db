//! The JSON document of the status endpoint: every tracked service, its
//! hosts with their grade, window figures and ejections, and its breaker.

use std::fmt::Write;

use crate::calendar::civil_from_days;
use crate::config::Config;
use crate::service::ServiceHealth;

/// Appends `text` as a JSON string literal.
fn string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends `,"<key>":` and `ms` (Unix epoch milliseconds) as an RFC 3339
/// UTC string, `"2026-12-01T19:42:09.175Z"`, or `null` for 0 (never):
/// what people and `jq`/`date -d` read, beside the exact epoch figure.
#[inline(never)]
fn time(out: &mut String, key: &str, ms: u64) {
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":");
    if ms == 0 {
        out.push_str("null");
        return;
    }
    let secs = ms / 1000;
    let (y, m, d) = civil_from_days(secs / 86_400);
    let day = secs % 86_400;
    // Digits into a fixed template: `write!` with padded arguments costs
    // about 500 bytes of module for this one line.
    let mut text = *b"\"0000-00-00T00:00:00.000Z\"";
    let fields = [
        (y, 5),
        (m, 8),
        (d, 11),
        (day / 3600, 14),
        (day / 60 % 60, 17),
        (day % 60, 20),
        (ms % 1000, 24),
    ];
    for (mut value, end) in fields {
        // Each field ends before its separator; digits fill it from the right.
        for slot in text[..end].iter_mut().rev() {
            if *slot == b'0' {
                *slot = b'0' + (value % 10) as u8;
                value /= 10;
            } else {
                break;
            }
        }
    }
    out.push_str(std::str::from_utf8(&text).unwrap_or_default());
}

/// `members` gives a service's size as the worker answering knows it.
/// Only watched hosts (those with failures on record) are listed: every
/// other host of the service is Healthy.
pub fn render(
    records: &[ServiceHealth],
    now: u64,
    config: &Config,
    members: &dyn Fn(&ServiceHealth) -> usize,
) -> String {
    let mut out = String::with_capacity(256 + records.len() * 512);
    let _ = write!(out, "{{\"nowMs\":{now}");
    time(&mut out, "now", now);
    out.push_str(",\"services\":[");
    for (i, record) in records.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"service\":");
        string(&mut out, &record.service);
        let breaker = &record.breaker;
        let _ = write!(
            out,
            ",\"members\":{},\"watchedHosts\":{},\"gradedFrom\":\"{}\",\"breaker\":{{\"state\":\"{}\",\"openUntilMs\":{}",
            members(record),
            record.hosts.len(),
            // Every attempt (an upstream instance feeds the record), or
            // each request's last attempt and what its retries reveal.
            if record.attempts_until_ms > now {
                "attempts"
            } else {
                "requests"
            },
            breaker.effective_state(now),
            breaker.open_until_ms()
        );
        time(&mut out, "openUntil", breaker.open_until_ms());
        out.push_str("},\"hosts\":[");
        for (j, host) in record.hosts.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            let health = &host.health;
            let window = health.window();
            out.push_str("{\"address\":");
            string(&mut out, &host.address);
            let _ = write!(
                out,
                ",\"state\":\"{}\",\"weightPercent\":{},\"window\":{{\"size\":{},\"outcomes\":{},\"failures\":{},\"slow\":{},\"failurePercent\":{}}},\"timesEjected\":{},\"ejectedUntilMs\":{},\"lastSeenMs\":{}",
                health.state(),
                health.weight_percent(now, config.grading()),
                window.capacity(),
                window.len(),
                window.failures(),
                window.slow(),
                window.percent(window.failures()),
                health.times_ejected(),
                health.ejected_until_ms(),
                health.last_seen_ms()
            );
            time(&mut out, "ejectedUntil", health.ejected_until_ms());
            time(&mut out, "lastSeen", health.last_seen_ms());
            out.push('}');
        }
        out.push_str("]}");
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{FailureKind, Outcome};
    use crate::service::{Observation, Pending};

    #[test]
    fn renders_valid_json_with_every_figure() {
        let config =
            Config::parse(br#"{"detection": {"windowSize": 10, "minRequests": 10}}"#).unwrap();
        let record = failed_record("demo \"quoted\"", &config, 5);
        let json = render(&[record], 10, &config, &|_| 3);
        let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        let host = &value["services"][0]["hosts"][0];
        assert_eq!(value["services"][0]["service"], "demo \"quoted\"");
        assert_eq!(host["address"], "10.0.0.1:80");
        assert_eq!(host["state"], "Unhealthy");
        assert_eq!(host["weightPercent"], 0);
        // Ejected after 5 consecutive failures; the rest found it ejected.
        assert_eq!(host["window"]["failures"], 5);
        assert_eq!(host["timesEjected"], 1);
        assert_eq!(value["services"][0]["breaker"]["state"], "Closed");
        assert_eq!(value["services"][0]["members"], 3);
        assert_eq!(value["services"][0]["watchedHosts"], 1);
        assert_eq!(
            render(&[], 0, &config, &|_| 0),
            r#"{"nowMs":0,"now":null,"services":[]}"#
        );
        // The RFC 3339 forms say the same instants as the epoch figures.
        let json = render(
            &[failed_record("demo", &config, 1_796_154_139_562)],
            1_796_154_139_562,
            &config,
            &|_| 1,
        );
        let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(value["now"], "2026-12-01T19:42:19.562Z");
        assert_eq!(
            value["services"][0]["breaker"]["openUntil"],
            serde_json::Value::Null
        );
        let host = &value["services"][0]["hosts"][0];
        assert_eq!(host["lastSeen"], "2026-12-01T19:42:19.562Z");
        assert_eq!(host["lastSeenMs"], 1_796_154_139_562u64);
        let until = host["ejectedUntilMs"].as_u64().expect("ejected");
        let mut expect = String::new();
        time(&mut expect, "k", until);
        assert_eq!(format!(",\"k\":{}", host["ejectedUntil"]), expect);
    }

    /// A record of `service` whose host 10.0.0.1:80 failed 10 times at `now`.
    fn failed_record(service: &str, config: &Config, now: u64) -> ServiceHealth {
        let mut record = ServiceHealth::new(service, 1);
        let fail = Observation::plain(Outcome {
            failure: Some(FailureKind::Gateway(503)),
            slow: false,
        });
        let pending = Pending {
            ordered: vec![fail; 10],
            ..Pending::default()
        };
        record.apply(
            "10.0.0.1:80",
            &pending,
            now,
            config,
            &mut || 0,
            &mut Vec::new(),
        );
        record
    }

    #[test]
    fn times_print_as_rfc3339() {
        let at = |ms| {
            let mut out = String::new();
            time(&mut out, "t", ms);
            out
        };
        assert_eq!(at(1), r#","t":"1970-01-01T00:00:00.001Z""#);
        assert_eq!(at(951_782_400_000), r#","t":"2000-02-29T00:00:00.000Z""#);
        assert_eq!(at(4_107_542_399_999), r#","t":"2100-02-28T23:59:59.999Z""#);
        assert_eq!(at(0), r#","t":null"#);
    }
}
