//! The jurisdiction policy through the binary: `kastell serve` refuses a violating
//! configuration before it opens anything, `kastell sovereignty report` prints the
//! control chain, and a running server answers it at `GET /admin/sovereignty`.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::Server;

const DATA_KINDS: [&str; 5] = ["images", "personal-metadata", "keys", "audit-trail", "logs"];

/// Runs `kastell` to completion with `env` added (for commands that exit).
fn kastell(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kastell"));
    command.args(args).env("RUST_LOG", "warn");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run kastell")
}

/// Starts `kastell serve` on `data` and expects it to stop by itself within
/// seconds (a refusal is immediate; a server that started would run until killed).
fn serve_expecting_refusal(data: &std::path::Path, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kastell"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("start kastell");
    if common::poll(Duration::from_secs(20), || child.try_wait().unwrap()).is_none() {
        let _ = child.kill();
        let output = child.wait_with_output().unwrap();
        panic!(
            "kastell serve did not refuse to start: {}",
            text(&output.stderr)
        );
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn data_kinds(report: &serde_json::Value) -> Vec<String> {
    report["chain"]
        .as_array()
        .expect("chain")
        .iter()
        .map(|link| link["data"].as_str().expect("data kind").to_string())
        .collect()
}

#[test]
fn serve_refuses_a_violating_configuration_before_opening_anything() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let output = serve_expecting_refusal(
        &data,
        &[
            ("KASTELL__SERVER__LOCATION__COUNTRY", "DE"),
            ("KASTELL__SERVER__LOCATION__FOREIGN_ACCESS_LAW", "false"),
            // The local SQLite index declares its own location, which wins over the host's.
            ("KASTELL__INDEX__LOCATION__COUNTRY", "US"),
            ("KASTELL__INDEX__LOCATION__OPERATOR", "Example Cloud Inc."),
            ("KASTELL__INDEX__LOCATION__FOREIGN_ACCESS_LAW", "true"),
        ],
    );
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("refuses to start"), "{stderr}");
    assert!(stderr.contains("index (sqlite://"), "{stderr}");
    assert!(
        stderr.contains("sovereignty.personal_data_countries"),
        "{stderr}"
    );
    assert!(
        stderr.contains("sovereignty.allow_foreign_access_law"),
        "{stderr}"
    );
    assert!(stderr.contains("Example Cloud Inc."), "{stderr}");
    // Checked before the backends were opened: no index, no key, no blob directory.
    assert!(!data.join("index.sqlite").exists());
    assert!(!data.join("development-master.key").exists());
    assert!(!data.join("blobs").exists());
}

#[test]
fn commands_that_write_data_or_keys_refuse_a_violating_configuration_too() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let source = dir.path().join("to-import");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(
        source.join("one.dcm"),
        common::dicom_file(&common::Spec::new("1.9.1", "1.9.1.1", "1.9.1.1.1")),
    )
    .unwrap();
    let violating = [
        ("KASTELL__SERVER__LOCATION__COUNTRY", "DE"),
        ("KASTELL__INDEX__LOCATION__COUNTRY", "US"),
        ("KASTELL__INDEX__LOCATION__OPERATOR", "Example Cloud Inc."),
    ];
    let data_dir = data.to_str().unwrap();
    let source_dir = source.to_str().unwrap();
    for (args, what) in [
        (vec!["import", source_dir], "import"),
        (vec!["migrate"], "migrate the index"),
        (vec!["tenants", "add", "radiology"], "add a tenant"),
        (
            vec!["keys", "rotate", "--tenant", "default"],
            "rotate a key",
        ),
        (vec!["generate", "--studies", "1"], "generate an index"),
    ] {
        let mut args = args;
        args.extend(["--data-dir", data_dir]);
        let output = kastell(&args, &violating);
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("kastell refuses to {what}")),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains("sovereignty.personal_data_countries"),
            "{stderr}"
        );
        assert!(
            !data.join("index.sqlite").exists(),
            "{args:?} opened the index"
        );
        assert!(
            !data.join("blobs").exists(),
            "{args:?} opened the blob store"
        );
    }
    // The same commands run where the policy holds.
    let output = kastell(&["import", source_dir, "--data-dir", data_dir], &[]);
    assert!(output.status.success(), "{}", text(&output.stderr));
}

#[test]
fn serve_requiring_declarations_refuses_an_undeclared_host() {
    let dir = tempfile::tempdir().unwrap();
    let output = serve_expecting_refusal(
        &dir.path().join("data"),
        &[("KASTELL__SOVEREIGNTY__REQUIRE_DECLARATIONS", "true")],
    );
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("server (the host running Kastell)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("sovereignty.require_declarations"),
        "{stderr}"
    );
}

