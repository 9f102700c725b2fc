//! Safe by default when exposed: `kastell serve` on a non-loopback address with
//! the embedded conveniences (anonymous write and delete, the generated
//! development key) refuses to start and says what to configure, unless
//! `server.allow_insecure_exposure` is set; on loopback they stay. The data
//! directory, the index and the key files are private whatever the umask, and a
//! master key file others may read is refused.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Whether the test runs on the embedded defaults (the development key and
/// the SQLite index are only used there).
fn embedded() -> bool {
    std::env::var("KASTELL_TEST_BLOB_URL").is_err()
        && std::env::var("KASTELL_TEST_INDEX").as_deref() != Ok("postgres")
}

/// `kastell serve` on all interfaces with `env`; `Ok(())` once it answers on
/// /healthz, `Err(output)` when it exited first.
fn serve_exposed(data: &Path, env: &[(&str, &str)]) -> Result<(), String> {
    let port = free_port();
    let mut command = cli_command(&["serve", "--listen", &format!("0.0.0.0:{port}")], data);
    command.stdout(Stdio::null()).stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("start kastell");
    let url = format!("http://127.0.0.1:{port}/healthz");
    let exited = poll(Duration::from_secs(30), || {
        if child.try_wait().unwrap().is_some() {
            return Some(true);
        }
        reqwest::blocking::get(&url)
            .is_ok_and(|r| r.status().is_success())
            .then_some(false)
    });
    match exited {
        Some(true) => {
            let output = child.wait_with_output().unwrap();
            assert!(!output.status.success());
            Err(String::from_utf8_lossy(&output.stderr).to_string())
        }
        served => {
            let _ = child.kill();
            let _ = child.wait();
            assert!(served.is_some(), "kastell neither served nor exited");
            Ok(())
        }
    }
}

/// A master key file of 32 random bytes with `mode`.
fn key_file(dir: &Path, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("master.key");
    let key: Vec<u8> = (0..32u8)
        .map(|b| b.wrapping_mul(37).wrapping_add(11))
        .collect();
    std::fs::write(&path, key).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn exposed_with_the_embedded_defaults_it_refuses_and_says_what_to_configure() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let error = serve_exposed(&data, &[]).unwrap_err();
    for needle in [
        "refuses to start",
        "not a loopback address",
        "may write, delete",
        "auth.anonymous = []",
        "server.allow_insecure_exposure = true",
        "KASTELL__SERVER__ALLOW_INSECURE_EXPOSURE=true",
    ] {
        assert!(error.contains(needle), "{needle:?} in: {error}");
    }
    if embedded() {
        assert!(error.contains("development key"), "{error}");
        assert!(error.contains("keys.master_key_file"), "{error}");
        // Refused before anything was created.
        assert!(!data.join("index.sqlite").exists());
    }
}

#[test]
fn exposed_without_anonymous_writes_the_development_key_alone_is_refused() {
    if !embedded() {
        eprintln!("a configured master key: no development key to refuse");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let error = serve_exposed(
        &dir.path().join("data"),
        &[("KASTELL__AUTH__ANONYMOUS", "[\"read\"]")],
    )
    .unwrap_err();
    assert!(error.contains("development key"), "{error}");
    assert!(!error.contains("may write"), "{error}");
}

#[test]
fn exposed_with_the_option_it_serves_anyway() {
    let dir = tempfile::tempdir().unwrap();
    serve_exposed(
        &dir.path().join("data"),
        &[("KASTELL__SERVER__ALLOW_INSECURE_EXPOSURE", "true")],
    )
    .expect("allowed explicitly");
}

#[test]
fn exposed_with_credentials_required_and_a_private_key_file_it_serves() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), 0o600);
    serve_exposed(
        &dir.path().join("data"),
        &[
            ("KASTELL__AUTH__ANONYMOUS", "[\"read\"]"),
            ("KASTELL__KEYS__MASTER_KEY_FILE", key.to_str().unwrap()),
        ],
    )
    .expect("nothing insecure to refuse");
}

