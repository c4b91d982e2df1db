//! The host functions: every `env.proxy_*` import of the proxy-wasm ABI
//! 0.2.1 (as the Rust SDK 0.2.5 declares them) and the WASI preview1
//! functions a `wasm32-wasip1` module needs.
//!
//! Rules every function follows:
//! - a bad pointer from the guest is `InvalidMemoryAccess`, a bad enum
//!   value `BadArgument`: the host never panics and never traps on input;
//! - buffers returned to the guest are placed with the guest's exported
//!   `proxy_on_memory_allocate`; an empty value is a null pointer with
//!   size 0, as in Envoy's host;
//! - anything not supported answers `Unimplemented` (WASI: `ENOSYS`);
//!   imports this file does not know are bound to stubs that do the same.

use wasmtime::{Caller, ExternType, Linker, Module, Val, ValType};

use super::abi::{self, errno, BufferType, LogLevel, MapType, MetricType, Status, StreamType};
use super::props::Answer;
use super::shared::LogRecord;
use super::vm::{HttpCall, LocalReply, ProcExit, VmState};

macro_rules! calls {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// Every host function, for call counting and fault injection.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Call { $($variant),* }

        impl Call {
            pub const ALL: &'static [Call] = &[$(Call::$variant),*];
            pub const COUNT: usize = Call::ALL.len();

            /// The import's name.
            pub fn name(self) -> &'static str {
                match self { $(Call::$variant => $name),* }
            }
        }
    };
}

calls! {
    Log => "proxy_log",
    GetLogLevel => "proxy_get_log_level",
    GetCurrentTime => "proxy_get_current_time_nanoseconds",
    SetTickPeriod => "proxy_set_tick_period_milliseconds",
    GetBufferBytes => "proxy_get_buffer_bytes",
    SetBufferBytes => "proxy_set_buffer_bytes",
    GetHeaderMapPairs => "proxy_get_header_map_pairs",
    SetHeaderMapPairs => "proxy_set_header_map_pairs",
    GetHeaderMapValue => "proxy_get_header_map_value",
    ReplaceHeaderMapValue => "proxy_replace_header_map_value",
    RemoveHeaderMapValue => "proxy_remove_header_map_value",
    AddHeaderMapValue => "proxy_add_header_map_value",
    GetProperty => "proxy_get_property",
    SetProperty => "proxy_set_property",
    GetSharedData => "proxy_get_shared_data",
    SetSharedData => "proxy_set_shared_data",
    RegisterSharedQueue => "proxy_register_shared_queue",
    ResolveSharedQueue => "proxy_resolve_shared_queue",
    DequeueSharedQueue => "proxy_dequeue_shared_queue",
    EnqueueSharedQueue => "proxy_enqueue_shared_queue",
    ContinueStream => "proxy_continue_stream",
    CloseStream => "proxy_close_stream",
    SendLocalResponse => "proxy_send_local_response",
    HttpCall => "proxy_http_call",
    GrpcCall => "proxy_grpc_call",
    GrpcStream => "proxy_grpc_stream",
    GrpcSend => "proxy_grpc_send",
    GrpcCancel => "proxy_grpc_cancel",
    GrpcClose => "proxy_grpc_close",
    GetStatus => "proxy_get_status",
    SetEffectiveContext => "proxy_set_effective_context",
    CallForeignFunction => "proxy_call_foreign_function",
    Done => "proxy_done",
    DefineMetric => "proxy_define_metric",
    IncrementMetric => "proxy_increment_metric",
    RecordMetric => "proxy_record_metric",
    GetMetric => "proxy_get_metric",
    FdWrite => "fd_write",
    EnvironGet => "environ_get",
    EnvironSizesGet => "environ_sizes_get",
    ArgsGet => "args_get",
    ArgsSizesGet => "args_sizes_get",
    ProcExit => "proc_exit",
    ClockTimeGet => "clock_time_get",
    RandomGet => "random_get",
    SchedYield => "sched_yield",
    Unknown => "(unknown import)",
}

type C<'a> = Caller<'a, VmState>;
type R = wasmtime::Result<i32>;

const ENV: &str = "env";
const WASI: &str = "wasi_snapshot_preview1";

/// Counts the call and answers a forced status if one is injected.
fn enter(caller: &mut C<'_>, call: Call) -> Option<i32> {
    let state = caller.data_mut();
    state.calls.add(call);
    if state.faults.is_empty() {
        return None;
    }
    state
        .faults
        .iter()
        .find(|(c, _)| *c == call)
        .map(|(_, status)| status.code())
}

fn st(status: Status) -> R {
    Ok(status.code())
}

// ---- guest memory

fn read(caller: &mut C<'_>, ptr: i32, len: i32) -> Result<Vec<u8>, Status> {
    let memory = caller.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    let data = memory.data(&*caller);
    data.get(ptr..ptr.checked_add(len).ok_or(Status::InvalidMemoryAccess)?)
        .map(<[u8]>::to_vec)
        .ok_or(Status::InvalidMemoryAccess)
}

