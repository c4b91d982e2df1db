//! Service records in Envoy's shared data, which every worker's VM sees.
//!
//! Keys are prefixed with the plugin's name (Istio leaves vm_id empty, so
//! plugins would otherwise collide) and a layout version. Envoy cannot
//! delete shared-data keys, so the number of keys is bounded by slots: an
//! index maps service names to `limits.maxServices` slots, and a slot idle
//! for long is reassigned under a new epoch. A change counter lets idle
//! workers skip re-reading records nothing has changed.

use serde::{Deserialize, Serialize};

use super::host::{Host, HostError, SetError};
use crate::config::Limits;
use crate::service::{self, ServiceHealth};

/// Attempts at a compare-and-swap before giving up for this round; the
/// outcomes stay pending and are written on the next try.
const CAS_ATTEMPTS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("shared-data call failed with status {0}")]
    Host(u32),
    #[error("other workers kept winning the compare-and-swap")]
    Contention,
    #[error("the slot now belongs to another service")]
    Reassigned,
    #[error("every service slot is in recent use (limits.maxServices)")]
    Full,
    #[error("record could not be encoded")]
    Encode,
}

impl From<HostError> for StoreError {
    fn from(error: HostError) -> Self {
        StoreError::Host(error.0)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Index {
    slots: Vec<IndexEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct IndexEntry {
    service: String,
    epoch: u32,
    last_active_ms: u64,
}

/// Every host of a service that some worker has seen, so that a worker
/// with little traffic steers across the whole service from the start.
/// Written only when the membership changes, never on the request path.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemberList {
    service: String,
    epoch: u32,
    pub version: u64,
    pub addresses: Vec<String>,
    /// The latest hosts steering showed gone (at most `MAX_DEPARTED`), so
    /// the other workers drop them without steering to them first.
    pub departed: Vec<String>,
}

/// Departures a member list remembers.
const MAX_DEPARTED: usize = 256;

/// What one worker changes in a member list.
pub struct MemberChanges<'a> {
    pub found: &'a [std::rc::Rc<str>],
    /// Forgotten (idle) or gone.
    pub left: &'a [std::rc::Rc<str>],
    /// Shown gone by steering.
    pub gone: &'a [std::rc::Rc<str>],
}

/// Where a service's record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub index: u16,
    pub epoch: u32,
}

pub struct Store {
    index_key: String,
    slot_prefix: String,
    changes_key: String,
}

impl Store {
    pub fn new(plugin_name: &str) -> Self {
        Store {
            index_key: format!("{plugin_name}.meshguard.v2.services"),
            slot_prefix: format!("{plugin_name}.meshguard.v2.service."),
            changes_key: format!("{plugin_name}.meshguard.v2.changes"),
        }
    }

    /// The number of changes any worker announced (a grade, the breaker,
    /// the set of watched hosts or of services): a worker whose count is
    /// current need not re-read any record.
    pub fn changes(&self, host: &impl Host) -> Result<u64, StoreError> {
        let (bytes, _) = host.shared_get(&self.changes_key)?;
        Ok(bytes
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(0, u64::from_le_bytes))
    }

    /// Announces a change to every worker.
    pub fn announce(&self, host: &impl Host) -> Result<u64, StoreError> {
        for _ in 0..CAS_ATTEMPTS {
            let (bytes, cas) = host.shared_get(&self.changes_key)?;
            let count = bytes
                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                .map_or(0, u64::from_le_bytes)
                .wrapping_add(1);
            match host.shared_set(&self.changes_key, &count.to_le_bytes(), cas) {
                Ok(()) => return Ok(count),
                Err(SetError::CasMismatch) => continue,
                Err(SetError::Host(status)) => return Err(StoreError::Host(status)),
            }
        }
        Err(StoreError::Contention)
    }

    fn slot_key(&self, slot: Slot) -> String {
        format!("{}{}", self.slot_prefix, slot.index)
    }

    fn members_key(&self, slot: Slot) -> String {
        format!("{}{}.members", self.slot_prefix, slot.index)
    }

    /// The service's shared member list (empty for a list of another
    /// service or an older epoch).
    pub fn members(
        &self,
        host: &impl Host,
        service: &str,
        slot: Slot,
    ) -> Result<MemberList, StoreError> {
        let (bytes, _) = host.shared_get(&self.members_key(slot))?;
        Ok(current_list(bytes.as_deref(), service, slot))
    }