#[test]
fn on_loopback_the_embedded_defaults_serve() {
    let server = Server::start();
    let (status, _) = store(
        &server,
        "/studies",
        &[dicom_file(&Spec::new("9.9", "9.9.1", "9.9.1.1"))],
    );
    assert_eq!(status, 200, "anonymous write on loopback");
}

#[test]
fn a_master_key_file_others_may_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for mode in [0o644, 0o640, 0o604] {
        let key = key_file(dir.path(), mode);
        let output = cli_command(&["keys", "rotate", "--tenant", "default"], &data)
            .env_remove("KASTELL__KEYS__MASTER_KEY")
            .env("KASTELL__KEYS__MASTER_KEY_FILE", &key)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "mode {mode:o}: {stderr}");
        assert!(
            stderr.contains("accessible to its group or to others")
                && stderr.contains(&format!("chmod 600 {}", key.display())),
            "mode {mode:o}: {stderr}"
        );
    }
    let key = key_file(dir.path(), 0o400);
    let output = cli_command(&["keys", "rotate", "--tenant", "default"], &data)
        .env_remove("KASTELL__KEYS__MASTER_KEY")
        .env("KASTELL__KEYS__MASTER_KEY_FILE", &key)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_data_directory_index_and_key_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    if !embedded() {
        eprintln!("the index or blobs are not in the data directory here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The most permissive umask: every mode below is Kastell's own doing.
    let inner = cli_command(&["keys", "rotate", "--tenant", "default"], &data);
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("umask 000; exec \"$@\"")
        .arg("sh")
        .arg(inner.get_program())
        .args(inner.get_args());
    for (key, value) in inner.get_envs() {
        if let Some(value) = value {
            command.env(key, value);
        }
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "data directory");
    assert_eq!(mode(&data.join("index.sqlite")), 0o600, "index");
    assert_eq!(mode(&data.join("development-master.key")), 0o600, "key");
}

/// The RetrieveURL a QIDO search writes for a request carrying `headers`.
fn retrieve_url(server: &Server, headers: &[(&str, &str)]) -> String {
    let mut request = client().get(server.url("/studies?StudyInstanceUID=1.2.77.1"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let found: serde_json::Value = response.json().unwrap();
    first_string(&found[0], "00081190").expect("a RetrieveURL")
}

/// Forwarding headers name the host of the URLs Kastell writes only when a
/// trusted proxy sent them: a client cannot make a response (which a shared
/// cache in front may keep for everyone) point at another host.
#[test]
fn forwarded_hosts_count_only_from_trusted_proxies() {
    let forged = [
        ("X-Forwarded-Host", "attacker.example"),
        ("X-Forwarded-Proto", "https"),
    ];
    let rfc7239 = [("Forwarded", "host=attacker.example;proto=https")];
    let spec = Spec::new("1.2.77.1", "1.2.77.1.1", "1.2.77.1.1.1");

    let server = Server::start();
    assert_eq!(store(&server, "/studies", &[dicom_file(&spec)]).0, 200);
    let own = format!("http://127.0.0.1:{}/dicomweb/studies/1.2.77.1", server.port);
    assert_eq!(retrieve_url(&server, &[]), own);
    assert_eq!(retrieve_url(&server, &forged), own);
    assert_eq!(retrieve_url(&server, &rfc7239), own);

    let proxied = Server::start_with(&[("KASTELL__SERVER__TRUSTED_PROXIES", "[\"127.0.0.1\"]")]);
    assert_eq!(store(&proxied, "/studies", &[dicom_file(&spec)]).0, 200);
    assert_eq!(
        retrieve_url(&proxied, &forged),
        "https://attacker.example/dicomweb/studies/1.2.77.1"
    );
    assert_eq!(
        retrieve_url(&proxied, &rfc7239),
        "https://attacker.example/dicomweb/studies/1.2.77.1"
    );
    assert_eq!(
        retrieve_url(&proxied, &[]),
        format!(
            "http://127.0.0.1:{}/dicomweb/studies/1.2.77.1",
            proxied.port
        )
    );
}
