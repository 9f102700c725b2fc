//! `kastell import` and `kastell stats` from outside: a directory tree of DICOM
//! files in every form a disk holds them (with and without preamble, a bare file
//! meta group, a bare data set), a DICOMDIR, a text file and broken DICOM; the
//! summary's counts and grouped reasons; a second run that stores nothing; a file
//! changed between runs; a tenant import; stats that match what was stored.

mod common;

use std::path::Path;

use common::*;

const STUDY: &str = "1.2.826.0.1.3680043.9.7790.1";

fn spec(series: u32, instance: u32) -> Spec {
    let series_uid = format!("{STUDY}.{series}");
    let mut spec = Spec::new(STUDY, &series_uid, &format!("{series_uid}.{instance}"));
    spec.instance_number = instance as i32;
    spec
}

/// The count on a line of the summary (`  stored   12`).
fn count(summary: &str, label: &str) -> u64 {
    summary
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix("  ")?.strip_prefix(label)?;
            rest.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{summary}"))
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// The data set alone: the file without preamble, magic and file meta group.
fn bare_data_set(file: &[u8]) -> Vec<u8> {
    // (0002,0000) UL File Meta Information Group Length, right after DICM.
    assert_eq!(&file[132..136], &[0x02, 0x00, 0x00, 0x00]);
    let group_length = u32::from_le_bytes(file[140..144].try_into().unwrap()) as usize;
    file[144 + group_length..].to_vec()
}

fn qido_instances(server: &Server, prefix: &str) -> usize {
    let found: Vec<serde_json::Value> = client()
        .get(format!(
            "http://127.0.0.1:{}{prefix}/instances?limit=1000",
            server.port
        ))
        .send()
        .unwrap()
        .json()
        .unwrap_or_default();
    found.len()
}

fn retrieve_instance(server: &Server, spec: &Spec) -> Vec<u8> {
    let response = client()
        .get(server.url(&format!(
            "/studies/{}/series/{}/instances/{}",
            spec.study, spec.series, spec.instance
        )))
        .header(
            "Accept",
            "multipart/related; type=\"application/dicom\"; transfer-syntax=*",
        )
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "{}", spec.instance);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    let body = response.bytes().unwrap();
    let mut parts = split_multipart(&content_type, &body);
    assert_eq!(parts.len(), 1);
    parts.remove(0).1
}

