//! The large-service fixture: one multi-host mg-upstream ([`Fleet`]) behind
//! a real Envoy whose cluster `demo` gets its members through EDS from a
//! watched file, so tests change membership while traffic flows (scale-up,
//! scale-down, rolling replacement).
//!
//! The Envoy config is `envoy/demo.yaml.tmpl` rendered as usual (meshguard
//! in the chain exactly as there, `override_host` with a round-robin
//! fallback), with the `demo` cluster turned from `STATIC` into `EDS`
//! (`eds_cluster_config.eds_config.path_config_source` on
//! `<dir>/eds/demo.json`, `watched_directory: <dir>/eds`) and, optionally,
//! Istio's default retry policy on the routes.
//!
//! ```text
//! let s = EdsFleet::start(test_paths!(), "my_test", FleetOptions::new(100).plugin(CONFIG));
//! s.set_behaviour(7, &Behaviour::status(503));   // host h-7
//! s.set_members(&(10..110).collect::<Vec<_>>());  // EDS update, waits for Envoy
//! let per_host = s.requests();                     // by host index
//! ```

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::behaviour::Behaviour;
use crate::envoy::{render, Envoy, TemplateVars, WasmPlugin, TEMPLATE};
use crate::fixture::TestPaths;
use crate::http;
use crate::upstream::{Fleet, HostStats};

/// Name prefix of the fleet's hosts: host `i` answers as `h-<i>`.
pub const HOST_PREFIX: &str = "h";

/// Istio's default retry policy (what istiod puts on every route), as a
/// YAML flow mapping.
pub const ISTIO_RETRY_POLICY: &str = "{ retry_on: \"connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes\", \
retriable_status_codes: [503], num_retries: 2, \
retry_host_predicate: [{ name: envoy.retry_host_predicates.previous_hosts, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate } }], \
host_selection_retry_max_attempts: 5 }";

/// Request headers (copies made before the router) that the access log
/// prints: meshguard's steering header and `x-envoy-retry-on` as the router
/// got them.
const DIAG_STEER: &str = "x-fleet-diag-steer";
const DIAG_RETRY_ON: &str = "x-fleet-diag-retry-on";

/// What [`EdsFleet::start`] sets up.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Hosts the mg-upstream process serves (indices 0..hosts).
    pub hosts: usize,
    /// Initial EDS members (host indices); default: all hosts.
    pub members: Vec<usize>,
    /// meshguard's configuration; None runs Envoy without meshguard (the
    /// "no protection" baseline).
    pub plugin_config: Option<String>,
    /// Istio's default retry policy on the routes ([`ISTIO_RETRY_POLICY`]).
    pub istio_retries: bool,
    /// meshguard's configuration for a second instance of the module as an
    /// upstream HTTP filter (`{"mode":"upstream",...}`), which sees every
    /// attempt; None: no upstream instance. See [`add_upstream_instance`].
    pub upstream_config: Option<String>,
    /// Where that upstream instance goes.
    pub upstream_placement: UpstreamPlacement,
}

/// Where [`FleetOptions::upstream_config`]'s instance is placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamPlacement {
    /// In cluster `demo`'s `HttpProtocolOptions.http_filters`, before its
    /// upstream codec (and after the template's header_mutation).
    #[default]
    Cluster,
    /// In the listener router's `upstream_http_filters` (wasm filter, then
    /// `envoy.filters.http.upstream_codec`), the cluster left without
    /// upstream filters of its own: what `istio/envoyfilter-upstream.yaml`
    /// does.
    Router,
}

impl FleetOptions {
    /// `hosts` hosts, all members, no meshguard, no retries.
    pub fn new(hosts: usize) -> Self {
        Self {
            hosts,
            members: (0..hosts).collect(),
            plugin_config: None,
            istio_retries: false,
            upstream_config: None,
            upstream_placement: UpstreamPlacement::Cluster,
        }
    }

    pub fn plugin(mut self, config: &str) -> Self {
        self.plugin_config = Some(config.to_string());
        self
    }

    pub fn members(mut self, members: impl IntoIterator<Item = usize>) -> Self {
        self.members = members.into_iter().collect();
        self
    }

    pub fn istio_retries(mut self, on: bool) -> Self {
        self.istio_retries = on;
        self
    }

    /// Loads meshguard a second time as an upstream HTTP filter of the
    /// `demo` cluster with this configuration (None: not at all).
    pub fn upstream_instance(mut self, config: Option<&str>) -> Self {
        self.upstream_config = config.map(str::to_string);
        self.upstream_placement = UpstreamPlacement::Cluster;
        self
    }

