//! The documentation holds together: every relative link in `README.md` and
//! `docs/` reaches a file of the repository, and every `#anchor` a heading
//! of its target (GitHub's rule: lower case, spaces to `-`, punctuation
//! dropped); the README stays a first read.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `README.md` and every guide in `docs/`.
fn documents() -> Vec<PathBuf> {
    let mut documents = vec![root().join("README.md")];
    let mut guides: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    guides.sort();
    assert!(guides.len() >= 8, "{guides:?}");
    documents.extend(guides);
    documents
}

/// The text outside fenced code blocks.
fn prose(text: &str) -> String {
    let mut fenced = false;
    let mut kept = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    kept
}

/// The targets of `[text](target)` links, inline code left out.
fn links(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in prose(text).lines() {
        // Inline code is not a link: `[a](b)` inside backticks is text.
        let outside: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, part)| part)
            .collect::<Vec<_>>()
            .join(" ");
        let mut rest = outside.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            found.push(after[..end].trim().to_owned());
            rest = &after[end..];
        }
    }
    found
}

/// GitHub's anchor of a heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    prose(&text)
        .lines()
        .filter_map(|line| line.strip_prefix('#'))
        .map(|heading| slug(heading.trim_start_matches('#').replace('`', "").as_str()))
        .collect()
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for document in documents() {
        let text = std::fs::read_to_string(&document).unwrap();
        for link in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match link.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (link.as_str(), None),
            };
            let target = match path {
                "" => document.clone(),
                path => document.parent().unwrap().join(path),
            };
            checked += 1;
            if !target.exists() {
                broken.push(format!("{}: {link} (no such file)", document.display()));
                continue;
            }
            if let Some(anchor) = anchor
                && !anchors(&target).iter().any(|a| a == anchor)
            {
                broken.push(format!("{}: {link} (no such heading)", document.display()));
            }
        }
    }
    assert!(checked > 40, "only {checked} links");
    assert!(broken.is_empty(), "{broken:#?}");
}

#[test]
fn the_link_reader_sees_links_and_skips_code() {
    let text = "See [a](x.md#b) and `[c](d)`.\n```\n[e](f)\n```\n[g](../h/)\n";
    assert_eq!(links(text), ["x.md#b", "../h/"]);
    assert_eq!(slug("Rotating the fleet key"), "rotating-the-fleet-key");
    assert_eq!(
        slug("Pools, regions and token verification"),
        "pools-regions-and-token-verification"
    );
}

#[test]
fn the_readme_is_a_first_read() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= 320,
        "README.md has {lines} lines; move detail to docs/"
    );
    for guide in documents().iter().skip(1) {
        let name = guide.file_name().unwrap().to_str().unwrap();
        assert!(
            readme.contains(&format!("(docs/{name})")),
            "the README does not link docs/{name}"
        );
    }
}
