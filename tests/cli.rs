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

#[test]
fn api_keys_are_shown_once_listed_without_secrets_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (ok, out) = kastell(
        &[
            "apikeys",
            "add",
            "--data-dir",
            data,
            "--tenant",
            "default",
            "--name",
            "CT_SCANNER_1",
            "--permissions",
            "read,write",
        ],
        &[],
    );
    assert!(ok, "{out}");
    let key = out
        .split_whitespace()
        .find(|w| w.starts_with("kst_"))
        .expect("the key is printed")
        .to_string();
    assert_eq!(key.len(), 4 + 43);

    let (ok, listed) = kastell(&["apikeys", "list", "--data-dir", data], &[]);
    assert!(ok, "{listed}");
    assert!(listed.contains("CT_SCANNER_1"), "{listed}");
    assert!(listed.contains("permissions=read,write"), "{listed}");
    assert!(listed.contains("active"), "{listed}");
    assert!(!listed.contains(&key[4..]), "the key is never listed");

    let (ok, out) = kastell(&["apikeys", "revoke", "1", "--data-dir", data], &[]);
    assert!(ok, "{out}");
    let (ok, listed) = kastell(&["apikeys", "list", "--data-dir", data], &[]);
    assert!(ok && listed.contains("revoked"), "{listed}");
    let (ok, out) = kastell(&["apikeys", "revoke", "1", "--data-dir", data], &[]);
    assert!(!ok, "revoking twice reports it: {out}");

    let (ok, out) = kastell(
        &[
            "apikeys",
            "add",
            "--data-dir",
            data,
            "--tenant",
            "default",
            "--name",
            "x",
            "--permissions",
            "read,fly",
        ],
        &[],
    );
    assert!(!ok && out.contains("fly"), "{out}");
}

/// Starts `serve` on the embedded defaults and returns what it logged until it
/// was serving.
fn start_up_log(env: &[(&str, &str)]) -> String {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_kastell"));
    command
        .args([
            "serve",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("KASTELL__LOG__LEVEL", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("start kastell");
    let mut log = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.contains("kastell is serving") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    log
}

#[test]
fn anonymous_access_is_announced_at_every_start() {
    let log = start_up_log(&[]);
    assert!(log.contains("kastell is serving"), "{log}");
    assert!(log.contains("ANONYMOUS ACCESS IS ON"), "{log}");
    assert!(log.contains("read, write, delete"), "{log}");
    let log = start_up_log(&[("KASTELL__AUTH__ANONYMOUS", "[]")]);
    assert!(log.contains("kastell is serving"), "{log}");
    assert!(!log.contains("ANONYMOUS"), "{log}");
}