/// Like `read`, but a null pointer with size 0 is an empty slice.
fn read_opt(caller: &mut C<'_>, ptr: i32, len: i32) -> Result<Vec<u8>, Status> {
    if len == 0 {
        return Ok(Vec::new());
    }
    read(caller, ptr, len)
}

fn write(caller: &mut C<'_>, ptr: i32, bytes: &[u8]) -> Result<(), Status> {
    let memory = caller.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    let ptr = ptr as u32 as usize;
    let data = memory.data_mut(&mut *caller);
    data.get_mut(
        ptr..ptr
            .checked_add(bytes.len())
            .ok_or(Status::InvalidMemoryAccess)?,
    )
    .ok_or(Status::InvalidMemoryAccess)?
    .copy_from_slice(bytes);
    Ok(())
}

fn write_u32(caller: &mut C<'_>, ptr: i32, value: u32) -> Result<(), Status> {
    write(caller, ptr, &value.to_le_bytes())
}

fn write_u64(caller: &mut C<'_>, ptr: i32, value: u64) -> Result<(), Status> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Hands `bytes` to the guest: allocates with its allocator, copies, and
/// writes the pointer and size. A trap inside the allocator is the guest's
/// and propagates; everything else is a status.
fn give(caller: &mut C<'_>, bytes: &[u8], ptr_ptr: i32, size_ptr: i32) -> wasmtime::Result<Status> {
    let mut pointer = 0u32;
    if !bytes.is_empty() {
        let Some(alloc) = caller.data().alloc.clone() else {
            return Ok(Status::InternalFailure);
        };
        let Ok(len) = i32::try_from(bytes.len()) else {
            return Ok(Status::InternalFailure);
        };
        pointer = alloc.call(&mut *caller, len)? as u32;
        if pointer == 0 {
            return Ok(Status::InternalFailure);
        }
        if let Err(status) = write(caller, pointer as i32, bytes) {
            return Ok(status);
        }
    }
    if let Err(status) = write_u32(caller, ptr_ptr, pointer) {
        return Ok(status);
    }
    if let Err(status) = write_u32(caller, size_ptr, bytes.len() as u32) {
        return Ok(status);
    }
    Ok(Status::Ok)
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(value) => value,
            Err(status) => return Ok(status.code()),
        }
    };
}

fn log_line(state: &mut VmState, level: Option<LogLevel>, message: String) {
    let record = LogRecord {
        time_ns: 0,
        vm: state.index,
        context_id: state.active_context,
        level,
        message,
    };
    let mut shared = state.shared.lock();
    let record = LogRecord {
        time_ns: shared.mono_ns(),
        ..record
    };
    shared.log(record);
}

fn map_type(raw: i32) -> Result<MapType, Status> {
    MapType::from_raw(raw as u32).ok_or(Status::BadArgument)
}

/// The header map a call refers to, or the status Envoy gives when the
/// stream has not reached that phase.
fn header_map(state: &VmState, map: MapType) -> Result<&abi::HeaderMap, Status> {
    let missing = if state.in_log {
        Status::NotFound
    } else {
        Status::BadArgument
    };
    match map {
        MapType::HttpCallResponseHeaders => {
            state.call_response.as_ref().map(|r| &r.0).ok_or(missing)
        }
        MapType::HttpCallResponseTrailers => {
            state.call_response.as_ref().map(|r| &r.2).ok_or(missing)
        }
        _ => state
            .active_stream()
            .and_then(|s| s.map(map))
            .ok_or(missing),
    }
}

fn header_map_mut(state: &mut VmState, map: MapType) -> Result<&mut abi::HeaderMap, Status> {
    let missing = if state.in_log {
        Status::NotFound
    } else {
        Status::BadArgument
    };
    match map {
        MapType::HttpCallResponseHeaders | MapType::HttpCallResponseTrailers => {
            Err(Status::BadArgument)
        }
        _ => state
            .active_stream_mut()
            .and_then(|s| s.map_mut(map))
            .ok_or(missing),
    }
}

fn lower(bytes: &[u8]) -> Vec<u8> {
    bytes.to_ascii_lowercase()
}

