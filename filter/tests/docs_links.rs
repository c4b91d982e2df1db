//! Every relative link in `README.md` and `docs/*.md` resolves: the file
//! (or directory) exists, and a `#anchor` names a heading of the target
//! page by GitHub's rules (lower case, punctuation dropped, spaces to `-`,
//! `-1`, `-2`... for repeated headings). Links inside code are not links;
//! `http(s):` and `mailto:` links are not checked.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

/// The pages checked: the README and every Markdown file under `docs/`.
fn pages(root: &Path) -> Vec<PathBuf> {
    let mut pages = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.expect("docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The text of a line outside inline code spans (`` `...` ``).
fn outside_code(line: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
            out.push(' ');
        } else if !in_code {
            out.push(c);
        } else {
            out.push(' ');
        }
    }
    out
}

/// The lines of a page outside fenced code blocks, with their numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let marker = if t.starts_with("```") {
            Some("```")
        } else if t.starts_with("~~~") {
            Some("~~~")
        } else {
            None
        };
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(f), Some(m)) if f == m => fence = None,
            (None, None) => lines.push((i + 1, line)),
            _ => {}
        }
    }
    lines
}

/// The targets of inline links and images, `[text](target)`, on one line
/// (already stripped of code spans). A title after the target is dropped.
fn link_targets(line: &str) -> Vec<String> {
    let bytes = line.as_bytes();
    let mut targets = Vec::new();
    let mut i = 0;
    while let Some(off) = line[i..].find("](") {
        let start = i + off + 2;
        let mut depth = 0usize;
        let mut end = start;
        while end < bytes.len() {
            match bytes[end] {
                b'(' => depth += 1,
                b')' if depth == 0 => break,
                b')' => depth -= 1,
                _ => {}
            }
            end += 1;
        }
        let target = line[start..end].trim();
        let target = target.split_whitespace().next().unwrap_or("");
        let target = target.trim_start_matches('<').trim_end_matches('>');
        targets.push(target.to_string());
        i = end.min(line.len());
        if i == start {
            i += 1;
        }
    }
    targets
}

/// GitHub's anchor for a heading's text: inline markup removed, lower
/// case, everything but letters, digits, `-`, `_` and spaces dropped,
/// spaces to `-`.
fn slug(heading: &str) -> String {
    // [text](target) -> text
    let mut text = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        match rest[open..].find("](") {
            Some(mid) => {
                let after = &rest[open + mid + 2..];
                match after.find(')') {
                    Some(close) => {
                        text.push_str(&rest[..open]);
                        text.push_str(&rest[open + 1..open + mid]);
                        rest = &after[close + 1..];
                    }
                    None => break,
                }
            }
            None => break,
        }
    }
    text.push_str(rest);
    text.chars()
        .filter(|c| !matches!(c, '`' | '*'))
        .flat_map(char::to_lowercase)
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown page, repeated headings numbered as GitHub
/// numbers them.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let t = line.trim_start();
        let level = t.chars().take_while(|&c| c == '#').count();
        if level == 0 || level > 6 || !t[level..].starts_with(' ') {
            continue;
        }
        let base = slug(t[level..].trim().trim_end_matches('#').trim());
        let mut anchor = base.clone();
        let mut n = 0;
        while seen.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        seen.insert(anchor);
    }
    seen
}

/// `a/b/../c` -> `a/c`, without touching the file system.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

