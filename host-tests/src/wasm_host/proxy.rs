//! Several VMs of one module sharing one shared-data store, metric table
//! and clock, the way Envoy runs one VM per worker thread, plus the
//! virtual clock that delivers ticks and a stream API in Envoy's order.

use std::time::Duration;

use super::abi::{Action, HeaderMap};
use super::module::PluginModule;
use super::props::Answer;
use super::shared::{LogRecord, Shared, SharedState, DEFAULT_START_NS};
use super::vm::{StreamState, Vm, VmError, VmOptions};

/// How to start a [`Proxy`].
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Number of VMs (Envoy workers).
    pub workers: usize,
    /// The plugin configuration handed to `proxy_on_configure`.
    pub plugin_configuration: Vec<u8>,
    pub vm: VmOptions,
    /// Wall-clock start, nanoseconds since the epoch.
    pub start_ns: u64,
    /// Seed of WASI `random_get`.
    pub seed: u64,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            workers: 2,
            plugin_configuration: Vec::new(),
            vm: VmOptions::default(),
            start_ns: DEFAULT_START_NS,
            seed: 1,
        }
    }
}

/// A stream in one VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamRef {
    pub vm: usize,
    pub id: u32,
}

/// N VMs sharing state, driven on a virtual clock.
pub struct Proxy {
    module: PluginModule,
    shared: Shared,
    vms: Vec<Vm>,
    /// What each VM's `proxy_on_vm_start` and last `proxy_on_configure` returned.
    pub started: Vec<bool>,
    pub configured: Vec<bool>,
}

impl Proxy {
    /// Starts `workers` VMs with `plugin_configuration`.
    pub fn new(
        module: &PluginModule,
        workers: usize,
        plugin_configuration: &str,
    ) -> Result<Proxy, VmError> {
        Proxy::with_options(
            module,
            ProxyOptions {
                workers,
                plugin_configuration: plugin_configuration.as_bytes().to_vec(),
                ..ProxyOptions::default()
            },
        )
    }

    pub fn with_options(module: &PluginModule, options: ProxyOptions) -> Result<Proxy, VmError> {
        let shared = Shared::new(options.start_ns, options.seed);
        let mut proxy = Proxy {
            module: module.clone(),
            shared,
            vms: Vec::new(),
            started: Vec::new(),
            configured: Vec::new(),
        };
        for index in 0..options.workers.max(1) {
            let mut vm = Vm::new(module, &proxy.shared, index, &options.vm)?;
            let (started, configured) = vm.start(&options.plugin_configuration)?;
            proxy.vms.push(vm);
            proxy.started.push(started);
            proxy.configured.push(configured);
        }
        proxy.deliver_queues()?;
        Ok(proxy)
    }

    pub fn module(&self) -> &PluginModule {
        &self.module
    }

    pub fn workers(&self) -> usize {
        self.vms.len()
    }

    pub fn vm(&self, index: usize) -> &Vm {
        &self.vms[index]
    }

    pub fn vm_mut(&mut self, index: usize) -> &mut Vm {
        &mut self.vms[index]
    }

    pub fn vms_mut(&mut self) -> &mut [Vm] {
        &mut self.vms
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Locks the shared state (shared data, metrics, log) for inspection.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, SharedState> {
        self.shared.lock()
    }

    /// Virtual time since the proxy started.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.shared.mono_ns())
    }

    /// Wall clock the plugin sees, in ms since the epoch.
    pub fn now_ms(&self) -> u64 {
        self.shared.now_ns() / 1_000_000
    }

    /// Reconfigures every VM; returns what each `proxy_on_configure` answered.
    pub fn configure(&mut self, plugin_configuration: &str) -> Result<Vec<bool>, VmError> {
        self.configure_bytes(plugin_configuration.as_bytes())
    }

    pub fn configure_bytes(&mut self, plugin_configuration: &[u8]) -> Result<Vec<bool>, VmError> {
        let mut answers = Vec::new();
        for vm in &mut self.vms {
            answers.push(vm.configure(plugin_configuration)?);
        }
        self.configured = answers.clone();
        self.deliver_queues()?;
        Ok(answers)
    }

    /// Moves virtual time forward, delivering every tick that falls due, in
    /// time order across VMs.
    pub fn advance(&mut self, by: Duration) -> Result<(), VmError> {
        let target = self.shared.mono_ns().saturating_add(by.as_nanos() as u64);
        self.advance_to_ns(target)
    }

