//! Every manifest in `istio/` checked the way a cluster would check it, and
//! a bit more:
//!
//! - Istio kinds against Istio's own CRD schemas (`istio/crds/`, or `MESHGUARD_ISTIO_CRDS`,
//!   `openAPIV3Schema` of the version the manifest uses), with unknown fields
//!   refused as `kubectl apply` does (strict field validation), and the
//!   manifest's apiVersion the CRD's current (storage) version;
//! - the CEL rules (`x-kubernetes-validations`) those schemas carry, each
//!   evaluated here (url scheme, selector vs targetRef(s), durations >= 1ms,
//!   label keys and values, ...); a rule this test does not know fails it;
//! - each WasmPlugin's and TrafficExtension's `pluginConfig`, as Envoy
//!   receives it from Istio (JSON, numbers as doubles), accepted by
//!   meshguard's own parser and valid against
//!   `istio/meshguard-config.schema.json` (and each whole WasmPlugin against
//!   the editor schema `istio/wasmplugin-meshguard.schema.json`);
//! - the TrafficExtension (`istio/trafficextension.yaml`) and the waypoint
//!   variants (`istio/ambient-*-waypoint.yaml`) are the sidecar WasmPlugin in
//!   other forms: same name, module and `pluginConfig`, the same workloads or
//!   the waypoint through `targetRefs`, no `match` a waypoint fails;
//! - the waypoint's session filter (`istio/envoyfilter-waypoint-session.yaml`)
//!   inserts a header-based stateful_session filter before the router of the
//!   waypoint the plugins target, reading their `steering.header`;
//! - the manifests agree with each other (overrides name existing
//!   VirtualServices, the steering header is the Service's
//!   persistent-session header);
//! - each EnvoyFilter that adds meshguard's upstream instance
//!   (`istio/envoyfilter-upstream*.yaml`) pairs with the WasmPlugin: same
//!   plugin name `<namespace>.<name>`, empty vm_id, another root_id, the same
//!   module and workloads, a configuration meshguard parses as `mode:
//!   upstream` with the WasmPlugin's detection and ejection, placed in the
//!   router's upstream filters (never a cluster patch, which would replace
//!   istiod's HttpProtocolOptions);
//! - and the checks have teeth: known-bad variants fail them.

use std::collections::BTreeMap;

use host_tests::istio::{self, Manifest};
use serde_json::{json, Value};

/// A CRD version's schema and whether it is the storage version.
struct CrdVersion {
    schema: Value,
    storage: bool,
}

/// (group, kind) -> version name -> schema.
type Crds = BTreeMap<(String, String), BTreeMap<String, CrdVersion>>;

fn load_crds() -> Crds {
    let files = istio::crd_files().unwrap_or_else(|e| panic!("{e}"));
    let mut crds = Crds::new();
    for file in &files {
        for doc in istio::yaml_documents(file).unwrap_or_else(|e| panic!("{e}")) {
            let spec = &doc["spec"];
            let key = (
                spec["group"].as_str().unwrap_or_default().to_string(),
                spec["names"]["kind"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
            for v in spec["versions"].as_array().into_iter().flatten() {
                crds.entry(key.clone()).or_default().insert(
                    v["name"].as_str().unwrap_or_default().to_string(),
                    CrdVersion {
                        schema: v["schema"]["openAPIV3Schema"].clone(),
                        storage: v["storage"] == json!(true),
                    },
                );
            }
        }
    }
    assert_eq!(
        crds.len(),
        files.len(),
        "one CRD per file expected in {files:?}"
    );
    crds
}

/// The CRD schema as JSON Schema the way the API server applies it with
/// strict field validation: objects with `properties` refuse other keys
/// unless `x-kubernetes-preserve-unknown-fields`; the top level also takes
/// apiVersion, kind and metadata (the API server checks those itself).
fn strict(schema: &Value, top: bool) -> Value {
    let mut s = schema.clone();
    fn close(v: &mut Value) {
        match v {
            Value::Object(m) => {
                let preserve = m.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
                if m.contains_key("properties")
                    && !preserve
                    && !m.contains_key("additionalProperties")
                {
                    m.insert("additionalProperties".into(), json!(false));
                }
                m.values_mut().for_each(close);
            }
            Value::Array(a) => a.iter_mut().for_each(close),
            _ => {}
        }
    }
    close(&mut s);
    if top {
        let props = s["properties"]
            .as_object_mut()
            .expect("CRD schema has properties");
        props.insert("apiVersion".into(), json!({"type": "string"}));
        props.insert("kind".into(), json!({"type": "string"}));
        props.insert(
            "metadata".into(),
            json!({
                "type": "object",
                "required": ["name", "namespace"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
                    "namespace": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                },
                "additionalProperties": false,
            }),
        );
    }
    s
}

fn validate_json_schema(schema: &Value, id: &str, instance: &Value) -> Result<(), String> {
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    compiler.set_default_draft(boon::Draft::V2020_12);
    compiler
        .add_resource(id, schema.clone())
        .map_err(|e| format!("schema {id}: {e}"))?;
    let index = compiler
        .compile(id, &mut schemas)
        .map_err(|e| format!("schema {id}: {e:#}"))?;
    schemas
        .validate(instance, index)
        .map_err(|e| format!("{e:#}"))
}

/// Go duration as Kubernetes' CEL `duration()` reads it: `1h2m3.5s`, `10ms`.
fn go_duration_ms(text: &str) -> Option<f64> {
    let mut rest = text;
    let mut total = 0.0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3_600_000.0,
            "m" => 60_000.0,
            "s" => 1000.0,
            "ms" => 1.0,
            "us" | "µs" => 0.001,
            "ns" => 0.000_001,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// Evaluates one CEL rule of the Istio CRDs on `value`; Err(message) when it
/// does not hold. Panics on a rule it does not know, so a new rule in the
/// CRDs gets looked at instead of being skipped.
fn cel(rule: &str, value: &Value) -> Result<(), String> {
    let rule: String = rule.split_whitespace().collect::<Vec<_>>().join(" ");
    let has = |k: &str| value.get(k).is_some();
    let keys = || value.as_object().into_iter().flat_map(|m| m.keys());
    let ok = match rule.as_str() {
        "duration(self) >= duration('1ms')" => value
            .as_str()
            .and_then(go_duration_ms)
            .is_some_and(|ms| ms >= 1.0),
        "self.all(key, key.size() != 0)" => keys().all(|k| !k.is_empty()),
        "self.all(key, !key.contains(\"*\"))" => keys().all(|k| !k.contains('*')),
        "!self.contains(\"*\")" => !value.as_str().unwrap_or("").contains('*'),
        "self.size() == 0" => value.as_str().is_some_and(str::is_empty),
        "has(self.wasm) != has(self.lua)" => has("wasm") != has("lua"),
        r if r.starts_with("(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0)") => {
            ["selector", "targetRef", "targetRefs"]
                .iter()
                .filter(|k| has(k))
                .count()
                <= 1
        }
        r if r.starts_with("(has(self.selector) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0)") => {
            ["selector", "targetRefs"].iter().filter(|k| has(k)).count() <= 1
        }
        r if r.starts_with(
            "(has(self.workloadSelector) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1",
        ) =>
        {
            ["workloadSelector", "targetRefs"]
                .iter()
                .filter(|k| has(k))
                .count()
                <= 1
        }
        // EnvoyFilter: the `waypoint` match goes with context WAYPOINT only.
        "has(self.context) ? ((self.context == \"WAYPOINT\") ? has(self.waypoint) : !has(self.waypoint)) : !has(self.waypoint)" => {
            if value.get("context") == Some(&json!("WAYPOINT")) {
                has("waypoint")
            } else {
                !has("waypoint")
            }
        }
        "0 < self && self <= 65535" => value.as_u64().is_some_and(|p| (1..=65535).contains(&p)),
        r if r.starts_with("isURL(self) ? (url(self).getScheme() in") => {
            // Scheme one of http, https, oci, file (or none, read as http).
            let url = value.as_str().unwrap_or("");
            match url.split_once("://") {
                Some((scheme, rest)) => {
                    ["http", "https", "oci", "file"].contains(&scheme) && !rest.is_empty()
                }
                None => {
                    !url.contains(':')
                        || url
                            .split(':')
                            .nth(1)
                            .is_some_and(|p| p.chars().all(|c| c.is_ascii_digit() || c == '/'))
                }
            }
        }
        r if r.starts_with("(has(self.valueFrom) ? self.valueFrom : \"\") != \"HOST\"") => {
            value.get("valueFrom") != Some(&json!("HOST")) || !has("value")
        }
        other => panic!("CEL rule not evaluated by this test, add it to cel(): {other}"),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("CEL rule `{rule}` fails for {value}"))
    }
}

/// Walks `schema` and `value` together and evaluates every CEL rule on the
/// part of the value it applies to.
fn check_cel(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    for v in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let rule = v["rule"].as_str().unwrap_or_default();
        if let Err(e) = cel(rule, value) {
            errors.push(format!(
                "{path}: {} ({e})",
                v["message"].as_str().unwrap_or("CEL rule failed")
            ));
        }
    }
    match value {
        Value::Object(m) => {
            for (k, child) in m {
                let sub = schema["properties"]
                    .get(k)
                    .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()));
                if let Some(sub) = sub {
                    check_cel(sub, child, &format!("{path}.{k}"), errors);
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_cel(&schema["items"], item, &format!("{path}[{i}]"), errors);
            }
        }
        _ => {}
    }
}

