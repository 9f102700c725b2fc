//! The master key in an HSM (issue 16), with SoftHSM2 as the token (made by
//! `tests/backends/start_softhsm.sh`, which installs SoftHSM when it is
//! missing): the key is non-extractable and sensitive as the token itself
//! reports it; STOW and WADO work with every tenant key wrapped inside the
//! token; the master key's bytes appear in no file the server maps and nowhere
//! in the data directory; a file master key moves into the HSM with `kastell
//! keys rotate-master`, killed with SIGKILL half-way and run again, without a
//! key becoming unreadable; and the file master, once nothing references it, is
//! retired and the server runs without it.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use common::*;

/// A SoftHSM token of the test's own.
struct Hsm {
    env: Vec<(String, String)>,
    module: String,
    pin_file: String,
}

impl Hsm {
    fn start(dir: &Path) -> Hsm {
        let output = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/backends/start_softhsm.sh"
        ))
        .arg(dir.join("hsm"))
        .arg("kastell")
        .stderr(Stdio::inherit())
        .output()
        .expect("run start_softhsm.sh");
        assert!(output.status.success(), "start_softhsm.sh failed");
        let env: Vec<(String, String)> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.strip_prefix("export "))
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| {
                (
                    k.to_string(),
                    v.trim_matches('\'').trim_matches('"').to_string(),
                )
            })
            .collect();
        let get = |name: &str| env.iter().find(|(k, _)| k == name).unwrap().1.clone();
        Hsm {
            module: get("KASTELL_TEST_PKCS11_MODULE"),
            pin_file: get("KASTELL_TEST_PKCS11_PIN_FILE"),
            env,
        }
    }

    fn tool(&self, args: &[&str]) -> String {
        let pin = std::fs::read_to_string(&self.pin_file).unwrap();
        let output = Command::new("pkcs11-tool")
            .args([
                "--module",
                &self.module,
                "--token-label",
                "kastell",
                "--login",
                "--pin",
                pin.trim(),
            ])
            .args(args)
            .envs(self.env.iter().cloned())
            .output()
            .expect("run pkcs11-tool");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "pkcs11-tool {args:?}: {text}");
        text
    }

    /// The configuration of master key `name` as the token's key `object`.
    fn master(&self, name: &str, object: &str) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        env.push((
            format!("KASTELL__KEYS__MASTERS__{}__URL", name.to_uppercase()),
            format!(
                "pkcs11:token=kastell;object={object}?module-path={}&pin-source=file:{}",
                self.module, self.pin_file
            ),
        ));
        env
    }
}

fn refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn kastell(args: &[&str], data: &Path, env: &[(String, String)]) -> (bool, String) {
    cli_with(args, data, env)
}

/// Every regular file under `dir`.
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else if path.is_file() {
            out.push(path);
        }
    }
}

/// The files a process has mapped (`/proc/<pid>/maps`): its binary, its
/// libraries (SoftHSM's among them), and any file it maps.
fn mapped_files(pid: u32) -> Vec<PathBuf> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut files: Vec<PathBuf> = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| path.starts_with('/'))
        .map(PathBuf::from)
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files.dedup();
    files
}

/// The forms a key could be written in: raw, hex (both cases), base64.
fn key_forms(key: &[u8]) -> Vec<Vec<u8>> {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        key.to_vec(),
        hex.clone().into_bytes(),
        hex.to_uppercase().into_bytes(),
        base64::engine::general_purpose::STANDARD
            .encode(key)
            .into_bytes(),
    ]
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

fn three_instances(study: &str) -> Vec<Vec<u8>> {
    (1..=3)
        .map(|i| {
            dicom_file(&Spec::new(
                study,
                &format!("{study}.1"),
                &format!("{study}.1.{i}"),
            ))
        })
        .collect()
}

fn assert_all_readable(server: &Server, study: &str, sent: &[Vec<u8>]) {
    for (i, bytes) in sent.iter().enumerate() {
        let instance = format!("{study}.1.{}", i + 1);
        let body = retrieve_instance(server, study, &format!("{study}.1"), &instance)
            .unwrap_or_else(|status| panic!("{instance}: {status}"));
        assert_eq!(&body, bytes, "{instance}: the bytes stored come back");
    }
}

