//! Every manifest in `istio/` checked the way a cluster would check it, and
//! a bit more:
//!
//! - Istio kinds against Istio's own CRD schemas (`../shared/istio-crds/`,
//!   `openAPIV3Schema` of the version the manifest uses), with unknown fields
//!   refused as `kubectl apply` does (strict field validation), and the
//!   manifest's apiVersion the CRD's current (storage) version;
//! - the CEL rules (`x-kubernetes-validations`) those schemas carry, each
//!   evaluated here (url scheme, selector vs targetRef(s), durations >= 1ms,
//!   label keys and values, ...); a rule this test does not know fails it;
//! - each WasmPlugin's `pluginConfig`, as Envoy receives it from Istio (JSON,
//!   numbers as doubles), accepted by meshguard's own parser and valid
//!   against `istio/meshguard-config.schema.json` (and the whole WasmPlugin
//!   against the editor schema `istio/wasmplugin-meshguard.schema.json`);
//! - the manifests agree with each other (overrides name existing
//!   VirtualServices, the steering header is the Service's
//!   persistent-session header);
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
    let dir = istio::crds_dir().unwrap_or_else(|e| panic!("{e}"));
    let mut crds = Crds::new();
    for file in [
        "wasmplugins.yaml",
        "virtualservices.yaml",
        "destinationrules.yaml",
        "trafficextensions.yaml",
    ] {
        for doc in istio::yaml_documents(&dir.join(file)).unwrap_or_else(|e| panic!("{e}")) {
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
    assert!(crds.len() >= 3, "too few CRDs in {}", dir.display());
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

/// Problems of a WasmPlugin's pluginConfig: meshguard's parser and schema
/// (directly, and through the editor schema for whole WasmPlugin files).
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
    if let Err(e) = validate_against_istio_schema("wasmplugin-meshguard.schema.json", &m.doc) {
        problems.push(format!(
            "WasmPlugin against wasmplugin-meshguard.schema.json: {e}"
        ));
    }
    problems
}

fn manifests() -> Vec<Manifest> {
    istio::load_manifests().unwrap_or_else(|e| panic!("{e}"))
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
        if m.kind() == "WasmPlugin" {
            for p in plugin_config_problems(m) {
                problems.push(format!("{}: {p}", m.label()));
            }
        }
    }
    println!("checked: {checked:?}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    for (kind, at_least) in [
        ("WasmPlugin", 1),
        ("VirtualService", 2),
        ("DestinationRule", 1),
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
    let plugins = istio::of_kind(&all, "WasmPlugin");
    let plugin = plugins[0];
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
    // The choices the README explains.
    assert_eq!(spec["failStrategy"], json!("FAIL_OPEN"));
    assert_eq!(spec["phase"], json!("STATS"));
    assert!(spec["url"]
        .as_str()
        .is_some_and(|u| u.starts_with("oci://")));
    assert_eq!(spec["pluginName"], json!("meshguard"));
}

/// The checks above must fail on the mistakes they exist for.
#[test]
fn the_checks_catch_known_mistakes() {
    let crds = load_crds();
    let all = manifests();
    let find = |kind: &str| istio::of_kind(&all, kind)[0].clone();
    let mutate = |m: &Manifest, f: &dyn Fn(&mut Value)| {
        let mut m = m.clone();
        f(&mut m.doc);
        m
    };
    let plugin = find("WasmPlugin");
    let dr = find("DestinationRule");
    let vs = find("VirtualService");
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
    let plugin = &istio::of_kind(&all, "WasmPlugin")[0];
    assert_eq!(
        cm.namespace(),
        plugin.namespace(),
        "the ConfigMap must be in the workloads' namespace"
    );
}
