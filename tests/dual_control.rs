//! Dual control of destructive key operations (`kastell keys shred`,
//! `kastell keys retire-master`): with two administrators (API keys with `admin`)
//! neither can shred a tenant or retire a master key alone — the first files a
//! request, which only a different administrator can approve, within the window
//! (`keys approve`); no key or a non-administrator's key is refused — and filing,
//! approval and refusals are in the audit trail under the API key's identity.
//! With one administrator, or `keys.dual_control.mode = never`, shredding goes
//! ahead at once; a tenant's own `always` overrides `never`.

mod common;

use std::path::Path;

use common::*;

/// Runs `kastell` with extra environment (never an inherited admin key); returns
/// success and stdout + stderr.
fn run(args: &[&str], data: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let output = cli_command(args, data)
        .env_remove("KASTELL_ADMIN_KEY")
        .envs(env.iter().copied())
        .output()
        .expect("run kastell");
    let out = String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
    (output.status.success(), out.into_owned())
}

/// Runs `kastell`, which must succeed; returns its output.
fn done(args: &[&str], data: &Path, env: &[(&str, &str)]) -> String {
    let (ok, out) = run(args, data, env);
    assert!(ok, "{args:?} failed: {out}");
    out
}

/// Runs `kastell`, which must fail saying `reason`.
fn refused(args: &[&str], data: &Path, env: &[(&str, &str)], reason: &str) {
    let (ok, out) = run(args, data, env);
    assert!(
        !ok && out.contains(reason),
        "{args:?}: expected a refusal with {reason:?}: {out}"
    );
}

/// Asserts that `out` holds `text`.
fn has(out: &str, text: &str) {
    assert!(out.contains(text), "expected {text:?} in: {out}");
}

/// Asserts that `out` does not hold `text`.
fn lacks(out: &str, text: &str) {
    assert!(!out.contains(text), "unexpected {text:?} in: {out}");
}

fn admin(key: &str) -> (&str, &str) {
    ("KASTELL_ADMIN_KEY", key)
}

/// Makes an API key; returns the key (printed once on stdout) and the identity
/// the audit trail names it by (`apikey:<id>:<name>`).
fn api_key(data: &Path, tenant: &str, name: &str, permissions: &str) -> (String, String) {
    let args = ["apikeys", "add", "--tenant", tenant, "--name", name];
    let output = cli_command(&args, data)
        .args(["--permissions", permissions])
        .output()
        .expect("run kastell");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let key = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(!key.is_empty() && !key.contains('\n'), "one key: {key:?}");
    let id = stderr
        .split("API key ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next());
    (key, format!("apikey:{}:{name}", id.expect("the key's id")))
}

/// The request number in `request <N> filed: …`.
fn filed_request(out: &str) -> String {
    out.lines()
        .find_map(|line| line.strip_prefix("request ")?.split_once(" filed:"))
        .map(|(n, _)| n.to_string())
        .unwrap_or_else(|| panic!("no request filed: {out}"))
}

/// A DICOMweb URL of `tenant` (the default tenant at `/dicomweb`).
fn tenant_url(server: &Server, tenant: &str, path: &str) -> String {
    let port = server.port;
    match tenant {
        "default" => server.url(path),
        _ => format!("http://127.0.0.1:{port}/tenants/{tenant}/dicomweb{path}"),
    }
}

/// An instance stored into a tenant: study `uid`, series `uid.1`, instance `uid.1.1`.
struct Stored {
    tenant: &'static str,
    path: String,
    file: Vec<u8>,
}

impl Stored {
    /// Stores it through a server of its own.
    fn new(data: &Path, tenant: &'static str, uid: &str) -> Self {
        let server = Server::spawn(data, &[]);
        let (series, instance) = (format!("{uid}.1"), format!("{uid}.1.1"));
        let file = dicom_file(&Spec::new(uid, &series, &instance));
        let (content_type, body) = multipart(std::slice::from_ref(&file));
        let response = client()
            .post(tenant_url(&server, tenant, "/studies"))
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "store into {tenant}");
        let path = format!("/studies/{uid}/series/{series}/instances/{instance}");
        let stored = Stored { tenant, path, file };
        assert_eq!(stored.status(&server), 200);
        stored
    }

    /// Status of its WADO-RS retrieval; a 200 must give the bytes stored.
    fn status(&self, server: &Server) -> u16 {
        let response = client()
            .get(tenant_url(server, self.tenant, &self.path))
            .header("Accept", "application/dicom; transfer-syntax=*")
            .send()
            .unwrap();
        let status = response.status().as_u16();
        if status == 200 {
            assert!(response.bytes().unwrap() == self.file, "the same bytes");
        }
        status
    }
}

/// The key operations (FHIR subtype Security Configuration) of the audit trail.
struct Trail(Vec<serde_json::Value>);

