//! What Envoy keeps outside any one VM and the test host shares between
//! its VMs: the clock, shared data (with Envoy's compare-and-swap rules),
//! shared queues, metrics and the log.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use super::abi::{LogLevel, MetricType, Status};

/// One line a VM logged (`proxy_log`, or WASI stdout/stderr).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Virtual monotonic time of the call, in nanoseconds since the host started.
    pub time_ns: u64,
    /// Index of the VM (worker) that logged it.
    pub vm: usize,
    /// Context that was active (the root context for root callbacks).
    pub context_id: u32,
    /// `None` for text written to WASI stdout/stderr.
    pub level: Option<LogLevel>,
    pub message: String,
}

#[derive(Debug, Clone)]
struct Queue {
    vm_id: String,
    name: String,
    owner_vm: usize,
    owner_context: u32,
    items: VecDeque<Vec<u8>>,
}

/// A metric as the test reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: String,
    pub kind: MetricType,
    /// Counter total or gauge value.
    pub value: i64,
    /// Every value recorded into a histogram.
    pub samples: Vec<u64>,
}

/// Never keep more log lines than this per host (a runaway guest must not
/// exhaust the test's memory); later lines are counted, not stored.
pub const MAX_LOG_RECORDS: usize = 1_000_000;

#[derive(Debug)]
pub struct SharedState {
    /// Wall clock the guest reads (`proxy_get_current_time_nanoseconds`).
    wall_ns: u64,
    /// Monotonic clock timers (ticks) run on; a wall-clock jump leaves it alone.
    mono_ns: u64,
    data: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    next_cas: u32,
    queues: Vec<Queue>,
    /// `(vm, root context, queue id)` to deliver `proxy_on_queue_ready` to.
    ready: Vec<(usize, u32, u32)>,
    metrics: Vec<Metric>,
    /// `(name, kind)` -> index into `metrics`, so defining is O(1) with
    /// tens of thousands of per-host metrics.
    metric_index: HashMap<(String, MetricType), usize>,
    /// Indices of gauges defined or set since the last
    /// [`take_changed_gauges`](SharedState::take_changed_gauges), when
    /// [`watch_gauges`](SharedState::watch_gauges) turned this on.
    changed_gauges: Option<Vec<usize>>,
    logs: Vec<LogRecord>,
    dropped_logs: u64,
    /// Print each log line to stderr as it arrives (`MESHGUARD_HOST_LOG=1`).
    pub echo_logs: bool,
    random: u64,
}

/// A cheap, cloneable handle on the shared state.
#[derive(Debug, Clone)]
pub struct Shared(Arc<Mutex<SharedState>>);

/// Default start of the virtual clock: 2025-01-01T00:00:00Z.
pub const DEFAULT_START_NS: u64 = 1_735_689_600 * 1_000_000_000;

impl Shared {
    pub fn new(start_ns: u64, seed: u64) -> Shared {
        Shared(Arc::new(Mutex::new(SharedState {
            wall_ns: start_ns,
            mono_ns: 0,
            data: HashMap::new(),
            next_cas: 1,
            queues: Vec::new(),
            ready: Vec::new(),
            metrics: Vec::new(),
            metric_index: HashMap::new(),
            changed_gauges: None,
            logs: Vec::new(),
            dropped_logs: 0,
            echo_logs: std::env::var_os("MESHGUARD_HOST_LOG").is_some_and(|v| v == "1"),
            random: seed | 1,
        })))
    }

    pub fn lock(&self) -> MutexGuard<'_, SharedState> {
        // A panic while holding the lock is a test failure already; keep
        // going so the report can still be read.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wall-clock time the guest sees, in nanoseconds since the epoch.
    pub fn now_ns(&self) -> u64 {
        self.lock().wall_ns
    }

    pub fn mono_ns(&self) -> u64 {
        self.lock().mono_ns
    }
}

impl SharedState {
    pub fn now_ns(&self) -> u64 {
        self.wall_ns
    }

    pub fn mono_ns(&self) -> u64 {
        self.mono_ns
    }

    /// Moves both clocks forward.
    pub fn advance(&mut self, ns: u64) {
        self.mono_ns = self.mono_ns.saturating_add(ns);
        self.wall_ns = self.wall_ns.saturating_add(ns);
    }

    /// Sets the wall clock only (NTP step, suspended host...), forward or back.
    pub fn set_wall_ns(&mut self, ns: u64) {
        self.wall_ns = ns;
    }

    // ---- shared data, with Envoy's semantics (source/extensions/common/wasm/wasm.cc
    // and proxy-wasm-cpp-host's SharedData): one CAS counter for the store,
    // a write with cas 0 is unconditional, a write with a stale cas fails
    // with CasMismatch, a write to a missing key always succeeds.

    pub fn get_data(&self, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        self.data.get(key).cloned()
    }