    /// Adds and removes addresses in the service's member list (at most
    /// `cap` addresses); returns its new version.
    pub fn update_members(
        &self,
        host: &impl Host,
        service: &str,
        slot: Slot,
        changes: &MemberChanges<'_>,
        cap: usize,
    ) -> Result<u64, StoreError> {
        let (add, remove) = (changes.found, changes.left);
        let key = self.members_key(slot);
        for _ in 0..CAS_ATTEMPTS {
            let (bytes, cas) = host.shared_get(&key)?;
            let mut list = current_list(bytes.as_deref(), service, slot);
            let before = list.addresses.len();
            list.addresses
                .retain(|a| !remove.iter().any(|r| **r == **a));
            let mut changed = list.addresses.len() != before;
            for gone in changes.gone {
                if !list.departed.iter().any(|d| **d == **gone) {
                    if list.departed.len() >= MAX_DEPARTED {
                        list.departed.remove(0);
                    }
                    list.departed.push(gone.to_string());
                    changed = true;
                }
            }
            // A host that came back is no longer departed.
            let departed = list.departed.len();
            list.departed.retain(|d| !add.iter().any(|a| **a == **d));
            changed |= list.departed.len() != departed;
            for address in add {
                if list.addresses.len() >= cap {
                    break;
                }
                if !list.addresses.iter().any(|a| **a == **address) {
                    list.addresses.push(address.to_string());
                    changed = true;
                }
            }
            if !changed {
                return Ok(list.version);
            }
            list.version = list.version.wrapping_add(1);
            let bytes = postcard::to_allocvec(&list).map_err(|_| StoreError::Encode)?;
            match host.shared_set(&key, &bytes, cas) {
                Ok(()) => return Ok(list.version),
                Err(SetError::CasMismatch) => continue,
                Err(SetError::Host(status)) => return Err(StoreError::Host(status)),
            }
        }
        Err(StoreError::Contention)
    }

    /// Finds the service's slot, claiming a free or long-idle one if it has
    /// none. `idle_ms` is how long a slot must be unused to be reclaimed.
    /// Also says whether the slot was claimed just now.
    pub fn resolve(
        &self,
        host: &impl Host,
        service: &str,
        now: u64,
        limits: &Limits,
    ) -> Result<(Slot, bool), StoreError> {
        let idle_ms = limits.host_idle_timeout.0.max(1);
        self.update_index(host, |index| {
            if let Some(position) = index.slots.iter().position(|e| e.service == service) {
                return Ok(((slot_of(index, position), false), false));
            }
            let entry = |epoch| IndexEntry {
                service: service.to_string(),
                epoch,
                last_active_ms: now,
            };
            if index.slots.len() < usize::from(limits.max_services) {
                index.slots.push(entry(1));
                return Ok(((slot_of(index, index.slots.len() - 1), true), true));
            }
            let victim = index
                .slots
                .iter()
                .enumerate()
                .filter(|(_, e)| now.saturating_sub(e.last_active_ms) >= idle_ms)
                .min_by_key(|(_, e)| e.last_active_ms)
                .map(|(position, _)| position)
                .ok_or(StoreError::Full)?;
            let epoch = index.slots[victim].epoch.wrapping_add(1).max(1);
            index.slots[victim] = entry(epoch);
            Ok(((slot_of(index, victim), true), true))
        })
    }

    /// Marks the service as in use, so its slot is not reclaimed.
    pub fn touch(
        &self,
        host: &impl Host,
        service: &str,
        slot: Slot,
        now: u64,
    ) -> Result<(), StoreError> {
        self.update_index(host, |index| {
            let entry = index
                .slots
                .get_mut(usize::from(slot.index))
                .filter(|e| e.service == service && e.epoch == slot.epoch)
                .ok_or(StoreError::Reassigned)?;
            entry.last_active_ms = now;
            Ok(((), true))
        })
    }

    fn update_index<R>(
        &self,
        host: &impl Host,
        mut change: impl FnMut(&mut Index) -> Result<(R, bool), StoreError>,
    ) -> Result<R, StoreError> {
        for _ in 0..CAS_ATTEMPTS {
            let (bytes, cas) = host.shared_get(&self.index_key)?;
            let mut index: Index = bytes
                .and_then(|b| postcard::from_bytes(&b).ok())
                .unwrap_or_default();
            let (result, changed) = change(&mut index)?;
            if !changed {
                return Ok(result);
            }
            let bytes = postcard::to_allocvec(&index).map_err(|_| StoreError::Encode)?;
            match host.shared_set(&self.index_key, &bytes, cas) {
                Ok(()) => return Ok(result),
                Err(SetError::CasMismatch) => continue,
                Err(SetError::Host(status)) => return Err(StoreError::Host(status)),
            }
        }
        Err(StoreError::Contention)
    }

