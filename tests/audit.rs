//! The audit trail from outside: key operations leave records, `kastell audit
//! verify` passes on an untouched trail and names the row an intruder edited
//! behind Kastell's back, an anchor catches removed newest rows, and both export
//! formats parse.

mod common;

use std::path::Path;

use common::*;
use diesel::connection::SimpleConnection;
use diesel::Connection;

struct Run {
    ok: bool,
    stdout: String,
    all: String,
}

fn kastell(args: &[&str], data_dir: &Path) -> Run {
    let output = cli_command(args, data_dir)
        .env("USER", "operator-7")
        .output()
        .expect("run kastell");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    Run {
        ok: output.status.success(),
        stdout,
        all,
    }
}

/// Runs SQL on the test's index database directly, append-only triggers out of
/// the way first: what someone with database access could do.
fn tamper(data_dir: &Path, sql: &str) {
    let args = index_args(data_dir);
    match args.get(1) {
        Some(url) => diesel::PgConnection::establish(url)
            .unwrap()
            .batch_execute(&format!(
                "ALTER TABLE audit_events DISABLE TRIGGER USER; {sql}"
            ))
            .unwrap(),
        None => {
            let path = data_dir.join("index.sqlite");
            diesel::SqliteConnection::establish(path.to_str().unwrap())
                .unwrap()
                .batch_execute(&format!(
                    "DROP TRIGGER IF EXISTS audit_events_no_update; \
                     DROP TRIGGER IF EXISTS audit_events_no_delete; {sql}"
                ))
                .unwrap()
        }
    }
}

