//! STOW-RS against the real binary: statuses, per-part failures, idempotency,
//! limits, and that a dying request leaves nothing behind.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

#[test]
fn stores_and_reports_each_instance() {
    let server = Server::start();
    let a = dicom_file(&Spec::new("1.2.3.1", "1.2.3.1.1", "1.2.3.1.1.1"));
    let b = dicom_file(&Spec::new("1.2.3.1", "1.2.3.1.1", "1.2.3.1.1.2"));
    let (status, body) = store(&server, "/studies", &[a, b]);
    assert_eq!(status, 200, "{body}");
    let referenced = values(&body, "00081199");
    assert_eq!(referenced.len(), 2);
    assert_eq!(
        first_string(referenced[0], "00081155").as_deref(),
        Some("1.2.3.1.1.1")
    );
    assert!(first_string(referenced[0], "00081190")
        .unwrap()
        .ends_with("/studies/1.2.3.1/series/1.2.3.1.1/instances/1.2.3.1.1.1"));
    assert!(first_string(&body, "00081190")
        .unwrap()
        .ends_with("/dicomweb/studies/1.2.3.1"));
    assert!(body.get("00081198").is_none());
}

#[test]
fn per_part_failures_give_202_and_409() {
    let server = Server::start();
    let good = dicom_file(&Spec::new("1.2.4.1", "1.2.4.1.1", "1.2.4.1.1.1"));
    let other_study = dicom_file(&Spec::new("1.2.4.2", "1.2.4.2.1", "1.2.4.2.1.1"));
    let (status, body) = store(
        &server,
        "/studies/1.2.4.1",
        &[good, other_study.clone(), b"not DICOM at all".to_vec()],
    );
    assert_eq!(status, 202, "{body}");
    let failed = values(&body, "00081198");
    let reasons: Vec<u64> = failed
        .iter()
        .map(|f| values(f, "00081197")[0].as_u64().unwrap())
        .collect();
    assert_eq!(reasons, vec![0xA901, 0xC000]);
    assert_eq!(
        first_string(failed[0], "00081155").as_deref(),
        Some("1.2.4.2.1.1")
    );
    assert_eq!(values(&body, "00081199").len(), 1);

    let (status, body) = store(&server, "/studies/1.2.4.1", &[other_study]);
    assert_eq!(status, 409, "{body}");
    assert!(body.get("00081199").is_none());
    // Rejected parts leave no blob behind: only the one stored instance remains.
    wait_until("only the stored instance's blob is left", || {
        server.blob_files().len() == 1
    });
}