    /// Moves virtual time to `target_ns` (monotonic, since start) if it is
    /// ahead, delivering due ticks.
    pub fn advance_to_ns(&mut self, target_ns: u64) -> Result<(), VmError> {
        loop {
            let next = self
                .vms
                .iter()
                .enumerate()
                .filter(|(_, vm)| vm.failure().is_none())
                .filter_map(|(i, vm)| vm.state().next_tick_ns.map(|t| (t, i)))
                .filter(|(t, _)| *t <= target_ns)
                .min();
            let Some((due, index)) = next else { break };
            self.move_clock_to(due);
            self.vms[index].tick()?;
            self.deliver_queues()?;
        }
        self.move_clock_to(target_ns);
        Ok(())
    }

    fn move_clock_to(&mut self, mono_ns: u64) {
        let mut shared = self.shared.lock();
        let now = shared.mono_ns();
        if mono_ns > now {
            shared.advance(mono_ns - now);
        }
    }

    /// Steps the wall clock the plugin reads by `delta_ns` (negative: back)
    /// without moving timers, like an NTP step.
    pub fn jump_wall_clock(&mut self, delta_ns: i64) {
        let mut shared = self.shared.lock();
        let wall = shared.now_ns();
        shared.set_wall_ns(wall.saturating_add_signed(delta_ns));
    }

    /// Delivers `proxy_on_tick` to one VM now, whatever its schedule.
    pub fn tick(&mut self, vm: usize) -> Result<(), VmError> {
        self.vms[vm].tick()?;
        self.deliver_queues()
    }

    /// Delivers `proxy_on_queue_ready` for everything enqueued so far.
    pub fn deliver_queues(&mut self) -> Result<(), VmError> {
        loop {
            let ready = self.shared.lock().take_queue_notifications();
            if ready.is_empty() {
                return Ok(());
            }
            for (vm, context, queue) in ready {
                if let Some(vm) = self.vms.get_mut(vm) {
                    vm.queue_ready(context, queue)?;
                }
            }
        }
    }

    pub fn logs(&self) -> Vec<LogRecord> {
        self.shared.lock().logs().to_vec()
    }

    pub fn take_logs(&self) -> Vec<LogRecord> {
        self.shared.lock().take_logs()
    }

    /// Log messages containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.shared
            .lock()
            .logs()
            .iter()
            .filter(|r| r.message.contains(needle))
            .map(|r| r.message.clone())
            .collect()
    }

    /// Total host calls made by every VM so far.
    pub fn host_calls(&self) -> u64 {
        self.vms.iter().map(|vm| vm.state().calls.total()).sum()
    }

    /// Creates an HTTP context in VM `vm`.
    pub fn open(&mut self, vm: usize) -> Result<StreamRef, VmError> {
        let id = self.vms[vm].create_http_context()?;
        Ok(StreamRef { vm, id })
    }

    /// Creates an HTTP context in VM `vm` and returns a handle that drives
    /// it in Envoy's order: request headers, (body), response headers,
    /// (trailers), log, done, delete.
    pub fn http(&mut self, vm: usize) -> Result<HttpStream<'_>, VmError> {
        let stream = self.open(vm)?;
        Ok(HttpStream {
            proxy: self,
            stream,
        })
    }

    /// A handle on an existing stream.
    pub fn resume(&mut self, stream: StreamRef) -> HttpStream<'_> {
        HttpStream {
            proxy: self,
            stream,
        }
    }
}

/// One HTTP stream, driven step by step. Every step returns the VM's
/// answer, or the trap that stopped it.
pub struct HttpStream<'a> {
    proxy: &'a mut Proxy,
    stream: StreamRef,
}

