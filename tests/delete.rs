//! DELETE of instances, series and studies: 204, then 410 on retrieval, search no
//! longer finds them, counts follow, blobs go.

mod common;

use common::*;

fn status(server: &Server, method: reqwest::Method, path: &str) -> u16 {
    client()
        .request(method, server.url(path))
        .send()
        .unwrap()
        .status()
        .as_u16()
}

#[test]
fn deleting_instances_series_and_studies() {
    let server = Server::start();
    let a = Spec::new("11.1", "11.1.1", "11.1.1.1");
    let b = Spec::new("11.1", "11.1.1", "11.1.1.2");
    let mut c = Spec::new("11.1", "11.1.2", "11.1.2.1");
    c.modality = "MR".into();
    assert_eq!(
        store(
            &server,
            "/studies",
            &[dicom_file(&a), dicom_file(&b), dicom_file(&c)]
        )
        .0,
        200
    );
    use reqwest::Method;

    assert_eq!(
        status(
            &server,
            Method::DELETE,
            "/studies/11.1/series/11.1.1/instances/11.1.1.2"
        ),
        204
    );
    assert_eq!(
        status(
            &server,
            Method::GET,
            "/studies/11.1/series/11.1.1/instances/11.1.1.2"
        ),
        410
    );
    assert_eq!(
        status(
            &server,
            Method::GET,
            "/studies/11.1/series/11.1.1/instances/11.1.1.2/metadata"
        ),
        410
    );
    assert_eq!(
        status(
            &server,
            Method::DELETE,
            "/studies/11.1/series/11.1.1/instances/11.1.1.2"
        ),
        410
    );
    assert_eq!(
        status(
            &server,
            Method::DELETE,
            "/studies/11.1/series/11.1.1/instances/9.9.9"
        ),
        404
    );
    let study: serde_json::Value = client()
        .get(server.url("/studies?StudyInstanceUID=11.1"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(study[0]["00201208"]["Value"][0], 2, "counts follow");

    assert_eq!(
        status(&server, Method::DELETE, "/studies/11.1/series/11.1.2"),
        204
    );
    assert_eq!(
        status(&server, Method::GET, "/studies/11.1/series/11.1.2"),
        410
    );
    let study: serde_json::Value = client()
        .get(server.url("/studies?StudyInstanceUID=11.1"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        values(&study[0], "00080061"),
        vec!["CT"],
        "ModalitiesInStudy follows"
    );
    assert_eq!(study[0]["00201206"]["Value"][0], 1);
    assert_eq!(
        status(&server, Method::GET, "/studies/11.1"),
        200,
        "the rest is still there"
    );

    assert_eq!(status(&server, Method::DELETE, "/studies/11.1"), 204);
    assert_eq!(status(&server, Method::GET, "/studies/11.1"), 410);
    assert_eq!(
        status(&server, Method::GET, "/studies?StudyInstanceUID=11.1"),
        204
    );
    assert_eq!(
        status(&server, Method::GET, "/instances?StudyInstanceUID=11.1"),
        204
    );
    assert_eq!(status(&server, Method::DELETE, "/studies/12.1"), 404);
    // The blobs go behind the response.
    wait_until("verify finds no blob left", || {
        let (ok, out) = verify(&server.data_dir);
        eprintln!("{out}");
        ok && out.contains("0 indexed blobs checked, 0 failed, 0 orphaned")
    });

    // Storing it again brings it back.
    assert_eq!(store(&server, "/studies", &[dicom_file(&a)]).0, 200);
    assert_eq!(status(&server, Method::GET, "/studies/11.1"), 200);
}