#[test]
fn a_master_key_in_softhsm_is_non_extractable_and_its_bytes_are_in_no_file_the_server_maps() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let hsm = Hsm::start(dir.path());
    // A key of known value, imported as the operator of a real HSM would
    // (private, sensitive, never extractable), so that its bytes can be
    // looked for; then its file is gone.
    let known: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
    let key_file = dir.path().join("import.key");
    std::fs::write(&key_file, known).unwrap();
    hsm.tool(&[
        "--write-object",
        key_file.to_str().unwrap(),
        "--type",
        "secrkey",
        "--key-type",
        "AES:32",
        "--label",
        "imported",
        "--sensitive",
        "--private",
    ]);
    std::fs::remove_file(&key_file).unwrap();
    let mut env = hsm.master("hsm", "imported");
    env.extend(
        hsm.master("made", "generated")
            .into_iter()
            .skip(hsm.env.len()),
    );
    env.push(("KASTELL__KEYS__ACTIVE_MASTER".into(), "hsm".into()));

    // A key Kastell makes in the token: generated there, never extractable.
    let (ok, out) = kastell(&["keys", "create-master", "made"], &data, &env);
    assert!(ok, "{out}");
    let (ok, again) = kastell(&["keys", "create-master", "made"], &data, &env);
    assert!(!ok && again.contains("already holds"), "{again}");
    let (ok, masters) = kastell(&["keys", "masters"], &data, &env);
    assert!(ok, "{masters}");
    for name in ["hsm (active)", "made"] {
        let section = masters.split(&format!("master {name}")).nth(1).unwrap();
        let section = section.split("\nmaster ").next().unwrap();
        assert!(
            section.contains("(pkcs11)") && section.contains("SoftHSM"),
            "{section}"
        );
        assert!(section.contains("extractable: no"), "{section}");
        assert!(section.contains("sensitive: yes"), "{section}");
    }
    let made = masters.split("master made").nth(1).unwrap();
    assert!(
        made.contains("never extractable: yes"),
        "generated in the token: {made}"
    );
    // The token refuses the value to anyone, pkcs11-tool included.
    let listed = hsm.tool(&["--list-objects", "--type", "secrkey"]);
    assert!(!listed.contains("VALUE:"), "{listed}");

    let server = Server::spawn(&data, &refs(&env));
    let sent = three_instances("7.1");
    let (status, _) = store(&server, "/studies", &sent);
    assert_eq!(status, 200);
    assert_all_readable(&server, "7.1", &sent);
    let metrics = client()
        .get(format!("http://127.0.0.1:{}/metrics", server.port))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("kastell_keys_provider_calls_total")
                && l.contains("provider=\"pkcs11\"")
                && l.contains("operation=\"wrap\"")
                && l.contains("outcome=\"ok\"")),
        "{metrics}"
    );

    // Nowhere on disk that the server uses or maps: not its data directory,
    // not its binary or libraries, not SoftHSM's token files (a private
    // object is stored encrypted under the PIN).
    let mut files = mapped_files(server.pid());
    files_under(&data, &mut files);
    files_under(&dir.path().join("hsm"), &mut files);
    assert!(
        files
            .iter()
            .any(|f| f.to_string_lossy().contains("softhsm")),
        "{files:?}"
    );
    for file in &files {
        let bytes = std::fs::read(file).unwrap_or_default();
        for form in key_forms(&known) {
            assert!(
                !contains(&bytes, &form),
                "the master key is in {}",
                file.display()
            );
        }
    }
    // Tenant keys are wrapped by the HSM, not by the local key.
    let (ok, masters) = kastell(&["keys", "masters"], &data, &env);
    assert!(ok);
    let hsm_section = masters.split("master hsm (active)").nth(1).unwrap();
    assert!(
        !hsm_section
            .split("\nmaster ")
            .next()
            .unwrap()
            .contains("keys wrapped: 0"),
        "{masters}"
    );
    server.stop();
}

