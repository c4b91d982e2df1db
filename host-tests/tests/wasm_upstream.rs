//! The module as an upstream instance (`mode: upstream`, an upstream HTTP
//! filter: one stream per attempt) in the wasmtime host: each attempt is
//! recorded when its stream is done, whether or not the host also logs it,
//! answered or not, into the records every VM shares; it never steers.

use std::time::Duration;

use host_tests::wasm_host::abi::MapType;
use host_tests::wasm_host::{Exchange, PluginModule, Proxy};

const A: &str = "10.0.0.1:80";
const B: &str = "10.0.0.2:80";
const C: &str = "10.0.0.3:80";
const STEER: &str = "x-meshguard-upstream";
const UPSTREAM: &str = r#"{"mode":"upstream","detection":{"consecutive5xxErrors":5}}"#;

fn warm(proxy: &mut Proxy, vms: usize) {
    for host in [A, B, C] {
        for vm in 0..vms {
            proxy
                .exchange(vm, &Exchange::new("demo", host, 200))
                .unwrap();
        }
    }
    proxy.advance(Duration::from_millis(100)).unwrap();
}

#[test]
fn failed_attempts_eject_their_host_and_nothing_is_steered() {
    let module = PluginModule::from_env();
    let mut proxy = Proxy::new(&module, 2, UPSTREAM).unwrap();
    warm(&mut proxy, 2);
    for _ in 0..4 {
        proxy.exchange(0, &Exchange::new("demo", B, 503)).unwrap();
    }
    assert!(proxy.log_lines("-> Unhealthy").is_empty());
    proxy.exchange(0, &Exchange::new("demo", B, 503)).unwrap();
    let lines = proxy.log_lines("Healthy -> Unhealthy");
    assert_eq!(lines.len(), 1, "{:?}", proxy.logs());
    assert!(lines[0].contains(B), "{lines:?}");
    // The other VM learns it on its tick; an upstream instance never writes
    // the steering header (the attempt's host is chosen already).
    proxy.advance(Duration::from_millis(200)).unwrap();
    for vm in 0..2 {
        let stream = proxy.exchange(vm, &Exchange::new("demo", A, 200)).unwrap();
        assert_eq!(stream.header(MapType::RequestHeaders, STEER), None);
    }
}

#[test]
fn attempts_without_an_answer_count_as_connect_failures() {
    let module = PluginModule::from_env();
    let mut proxy = Proxy::new(&module, 1, UPSTREAM).unwrap();
    warm(&mut proxy, 1);
    // No response headers at all: the connection never came up.
    for _ in 0..5 {
        proxy.exchange(0, &Exchange::new("demo", C, 0)).unwrap();
    }
    let lines = proxy.log_lines("Healthy -> Unhealthy");
    assert_eq!(lines.len(), 1, "{:?}", proxy.logs());
    assert!(lines[0].contains(C), "{lines:?}");
}
