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

/// Makes an API key; returns it (printed alone on stdout).
fn api_key(data: &Path, tenant: &str, permissions: &str) -> String {
    let output = cli_command(
        &["apikeys", "add", "--tenant", tenant, "--name", permissions],
        data,
    )
    .args(["--permissions", permissions])
    .output()
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn a_research_caller_finds_retrieves_and_an_administrator_reidentifies() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut spec = Spec::new("7.2", "7.2.1", "7.2.1.1");
    spec.sop_class = "1.2.840.10008.5.1.4.1.1.2".into();
    spec.patient_name = "Verborgen^Anna".into();
    let file = dicom_file(&spec);
    let server = Server::spawn(&data, &[]);
    assert_eq!(store(&server, "/studies", &[file]).0, 200);
    drop(server);
    done(
        &[
            "projects",
            "create",
            "t",
            "--tenant",
            "default",
            "--reidentification",
            "audited",
            "--research",
        ],
        &data,
    );
    let research = api_key(&data, "default", "research");
    let admin = api_key(&data, "*", "admin");
    let server = Server::spawn(&data, &[("KASTELL__AUTH__ANONYMOUS", "[]")]);
    let get = |path: &str, accept: &str| {
        client()
            .get(server.url(path))
            .header("Authorization", format!("ApiKey {research}"))
            .header("Accept", accept)
            .send()
            .unwrap()
    };
    let found: serde_json::Value = get("/studies", "application/dicom+json").json().unwrap();
    let study = found[0]["0020000D"]["Value"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(study.starts_with("2.25."), "{found}");
    assert!(!found.to_string().contains("Verborgen"), "{found}");
    let series: serde_json::Value = get(
        &format!("/studies/{study}/series"),
        "application/dicom+json",
    )
    .json()
    .unwrap();
    let series = series[0]["0020000E"]["Value"][0]
        .as_str()
        .unwrap()
        .to_string();
    let response = get(
        &format!("/studies/{study}/series/{series}/metadata"),
        "application/dicom+json",
    );
    assert_eq!(response.status().as_u16(), 200);
    let metadata = response.text().unwrap();
    assert!(
        metadata.contains("KST-") && !metadata.contains("Verborgen"),
        "{metadata}"
    );
    assert_eq!(
        get("/studies/7.2/metadata", "application/dicom+json")
            .status()
            .as_u16(),
        404
    );

    let reidentify = |key: Option<&str>| {
        let mut command = cli_command(
            &["projects", "reidentify", "t", &study, "--tenant", "default"],
            &data,
        );
        command.env_remove("KASTELL_ADMIN_KEY");
        if let Some(key) = key {
            command.env("KASTELL_ADMIN_KEY", key);
        }
        let output = command.output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (ok, out) = reidentify(Some(&admin));
    assert!(
        ok && out.contains("study") && out.contains("stands for 7.2"),
        "{out}"
    );
    let (ok, out) = reidentify(Some(&research));
    assert!(!ok && !out.contains("7.2\n"), "{out}");

    // The study deleted: what the project handed out for it goes too, the
    // patient's pseudonym with it (no study of the patient is left).
    let pseudonym = found[0]["00100020"]["Value"][0]
        .as_str()
        .unwrap()
        .to_string();
    let patient = |key: &str| {
        let mut command = cli_command(
            &[
                "projects",
                "reidentify",
                "t",
                &pseudonym,
                "--tenant",
                "default",
            ],
            &data,
        );
        command.env("KASTELL_ADMIN_KEY", key);
        let output = command.output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (ok, out) = patient(&admin);
    assert!(
        ok && out.contains("patient") && out.contains("PID-1"),
        "{out}"
    );
    let everything = api_key(&data, "default", "*");
    let deleted = client()
        .delete(server.url("/studies/7.2"))
        .header("Authorization", format!("ApiKey {everything}"))
        .send()
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let (ok, out) = reidentify(Some(&admin));
    assert!(!ok && !out.contains("stands for"), "{out}");
    let (ok, out) = patient(&admin);
    assert!(
        !ok && !out.contains("PID-1"),
        "the pseudonym of an erased patient: {out}"
    );
}