#[test]
fn a_file_master_key_moves_into_the_hsm_through_a_kill_9_and_is_then_retired() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let hsm = Hsm::start(dir.path());
    let on_file = hsm.master("hsm", "master-1");
    // Before: everything wrapped by the local (file) master key.
    let server = Server::spawn(&data, &refs(&on_file));
    let sent = three_instances("8.1");
    assert_eq!(store(&server, "/studies", &sent).0, 200);
    server.stop();
    for tenant in ["t1", "t2", "t3", "t4", "t5", "t6"] {
        let (ok, out) = kastell(&["tenants", "add", tenant], &data, &on_file);
        assert!(ok, "{out}");
    }
    let (ok, out) = kastell(&["keys", "create-master", "hsm"], &data, &on_file);
    assert!(ok, "{out}");

    // The HSM becomes the active master; the rotation is killed after two keys.
    let mut into_hsm = on_file.clone();
    into_hsm.push(("KASTELL__KEYS__ACTIVE_MASTER".into(), "hsm".into()));
    let mut rotation = cli_command(&["keys", "rotate-master", "--rate", "4"], &data)
        .envs(into_hsm.iter().cloned())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(rotation.stdout.take().unwrap()).lines();
    for _ in 0..2 {
        let line = lines.next().unwrap().unwrap();
        assert!(line.starts_with("moved "), "{line}");
    }
    rotation.kill().unwrap();
    rotation.wait().unwrap();
    let (_, masters) = kastell(&["keys", "masters"], &data, &into_hsm);
    let wrapped = |name: &str| -> i64 {
        let section = masters.split(&format!("master {name}")).nth(1).unwrap();
        let line = section
            .lines()
            .find(|l| l.contains("keys wrapped:"))
            .unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let (on_hsm, left) = (wrapped("hsm (active)"), wrapped("local"));
    assert!(
        on_hsm >= 2 && left >= 1,
        "killed half-way: {on_hsm} moved, {left} left\n{masters}"
    );

    // Half-way, every key opens: the old data, new data, the audit trail.
    let server = Server::spawn(&data, &refs(&into_hsm));
    assert_all_readable(&server, "8.1", &sent);
    let more = three_instances("8.2");
    assert_eq!(store(&server, "/studies", &more).0, 200);
    server.stop();

    // Run again: it finishes what is left, and moves nothing twice.
    let (ok, out) = kastell(&["keys", "rotate-master"], &data, &into_hsm);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("{left} keys moved")),
        "{left} left: {out}"
    );
    assert!(out.contains("0 failed"), "{out}");
    let (ok, out) = kastell(&["keys", "rotate-master"], &data, &into_hsm);
    assert!(ok && out.contains("0 keys moved"), "{out}");

    // The file master wraps nothing now: it can be retired (no second
    // administrator exists, so no approval is asked), and is not usable again.
    let (ok, out) = kastell(&["keys", "retire-master", "hsm"], &data, &into_hsm);
    assert!(
        !ok && out.contains("active_master"),
        "the active master is not retired: {out}"
    );
    let (ok, out) = kastell(&["keys", "retire-master", "local"], &data, &into_hsm);
    assert!(ok, "{out}");
    let (ok, out) = kastell(&["keys", "masters"], &data, &into_hsm);
    assert!(ok && out.contains("master local (retired)"), "{out}");
    let (ok, out) = kastell(&["keys", "rotate-master"], &data, &on_file);
    assert!(!ok, "a retired master cannot become active again: {out}");

    // Without any local key the server reads everything through the HSM, and
    // the audit chain (its key moved too) verifies.
    let mut hsm_only = into_hsm.clone();
    hsm_only.push((
        "KASTELL__KEYS__ALLOW_DEVELOPMENT_KEY".into(),
        "false".into(),
    ));
    let server = Server::spawn(&data, &refs(&hsm_only));
    assert_all_readable(&server, "8.1", &sent);
    assert_all_readable(&server, "8.2", &more);
    server.stop();
    let (ok, out) = kastell(&["audit", "verify"], &data, &hsm_only);
    assert!(ok, "{out}");
    let (ok, out) = kastell(&["sovereignty", "report"], &data, &hsm_only);
    assert!(out.contains("Tenant keys"), "{ok} {out}");
    let t3 = out.split("tenant t3").nth(1).unwrap();
    assert!(
        t3.contains("master key:   hsm (pkcs11)") && t3.contains("extractable:  no"),
        "{t3}"
    );
}
