//! The lines meshguard logs when a host's grade or a breaker's state
//! changes, as one type each: the filter writes them with [`HostLine`] and
//! [`BreakerLine`], and the harnesses and the bench read them back with
//! [`HostTransition::parse`] and [`BreakerChange::parse`], so a change to the
//! wording is a change to this file and its round-trip tests.
//!
//! ```text
//! meshguard: <unit> host <address>: <From> -> <To>: <reason>[; ejected for <s.mmm>s (ejection #<n>)]
//! meshguard: <unit> circuit breaker: <From> -> <To>: <reason>[; open for <s.mmm>s]
//! ```
//!
//! `<unit>` is the service, with `[vs=<ns/name> route=<route>]` for an
//! override's scope. Envoy prefixes each line with its own fields.

use std::fmt;

use crate::model::{BreakerState, HostState};

/// What every meshguard line starts with.
const PREFIX: &str = "meshguard: ";

/// A host's grade change, as the filter logs it.
pub struct HostLine<'a> {
    pub unit: &'a str,
    pub address: &'a str,
    pub from: HostState,
    pub to: HostState,
    pub reason: &'a dyn fmt::Display,
    /// The ejection's length and number, when `to` is Unhealthy.
    pub ejected: Option<(u64, u16)>,
}

impl fmt::Display for HostLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{} host {}: {} -> {}: {}",
            self.unit, self.address, self.from, self.to, self.reason
        )?;
        if let Some((ms, number)) = self.ejected {
            write!(
                f,
                "; ejected for {}.{:03}s (ejection #{number})",
                ms / 1000,
                ms % 1000
            )?;
        }
        Ok(())
    }
}

/// A breaker's state change, as the filter logs it.
pub struct BreakerLine<'a> {
    pub unit: &'a str,
    pub from: BreakerState,
    pub to: BreakerState,
    pub reason: &'a dyn fmt::Display,
    /// How long it stays open, when `to` is Open.
    pub open_for_ms: Option<u64>,
}

impl fmt::Display for BreakerLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{} circuit breaker: {} -> {}: {}",
            self.unit, self.from, self.to, self.reason
        )?;
        if let Some(ms) = self.open_for_ms {
            write!(f, "; open for {}.{:03}s", ms / 1000, ms % 1000)?;
        }
        Ok(())
    }
}

/// A [`HostLine`] read back from a log line (Envoy's prefix allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTransition {
    pub unit: String,
    pub address: String,
    pub from: HostState,
    pub to: HostState,
    /// Without the ejection suffix.
    pub reason: String,
    pub ejected_for_ms: Option<u64>,
    pub ejection: Option<u16>,
}

impl HostTransition {
    pub fn parse(line: &str) -> Option<HostTransition> {
        let message = &line[line.rfind(PREFIX)? + PREFIX.len()..];
        let (unit, rest) = message.split_once(" host ")?;
        let (address, rest) = rest.split_once(": ")?;
        let (from, rest) = rest.split_once(" -> ")?;
        let (to, reason) = rest.split_once(": ")?;
        let (reason, ejected_for_ms, ejection) = match reason.split_once("; ejected for ") {
            Some((reason, tail)) => {
                let (secs, number) = tail.split_once("s (ejection #")?;
                let number = number.strip_suffix(')')?.parse().ok()?;
                (reason, Some(millis(secs)?), Some(number))
            }
            None => (reason, None, None),
        };
        Some(HostTransition {
            unit: unit.to_string(),
            address: address.to_string(),
            from: HostState::from_name(from)?,
            to: HostState::from_name(to)?,
            reason: reason.to_string(),
            ejected_for_ms,
            ejection,
        })
    }
}

/// A [`BreakerLine`] read back from a log line (Envoy's prefix allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerChange {
    pub unit: String,
    pub from: BreakerState,
    pub to: BreakerState,
    /// Without the open-for suffix.
    pub reason: String,
    pub open_for_ms: Option<u64>,
}

