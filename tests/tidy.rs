//! Tidy: the architecture rules of ARCHITECTURE.md checked against the source text. Which module
//! may import which crate (the `## Crate owners` table), a `//!` header on every file, a `state/`
//! crate without I/O, clock or randomness, a length limit on `src/` files, no leftover `todo!`,
//! `dbg!` or `#[ignore]`. Files are found by walking the directories, so moving code between files
//! needs no change here. Std only: the source is read as text, with comments and string literals
//! blanked out first (`code_only`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Rule 1: every `[dependencies]` crate of the root Cargo.toml has a row in ARCHITECTURE.md's
/// `## Crate owners` table, and only the modules named there use it. tests/, benches/ and unit-test
/// code in src/ (`#[cfg(test)]` items) are exempt.
#[test]
fn crate_owners() {
    let root = root();
    let deps = dependency_names(&read(&root.join("Cargo.toml")));
    let owners = owners_table(&read(&root.join("ARCHITECTURE.md")))
        .unwrap_or_else(|e| panic!("ARCHITECTURE.md: {e}"));
    let mut problems = Vec::new();
    for dep in &deps {
        if !owners.contains_key(dep) {
            problems.push(format!(
                "Cargo.toml: dependency `{dep}` has no row in ARCHITECTURE.md's `## Crate owners` \
                 table: add `| {dep} | <module>, ... |` naming the modules that may use it"
            ));
        }
    }
    for (krate, modules) in &owners {
        if !deps.contains(krate) {
            problems.push(format!(
                "ARCHITECTURE.md: the `## Crate owners` table has a row for `{krate}`, which \
                 is not in Cargo.toml's [dependencies]: remove the row"
            ));
        }
        for module in modules.iter().filter(|m| *m != ANY) {
            if !module_exists(&root.join("src"), module) {
                problems.push(format!(
                    "ARCHITECTURE.md: the `## Crate owners` row for `{krate}` names module \
                     `{module}`, which is neither src/{p}.rs nor src/{p}/: fix the row",
                    p = module.replace("::", "/"),
                ));
            }
        }
    }
    for file in rust_files(&root, "src") {
        let module = module_path(file.rel.strip_prefix("src").unwrap());
        let code = without_test_code(&code_only(&file.text));
        for (krate, line) in crate_uses(&code, &deps) {
            let Some(allowed) = owners.get(&krate) else {
                continue; // reported above
            };
            if !module_allowed(&module, allowed) {
                problems.push(format!(
                    "{}:{line}: module `{module}` uses `{krate}`, which ARCHITECTURE.md's \
                     `## Crate owners` table gives to {} only: move this code into one of those \
                     modules (or call them), or add `{module}` to the `{krate}` row and say why",
                    file.display(),
                    allowed
                        .iter()
                        .map(|m| format!("`{m}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                ));
            }
        }
    }
    report("crate owners", problems);
}

/// Rule 2: every Rust file starts (after blank lines) with a `//!` line saying what it is for.
#[test]
fn doc_headers() {
    let root = root();
    let mut problems = Vec::new();
    for file in CHECKED_DIRS.iter().flat_map(|d| rust_files(&root, d)) {
        let first = file.text.lines().find(|l| !l.trim().is_empty());
        let ok = first.is_some_and(|l| {
            l.trim_start()
                .strip_prefix("//!")
                .is_some_and(|rest| !rest.trim().is_empty())
        });
        if !ok {
            problems.push(format!(
                "{}:1: no `//!` header: start the file with a `//!` line saying what it is for",
                file.display()
            ));
        }
    }
    report("doc headers", problems);
}

/// What `state/` may depend on: plain data (serde, serde_json) and date arithmetic (time). The
/// crate decides, the service does the I/O: a crate that touches files, sockets, the clock or a
/// random source does not belong here (`now` and the jitter are arguments).
const STATE_ALLOWED_DEPENDENCIES: &[&str] = &["serde", "serde_json", "time"];

/// Names that mean I/O, a clock or randomness; no file under state/src/ mentions them outside
/// comments and strings. `now_utc` / `now_local` are the `time` crate's clock reads.
const STATE_FORBIDDEN: &[&str] = &[
    "std::fs",
    "std::net",
    "std::process",
    "std::env",
    "std::thread",
    "SystemTime",
    "Instant::now",
    "tokio",
    "rand::",
    "File::",
    "now_utc",
    "now_local",
];

/// Rule 3: `state/` imports no I/O, clock or randomness.
#[test]
fn state_is_pure() {
    let root = root();
    let mut problems = Vec::new();
    for dep in dependency_names(&read(&root.join("state/Cargo.toml"))) {
        if !STATE_ALLOWED_DEPENDENCIES.contains(&dep.as_str()) {
            problems.push(format!(
                "state/Cargo.toml: dependency `{dep}` is not one of \
                 {STATE_ALLOWED_DEPENDENCIES:?}: state/ is pure data and decisions; do the I/O \
                 in src/ and pass the result in"
            ));
        }
    }
    for file in rust_files(&root, "state/src") {
        let code = code_only(&file.text);
        for (n, line) in code.lines().enumerate() {
            for word in STATE_FORBIDDEN {
                if find_word(line, word).is_some() {
                    problems.push(format!(
                        "{}:{}: `{word}` in state/: the core does no I/O, reads no clock and \
                         draws no random numbers; take the value as an argument and do the work \
                         in src/",
                        file.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    report("state is pure", problems);
}

/// Rule 4's limit on the lines of a src/ file (all lines counted).
const MAX_LINES: usize = 500;
/// The marker a long file's `//!` header carries, followed by the reason it stays whole.
const LONG_FILE_MARKER: &str = "Long file:";

/// Rule 4: no src/ file above `MAX_LINES` lines unless its header says why.
#[test]
fn file_length() {
    let root = root();
    let mut problems = Vec::new();
    for file in rust_files(&root, "src") {
        let lines = file.text.lines().count();
        if lines > MAX_LINES && !has_long_file_reason(&file.text) {
            problems.push(format!(
                "{}: {lines} lines (limit {MAX_LINES}): split it (a folder module, \
                 src/{}/*.rs), or say why it stays whole with a `//! {LONG_FILE_MARKER} <reason>` \
                 line in its header",
                file.display(),
                module_path(file.rel.strip_prefix("src").unwrap()).replace("::", "/"),
            ));
        }
    }
    report("file length", problems);
}

/// Rule 5: nothing left over from debugging or unfinished work.
#[test]
fn no_leftovers() {
    let root = root();
    let mut problems = Vec::new();
    for file in CHECKED_DIRS.iter().flat_map(|d| rust_files(&root, d)) {
        for (n, line) in code_only(&file.text).lines().enumerate() {
            for (word, what) in LEFTOVERS {
                if find_word(line, word).is_some() {
                    problems.push(format!("{}:{}: `{word}`: {what}", file.display(), n + 1));
                }
            }
        }
    }
    report("no leftovers", problems);
}

const LEFTOVERS: &[(&str, &str)] = &[
    ("todo!", "finish the code or return an error"),
    ("unimplemented!", "finish the code or return an error"),
    ("dbg!", "remove it (use tracing for lasting output)"),
    (
        "#[ignore",
        "make the test pass or delete it; a skipped test hides what it was for",
    ),
];

/// The directories whose files rules 2 and 5 check (rule 1 and 4: src/ only; rule 3: state/src/).
const CHECKED_DIRS: &[&str] = &["src", "state/src", "tests", "benches"];

/// The `## Crate owners` value for crates every module may use.
const ANY: &str = "any";

// ---------------------------------------------------------------------------------------------
// Files

struct SourceFile {
    /// Relative to the workspace root.
    rel: PathBuf,
    text: String,
}

impl SourceFile {
    fn display(&self) -> String {
        self.rel.to_string_lossy().replace('\\', "/")
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `.rs` file under `root/dir`, at any depth, sorted by path.
fn rust_files(root: &Path, dir: &str) -> Vec<SourceFile> {
    let mut out = Vec::new();
    let mut stack = vec![root.join(dir)];
    while let Some(dir) = stack.pop() {
        let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = read(&path);
                let rel = path.strip_prefix(root).unwrap().to_path_buf();
                out.push(SourceFile { rel, text });
            }
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    assert!(!out.is_empty(), "no .rs file under {dir}/");
    out
}

/// The module path of a file given relative to src/: `store.rs` and `store/mod.rs` are `store`,
/// `store/records.rs` is `store::records`; `main.rs` is `main`, `lib.rs` is `lib`.
fn module_path(rel: &Path) -> String {
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.last_mut() {
        if let Some(stem) = last.strip_suffix(".rs") {
            *last = stem.to_string();
        }
    }
    if parts.len() > 1 && parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    parts.join("::")
}

fn module_exists(src: &Path, module: &str) -> bool {
    let p = module.replace("::", "/");
    src.join(format!("{p}.rs")).is_file() || src.join(&p).is_dir()
}

/// Whether `module` is one of `allowed` or inside one of them (`store` covers `store::records`).
fn module_allowed(module: &str, allowed: &[String]) -> bool {
    allowed.iter().any(|a| {
        a == ANY
            || module == a
            || module
                .strip_prefix(a.as_str())
                .is_some_and(|rest| rest.starts_with("::"))
    })
}

fn report(check: &str, problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "tidy ({check}): {} problem(s)\n  {}\n",
        problems.len(),
        problems.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------------
// Cargo.toml and ARCHITECTURE.md

/// The crate names (Rust spelling, `-` → `_`) of a Cargo.toml's `[dependencies]`, including
/// `[dependencies.NAME]` tables and `[target.'…'.dependencies]`; not dev- or build-dependencies.
fn dependency_names(toml: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut in_deps = false;
    for line in toml.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            let header = line.trim_matches(|c| c == '[' || c == ']').trim();
            // `target.'cfg(unix)'.dependencies`, `target.x86_64-….dependencies`: drop the target.
            let header = header.strip_prefix("target.").map_or(header, |rest| {
                let spec_end = match rest.chars().next() {
                    Some(q @ ('\'' | '"')) => rest[1..].find(q).map_or(rest.len(), |k| k + 2),
                    _ => rest.find('.').unwrap_or(rest.len()),
                };
                rest[spec_end..].trim_start_matches('.')
            });
            in_deps = header == "dependencies";
            if let Some(name) = header.strip_prefix("dependencies.") {
                out.insert(rust_name(name));
            }
            continue;
        }
        if in_deps {
            if let Some((key, _)) = line.split_once('=') {
                let key = key.split('.').next().unwrap();
                out.insert(rust_name(key));
            }
        }
    }
    out
}

fn rust_name(key: &str) -> String {
    key.trim()
        .trim_matches('"')
        .trim_matches('\'')
        .replace('-', "_")
}

/// The `## Crate owners` table of ARCHITECTURE.md: crate → modules allowed to use it.
fn owners_table(md: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut lines = md.lines().skip_while(|l| l.trim() != "## Crate owners");
    if lines.next().is_none() {
        return Err("no `## Crate owners` section (a `| crate | modules |` table)".into());
    }
    let mut table = BTreeMap::new();
    let mut header_seen = false;
    for line in lines.take_while(|l| !l.starts_with("# ") && !l.starts_with("## ")) {
        let line = line.trim();
        if !line.starts_with('|') {
            continue;
        }
        let cells: Vec<String> = line
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().replace('`', ""))
            .collect();
        if cells.iter().all(|c| c.chars().all(|ch| "-: ".contains(ch))) {
            continue; // the |---|---| row
        }
        if !header_seen {
            if cells != ["crate", "modules"] {
                return Err(format!(
                    "the `## Crate owners` table must start with `| crate | modules |`, not {line}"
                ));
            }
            header_seen = true;
            continue;
        }
        let [krate, modules] = &cells[..] else {
            return Err(format!("`## Crate owners` row {line}: want two cells"));
        };
        let modules: Vec<String> = modules
            .split(',')
            .map(|m| m.trim().to_string())
            .filter(|m| !m.is_empty())
            .collect();
        if modules.is_empty() {
            return Err(format!(
                "`## Crate owners` row for `{krate}` names no module"
            ));
        }
        if table.insert(krate.replace('-', "_"), modules).is_some() {
            return Err(format!("`## Crate owners` has two rows for `{krate}`"));
        }
    }
    if table.is_empty() {
        return Err("the `## Crate owners` section has no table rows".into());
    }
    Ok(table)
}

// ---------------------------------------------------------------------------------------------
// Source text

/// The code of a Rust file with every comment (doc comments included), string, byte string, raw
/// string and char literal replaced by spaces; newlines are kept, so line numbers still match.
fn code_only(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < c.len() {
        let end = if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            c[i..]
                .iter()
                .position(|&ch| ch == '\n')
                .map_or(c.len(), |n| i + n)
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            block_comment_end(&c, i)
        } else if let Some(end) = string_end(&c, i) {
            end
        } else if let Some(end) = char_literal_end(&c, i) {
            end
        } else {
            out.push(c[i]);
            i += 1;
            continue;
        };
        for &ch in &c[i..end] {
            out.push(if ch == '\n' { '\n' } else { ' ' });
        }
        i = end;
    }
    out
}

/// The end of a (nested) `/* */` comment starting at `i`.
fn block_comment_end(c: &[char], mut i: usize) -> usize {
    let mut depth = 0;
    while i < c.len() {
        if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            depth += 1;
            i += 2;
        } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    c.len()
}

/// The end of a string literal starting at `i` (`"…"`, `b"…"`, `c"…"`, `r#"…"#`, `br"…"`), if
/// one starts there.
fn string_end(c: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if c[j] != '"' {
        if i > 0 && is_ident_char(c[i - 1]) {
            return None; // inside an identifier
        }
        if c[j] == 'b' || c[j] == 'c' {
            j += 1;
        }
    }
    let raw = c.get(j) == Some(&'r');
    if raw {
        j += 1;
    }
    let hashes = c[j.min(c.len())..]
        .iter()
        .take_while(|&&ch| ch == '#')
        .count();
    j += hashes;
    if c.get(j) != Some(&'"') || (hashes > 0 && !raw) {
        return None;
    }
    j += 1;
    while j < c.len() {
        match c[j] {
            '\\' if !raw => j += 2,
            '"' if c[j + 1..].iter().take_while(|&&ch| ch == '#').count() >= hashes => {
                return Some(j + 1 + hashes);
            }
            _ => j += 1,
        }
    }
    Some(c.len())
}

/// The end of a char literal (`'x'`, `'\n'`, `'\u{1F600}'`) starting at `i`; a lifetime or label
/// (`'a`, `'outer:`) is not one.
fn char_literal_end(c: &[char], i: usize) -> Option<usize> {
    if c[i] != '\'' {
        return None;
    }
    match (c.get(i + 1), c.get(i + 2)) {
        (Some('\\'), _) => {
            let from = (i + 3).min(c.len());
            let close = c[from..].iter().position(|&ch| ch == '\'')?;
            Some(from + close + 1)
        }
        (Some(_), Some('\'')) => Some(i + 3),
        _ => None,
    }
}

/// `code` (already `code_only`) with every `#[cfg(test)]` item blanked (newlines kept): a
/// unit-test module may use test helpers (e.g. rcgen to build a chain) without that being part of
/// what its module does. Works on bytes: everything looked at is ASCII, and a blanked range starts
/// and ends on ASCII, so the result is still UTF-8.
fn without_test_code(code: &str) -> String {
    const ATTR: &[u8] = b"#[cfg(test)]";
    let mut out = code.as_bytes().to_vec();
    let mut from = 0;
    while let Some(k) = out[from..].windows(ATTR.len()).position(|w| w == ATTR) {
        let start = from + k;
        let mut depth = 0i32;
        let mut end = out.len();
        for i in start + ATTR.len()..out.len() {
            match out[i] {
                b'(' | b'[' => depth += 1,
                b')' | b']' => depth -= 1,
                b';' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                b'{' if depth == 0 => {
                    end = matching_brace(&out, i);
                    break;
                }
                // The end of the enclosing block: the attribute was on its last item.
                b'}' => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        for b in &mut out[start..end] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
        from = end;
    }
    String::from_utf8(out).expect("blanked ranges start and end on ASCII")
}

/// The index just past the `}` matching the `{` at `open`.
fn matching_brace(c: &[u8], open: usize) -> usize {
    let mut depth = 0;
    for (i, &b) in c.iter().enumerate().skip(open) {
        match b {
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
    c.len()
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The byte offset in `line` of `word` standing alone: not preceded by an identifier character,
/// and, when `word` ends in one, not followed by one (`tokio` matches `tokio::spawn`, not
/// `tokio_util`; `File::` matches `File::open`, not `TempFile::new`).
fn find_word(line: &str, word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = line[from..].find(word).map(|n| from + n) {
        let before = line[..at].chars().next_back();
        let after = line[at + word.len()..].chars().next();
        let starts = !word.starts_with(is_ident_char) || !before.is_some_and(is_ident_char);
        let ends = !word.ends_with(is_ident_char) || !after.is_some_and(is_ident_char);
        if starts && ends {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// The crates of `deps` that `code` (already `code_only`) uses, each with the line of its first
/// use: a `use` declaration rooted at the crate (grouped trees included), `extern crate`, or a
/// path `krate::…` that does not continue another path (`std::time::…` is not `time`) and whose
/// first segment is not a name a `use` of something else brought in (`use tokio::time;` makes
/// `time::sleep` tokio's).
fn crate_uses(code: &str, deps: &BTreeSet<String>) -> BTreeMap<String, usize> {
    let mut found: BTreeMap<String, usize> = BTreeMap::new();
    let mut note = |krate: &str, line: usize| {
        if deps.contains(krate) {
            let first = found.entry(krate.to_string()).or_insert(line);
            *first = (*first).min(line);
        }
    };
    let (rest, uses) = split_uses(code);
    let mut shadowed = BTreeSet::new();
    for u in &uses {
        if let Some(root) = u.path.first() {
            note(root, u.line);
            if let Some(bound) = &u.bound {
                if bound != root {
                    shadowed.insert(bound.clone());
                }
            }
        }
    }
    for (n, line) in rest.lines().enumerate() {
        let mut from = 0;
        while let Some(at) = line[from..].find("::").map(|k| from + k) {
            from = at + 2;
            let head = &line[..at];
            let name_start = head
                .char_indices()
                .rev()
                .take_while(|&(_, ch)| is_ident_char(ch))
                .last()
                .map_or(at, |(k, _)| k);
            let name = &head[name_start..];
            let continues_path = head[..name_start].trim_end().ends_with("::")
                && head[..name_start]
                    .trim_end()
                    .trim_end_matches("::")
                    .ends_with(|ch: char| is_ident_char(ch) || ch == '>');
            if !name.is_empty() && !continues_path && !shadowed.contains(name) {
                note(name, n + 1);
            }
        }
    }
    found
}

/// One path a `use` declaration (or `extern crate`) brings in.
#[derive(Debug, PartialEq)]
struct UsePath {
    /// Segments from the root, e.g. `["tokio", "sync", "mpsc"]`.
    path: Vec<String>,
    /// The name it binds (`mpsc`, or the `as` alias); `None` for a glob.
    bound: Option<String>,
    line: usize,
}

/// Splits `code` (already `code_only`) into the code without its `use` / `extern crate`
/// declarations (blanked, newlines kept) and the paths those declarations bring in.
fn split_uses(code: &str) -> (String, Vec<UsePath>) {
    let mut rest = code.to_string();
    let mut uses = Vec::new();
    let mut from = 0;
    loop {
        let next_use = find_word(&code[from..], "use").map(|k| (k, "use"));
        let next_extern = find_word(&code[from..], "extern").map(|k| (k, "extern"));
        let Some((k, kw)) = [next_use, next_extern].into_iter().flatten().min() else {
            break;
        };
        let at = from + k;
        let body_start = at + kw.len();
        let Some(len) = code[body_start..].find(';') else {
            break;
        };
        let body = &code[body_start..body_start + len];
        from = body_start;
        // `impl Trait + use<'a>` is not a declaration; `extern "C"` / `extern fn` are not crates.
        let body = match kw {
            "use" if body.trim_start().starts_with('<') => continue,
            "use" => body.to_string(),
            _ => match body.trim_start().strip_prefix("crate") {
                Some(b) if b.starts_with(char::is_whitespace) => b.to_string(),
                _ => continue,
            },
        };
        let line = code[..at].matches('\n').count() + 1;
        let tokens = use_tokens(&body);
        let mut pos = 0;
        use_tree(&tokens, &mut pos, &[], line, &mut uses);
        let end = body_start + len + 1;
        rest.replace_range(
            at..end,
            &code[at..end]
                .chars()
                .map(|ch| match ch {
                    '\n' => "\n".to_string(),
                    _ => " ".repeat(ch.len_utf8()),
                })
                .collect::<String>(),
        );
        from = end;
    }
    (rest, uses)
}

fn use_tokens(body: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let c: Vec<char> = body.chars().collect();
    let mut i = 0;
    while i < c.len() {
        if is_ident_char(c[i]) {
            let start = i;
            while i < c.len() && is_ident_char(c[i]) {
                i += 1;
            }
            tokens.push(c[start..i].iter().collect());
        } else if c[i] == ':' && c.get(i + 1) == Some(&':') {
            tokens.push("::".into());
            i += 2;
        } else if "{},*".contains(c[i]) {
            tokens.push(c[i].to_string());
            i += 1;
        } else {
            i += 1;
        }
    }
    tokens
}

/// Parses one use tree at `tokens[*pos]` (`a::b`, `a::b as c`, `a::{…}`, `{…}`, `a::*`).
fn use_tree(
    tokens: &[String],
    pos: &mut usize,
    prefix: &[String],
    line: usize,
    out: &mut Vec<UsePath>,
) {
    let mut path = prefix.to_vec();
    while let Some(t) = tokens.get(*pos) {
        match t.as_str() {
            "::" => *pos += 1,
            "*" => {
                *pos += 1;
                out.push(UsePath {
                    path,
                    bound: None,
                    line,
                });
                return;
            }
            "{" => {
                *pos += 1;
                while tokens.get(*pos).is_some_and(|t| t != "}") {
                    use_tree(tokens, pos, &path, line, out);
                    if tokens.get(*pos).is_some_and(|t| t == ",") {
                        *pos += 1;
                    }
                }
                *pos += 1;
                return;
            }
            "}" | "," => break,
            "as" => {
                let alias = tokens.get(*pos + 1).cloned();
                *pos += 2;
                out.push(UsePath {
                    path,
                    bound: alias,
                    line,
                });
                return;
            }
            _ => {
                path.push(t.clone());
                *pos += 1;
            }
        }
    }
    if path.len() > prefix.len() {
        let bound = match path.last().map(String::as_str) {
            Some("self") => path.len().checked_sub(2).map(|k| path[k].clone()),
            other => other.map(str::to_string),
        };
        out.push(UsePath { path, bound, line });
    }
}

/// Whether a file's `//!` header has a `Long file: <reason>` line.
fn has_long_file_reason(text: &str) -> bool {
    text.lines()
        .skip_while(|l| l.trim().is_empty())
        .map_while(|l| l.trim_start().strip_prefix("//!"))
        .any(|l| {
            l.split_once(LONG_FILE_MARKER)
                .is_some_and(|(_, reason)| !reason.trim().is_empty())
        })
}

// ---------------------------------------------------------------------------------------------
// Tests of the helpers

mod helpers {
    use super::*;

    fn deps(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn uses(code: &str, names: &[&str]) -> Vec<(String, usize)> {
        crate_uses(&code_only(code), &deps(names))
            .into_iter()
            .collect()
    }

    #[test]
    fn comments_and_strings_are_blanked_lines_kept() {
        let src = "let a = 1; // sled::open\n/* tokio /* nested */ still */ b\n/// doc sled::x\nc";
        let out = code_only(src);
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        assert_eq!(lines, ["let a = 1;", "b", "", "c"]);
        assert_eq!(out.chars().count(), src.chars().count());
        let src = r####"x("sled::a \" sled::b"); y(r#"tokio::" "#); z(b"rand::"); w"####;
        let out = code_only(src);
        assert!(!out.contains("sled") && !out.contains("tokio") && !out.contains("rand"));
        assert!(out.starts_with("x(") && out.ends_with("w"));
        assert_eq!(out.chars().count(), src.chars().count());
    }

    #[test]
    fn char_literals_and_lifetimes() {
        assert_eq!(code_only("'\"' sled::x"), "    sled::x");
        assert_eq!(code_only("'\\'' sled::x"), "     sled::x");
        assert_eq!(
            code_only("fn f<'a>(s: &'a str) {}"),
            "fn f<'a>(s: &'a str) {}"
        );
        assert_eq!(
            code_only("'l: loop { break 'l; }"),
            "'l: loop { break 'l; }"
        );
        // A quote in a string after a lifetime is still a string.
        assert_eq!(code_only("&'a \"'\""), "&'a    ");
    }

    #[test]
    fn identifiers_ending_in_r_or_b_are_not_string_prefixes() {
        assert_eq!(code_only("for\"x\""), "for   ");
        assert_eq!(code_only("r#type b'x'"), "r#type b   ");
    }

    #[test]
    fn paths_and_use_declarations() {
        let code = "use sled::Db;\nfn f() { tokio::spawn(x); }\n";
        assert_eq!(
            uses(code, &["sled", "tokio"]),
            [("sled".into(), 1), ("tokio".into(), 2)]
        );
        // Continuations of other paths are not the crate.
        assert_eq!(
            uses("std::time::Duration; crate::rand::x()", &["time", "rand"]),
            []
        );
        assert_eq!(uses("use std::time;", &["time"]), []);
        // A leading `::` is still the crate.
        assert_eq!(uses("::time::Date", &["time"]), [("time".into(), 1)]);
        // Grouped trees: the root counts, inner segments do not.
        assert_eq!(
            uses(
                "use tokio::{time::sleep, sync};\nuse {sled::Db, x};",
                &["time", "sled"]
            ),
            [("sled".into(), 2)]
        );
        // A name brought in by a `use` of something else is not the crate.
        assert_eq!(uses("use tokio::time;\ntime::sleep(d)", &["time"]), []);
        // Word boundaries: hyper is not hyper_util.
        assert_eq!(uses("use hyper_util::rt;\nhyper_util::x()", &["hyper"]), []);
        assert_eq!(uses("extern crate libc;", &["libc"]), [("libc".into(), 1)]);
        assert_eq!(uses("use rand as r;", &["rand"]), [("rand".into(), 1)]);
        assert_eq!(
            uses("#[derive(serde::Serialize)]", &["serde"]),
            [("serde".into(), 1)]
        );
        // Not a crate: a mention in a comment or a string, `use<'a>` bounds.
        assert_eq!(uses("// sled::open\nlet s = \"sled::x\";", &["sled"]), []);
        assert_eq!(
            uses("fn f() -> impl Sized + use<'a> { sled::x }", &["sled"]),
            [("sled".into(), 1)]
        );
    }

    #[test]
    fn use_trees() {
        let (rest, found) = split_uses("pub use a::{b::{c, d as e}, f::self, g::*};\nx");
        assert_eq!(rest.split_whitespace().collect::<Vec<_>>(), ["pub", "x"]);
        let got: Vec<_> = found
            .iter()
            .map(|u| (u.path.join("::"), u.bound.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("a::b::c".to_string(), Some("c".to_string())),
                ("a::b::d".into(), Some("e".into())),
                ("a::f::self".into(), Some("f".into())),
                ("a::g".into(), None),
            ]
        );
    }

    #[test]
    fn test_code_is_left_out() {
        let code = "use x;\n#[cfg(test)]\nmod tests {\n    fn f() { rcgen::x(); }\n}\nrcgen::y";
        let out = without_test_code(code);
        assert_eq!(out.lines().count(), code.lines().count());
        assert_eq!(uses(&out, &["rcgen"]), [("rcgen".into(), 6)]);
        let code = "#[cfg(test)]\nuse rcgen::KeyPair;\nfn g() -> [u8; 2] {}";
        assert_eq!(uses(&without_test_code(code), &["rcgen"]), []);
        assert!(without_test_code(code).contains("fn g() -> [u8; 2] {}"));
    }

    #[test]
    fn words() {
        assert!(find_word("use tokio::spawn;", "tokio").is_some());
        assert!(find_word("use tokio_util::x;", "tokio").is_none());
        assert!(find_word("strand::x", "rand::").is_none());
        assert!(find_word("TempFile::new()", "File::").is_none());
        assert!(find_word("std::fs::File::open(p)", "File::").is_some());
        assert!(find_word("std::fsx", "std::fs").is_none());
        assert!(find_word("    #[ignore = \"slow\"]", "#[ignore").is_some());
        assert!(find_word("my_dbg!(x)", "dbg!").is_none());
        assert!(find_word("dbg!(x)", "dbg!").is_some());
    }

    #[test]
    fn dependencies_of_a_manifest() {
        let toml = "[package]\nname = \"x\"\n\n[dependencies]\nserde-json = \"1\"\n\
                    tokio = { version = \"1\", features = [\n  \"rt\",\n] }\nfoo.workspace = true\n\
                    # bar = \"1\"\n\n[dependencies.baz-qux]\nversion = \"1\"\n\
                    [target.'cfg(unix)'.dependencies]\nlibc = \"0.2\"\n\
                    [target.'cfg(unix)'.dev-dependencies]\nnix = \"0.2\"\n\
                    [dev-dependencies]\ntempfile = \"3\"\n[build-dependencies]\ncc = \"1\"\n";
        assert_eq!(
            dependency_names(toml),
            deps(&["baz_qux", "foo", "libc", "serde_json", "tokio"])
        );
    }

    #[test]
    fn owners_table_parsing() {
        let md = "# A\n## Crate owners\n\ntext\n\n| crate | modules |\n|---|---|\n\
                  | `sled` | `store` |\n| hyper-util | admin, acme::http |\n| tokio | any |\n\
                  ## Next\n| x | y |\n";
        let t = owners_table(md).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t["sled"], ["store"]);
        assert_eq!(t["hyper_util"], ["admin", "acme::http"]);
        assert!(owners_table("## Crate owners\n| crate | modules |\n| a | |\n").is_err());
        assert!(owners_table("## Other\n").is_err());
    }

    #[test]
    fn modules() {
        assert_eq!(module_path(Path::new("store.rs")), "store");
        assert_eq!(module_path(Path::new("store/mod.rs")), "store");
        assert_eq!(module_path(Path::new("store/records.rs")), "store::records");
        assert_eq!(module_path(Path::new("main.rs")), "main");
        let allowed = ["store".to_string(), "acme::http".to_string()];
        assert!(module_allowed("store", &allowed));
        assert!(module_allowed("store::records", &allowed));
        assert!(module_allowed("acme::http::retry", &allowed));
        assert!(!module_allowed("acme", &allowed));
        assert!(!module_allowed("storex", &allowed));
        assert!(module_allowed("anything", &["any".to_string()]));
    }

    #[test]
    fn long_file_marker() {
        assert!(has_long_file_reason(
            "\n//! The store.\n//! Long file: one transaction API.\nuse x;"
        ));
        assert!(!has_long_file_reason("//! The store.\n//! Long file:\n"));
        assert!(!has_long_file_reason("//! The store.\n\n// Long file: x\n"));
    }
}
