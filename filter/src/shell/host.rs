//! The proxy-wasm host calls meshguard makes, declared here rather than
//! taken from the SDK's `hostcalls` because the SDK panics on any status it
//! did not expect (and on non-UTF-8 header values), and a panic inside
//! Envoy fails every later request. Every call here returns the raw status
//! as an error instead.

// The ABI layer: the only place the crate allows unsafe code (exports
// and host-call FFI); Cargo.toml denies it everywhere else.
#![allow(unsafe_code)]

use std::ptr::{null, null_mut};

/// The ABI's status word, kept raw: an unknown value must not be undefined
/// behaviour the way an out-of-range Rust enum would be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u32);

pub const OK: u32 = 0;
pub const NOT_FOUND: u32 = 1;
pub const CAS_MISMATCH: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Map {
    RequestHeaders = 0,
    ResponseHeaders = 2,
    ResponseTrailers = 3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum Level {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
}

const PLUGIN_CONFIGURATION: u32 = 7;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_log_level(return_level: *mut u32) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_add_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_metric_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_call_foreign_function(
        function_name_data: *const u8,
        function_name_size: usize,
        arguments_data: *const u8,
        arguments_size: usize,
        results_data: *mut *mut u8,
        results_size: *mut usize,
    ) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    fn random_get(buf: *mut u8, buf_len: usize) -> i32;
}

/// Eight random bytes from the host (WASI `random_get`, which Envoy serves).
pub fn random_u64() -> Result<u64, Status> {
    let mut bytes = [0u8; 8];
    match unsafe { random_get(bytes.as_mut_ptr(), bytes.len()) } {
        0 => Ok(u64::from_le_bytes(bytes)),
        errno => Err(Status(errno as u32)),
    }
}

/// Takes ownership of a buffer the host allocated in our memory (through
/// the SDK's exported `proxy_on_memory_allocate`).
///
/// # Safety
/// `data` must be null or a `size`-byte allocation made by that allocator.
unsafe fn take(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        None
    } else {
        Some(Vec::from_raw_parts(data, size, size))
    }
}

fn check(status: u32) -> Result<(), Status> {
    if status == OK {
        Ok(())
    } else {
        Err(Status(status))
    }
}

pub fn log(level: Level, message: &str) {
    // Nothing useful can be done if logging itself fails.
    unsafe {
        proxy_log(level as u32, message.as_ptr(), message.len());
    }
}

pub fn log_level() -> Result<u32, Status> {
    let mut level = 0u32;
    check(unsafe { proxy_get_log_level(&mut level) })?;
    Ok(level)
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> Result<u64, Status> {
    let mut nanos = 0u64;
    check(unsafe { proxy_get_current_time_nanoseconds(&mut nanos) })?;
    Ok(nanos / 1_000_000)
}

pub fn set_tick_period_ms(period: u32) -> Result<(), Status> {
    check(unsafe { proxy_set_tick_period_milliseconds(period) })
}

pub fn plugin_configuration(size: usize) -> Result<Option<Vec<u8>>, Status> {
    let mut data = null_mut();
    let mut len = 0usize;
    match unsafe { proxy_get_buffer_bytes(PLUGIN_CONFIGURATION, 0, size, &mut data, &mut len) } {
        OK => Ok(unsafe { take(data, len) }),
        NOT_FOUND => Ok(None),
        status => Err(Status(status)),
    }
}

/// A header's value as bytes (header values need not be UTF-8).
pub fn header(map: Map, name: &str) -> Result<Option<Vec<u8>>, Status> {
    let mut data = null_mut();
    let mut len = 0usize;
    match unsafe {
        proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut data, &mut len)
    } {
        OK => Ok(unsafe { take(data, len) }),
        NOT_FOUND => Ok(None),
        status => Err(Status(status)),
    }
}

pub fn set_header(map: Map, name: &str, value: &[u8]) -> Result<(), Status> {
    check(unsafe {
        proxy_replace_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

pub fn add_header(map: Map, name: &str, value: &[u8]) -> Result<(), Status> {
    check(unsafe {
        proxy_add_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

pub fn remove_header(map: Map, name: &str) -> Result<(), Status> {
    match unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) } {
        OK | NOT_FOUND => Ok(()),
        status => Err(Status(status)),
    }
}

/// A property by its path, segments separated by NUL (`b"upstream\0address"`).
pub fn property(path: &[u8]) -> Result<Option<Vec<u8>>, Status> {
    let mut data = null_mut();
    let mut len = 0usize;
    match unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut len) } {
        OK => Ok(unsafe { take(data, len) }),
        NOT_FOUND => Ok(None),
        status => Err(Status(status)),
    }
}

/// A shared-data value and its CAS token (0 when the key does not exist).
pub fn shared_data(key: &str) -> Result<(Option<Vec<u8>>, u32), Status> {
    let mut data = null_mut();
    let mut len = 0usize;
    let mut cas = 0u32;
    match unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut len, &mut cas) } {
        OK => Ok((unsafe { take(data, len) }, cas)),
        NOT_FOUND => Ok((None, 0)),
        status => Err(Status(status)),
    }
}

/// Writes a shared-data value if its CAS token is still `cas` (0 writes
/// unconditionally). `Err(Status(CAS_MISMATCH))` means someone wrote first.
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), Status> {
    let value_ptr = if value.is_empty() {
        null()
    } else {
        value.as_ptr()
    };
    check(unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value_ptr, value.len(), cas) })
}

/// Answers the request from the filter. `grpc_status` (when set) makes
/// Envoy send a gRPC status to gRPC clients instead of an HTTP body.
pub fn send_local_response(
    status: u16,
    details: &str,
    body: &[u8],
    headers: &[(&str, &str)],
    grpc_status: Option<i32>,
) -> Result<(), Status> {
    // The ABI's map layout: count, then (name length, value length) pairs,
    // then each name and value NUL-terminated.
    let mut map = Vec::new();
    map.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    for (name, value) in headers {
        map.extend_from_slice(&(name.len() as u32).to_le_bytes());
        map.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in headers {
        map.extend_from_slice(name.as_bytes());
        map.push(0);
        map.extend_from_slice(value.as_bytes());
        map.push(0);
    }
    check(unsafe {
        proxy_send_local_response(
            u32::from(status),
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            map.as_ptr(),
            map.len(),
            grpc_status.unwrap_or(-1),
        )
    })
}

/// Asks Envoy to match the request's route again (Envoy's foreign function
/// `clear_route_cache`), after a header change that routes should see.
pub fn clear_route_cache() -> Result<(), Status> {
    let name = "clear_route_cache";
    let mut data = null_mut();
    let mut len = 0usize;
    let status = unsafe {
        proxy_call_foreign_function(name.as_ptr(), name.len(), null(), 0, &mut data, &mut len)
    };
    drop(unsafe { take(data, len) });
    check(status)
}

/// Defines (or finds) a metric: type 0 counter, 1 gauge.
pub fn define_metric(kind: u32, name: &str) -> Result<u32, Status> {
    let mut id = 0u32;
    check(unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, offset: i64) -> Result<(), Status> {
    check(unsafe { proxy_increment_metric(id, offset) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), Status> {
    check(unsafe { proxy_record_metric(id, value) })
}