impl BreakerChange {
    pub fn parse(line: &str) -> Option<BreakerChange> {
        let message = &line[line.rfind(PREFIX)? + PREFIX.len()..];
        let (unit, rest) = message.split_once(" circuit breaker: ")?;
        let (from, rest) = rest.split_once(" -> ")?;
        let (to, reason) = rest.split_once(": ")?;
        let (reason, open_for_ms) = match reason.split_once("; open for ") {
            Some((reason, secs)) => (reason, Some(millis(secs.strip_suffix('s')?)?)),
            None => (reason, None),
        };
        Some(BreakerChange {
            unit: unit.to_string(),
            from: BreakerState::from_name(from)?,
            to: BreakerState::from_name(to)?,
            reason: reason.to_string(),
            open_for_ms,
        })
    }
}

/// `12.345` (seconds with milliseconds, as the lines print them) in ms.
fn millis(text: &str) -> Option<u64> {
    let (secs, ms) = text.split_once('.')?;
    if ms.len() != 3 {
        return None;
    }
    Some(secs.parse::<u64>().ok()?.checked_mul(1000)? + ms.parse::<u64>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_lines_read_back_as_written() {
        let reason = "failure 50% over 20 >= 50%";
        for ejected in [None, Some((30_000, 1)), Some((1_234_567, 12))] {
            let to = if ejected.is_some() {
                HostState::Unhealthy
            } else {
                HostState::Degraded
            };
            let line = HostLine {
                unit: "outbound|80||reviews [vs=shop/web route=*]",
                address: "envoy://connect_originate/10.1.2.3:8080",
                from: HostState::Healthy,
                to,
                reason: &reason,
                ejected,
            }
            .to_string();
            let envoy = format!(
                "[2026-12-01 19:42:09.175][26268][info][wasm] wasm log meshguard meshguard: {line}"
            );
            let back = HostTransition::parse(&envoy).expect("parses");
            assert_eq!(back.unit, "outbound|80||reviews [vs=shop/web route=*]");
            assert_eq!(back.address, "envoy://connect_originate/10.1.2.3:8080");
            assert_eq!((back.from, back.to), (HostState::Healthy, to));
            assert_eq!(back.reason, reason);
            assert_eq!(back.ejected_for_ms.zip(back.ejection), ejected);
        }
    }

    /// The exact wording, as docs and users' log queries know it.
    #[test]
    fn the_wording_is_the_documented_one() {
        let line = HostLine {
            unit: "demo",
            address: "127.0.1.2:45829",
            from: HostState::Healthy,
            to: HostState::Unhealthy,
            reason: &"5 consecutive failures",
            ejected: Some((30_000, 1)),
        };
        assert_eq!(
            line.to_string(),
            "meshguard: demo host 127.0.1.2:45829: Healthy -> Unhealthy: 5 consecutive failures; ejected for 30.000s (ejection #1)"
        );
        let breaker = BreakerLine {
            unit: "demo",
            from: BreakerState::Closed,
            to: BreakerState::Open,
            reason: &"failure 50% over 20 >= 50%",
            open_for_ms: Some(2_000),
        };
        assert_eq!(
            breaker.to_string(),
            "meshguard: demo circuit breaker: Closed -> Open: failure 50% over 20 >= 50%; open for 2.000s"
        );
        let back = BreakerChange::parse(&breaker.to_string()).expect("parses");
        assert_eq!(
            (back.from, back.to, back.open_for_ms),
            (BreakerState::Closed, BreakerState::Open, Some(2_000))
        );
        assert_eq!(back.reason, "failure 50% over 20 >= 50%");
        let half = BreakerChange::parse(
            "meshguard: demo circuit breaker: Open -> HalfOpen: open period over",
        )
        .expect("parses");
        assert_eq!((half.to, half.open_for_ms), (BreakerState::HalfOpen, None));
    }

    #[test]
    fn other_lines_are_not_transitions() {
        for line in [
            "meshguard: demo host 10.0.0.1:80: ejection refused by maxEjectionPercent (5 consecutive failures)",
            "meshguard: demo host 10.0.0.1:80: not tracked, the table of hosts with failures is full",
            "meshguard: demo host 10.0.0.1:80: Healthy -> Sideways: who knows",
            "meshguard: demo host 10.0.0.1:80: Healthy -> Unhealthy: x; ejected for 3s (ejection #1)",
            "something else entirely",
        ] {
            assert_eq!(HostTransition::parse(line), None, "{line}");
            assert_eq!(BreakerChange::parse(line), None, "{line}");
        }
    }
}