    pub fn set_data(&mut self, key: &[u8], value: &[u8], cas: u32) -> Status {
        let next = self.next_cas();
        match self.data.get_mut(key) {
            Some(entry) => {
                if cas != 0 && cas != entry.1 {
                    return Status::CasMismatch;
                }
                *entry = (value.to_vec(), next);
            }
            None => {
                self.data.insert(key.to_vec(), (value.to_vec(), next));
            }
        }
        Status::Ok
    }

    fn next_cas(&mut self) -> u32 {
        let cas = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1);
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        cas
    }

    /// All keys, sorted (for tests that inspect the store).
    pub fn data_keys(&self) -> Vec<Vec<u8>> {
        let mut keys: Vec<_> = self.data.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Bytes held in shared data: keys and values.
    pub fn data_bytes(&self) -> usize {
        self.data.iter().map(|(k, (v, _))| k.len() + v.len()).sum()
    }

    // ---- shared queues

    pub fn register_queue(&mut self, vm_id: &str, name: &str, vm: usize, context: u32) -> u32 {
        if let Some(index) = self
            .queues
            .iter()
            .position(|q| q.vm_id == vm_id && q.name == name)
        {
            let queue = &mut self.queues[index];
            queue.owner_vm = vm;
            queue.owner_context = context;
            return index as u32 + 1;
        }
        self.queues.push(Queue {
            vm_id: vm_id.to_string(),
            name: name.to_string(),
            owner_vm: vm,
            owner_context: context,
            items: VecDeque::new(),
        });
        self.queues.len() as u32
    }

    pub fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.queues
            .iter()
            .position(|q| q.vm_id == vm_id && q.name == name)
            .map(|i| i as u32 + 1)
    }

    pub fn enqueue(&mut self, id: u32, value: Vec<u8>) -> Status {
        let Some(queue) = id
            .checked_sub(1)
            .and_then(|i| self.queues.get_mut(i as usize))
        else {
            return Status::NotFound;
        };
        queue.items.push_back(value);
        let note = (queue.owner_vm, queue.owner_context, id);
        self.ready.push(note);
        Status::Ok
    }

    pub fn dequeue(&mut self, id: u32) -> Result<Vec<u8>, Status> {
        let queue = id
            .checked_sub(1)
            .and_then(|i| self.queues.get_mut(i as usize))
            .ok_or(Status::NotFound)?;
        queue.items.pop_front().ok_or(Status::Empty)
    }

    pub fn take_queue_notifications(&mut self) -> Vec<(usize, u32, u32)> {
        std::mem::take(&mut self.ready)
    }

    // ---- metrics (one table for all VMs, like Envoy's stats store). The
    // id carries the type in its low two bits, like Envoy's.

    pub fn define_metric(&mut self, kind: MetricType, name: &str) -> u32 {
        let index = match self.metric_index.get(&(name.to_string(), kind)) {
            Some(index) => *index,
            None => {
                self.metrics.push(Metric {
                    name: name.to_string(),
                    kind,
                    value: 0,
                    samples: Vec::new(),
                });
                let index = self.metrics.len() - 1;
                self.metric_index.insert((name.to_string(), kind), index);
                self.gauge_changed(index);
                index
            }
        };
        ((index as u32) << 2) | kind as u32
    }

    fn metric_mut(&mut self, id: u32) -> Option<&mut Metric> {
        self.metrics.get_mut((id >> 2) as usize)
    }

    fn gauge_changed(&mut self, index: usize) {
        if self.metrics[index].kind == MetricType::Gauge {
            if let Some(changed) = &mut self.changed_gauges {
                changed.push(index);
            }
        }
    }

    /// Starts (or stops) recording which gauges are defined or set, for
    /// [`take_changed_gauges`](SharedState::take_changed_gauges).
    pub fn watch_gauges(&mut self, on: bool) {
        self.changed_gauges = on.then(Vec::new);
    }

    /// Gauges defined or set since the last call (indices into
    /// [`metrics`](SharedState::metrics), in call order, repeats included).
    pub fn take_changed_gauges(&mut self) -> Vec<usize> {
        self.changed_gauges
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    pub fn increment_metric(&mut self, id: u32, offset: i64) -> Status {
        let Some(metric) = self.metric_mut(id) else {
            return Status::NotFound;
        };
        match metric.kind {
            MetricType::Counter if offset < 0 => Status::BadArgument,
            MetricType::Counter => {
                metric.value = metric.value.saturating_add(offset);
                Status::Ok
            }
            MetricType::Gauge => {
                metric.value = metric.value.saturating_add(offset);
                self.gauge_changed((id >> 2) as usize);
                Status::Ok
            }
            MetricType::Histogram => Status::BadArgument,
        }
    }

    pub fn record_metric(&mut self, id: u32, value: u64) -> Status {
        let Some(metric) = self.metric_mut(id) else {
            return Status::NotFound;
        };
        match metric.kind {
            MetricType::Counter => {
                metric.value = metric
                    .value
                    .saturating_add(i64::try_from(value).unwrap_or(i64::MAX))
            }
            MetricType::Gauge => {
                metric.value = i64::try_from(value).unwrap_or(i64::MAX);
                self.gauge_changed((id >> 2) as usize);
            }
            MetricType::Histogram => metric.samples.push(value),
        }
        Status::Ok
    }

    pub fn get_metric(&self, id: u32) -> Result<u64, Status> {
        let metric = self
            .metrics
            .get((id >> 2) as usize)
            .ok_or(Status::NotFound)?;
        match metric.kind {
            MetricType::Histogram => Err(Status::BadArgument),
            _ => Ok(metric.value as u64),
        }
    }

    /// A metric by name, for assertions.
    pub fn metric(&self, name: &str) -> Option<&Metric> {
        [
            MetricType::Counter,
            MetricType::Gauge,
            MetricType::Histogram,
        ]
        .iter()
        .filter_map(|kind| self.metric_index.get(&(name.to_string(), *kind)))
        .min()
        .map(|index| &self.metrics[*index])
    }

    pub fn metrics(&self) -> &[Metric] {
        &self.metrics
    }

    // ---- log

    pub fn log(&mut self, record: LogRecord) {
        if self.echo_logs {
            eprintln!(
                "[{:>10.3}s vm{} ctx{} {:?}] {}",
                self.mono_ns as f64 / 1e9,
                record.vm,
                record.context_id,
                record.level,
                record.message
            );
        }
        if self.logs.len() >= MAX_LOG_RECORDS {
            self.dropped_logs += 1;
        } else {
            self.logs.push(record);
        }
    }

    pub fn logs(&self) -> &[LogRecord] {
        &self.logs
    }

    /// Removes and returns the log lines recorded so far.
    pub fn take_logs(&mut self) -> Vec<LogRecord> {
        std::mem::take(&mut self.logs)
    }

    // ---- deterministic randomness for WASI `random_get`

    pub fn random_bytes(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            self.random = super::rng::splitmix64(&mut self.random);
            chunk.copy_from_slice(&self.random.to_le_bytes()[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_semantics_like_envoy() {
        let shared = Shared::new(0, 1);
        let mut s = shared.lock();
        assert_eq!(
            s.set_data(b"k", b"a", 42),
            Status::Ok,
            "missing key: any cas"
        );
        let (_, cas) = s.get_data(b"k").unwrap();
        assert_eq!(s.set_data(b"k", b"b", cas + 1), Status::CasMismatch);
        assert_eq!(s.set_data(b"k", b"b", cas), Status::Ok);
        assert_eq!(s.set_data(b"k", b"c", cas), Status::CasMismatch, "stale");
        assert_eq!(s.set_data(b"k", b"c", 0), Status::Ok, "0 = unconditional");
        assert_eq!(s.get_data(b"k").unwrap().0, b"c");
    }
}

#[cfg(test)]
mod more_tests {
    use super::*;

    #[test]
    fn metrics_one_table_with_envoy_rules() {
        let shared = Shared::new(0, 1);
        let mut s = shared.lock();
        let counter = s.define_metric(MetricType::Counter, "c");
        assert_eq!(
            s.define_metric(MetricType::Counter, "c"),
            counter,
            "same name, same metric"
        );
        assert_eq!(s.increment_metric(counter, 2), Status::Ok);
        assert_eq!(s.increment_metric(counter, -1), Status::BadArgument);
        assert_eq!(s.get_metric(counter), Ok(2));
        let gauge = s.define_metric(MetricType::Gauge, "g");
        assert_eq!(s.record_metric(gauge, 7), Status::Ok);
        assert_eq!(s.increment_metric(gauge, -2), Status::Ok);
        assert_eq!(s.get_metric(gauge), Ok(5));
        let histogram = s.define_metric(MetricType::Histogram, "h");
        assert_eq!(s.record_metric(histogram, 3), Status::Ok);
        assert_eq!(s.get_metric(histogram), Err(Status::BadArgument));
        assert_eq!(s.metric("h").unwrap().samples, vec![3]);
        assert_eq!(s.get_metric(999 << 2), Err(Status::NotFound));
    }

    #[test]
    fn queues() {
        let shared = Shared::new(0, 1);
        let mut s = shared.lock();
        let id = s.register_queue("vm", "q", 1, 1);
        assert_eq!(s.resolve_queue("vm", "q"), Some(id));
        assert_eq!(s.resolve_queue("other", "q"), None);
        assert_eq!(s.dequeue(id), Err(Status::Empty));
        assert_eq!(s.enqueue(id, b"x".to_vec()), Status::Ok);
        assert_eq!(s.take_queue_notifications(), vec![(1, 1, id)]);
        assert_eq!(s.dequeue(id), Ok(b"x".to_vec()));
        assert_eq!(s.enqueue(99, vec![]), Status::NotFound);
    }
}
