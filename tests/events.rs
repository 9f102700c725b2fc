//! The change feed over HTTP (issue 14): every create, replace and delete of an
//! instance, and every "study stable", numbered without gaps per tenant,
//! paged by `GET {prefix}/changefeed?after=&limit=`, the latest at
//! `GET {prefix}/changefeed/latest`; one sequence even with two server
//! processes on one index. (The broker and the webhooks: events_nats.rs,
//! events_webhooks.rs.)

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn feed(server: &Server, query: &str) -> (Vec<Value>, Option<String>) {
    let response = client()
        .get(server.url(&format!("/changefeed{query}")))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let link = response
        .headers()
        .get("link")
        .map(|l| l.to_str().unwrap().to_string());
    (response.json::<Vec<Value>>().unwrap(), link)
}

/// Every entry of the feed, page by page.
fn whole_feed(server: &Server, page: u32) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let (entries, _) = feed(server, &format!("?after={after}&limit={page}"));
        let Some(last) = entries.last() else {
            return all;
        };
        after = last["sequence"].as_i64().unwrap();
        all.extend(entries);
    }
}

fn summary(entries: &[Value]) -> Vec<(i64, String, String)> {
    entries
        .iter()
        .map(|e| {
            (
                e["sequence"].as_i64().unwrap(),
                e["action"].as_str().unwrap().to_string(),
                e["sopInstanceUID"]
                    .as_str()
                    .or(e["studyInstanceUID"].as_str())
                    .unwrap()
                    .to_string(),
            )
        })
        .collect()
}

fn latest(server: &Server) -> Value {
    client()
        .get(server.url("/changefeed/latest"))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

#[test]
fn stores_and_deletes_are_in_the_feed_in_order_and_paged() {
    let server = Server::start_with(&[("KASTELL__EVENTS__STABLE_AFTER_SECS", "0")]);
    assert_eq!(latest(&server)["sequence"], 0);
    assert!(feed(&server, "").0.is_empty());
    let files: Vec<Vec<u8>> = [("9.1", "9.1.1", "9.1.1.1"), ("9.1", "9.1.1", "9.1.1.2")]
        .iter()
        .map(|(st, se, i)| dicom_file(&Spec::new(st, se, i)))
        .collect();
    assert_eq!(store(&server, "/studies", &files).0, 200);
    // One good part and one that is not DICOM: only the good one is in the feed.
    let (status, _) = store(
        &server,
        "/studies",
        &[
            dicom_file(&Spec::new("9.2", "9.2.1", "9.2.1.1")),
            b"not a DICOM file".to_vec(),
        ],
    );
    assert_eq!(status, 202);
    // Sent again: no change, no entry.
    assert_eq!(store(&server, "/studies", &files[..1]).0, 200);
    let response = client()
        .delete(server.url("/studies/9.1/series/9.1.1/instances/9.1.1.1"))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);

    let expected = vec![
        (1, "created".to_string(), "9.1.1.1".to_string()),
        (2, "created".to_string(), "9.1.1.2".to_string()),
        (3, "created".to_string(), "9.2.1.1".to_string()),
        (4, "deleted".to_string(), "9.1.1.1".to_string()),
    ];
    let (all, link) = feed(&server, "");
    assert_eq!(summary(&all), expected);
    assert_eq!(link, None, "the last page has no next link");
    let entry = &all[2];
    assert_eq!(entry["studyInstanceUID"], "9.2");
    assert_eq!(entry["seriesInstanceUID"], "9.2.1");
    assert!(entry["sopClassUID"]
        .as_str()
        .unwrap()
        .starts_with("1.2.840.10008"));
    assert!(entry["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(
        entry.get("PatientName").is_none()
            && !entry
                .to_string()
                .contains(&Spec::new("9.2", "9.2.1", "9.2.1.1").patient_name),
        "no patient data in the feed: {entry}"
    );
    // Pages: two entries and a link to the next page, which has the rest.
    let (first, link) = feed(&server, "?limit=2");
    assert_eq!(summary(&first), expected[..2]);
    let link = link.expect("a full page links to the next");
    assert!(
        link.contains("after=2&limit=2") && link.contains("rel=\"next\""),
        "{link}"
    );
    let (rest, _) = feed(&server, "?after=2&limit=2");
    assert_eq!(summary(&rest), expected[2..]);
    assert!(feed(&server, "?after=4").0.is_empty());
    assert_eq!(latest(&server)["sequence"], 4);
    assert_eq!(latest(&server)["action"], "deleted");
    // Out of bounds or unknown: 400, with a reason.
    for bad in [
        "?limit=0",
        "?limit=1001",
        "?after=-1",
        "?after=x",
        "?offset=1",
        "?after=1&after=2",
    ] {
        let response = client()
            .get(server.url(&format!("/changefeed{bad}")))
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 400, "{bad}");
        assert!(!response.text().unwrap().is_empty());
    }
}

