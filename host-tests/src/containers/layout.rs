//! The Envoy configuration of a testbed, rendered from the shared template
//! `envoy/demo.yaml.tmpl` by [`envoy::render`] (the renderer of the
//! process fixture, the bench and the demo) and then adapted:
//!
//! - admin and listener bind to [`Layout::bind_ip`] (0.0.0.0 in a container,
//!   so the test can reach them on the container's network address);
//! - the template's three endpoints become [`Layout::endpoints`] (any number);
//! - with [`Layout::lds_path`], the listener moves out of `static_resources`
//!   into a file Envoy watches (`dynamic_resources.lds_config.
//!   path_config_source`): rewriting that file (write a temporary file, then
//!   rename it over the old one) updates the listener, and with it
//!   meshguard's configuration, without a restart.

use std::net::{IpAddr, SocketAddr};

use crate::envoy;

/// Placeholder upstream ports the template is rendered with before its
/// endpoint lines are replaced. Outside Linux's ephemeral port range, so they
/// cannot collide with the admin and listener ports.
const SENTINEL_PORTS: [u16; 3] = [61001, 61002, 61003];

const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";

/// Where everything is, as Envoy sees it.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Address admin and the listener bind to.
    pub bind_ip: IpAddr,
    pub admin_port: u16,
    pub listen_port: u16,
    /// The cluster's hosts, in order (u1, u2, ...).
    pub endpoints: Vec<SocketAddr>,
    /// The module's path inside Envoy's file system.
    pub wasm_path: String,
    /// meshguard's JSON configuration.
    pub plugin_config: String,
    /// Serve the listener from this file (Envoy's path) instead of statically.
    pub lds_path: Option<String>,
}

/// The rendered files.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// Envoy's bootstrap (`-c`).
    pub bootstrap: String,
    /// The listener file for `lds_path` (a `DiscoveryResponse` in YAML).
    pub listener: Option<String>,
}

/// Renders the bootstrap (and listener file) for `layout`.
pub fn render(layout: &Layout) -> Result<Rendered, String> {
    if layout.endpoints.is_empty() {
        return Err("a testbed needs at least one upstream".into());
    }
    let base = substitute(envoy::TEMPLATE, layout)?;
    let mut text = base;
    for port in [layout.admin_port, layout.listen_port] {
        text = replace_once(
            &text,
            &format!("{{ address: 127.0.0.1, port_value: {port} }}"),
            &format!("{{ address: {}, port_value: {port} }}", layout.bind_ip),
        )?;
    }
    let mut text = replace_endpoints(&text, &layout.endpoints)?;
    // Other clusters on u3's port (the breaker's `fallback` cluster) get the
    // last upstream, as in the shell renderer.
    let fallback = format!("address: 127.0.0.1, port_value: {} }}", SENTINEL_PORTS[2]);
    if let Some(last) = layout.endpoints.last() {
        text = text.replace(
            &fallback,
            &format!("address: {}, port_value: {} }}", last.ip(), last.port()),
        );
    }
    if !layout.bind_ip.is_loopback() {
        if let Some(l) = text
            .lines()
            .find(|l| !l.trim_start().starts_with('#') && l.contains("127.0.0.1"))
        {
            return Err(format!(
                "envoy/demo.yaml.tmpl changed: a loopback address the harness does not adapt: {}",
                l.trim()
            ));
        }
    }
    match &layout.lds_path {
        None => Ok(Rendered {
            bootstrap: text,
            listener: None,
        }),
        Some(path) => {
            let (bootstrap, listener) = split_listener(&text, path)?;
            Ok(Rendered {
                bootstrap,
                listener: Some(listener),
            })
        }
    }
}

/// The template rendered by the one renderer, [`envoy::render`], with the
/// module and configuration of `layout`. Upstream ports are placeholders
/// until [`replace_endpoints`].
fn substitute(template: &str, layout: &Layout) -> Result<String, String> {
    let vars = envoy::TemplateVars {
        admin_port: layout.admin_port,
        listen_port: layout.listen_port,
        upstream_ports: SENTINEL_PORTS,
        fallback_port: None,
        wasm: Some(envoy::WasmPlugin {
            wasm_path: layout.wasm_path.clone().into(),
            config: layout.plugin_config.clone(),
        }),
    };
    envoy::render(template, &vars)
}

fn replace_once(text: &str, from: &str, to: &str) -> Result<String, String> {
    match text.matches(from).count() {
        1 => Ok(text.replacen(from, to, 1)),
        n => Err(format!(
            "envoy/demo.yaml.tmpl changed: expected `{from}` once, found it {n} times"
        )),
    }
}

