//! meshguard's Istio manifests (`istio/*.yaml`) as data, and an Envoy
//! configuration generated from them the way istiod builds a client sidecar:
//!
//! - the WasmPlugin becomes an `envoy.filters.http.wasm` filter whose
//!   PluginConfig is named `<namespace>.<name>`, with `root_id` =
//!   `pluginName`, the `pluginConfig` as a JSON string (numbers as doubles,
//!   as Istio's `Struct` hands them over), runtime v8, an empty `vm_id`, and
//!   the failure policy from `failStrategy`;
//! - each VirtualService host becomes a virtual host `<fqdn>:<port>`, each
//!   `http[]` entry a route named `http[].name`, carrying
//!   `filter_metadata.istio.config =
//!   /apis/networking.istio.io/v1/namespaces/<ns>/virtual-service/<name>`
//!   and routed to the cluster `outbound|<port>||<fqdn>`;
//! - a Service labelled `istio.io/persistent-session-header: <name>` gives
//!   its virtual host a per-route `envoy.filters.http.stateful_session`
//!   config with header-based session state, behind an HCM-level
//!   stateful_session filter placed after the wasm filter and before the
//!   router (what istiod does with PILOT_ENABLE_PERSISTENT_SESSION_FILTER);
//! - the DestinationRule sets the cluster's load balancer, outlier detection
//!   and pending-request limit. Endpoints are STATIC (istiod uses EDS) and
//!   point at local mg-upstream processes.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::envoy::EnvoyProcess;
use crate::http;
use crate::process::ChildGuard;

/// The workspace root (`host-tests/..`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host-tests has a parent")
        .to_path_buf()
}

/// `istio/` in the workspace.
pub fn istio_dir() -> PathBuf {
    workspace_root().join("istio")
}

/// The CRD files the manifests are validated against, one CRD each.
pub const CRD_FILES: [&str; 5] = [
    "wasmplugins.yaml",
    "trafficextensions.yaml",
    "virtualservices.yaml",
    "destinationrules.yaml",
    "envoyfilters.yaml",
];

/// Where each of [`CRD_FILES`] is read from: `MESHGUARD_ISTIO_CRDS` (another
/// Istio release's CRDs, see istio/crds/README.md) where it has the file,
/// else the copy kept in `istio/crds/`. Err names the missing file, where
/// it was looked for and where it comes from.
pub fn crd_files() -> Result<Vec<PathBuf>, String> {
    let kept = istio_dir().join("crds");
    let chosen = std::env::var_os("MESHGUARD_ISTIO_CRDS")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    if let Some(dir) = &chosen {
        if !dir.is_dir() {
            return Err(format!(
                "MESHGUARD_ISTIO_CRDS is {}, which is not a directory: point it at a directory \
                 of Istio CRDs, one per file ({}), or unset it to use istio/crds/",
                dir.display(),
                CRD_FILES.join(", ")
            ));
        }
    }
    CRD_FILES
        .iter()
        .map(|name| {
            let file = chosen
                .as_ref()
                .map(|dir| dir.join(name))
                .filter(|f| f.is_file())
                .unwrap_or_else(|| kept.join(name));
            if file.is_file() {
                Ok(file)
            } else {
                Err(format!(
                    "Istio CRD {name} is missing from {}: it is kept in the repository \
                     (istio/crds/, from istio/api kubernetes/customresourcedefinitions.gen.yaml, \
                     one CRD per file; see istio/crds/README.md). Restore it with git, or set \
                     MESHGUARD_ISTIO_CRDS to a directory holding {name}.",
                    kept.display()
                ))
            }
        })
        .collect()
}

/// Every YAML document of a file, as JSON values.
pub fn yaml_documents(path: &Path) -> Result<Vec<Value>, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).map_err(|e| format!("{}: {e}", path.display())))
        .filter(|d| !matches!(d, Ok(Value::Null)))
        .collect()
}

/// One Kubernetes object from `istio/`.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// File name inside `istio/`.
    pub file: String,
    pub doc: Value,
}

