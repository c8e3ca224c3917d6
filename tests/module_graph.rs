//! The crate's top-level modules form a DAG: no module reaches, through
//! `crate::` paths (or `super::` paths that climb to the crate root), a
//! module that reaches back to it.
//!
//! A cycle means neither module can be read, tested or changed without the
//! other; the layering (process wiring on top, the sans-IO protocol at the
//! bottom) is described in README's layout table. The check reads the
//! sources rather than compiler output so it runs with `cargo test` and
//! names the files behind each edge of a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One dependency between two top-level modules, and where it was seen.
type Edges = BTreeMap<String, BTreeMap<String, String>>;

#[test]
fn top_level_modules_have_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = module_edges(&src);
    assert!(
        edges.len() > 5,
        "found almost no edges: is the scanner broken? {edges:?}"
    );
    // The whole graph, for `cargo test --test module_graph -- --nocapture`.
    for (from, to) in &edges {
        eprintln!(
            "{from} → {}",
            to.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    if let Some(cycle) = find_cycle(&edges) {
        let mut msg = format!(
            "import cycle between top-level modules: {}\n",
            cycle.join(" → ")
        );
        for pair in cycle.windows(2) {
            let at = &edges[&pair[0]][&pair[1]];
            msg.push_str(&format!("  {} → {}: {at}\n", pair[0], pair[1]));
        }
        panic!("{msg}");
    }
}

/// Leaves depend on nothing else in the crate (their tests aside), so
/// anything may use them without a cycle.
#[test]
fn leaves_use_nothing_else_in_the_crate() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for leaf in [
        "stats.rs",
        "escape.rs",
        "timer_wheel.rs",
        "limits.rs",
        "server/admission.rs",
        "server/listener.rs",
    ] {
        let text = strip(&std::fs::read_to_string(src.join(leaf)).unwrap());
        let code = text.split("#[cfg(test)]").next().unwrap();
        for needle in ["crate::", "super::"] {
            assert!(
                !code.contains(needle),
                "src/{leaf} uses {needle}: it is meant to be a leaf"
            );
        }
    }
}

/// The scanner itself: it must see the kinds of paths the crate uses.
#[test]
fn scanner_sees_crate_and_super_paths() {
    let found = |file: &str, text: &str| -> BTreeSet<String> {
        let module = module_path(Path::new(file));
        scan(&module, &strip(text))
            .into_iter()
            .map(|(m, _)| m)
            .collect()
    };
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        found("a/b.rs", "use crate::{x::Y, z};\nfn f() { crate::w::g(); }"),
        set(&["x", "z", "w"])
    );
    assert_eq!(found("a/b.rs", "use super::super::q::R;"), set(&["q"]));
    assert_eq!(found("a/b.rs", "use super::c::R;"), set(&["a"]));
    assert_eq!(found("a.rs", "use super::m;"), set(&["m"]));
    // `super` inside an inline module climbs out of it first.
    assert_eq!(
        found("a.rs", "mod tests { use super::*; use super::super::k; }"),
        set(&["a", "k"])
    );
    // Comments and strings are not code.
    assert_eq!(
        found(
            "a.rs",
            "// crate::x::y\n/* crate::v */ let s = \"crate::u::\";"
        ),
        set(&[])
    );
    assert_eq!(found("a.rs", "let c = '\"'; use crate::t;"), set(&["t"]));
    let mut g = Edges::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        g.entry(a.into())
            .or_default()
            .insert(b.into(), String::new());
    }
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    g.get_mut("c").unwrap().remove("a");
    assert_eq!(find_cycle(&g), None);
}

/// Edges between top-level modules, each with one place it was seen.
fn module_edges(src: &Path) -> Edges {
    let mut edges = Edges::new();
    for file in rust_files(src) {
        let rel = file.strip_prefix(src).unwrap();
        // The crate root re-exports; the binary is another crate.
        if rel == Path::new("lib.rs") || rel == Path::new("main.rs") {
            continue;
        }
        let module = module_path(rel);
        let text = std::fs::read_to_string(&file).unwrap();
        for (target, line) in scan(&module, &strip(&text)) {
            if target != module[0] {
                edges
                    .entry(module[0].clone())
                    .or_default()
                    .entry(target)
                    .or_insert_with(|| format!("src/{}:{line}", rel.display()));
            }
        }
    }
    edges
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// `a/b.rs` and `a/b/mod.rs` are module `a::b`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_string());
    }
    parts
}

