//! The encrypted blob layer seen from outside: what lands on disk, tampering,
//! key rotation, crypto-shredding, `kastell verify`, and master key handling.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Whether any table of the index holds `text` (case-insensitively): on SQLite
/// in the bytes of its files, free pages and journal included; on PostgreSQL in
/// any row of the tables the test's index uses.
fn index_contains(data_dir: &Path, text: &str) -> bool {
    let needle = text.to_lowercase();
    if std::env::var("KASTELL_TEST_INDEX").as_deref() == Ok("postgres") {
        use diesel::{Connection, QueryableByName, RunQueryDsl};
        #[derive(QueryableByName)]
        struct Found {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            found: i64,
        }
        let url = std::fs::read_to_string(data_dir.join("test-index-url")).unwrap();
        let mut conn = diesel::PgConnection::establish(&url).unwrap();
        let tables = [
            "studies",
            "series",
            "instances",
            "series_requests",
            "derived_blobs",
        ];
        return tables.iter().any(|table| {
            diesel::sql_query(format!(
                "SELECT count(*) AS found FROM {table} t WHERE lower(t::text) LIKE $1"
            ))
            .bind::<diesel::sql_types::Text, _>(format!("%{needle}%"))
            .get_result::<Found>(&mut conn)
            .unwrap_or_else(|e| panic!("searching {table}: {e}"))
            .found
                > 0
        });
    }
    let mut pending = vec![data_dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with("blobs") {
                    pending.push(path);
                }
            } else if std::fs::read(&path)
                .unwrap()
                .to_ascii_lowercase()
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
            {
                return true;
            }
        }
    }
    false
}

fn kastell(args: &[&str], data_dir: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kastell"));
    command
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .args(index_args(data_dir))
        .env("RUST_LOG", "warn");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("run kastell");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

fn blob_bytes(server: &Server) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    server
        .blob_files()
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

fn retrieve(server: &Server, path: &str) -> reqwest::blocking::Response {
    client()
        .get(server.url(path))
        .header(
            "Accept",
            "multipart/related; type=\"application/dicom\"; transfer-syntax=*",
        )
        .send()
        .unwrap()
}

#[test]
fn disk_holds_only_ciphertext_under_opaque_names() {
    let server = Server::start();
    let mut spec = Spec::new(
        "1.2.826.0.1.3680043.9.7777.1",
        "1.2.826.0.1.3680043.9.7777.1.1",
        "1.2.826.0.1.3680043.9.7777.1.1.1",
    );
    spec.patient_name = "Sovereign^Sophie".into();
    spec.patient_id = "PATIENT-4242".into();
    assert_eq!(store(&server, "/studies", &[dicom_file(&spec)]).0, 200);
    let blobs = blob_bytes(&server);
    assert_eq!(blobs.len(), 1);
    for (path, bytes) in blobs {
        let name = path.to_string_lossy().to_string();
        for secret in [
            &spec.study,
            &spec.series,
            &spec.instance,
            &spec.patient_id,
            &"Sovereign".to_string(),
        ] {
            assert!(
                !name.contains(secret.as_str()),
                "{secret} in the object name {name}"
            );
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} in plaintext on disk"
            );
        }
        assert!(
            !bytes.windows(4).any(|w| w == b"DICM"),
            "a DICOM preamble on disk"
        );
        assert_eq!(&bytes[..4], b"KSTL");
    }
}

#[test]
fn a_tampered_object_never_yields_its_data() {
    // Metadata read from the blob: with the sealed copy in the index (the
    // default) it does not touch the object at all.
    let server = Server::start_with(&[("KASTELL__DICOMWEB__METADATA_IN_INDEX", "false")]);
    let spec = Spec::new("5.1", "5.1.1", "5.1.1.1");
    assert_eq!(store(&server, "/studies", &[dicom_file(&spec)]).0, 200);
    let (path, mut bytes) = blob_bytes(&server).pop().unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x04;
    std::fs::write(&path, bytes).unwrap();
    for resource in [
        "/studies/5.1",
        "/studies/5.1/series/5.1.1/instances/5.1.1.1",
        "/studies/5.1/series/5.1.1/instances/5.1.1.1/metadata",
    ] {
        let response = client().get(server.url(resource)).send().unwrap();
        assert_eq!(response.status().as_u16(), 500, "{resource}");
        let body = response.text().unwrap();
        assert!(body.contains("integrity"), "{resource}: {body}");
    }
    // In either metadata representation.
    let response = client()
        .get(server.url("/studies/5.1/metadata"))
        .header(
            "Accept",
            "multipart/related; type=\"application/dicom+xml\"",
        )
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 500);
    // verify names it.
    let (ok, out) = kastell(&["verify"], &server.data_dir, &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("1 failed"), "{out}");
}