impl Manifest {
    pub fn kind(&self) -> &str {
        self.doc["kind"].as_str().unwrap_or("")
    }
    pub fn api_version(&self) -> &str {
        self.doc["apiVersion"].as_str().unwrap_or("")
    }
    pub fn name(&self) -> &str {
        self.doc["metadata"]["name"].as_str().unwrap_or("")
    }
    pub fn namespace(&self) -> &str {
        self.doc["metadata"]["namespace"].as_str().unwrap_or("")
    }
    pub fn spec(&self) -> &Value {
        &self.doc["spec"]
    }
    /// `file: Kind namespace/name`, for messages.
    pub fn label(&self) -> String {
        format!(
            "{}: {} {}/{}",
            self.file,
            self.kind(),
            self.namespace(),
            self.name()
        )
    }
}

/// Every object in `istio/*.yaml` (not the Grafana dashboard or the JSON
/// schema), sorted by file.
pub fn load_manifests() -> Result<Vec<Manifest>, String> {
    let mut files: Vec<PathBuf> = fs::read_dir(istio_dir())
        .map_err(|e| format!("{}: {e}", istio_dir().display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let file = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for doc in yaml_documents(&f)? {
            out.push(Manifest {
                file: file.clone(),
                doc,
            });
        }
    }
    Ok(out)
}

/// The manifests of one kind.
pub fn of_kind<'a>(all: &'a [Manifest], kind: &str) -> Vec<&'a Manifest> {
    all.iter().filter(|m| m.kind() == kind).collect()
}

/// The `pluginConfig` of a WasmPlugin (`spec.pluginConfig`) or a
/// TrafficExtension (`spec.wasm.pluginConfig`); Null if none.
pub fn plugin_config(plugin: &Manifest) -> &Value {
    match plugin.kind() {
        "TrafficExtension" => &plugin.spec()["wasm"]["pluginConfig"],
        _ => &plugin.spec()["pluginConfig"],
    }
}

/// The WasmPlugin that runs in the client sidecars: the one without
/// `targetRefs` (`istio/wasmplugin.yaml`). The others in `istio/` target a
/// waypoint and are alternatives of the same name.
pub fn sidecar_plugin(all: &[Manifest]) -> Result<&Manifest, String> {
    let plugins: Vec<&Manifest> = of_kind(all, "WasmPlugin")
        .into_iter()
        .filter(|p| p.spec()["targetRefs"].is_null() && p.spec()["targetRef"].is_null())
        .collect();
    match plugins.as_slice() {
        [plugin] => Ok(plugin),
        other => Err(format!(
            "expected one sidecar WasmPlugin (without targetRefs), found {}",
            other.len()
        )),
    }
}

/// A WasmPlugin's or TrafficExtension's `pluginConfig` as Envoy receives it
/// from Istio: JSON text of a protobuf `Struct`, where every number is a
/// double.
pub fn plugin_config_json(wasm_plugin: &Manifest) -> String {
    fn as_struct(v: &Value) -> Value {
        match v {
            Value::Number(n) => n
                .as_f64()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            Value::Array(a) => Value::Array(a.iter().map(as_struct).collect()),
            Value::Object(m) => {
                Value::Object(m.iter().map(|(k, v)| (k.clone(), as_struct(v))).collect())
            }
            other => other.clone(),
        }
    }
    let config = plugin_config(wasm_plugin);
    if config.is_null() {
        return String::new();
    }
    as_struct(config).to_string()
}

/// Envoy's `failure_policy` for a WasmPlugin `failStrategy` (Istio's default
/// is FAIL_CLOSE).
pub fn failure_policy(fail_strategy: Option<&str>) -> &'static str {
    match fail_strategy {
        Some("FAIL_OPEN") => "FAIL_OPEN",
        Some("FAIL_RELOAD") => "FAIL_RELOAD",
        _ => "FAIL_CLOSED",
    }
}

/// `reviews.shop.svc.cluster.local` for a short or namespaced host.
pub fn fqdn(host: &str, namespace: &str) -> String {
    match host.matches('.').count() {
        0 => format!("{host}.{namespace}.svc.cluster.local"),
        1 => format!("{host}.svc.cluster.local"),
        _ => host.to_string(),
    }
}

