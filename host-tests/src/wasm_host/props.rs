//! Properties (`proxy_get_property`) with Envoy's names and encodings, and
//! a tiny protobuf encoder for the `envoy.config.core.v3.Metadata` bytes
//! Envoy hands out for `xds.route_metadata` and friends.
//!
//! Envoy's encodings, as measured against Envoy 1.40 (see DESIGN.md):
//! strings are raw bytes, integers (`response.code`, `response.flags`,
//! `upstream.port`) are 8-byte little-endian `i64`, booleans one byte,
//! durations and timestamps `i64` nanoseconds, and metadata is serialized
//! protobuf.

use std::collections::{BTreeMap, HashMap};

use super::abi::Status;

/// What the host answers for one property path.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// `Ok` with these bytes (an empty value comes back as a null pointer
    /// and size 0, as in Envoy's host).
    Value(Vec<u8>),
    /// `NotFound`.
    Missing,
    /// Any other status, to simulate host errors (for example
    /// `SerializationFailure`, which Envoy returns for some metadata).
    Fail(Status),
}

impl Answer {
    pub fn string(text: impl AsRef<[u8]>) -> Answer {
        Answer::Value(text.as_ref().to_vec())
    }

    /// An integer the way Envoy encodes `response.code`, `upstream.port`...
    pub fn int(value: i64) -> Answer {
        Answer::Value(value.to_le_bytes().to_vec())
    }

    pub fn uint(value: u64) -> Answer {
        Answer::Value(value.to_le_bytes().to_vec())
    }

    pub fn bool(value: bool) -> Answer {
        Answer::Value(vec![u8::from(value)])
    }

    pub fn metadata(metadata: &Metadata) -> Answer {
        Answer::Value(metadata.encode())
    }
}

/// A property table keyed by path. Paths are written dotted
/// (`"upstream.address"`) or as explicit segments; on the wire the guest
/// joins segments with NUL bytes (the SDK adds a trailing NUL, meshguard's
/// own calls do not; both are accepted).
#[derive(Debug, Clone, Default)]
pub struct Properties {
    map: HashMap<Vec<u8>, Answer>,
}

/// The wire key of a dotted name.
pub fn dotted(name: &str) -> Vec<u8> {
    name.replace('.', "\0").into_bytes()
}

/// The wire key of explicit segments (which may contain dots).
pub fn segments(parts: &[&str]) -> Vec<u8> {
    parts.join("\0").into_bytes()
}

/// The lookup key of a path as the guest sent it.
pub fn normalize(path: &[u8]) -> &[u8] {
    path.strip_suffix(&[0]).unwrap_or(path)
}

impl Properties {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a property by dotted name.
    pub fn set(&mut self, name: &str, answer: Answer) -> &mut Self {
        self.map.insert(dotted(name), answer);
        self
    }

    /// Sets a property by explicit path segments.
    pub fn set_path(&mut self, parts: &[&str], answer: Answer) -> &mut Self {
        self.map.insert(segments(parts), answer);
        self
    }

    pub fn remove(&mut self, name: &str) -> &mut Self {
        self.map.remove(&dotted(name));
        self
    }

    pub fn get(&self, wire_path: &[u8]) -> Option<&Answer> {
        self.map.get(normalize(wire_path))
    }

    /// Sets a property from the guest (`proxy_set_property`).
    pub fn set_raw(&mut self, wire_path: &[u8], value: Vec<u8>) {
        self.map
            .insert(normalize(wire_path).to_vec(), Answer::Value(value));
    }

    pub fn merge(&mut self, other: &Properties) {
        for (key, value) in &other.map {
            self.map.insert(key.clone(), value.clone());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// `google.protobuf.Value`.
#[derive(Debug, Clone, PartialEq)]
pub enum PbValue {
    Null,
    Number(f64),
    String(String),
    Bool(bool),
    Struct(BTreeMap<String, PbValue>),
    List(Vec<PbValue>),
}

impl From<&str> for PbValue {
    fn from(text: &str) -> Self {
        PbValue::String(text.to_string())
    }
}

impl PbValue {
    /// Converts JSON (what Istio's `Struct` carries) into a protobuf Value.
    pub fn from_json(value: &serde_json::Value) -> PbValue {
        match value {
            serde_json::Value::Null => PbValue::Null,
            serde_json::Value::Bool(b) => PbValue::Bool(*b),
            serde_json::Value::Number(n) => PbValue::Number(n.as_f64().unwrap_or(0.0)),
            serde_json::Value::String(s) => PbValue::String(s.clone()),
            serde_json::Value::Array(items) => {
                PbValue::List(items.iter().map(PbValue::from_json).collect())
            }
            serde_json::Value::Object(fields) => PbValue::Struct(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), PbValue::from_json(v)))
                    .collect(),
            ),
        }
    }
}