#[test]
fn rotation_rewraps_and_keeps_everything_readable() {
    let server = Server::start();
    let first = dicom_file(&Spec::new("6.1", "6.1.1", "6.1.1.1"));
    assert_eq!(
        store(&server, "/studies", std::slice::from_ref(&first)).0,
        200
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::rename(&server.data_dir, &data).unwrap();
    drop(server);
    let before: Vec<u8> = std::fs::read_dir(data.join("blobs/instances"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .next()
        .unwrap();
    let (ok, out) = kastell(&["keys", "rotate", "--tenant", "default"], &data, &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("new key default/2; 1 data keys re-wrapped, 0 already current, 1 metadata records re-wrapped"),
        "{out}"
    );
    let server = Server::spawn(&data, &[]);
    let (_, after) = blob_bytes(&server).pop().unwrap();
    assert!(
        after.windows(9).any(|w| w == b"default/2"),
        "the header names the new key"
    );
    assert_eq!(before.len(), after.len());
    assert_eq!(
        before[before.len() - 200..],
        after[after.len() - 200..],
        "segments are not re-encrypted"
    );
    let response = client()
        .get(server.url("/studies/6.1/series/6.1.1/instances/6.1.1.1"))
        .header("Accept", "application/dicom")
        .send()
        .unwrap();
    assert_eq!(response.bytes().unwrap().to_vec(), first);
    // New objects go under the new key, old and new both read.
    assert_eq!(
        store(
            &server,
            "/studies",
            &[dicom_file(&Spec::new("6.1", "6.1.1", "6.1.1.2"))]
        )
        .0,
        200
    );
    assert_eq!(retrieve(&server, "/studies/6.1").status().as_u16(), 200);
}

#[test]
fn shredding_a_tenant_makes_its_images_gone() {
    let server = Server::start();
    let mut named = Spec::new("7.1", "7.1.1", "7.1.1.1");
    named.patient_name = "Shredded^Person".into();
    assert_eq!(
        store(
            &server,
            "/studies",
            &[
                dicom_file(&named),
                dicom_file(&Spec::new("7.1", "7.1.1", "7.1.1.2")),
                dicom_file(&Spec::new("7.2", "7.2.1", "7.2.1.1"))
            ]
        )
        .0,
        200
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::rename(&server.data_dir, &data).unwrap();
    drop(server);
    let (ok, out) = kastell(&["keys", "shred", "--tenant", "default"], &data, &[]);
    assert!(
        !ok && out.contains("--yes"),
        "shredding needs confirmation: {out}"
    );
    let (ok, out) = kastell(
        &["keys", "shred", "--tenant", "default", "--yes"],
        &data,
        &[],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("2 studies (3 instances) erased from the index"),
        "{out}"
    );
    // The index no longer holds the patient's data, only the UIDs (for 410).
    assert!(
        !index_contains(&data, "Shredded^Person"),
        "the patient's name survived shredding"
    );
    let (ok, out) = kastell(&["verify"], &data, &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("0 indexed blobs checked, 0 failed, 0 orphaned"),
        "the unreadable blobs are removed: {out}"
    );
    // Running it again (e.g. after an interruption) finds nothing left to erase.
    let (ok, out) = kastell(
        &["keys", "shred", "--tenant", "default", "--yes"],
        &data,
        &[],
    );
    assert!(ok && out.contains("0 studies (0 instances)"), "{out}");
    let server = Server::spawn(&data, &[]);
    for resource in [
        "/studies/7.1",
        "/studies/7.2",
        "/studies/7.1/series/7.1.1/instances/7.1.1.1/metadata",
    ] {
        let response = client().get(server.url(resource)).send().unwrap();
        assert_eq!(response.status().as_u16(), 410, "{resource}");
    }
    let bulk = client()
        .get(server.url("/studies/7.1/series/7.1.1/instances/7.1.1.1/bulkdata/7FE00010"))
        .send()
        .unwrap();
    assert_eq!(bulk.status().as_u16(), 410);
    // Search finds nothing of them any more.
    for query in ["/studies", "/instances?PatientName=Shredded*"] {
        let search = client().get(server.url(query)).send().unwrap();
        assert_eq!(search.status().as_u16(), 204, "{query}");
    }
}

#[test]
fn verify_reports_orphans_and_passes_on_a_healthy_store() {
    let server = Server::start();
    assert_eq!(
        store(
            &server,
            "/studies",
            &[
                dicom_file(&Spec::new("8.1", "8.1.1", "8.1.1.1")),
                dicom_file(&Spec::new("8.1", "8.1.1", "8.1.1.2"))
            ]
        )
        .0,
        200
    );
    let (ok, out) = kastell(&["verify"], &server.data_dir, &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("2 indexed blobs checked, 0 failed, 0 orphaned"),
        "{out}"
    );
    std::fs::write(
        server
            .data_dir
            .join("blobs/instances/00000000000000000000000000000001"),
        b"stray",
    )
    .unwrap();
    let (ok, out) = kastell(&["verify"], &server.data_dir, &[]);
    assert!(ok, "orphans are reported, not fatal: {out}");
    assert!(
        out.contains("1 orphaned")
            && out.contains("orphan instances/00000000000000000000000000000001"),
        "{out}"
    );
}

#[test]
fn the_master_key_guards_everything() {
    // This is about the local master key, also where the suite runs with the
    // master key in an HSM (tests/run-all.sh).
    const LOCAL: (&str, &str) = ("KASTELL__KEYS__ACTIVE_MASTER", "local");
    let key_a = "MTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTE="; // 32 × '1'
    let key_b = "MjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjI="; // 32 × '2'
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let server = Server::spawn(&data, &[LOCAL, ("KASTELL__KEYS__MASTER_KEY", key_a)]);
        assert_eq!(
            store(
                &server,
                "/studies",
                &[dicom_file(&Spec::new("9.1", "9.1.1", "9.1.1.1"))]
            )
            .0,
            200
        );
        assert!(
            !data.join("development-master.key").exists(),
            "no development key when one is configured"
        );
    }
    // The wrong master key cannot open the tenant key: the server refuses to start.
    let (ok, out) = kastell(
        &["verify"],
        &data,
        &[LOCAL, ("KASTELL__KEYS__MASTER_KEY", key_b)],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("tenant"), "{out}");
    // A key file (readable by its owner only) works like the variable.
    let key_file = dir.path().join("master.key");
    std::fs::write(&key_file, key_a).unwrap();
    let owner_only = std::os::unix::fs::PermissionsExt::from_mode(0o600);
    std::fs::set_permissions(&key_file, owner_only).unwrap();
    let (ok, out) = kastell(
        &["verify"],
        &data,
        &[
            LOCAL,
            ("KASTELL__KEYS__MASTER_KEY_FILE", key_file.to_str().unwrap()),
        ],
    );
    assert!(ok, "{out}");
    // A non-embedded blob store never gets a generated key.
    let (ok, out) = kastell(
        &["verify", "--blob-url", "memory://"],
        &dir.path().join("other"),
        &[LOCAL],
    );
    assert!(!ok && out.contains("no master key"), "{out}");
}

#[test]
fn cached_metadata_and_thumbnails_survive_rotation_and_retirement() {
    let server = Server::start();
    let files: Vec<Vec<u8>> = (1..=2)
        .map(|i| dicom_file(&Spec::new("8.1", "8.1.1", &format!("8.1.1.{i}"))))
        .collect();
    assert_eq!(store(&server, "/studies", &files).0, 200);
    let metadata = server.url("/studies/8.1/series/8.1.1/metadata");
    let thumbnail = server.url("/studies/8.1/series/8.1.1/thumbnail");
    assert_eq!(
        client().get(&metadata).send().unwrap().status().as_u16(),
        200
    );
    assert_eq!(
        client().get(&thumbnail).send().unwrap().status().as_u16(),
        200
    );
    // Both are kept as derived objects (the metadata copy is written behind the
    // response).
    let derived = server.data_dir.join("blobs/derived");
    wait_until("both derived objects are written", || {
        std::fs::read_dir(&derived).map_or(0, |d| d.count()) >= 2
    });
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::rename(&server.data_dir, &data).unwrap();
    drop(server);
    let (ok, out) = kastell(&["keys", "rotate", "--tenant", "default"], &data, &[]);
    assert!(ok, "{out}");
    let (ok, out) = kastell(
        &["keys", "retire", "--tenant", "default", "--version", "1"],
        &data,
        &[],
    );
    assert!(ok, "{out}");
    // Sealed under a retired key, the cached copies are rebuilt, never a 500.
    let server = Server::spawn(&data, &[]);
    let response = client()
        .get(server.url("/studies/8.1/series/8.1.1/metadata"))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let items: serde_json::Value = response.json().unwrap();
    assert_eq!(items.as_array().unwrap().len(), 2);
    let response = client()
        .get(server.url("/studies/8.1/series/8.1.1/thumbnail"))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(&response.bytes().unwrap()[..2], &[0xFF, 0xD8]);
}
