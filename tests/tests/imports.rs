//! No import cycles between the source files of `core` and of `native`: every file is a module,
//! every `crate::a::b` or `super::a` path it names (outside `//` comments) an edge to the longest
//! module prefix of that path, and the graph of each crate must have no cycle. (The layering of
//! `core`'s top-level modules is checked in `core/tests/layers.rs`.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path of every `.rs` file under `src` (`a/mod.rs` and `a.rs` are `a`; the crate root
/// is ``), with its text without `//` comments.
fn modules(src: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, src, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path
                    .strip_prefix(src)
                    .expect("under src")
                    .with_extension("");
                let mut parts: Vec<String> = rel
                    .iter()
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect();
                if matches!(
                    parts.last().map(String::as_str),
                    Some("mod" | "lib" | "main")
                ) {
                    parts.pop();
                }
                let text = std::fs::read_to_string(&path).expect("read");
                let code: Vec<&str> = text
                    .lines()
                    .map(|l| l.split("//").next().unwrap_or(""))
                    .collect();
                out.insert(parts.join("::"), code.join("\n"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, src, &mut out);
    out
}

/// The paths after each `prefix` in `text` (`a::b::c` of `crate::a::b::c`).
fn paths_after<'t>(text: &'t str, prefix: &str) -> Vec<&'t str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        let after = &rest[i + prefix.len()..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(after.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.push(after[..end].trim_end_matches(':'));
        }
        rest = after;
    }
    out
}

/// The module each file names, as edges `file -> module` (ancestors and descendants left out).
fn edges(mods: &BTreeMap<String, String>) -> BTreeMap<&str, BTreeSet<&str>> {
    let longest = |path: &str| -> Option<&str> {
        let parts: Vec<&str> = path.split("::").collect();
        (1..=parts.len())
            .rev()
            .map(|k| parts[..k].join("::"))
            .find_map(|cand| mods.get_key_value(cand.as_str()).map(|(k, _)| k.as_str()))
    };
    let mut out = BTreeMap::new();
    for (m, text) in mods {
        let parent = m.rsplit_once("::").map(|(p, _)| p.to_string());
        let mut named: Vec<String> = paths_after(text, "crate::")
            .into_iter()
            .map(str::to_string)
            .collect();
        if let Some(p) = &parent {
            named.extend(
                paths_after(text, "super::")
                    .into_iter()
                    .map(|s| format!("{p}::{s}")),
            );
        } else if !m.is_empty() {
            named.extend(paths_after(text, "super::").into_iter().map(str::to_string));
        }
        let set: &mut BTreeSet<&str> = out.entry(m.as_str()).or_default();
        for n in named {
            if let Some(t) = longest(&n) {
                let related = t == m
                    || t.is_empty()
                    || m.starts_with(&format!("{t}::"))
                    || t.starts_with(&format!("{m}::"));
                if !related {
                    set.insert(t);
                }
            }
        }
    }
    out
}

/// A cycle of `graph`, if it has one.
fn cycle<'a>(graph: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Option<Vec<&'a str>> {
    fn visit<'a>(
        v: &'a str,
        graph: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        done: &mut BTreeSet<&'a str>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<&'a str>> {
        if let Some(i) = path.iter().position(|&p| p == v) {
            return Some(path[i..].to_vec());
        }
        if !done.insert(v) {
            return None;
        }
        path.push(v);
        for &w in graph.get(v).into_iter().flatten() {
            if let Some(c) = visit(w, graph, done, path) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|&v| visit(v, graph, &mut done, &mut Vec::new()))
}

#[test]
fn core_and_native_have_no_import_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for krate in ["core", "native"] {
        let mods = modules(&root.join(krate).join("src"));
        assert!(mods.len() > 10, "{krate}: the sources were read");
        let graph = edges(&mods);
        assert!(
            graph.values().map(BTreeSet::len).sum::<usize>() > 10,
            "{krate}: imports were found"
        );
        if let Some(c) = cycle(&graph) {
            panic!("{krate}: an import cycle: {}", c.join(" -> "));
        }
    }
}

#[test]
fn a_cycle_through_crate_and_super_paths_is_found() {
    let mut mods = BTreeMap::new();
    mods.insert(
        "a".to_string(),
        "use crate::b::thing; // crate::c".to_string(),
    );
    mods.insert("b".to_string(), "fn f() { crate::c::g() }".to_string());
    mods.insert("c".to_string(), String::new());
    mods.insert("c::d".to_string(), "use super::super::a::x;".to_string());
    let graph = edges(&mods);
    assert_eq!(cycle(&graph), None, "a -> b -> c, and c::d is inside c");
    mods.insert("c".to_string(), "use crate::a::x;".to_string());
    let graph = edges(&mods);
    assert_eq!(cycle(&graph), Some(vec!["a", "b", "c"]));
}