/// The source with comments and string/char literals blanked (newlines
/// kept, so line numbers stay right).
fn strip(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if c[i] == 'r' && (next == Some('"') || next == Some('#')) && !ident_before(&c, i) {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= c.len() {
                    break;
                }
                if c[j] == '"' && (0..hashes).all(|k| c.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                blank(&mut out, c[j]);
                j += 1;
            }
            i = j;
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                if let Some(&ch) = c.get(i) {
                    blank(&mut out, ch);
                }
                i += 1;
            }
            i += 1;
        } else if c[i] == '\'' {
            // A char literal ('x', '\n', '\u{..}'), or a lifetime.
            if next == Some('\\') {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                out.push(c[i]);
                i += 1;
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

fn ident_before(c: &[char], i: usize) -> bool {
    i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_')
}

#[derive(Debug, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Open,
    Close,
    Other,
}

/// The top-level modules (and their line) that `crate::` paths, and
/// `super::` paths climbing to the root, name in one file's stripped text.
/// `module` is the file's module path.
fn scan(module: &[String], text: &str) -> Vec<(String, usize)> {
    let mut toks = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let c: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < c.len() {
            if c[i].is_alphabetic() || c[i] == '_' {
                let start = i;
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
                toks.push((Tok::Ident(c[start..i].iter().collect()), n + 1));
                continue;
            }
            let tok = match c[i] {
                ':' if c.get(i + 1) == Some(&':') => {
                    i += 1;
                    Tok::PathSep
                }
                '{' => Tok::Open,
                '}' => Tok::Close,
                ch if ch.is_whitespace() => {
                    i += 1;
                    continue;
                }
                _ => Tok::Other,
            };
            toks.push((tok, n + 1));
            i += 1;
        }
    }
    let ident = |k: usize| match toks.get(k) {
        Some((Tok::Ident(s), _)) => Some(s.as_str()),
        _ => None,
    };
    let sep = |k: usize| matches!(toks.get(k), Some((Tok::PathSep, _)));
    let mut found = Vec::new();
    // Inline `mod name {` blocks: (name, brace depth inside them).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut k = 0;
    while k < toks.len() {
        let line = toks[k].1;
        match &toks[k].0 {
            Tok::Open => depth += 1,
            Tok::Close => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth -= 1;
            }
            Tok::Ident(s) if s == "mod" => {
                if let (Some(name), Some((Tok::Open, _))) = (ident(k + 1), toks.get(k + 2)) {
                    inline.push((name.to_string(), depth + 1));
                }
            }
            Tok::Ident(s) if (s == "crate" || s == "super") && sep(k + 1) => {
                // A path's start must not follow `::` (`x::crate` is not a path).
                let after_sep = k > 0 && matches!(toks[k - 1].0, Tok::PathSep);
                if !after_sep {
                    let mut here: Vec<String> = module.to_vec();
                    here.extend(inline.iter().map(|(n, _)| n.clone()));
                    let mut j = k;
                    if s == "crate" {
                        here.clear();
                        j += 2;
                    } else {
                        while ident(j) == Some("super") && sep(j + 1) {
                            here.pop();
                            j += 2;
                        }
                    }
                    match here.first() {
                        Some(top) => found.push((top.clone(), line)),
                        None => found.extend(heads(&toks, j)),
                    }
                    k = j;
                    continue;
                }
            }
            _ => {}
        }
        k += 1;
    }
    found
}

/// The first segments of the path(s) starting at token `j`, right after
/// `crate::`: one name, or each item of a `{…}` group.
fn heads(toks: &[(Tok, usize)], j: usize) -> Vec<(String, usize)> {
    match toks.get(j) {
        Some((Tok::Ident(s), line)) if s != "self" => vec![(s.clone(), *line)],
        Some((Tok::Open, _)) => {
            let mut out = Vec::new();
            let mut depth = 0;
            let mut expect_head = true;
            for (tok, line) in &toks[j..] {
                match tok {
                    Tok::Open => {
                        depth += 1;
                        expect_head = depth == 1;
                        continue;
                    }
                    Tok::Close => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    Tok::Ident(s) if depth == 1 && expect_head && s != "self" => {
                        out.push((s.clone(), *line));
                    }
                    Tok::Other if depth == 1 => {
                        // A `,` starts the next item.
                        expect_head = true;
                        continue;
                    }
                    _ => {}
                }
                expect_head = false;
            }
            out
        }
        _ => Vec::new(),
    }
}

/// A cycle, as a list of modules ending where it starts, if there is one.
fn find_cycle(edges: &Edges) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &Edges,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in edges.get(node).into_iter().flat_map(|m| m.keys()) {
            if let Some(c) = visit(next, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(c) = visit(node, edges, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}
