//! One VM: a wasmtime instance of the plugin module with its own linear
//! memory and Rust statics, like one Envoy worker's VM, plus the host-side
//! state of its contexts (header maps, bodies, properties, local replies).

use std::collections::HashMap;
use std::fmt;

use wasmtime::{Instance, Memory, Store, TypedFunc};

use super::abi::{Action, HeaderMap, LogLevel, MapType, Status, StreamType};
use super::imports::Call;
use super::module::PluginModule;
use super::props::Properties;
use super::shared::Shared;

/// A local reply the plugin sent (`proxy_send_local_response`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub details: Vec<u8>,
    pub body: Vec<u8>,
    pub headers: HeaderMap,
    /// `-1` when not a gRPC reply.
    pub grpc_status: i32,
}

/// An outgoing HTTP call the plugin dispatched (`proxy_http_call`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    pub token: u32,
    pub context_id: u32,
    pub upstream: Vec<u8>,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: HeaderMap,
    pub timeout_ms: u32,
}

/// Host-side state of one HTTP stream context. Header maps are `None`
/// until the stream reaches that phase: the host then answers
/// `BadArgument` (or `NotFound` during `proxy_on_log`), like Envoy.
#[derive(Debug, Clone, Default)]
pub struct StreamState {
    pub request_headers: Option<HeaderMap>,
    pub request_body: Option<Vec<u8>>,
    pub request_trailers: Option<HeaderMap>,
    pub response_headers: Option<HeaderMap>,
    pub response_body: Option<Vec<u8>>,
    pub response_trailers: Option<HeaderMap>,
    /// Stream properties (`upstream.address`, `response.code`...), looked
    /// up before the VM-wide ones.
    pub properties: Properties,
    pub local_reply: Option<LocalReply>,
    /// Every `proxy_continue_stream` call, in order.
    pub continued: Vec<StreamType>,
    /// Every `proxy_close_stream` call, in order.
    pub closed: Vec<StreamType>,
    /// `proxy_call_foreign_function("clear_route_cache")` calls.
    pub route_cache_cleared: u32,
}

impl StreamState {
    pub fn map(&self, map: MapType) -> Option<&HeaderMap> {
        match map {
            MapType::RequestHeaders => self.request_headers.as_ref(),
            MapType::RequestTrailers => self.request_trailers.as_ref(),
            MapType::ResponseHeaders => self.response_headers.as_ref(),
            MapType::ResponseTrailers => self.response_trailers.as_ref(),
            _ => None,
        }
    }

    pub fn map_mut(&mut self, map: MapType) -> Option<&mut HeaderMap> {
        match map {
            MapType::RequestHeaders => self.request_headers.as_mut(),
            MapType::RequestTrailers => self.request_trailers.as_mut(),
            MapType::ResponseHeaders => self.response_headers.as_mut(),
            MapType::ResponseTrailers => self.response_trailers.as_mut(),
            _ => None,
        }
    }

    /// The first value of a header (case-insensitive name), as Envoy's
    /// `proxy_get_header_map_value` returns it.
    pub fn header(&self, map: MapType, name: &str) -> Option<&[u8]> {
        self.map(map)?
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.as_slice())
    }
}

/// Counts of host calls by import, for cost measurements.
#[derive(Debug, Clone, Default)]
pub struct CallCounts {
    counts: Vec<u64>,
    total: u64,
}