/// `envoy.config.core.v3.Metadata`: only `filter_metadata`
/// (`map<string, google.protobuf.Struct>`, field 1) is modelled.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Metadata {
    pub filter_metadata: BTreeMap<String, BTreeMap<String, PbValue>>,
}

impl Metadata {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `filter_metadata[filter][key] = value`.
    pub fn with(mut self, filter: &str, key: &str, value: impl Into<PbValue>) -> Self {
        self.filter_metadata
            .entry(filter.to_string())
            .or_default()
            .insert(key.to_string(), value.into());
        self
    }

    /// The metadata istiod puts on routes built from a VirtualService:
    /// `filter_metadata.istio.config =
    /// "/apis/networking.istio.io/v1/namespaces/<ns>/virtual-service/<name>"`.
    pub fn istio_virtual_service(namespace: &str, name: &str) -> Self {
        Metadata::new().with(
            "istio",
            "config",
            format!("/apis/networking.istio.io/v1/namespaces/{namespace}/virtual-service/{name}")
                .as_str(),
        )
    }

    /// Serialized protobuf bytes, as Envoy returns them.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (filter, fields) in &self.filter_metadata {
            let mut entry = Vec::new();
            put_bytes(&mut entry, 1, filter.as_bytes());
            put_bytes(&mut entry, 2, &encode_struct(fields));
            put_bytes(&mut out, 1, &entry);
        }
        out
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_tag(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// `google.protobuf.Struct { map<string, Value> fields = 1; }`
fn encode_struct(fields: &BTreeMap<String, PbValue>) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in fields {
        let mut entry = Vec::new();
        put_bytes(&mut entry, 1, key.as_bytes());
        put_bytes(&mut entry, 2, &encode_value(value));
        put_bytes(&mut out, 1, &entry);
    }
    out
}

/// `google.protobuf.Value { oneof kind { NullValue null_value = 1;
/// double number_value = 2; string string_value = 3; bool bool_value = 4;
/// Struct struct_value = 5; ListValue list_value = 6; } }`
fn encode_value(value: &PbValue) -> Vec<u8> {
    let mut out = Vec::new();
    match value {
        PbValue::Null => {
            put_tag(&mut out, 1, 0);
            put_varint(&mut out, 0);
        }
        PbValue::Number(n) => {
            put_tag(&mut out, 2, 1);
            out.extend_from_slice(&n.to_le_bytes());
        }
        PbValue::String(s) => put_bytes(&mut out, 3, s.as_bytes()),
        PbValue::Bool(b) => {
            put_tag(&mut out, 4, 0);
            put_varint(&mut out, u64::from(*b));
        }
        PbValue::Struct(fields) => put_bytes(&mut out, 5, &encode_struct(fields)),
        PbValue::List(items) => {
            // ListValue { repeated Value values = 1; }
            let mut list = Vec::new();
            for item in items {
                put_bytes(&mut list, 1, &encode_value(item));
            }
            put_bytes(&mut out, 6, &list);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_bytes_match_protoc() {
        // filter_metadata { key: "a" value { fields { key: "b" value { string_value: "c" } } } }
        // encoded by hand from the .proto definitions:
        // Metadata.1 entry (len 15) { key(1)="a", value(2) Struct (len 10) { fields(1) entry (len 8) {
        //   key(1)="b", value(2) (len 3) Value { string_value(3)="c" } } } }
        let bytes = Metadata::new().with("a", "b", "c").encode();
        assert_eq!(
            bytes,
            vec![0x0a, 15, 0x0a, 1, b'a', 0x12, 10, 0x0a, 8, 0x0a, 1, b'b', 0x12, 3, 0x1a, 1, b'c']
        );
    }

    #[test]
    fn paths() {
        let mut props = Properties::new();
        props.set("upstream.address", Answer::string("1.2.3.4:80"));
        assert!(props.get(b"upstream\0address").is_some());
        assert!(props.get(b"upstream\0address\0").is_some());
        assert!(props.get(b"upstream").is_none());
    }
}