/// Looks a property up: the active stream's table, then the VM's, then
/// Envoy's header-map properties (`request.headers.<name>`...).
fn property(state: &VmState, path: &[u8]) -> Answer {
    if let Some(answer) = state.active_stream().and_then(|s| s.properties.get(path)) {
        return answer.clone();
    }
    if let Some(answer) = state.properties.get(path) {
        return answer.clone();
    }
    let path = super::props::normalize(path);
    let mut parts = path.splitn(3, |b| *b == 0);
    let (first, second, third) = (parts.next(), parts.next(), parts.next());
    let map = match (first, second) {
        (Some(b"request"), Some(b"headers")) => MapType::RequestHeaders,
        (Some(b"response"), Some(b"headers")) => MapType::ResponseHeaders,
        (Some(b"response"), Some(b"trailers")) => MapType::ResponseTrailers,
        _ => return Answer::Missing,
    };
    let Some(name) = third else {
        return Answer::Missing;
    };
    let found = state
        .active_stream()
        .and_then(|s| s.map(map))
        .and_then(|m| {
            m.iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        });
    match found {
        Some(value) => Answer::Value(value),
        None => Answer::Missing,
    }
}

/// Binds every host function into `linker`, then stubs for any other
/// import `module` declares.
pub fn link(linker: &mut Linker<VmState>, module: &Module) -> wasmtime::Result<()> {
    link_logging_and_time(linker)?;
    link_buffers_and_maps(linker)?;
    link_properties_and_shared(linker)?;
    link_stream_and_calls(linker)?;
    link_metrics(linker)?;
    link_wasi(linker)?;
    link_unknown(linker, module)
}

fn link_logging_and_time(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_log",
        |mut c: C<'_>, level: i32, ptr: i32, len: i32| -> R {
            if let Some(s) = enter(&mut c, Call::Log) {
                return Ok(s);
            }
            let level = tri!(LogLevel::from_raw(level as u32).ok_or(Status::BadArgument));
            let message = tri!(read(&mut c, ptr, len));
            let state = c.data_mut();
            if level >= state.log_level {
                let text = String::from_utf8_lossy(&message).into_owned();
                log_line(state, Some(level), text);
            }
            st(Status::Ok)
        },
    )?;
    linker.func_wrap(ENV, "proxy_get_log_level", |mut c: C<'_>, ret: i32| -> R {
        if let Some(s) = enter(&mut c, Call::GetLogLevel) {
            return Ok(s);
        }
        let level = c.data().log_level as u32;
        tri!(write_u32(&mut c, ret, level));
        st(Status::Ok)
    })?;
    linker.func_wrap(
        ENV,
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, ret: i32| -> R {
            if let Some(s) = enter(&mut c, Call::GetCurrentTime) {
                return Ok(s);
            }
            let now = c.data().shared.now_ns();
            tri!(write_u64(&mut c, ret, now));
            st(Status::Ok)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, period: i32| -> R {
            if let Some(s) = enter(&mut c, Call::SetTickPeriod) {
                return Ok(s);
            }
            let state = c.data_mut();
            let period = period as u32;
            state.tick_period_ms = period;
            state.next_tick_ns = if period == 0 {
                None
            } else {
                Some(
                    state
                        .shared
                        .mono_ns()
                        .saturating_add(u64::from(period) * 1_000_000),
                )
            };
            st(Status::Ok)
        },
    )?;
    Ok(())
}

fn buffer(state: &VmState, kind: BufferType) -> Option<&[u8]> {
    match kind {
        BufferType::PluginConfiguration => Some(&state.plugin_configuration),
        BufferType::VmConfiguration => Some(&state.vm_configuration),
        BufferType::RequestBody => state.active_stream()?.request_body.as_deref(),
        BufferType::ResponseBody => state.active_stream()?.response_body.as_deref(),
        BufferType::HttpCallResponseBody => state.call_response.as_ref().map(|r| r.1.as_slice()),
        _ => None,
    }
}

