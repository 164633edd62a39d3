//! The import rules of ARCHITECTURE.md, checked on the source text.
//!
//! The scanner walks the module tree from `src/lib.rs` and `src/main.rs` as rustc does (`mod x;`,
//! `#[path = ".."]`, inline `mod x { .. }`), blanks comments and string literals, and collects
//! every path that names one of our modules: `use` trees (`pub use` included), inline
//! `crate::a::b` paths, `super::`/`self::` paths, and paths that start at a child module or at a
//! module brought in by a `use`. Each path is resolved to the file that defines the item,
//! through `pub use` re-exports, so that `crate::hub::views::safe_next` lands on the file that
//! defines `safe_next`, not on `views/mod.rs`.
//!
//! Two checks: a file may only import the layers its own layer may see ([`allowed`]), and no
//! file imports a file that (through any chain) imports it back. Test-only code (files declared
//! under `#[cfg(test)]` and `#[cfg(test)] mod { .. }` bodies) is exempt from the first check, as
//! ARCHITECTURE.md says, not from the second.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::LazyLock;

use regex::Regex;

/// The patterns of the scanner, with ASCII classes and compiled once (the test runs
/// unoptimised).
static MOD_DECL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?m)\bmod[ \t\r\n]+([A-Za-z_][0-9A-Za-z_]*)[ \t\r\n]*([;{])").expect("regex")
});
static CFG_TEST: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"cfg[ \t\r\n]*\([ \t\r\n]*test[ \t\r\n]*\)").expect("regex"));
static PATH_ATTR: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"#\[[ \t\r\n]*path[ \t\r\n]*=[ \t\r\n]*""#).expect("regex"));
static USE_TREE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?s)(?:^|[^0-9A-Za-z_:])(pub[ \t\r\n]*(?:\([^)]*\))?[ \t\r\n]+)?use[ \t\r\n]+([^;]+);",
    )
    .expect("regex")
});
static PATH: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:^|[^0-9A-Za-z_:])([A-Za-z_][0-9A-Za-z_]*(?:[ \t\r\n]*::[ \t\r\n]*[A-Za-z_][0-9A-Za-z_]*)+)").expect("regex")
});

/// The layers a layer may import (besides itself). `lib` is `src/lib.rs`, which only declares
/// the modules; `main` is `src/main.rs`, on top of everything.
fn allowed(layer: &str) -> Option<&'static [&'static str]> {
    Some(match layer {
        "api" | "scopes" | "k8s" | "rbac" | "net" => &[],
        "config" => &["api"],
        "policy" => &["api", "config"],
        "crdgen" => &["api"],
        "store" => &["policy", "scopes", "config", "api"],
        "batch" => &["policy", "config", "api", "k8s"],
        "backend" => &["store", "batch", "policy", "config", "api", "k8s"],
        "proxy" => &["store", "policy", "scopes", "config", "api"],
        "operator" => &["batch", "policy", "config", "api", "k8s", "net"],
        "hub" => &[
            "backend", "proxy", "store", "batch", "policy", "scopes", "config", "api", "k8s",
            "rbac", "net",
        ],
        "lib" | "main" => return None,
        _ => &[],
    })
}

