//! `docs/configuration.md` and the code in step: every setting the host reads from the
//! environment is a row of the doc's "Every setting" table, and every row is a setting the
//! host reads. Std only, so it also runs as a plain `rustc --test` binary from `host/`.
//!
//! What counts as read: a string literal in `host/src/**/*.rs` (outside comments and
//! `#[cfg(test)]` items) that is exactly a setting's name (`QA_*`, `AWS_LAMBDA_*`,
//! `POWERTOOLS_*`, `ORT_DYLIB_PATH`, `LAMBDA_TASK_ROOT`, `AWS_ENDPOINT_URL`). Error text that
//! mentions a setting inside a longer message is not a name. A literal that is only a prefix
//! (`"QA_SERVE_"`, for a name built with `format!`) stands for the documented names that start
//! with it, and at least one must.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Read on the host's behalf by a library, not by the host's own code: documented, never a
/// literal in `host/src`.
const READ_BY_LIBRARIES: &[&str] = &["AWS_ENDPOINT_URL"];

/// The heading of the table the doc keeps every setting in.
const TABLE_HEADING: &str = "## Every setting";

fn package_dir() -> PathBuf {
    // Cargo runs integration tests in the package directory and sets this; a plain `rustc
    // --test` binary is run from `host/`.
    PathBuf::from(option_env!("CARGO_MANIFEST_DIR").unwrap_or("."))
}

fn is_setting_name(s: &str) -> bool {
    let shape = !s.ends_with('_') && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    let family = ["QA_", "AWS_LAMBDA_", "POWERTOOLS_"].iter().any(|p| s.starts_with(p) && s.len() > p.len());
    shape && (family || ["ORT_DYLIB_PATH", "LAMBDA_TASK_ROOT", "AWS_ENDPOINT_URL"].contains(&s))
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Str(String),
    Ident(String),
    Punct(char),
}

/// Rust source as tokens, comments dropped; string literals keep their raw contents (the
/// names looked for have no escapes).
fn tokens(source: &str) -> Vec<Token> {
    let c: Vec<char> = source.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    // A quoted string from `c[start]` (the opening quote), `hashes` deep for raw strings;
    // returns the contents and the index after the closing quote.
    let quoted = |start: usize, raw: bool, hashes: usize| -> (String, usize) {
        let mut j = start + 1;
        let mut text = String::new();
        while j < c.len() {
            if !raw && c[j] == '\\' {
                text.push(c[j]);
                if j + 1 < c.len() {
                    text.push(c[j + 1]);
                }
                j += 2;
                continue;
            }
            if c[j] == '"' && (0..hashes).all(|h| c.get(j + 1 + h) == Some(&'#')) {
                return (text, j + 1 + hashes);
            }
            text.push(c[j]);
            j += 1;
        }
        (text, j)
    };
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && c.get(i + 1) == Some(&'*') {
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
                    i += 1;
                }
            }
        } else if ch == '"' {
            let (text, next) = quoted(i, false, 0);
            out.push(Token::Str(text));
            i = next;
        } else if ch == '\'' {
            if c.get(i + 1) == Some(&'\\') {
                // A character literal with an escape: up to its closing quote.
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                // A lifetime or label: the quote alone; its name follows as an identifier.
                i += 1;
            }
        } else if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let raw = matches!(word.as_str(), "r" | "br" | "cr");
            if raw && matches!(c.get(i), Some('"') | Some('#')) {
                let mut hashes = 0;
                while c.get(i + hashes) == Some(&'#') {
                    hashes += 1;
                }
                if c.get(i + hashes) == Some(&'"') {
                    let (text, next) = quoted(i + hashes, true, hashes);
                    out.push(Token::Str(text));
                    i = next;
                    continue;
                }
            }
            if matches!(word.as_str(), "b" | "c") && c.get(i) == Some(&'"') {
                let (text, next) = quoted(i, false, 0);
                out.push(Token::Str(text));
                i = next;
                continue;
            }
            out.push(Token::Ident(word));
        } else {
            out.push(Token::Punct(ch));
            i += 1;
        }
    }
    out
}

/// The tokens without `#[cfg(test)]` items (a test module, function or `use`): what tests set
/// is not what the host reads. Returns the kept tokens and the out-of-line test modules
/// (`#[cfg(test)] mod name;`) whose files are skipped.
fn without_test_items(tokens: Vec<Token>) -> (Vec<Token>, Vec<String>) {
    let attribute = [
        Token::Punct('#'),
        Token::Punct('['),
        Token::Ident("cfg".into()),
        Token::Punct('('),
        Token::Ident("test".into()),
        Token::Punct(')'),
        Token::Punct(']'),
    ];
    let (mut kept, mut skipped_files) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < tokens.len() {
        if tokens[i..].starts_with(&attribute) {
            i += attribute.len();
            let item_start = i;
            let mut depth = 0i32;
            while i < tokens.len() {
                match tokens[i] {
                    Token::Punct('(') | Token::Punct('[') => depth += 1,
                    Token::Punct(')') | Token::Punct(']') => depth -= 1,
                    Token::Punct(';') if depth == 0 => {
                        if let [.., Token::Ident(m), Token::Ident(name)] = &tokens[item_start..i]
                            && m == "mod"
                        {
                            skipped_files.push(name.clone());
                        }
                        i += 1;
                        break;
                    }
                    Token::Punct('{') if depth == 0 => {
                        let mut braces = 0i32;
                        while i < tokens.len() {
                            match tokens[i] {
                                Token::Punct('{') => braces += 1,
                                Token::Punct('}') => braces -= 1,
                                _ => {}
                            }
                            i += 1;
                            if braces == 0 {
                                break;
                            }
                        }
                        break;
                    }
                    _ => {}
                }
                i += 1;
            }
        } else {
            kept.push(tokens[i].clone());
            i += 1;
        }
    }
    (kept, skipped_files)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Names the host reads, and name prefixes (for names built at run time).
fn read_by_the_host(src: &Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut skip: BTreeSet<PathBuf> = BTreeSet::new();
    let mut parsed = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let (kept, test_modules) = without_test_items(tokens(&text));
        // `mod x;` in `a.rs` or `a/mod.rs` is `a/x.rs` or `a/x/mod.rs`; in `lib.rs`/`main.rs`, beside it.
        let dir = match file.file_stem().and_then(|s| s.to_str()) {
            Some("mod" | "lib" | "main") => file.parent().map(Path::to_path_buf),
            _ => file.parent().zip(file.file_stem()).map(|(p, s)| p.join(s)),
        };
        if let Some(dir) = dir {
            for module in test_modules {
                skip.insert(dir.join(format!("{module}.rs")));
                skip.insert(dir.join(&module).join("mod.rs"));
            }
        }
        parsed.push((file.clone(), kept));
    }
    let (mut names, mut prefixes) = (BTreeSet::new(), BTreeSet::new());
    for (file, kept) in parsed {
        if !skip.contains(&file) {
            settings_in(&kept, &mut names, &mut prefixes);
        }
    }
    (names, prefixes)
}