    /// The names of every record in the index.
    pub fn keys(&self, host: &impl Host) -> Result<Vec<String>, StoreError> {
        let (bytes, _) = host.shared_get(&self.index_key)?;
        let index: Index = bytes
            .and_then(|b| postcard::from_bytes(&b).ok())
            .unwrap_or_default();
        Ok(index.slots.into_iter().map(|e| e.service).collect())
    }

    /// The keys this plugin holds in shared data and their bytes (keys
    /// and values): the change counter, the index, and each slot's record
    /// and member list (for the status endpoint's `sharedData`).
    pub fn footprint(&self, host: &impl Host) -> (usize, usize) {
        let slots = match host.shared_get(&self.index_key) {
            Ok((Some(value), _)) => {
                postcard::from_bytes::<Index>(&value).map_or(0, |i| i.slots.len())
            }
            _ => 0,
        };
        let mut keys = 0;
        let mut bytes = 0;
        let mut count = |key: &str| {
            if let Ok((Some(value), _)) = host.shared_get(key) {
                keys += 1;
                bytes += key.len() + value.len();
            }
        };
        count(&self.changes_key);
        count(&self.index_key);
        for slot in 0..slots {
            count(&format!("{}{slot}", self.slot_prefix));
            count(&format!("{}{slot}.members", self.slot_prefix));
        }
        (keys, bytes)
    }

    /// Hands `f` every service record in shared data (for the status
    /// endpoint), read one at a time: never all at once.
    pub fn each(&self, host: &impl Host, mut f: impl FnMut(ServiceHealth)) {
        let Ok((Some(bytes), _)) = host.shared_get(&self.index_key) else {
            return;
        };
        let index: Index = postcard::from_bytes(&bytes).unwrap_or_default();
        for (position, entry) in index.slots.iter().enumerate() {
            if let Ok(record) = self.read(host, &entry.service, slot_of(&index, position)) {
                f(record);
            }
        }
    }

    /// The service's current record (empty if none was written yet).
    pub fn read(
        &self,
        host: &impl Host,
        service: &str,
        slot: Slot,
    ) -> Result<ServiceHealth, StoreError> {
        let (bytes, _) = host.shared_get(&self.slot_key(slot))?;
        current(bytes.as_deref(), service, slot)
    }

    /// Read-modify-write of the service's record under compare-and-swap.
    /// `change` may run several times (once per attempt) and must start from
    /// the record it is given each time.
    pub fn update<R>(
        &self,
        host: &impl Host,
        service: &str,
        slot: Slot,
        mut change: impl FnMut(&mut ServiceHealth) -> R,
    ) -> Result<(R, ServiceHealth), StoreError> {
        let key = self.slot_key(slot);
        for _ in 0..CAS_ATTEMPTS {
            let (bytes, cas) = host.shared_get(&key)?;
            let mut record = current(bytes.as_deref(), service, slot)?;
            let result = change(&mut record);
            let bytes = service::encode(&record).ok_or(StoreError::Encode)?;
            match host.shared_set(&key, &bytes, cas) {
                Ok(()) => return Ok((result, record)),
                Err(SetError::CasMismatch) => continue,
                Err(SetError::Host(status)) => return Err(StoreError::Host(status)),
            }
        }
        Err(StoreError::Contention)
    }
}

fn slot_of(index: &Index, position: usize) -> Slot {
    Slot {
        index: u16::try_from(position).unwrap_or(u16::MAX),
        epoch: index.slots.get(position).map_or(0, |e| e.epoch),
    }
}

/// Interprets what a slot holds for `service` at `slot`'s epoch: an older
/// epoch's record (or garbage) is a fresh start, a newer one means the
/// slot was given to someone else since we resolved it.
fn current(bytes: Option<&[u8]>, service: &str, slot: Slot) -> Result<ServiceHealth, StoreError> {
    match bytes.and_then(service::decode) {
        Some(record) if record.epoch == slot.epoch && record.service == service => Ok(record),
        Some(record) if record.epoch > slot.epoch => Err(StoreError::Reassigned),
        _ => Ok(ServiceHealth::new(service, slot.epoch)),
    }
}

fn current_list(bytes: Option<&[u8]>, service: &str, slot: Slot) -> MemberList {
    match bytes.and_then(|b| postcard::from_bytes::<MemberList>(b).ok()) {
        Some(list) if list.service == service && list.epoch == slot.epoch => list,
        _ => MemberList {
            service: service.to_string(),
            epoch: slot.epoch,
            version: 0,
            addresses: Vec::new(),
            departed: Vec::new(),
        },
    }
}