/// Replaces the text of comments and of string and character literals by spaces (newlines
/// stay), so that byte offsets and line numbers are those of the original.
fn blank(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    let wipe = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                let end = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |p| i + p);
                wipe(&mut out, i, end);
                i = end;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let (mut depth, mut j) = (1, i + 2);
                while j < b.len() && depth > 0 {
                    if b[j] == b'/' && b.get(j + 1) == Some(&b'*') {
                        depth += 1;
                        j += 2;
                    } else if b[j] == b'*' && b.get(j + 1) == Some(&b'/') {
                        depth -= 1;
                        j += 2;
                    } else {
                        j += 1;
                    }
                }
                wipe(&mut out, i, j);
                i = j;
            }
            b'r' | b'b' if i == 0 || !ident(b[i - 1]) => {
                // r"..", r#".."#, b"..", br#".."#, b'x'
                let mut j = i + 1;
                if b[i] == b'b' && b.get(j) == Some(&b'r') {
                    j += 1;
                }
                let raw = b[i] == b'r' || (j > i + 1);
                let hashes = b[j..].iter().take_while(|&&c| c == b'#').count();
                if raw && b.get(j + hashes) == Some(&b'"') {
                    let start = j + hashes + 1;
                    let mut k = start;
                    let close: Vec<u8> = std::iter::once(b'"')
                        .chain(std::iter::repeat_n(b'#', hashes))
                        .collect();
                    while k < b.len() && !b[k..].starts_with(&close) {
                        k += 1;
                    }
                    wipe(&mut out, start, k.min(b.len()));
                    i = (k + close.len()).min(b.len());
                } else if !raw && matches!(b.get(j), Some(b'"') | Some(b'\'')) {
                    i = j; // a byte string or byte: the quote arm takes it
                } else {
                    i += 1;
                    while i < b.len() && ident(b[i]) {
                        i += 1;
                    }
                }
            }
            b'"' => {
                let mut j = i + 1;
                while j < b.len() && b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                wipe(&mut out, i + 1, j.min(b.len()));
                i = j + 1;
            }
            b'\'' => {
                // A char literal ('x', '\n', '\u{1F600}', 'é') or a lifetime ('a).
                if b.get(i + 1) == Some(&b'\\') {
                    let mut j = i + 2;
                    while j < b.len() && b[j] != b'\'' {
                        j += 1;
                    }
                    wipe(&mut out, i + 1, j.min(b.len()));
                    i = j + 1;
                } else {
                    let ch = src[i + 1..].chars().next().map_or(0, char::len_utf8);
                    if b.get(i + 1 + ch) == Some(&b'\'') {
                        wipe(&mut out, i + 1, i + 1 + ch);
                        i += ch + 2;
                    } else {
                        i += 1;
                    }
                }
            }
            c if ident(c) => {
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    String::from_utf8(out).expect("blanking keeps UTF-8")
}

type ModPath = Vec<String>;

/// A module: the file it lives in, and its span there (a whole file, or an inline body).
#[derive(Debug, Clone)]
struct Module {
    file: String,
    span: (usize, usize),
}

/// A `use` or inline path found in a file.
#[derive(Debug, Clone)]
struct Reference {
    /// The module whose scope the path is written in.
    scope: ModPath,
    segments: Vec<String>,
    line: usize,
    test: bool,
    /// A `use` (or `pub use`) binding: the name it binds (None for a glob).
    binds: Option<Option<String>>,
    public: bool,
}

struct Tree {
    modules: BTreeMap<ModPath, Module>,
    /// Blanked text per file.
    text: BTreeMap<String, String>,
    refs: Vec<Reference>,
}

/// The 1-based line of byte `offset`, given the offsets of the file's newlines.
fn line_of(newlines: &[usize], offset: usize) -> usize {
    newlines.partition_point(|&n| n < offset) + 1
}

