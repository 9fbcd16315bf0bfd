//! The core's boundary: no file under `src/core/` names Kubernetes, HTTP, HTML or the
//! adapters around the core. The check reads the source itself: every path in code (in
//! `use` lines, nested `use` groups, fully qualified paths, `super::` chains that climb out
//! of the core, `extern crate`), after comments and string literals are blanked out.

use std::path::{Path, PathBuf};

/// Crates only adapters may use: the Kubernetes client, the HTTP stack, HTML, and the
/// outbound channels of `crate::notify`.
const FOREIGN_CRATES: &[&str] = &[
    "kube",
    "kube_runtime",
    "k8s_openapi",
    "axum",
    "hyper",
    "tower",
    "tower_layer",
    "tower_service",
    "maud",
    "lettre",
    "reqwest",
    "clap",
];

/// The crate's own modules outside the core: front ends, adapters and the assembly.
const OUTER_MODULES: &[&str] = &["k8s", "standalone", "http", "notify", "server", "config"];

/// One forbidden path found in a file.
#[derive(Debug, PartialEq, Eq)]
struct Breach {
    line: usize,
    path: String,
}

/// The source with comments, string literals and char literals replaced by spaces;
/// newlines are kept, so line numbers still match.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let blank = |out: &mut String, text: &[u8]| {
        for &c in text {
            out.push(if c == b'\n' { '\n' } else { ' ' });
        }
    };
    while i < b.len() {
        let rest = &b[i..];
        let end = if rest.starts_with(b"//") {
            i + rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len())
        } else if rest.starts_with(b"/*") {
            block_comment_end(b, i)
        } else if let Some(hashes) = raw_string_start(rest) {
            raw_string_end(b, i, hashes)
        } else if rest[0] == b'"' || rest.starts_with(b"b\"") {
            string_end(b, i + usize::from(rest[0] == b'b') + 1)
        } else if let Some(len) = char_literal_len(rest) {
            i + len
        } else {
            let c = src[i..].chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
            continue;
        };
        blank(&mut out, &b[i..end]);
        i = end;
    }
    out
}

fn block_comment_end(b: &[u8], start: usize) -> usize {
    let mut depth = 0;
    let mut i = start;
    while i < b.len() {
        if b[i..].starts_with(b"/*") {
            depth += 1;
            i += 2;
        } else if b[i..].starts_with(b"*/") {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// The number of `#` of a raw string starting here (`r"`, `r#"`, `br##"`...).
fn raw_string_start(rest: &[u8]) -> Option<usize> {
    let after_b = rest.strip_prefix(b"b").unwrap_or(rest);
    let after_r = after_b.strip_prefix(b"r")?;
    let hashes = after_r.iter().take_while(|&&c| c == b'#').count();
    (after_r.get(hashes) == Some(&b'"')).then_some(hashes)
}

fn raw_string_end(b: &[u8], start: usize, hashes: usize) -> usize {
    let open = b[start..].iter().position(|&c| c == b'"').unwrap_or(0) + start + 1;
    let mut close = vec![b'"'];
    close.extend(std::iter::repeat_n(b'#', hashes));
    (open..b.len())
        .find(|&i| b[i..].starts_with(&close))
        .map_or(b.len(), |i| i + close.len())
}

/// The end of a string whose contents start at `i`.
fn string_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// The length of a char literal starting here (`'a'`, `'\n'`, `'\u{1F600}'`, `b'x'`);
/// `None` for a lifetime or anything else.
fn char_literal_len(rest: &[u8]) -> Option<usize> {
    let skip = usize::from(rest.starts_with(b"b'"));
    let body = rest.get(skip..)?.strip_prefix(b"'")?;
    let len = if body.first() == Some(&b'\\') {
        body.iter().position(|&c| c == b'\'')?
    } else {
        let c = std::str::from_utf8(body.get(..body.len().min(4))?)
            .ok()
            .or_else(|| std::str::from_utf8(&body[..1]).ok())?
            .chars()
            .next()?;
        if body.get(c.len_utf8()) != Some(&b'\'') {
            return None;
        }
        c.len_utf8()
    };
    Some(skip + 1 + len + 1)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Other,
}

/// Identifiers, `::`, braces and commas, each with its line.
fn tokens(code: &str) -> Vec<(usize, Token)> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut chars = code.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let token = match c {
            '\n' => {
                line += 1;
                continue;
            }
            c if c.is_whitespace() => continue,
            c if c.is_alphabetic() || c == '_' => {
                let mut end = i + c.len_utf8();
                while let Some(&(j, d)) = chars.peek() {
                    if !(d.is_alphanumeric() || d == '_') {
                        break;
                    }
                    end = j + d.len_utf8();
                    chars.next();
                }
                Token::Ident(code[i..end].to_string())
            }
            ':' if chars.peek().map(|&(_, d)| d) == Some(':') => {
                chars.next();
                Token::PathSep
            }
            '{' => Token::Open,
            '}' => Token::Close,
            ',' => Token::Comma,
            _ => Token::Other,
        };
        out.push((line, token));
    }
    out
}

/// Every path in `code`, as its segments, with the line it starts on. A `use` group
/// (`a::{b, c::d}`) yields one path per leaf; `extern crate x` yields `x`.
fn paths(code: &str) -> Vec<(usize, Vec<String>)> {
    let toks = tokens(code);
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let starts_path = matches!(toks[i].1, Token::Ident(_))
            && !matches!(i.checked_sub(1).map(|p| &toks[p].1), Some(Token::PathSep));
        if toks[i].1 == Token::Ident("as".into()) {
            // `use a::b as c;`: the alias is a name, not a path.
            i += 2;
        } else if starts_path {
            i = read_path(&toks, i, Vec::new(), &mut out);
        } else {
            i += 1;
        }
    }
    out
}

