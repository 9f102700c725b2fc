//! WADO-RS against the real binary: instances, metadata, bulk data, negotiation.

mod common;

use common::*;

fn stored() -> (Server, Vec<Vec<u8>>) {
    let server = Server::start();
    let one = dicom_file(&Spec::new("3.1", "3.1.1", "3.1.1.1"));
    let mut spec = Spec::new("3.1", "3.1.1", "3.1.1.2");
    spec.instance_number = 2;
    spec.transfer_syntax = "1.2.840.10008.1.2".into(); // Implicit VR LE
    let two = dicom_file(&spec);
    assert_eq!(
        store(&server, "/studies", &[one.clone(), two.clone()]).0,
        200
    );
    (server, vec![one, two])
}

#[test]
fn retrieves_a_study_as_stored_multipart() {
    let (server, files) = stored();
    let response = client()
        .get(server.url("/studies/3.1"))
        .header(
            "Accept",
            "multipart/related; type=\"application/dicom\"; transfer-syntax=*",
        )
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(content_type.starts_with("multipart/related; type=\"application/dicom\""));
    let parts = split_multipart(&content_type, &response.bytes().unwrap());
    assert_eq!(parts.len(), 2);
    assert!(parts[0].0.contains("Content-Location: http://127.0.0.1:"));
    assert!(parts[0].0.contains("transfer-syntax=1.2.840.10008.1.2.1"));
    assert_eq!(parts[0].1, files[0], "Explicit VR LE is sent byte for byte");
    // Implicit VR LE never goes on the wire: it comes back as Explicit VR LE.
    assert!(parts[1].0.contains("transfer-syntax=1.2.840.10008.1.2.1"));
    let reencoded = dicom_object::from_reader(&parts[1].1[128..]).unwrap();
    assert_eq!(reencoded.meta().transfer_syntax(), "1.2.840.10008.1.2.1");
    let original = dicom_object::from_reader(&files[1][128..]).unwrap();
    let pixels = |o: &dicom_object::DefaultDicomObject| {
        o.element(dicom_dictionary_std::tags::PIXEL_DATA)
            .unwrap()
            .to_bytes()
            .unwrap()
            .to_vec()
    };
    assert_eq!(pixels(&reencoded), pixels(&original));
}

#[test]
fn negotiation_and_missing_resources() {
    let (server, _) = stored();
    let http = client();
    let get = |path: &str, accept: Option<&str>| {
        let mut request = http.get(server.url(path));
        if let Some(accept) = accept {
            request = request.header("Accept", accept);
        }
        request.send().unwrap().status().as_u16()
    };
    assert_eq!(get("/studies/3.1", None), 200, "no Accept means */*");
    assert_eq!(get("/studies/3.1", Some("image/png")), 406);
    assert_eq!(
        get(
            "/studies/3.1?accept=multipart%2Frelated%3B%20type%3D%22application%2Fdicom%22",
            Some("image/png")
        ),
        200,
        "the accept query parameter counts"
    );
    assert_eq!(get("/studies/3.1", Some("multipart/related; type=\"application/dicom\"; transfer-syntax=1.2.840.10008.1.2.4.50")), 406);
    assert_eq!(
        get(
            "/studies/3.1/series/3.1.1/instances/3.1.1.1",
            Some("application/dicom")
        ),
        200
    );
    assert_eq!(
        get("/studies/3.1", Some("application/dicom")),
        406,
        "single part only for one instance"
    );
    assert_eq!(get("/studies/9.9", None), 404);
    assert_eq!(get("/studies/3.1/series/9.9", None), 404);
    assert_eq!(
        get("/studies/3.1/series/3.1.1/instances/9.9/metadata", None),
        404
    );
    assert_eq!(
        get("/studies/3.1/metadata", Some("application/dicom+xml")),
        406
    );
}

