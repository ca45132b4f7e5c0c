//! The crate's layers point one way. The diagram in `src/lib.rs`'s doc
//! comment ranks every top-level module (a file `src/name.rs`, or a folder
//! `src/name/` with every file in it), and no module may name
//! (`crate::...`) a module of its own rank or above. Inside a folder, its
//! `mod.rs` ranks the files (`Files, lowest first: ...`), and no file may
//! name (`super::...` or `crate::folder::...`) a file of its own rank or
//! above; `mod.rs`, the folder's face, may name them all. A strict order
//! has no cycles.

use std::collections::{BTreeMap, BTreeSet};

fn src() -> String {
    format!("{}/src", env!("CARGO_MANIFEST_DIR"))
}

fn source(path: &str) -> String {
    let path = format!("{}/{path}", src());
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path}: {err}"))
}

/// A folder's `.rs` files by name (`mod` for `mod.rs`), or `None` for a
/// module that is one file.
fn folder_files(module: &str) -> Option<BTreeMap<String, String>> {
    let entries = std::fs::read_dir(format!("{}/{module}", src())).ok()?;
    let files: BTreeMap<String, String> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .map(|path| {
            let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    assert!(files.contains_key("mod"), "src/{module}/ has no mod.rs");
    Some(files)
}

/// A module's source: its file, or every `.rs` file of its folder.
fn module_source(module: &str) -> String {
    match folder_files(module) {
        Some(files) => files.into_values().collect(),
        None => source(&format!("{module}.rs")),
    }
}

/// The modules `lib.rs` declares.
fn declared_modules() -> BTreeSet<String> {
    source("lib.rs")
        .lines()
        .filter_map(|line| {
            line.strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("pub(crate) mod "))
                .or_else(|| line.strip_prefix("mod "))
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

/// A folder's files → rank, from the `Files, lowest first:` sentence of
/// its `mod.rs` (the names in backticks, in order, up to the full stop).
fn file_ranks(module: &str, mod_rs: &str) -> BTreeMap<String, usize> {
    let doc: Vec<&str> = mod_rs
        .lines()
        .filter_map(|line| line.strip_prefix("//!"))
        .map(str::trim)
        .collect();
    let start = doc
        .iter()
        .position(|line| line.starts_with("Files, lowest first:"))
        .unwrap_or_else(|| panic!("src/{module}/mod.rs ranks no files"));
    let mut sentence = String::new();
    for line in &doc[start..] {
        sentence.push_str(line);
        sentence.push(' ');
        if line.ends_with('.') {
            break;
        }
    }
    sentence
        .split('`')
        .skip(1)
        .step_by(2)
        .enumerate()
        .map(|(rank, name)| (name.to_owned(), rank))
        .collect()
}

/// The first path segments after each `prefix` in `text`, outside
/// comments: `prefix::{a::b, c}` names `a` and `c`.
fn imports_after(text: &str, prefix: &str) -> BTreeSet<String> {
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
    for (at, _) in code.match_indices(prefix) {
        // `super::` inside `crate::x::super::` cannot happen; but `a::crate::`
        // is no path of ours either: the prefix must start a path.
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &code[at + prefix.len()..];
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

fn crate_imports(text: &str) -> BTreeSet<String> {
    imports_after(text, "crate::")
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
fn every_folder_ranks_its_files_and_no_file_imports_upward() {
    let mut upward = Vec::new();
    let mut folders = 0;
    for module in declared_modules() {
        let Some(files) = folder_files(&module) else {
            continue;
        };
        folders += 1;
        let ranks = file_ranks(&module, &files["mod"]);
        // Every file but mod.rs is ranked, unit tests (`tests.rs`) aside.
        let ranked: BTreeSet<&String> = ranks.keys().collect();
        let present: BTreeSet<&String> = files
            .keys()
            .filter(|name| *name != "mod" && *name != "tests")
            .collect();
        assert_eq!(ranked, present, "src/{module}/mod.rs ranks other files");
        for (name, text) in &files {
            let Some(rank) = ranks.get(name) else {
                continue;
            };
            let siblings = imports_after(text, "super::")
                .into_iter()
                .chain(imports_after(text, &format!("crate::{module}::")));
            for sibling in siblings {
                if let Some(sibling_rank) = ranks.get(&sibling)
                    && sibling_rank >= rank
                {
                    upward.push(format!("{module}/{name}.rs imports {module}/{sibling}.rs"));
                }
            }
        }
    }
    assert!(folders >= 10, "{folders} folders");
    assert!(
        upward.is_empty(),
        "imports that point up in a folder: {upward:#?}"
    );
}

#[test]
fn the_import_reader_sees_groups_and_paths() {
    let text = "use crate::{\n    a::{B, C},\n    d,\n    e::f as g,\n};\n// crate::commented\nlet x = crate::h::I;\nuse super::{j, k::L};\n";
    let found: Vec<String> = crate_imports(text).into_iter().collect();
    assert_eq!(found, ["a", "d", "e", "h"]);
    let found: Vec<String> = imports_after(text, "super::").into_iter().collect();
    assert_eq!(found, ["j", "k"]);
}