fn matching_brace(text: &str, open: usize) -> usize {
    let mut depth = 0;
    for (i, c) in text.bytes().enumerate().skip(open) {
        match c {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
    }
    text.len()
}

/// Expands a `use` tree (`a::{b, c::{d as e, self}, *}`) into paths, each with the name it
/// binds (`None`: a glob).
fn expand_use(tree: &str) -> Vec<(Vec<String>, Option<String>)> {
    fn go(prefix: &[String], s: &str, out: &mut Vec<(Vec<String>, Option<String>)>) {
        let s = s.trim();
        if s.is_empty() {
            return;
        }
        // Split the top level at `::{`.
        if let Some(open) = s.find('{') {
            let head: Vec<String> = s[..open]
                .split("::")
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect();
            let close = s.rfind('}').unwrap_or(s.len());
            let inner = &s[open + 1..close];
            let mut p = prefix.to_vec();
            p.extend(head);
            let (mut depth, mut start) = (0, 0);
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        go(&p, &inner[start..i], out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            go(&p, &inner[start..], out);
            return;
        }
        let (path, alias) = match s.split_once(" as ") {
            Some((p, a)) => (p.trim(), Some(a.trim().to_owned())),
            None => (s, None),
        };
        let mut segs = prefix.to_vec();
        segs.extend(
            path.split("::")
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(str::to_owned),
        );
        match segs.last().map(String::as_str) {
            Some("*") => {
                segs.pop();
                out.push((segs, None));
            }
            Some("self") => {
                segs.pop();
                let name = alias.or_else(|| segs.last().cloned());
                out.push((segs, name));
            }
            Some(last) => {
                let name = alias.unwrap_or_else(|| last.to_owned());
                out.push((segs, Some(name)));
            }
            None => {}
        }
    }
    let mut out = Vec::new();
    go(&[], tree, &mut out);
    out
}

/// Reads the module tree rooted at `root` (a path in `files`) as module `module`.
fn walk(
    files: &BTreeMap<String, String>,
    root: &str,
    module: ModPath,
    test: bool,
    tree: &mut Tree,
) {
    let Some(original) = files.get(root) else {
        return;
    };
    let text = blank(original);
    let dir = Path::new(root).parent().expect("a file in a folder");
    let stem = Path::new(root)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("");
    let mod_rs = matches!(stem, "mod" | "lib" | "main");
    let children_dir = if mod_rs {
        dir.to_path_buf()
    } else {
        dir.join(stem)
    };
    tree.modules.insert(
        module.clone(),
        Module {
            file: root.to_owned(),
            span: (0, text.len()),
        },
    );
    let (decl, cfg_test_re, path_attr) = (&*MOD_DECL, &*CFG_TEST, &*PATH_ATTR);
    // Inline modules first, so that nested declarations know their scope.
    let mut inline: Vec<(ModPath, (usize, usize), bool)> = Vec::new();
    let mut files_declared = Vec::new();
    for cap in decl.captures_iter(&text) {
        let whole = cap.get(0).expect("match");
        let name = cap[1].to_owned();
        // The attributes and visibility before `mod`: back to the end of the previous item.
        let before = &text[..whole.start()];
        let from = before.rfind([';', '}', '{']).map_or(0, |p| p + 1);
        let attrs = &text[from..whole.start()];
        let cfg_test = cfg_test_re.is_match(attrs);
        let scope = inline
            .iter()
            .filter(|(_, (s, e), _)| *s <= whole.start() && whole.start() < *e)
            .max_by_key(|(_, (s, _), _)| *s)
            .map(|(p, _, t)| (p.clone(), *t))
            .unwrap_or((module.clone(), test));
        let mut path = scope.0.clone();
        path.push(name.clone());
        let is_test = scope.1 || cfg_test;
        if &cap[2] == "{" {
            let open = whole.end() - 1;
            let span = (open, matching_brace(&text, open));
            inline.push((path.clone(), span, is_test));
            tree.modules.insert(
                path,
                Module {
                    file: root.to_owned(),
                    span,
                },
            );
        } else {
            let file = match path_attr.find(attrs) {
                Some(m) => {
                    let at = from + m.end();
                    let end = original[at..].find('"').map_or(at, |p| at + p);
                    dir.join(&original[at..end])
                }
                None => {
                    let flat = children_dir.join(format!("{name}.rs"));
                    if files.contains_key(flat.to_str().unwrap_or("")) {
                        flat
                    } else {
                        children_dir.join(&name).join("mod.rs")
                    }
                }
            };
            files_declared.push((file.to_string_lossy().into_owned(), path, is_test));
        }
    }
    references(&text, &module, test, &inline, tree);
    tree.text.insert(root.to_owned(), text);
    for (file, path, is_test) in files_declared {
        walk(files, &file, path, is_test, tree);
    }
}

/// Collects the paths of a file into `tree.refs`.
fn references(
    text: &str,
    module: &ModPath,
    test: bool,
    inline: &[(ModPath, (usize, usize), bool)],
    tree: &mut Tree,
) {
    let newlines: Vec<usize> = text
        .bytes()
        .enumerate()
        .filter(|(_, c)| *c == b'\n')
        .map(|(i, _)| i)
        .collect();
    let scope_at = |offset: usize| -> (ModPath, bool) {
        inline
            .iter()
            .filter(|(_, (s, e), _)| *s <= offset && offset < *e)
            .max_by_key(|(_, (s, _), _)| *s)
            .map(|(p, _, t)| (p.clone(), *t))
            .unwrap_or((module.clone(), test))
    };
    let uses = &*USE_TREE;
    let mut masked = Vec::new();
    for cap in uses.captures_iter(text) {
        let tree_text = cap.get(2).expect("tree");
        masked.push((cap.get(0).expect("m").start(), cap.get(0).expect("m").end()));
        let (scope, is_test) = scope_at(tree_text.start());
        for (segments, binds) in expand_use(tree_text.as_str()) {
            tree.refs.push(Reference {
                scope: scope.clone(),
                segments,
                line: line_of(&newlines, tree_text.start()),
                test: is_test,
                binds: Some(binds),
                public: cap.get(1).is_some(),
            });
        }
    }
    let paths = &*PATH;
    for cap in paths.captures_iter(text) {
        let m = cap.get(1).expect("path");
        if masked
            .iter()
            .any(|(s, e)| *s <= m.start() && m.start() < *e)
        {
            continue;
        }
        let (scope, is_test) = scope_at(m.start());
        tree.refs.push(Reference {
            scope,
            segments: m
                .as_str()
                .split("::")
                .map(|s| s.trim().to_owned())
                .collect(),
            line: line_of(&newlines, m.start()),
            test: is_test,
            binds: None,
            public: false,
        });
    }
}

fn file_of<'a>(tree: &'a Tree, scope: &ModPath) -> Option<&'a str> {
    tree.modules.get(scope).map(|m| m.file.as_str())
}

