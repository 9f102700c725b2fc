//! De-identified exports (issue 17): a selection of studies through a project
//! into an export store (DICOM files, a DICOMDIR read back by pydicom's
//! independent FileSet reader, a manifest naming what was excluded and why) or
//! into another tenant; the jurisdiction policy judges the export store first;
//! a job killed half-way resumes and finishes with every instance exactly once.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

use common::*;

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

fn store_all(server: &Server, files: Vec<Vec<u8>>) {
    for chunk in files.chunks(50) {
        let (status, body) = store(server, "/studies", chunk);
        assert_eq!(status, 200, "{body}");
    }
}

/// A CT study of `series` × `per_series` instances.
fn ct_study(study: &str, series: u32, per_series: u32, patient: &str) -> Vec<Vec<u8>> {
    let mut files = Vec::new();
    for s in 1..=series {
        for i in 1..=per_series {
            let mut spec = Spec::new(study, &format!("{study}.{s}"), &format!("{study}.{s}.{i}"));
            spec.sop_class = CT.into();
            spec.patient_name = patient.into();
            spec.patient_id = format!("ID-{patient}");
            spec.instance_number = i as i32;
            files.push(dicom_file(&spec));
        }
    }
    files
}

fn export_env(out: &Path, country: &str) -> Vec<(String, String)> {
    vec![
        (
            "KASTELL__EXPORTS__OUT__URL".into(),
            format!("file://{}", out.display()),
        ),
        (
            "KASTELL__EXPORTS__OUT__LOCATION__COUNTRY".into(),
            country.into(),
        ),
        (
            "KASTELL__EXPORTS__OUT__LOCATION__FOREIGN_ACCESS_LAW".into(),
            "false".into(),
        ),
    ]
}

fn done(args: &[&str], data: &Path, env: &[(String, String)]) -> String {
    let (ok, out) = cli_with(args, data, env);
    assert!(ok, "kastell {args:?}: {out}");
    out
}