/// The `SEQ:HASH` anchor `audit verify` printed.
fn anchor(verify_output: &str) -> String {
    verify_output
        .lines()
        .find_map(|l| l.strip_prefix("anchor: "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("an anchor line")
        .to_string()
}

#[test]
fn key_operations_are_audited_and_an_edited_row_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    let run = kastell(&["keys", "rotate", "--tenant", "default"], &data);
    assert!(run.ok, "{}", run.all);
    let run = kastell(
        &["keys", "retire", "--tenant", "default", "--version", "1"],
        &data,
    );
    assert!(run.ok, "{}", run.all);
    // A refused operation is audited too.
    let run = kastell(
        &["keys", "retire", "--tenant", "default", "--version", "9"],
        &data,
    );
    assert!(!run.ok, "{}", run.all);

    let run = kastell(&["audit", "verify"], &data);
    assert!(run.ok, "{}", run.all);
    assert!(run.stdout.contains("3 events, chain intact"), "{}", run.all);
    assert!(run.stdout.contains("head: seq 3 hash "), "{}", run.all);

    // FHIR on standard output.
    let run = kastell(
        &[
            "audit",
            "export",
            "--since",
            "2000-01-01",
            "--format",
            "fhir",
        ],
        &data,
    );
    assert!(run.ok, "{}", run.all);
    let bundle: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "collection");
    let entries = bundle["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    let outcomes: Vec<_> = entries
        .iter()
        .map(|e| e["resource"]["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, vec!["0", "0", "4"]);
    for entry in entries {
        let resource = &entry["resource"];
        assert_eq!(resource["resourceType"], "AuditEvent");
        assert_eq!(resource["type"]["code"], "110113");
        assert_eq!(resource["subtype"][0]["code"], "110129");
        assert_eq!(
            resource["agent"][0]["who"]["identifier"]["value"],
            "operator-7"
        );
        assert_eq!(resource["source"]["site"], "default");
    }

    // ATNA into a file; the previous export is in the trail now.
    let file = dir.path().join("audit.xml");
    let run = kastell(
        &[
            "audit",
            "export",
            "--since",
            "2000-01-01T00:00:00Z",
            "--format",
            "atna",
            "--output",
            file.to_str().unwrap(),
        ],
        &data,
    );
    assert!(run.ok, "{}", run.all);
    assert!(run.stdout.contains("4 audit events written"), "{}", run.all);
    let xml = std::fs::read_to_string(&file).unwrap();
    let mut reader = quick_xml::Reader::from_str(&xml);
    reader.config_mut().check_end_names = true;
    let (mut messages, mut depth) = (0, 0);
    loop {
        match reader.read_event().expect("well-formed XML") {
            quick_xml::events::Event::Start(e) => {
                depth += 1;
                if e.name().as_ref() == b"AuditMessage" {
                    messages += 1;
                }
            }
            quick_xml::events::Event::End(_) => depth -= 1,
            quick_xml::events::Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!((messages, depth), (4, 0));
    assert!(
        xml.contains("<EventID csd-code=\"110101\""),
        "the export is audited"
    );

    // Someone edits the first record behind Kastell's back.
    tamper(
        &data,
        "UPDATE audit_events SET actor = 'mallory' WHERE seq = 1",
    );
    let run = kastell(&["audit", "verify"], &data);
    assert!(!run.ok, "{}", run.all);
    assert!(run.stdout.contains("BROKEN"), "{}", run.all);
    assert!(run.stdout.contains("first at seq 1"), "{}", run.all);
    assert!(run.stdout.contains("seq 1: edited"), "{}", run.all);
    assert!(run.all.contains("broken at seq 1"), "{}", run.all);
}

#[test]
fn an_anchor_catches_the_removal_of_the_newest_rows() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for _ in 0..2 {
        let run = kastell(&["keys", "rotate", "--tenant", "default"], &data);
        assert!(run.ok, "{}", run.all);
    }
    let run = kastell(&["audit", "verify"], &data);
    assert!(run.ok, "{}", run.all);
    let anchor = anchor(&run.stdout);
    assert!(anchor.starts_with("2:"), "{anchor}");

    let run = kastell(&["audit", "verify", "--anchor", &anchor], &data);
    assert!(run.ok, "{}", run.all);

    // The newest record removed: still a valid chain, but not the anchored one.
    tamper(&data, "DELETE FROM audit_events WHERE seq = 2");
    let run = kastell(&["audit", "verify"], &data);
    assert!(run.ok, "{}", run.all);
    let run = kastell(&["audit", "verify", "--anchor", &anchor], &data);
    assert!(!run.ok, "{}", run.all);
    assert!(
        run.stdout.contains("seq 2: the anchored row is gone"),
        "{}",
        run.all
    );

    let run = kastell(&["audit", "verify", "--anchor", "nonsense"], &data);
    assert!(!run.ok);
    assert!(run.all.contains("SEQ:HASH"), "{}", run.all);
    let run = kastell(&["audit", "export", "--since", "last tuesday"], &data);
    assert!(!run.ok);
    assert!(run.all.contains("RFC 3339"), "{}", run.all);
}

/// Every tenant's key operations go to one trail, in the control index.
#[test]
fn other_tenants_are_audited_in_the_control_index() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = kastell(&["tenants", "add", "radiology"], &data);
    assert!(run.ok, "{}", run.all);
    let run = kastell(&["keys", "rotate", "--tenant", "radiology"], &data);
    assert!(run.ok, "{}", run.all);
    let run = kastell(&["keys", "rotate", "--tenant", "default"], &data);
    assert!(run.ok, "{}", run.all);
    let run = kastell(&["audit", "verify"], &data);
    assert!(run.stdout.contains("2 events, chain intact"), "{}", run.all);
    let run = kastell(
        &[
            "audit",
            "export",
            "--since",
            "2000-01-01",
            "--format",
            "fhir",
        ],
        &data,
    );
    assert!(run.ok, "{}", run.all);
    let bundle: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    let sites: Vec<_> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["source"]["site"].as_str().unwrap())
        .collect();
    assert_eq!(sites, vec!["radiology", "default"]);
}

/// The FHIR export as (action code, outcome, study UID) per recorded request.
fn exported(data_dir: &Path) -> serde_json::Value {
    let run = kastell(
        &[
            "audit",
            "export",
            "--since",
            "2000-01-01",
            "--format",
            "fhir",
        ],
        data_dir,
    );
    assert!(run.ok, "{}", run.all);
    serde_json::from_str(&run.stdout).unwrap()
}

#[test]
fn dicomweb_requests_and_refusals_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::spawn(&dir.path().join("data"), &[]);
    let file = dicom_file(&Spec::new("4.4", "4.4.1", "4.4.1.1"));
    assert_eq!(store(&server, "/studies", &[file]).0, 200);
    let get = |path: &str| {
        client()
            .get(server.url(path))
            .header("Accept", "application/dicom; transfer-syntax=*")
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    let searched = client()
        .get(server.url("/studies?PatientID=PID-1"))
        .send()
        .unwrap();
    assert_eq!(searched.status().as_u16(), 200);
    assert_eq!(get("/studies/4.4/series/4.4.1/instances/4.4.1.1"), 200);
    let refused = client()
        .get(server.url("/studies"))
        .header("Authorization", "Bearer not-a-token")
        .send()
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let deleted = client().delete(server.url("/studies/4.4")).send().unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    // A graceful stop writes what the audit writer still holds.
    let data = server.terminate();

    let verified = kastell(&["audit", "verify"], &data);
    assert!(verified.ok, "{}", verified.all);
    let bundle = exported(&data);
    let events = bundle["entry"].as_array().unwrap();
    let text = bundle.to_string();
    for needle in ["4.4.1.1", "4.4"] {
        assert!(text.contains(needle), "{needle} in the trail: {text}");
    }
    // store, search, retrieve, login failure, delete: each at least once.
    let subtypes: Vec<String> = events
        .iter()
        .map(|e| e["resource"]["subtype"].to_string())
        .collect();
    assert!(events.len() >= 5, "{} events: {subtypes:?}", events.len());
    let outcomes: Vec<&str> = events
        .iter()
        .filter_map(|e| e["resource"]["outcome"].as_str())
        .collect();
    assert!(outcomes.contains(&"0"), "successes recorded: {outcomes:?}");
    assert!(
        outcomes.iter().any(|o| *o != "0"),
        "the refused request is recorded as a failure: {outcomes:?}"
    );
    // The query's patient ID is not in the trail (only UIDs are).
    assert!(
        !text.contains("PID-1"),
        "no query values in the audit trail"
    );
}

/// The client addresses recorded in the trail, in order.
fn client_addresses(bundle: &serde_json::Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["resource"]["agent"][0]["network"]["address"].as_str())
        .map(String::from)
        .collect()
}

/// A search sent with forged forwarding headers.
fn search_claiming_to_be_forwarded(server: &Server) {
    let response = client()
        .get(server.url("/studies"))
        .header("X-Forwarded-For", "198.51.100.1, 203.0.113.77")
        .header("Forwarded", "for=203.0.113.78")
        .header("X-Real-IP", "203.0.113.79")
        .send()
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
}

#[test]
fn a_forged_forwarded_for_is_recorded_only_from_a_trusted_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // No trusted proxies (the default): the TCP peer is the client.
    let server = Server::spawn(&data, &[]);
    search_claiming_to_be_forwarded(&server);
    let data = server.terminate();
    let addresses = client_addresses(&exported(&data));
    assert_eq!(addresses, vec!["127.0.0.1"], "the peer, not the headers");

    // The loopback peer declared a trusted proxy: the right-most hop it did not
    // write itself is the client; the hop the client prepended is not believed.
    let server = Server::spawn(
        &data,
        &[("KASTELL__SERVER__TRUSTED_PROXIES", "[\"127.0.0.1\"]")],
    );
    search_claiming_to_be_forwarded(&server);
    let data = server.terminate();
    let bundle = exported(&data);
    let addresses = client_addresses(&bundle);
    assert_eq!(addresses.last().unwrap(), "203.0.113.77", "{addresses:?}");
    let text = bundle.to_string();
    for forged in ["198.51.100.1", "203.0.113.78", "203.0.113.79"] {
        assert!(!text.contains(forged), "{forged} is not in the trail");
    }
}