/// The names `use` binds to modules, per scope: name -> absolute module path.
type Aliases = BTreeMap<ModPath, BTreeMap<String, ModPath>>;

/// Resolves the first segments of a path written in `scope` to an absolute path.
fn absolute(
    tree: &Tree,
    aliases: &Aliases,
    scope: &ModPath,
    segs: &[String],
) -> Option<Vec<String>> {
    let (first, rest) = segs.split_first()?;
    let in_main = file_of(tree, scope) == Some("src/main.rs");
    let mut base: ModPath = match first.as_str() {
        "crate" if in_main => return None,
        "crate" => vec![],
        "atelier" if in_main => vec![],
        "self" => scope.clone(),
        "super" => {
            let mut p = scope.clone();
            p.pop()?;
            let mut rest = rest;
            while rest.first().map(String::as_str) == Some("super") {
                p.pop()?;
                rest = &rest[1..];
            }
            p.extend(rest.iter().cloned());
            return Some(p);
        }
        name => {
            let mut child = scope.clone();
            child.push(name.to_owned());
            if !in_main && tree.modules.contains_key(&child) {
                child
            } else if let Some(target) = aliases.get(scope).and_then(|a| a.get(name)) {
                target.clone()
            } else {
                return None;
            }
        }
    };
    base.extend(rest.iter().cloned());
    Some(base)
}

/// The module and the file that define the item at `path` (through `pub use`), if it is ours.
fn defining_file(
    tree: &Tree,
    aliases: &Aliases,
    exports: &BTreeMap<(ModPath, String), (ModPath, Vec<String>)>,
    path: &[String],
    depth: usize,
) -> Option<String> {
    let mut len = path.len();
    while !tree.modules.contains_key(&path[..len]) {
        len = len.checked_sub(1)?;
    }
    let module = path[..len].to_vec();
    if depth < 8
        && let Some(item) = path.get(len)
        && let Some((scope, target)) = exports.get(&(module.clone(), item.clone()))
        && let Some(abs) = absolute(tree, aliases, scope, target)
    {
        let mut next = abs;
        next.extend(path[len + 1..].iter().cloned());
        if let Some(file) = defining_file(tree, aliases, exports, &next, depth + 1) {
            return Some(file);
        }
    }
    Some(tree.modules[&module].file.clone())
}

fn layer_of(file: &str) -> String {
    let rest = file.trim_start_matches("src/");
    match rest {
        "lib.rs" => "lib".into(),
        "main.rs" => "main".into(),
        _ => rest
            .split('/')
            .next()
            .unwrap_or(rest)
            .trim_end_matches(".rs")
            .to_owned(),
    }
}

/// One file-to-file import.
#[derive(Debug, Clone)]
struct Edge {
    from: String,
    to: String,
    from_mod: ModPath,
    to_mod: ModPath,
    line: usize,
    path: String,
    test: bool,
}

#[derive(Debug, Default)]
struct Report {
    edges: Vec<Edge>,
    violations: Vec<String>,
    cycles: Vec<String>,
}

