//! Which Istio VirtualService a route came from.
//!
//! istiod tags every route it builds from a VirtualService with
//! `metadata.filter_metadata.istio.config =
//! "/apis/networking.istio.io/<version>/namespaces/<ns>/virtual-service/<name>"`.
//! Envoy hands `xds.route_metadata` to wasm as a serialized
//! `envoy.config.core.v3.Metadata`; this reads just that one string out of
//! it with a minimal protobuf walk (a full protobuf crate would cost more
//! module size than the whole filter's configuration code).

/// `namespace/name` of the route's VirtualService, if it has one.
pub fn virtual_service(metadata: &[u8]) -> Option<String> {
    let config = istio_config(metadata)?;
    parse_config_path(&config)
}

/// `/apis/networking.istio.io/<any version>/namespaces/<ns>/virtual-service/<name>`.
pub fn parse_config_path(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/apis/networking.istio.io/")?;
    let (_version, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("namespaces/")?;
    let (namespace, rest) = rest.split_once('/')?;
    let name = rest.strip_prefix("virtual-service/")?;
    let valid = |s: &str| !s.is_empty() && !s.contains('/');
    (valid(namespace) && valid(name)).then(|| format!("{namespace}/{name}"))
}

/// Metadata.filter_metadata (field 1, map<string, Struct>) ["istio"]
/// → Struct.fields (field 1, map<string, Value>) ["config"]
/// → Value.string_value (field 3).
fn istio_config(metadata: &[u8]) -> Option<String> {
    let istio = map_value(metadata, 1, "istio")?;
    let value = map_value(istio, 1, "config")?;
    let text = fields(value)
        .find(|(number, _)| *number == 3)
        .and_then(|(_, f)| f.bytes())?;
    String::from_utf8(text.to_vec()).ok()
}

/// The value of `key` in a protobuf map field `field` of `message`.
fn map_value<'a>(message: &'a [u8], field: u32, key: &str) -> Option<&'a [u8]> {
    fields(message)
        .filter(|(number, _)| *number == field)
        .filter_map(|(_, entry)| entry.bytes())
        .find_map(|entry| {
            let mut entry_key = None;
            let mut entry_value = None;
            for (number, f) in fields(entry) {
                match number {
                    1 => entry_key = f.bytes(),
                    2 => entry_value = f.bytes(),
                    _ => {}
                }
            }
            (entry_key == Some(key.as_bytes()))
                .then_some(entry_value)
                .flatten()
        })
}

#[derive(Clone, Copy)]
enum Field<'a> {
    Scalar,
    Bytes(&'a [u8]),
}

impl<'a> Field<'a> {
    fn bytes(self) -> Option<&'a [u8]> {
        match self {
            Field::Bytes(b) => Some(b),
            Field::Scalar => None,
        }
    }
}

/// The fields of a message; stops quietly at the first malformed byte.
fn fields(mut data: &[u8]) -> impl Iterator<Item = (u32, Field<'_>)> {
    std::iter::from_fn(move || {
        let tag = varint(&mut data)?;
        let number = u32::try_from(tag >> 3).ok()?;
        let field = match tag & 7 {
            0 => {
                varint(&mut data)?;
                Field::Scalar
            }
            1 => {
                data = data.get(8..)?;
                Field::Scalar
            }
            2 => {
                let len = usize::try_from(varint(&mut data)?).ok()?;
                let bytes = data.get(..len)?;
                data = &data[len..];
                Field::Bytes(bytes)
            }
            5 => {
                data = data.get(4..)?;
                Field::Scalar
            }
            _ => return None,
        };
        Some((number, field))
    })
}

fn varint(data: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = data.split_first()?;
        *data = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
/// Test support: encodes route metadata the way Envoy serializes it.
pub mod encode {
    fn varint(out: &mut Vec<u8>, mut value: u64) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn bytes_field(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
        varint(out, (u64::from(number) << 3) | 2);
        varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }

    fn entry(key: &str, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        bytes_field(&mut out, 1, key.as_bytes());
        bytes_field(&mut out, 2, value);
        out
    }

    /// `Metadata` with `filter_metadata[filter][key] = value` (a string).
    pub fn metadata(filter: &str, key: &str, value: &str) -> Vec<u8> {
        let mut string_value = Vec::new();
        bytes_field(&mut string_value, 3, value.as_bytes());
        let mut structure = Vec::new();
        bytes_field(&mut structure, 1, &entry(key, &string_value));
        let mut out = Vec::new();
        bytes_field(&mut out, 1, &entry(filter, &structure));
        out
    }

    /// Route metadata as istiod writes it for a VirtualService.
    pub fn istio_route(namespace: &str, name: &str) -> Vec<u8> {
        metadata(
            "istio",
            "config",
            &format!("/apis/networking.istio.io/v1/namespaces/{namespace}/virtual-service/{name}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_virtual_service_of_an_istio_route() {
        assert_eq!(
            virtual_service(&encode::istio_route("shop", "payments")).as_deref(),
            Some("shop/payments")
        );
    }

    #[test]
    fn any_api_version() {
        for version in ["v1", "v1beta1", "v1alpha3"] {
            let path =
                format!("/apis/networking.istio.io/{version}/namespaces/ns/virtual-service/vs");
            assert_eq!(parse_config_path(&path).as_deref(), Some("ns/vs"));
        }
    }

    #[test]
    fn other_metadata_is_not_a_virtual_service() {
        assert_eq!(virtual_service(&[]), None);
        assert_eq!(
            virtual_service(&encode::metadata("envoy.lb", "config", "x")),
            None
        );
        let destination_rule = encode::metadata(
            "istio",
            "config",
            "/apis/networking.istio.io/v1/namespaces/ns/destination-rule/dr",
        );
        assert_eq!(virtual_service(&destination_rule), None);
        assert_eq!(
            parse_config_path("/apis/networking.istio.io/v1/namespaces//virtual-service/x"),
            None
        );
    }

    #[test]
    fn malformed_bytes_never_panic() {
        let good = encode::istio_route("shop", "payments");
        for cut in 0..good.len() {
            let _ = virtual_service(&good[..cut]);
        }
        let mut state = 7u64;
        for _ in 0..2000 {
            let bytes: Vec<u8> = (0..(state % 64))
                .map(|_| {
                    state = crate::steering::xorshift(state);
                    state as u8
                })
                .collect();
            let _ = virtual_service(&bytes);
        }
        assert_eq!(virtual_service(&[0xff; 12]), None);
    }
}
