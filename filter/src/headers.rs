//! Header rewriting rules: what each rule does and when it applies. The
//! shell executes them against Envoy's header maps.

use crate::config::{Op, Rule, When};
use crate::model::{BreakerState, HostState};
use crate::template::Values;

/// What is known about a request when its rules run.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The upstream host's grade, when a host is known (steered or answered).
    pub host_state: Option<HostState>,
    pub breaker_state: BreakerState,
    pub route: &'a str,
    pub virtual_service: &'a str,
    pub status: Option<u16>,
}

impl When {
    pub fn matches(&self, facts: &Facts) -> bool {
        let host_ok = self.host_states.is_empty()
            || facts
                .host_state
                .is_some_and(|s| self.host_states.contains(&s));
        let breaker_ok =
            self.breaker_states.is_empty() || self.breaker_states.contains(&facts.breaker_state);
        let route_ok = self.route.as_ref().is_none_or(|g| g.matches(facts.route));
        let vs_ok = self
            .virtual_service
            .as_ref()
            .is_none_or(|g| g.matches(facts.virtual_service));
        let status_ok = self
            .statuses
            .as_ref()
            .is_none_or(|set| facts.status.is_some_and(|s| set.contains(s)));
        host_ok && breaker_ok && route_ok && vs_ok && status_ok
    }
}

/// A rule resolved for one request: what to do to the header map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<'a> {
    Set(&'a str, String),
    Append(&'a str, String),
    Remove(&'a str),
    Rename(&'a str, &'a str),
}

/// The actions of `rules` that apply to this request, in order.
pub fn actions<'a>(
    rules: &'a [Rule],
    facts: &'a Facts,
    values: &'a Values,
) -> impl Iterator<Item = Action<'a>> + 'a {
    rules
        .iter()
        .filter(|r| r.when.matches(facts))
        .map(|rule| match &rule.op {
            Op::Set { name, value } => Action::Set(name, value.render(values)),
            Op::Append { name, value } => Action::Append(name, value.render(values)),
            Op::Remove { name } => Action::Remove(name),
            Op::Rename { from, to } => Action::Rename(from, to),
        })
}

/// A 128-bit random id as 32 hex digits, shaped like a UUID v4.
pub fn request_id(high: u64, low: u64) -> String {
    let high = (high & !0xf000) | 0x4000;
    let low = (low & !(0xc << 60)) | (0x8 << 60);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xffff,
        low >> 48,
        low & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests;
