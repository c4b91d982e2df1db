//! The few things the state layer needs from Envoy, as a trait: the shell
//! implements it with proxy-wasm host calls, [`super::memory`] in memory
//! (with Envoy's compare-and-swap rules) so the layer runs natively.

use crate::metrics::Kind;

/// A shared-data write that did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    /// Someone wrote the key since we read it: read again and retry.
    #[error("compare-and-swap mismatch")]
    CasMismatch,
    #[error("host status {0}")]
    Host(u32),
}

/// A host call that failed, with the host's status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("host status {0}")]
pub struct HostError(pub u32);

pub trait Host {
    /// Wall-clock milliseconds.
    fn now_ms(&self) -> Option<u64>;
    /// A shared-data value and its CAS token; `(None, 0)` when the key
    /// was never written.
    fn shared_get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), HostError>;
    /// Writes `value` if the key's CAS token is still `cas` (0: always).
    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SetError>;
    /// The current request's upstream cluster (`xds.cluster_name`).
    fn cluster_name(&self) -> Option<String>;
    /// `namespace/name` of the VirtualService the current route came from.
    fn virtual_service(&self) -> Option<String>;
    /// Upstream attempts the current request took (`upstream.request_attempt_count`).
    fn attempt_count(&self) -> Option<u64>;
    fn define_metric(&self, kind: Kind, name: &str) -> Option<u32>;
    fn increment_metric(&self, id: u32, delta: u64);
    fn record_metric(&self, id: u32, value: u64);
    /// How often this plugin instance's tick fires.
    fn set_tick_period_ms(&self, period: u32) -> bool;
}
