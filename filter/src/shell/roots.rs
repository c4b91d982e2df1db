//! The plugin instances (Envoy's root contexts) living in this VM, and which
//! one a request belongs to.
//!
//! Usually a VM holds one. Envoy puts several in one VM when filters share
//! the module and VM settings but not the plugin configuration: two
//! listeners, an upstream instance beside the downstream one, or a
//! configuration update while the old listener drains. Envoy identifies an
//! instance by its whole plugin configuration, so a configuration applied
//! again (a rollback: A, then B, then A) while the first A still drains
//! gets A's live root context back without any callback; only
//! `proxy_on_context_create`, which names each request's root context,
//! tells that requests follow A again. Requests follow their own instance;
//! one whose host does not say follows the newest.
//!
//! Instances end at `proxy_on_done` (Envoy's shutdown of a root context)
//! or, should a host not say, when they stop ticking. A VM holds at most
//! `MAX_ROOTS`: configuration pushed faster than listeners drain would
//! otherwise grow memory, so past it the instance least recently used by a
//! request (never the newest) is dropped, its requests pass through
//! unobserved, and the new configuration always starts.

use super::envoy_host::Worker;
use super::host;
use super::props;
use super::stream::Stream;

/// Ticks come every 100 ms; an instance silent this long was deleted.
const SILENT_MS: u64 = 5_000;
/// Plugin instances one VM keeps at most: each holds a worker's tables.
const MAX_ROOTS: usize = 64;

pub struct Root {
    pub context_id: u32,
    /// `plugin_name`: also the prefix of the shared-data keys.
    pub name: String,
    /// `None` until a configuration was accepted.
    pub worker: Option<Worker>,
    /// Its last tick.
    last_seen_ms: u64,
    /// When a request of its own last started, or it was configured.
    last_used_ms: u64,
}

#[derive(Default)]
pub struct Roots {
    /// In order of their first configuration; the last is the newest.
    roots: Vec<Root>,
}

impl Roots {
    /// The instance with this context id, created if new (dropping the
    /// least recently used one when the VM holds `MAX_ROOTS`).
    pub fn get_or_create(&mut self, context_id: u32, now: u64) -> &mut Root {
        if let Some(position) = self.position(context_id) {
            let root = &mut self.roots[position];
            root.last_seen_ms = now;
            root.last_used_ms = now;
            return &mut self.roots[position];
        }
        if self.roots.len() >= MAX_ROOTS {
            self.drop_least_used();
        }
        if !self.roots.is_empty() {
            log::info!(
                "meshguard: {} plugin instances in this VM (a listener update while the old listener drains, or filters with their own configuration); each request follows its own",
                self.roots.len() + 1
            );
        }
        self.roots.push(Root {
            context_id,
            name: props::plugin_name().unwrap_or_else(|| "meshguard".to_string()),
            worker: None,
            last_seen_ms: now,
            last_used_ms: now,
        });
        let last = self.roots.len() - 1;
        &mut self.roots[last]
    }

    /// Live plugin instances.
    pub fn count(&self) -> usize {
        self.roots.len()
    }

    fn drop_least_used(&mut self) {
        // Never the newest: its configuration is the one in force.
        let older = self.roots.len().saturating_sub(1);
        let Some(position) = (0..older).min_by_key(|&i| self.roots[i].last_used_ms) else {
            return;
        };
        let dropped = self.roots.remove(position);
        super::count_global(crate::metrics::Metric::PluginInstancesDropped);
        log::warn!(
            "meshguard: {MAX_ROOTS} plugin configurations live in this VM (updates come faster than listeners drain); the one least recently used (context {}) is dropped and its requests pass through unobserved",
            dropped.context_id
        );
    }

    fn position(&self, context_id: u32) -> Option<usize> {
        self.roots.iter().position(|r| r.context_id == context_id)
    }

    /// Envoy shut the instance down (its last filter is gone); any other
    /// context id is ignored.
    pub fn remove(&mut self, context_id: u32) {
        self.roots.retain(|r| r.context_id != context_id);
    }

    /// A request of `root_context_id` started: it belongs there.
    pub fn adopt(&mut self, stream: &mut Stream, root_context_id: u32, now: u64) {
        stream.root = Some(root_context_id);
        if let Some(position) = self.position(root_context_id) {
            self.roots[position].last_used_ms = now;
        }
    }

    /// A tick from `context_id` at `now`: instances that stopped ticking
    /// were deleted by Envoy.
    pub fn tick(&mut self, context_id: u32, now: u64) -> Option<&mut Root> {
        self.roots.retain(|r| {
            r.context_id == context_id || now.saturating_sub(r.last_seen_ms) < SILENT_MS
        });
        let position = self.position(context_id)?;
        let root = &mut self.roots[position];
        root.last_seen_ms = now;
        Some(root)
    }

    /// The configured instance a request belongs to: its own, or the
    /// newest when the host did not name it. A request of an instance
    /// dropped at the limit passes through unobserved: it may be an
    /// upstream instance's attempt, which the newest must not take for a
    /// request.
    pub fn for_stream(&mut self, stream: &Stream) -> Option<&mut Worker> {
        let position = self.serving(stream)?;
        self.roots[position].worker.as_mut()
    }

    pub fn serves(&self, stream: &Stream) -> bool {
        self.serving(stream)
            .is_some_and(|p| self.roots[p].worker.is_some())
    }

    fn serving(&self, stream: &Stream) -> Option<usize> {
        match stream.root {
            Some(id) => self.position(id),
            None => self.roots.iter().rposition(|r| r.worker.is_some()),
        }
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
