//! Retention and legal holds through the binary (issue 15): DELETE before a
//! study's keep-until day is refused with 409 and nothing is lost; a release
//! with a stated reason (audited) lets it go; the lifecycle clock
//! (`lifecycle.now`) moves time instead of sleeping; legal holds on a study or a
//! patient block deletion whatever the retention, until lifted; shredding a
//! tenant's keys is refused while any of its studies is protected; the dry run
//! and the erasure of expired studies; rules by modality from a TOML file.

mod common;

use std::path::Path;

use common::*;
use reqwest::Method;

fn delete(server: &Server, path: &str) -> (u16, String) {
    let response = client()
        .request(Method::DELETE, server.url(path))
        .send()
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().unwrap_or_default())
}

fn get_status(server: &Server, path: &str) -> u16 {
    client()
        .get(server.url(path))
        .send()
        .unwrap()
        .status()
        .as_u16()
}

fn store_study(server: &Server, study: &str, patient: &str, modality: &str) {
    let mut spec = Spec::new(study, &format!("{study}.1"), &format!("{study}.1.1"));
    spec.patient_id = patient.into();
    spec.modality = modality.into();
    assert_eq!(store(server, "/studies", &[dicom_file(&spec)]).0, 200);
}

fn lifecycle(data: &Path, args: &[&str]) -> (bool, String) {
    lifecycle_with(data, &[], args)
}

/// `kastell lifecycle …` with extra environment; stdout and stderr together.
fn lifecycle_with(data: &Path, env: &[(&str, &str)], args: &[&str]) -> (bool, String) {
    let (ok, stdout, stderr) = run(data, env, args);
    (ok, format!("{stdout}{stderr}"))
}

/// The JSON a `kastell lifecycle … --format json` printed on standard output.
fn lifecycle_json(data: &Path, env: &[(&str, &str)], args: &[&str]) -> serde_json::Value {
    let (ok, stdout, stderr) = run(data, env, args);
    assert!(ok, "{stdout}{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn run(data: &Path, env: &[(&str, &str)], args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["lifecycle"];
    all.extend_from_slice(args);
    let output = cli_command(&all, data)
        .envs(env.iter().copied())
        .output()
        .expect("run kastell");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The FHIR export of the audit trail.
fn audit_entries(data: &Path) -> Vec<serde_json::Value> {
    audit_events(data, &[])
}

fn audited(data: &Path, needle: &str) -> bool {
    audit_entries(data).iter().any(|entry| {
        entry["resource"]["outcomeDesc"]
            .as_str()
            .is_some_and(|d| d.contains(needle))
    })
}

#[test]
fn retention_refuses_early_deletion_until_released() {
    let ten_years = [("KASTELL__LIFECYCLE__RETENTION__DEFAULT_YEARS", "10")];
    let server = Server::start_with(&ten_years);
    store_study(&server, "21.1", "PID-A", "CT");

    let (status, body) = delete(&server, "/studies/21.1");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("under retention until"), "{body}");
    assert!(body.contains("default"), "{body}");
    // Part of the study is refused too; nothing was deleted.
    let (status, _) = delete(&server, "/studies/21.1/series/21.1.1/instances/21.1.1.1");
    assert_eq!(status, 409);
    assert_eq!(
        get_status(&server, "/studies/21.1/series/21.1.1/instances/21.1.1.1"),
        200
    );

    // The report (under the same configuration) says why and until when.
    let report = lifecycle_json(
        &server.data_dir,
        &ten_years,
        &["retention", "--study", "21.1", "--format", "json"],
    );
    assert_eq!(report[0]["rule"], "default");
    assert_eq!(report[0]["deletable"], false);
    assert_eq!(report[0]["expired"], false);

    // A release needs a reason; with one, it is audited and DELETE succeeds.
    let (ok, out) = lifecycle(
        &server.data_dir,
        &["release", "--study", "21.1", "--reason", " "],
    );
    assert!(!ok, "{out}");
    let (ok, out) = lifecycle(
        &server.data_dir,
        &[
            "release",
            "--study",
            "21.1",
            "--reason",
            "duplicate of 21.2, ticket 4711",
        ],
    );
    assert!(ok, "{out}");
    assert!(audited(&server.data_dir, "duplicate of 21.2, ticket 4711"));
    let (ok, out) = lifecycle(
        &server.data_dir,
        &["release", "--study", "9.9.9", "--reason", "no such study"],
    );
    assert!(!ok, "{out}");
    assert_eq!(delete(&server, "/studies/21.1").0, 204);
    assert_eq!(get_status(&server, "/studies/21.1/metadata"), 410);
}

#[test]
fn the_lifecycle_clock_lets_expired_studies_go() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::spawn(
        &data,
        &[("KASTELL__LIFECYCLE__RETENTION__DEFAULT_YEARS", "10")],
    );
    store_study(&server, "22.1", "PID-A", "CT");
    store_study(&server, "22.2", "PID-B", "CT");
    assert_eq!(delete(&server, "/studies/22.1").0, 409);
    drop(server.terminate());

    // Eleven years on: both have expired; a hold keeps one.
    let later = [
        ("KASTELL__LIFECYCLE__RETENTION__DEFAULT_YEARS", "10"),
        ("KASTELL__LIFECYCLE__NOW", "2099-01-01"),
    ];
    let with_clock = |args: &[&str]| lifecycle_with(&data, &later, args);
    let (ok, out) = with_clock(&["hold", "--study", "22.2", "--reason", "litigation 2098-17"]);
    assert!(ok, "{out}");
    let expired = lifecycle_json(
        &data,
        &later,
        &["retention", "--expired", "--format", "json"],
    );
    let uids: Vec<_> = expired
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["study_instance_uid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(uids, vec!["22.1"]);
    // The dry run erases nothing.
    let (ok, out) = with_clock(&["erase-expired"]);
    assert!(ok, "{out}");
    assert!(out.contains("would erase 22.1"), "{out}");
    assert!(out.contains("1 studies would be erased"), "{out}");
    let (ok, out) = with_clock(&["erase-expired", "--yes"]);
    assert!(ok, "{out}");
    assert!(out.contains("1 studies (1 instances) erased"), "{out}");
    assert!(audited(&data, "erased after its retention ended on"));

    let server = Server::spawn(&data, &later);
    assert_eq!(get_status(&server, "/studies/22.1/metadata"), 410);
    assert_eq!(get_status(&server, "/studies/22.2/metadata"), 200);
    let (status, body) = delete(&server, "/studies/22.2");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("legal hold #1"), "{body}");
    let (ok, out) = verify(&data);
    assert!(ok, "{out}");
}