/// The FHIR resources of one action's records (by the DICOM event code).
fn with_event_code<'a>(bundle: &'a serde_json::Value, code: &str) -> Vec<&'a serde_json::Value> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["type"]["code"] == code)
        .collect()
}

#[test]
fn a_store_or_delete_answered_then_a_kill_9_leaves_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::spawn(&data, &[]);
    let file = dicom_file(&Spec::new("7.7", "7.7.1", "7.7.1.1"));
    assert_eq!(store(&server, "/studies", &[file]).0, 200);
    // No graceful stop: SIGKILL right after the answer.
    let data = server.stop();
    let verified = kastell(&["audit", "verify"], &data);
    assert!(verified.ok, "{}", verified.all);
    let bundle = exported(&data);
    // DICOM Instances Transferred (110104) with action C(reate) is the store.
    let stored: Vec<_> = with_event_code(&bundle, "110104")
        .into_iter()
        .filter(|r| r["action"] == "C")
        .collect();
    assert_eq!(stored.len(), 1, "{bundle}");
    assert!(stored[0].to_string().contains("7.7.1.1"), "{}", stored[0]);

    let server = Server::spawn(&data, &[]);
    let deleted = client().delete(server.url("/studies/7.7")).send().unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    let data = server.stop();
    let bundle = exported(&data);
    // DICOM Study Deleted (110105).
    let deletes = with_event_code(&bundle, "110105");
    assert_eq!(deletes.len(), 1, "{bundle}");
    assert!(deletes[0].to_string().contains("7.7"));
}

