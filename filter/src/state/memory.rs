//! An in-memory [`Host`] with Envoy's shared-data rules, for running the
//! state layer natively: several workers share one [`SharedData`] as
//! Envoy's VMs share its shared data.
//!
//! Envoy's rules (`shared_data.cc`): every successful write gives the key a
//! new CAS token from one counter; a write with a non-zero CAS that is not
//! the key's current token fails with CasMismatch; a write to a key that
//! does not exist always succeeds; keys are never deleted.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use super::host::{Host, HostError, SetError};
use crate::metrics::Kind;

#[derive(Debug, Default)]
pub struct SharedData {
    values: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_cas: Cell<u32>,
    /// Writes that failed on a CAS mismatch, for tests.
    pub mismatches: Cell<u64>,
    pub writes: Cell<u64>,
    pub reads: Cell<u64>,
}

impl SharedData {
    pub fn keys(&self) -> Vec<String> {
        self.values.borrow().keys().cloned().collect()
    }

    /// Total bytes stored.
    pub fn bytes(&self) -> usize {
        self.values
            .borrow()
            .iter()
            .map(|(k, (v, _))| k.len() + v.len())
            .sum()
    }

    /// Overwrites a key as another writer would, bumping its CAS token.
    pub fn poke(&self, key: &str, value: &[u8]) {
        let cas = self.next_cas.get().wrapping_add(1).max(1);
        self.next_cas.set(cas);
        self.values
            .borrow_mut()
            .insert(key.to_string(), (value.to_vec(), cas));
    }
}

/// One worker's host: its own clock, metrics and request properties, and
/// shared data common to every worker made from the same [`SharedData`].
#[derive(Debug, Default)]
pub struct MemoryHost {
    pub shared: Rc<SharedData>,
    pub now: Cell<u64>,
    pub cluster: RefCell<Option<String>>,
    pub virtual_service: RefCell<Option<String>>,
    pub attempts: Cell<Option<u64>>,
    pub metrics: RefCell<BTreeMap<String, (Kind, u64)>>,
    ids: RefCell<Vec<String>>,
    pub tick_period_ms: Cell<u32>,
    /// Host calls made, for tests that bound them.
    pub calls: Cell<u64>,
}

impl MemoryHost {
    pub fn new(shared: Rc<SharedData>) -> Self {
        MemoryHost {
            shared,
            ..MemoryHost::default()
        }
    }

    pub fn metric(&self, name: &str) -> Option<u64> {
        self.metrics.borrow().get(name).map(|(_, v)| *v)
    }

    fn call(&self) {
        self.calls.set(self.calls.get() + 1);
    }
}

impl Host for MemoryHost {
    fn now_ms(&self) -> Option<u64> {
        self.call();
        Some(self.now.get())
    }

    fn shared_get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), HostError> {
        self.call();
        let shared = &self.shared;
        shared.reads.set(shared.reads.get() + 1);
        Ok(match shared.values.borrow().get(key) {
            Some((value, cas)) => (Some(value.clone()), *cas),
            None => (None, 0),
        })
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SetError> {
        self.call();
        let shared = &self.shared;
        let mut values = shared.values.borrow_mut();
        if let Some((_, current)) = values.get(key) {
            if cas != 0 && cas != *current {
                shared.mismatches.set(shared.mismatches.get() + 1);
                return Err(SetError::CasMismatch);
            }
        }
        let next = shared.next_cas.get().wrapping_add(1).max(1);
        shared.next_cas.set(next);
        shared.writes.set(shared.writes.get() + 1);
        values.insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }

    fn cluster_name(&self) -> Option<String> {
        self.call();
        self.cluster.borrow().clone()
    }

    fn virtual_service(&self) -> Option<String> {
        self.call();
        self.virtual_service.borrow().clone()
    }

    fn attempt_count(&self) -> Option<u64> {
        self.call();
        self.attempts.get()
    }

    fn define_metric(&self, kind: Kind, name: &str) -> Option<u32> {
        self.call();
        let mut ids = self.ids.borrow_mut();
        self.metrics
            .borrow_mut()
            .entry(name.to_string())
            .or_insert((kind, 0));
        ids.push(name.to_string());
        u32::try_from(ids.len() - 1).ok()
    }

    fn increment_metric(&self, id: u32, delta: u64) {
        self.call();
        let ids = self.ids.borrow();
        if let Some(name) = ids.get(id as usize) {
            if let Some((_, value)) = self.metrics.borrow_mut().get_mut(name) {
                *value += delta;
            }
        }
    }

    fn record_metric(&self, id: u32, value: u64) {
        self.call();
        let ids = self.ids.borrow();
        if let Some(name) = ids.get(id as usize) {
            if let Some((_, v)) = self.metrics.borrow_mut().get_mut(name) {
                *v = value;
            }
        }
    }

    fn set_tick_period_ms(&self, period: u32) -> bool {
        self.call();
        self.tick_period_ms.set(period);
        true
    }
}