#[test]
fn a_study_is_announced_stable_once_per_completion() {
    let server = Server::start_with(&[("KASTELL__EVENTS__STABLE_AFTER_SECS", "1")]);
    let stable = |server: &Server| -> Vec<Value> {
        whole_feed(server, 100)
            .into_iter()
            .filter(|e| e["action"] == "study-stable")
            .collect()
    };
    assert_eq!(
        store(
            &server,
            "/studies",
            &[
                dicom_file(&Spec::new("8.1", "8.1.1", "8.1.1.1")),
                dicom_file(&Spec::new("8.1", "8.1.2", "8.1.2.1")),
            ],
        )
        .0,
        200
    );
    let first = poll(Duration::from_secs(60), || {
        let found = stable(&server);
        (!found.is_empty()).then_some(found)
    })
    .expect("the study became stable");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["studyInstanceUID"], "8.1");
    assert_eq!(first[0]["numberOfStudyRelatedInstances"], 2);
    assert_eq!(first[0]["numberOfStudyRelatedSeries"], 2);
    // More instances re-open it: a second announcement, with the new counts.
    assert_eq!(
        store(
            &server,
            "/studies",
            &[dicom_file(&Spec::new("8.1", "8.1.2", "8.1.2.2"))]
        )
        .0,
        200
    );
    let both = poll(Duration::from_secs(60), || {
        let found = stable(&server);
        (found.len() >= 2).then_some(found)
    })
    .expect("announced again");
    assert_eq!(both[1]["numberOfStudyRelatedInstances"], 3);
    // The announcement is later than the instance that completed the study.
    let all = whole_feed(&server, 2);
    let position = |uid: &str| all.iter().position(|e| e["sopInstanceUID"] == uid).unwrap();
    let second = all
        .iter()
        .rposition(|e| e["action"] == "study-stable")
        .unwrap();
    assert!(second > position("8.1.2.2"));
    // Nothing more comes while nothing arrives (a second quiet time passes).
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(stable(&server).len(), 2, "once per completion");
}

