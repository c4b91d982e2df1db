//! The metrics table of `docs/observability.md` is the filter's catalogue
//! (`meshguard::metrics::CATALOGUE`): the same metrics, each with its type
//! and labels, so a renamed or added metric cannot leave the page behind.

use std::collections::BTreeMap;

use meshguard::metrics::{Kind, CATALOGUE};

const PAGE: &str = "docs/observability.md";

#[test]
fn the_metrics_table_is_the_catalogue() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(PAGE);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut documented = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let Some(rest) = line.strip_prefix("| `meshguard_") else {
            continue;
        };
        let cells: Vec<&str> = rest.split('|').map(str::trim).collect();
        let name = cells[0].trim_end_matches('`').to_string();
        let kind = cells.get(1).copied().unwrap_or("").to_string();
        let labels = cells.get(2).copied().unwrap_or("").to_string();
        assert!(
            documented.insert(name.clone(), (kind, labels)).is_none(),
            "{PAGE}:{}: meshguard_{name} listed twice",
            i + 1
        );
    }
    let catalogue: BTreeMap<String, (String, String)> = CATALOGUE
        .iter()
        .map(|(name, kind, labels, _)| {
            let kind = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            (name.to_string(), (kind.to_string(), labels.to_string()))
        })
        .collect();
    assert_eq!(
        documented, catalogue,
        "{PAGE}'s metrics table (name, type, labels) must be filter/src/metrics.rs's CATALOGUE"
    );
}