impl CallCounts {
    pub(super) fn add(&mut self, call: Call) {
        let index = call as usize;
        if self.counts.len() <= index {
            self.counts.resize(Call::COUNT, 0);
        }
        self.counts[index] += 1;
        self.total += 1;
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Calls made to one import, by name (`"proxy_get_property"`).
    pub fn get(&self, name: &str) -> u64 {
        Call::ALL
            .iter()
            .position(|c| c.name() == name)
            .and_then(|i| self.counts.get(i).copied())
            .unwrap_or(0)
    }

    /// `(import, calls)` for every import called at least once.
    pub fn by_name(&self) -> Vec<(&'static str, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (Call::ALL[i].name(), *n))
            .collect()
    }
}

/// What a VM knows about itself and the contexts the host created in it.
/// This is the wasmtime `Store` data; host calls read and write it.
pub struct VmState {
    pub(super) shared: Shared,
    /// Envoy's bound on a VM's linear memory ([`MAX_MEMORY_BYTES`]).
    limits: wasmtime::StoreLimits,
    pub(super) memory: Option<Memory>,
    pub(super) alloc: Option<TypedFunc<i32, i32>>,
    /// Index of this VM among the proxy's workers.
    pub index: usize,
    pub vm_id: String,
    pub root_context_id: u32,
    pub vm_configuration: Vec<u8>,
    pub plugin_configuration: Vec<u8>,
    /// VM-wide properties (`plugin_name`, `plugin_root_id`...).
    pub properties: Properties,
    pub streams: HashMap<u32, StreamState>,
    /// The context host calls act on (set around every callback, and by
    /// `proxy_set_effective_context`).
    pub active_context: u32,
    /// True while `proxy_on_log` runs (missing maps are NotFound then).
    pub in_log: bool,
    pub log_level: LogLevel,
    pub tick_period_ms: u32,
    /// When the next `proxy_on_tick` is due, in virtual nanoseconds.
    pub next_tick_ns: Option<u64>,
    /// Environment for WASI `environ_get` (Envoy's `vm_config.environment_variables`).
    pub environment: Vec<(String, String)>,
    pub http_calls: Vec<HttpCall>,
    pub(super) next_token: u32,
    /// Headers, body and trailers of the HTTP call response being delivered.
    pub(super) call_response: Option<(HeaderMap, Vec<u8>, HeaderMap)>,
    /// What `proxy_get_status` answers.
    pub status: (u32, Vec<u8>),
    pub done_calls: u32,
    pub calls: CallCounts,
    /// Host calls forced to fail with a status (fault injection).
    pub faults: Vec<(Call, Status)>,
    /// Foreign functions the host accepts besides `clear_route_cache`.
    pub foreign_functions: HashMap<String, Vec<u8>>,
    pub(super) stdout_line: Vec<u8>,
}

impl VmState {
    pub fn stream(&self, context_id: u32) -> Option<&StreamState> {
        self.streams.get(&context_id)
    }

    pub(super) fn active_stream(&self) -> Option<&StreamState> {
        self.streams.get(&self.active_context)
    }

    pub(super) fn active_stream_mut(&mut self) -> Option<&mut StreamState> {
        self.streams.get_mut(&self.active_context)
    }
}

/// Why a call into the VM did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmError {
    /// The guest trapped (a panic, `unreachable`, out-of-bounds access...).
    /// The VM is unusable afterwards, as in Envoy.
    Trap {
        vm: usize,
        call: String,
        message: String,
    },
    /// The guest called WASI `proc_exit`.
    Exit { vm: usize, code: i32 },
    /// An earlier call failed; Envoy would have failed the VM.
    Failed { vm: usize, first: String },
    /// The module could not be instantiated.
    Instantiate(String),
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmError::Trap { vm, call, message } => write!(f, "vm{vm} trapped in {call}: {message}"),
            VmError::Exit { vm, code } => write!(f, "vm{vm} called proc_exit({code})"),
            VmError::Failed { vm, first } => write!(f, "vm{vm} failed earlier: {first}"),
            VmError::Instantiate(message) => write!(f, "cannot instantiate the module: {message}"),
        }
    }
}

impl std::error::Error for VmError {}

/// `proc_exit` unwinds the guest with this error.
#[derive(Debug)]
pub(super) struct ProcExit(pub i32);

impl fmt::Display for ProcExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proc_exit({})", self.0)
    }
}

impl std::error::Error for ProcExit {}

type F1 = TypedFunc<i32, ()>;
type F1R = TypedFunc<i32, i32>;
type F2 = TypedFunc<(i32, i32), ()>;
type F2R = TypedFunc<(i32, i32), i32>;
type F3R = TypedFunc<(i32, i32, i32), i32>;
type F5 = TypedFunc<(i32, i32, i32, i32, i32), ()>;