#[test]
fn legal_holds_block_deletion_until_lifted() {
    let server = Server::start();
    store_study(&server, "23.1", "PID-HELD", "CT");
    store_study(&server, "23.2", "PID-HELD", "MR");
    store_study(&server, "23.3", "PID-FREE", "CT");

    let (ok, out) = lifecycle(
        &server.data_dir,
        &[
            "hold",
            "--patient",
            "PID-HELD",
            "--reason",
            "court order 12/2026",
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("legal hold #1 placed"), "{out}");
    let (ok, out) = lifecycle(&server.data_dir, &["hold", "--reason", "nothing named"]);
    assert!(!ok, "{out}");
    let too_long = "P".repeat(65);
    let (ok, out) = lifecycle(
        &server.data_dir,
        &["hold", "--patient", &too_long, "--reason", "oversized"],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("1 to 64 characters"), "{out}");

    for study in ["23.1", "23.2"] {
        let (status, body) = delete(&server, &format!("/studies/{study}"));
        assert_eq!(status, 409, "{body}");
        assert!(body.contains("legal hold #1"), "{body}");
    }
    // Another patient's study is not held.
    assert_eq!(delete(&server, "/studies/23.3").0, 204);
    // A study stored after the hold is covered too.
    store_study(&server, "23.4", "PID-HELD", "CR");
    assert_eq!(delete(&server, "/studies/23.4").0, 409);

    let holds = lifecycle_json(&server.data_dir, &[], &["holds", "--format", "json"]);
    assert_eq!(holds[0]["kind"], "patient");
    assert_eq!(holds[0]["reason"], "court order 12/2026");

    // Lifting needs the hold's number and a reason; then deletion proceeds.
    let (ok, out) = lifecycle(&server.data_dir, &["lift", "--hold", "7", "--reason", "x"]);
    assert!(!ok, "{out}");
    let (ok, out) = lifecycle(
        &server.data_dir,
        &["lift", "--hold", "1", "--reason", "case closed"],
    );
    assert!(ok, "{out}");
    for study in ["23.1", "23.2", "23.4"] {
        assert_eq!(delete(&server, &format!("/studies/{study}")).0, 204);
    }
    let holds = lifecycle_json(
        &server.data_dir,
        &[],
        &["holds", "--all", "--format", "json"],
    );
    assert_eq!(holds[0]["lift_reason"], "case closed");

    // Both are in the audit trail, without the PatientID.
    let entries = audit_entries(&server.data_dir);
    let text = serde_json::to_string(&entries).unwrap();
    assert!(text.contains("legal hold #1 placed on every study of a patient: court order 12/2026"));
    assert!(text.contains("legal hold #1 lifted: case closed"));
    assert!(
        !text.contains("PID-HELD"),
        "the audit trail names the patient"
    );
}

#[test]
fn shredding_is_refused_while_a_study_is_protected() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::spawn(&data, &[]);
    store_study(&server, "24.1", "PID-A", "CT");
    let (ok, out) = lifecycle(
        &server.data_dir,
        &["hold", "--study", "24.1", "--reason", "audit"],
    );
    assert!(ok, "{out}");
    let data = server.terminate();

    let (ok, out) = cli(&["keys", "shred", "--tenant", "default", "--yes"], &data);
    assert!(!ok, "{out}");
    assert!(out.contains("cannot be shredded"), "{out}");
    assert!(out.contains("legal hold #1"), "{out}");
    // Nothing was destroyed: the study is still readable.
    let server = Server::spawn(&data, &[]);
    assert_eq!(
        get_status(&server, "/studies/24.1/series/24.1.1/instances/24.1.1.1"),
        200
    );
    let data = server.terminate();

    // Under retention (a 5-year default) it is refused too, until released.
    let (ok, out) = lifecycle(&data, &["lift", "--hold", "1", "--reason", "done"]);
    assert!(ok, "{out}");
    let retained = [("KASTELL__LIFECYCLE__RETENTION__DEFAULT_YEARS", "5")];
    let shred = |data: &Path| {
        cli_command(&["keys", "shred", "--tenant", "default", "--yes"], data)
            .envs(retained.iter().copied())
            .output()
            .unwrap()
    };
    let output = shred(&data);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("under retention until"));
    let (ok, out) = lifecycle(
        &data,
        &["release", "--study", "24.1", "--reason", "tenant leaves"],
    );
    assert!(ok, "{out}");
    let output = shred(&data);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn rules_by_modality_come_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("kastell.toml");
    std::fs::write(
        &config,
        "[lifecycle.retention]\ndefault_years = 0\n\
         [[lifecycle.retention.rules]]\nname = \"radiotherapy\"\nmodalities = [\"RTDOSE\", \"RTPLAN\"]\nyears = 30\n",
    )
    .unwrap();
    let config = config.to_str().unwrap().to_string();
    let server = Server::spawn(&data, &[("KASTELL_CONFIG", &config)]);
    store_study(&server, "25.1", "PID-A", "RTDOSE");
    store_study(&server, "25.2", "PID-A", "CT");
    let (status, body) = delete(&server, "/studies/25.1");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("radiotherapy"), "{body}");
    assert_eq!(delete(&server, "/studies/25.2").0, 204);
}