fn link_buffers_and_maps(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_get_buffer_bytes",
        |mut c: C<'_>, kind: i32, start: i32, max: i32, ret_ptr: i32, ret_size: i32| -> R {
            if let Some(s) = enter(&mut c, Call::GetBufferBytes) {
                return Ok(s);
            }
            let kind = tri!(BufferType::from_raw(kind as u32).ok_or(Status::BadArgument));
            let Some(data) = buffer(c.data(), kind) else {
                return st(Status::NotFound);
            };
            let (start, max) = (start as u32 as usize, max as u32 as usize);
            if start > data.len() {
                return st(Status::BadArgument);
            }
            let end = start.saturating_add(max).min(data.len());
            let bytes = data[start..end].to_vec();
            Ok(give(&mut c, &bytes, ret_ptr, ret_size)?.code())
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_buffer_bytes",
        |mut c: C<'_>, kind: i32, start: i32, size: i32, ptr: i32, len: i32| -> R {
            if let Some(s) = enter(&mut c, Call::SetBufferBytes) {
                return Ok(s);
            }
            let kind = tri!(BufferType::from_raw(kind as u32).ok_or(Status::BadArgument));
            let data = tri!(read_opt(&mut c, ptr, len));
            let Some(stream) = c.data_mut().active_stream_mut() else {
                return st(Status::BadArgument);
            };
            let body = match kind {
                BufferType::RequestBody => stream.request_body.get_or_insert_with(Vec::new),
                BufferType::ResponseBody => stream.response_body.get_or_insert_with(Vec::new),
                _ => return st(Status::BadArgument),
            };
            let start = (start as u32 as usize).min(body.len());
            let end = start.saturating_add(size as u32 as usize).min(body.len());
            body.splice(start..end, data);
            st(Status::Ok)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_header_map_pairs",
        |mut c: C<'_>, map: i32, ret_ptr: i32, ret_size: i32| -> R {
            if let Some(s) = enter(&mut c, Call::GetHeaderMapPairs) {
                return Ok(s);
            }
            let map = tri!(map_type(map));
            let bytes = abi::serialize_map(tri!(header_map(c.data(), map)));
            Ok(give(&mut c, &bytes, ret_ptr, ret_size)?.code())
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_header_map_pairs",
        |mut c: C<'_>, map: i32, ptr: i32, len: i32| -> R {
            if let Some(s) = enter(&mut c, Call::SetHeaderMapPairs) {
                return Ok(s);
            }
            let map = tri!(map_type(map));
            let bytes = tri!(read_opt(&mut c, ptr, len));
            let pairs = tri!(abi::deserialize_map(&bytes).ok_or(Status::BadArgument));
            let target = tri!(header_map_mut(c.data_mut(), map));
            *target = pairs.into_iter().map(|(n, v)| (lower(&n), v)).collect();
            st(Status::Ok)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_header_map_value",
        |mut c: C<'_>, map: i32, key_ptr: i32, key_len: i32, ret_ptr: i32, ret_size: i32| -> R {
            if let Some(s) = enter(&mut c, Call::GetHeaderMapValue) {
                return Ok(s);
            }
            let map = tri!(map_type(map));
            let key = lower(&tri!(read_opt(&mut c, key_ptr, key_len)));
            let headers = tri!(header_map(c.data(), map));
            let Some(value) = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(&key))
                .map(|(_, v)| v.clone())
            else {
                return st(Status::NotFound);
            };
            Ok(give(&mut c, &value, ret_ptr, ret_size)?.code())
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_replace_header_map_value",
        |mut c: C<'_>, map: i32, key_ptr: i32, key_len: i32, value_ptr: i32, value_len: i32| -> R {
            if let Some(s) = enter(&mut c, Call::ReplaceHeaderMapValue) {
                return Ok(s);
            }
            let map = tri!(map_type(map));
            let key = lower(&tri!(read_opt(&mut c, key_ptr, key_len)));
            let value = tri!(read_opt(&mut c, value_ptr, value_len));
            let headers = tri!(header_map_mut(c.data_mut(), map));
            // Envoy's HeaderMap::setCopy: the first entry is replaced,
            // later duplicates stay; absent, it is added.
            match headers
                .iter_mut()
                .find(|(n, _)| n.eq_ignore_ascii_case(&key))
            {
                Some(entry) => entry.1 = value,
                None => headers.push((key, value)),
            }
            st(Status::Ok)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_remove_header_map_value",
        |mut c: C<'_>, map: i32, key_ptr: i32, key_len: i32| -> R {
            if let Some(s) = enter(&mut c, Call::RemoveHeaderMapValue) {
                return Ok(s);
            }
            let map = tri!(map_type(map));
            let key = lower(&tri!(read_opt(&mut c, key_ptr, key_len)));
            let headers = tri!(header_map_mut(c.data_mut(), map));
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&key));
            st(Status::Ok)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_add_header_map_value",
        |mut c: C<'_>, map: i32, key_ptr: i32, key_len: i32, value_ptr: i32, value_len: i32| -> R {
            if let Some(s) = enter(&mut c, Call::AddHeaderMapValue) {
                return Ok(s);
            }
            let map = tri!(map_type(map));
            let key = lower(&tri!(read_opt(&mut c, key_ptr, key_len)));
            let value = tri!(read_opt(&mut c, value_ptr, value_len));
            tri!(header_map_mut(c.data_mut(), map)).push((key, value));
            st(Status::Ok)
        },
    )?;
    Ok(())
}

