//! Envoy properties and headers meshguard reads, decoded defensively: a
//! missing property, a host error or an unexpected encoding all read as
//! "unknown", never as a panic.

use super::host::{self, Map};

const CLUSTER_NAME: &[u8] = b"xds\0cluster_name";
const UPSTREAM_ADDRESS: &[u8] = b"upstream\0address";
const RESPONSE_CODE: &[u8] = b"response\0code";
const RESPONSE_FLAGS: &[u8] = b"response\0flags";
const PLUGIN_NAME: &[u8] = b"plugin_name";
const PLUGIN_ROOT_ID: &[u8] = b"plugin_root_id";
const SOURCE_ADDRESS: &[u8] = b"source\0address";
const ROUTE_NAME: &[u8] = b"xds\0route_name";
const VIRTUAL_HOST_NAME: &[u8] = b"xds\0virtual_host_name";
const ROUTE_METADATA: &[u8] = b"xds\0route_metadata";
const REQUEST_ATTEMPT_COUNT: &[u8] = b"upstream\0request_attempt_count";
const UPSTREAM_LOCAL_ADDRESS: &[u8] = b"upstream\0local_address";
const TRANSPORT_FAILURE_REASON: &[u8] = b"upstream\0transport_failure_reason";

/// Longest property value meshguard takes in (cluster, route and virtual
/// host names, addresses): real ones are a few hundred bytes at most, and
/// each is kept per host or service and copied into headers and logs.
/// Longer reads as unknown.
const MAX_PROPERTY: usize = 1024;

fn string(path: &[u8]) -> Option<String> {
    let bytes = host::property(path).ok()??;
    if bytes.len() > MAX_PROPERTY {
        return None;
    }
    let text = String::from_utf8(bytes).ok()?;
    (!text.is_empty()).then_some(text)
}

/// Envoy encodes integer properties as 8 little-endian bytes.
fn integer(path: &[u8]) -> Option<i64> {
    let bytes = host::property(path).ok()??;
    let bytes: [u8; 8] = bytes.as_slice().try_into().ok()?;
    Some(i64::from_le_bytes(bytes))
}

pub fn cluster_name() -> Option<String> {
    string(CLUSTER_NAME)
}

pub fn upstream_address() -> Option<String> {
    string(UPSTREAM_ADDRESS)
}

/// Envoy's route name; empty when the route has none.
pub fn route_name() -> String {
    string(ROUTE_NAME).unwrap_or_default()
}

pub fn virtual_host_name() -> String {
    string(VIRTUAL_HOST_NAME).unwrap_or_default()
}

/// `namespace/name` of the Istio VirtualService the route was built from.
pub fn virtual_service() -> Option<String> {
    let metadata = host::property(ROUTE_METADATA).ok()??;
    crate::route_metadata::virtual_service(&metadata)
}

pub fn header_text(map: Map, name: &str) -> Option<String> {
    let value = host::header(map, name).ok()??;
    String::from_utf8(value).ok()
}

pub fn source_address() -> Option<String> {
    string(SOURCE_ADDRESS)
}

pub fn plugin_name() -> Option<String> {
    string(PLUGIN_NAME)
}

pub fn plugin_root_id() -> Option<String> {
    string(PLUGIN_ROOT_ID)
}

pub fn response_code() -> Option<u16> {
    integer(RESPONSE_CODE).and_then(|code| u16::try_from(code).ok())
}

/// Upstream attempts the request took (1 without retries).
pub fn request_attempt_count() -> Option<u64> {
    integer(REQUEST_ATTEMPT_COUNT).and_then(|n| u64::try_from(n).ok())
}

/// Our end of the connection to the upstream host: none while (or
/// because) the attempt never connected.
pub fn upstream_connected() -> bool {
    string(UPSTREAM_LOCAL_ADDRESS).is_some()
}

/// Why the connection to the upstream host failed, when Envoy knows
/// (a refused connection says so; a connect timeout leaves it empty).
pub fn transport_failure_reason() -> Option<String> {
    string(TRANSPORT_FAILURE_REASON)
}

pub fn response_flags() -> Option<u64> {
    integer(RESPONSE_FLAGS).and_then(|flags| u64::try_from(flags).ok())
}

pub fn grpc_status(map: Map) -> Option<u32> {
    let value = host::header(map, "grpc-status").ok()??;
    std::str::from_utf8(&value).ok()?.trim().parse().ok()
}