fn analyze(files: &BTreeMap<String, String>) -> Report {
    let mut tree = Tree {
        modules: BTreeMap::new(),
        text: BTreeMap::new(),
        refs: Vec::new(),
    };
    walk(files, "src/lib.rs", vec![], false, &mut tree);
    walk(
        files,
        "src/main.rs",
        vec!["<main>".into()],
        false,
        &mut tree,
    );
    // `use` bindings that name modules, and `pub use` exports.
    let mut aliases: Aliases = BTreeMap::new();
    let mut exports = BTreeMap::new();
    // Twice: an alias may be used by a later `use` (`use crate::hub; use hub::api;`).
    for _ in 0..2 {
        for r in &tree.refs {
            let Some(binds) = &r.binds else { continue };
            let Some(abs) = absolute(&tree, &aliases, &r.scope, &r.segments) else {
                continue;
            };
            match binds {
                Some(name) if tree.modules.contains_key(&abs) => {
                    aliases
                        .entry(r.scope.clone())
                        .or_default()
                        .insert(name.clone(), abs);
                }
                None if tree.modules.contains_key(&abs) => {
                    // A glob of a module brings its child modules.
                    let children: Vec<(String, ModPath)> = tree
                        .modules
                        .keys()
                        .filter(|k| k.len() == abs.len() + 1 && k.starts_with(&abs))
                        .map(|k| (k[abs.len()].clone(), k.clone()))
                        .collect();
                    aliases.entry(r.scope.clone()).or_default().extend(children);
                }
                _ => {}
            }
            if r.public
                && let Some(name) = binds
            {
                exports.insert(
                    (r.scope.clone(), name.clone()),
                    (r.scope.clone(), r.segments.clone()),
                );
            }
        }
    }
    let mut file_module: BTreeMap<String, ModPath> = BTreeMap::new();
    for (path, m) in &tree.modules {
        if m.span.0 == 0 {
            file_module
                .entry(m.file.clone())
                .or_insert_with(|| path.clone());
        }
    }
    let mut report = Report::default();
    let mut seen = BTreeSet::new();
    for r in &tree.refs {
        let Some(from) = file_of(&tree, &r.scope) else {
            continue;
        };
        let Some(abs) = absolute(&tree, &aliases, &r.scope, &r.segments) else {
            continue;
        };
        // A `pub use` is an edge to what it re-exports, not through itself.
        let Some(to) = defining_file(&tree, &aliases, &exports, &abs, 0) else {
            continue;
        };
        if to == from || !seen.insert((from.to_owned(), to.clone(), r.line)) {
            continue;
        }
        report.edges.push(Edge {
            from_mod: file_module[from].clone(),
            to_mod: file_module[&to].clone(),
            from: from.to_owned(),
            to,
            line: r.line,
            path: r.segments.join("::"),
            test: r.test,
        });
    }
    for e in &report.edges {
        let (from, to) = (layer_of(&e.from), layer_of(&e.to));
        if from == to || e.test {
            continue;
        }
        if let Some(ok) = allowed(&from)
            && !ok.contains(&to.as_str())
        {
            report.violations.push(format!(
                "{}:{}: `{}`: {from} may not import {to} (it may import: {})",
                e.from,
                e.line,
                e.path,
                if ok.is_empty() {
                    "nothing of ours".to_owned()
                } else {
                    ok.join(", ")
                }
            ));
        }
    }
    report.cycles = cycles(&lift(&report.edges));
    report
}

/// An import seen at the level of the module tree where it crosses over: from the child of the
/// nearest common ancestor that holds the importing file to the one that holds the imported file
/// (or to that ancestor's own file, `mod.rs`/`foo.rs`, written `a::b::(self)`).
#[derive(Debug)]
struct Lifted<'a> {
    from: String,
    to: String,
    edge: &'a Edge,
}

/// Test-only imports are left out (a test module drives the code it tests, and fixtures are
/// shared by the tests of the modules they drive).
///
/// A module's own file declares and assembles its submodules (`mod x;`, `pub use x::Y`, a
/// router built from them): an import from a file into its own submodules is composition, not
/// a dependency that can close a cycle. Every other import is lifted to the level where it
/// crosses between siblings.
fn lift(edges: &[Edge]) -> Vec<Lifted<'_>> {
    let name = |p: &[String]| {
        if p.is_empty() {
            "crate".to_owned()
        } else {
            p.join("::")
        }
    };
    let mut out = Vec::new();
    for e in edges {
        let (f, t) = (&e.from_mod, &e.to_mod);
        if e.test || t.starts_with(f) {
            continue;
        }
        let common = f.iter().zip(t).take_while(|(a, b)| a == b).count();
        let from = name(&f[..=common]);
        let to = if t.len() == common {
            format!("{}::(self)", name(t))
        } else {
            name(&t[..=common])
        };
        out.push(Lifted { from, to, edge: e });
    }
    out
}

