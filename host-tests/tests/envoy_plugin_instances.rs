//! Envoy 1.40 identifies a wasm plugin instance by its whole plugin
//! configuration: filters whose configurations are identical share one
//! instance (one root context per VM), any difference makes separate
//! instances in the same VM (same module, same vm_id). Two listeners show
//! both: each request must follow the configuration of the filter it went
//! through, and identical configurations must share one instance.
//!
//! Needs MESHGUARD_WASM and MESHGUARD_ENVOY (`make test` sets both). Run
//! alone with `cargo test -p host-tests --test envoy_plugin_instances -- --nocapture`.

use std::net::SocketAddr;
use std::time::Duration;

use host_tests::fixture::ThreeUpstreams;
use host_tests::http;
use host_tests::Harness;

/// meshguard's test configuration plus a response header naming it.
fn config(generation: &str) -> String {
    let base = host_tests::TEST_PLUGIN_CONFIG;
    format!(
        r#"{},"headers":{{"response":[{{"op":"set","name":"x-meshguard-config","value":"{generation}"}}]}}}}"#,
        &base[..base.len() - 1]
    )
}

/// The rendered template with its listener repeated on `port`, whose
/// meshguard filter has `second` as its plugin configuration.
fn with_second_listener(
    yaml: String,
    first: &str,
    second: &str,
    port: u16,
) -> Result<String, String> {
    let start = yaml
        .find("\n  listeners:\n")
        .ok_or("envoy/demo.yaml.tmpl changed: no `  listeners:`")?
        + "\n  listeners:\n".len();
    let end = yaml
        .find("\n  clusters:\n")
        .ok_or("envoy/demo.yaml.tmpl changed: no `  clusters:`")?
        + 1;
    let listener = &yaml[start..end];
    let (name, stat) = ("- name: ingress\n", "stat_prefix: ingress\n");
    let quoted = format!("value: '{first}'");
    if !listener.contains(name) || !listener.contains(stat) || !listener.contains(&quoted) {
        return Err(
            "envoy/demo.yaml.tmpl changed: listener name, stat prefix or plugin value".into(),
        );
    }
    let port_line = regex_free_port_line(listener)?;
    let copy = listener
        .replacen(name, "- name: ingress_second\n", 1)
        .replacen(stat, "stat_prefix: ingress_second\n", 1)
        .replacen(&port_line, &format!("port_value: {port} }}"), 1)
        .replacen(&quoted, &format!("value: '{second}'"), 1);
    Ok(format!(
        "{}{listener}{copy}{}",
        &yaml[..start],
        &yaml[end..]
    ))
}

/// The listener's `port_value: N }` text.
fn regex_free_port_line(listener: &str) -> Result<String, String> {
    let at = listener
        .find("port_value: ")
        .ok_or("envoy/demo.yaml.tmpl changed: no listener port")?;
    let rest = &listener[at..];
    let close = rest
        .find('}')
        .ok_or("envoy/demo.yaml.tmpl changed: listener port")?;
    Ok(rest[..=close].to_string())
}

fn generation(addr: SocketAddr) -> String {
    let reply = http::get(addr, "/", Duration::from_secs(5)).expect("request");
    reply
        .header("x-meshguard-config")
        .unwrap_or("-")
        .to_string()
}

#[test]
fn each_listener_follows_its_own_configuration_and_identical_ones_share_an_instance() {
    for (name, second) in [
        ("envoy_plugin_instances_differ", "b"),
        ("envoy_plugin_instances_same", "a"),
    ] {
        let [port] = host_tests::envoy::free_ports::<1>().expect("a free port");
        let (first_config, second_config) = (config("a"), config(second));
        let s =
            ThreeUpstreams::start_edited(host_tests::test_paths!(), name, &first_config, |yaml| {
                with_second_listener(yaml, &first_config, &second_config, port)
            });
        let other = SocketAddr::from(([127, 0, 0, 1], port));
        // Several requests each: Envoy's two workers each hold a VM.
        let seen: Vec<(String, String)> = (0..20)
            .map(|_| (generation(s.listener()), generation(other)))
            .collect();
        s.check(
            seen.iter().all(|(a, b)| a == "a" && b == second),
            || format!("{name}: each listener's requests should carry its own configuration (a, {second}): {seen:?}"),
        );
        std::thread::sleep(Duration::from_millis(400));
        let shared = s.meshguard_lines("plugin instances in this VM");
        if second == "a" {
            s.check(shared.is_empty(), || {
                format!(
                    "{name}: identical configurations should share one instance per VM: {shared:?}"
                )
            });
        } else {
            s.check(!shared.is_empty(), || {
                format!("{name}: two configurations should make two instances in a VM, and say so")
            });
        }
    }
}
