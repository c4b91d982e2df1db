//! The wasmtime host against the built module: every import is served,
//! the lifecycle and ABI details work end to end (memory-allocation
//! protocol, header maps, properties, shared data across VMs, ticks), and
//! host errors reach the plugin as statuses, never as traps.

use std::time::Duration;

use host_tests::wasm_host::abi::MapType;
use host_tests::wasm_host::imports::{is_linked, Call};
use host_tests::wasm_host::{Exchange, PluginModule, Proxy, ProxyOptions, Status, VmOptions};

const B: &str = "10.0.0.2:80";
const STEER: &str = "x-meshguard-upstream";
const CONFIG: &str = r#"{"circuitBreaker":{"enabled":false}}"#;

#[test]
fn every_import_of_the_module_is_served() {
    let module = PluginModule::from_env();
    let imports = module.imports();
    println!("{} imports: {imports:?}", imports.len());
    let missing: Vec<_> = imports.iter().filter(|(m, n)| !is_linked(m, n)).collect();
    assert!(
        missing.is_empty(),
        "imports answered only by the Unimplemented stub: {missing:?}"
    );
    for used in [
        "proxy_get_property",
        "proxy_get_header_map_value",
        "proxy_set_shared_data",
        "proxy_send_local_response",
    ] {
        assert!(
            imports.iter().any(|(m, n)| m == "env" && n == used),
            "{used}"
        );
    }
}

/// Envoy enters the VM only for callbacks the module exports, and each
/// entry costs about as much as the filter's own work on the healthy path:
/// the module exports what it uses and nothing else.
#[test]
fn only_the_callbacks_meshguard_uses_are_exported() {
    let module = PluginModule::from_env();
    let exports = module.exported_functions();
    for needed in [
        "_initialize",
        "proxy_abi_version_0_2_1",
        "proxy_on_memory_allocate",
        "proxy_on_vm_start",
        "proxy_on_configure",
        "proxy_on_tick",
        "proxy_on_request_headers",
        "proxy_on_response_headers",
        "proxy_on_response_trailers",
        // Only to see a response reach its end: one cut off after its
        // headers failed (see classify::needs_flags).
        "proxy_on_response_body",
        // Requests and an upstream instance's attempts (never logged) end
        // here; so do plugin instances Envoy shuts down.
        "proxy_on_done",
        // Names each request's plugin instance: a configuration applied
        // again while the old listener drains shares a live one.
        "proxy_on_context_create",
    ] {
        assert!(
            exports.iter().any(|e| e == needed),
            "{needed} missing: {exports:?}"
        );
    }
    for skipped in [
        // Outcomes are recorded at done: the log would be one more entry.
        "proxy_on_log",
        "proxy_on_request_body",
        "proxy_on_request_trailers",
        "proxy_on_delete",
    ] {
        assert!(!exports.iter().any(|e| e == skipped), "{skipped} exported");
    }
}

#[test]
fn lifecycle_sets_the_tick_and_reads_the_plugin_name() {
    let module = PluginModule::from_env();
    let options = ProxyOptions {
        workers: 3,
        plugin_configuration: CONFIG.as_bytes().to_vec(),
        vm: VmOptions {
            plugin_name: "ns.custom-plugin".to_string(),
            ..VmOptions::default()
        },
        ..ProxyOptions::default()
    };
    let mut proxy = Proxy::with_options(&module, options).unwrap();
    assert_eq!(
        (proxy.started.clone(), proxy.configured.clone()),
        (vec![true; 3], vec![true; 3])
    );
    for vm in 0..3 {
        assert_eq!(proxy.vm(vm).state().tick_period_ms, 100, "vm{vm}");
    }
    proxy.exchange(0, &Exchange::new("demo", B, 503)).unwrap();
    // Shared-data keys are prefixed with the plugin's name (Istio leaves
    // vm_id empty, so plugins would collide otherwise).
    let keys = proxy.lock().data_keys();
    assert!(!keys.is_empty());
    for key in &keys {
        assert!(
            key.starts_with(b"ns.custom-plugin"),
            "{:?}",
            String::from_utf8_lossy(key)
        );
    }
}

/// B fails on VM 0 and is ejected there; VM 1 learns it on its next tick
/// and steers its requests to the other hosts through the header (set by
/// `proxy_replace_header_map_value`, in memory the host allocated through
/// `proxy_on_memory_allocate`).
#[test]
fn a_grade_reaches_the_other_vm_on_its_tick_and_steers() {
    let module = PluginModule::from_env();
    let mut proxy = Proxy::new(&module, 2, CONFIG).unwrap();
    for host in ["10.0.0.1:80", B, "10.0.0.3:80"] {
        for vm in 0..2 {
            proxy
                .exchange(vm, &Exchange::new("demo", host, 200))
                .unwrap();
        }
    }
    proxy.advance(Duration::from_millis(100)).unwrap();
    for _ in 0..5 {
        proxy.exchange(0, &Exchange::new("demo", B, 503)).unwrap();
    }
    assert_eq!(proxy.log_lines("Healthy -> Unhealthy").len(), 1);
    // VM 1 has not ticked yet: it does not steer.
    let before = proxy
        .exchange(1, &Exchange::new("demo", "10.0.0.1:80", 200))
        .unwrap();
    assert_eq!(before.header(MapType::RequestHeaders, STEER), None);
    proxy.advance(Duration::from_millis(100)).unwrap();
    let mut chosen = Vec::new();
    for _ in 0..10 {
        let stream = proxy
            .exchange(1, &Exchange::new("demo", "10.0.0.1:80", 200))
            .unwrap();
        let value = stream
            .header(MapType::RequestHeaders, STEER)
            .expect("steered")
            .to_vec();
        // The host (and, while retries hide failures, hosts for its
        // retries: override_host takes a list); never the ejected one.
        let value = String::from_utf8(value).unwrap();
        let named: Vec<&str> = value.split(',').collect();
        assert!(named.iter().all(|h| *h != B), "{value}");
        chosen.push(named[0].to_string());
        // Clients never see the steering header.
        assert_eq!(stream.header(MapType::ResponseHeaders, STEER), None);
    }
    assert!(
        chosen.iter().any(|h| h == "10.0.0.1:80") && chosen.iter().any(|h| h == "10.0.0.3:80"),
        "{chosen:?}"
    );
}

