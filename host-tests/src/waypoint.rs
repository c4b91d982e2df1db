//! An Envoy configuration shaped like an Istio ambient waypoint, built from
//! the rendered `envoy/demo.yaml.tmpl` (same ports, same meshguard filter
//! block and stats tags), for `tests/envoy_waypoint.rs`.
//!
//! What istiod builds for a waypoint in front of Service `echo.default` port
//! 80, and what is kept here:
//!
//! - the HTTP listener's routes come from VirtualServices: route names are
//!   their `http[].name`, each route carries `filter_metadata.istio.config =
//!   /apis/networking.istio.io/v1/namespaces/<ns>/virtual-service/<name>`,
//!   the virtual host is `inbound|http|80`, the route configuration and the
//!   cluster are `inbound-vip|80|http|echo.default.svc.cluster.local`;
//! - that cluster's endpoints are internal addresses
//!   `envoy_internal_address {server_listener_name: connect_originate,
//!   endpoint_id: "<pod ip>:<port>"}` with the pod address also in the
//!   endpoint metadata `envoy.filters.listener.original_dst.local`, and an
//!   `internal_upstream` transport socket that passes that metadata to the
//!   internal connection; Envoy names such a host
//!   `envoy://connect_originate/<pod ip>:<port>`;
//! - the internal listener `connect_originate` (`internal_listener: {}`,
//!   bootstrap extension `envoy.bootstrap.internal_listener`) restores the
//!   pod address with the `original_dst` listener filter and hands the
//!   connection to a `tcp_proxy` on the ORIGINAL_DST cluster
//!   `connect_originate`.
//!
//! What differs from istiod, none of which meshguard can see: the HTTP
//! listener is a plain socket listener that clients reach directly (istiod's
//! `main_internal` is itself an internal listener behind `connect_terminate`,
//! which ends the client's HBONE tunnel); the cluster is STATIC (istiod: EDS);
//! `connect_originate`'s tcp_proxy speaks plain TCP to the pod (istiod:
//! `tunneling_config`, an HBONE CONNECT over HTTP/2 and mTLS to the pod's
//! ztunnel on port 15008); the virtual host has the demo's retries
//! (previous_hosts, without conditions of their own). Steering is either the
//! demo's override_host policy on the cluster, which istiod cannot configure
//! on a waypoint, or ([`Steering::SessionHeader`]) the header-based
//! stateful_session filter before the router that
//! `istio/envoyfilter-waypoint-session.yaml` adds, over a least-request
//! cluster.

/// The cluster istiod builds for the waypoint's Service.
pub const CLUSTER: &str = "inbound-vip|80|http|echo.default.svc.cluster.local";

/// The internal listener istiod's waypoint clusters point at.
pub const CONNECT_ORIGINATE: &str = "connect_originate";

/// `upstream.address` of the pod `ip_port` behind the waypoint's tunnel, as
/// Envoy reports it (and as meshguard names the host).
pub fn host_address(ip_port: &str) -> String {
    format!("envoy://{CONNECT_ORIGINATE}/{ip_port}")
}

/// A route the waypoint's listener has: Envoy route name (the
/// VirtualService's `http[].name`), path prefix, and the VirtualService
/// (`namespace/name`) it came from.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: &'static str,
    pub prefix: &'static str,
    pub virtual_service: &'static str,
}

/// Lines from `start` (a line whose trimmed text begins with it) to the line
/// before the first one after it whose trimmed text begins with `end`.
fn section<'a>(text: &'a str, start: &str, end: &str) -> Result<Vec<&'a str>, String> {
    let mut lines = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with(start));
    let first = lines
        .next()
        .ok_or_else(|| format!("no line starting with {start:?} in the demo config"))?;
    let mut out = vec![first];
    for l in lines {
        if l.trim_start().starts_with(end) {
            return Ok(out);
        }
        out.push(l);
    }
    Err(format!("no {end:?} after {start:?} in the demo config"))
}