/// Replaces the template's three endpoint lines with one per address.
fn replace_endpoints(text: &str, endpoints: &[SocketAddr]) -> Result<String, String> {
    let lines: Vec<&str> = text.lines().collect();
    let marker = |p: u16| format!("address: 127.0.0.1, port_value: {p} }}");
    let idx: Vec<usize> = SENTINEL_PORTS
        .iter()
        .map(|p| {
            let m = marker(*p);
            lines.iter().position(|l| l.contains(&m)).ok_or_else(|| {
                format!("envoy/demo.yaml.tmpl changed: no endpoint line with port {p}")
            })
        })
        .collect::<Result<_, _>>()?;
    if idx[1] != idx[0] + 1 || idx[2] != idx[0] + 2 {
        return Err(
            "envoy/demo.yaml.tmpl changed: the three endpoint lines are not adjacent".into(),
        );
    }
    let pattern = lines[idx[0]];
    let from = marker(SENTINEL_PORTS[0]);
    let mut out: Vec<String> = lines[..idx[0]].iter().map(|l| l.to_string()).collect();
    for ep in endpoints {
        let to = format!("address: {}, port_value: {} }}", ep.ip(), ep.port());
        out.push(pattern.replace(&from, &to));
    }
    out.extend(lines[idx[2] + 1..].iter().map(|l| l.to_string()));
    Ok(out.join("\n") + "\n")
}

/// Moves `static_resources.listeners` into a listener file served through
/// `path_config_source` at `lds_path`.
fn split_listener(text: &str, lds_path: &str) -> Result<(String, String), String> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| *l == "  listeners:")
        .ok_or("envoy/demo.yaml.tmpl changed: no `  listeners:` under static_resources")?;
    let end = lines[start + 1..]
        .iter()
        .position(|l| {
            l.starts_with("  ")
                && !l.starts_with("   ")
                && !l.trim_start().starts_with('#')
                && !l.starts_with("  -")
        })
        .map(|i| start + 1 + i)
        .ok_or("envoy/demo.yaml.tmpl changed: nothing after the listeners")?;
    let mut listener = String::from("resources:\n");
    let mut first = true;
    for l in &lines[start + 1..end] {
        let l = l.strip_prefix("  ").unwrap_or(l);
        if first && l.starts_with("- ") {
            listener.push_str(&format!("- \"@type\": {LISTENER_TYPE}\n  {}\n", &l[2..]));
            first = false;
        } else {
            listener.push_str(l);
            listener.push('\n');
        }
    }
    if first {
        return Err("envoy/demo.yaml.tmpl changed: no listener entry".into());
    }
    let mut bootstrap: Vec<String> = lines[..start].iter().map(|l| l.to_string()).collect();
    bootstrap.extend(lines[end..].iter().map(|l| l.to_string()));
    let mut bootstrap = bootstrap.join("\n");
    bootstrap.push_str(&format!(
        "\n# Added by the harness: the listener (and with it meshguard's configuration)\n\
         # comes from a file Envoy watches; replace the file by renaming a new one over it.\n\
         node: {{ id: meshguard-testbed, cluster: meshguard-testbed }}\n\
         dynamic_resources:\n  lds_config:\n    resource_api_version: V3\n    path_config_source:\n      path: {lds_path}\n"
    ));
    Ok((bootstrap, listener))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(lds: bool) -> Layout {
        Layout {
            bind_ip: "0.0.0.0".parse().expect("ip"),
            admin_port: 9901,
            listen_port: 10000,
            endpoints: vec![
                "172.18.0.2:8080".parse().expect("addr"),
                "172.18.0.3:8080".parse().expect("addr"),
                "172.18.0.4:8080".parse().expect("addr"),
                "172.18.0.5:8080".parse().expect("addr"),
            ],
            wasm_path: "/etc/meshguard/meshguard.wasm".into(),
            plugin_config: "{}".into(),
            lds_path: lds.then(|| "/etc/meshguard/lds/listener.yaml".to_string()),
        }
    }

    #[test]
    fn adapts_addresses_and_endpoints() {
        let r = render(&layout(false)).expect("render");
        assert!(r.listener.is_none());
        let b = &r.bootstrap;
        assert!(b.contains("{ address: 0.0.0.0, port_value: 9901 }"), "{b}");
        assert!(b.contains("{ address: 0.0.0.0, port_value: 10000 }"), "{b}");
        for ip in 2..=5 {
            assert!(
                b.contains(&format!("address: 172.18.0.{ip}, port_value: 8080 }}")),
                "{b}"
            );
        }
        assert!(!b.contains("6100"), "{b}");
    }

    #[test]
    fn moves_the_listener_into_its_own_file() {
        let r = render(&layout(true)).expect("render");
        let listener = r.listener.expect("listener file");
        assert!(listener.starts_with("resources:\n- \"@type\": type.googleapis.com/envoy.config.listener.v3.Listener\n  name: ingress\n"), "{listener}");
        assert!(listener.contains("envoy.filters.http.wasm"));
        assert!(
            !r.bootstrap.contains("envoy.filters.http.wasm"),
            "{}",
            r.bootstrap
        );
        assert!(r
            .bootstrap
            .contains("path: /etc/meshguard/lds/listener.yaml"));
        assert!(r.bootstrap.contains("\n  clusters:\n"));
    }
}