#[test]
fn serve_on_the_embedded_default_warns_that_the_host_is_undeclared() {
    // The embedded default starts; its first log lines say the host is undeclared.
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kastell"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kastell");
    let healthy = common::poll(Duration::from_secs(30), || {
        reqwest::blocking::get(format!("http://127.0.0.1:{port}/healthz"))
            .is_ok_and(|r| r.status().is_success())
            .then_some(())
    })
    .is_some();
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let stderr = text(&output.stderr);
    assert!(healthy, "the embedded default did not start: {stderr}");
    assert!(
        stderr.contains("THE LOCATION OF THIS HOST IS UNDECLARED"),
        "{stderr}"
    );
}

#[test]
fn report_as_json_lists_every_kind_of_data() {
    let dir = tempfile::tempdir().unwrap();
    let output = kastell(
        &[
            "sovereignty",
            "report",
            "--format",
            "json",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
        ],
        &[
            ("KASTELL__SERVER__LOCATION__COUNTRY", "DE"),
            ("KASTELL__SERVER__LOCATION__OPERATOR", "Klinikum Nord IT"),
            ("KASTELL__SERVER__LOCATION__FOREIGN_ACCESS_LAW", "false"),
        ],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("the report is JSON");
    assert_eq!(data_kinds(&report), DATA_KINDS);
    assert_eq!(report["violations"], serde_json::json!([]));
    for link in report["chain"].as_array().unwrap() {
        for holding in link["held"].as_array().unwrap() {
            // Everything is on the declared host here.
            assert_eq!(holding["jurisdiction"]["country"], "DE", "{holding}");
        }
    }
    // The report opens nothing.
    assert!(!dir.path().join("data").exists());
}

#[test]
fn report_lists_violations_exits_non_zero_and_shows_no_password() {
    let output = kastell(
        &["sovereignty", "report"],
        &[
            ("KASTELL__SERVER__LOCATION__COUNTRY", "DE"),
            ("KASTELL__SERVER__LOCATION__FOREIGN_ACCESS_LAW", "false"),
            (
                "KASTELL__INDEX__URL",
                "postgres://kastell:hunter2secret@db.example.com:5432/kastell",
            ),
            ("KASTELL__KEYS__MASTER_KEY_FILE", "/etc/kastell/master.key"),
            ("KASTELL__KEYS__LOCATION__COUNTRY", "CH"),
            ("KASTELL__KEYS__LOCATION__FOREIGN_ACCESS_LAW", "false"),
            ("KASTELL__SOVEREIGNTY__REQUIRE_DECLARATIONS", "true"),
        ],
    );
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(!output.status.success(), "{stdout}{stderr}");
    // The text report on stdout, the violations again on stderr.
    assert!(stdout.contains("Control chain"), "{stdout}");
    for out in [&stdout, &stderr] {
        assert!(
            out.contains("index (postgres://db.example.com:5432/kastell)"),
            "{out}"
        );
        assert!(out.contains("sovereignty.require_declarations"), "{out}");
        assert!(
            out.contains("keys (master key from file /etc/kastell/master.key)"),
            "{out}"
        );
        assert!(out.contains("sovereignty.personal_data_countries"), "{out}");
        assert!(!out.contains("hunter2"), "{out}");
    }
}

#[test]
fn a_running_server_answers_the_report_at_the_admin_endpoint() {
    let server = Server::start_with(&[
        ("KASTELL__SERVER__LOCATION__COUNTRY", "AT"),
        (
            "KASTELL__SERVER__LOCATION__OPERATOR",
            "Landeskrankenhaus IT",
        ),
        ("KASTELL__SERVER__LOCATION__FOREIGN_ACCESS_LAW", "false"),
    ]);
    let admin_url = format!("http://127.0.0.1:{}/admin/sovereignty", server.port);
    // Administration needs admin rights; anonymous callers have none.
    let anonymous = common::client().get(&admin_url).send().unwrap();
    assert_eq!(anonymous.status().as_u16(), 403);
    let (ok, out) = common::cli(
        &[
            "apikeys",
            "add",
            "--tenant",
            "*",
            "--name",
            "operator",
            "--permissions",
            "admin",
        ],
        &server.data_dir,
    );
    assert!(ok, "{out}");
    let key = out
        .split_whitespace()
        .find(|w| w.starts_with("kst_"))
        .expect("the key is printed")
        .to_string();
    let response = common::client()
        .get(&admin_url)
        .header("Authorization", format!("ApiKey {key}"))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json")));
    let report: serde_json::Value = response.json().unwrap();
    assert_eq!(data_kinds(&report), DATA_KINDS);
    let server_backend = &report["backends"][0];
    assert_eq!(server_backend["kind"], "server");
    assert_eq!(server_backend["jurisdiction"]["country"], "AT");
    assert_eq!(
        server_backend["jurisdiction"]["operator"],
        "Landeskrankenhaus IT"
    );
    // Outside the DICOMweb prefix: the prefix does not serve it.
    let under_prefix = common::client()
        .get(server.url("/admin/sovereignty"))
        .send()
        .unwrap();
    assert_ne!(under_prefix.status().as_u16(), 200);
}