fn link_properties_and_shared(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_get_property",
        |mut c: C<'_>, path_ptr: i32, path_len: i32, ret_ptr: i32, ret_size: i32| -> R {
            if let Some(s) = enter(&mut c, Call::GetProperty) {
                return Ok(s);
            }
            let path = tri!(read_opt(&mut c, path_ptr, path_len));
            match property(c.data(), &path) {
                Answer::Value(bytes) => Ok(give(&mut c, &bytes, ret_ptr, ret_size)?.code()),
                Answer::Missing => st(Status::NotFound),
                Answer::Fail(status) => st(status),
            }
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_property",
        |mut c: C<'_>, path_ptr: i32, path_len: i32, value_ptr: i32, value_len: i32| -> R {
            if let Some(s) = enter(&mut c, Call::SetProperty) {
                return Ok(s);
            }
            let path = tri!(read_opt(&mut c, path_ptr, path_len));
            let value = tri!(read_opt(&mut c, value_ptr, value_len));
            let state = c.data_mut();
            match state.active_stream_mut() {
                Some(stream) => stream.properties.set_raw(&path, value),
                None => state.properties.set_raw(&path, value),
            }
            st(Status::Ok)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_shared_data",
        |mut c: C<'_>,
         key_ptr: i32,
         key_len: i32,
         ret_ptr: i32,
         ret_size: i32,
         ret_cas: i32|
         -> R {
            if let Some(s) = enter(&mut c, Call::GetSharedData) {
                return Ok(s);
            }
            let key = tri!(read_opt(&mut c, key_ptr, key_len));
            let Some((value, cas)) = c.data().shared.lock().get_data(&key) else {
                return st(Status::NotFound);
            };
            let status = give(&mut c, &value, ret_ptr, ret_size)?;
            if status != Status::Ok {
                return st(status);
            }
            tri!(write_u32(&mut c, ret_cas, cas));
            st(Status::Ok)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_shared_data",
        |mut c: C<'_>, key_ptr: i32, key_len: i32, value_ptr: i32, value_len: i32, cas: i32| -> R {
            if let Some(s) = enter(&mut c, Call::SetSharedData) {
                return Ok(s);
            }
            let key = tri!(read_opt(&mut c, key_ptr, key_len));
            let value = tri!(read_opt(&mut c, value_ptr, value_len));
            let status = c.data().shared.lock().set_data(&key, &value, cas as u32);
            st(status)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_register_shared_queue",
        |mut c: C<'_>, name_ptr: i32, name_len: i32, ret_id: i32| -> R {
            if let Some(s) = enter(&mut c, Call::RegisterSharedQueue) {
                return Ok(s);
            }
            let name = tri!(read_opt(&mut c, name_ptr, name_len));
            let state = c.data();
            let id = state.shared.lock().register_queue(
                &state.vm_id,
                &String::from_utf8_lossy(&name),
                state.index,
                state.root_context_id,
            );
            tri!(write_u32(&mut c, ret_id, id));
            st(Status::Ok)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_resolve_shared_queue",
        |mut c: C<'_>, vm_ptr: i32, vm_len: i32, name_ptr: i32, name_len: i32, ret_id: i32| -> R {
            if let Some(s) = enter(&mut c, Call::ResolveSharedQueue) {
                return Ok(s);
            }
            let vm_id = tri!(read_opt(&mut c, vm_ptr, vm_len));
            let name = tri!(read_opt(&mut c, name_ptr, name_len));
            let found = c.data().shared.lock().resolve_queue(
                &String::from_utf8_lossy(&vm_id),
                &String::from_utf8_lossy(&name),
            );
            let Some(id) = found else {
                return st(Status::NotFound);
            };
            tri!(write_u32(&mut c, ret_id, id));
            st(Status::Ok)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_dequeue_shared_queue",
        |mut c: C<'_>, id: i32, ret_ptr: i32, ret_size: i32| -> R {
            if let Some(s) = enter(&mut c, Call::DequeueSharedQueue) {
                return Ok(s);
            }
            let item = c.data().shared.lock().dequeue(id as u32);
            let bytes = tri!(item);
            Ok(give(&mut c, &bytes, ret_ptr, ret_size)?.code())
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_enqueue_shared_queue",
        |mut c: C<'_>, id: i32, ptr: i32, len: i32| -> R {
            if let Some(s) = enter(&mut c, Call::EnqueueSharedQueue) {
                return Ok(s);
            }
            let value = tri!(read_opt(&mut c, ptr, len));
            let status = c.data().shared.lock().enqueue(id as u32, value);
            st(status)
        },
    )?;
    Ok(())
}