    /// Loads meshguard a second time as an upstream HTTP filter of the
    /// listener's router, Istio's way (None: not at all); cluster `demo`
    /// then has no upstream filters of its own. See
    /// [`add_upstream_instance_on_router`].
    pub fn upstream_instance_on_router(mut self, config: Option<&str>) -> Self {
        self.upstream_config = config.map(str::to_string);
        self.upstream_placement = UpstreamPlacement::Router;
        self
    }
}

/// Plugin name, VM id and root id of the downstream instance in
/// `envoy/demo.yaml.tmpl`; the upstream instance shares the first two (so
/// it writes into the same records) and has a root id of its own.
pub const PLUGIN_NAME: &str = "meshguard";
pub const VM_ID: &str = "meshguard";
pub const UPSTREAM_ROOT_ID: &str = "meshguard-upstream";

/// Adds meshguard as an upstream HTTP filter of cluster `demo` (the
/// template's only cluster with `HttpProtocolOptions`): a wasm filter just
/// before `envoy.filters.http.upstream_codec`, with the downstream
/// instance's plugin name and VM id, root id [`UPSTREAM_ROOT_ID`] and
/// `plugin.config` as its configuration. Envoy then runs it once per
/// attempt, retries included.
pub fn add_upstream_instance(yaml: &str, plugin: &WasmPlugin) -> Result<String, String> {
    const CODEC: &str = "        - name: envoy.filters.http.upstream_codec\n";
    if yaml.matches(CODEC).count() != 1 {
        return Err(format!(
            "envoy/demo.yaml.tmpl changed: want exactly one {CODEC:?} (cluster demo's upstream filters)"
        ));
    }
    let wasm = upstream_wasm_filter(plugin, 8);
    Ok(yaml.replace(CODEC, &format!("{wasm}{CODEC}")))
}

/// Adds meshguard's upstream instance (as [`add_upstream_instance`]
/// renders it) the way `istio/envoyfilter-upstream.yaml` does: the
/// listener's router gets `upstream_http_filters: [wasm,
/// envoy.filters.http.upstream_codec]`, and cluster `demo` loses its own
/// `http_filters` (Envoy uses the router's list only for clusters without
/// one), keeping the rest of its `HttpProtocolOptions`. The template's
/// cluster filter that strips the steering header goes with them, as under
/// Istio.
pub fn add_upstream_instance_on_router(yaml: &str, plugin: &WasmPlugin) -> Result<String, String> {
    const ROUTER: &str = "          - name: envoy.filters.http.router\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\n";
    const CLUSTER_FILTERS: &str = "\n        http_filters:\n";
    let anchor = |what: &str| format!("envoy/demo.yaml.tmpl changed: want exactly one {what:?}");
    if yaml.matches(ROUTER).count() != 1 {
        return Err(anchor(ROUTER));
    }
    if yaml.matches(CLUSTER_FILTERS).count() != 1 {
        return Err(anchor(CLUSTER_FILTERS));
    }
    // Cluster demo's filters: the key and every line indented deeper.
    let start = yaml
        .find(CLUSTER_FILTERS)
        .map(|i| i + 1)
        .unwrap_or_default();
    let body = start + CLUSTER_FILTERS.len() - 1;
    let end = yaml[body..]
        .match_indices('\n')
        .map(|(i, _)| body + i + 1)
        .find(|&i| {
            let line = &yaml[i..];
            let indent = line.len() - line.trim_start_matches(' ').len();
            let item = indent == 8 && line[8..].starts_with("- ");
            indent <= 8 && !item && !line.starts_with('\n')
        })
        .ok_or_else(|| anchor("the end of cluster demo's http_filters"))?;
    // And the comment above them, which is about them.
    let mut start = start;
    while let Some(prev) = yaml[..start.saturating_sub(1)].rfind('\n') {
        if !yaml[prev + 1..start].starts_with("        #") {
            break;
        }
        start = prev + 1;
    }
    let mut out = String::with_capacity(yaml.len() + 1024);
    out.push_str(&yaml[..start]);
    out.push_str(&yaml[end..]);
    let filters = format!(
        "              upstream_http_filters:\n{}              - name: envoy.filters.http.upstream_codec\n                typed_config:\n                  \"@type\": type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec\n",
        upstream_wasm_filter(plugin, 14)
    );
    Ok(out.replace(ROUTER, &format!("{ROUTER}{filters}")))
}