#[test]
fn the_server_erases_expired_studies_when_asked_and_spares_held_ones() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = [
        ("KASTELL__LIFECYCLE__RETENTION__DEFAULT_YEARS", "1"),
        ("KASTELL__LIFECYCLE__RETENTION__ERASE_EXPIRED", "true"),
        ("KASTELL__LIFECYCLE__PASS__INTERVAL_SECS", "1"),
    ];
    // Today nothing has expired: the server erases nothing.
    let server = Server::spawn(&data, &env);
    store_study(&server, "26.1", "PID-A", "CT");
    store_study(&server, "26.2", "PID-B", "CT");
    let (ok, out) = lifecycle(&data, &["hold", "--study", "26.2", "--reason", "inquiry"]);
    assert!(ok, "{out}");
    assert_eq!(get_status(&server, "/studies/26.1/metadata"), 200);
    server.terminate();

    // Two years on, the dry run names one study, and the server erases it.
    let mut later = env.to_vec();
    later.push(("KASTELL__LIFECYCLE__NOW", "2099-01-01"));
    let expired = lifecycle_json(
        &data,
        &later,
        &["retention", "--expired", "--format", "json"],
    );
    assert_eq!(expired.as_array().unwrap().len(), 1, "{expired}");
    let server = Server::spawn(&data, &later);
    wait_until("the expired study is erased", || {
        get_status(&server, "/studies/26.1/metadata") == 410
    });
    assert_eq!(get_status(&server, "/studies/26.2/metadata"), 200);
    wait_until("the erasure is audited", || {
        audited(&data, "erased after its retention ended on")
    });
}
