//! QIDO-RS against the real binary: matching rules, paging, warnings, JSON model.

mod common;

use common::*;
use serde_json::Value;

fn search(server: &Server, path_and_query: &str) -> (u16, Vec<String>, Value) {
    let response = client()
        .get(server.url(path_and_query))
        .header("Accept", "application/dicom+json")
        .send()
        .unwrap();
    let status = response.status().as_u16();
    let warnings = response
        .headers()
        .get_all("Warning")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let body = if status == 200 {
        response.json().unwrap()
    } else {
        Value::Null
    };
    (status, warnings, body)
}

fn study_uids(body: &Value) -> Vec<String> {
    body.as_array()
        .unwrap()
        .iter()
        .map(|s| first_string(s, "0020000D").unwrap())
        .collect()
}

/// Three studies: Müller (CT+MR), Doe (CT), doe lower-case (US).
fn populated() -> Server {
    let server = Server::start();
    let mut a = Spec::new("2.1", "2.1.1", "2.1.1.1");
    a.patient_name = "Müller^Jürgen".into();
    a.patient_id = "P-MUE".into();
    a.study_date = "20230102".into();
    a.study_time = "083000".into();
    a.accession = "A100".into();
    a.charset = Some("ISO_IR 192".into());
    let mut a2 = a.clone();
    a2.series = "2.1.2".into();
    a2.instance = "2.1.2.1".into();
    a2.modality = "MR".into();
    a2.series_number = 2;
    let mut b = Spec::new("2.2", "2.2.1", "2.2.1.1");
    b.patient_name = "Doe^Jane".into();
    b.patient_id = "P-DOE".into();
    b.study_date = "20240315".into();
    b.study_time = "141500".into();
    b.accession = "A200".into();
    let mut c = Spec::new("2.3", "2.3.1", "2.3.1.1");
    c.patient_name = "doe^john".into();
    c.patient_id = "p-doe".into();
    c.study_date = "20240316".into();
    c.study_time = "090000".into();
    c.modality = "US".into();
    c.accession = "B300".into();
    let files: Vec<Vec<u8>> = [a, a2, b, c].iter().map(dicom_file).collect();
    assert_eq!(store(&server, "/studies", &files).0, 200);
    server
}

#[test]
fn matching_rules_at_study_level() {
    let server = populated();
    let cases: &[(&str, &[&str])] = &[
        ("PatientID=P-DOE", &["2.2"]),
        ("00100020=p-doe", &["2.3"]),
        ("PatientID=P-*", &["2.1", "2.2"]),
        ("PatientID=P-D?E", &["2.2"]),
        ("PatientName=doe^jane", &["2.2"]),
        ("PatientName=DOE*", &["2.2", "2.3"]),
        ("PatientName=*ller*", &["2.1"]),
        ("PatientName=muller^jurgen", &["2.1"]),
        ("PatientName=jur&fuzzymatching=true", &["2.1"]),
        ("PatientName=jo&fuzzymatching=true", &["2.3"]),
        ("StudyDate=20240315", &["2.2"]),
        ("StudyDate=20240101-", &["2.2", "2.3"]),
        ("StudyDate=-20231231", &["2.1"]),
        ("StudyDate=20240315-20240316", &["2.2", "2.3"]),
        // Combined date-time: 15 March 14:00 to 16 March 09:30 holds both.
        (
            "StudyDate=20240315-20240316&StudyTime=1400-0930",
            &["2.2", "2.3"],
        ),
        ("StudyDate=20240315-20240316&StudyTime=1500-0830", &[]),
        (
            "StudyDate=20240315-20240316&StudyTime=1400-",
            &["2.2", "2.3"],
        ),
        ("StudyTime=0830", &["2.1"]),
        ("StudyTime=0800-0859", &["2.1"]),
        ("StudyTime=0800-0900", &["2.1", "2.3"]),
        ("ModalitiesInStudy=MR", &["2.1"]),
        ("ModalitiesInStudy=CT", &["2.1", "2.2"]),
        ("ModalitiesInStudy=US,MR", &["2.1", "2.3"]),
        ("AccessionNumber=A*", &["2.1", "2.2"]),
        ("AccessionNumber=A100,B300", &["2.1", "2.3"]),
        ("StudyInstanceUID=2.1,2.3", &["2.1", "2.3"]),
        ("PatientName=", &["2.1", "2.2", "2.3"]),
        ("PatientName=*", &["2.1", "2.2", "2.3"]),
    ];
    for (query, expected) in cases {
        let (status, _, body) = search(&server, &format!("/studies?{query}"));
        if expected.is_empty() {
            assert_eq!(status, 204, "{query}");
            continue;
        }
        assert_eq!(status, 200, "{query}");
        assert_eq!(study_uids(&body), *expected, "{query}");
    }
}