/// The upstream instance's wasm filter as a YAML list item, every line
/// indented by `indent` spaces.
fn upstream_wasm_filter(plugin: &WasmPlugin, indent: usize) -> String {
    let item = format!(
        "- name: envoy.filters.http.wasm\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n    config:\n      name: {PLUGIN_NAME}\n      root_id: {UPSTREAM_ROOT_ID}\n      failure_policy: FAIL_OPEN\n      configuration:\n        \"@type\": type.googleapis.com/google.protobuf.StringValue\n        value: '{}'\n      vm_config:\n        vm_id: {VM_ID}\n        runtime: envoy.wasm.runtime.v8\n        code:\n          local: {{ filename: \"{}\" }}\n",
        plugin.config.replace('\'', "''"),
        plugin.wasm_path.display()
    );
    let pad = " ".repeat(indent);
    item.lines().map(|l| format!("{pad}{l}\n")).collect()
}

/// Renders the template for an EDS `demo` cluster fed from `eds_file`
/// (watched through its directory). `retries` adds [`ISTIO_RETRY_POLICY`] to
/// the routes to `demo`. The `fallback` cluster keeps pointing at
/// 127.0.0.1:`port` (unused unless the breaker runs in fallback mode).
pub fn render_eds_config(
    admin_port: u16,
    listen_port: u16,
    port: u16,
    eds_file: &Path,
    wasm: Option<WasmPlugin>,
    retries: bool,
) -> Result<String, String> {
    let yaml = render(
        TEMPLATE,
        &TemplateVars {
            admin_port,
            listen_port,
            upstream_ports: [port; 3],
            fallback_port: Some(port),
            wasm,
        },
    )?;
    let watched = eds_file
        .parent()
        .ok_or_else(|| format!("{} has no directory", eds_file.display()))?;
    to_eds(&yaml, eds_file, watched, retries)
}

/// The rendered template with cluster `demo` turned into an EDS cluster,
/// with the fixture's access-log diagnostics and optionally Istio's retries.
fn to_eds(yaml: &str, eds_file: &Path, watched: &Path, retries: bool) -> Result<String, String> {
    let mut out = with_eds_cluster(yaml, eds_file, watched)?;
    // Diagnostics in the access log: how many attempts a request took, where
    // meshguard steered it and whether it carried discovery's retry header.
    // The router and the cluster's upstream filter remove both headers before
    // the access log runs, so a header_mutation filter between meshguard and
    // the router copies them first (it changes nothing else).
    const ROUTER: &str = "          - name: envoy.filters.http.router\n";
    if out.matches(ROUTER).count() != 1 {
        return Err(format!(
            "envoy/demo.yaml.tmpl changed: cannot find {ROUTER:?} to add the diagnostics"
        ));
    }
    out = out.replace(
        ROUTER,
        &format!(
            "          - name: envoy.filters.http.header_mutation\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation\n              mutations:\n                request_mutations:\n                - append: {{ header: {{ key: {DIAG_STEER}, value: \"%REQ(x-meshguard-upstream)%\" }}, append_action: OVERWRITE_IF_EXISTS_OR_ADD }}\n                - append: {{ header: {{ key: {DIAG_RETRY_ON}, value: \"%REQ(x-envoy-retry-on)%\" }}, append_action: OVERWRITE_IF_EXISTS_OR_ADD }}\n{ROUTER}"
        ),
    );
    out = out.replace(
        "%UPSTREAM_CLUSTER%\\n\"",
        &format!("%UPSTREAM_CLUSTER% attempts=%UPSTREAM_REQUEST_ATTEMPT_COUNT% steer=%REQ({DIAG_STEER})% retry_on=%REQ({DIAG_RETRY_ON})%\\n\""),
    );
    if retries {
        out = with_istio_retries(&out)?;
    }
    Ok(out)
}