/// Istio's outbound cluster name.
pub fn cluster_name(port: u16, fqdn: &str) -> String {
    format!("outbound|{port}||{fqdn}")
}

/// Where the generated sidecar listens and what it loads.
#[derive(Debug, Clone)]
pub struct SidecarPorts {
    pub admin: u16,
    /// Stands in for the outbound listener `0.0.0.0_<service port>`.
    pub listener: u16,
    /// Endpoints of every generated cluster (the mg-upstreams).
    pub endpoints: Vec<u16>,
    pub wasm_path: PathBuf,
}

/// The persistent-session header of the Service behind `fqdn`, if labelled.
fn session_header(all: &[Manifest], fqdn_host: &str) -> Option<String> {
    of_kind(all, "Service").into_iter().find_map(|s| {
        let own = fqdn(s.name(), s.namespace());
        (own == fqdn_host)
            .then(|| {
                s.doc["metadata"]["labels"]["istio.io/persistent-session-header"]
                    .as_str()
                    .map(str::to_string)
            })
            .flatten()
    })
}

fn duration_proto(text: &str) -> Value {
    // Envoy's JSON mapping of Duration is the same "30s" form Istio uses,
    // except that it needs seconds: convert the units the manifests use.
    let (num, unit) = text.split_at(
        text.find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(text.len()),
    );
    let n: f64 = num.parse().unwrap_or(0.0);
    let secs = match unit {
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => n,
    };
    json!(format!("{secs}s"))
}

