//! Reporting through Envoy's stats: metric ids defined lazily and cached,
//! gauges written only when they change, counters added in batches.

use super::host;
use crate::metrics::Kind;

/// Distinct metric names one worker defines at most; with the default
/// limits a busy mesh stays far below, and past it new names are dropped
/// rather than grow memory.
const MAX_METRICS: usize = 8192;

#[derive(Default)]
pub struct Metrics {
    /// (name, id, last gauge value written)
    known: Vec<(String, u32, Option<u64>)>,
}

impl Metrics {
    fn id(&mut self, name: String, kind: Kind) -> Option<usize> {
        if let Some(index) = self.known.iter().position(|(n, ..)| *n == name) {
            return Some(index);
        }
        if self.known.len() >= MAX_METRICS {
            return None;
        }
        let type_code = match kind {
            Kind::Counter => 0,
            Kind::Gauge => 1,
        };
        let id = host::define_metric(type_code, &name).ok()?;
        self.known.push((name, id, None));
        Some(self.known.len() - 1)
    }

    pub fn add(&mut self, name: String, delta: u64) {
        if delta == 0 {
            return;
        }
        if let Some(index) = self.id(name, Kind::Counter) {
            let _ = host::increment_metric(
                self.known[index].1,
                i64::try_from(delta).unwrap_or(i64::MAX),
            );
        }
    }

    pub fn set(&mut self, name: String, value: u64) {
        if let Some(index) = self.id(name, Kind::Gauge) {
            let entry = &mut self.known[index];
            if entry.2 != Some(value) && host::record_metric(entry.1, value).is_ok() {
                entry.2 = Some(value);
            }
        }
    }
}