/// `yaml` (a rendered demo template) with cluster `demo` turned from
/// `STATIC` into `EDS` fed from `eds_file` (a path config source watched
/// through `watched`), and the node id and cluster Envoy needs for that;
/// nothing else changes. The bench's rolling deployment uses it as is.
pub fn with_eds_cluster(yaml: &str, eds_file: &Path, watched: &Path) -> Result<String, String> {
    const HEAD: &str = "\n  - name: demo\n    type: STATIC\n";
    const ASSIGNMENT: &str = "    load_assignment:\n      cluster_name: demo\n";
    let anchor = |what: &str| {
        format!("envoy/demo.yaml.tmpl changed: cannot find {what:?} to make cluster demo an EDS cluster")
    };
    let head = yaml.find(HEAD).ok_or_else(|| anchor(HEAD))?;
    let la = head
        + yaml[head..]
            .find(ASSIGNMENT)
            .ok_or_else(|| anchor(ASSIGNMENT))?;
    // The assignment ends at the first line indented 4 or less after it.
    let body = la + ASSIGNMENT.len();
    let end = yaml[body..]
        .match_indices('\n')
        .map(|(i, _)| body + i + 1)
        .find(|&i| {
            let line = &yaml[i..];
            let indent = line.len() - line.trim_start_matches(' ').len();
            indent <= 4 && !line.starts_with('\n')
        })
        .ok_or_else(|| anchor("the end of demo's load_assignment"))?;
    let eds = format!(
        "    eds_cluster_config:\n      eds_config:\n        resource_api_version: V3\n        path_config_source:\n          path: {}\n          watched_directory: {{ path: {} }}\n",
        eds_file.display(),
        watched.display()
    );
    // Envoy refuses a path config source without a node id and cluster.
    const ADMIN: &str = "\nadmin:\n";
    let admin = yaml.find(ADMIN).ok_or_else(|| anchor(ADMIN))?;
    if admin > head {
        return Err(anchor("admin: before the clusters"));
    }
    let mut out = String::with_capacity(yaml.len() + 512);
    out.push_str(&yaml[..admin]);
    out.push_str("\nnode: { id: meshguard-fleet, cluster: meshguard-fleet }");
    out.push_str(&yaml[admin..head]);
    out.push_str("\n  - name: demo\n    type: EDS\n");
    out.push_str(&yaml[head + HEAD.len()..la]);
    out.push_str(&eds);
    out.push_str(&yaml[end..]);
    Ok(out)
}

/// Istio's default cluster circuit breakers (istiod's
/// `getDefaultCircuitBreakerThresholds`: every threshold at its maximum), as
/// the YAML flow mapping of a cluster's `circuit_breakers`.
pub const ISTIO_CIRCUIT_BREAKERS: &str = "{ thresholds: [{ max_connections: 4294967295, \
max_pending_requests: 4294967295, max_requests: 4294967295, max_retries: 4294967295, \
track_remaining: true }] }";

/// `yaml` (a demo-template configuration) with [`ISTIO_RETRY_POLICY`] on
/// every route to cluster `demo`, as istiod puts it on every route it builds
/// (a route's policy replaces the virtual host's).
pub fn with_istio_retries(yaml: &str) -> Result<String, String> {
    const ROUTE: &str = "route: { cluster: demo }";
    if !yaml.contains(ROUTE) {
        return Err(format!("envoy/demo.yaml.tmpl changed: no {ROUTE:?}"));
    }
    Ok(yaml.replace(
        ROUTE,
        &format!("route: {{ cluster: demo, retry_policy: {ISTIO_RETRY_POLICY} }}"),
    ))
}

/// The EDS file's content: a `DiscoveryResponse` with one
/// `ClusterLoadAssignment` for `demo` listing `members`.
pub fn eds_document(version: u64, members: &[SocketAddr]) -> String {
    eds_document_for("demo", version, members)
}

/// [`eds_document`] for the cluster `cluster`.
pub fn eds_document_for(cluster: &str, version: u64, members: &[SocketAddr]) -> String {
    let endpoints: Vec<serde_json::Value> = members
        .iter()
        .map(|a| {
            serde_json::json!({"endpoint": {"address": {"socket_address": {
                "address": a.ip().to_string(), "port_value": a.port()}}}})
        })
        .collect();
    serde_json::json!({
        "version_info": version.to_string(),
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            "cluster_name": cluster,
            "endpoints": [{"lb_endpoints": endpoints}],
        }],
    })
    .to_string()
}

/// A multi-host mg-upstream behind a real Envoy whose `demo` cluster is
/// fed by EDS from a watched file. Everything stops on drop.
pub struct EdsFleet {
    // Drop order: Envoy first, so it never sees its upstreams vanish.
    pub envoy: Envoy,
    pub fleet: Fleet,
    /// Rendered config, logs, the EDS file: kept after the run.
    pub dir: PathBuf,
    eds_file: PathBuf,
    version: Cell<u64>,
    members: RefCell<Vec<usize>>,
    /// Hosts given a non-healthy behaviour: always shown by [`fail`](Self::fail).
    faulty: RefCell<BTreeSet<usize>>,
    meshguard: bool,
}

