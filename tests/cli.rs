//! The command line: `config` prints the layered configuration redacted, `migrate`
//! creates the index.

use std::process::Command;

fn kastell(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kastell"));
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("run kastell");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn config_shows_every_layer_and_hides_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("k.toml");
    std::fs::write(
        &file,
        "[dicomweb]\nqido_max_results = 77\n[index]\nurl = \"postgres://k:secret@db/k\"\n",
    )
    .unwrap();
    let (ok, out) = kastell(
        &[
            "config",
            "--config",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:9999",
        ],
        &[("KASTELL__DICOMWEB__WARNING_AGENT", "archive-7")],
    );
    assert!(ok, "{out}");
    assert!(out.contains("listen = \"127.0.0.1:9999\""), "{out}");
    assert!(out.contains("qido_max_results = 77"), "{out}");
    assert!(out.contains("warning_agent = \"archive-7\""), "{out}");
    assert!(out.contains("postgres://k:***@db/k"), "{out}");
    assert!(!out.contains("secret"), "{out}");
}

#[test]
fn bad_configuration_is_refused_with_a_reason() {
    let (ok, out) = kastell(
        &["config"],
        &[("KASTELL__DICOMWEB__PATH_PREFIX", "no-slash")],
    );
    assert!(!ok);
    assert!(out.contains("path_prefix"), "{out}");
    let (ok, out) = kastell(&["config", "--config", "/nonexistent/kastell.toml"], &[]);
    assert!(!ok);
    assert!(out.contains("does not exist"), "{out}");
}

#[test]
fn migrate_creates_the_embedded_index() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, out) = kastell(&["migrate", "--data-dir", data.to_str().unwrap()], &[]);
    assert!(ok, "{out}");
    assert!(out.contains("applied"), "{out}");
    assert!(data.join("index.sqlite").exists());
    let (ok, out) = kastell(&["migrate", "--data-dir", data.to_str().unwrap()], &[]);
    assert!(ok, "{out}");
    assert!(out.contains("up to date"), "{out}");
}
