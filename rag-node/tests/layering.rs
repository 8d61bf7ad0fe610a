//! The layering of docs/architecture.md holds in the code: every `crate::…` import of a module
//! (outside its tests) is one the table there allows, every module is in the table, and the
//! table itself has no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `module -> modules it may import`, from the table after the `layering table` marker.
fn table() -> BTreeMap<String, BTreeSet<String>> {
    let doc = std::fs::read_to_string(repo().join("docs/architecture.md")).unwrap();
    let start = doc
        .find("<!-- layering table")
        .expect("docs/architecture.md has the layering table");
    let mut out = BTreeMap::new();
    for line in doc[start..].lines().skip(1) {
        let line = line.trim();
        if !line.starts_with('|') {
            if out.is_empty() {
                continue;
            }
            break;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let [module, allowed] = cells[..] else {
            panic!("a table row has two cells: {line}")
        };
        if module == "module" || module.starts_with("---") {
            continue;
        }
        let names = |s: &str| -> BTreeSet<String> {
            s.split(',')
                .map(|x| x.trim().trim_matches('`').to_owned())
                .filter(|x| !x.is_empty() && x != "—")
                .collect()
        };
        out.insert(module.trim_matches('`').to_owned(), names(allowed));
    }
    assert!(out.len() > 10, "the layering table looks empty: {out:?}");
    out
}

/// The source files of `rag-node/src`, with the top-level module each belongs to.
fn modules(dir: &Path, top: Option<&str>, out: &mut Vec<(String, PathBuf)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            modules(&p, Some(top.unwrap_or(&name)), out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let module = top.map(str::to_owned).unwrap_or(name);
            // The crate root and the binary are not modules of the library.
            if module != "lib" && module != "main" && p.file_name().unwrap() != "tests.rs" {
                out.push((module, p));
            }
        }
    }
}

/// The crate modules a file names in code (not in comments), before its `#[cfg(test)]`.
fn imports(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let code = text.split("#[cfg(test)]").next().unwrap();
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap();
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn every_import_is_one_the_architecture_allows() {
    let table = table();
    let mut files = Vec::new();
    modules(&repo().join("rag-node/src"), None, &mut files);
    let mut wrong = Vec::new();
    let mut seen = BTreeSet::new();
    for (module, path) in &files {
        seen.insert(module.clone());
        let Some(allowed) = table.get(module) else {
            wrong.push(format!("{module} ({}) is not in the table", path.display()));
            continue;
        };
        for imported in imports(path) {
            if imported != *module && !allowed.contains(&imported) {
                wrong.push(format!(
                    "{} imports {imported}, which {module} may not",
                    path.strip_prefix(repo()).unwrap_or(path).display()
                ));
            }
        }
    }
    for module in table.keys() {
        if !seen.contains(module) {
            wrong.push(format!("the table names {module}, which does not exist"));
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_layers_have_no_cycle() {
    let table = table();
    // Kahn's algorithm: repeatedly remove modules whose allowed imports are all removed.
    let mut left = table.clone();
    while !left.is_empty() {
        let free: Vec<String> = left
            .iter()
            .filter(|(_, deps)| deps.iter().all(|d| !left.contains_key(d)))
            .map(|(m, _)| m.clone())
            .collect();
        assert!(
            !free.is_empty(),
            "the layering table has a cycle among {:?}",
            left.keys()
        );
        for m in free {
            left.remove(&m);
        }
    }
    for deps in table.values() {
        for d in deps {
            assert!(table.contains_key(d), "{d} is allowed but not in the table");
        }
    }
}