impl EdsFleet {
    /// Starts the fleet and Envoy (needs MESHGUARD_ENVOY, and MESHGUARD_WASM
    /// when meshguard is configured); waits until Envoy has the initial
    /// members. Works in `<tmp_dir>/<test_name>/`. Panics on setup failure.
    pub fn start(paths: TestPaths, test_name: &str, opts: FleetOptions) -> Self {
        let envoy_bin = crate::ENVOY_BIN.require();
        let wasm_path = || crate::MESHGUARD_WASM.require();
        let wasm = opts.plugin_config.as_ref().map(|config| WasmPlugin {
            wasm_path: wasm_path(),
            config: config.clone(),
        });
        let upstream = opts.upstream_config.as_ref().map(|config| WasmPlugin {
            wasm_path: wasm_path(),
            config: config.clone(),
        });
        let dir = paths.tmp_dir.join(test_name);
        let eds_dir = dir.join("eds");
        std::fs::create_dir_all(&eds_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", eds_dir.display()));
        let eds_file = eds_dir.join("demo.json");
        let fleet = Fleet::start(&paths.mg_upstream, HOST_PREFIX, opts.hosts, &dir)
            .unwrap_or_else(|e| panic!("start mg-upstream --hosts {}: {e}", opts.hosts));
        let port = fleet.addr(0).port();
        let members: Vec<SocketAddr> = opts.members.iter().map(|&i| fleet.addr(i)).collect();
        write_atomically(&eds_file, &eds_document(1, &members))
            .unwrap_or_else(|e| panic!("write {}: {e}", eds_file.display()));
        let meshguard = wasm.is_some();
        let retries = opts.istio_retries;
        let placement = opts.upstream_placement;
        let envoy = Envoy::start_with_config(&envoy_bin, &dir, |admin, listen| {
            let yaml = render_eds_config(admin, listen, port, &eds_file, wasm, retries)?;
            match (&upstream, placement) {
                (Some(u), UpstreamPlacement::Cluster) => add_upstream_instance(&yaml, u),
                (Some(u), UpstreamPlacement::Router) => add_upstream_instance_on_router(&yaml, u),
                (None, _) => Ok(yaml),
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
        println!(
            "envoy pid {} listener {} admin {}; fleet of {} hosts {}..{} (admin {}); {} members; meshguard {}; upstream instance {}; istio retries {}; logs in {}",
            envoy.pid(),
            envoy.listener,
            envoy.admin,
            opts.hosts,
            fleet.addr(0),
            fleet.addr(opts.hosts - 1),
            fleet.admin.admin,
            opts.members.len(),
            if meshguard { "on" } else { "off" },
            match (&opts.upstream_config, placement) {
                (None, _) => "off",
                (Some(_), UpstreamPlacement::Cluster) => "on (cluster)",
                (Some(_), UpstreamPlacement::Router) => "on (router)",
            },
            if retries { "on" } else { "off" },
            dir.display()
        );
        let s = Self {
            envoy,
            fleet,
            dir,
            eds_file,
            version: Cell::new(1),
            members: RefCell::new(opts.members.clone()),
            faulty: RefCell::new(BTreeSet::new()),
            meshguard,
        };
        s.wait_for_members(&opts.members);
        s
    }

    /// Envoy's listener: where client traffic goes.
    pub fn listener(&self) -> SocketAddr {
        self.envoy.listener
    }

    /// Host `i`'s name (`x-upstream-name`, the key of a `Tally`).
    pub fn name(&self, i: usize) -> &str {
        self.fleet.host_name(i)
    }

    /// Host `i`'s data address (what meshguard and Envoy call it).
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.fleet.addr(i)
    }

    /// The current EDS members (host indices), as last set.
    pub fn members(&self) -> Vec<usize> {
        self.members.borrow().clone()
    }

    /// Makes `members` (host indices) the cluster's endpoints: rewrites the
    /// EDS file atomically (temp file + rename in the watched directory) and
    /// waits until Envoy lists exactly those hosts and
    /// `cluster.demo.membership_total` matches.
    pub fn set_members(&self, members: &[usize]) {
        let v = self.version.get() + 1;
        self.version.set(v);
        let addrs: Vec<SocketAddr> = members.iter().map(|&i| self.addr(i)).collect();
        if let Err(e) = write_atomically(&self.eds_file, &eds_document(v, &addrs)) {
            self.fail(&format!("cannot write {}: {e}", self.eds_file.display()));
        }
        *self.members.borrow_mut() = members.to_vec();
        let t = Instant::now();
        self.wait_for_members(members);
        println!(
            "EDS v{v}: {} members, applied by Envoy in {:?}",
            members.len(),
            t.elapsed()
        );
    }

    fn wait_for_members(&self, members: &[usize]) {
        let want: BTreeSet<SocketAddr> = members.iter().map(|&i| self.addr(i)).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut have = BTreeSet::new();
        let mut total = 0;
        while Instant::now() < deadline {
            have = self.envoy_hosts();
            total = self.envoy_stat("cluster.demo.membership_total");
            if have == want && total == want.len() as u64 {
                // The main thread has it; give the workers a moment to get
                // their copy of the host set.
                std::thread::sleep(Duration::from_millis(100));
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let missing = want.difference(&have).count();
        let extra = have.difference(&want).count();
        self.fail(&format!(
            "Envoy did not apply the EDS update within 10 s: wants {} hosts, lists {} ({missing} missing, {extra} extra), membership_total {total}",
            want.len(),
            have.len()
        ));
    }

    /// The hosts Envoy lists for cluster `demo` (admin `/clusters`).
    pub fn envoy_hosts(&self) -> BTreeSet<SocketAddr> {
        match self.envoy.admin_get("/clusters") {
            Ok(text) => text
                .lines()
                .filter_map(|l| l.strip_prefix("demo::")?.split("::").next()?.parse().ok())
                .collect(),
            Err(e) => self.fail(&format!("cannot read envoy /clusters: {e}")),
        }
    }

    /// Sets what host `i` does.
    pub fn set_behaviour(&self, i: usize, b: &Behaviour) {
        if let Err(e) = self.fleet.admin.set_behaviour(i, b) {
            self.fail(&format!("cannot set {}'s behaviour: {e}", self.name(i)));
        }
        let mut faulty = self.faulty.borrow_mut();
        if *b == Behaviour::healthy() {
            faulty.remove(&i);
        } else {
            faulty.insert(i);
        }
    }

    /// Every host's counters, by index.
    pub fn stats(&self) -> Vec<HostStats> {
        match self.fleet.admin.stats() {
            Ok(s) => s,
            Err(e) => self.fail(&format!("cannot read the fleet's stats: {e}")),
        }
    }

    /// Requests each host received (attempts, retries included), by index.
    pub fn requests(&self) -> Vec<u64> {
        self.stats().iter().map(|h| h.requests).collect()
    }

    /// Zeroes every host's counters.
    pub fn reset_stats(&self) {
        if let Err(e) = self.fleet.admin.reset_stats() {
            self.fail(&format!("cannot reset the fleet's stats: {e}"));
        }
    }

    /// Envoy's counter or gauge `name`; 0 when Envoy does not list it.
    pub fn envoy_stat(&self, name: &str) -> u64 {
        match self.envoy.stat(name) {
            Ok(v) => v,
            Err(e) => self.fail(&format!("cannot read envoy stat {name}: {e}")),
        }
    }

    /// The sum of meshguard's counter `metric` (for example `steered`,
    /// `requests`) over the stats of service `demo` and its overrides; 0
    /// before meshguard defines it.
    pub fn meshguard_counter(&self, metric: &str) -> u64 {
        let name = format!("meshguard.{metric}.service.demo");
        let filter = format!("/stats?filter={}", name.replace('.', "\\."));
        match self.envoy.admin_get(&filter) {
            Ok(text) => text
                .lines()
                .filter_map(|l| {
                    let (k, v) = l.rsplit_once(": ")?;
                    let rest = &k[k.find(&name)? + name.len()..];
                    // `demo` itself or `demo [vs=..]`, not `demo2`.
                    (rest.is_empty() || rest.starts_with(' '))
                        .then(|| v.trim().parse::<u64>().ok())
                        .flatten()
                })
                .sum(),
            Err(e) => self.fail(&format!("cannot read meshguard.{metric}: {e}")),
        }
    }

    /// meshguard's status endpoint (`/meshguard/status` on the listener;
    /// needs `"status":{"enabled":true}`), parsed.
    pub fn status(&self) -> Result<serde_json::Value, String> {
        let r = http::get(self.listener(), "/meshguard/status", Duration::from_secs(5))
            .map_err(|e| format!("GET /meshguard/status: {e}"))?;
        if r.status != 200 {
            return Err(format!(
                "GET /meshguard/status: {}: {}",
                r.status,
                r.body_text()
            ));
        }
        serde_json::from_slice(&r.body)
            .map_err(|e| format!("/meshguard/status: bad JSON ({e}): {}", r.body_text()))
    }

    /// The status endpoint's entry for host `i` of service `demo`: None when
    /// it is not listed (which means Healthy) or the status is unavailable.
    pub fn host_status(&self, i: usize) -> Option<serde_json::Value> {
        let addr = self.addr(i).to_string();
        let status = self.status().ok()?;
        status["services"]
            .as_array()?
            .iter()
            .filter(|s| s["service"] == "demo")
            .flat_map(|s| s["hosts"].as_array().cloned().unwrap_or_default())
            .find(|h| h["address"] == addr.as_str())
    }

    /// Host `i`'s state in the status endpoint ("Healthy" when not listed).
    pub fn host_state(&self, i: usize) -> String {
        self.host_status(i)
            .and_then(|h| h["state"].as_str().map(str::to_string))
            .unwrap_or_else(|| "Healthy".to_string())
    }

    /// Envoy log lines from meshguard containing `needle`, oldest first.
    pub fn meshguard_lines(&self, needle: &str) -> Vec<String> {
        self.envoy
            .log()
            .lines()
            .filter(|l| l.contains("meshguard: ") && l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// meshguard's grade-change lines for host `i`, oldest first.
    pub fn transitions(&self, i: usize) -> Vec<String> {
        crate::harness::host_transitions(&self.envoy.log(), &self.addr(i).to_string())
    }

    /// Panics with `msg` and what is needed to debug it: membership, the
    /// faulty hosts' and the busiest and idlest members' counters, Envoy's
    /// non-zero demo/meshguard stats, meshguard's log lines, its status
    /// endpoint, the access log's non-200 lines and the Envoy log tail.
    pub fn fail(&self, msg: &str) -> ! {
        std::thread::sleep(Duration::from_millis(300));
        let members = self.members();
        let mut hosts = String::new();
        match self.fleet.admin.stats() {
            Ok(stats) => {
                let line = |h: &HostStats| {
                    format!(
                        "  {} {} {} requests, {} errors{}\n",
                        h.name,
                        h.address,
                        h.requests,
                        h.errors,
                        if members.contains(&h.index) {
                            ""
                        } else {
                            " (not a member)"
                        }
                    )
                };
                let faulty = self.faulty.borrow();
                let _ = writeln!(hosts, "faulty hosts:");
                for h in stats.iter().filter(|h| faulty.contains(&h.index)) {
                    hosts.push_str(&line(h));
                }
                let mut by_count: Vec<&HostStats> = stats
                    .iter()
                    .filter(|h| members.contains(&h.index))
                    .collect();
                by_count.sort_by_key(|h| std::cmp::Reverse(h.requests));
                let _ = writeln!(hosts, "busiest members:");
                for h in by_count.iter().take(8) {
                    hosts.push_str(&line(h));
                }
                let _ = writeln!(hosts, "idlest members:");
                for h in by_count.iter().rev().take(5) {
                    hosts.push_str(&line(h));
                }
                let gone: u64 = stats
                    .iter()
                    .filter(|h| !members.contains(&h.index))
                    .map(|h| h.requests)
                    .sum();
                let _ = writeln!(hosts, "non-members together: {gone} requests");
            }
            Err(e) => hosts = format!("fleet stats unavailable: {e}"),
        }
        let envoy_stats = self
            .envoy
            .admin_get("/stats?filter=cluster\\.demo\\.(membership|upstream_rq_|upstream_cx_connect_fail|upstream_cx_destroy|retry|update_|lb_)|wasm|meshguard")
            .map(|s| s.lines().filter(|l| !l.ends_with(": 0")).collect::<Vec<_>>().join("\n"))
            .unwrap_or_else(|e| format!("unavailable: {e}"));
        let status = if self.meshguard {
            match self.status() {
                Ok(v) => {
                    let t = v.to_string();
                    if t.len() > 4000 {
                        format!("{}... ({} bytes)", &t[..4000], t.len())
                    } else {
                        t
                    }
                }
                Err(e) => e,
            }
        } else {
            "(no meshguard)".to_string()
        };
        panic!(
            "{msg}\n\n--- {} EDS members (v{}); host counters since last reset\n{hosts}\n\
             --- envoy stats (non-zero)\n{envoy_stats}\n\n\
             --- meshguard log lines (last 40)\n{}\n\n\
             --- meshguard status\n{status}\n\n\
             --- access log, not-200 lines (last 20): start code flags upstream details route cluster attempts steer retry_on\n{}\n\n\
             --- envoy log since startup (last 30 lines)\n{}\n\n(full log: {}; access log: {})",
            members.len(),
            self.version.get(),
            self.envoy.log_matching("meshguard", 40),
            self.envoy.access_log_matching(|l| !l.contains(" 200 "), 20),
            self.envoy.log_tail(30),
            self.envoy.log_path.display(),
            self.envoy.stderr_path.display()
        );
    }

    /// [`fail`](Self::fail)s with `msg()` unless `ok`.
    pub fn check(&self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.fail(&msg());
        }
    }
}

/// Writes `path` the way a control plane swaps a file: a temp file in the
/// same (watched) directory, then a rename over the old one.
pub fn write_atomically(path: &Path, content: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_cluster_becomes_eds() {
        let yaml = render_eds_config(1, 2, 4000, Path::new("/w/eds/demo.json"), None, true)
            .expect("render");
        let demo = &yaml[yaml.find("\n  - name: demo\n    type").expect("demo")..];
        let demo = &demo[..demo.find("  - name: fallback").expect("fallback")];
        assert!(demo.contains("    type: EDS\n"), "{demo}");
        assert!(!demo.contains("load_assignment"), "{demo}");
        assert!(demo.contains("path: /w/eds/demo.json"), "{demo}");
        assert!(
            demo.contains("watched_directory: { path: /w/eds }"),
            "{demo}"
        );
        assert!(demo.contains("connect_timeout: 1s"), "{demo}");
        assert!(
            demo.contains("envoy.load_balancing_policies.override_host"),
            "{demo}"
        );
        assert!(demo.contains("typed_extension_protocol_options"), "{demo}");
        // Istio's policy on the three demo routes, plus the template's own
        // virtual-host policy.
        assert_eq!(yaml.matches("retry_host_predicate:").count(), 4, "{yaml}");
        assert!(
            yaml.contains("port_value: 4000 "),
            "fallback keeps its host"
        );
        let doc = eds_document(3, &["127.0.1.1:4000".parse().expect("addr")]);
        assert!(doc.contains(r#""port_value":4000"#), "{doc}");
        assert!(doc.contains(r#""version_info":"3""#), "{doc}");
    }

    #[test]
    fn upstream_instance_goes_before_the_codec_of_demo() {
        let yaml = render_eds_config(1, 2, 4000, Path::new("/w/eds/demo.json"), None, true)
            .expect("render");
        let plugin = WasmPlugin {
            wasm_path: PathBuf::from("/m/meshguard.wasm"),
            config: r#"{"mode":"upstream","x":'y'}"#.to_string(),
        };
        let out = add_upstream_instance(&yaml, &plugin).expect("add");
        let wasm = out
            .find("root_id: meshguard-upstream")
            .expect("upstream instance");
        let codec = out
            .find("- name: envoy.filters.http.upstream_codec")
            .expect("codec");
        let demo = out.find("\n  - name: demo\n").expect("demo");
        let fallback = out.find("\n  - name: fallback\n").expect("fallback");
        assert!(demo < wasm && wasm < codec && codec < fallback, "{out}");
        assert!(
            out.contains(r#"value: '{"mode":"upstream","x":''y''}'"#),
            "{out}"
        );
        assert!(out.contains("filename: \"/m/meshguard.wasm\""), "{out}");
        assert!(out[wasm..codec].contains("vm_id: meshguard\n"), "{out}");
    }

    #[test]
    fn upstream_instance_on_router_replaces_demo_filters() {
        let yaml = render_eds_config(1, 2, 4000, Path::new("/w/eds/demo.json"), None, true)
            .expect("render");
        let plugin = WasmPlugin {
            wasm_path: PathBuf::from("/m/meshguard.wasm"),
            config: r#"{"mode":"upstream","x":'y'}"#.to_string(),
        };
        let cluster = add_upstream_instance(&yaml, &plugin).expect("cluster");
        let out = add_upstream_instance_on_router(&yaml, &plugin).expect("router");
        let router = out.find("router.v3.Router\n").expect("router");
        let demo = out.find("\n  - name: demo\n").expect("demo");
        let fallback = out.find("\n  - name: fallback\n").expect("fallback");
        let cluster_demo = &out[demo..fallback];
        assert!(!cluster_demo.contains("http_filters"), "{cluster_demo}");
        assert!(!cluster_demo.contains("upstream_codec"), "{cluster_demo}");
        assert!(
            cluster_demo.contains("use_downstream_protocol_config:"),
            "{cluster_demo}"
        );
        assert!(
            cluster_demo.contains("    load_balancing_policy:\n"),
            "{cluster_demo}"
        );
        let list = out[router..]
            .find("\n              upstream_http_filters:\n              - name: envoy.filters.http.wasm\n")
            .map(|i| router + i)
            .expect("upstream_http_filters right after the router's type");
        let wasm = out.find("root_id: meshguard-upstream").expect("wasm");
        let codec = out
            .find("              - name: envoy.filters.http.upstream_codec\n")
            .expect("codec");
        assert!(list < wasm && wasm < codec && codec < demo, "{out}");
        assert_eq!(
            out.matches("- name: envoy.filters.http.upstream_codec")
                .count(),
            1,
            "{out}"
        );
        // The same filter as on the cluster, 6 spaces deeper.
        let on_cluster = upstream_wasm_filter(&plugin, 8);
        assert!(cluster.contains(&on_cluster), "{cluster}");
        let deeper: String = on_cluster.lines().map(|l| format!("      {l}\n")).collect();
        assert!(out.contains(&deeper), "{out}");
    }
}
