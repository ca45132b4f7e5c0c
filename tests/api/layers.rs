//! The crate's layers point one way: the diagram in `src/lib.rs`'s doc
//! comment ranks every module, and no module may name (`crate::...`) a module
//! of its own rank or above. A strict order has no cycles. A module is a
//! file (`src/name.rs`) or a folder (`src/name/`, every file in it).

use std::collections::{BTreeMap, BTreeSet};

fn source(path: &str) -> String {
    let path = format!("{}/src/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path}: {err}"))
}

/// A module's source: its file, or every `.rs` file of its folder.
fn module_source(module: &str) -> String {
    let folder = format!("{}/src/{module}", env!("CARGO_MANIFEST_DIR"));
    match std::fs::read_dir(&folder) {
        Ok(entries) => {
            let mut files: Vec<_> = entries
                .map(|entry| entry.unwrap().path())
                .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
                .collect();
            files.sort();
            assert!(!files.is_empty(), "{folder} holds no Rust file");
            files
                .iter()
                .map(|path| std::fs::read_to_string(path).unwrap())
                .collect()
        }
        Err(_) => source(&format!("{module}.rs")),
    }
}

/// The modules `lib.rs` declares.
fn declared_modules() -> BTreeSet<String> {
    source("lib.rs")
        .lines()
        .filter_map(|line| {
            line.strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("pub(crate) mod "))
        })
        .map(|rest| rest.trim_end_matches(';').to_owned())
        .collect()
}

/// Module → rank, read from the diagram in `lib.rs`: the lines of the
/// ```text block below its rule, `N  name  name   description`, where a line
/// without a number continues the rank above it. The descriptions all start
/// in one column, the one the first line's description starts in.
fn diagram_ranks() -> BTreeMap<String, u32> {
    let lib = source("lib.rs");
    let block: Vec<&str> = lib
        .lines()
        .filter_map(|line| line.strip_prefix("//!"))
        .skip_while(|line| !line.contains('─'))
        .skip(1)
        .take_while(|line| !line.trim_start().starts_with("```"))
        .collect();
    let first = block.first().expect("a diagram");
    // `9  app`, three or more spaces, then the description.
    let gap = first.find("   ").expect("a description after the names");
    let names_end = gap + first[gap..].find(|c: char| c != ' ').unwrap_or_default();
    let mut ranks = BTreeMap::new();
    let mut rank = None;
    for line in block {
        let head = line.get(..names_end).unwrap_or(line).trim();
        let names = match head.split_once(' ') {
            Some((number, rest)) if number.parse::<u32>().is_ok() => {
                rank = number.parse().ok();
                rest
            }
            _ => head,
        };
        for name in names.split_whitespace() {
            let rank = rank.expect("a rank before the first continuation line");
            assert!(
                ranks.insert(name.to_owned(), rank).is_none(),
                "{name} is ranked twice"
            );
        }
    }
    ranks
}

/// The modules `text` names through `crate::`, outside comments.
fn crate_imports(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .map(|line| format!("{line}\n"))
        .collect();
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a::b, c, d::{e, f}}`: the first name of each item
            // at the top level of the group.
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        found.insert(ident(&group[i..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found.remove("");
    found
}

#[test]
fn the_diagram_ranks_every_module_and_nothing_else() {
    let ranked: BTreeSet<String> = diagram_ranks().into_keys().collect();
    assert_eq!(ranked, declared_modules());
}

#[test]
fn no_module_imports_from_its_own_layer_or_above() {
    let ranks = diagram_ranks();
    let mut upward = Vec::new();
    for (module, rank) in &ranks {
        for imported in crate_imports(&module_source(module)) {
            let Some(imported_rank) = ranks.get(&imported) else {
                panic!("{module} names crate::{imported}, which is no module");
            };
            if imported != *module && imported_rank >= rank {
                upward.push(format!(
                    "{module} (layer {rank}) imports {imported} (layer {imported_rank})"
                ));
            }
        }
    }
    assert!(upward.is_empty(), "imports that point up: {upward:#?}");
}

#[test]
fn the_import_reader_sees_groups_and_paths() {
    let text = "use crate::{\n    a::{B, C},\n    d,\n    e::f as g,\n};\n// crate::commented\nlet x = crate::h::I;\n";
    let found: Vec<String> = crate_imports(text).into_iter().collect();
    assert_eq!(found, ["a", "d", "e", "h"]);
}
