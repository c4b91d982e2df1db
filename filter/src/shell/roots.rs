//! The VM's plugin instances (`crate::roots`, which says how requests find
//! theirs and what happens past `MAX_ROOTS`), served by Envoy: names from
//! the host, the count of instances set aside as a metric, and workers
//! started again for instances brought back.

use super::envoy_host::Worker;
use super::host;
use super::props;
use super::stream::Stream;

pub type Root = crate::roots::Root<Worker>;

#[derive(Default)]
pub struct Roots(crate::roots::Roots<Worker>);

impl Roots {
    /// The instance with this context id (see `crate::roots::Roots::get_or_create`).
    pub fn get_or_create(&mut self, context_id: u32, now: u64) -> &mut Root {
        self.0.get_or_create(context_id, now, || {
            props::plugin_name().unwrap_or_else(|| "meshguard".to_string())
        });
        self.count_dropped();
        // Running now: found at once.
        self.0.get_or_create(context_id, now, String::new)
    }

    /// Running plugin instances.
    pub fn count(&self) -> usize {
        self.0.count()
    }

    pub fn remove(&mut self, context_id: u32) {
        self.0.remove(context_id);
    }

    /// A request of `root_context_id` started: it belongs there, and an
    /// instance set aside at the limit starts again.
    pub fn adopt(&mut self, stream: &mut Stream, root_context_id: u32, now: u64) {
        stream.root = Some(root_context_id);
        if let Some(root) = self.0.adopt(root_context_id, now) {
            super::start(root);
        }
        self.count_dropped();
    }

    fn count_dropped(&mut self) {
        for _ in 0..self.0.take_dropped() {
            super::count_global(crate::metrics::Metric::PluginInstancesDropped);
        }
    }

    pub fn tick(&mut self, context_id: u32, now: u64) -> Option<&mut Root> {
        self.0.tick(context_id, now)
    }

    pub fn for_stream(&mut self, stream: &Stream) -> Option<&mut Worker> {
        self.0.for_root(stream.root)
    }

    /// Wall-clock time for bookkeeping, without a host call when a worker
    /// already knows it.
    pub fn clock_ms(&self) -> u64 {
        self.0
            .any_worker()
            .map_or_else(|| host::now_ms().unwrap_or(0), Worker::clock_ms)
    }
}