fn link_stream_and_calls(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_continue_stream",
        |mut c: C<'_>, kind: i32| -> R {
            if let Some(s) = enter(&mut c, Call::ContinueStream) {
                return Ok(s);
            }
            let kind = tri!(StreamType::from_raw(kind as u32).ok_or(Status::BadArgument));
            let Some(stream) = c.data_mut().active_stream_mut() else {
                return st(Status::BadArgument);
            };
            stream.continued.push(kind);
            st(Status::Ok)
        },
    )?;
    linker.func_wrap(ENV, "proxy_close_stream", |mut c: C<'_>, kind: i32| -> R {
        if let Some(s) = enter(&mut c, Call::CloseStream) {
            return Ok(s);
        }
        let kind = tri!(StreamType::from_raw(kind as u32).ok_or(Status::BadArgument));
        let Some(stream) = c.data_mut().active_stream_mut() else {
            return st(Status::BadArgument);
        };
        stream.closed.push(kind);
        st(Status::Ok)
    })?;
    linker.func_wrap(
        ENV,
        "proxy_send_local_response",
        |mut c: C<'_>,
         status: i32,
         details_ptr: i32,
         details_len: i32,
         body_ptr: i32,
         body_len: i32,
         headers_ptr: i32,
         headers_len: i32,
         grpc_status: i32|
         -> R {
            if let Some(s) = enter(&mut c, Call::SendLocalResponse) {
                return Ok(s);
            }
            let details = tri!(read_opt(&mut c, details_ptr, details_len));
            let body = tri!(read_opt(&mut c, body_ptr, body_len));
            let raw = tri!(read_opt(&mut c, headers_ptr, headers_len));
            let headers = tri!(abi::deserialize_map(&raw).ok_or(Status::BadArgument));
            let Some(stream) = c.data_mut().active_stream_mut() else {
                return st(Status::BadArgument);
            };
            stream.local_reply = Some(LocalReply {
                status: status as u32,
                details,
                body,
                headers,
                grpc_status,
            });
            st(Status::Ok)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_http_call",
        |mut c: C<'_>,
         up_ptr: i32,
         up_len: i32,
         headers_ptr: i32,
         headers_len: i32,
         body_ptr: i32,
         body_len: i32,
         trailers_ptr: i32,
         trailers_len: i32,
         timeout: i32,
         ret_token: i32|
         -> R {
            if let Some(s) = enter(&mut c, Call::HttpCall) {
                return Ok(s);
            }
            let upstream = tri!(read_opt(&mut c, up_ptr, up_len));
            let headers = tri!(read_opt(&mut c, headers_ptr, headers_len));
            let headers = tri!(abi::deserialize_map(&headers).ok_or(Status::BadArgument));
            let body = tri!(read_opt(&mut c, body_ptr, body_len));
            let trailers = tri!(read_opt(&mut c, trailers_ptr, trailers_len));
            let trailers = tri!(abi::deserialize_map(&trailers).ok_or(Status::BadArgument));
            let state = c.data_mut();
            let token = state.next_token;
            state.next_token += 1;
            let context_id = state.active_context;
            state.http_calls.push(HttpCall {
                token,
                context_id,
                upstream,
                headers,
                body,
                trailers,
                timeout_ms: timeout as u32,
            });
            tri!(write_u32(&mut c, ret_token, token));
            st(Status::Ok)
        },
    )?;
    // gRPC calls and streams are not supported by this host.
    linker.func_new(
        ENV,
        "proxy_grpc_call",
        unimplemented_type(linker, 12),
        |mut c, _, out| unsupported(&mut c, Call::GrpcCall, out),
    )?;
    linker.func_new(
        ENV,
        "proxy_grpc_stream",
        unimplemented_type(linker, 9),
        |mut c, _, out| unsupported(&mut c, Call::GrpcStream, out),
    )?;
    linker.func_new(
        ENV,
        "proxy_grpc_send",
        unimplemented_type(linker, 4),
        |mut c, _, out| unsupported(&mut c, Call::GrpcSend, out),
    )?;
    linker.func_new(
        ENV,
        "proxy_grpc_cancel",
        unimplemented_type(linker, 1),
        |mut c, _, out| unsupported(&mut c, Call::GrpcCancel, out),
    )?;
    linker.func_new(
        ENV,
        "proxy_grpc_close",
        unimplemented_type(linker, 1),
        |mut c, _, out| unsupported(&mut c, Call::GrpcClose, out),
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_status",
        |mut c: C<'_>, ret_code: i32, ret_ptr: i32, ret_size: i32| -> R {
            if let Some(s) = enter(&mut c, Call::GetStatus) {
                return Ok(s);
            }
            let (code, message) = c.data().status.clone();
            tri!(write_u32(&mut c, ret_code, code));
            Ok(give(&mut c, &message, ret_ptr, ret_size)?.code())
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_effective_context",
        |mut c: C<'_>, id: i32| -> R {
            if let Some(s) = enter(&mut c, Call::SetEffectiveContext) {
                return Ok(s);
            }
            let state = c.data_mut();
            let id = id as u32;
            if id != state.root_context_id && !state.streams.contains_key(&id) {
                return st(Status::BadArgument);
            }
            state.active_context = id;
            st(Status::Ok)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_call_foreign_function",
        |mut c: C<'_>,
         name_ptr: i32,
         name_len: i32,
         _args_ptr: i32,
         _args_len: i32,
         ret_ptr: i32,
         ret_size: i32|
         -> R {
            if let Some(s) = enter(&mut c, Call::CallForeignFunction) {
                return Ok(s);
            }
            let name = tri!(read_opt(&mut c, name_ptr, name_len));
            let name = String::from_utf8_lossy(&name).into_owned();
            if name == "clear_route_cache" {
                // Envoy registers this one; it has no result.
                let Some(stream) = c.data_mut().active_stream_mut() else {
                    return st(Status::BadArgument);
                };
                stream.route_cache_cleared += 1;
                return st(Status::Ok);
            }
            let Some(result) = c.data().foreign_functions.get(&name).cloned() else {
                return st(Status::NotFound);
            };
            Ok(give(&mut c, &result, ret_ptr, ret_size)?.code())
        },
    )?;
    linker.func_wrap(ENV, "proxy_done", |mut c: C<'_>| -> R {
        if let Some(s) = enter(&mut c, Call::Done) {
            return Ok(s);
        }
        c.data_mut().done_calls += 1;
        st(Status::Ok)
    })?;
    Ok(())
}