#[test]
fn metadata_is_complete_and_bulk_data_resolves() {
    let (server, _) = stored();
    let response = client()
        .get(server.url("/studies/3.1/series/3.1.1/metadata"))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "application/dicom+json");
    let metadata: serde_json::Value = response.json().unwrap();
    let items = metadata.as_array().unwrap();
    assert_eq!(items.len(), 2);
    for item in items {
        let object = item.as_object().unwrap();
        assert!(
            object.keys().all(|k| !k.starts_with("0002")),
            "no file meta group"
        );
        assert_eq!(item["00280010"]["Value"][0], 4);
        assert_eq!(first_string(item, "0020000D").as_deref(), Some("3.1"));
        let uri = item["7FE00010"]["BulkDataURI"].as_str().unwrap();
        let response = client()
            .get(uri)
            .header(
                "Accept",
                "multipart/related; type=\"application/octet-stream\"",
            )
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        let parts = split_multipart(&content_type, &response.bytes().unwrap());
        assert_eq!(parts.len(), 1);
        assert!(parts[0].0.contains(&format!("Content-Location: {uri}")));
        let instance_number = item["00200013"]["Value"][0].as_u64().unwrap() as u16;
        let expected: Vec<u8> = (0..16u16)
            .flat_map(|i| (i * 100 + instance_number).to_le_bytes())
            .collect();
        assert_eq!(parts[0].1, expected);
    }
}

#[test]
fn cors_for_browser_viewers() {
    let server = Server::start_with(&[(
        "KASTELL__SERVER__CORS_ALLOWED_ORIGINS",
        "[\"http://viewer.test\"]",
    )]);
    let spec = Spec::new("3.9", "3.9.1", "3.9.1.1");
    assert_eq!(store(&server, "/studies", &[dicom_file(&spec)]).0, 200);
    // Preflight, as a browser sends it for a quoted Accept value.
    let preflight = client()
        .request(
            reqwest::Method::OPTIONS,
            server.url("/studies/3.9/series/3.9.1/metadata"),
        )
        .header("Origin", "http://viewer.test")
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "accept")
        .send()
        .unwrap();
    assert_eq!(preflight.status().as_u16(), 200);
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "http://viewer.test"
    );
    let response = client()
        .get(server.url("/studies?limit=1"))
        .header("Origin", "http://viewer.test")
        .send()
        .unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "http://viewer.test"
    );
    let exposed = response.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for header in ["content-location", "location", "warning"] {
        assert!(exposed.contains(header), "{header} not exposed: {exposed}");
    }
    // Other origins get no CORS grant.
    let other = client()
        .get(server.url("/studies?limit=1"))
        .header("Origin", "http://evil.test")
        .send()
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

/// A native multi-frame file: `frames` frames of 4x4 16-bit pixels, frame f's
/// pixels all equal to f * 1000 + index.
fn multiframe_file(spec: &Spec, frames: u16) -> Vec<u8> {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    let single = dicom_file(spec);
    let mut object = dicom_object::from_reader(&single[128..]).unwrap();
    object.put(DataElement::new(
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        PrimitiveValue::from(frames.to_string()),
    ));
    let pixels: Vec<u16> = (0..frames)
        .flat_map(|f| (0..16u16).map(move |i| (f + 1) * 1000 + i))
        .collect();
    object.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(pixels.into()),
    ));
    let mut bytes = Vec::new();
    object.write_all(&mut bytes).unwrap();
    bytes
}