/// Reads the path starting at `i` under `prefix`; returns where reading stopped.
fn read_path(
    toks: &[(usize, Token)],
    mut i: usize,
    prefix: Vec<String>,
    out: &mut Vec<(usize, Vec<String>)>,
) -> usize {
    let line = toks[i].0;
    let mut segments = prefix;
    loop {
        match &toks[i].1 {
            Token::Ident(s) => segments.push(s.clone()),
            Token::Open => return read_group(toks, i + 1, &segments, out),
            _ => break,
        }
        i += 1;
        if toks.get(i).map(|t| &t.1) != Some(&Token::PathSep) {
            break;
        }
        i += 1;
        if i >= toks.len() {
            break;
        }
    }
    out.push((line, segments));
    i
}

/// Reads `b, c::d, e::{f}}` after an opening brace; returns the index after the `}`.
fn read_group(
    toks: &[(usize, Token)],
    mut i: usize,
    prefix: &[String],
    out: &mut Vec<(usize, Vec<String>)>,
) -> usize {
    while i < toks.len() {
        match &toks[i].1 {
            Token::Close => return i + 1,
            Token::Comma | Token::Other => i += 1,
            Token::Ident(_) | Token::Open => {
                i = read_path(toks, i, prefix.to_vec(), out);
                // Skip `as alias` up to the next item.
                while i < toks.len() && !matches!(toks[i].1, Token::Comma | Token::Close) {
                    i += 1;
                }
            }
            Token::PathSep => i += 1,
        }
    }
    i
}

/// Paths in `src` (a file of module `module`, e.g. `["core", "store", "keys"]`) that
/// reach a foreign crate or a module outside the core.
fn breaches(src: &str, module: &[&str]) -> Vec<Breach> {
    let mut found = Vec::new();
    for (line, segments) in paths(&code_only(src)) {
        let first = segments[0].as_str();
        let outside = match first {
            "crate" => segments.get(1).map(String::as_str),
            "super" => {
                let ups = segments.iter().take_while(|s| *s == "super").count();
                (ups >= module.len())
                    .then(|| segments.get(ups).map(String::as_str))
                    .flatten()
            }
            _ if FOREIGN_CRATES.contains(&first) => Some(first),
            _ => None,
        };
        let forbidden =
            outside.is_some_and(|m| OUTER_MODULES.contains(&m) || FOREIGN_CRATES.contains(&m));
        if forbidden {
            found.push(Breach {
                line,
                path: segments.join("::"),
            });
        }
    }
    found
}

/// Every `.rs` file under `dir`, with its module path from the crate root.
fn rust_files(dir: &Path, module: Vec<String>, out: &mut Vec<(PathBuf, Vec<String>)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            let mut m = module.clone();
            m.push(name);
            rust_files(&path, m, out);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            let mut m = module.clone();
            if stem != "mod" {
                m.push(stem.to_string());
            }
            out.push((path, m));
        }
    }
}

#[test]
fn the_core_names_no_adapter_and_no_framework() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
    let mut files = Vec::new();
    rust_files(&root, vec!["core".into()], &mut files);
    assert!(
        files.len() > 20,
        "found only {} files under src/core",
        files.len()
    );
    let mut report = Vec::new();
    for (path, module) in &files {
        let src = std::fs::read_to_string(path).unwrap();
        let module: Vec<&str> = module.iter().map(String::as_str).collect();
        for b in breaches(&src, &module) {
            report.push(format!("{}:{}: {}", path.display(), b.line, b.path));
        }
    }
    assert!(
        report.is_empty(),
        "the core must not know these:\n{}",
        report.join("\n")
    );
}

/// Modules that may name the embedded backend (the `sled` crate and `crate::core::store`):
/// the backend itself, the services that open it, and the migration that reads it out.
/// Everything else, the storage port, the monitor engine and the alert outbox included,
/// reaches storage through the port's traits.
const BACKEND_MODULES: &[&[&str]] = &[
    &["core", "store"],
    &["core", "services"],
    &["core", "migrate"],
];