impl HttpStream<'_> {
    pub fn id(&self) -> StreamRef {
        self.stream
    }

    fn vm(&mut self) -> &mut Vm {
        &mut self.proxy.vms[self.stream.vm]
    }

    /// Sets a stream property (dotted Envoy name).
    pub fn property(&mut self, name: &str, answer: Answer) -> &mut Self {
        let id = self.stream.id;
        self.vm().stream_mut(id).properties.set(name, answer);
        self
    }

    pub fn state(&self) -> &StreamState {
        self.proxy.vms[self.stream.vm]
            .stream(self.stream.id)
            .expect("stream state exists until delete")
    }

    pub fn request_headers(
        &mut self,
        headers: HeaderMap,
        end_of_stream: bool,
    ) -> Result<Action, VmError> {
        let id = self.stream.id;
        let action = self.vm().request_headers(id, headers, end_of_stream)?;
        self.proxy.deliver_queues()?;
        Ok(action)
    }

    pub fn request_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Action, VmError> {
        let id = self.stream.id;
        self.vm().request_body(id, chunk, end_of_stream)
    }

    pub fn request_trailers(&mut self, trailers: HeaderMap) -> Result<Action, VmError> {
        let id = self.stream.id;
        self.vm().request_trailers(id, trailers)
    }

    pub fn response_headers(
        &mut self,
        headers: HeaderMap,
        end_of_stream: bool,
    ) -> Result<Action, VmError> {
        let id = self.stream.id;
        let action = self.vm().response_headers(id, headers, end_of_stream)?;
        self.proxy.deliver_queues()?;
        Ok(action)
    }

    pub fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Action, VmError> {
        let id = self.stream.id;
        self.vm().response_body(id, chunk, end_of_stream)
    }

    pub fn response_trailers(&mut self, trailers: HeaderMap) -> Result<Action, VmError> {
        let id = self.stream.id;
        self.vm().response_trailers(id, trailers)
    }

    pub fn log(&mut self) -> Result<(), VmError> {
        let id = self.stream.id;
        self.vm().log(id)?;
        self.proxy.deliver_queues()
    }

    pub fn done(&mut self) -> Result<bool, VmError> {
        let id = self.stream.id;
        self.vm().done(id)
    }

    /// `proxy_on_delete`; returns the stream's final host-side state.
    pub fn delete(mut self) -> Result<StreamState, VmError> {
        let id = self.stream.id;
        let state = self.vm().delete(id)?;
        self.proxy.deliver_queues()?;
        Ok(state)
    }

    /// The end of a stream in Envoy's order: log, done, delete.
    pub fn finish(mut self) -> Result<StreamState, VmError> {
        self.log()?;
        self.done()?;
        self.delete()
    }
}

/// A whole request/response exchange for [`Proxy::exchange`]: the common
/// case of tests and benchmarks, in Envoy's order.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub cluster: String,
    pub route: Option<String>,
    pub request_headers: HeaderMap,
    /// `None`: the request never reached a host (no `upstream.address`).
    pub upstream: Option<String>,
    /// `response.code`; 0 leaves it unset (no response).
    pub status: u16,
    pub flags: i64,
    pub response_headers: HeaderMap,
    /// Virtual time between request and response headers.
    pub latency: Duration,
}

impl Exchange {
    /// A GET to `cluster` answered by `upstream` with `status`.
    pub fn new(cluster: &str, upstream: &str, status: u16) -> Exchange {
        Exchange {
            cluster: cluster.to_string(),
            route: None,
            request_headers: super::abi::headers(&[
                (":method", "GET"),
                (":path", "/"),
                (":authority", "demo.svc"),
                (":scheme", "http"),
            ]),
            upstream: Some(upstream.to_string()),
            status,
            flags: 0,
            response_headers: super::abi::headers(&[(":status", status.to_string().as_str())]),
            latency: Duration::ZERO,
        }
    }

    pub fn flags(mut self, flags: i64) -> Exchange {
        self.flags = flags;
        self
    }

    pub fn latency(mut self, latency: Duration) -> Exchange {
        self.latency = latency;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Exchange {
        self.request_headers
            .push((name.as_bytes().to_vec(), value.as_bytes().to_vec()));
        self
    }
}

impl Proxy {
    /// Runs one exchange on VM `vm` (advancing the clock by its latency,
    /// ticks included) and returns the stream's final state: what the
    /// plugin did to the headers, any local reply. If the plugin sends a
    /// local reply in the request phase, the response phase carries that
    /// reply instead of the upstream's answer, as in Envoy.
    pub fn exchange(&mut self, vm: usize, exchange: &Exchange) -> Result<StreamState, VmError> {
        let mut stream = self.http(vm)?;
        stream.property("xds.cluster_name", Answer::string(&exchange.cluster));
        if let Some(route) = &exchange.route {
            stream.property("xds.route_name", Answer::string(route));
        }
        stream.request_headers(exchange.request_headers.clone(), true)?;
        let id = stream.id();
        let reply = stream.state().local_reply.clone();
        if !exchange.latency.is_zero() && reply.is_none() {
            self.advance(exchange.latency)?;
        }
        let mut stream = self.resume(id);
        match reply {
            Some(reply) => {
                stream
                    .property("response.code", Answer::int(i64::from(reply.status)))
                    .property("response.flags", Answer::int(0));
                let mut map =
                    super::abi::headers(&[(":status", reply.status.to_string().as_str())]);
                map.extend(reply.headers.iter().cloned());
                stream.response_headers(map, true)?;
            }
            None => {
                if let Some(upstream) = &exchange.upstream {
                    stream.property("upstream.address", Answer::string(upstream));
                }
                if exchange.status != 0 {
                    stream.property("response.code", Answer::int(i64::from(exchange.status)));
                }
                stream.property("response.flags", Answer::int(exchange.flags));
                if exchange.status != 0 {
                    stream.response_headers(exchange.response_headers.clone(), true)?;
                }
            }
        }
        stream.finish()
    }
}