/// All problems of one Istio manifest against the CRDs.
fn crd_problems(crds: &Crds, m: &Manifest) -> Vec<String> {
    let (group, version) = m.api_version().split_once('/').unwrap_or(("", ""));
    let Some(versions) = crds.get(&(group.to_string(), m.kind().to_string())) else {
        return vec![format!("no CRD for {} {}", m.api_version(), m.kind())];
    };
    let Some(v) = versions.get(version) else {
        return vec![format!(
            "{} is not a version of the {} CRD",
            m.api_version(),
            m.kind()
        )];
    };
    let mut problems = Vec::new();
    if !v.storage {
        let current = versions
            .iter()
            .find(|(_, v)| v.storage)
            .map(|(n, _)| n.as_str());
        problems.push(format!(
            "{} is not the current API version of {} (use {group}/{})",
            m.api_version(),
            m.kind(),
            current.unwrap_or("?")
        ));
    }
    if let Err(e) = validate_json_schema(&strict(&v.schema, true), "urn:crd", &m.doc) {
        problems.push(format!("schema: {e}"));
    }
    check_cel(&v.schema, &m.doc, "", &mut problems);
    problems
}

/// Validates `instance` against the schema file `istio/<file>`, resolving
/// its relative `$ref`s to the other schema files in `istio/` (as an editor
/// does).
fn validate_against_istio_schema(file: &str, instance: &Value) -> Result<(), String> {
    let dir = istio::istio_dir();
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    compiler.set_default_draft(boon::Draft::V2020_12);
    for f in [
        "meshguard-config.schema.json",
        "wasmplugin-meshguard.schema.json",
    ] {
        let path = dir.join(f);
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        compiler
            .add_resource(&format!("file://{}", path.display()), value)
            .map_err(|e| format!("{f}: {e}"))?;
    }
    let index = compiler
        .compile(
            &format!("file://{}", dir.join(file).display()),
            &mut schemas,
        )
        .map_err(|e| format!("{file}: {e:#}"))?;
    schemas
        .validate(instance, index)
        .map_err(|e| format!("{e:#}"))
}

/// Problems of a WasmPlugin's or TrafficExtension's pluginConfig: meshguard's
/// parser and schema (directly, and through the editor schema for whole
/// WasmPlugin files).
fn plugin_config_problems(m: &Manifest) -> Vec<String> {
    let mut problems = Vec::new();
    let text = istio::plugin_config_json(m);
    if let Err(e) = meshguard::config::Config::parse(text.as_bytes()) {
        problems.push(format!("meshguard refuses pluginConfig: {e}"));
    }
    let config: Value = if text.is_empty() {
        json!({})
    } else {
        serde_json::from_str(&text).expect("JSON")
    };
    if let Err(e) = validate_against_istio_schema("meshguard-config.schema.json", &config) {
        problems.push(format!(
            "pluginConfig against meshguard-config.schema.json: {e}"
        ));
    }
    // The editor schema is a WasmPlugin's (a TrafficExtension's pluginConfig
    // sits under `wasm`, checked above).
    if m.kind() == "WasmPlugin" {
        if let Err(e) = validate_against_istio_schema("wasmplugin-meshguard.schema.json", &m.doc) {
            problems.push(format!(
                "WasmPlugin against wasmplugin-meshguard.schema.json: {e}"
            ));
        }
    }
    problems
}

fn manifests() -> Vec<Manifest> {
    istio::load_manifests().unwrap_or_else(|e| panic!("{e}"))
}