/// Two server processes on one index (one SQLite file, or one PostgreSQL
/// database with `KASTELL_TEST_INDEX=postgres`), four clients storing through
/// both at once: the feed is 1..N without a gap or a repeat, every stored
/// instance once, and both processes serve the same feed.
#[test]
fn two_processes_write_one_gap_free_feed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = [("KASTELL__EVENTS__STABLE_AFTER_SECS", "0")];
    let a = Server::spawn(&data, &env);
    let b = Server::spawn(&data, &env);
    let servers = [&a, &b];
    std::thread::scope(|scope| {
        for client in 0..4 {
            let servers = &servers;
            scope.spawn(move || {
                for n in 0..8 {
                    let study = format!("7.{client}");
                    let parts: Vec<Vec<u8>> = (0..3)
                        .map(|i| {
                            dicom_file(&Spec::new(
                                &study,
                                &format!("{study}.1"),
                                &format!("{study}.1.{n}.{i}"),
                            ))
                        })
                        .collect();
                    let server = servers[(client + n as usize) % 2];
                    let (status, body) = store(server, "/studies", &parts);
                    assert_eq!(status, 200, "{body}");
                }
            });
        }
    });
    // A delete through each process, after the stores.
    for (server, study) in [(&a, "7.0"), (&b, "7.1")] {
        let response = client()
            .delete(server.url(&format!("/studies/{study}")))
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 204);
    }
    let from_a = whole_feed(&a, 7);
    let from_b = whole_feed(&b, 1000);
    assert_eq!(from_a, from_b, "one feed, whichever process serves it");
    let sequences: Vec<i64> = from_a
        .iter()
        .map(|e| e["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(
        sequences,
        (1..=144).collect::<Vec<_>>(),
        "4 × 8 × 3 stores and 2 × 24 deletes"
    );
    let mut created: Vec<&str> = from_a
        .iter()
        .filter(|e| e["action"] == "created")
        .map(|e| e["sopInstanceUID"].as_str().unwrap())
        .collect();
    created.sort();
    let mut expected: Vec<String> = (0..4)
        .flat_map(|c| (0..8).flat_map(move |n| (0..3).map(move |i| format!("7.{c}.1.{n}.{i}"))))
        .collect();
    expected.sort();
    assert_eq!(created, expected);
    // Each instance's deletion comes after its creation.
    let deleted: Vec<&Value> = from_a.iter().filter(|e| e["action"] == "deleted").collect();
    assert_eq!(deleted.len(), 48);
    let first_delete = from_a
        .iter()
        .position(|e| e["action"] == "deleted")
        .unwrap();
    assert_eq!(first_delete, 96, "the deletes came after every store");
}

#[test]
fn each_tenant_has_its_own_feed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, out) = cli(&["tenants", "add", "north"], &data);
    assert!(ok, "{out}");
    let server = Server::spawn(&data, &[("KASTELL__EVENTS__STABLE_AFTER_SECS", "0")]);
    let tenant = |path: &str| {
        format!(
            "http://127.0.0.1:{}/tenants/north/dicomweb{path}",
            server.port
        )
    };
    let (content_type, body) = multipart(&[dicom_file(&Spec::new("6.1", "6.1.1", "6.1.1.1"))]);
    let response = client()
        .post(tenant("/studies"))
        .header("Content-Type", content_type)
        .header("Accept", "application/dicom+json")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        store(
            &server,
            "/studies",
            &[dicom_file(&Spec::new("6.2", "6.2.1", "6.2.1.1"))]
        )
        .0,
        200
    );
    let north: Vec<Value> = client()
        .get(tenant("/changefeed"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        summary(&north),
        vec![(1, "created".to_string(), "6.1.1.1".to_string())]
    );
    let default = feed(&server, "").0;
    assert_eq!(
        summary(&default),
        vec![(1, "created".to_string(), "6.2.1.1".to_string())]
    );
}

/// Key events are changes of the tenant: rotation and shredding are in its
/// feed (and the deletions a shred makes follow it).
#[test]
fn key_rotation_and_shredding_are_in_the_feed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = [("KASTELL__EVENTS__STABLE_AFTER_SECS", "0")];
    let server = Server::spawn(&data, &env);
    assert_eq!(
        store(
            &server,
            "/studies",
            &[dicom_file(&Spec::new("5.1", "5.1.1", "5.1.1.1"))]
        )
        .0,
        200
    );
    server.terminate();
    let (ok, out) = cli(&["keys", "rotate", "--tenant", "default"], &data);
    assert!(ok, "{out}");
    let (ok, out) = cli(&["keys", "shred", "--tenant", "default", "--yes"], &data);
    assert!(ok, "{out}");
    let server = Server::spawn(&data, &env);
    let all = whole_feed(&server, 10);
    let actions: Vec<&str> = all.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        vec!["created", "key-rotated", "key-shredded", "deleted"]
    );
    assert_eq!(all[1]["keyVersion"], 2);
    assert!(all[1].get("studyInstanceUID").is_none());
    assert_eq!(all[3]["sopInstanceUID"], "5.1.1.1");
}
