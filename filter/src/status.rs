//! The JSON document of the status endpoint: every tracked service, its
//! hosts with their grade, window figures and ejections, and its breaker.
//!
//! At most `MAX_STATUS_BYTES`: each entry's size is bounded before it is
//! written (its figures are numbers, its text is escaped at most 6 bytes a
//! byte), and the services and hosts that would pass the cap are left out
//! and counted (`truncated`, `servicesLeftOut`, `hostsLeftOut`). Records
//! are read one at a time, so the whole document never exists beyond it.

use std::fmt::Write;

use crate::calendar::civil_from_days;
use crate::config::Config;
use crate::service::ServiceHealth;

/// The status document's size at most, in bytes, with the VM's report
/// (`TAIL_ROOM`) the shell appends.
pub const MAX_STATUS_BYTES: usize = 1 << 20;
/// Kept for the document's end: the counts of what was left out and the
/// VM's report (`Worker::vm_report`, about 400 bytes).
const TAIL_ROOM: usize = 1024;
/// A service's entry without its name and hosts, at most (about 220).
const SERVICE_ROOM: usize = 256;
/// A host's entry without its address, at most (about 340).
const HOST_ROOM: usize = 384;

/// Whether `out` has room for an entry of `room` bytes plus `text` escaped.
fn fits(out: &str, room: usize, text: &str) -> bool {
    out.len() + room + text.len() * 6 <= MAX_STATUS_BYTES - TAIL_ROOM
}

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

/// The document being written: services are added one at a time, and
/// those past the cap only counted.
pub struct Document {
    out: String,
    services_left: usize,
    hosts_left: usize,
}

impl Document {
    pub fn new(now: u64) -> Self {
        let mut out = String::with_capacity(4096);
        let _ = write!(out, "{{\"nowMs\":{now}");
        time(&mut out, "now", now);
        out.push_str(",\"services\":[");
        Document {
            out,
            services_left: 0,
            hosts_left: 0,
        }
    }

    /// Adds a service as far as the cap allows. `members` is its size as
    /// the worker answering knows it. Only watched hosts (those with
    /// failures on record) are listed: every other host of the service is
    /// Healthy.
    pub fn add(&mut self, record: &ServiceHealth, now: u64, config: &Config, members: usize) {
        let out = &mut self.out;
        if self.services_left + self.hosts_left > 0 || !fits(out, SERVICE_ROOM, &record.service) {
            self.services_left += 1;
            self.hosts_left += record.hosts.len();
            return;
        }
        if !out.ends_with('[') {
            out.push(',');
        }
        out.push_str("{\"service\":");
        string(out, &record.service);
        let breaker = &record.breaker;
        let _ = write!(
            out,
            ",\"members\":{},\"watchedHosts\":{},\"gradedFrom\":\"{}\",\"breaker\":{{\"state\":\"{}\",\"openUntilMs\":{}",
            members,
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
        time(out, "openUntil", breaker.open_until_ms());
        out.push_str("},\"hosts\":[");
        for (j, host) in record.hosts.iter().enumerate() {
            if !fits(out, HOST_ROOM, &host.address) {
                self.hosts_left += record.hosts.len() - j;
                break;
            }
            if j > 0 {
                out.push(',');
            }
            let health = &host.health;
            let window = health.window();
            out.push_str("{\"address\":");
            string(out, &host.address);
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
            time(out, "ejectedUntil", health.ejected_until_ms());
            time(out, "lastSeen", health.last_seen_ms());
            out.push('}');
        }
        out.push_str("]}");
    }

    /// The document, closed with what was left out.
    pub fn finish(mut self) -> String {
        let left = self.services_left + self.hosts_left;
        let _ = write!(
            self.out,
            "],\"truncated\":{},\"servicesLeftOut\":{},\"hostsLeftOut\":{}}}",
            left > 0,
            self.services_left,
            self.hosts_left
        );
        self.out
    }
}

/// The document of `records`, `members` giving each one's size.
#[cfg(test)]
pub fn render(
    records: impl IntoIterator<Item = ServiceHealth>,
    now: u64,
    config: &Config,
    members: &dyn Fn(&ServiceHealth) -> usize,
) -> String {
    let mut document = Document::new(now);
    for record in records {
        document.add(&record, now, config, members(&record));
    }
    document.finish()
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
        let json = render([record], 10, &config, &|_| 3);
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
            render([], 0, &config, &|_| 0),
            r#"{"nowMs":0,"now":null,"services":[],"truncated":false,"servicesLeftOut":0,"hostsLeftOut":0}"#
        );
        // The RFC 3339 forms say the same instants as the epoch figures.
        let json = render(
            [failed_record("demo", &config, 1_796_154_139_562)],
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

    #[test]
    fn a_document_past_the_cap_stops_and_says_what_it_left_out() {
        let config = Config::parse(br#"{"detection": {"windowSize": 1000}}"#).unwrap();
        let failed = failed_record("s", &config, u64::MAX / 2);
        let host = &failed.hosts[0];
        // 20 services of 300 hosts whose addresses escape to 6 times their
        // length: about 3 MB in all.
        let record = |i: usize| {
            let mut record =
                failed_record(&format!("service-{i}-{}", "\u{1}".repeat(200)), &config, 1);
            record.hosts = (0..300)
                .map(|j| crate::service::HostEntry {
                    address: format!("10.{i}.{j}.1:80{}", "\n".repeat(50)),
                    health: host.health.clone(),
                })
                .collect();
            record
        };
        let json = render((0..20).map(record), u64::MAX, &config, &|_| usize::MAX);
        assert!(json.len() <= MAX_STATUS_BYTES - TAIL_ROOM, "{}", json.len());
        let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(value["truncated"], true);
        let services = value["services"].as_array().unwrap();
        let listed: usize = services
            .iter()
            .map(|s| s["hosts"].as_array().unwrap().len())
            .sum();
        assert!((1..20).contains(&services.len()), "{}", services.len());
        assert_eq!(value["servicesLeftOut"], 20 - services.len());
        assert_eq!(value["hostsLeftOut"], 20 * 300 - listed);
        assert!(services.iter().all(|s| s["watchedHosts"] == 300));
        // Less than one more host's worth was left unused.
        assert!(json.len() + HOST_ROOM + 6 * 58 > MAX_STATUS_BYTES - TAIL_ROOM);
        // Each entry stays within the room it was given, at the largest
        // figures (u64::MAX times, a window of 1000).
        let one = render([record(0)], u64::MAX, &config, &|_| usize::MAX);
        let value: serde_json::Value = serde_json::from_str(&one).expect("valid JSON");
        let entry = serde_json::to_string(&value["services"][0]["hosts"][0]).unwrap();
        let address = host_address_escaped(&value["services"][0]["hosts"][0]);
        assert!(entry.len() - address <= HOST_ROOM, "{entry}");
        let mut service = value["services"][0].clone();
        service["hosts"] = serde_json::Value::Array(Vec::new());
        let name = serde_json::to_string(&service["service"]).unwrap().len();
        assert!(serde_json::to_string(&service).unwrap().len() - name <= SERVICE_ROOM);
    }

    /// The length of a host entry's address as the document writes it.
    fn host_address_escaped(host: &serde_json::Value) -> usize {
        let mut out = String::new();
        string(&mut out, host["address"].as_str().unwrap());
        out.len()
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
