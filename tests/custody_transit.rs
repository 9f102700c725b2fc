//! Key custody with a remote KMS (issue 16), end to end against the real binary
//! and the loopback Transit server of `common/transit.rs`: tenant keys and the
//! audit chain key are wrapped by the KMS (the operator's key, and a hospital's
//! own key for its tenant), a warm cache asks the KMS nothing, an outage is
//! bridged for keys held and fails closed (503 + Retry-After) for the others, and
//! a tenant deleting or denying its own key makes only its data unreadable (410).

mod common;

use std::time::Duration;

use common::transit::TransitServer;
use common::*;

const TOKEN: &str = "hvs.kastell-custody-test";
/// The variable `token_env` names; the server and the CLI read the token from it.
const TOKEN_VAR: &str = "KASTELL_TEST_TRANSIT_TOKEN";
/// The error texts (in an HTML status report, where the apostrophe is escaped).
const UNAVAILABLE: &str = "key-encryption key (HSM or KMS) is unavailable; retry later";
const REVOKED: &str = "key-encryption key was revoked or destroyed by its holder";

/// The environment of a server and its CLI: master `kms` (Transit key
/// `operator`) is the active one; each `(tenant, master)` of `byok` gets a master
/// of its own (the Transit key of the master's name), held by the tenant.
fn custody_env(kms: &TransitServer, ttl_secs: u64, byok: &[(&str, &str)]) -> Vec<(String, String)> {
    let master = |name: &str, key: &str| {
        let prefix = format!("KASTELL__KEYS__MASTERS__{}", name.to_uppercase());
        vec![
            (
                format!("{prefix}__URL"),
                format!("transit+{}/keys/{key}", kms.url()),
            ),
            (format!("{prefix}__TOKEN_ENV"), TOKEN_VAR.to_string()),
            (format!("{prefix}__TIMEOUT_SECS"), "2".to_string()),
        ]
    };
    let mut env = master("kms", "operator");
    env.push(("KASTELL__KEYS__ACTIVE_MASTER".into(), "kms".into()));
    env.push((
        "KASTELL__KEYS__CACHE__TTL_SECS".into(),
        ttl_secs.to_string(),
    ));
    env.push((TOKEN_VAR.into(), TOKEN.into()));
    for (tenant, name) in byok {
        env.extend(master(name, name));
        let (tenant_var, name_var) = (tenant.to_uppercase(), name.to_uppercase());
        env.push((
            format!("KASTELL__KEYS__TENANT_MASTERS__{tenant_var}"),
            name.to_string(),
        ));
        env.push((
            format!("KASTELL__KEYS__MASTERS__{name_var}__HELD_BY"),
            tenant.to_string(),
        ));
    }
    env
}

fn refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Runs the CLI on `data` with the custody environment; fails the test if it fails.
fn kastell(args: &[&str], data: &std::path::Path, env: &[(String, String)]) -> String {
    let (ok, text) = cli_with(args, data, env);
    assert!(ok, "kastell {args:?}: {text}");
    text
}

/// The DICOMweb base of `tenant` (`None`: the default tenant).
fn base(server: &Server, tenant: Option<&str>) -> String {
    match tenant {
        Some(t) => format!("http://127.0.0.1:{}/tenants/{t}/dicomweb", server.port),
        None => server.url(""),
    }
}

struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

fn answer(response: reqwest::blocking::Response) -> Answer {
    Answer {
        status: response.status().as_u16(),
        retry_after: response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string()),
        body: response.bytes().unwrap().to_vec(),
    }
}

/// Stores `spec` into `tenant`; the file stored and the answer.
fn stow(server: &Server, tenant: Option<&str>, spec: &Spec) -> (Vec<u8>, Answer) {
    let file = dicom_file(spec);
    let (content_type, body) = multipart(std::slice::from_ref(&file));
    let response = client()
        .post(format!("{}/studies", base(server, tenant)))
        .header("Content-Type", content_type)
        .header("Accept", "application/dicom+json")
        .body(body)
        .send()
        .unwrap();
    (file, answer(response))
}

/// Retrieves the instance of `spec` from `tenant` as `application/dicom`.
fn fetch(server: &Server, tenant: Option<&str>, spec: &Spec) -> Answer {
    let path = format!(
        "/studies/{}/series/{}/instances/{}",
        spec.study, spec.series, spec.instance
    );
    let response = client()
        .get(format!("{}{path}", base(server, tenant)))
        .header("Accept", "application/dicom; transfer-syntax=*")
        .send()
        .unwrap();
    answer(response)
}

fn assert_reads(server: &Server, tenant: Option<&str>, spec: &Spec, file: &[u8]) {
    let got = fetch(server, tenant, spec);
    assert_eq!(got.status, 200, "{tenant:?}: {}", got.text());
    assert!(got.body == file, "{tenant:?}: the bytes stored come back");
}