impl Trail {
    fn read(data: &Path, env: &[(&str, &str)]) -> Self {
        let events = audit_events(data, env)
            .into_iter()
            .map(|e| e["resource"].clone());
        Trail(
            events
                .filter(|r| r["subtype"][0]["code"] == "110129")
                .collect(),
        )
    }

    /// Asserts that exactly one event by `actor` (`*`: anyone) holds `text` in its
    /// description, with `outcome` ("0" success, "4" refused).
    fn one(&self, actor: &str, text: &str, outcome: &str) {
        let by = |r: &serde_json::Value| {
            actor == "*" || r["agent"][0]["who"]["identifier"]["value"] == actor
        };
        let says =
            |r: &serde_json::Value| r["outcomeDesc"].as_str().is_some_and(|d| d.contains(text));
        let found: Vec<_> = self.0.iter().filter(|r| by(r) && says(r)).collect();
        assert_eq!(found.len(), 1, "{actor} {text:?} in {:#?}", self.0);
        assert_eq!(found[0]["outcome"], outcome, "{:#}", found[0]);
    }
}

#[test]
fn one_administrator_alone_cannot_shred_a_tenant_and_two_can() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    done(&["tenants", "add", "radiology"], &data, &[]);
    let one = Stored::new(&data, "radiology", "16.1");
    let (alice, alice_id) = api_key(&data, "*", "alice", "admin");
    let (bob, bob_id) = api_key(&data, "*", "bob", "admin");
    let (carol, _) = api_key(&data, "radiology", "carol", "read,write,delete");
    let alice_file = dir.path().join("alice.key");
    std::fs::write(&alice_file, format!("{alice}\n")).unwrap();
    let as_alice = ["--admin-key-file", alice_file.to_str().unwrap()];
    let shred = ["keys", "shred", "--tenant", "radiology", "--yes"];

    // Two administrators (mode auto): nobody shreds alone, nor anonymously.
    refused(&shred, &data, &[], "dual control");
    refused(&shred, &data, &[admin(&carol)], "admin permission");
    let out = done(&[&shred[..], &as_alice].concat(), &data, &[]);
    has(
        &out,
        "needs a second administrator's approval within 86400 s",
    );
    lacks(&out, "shredded");
    let request = filed_request(&out);
    let listed = format!("request {request}: shred-tenant radiology filed by {alice_id}");
    has(&done(&["keys", "requests"], &data, &[]), &listed);

    // The filer cannot approve her own request, nor can a non-administrator.
    let approve = ["keys", "approve", &request];
    let own = "needs a different administrator's approval";
    refused(&[&approve[..], &as_alice].concat(), &data, &[], own);
    refused(&approve, &data, &[admin(&carol)], "admin permission");
    let server = Server::spawn(&data, &[]);
    assert_eq!(one.status(&server), 200, "still intact");
    server.stop();

    // A second administrator approves: the tenant is shredded, once. An erasure:
    // a host that breaks the jurisdiction policy does not hold it back.
    let out_of_policy = [
        admin(&bob),
        ("KASTELL__SOVEREIGNTY__PERSONAL_DATA_COUNTRIES", "[DE]"),
        ("KASTELL__SERVER__LOCATION__COUNTRY", "US"),
    ];
    let out = done(&approve, &data, &out_of_policy);
    let approved = format!("request {request} approved by {bob_id}: tenant radiology shredded");
    has(&out, &approved);
    has(&out, "1 studies (1 instances) erased");
    refused(&approve, &data, &[admin(&bob)], "approved already");
    lacks(&done(&["keys", "requests"], &data, &[]), &listed);
    let server = Server::spawn(&data, &[]);
    assert_eq!(one.status(&server), 410);
    server.stop();

    // The trail names who filed, who was refused and who approved.
    let trail = Trail::read(&data, &[]);
    trail.one(&alice_id, "to shred-tenant radiology filed", "0");
    trail.one(&alice_id, own, "4");
    let approval = format!("(shred-tenant radiology, filed by {alice_id}) approved");
    trail.one(&bob_id, &approval, "0");
    trail.one(&bob_id, "approved already", "4");
    trail.one("*", "every key version destroyed; 1 studies", "0");
}

#[test]
fn an_expired_request_cannot_be_approved() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let window = ("KASTELL__KEYS__DUAL_CONTROL__WINDOW_SECS", "2");
    let one = Stored::new(&data, "default", "16.2");
    let (alice, _) = api_key(&data, "*", "alice", "admin");
    // An administrator of this tenant alone may approve its shredding.
    let (bob, bob_id) = api_key(&data, "default", "bob", "admin");

    let shred = ["keys", "shred", "--tenant", "default", "--yes"];
    let out = done(&shred, &data, &[window, admin(&alice)]);
    has(&out, "approval within 2 s");
    let request = filed_request(&out);
    let pending = format!("request {request}: shred-tenant default");
    has(&done(&["keys", "requests"], &data, &[window]), &pending);
    std::thread::sleep(std::time::Duration::from_secs(3));

    lacks(&done(&["keys", "requests"], &data, &[window]), &pending);
    let approve = ["keys", "approve", &request];
    refused(&approve, &data, &[window, admin(&bob)], "expired");
    Trail::read(&data, &[window]).one(&bob_id, "expired", "4");
    let server = Server::spawn(&data, &[]);
    assert_eq!(one.status(&server), 200, "the tenant is intact");
}