#[test]
fn import_takes_every_form_skips_what_is_not_an_instance_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    let data = dir.path().join("data");

    // Six PS3.10 files in nested folders, as a modality or a CD writes them.
    for i in 1..=6 {
        write(
            &source.join(format!("PAT1/ST1/SE{}/IM{i}", i % 2)),
            &dicom_file(&spec(i % 2, i)),
        );
    }
    // Two without the preamble (DICM first), two without preamble and magic (the
    // file meta group first), one bare data set.
    let no_preamble: Vec<Spec> = (7..=8).map(|i| spec(2, i)).collect();
    for s in &no_preamble {
        write(
            &source.join(format!("loose/{}.dcm", s.instance_number)),
            &dicom_file(s)[128..],
        );
    }
    let meta_first: Vec<Spec> = (9..=10).map(|i| spec(2, i)).collect();
    for s in &meta_first {
        write(
            &source.join(format!("loose/deeper/{}", s.instance_number)),
            &dicom_file(s)[132..],
        );
    }
    let bare = spec(3, 11);
    write(
        &source.join("old-archive/0011.raw"),
        &bare_data_set(&dicom_file(&bare)),
    );
    // Not instances: a DICOMDIR and a text file.
    write(&source.join("DICOMDIR"), &dicom_file(&spec(9, 99)));
    write(&source.join("PAT1/notes.txt"), b"Befund folgt\n");
    // Broken: cut off in the pixel data, and one without a SOP Instance UID.
    let whole = dicom_file(&spec(4, 12));
    write(&source.join("broken/cut.dcm"), &whole[..whole.len() - 9]);
    write(
        &source.join("broken/no-uid.dcm"),
        &dicom_file(&Spec::new(STUDY, &format!("{STUDY}.4"), "")),
    );

    let src = source.to_str().unwrap();
    let (ok, out) = cli(&["import", src, "--jobs", "3"], &data);
    assert!(!ok, "two files failed, so the import fails:\n{out}");
    assert_eq!(count(&out, "stored"), 11, "{out}");
    assert_eq!(count(&out, "already present"), 0, "{out}");
    assert_eq!(count(&out, "skipped"), 2, "{out}");
    assert_eq!(count(&out, "failed"), 2, "{out}");
    assert!(
        out.contains("1 × DICOMDIR (a media directory, not an instance)"),
        "{out}"
    );
    assert!(out.contains("1 × not DICOM: no DICM magic"), "{out}");
    assert!(
        out.contains("1 × C000 the DICOM stream is truncated"),
        "{out}"
    );
    assert!(
        out.contains("1 × C000 required attribute SOPInstanceUID (0008,0018) is missing or empty"),
        "{out}"
    );
    assert!(
        out.contains("broken/cut.dcm"),
        "failed files are named: {out}"
    );

    // Again: everything is found, nothing is stored twice.
    // Again, with the summary as JSON for scripts.
    let (ok, again) = cli(&["import", src, "--format", "json"], &data);
    assert!(!ok, "{again}");
    let summary: serde_json::Value =
        serde_json::Deserializer::from_str(&again[again.find('{').unwrap()..])
            .into_iter()
            .next()
            .unwrap()
            .unwrap();
    assert_eq!(summary["stored"], 0, "{again}");
    assert_eq!(summary["already_present"], 11, "{again}");
    assert_eq!(summary["skipped"], 2, "{again}");
    assert_eq!(summary["failed"], 2, "{again}");
    assert_eq!(
        summary["skipped_reasons"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>(),
        2
    );
    assert_eq!(
        summary["failed_reasons"]
            .as_object()
            .unwrap()
            .values()
            .map(|g| g["count"].as_u64().unwrap())
            .sum::<u64>(),
        2
    );

    // A file that changed since (same SOP Instance UID, other pixels) is not
    // taken for the stored one: it is refused like a conflicting STOW part.
    // Same size too, so that only the hash tells them apart.
    let mut changed = spec(1, 1);
    changed.patient_name = "Doe^Jane".into();
    assert_eq!(dicom_file(&changed).len(), dicom_file(&spec(1, 1)).len());
    write(&source.join("PAT1/ST1/SE1/IM1"), &dicom_file(&changed));
    // The broken files are fixed meanwhile: only the conflict fails.
    std::fs::remove_dir_all(source.join("broken")).unwrap();
    let (ok, third) = cli(&["import", src], &data);
    assert!(!ok, "{third}");
    assert_eq!(count(&third, "stored"), 0, "{third}");
    assert_eq!(count(&third, "already present"), 10, "{third}");
    assert_eq!(count(&third, "failed"), 1, "{third}");
    assert!(
        third.contains("1 × 0111 a different object is already stored under this SOP Instance UID"),
        "{third}"
    );

    let server = Server::spawn(&data, &[]);
    assert_eq!(qido_instances(&server, "/dicomweb"), 11);
    // The wrapped forms are stored as complete PS3.10 files: a file meta group
    // without preamble comes back as the original file.
    for s in &meta_first {
        assert!(retrieve_instance(&server, s) == dicom_file(s));
    }
    for s in &no_preamble {
        assert!(retrieve_instance(&server, s) == dicom_file(s)[128..]);
    }
    let stored_bare = retrieve_instance(&server, &bare);
    assert!(stored_bare.ends_with(&bare_data_set(&dicom_file(&bare))));
    assert_eq!(&stored_bare[128..132], b"DICM");
    drop(server);
    let (ok, out) = verify(&data);
    assert!(ok, "{out}");
    assert!(
        out.contains("11 indexed blobs checked, 0 failed, 0 orphaned"),
        "{out}"
    );
    // Each run left an audit record of its own, and the trail is intact.
    let (ok, trail) = cli(
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
    assert!(ok, "{trail}");
    assert_eq!(trail.matches("import: ").count(), 3, "{trail}");
    let (ok, out) = cli(&["audit", "verify"], &data);
    assert!(ok, "{out}");
}

#[test]
fn a_tenant_import_lands_in_that_tenant_only_and_stats_count_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let radiology = dir.path().join("radiology");
    let default = dir.path().join("default");
    let mut sizes = (0u64, 0u64);
    for i in 1..=3 {
        let file = dicom_file(&spec(i % 2 + 1, i));
        sizes.0 += file.len() as u64;
        write(&radiology.join(format!("IM{i}")), &file);
    }
    for i in 1..=2 {
        let mut other = spec(7, i);
        other.study = format!("{STUDY}.99");
        other.series = format!("{STUDY}.99.1");
        other.instance = format!("{STUDY}.99.1.{i}");
        let file = dicom_file(&other);
        sizes.1 += file.len() as u64;
        write(&default.join(format!("IM{i}")), &file);
    }
    let (ok, out) = cli(
        &[
            "import",
            radiology.to_str().unwrap(),
            "--tenant",
            "radiology",
        ],
        &data,
    );
    assert!(!ok && out.contains("no tenant radiology"), "{out}");
    let (ok, out) = cli(&["tenants", "add", "radiology"], &data);
    assert!(ok, "{out}");
    let (ok, out) = cli(
        &[
            "import",
            radiology.to_str().unwrap(),
            "--tenant",
            "radiology",
        ],
        &data,
    );
    assert!(ok, "{out}");
    assert_eq!(count(&out, "stored"), 3, "{out}");
    let (ok, out) = cli(&["import", default.to_str().unwrap()], &data);
    assert!(ok, "{out}");
    assert_eq!(count(&out, "stored"), 2, "{out}");

    let server = Server::spawn(&data, &[]);
    assert_eq!(qido_instances(&server, "/dicomweb"), 2);
    assert_eq!(qido_instances(&server, "/tenants/radiology/dicomweb"), 3);
    drop(server);

    let (ok, out) = cli(&["stats", "--format", "json", "--blobs"], &data);
    assert!(ok, "{out}");
    let json_start = out.find('{').expect("JSON");
    let stats: serde_json::Value = serde_json::from_str(&out[json_start..]).expect(&out);
    let tenant = |name: &str| {
        stats["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("no tenant {name} in {stats}"))
            .clone()
    };
    let r = tenant("radiology");
    assert_eq!(
        (&r["studies"], &r["series"], &r["instances"], &r["status"]),
        (&1.into(), &2.into(), &3.into(), &"active".into()),
        "{stats}"
    );
    assert_eq!(r["instance_bytes"], sizes.0, "{stats}");
    let d = tenant("default");
    assert_eq!(
        (&d["studies"], &d["series"], &d["instances"]),
        (&1.into(), &1.into(), &2.into()),
        "{stats}"
    );
    assert_eq!(d["instance_bytes"], sizes.1, "{stats}");
    assert_eq!(stats["total"]["instances"], 5, "{stats}");
    assert_eq!(
        stats["total"]["instance_bytes"],
        sizes.0 + sizes.1,
        "{stats}"
    );
    assert_eq!(stats["blob_store"]["listed"]["objects"], 5, "{stats}");
    assert!(stats["index"]["bytes"].as_i64().unwrap() > 0, "{stats}");

    let (ok, text) = cli(&["stats"], &data);
    assert!(ok, "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("radiology "))
        .expect(&text);
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        &columns[..5],
        ["radiology", "active", "1", "2", "3"],
        "{text}"
    );
}

#[test]
fn a_paced_import_beside_a_live_server_keeps_its_rate_and_the_server_serving() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let source = dir.path().join("source");
    for i in 1..=10 {
        write(&source.join(format!("IM{i}")), &dicom_file(&spec(5, i)));
    }
    let server = Server::spawn(&data, &[]);
    let started = std::time::Instant::now();
    let importing = std::thread::scope(|s| {
        let import = s.spawn(|| {
            cli(
                &[
                    "import",
                    source.to_str().unwrap(),
                    "--rate",
                    "5",
                    "--jobs",
                    "4",
                ],
                &data,
            )
        });
        // The server stores and answers while the import writes the same index.
        let mut live = spec(6, 1);
        live.study = format!("{STUDY}.77");
        live.series = format!("{STUDY}.77.1");
        live.instance = format!("{STUDY}.77.1.1");
        let (status, body) = store(&server, "/studies", &[dicom_file(&live)]);
        assert_eq!(status, 200, "{body}");
        let searched = client()
            .get(server.url("/studies"))
            .header("Accept", "application/dicom+json")
            .send()
            .unwrap();
        assert!(searched.status().is_success());
        import.join().unwrap()
    });
    let elapsed = started.elapsed();
    let (ok, out) = importing;
    assert!(ok, "{out}");
    assert_eq!(count(&out, "stored"), 10, "{out}");
    // Ten files at five a second: the last starts 1.8 s after the first, however
    // many jobs there are (a floor, never a ceiling).
    assert!(
        elapsed >= std::time::Duration::from_millis(1800),
        "--rate 5 let 10 files through in {elapsed:?}"
    );
    assert_eq!(qido_instances(&server, "/dicomweb"), 11);
    let (ok, out) = cli(&["import", source.to_str().unwrap(), "--rate", "0"], &data);
    assert!(!ok && out.contains("--rate"), "{out}");
}