/// The sum of `kastell_keys_provider_calls_total` samples with these labels.
fn provider_calls(server: &Server, master: &str, operation: &str, outcome: &str) -> f64 {
    let url = format!("http://127.0.0.1:{}/metrics", server.port);
    let text = client().get(url).send().unwrap().text().unwrap();
    let wanted = [
        format!("master=\"{master}\""),
        "provider=\"transit\"".to_string(),
        format!("operation=\"{operation}\""),
        format!("outcome=\"{outcome}\""),
    ];
    text.lines()
        .filter(|l| l.starts_with("kastell_keys_provider_calls_total{"))
        .filter(|l| wanted.iter().all(|w| l.contains(w.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn healthy(server: &Server) -> bool {
    let url = format!("http://127.0.0.1:{}/healthz", server.port);
    client().get(url).send().is_ok_and(|r| r.status() == 200)
}

#[test]
fn a_transit_kms_wraps_every_key_and_a_warm_cache_asks_it_nothing() {
    let kms = TransitServer::start(TOKEN, &["operator", "hospital"]);
    let env = custody_env(&kms, 900, &[("clinic", "hospital")]);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    kastell(&["tenants", "add", "clinic"], &data, &env);
    assert_eq!(
        kms.encrypt_calls(),
        1,
        "the clinic's key, by its own KMS key"
    );
    let server = Server::spawn(&data, &refs(&env));

    let ours = Spec::new("16.1", "16.1.1", "16.1.1.1");
    let mut theirs = Spec::new("16.1", "16.1.1", "16.1.1.1");
    theirs.patient_name = "Clinic^Patient".into();
    let (our_file, stored) = stow(&server, None, &ours);
    assert_eq!(stored.status, 200, "{}", stored.text());
    let (their_file, stored) = stow(&server, Some("clinic"), &theirs);
    assert_eq!(stored.status, 200, "{}", stored.text());
    assert_reads(&server, None, &ours, &our_file);
    assert_reads(&server, Some("clinic"), &theirs, &their_file);

    // The default tenant's key and the audit chain key, by the operator's KMS key.
    assert!(kms.encrypt_calls() >= 3, "{} wraps", kms.encrypt_calls());
    let decrypts = kms.decrypt_calls();
    assert!(decrypts >= 2, "both tenant keys unwrapped by the KMS");
    // Warm: the KMS is not asked again, even past the 5 s after which the
    // database rows are read again.
    for round in 0..5 {
        if round == 3 {
            std::thread::sleep(Duration::from_secs(6));
        }
        assert_reads(&server, None, &ours, &our_file);
        assert_reads(&server, Some("clinic"), &theirs, &their_file);
    }
    assert_eq!(kms.decrypt_calls(), decrypts, "a warm cache asks nothing");
    assert!(provider_calls(&server, "kms", "unwrap", "ok") >= 1.0);
    assert!(provider_calls(&server, "hospital", "unwrap", "ok") >= 1.0);
    assert!(provider_calls(&server, "kms", "wrap", "ok") >= 2.0);

    let out = kastell(&["keys", "masters"], &data, &env);
    let block = |name: &str| {
        let start = out
            .find(&format!("master {name}"))
            .unwrap_or_else(|| panic!("{out}"));
        let rest = &out[start + 1..];
        out[start..start + 1 + rest.find("\nmaster ").unwrap_or(rest.len())].to_string()
    };
    let (operator, hospital) = (block("kms"), block("hospital"));
    assert!(
        operator.starts_with("master kms (active): Transit key \"operator\""),
        "{out}"
    );
    assert!(operator.contains(&format!(":{}", kms.port())), "{out}");
    assert!(operator.contains("extractable: no"), "{out}");
    // The default tenant's key and the audit chain key.
    assert!(operator.contains("keys wrapped: 2"), "{out}");
    assert!(hospital.contains("Transit key \"hospital\""), "{out}");
    assert!(hospital.contains("keys wrapped: 1"), "{out}");
    assert!(hospital.contains("held for tenants: clinic"), "{out}");
    assert!(!out.contains(TOKEN), "the token is never printed: {out}");
}

#[test]
fn a_kms_outage_is_bridged_for_held_keys_and_fails_closed_for_others() {
    let kms = TransitServer::start(TOKEN, &["operator"]);
    let env = custody_env(&kms, 20, &[]);
    let server = Server::start_with(&refs(&env));
    let spec = Spec::new("16.2", "16.2.1", "16.2.1.1");
    let (file, stored) = stow(&server, None, &spec);
    assert_eq!(stored.status, 200, "{}", stored.text());
    assert_reads(&server, None, &spec, &file);
    // A tenant registered while the server runs, whose key it never unwrapped.
    kastell(&["tenants", "add", "late"], &server.data_dir, &env);

    kms.stop();
    // The default tenant's key is held: it is served, and once half the TTL has
    // passed the KMS is asked again, fails, and the held key is still used.
    wait_until("the KMS is asked during the outage", || {
        assert_reads(&server, None, &spec, &file);
        std::thread::sleep(Duration::from_millis(200));
        provider_calls(&server, "kms", "unwrap", "unavailable") >= 1.0
    });
    assert_reads(&server, None, &spec, &file);

    // The new tenant's key cannot be unwrapped: closed, nothing stored.
    let late = Spec::new("16.3", "16.3.1", "16.3.1.1");
    let (late_file, refused) = stow(&server, Some("late"), &late);
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.retry_after.is_some(), "503 without Retry-After");
    assert!(refused.text().contains(UNAVAILABLE), "{}", refused.text());
    // The held active key still writes.
    let during = Spec::new("16.4", "16.4.1", "16.4.1.1");
    let (during_file, stored) = stow(&server, None, &during);
    assert_eq!(stored.status, 200, "{}", stored.text());
    assert_reads(&server, None, &during, &during_file);
    assert!(healthy(&server), "a KMS outage does not stop the server");

    // The bridge is bounded: past the TTL the held key is dropped too.
    wait_until("the held key's TTL ends", || {
        std::thread::sleep(Duration::from_millis(200));
        let got = fetch(&server, None, &spec);
        assert!([200, 503].contains(&got.status), "{}", got.text());
        got.status == 503 && got.text().contains(UNAVAILABLE) && got.retry_after.is_some()
    });
    assert!(healthy(&server));

    kms.resume();
    let stored = poll(Duration::from_secs(30), || {
        let (_, answer) = stow(&server, Some("late"), &late);
        (answer.status == 200).then_some(answer)
    });
    assert!(
        stored.is_some(),
        "the late tenant stores once the KMS is back"
    );
    assert_reads(&server, Some("late"), &late, &late_file);
    wait_until("the default tenant reads again", || {
        fetch(&server, None, &spec).status == 200
    });
    assert_reads(&server, None, &spec, &file);
    assert_reads(&server, None, &during, &during_file);
    assert!(provider_calls(&server, "kms", "unwrap", "ok") >= 2.0);
}

#[test]
fn a_tenant_revoking_its_own_kms_key_makes_its_data_unreadable_and_no_one_elses() {
    let kms = TransitServer::start(TOKEN, &["operator", "hospital", "ward"]);
    let env = custody_env(&kms, 10, &[("clinic", "hospital"), ("ward", "ward")]);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    kastell(&["tenants", "add", "clinic"], &data, &env);
    kastell(&["tenants", "add", "ward"], &data, &env);
    let server = Server::spawn(&data, &refs(&env));
    let spec = Spec::new("16.5", "16.5.1", "16.5.1.1");
    let mut files = Vec::new();
    for tenant in [None, Some("clinic"), Some("ward")] {
        let (file, stored) = stow(&server, tenant, &spec);
        assert_eq!(stored.status, 200, "{tenant:?}: {}", stored.text());
        assert_reads(&server, tenant, &spec, &file);
        files.push(file);
    }

    // The clinic destroys its key; the ward takes the archive's access away.
    kms.delete_key("hospital");
    kms.deny("ward", true);
    let revoked = |tenant: &str| {
        let got = fetch(&server, Some(tenant), &spec);
        assert!([200, 410].contains(&got.status), "{tenant}: {}", got.text());
        got.status == 410 && got.text().contains(REVOKED)
    };
    wait_until("both revocations are felt", || {
        assert_reads(&server, None, &spec, &files[0]);
        std::thread::sleep(Duration::from_millis(200));
        revoked("clinic") & revoked("ward")
    });
    // Nothing is written under a revoked key either.
    let new = Spec::new("16.6", "16.6.1", "16.6.1.1");
    let (_, refused) = stow(&server, Some("clinic"), &new);
    assert_eq!(refused.status, 410, "{}", refused.text());
    assert!(refused.text().contains(REVOKED), "{}", refused.text());
    assert_ne!(fetch(&server, Some("clinic"), &new).status, 200);
    assert!(provider_calls(&server, "hospital", "unwrap", "revoked") >= 1.0);
    assert!(provider_calls(&server, "ward", "unwrap", "revoked") >= 1.0);
    assert_reads(&server, None, &spec, &files[0]);
    assert!(healthy(&server));

    // Access given back: the ward's data reads again; destroyed stays destroyed.
    kms.deny("ward", false);
    wait_until("the ward reads again", || {
        std::thread::sleep(Duration::from_millis(200));
        fetch(&server, Some("ward"), &spec).status == 200
    });
    assert_reads(&server, Some("ward"), &spec, &files[2]);
    assert!(revoked("clinic"));
    assert_reads(&server, None, &spec, &files[0]);
}