/// pydicom's FileSet over the DICOMDIR: every record's file, read and checked.
fn read_file_set(root: &Path) -> serde_json::Value {
    let script = r#"
import json, sys
from pydicom import dcmread
from pydicom.fileset import FileSet
fs = FileSet(dcmread(sys.argv[1] + "/DICOMDIR"))
out = []
for instance in fs:
    ds = instance.load()
    out.append({"path": instance.path, "patient": str(ds.PatientID), "study": ds.StudyInstanceUID,
                "series": ds.SeriesInstanceUID, "sop": ds.SOPInstanceUID,
                "removed": ds.PatientIdentityRemoved, "name": str(ds.PatientName),
                "record_sop": instance.SOPInstanceUID})
print(json.dumps(out))
"#;
    let output = std::process::Command::new("python3")
        .args(["-c", script, root.to_str().unwrap()])
        .output()
        .expect("python3 with pydicom (the conformance suite's requirements)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn a_selection_goes_to_an_export_store_with_a_dicomdir_and_a_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = dir.path().join("exports");
    let env = export_env(&out, "DE");
    let server = Server::spawn(&data, &[]);
    let mut files = ct_study("5.1", 2, 2, "Ausfuhr^Anna");
    files.extend(ct_study("5.2", 1, 1, "Ausfuhr^Anna"));
    // A secondary capture (burned-in text expected) in the first study.
    files.push(dicom_file(&Spec::new("5.1", "5.1.9", "5.1.9.1")));
    files.extend(ct_study("5.3", 1, 1, "Andere^Person"));
    store_all(&server, files);
    drop(server);
    done(
        &["projects", "create", "p", "--tenant", "default"],
        &data,
        &env,
    );

    let report = done(
        &[
            "export",
            "create",
            "--tenant",
            "default",
            "--project",
            "p",
            "--to",
            "export:out",
            "--study",
            "5.1",
            "--study",
            "5.2",
        ],
        &data,
        &env,
    );
    assert!(
        report.contains("5 of 6 done, 1 excluded, 0 failed, 0 pending"),
        "{report}"
    );
    let root = out.join("export-1");
    let listed = read_file_set(&root);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 5, "{listed:?}");
    for instance in listed {
        assert_eq!(instance["removed"], "YES");
        assert_eq!(
            instance["sop"], instance["record_sop"],
            "the record names its file"
        );
        assert!(instance["study"].as_str().unwrap().starts_with("2.25."));
        assert!(instance["patient"].as_str().unwrap().starts_with("KST-"));
        assert!(!instance["name"].as_str().unwrap().contains("Ausfuhr"));
    }
    let studies: std::collections::BTreeSet<_> = listed
        .iter()
        .map(|i| i["study"].as_str().unwrap())
        .collect();
    assert_eq!(studies.len(), 2, "study structure kept");
    let patients: std::collections::BTreeSet<_> = listed
        .iter()
        .map(|i| i["patient"].as_str().unwrap())
        .collect();
    assert_eq!(patients.len(), 1, "one pseudonym for the patient");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("manifest.json")).unwrap()).unwrap();
    let items = manifest["instances"].as_array().unwrap();
    assert_eq!(items.len(), 6);
    let excluded: Vec<_> = items.iter().filter(|i| i["state"] == "excluded").collect();
    assert_eq!(excluded.len(), 1);
    assert!(excluded[0]["reason"]
        .as_str()
        .unwrap()
        .contains("secondary capture"));
    let text = serde_json::to_string(&manifest).unwrap();
    for original in ["5.1.1.1", "\"5.1\"", "Ausfuhr", "ID-Ausfuhr"] {
        assert!(
            !text.contains(original),
            "the manifest names no original: {original}"
        );
    }
    // The same selection again gives the same UIDs (another job, another place).
    done(
        &[
            "export",
            "create",
            "--tenant",
            "default",
            "--project",
            "p",
            "--to",
            "export:out",
            "--study",
            "5.1",
            "--study",
            "5.2",
        ],
        &data,
        &env,
    );
    let again = read_file_set(&out.join("export-2"));
    let sops = |list: &[serde_json::Value]| {
        list.iter()
            .map(|i| i["sop"].as_str().unwrap().to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(sops(again.as_array().unwrap()), sops(listed));
    // The trail names each study that went, with the project.
    let trail = serde_json::to_string(&audit_events(&data, &[])).unwrap();
    assert!(
        trail.contains("export job 1 made: 6 instances, project p"),
        "{trail}"
    );
    assert!(
        trail.contains("export job 1: 4 instances de-identified by project p"),
        "{trail}"
    );
}

#[test]
fn a_project_that_blanks_regions_exports_the_flagged_image_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = dir.path().join("exports");
    let env = export_env(&out, "DE");
    let server = Server::spawn(&data, &[]);
    let mut files = ct_study("9.1", 1, 1, "Bild^Berta");
    files.push(dicom_file(&Spec::new("9.1", "9.1.9", "9.1.9.1")));
    store_all(&server, files);
    drop(server);
    let args = [
        "projects",
        "create",
        "b",
        "--tenant",
        "default",
        "--blank-region",
        "0,0,2,2",
    ];
    done(&args, &data, &env);
    let args = [
        "export",
        "create",
        "--tenant",
        "default",
        "--project",
        "b",
        "--to",
        "export:out",
        "--study",
        "9.1",
    ];
    let report = done(&args, &data, &env);
    assert!(report.contains("2 of 2 done, 0 excluded"), "{report}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("export-1/manifest.json")).unwrap())
            .unwrap();
    let blanked: Vec<_> = manifest["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| {
            i["pixels"]
                .as_str()
                .is_some_and(|p| p.contains("1 region(s) blanked"))
        })
        .collect();
    assert_eq!(
        blanked.len(),
        1,
        "the secondary capture, and only it: {manifest}"
    );
}

#[test]
fn the_jurisdiction_policy_judges_the_export_store_first() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = dir.path().join("exports");
    let server = Server::spawn(&data, &[]);
    store_all(&server, ct_study("6.1", 1, 1, "Grenze^Gustav"));
    drop(server);
    let abroad = export_env(&out, "US");
    // A configuration with an export store the policy forbids does not start
    // (like every other backend); the export itself checks again.
    let (ok, refused) = cli_with(
        &["projects", "create", "q", "--tenant", "default"],
        &data,
        &abroad,
    );
    assert!(!ok && refused.contains("export store out"), "{refused}");
    done(
        &["projects", "create", "p", "--tenant", "default"],
        &data,
        &[],
    );
    let args = [
        "export",
        "create",
        "--tenant",
        "default",
        "--project",
        "p",
        "--to",
        "export:out",
        "--study",
        "6.1",
    ];
    let (ok, refused) = cli_with(&args, &data, &abroad);
    assert!(
        !ok && refused.contains("sovereignty.export_destinations"),
        "{refused}"
    );
    assert!(
        !out.exists() || std::fs::read_dir(&out).unwrap().next().is_none(),
        "nothing written"
    );
    let mut undeclared = abroad.clone();
    undeclared.retain(|(k, _)| !k.contains("LOCATION"));
    let (ok, refused) = cli_with(&args, &data, &undeclared);
    assert!(
        !ok && refused.contains("no location is declared"),
        "{refused}"
    );
    let mut allowed = abroad.clone();
    allowed.push((
        "KASTELL__SOVEREIGNTY__EXPORT_DESTINATIONS".into(),
        "deidentified-anywhere".into(),
    ));
    let report = done(&args, &data, &allowed);
    assert!(report.contains("1 of 1 done"), "{report}");
    // The sovereignty report lists it with its place.
    let report = done(&["sovereignty", "report"], &data, &allowed);
    assert!(
        report.contains("export store out") && report.contains("US"),
        "{report}"
    );
}