fn problems_in(root: &Path, page: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
    let name = page
        .strip_prefix(root)
        .unwrap_or(page)
        .display()
        .to_string();
    let mut problems = Vec::new();
    for (number, line) in prose_lines(&text) {
        for target in link_targets(&outside_code(line)) {
            if target.is_empty() {
                problems.push(format!("{name}:{number}: empty link target"));
                continue;
            }
            let lower = target.to_ascii_lowercase();
            if lower.starts_with("http://")
                || lower.starts_with("https://")
                || lower.starts_with("mailto:")
            {
                continue;
            }
            let (file, anchor) = match target.split_once('#') {
                Some((file, anchor)) => (file, Some(anchor)),
                None => (target.as_str(), None),
            };
            let resolved = if file.is_empty() {
                page.to_path_buf()
            } else if let Some(from_root) = file.strip_prefix('/') {
                normalise(&root.join(from_root))
            } else {
                normalise(&page.parent().expect("page dir").join(file))
            };
            if !resolved.starts_with(root) {
                problems.push(format!("{name}:{number}: {target} leaves the repository"));
                continue;
            }
            if !resolved.exists() {
                problems.push(format!("{name}:{number}: {target}: no such file"));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if resolved.extension().is_none_or(|e| e != "md") {
                continue; // GitHub's line anchors (#L10) and the like
            }
            let target_text = std::fs::read_to_string(&resolved)
                .unwrap_or_else(|e| panic!("{}: {e}", resolved.display()));
            if !anchors(&target_text).contains(anchor) {
                problems.push(format!(
                    "{name}:{number}: {target}: no heading with the anchor #{anchor} in {}",
                    resolved.strip_prefix(root).unwrap_or(&resolved).display()
                ));
            }
        }
    }
    problems
}

#[test]
fn every_relative_link_resolves() {
    let root = repo();
    let pages = pages(&root);
    assert!(pages.len() > 5, "too few pages: {pages:?}");
    let mut problems = Vec::new();
    let mut links = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page).expect("page");
        links += prose_lines(&text)
            .iter()
            .map(|(_, l)| link_targets(&outside_code(l)).len())
            .sum::<usize>();
        problems.extend(problems_in(&root, page));
    }
    assert!(
        links > 50,
        "too few links found ({links}): is the parser broken?"
    );
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
}

#[test]
fn slugs_follow_githubs_rules() {
    assert_eq!(slug("How it grades hosts"), "how-it-grades-hosts");
    assert_eq!(slug("`circuitBreaker`"), "circuitbreaker");
    assert_eq!(
        slug("Incidents against Envoy's outlier detection"),
        "incidents-against-envoys-outlier-detection"
    );
    assert_eq!(
        slug("Where meshguard loses, and what to configure"),
        "where-meshguard-loses-and-what-to-configure"
    );
    assert_eq!(slug("3. Metrics and logs"), "3-metrics-and-logs");
    assert_eq!(slug("What `make run` shows"), "what-make-run-shows");
    assert_eq!(
        slug("Header rules (`headers.request[]`, `headers.response[]`)"),
        "header-rules-headersrequest-headersresponse"
    );
    assert_eq!(
        slug("Istio 1.30+ and TrafficExtension"),
        "istio-130-and-trafficextension"
    );
    assert_eq!(slug("A [link](x.md) in a heading"), "a-link-in-a-heading");
    let repeated = anchors("# A\n## Notes\n### Notes\n```\n# not a heading\n```\n## Notes\n");
    let expected: BTreeSet<String> = ["a", "notes", "notes-1", "notes-2"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(repeated, expected);
}

#[test]
fn links_in_code_are_not_links() {
    assert_eq!(
        link_targets(&outside_code("see `[a](nowhere.md)` and [b](b.md#x)")),
        vec!["b.md#x"]
    );
    assert_eq!(
        link_targets("![chart](../bench/results/incident-a.svg \"title\")"),
        vec!["../bench/results/incident-a.svg"]
    );
    let lines: Vec<usize> = prose_lines("a\n```\n[x](y)\n```\nb")
        .iter()
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(lines, vec![1, 5]);
}

/// A table whose header row went missing renders as text, and an unclosed
/// code fence swallows the rest of the page (its links and headings too).
#[test]
fn tables_have_headers_and_code_fences_close() {
    let root = repo();
    let mut problems = Vec::new();
    for page in pages(&root) {
        let text = std::fs::read_to_string(&page).expect("page");
        let name = page
            .strip_prefix(&root)
            .unwrap_or(&page)
            .display()
            .to_string();
        let fences = text
            .lines()
            .filter(|l| l.trim_start().starts_with("```"))
            .count();
        if fences % 2 == 1 {
            problems.push(format!("{name}: a code fence is not closed"));
        }
        let lines = prose_lines(&text);
        for (i, (number, line)) in lines.iter().enumerate() {
            let separator = line.starts_with("|---") || line.starts_with("| ---");
            let previous = i
                .checked_sub(1)
                .map(|p| lines[p])
                .filter(|(n, _)| n + 1 == *number);
            if separator && !previous.is_some_and(|(_, l)| l.starts_with('|')) {
                problems.push(format!("{name}:{number}: table without a header row"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
