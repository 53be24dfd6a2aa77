//! The layering rule of the `# Layering` section of the crate docs, checked on the source
//! files themselves: no module uses a module of its own or a higher layer, the files form no
//! import cycle, and no Redis key or channel name is built outside `store/keys.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layer of each top-level module (see the crate docs).
const LAYERS: &[(&str, u8)] = &[
    ("error", 0),
    ("testkit", 0),
    ("config", 1),
    ("shutdown", 1),
    ("domain", 1),
    ("metrics", 2),
    ("store", 3),
    ("embedded", 3),
    ("live", 4),
    ("ops", 5),
    ("state", 6),
    ("http", 7),
    ("app", 8),
];

fn layer(module: &str) -> u8 {
    LAYERS
        .iter()
        .find(|(m, _)| *m == module)
        .map(|(_, l)| *l)
        .unwrap_or_else(|| panic!("module `{module}` has no layer in src/layering.rs and the crate docs"))
}

struct File {
    /// Module path, e.g. ["ops", "kv"]; [] for lib.rs.
    module: Vec<String>,
    /// Code without comments and string literals' contents are kept (for the key check).
    code: String,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            if p.file_name().unwrap() != "bin" {
                collect(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The library's files (not main.rs or the benchmark binary), by module path.
fn files() -> BTreeMap<Vec<String>, File> {
    let root = src_dir();
    let mut paths = Vec::new();
    collect(&root, &mut paths);
    let mut out = BTreeMap::new();
    for p in paths {
        let rel = p.strip_prefix(&root).unwrap().with_extension("");
        let mut module: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
        if module.last().is_some_and(|l| l == "mod" || l == "lib") {
            module.pop();
        }
        if module == ["main"] {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        // Drop line comments (doc comments mention paths freely).
        let code = text
            .lines()
            .map(|l| match l.trim_start().starts_with("//") {
                true => "",
                false => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        out.insert(module.clone(), File { module, code });
    }
    out
}

/// Paths `crate::a::b…` / `super::a…` / `self::a…` and `child::…` (for a child module the
/// file declares) in `code`, as absolute module paths.
fn references(f: &File, children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let bytes = f.code.as_bytes();
    let mut out = Vec::new();
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < bytes.len() {
        if !is_ident(bytes[i]) || (i > 0 && (is_ident(bytes[i - 1]) || bytes[i - 1] == b':')) {
            i += 1;
            continue;
        }
        // A path starting here: ident(::ident)*
        let mut segs: Vec<String> = Vec::new();
        let mut j = i;
        loop {
            let start = j;
            while j < bytes.len() && is_ident(bytes[j]) {
                j += 1;
            }
            if start == j {
                break;
            }
            segs.push(f.code[start..j].to_string());
            if f.code[j..].starts_with("::") {
                j += 2;
            } else {
                break;
            }
        }
        i = j.max(i + 1);
        if segs.len() < 2 {
            continue;
        }
        let abs: Vec<String> = match segs[0].as_str() {
            "crate" => segs[1..].to_vec(),
            "super" => {
                let mut base = f.module.clone();
                let mut rest = &segs[..];
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
                base.extend(rest.iter().cloned());
                base
            }
            "self" => f
                .module
                .iter()
                .cloned()
                .chain(segs[1..].iter().cloned())
                .collect(),
            s if children.contains(s) => f.module.iter().cloned().chain(segs.iter().cloned()).collect(),
            _ => continue,
        };
        out.push(abs);
    }
    out
}

/// The file a path lands in: its longest prefix that is a file's module.
fn target<'a>(path: &[String], all: &'a BTreeMap<Vec<String>, File>) -> Option<&'a Vec<String>> {
    (1..=path.len())
        .rev()
        .find_map(|n| all.get_key_value(&path[..n].to_vec()).map(|(k, _)| k))
}

fn children_of(f: &File) -> BTreeSet<String> {
    f.code
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            l.strip_prefix("mod ")?.strip_suffix(';').map(str::to_string)
        })
        .collect()
}

type Edges = BTreeMap<Vec<String>, BTreeSet<Vec<String>>>;

fn graph() -> (BTreeMap<Vec<String>, File>, Edges) {
    let all = files();
    let mut edges = BTreeMap::new();
    for (m, f) in &all {
        let mut set = BTreeSet::new();
        for r in references(f, &children_of(f)) {
            if let Some(t) = target(&r, &all) {
                if t != m && !t.is_empty() {
                    set.insert(t.clone());
                }
            }
        }
        edges.insert(m.clone(), set);
    }
    (all, edges)
}

#[test]
fn no_module_uses_its_own_or_a_higher_layer() {
    let (_, edges) = graph();
    // The graph sees real imports (so the checks below are not vacuous).
    let has = |from: &[&str], to: &[&str]| {
        let (f, t): (Vec<String>, Vec<String>) = (
            from.iter().map(|s| s.to_string()).collect(),
            to.iter().map(|s| s.to_string()).collect(),
        );
        edges.get(&f).is_some_and(|e| e.contains(&t))
    };
    assert!(has(&["http", "kv"], &["domain", "kv"]));
    assert!(has(&["http", "kv"], &["http", "extract"]));
    assert!(has(&["store", "kv"], &["store", "fcall"]));
    assert!(has(&["http"], &["http", "problem"]));
    let mut bad = Vec::new();
    for (from, tos) in &edges {
        let Some(top) = from.first() else { continue };
        for to in tos {
            let other = &to[0];
            if other != top && layer(other) >= layer(top) {
                bad.push(format!("{} uses {}", from.join("::"), to.join("::")));
            }
        }
    }
    assert!(bad.is_empty(), "layering broken:\n{}", bad.join("\n"));
}

#[test]
fn the_files_form_no_import_cycle() {
    let (_, edges) = graph();
    // Depth-first search with colours; report the first cycle found.
    fn visit(
        n: &Vec<String>,
        edges: &Edges,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, &edges, &mut state, &mut Vec::new()) {
                let names: Vec<String> = c.iter().map(|m| m.join("::")).collect();
                panic!("import cycle: {}", names.join(" -> "));
            }
        }
    }
}