#[test]
fn a_client_cannot_pick_the_host_through_the_steering_header() {
    let module = PluginModule::from_env();
    // Asked to, the filter removes every copy a client sent.
    let strip = r#"{"steering": {"stripClientHeader": true}}"#;
    let mut proxy = Proxy::new(&module, 1, strip).unwrap();
    let mut sent = Exchange::new("demo", B, 200)
        .header(STEER, "10.6.6.6:80")
        .header(STEER, "10.7.7.7:80");
    // An upstream's header of that name does not reach the client either.
    sent.response_headers
        .push((STEER.as_bytes().to_vec(), b"10.0.0.9:80".to_vec()));
    let stream = proxy.exchange(0, &sent).unwrap();
    assert_eq!(
        stream.header(MapType::RequestHeaders, STEER),
        None,
        "every copy removed"
    );
    assert_eq!(stream.header(MapType::ResponseHeaders, STEER), None);
    assert_eq!(
        proxy
            .vm(0)
            .state()
            .calls
            .get("proxy_remove_header_map_value"),
        2,
        "one removal from the request, one from the response"
    );
    // By default that is left to an Envoy filter ahead of meshguard (as in
    // envoy/demo.yaml.tmpl), which costs the filter nothing.
    let mut proxy = Proxy::new(&module, 1, CONFIG).unwrap();
    proxy.exchange(0, &sent).unwrap();
    assert_eq!(
        proxy
            .vm(0)
            .state()
            .calls
            .get("proxy_remove_header_map_value"),
        0
    );
}

/// Host errors on the calls the plugin makes are statuses it handles:
/// a failing property read means "unknown", a failing shared-data call
/// means "not written yet", and nothing traps.
#[test]
fn host_errors_are_handled_not_trapped() {
    let module = PluginModule::from_env();
    for call in [
        Call::GetProperty,
        Call::GetSharedData,
        Call::SetSharedData,
        Call::GetCurrentTime,
        Call::ReplaceHeaderMapValue,
    ] {
        for status in [
            Status::InternalFailure,
            Status::BadArgument,
            Status::CasMismatch,
        ] {
            let mut proxy = Proxy::new(&module, 2, CONFIG).unwrap();
            proxy.vm_mut(0).inject_fault(call, status);
            proxy.vm_mut(1).inject_fault(call, status);
            for i in 0..20u64 {
                let host = ["10.0.0.1:80", B][i as usize % 2];
                proxy
                    .exchange((i % 2) as usize, &Exchange::new("demo", host, 503))
                    .unwrap();
                proxy.advance(Duration::from_millis(50)).unwrap();
            }
            if call == Call::GetProperty {
                assert!(proxy.log_lines("->").is_empty(), "no facts, no grading");
            }
            for vm in 0..2 {
                assert_eq!(proxy.vm(vm).failure(), None, "{call:?} {status:?}");
            }
        }
    }
}

#[test]
fn streams_in_any_envoy_order_complete() {
    let module = PluginModule::from_env();
    let mut proxy = Proxy::new(&module, 1, CONFIG).unwrap();
    // Reset before any response: request headers, then log/done/delete.
    let mut stream = proxy.http(0).unwrap();
    stream
        .property("upstream.address", host_tests::wasm_host::Answer::string(B))
        .property("response.flags", host_tests::wasm_host::Answer::int(0x10))
        .property(
            "xds.cluster_name",
            host_tests::wasm_host::Answer::string("demo"),
        );
    stream
        .request_headers(host_tests::wasm_host::headers(&[(":path", "/")]), true)
        .unwrap();
    stream.finish().unwrap();
    // A local reply from an earlier filter: response without request.
    let mut stream = proxy.http(0).unwrap();
    stream
        .response_headers(host_tests::wasm_host::headers(&[(":status", "403")]), true)
        .unwrap();
    stream.finish().unwrap();
    // Log without anything else (the client went away at once).
    let stream = proxy.http(0).unwrap();
    stream.finish().unwrap();
    assert_eq!(proxy.vm(0).failure(), None);
    assert!(
        proxy.vm(0).state().streams.is_empty(),
        "every context deleted"
    );
}
