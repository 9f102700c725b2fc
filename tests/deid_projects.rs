//! De-identification projects (issue 17) held like tenant keys: the secret is
//! made by Kastell and stored only wrapped by the tenant's key, so a key
//! rotation re-wraps it (and the old version can then be retired) without
//! changing a single UID the project hands out, and shredding the tenant
//! destroys it with everything the project recorded.

mod common;

use std::path::Path;

use common::*;

fn done(args: &[&str], data: &Path) -> String {
    let (ok, out) = cli(args, data);
    assert!(ok, "kastell {args:?}: {out}");
    out
}

/// De-identifies `input` with the project; returns the output file's bytes.
fn deidentify(data: &Path, input: &Path, project: &str, tenant: &str) -> Result<Vec<u8>, String> {
    let output = input.with_extension(format!("{project}.{tenant}.out"));
    let args = [
        "deidentify",
        input.to_str().unwrap(),
        output.to_str().unwrap(),
        "--project",
        project,
        "--tenant",
        tenant,
    ];
    let (ok, out) = cli(&args, data);
    if !ok || !out.contains("1 files de-identified") {
        return Err(out);
    }
    Ok(std::fs::read(output).unwrap())
}

#[test]
fn a_key_rotation_rewraps_project_secrets_and_changes_no_uid() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    done(&["tenants", "add", "radiology"], &data);
    let mut spec = Spec::new("7.1", "7.1.1", "7.1.1.1");
    spec.sop_class = "1.2.840.10008.5.1.4.1.1.2".into(); // CT: no burned-in text expected
    let input = dir.path().join("ct.dcm");
    std::fs::write(&input, dicom_file(&spec)).unwrap();

    let out = done(
        &[
            "projects",
            "create",
            "trial",
            "--tenant",
            "radiology",
            "--reidentification",
            "audited",
            "--research",
        ],
        &data,
    );
    assert!(out.contains("project trial made"), "{out}");
    let (ok, out) = cli(
        &["projects", "create", "trial", "--tenant", "radiology"],
        &data,
    );
    assert!(!ok && out.contains("exists"), "a name is made once: {out}");
    let (ok, out) = cli(
        &[
            "projects",
            "create",
            "open",
            "--tenant",
            "radiology",
            "--research",
        ],
        &data,
    );
    assert!(
        !ok && out.contains("audited"),
        "research needs 'audited': {out}"
    );
    let (ok, out) = cli(
        &["projects", "create", "../x", "--tenant", "radiology"],
        &data,
    );
    assert!(!ok && out.contains("not a project name"), "{out}");
    let listed = done(&["projects", "list", "--tenant", "radiology"], &data);
    assert!(
        listed.contains("trial (research)") && listed.contains("tenant key v1"),
        "{listed}"
    );

    let before = deidentify(&data, &input, "trial", "radiology").unwrap();
    // Another project of the same tenant maps the same file differently.
    done(
        &["projects", "create", "other", "--tenant", "radiology"],
        &data,
    );
    assert_ne!(
        deidentify(&data, &input, "other", "radiology").unwrap(),
        before
    );

    // Retiring the version the secrets are wrapped under is refused until a
    // rotation moved them.
    let out = done(&["keys", "rotate", "--tenant", "radiology"], &data);
    assert!(
        out.contains("2 de-identification project secrets re-wrapped"),
        "{out}"
    );
    done(
        &["keys", "retire", "--tenant", "radiology", "--version", "1"],
        &data,
    );
    let listed = done(&["projects", "list", "--tenant", "radiology"], &data);
    assert!(
        listed.contains("tenant key v2") && !listed.contains("tenant key v1"),
        "{listed}"
    );
    let after = deidentify(&data, &input, "trial", "radiology").unwrap();
    assert_eq!(
        after, before,
        "the same UIDs and pseudonyms after the rotation"
    );

    // Shredding the tenant destroys its projects.
    done(&["keys", "shred", "--tenant", "radiology", "--yes"], &data);
    let listed = done(&["projects", "list", "--tenant", "radiology"], &data);
    assert!(!listed.contains("trial"), "{listed}");
    let refused = deidentify(&data, &input, "trial", "radiology").unwrap_err();
    assert!(refused.contains("not found"), "{refused}");
}