#[test]
fn redis_keys_and_channels_are_built_only_in_store_keys() {
    // Shapes of key and channel construction: a hash tag, the prefix joined to a name, the
    // channel families, keyspace notification channels.
    const SHAPES: &[&str] = &[":{{", "}}:", ":lk:", ":ch:", ":q:", "__keyspace", "prefix() +"];
    // `"{}:name` (a prefix joined to a key name), not `"{}: text"`.
    let joins_prefix = |line: &str| {
        line.match_indices("\"{}:")
            .any(|(i, m)| line[i + m.len()..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '{'))
    };
    let mut bad = Vec::new();
    for (m, f) in files() {
        if m == ["store", "keys"] || m == ["layering"] {
            continue;
        }
        // Unit tests may spell out keys to check them.
        let code = f.code.split("#[cfg(test)]").next().unwrap_or("");
        for (n, line) in code.lines().enumerate() {
            if SHAPES.iter().any(|s| line.contains(s))
                || joins_prefix(line)
                || (line.contains("prefix()") && (line.contains("format!") || line.contains("push_str")))
            {
                bad.push(format!("src/{}.rs:{}: {}", m.join("/"), n + 1, line.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "key or channel names built outside store/keys.rs:\n{}",
        bad.join("\n")
    );
}

#[test]
fn lua_functions_take_their_keys_in_keys() {
    // A key derived in Lua from another key or a literal suffix would not be declared in KEYS
    // (not cluster-safe). Task hashes (`c.tprefix .. id`) are the one documented exception.
    const SHAPES: &[&str] = &[
        ".. 'e:'",
        ".. 'h:'",
        ".. 'fence'",
        ".. 'lock:'",
        ".. 'part'",
        "string.sub(ctx.",
    ];
    let mut bad = Vec::new();
    for e in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/functions")).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        for (n, line) in text.lines().enumerate() {
            if !line.trim_start().starts_with("--") && SHAPES.iter().any(|s| line.contains(s)) {
                bad.push(format!("{}:{}: {}", p.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(bad.is_empty(), "keys built inside Lua:\n{}", bad.join("\n"));
}

#[test]
fn no_http_file_is_over_400_lines() {
    let dir = src_dir().join("http");
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let n = std::fs::read_to_string(&p).unwrap().lines().count();
        assert!(
            n <= 400,
            "{} has {n} lines (transport files stay under ~400)",
            p.display()
        );
    }
}
