//! Tenants: each has its own index and key; the same UIDs in two tenants are two
//! different studies, and no request to one tenant reaches the other's data.

mod common;

use common::*;

fn tenant_url(server: &Server, tenant: &str, path: &str) -> String {
    format!(
        "http://127.0.0.1:{}/tenants/{tenant}/dicomweb{path}",
        server.port
    )
}

fn store_at(url: &str, parts: &[Vec<u8>]) -> u16 {
    let (content_type, body) = multipart(parts);
    client()
        .post(url)
        .header("Content-Type", content_type)
        .header("Accept", "application/dicom+json")
        .body(body)
        .send()
        .unwrap()
        .status()
        .as_u16()
}

fn patient_names(url: &str) -> Vec<String> {
    let response = client().get(url).send().unwrap();
    if response.status().as_u16() == 204 {
        return Vec::new();
    }
    let items: serde_json::Value = response.json().unwrap();
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            item["00100010"]["Value"][0]["Alphabetic"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

#[test]
fn tenants_are_isolated_even_with_the_same_uids() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, out) = cli(&["tenants", "add", "radiology"], &data);
    assert!(ok, "{out}");
    assert!(out.contains("/tenants/radiology/dicomweb"), "{out}");
    let (ok, out) = cli(&["tenants", "add", "Bad_Name"], &data);
    assert!(!ok, "invalid names are refused: {out}");
    let server = Server::spawn(&data, &[]);

    // The same study, series and instance UIDs, different content, in each tenant.
    let mut default_spec = Spec::new("9.1", "9.1.1", "9.1.1.1");
    default_spec.patient_name = "Default^Patient".into();
    let mut tenant_spec = Spec::new("9.1", "9.1.1", "9.1.1.1");
    tenant_spec.patient_name = "Radiology^Patient".into();
    let default_file = dicom_file(&default_spec);
    let tenant_file = dicom_file(&tenant_spec);
    assert_eq!(
        store_at(&server.url("/studies"), std::slice::from_ref(&default_file)),
        200
    );
    assert_eq!(
        store_at(
            &tenant_url(&server, "radiology", "/studies"),
            std::slice::from_ref(&tenant_file)
        ),
        200,
        "the same UIDs in another tenant are not a conflict"
    );
    // A study only the tenant has.
    let only = dicom_file(&Spec::new("9.2", "9.2.1", "9.2.1.1"));
    assert_eq!(
        store_at(&tenant_url(&server, "radiology", "/studies"), &[only]),
        200
    );

    // Search sees only the tenant's own studies.
    assert_eq!(patient_names(&server.url("/studies")), ["Default^Patient"]);
    let mut names = patient_names(&tenant_url(&server, "radiology", "/studies"));
    names.sort();
    assert_eq!(names, ["Doe^John", "Radiology^Patient"]);
    assert_eq!(
        patient_names(&server.url("/studies?StudyInstanceUID=9.2")),
        Vec::<String>::new()
    );

    // Retrieval gives each tenant its own bytes; knowing a UID is not enough.
    let instance = "/studies/9.1/series/9.1.1/instances/9.1.1.1";
    let get = |url: String| {
        client()
            .get(url)
            .header("Accept", "application/dicom; transfer-syntax=*")
            .send()
            .unwrap()
    };
    assert_eq!(
        get(server.url(instance)).bytes().unwrap().to_vec(),
        default_file
    );
    let tenant_response = get(tenant_url(&server, "radiology", instance));
    let location = tenant_response.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        location.contains("/tenants/radiology/dicomweb/studies/9.1/"),
        "URLs point back into the tenant: {location}"
    );
    assert_eq!(tenant_response.bytes().unwrap().to_vec(), tenant_file);
    assert_eq!(
        get(server.url("/studies/9.2/series/9.2.1/instances/9.2.1.1"))
            .status()
            .as_u16(),
        404
    );

    // Deleting in one tenant leaves the other alone.
    let deleted = client()
        .delete(tenant_url(&server, "radiology", "/studies/9.1"))
        .send()
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    assert_eq!(
        get(tenant_url(&server, "radiology", instance))
            .status()
            .as_u16(),
        410
    );
    assert_eq!(get(server.url(instance)).status().as_u16(), 200);

    // Unknown tenants do not exist; disabled ones are refused.
    assert_eq!(
        client()
            .get(tenant_url(&server, "nobody", "/studies"))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        404
    );
    let (ok, out) = cli(&["tenants", "disable", "radiology"], &data);
    assert!(ok, "{out}");
    let (ok, out) = cli(&["tenants", "list"], &data);
    assert!(
        ok && out.contains("radiology") && out.contains("disabled"),
        "{out}"
    );
    wait_until("the disabled tenant is refused", || {
        client()
            .get(tenant_url(&server, "radiology", "/studies"))
            .send()
            .unwrap()
            .status()
            .as_u16()
            == 403
    });

    // The blob store is shared: verify checks every tenant's objects, and none
    // is taken for an orphan.
    let data = server.stop();
    let (ok, out) = verify(&data);
    assert!(ok, "{out}");
    assert!(out.contains("0 orphaned blobs"), "{out}");
}
