//! The plugin instances (Envoy's root contexts) living in this VM, and which
//! one a request belongs to.
//!
//! Usually a VM holds one. Envoy puts several in one VM when filters share
//! the module and VM settings but not the plugin configuration (two
//! listeners, or a configuration update while the old listener drains).
//! Without `proxy_on_context_create` (not exported: one VM entry less per
//! request) a request does not say which instance it belongs to, so it is
//! asked for (`plugin_root_id`, then `plugin_name`) only when those tell
//! the live instances apart; otherwise the newest configuration governs.
//! An instance Envoy deleted stops ticking and is forgotten.

use super::envoy_host::Worker;
use super::host;
use super::props;
use super::stream::Stream;

/// Ticks come every 100 ms; an instance silent this long was deleted.
const SILENT_MS: u64 = 5_000;
/// Plugin instances one VM keeps at most.
const MAX_ROOTS: usize = 64;

pub struct Root {
    pub context_id: u32,
    root_id: String,
    /// `plugin_name`: also the prefix of the shared-data keys.
    pub name: String,
    /// `None` until a configuration was accepted.
    pub worker: Option<Worker>,
    last_seen_ms: u64,
}

/// How a request's instance is found when there are several.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tell {
    ByRootId,
    ByName,
    Newest,
}

#[derive(Default)]
pub struct Roots {
    /// In order of their first configuration; the last is the newest.
    roots: Vec<Root>,
    tell: Option<Tell>,
}

impl Roots {
    /// The instance with this context id, created if new.
    pub fn get_or_create(&mut self, context_id: u32, now: u64) -> Option<&mut Root> {
        if let Some(position) = self.position(context_id) {
            let root = &mut self.roots[position];
            root.last_seen_ms = now;
            return Some(root);
        }
        if self.roots.len() >= MAX_ROOTS {
            return None;
        }
        self.roots.push(Root {
            context_id,
            root_id: props::plugin_root_id().unwrap_or_default(),
            name: props::plugin_name().unwrap_or_else(|| "meshguard".to_string()),
            worker: None,
            last_seen_ms: now,
        });
        self.retell();
        self.roots.last_mut()
    }

    fn position(&self, context_id: u32) -> Option<usize> {
        self.roots.iter().position(|r| r.context_id == context_id)
    }

    /// A tick from `context_id` at `now`: instances that stopped ticking
    /// were deleted by Envoy.
    pub fn tick(&mut self, context_id: u32, now: u64) -> Option<&mut Root> {
        let before = self.roots.len();
        self.roots.retain(|r| {
            r.context_id == context_id || now.saturating_sub(r.last_seen_ms) < SILENT_MS
        });
        if self.roots.len() != before {
            self.retell();
        }
        let position = self.position(context_id)?;
        let root = &mut self.roots[position];
        root.last_seen_ms = now;
        Some(root)
    }

    fn retell(&mut self) {
        let distinct = |key: fn(&Root) -> &str| {
            self.roots
                .iter()
                .enumerate()
                .all(|(i, a)| self.roots[i + 1..].iter().all(|b| key(a) != key(b)))
        };
        self.tell = if self.roots.len() <= 1 {
            None
        } else if distinct(|r| r.root_id.as_str()) {
            Some(Tell::ByRootId)
        } else if distinct(|r| r.name.as_str()) {
            Some(Tell::ByName)
        } else {
            // Usually a configuration update while the old listener drains;
            // also two filters that share root_id and name, which deserve a
            // hint.
            log::info!(
                "meshguard: {} plugin configurations share this VM under the same root_id and name; requests follow the newest (filters that should keep their own configuration need their own root_id or vm_id)",
                self.roots.len()
            );
            Some(Tell::Newest)
        };
    }

    /// The configured instance a request belongs to, noting it in the
    /// request's state when it had to be asked for.
    pub fn for_stream(&mut self, stream: &mut Stream) -> Option<&mut Worker> {
        let position = match (stream.root, self.tell) {
            (Some(id), _) => self.position(id),
            (None, None) => (!self.roots.is_empty()).then_some(0),
            (None, Some(tell)) => {
                let position = self.pick(tell);
                stream.root = position.map(|p| self.roots[p].context_id);
                position
            }
        }?;
        self.roots[position].worker.as_mut()
    }

    fn pick(&self, tell: Tell) -> Option<usize> {
        let newest = self.roots.iter().rposition(|r| r.worker.is_some());
        let found = match tell {
            Tell::ByRootId => {
                let id = props::plugin_root_id().unwrap_or_default();
                self.roots.iter().position(|r| r.root_id == id)
            }
            Tell::ByName => {
                let name = props::plugin_name().unwrap_or_default();
                self.roots.iter().position(|r| r.name == name)
            }
            Tell::Newest => None,
        };
        found.or(newest)
    }

    /// Wall-clock time for bookkeeping, without a host call when a worker
    /// already knows it.
    pub fn clock_ms(&self) -> u64 {
        self.roots
            .iter()
            .find_map(|r| r.worker.as_ref().map(Worker::clock_ms))
            .unwrap_or_else(|| host::now_ms().unwrap_or(0))
    }
}