/// The Envoy bootstrap (JSON, which Envoy reads as YAML) istiod would give a
/// client sidecar selected by the WasmPlugin, from the manifests.
pub fn sidecar_config(all: &[Manifest], ports: &SidecarPorts) -> Result<Value, String> {
    let plugin = sidecar_plugin(all)?;
    let spec = plugin.spec();
    let wasm_filter = json!({
        // istiod delivers the filter through ECDS under the resource name
        // `<namespace>.<name>`; inline here, same name and content.
        "name": format!("{}.{}", plugin.namespace(), plugin.name()),
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": format!("{}.{}", plugin.namespace(), plugin.name()),
                "root_id": spec["pluginName"].as_str().ok_or("WasmPlugin without pluginName")?,
                "failure_policy": failure_policy(spec["failStrategy"].as_str()),
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": plugin_config_json(plugin),
                },
                "vm_config": {
                    // Istio leaves vm_id empty.
                    "vm_id": "",
                    "runtime": "envoy.wasm.runtime.v8",
                    // istio-agent downloads `url` and rewrites it to a local file.
                    "code": {"local": {"filename": ports.wasm_path.display().to_string()}},
                },
            },
        },
    });

    let mut virtual_hosts = Vec::new();
    let mut clusters: Vec<(u16, String)> = Vec::new();
    for vs in of_kind(all, "VirtualService") {
        let ns = vs.namespace();
        for host in vs.spec()["hosts"].as_array().into_iter().flatten() {
            let host = fqdn(host.as_str().unwrap_or_default(), ns);
            let mut routes = Vec::new();
            let mut vh_port = None;
            for http_route in vs.spec()["http"].as_array().into_iter().flatten() {
                let dest = &http_route["route"][0]["destination"];
                let dest_host = fqdn(dest["host"].as_str().unwrap_or_default(), ns);
                let port = dest["port"]["number"]
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or_else(|| format!("{}: route without destination port", vs.label()))?;
                vh_port.get_or_insert(port);
                let cluster = cluster_name(port, &dest_host);
                if !clusters.iter().any(|(p, h)| cluster_name(*p, h) == cluster) {
                    clusters.push((port, dest_host.clone()));
                }
                let prefix = http_route["match"][0]["uri"]["prefix"]
                    .as_str()
                    .unwrap_or("/");
                let mut action = json!({"cluster": cluster});
                if let Some(t) = http_route["timeout"].as_str() {
                    action["timeout"] = duration_proto(t);
                }
                routes.push(json!({
                    "name": http_route["name"].as_str().unwrap_or(""),
                    "match": {"prefix": prefix, "case_sensitive": true},
                    "route": action,
                    "metadata": {"filter_metadata": {"istio": {
                        "config": format!("/apis/networking.istio.io/v1/namespaces/{ns}/virtual-service/{}", vs.name()),
                    }}},
                }));
            }
            let port = vh_port.unwrap_or(80);
            let short = host.split('.').next().unwrap_or_default().to_string();
            let domains: Vec<String> = [
                host.clone(),
                format!("{short}.{ns}"),
                format!("{short}.{ns}.svc"),
                short.clone(),
            ]
            .iter()
            .flat_map(|d| [d.clone(), format!("{d}:{port}")])
            .collect();
            let mut vh = json!({
                "name": format!("{host}:{port}"),
                "domains": domains,
                "routes": routes,
            });
            if let Some(header) = session_header(all, &host) {
                vh["typed_per_filter_config"] = json!({
                    "envoy.filters.http.stateful_session": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute",
                        "stateful_session": {"session_state": {
                            "name": "envoy.http.stateful_session.header",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.http.stateful_session.header.v3.HeaderBasedSessionState",
                                "name": header,
                            },
                        }},
                    },
                });
            }
            virtual_hosts.push(vh);
        }
    }

    let mut cluster_configs = Vec::new();
    for (port, host) in &clusters {
        let name = cluster_name(*port, host);
        let mut c = json!({
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "lb_policy": "ROUND_ROBIN",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [{"lb_endpoints": ports.endpoints.iter().map(|p| json!({
                    "endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}},
                })).collect::<Vec<_>>()}],
            },
        });
        let dr = of_kind(all, "DestinationRule")
            .into_iter()
            .find(|d| fqdn(d.spec()["host"].as_str().unwrap_or_default(), d.namespace()) == *host);
        if let Some(dr) = dr {
            let tp = &dr.spec()["trafficPolicy"];
            if let Some(lb) = tp["loadBalancer"]["simple"].as_str() {
                c["lb_policy"] = json!(match lb {
                    "LEAST_REQUEST" => "LEAST_REQUEST",
                    "RANDOM" => "RANDOM",
                    _ => "ROUND_ROBIN",
                });
            }
            if let Some(n) = tp["connectionPool"]["http"]["http1MaxPendingRequests"].as_u64() {
                c["circuit_breakers"] = json!({"thresholds": [{"max_pending_requests": n}]});
            }
            let od = &tp["outlierDetection"];
            if od.is_object() {
                // As istiod translates it: only what the DR sets is enforced.
                let mut o = json!({
                    "enforcing_success_rate": 0,
                    "enforcing_consecutive_gateway_failure": 0,
                });
                if let Some(n) = od["consecutive5xxErrors"].as_u64() {
                    o["consecutive_5xx"] = json!(n);
                    o["enforcing_consecutive_5xx"] = json!(100);
                }
                if let Some(t) = od["interval"].as_str() {
                    o["interval"] = duration_proto(t);
                }
                if let Some(t) = od["baseEjectionTime"].as_str() {
                    o["base_ejection_time"] = duration_proto(t);
                }
                if let Some(n) = od["maxEjectionPercent"].as_u64() {
                    o["max_ejection_percent"] = json!(n);
                }
                c["outlier_detection"] = o;
            }
        }
        cluster_configs.push(c);
    }
    let service_port = clusters.first().map(|(p, _)| *p).unwrap_or(80);

    let stats_tags = yaml_documents(&workspace_root().join("envoy/meshguard-stats-tags.yaml"))?
        .into_iter()
        .next()
        .map(|d| d["stats_config"].clone())
        .ok_or("envoy/meshguard-stats-tags.yaml is empty")?;

    Ok(json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": ports.admin}}},
        "stats_config": stats_tags,
        "static_resources": {
            "listeners": [{
                "name": format!("0.0.0.0_{service_port}"),
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports.listener}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": format!("outbound_0.0.0.0_{service_port}"),
                        "access_log": [{
                            "name": "envoy.access_loggers.stderr",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
                                "log_format": {"text_format_source": {"inline_string":
                                    "access %START_TIME% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_HOST% %RESPONSE_CODE_DETAILS% %ROUTE_NAME% %UPSTREAM_CLUSTER%\n"}},
                            },
                        }],
                        "route_config": {
                            "name": service_port.to_string(),
                            "virtual_hosts": virtual_hosts,
                        },
                        "http_filters": [
                            wasm_filter,
                            // istiod's HCM-level stateful_session filter has no
                            // session state; each virtual host of a labelled
                            // Service overrides it.
                            {
                                "name": "envoy.filters.http.stateful_session",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSession",
                                },
                            },
                            {
                                "name": "envoy.filters.http.router",
                                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                            },
                        ],
                    },
                }]}],
            }],
            "clusters": cluster_configs,
        },
    }))
}