#[test]
fn a_flood_of_refusals_from_one_client_is_recorded_up_to_the_limit_then_counted() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::spawn(&dir.path().join("data"), &[]);
    for _ in 0..40 {
        let refused = client()
            .get(server.url("/studies"))
            .header("Authorization", "Bearer not-a-token")
            .send()
            .unwrap();
        assert_eq!(refused.status().as_u16(), 401);
    }
    // The aggregated record of the window still open is written at shutdown.
    let data = server.terminate();
    let verified = kastell(&["audit", "verify"], &data);
    assert!(verified.ok, "{}", verified.all);
    let bundle = exported(&data);
    // DICOM User Authentication (110114): the login failures.
    let failures = with_event_code(&bundle, "110114");
    assert_eq!(
        failures.len(),
        11,
        "10 one by one, then one count: {bundle}"
    );
    let last = failures[10]["outcomeDesc"].as_str().unwrap();
    assert!(
        last.contains("30 more login-failure records of this client suppressed"),
        "{last}"
    );
}

#[test]
fn wado_uri_and_wado_rs_record_the_decoded_uids_they_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::spawn(&dir.path().join("data"), &[]);
    let file = dicom_file(&Spec::new("8.8", "8.8.1", "8.8.1.1"));
    assert_eq!(store(&server, "/studies", &[file]).0, 200);
    let url = format!(
        "http://127.0.0.1:{}/wado?requestType=WADO&studyUID=8%2E8&seriesUID=8.8%2E1\
         &objectUID=8%2E8%2E1%2E1&contentType=application%2Fdicom",
        server.port
    );
    let response = client().get(url).send().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    // WADO-RS: the path's UIDs as the router decoded them.
    let metadata = client()
        .get(server.url("/studies/8%2E8/series/8.8.1/instances/8.8.1%2E1/metadata"))
        .send()
        .unwrap();
    assert_eq!(metadata.status().as_u16(), 200);
    let data = server.terminate();
    let bundle = exported(&data);
    // DICOM Instances Transferred with action R(ead): the retrieve.
    let reads: Vec<String> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["action"] == "R" && r.get("entity").is_some())
        .map(|r| r["entity"].to_string())
        .collect();
    assert_eq!(reads.len(), 2, "{bundle}");
    for read in &reads {
        for uid in ["urn:oid:8.8\"", "\"8.8.1\"", "\"8.8.1.1\""] {
            assert!(read.contains(uid), "{uid} in {read}");
        }
    }
    assert!(!bundle.to_string().contains("%2E"), "decoded: {bundle}");
}
