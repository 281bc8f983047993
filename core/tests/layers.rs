//! The layering of `cleanse-core` that `src/lib.rs` states, checked on the sources: every
//! `crate::<module>` a top-level module names (comments aside) is in a lower layer. A new import
//! that points up (a back-edge, and with it a cycle) fails here with the file and the line.

use std::path::Path;

/// Lowest first; a module may name only modules of lower layers. The same as `src/lib.rs`'s
/// documentation.
const LAYERS: &[&[&str]] = &[
    &["error", "rng", "io", "precision"],
    &["device", "cpu", "kernels"],
    &["model"],
    &["memory"],
    &["data"],
    &["optim"],
    &["report"],
    &["engine"],
    &["train"],
    &["attack"],
    &["defend"],
    &["interop", "output", "table"],
    &["protocol_table"],
    &["leaderboard"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The `crate::<name>` references of `text` outside `//` comments, with their line numbers.
fn references(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push((n + 1, name));
            }
            rest = after;
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_of_core_imports_from_a_layer_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut problems = Vec::new();
    let mut modules = std::collections::BTreeSet::new();
    for path in &files {
        let rel = path.strip_prefix(&src).expect("under src");
        let first = rel.iter().next().expect("a name").to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" {
            continue;
        }
        modules.insert(module.clone());
        let Some(own) = layer(&module) else {
            problems.push(format!(
                "{}: module `{module}` has no layer in LAYERS (and src/lib.rs)",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(path).expect("read");
        for (line, name) in references(&text) {
            if name == module || name.starts_with(char::is_uppercase) {
                continue;
            }
            match layer(&name) {
                Some(l) if l < own => {}
                Some(_) => problems.push(format!(
                    "{}:{line}: `{module}` names `crate::{name}`, which is not below it",
                    rel.display()
                )),
                None => {}
            }
        }
    }
    assert!(modules.len() > 10, "the sources were read: {modules:?}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_reference_reader_finds_imports_and_skips_comments() {
    let text = "use crate::engine::x;\n// crate::defend\nlet a = crate::attack::b(); // crate::x\n";
    assert_eq!(
        references(text),
        vec![(1, "engine".to_string()), (3, "attack".to_string())]
    );
}