#[test]
fn frames_are_read_one_by_one() {
    let server = Server::start();
    let spec = Spec::new("3.7", "3.7.1", "3.7.1.1");
    assert_eq!(
        store(&server, "/studies", &[multiframe_file(&spec, 5)]).0,
        200
    );
    let base = "/studies/3.7/series/3.7.1/instances/3.7.1.1/frames";
    // As OHIF asks: one frame, unquoted type, any transfer syntax.
    let response = client()
        .get(server.url(&format!("{base}/4,2")))
        .header(
            "Accept",
            "multipart/related; type=application/octet-stream; transfer-syntax=*",
        )
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    let parts = split_multipart(&content_type, &response.bytes().unwrap());
    assert_eq!(parts.len(), 2);
    for ((headers, body), frame) in parts.iter().zip([4u16, 2]) {
        assert!(
            headers.contains("application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"),
            "{headers}"
        );
        assert!(headers.contains(&format!("{base}/{frame}")), "{headers}");
        let expected: Vec<u8> = (0..16u16)
            .flat_map(|i| (frame * 1000 + i).to_le_bytes())
            .collect();
        assert_eq!(body, &expected, "frame {frame}");
    }
    let status = |path: &str| {
        client()
            .get(server.url(path))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(status(&format!("{base}/0")), 400);
    assert_eq!(status(&format!("{base}/x")), 400);
    assert_eq!(status(&format!("{base}/6")), 404);
    assert_eq!(status(&format!("{base}/1")), 200, "no Accept means */*");
    assert_eq!(
        status("/studies/3.7/series/3.7.1/instances/9.9/frames/1"),
        404
    );
}

#[test]
fn wado_uri_returns_the_instance() {
    let (server, files) = stored();
    let uri = |query: &str| format!("http://127.0.0.1:{}/wado?{query}", server.port);
    let ok = client()
        .get(uri("requestType=WADO&studyUID=3.1&seriesUID=3.1.1&objectUID=3.1.1.1&contentType=application%2Fdicom"))
        .send()
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(ok.headers()["content-type"], "application/dicom");
    assert_eq!(ok.bytes().unwrap().to_vec(), files[0]);
    let implicit = client()
        .get(uri("requestType=WADO&studyUID=3.1&seriesUID=3.1.1&objectUID=3.1.1.2&contentType=application/dicom&transferSyntax=*"))
        .send()
        .unwrap();
    let body = implicit.bytes().unwrap();
    assert_eq!(
        dicom_object::from_reader(&body[128..])
            .unwrap()
            .meta()
            .transfer_syntax(),
        "1.2.840.10008.1.2.1"
    );
    let status = |query: &str| client().get(uri(query)).send().unwrap().status().as_u16();
    assert_eq!(
        status("studyUID=3.1&seriesUID=3.1.1&objectUID=3.1.1.1&contentType=application/dicom"),
        400
    );
    assert_eq!(
        status("requestType=WADO&studyUID=3.1&objectUID=3.1.1.1&contentType=application/dicom"),
        400
    );
    assert_eq!(status("requestType=WADO&studyUID=3.1&seriesUID=3.1.1&objectUID=3.1.1.1&contentType=application/dicom&transferSyntax=1.2.840.10008.1.2.4.50"), 406);
    assert_eq!(status("requestType=WADO&studyUID=3.1&seriesUID=3.1.1&objectUID=9.9&contentType=application/dicom"), 404);
    let rendered = client()
        .get(uri(
            "requestType=WADO&studyUID=3.1&seriesUID=3.1.1&objectUID=3.1.1.1&rows=2",
        ))
        .send()
        .unwrap();
    assert_eq!(
        rendered.status().as_u16(),
        200,
        "no contentType means a rendered image/jpeg"
    );
    assert_eq!(rendered.headers()["content-type"], "image/jpeg");
    let jpeg = rendered.bytes().unwrap();
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
    assert_eq!(
        status("requestType=WADO&studyUID=3.1&seriesUID=3.1.1&objectUID=3.1.1.1&frameNumber=2"),
        400,
        "frameNumber on a single-frame object"
    );
}

#[test]
fn metadata_revalidates_with_etags() {
    let (server, _) = stored();
    let url = server.url("/studies/3.1/series/3.1.1/metadata");
    let first = client().get(&url).send().unwrap();
    assert_eq!(first.status().as_u16(), 200);
    let etag = first.headers()["etag"].to_str().unwrap().to_string();
    let again = client()
        .get(&url)
        .header("If-None-Match", &etag)
        .send()
        .unwrap();
    assert_eq!(again.status().as_u16(), 304);
    assert!(again.bytes().unwrap().is_empty());
    // A change to the series changes the tag.
    let mut spec = Spec::new("3.1", "3.1.1", "3.1.1.3");
    spec.instance_number = 3;
    assert_eq!(store(&server, "/studies", &[dicom_file(&spec)]).0, 200);
    let changed = client()
        .get(&url)
        .header("If-None-Match", &etag)
        .send()
        .unwrap();
    assert_eq!(changed.status().as_u16(), 200);
    assert_ne!(changed.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(
        changed
            .json::<serde_json::Value>()
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

/// `count` instances of one series, numbered from 1.
fn series_files(study: &str, series: &str, count: i32) -> Vec<Vec<u8>> {
    (1..=count)
        .map(|n| {
            let mut spec = Spec::new(study, series, &format!("{series}.{n}"));
            spec.instance_number = n;
            dicom_file(&spec)
        })
        .collect()
}

/// The derived objects in a file-backend data directory.
fn derived_objects(data_dir: &std::path::Path) -> usize {
    std::fs::read_dir(data_dir.join("blobs/derived")).map_or(0, |d| d.count())
}

/// A series stored and then left alone has its metadata built without anyone
/// asking (after `metadata_warm_after_secs` of quiet), and the first request is
/// answered from that object rather than building another.
#[test]
fn series_metadata_is_built_once_the_series_is_quiet() {
    let server = Server::start_with(&[("KASTELL__DICOMWEB__METADATA_WARM_AFTER_SECS", "1")]);
    let files = series_files("7.1", "7.1.1", 3);
    // Two requests into one series: one object once it is quiet, not one each.
    assert_eq!(store(&server, "/studies", &files[..2]).0, 200);
    assert_eq!(store(&server, "/studies", &files[2..]).0, 200);
    wait_until("the series metadata is built", || {
        derived_objects(&server.data_dir) >= 1
    });
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(derived_objects(&server.data_dir), 1);
    let response = client()
        .get(server.url("/studies/7.1/series/7.1.1/metadata"))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let metadata: serde_json::Value = response.json().unwrap();
    assert_eq!(metadata.as_array().unwrap().len(), 3);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        derived_objects(&server.data_dir),
        1,
        "the request was answered from the object built ahead"
    );
}

/// With warming off, nothing is built until the first request.
#[test]
fn without_warming_metadata_waits_for_its_first_request() {
    let server = Server::start();
    let files = series_files("7.2", "7.2.1", 2);
    assert_eq!(store(&server, "/studies", &files).0, 200);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(derived_objects(&server.data_dir), 0);
    let response = client()
        .get(server.url("/studies/7.2/series/7.2.1/metadata"))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    wait_until("the metadata is kept on first request", || {
        derived_objects(&server.data_dir) == 1
    });
}

/// The metadata of a study, with each server's base URL taken out.
fn study_metadata_text(server: &Server, study: &str) -> (u16, String) {
    let response = client()
        .get(server.url(&format!("/studies/{study}/metadata")))
        .send()
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().unwrap();
    (status, text.replace(&server.url(""), "BASE"))
}

fn remove_instance_blobs(data_dir: &std::path::Path) -> usize {
    let dir = data_dir.join("blobs/instances");
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
        removed += 1;
    }
    removed
}

/// Series and instance metadata come from the sealed copy STOW keeps in the
/// index: with every instance blob gone, the first request still answers (with
/// the copy off, it cannot), and the two give the same JSON.
#[test]
fn metadata_comes_from_the_index_copy_and_matches_the_blobs() {
    let mut files = series_files("7.3", "7.3.1", 3);
    files.extend(series_files("7.3", "7.3.2", 1));
    let with_copy = Server::start();
    let without_copy = Server::start_with(&[("KASTELL__DICOMWEB__METADATA_IN_INDEX", "false")]);
    for server in [&with_copy, &without_copy] {
        assert_eq!(store(server, "/studies", &files).0, 200);
    }
    let (status, from_blobs) = study_metadata_text(&without_copy, "7.3");
    assert_eq!(status, 200);
    // Fresh servers, nothing cached: the first answer of each.
    let (status, from_index) = study_metadata_text(&with_copy, "7.3");
    assert_eq!(status, 200);
    assert_eq!(from_index, from_blobs);
    let items: serde_json::Value = serde_json::from_str(&from_index).unwrap();
    assert_eq!(items.as_array().unwrap().len(), 4);
    assert!(from_index.contains(
        "\"BulkDataURI\":\"BASE/studies/7.3/series/7.3.1/instances/7.3.1.1/bulkdata/7FE00010\""
    ));

    // Take every instance blob away; the derived cache of the series is not
    // there either (only series that were asked for are cached: ask another).
    std::thread::sleep(std::time::Duration::from_millis(500));
    let fresh_with_copy = Server::start();
    assert_eq!(store(&fresh_with_copy, "/studies", &files).0, 200);
    assert_eq!(remove_instance_blobs(&fresh_with_copy.data_dir), 4);
    assert_eq!(derived_objects(&fresh_with_copy.data_dir), 0);
    let (status, without_blobs) = study_metadata_text(&fresh_with_copy, "7.3");
    assert_eq!(status, 200, "{without_blobs}");
    assert_eq!(without_blobs, from_blobs);
    let response = client()
        .get(fresh_with_copy.url("/studies/7.3/series/7.3.2/instances/7.3.2.1/metadata"))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    // The XML model too.
    let response = client()
        .get(fresh_with_copy.url("/studies/7.3/metadata"))
        .header(
            "Accept",
            "multipart/related; type=\"application/dicom+xml\"",
        )
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let xml = response.text().unwrap();
    assert_eq!(xml.matches("<NativeDicomModel").count(), 4, "{xml}");
    assert!(xml.contains(&format!(
        "{}/studies/7.3/series/7.3.1/instances/7.3.1.1/bulkdata/7FE00010",
        fresh_with_copy.url("")
    )));

    assert_eq!(remove_instance_blobs(&without_copy.data_dir), 4);
    let response = client()
        .get(without_copy.url("/studies/7.3/series/7.3.2/instances/7.3.2.1/metadata"))
        .send()
        .unwrap();
    assert_ne!(
        response.status().as_u16(),
        200,
        "without the copy, metadata reads the blob"
    );
}

/// A study of many small instances with a large one among them comes back
/// whole and in order (the small ones read several at a time, the large one
/// streamed on its own), and when the objects after the first are gone the
/// answer ends early — it never skips an instance and goes on.
#[test]
fn a_study_of_small_and_large_instances_comes_back_whole_and_in_order() {
    let server = Server::start();
    let files: Vec<Vec<u8>> = (1..=40)
        .map(|n| {
            let series = if n <= 25 { "8.1.1" } else { "8.1.2" };
            let mut spec = Spec::new("8.1", series, &format!("{series}.{n}"));
            spec.series_number = if n <= 25 { 1 } else { 2 };
            spec.instance_number = n;
            if n == 37 {
                // 512 KiB of pixel data: larger than a batch; the 35 small
                // ones before it fill one batch (32 at most) and part of the next.
                spec.size = 512;
            }
            dicom_file(&spec)
        })
        .collect();
    // The first alone, before the others: its blob is the oldest file.
    assert_eq!(store(&server, "/studies", &files[..1]).0, 200);
    std::thread::sleep(std::time::Duration::from_millis(50));
    for chunk in files[1..].chunks(13) {
        assert_eq!(store(&server, "/studies", chunk).0, 200);
    }
    let get = || {
        client()
            .get(server.url("/studies/8.1"))
            .header(
                "Accept",
                "multipart/related; type=\"application/dicom\"; transfer-syntax=*",
            )
            .send()
            .unwrap()
    };
    let response = get();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    let parts = split_multipart(&content_type, &response.bytes().unwrap());
    assert_eq!(parts.len(), files.len());
    for (n, (part, file)) in parts.iter().zip(&files).enumerate() {
        assert!(
            part.1 == *file,
            "part {n} is not instance {} as stored",
            n + 1
        );
    }

    let dir = server.data_dir.join("blobs/instances");
    let mut blobs: Vec<(std::time::SystemTime, std::path::PathBuf)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            (std::fs::metadata(&path).unwrap().modified().unwrap(), path)
        })
        .collect();
    assert_eq!(blobs.len(), files.len());
    blobs.sort();
    for (_, path) in &blobs[1..] {
        std::fs::remove_file(path).unwrap();
    }
    // The first part opens, so the answer starts (200); the next object is
    // missing, so the answer must end broken. When the failure comes before
    // the server flushed the head (buffered with the first part), the client
    // sees the connection closed before any response: broken all the same.
    let broken = match client()
        .get(server.url("/studies/8.1"))
        .header(
            "Accept",
            "multipart/related; type=\"application/dicom\"; transfer-syntax=*",
        )
        .send()
    {
        Ok(response) => {
            assert_eq!(response.status().as_u16(), 200, "the first part opens");
            response.bytes().is_err()
        }
        Err(error) => error.is_request() || error.is_body(),
    };
    assert!(
        broken,
        "an answer missing instances must end broken, not complete"
    );
    // A broken answer is not a crash: the server still answers.
    let health = client()
        .get(format!("http://127.0.0.1:{}/healthz", server.port))
        .send()
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
}