/// Every strongly connected set of sibling modules, printed as one cycle through it with the
/// file, line and path of each import.
fn cycles(edges: &[Lifted<'_>]) -> Vec<String> {
    let mut graph: BTreeMap<&str, Vec<&Lifted<'_>>> = BTreeMap::new();
    for e in edges {
        graph.entry(e.from.as_str()).or_default().push(e);
    }
    // Tarjan's strongly connected components.
    struct State<'a> {
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        sccs: Vec<Vec<&'a str>>,
    }
    fn visit<'a>(v: &'a str, g: &BTreeMap<&'a str, Vec<&'a Lifted<'a>>>, s: &mut State<'a>) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on.insert(v);
        for e in g.get(v).into_iter().flatten() {
            let w = e.to.as_str();
            if !s.index.contains_key(w) {
                visit(w, g, s);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                scc.push(w);
                if w == v {
                    break;
                }
            }
            s.sccs.push(scc);
        }
    }
    let mut s = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        sccs: Vec::new(),
    };
    let nodes: Vec<&str> = graph.keys().copied().collect();
    for v in nodes {
        if !s.index.contains_key(v) {
            visit(v, &graph, &mut s);
        }
    }
    let mut out = Vec::new();
    for scc in s.sccs.iter().filter(|c| c.len() > 1) {
        let members: BTreeSet<&str> = scc.iter().copied().collect();
        let start = *members.iter().next().expect("non-empty");
        // The shortest way back to `start` inside the component.
        let mut prev: BTreeMap<&str, &Lifted<'_>> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut last = None;
        'bfs: while let Some(v) = queue.pop_front() {
            for e in graph.get(v).into_iter().flatten() {
                let w = e.to.as_str();
                if !members.contains(w) {
                    continue;
                }
                if w == start {
                    last = Some(*e);
                    break 'bfs;
                }
                if !prev.contains_key(w) {
                    prev.insert(w, e);
                    queue.push_back(w);
                }
            }
        }
        let mut chain = vec![last.expect("a cycle closes")];
        while chain.last().expect("chain").from != start {
            let from = chain.last().expect("chain").from.as_str();
            chain.push(prev[from]);
        }
        chain.reverse();
        let mut text = start.to_owned();
        for e in chain {
            text.push_str(&format!(
                " -> {} ({}:{}: `{}`)",
                e.to, e.edge.from, e.edge.line, e.edge.path
            ));
        }
        let mut all: Vec<&str> = members.into_iter().collect();
        all.sort();
        out.push(format!(
            "{text}\n    modules in this cycle: {}",
            all.join(", ")
        ));
    }
    out
}

fn read_src() -> BTreeMap<String, String> {
    fn go(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                go(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(root).expect("under root");
                out.insert(
                    rel.to_string_lossy().replace('\\', "/"),
                    std::fs::read_to_string(&path).expect("read"),
                );
            }
        }
    }
    // `LAYERS_ROOT=<dir>`: check another checkout (a folder holding `src/`).
    let root = std::env::var_os("LAYERS_ROOT").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf(),
        Into::into,
    );
    let root = root.as_path();
    let mut out = BTreeMap::new();
    go(&root.join("src"), root, &mut out);
    out
}

