//! Several writers at once: two server processes sharing one index and one blob
//! store, four clients storing into the same study through both.

mod common;

use common::*;

#[test]
fn two_processes_and_four_clients_agree_on_one_study() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let a = Server::spawn(&data, &[]);
    let b = Server::spawn(&data, &[]);
    let servers = [&a, &b];
    std::thread::scope(|scope| {
        for client in 0..4 {
            let servers = &servers;
            scope.spawn(move || {
                for n in 0..10 {
                    let mut spec = Spec::new(
                        "4.1",
                        &format!("4.1.{}", client % 2),
                        &format!("4.1.{client}.{n}"),
                    );
                    spec.modality = if client % 2 == 0 {
                        "CT".into()
                    } else {
                        "MR".into()
                    };
                    spec.instance_number = n;
                    let server = servers[(client + n as usize) % 2];
                    let (status, body) = store(server, "/studies", &[dicom_file(&spec)]);
                    assert_eq!(status, 200, "{body}");
                    // Storing the same instance again through the other process changes nothing.
                    if n == 0 {
                        let other = servers[(client + 1) % 2];
                        assert_eq!(store(other, "/studies", &[dicom_file(&spec)]).0, 200);
                    }
                }
            });
        }
    });
    for server in servers {
        let studies: serde_json::Value = client()
            .get(server.url("/studies?StudyInstanceUID=4.1"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let study = &studies[0];
        assert_eq!(studies.as_array().unwrap().len(), 1);
        assert_eq!(
            study["00201208"]["Value"][0], 40,
            "NumberOfStudyRelatedInstances"
        );
        assert_eq!(
            study["00201206"]["Value"][0], 2,
            "NumberOfStudyRelatedSeries"
        );
        assert_eq!(values(study, "00080061"), vec!["CT", "MR"]);
        let series: serde_json::Value = client()
            .get(server.url("/studies/4.1/series"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let counts: Vec<u64> = series
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["00201209"]["Value"][0].as_u64().unwrap())
            .collect();
        assert_eq!(counts, vec![20, 20]);
        let instances: serde_json::Value = client()
            .get(server.url("/studies/4.1/instances"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(instances.as_array().unwrap().len(), 40, "no duplicate rows");
    }
    // What one process stored, the other returns.
    let response = client()
        .get(b.url("/studies/4.1/series/4.1.0/instances/4.1.0.1"))
        .header("Accept", "application/dicom")
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    // Every indexed instance decrypts from the shared store, and the duplicate
    // uploads left nothing behind (give the background clean-up a moment).
    wait_until("verify finds every blob indexed and nothing else", || {
        let (ok, out) = verify(&data);
        eprintln!("{out}");
        ok && out.contains("40 indexed blobs checked, 0 failed, 0 orphaned")
    });
}