/// The exports the host calls, looked up once. A missing export is skipped
/// (the callback's default is used), as Envoy does.
struct Exports {
    initialize: Option<TypedFunc<(), ()>>,
    start: Option<TypedFunc<(), ()>>,
    on_context_create: Option<F2>,
    on_vm_start: Option<F2R>,
    on_configure: Option<F2R>,
    on_tick: Option<F1>,
    on_queue_ready: Option<F2>,
    on_request_headers: Option<F3R>,
    on_request_body: Option<F3R>,
    on_request_trailers: Option<F2R>,
    on_response_headers: Option<F3R>,
    on_response_body: Option<F3R>,
    on_response_trailers: Option<F2R>,
    on_http_call_response: Option<F5>,
    on_log: Option<F1>,
    on_done: Option<F1R>,
    on_delete: Option<F1>,
}

/// The most linear memory a VM may have, as in Envoy: proxy-wasm-cpp-host
/// caps V8's wasm memory at `PROXY_WASM_HOST_MAX_WASM_MEMORY_SIZE_BYTES`
/// (1 GiB, `include/proxy-wasm/limits.h`). Past it `memory.grow` fails, the
/// module's allocator gives up and the VM traps, as it would in Envoy
/// (issue 20's 512 MB allocation), instead of growing on in this host.
pub const MAX_MEMORY_BYTES: usize = 1 << 30;

/// Options for one VM.
#[derive(Debug, Clone)]
pub struct VmOptions {
    pub vm_id: String,
    pub root_id: String,
    pub plugin_name: String,
    pub vm_configuration: Vec<u8>,
    pub log_level: LogLevel,
    pub environment: Vec<(String, String)>,
    /// Extra VM-wide properties.
    pub properties: Properties,
}

impl Default for VmOptions {
    fn default() -> Self {
        VmOptions {
            vm_id: String::new(),
            root_id: String::new(),
            plugin_name: "meshguard".to_string(),
            vm_configuration: Vec::new(),
            log_level: LogLevel::Info,
            environment: Vec::new(),
            properties: Properties::new(),
        }
    }
}

/// One VM (Envoy worker) running the plugin.
pub struct Vm {
    store: Store<VmState>,
    exports: Exports,
    failed: Option<String>,
    next_context_id: u32,
}

impl Vm {
    /// Instantiates the module, runs its WASI initializer and creates its
    /// root context (`proxy_on_context_create(root, 0)`). Call
    /// [`Vm::start`] next.
    pub fn new(
        module: &PluginModule,
        shared: &Shared,
        index: usize,
        options: &VmOptions,
    ) -> Result<Vm, VmError> {
        let mut properties = Properties::new();
        properties
            .set(
                "plugin_name",
                super::props::Answer::string(&options.plugin_name),
            )
            .set(
                "plugin_root_id",
                super::props::Answer::string(&options.root_id),
            )
            .set("plugin_vm_id", super::props::Answer::string(&options.vm_id));
        properties.merge(&options.properties);
        let state = VmState {
            shared: shared.clone(),
            limits: wasmtime::StoreLimitsBuilder::new()
                .memory_size(MAX_MEMORY_BYTES)
                .build(),
            memory: None,
            alloc: None,
            index,
            vm_id: options.vm_id.clone(),
            root_context_id: 1,
            vm_configuration: options.vm_configuration.clone(),
            plugin_configuration: Vec::new(),
            properties,
            streams: HashMap::new(),
            active_context: 0,
            in_log: false,
            log_level: options.log_level,
            tick_period_ms: 0,
            next_tick_ns: None,
            environment: options.environment.clone(),
            http_calls: Vec::new(),
            next_token: 1,
            call_response: None,
            status: (0, Vec::new()),
            done_calls: 0,
            calls: CallCounts::default(),
            faults: Vec::new(),
            foreign_functions: HashMap::new(),
            stdout_line: Vec::new(),
        };
        let mut store = Store::new(module.engine(), state);
        store.limiter(|state| &mut state.limits);
        let instance = module
            .instance_pre()
            .instantiate(&mut store)
            .map_err(|e| VmError::Instantiate(format!("{e:?}")))?;
        let memory = instance.get_memory(&mut store, "memory");
        let alloc = typed::<i32, i32>(&instance, &mut store, "proxy_on_memory_allocate")
            .or_else(|| typed::<i32, i32>(&instance, &mut store, "malloc"));
        store.data_mut().memory = memory;
        store.data_mut().alloc = alloc;
        let exports = Exports {
            initialize: typed(&instance, &mut store, "_initialize"),
            start: typed(&instance, &mut store, "_start"),
            on_context_create: typed(&instance, &mut store, "proxy_on_context_create"),
            on_vm_start: typed(&instance, &mut store, "proxy_on_vm_start"),
            on_configure: typed(&instance, &mut store, "proxy_on_configure"),
            on_tick: typed(&instance, &mut store, "proxy_on_tick"),
            on_queue_ready: typed(&instance, &mut store, "proxy_on_queue_ready"),
            on_request_headers: typed(&instance, &mut store, "proxy_on_request_headers"),
            on_request_body: typed(&instance, &mut store, "proxy_on_request_body"),
            on_request_trailers: typed(&instance, &mut store, "proxy_on_request_trailers"),
            on_response_headers: typed(&instance, &mut store, "proxy_on_response_headers"),
            on_response_body: typed(&instance, &mut store, "proxy_on_response_body"),
            on_response_trailers: typed(&instance, &mut store, "proxy_on_response_trailers"),
            on_http_call_response: typed(&instance, &mut store, "proxy_on_http_call_response"),
            on_log: typed(&instance, &mut store, "proxy_on_log"),
            on_done: typed(&instance, &mut store, "proxy_on_done"),
            on_delete: typed(&instance, &mut store, "proxy_on_delete"),
        };
        let mut vm = Vm {
            store,
            exports,
            failed: None,
            next_context_id: 2,
        };
        // A reactor module (cdylib for wasm32-wasip1) exports _initialize;
        // a command module _start. Envoy runs whichever is there.
        if let Some(f) = vm.exports.initialize.clone() {
            vm.call("_initialize", 0, |s| f.call(s, ()))?;
        } else if let Some(f) = vm.exports.start.clone() {
            vm.call("_start", 0, |s| f.call(s, ()))?;
        }
        let root = vm.root_context_id();
        if let Some(f) = vm.exports.on_context_create.clone() {
            vm.call("proxy_on_context_create", root, |s| {
                f.call(s, (root as i32, 0))
            })?;
        }
        Ok(vm)
    }