/// The setting names among `tokens`' string literals, and the name prefixes.
fn settings_in(tokens: &[Token], names: &mut BTreeSet<String>, prefixes: &mut BTreeSet<String>) {
    for token in tokens {
        let Token::Str(s) = token else { continue };
        if is_setting_name(s) {
            names.insert(s.clone());
        } else if s.ends_with('_') && is_setting_name(&format!("{s}X")) {
            prefixes.insert(s.clone());
        }
    }
}

/// The names in the first column of the doc's settings table.
fn documented(doc: &str) -> BTreeSet<String> {
    let mut lines = doc.lines().skip_while(|l| l.trim() != TABLE_HEADING);
    assert!(lines.next().is_some(), "docs/configuration.md has no {TABLE_HEADING:?} heading");
    let mut names = BTreeSet::new();
    for line in lines.take_while(|l| !l.starts_with("## ")) {
        let Some(row) = line.trim().strip_prefix('|') else { continue };
        let first = row.split('|').next().unwrap_or_default();
        for (k, quoted) in first.split('`').enumerate() {
            if k % 2 == 1 && is_setting_name(quoted) {
                names.insert(quoted.to_string());
            }
        }
    }
    names
}

fn difference(a: &BTreeSet<String>, b: &BTreeSet<String>) -> Vec<String> {
    a.difference(b).cloned().collect()
}

#[test]
fn every_setting_the_host_reads_is_documented_and_every_documented_setting_is_read() {
    let package = package_dir();
    let (read, prefixes) = read_by_the_host(&package.join("src"));
    let doc_path = package.join("../docs/configuration.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap_or_else(|e| panic!("{}: {e}", doc_path.display()));
    let documented = documented(&doc);
    assert!(read.len() >= 40, "found only {} settings in host/src: is the source where it was? {read:?}", read.len());

    let mut expected = read.clone();
    expected.extend(READ_BY_LIBRARIES.iter().map(|s| s.to_string()));
    // Names built from a prefix: the documented ones with it are read.
    for prefix in &prefixes {
        let built: Vec<_> = documented.iter().filter(|d| d.starts_with(prefix.as_str())).cloned().collect();
        assert!(!built.is_empty(), "host/src builds setting names from {prefix:?}, and docs/configuration.md documents none");
        expected.extend(built);
    }
    let undocumented = difference(&expected, &documented);
    let unknown = difference(&documented, &expected);
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "docs/configuration.md's {TABLE_HEADING:?} table and host/src disagree.\n\
         read by the host, not documented: {undocumented:?}\n\
         documented, not read by the host: {unknown:?}"
    );
}

/// The reader itself: comments, error text, test items and raw strings are not settings.
#[test]
fn only_names_the_code_reads_count() {
    let source = r####"
        //! Reads `QA_IN_A_DOC_COMMENT`.
        /* "QA_IN_A_BLOCK_COMMENT" /* nested "QA_NESTED" */ */
        const KEY: &str = "QA_FROM_A_CONST";
        fn read<'a>(env: &'a E) { env.positive("QA_READ", "a whole number (QA_IN_ERROR_TEXT)"); let c = '"'; let d = '\''; }
        fn raw() { let _ = r#"QA_RAW"#; let _ = format!("QA_PREFIX_{}", 1); let _ = "QA_PREFIX_"; }
        #[cfg(test)]
        mod tests { fn t() { set("QA_ONLY_IN_TESTS", "1"); let _ = "}"; } }
        #[cfg(test)]
        mod props;
        fn after() { std::env::var("QA_AFTER_TESTS"); }
    "####;
    let (kept, modules) = without_test_items(tokens(source));
    let (mut names, mut prefixes) = (BTreeSet::new(), BTreeSet::new());
    settings_in(&kept, &mut names, &mut prefixes);
    let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<String>>();
    assert_eq!(names, set(&["QA_FROM_A_CONST", "QA_READ", "QA_RAW", "QA_AFTER_TESTS"]));
    assert_eq!(prefixes, set(&["QA_PREFIX_"]));
    assert_eq!(modules, ["props"]);
    let doc = "# x\n## Every setting\n| setting | default |\n|---|---|\n| `QA_A` (`--a`) | `QA_NOT_FIRST` |\n| `QA_B`, `QA_C` | 1 |\n## Next\n| `QA_D` | |\n";
    assert_eq!(documented(doc), set(&["QA_A", "QA_B", "QA_C"]));
}