#[test]
fn with_one_administrator_or_dual_control_off_shredding_needs_no_second_approval() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    done(&["tenants", "add", "radiology"], &data, &[]);
    let default = Stored::new(&data, "default", "16.3");
    let radiology = Stored::new(&data, "radiology", "16.4");

    // One administrator (mode auto): no second approval, no key asked for.
    api_key(&data, "*", "alice", "admin");
    let shred_radiology = ["keys", "shred", "--tenant", "radiology", "--yes"];
    let out = done(&shred_radiology, &data, &[]);
    has(&out, "every key destroyed");
    lacks(&out, "filed");

    // A second one turns it on; `never` turns it off, unless the tenant's own
    // setting says `always`.
    api_key(&data, "*", "bob", "admin");
    let shred = ["keys", "shred", "--tenant", "default", "--yes"];
    refused(&shred, &data, &[], "dual control");
    let never = ("KASTELL__KEYS__DUAL_CONTROL__MODE", "never");
    let tenant_always = ("KASTELL__KEYS__DUAL_CONTROL__TENANTS__DEFAULT", "always");
    refused(&shred, &data, &[never, tenant_always], "dual control");
    let server = Server::spawn(&data, &[]);
    assert_eq!(default.status(&server), 200);
    assert_eq!(radiology.status(&server), 410);
    server.stop();
    let out = done(&shred, &data, &[never]);
    has(&out, "every key destroyed");
    lacks(&out, "filed");

    let server = Server::spawn(&data, &[]);
    assert_eq!(default.status(&server), 410);
    assert_eq!(radiology.status(&server), 410);
}

#[test]
fn retiring_a_master_key_needs_two_administrators() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let old_url = format!("file:{}", dir.path().join("old.key").display());
    let old = ("KASTELL__KEYS__MASTERS__OLD__URL", old_url.as_str());
    // About the local master being active, also where the suite runs with an
    // HSM as the active master (tests/run-all.sh).
    let pin = ("KASTELL__KEYS__ACTIVE_MASTER", "local");
    let out = done(&["keys", "create-master", "old"], &data, &[pin, old]);
    has(&out, "a new key file");
    // A tenant key wrapped by the active master `local`; nothing uses `old`.
    done(
        &["keys", "rotate", "--tenant", "default"],
        &data,
        &[pin, old],
    );
    let (alice, alice_id) = api_key(&data, "*", "alice", "admin");
    let (bob, bob_id) = api_key(&data, "*", "bob", "admin");
    // A tenant's administrator is no administrator of the master keys.
    let (carol, _) = api_key(&data, "default", "carol", "admin");

    let local = ["keys", "retire-master", "local"];
    refused(
        &local,
        &data,
        &[pin, old, admin(&alice)],
        "keys.active_master",
    );
    let retire = ["keys", "retire-master", "old"];
    refused(&retire, &data, &[pin, old], "dual control");
    refused(
        &retire,
        &data,
        &[pin, old, admin(&carol)],
        "admin permission",
    );
    let out = done(&retire, &data, &[pin, old, admin(&alice)]);
    has(&out, "retiring master key old needs a second administrator");
    let request = filed_request(&out);
    let out = done(&["keys", "masters"], &data, &[pin, old]);
    has(&out, "master old:");
    lacks(&out, "(retired)");

    let approve = ["keys", "approve", &request];
    let own = "needs a different administrator's approval";
    refused(&approve, &data, &[pin, old, admin(&alice)], own);
    refused(
        &approve,
        &data,
        &[pin, old, admin(&carol)],
        "admin permission",
    );
    let out = done(&approve, &data, &[pin, old, admin(&bob)]);
    let approved = format!("request {request} approved by {bob_id}: master key old retired");
    has(&out, &approved);
    let out = done(&["keys", "masters"], &data, &[pin, old]);
    has(&out, "master old (retired)");
    has(&out, "master local (active):");

    let trail = Trail::read(&data, &[pin, old]);
    trail.one(&alice_id, "to retire-master old filed", "0");
    trail.one(&alice_id, own, "4");
    trail.one(&bob_id, "(retire-master old, filed by", "0");
    // The retirement itself names its approver too.
    trail.one(&bob_id, "master key old retired", "0");
}