/// `istio/wasmplugin.yaml`'s WasmPlugin (the one with a selector).
fn sidecar_plugin(all: &[Manifest]) -> &Manifest {
    istio::sidecar_plugin(all).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_istio_manifest_is_valid_against_istios_crds() {
    let crds = load_crds();
    let all = manifests();
    let mut checked = BTreeMap::<String, usize>::new();
    let mut problems = Vec::new();
    for m in &all {
        match m.api_version() {
            "v1" => {
                // Core kinds have no CRD here; the API server checks them.
                assert!(
                    ["Service", "ConfigMap"].contains(&m.kind()),
                    "{}: unexpected core kind",
                    m.label()
                );
                continue;
            }
            _ => {
                for p in crd_problems(&crds, m) {
                    problems.push(format!("{}: {p}", m.label()));
                }
            }
        }
        *checked.entry(m.kind().to_string()).or_default() += 1;
        if ["WasmPlugin", "TrafficExtension"].contains(&m.kind()) {
            for p in plugin_config_problems(m) {
                problems.push(format!("{}: {p}", m.label()));
            }
        }
    }
    println!("checked: {checked:?}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    for (kind, at_least) in [
        // Sidecar and waypoint.
        ("WasmPlugin", 2),
        ("TrafficExtension", 2),
        ("VirtualService", 2),
        ("DestinationRule", 1),
        // The upstream instance: sidecar and waypoint.
        ("EnvoyFilter", 2),
    ] {
        assert!(
            checked.get(kind).copied().unwrap_or(0) >= at_least,
            "istio/ should hold at least {at_least} {kind}: {checked:?}"
        );
    }
}

#[test]
fn manifests_agree_with_each_other() {
    let all = manifests();
    let plugin = sidecar_plugin(&all);
    let spec = plugin.spec();
    let config = &spec["pluginConfig"];
    // Every override names a VirtualService that exists, and each VS has one.
    let vs_names: Vec<String> = istio::of_kind(&all, "VirtualService")
        .iter()
        .map(|v| format!("{}/{}", v.namespace(), v.name()))
        .collect();
    let override_vs: Vec<String> = config["overrides"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["virtualService"].as_str().map(str::to_string))
        .collect();
    for o in &override_vs {
        assert!(
            vs_names.contains(o),
            "override for {o}, but istio/ has only {vs_names:?}"
        );
    }
    for v in &vs_names {
        assert!(
            override_vs.contains(v),
            "VirtualService {v} has no override in the WasmPlugin"
        );
    }
    // Every route is named (the name is the Envoy route name overrides can match).
    for vs in istio::of_kind(&all, "VirtualService") {
        for r in vs.spec()["http"].as_array().into_iter().flatten() {
            assert!(
                r["name"].as_str().is_some_and(|n| !n.is_empty()),
                "{}: unnamed http route",
                vs.label()
            );
        }
    }
    // Every VirtualService routes its whole host (docs/istio.md, step 4).
    for vs in istio::of_kind(&all, "VirtualService") {
        assert_eq!(without_catch_all(vs), None, "{}", vs.label());
    }
    // Steering goes through Istio's persistent-session header.
    let services = istio::of_kind(&all, "Service");
    assert!(
        !services.is_empty(),
        "istio/ should hold the Service with the session label"
    );
    for s in services {
        let label = s.doc["metadata"]["labels"]["istio.io/persistent-session-header"].as_str();
        assert_eq!(
            label,
            config["steering"]["header"].as_str(),
            "{}: the persistent-session header must be steering.header",
            s.label()
        );
    }
    assert_eq!(config["steering"]["encoding"], json!("base64"));
    // The choices docs/istio.md explains (step 7).
    assert_eq!(spec["failStrategy"], json!("FAIL_OPEN"));
    assert_eq!(spec["phase"], json!("STATS"));
    assert!(spec["url"]
        .as_str()
        .is_some_and(|u| u.starts_with("oci://")));
    assert_eq!(spec["pluginName"], json!("meshguard"));
}

/// A VirtualService whose last HTTP route matches only some requests: the
/// rest get 404 (`NR`) from the client's sidecar, never reaching the
/// Service. Some(why) for such a VirtualService.
fn without_catch_all(vs: &Manifest) -> Option<String> {
    let routes = vs.spec()["http"].as_array().cloned().unwrap_or_default();
    let Some(last) = routes.last() else {
        return Some("no http routes".into());
    };
    let catch_all = match &last["match"] {
        Value::Null => true,
        Value::Array(ms) => {
            ms.is_empty() || ms.iter().any(|m| m == &json!({"uri": {"prefix": "/"}}))
        }
        _ => false,
    };
    (!catch_all).then(|| {
        format!(
            "the last http route ({}) matches only some requests; end with a route without `match` \
             so that other paths do not get 404 (NR) from the client's sidecar",
            last["name"].as_str().unwrap_or("unnamed")
        )
    })
}

/// The checks above must fail on the mistakes they exist for.
#[test]
fn the_checks_catch_known_mistakes() {
    let crds = load_crds();
    let all = manifests();
    let find = |kind: &str| istio::of_kind(&all, kind)[0].clone();
    let mutate = mutated;
    let plugin = sidecar_plugin(&all).clone();
    let dr = find("DestinationRule");
    let vs = find("VirtualService");
    let only_prefix = mutated(&vs, &|d| {
        let first = d["spec"]["http"][0].clone();
        d["spec"]["http"] = json!([first]);
    });
    assert!(
        without_catch_all(&only_prefix).is_some(),
        "a VirtualService routing only /reviews must be flagged"
    );
    let bad: Vec<(&str, Manifest)> = vec![
        (
            "invented DestinationRule field",
            mutate(&dr, &|d| {
                d["spec"]["trafficPolicy"]["circuitBreaker"] = json!({"consecutiveErrors": 5});
            }),
        ),
        (
            "misspelt field",
            mutate(&dr, &|d| {
                d["spec"]["trafficPolicy"]["outlierDetection"]["consecutiveFailures"] = json!(5);
            }),
        ),
        (
            "wrong type",
            mutate(&dr, &|d| {
                d["spec"]["trafficPolicy"]["outlierDetection"]["maxEjectionPercent"] = json!("50%");
            }),
        ),
        (
            "duration below 1ms",
            mutate(&dr, &|d| {
                d["spec"]["trafficPolicy"]["outlierDetection"]["interval"] = json!("0s");
            }),
        ),
        (
            "old API version",
            mutate(&vs, &|d| {
                d["apiVersion"] = json!("networking.istio.io/v1alpha3")
            }),
        ),
        (
            "url scheme",
            mutate(&plugin, &|d| {
                d["spec"]["url"] = json!("ftp://example.com/meshguard.wasm")
            }),
        ),
        (
            "selector and targetRefs",
            mutate(&plugin, &|d| {
                d["spec"]["targetRefs"] = json!([{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw"}]);
            }),
        ),
        (
            "phase",
            mutate(&plugin, &|d| d["spec"]["phase"] = json!("BEFORE_ROUTER")),
        ),
        (
            "sha256 shape",
            mutate(&plugin, &|d| d["spec"]["sha256"] = json!("sha256:abc")),
        ),
    ];
    for (what, m) in &bad {
        assert!(
            !crd_problems(&crds, m).is_empty(),
            "the CRD check misses: {what}"
        );
    }
    let bad_configs: Vec<(&str, Value)> = vec![
        ("typo", json!({"detection": {"windowSze": 100}})),
        (
            "bare number duration",
            json!({"ejection": {"baseEjectionTime": 30}}),
        ),
    ];
    for (what, config) in bad_configs {
        let m = mutate(&plugin, &|d| d["spec"]["pluginConfig"] = config.clone());
        let problems = plugin_config_problems(&m);
        assert!(
            problems.iter().any(|p| p.contains("meshguard refuses")),
            "the pluginConfig check misses: {what}: {problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("against meshguard-config.schema.json")),
            "the schema misses: {what}: {problems:?}"
        );
    }
    // Cross-field rules are the parser's alone (JSON Schema cannot compare fields).
    let m = mutate(
        &plugin,
        &|d| {
            d["spec"]["pluginConfig"] =
                json!({"detection": {"degradedFailurePercent": 60, "unhealthyFailurePercent": 50}})
        },
    );
    assert!(plugin_config_problems(&m)
        .iter()
        .any(|p| p.contains("meshguard refuses")));
    // Whole doubles (how Istio passes numbers) are fine for both.
    let m = mutate(&plugin, &|d| {
        d["spec"]["pluginConfig"] = json!({"detection": {"windowSize": 50.0}})
    });
    assert!(plugin_config_problems(&m).is_empty());
}

/// The bootstrap override for Istio sidecars carries exactly the stats tags
/// of envoy/meshguard-stats-tags.yaml (which the demo and the tests use).
#[test]
fn istio_bootstrap_override_has_the_same_stats_tags() {
    let all = manifests();
    let cm = all
        .iter()
        .find(|m| m.kind() == "ConfigMap" && m.name() == "meshguard-bootstrap")
        .expect("istio/meshguard-bootstrap.yaml holds ConfigMap meshguard-bootstrap");
    let text = cm.doc["data"]["custom_bootstrap.json"]
        .as_str()
        .expect("data.custom_bootstrap.json (the key Istio reads)");
    let bootstrap: Value = serde_json::from_str(text).expect("custom_bootstrap.json is JSON");
    let envoy_tags =
        istio::yaml_documents(&istio::workspace_root().join("envoy/meshguard-stats-tags.yaml"))
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        bootstrap["stats_config"]["stats_tags"], envoy_tags[0]["stats_config"]["stats_tags"],
        "istio/meshguard-bootstrap.yaml and envoy/meshguard-stats-tags.yaml must define the same tags"
    );
    let plugin = sidecar_plugin(&all);
    assert_eq!(
        cm.namespace(),
        plugin.namespace(),
        "the ConfigMap must be in the workloads' namespace"
    );
}

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const ROUTER: &str = "envoy.filters.http.router";
const UPSTREAM_CODEC: &str = "envoy.filters.http.upstream_codec";

/// `value` with every number as a double, as the WasmPlugin's `Struct`
/// hands it over, so that `30` and `30.0` compare equal.
fn as_doubles(v: &Value) -> Value {
    match v {
        Value::Number(n) => n
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number),
        Value::Array(a) => Value::Array(a.iter().map(as_doubles).collect()),
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), as_doubles(v))).collect())
        }
        other => other.clone(),
    }
}

