//! The filter's modules import one way: no cycle among the top-level
//! modules of `src/` (a file `a/b.rs` belongs to `a`). Test code is left
//! out (files `tests.rs` and `*_tests.rs`, and a file's trailing
//! `#[cfg(test)]` module): tests may reach any layer.
//!
//! The layers, bottom up: leaves with no crate imports (`model`, `window`,
//! `glob`, `template`, `steering`, ...), `config` (settings), the domain
//! (`classify`, `health`, `breaker`, `headers`, `service`, ...), `state`
//! (per-worker tables over shared data), `shell` (the proxy-wasm ABI).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Top-level module name -> the top-level modules its code refers to.
type Graph = BTreeMap<String, BTreeSet<String>>;

fn collect(dir: &Path, top: Option<&str>, graph: &mut Graph) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("src/ is readable")
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        if path.is_dir() {
            collect(&path, Some(top.unwrap_or(&name)), graph);
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some("rs")
            || name == "tests"
            || name.ends_with("_tests")
        {
            continue;
        }
        let module = top.unwrap_or(&name).to_string();
        if module == "lib" {
            continue;
        }
        let text = fs::read_to_string(&path).expect("source is readable");
        let deps = graph.entry(module.clone()).or_default();
        for line in text.lines() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                // What follows is the file's test module (the convention
                // here: it is last).
                break;
            }
            let code = line.split("//").next().unwrap_or_default();
            let mut rest = code;
            while let Some(at) = rest.find("crate::") {
                let tail = &rest[at + "crate::".len()..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                let target = &tail[..end];
                assert!(
                    !tail.starts_with('{'),
                    "{}: `crate::{{...}}` groups are not read here; import each module on its own line",
                    path.display()
                );
                if !target.is_empty() && target != module {
                    deps.insert(target.to_string());
                }
                rest = &tail[end..];
            }
        }
    }
}

fn graph() -> Graph {
    let mut graph = Graph::new();
    collect(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        None,
        &mut graph,
    );
    graph
}

/// A cycle if there is one, as the modules along it.
fn cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        graph: &Graph,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_string());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(graph, next, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(graph, node, &mut Vec::new(), &mut done))
}

#[test]
fn modules_import_one_way() {
    let graph = graph();
    assert!(
        graph.len() > 15 && graph["shell"].contains("state"),
        "the scan found too little: {graph:?}"
    );
    if let Some(found) = cycle(&graph) {
        panic!(
            "import cycle among the filter's modules: {}\n(graph: {graph:#?})",
            found.join(" -> ")
        );
    }
}

#[test]
fn the_model_and_config_import_no_domain_module() {
    let graph = graph();
    let leaves = ["model", "window", "glob", "template", "steering"];
    for leaf in leaves {
        assert_eq!(
            graph.get(leaf).map(BTreeSet::len),
            Some(0),
            "{leaf} must import no other module: {:?}",
            graph.get(leaf)
        );
    }
    let allowed: BTreeSet<&str> = leaves.into_iter().chain(["cidr"]).collect();
    let config = &graph["config"];
    let domain: Vec<&String> = config
        .iter()
        .filter(|m| !allowed.contains(m.as_str()))
        .collect();
    assert!(
        domain.is_empty(),
        "config (settings) imports domain modules {domain:?}: domain code should import the settings, not the reverse"
    );
}

#[test]
fn a_cycle_is_found() {
    let mut graph = Graph::new();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("c".into());
    graph.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        cycle(&graph).map(|c| c.join(" -> ")),
        Some("a -> b -> c -> a".to_string())
    );
    if let Some(deps) = graph.get_mut("c") {
        deps.clear();
    }
    assert_eq!(cycle(&graph), None);
}