    /// `proxy_on_vm_start` then `proxy_on_configure` with `plugin_configuration`.
    /// Returns what each answered.
    pub fn start(&mut self, plugin_configuration: &[u8]) -> Result<(bool, bool), VmError> {
        let root = self.root_context_id();
        let size = self.store.data().vm_configuration.len() as i32;
        let started = match self.exports.on_vm_start.clone() {
            Some(f) => {
                self.call("proxy_on_vm_start", root, |s| {
                    f.call(s, (root as i32, size))
                })? != 0
            }
            None => true,
        };
        let configured = self.configure(plugin_configuration)?;
        Ok((started, configured))
    }

    /// `proxy_on_configure` with a new plugin configuration (Envoy does
    /// this when the listener's filter configuration changes).
    pub fn configure(&mut self, plugin_configuration: &[u8]) -> Result<bool, VmError> {
        let root = self.root_context_id();
        self.store.data_mut().plugin_configuration = plugin_configuration.to_vec();
        let size = plugin_configuration.len() as i32;
        match self.exports.on_configure.clone() {
            Some(f) => Ok(self.call("proxy_on_configure", root, |s| {
                f.call(s, (root as i32, size))
            })? != 0),
            None => Ok(true),
        }
    }

    /// Delivers one `proxy_on_tick` and schedules the next one.
    pub fn tick(&mut self) -> Result<(), VmError> {
        let root = self.root_context_id();
        let period = u64::from(self.store.data().tick_period_ms) * 1_000_000;
        if let (Some(due), true) = (self.store.data().next_tick_ns, period > 0) {
            self.store.data_mut().next_tick_ns = Some(due + period);
        }
        if let Some(f) = self.exports.on_tick.clone() {
            self.call("proxy_on_tick", root, |s| f.call(s, root as i32))?;
        }
        Ok(())
    }

    pub fn queue_ready(&mut self, context_id: u32, queue_id: u32) -> Result<(), VmError> {
        if let Some(f) = self.exports.on_queue_ready.clone() {
            self.call("proxy_on_queue_ready", context_id, |s| {
                f.call(s, (context_id as i32, queue_id as i32))
            })?;
        }
        Ok(())
    }

