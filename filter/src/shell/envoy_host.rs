//! The state layer's host (`crate::state::host::Host`) served by Envoy
//! through proxy-wasm host calls. Every error becomes "unknown", never a
//! panic.

use super::host::{self, Status, CAS_MISMATCH};
use super::props;
use crate::metrics::Kind;
use crate::state::host::{Host, HostError, SetError};
use crate::state::worker;

/// Zero-sized: the host is the VM's environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct EnvoyHost;

pub type Worker = worker::Worker<EnvoyHost>;

impl Host for EnvoyHost {
    fn now_ms(&self) -> Option<u64> {
        host::now_ms().ok()
    }

    fn shared_get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), HostError> {
        host::shared_data(key).map_err(|Status(status)| HostError(status))
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SetError> {
        match host::set_shared_data(key, value, cas) {
            Ok(()) => Ok(()),
            Err(Status(CAS_MISMATCH)) => Err(SetError::CasMismatch),
            Err(Status(status)) => Err(SetError::Host(status)),
        }
    }

    fn cluster_name(&self) -> Option<String> {
        props::cluster_name()
    }

    fn virtual_service(&self) -> Option<String> {
        props::virtual_service()
    }

    fn attempt_count(&self) -> Option<u64> {
        props::request_attempt_count()
    }

    fn define_metric(&self, kind: Kind, name: &str) -> Option<u32> {
        let code = match kind {
            Kind::Counter => 0,
            Kind::Gauge => 1,
        };
        host::define_metric(code, name).ok()
    }

    fn increment_metric(&self, id: u32, delta: u64) {
        let _ = host::increment_metric(id, i64::try_from(delta).unwrap_or(i64::MAX));
    }

    fn record_metric(&self, id: u32, value: u64) {
        let _ = host::record_metric(id, value);
    }

    fn set_tick_period_ms(&self, period: u32) -> bool {
        host::set_tick_period_ms(period).is_ok()
    }
}