#[test]
fn an_export_into_another_tenant_is_searchable_there_de_identified() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    done(&["tenants", "add", "science"], &data, &[]);
    let server = Server::spawn(&data, &[]);
    store_all(&server, ct_study("7.1", 1, 2, "Forsch^Fritz"));
    drop(server);
    done(
        &["projects", "create", "p", "--tenant", "default"],
        &data,
        &[],
    );
    let report = done(
        &[
            "export",
            "create",
            "--tenant",
            "default",
            "--project",
            "p",
            "--to",
            "tenant:science",
            "--query",
            "PatientName=Forsch*",
        ],
        &data,
        &[],
    );
    assert!(report.contains("2 of 2 done"), "{report}");
    let server = Server::spawn(&data, &[]);
    let url = format!(
        "http://127.0.0.1:{}/tenants/science/dicomweb/studies",
        server.port
    );
    let found: serde_json::Value = client().get(url).send().unwrap().json().unwrap();
    assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    let text = found.to_string();
    assert!(
        !text.contains("Forsch") && !text.contains("\"7.1\""),
        "{text}"
    );
    assert!(found[0]["00100020"]["Value"][0]
        .as_str()
        .unwrap()
        .starts_with("KST-"));
    let (ok, out) = cli_with(
        &[
            "export",
            "create",
            "--tenant",
            "default",
            "--project",
            "p",
            "--to",
            "tenant:default",
            "--study",
            "7.1",
        ],
        &data,
        &[],
    );
    assert!(!ok && out.contains("another tenant"), "{out}");
}

#[test]
fn a_job_killed_half_way_resumes_and_exports_every_instance_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = dir.path().join("exports");
    let env = export_env(&out, "DE");
    let server = Server::spawn(&data, &[]);
    store_all(&server, ct_study("8.1", 4, 30, "Wieder^Willi"));
    drop(server);
    done(
        &["projects", "create", "p", "--tenant", "default"],
        &data,
        &env,
    );
    let mut child = cli_command(
        &[
            "export",
            "create",
            "--tenant",
            "default",
            "--project",
            "p",
            "--to",
            "export:out",
            "--study",
            "8.1",
        ],
        &data,
    )
    .envs(env.iter().cloned())
    .env("RUST_LOG", "error")
    .stderr(Stdio::piped())
    .stdout(Stdio::null())
    .spawn()
    .unwrap();
    let stderr = child.stderr.take().unwrap();
    for line in BufReader::new(stderr).lines() {
        if line.unwrap().contains(": 10 of 120") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let status = done(
        &["export", "status", "1", "--tenant", "default"],
        &data,
        &env,
    );
    assert!(
        status.contains("(running)") && !status.contains(" 0 pending"),
        "{status}"
    );
    assert!(
        !out.join("export-1/DICOMDIR").exists(),
        "no DICOMDIR before the end"
    );
    let report = done(
        &["export", "resume", "1", "--tenant", "default"],
        &data,
        &env,
    );
    assert!(
        report.contains("120 of 120 done, 0 excluded, 0 failed, 0 pending"),
        "{report}"
    );
    let listed = read_file_set(&out.join("export-1"));
    let sops: std::collections::BTreeSet<_> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sop"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(sops.len(), 120, "every instance once");
    let listed_jobs = done(&["export", "list", "--tenant", "default"], &data, &env);
    assert!(
        listed_jobs.contains("export job 1") && listed_jobs.contains("(done)"),
        "{listed_jobs}"
    );
}
