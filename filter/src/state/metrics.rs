//! Reporting through Envoy's stats: metric ids defined lazily and cached,
//! gauges written only when they change, counters added in batches.

use std::collections::BTreeMap;

use super::host::Host;
use crate::metrics::Kind;

/// Distinct metric names one worker defines at most; with the default
/// limits a busy mesh stays far below, and past it new names are dropped
/// rather than grow memory.
const MAX_METRICS: usize = 8192;

/// A defined metric: Envoy's id and the last gauge value written.
struct Known {
    id: u32,
    last: Option<u64>,
}

/// Keyed by name in an ordered map: every tick looks up each host's gauges,
/// so a scan over thousands of names would be the tick's main cost (and a
/// hash map would need random keys from the host).
#[derive(Default)]
pub struct Metrics {
    known: BTreeMap<String, Known>,
}

impl Metrics {
    fn entry(&mut self, host: &impl Host, name: String, kind: Kind) -> Option<&mut Known> {
        if self.known.contains_key(&name) {
            return self.known.get_mut(&name);
        }
        if self.known.len() >= MAX_METRICS {
            return None;
        }
        let id = host.define_metric(kind, &name)?;
        Some(self.known.entry(name).or_insert(Known { id, last: None }))
    }

    pub fn add(&mut self, host: &impl Host, name: String, delta: u64) {
        if delta == 0 {
            return;
        }
        if let Some(known) = self.entry(host, name, Kind::Counter) {
            host.increment_metric(known.id, delta);
        }
    }

    pub fn set(&mut self, host: &impl Host, name: String, value: u64) {
        if let Some(known) = self.entry(host, name, Kind::Gauge) {
            if known.last != Some(value) {
                host.record_metric(known.id, value);
                known.last = Some(value);
            }
        }
    }
}