/// The `port_value`s of the rendered demo config, in order: admin, listener,
/// u1, u2, u3, fallback.
fn ports(demo: &str) -> Result<[u16; 6], String> {
    let found: Vec<u16> = demo
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let rest = &l[l.find("port_value: ")? + "port_value: ".len()..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect();
    found
        .try_into()
        .map_err(|v: Vec<u16>| format!("expected 6 port_values in the demo config, found {v:?}"))
}

/// The demo's balancer: `override_host` on `x-meshguard-upstream`, least
/// request otherwise.
const OVERRIDE_HOST: &str = r#"    load_balancing_policy:
      policies:
      - typed_extension_config:
          name: envoy.load_balancing_policies.override_host
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost
            override_host_sources:
            - header: x-meshguard-upstream
            fallback_policy:
              policies:
              - typed_extension_config:
                  name: envoy.load_balancing_policies.least_request
                  typed_config:
                    "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest
"#;

/// How the waypoint honours the header meshguard writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steering {
    /// The demo's: the `override_host` policy on the cluster reads
    /// `x-meshguard-upstream` (plain encoding). istiod cannot give a
    /// waypoint's clusters that policy.
    OverrideHost,
    /// What docs/ambient.md has operators add
    /// (`istio/envoyfilter-waypoint-session.yaml`): a header-based
    /// `stateful_session` filter just before the router, reading this header
    /// (meshguard's base64 encoding), over the least-request balancer
    /// istiod gives `inbound-vip` clusters.
    SessionHeader(&'static str),
}

/// The waypoint-shaped configuration for the rendered demo config `demo`
/// (as [`crate::fixture::ThreeUpstreams::start_edited`] hands it over): the
/// same admin and listener ports, meshguard filter block and stats tags; the
/// demo's three upstreams become the pods behind the tunnel, the `fallback`
/// cluster and route stay as they are. Steering through the demo's
/// `override_host` policy.
pub fn from_demo(demo: &str, routes: &[Route]) -> Result<String, String> {
    from_demo_with(demo, routes, Steering::OverrideHost)
}

/// [`from_demo`] with the steering setup `steering`.
pub fn from_demo_with(demo: &str, routes: &[Route], steering: Steering) -> Result<String, String> {
    let [admin, listen, u1, u2, u3, fallback] = ports(demo)?;
    let stats = section(demo, "stats_config:", "static_resources:")?.join("\n");
    let meshguard = section(demo, "# BEGIN meshguard", "# END meshguard")?.join("\n");
    let mut route_yaml = String::new();
    for r in routes {
        route_yaml.push_str(&format!(
            r#"              - name: {name}
                match: {{ prefix: "{prefix}" }}
                route: {{ cluster: "{CLUSTER}", timeout: 0s }}
                metadata:
                  filter_metadata:
                    istio: {{ config: "/apis/networking.istio.io/v1/namespaces/{ns}/virtual-service/{vs}" }}
"#,
            name = r.name,
            prefix = r.prefix,
            ns = r.virtual_service.split('/').next().unwrap_or(""),
            vs = r.virtual_service.split('/').nth(1).unwrap_or(""),
        ));
    }
    let mut endpoints = String::new();
    for port in [u1, u2, u3] {
        let pod = format!("127.0.0.1:{port}");
        endpoints.push_str(&format!(
            r#"        - endpoint:
            address:
              envoy_internal_address: {{ server_listener_name: {CONNECT_ORIGINATE}, endpoint_id: "{pod}" }}
          metadata:
            filter_metadata:
              envoy.filters.listener.original_dst: {{ local: "{pod}" }}
"#
        ));
    }
    let (balancer, session) = match steering {
        Steering::OverrideHost => (OVERRIDE_HOST.to_string(), String::new()),
        Steering::SessionHeader(header) => (
            "    lb_policy: LEAST_REQUEST\n".to_string(),
            format!(
                r#"          - name: envoy.filters.http.stateful_session
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSession
              session_state:
                name: envoy.http.stateful_session.header
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.http.stateful_session.header.v3.HeaderBasedSessionState
                  name: {header}
"#
            ),
        ),
    };
    Ok(format!(
        r#"# meshguard in an Envoy shaped like an Istio ambient waypoint
# (generated by host-tests/src/waypoint.rs from envoy/demo.yaml.tmpl).
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}

bootstrap_extensions:
- name: envoy.bootstrap.internal_listener
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener

{stats}
static_resources:
  listeners:
  - name: main
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {listen} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: main
          access_log:
          - name: envoy.access_loggers.stderr
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog
              log_format:
                text_format_source:
                  inline_string: "access %START_TIME% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_HOST% %RESPONSE_CODE_DETAILS% %ROUTE_NAME% %UPSTREAM_CLUSTER%\n"
          codec_type: AUTO
          use_remote_address: true
          generate_request_id: false
          early_header_mutation_extensions:
          - name: envoy.http.early_header_mutation.header_mutation
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation
              mutations:
              - remove: x-meshguard-fallback
          route_config:
            name: "{CLUSTER}"
            virtual_hosts:
            - name: "inbound|http|80"
              domains: ["*"]
              retry_policy:
                num_retries: 1
                retry_host_predicate:
                - name: envoy.retry_host_predicates.previous_hosts
                  typed_config:
                    "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate
                host_selection_retry_max_attempts: 5
              routes:
              - name: fallback
                match:
                  prefix: "/"
                  headers: [{{ name: x-meshguard-fallback, present_match: true }}]
                route: {{ cluster: fallback }}
{route_yaml}              - name: default
                match: {{ prefix: "/" }}
                route: {{ cluster: "{CLUSTER}", timeout: 0s }}
          http_filters:
{meshguard}
{session}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  - name: {CONNECT_ORIGINATE}
    internal_listener: {{}}
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {CONNECT_ORIGINATE}
          cluster: {CONNECT_ORIGINATE}

  clusters:
  - name: "{CLUSTER}"
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: "{CLUSTER}"
      endpoints:
      - lb_endpoints:
{endpoints}    transport_socket:
      name: envoy.transport_sockets.internal_upstream
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport
        passthrough_metadata:
        - kind: {{ host: {{}} }}
          name: envoy.filters.listener.original_dst
        transport_socket:
          name: envoy.transport_sockets.raw_buffer
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http_protocol_options: {{}}
        http_filters:
        - name: envoy.filters.http.header_mutation
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
            mutations:
              request_mutations:
              - remove: x-meshguard-upstream
        - name: envoy.filters.http.upstream_codec
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec
{balancer}  - name: {CONNECT_ORIGINATE}
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s
  - name: fallback
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: fallback
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {fallback} }} }} }}
"#
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envoy::{render, TemplateVars, WasmPlugin, TEMPLATE};

    #[test]
    fn keeps_the_demo_ports_and_filter_block() {
        let demo = render(
            TEMPLATE,
            &TemplateVars {
                admin_port: 1,
                listen_port: 2,
                upstream_ports: [11, 12, 13],
                fallback_port: Some(14),
                wasm: Some(WasmPlugin {
                    wasm_path: "/x/meshguard.wasm".into(),
                    config: "{}".into(),
                }),
            },
        )
        .expect("render");
        let routes = [Route {
            name: "strict",
            prefix: "/strict",
            virtual_service: "default/echo-strict",
        }];
        let w = from_demo(&demo, &routes).expect("waypoint");
        assert!(w.contains("port_value: 1 }"), "{w}");
        assert!(w.contains("port_value: 2 }"), "{w}");
        assert!(w.contains("port_value: 14 }"), "{w}");
        assert!(w.contains(r#"endpoint_id: "127.0.0.1:12""#), "{w}");
        assert!(w.contains("/x/meshguard.wasm"), "{w}");
        assert!(w.contains("meshguard_host"), "{w}");
        assert!(
            w.contains(
                "/apis/networking.istio.io/v1/namespaces/default/virtual-service/echo-strict"
            ),
            "{w}"
        );
        assert!(w.contains("override_host_sources"), "{w}");
        assert!(!w.contains("stateful_session"), "{w}");
        let session =
            from_demo_with(&demo, &routes, Steering::SessionHeader("x-s")).expect("waypoint");
        let (filter, router) = (
            session
                .find("envoy.filters.http.stateful_session")
                .expect("session filter"),
            session
                .find("- name: envoy.filters.http.router")
                .expect("router"),
        );
        assert!(session.find("envoy.filters.http.wasm").expect("meshguard") < filter);
        assert!(filter < router, "{session}");
        assert!(session.contains("name: x-s\n"), "{session}");
        assert!(session.contains("lb_policy: LEAST_REQUEST"), "{session}");
        assert!(!session.contains("override_host"), "{session}");
        assert_eq!(
            host_address("10.1.2.3:8080"),
            "envoy://connect_originate/10.1.2.3:8080"
        );
    }
}