/// The config patches of an EnvoyFilter with this `applyTo`.
fn patches<'a>(ef: &'a Manifest, apply_to: &str) -> Vec<&'a Value> {
    ef.spec()["configPatches"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["applyTo"] == json!(apply_to))
        .collect()
}

/// Everything that keeps an EnvoyFilter's upstream instance from pairing
/// with the WasmPlugin's instance (in the same proxies, on the same records),
/// or from leaving istiod's own configuration alone. `services` are the
/// Services in istio/ (a waypoint's filter chain names one).
fn upstream_problems(ef: &Manifest, plugin: &Manifest, services: &[&Manifest]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut p = |m: String| problems.push(m);
    let wp = plugin.spec();
    let plugin_name = format!("{}.{}", plugin.namespace(), plugin.name());
    if ef.namespace() != plugin.namespace() {
        p(format!(
            "namespace {} is not the WasmPlugin's {}",
            ef.namespace(),
            plugin.namespace()
        ));
    }
    for c in patches(ef, "CLUSTER") {
        if c["patch"]["value"]
            .get("typed_extension_protocol_options")
            .is_some()
        {
            p(
                "a CLUSTER patch of typed_extension_protocol_options replaces the \
               HttpProtocolOptions istiod writes (map entries are replaced, not merged): \
               put the upstream filters on the router"
                    .into(),
            );
        }
    }

    // Patch 1: the ECDS resource with the module.
    let ext = patches(ef, "EXTENSION_CONFIG");
    let [ext] = ext.as_slice() else {
        p(format!(
            "expected one EXTENSION_CONFIG patch, found {}",
            ext.len()
        ));
        return problems;
    };
    if ext["patch"]["operation"] != json!("ADD") {
        p("the EXTENSION_CONFIG patch must ADD the resource".into());
    }
    let resource = &ext["patch"]["value"];
    let resource_name = resource["name"].as_str().unwrap_or_default().to_string();
    if resource_name.is_empty() || resource_name == plugin_name {
        p(format!(
            "ECDS resource name `{resource_name}` must be set and differ from the WasmPlugin's resource `{plugin_name}`"
        ));
    }
    let typed = &resource["typed_config"];
    if typed["@type"] != json!(WASM_TYPE) {
        p(format!(
            "ECDS resource is not a Wasm filter: {}",
            typed["@type"]
        ));
    }
    let cfg = &typed["config"];
    if cfg["name"].as_str() != Some(plugin_name.as_str()) {
        p(format!(
            "plugin name {} must be the WasmPlugin's Envoy name {plugin_name:?} (<namespace>.<name>): \
             both instances find the shared records by it",
            cfg["name"]
        ));
    }
    let vm = &cfg["vm_config"];
    if vm["vm_id"].as_str().unwrap_or_default() != "" {
        p(format!(
            "vm_id {} must be empty, as Istio leaves the WasmPlugin's",
            vm["vm_id"]
        ));
    }
    if vm["runtime"] != json!("envoy.wasm.runtime.v8") {
        p(format!("runtime {} is not Istio's v8", vm["runtime"]));
    }
    let root_id = cfg["root_id"].as_str().unwrap_or_default();
    if root_id.is_empty() || Some(root_id) == wp["pluginName"].as_str() {
        p(format!(
            "root_id `{root_id}` must be set and differ from the WasmPlugin's pluginName {} \
             (two plugins with one root_id share one root context)",
            wp["pluginName"]
        ));
    }
    let remote = &vm["code"]["remote"];
    if remote["http_uri"]["uri"] != wp["url"] || remote["sha256"] != wp["sha256"] {
        p(format!(
            "module {} ({}) is not the WasmPlugin's {} ({})",
            remote["http_uri"]["uri"], remote["sha256"], wp["url"], wp["sha256"]
        ));
    }
    if remote["http_uri"]["cluster"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        p("http_uri.cluster is required by Envoy's schema (istiod writes \"_\")".into());
    }
    let policy = cfg["failure_policy"].as_str().unwrap_or("FAIL_CLOSED");
    if policy != istio::failure_policy(wp["failStrategy"].as_str()) {
        p(format!(
            "failure_policy {policy} differs from the WasmPlugin's failStrategy {}",
            wp["failStrategy"]
        ));
    }
    let conf = &cfg["configuration"];
    if conf["@type"] != json!("type.googleapis.com/google.protobuf.StringValue") {
        p(format!(
            "configuration must be a StringValue, is {}",
            conf["@type"]
        ));
    }
    let text = conf["value"].as_str().unwrap_or_default();
    match meshguard::config::Config::parse(text.as_bytes()) {
        Err(e) => p(format!("meshguard refuses the upstream configuration: {e}")),
        Ok(c) if c.mode != meshguard::config::Mode::Upstream => {
            p(format!("configuration has mode {:?}, not upstream", c.mode))
        }
        Ok(_) => {}
    }
    let parsed: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    for section in ["detection", "ejection"] {
        let mine = as_doubles(&parsed[section]);
        let theirs = as_doubles(&wp["pluginConfig"][section]);
        if mine != theirs {
            p(format!(
                "{section} differs from the WasmPlugin's: {mine} vs {theirs}"
            ));
        }
    }

    // Patch 2: the router's upstream filters.
    let routers: Vec<&Value> = patches(ef, "HTTP_FILTER")
        .into_iter()
        .filter(|h| {
            h["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] == json!(ROUTER)
        })
        .collect();
    let [router] = routers.as_slice() else {
        p(format!(
            "expected one HTTP_FILTER patch of {ROUTER}, found {}",
            routers.len()
        ));
        return problems;
    };
    if router["patch"]["operation"] != json!("MERGE") {
        p(format!(
            "the router patch must MERGE (keep istiod's router), is {}",
            router["patch"]["operation"]
        ));
    }
    if router["match"]["listener"]["filterChain"]["filter"]["name"]
        != json!("envoy.filters.network.http_connection_manager")
    {
        p("the router patch must match the HTTP connection manager".into());
    }
    let value = &router["patch"]["value"];
    if value["typed_config"]["@type"]
        != json!("type.googleapis.com/envoy.extensions.filters.http.router.v3.Router")
    {
        p(format!(
            "router typed_config is {}",
            value["typed_config"]["@type"]
        ));
    }
    let filters = value["typed_config"]["upstream_http_filters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = filters
        .iter()
        .map(|f| f["name"].as_str().unwrap_or_default())
        .collect();
    if names != [resource_name.as_str(), UPSTREAM_CODEC] {
        p(format!(
            "upstream_http_filters must be [{resource_name}, {UPSTREAM_CODEC}] (the codec last), are {names:?}"
        ));
    }
    if let Some(f) = filters.first() {
        let cd = &f["config_discovery"];
        let types: Vec<&str> = cd["type_urls"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if cd["config_source"]["ads"].is_null() || !types.contains(&WASM_TYPE) {
            p(format!(
                "{resource_name} must come by ADS as a Wasm filter (config_discovery), is {f}"
            ));
        }
        if !types.contains(&"type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC") {
            p(
                "type_urls must allow RBAC: istio-agent sends an RBAC filter when the pull fails"
                    .into(),
            );
        }
    }

    // Where: the WasmPlugin's workloads (sidecar) or a waypoint.
    let m = &router["match"];
    let selector = &ef.spec()["workloadSelector"];
    if !selector.is_null() {
        if selector["labels"] != wp["selector"]["matchLabels"] {
            p(format!(
                "workloadSelector {} is not the WasmPlugin's selector {}",
                selector["labels"], wp["selector"]["matchLabels"]
            ));
        }
        if m["context"] != json!("SIDECAR_OUTBOUND") {
            p(format!(
                "in a sidecar the client's routes are SIDECAR_OUTBOUND, not {}",
                m["context"]
            ));
        }
        let port = m["listener"]["portNumber"].as_u64();
        let service_ports: Vec<u64> = services
            .iter()
            .flat_map(|s| s.spec()["ports"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p["port"].as_u64())
            .collect();
        if !port.is_some_and(|p| service_ports.contains(&p)) {
            p(format!(
                "listener portNumber {port:?} is no Service port of istio/ ({service_ports:?})"
            ));
        }
    } else {
        let refs = ef.spec()["targetRefs"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if refs.is_empty()
            || refs.iter().any(|r| {
                r["kind"] != json!("Gateway") || r["group"] != json!("gateway.networking.k8s.io")
            })
        {
            p(format!(
                "a waypoint EnvoyFilter targets the waypoint's Gateway, not {refs:?}"
            ));
        }
        // istiod patches a waypoint's main_internal listener in the
        // SIDECAR_INBOUND context (WAYPOINT is not implemented yet).
        if m["context"] != json!("SIDECAR_INBOUND")
            || m["listener"]["name"] != json!("main_internal")
        {
            p(format!(
                "a waypoint's routes are on listener main_internal in context SIDECAR_INBOUND, not {m}"
            ));
        }
        let chain = m["listener"]["filterChain"]["name"].as_str();
        let chains: Vec<String> = services
            .iter()
            .flat_map(|s| {
                let fqdn = istio::fqdn(s.name(), s.namespace());
                s.spec()["ports"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(move |p| {
                        p["port"]
                            .as_u64()
                            .map(|port| format!("inbound-vip|{port}|http|{fqdn}"))
                    })
            })
            .collect();
        if chain.is_some_and(|c| !chains.iter().any(|x| x == c)) {
            p(format!(
                "filter chain {chain:?} is no Service's waypoint chain ({chains:?})"
            ));
        }
    }
    problems
}

#[test]
fn upstream_instances_pair_with_the_wasmplugin() {
    let all = manifests();
    let plugin = sidecar_plugin(&all);
    let services = istio::of_kind(&all, "Service");
    // The upstream instances (not the waypoint's session filter).
    let filters: Vec<&Manifest> = istio::of_kind(&all, "EnvoyFilter")
        .into_iter()
        .filter(|f| f.file.starts_with("envoyfilter-upstream"))
        .collect();
    let files: Vec<&str> = filters.iter().map(|f| f.file.as_str()).collect();
    for f in [
        "envoyfilter-upstream.yaml",
        "envoyfilter-upstream-waypoint.yaml",
    ] {
        assert!(files.contains(&f), "istio/{f} is missing: {files:?}");
    }
    let mut problems = Vec::new();
    for ef in &filters {
        for p in upstream_problems(ef, plugin, &services) {
            problems.push(format!("{}: {p}", ef.label()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // One sidecar and one waypoint variant.
    assert!(filters
        .iter()
        .any(|f| !f.spec()["workloadSelector"].is_null()));
    assert!(filters.iter().any(|f| !f.spec()["targetRefs"].is_null()));
}

/// A copy of `m` with `f` applied to its document: one known mistake.
fn mutated(m: &Manifest, f: &dyn Fn(&mut Value)) -> Manifest {
    let mut m = m.clone();
    f(&mut m.doc);
    m
}

/// The manifest in `istio/<file>`.
fn in_file(all: &[Manifest], file: &str) -> Manifest {
    all.iter()
        .find(|m| m.file == file)
        .unwrap_or_else(|| panic!("istio/{file}"))
        .clone()
}

/// The EnvoyFilter checks fail on the mistakes they exist for.
#[test]
fn the_upstream_checks_catch_known_mistakes() {
    let crds = load_crds();
    let all = manifests();
    let plugin = sidecar_plugin(&all);
    let services = istio::of_kind(&all, "Service");
    let find = |file: &str| in_file(&all, file);
    let sidecar = find("envoyfilter-upstream.yaml");
    let waypoint = find("envoyfilter-upstream-waypoint.yaml");
    let mutate = mutated;
    fn wasm(d: &mut Value) -> &mut Value {
        &mut d["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"]
    }
    let set_config = |text: &str| {
        let text = text.to_string();
        move |d: &mut Value| wasm(d)["configuration"]["value"] = json!(text.clone())
    };
    // Against the CRD.
    let crd_bad: Vec<(&str, Manifest)> = vec![
        (
            "misspelt field",
            mutate(&sidecar, &|d| {
                d["spec"]["configPatch"] = d["spec"]["configPatches"].clone()
            }),
        ),
        (
            "applyTo",
            mutate(&sidecar, &|d| {
                d["spec"]["configPatches"][1]["applyTo"] = json!("UPSTREAM_HTTP_FILTER")
            }),
        ),
        (
            "workloadSelector and targetRefs",
            mutate(&waypoint, &|d| {
                d["spec"]["workloadSelector"] = json!({"labels": {"app": "frontend"}})
            }),
        ),
        (
            "WAYPOINT context without a waypoint match",
            mutate(&waypoint, &|d| {
                d["spec"]["configPatches"][1]["match"]["context"] = json!("WAYPOINT")
            }),
        ),
        (
            "waypoint match outside WAYPOINT",
            mutate(&waypoint, &|d| {
                d["spec"]["configPatches"][1]["match"]["waypoint"] = json!({"portNumber": 9080})
            }),
        ),
        (
            "cross-namespace targetRef",
            mutate(&waypoint, &|d| {
                d["spec"]["targetRefs"][0]["namespace"] = json!("istio-system")
            }),
        ),
    ];
    for (what, m) in &crd_bad {
        assert!(
            !crd_problems(&crds, m).is_empty(),
            "the CRD check misses: {what}"
        );
    }
    // Against the pairing rules.
    let pairing_bad: Vec<(&str, Manifest)> = vec![
        (
            "plugin name without the namespace",
            mutate(&sidecar, &|d| {
                wasm(d)["name"] = json!("meshguard");
            }),
        ),
        (
            "own vm_id",
            mutate(&sidecar, &|d| {
                wasm(d)["vm_config"]["vm_id"] = json!("meshguard");
            }),
        ),
        (
            "the WasmPlugin's root_id",
            mutate(&sidecar, &|d| {
                wasm(d)["root_id"] = json!("meshguard");
            }),
        ),
        (
            "another module",
            mutate(&sidecar, &|d| {
                wasm(d)["vm_config"]["code"]["remote"]["http_uri"]["uri"] =
                    json!("oci://registry.example.com/shop/meshguard:0.0.9");
            }),
        ),
        (
            "downstream mode",
            mutate(
                &sidecar,
                &set_config(r#"{"detection": {"windowSize": 100}}"#),
            ),
        ),
        (
            "steering in the upstream instance",
            mutate(
                &sidecar,
                &set_config(r#"{"mode": "upstream", "steering": {"header": "x"}}"#),
            ),
        ),
        (
            "other thresholds",
            mutate(
                &waypoint,
                &set_config(r#"{"mode": "upstream", "detection": {"windowSize": 50}}"#),
            ),
        ),
        (
            "codec not last",
            mutate(&sidecar, &|d| {
                let v = &mut d["spec"]["configPatches"][1]["patch"]["value"]["typed_config"]
                    ["upstream_http_filters"];
                let a = v.as_array_mut().expect("list");
                a.reverse();
            }),
        ),
        (
            "router replaced",
            mutate(&sidecar, &|d| {
                d["spec"]["configPatches"][1]["patch"]["operation"] = json!("REPLACE")
            }),
        ),
        (
            "other workloads",
            mutate(&sidecar, &|d| {
                d["spec"]["workloadSelector"]["labels"] = json!({"app": "reviews"})
            }),
        ),
        (
            "inbound context in a sidecar",
            mutate(&sidecar, &|d| {
                d["spec"]["configPatches"][1]["match"]["context"] = json!("SIDECAR_INBOUND")
            }),
        ),
        (
            "waypoint chain of an unknown Service",
            mutate(&waypoint, &|d| {
                d["spec"]["configPatches"][1]["match"]["listener"]["filterChain"]["name"] =
                    json!("inbound-vip|9080|http|ratings.shop.svc.cluster.local")
            }),
        ),
        (
            "a cluster patch of the protocol options",
            mutate(&sidecar, &|d| {
                d["spec"]["configPatches"]
                    .as_array_mut()
                    .expect("list")
                    .push(json!({
                        "applyTo": "CLUSTER",
                        "match": {"context": "SIDECAR_OUTBOUND"},
                        "patch": {"operation": "MERGE", "value": {"typed_extension_protocol_options": {}}},
                    }))
            }),
        ),
    ];
    for (what, m) in &pairing_bad {
        assert!(
            !upstream_problems(m, plugin, &services).is_empty(),
            "the pairing check misses: {what}"
        );
    }
}

/// The other forms of the sidecar WasmPlugin (`istio/trafficextension.yaml`,
/// `istio/ambient-*-waypoint.yaml`).
const ALTERNATIVES: [&str; 3] = [
    "trafficextension.yaml",
    "ambient-wasmplugin-waypoint.yaml",
    "ambient-trafficextension-waypoint.yaml",
];

/// What keeps a TrafficExtension or waypoint WasmPlugin from being the
/// sidecar WasmPlugin in another form: the same name (so that the upstream
/// EnvoyFilters pair with whichever is applied), module, plugin name, phase,
/// failure strategy and `pluginConfig`. A sidecar one selects the same
/// workloads and traffic. A waypoint one attaches through `targetRefs` only
/// (istiod ignores `selector` on waypoints), to the waypoint's Gateway that
/// the waypoint EnvoyFilter targets or to a Service of `istio/`, and has no
/// `match` a waypoint fails: istiod matches a waypoint's listeners as
/// SERVER side with no port, so `mode: CLIENT` or port selectors attach
/// nothing there.
fn alternative_problems(
    m: &Manifest,
    sidecar: &Manifest,
    waypoint_refs: &[Value],
    services: &[&Manifest],
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut p = |m: String| problems.push(m);
    if (m.namespace(), m.name()) != (sidecar.namespace(), sidecar.name()) {
        p(format!(
            "name {}/{} is not the sidecar WasmPlugin's {}/{}: the upstream EnvoyFilters \
             pair by it",
            m.namespace(),
            m.name(),
            sidecar.namespace(),
            sidecar.name()
        ));
    }
    let spec = m.spec();
    let wasm = if m.kind() == "TrafficExtension" {
        &spec["wasm"]
    } else {
        spec
    };
    let theirs = sidecar.spec();
    for key in [
        "url",
        "sha256",
        "imagePullPolicy",
        "pluginName",
        "type",
        "failStrategy",
    ] {
        if wasm[key] != theirs[key] {
            p(format!(
                "{key} {} differs from the sidecar WasmPlugin's {}",
                wasm[key], theirs[key]
            ));
        }
    }
    if spec["phase"] != theirs["phase"] {
        p(format!(
            "phase {} differs from the sidecar WasmPlugin's {}",
            spec["phase"], theirs["phase"]
        ));
    }
    let mine = as_doubles(istio::plugin_config(m));
    let config = as_doubles(istio::plugin_config(sidecar));
    if mine != config {
        p(format!(
            "pluginConfig differs from the sidecar WasmPlugin's: {mine} vs {config}"
        ));
    }
    let refs = spec["targetRefs"].as_array().cloned().unwrap_or_default();
    if refs.is_empty() {
        for key in ["selector", "match"] {
            if spec[key] != theirs[key] {
                p(format!(
                    "{key} {} is not the sidecar WasmPlugin's {}",
                    spec[key], theirs[key]
                ));
            }
        }
        return problems;
    }
    if !spec["selector"].is_null() || !spec["targetRef"].is_null() {
        p("a waypoint plugin attaches through targetRefs only".into());
    }
    for r in &refs {
        let gateway = r["kind"] == json!("Gateway")
            && r["group"] == json!("gateway.networking.k8s.io")
            && waypoint_refs.iter().any(|w| w["name"] == r["name"]);
        let service = r["kind"] == json!("Service")
            && r["group"].as_str().unwrap_or_default().is_empty()
            && services.iter().any(|s| json!(s.name()) == r["name"]);
        if !(gateway || service) {
            p(format!(
                "targetRef {r} is neither the waypoint's Gateway ({waypoint_refs:?}, as the \
                 waypoint EnvoyFilter targets it) nor a Service of istio/"
            ));
        }
    }
    for t in spec["match"].as_array().into_iter().flatten() {
        let mode = t["mode"].as_str().unwrap_or("UNDEFINED");
        if !["SERVER", "CLIENT_AND_SERVER", "UNDEFINED"].contains(&mode) || !t["ports"].is_null() {
            p(format!(
                "match {t} attaches nothing on a waypoint (its listeners are SERVER side, \
                 with no port)"
            ));
        }
    }
    problems
}

#[test]
fn trafficextensions_and_waypoint_plugins_are_the_sidecar_wasmplugin() {
    let all = manifests();
    let sidecar = sidecar_plugin(&all);
    let services = istio::of_kind(&all, "Service");
    let waypoint_ef = istio::of_kind(&all, "EnvoyFilter")
        .into_iter()
        .find(|f| !f.spec()["targetRefs"].is_null())
        .expect("istio/envoyfilter-upstream-waypoint.yaml targets the waypoint");
    let waypoint_refs = waypoint_ef.spec()["targetRefs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut problems = Vec::new();
    for file in ALTERNATIVES {
        let docs: Vec<&Manifest> = all.iter().filter(|m| m.file == file).collect();
        let [m] = docs.as_slice() else {
            panic!("istio/{file} should hold one object, holds {}", docs.len());
        };
        let kind = if file.contains("wasmplugin") {
            "WasmPlugin"
        } else {
            "TrafficExtension"
        };
        assert_eq!(m.kind(), kind, "istio/{file}");
        assert_eq!(
            file.starts_with("ambient-"),
            !m.spec()["targetRefs"].is_null(),
            "istio/{file}: the ambient files (and only they) attach through targetRefs"
        );
        for p in alternative_problems(m, sidecar, &waypoint_refs, &services) {
            problems.push(format!("{}: {p}", m.label()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The checks of the TrafficExtensions and waypoint plugins fail on the
/// mistakes they exist for.
#[test]
fn the_trafficextension_and_waypoint_checks_catch_known_mistakes() {
    let crds = load_crds();
    let all = manifests();
    let sidecar = sidecar_plugin(&all);
    let services = istio::of_kind(&all, "Service");
    let find = |file: &str| in_file(&all, file);
    let te = find("trafficextension.yaml");
    let te_waypoint = find("ambient-trafficextension-waypoint.yaml");
    let wp_waypoint = find("ambient-wasmplugin-waypoint.yaml");
    let waypoint_refs =
        vec![json!({"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"})];
    let mutate = mutated;
    // The unchanged files pass each check below, so a failure is the mistake's.
    for m in [&te, &te_waypoint, &wp_waypoint] {
        assert!(crd_problems(&crds, m).is_empty(), "{}", m.label());
        assert!(plugin_config_problems(m).is_empty(), "{}", m.label());
        assert!(
            alternative_problems(m, sidecar, &waypoint_refs, &services).is_empty(),
            "{}",
            m.label()
        );
    }
    let crd_bad: Vec<(&str, Manifest)> = vec![
        (
            "pluginConfig beside wasm, as in a WasmPlugin",
            mutate(&te, &|d| {
                d["spec"]["pluginConfig"] = d["spec"]["wasm"]["pluginConfig"].clone()
            }),
        ),
        (
            "url beside wasm",
            mutate(&te, &|d| {
                let url = d["spec"]["wasm"]["url"].clone();
                d["spec"]["url"] = url;
            }),
        ),
        (
            "selector and targetRefs",
            mutate(&te_waypoint, &|d| {
                d["spec"]["selector"] = json!({"matchLabels": {"app": "frontend"}})
            }),
        ),
        (
            "no wasm",
            mutate(&te, &|d| {
                d["spec"].as_object_mut().expect("spec").remove("wasm");
            }),
        ),
        (
            "wasm and lua",
            mutate(&te, &|d| {
                d["spec"]["lua"] = json!({"inlineCode": "function envoy_on_request(h) end"})
            }),
        ),
        (
            "url scheme",
            mutate(&te, &|d| {
                d["spec"]["wasm"]["url"] = json!("ftp://example.com/meshguard.wasm")
            }),
        ),
        (
            "sha256 shape",
            mutate(&te, &|d| d["spec"]["wasm"]["sha256"] = json!("sha256:abc")),
        ),
        (
            "WasmPlugin's FAIL_CLOSE spelt as Envoy's",
            mutate(&te, &|d| {
                d["spec"]["wasm"]["failStrategy"] = json!("FAIL_CLOSED")
            }),
        ),
        (
            "cross-namespace targetRef",
            mutate(&te_waypoint, &|d| {
                d["spec"]["targetRefs"][0]["namespace"] = json!("istio-system")
            }),
        ),
        (
            "targetRef without kind",
            mutate(&wp_waypoint, &|d| {
                d["spec"]["targetRefs"][0]
                    .as_object_mut()
                    .expect("ref")
                    .remove("kind");
            }),
        ),
        (
            "waypoint WasmPlugin with a selector as well",
            mutate(&wp_waypoint, &|d| {
                d["spec"]["selector"] = json!({"matchLabels": {"app": "frontend"}})
            }),
        ),
    ];
    for (what, m) in &crd_bad {
        assert!(
            !crd_problems(&crds, m).is_empty(),
            "the CRD check misses: {what}"
        );
    }
    let m = mutate(&te_waypoint, &|d| {
        d["spec"]["wasm"]["pluginConfig"]["detection"]["windowSze"] = json!(100)
    });
    assert!(
        plugin_config_problems(&m)
            .iter()
            .any(|p| p.contains("meshguard refuses")),
        "the pluginConfig check misses a typo under wasm"
    );
    let other_bad: Vec<(&str, Manifest)> = vec![
        (
            "client-side match on a waypoint",
            mutate(&te_waypoint, &|d| {
                d["spec"]["match"] = json!([{"mode": "CLIENT"}])
            }),
        ),
        (
            "port selector on a waypoint",
            mutate(&wp_waypoint, &|d| {
                d["spec"]["match"] = json!([{"mode": "SERVER", "ports": [{"number": 9080}]}])
            }),
        ),
        (
            "another Gateway",
            mutate(&wp_waypoint, &|d| {
                d["spec"]["targetRefs"][0]["name"] = json!("ingress")
            }),
        ),
        (
            "a Service with the Gateway's group",
            mutate(
                &te_waypoint,
                &|d| d["spec"]["targetRefs"] = json!([{"kind": "Service", "group": "gateway.networking.k8s.io", "name": "reviews"}]),
            ),
        ),
        (
            "another name",
            mutate(&te_waypoint, &|d| {
                d["metadata"]["name"] = json!("meshguard-waypoint")
            }),
        ),
        (
            "other thresholds",
            mutate(&te, &|d| {
                d["spec"]["wasm"]["pluginConfig"]["detection"]["windowSize"] = json!(50)
            }),
        ),
        (
            "other workloads",
            mutate(&te, &|d| {
                d["spec"]["selector"]["matchLabels"] = json!({"app": "reviews"})
            }),
        ),
        (
            "another module",
            mutate(&wp_waypoint, &|d| {
                d["spec"]["url"] = json!("oci://registry.example.com/shop/meshguard:0.0.9")
            }),
        ),
    ];
    for (what, m) in &other_bad {
        assert!(
            !alternative_problems(m, sidecar, &waypoint_refs, &services).is_empty(),
            "the agreement check misses: {what}"
        );
    }
    // A Service that uses the waypoint is a valid target too.
    let m = mutate(&te_waypoint, &|d| {
        d["spec"]["targetRefs"] = json!([{"kind": "Service", "group": "", "name": "reviews"}])
    });
    assert!(crd_problems(&crds, &m).is_empty());
    assert!(alternative_problems(&m, sidecar, &waypoint_refs, &services).is_empty());
}

const SESSION_FILE: &str = "envoyfilter-waypoint-session.yaml";
const STATEFUL_SESSION: &str = "envoy.filters.http.stateful_session";

/// What keeps `istio/envoyfilter-waypoint-session.yaml` from adding the
/// session filter that steers by meshguard's header in the waypoint: one
/// HTTP_FILTER patch inserting a header-based stateful_session filter before
/// the router of the waypoint's `main_internal` listener (context
/// SIDECAR_INBOUND), for the waypoint the plugins target, reading the
/// plugins' `steering.header` (which they write base64-encoded).
fn session_problems(ef: &Manifest, plugins: &[&Manifest], waypoint_refs: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut p = |m: String| problems.push(m);
    let refs = ef.spec()["targetRefs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if refs.as_slice() != waypoint_refs || !ef.spec()["workloadSelector"].is_null() {
        p(format!(
            "targets {refs:?}, not the waypoint {waypoint_refs:?} that the plugins target"
        ));
    }
    let all = ef.spec()["configPatches"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let [patch] = all.as_slice() else {
        p(format!("expected one patch, found {}", all.len()));
        return problems;
    };
    let m = &patch["match"];
    if patch["applyTo"] != json!("HTTP_FILTER")
        || m["context"] != json!("SIDECAR_INBOUND")
        || m["listener"]["name"] != json!("main_internal")
        || m["listener"]["filterChain"]["filter"]["name"]
            != json!("envoy.filters.network.http_connection_manager")
        || m["listener"]["filterChain"]["filter"]["subFilter"]["name"] != json!(ROUTER)
    {
        p(format!(
            "the patch must be an HTTP_FILTER of the router of listener main_internal in \
             context SIDECAR_INBOUND (how istiod patches a waypoint), is {patch}"
        ));
    }
    if patch["patch"]["operation"] != json!("INSERT_BEFORE") {
        p(format!(
            "the session filter goes just before the router (INSERT_BEFORE), after meshguard, \
             not {}",
            patch["patch"]["operation"]
        ));
    }
    let value = &patch["patch"]["value"];
    let state = &value["typed_config"]["session_state"];
    if value["name"] != json!(STATEFUL_SESSION)
        || value["typed_config"]["@type"]
            != json!("type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSession")
        || state["name"] != json!("envoy.http.stateful_session.header")
        || state["typed_config"]["@type"]
            != json!("type.googleapis.com/envoy.extensions.http.stateful_session.header.v3.HeaderBasedSessionState")
    {
        p(format!(
            "the filter must be {STATEFUL_SESSION} with header-based session state, is {value}"
        ));
    }
    for plugin in plugins {
        let steering = &istio::plugin_config(plugin)["steering"];
        if state["typed_config"]["name"] != steering["header"]
            || steering["encoding"] != json!("base64")
        {
            p(format!(
                "the session header {} must be {}'s steering.header {} (encoding base64, is {})",
                state["typed_config"]["name"],
                plugin.label(),
                steering["header"],
                steering["encoding"]
            ));
        }
    }
    problems
}

#[test]
fn the_waypoint_session_filter_reads_meshguards_header() {
    let all = manifests();
    let session = all
        .iter()
        .find(|m| m.file == SESSION_FILE)
        .unwrap_or_else(|| panic!("istio/{SESSION_FILE}"));
    let plugins: Vec<&Manifest> = all
        .iter()
        .filter(|m| m.file.starts_with("ambient-"))
        .collect();
    assert_eq!(plugins.len(), 2, "the two waypoint plugins");
    let waypoint_refs = plugins[0].spec()["targetRefs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let problems = session_problems(session, &plugins, &waypoint_refs);
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    let crds = load_crds();
    let mutate = |f: &dyn Fn(&mut Value)| {
        let mut m = session.clone();
        f(&mut m.doc);
        m
    };
    let crd_bad = [
        (
            "insert position",
            mutate(&|d| d["spec"]["configPatches"][0]["patch"]["operation"] = json!("INSERT")),
        ),
        (
            "waypoint match outside WAYPOINT",
            mutate(&|d| {
                d["spec"]["configPatches"][0]["match"]["waypoint"] = json!({"portNumber": 9080})
            }),
        ),
    ];
    for (what, m) in &crd_bad {
        assert!(
            !crd_problems(&crds, m).is_empty(),
            "the CRD check misses: {what}"
        );
    }
    let bad = [
        (
            "after the router",
            mutate(&|d| {
                d["spec"]["configPatches"][0]["patch"]["operation"] = json!("INSERT_AFTER")
            }),
        ),
        (
            "another header",
            mutate(&|d| {
                d["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["session_state"]
                    ["typed_config"]["name"] = json!("x-session")
            }),
        ),
        (
            "a cookie",
            mutate(&|d| {
                d["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["session_state"]
                    ["name"] = json!("envoy.http.stateful_session.cookie")
            }),
        ),
        (
            "sidecar outbound context",
            mutate(&|d| {
                d["spec"]["configPatches"][0]["match"]["context"] = json!("SIDECAR_OUTBOUND")
            }),
        ),
        (
            "another waypoint",
            mutate(&|d| d["spec"]["targetRefs"][0]["name"] = json!("other")),
        ),
    ];
    for (what, m) in &bad {
        assert!(
            !session_problems(m, &plugins, &waypoint_refs).is_empty(),
            "the session check misses: {what}"
        );
    }
}