/// Envoy on a generated configuration (the harness in [`crate::envoy`]
/// renders the demo template; this one takes a config as is).
#[derive(Debug)]
pub struct Sidecar {
    pub admin: SocketAddr,
    pub listener: SocketAddr,
    pub dir: PathBuf,
    pub log_path: PathBuf,
    pub stderr_path: PathBuf,
    /// Held for its drop, which stops Envoy.
    _envoy: ChildGuard,
}

impl Sidecar {
    /// Writes `config` to `<dir>/envoy.yaml`, starts Envoy and waits for /ready.
    pub fn start(
        envoy_bin: &Path,
        dir: &Path,
        config: &Value,
        ports: &SidecarPorts,
    ) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let process = EnvoyProcess::in_dir(envoy_bin, dir);
        fs::write(
            &process.config,
            serde_json::to_string_pretty(config).map_err(io::Error::other)?,
        )?;
        let admin = SocketAddr::from(([127, 0, 0, 1], ports.admin));
        let child = process.start(admin)?;
        Ok(Sidecar {
            admin,
            listener: SocketAddr::from(([127, 0, 0, 1], ports.listener)),
            dir: dir.to_path_buf(),
            log_path: process.log_path,
            stderr_path: process.stderr_path,
            _envoy: child,
        })
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// meshguard's log lines containing `needle`.
    pub fn meshguard_lines(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("meshguard: ") && l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// Access-log lines (`access start code flags upstream details route cluster`).
    pub fn access_log(&self) -> Vec<String> {
        fs::read_to_string(&self.stderr_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("access "))
            .map(str::to_string)
            .collect()
    }

    /// `GET` on the admin port.
    pub fn admin_get(&self, path: &str) -> io::Result<String> {
        Ok(http::get(self.admin, path, Duration::from_secs(5))?.body_text())
    }
}

/// What one request through the sidecar got.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// `x-upstream-name`: which mg-upstream answered (None: Envoy itself).
    pub upstream: Option<String>,
}

/// `GET path` with `Host: host` (the virtual host is chosen by authority, as
/// for an application calling `http://reviews:9080/...`).
pub fn send(listener: SocketAddr, host: &str, path: &str) -> io::Result<Reply> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&listener, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no status line in {head:?}")))?;
    let upstream = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("x-upstream-name")
            .then(|| v.trim().to_string())
    });
    Ok(Reply { status, upstream })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_istio() {
        assert_eq!(fqdn("reviews", "shop"), "reviews.shop.svc.cluster.local");
        assert_eq!(fqdn("reviews.shop", "x"), "reviews.shop.svc.cluster.local");
        assert_eq!(
            cluster_name(9080, "reviews.shop.svc.cluster.local"),
            "outbound|9080||reviews.shop.svc.cluster.local"
        );
        assert_eq!(failure_policy(Some("FAIL_OPEN")), "FAIL_OPEN");
        assert_eq!(failure_policy(None), "FAIL_CLOSED");
        assert_eq!(duration_proto("500ms"), json!("0.5s"));
        assert_eq!(duration_proto("2m"), json!("120s"));
    }
}
