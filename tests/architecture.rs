//! The dependency direction of ARCHITECTURE.md, checked on the source: each
//! layer (a top-level module of `src/`) may import only the layers listed for
//! it, so an import against the direction (HTTP reaching into the index, a leaf
//! reaching up, config calling auth) fails the test command instead of
//! creeping in. Test code (`#[cfg(test)]` modules and `tests.rs` files) may use
//! anything.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Every layer below HTTP: what the composition root, the operator commands
/// and the command line may all use.
const BELOW_HTTP: &[&str] = &[
    "service",
    "index",
    "store",
    "dicom",
    "config",
    "audit",
    "auth",
    "crypto",
    "custody",
    "sovereignty",
    "telemetry",
    "private_files",
    "redact",
];

/// Each layer and the layers its non-test code may import (`crate::<layer>`,
/// or one module of it: `crate::<layer>::<module>`). A layer may always use
/// itself.
fn rules() -> Vec<(&'static str, Vec<&'static str>)> {
    let below_http_and = |more: &[&'static str]| [BELOW_HTTP, more].concat();
    vec![
        // Leaves: pure functions over bytes and keys.
        ("dicom", vec![]),
        ("crypto", vec![]),
        ("private_files", vec![]),
        ("redact", vec![]),
        // Configuration is plain data with its own validation; the DICOM layer's
        // parse limits and the policy's country lists (a leaf) are its defaults.
        ("config", vec!["dicom", "redact", "sovereignty::country"]),
        ("telemetry", vec!["config"]),
        ("sovereignty", vec!["config", "redact"]),
        // Metric names are a leaf (`telemetry::metrics`); the rest of telemetry
        // (subscriber, exporters) is started by the binary and served by HTTP.
        (
            "store",
            vec!["crypto", "telemetry::metrics", "private_files", "redact"],
        ),
        // Key custody reaches the holders of master keys (files, HSMs, KMSs)
        // for the key hierarchy of `crypto`.
        (
            "custody",
            vec!["crypto", "telemetry::metrics", "private_files", "redact"],
        ),
        (
            "index",
            vec![
                "dicom",
                "telemetry::metrics",
                "private_files",
                "redact",
                "service::request",
            ],
        ),
        (
            "auth",
            vec!["index", "config", "crypto", "telemetry::metrics"],
        ),
        (
            "audit",
            vec![
                "index",
                "crypto",
                "dicom",
                "config",
                "telemetry::metrics",
                "private_files",
            ],
        ),
        (
            "service",
            vec![
                "dicom",
                "index",
                "store",
                "config",
                "telemetry::metrics",
                "crypto",
            ],
        ),
        // HTTP goes through the services: never the index or the store.
        (
            "http",
            vec!["service", "dicom", "auth", "audit", "config", "telemetry"],
        ),
        // The composition root builds every backend; operator commands use its
        // builders (the root never calls them); the command line uses them all.
        ("app", below_http_and(&["http"])),
        ("ops", below_http_and(&["app"])),
        ("cli", below_http_and(&["http", "ops", "app"])),
    ]
}

/// The Rust files under `dir` (relative to the crate).
fn source_files(dir: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join(dir), &mut files);
    files
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file that ships: everything before its first `#[cfg(test)]`.
fn shipped_code(path: &Path) -> String {
    if path.file_name().is_some_and(|n| n == "tests.rs")
        || path.components().any(|c| c.as_os_str() == "tests")
    {
        return String::new();
    }
    let text = std::fs::read_to_string(path).unwrap();
    let code = match text.find("#[cfg(test)]") {
        Some(at) => &text[..at],
        None => &text,
    };
    // Comments may name any layer.
    code.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `crate::a` and `crate::a::b` paths a piece of code names.
fn crate_paths(code: &str) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let mut names = rest
            .split("::")
            .map(|n| {
                n.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or("")
            })
            .take(2);
        let first = names.next().unwrap_or("").to_string();
        let second = names.next().unwrap_or("").to_string();
        if !first.is_empty() {
            found.insert((first, second));
        }
    }
    found
}

#[test]
fn every_layer_imports_only_what_it_may() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rules = rules();
    let mut violations = Vec::new();
    for file in &source_files("src") {
        let relative = file.strip_prefix(&src).unwrap();
        let layer = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if layer == "lib" || layer == "main" {
            continue;
        }
        let Some((_, allowed)) = rules.iter().find(|(name, _)| *name == layer) else {
            violations.push(format!(
                "{}: layer `{layer}` has no rule",
                relative.display()
            ));
            continue;
        };
        for (first, second) in crate_paths(&shipped_code(file)) {
            let qualified = format!("{first}::{second}");
            let ok = first == layer
                || allowed.contains(&first.as_str())
                || allowed.contains(&qualified.as_str());
            if !ok {
                violations.push(format!(
                    "{}: `{layer}` imports `crate::{qualified}`",
                    relative.display()
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports against the dependency direction (ARCHITECTURE.md):\n{}",
        violations.join("\n")
    );
}

/// HTTP handlers never import each other: what two need is in `http/protocol/`.
#[test]
fn handlers_do_not_import_each_other() {
    let mut violations = Vec::new();
    for file in source_files("src/http/handlers") {
        let code = shipped_code(&file);
        if code.contains("super::") || code.contains("http::handlers::") {
            violations.push(file.display().to_string());
        }
    }
    assert!(
        violations.is_empty(),
        "handlers importing handlers: {violations:?}"
    );
}

/// A file of shipped code stays small enough to read: about 600 lines at most.
/// A generated table (its first line says `// Generated by`) is data, not code.
#[test]
fn no_file_holds_more_than_600_lines_of_shipped_code() {
    let mut large: Vec<String> = source_files("src")
        .iter()
        .filter(|file| {
            !std::fs::read_to_string(file)
                .unwrap()
                .starts_with("// Generated by")
        })
        .filter_map(|file| {
            let lines = shipped_code(file).lines().count();
            (lines > 600).then(|| format!("{} ({lines} lines)", file.display()))
        })
        .collect();
    large.sort();
    assert!(
        large.is_empty(),
        "files over 600 lines of shipped code: {large:?}"
    );
}

#[test]
fn the_checker_sees_imports_and_ignores_comments_and_tests() {
    let paths = crate_paths("use crate::index::Scope;\nlet x = crate::store::BlobKey::new();");
    assert!(paths.contains(&("index".into(), "Scope".into())));
    assert!(paths.contains(&("store".into(), "BlobKey".into())));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.rs");
    std::fs::write(
        &file,
        "// crate::index in a comment\nuse crate::service::Scope;\n#[cfg(test)]\nmod tests { use crate::index::Index; }\n",
    )
    .unwrap();
    let paths = crate_paths(&shipped_code(&file));
    assert_eq!(paths.len(), 1);
    assert!(paths.contains(&("service".into(), "Scope".into())));
}