    /// Creates an HTTP context (`proxy_on_context_create(id, root)`).
    pub fn create_http_context(&mut self) -> Result<u32, VmError> {
        let id = self.next_context_id;
        self.next_context_id += 1;
        self.store
            .data_mut()
            .streams
            .insert(id, StreamState::default());
        let root = self.root_context_id();
        if let Some(f) = self.exports.on_context_create.clone() {
            self.call("proxy_on_context_create", id, |s| {
                f.call(s, (id as i32, root as i32))
            })?;
        }
        Ok(id)
    }

    /// Sets the request headers and calls `proxy_on_request_headers`.
    pub fn request_headers(
        &mut self,
        id: u32,
        headers: HeaderMap,
        end_of_stream: bool,
    ) -> Result<Action, VmError> {
        let count = headers.len() as i32;
        self.stream_mut(id).request_headers = Some(headers);
        match self.exports.on_request_headers.clone() {
            Some(f) => self
                .call("proxy_on_request_headers", id, |s| {
                    f.call(s, (id as i32, count, i32::from(end_of_stream)))
                })
                .map(Action::from_raw),
            None => Ok(Action::Continue),
        }
    }

    /// Appends to the request body and calls `proxy_on_request_body`.
    pub fn request_body(
        &mut self,
        id: u32,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Action, VmError> {
        let stream = self.stream_mut(id);
        let body = stream.request_body.get_or_insert_with(Vec::new);
        body.extend_from_slice(chunk);
        let size = body.len() as i32;
        match self.exports.on_request_body.clone() {
            Some(f) => self
                .call("proxy_on_request_body", id, |s| {
                    f.call(s, (id as i32, size, i32::from(end_of_stream)))
                })
                .map(Action::from_raw),
            None => Ok(Action::Continue),
        }
    }

    pub fn request_trailers(&mut self, id: u32, trailers: HeaderMap) -> Result<Action, VmError> {
        let count = trailers.len() as i32;
        self.stream_mut(id).request_trailers = Some(trailers);
        match self.exports.on_request_trailers.clone() {
            Some(f) => self
                .call("proxy_on_request_trailers", id, |s| {
                    f.call(s, (id as i32, count))
                })
                .map(Action::from_raw),
            None => Ok(Action::Continue),
        }
    }

    pub fn response_headers(
        &mut self,
        id: u32,
        headers: HeaderMap,
        end_of_stream: bool,
    ) -> Result<Action, VmError> {
        let count = headers.len() as i32;
        self.stream_mut(id).response_headers = Some(headers);
        match self.exports.on_response_headers.clone() {
            Some(f) => self
                .call("proxy_on_response_headers", id, |s| {
                    f.call(s, (id as i32, count, i32::from(end_of_stream)))
                })
                .map(Action::from_raw),
            None => Ok(Action::Continue),
        }
    }

    pub fn response_body(
        &mut self,
        id: u32,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Action, VmError> {
        let stream = self.stream_mut(id);
        let body = stream.response_body.get_or_insert_with(Vec::new);
        body.extend_from_slice(chunk);
        let size = body.len() as i32;
        match self.exports.on_response_body.clone() {
            Some(f) => self
                .call("proxy_on_response_body", id, |s| {
                    f.call(s, (id as i32, size, i32::from(end_of_stream)))
                })
                .map(Action::from_raw),
            None => Ok(Action::Continue),
        }
    }

    pub fn response_trailers(&mut self, id: u32, trailers: HeaderMap) -> Result<Action, VmError> {
        let count = trailers.len() as i32;
        self.stream_mut(id).response_trailers = Some(trailers);
        match self.exports.on_response_trailers.clone() {
            Some(f) => self
                .call("proxy_on_response_trailers", id, |s| {
                    f.call(s, (id as i32, count))
                })
                .map(Action::from_raw),
            None => Ok(Action::Continue),
        }
    }

    /// `proxy_on_log` (Envoy's access-log phase).
    pub fn log(&mut self, id: u32) -> Result<(), VmError> {
        if let Some(f) = self.exports.on_log.clone() {
            self.store.data_mut().in_log = true;
            let result = self.call("proxy_on_log", id, |s| f.call(s, id as i32));
            self.store.data_mut().in_log = false;
            result?;
        }
        Ok(())
    }

    /// `proxy_on_done`; returns whether the plugin is done with the context.
    pub fn done(&mut self, id: u32) -> Result<bool, VmError> {
        match self.exports.on_done.clone() {
            Some(f) => {
                // The stream is over, as at the log: maps it never had
                // are NotFound.
                self.store.data_mut().in_log = true;
                let result = self.call("proxy_on_done", id, |s| f.call(s, id as i32));
                self.store.data_mut().in_log = false;
                Ok(result? != 0)
            }
            None => Ok(true),
        }
    }

    /// `proxy_on_delete`, then forgets the context's host-side state.
    pub fn delete(&mut self, id: u32) -> Result<StreamState, VmError> {
        if let Some(f) = self.exports.on_delete.clone() {
            self.call("proxy_on_delete", id, |s| f.call(s, id as i32))?;
        }
        Ok(self
            .store
            .data_mut()
            .streams
            .remove(&id)
            .unwrap_or_default())
    }

    /// Delivers the response to an HTTP call (`proxy_on_http_call_response`).
    pub fn http_call_response(
        &mut self,
        token: u32,
        headers: HeaderMap,
        body: Vec<u8>,
        trailers: HeaderMap,
    ) -> Result<(), VmError> {
        let Some(call) = self
            .store
            .data()
            .http_calls
            .iter()
            .find(|c| c.token == token)
            .cloned()
        else {
            return Ok(());
        };
        let (nh, nb, nt) = (
            headers.len() as i32,
            body.len() as i32,
            trailers.len() as i32,
        );
        self.store.data_mut().call_response = Some((headers, body, trailers));
        let result = match self.exports.on_http_call_response.clone() {
            Some(f) => self.call("proxy_on_http_call_response", call.context_id, |s| {
                f.call(s, (call.context_id as i32, token as i32, nh, nb, nt))
            }),
            None => Ok(()),
        };
        self.store.data_mut().call_response = None;
        result
    }

    pub fn root_context_id(&self) -> u32 {
        self.store.data().root_context_id
    }

    pub fn state(&self) -> &VmState {
        self.store.data()
    }

    pub fn state_mut(&mut self) -> &mut VmState {
        self.store.data_mut()
    }

    pub fn stream(&self, id: u32) -> Option<&StreamState> {
        self.store.data().streams.get(&id)
    }

    /// The host-side state of a stream (created empty if unknown, so tests
    /// can prepare properties before the first callback).
    pub fn stream_mut(&mut self, id: u32) -> &mut StreamState {
        self.store.data_mut().streams.entry(id).or_default()
    }

    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Makes every later call to `call` answer `status` instead of running.
    pub fn inject_fault(&mut self, call: Call, status: Status) {
        let faults = &mut self.store.data_mut().faults;
        faults.retain(|(c, _)| *c != call);
        faults.push((call, status));
    }

    pub fn clear_faults(&mut self) {
        self.store.data_mut().faults.clear();
    }

    /// Linear memory size in bytes.
    pub fn memory_size(&self) -> usize {
        match self.store.data().memory {
            Some(memory) => memory.data_size(&self.store),
            None => 0,
        }
    }

    fn call<R>(
        &mut self,
        name: &str,
        context_id: u32,
        f: impl FnOnce(&mut Store<VmState>) -> wasmtime::Result<R>,
    ) -> Result<R, VmError> {
        let vm = self.store.data().index;
        if let Some(first) = &self.failed {
            return Err(VmError::Failed {
                vm,
                first: first.clone(),
            });
        }
        let previous = self.store.data().active_context;
        self.store.data_mut().active_context = context_id;
        let result = f(&mut self.store);
        self.store.data_mut().active_context = previous;
        result.map_err(|error| {
            let error = match error.downcast_ref::<ProcExit>() {
                Some(exit) => VmError::Exit { vm, code: exit.0 },
                None => VmError::Trap {
                    vm,
                    call: format!("{name}({context_id})"),
                    message: format!("{error:?}"),
                },
            };
            self.failed = Some(error.to_string());
            error
        })
    }
}

fn typed<P, R>(
    instance: &Instance,
    store: &mut Store<VmState>,
    name: &str,
) -> Option<TypedFunc<P, R>>
where
    P: wasmtime::WasmParams,
    R: wasmtime::WasmResults,
{
    instance.get_typed_func::<P, R>(&mut *store, name).ok()
}