fn link_metrics(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_define_metric",
        |mut c: C<'_>, kind: i32, name_ptr: i32, name_len: i32, ret_id: i32| -> R {
            if let Some(s) = enter(&mut c, Call::DefineMetric) {
                return Ok(s);
            }
            let kind = tri!(MetricType::from_raw(kind as u32).ok_or(Status::BadArgument));
            let name = tri!(read_opt(&mut c, name_ptr, name_len));
            let id = c
                .data()
                .shared
                .lock()
                .define_metric(kind, &String::from_utf8_lossy(&name));
            tri!(write_u32(&mut c, ret_id, id));
            st(Status::Ok)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_increment_metric",
        |mut c: C<'_>, id: i32, offset: i64| -> R {
            if let Some(s) = enter(&mut c, Call::IncrementMetric) {
                return Ok(s);
            }
            let status = c.data().shared.lock().increment_metric(id as u32, offset);
            st(status)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_record_metric",
        |mut c: C<'_>, id: i32, value: i64| -> R {
            if let Some(s) = enter(&mut c, Call::RecordMetric) {
                return Ok(s);
            }
            let status = c
                .data()
                .shared
                .lock()
                .record_metric(id as u32, value as u64);
            st(status)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_metric",
        |mut c: C<'_>, id: i32, ret: i32| -> R {
            if let Some(s) = enter(&mut c, Call::GetMetric) {
                return Ok(s);
            }
            let value = tri!(c.data().shared.lock().get_metric(id as u32));
            tri!(write_u64(&mut c, ret, value));
            st(Status::Ok)
        },
    )?;
    Ok(())
}

fn wasi_fault(status: i32) -> i32 {
    if status == Status::Ok.code() {
        errno::SUCCESS
    } else {
        errno::NOSYS
    }
}