#[test]
fn results_follow_the_json_model() {
    let server = populated();
    let (_, _, body) = search(
        &server,
        "/studies?PatientID=P-MUE&includefield=StudyDescription",
    );
    let study = &body[0];
    let keys: Vec<&String> = study.as_object().unwrap().keys().collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "keys must be in tag order");
    assert_eq!(study["00100010"]["Value"][0]["Alphabetic"], "Müller^Jürgen");
    assert_eq!(
        study["00201206"]["Value"][0], 2,
        "NumberOfStudyRelatedSeries as a number"
    );
    assert_eq!(study["00201208"]["Value"][0], 2);
    assert_eq!(values(study, "00080061"), vec!["CT", "MR"]);
    assert_eq!(
        study["00080090"],
        serde_json::json!({"vr": "PN"}),
        "empty → no Value"
    );
    assert!(
        study.get("00081030").is_some(),
        "includefield attribute present"
    );
    assert!(first_string(study, "00081190")
        .unwrap()
        .ends_with("/dicomweb/studies/2.1"));
    for required in [
        "00080020", "00080030", "00080050", "00080061", "00080090", "00100010", "00100020",
        "00100030", "00100040", "0020000D", "00200010", "00201206", "00201208",
    ] {
        assert!(study.get(required).is_some(), "{required} missing");
    }
}

#[test]
fn every_resource_answers_at_its_level() {
    let server = populated();
    let (status, _, body) = search(&server, "/studies/2.1/series");
    assert_eq!(status, 200);
    let series: Vec<String> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|s| first_string(s, "0020000E").unwrap())
        .collect();
    assert_eq!(series, ["2.1.1", "2.1.2"]);
    assert!(
        body[0].get("00100010").is_none(),
        "no study attributes on study-scoped series"
    );
    assert_eq!(body[0]["00200011"]["Value"][0], 1);
    assert_eq!(body[0]["00201209"]["Value"][0], 1);

    let (_, _, body) = search(&server, "/series?Modality=MR");
    assert_eq!(body.as_array().unwrap().len(), 1);
    assert_eq!(
        first_string(&body[0], "0020000D").as_deref(),
        Some("2.1"),
        "/series carries study keys"
    );

    let (_, _, body) = search(&server, "/studies/2.1/instances");
    assert_eq!(body.as_array().unwrap().len(), 2);
    assert!(
        body[0].get("0020000E").is_some(),
        "series keys on study-scoped instances"
    );

    let (_, _, body) = search(&server, "/studies/2.1/series/2.1.2/instances");
    assert_eq!(
        first_string(&body[0], "00080018").as_deref(),
        Some("2.1.2.1")
    );
    assert_eq!(
        first_string(&body[0], "00080016").as_deref(),
        Some(SECONDARY_CAPTURE)
    );

    let (_, _, body) = search(&server, "/instances?PatientID=P-DOE");
    assert_eq!(body.as_array().unwrap().len(), 1);
    assert_eq!(first_string(&body[0], "0020000D").as_deref(), Some("2.2"));

    let (status, _, _) = search(&server, "/studies/9.9/series");
    assert_eq!(status, 204);
}

#[test]
fn paging_is_stable_and_warns_about_more() {
    let server = populated();
    let (_, warnings, body) = search(&server, "/studies?limit=2");
    assert_eq!(study_uids(&body), ["2.1", "2.2"]);
    assert!(
        warnings.iter().any(|w| w.starts_with("299 ")
            && w.contains("There are additional results that can be requested")),
        "{warnings:?}"
    );
    let (_, warnings, body) = search(&server, "/studies?limit=2&offset=2");
    assert_eq!(study_uids(&body), ["2.3"]);
    assert!(warnings.is_empty());
    let (status, _, _) = search(&server, "/studies?offset=3");
    assert_eq!(status, 204);
}

#[test]
fn bad_and_unknown_parameters() {
    let server = populated();
    for query in [
        "limit=abc",
        "offset=-1",
        "fuzzymatching=yes",
        "StudyDate=2024",
        "SeriesNumber=x",
    ] {
        let path = if query.starts_with("Series") {
            format!("/series?{query}")
        } else {
            format!("/studies?{query}")
        };
        let (status, _, _) = search(&server, &path);
        assert_eq!(status, 400, "{query}");
    }
    let (status, warnings, body) = search(
        &server,
        "/studies?NoSuchKeyword=1&PatientID=P-DOE&includefield=Bogus",
    );
    assert_eq!(status, 200);
    assert_eq!(study_uids(&body), ["2.2"]);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("NoSuchKeyword") && w.contains("Bogus")),
        "{warnings:?}"
    );
    let response = client()
        .get(server.url("/studies"))
        .header("Accept", "application/dicom+xml")
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 406);
}
