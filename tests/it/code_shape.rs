//! The code's shape as the issue tracker asks for it: no function in non-test code over 80
//! lines, and no import cycle between the modules of a crate. Reads the sources as text.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_FN_LINES: usize = 80;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Non-test code: everything before a file's first `#[cfg(test)]`.
fn non_test(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let end = text.find("#[cfg(test)]").unwrap_or(text.len());
    text[..end].to_string()
}

/// The text with string and char literals and line comments blanked out (newlines kept), for
/// counting braces. Strings may span lines; raw strings are taken as `r"..."` / `r#"..."#`.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let keep_newlines = |c: char, out: &mut String| {
        if c == '\n' {
            out.push('\n');
        }
    };
    while let Some(c) = chars.next() {
        match c {
            'r' if matches!(chars.peek(), Some('"') | Some('#')) => {
                let mut hashes = 0;
                while chars.peek() == Some(&'#') {
                    chars.next();
                    hashes += 1;
                }
                if chars.next() != Some('"') {
                    continue; // `r#ident`, not a string
                }
                let closing = format!("\"{}", "#".repeat(hashes));
                let mut tail = String::new();
                for d in chars.by_ref() {
                    keep_newlines(d, &mut out);
                    tail.push(d);
                    if tail.ends_with(&closing) {
                        break;
                    }
                }
            }
            '"' => {
                while let Some(d) = chars.next() {
                    keep_newlines(d, &mut out);
                    match d {
                        '\\' => {
                            chars
                                .next()
                                .into_iter()
                                .for_each(|e| keep_newlines(e, &mut out));
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '\'' if chars.clone().nth(1) == Some('\'') => {
                chars.nth(1);
            }
            '/' if chars.peek() == Some(&'/') => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// (name, first line, length) of each function with a body.
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let code = code_only(text);
    let lines: Vec<&str> = code.lines().collect();
    let mut found = vec![];
    for (i, line) in lines.iter().enumerate() {
        let Some(at) = line.find("fn ") else { continue };
        let before = line[..at].trim();
        let prefix_ok = before.split_whitespace().all(|w| {
            [
                "pub",
                "async",
                "const",
                "unsafe",
                "pub(crate)",
                "pub(super)",
                "extern",
            ]
            .contains(&w)
        });
        let name: String = line[at + 3..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !prefix_ok || name.is_empty() {
            continue;
        }
        let (mut depth, mut opened) = (0i64, false);
        for (j, l) in lines.iter().enumerate().skip(i) {
            if !opened && l.contains(';') && !l.contains('{') {
                break; // a declaration without a body
            }
            depth += l.matches('{').count() as i64 - l.matches('}').count() as i64;
            opened |= l.contains('{');
            if opened && depth <= 0 {
                found.push((name.clone(), i + 1, j - i + 1));
                break;
            }
        }
    }
    found
}

#[test]
fn the_brace_counter_measures_functions() {
    let text = "fn a() {\n    let s = \"}\n}\";\n    if x { y(); } // }\n}\npub async fn b(x: u8);\nfn c() { '{' }\nfn d() { r#\"}\"# }\n";
    let want = [("a", 1, 5), ("c", 7, 1), ("d", 8, 1)];
    let want: Vec<_> = want
        .iter()
        .map(|(n, l, c)| (n.to_string(), *l, *c))
        .collect();
    assert_eq!(functions(text), want);
}

#[test]
fn no_function_in_non_test_code_is_over_80_lines() {
    let mut files = vec![];
    for dir in ["src", "crates", "examples", "benches"] {
        rust_files(&root().join(dir), &mut files);
    }
    let mut long = vec![];
    for f in files
        .iter()
        .filter(|f| !f.components().any(|c| c.as_os_str() == "tests"))
    {
        for (name, line, len) in functions(&non_test(f)) {
            if len > MAX_FN_LINES {
                long.push(format!("{}:{line} {name} ({len} lines)", f.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines:\n{}",
        long.join("\n")
    );
}

/// Edges between the top-level modules of the crate rooted at `src`, from `crate::` paths.
fn module_edges(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = vec![];
    rust_files(src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap().with_extension("");
        let module = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .to_string();
        if ["lib", "main"].contains(&module.as_str()) {
            continue;
        }
        let text = code_only(&non_test(&f)); // comments may name any module
        for (i, _) in text.match_indices("crate::") {
            let target: String = text[i + 7..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !target.is_empty() && target != module {
                edges.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    edges
}

/// A cycle through `edges`, if there is one.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn walk(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == n) {
            let mut cycle = path[at..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if !done.insert(n.to_string()) {
            return None;
        }
        path.push(n.to_string());
        for t in edges.get(n).into_iter().flatten() {
            if let Some(c) = walk(t, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|n| walk(n, edges, &mut vec![], &mut done))
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let edges = |pairs: &[(&str, &str)]| {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in pairs {
            m.entry(a.to_string()).or_default().insert(b.to_string());
        }
        m
    };
    assert_eq!(find_cycle(&edges(&[("a", "b"), ("b", "c")])), None);
    let cycle = find_cycle(&edges(&[("a", "b"), ("b", "c"), ("c", "a")])).unwrap();
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4);
}

#[test]
fn no_import_cycle_between_the_modules_of_a_crate() {
    let mut srcs = vec![root().join("src")];
    for e in std::fs::read_dir(root().join("crates")).unwrap().flatten() {
        srcs.push(e.path().join("src"));
    }
    for src in srcs {
        let cycle = find_cycle(&module_edges(&src));
        assert_eq!(cycle, None, "import cycle in {}", src.display());
    }
}
