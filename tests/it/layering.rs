//! The layering ARCHITECTURE.md promises, checked: every `crate::<module>` path in a
//! module's files must name a module that the "may depend on" column of ARCHITECTURE.md's
//! module table allows, so an upward import fails here instead of growing an import circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The module table: module name -> the crate modules it may depend on.
fn allowed_edges() -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let mut table = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | `name/` | what it is | may depend on |
        if cells.len() != 5 || !cells[1].starts_with('`') {
            continue;
        }
        let name = cells[1]
            .trim_matches('`')
            .trim_end_matches('/')
            .trim_end_matches(".rs");
        let allowed = backticked(cells[3])
            .into_iter()
            .map(|m| m.trim_end_matches('/').to_string())
            .collect();
        table.insert(name.to_string(), allowed);
    }
    table
}

/// The words between backticks in a table cell.
fn backticked(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The crate's top-level modules: `src/<name>/` folders and `src/<name>.rs` files.
fn modules() -> BTreeMap<String, Vec<PathBuf>> {
    let src = root().join("src");
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(&src).expect("src/") {
        let path = entry.expect("src entry").path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            let mut files = Vec::new();
            rust_files(&path, &mut files);
            modules.insert(name, files);
        } else if name != "lib" && name != "main" && path.extension().is_some_and(|e| e == "rs") {
            modules.insert(name, vec![path]);
        }
    }
    modules
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("module folder") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a file's code names through `crate::`: `use crate::a::..`,
/// `use crate::{a::.., b}` (over several lines too) and paths written inline
/// (`crate::a::f()`). Line comments are skipped.
fn crate_references(source: &str) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let before = &rest[..at];
        rest = &rest[at + "crate::".len()..];
        // `$crate::` (a macro's) or `other_crate::` are not this crate's paths.
        if before.ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        match rest.strip_prefix('{') {
            Some(group) => found.extend(group_heads(group)),
            None => {
                found.insert(leading_ident(rest));
            }
        }
    }
    found.retain(|m| !m.is_empty());
    found
}

/// The first name of each item of a `{a::x, b::{y, z}, c}` group (the text after `{`).
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = vec![leading_ident(group.trim_start())];
    let mut depth = 0;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => heads.push(leading_ident(group[i + 1..].trim_start())),
            _ => {}
        }
    }
    heads
}

fn leading_ident(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

#[test]
fn every_module_is_in_the_architecture_table() {
    let table = allowed_edges();
    let modules: BTreeSet<String> = modules().into_keys().collect();
    let listed: BTreeSet<String> = table.keys().cloned().collect();
    assert_eq!(
        modules, listed,
        "src/ and ARCHITECTURE.md's module table list different modules"
    );
    for (module, allowed) in &table {
        for dependency in allowed {
            assert!(
                table.contains_key(dependency),
                "ARCHITECTURE.md: `{module}` may depend on `{dependency}`, which is no module"
            );
        }
    }
}

#[test]
fn the_allowed_dependencies_form_no_circle() {
    let table = allowed_edges();
    // Depth-first search for a back edge; `path` is the chain being explored.
    fn visit(
        module: &str,
        table: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(module) {
            return;
        }
        if let Some(start) = path.iter().position(|m| m == module) {
            panic!(
                "ARCHITECTURE.md allows a circle: {} -> {module}",
                path[start..].join(" -> ")
            );
        }
        path.push(module.to_string());
        for next in table.get(module).into_iter().flatten() {
            visit(next, table, path, done);
        }
        path.pop();
        done.insert(module.to_string());
    }
    let mut done = BTreeSet::new();
    for module in table.keys() {
        visit(module, &table, &mut Vec::new(), &mut done);
    }
}

#[test]
fn no_module_imports_what_architecture_md_does_not_allow() {
    let table = allowed_edges();
    let modules = modules();
    let mut violations = Vec::new();
    for (module, files) in &modules {
        let allowed = table.get(module).cloned().unwrap_or_default();
        for file in files {
            let source = std::fs::read_to_string(file).expect("source file");
            for dependency in crate_references(&source) {
                if dependency != *module
                    && modules.contains_key(&dependency)
                    && !allowed.contains(&dependency)
                {
                    let allowed = match allowed.is_empty() {
                        true => "nothing in the crate".to_string(),
                        false => allowed.iter().cloned().collect::<Vec<_>>().join(", "),
                    };
                    violations.push(format!(
                        "{} uses crate::{dependency}, but `{module}` may depend on {allowed}",
                        file.strip_prefix(root()).unwrap_or(file).display(),
                    ));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports against ARCHITECTURE.md's table:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_reference_reader_sees_every_form_of_import() {
    let source = "use crate::frame::RgbaImage;\n\
                  use crate::{model::{Engine, X}, walk};\n\
                  use crate::{\n    pipeline::Settings,\n    record::{A, B},\n};\n\
                  let x = crate::upscale::resize(); // crate::gpu in a comment\n\
                  macro_rules! m { () => { $crate::record::x } }\n";
    let found: Vec<String> = crate_references(source).into_iter().collect();
    assert_eq!(
        found,
        ["frame", "model", "pipeline", "record", "upscale", "walk"]
    );
}
