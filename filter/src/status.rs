//! The JSON document of the status endpoint: every tracked service, its
//! hosts with their grade, window figures and ejections, and its breaker.

use std::fmt::Write;

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
    let _ = write!(out, "{{\"nowMs\":{now},\"services\":[");
    for (i, record) in records.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"service\":");
        string(&mut out, &record.service);
        let breaker = &record.breaker;
        let _ = write!(
            out,
            ",\"members\":{},\"watchedHosts\":{},\"gradedFrom\":\"{}\",\"breaker\":{{\"state\":\"{}\",\"openUntilMs\":{}}},\"hosts\":[",
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
                ",\"state\":\"{}\",\"weightPercent\":{},\"window\":{{\"size\":{},\"outcomes\":{},\"failures\":{},\"slow\":{},\"failurePercent\":{}}},\"timesEjected\":{},\"ejectedUntilMs\":{},\"lastSeenMs\":{}}}",
                health.state(),
                health.weight_percent(now, config),
                window.capacity(),
                window.len(),
                window.failures(),
                window.slow(),
                window.percent(window.failures()),
                health.times_ejected(),
                health.ejected_until_ms(),
                health.last_seen_ms()
            );
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
        let mut record = ServiceHealth::new("demo \"quoted\"", 1);
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
            5,
            &config,
            &mut || 0,
            &mut Vec::new(),
        );
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
            r#"{"nowMs":0,"services":[]}"#
        );
    }
}