#[test]
fn every_import_follows_the_layers_and_no_file_imports_itself_back() {
    let files = read_src();
    let report = analyze(&files);
    // `LAYERS_EDGES=1 cargo test --test layers -- --nocapture` prints every import as the
    // cycle check sees it (module -> module, file:line, path).
    if std::env::var_os("LAYERS_EDGES").is_some() {
        for e in lift(&report.edges) {
            eprintln!(
                "{} -> {}  ({}:{} `{}`)",
                e.from, e.to, e.edge.from, e.edge.line, e.edge.path
            );
        }
    }
    assert!(
        report.edges.len() > 100,
        "the scanner sees the imports: {}",
        report.edges.len()
    );
    let mut problems = Vec::new();
    if !report.violations.is_empty() {
        problems.push(format!(
            "imports against the layers (ARCHITECTURE.md):\n  {}",
            report.violations.join("\n  ")
        ));
    }
    if !report.cycles.is_empty() {
        problems.push(format!(
            "import cycles between modules (ARCHITECTURE.md):\n  {}",
            report.cycles.join("\n  ")
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[cfg(test)]
mod scanner {
    use super::*;

    fn files(list: &[(&str, &str)]) -> BTreeMap<String, String> {
        list.iter()
            .map(|(p, t)| ((*p).to_owned(), (*t).to_owned()))
            .collect()
    }

    const LIB: &str = "pub mod api;\npub mod backend;\npub mod hub;\n";

    #[test]
    fn blanking_keeps_offsets_and_drops_comments_strings_and_chars() {
        let src = "let a = \"crate::hub::X\"; // crate::hub::Y\n/* crate::hub::Z /* nested */ */ let c = '\"'; let l: &'a str = r#\"crate::\"#; b'x'";
        let out = blank(src);
        assert_eq!(out.len(), src.len());
        assert!(!out.contains("crate"), "{out}");
        assert!(out.contains("let l: &'a str"), "a lifetime is code: {out}");
        assert_eq!(out.lines().count(), 2);
    }

    #[test]
    fn use_trees_expand_to_paths_with_their_bindings() {
        let got = expand_use("crate::hub::{self, api::{models::server_url as url, *}, HubState}");
        let want: Vec<(Vec<String>, Option<String>)> = vec![
            (vec!["crate".into(), "hub".into()], Some("hub".into())),
            (
                vec![
                    "crate".into(),
                    "hub".into(),
                    "api".into(),
                    "models".into(),
                    "server_url".into(),
                ],
                Some("url".into()),
            ),
            (vec!["crate".into(), "hub".into(), "api".into()], None),
            (
                vec!["crate".into(), "hub".into(), "HubState".into()],
                Some("HubState".into()),
            ),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn an_import_of_a_higher_layer_is_reported_with_file_and_line() {
        let report = analyze(&files(&[
            ("src/lib.rs", LIB),
            ("src/api/mod.rs", "pub struct W;\n"),
            ("src/hub/mod.rs", "pub struct HubState;\n"),
            (
                "src/backend/mod.rs",
                "use crate::api::W;\n\nfn f(h: &crate::hub::HubState) {}\n",
            ),
        ]));
        assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
        let v = &report.violations[0];
        assert!(
            v.starts_with(
                "src/backend/mod.rs:3: `crate::hub::HubState`: backend may not import hub"
            ),
            "{v}"
        );
        assert!(report.cycles.is_empty());
    }

    #[test]
    fn comments_strings_and_test_bodies_are_not_violations() {
        let report = analyze(&files(&[
            ("src/lib.rs", LIB),
            ("src/api/mod.rs", ""),
            ("src/hub/mod.rs", "pub struct HubState;\n"),
            (
                "src/backend/mod.rs",
                "// use crate::hub::HubState;\n/// [`crate::hub::HubState`]\nconst S: &str = \"crate::hub::HubState\";\n#[cfg(test)]\nmod tests {\n    use crate::hub::HubState;\n}\n",
            ),
        ]));
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        assert_eq!(
            report.edges.len(),
            1,
            "the test body's import is still an edge"
        );
        assert!(report.edges[0].test);
    }

    #[test]
    fn a_re_export_leads_to_the_defining_file_and_a_cycle_is_printed() {
        let report = analyze(&files(&[
            ("src/lib.rs", LIB),
            ("src/api/mod.rs", ""),
            ("src/backend/mod.rs", ""),
            (
                "src/hub/mod.rs",
                "pub mod api;\npub mod views;\npub mod oidc;\npub use views::safe_next;\n",
            ),
            ("src/hub/api/mod.rs", "pub fn check_name() {}\n"),
            (
                "src/hub/views/mod.rs",
                "mod login;\npub use login::safe_next;\n",
            ),
            ("src/hub/views/login.rs", "pub fn safe_next() {}\n"),
            (
                "src/hub/oidc.rs",
                "pub fn buttons() { crate::hub::safe_next(); }\n",
            ),
        ]));
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        let edges: Vec<(&str, &str)> = report
            .edges
            .iter()
            .map(|e| (e.from.as_str(), e.to.as_str()))
            .collect();
        assert!(
            edges.contains(&("src/hub/oidc.rs", "src/hub/views/login.rs")),
            "{edges:?}"
        );
        assert!(
            !edges.contains(&("src/hub/oidc.rs", "src/hub/views/mod.rs")),
            "{edges:?}"
        );
        // oidc.rs -> login.rs only: no cycle; add login.rs -> oidc.rs and there is one.
        assert!(report.cycles.is_empty(), "{:?}", report.cycles);
        let report = analyze(&files(&[
            ("src/lib.rs", "pub mod hub;\n"),
            ("src/hub/mod.rs", "pub mod views;\npub mod oidc;\n"),
            (
                "src/hub/views/mod.rs",
                "mod login;\npub use login::safe_next;\n",
            ),
            (
                "src/hub/views/login.rs",
                "pub fn safe_next() {}\nfn page() { super::super::oidc::buttons(); }\n",
            ),
            (
                "src/hub/oidc.rs",
                "use crate::hub::views;\npub fn buttons() { views::safe_next(); }\n",
            ),
        ]));
        assert_eq!(report.cycles.len(), 1, "{:?}", report.cycles);
        assert!(
            report.cycles[0].starts_with("hub::oidc -> hub::views (src/hub/oidc.rs:1: `crate::hub::views`) -> hub::oidc (src/hub/views/login.rs:2: `super::super::oidc::buttons`)"),
            "{}",
            report.cycles[0]
        );
    }

    #[test]
    fn a_module_file_and_its_submodules_are_one_unit_but_siblings_are_not() {
        let store = [
            ("src/lib.rs", "pub mod store;\npub mod hub;\n"),
            (
                "src/store/mod.rs",
                "mod audit;\npub struct Store;\npub use audit::Query;\n",
            ),
            (
                "src/store/audit.rs",
                "use super::Store;\npub struct Query;\n",
            ),
            (
                "src/hub/mod.rs",
                "pub mod api;\npub mod spawner;\npub fn router() { api::routes(); }\n",
            ),
            (
                "src/hub/api/mod.rs",
                "mod servers;\npub fn routes() {}\npub fn check_name() {}\n",
            ),
            (
                "src/hub/api/servers.rs",
                "use crate::hub::spawner::start;\n",
            ),
        ];
        let report = analyze(&files(&store));
        assert!(report.cycles.is_empty(), "{:?}", report.cycles);
        let mut with_back_arrow = store.to_vec();
        with_back_arrow.push((
            "src/hub/spawner.rs",
            "pub fn start() { super::api::check_name(); }\n",
        ));
        let report = analyze(&files(&with_back_arrow));
        assert_eq!(report.cycles.len(), 1, "{:?}", report.cycles);
        assert!(
            report.cycles[0].starts_with("hub::api -> hub::spawner (src/hub/api/servers.rs:1: `crate::hub::spawner::start`) -> hub::api (src/hub/spawner.rs:1: `super::api::check_name`)"),
            "{}",
            report.cycles[0]
        );
    }

    #[test]
    fn path_attributes_and_child_modules_resolve_to_their_files() {
        let report = analyze(&files(&[
            ("src/lib.rs", "pub mod operator;\npub mod hub;\n"),
            ("src/hub/mod.rs", ""),
            (
                "src/operator/mod.rs",
                "mod build;\nfn f() { build::run(); }\n",
            ),
            (
                "src/operator/build.rs",
                "pub fn run() {}\n#[cfg(test)]\n#[path = \"build_tests.rs\"]\nmod tests;\n",
            ),
            (
                "src/operator/build_tests.rs",
                "use super::run;\nuse crate::hub;\n",
            ),
        ]));
        let edges: Vec<(&str, &str, bool)> = report
            .edges
            .iter()
            .map(|e| (e.from.as_str(), e.to.as_str(), e.test))
            .collect();
        assert!(
            edges.contains(&("src/operator/mod.rs", "src/operator/build.rs", false)),
            "{edges:?}"
        );
        assert!(
            edges.contains(&("src/operator/build_tests.rs", "src/operator/build.rs", true)),
            "{edges:?}"
        );
        assert!(
            edges.contains(&("src/operator/build_tests.rs", "src/hub/mod.rs", true)),
            "{edges:?}"
        );
        assert!(
            report.violations.is_empty(),
            "a test file is exempt: {:?}",
            report.violations
        );
    }
}