/// The absolute module path `segments` names from a file of module `module`, or `None`
/// for a path that does not start at the crate (a local name, `std`, `self::`...); a
/// foreign crate's path is returned as it stands.
fn absolute(segments: &[String], module: &[&str]) -> Option<Vec<String>> {
    match segments[0].as_str() {
        "crate" => Some(segments[1..].to_vec()),
        "super" => {
            let ups = segments.iter().take_while(|s| *s == "super").count();
            let base = module.len().checked_sub(ups)?;
            let mut path: Vec<String> = module[..base].iter().map(|s| s.to_string()).collect();
            path.extend(segments[ups..].iter().cloned());
            Some(path)
        }
        "sled" => Some(segments.to_vec()),
        _ => None,
    }
}

/// Paths in `src` (a file of module `module`) that name the embedded backend.
fn backend_breaches(src: &str, module: &[&str]) -> Vec<Breach> {
    let mut found = Vec::new();
    for (line, segments) in paths(&code_only(src)) {
        let Some(path) = absolute(&segments, module) else {
            continue;
        };
        let backend = path.first().is_some_and(|s| s == "sled")
            || (path.len() >= 2 && path[0] == "core" && path[1] == "store");
        if backend {
            found.push(Breach {
                line,
                path: segments.join("::"),
            });
        }
    }
    found
}

#[test]
fn only_the_backend_and_the_modules_it_lists_name_sled() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, Vec::new(), &mut files);
    let mut report = Vec::new();
    let mut port_files = 0;
    for (path, module) in &files {
        let module: Vec<&str> = module.iter().map(String::as_str).collect();
        port_files += usize::from(module.starts_with(&["core", "storage"]));
        if BACKEND_MODULES.iter().any(|m| module.starts_with(m)) {
            continue;
        }
        let src = std::fs::read_to_string(path).unwrap();
        for b in backend_breaches(&src, &module) {
            report.push(format!("{}:{}: {}", path.display(), b.line, b.path));
        }
    }
    assert!(port_files >= 5, "the storage port has {port_files} files");
    assert!(
        report.is_empty(),
        "outside the backend, storage goes through crate::core::storage:\n{}",
        report.join("\n")
    );
}

#[test]
fn the_backend_check_resolves_paths_from_where_they_stand() {
    let src = r#"
use crate::core::storage::EventStore;
use crate::core::store::Store;
use super::store::keys;
use super::super::store::{port, wal::Mutation};
use sled::Tree;
fn f() -> sled::Result<()> { Ok(()) }
/// sled, in a comment, is no path.
use std::collections::HashMap;
"#;
    let found: Vec<(usize, String)> = backend_breaches(src, &["core", "storage", "events"])
        .into_iter()
        .map(|b| (b.line, b.path))
        .collect();
    assert_eq!(
        found,
        vec![
            (3, "crate::core::store::Store".to_string()),
            (5, "super::super::store::port".into()),
            (5, "super::super::store::wal::Mutation".into()),
            (6, "sled::Tree".into()),
            (7, "sled::Result".into()),
        ]
    );
    // From `core::services`, one `super` climbs to the core.
    let found = backend_breaches("use super::store::Store;", &["core", "services"]);
    assert_eq!(found.len(), 1);
}

#[test]
fn the_check_catches_every_way_of_naming_a_forbidden_path() {
    let module = ["core", "store", "keys"];
    let src = r#"
use std::collections::HashMap;
use axum::Router;
use crate::core::store::Store;
use crate::{core::token, http::ApiError};
use kube;
use k8s_openapi::{api::core::v1::Secret as S};
fn f() {
    use crate::standalone::tokens;
    let _ = crate::notify::Notifier::new(None, "a@b.c");
    let _: hyper::StatusCode;
    maud::html! { p { "hi" } }
}
type T = super::super::super::server::Server;
type U = super::super::keys::Family;
extern crate lettre;
"#;
    let found: Vec<(usize, String)> = breaches(src, &module)
        .into_iter()
        .map(|b| (b.line, b.path))
        .collect();
    assert_eq!(
        found,
        vec![
            (3, "axum::Router".to_string()),
            (5, "crate::http::ApiError".into()),
            (6, "kube".into()),
            (7, "k8s_openapi::api::core::v1::Secret".into()),
            (9, "crate::standalone::tokens".into()),
            (10, "crate::notify::Notifier::new".into()),
            (11, "hyper::StatusCode".into()),
            (12, "maud::html".into()),
            (14, "super::super::super::server::Server".into()),
            (16, "lettre".into()),
        ]
    );
}

#[test]
fn comments_and_strings_are_not_code() {
    let src = r##"
//! Knows nothing of `crate::http` or axum::Router.
/* kube::Api in a /* nested */ comment */
const A: &str = "crate::k8s::run";
const B: &str = r#"axum::Router "quoted""#;
const C: char = '"';
fn f<'a>(x: &'a str) -> &'a str { x } // hyper::Body
"##;
    assert_eq!(breaches(src, &["core"]), Vec::new());
}