fn link_wasi(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        WASI,
        "fd_write",
        |mut c: C<'_>, fd: i32, iovs: i32, iovs_len: i32, ret_written: i32| -> R {
            if let Some(s) = enter(&mut c, Call::FdWrite) {
                return Ok(wasi_fault(s));
            }
            if fd != 1 && fd != 2 {
                return Ok(errno::BADF);
            }
            let mut written = Vec::new();
            for index in 0..iovs_len.max(0) {
                let Ok(iov) = read(&mut c, iovs.wrapping_add(index.wrapping_mul(8)), 8) else {
                    return Ok(errno::FAULT);
                };
                let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                let Ok(bytes) = read_opt(&mut c, ptr, len) else {
                    return Ok(errno::FAULT);
                };
                written.extend_from_slice(&bytes);
            }
            let count = written.len() as u32;
            let state = c.data_mut();
            // Envoy logs what a module prints, one log line per line.
            state.stdout_line.extend_from_slice(&written);
            while let Some(end) = state.stdout_line.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = state.stdout_line.drain(..=end).collect();
                let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                log_line(state, None, text);
            }
            if write_u32(&mut c, ret_written, count).is_err() {
                return Ok(errno::FAULT);
            }
            Ok(errno::SUCCESS)
        },
    )?;
    linker.func_wrap(
        WASI,
        "environ_sizes_get",
        |mut c: C<'_>, ret_count: i32, ret_size: i32| -> R {
            if let Some(s) = enter(&mut c, Call::EnvironSizesGet) {
                return Ok(wasi_fault(s));
            }
            let env = &c.data().environment;
            let count = env.len() as u32;
            let size: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
            if write_u32(&mut c, ret_count, count).is_err()
                || write_u32(&mut c, ret_size, size as u32).is_err()
            {
                return Ok(errno::FAULT);
            }
            Ok(errno::SUCCESS)
        },
    )?;
    linker.func_wrap(
        WASI,
        "environ_get",
        |mut c: C<'_>, environ: i32, buf: i32| -> R {
            if let Some(s) = enter(&mut c, Call::EnvironGet) {
                return Ok(wasi_fault(s));
            }
            let env = c.data().environment.clone();
            let mut at = buf;
            for (index, (key, value)) in env.iter().enumerate() {
                let entry = format!("{key}={value}\0");
                if write_u32(&mut c, environ.wrapping_add(index as i32 * 4), at as u32).is_err()
                    || write(&mut c, at, entry.as_bytes()).is_err()
                {
                    return Ok(errno::FAULT);
                }
                at = at.wrapping_add(entry.len() as i32);
            }
            Ok(errno::SUCCESS)
        },
    )?;
    linker.func_wrap(
        WASI,
        "args_sizes_get",
        |mut c: C<'_>, ret_count: i32, ret_size: i32| -> R {
            if let Some(s) = enter(&mut c, Call::ArgsSizesGet) {
                return Ok(wasi_fault(s));
            }
            if write_u32(&mut c, ret_count, 0).is_err() || write_u32(&mut c, ret_size, 0).is_err() {
                return Ok(errno::FAULT);
            }
            Ok(errno::SUCCESS)
        },
    )?;
    linker.func_wrap(
        WASI,
        "args_get",
        |mut c: C<'_>, _argv: i32, _buf: i32| -> R {
            if let Some(s) = enter(&mut c, Call::ArgsGet) {
                return Ok(wasi_fault(s));
            }
            Ok(errno::SUCCESS)
        },
    )?;
    linker.func_wrap(
        WASI,
        "proc_exit",
        |mut c: C<'_>, code: i32| -> wasmtime::Result<()> {
            enter(&mut c, Call::ProcExit);
            Err(wasmtime::Error::new(ProcExit(code)))
        },
    )?;
    linker.func_wrap(
        WASI,
        "clock_time_get",
        |mut c: C<'_>, clock: i32, _precision: i64, ret: i32| -> R {
            if let Some(s) = enter(&mut c, Call::ClockTimeGet) {
                return Ok(wasi_fault(s));
            }
            // realtime reads the virtual wall clock; monotonic, process
            // and thread CPU time the virtual monotonic clock.
            let now = match clock {
                0 => c.data().shared.now_ns(),
                1..=3 => c.data().shared.mono_ns(),
                _ => return Ok(errno::INVAL),
            };
            if write_u64(&mut c, ret, now).is_err() {
                return Ok(errno::FAULT);
            }
            Ok(errno::SUCCESS)
        },
    )?;
    linker.func_wrap(
        WASI,
        "random_get",
        |mut c: C<'_>, buf: i32, len: i32| -> R {
            if let Some(s) = enter(&mut c, Call::RandomGet) {
                return Ok(wasi_fault(s));
            }
            let mut bytes = vec![0u8; len as u32 as usize];
            c.data().shared.lock().random_bytes(&mut bytes);
            if write(&mut c, buf, &bytes).is_err() {
                return Ok(errno::FAULT);
            }
            Ok(errno::SUCCESS)
        },
    )?;
    linker.func_wrap(WASI, "sched_yield", |mut c: C<'_>| -> R {
        if let Some(s) = enter(&mut c, Call::SchedYield) {
            return Ok(wasi_fault(s));
        }
        Ok(errno::SUCCESS)
    })?;
    Ok(())
}

/// Whether `link` binds this import itself.
pub fn is_linked(module: &str, name: &str) -> bool {
    let known = Call::ALL
        .iter()
        .any(|c| *c != Call::Unknown && c.name() == name);
    known && (module == ENV) == name.starts_with("proxy_") && (module == ENV || module == WASI)
}

/// `(i32 x params) -> i32`
fn unimplemented_type(linker: &Linker<VmState>, params: usize) -> wasmtime::FuncType {
    wasmtime::FuncType::new(linker.engine(), vec![ValType::I32; params], [ValType::I32])
}

fn unsupported(c: &mut C<'_>, call: Call, out: &mut [Val]) -> wasmtime::Result<()> {
    let status = enter(c, call).unwrap_or(Status::Unimplemented.code());
    if let Some(slot) = out.first_mut() {
        *slot = Val::I32(status);
    }
    Ok(())
}

/// Any other function import: answers `Unimplemented` (`ENOSYS` for WASI)
/// if it returns one i32, zeroes otherwise. Never traps.
fn link_unknown(linker: &mut Linker<VmState>, module: &Module) -> wasmtime::Result<()> {
    for import in module.imports() {
        let ExternType::Func(ty) = import.ty() else {
            continue;
        };
        if is_linked(import.module(), import.name()) {
            continue;
        }
        let status = if import.module() == WASI {
            errno::NOSYS
        } else {
            Status::Unimplemented.code()
        };
        let results: Vec<ValType> = ty.results().collect();
        linker.func_new(
            import.module(),
            import.name(),
            ty.clone(),
            move |mut c, _, out| {
                enter(&mut c, Call::Unknown);
                for (slot, kind) in out.iter_mut().zip(&results) {
                    *slot = match kind {
                        ValType::I32 => Val::I32(status),
                        ValType::I64 => Val::I64(i64::from(status)),
                        ValType::F32 => Val::F32(0),
                        ValType::F64 => Val::F64(0),
                        _ => Val::null_func_ref(),
                    };
                }
                Ok(())
            },
        )?;
    }
    Ok(())
}