#[test]
fn restoring_is_idempotent_and_conflicts_are_refused() {
    let server = Server::start();
    let spec = Spec::new("1.2.5.1", "1.2.5.1.1", "1.2.5.1.1.1");
    let original = dicom_file(&spec);
    assert_eq!(
        store(&server, "/studies", std::slice::from_ref(&original)).0,
        200
    );
    let (status, body) = store(&server, "/studies", std::slice::from_ref(&original));
    assert_eq!(status, 200, "{body}");
    assert_eq!(values(&body, "00081199").len(), 1);

    let mut changed = spec.clone();
    changed.patient_name = "Other^Name".into();
    let (status, body) = store(&server, "/studies", &[dicom_file(&changed)]);
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        values(values(&body, "00081198")[0], "00081197")[0].as_u64(),
        Some(0x0111)
    );

    // The original is untouched.
    let response = client()
        .get(server.url("/studies/1.2.5.1/series/1.2.5.1.1/instances/1.2.5.1.1.1"))
        .header("Accept", "application/dicom")
        .send()
        .unwrap();
    assert_eq!(response.bytes().unwrap().to_vec(), original);
    wait_until("only the stored instance's blob is left", || {
        server.blob_files().len() == 1
    });

    // Counts do not double.
    let studies: serde_json::Value = client()
        .get(server.url("/studies?StudyInstanceUID=1.2.5.1"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(values(&studies[0], "00201208")[0].as_u64(), Some(1));
}

#[test]
fn truncated_and_uid_less_parts_fail_alone() {
    let server = Server::start();
    let full = dicom_file(&Spec::new("1.2.6.1", "1.2.6.1.1", "1.2.6.1.1.1"));
    let truncated = full[..full.len() - 10].to_vec();
    let mut no_uid = Spec::new("1.2.6.1", "1.2.6.1.1", "1.2.6.1.1.2");
    no_uid.study = String::new();
    let good = dicom_file(&Spec::new("1.2.6.1", "1.2.6.1.1", "1.2.6.1.1.3"));
    let (status, body) = store(&server, "/studies", &[truncated, dicom_file(&no_uid), good]);
    assert_eq!(status, 202, "{body}");
    assert_eq!(values(&body, "00081198").len(), 2);
    assert_eq!(values(&body, "00081199").len(), 1);
}

#[test]
fn bad_requests_get_4xx_and_the_server_keeps_serving() {
    let server = Server::start_with(&[("KASTELL__SERVER__MAX_REQUEST_BYTES", "100000")]);
    let http = client();
    let part = dicom_file(&Spec::new("1.2.7.1", "1.2.7.1.1", "1.2.7.1.1.1"));
    // Wrong media types.
    let r = http
        .post(server.url("/studies"))
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    let r = http
        .post(server.url("/studies"))
        .header(
            "Content-Type",
            "multipart/related; type=\"image/png\"; boundary=x",
        )
        .body("--x--")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    // No boundary, garbage body, no parts.
    let r = http
        .post(server.url("/studies"))
        .header(
            "Content-Type",
            "multipart/related; type=\"application/dicom\"",
        )
        .body("x")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = http
        .post(server.url("/studies"))
        .header(
            "Content-Type",
            "multipart/related; type=\"application/dicom\"; boundary=zz",
        )
        .body("this is not multipart")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // Too large.
    let big = vec![0u8; 200_000];
    let (content_type, body) = multipart(&[big]);
    let r = http
        .post(server.url("/studies"))
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    // Unknown method on a known resource.
    let r = http.delete(server.url("/studies")).send().unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert!(r.headers().get("Allow").is_some());
    // Still serving.
    assert_eq!(store(&server, "/studies", &[part]).0, 200);
}

/// More parts than a request completes at once (16), rejected ones among them:
/// each stored one retrieves byte for byte, a rejected one leaves no blob (its
/// deletion waits for its completion, which could otherwise rename it back),
/// and `verify` finds every blob indexed and nothing else.
#[test]
fn many_parts_complete_beside_the_request_and_rejected_ones_leave_nothing() {
    let server = Server::start();
    let study = "1.2.11.1";
    let mut parts = Vec::new();
    let mut stored = Vec::new();
    for n in 0..40 {
        let series = format!("{study}.1");
        let uid = format!("{series}.{n}");
        if n % 7 == 3 {
            // Another study than the URL's: parsed, then rejected (A901).
            let other = format!("1.2.11.2.{n}");
            parts.push(dicom_file(&Spec::new(&other, &format!("{other}.1"), &uid)));
        } else if n % 11 == 5 {
            let file = dicom_file(&Spec::new(study, &series, &uid));
            parts.push(file[..file.len() - 10].to_vec());
        } else {
            let mut spec = Spec::new(study, &series, &uid);
            if n % 5 == 0 {
                spec.size = 128;
                spec.frames = 4;
            }
            let file = dicom_file(&spec);
            stored.push((series, uid, file.clone()));
            parts.push(file);
        }
    }
    let (status, body) = store(&server, &format!("/studies/{study}"), &parts);
    assert_eq!(status, 202, "{body}");
    assert_eq!(values(&body, "00081199").len(), stored.len());
    assert_eq!(values(&body, "00081198").len(), parts.len() - stored.len());
    for (series, uid, file) in &stored {
        let response = client()
            .get(server.url(&format!("/studies/{study}/series/{series}/instances/{uid}")))
            .header("Accept", "application/dicom")
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{uid}");
        assert!(response.bytes().unwrap().to_vec() == *file, "{uid}");
    }
    wait_until("only the stored instances' blobs are left", || {
        server.blob_files().len() == stored.len()
    });
    let (ok, report) = verify(&server.data_dir);
    assert!(
        ok && report.contains(&format!(
            "{} indexed blobs checked, 0 failed, 0 orphaned",
            stored.len()
        )),
        "{report}"
    );
}

/// A request cut off after many complete parts, while their uploads may still
/// be completing: every blob goes once they ended, none is left renamed into
/// place after its deletion.
#[test]
fn a_request_cut_off_after_many_parts_leaves_no_blob() {
    let server = Server::start();
    let mut parts: Vec<Vec<u8>> = (0..24)
        .map(|n| {
            dicom_file(&Spec::new(
                "1.2.12.1",
                "1.2.12.1.1",
                &format!("1.2.12.1.1.{n}"),
            ))
        })
        .collect();
    // Cut in a small last part, right after the others ended: their
    // completions are still running when the server sees the end.
    parts.push(vec![0u8; 4096]);
    post_cut_off(&server, &parts, 2048, Duration::ZERO);
    wait_until("the cut-off request's blobs are removed", || {
        server.blob_files().is_empty()
    });
    // And they stay removed: no completion renames one back later.
    std::thread::sleep(Duration::from_millis(500));
    assert!(server.blob_files().is_empty());
    let (ok, report) = verify(&server.data_dir);
    assert!(
        ok && report.contains("0 indexed blobs checked, 0 failed, 0 orphaned"),
        "{report}"
    );
}

#[test]
fn an_aborted_upload_leaves_no_blob_and_no_row() {
    let server = Server::start();
    let spec = Spec::new("1.2.8.1", "1.2.8.1.1", "1.2.8.1.1.1");
    // The first part complete, the second cut off in the middle.
    let parts = [dicom_file(&spec), vec![0u8; 6 * 1024 * 1024]];
    post_cut_off(&server, &parts, 1024 * 1024, Duration::from_millis(500));
    wait_until("the aborted request's blobs are removed", || {
        server.blob_files().is_empty()
    });
    let r = client()
        .get(server.url("/studies?StudyInstanceUID=1.2.8.1"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
}

#[test]
fn orphaned_blobs_are_swept_at_start_up() {
    let server = Server::start();
    assert_eq!(
        store(
            &server,
            "/studies",
            &[dicom_file(&Spec::new(
                "1.2.9.1",
                "1.2.9.1.1",
                "1.2.9.1.1.1"
            ))]
        )
        .0,
        200
    );
    // A derived object the index records: the instance's thumbnail, cached.
    let thumbnail = client()
        .get(server.url("/studies/1.2.9.1/series/1.2.9.1.1/instances/1.2.9.1.1.1/thumbnail"))
        .send()
        .unwrap();
    assert_eq!(thumbnail.status().as_u16(), 200);
    let derived = |data: &std::path::Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(data.join("blobs/derived"))
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    };
    wait_until("the thumbnail is cached", || {
        derived(&server.data_dir).len() == 1
    });
    let data_dir = server.data_dir.clone();
    let dir = tempfile::tempdir().unwrap();
    let kept = dir.path().join("data");
    std::fs::rename(&data_dir, &kept).unwrap();
    drop(server);
    let cached = derived(&kept);
    // Left by a crash: an instance blob whose rows were never committed, and a
    // derived object written but never recorded (an hour ago, so that verify
    // does not take it for one on its way to being recorded).
    let orphan = kept.join("blobs/instances/0123456789abcdef0123456789abcdef");
    std::fs::write(&orphan, b"left by a crash").unwrap();
    let derived_orphan = kept.join("blobs/derived/fedcba9876543210fedcba9876543210");
    std::fs::write(&derived_orphan, b"left by a crash").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&derived_orphan)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    let (ok, out) = verify(&kept);
    assert!(ok && out.contains("0 failed, 2 orphaned"), "{out}");
    assert!(out.contains("0123456789abcdef0123456789abcdef"), "{out}");
    assert!(out.contains("fedcba9876543210fedcba9876543210"), "{out}");
    let server = Server::spawn(&kept, &[("KASTELL__STORAGE__ORPHAN_GRACE_SECS", "0")]);
    wait_until("the start-up sweep removes the orphans", || {
        !orphan.exists() && !derived_orphan.exists()
    });
    assert_eq!(server.blob_files().len(), 1, "the indexed blob must stay");
    assert_eq!(
        derived(&kept),
        cached,
        "the recorded derived object must stay"
    );
    let r = client()
        .get(server.url("/studies/1.2.9.1"))
        .header("Accept", "multipart/related; type=\"application/dicom\"")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[test]
fn overwrite_can_be_enabled() {
    let server = Server::start_with(&[("KASTELL__DICOMWEB__OVERWRITE_EXISTING", "true")]);
    let spec = Spec::new("1.2.10.1", "1.2.10.1.1", "1.2.10.1.1.1");
    assert_eq!(store(&server, "/studies", &[dicom_file(&spec)]).0, 200);
    let mut changed = spec.clone();
    changed.patient_name = "Replaced^Name".into();
    let replacement = dicom_file(&changed);
    let (status, body) = store(&server, "/studies", std::slice::from_ref(&replacement));
    assert_eq!(status, 200, "{body}");
    let response = client()
        .get(server.url("/studies/1.2.10.1/series/1.2.10.1.1/instances/1.2.10.1.1.1"))
        .header("Accept", "application/dicom")
        .send()
        .unwrap();
    assert_eq!(response.bytes().unwrap().to_vec(), replacement);
    wait_until("the replaced blob is removed", || {
        server.blob_files().len() == 1
    });
}

/// POSTs a STOW of `parts` whose body stops `missing` bytes before its end,
/// waits `pause`, then drops the connection.
fn post_cut_off(server: &Server, parts: &[Vec<u8>], missing: usize, pause: Duration) {
    let (content_type, body) = multipart(parts);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(
        stream,
        "POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(&body[..body.len() - missing]).unwrap();
    stream.flush().unwrap();
    std::thread::sleep(pause);
    let _ = stream.shutdown(std::net::Shutdown::Both);
}
