//! The host's rooms stay layered: each top-level module of `host/src` uses only modules below it
//! in [`LAYERS`], so there are no import circles and no lower room reaches up into the request
//! path or an edge. Read from the source (code, not comments or tests), so a new `use` that
//! breaks the order fails here with the line that does it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The rooms, lowest first. A room may use any room before it and none after it.
const LAYERS: &[&str] = &[
    // What the host holds for a guest, and its bounds.
    "boundary",
    // Where model files come from.
    "models",
    // The wasi-nn backend over ONNX Runtime.
    "nn",
    // The guest runtime.
    "guest",
    // Models loaded once, by name.
    "model_cache",
    // The request and response, and every error as the API reports it.
    "api",
    // Logs and metrics.
    "telemetry",
    // A candidate guest beside the serving one.
    "rollout",
    // Every setting, read once.
    "config",
    // The request path.
    "service",
    // The composition root.
    "bootstrap",
    // The edges.
    "eval",
    "server",
    "lambda",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The code of a file: its unit tests (from `#[cfg(test)]` on) and every comment left out.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines().map(|line| line.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// The top-level modules `code` names through `crate::`, each with the line it is first named on.
fn uses(code: &str) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    for (number, line) in code.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                // `crate::{a, b::c}`: the first name of each entry at the group's own depth.
                Some(group) => {
                    let (mut depth, mut entries, mut start) = (0, Vec::new(), 0);
                    for (i, c) in group.char_indices() {
                        match c {
                            '{' => depth += 1,
                            '}' if depth == 0 => {
                                entries.push(&group[start..i]);
                                break;
                            }
                            '}' => depth -= 1,
                            ',' if depth == 0 => {
                                entries.push(&group[start..i]);
                                start = i + 1;
                            }
                            _ => {}
                        }
                    }
                    entries
                }
                None => vec![rest],
            };
            for name in names {
                let name: String = name.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    found.push((name, number + 1));
                }
            }
        }
    }
    found
}

#[test]
fn every_room_uses_only_the_rooms_below_it() {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let rank: BTreeMap<&str, usize> = LAYERS.iter().enumerate().map(|(i, name)| (*name, i)).collect();
    let mut rooms_seen = BTreeMap::new();
    let mut wrong = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&root).expect("under src");
        let first = relative.components().next().expect("a path").as_os_str().to_string_lossy();
        let room = first.trim_end_matches(".rs");
        if room == "lib" || room == "main" {
            continue;
        }
        let Some(&own) = rank.get(room) else {
            wrong.push(format!("{}: the room `{room}` is not in LAYERS (say where it belongs)", relative.display()));
            continue;
        };
        rooms_seen.insert(room.to_string(), ());
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for (used, line) in uses(&code(&text)) {
            match rank.get(used.as_str()) {
                Some(&other) if other > own => {
                    wrong.push(format!("{}:{line}: `{room}` uses `{used}`, a room above it", relative.display()))
                }
                _ => {}
            }
        }
    }
    assert!(wrong.is_empty(), "the host's rooms are out of order:\n{}", wrong.join("\n"));
    let missing: Vec<_> = LAYERS.iter().filter(|name| !rooms_seen.contains_key(**name)).collect();
    assert!(missing.is_empty(), "LAYERS names rooms that no longer exist: {missing:?}");
}

#[test]
fn the_reader_finds_every_form_of_use() {
    let found = uses(&code(
        "use crate::guest::Account;\nuse crate::{api::{A, B}, nn};\nlet x = crate::service::QaService::new(); // crate::lambda\n/// [`crate::server`]\n#[cfg(test)]\nuse crate::eval;",
    ));
    let names: Vec<(&str, usize)> = found.iter().map(|(name, line)| (name.as_str(), *line)).collect();
    assert_eq!(names, [("guest", 1), ("api", 2), ("nn", 2), ("service", 3)]);
}
