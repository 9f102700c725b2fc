//! Crash and fault safety (issue 11, point 6): no crash and no backend fault
//! loses an acknowledged instance or shows a half-written one, and the server
//! gets over a fault by itself.
//!
//! - `kill -9` in the middle of concurrent ingest (32 clients), several rounds
//!   on the same data (index on SQLite, or PostgreSQL with
//!   `KASTELL_TEST_INDEX=postgres`).
//! - The index's PostgreSQL connection cut and restored through a TCP proxy
//!   (PostgreSQL runs only).
//! - The S3 blob store cut and restored the same way (runs only against an S3
//!   server: `KASTELL_TEST_BLOB_URL=s3://…`, as tests/run-all.sh does with moto).
//! - The local blob store's disk full (a small tmpfs; needs root to mount).
//!
//! The waits have generous deadlines only so that a hung server fails the test;
//! "bounded time" assertions allow for a loaded machine.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::proxy::{index_through_proxy, s3_through_proxy};
use common::*;

const ROOT: &str = "1.2.826.0.1.3680043.9.7782";
const ROUNDS: usize = 3;
/// Concurrent STOW clients: as many as issue 18's load (32 connections), so
/// that the kill lands while requests are waiting in a group commit.
const CLIENTS: usize = 32;
/// How long a request to a server whose backend was cut may take to fail (the
/// tests set an index acquire timeout of 2 s; the blob store's retries end
/// within 10 s by default).
const FAIL_WITHIN: Duration = Duration::from_secs(30);

/// What the clients sent and what the server acknowledged.
#[derive(Default)]
struct Ledger {
    /// SOP Instance UID → (study, series, the file sent).
    sent: BTreeMap<String, (String, String, Vec<u8>)>,
    acked: BTreeSet<String>,
}

/// The instances of one STOW request: one to three, in three shared studies,
/// every fourth request with a multi-frame one of 1.5 MiB.
fn request_files(round: usize, client: usize, n: usize) -> Vec<(String, String, String, Vec<u8>)> {
    (0..1 + n % 3)
        .map(|k| {
            let study = format!("{ROOT}.{}", (client + n + k) % 3 + 1);
            let series = format!("{study}.{}", client % 2 + 1);
            let uid = format!("{series}.{round}.{client}.{n}.{k}");
            let mut spec = Spec::new(&study, &series, &uid);
            spec.instance_number = (n * 3 + k) as i32 + 1;
            if k == 0 && n % 4 == 3 {
                spec.size = 256;
                spec.frames = 12;
            }
            let bytes = dicom_file(&spec);
            (study, series, uid, bytes)
        })
        .collect()
}

fn acknowledged(response: &serde_json::Value) -> Vec<String> {
    values(response, "00081199")
        .into_iter()
        .map(|item| first_string(item, "00081155").expect("a SOP Instance UID"))
        .collect()
}

/// One client: STOW requests one after the other until `stop` or until the
/// server is gone. Every instance is in the ledger before it is sent (it may be
/// stored without the answer arriving); acknowledged ones once the answer is in.
fn ingest(server: &Server, round: usize, client: usize, ledger: &Mutex<Ledger>, stop: &AtomicBool) {
    let http = common::client();
    for n in 0.. {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let files = request_files(round, client, n);
        let parts: Vec<Vec<u8>> = files.iter().map(|f| f.3.clone()).collect();
        ledger.lock().unwrap().sent.extend(
            files
                .into_iter()
                .map(|(study, series, uid, bytes)| (uid, (study, series, bytes))),
        );
        let (content_type, body) = multipart(&parts);
        let Ok(response) = http
            .post(server.url("/studies"))
            .header("Content-Type", content_type)
            .body(body)
            .send()
        else {
            return; // killed before it answered
        };
        let status = response.status().as_u16();
        let Ok(json) = response.json::<serde_json::Value>() else {
            return; // killed in the middle of the answer: not acknowledged
        };
        assert!(
            status == 200 || status == 202,
            "a STOW before the kill failed: {status} {json}"
        );
        ledger.lock().unwrap().acked.extend(acknowledged(&json));
    }
}

/// GETs a QIDO URL; an empty result (204) is an empty list.
fn search(server: &Server, path: &str) -> Vec<serde_json::Value> {
    let response = client().get(server.url(path)).send().unwrap();
    match response.status().as_u16() {
        204 => Vec::new(),
        200 => response.json().unwrap(),
        status => panic!("{path}: {status}"),
    }
}

fn number(item: &serde_json::Value, tag: &str) -> u64 {
    item[tag]["Value"][0]
        .as_u64()
        .unwrap_or_else(|| panic!("{tag} in {item}"))
}

/// What must hold after a restart: QIDO lists only instances that were sent and
/// that retrieve byte for byte, every acknowledged one among them, its counts
/// agree with what it lists, and `kastell verify` finds every blob indexed and
/// none left over (once the start-up orphan sweep ran). Returns how many
/// instances are stored.
fn check_consistent(server: &Server, data: &Path, log: &Path, ledger: &Ledger) -> usize {
    // SOP Instance UID → (study, series) as QIDO lists them.
    let mut listed: BTreeMap<String, (String, String)> = BTreeMap::new();
    let studies = search(server, "/studies?limit=1000");
    for study in &studies {
        let study_uid = first_string(study, "0020000D").expect("StudyInstanceUID");
        let instances = search(
            server,
            &format!("/studies/{study_uid}/instances?limit=1000"),
        );
        assert_eq!(
            number(study, "00201208") as usize,
            instances.len(),
            "NumberOfStudyRelatedInstances of {study_uid}"
        );
        let mut per_series: BTreeMap<String, usize> = BTreeMap::new();
        for instance in &instances {
            let uid = first_string(instance, "00080018").expect("SOPInstanceUID");
            let series = first_string(instance, "0020000E").expect("SeriesInstanceUID");
            *per_series.entry(series.clone()).or_default() += 1;
            let before = listed.insert(uid.clone(), (study_uid.clone(), series));
            assert!(before.is_none(), "{uid} listed twice");
        }
        let series = search(server, &format!("/studies/{study_uid}/series"));
        assert_eq!(
            number(study, "00201206") as usize,
            series.len(),
            "NumberOfStudyRelatedSeries of {study_uid}"
        );
        let counted: BTreeMap<String, usize> = series
            .iter()
            .map(|s| {
                let uid = first_string(s, "0020000E").expect("SeriesInstanceUID");
                (uid, number(s, "00201209") as usize)
            })
            .collect();
        assert_eq!(counted, per_series, "NumberOfSeriesRelatedInstances");
    }
    for (uid, (study, series)) in &listed {
        let (sent_study, sent_series, bytes) = ledger
            .sent
            .get(uid)
            .unwrap_or_else(|| panic!("QIDO lists {uid}, which was never sent"));
        assert_eq!((study, series), (sent_study, sent_series), "{uid}");
        let stored = retrieve_instance(server, study, series, uid)
            .unwrap_or_else(|status| panic!("QIDO lists {uid}, but retrieving it gives {status}"));
        assert!(stored == *bytes, "{uid} is not byte-identical");
    }
    // The change feed (the events' outbox) agrees: numbered 1..N without a gap,
    // one `created` for each instance stored, none for what the kill undid.
    let mut feed: Vec<serde_json::Value> = Vec::new();
    loop {
        let after = feed.last().map_or(0, |e| e["sequence"].as_i64().unwrap());
        let page: Vec<serde_json::Value> = client()
            .get(server.url(&format!("/changefeed?after={after}&limit=1000")))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if page.is_empty() {
            break;
        }
        feed.extend(page);
    }
    let sequences: Vec<i64> = feed
        .iter()
        .map(|e| e["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(
        sequences,
        (1..=feed.len() as i64).collect::<Vec<_>>(),
        "a gap in the feed"
    );
    let created: Vec<&str> = feed
        .iter()
        .filter(|e| e["action"] == "created")
        .map(|e| e["sopInstanceUID"].as_str().unwrap())
        .collect();
    let created_set: std::collections::BTreeSet<&str> = created.iter().copied().collect();
    assert_eq!(
        created.len(),
        created_set.len(),
        "an instance created twice in the feed"
    );
    let listed_set: std::collections::BTreeSet<&str> = listed.keys().map(String::as_str).collect();
    assert_eq!(
        created_set, listed_set,
        "the feed's creations are not what is stored"
    );
    let lost: Vec<&String> = ledger
        .acked
        .iter()
        .filter(|uid| !listed.contains_key(*uid))
        .collect();
    assert!(lost.is_empty(), "acknowledged instances lost: {lost:?}");
    let expected = format!(
        "{} indexed blobs checked, 0 failed, 0 orphaned",
        listed.len()
    );
    let mut last = String::new();
    let clean = common::poll(Duration::from_secs(60), || {
        let (ok, out) = verify(data);
        let clean = ok && out.contains(&expected);
        last = out;
        clean.then_some(())
    });
    assert!(
        clean.is_some(),
        "verify never found every blob indexed and nothing else (expected \"{expected}\"); it last said:\n{last}\nthe server's log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    listed.len()
}

/// Restarted servers sweep orphans at once: what a killed upload left behind.
const SWEEP_AT_START: [(&str, &str); 1] = [("KASTELL__STORAGE__ORPHAN_GRACE_SECS", "0")];

#[test]
fn kill_9_during_concurrent_ingest_loses_nothing_acknowledged_and_shows_nothing_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ledger = Mutex::new(Ledger::default());
    for round in 0..ROUNDS {
        let started = Instant::now();
        let log = dir.path().join(format!("round-{round}.log"));
        let server = Server::spawn_logging(&data, &SWEEP_AT_START, &log);
        // The previous round's kill left a consistent archive, swept clean
        // before this round stores anything.
        let stored = check_consistent(&server, &data, &log, &ledger.lock().unwrap());
        let before = ledger.lock().unwrap().acked.len();
        let target = before + rand::random_range(40..160);
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for client in 0..CLIENTS {
                let (server, ledger, stop) = (&server, &ledger, &stop);
                scope.spawn(move || ingest(server, round, client, ledger, stop));
            }
            wait_until("the clients got acknowledgements", || {
                ledger.lock().unwrap().acked.len() >= target
            });
            server.signal("KILL");
            stop.store(true, Ordering::SeqCst);
        });
        drop(server);
        // A remote store finishes uploads the killed process had already
        // completed on the wire (S3's CompleteMultipartUpload): let them land
        // before the next start, whose sweep would otherwise run before them.
        if std::env::var("KASTELL_TEST_BLOB_URL").is_ok() {
            std::thread::sleep(Duration::from_secs(3));
        }
        let ledger = ledger.lock().unwrap();
        eprintln!(
            "round {round}: {stored} stored before; killed at {} acknowledged of {} sent ({:.1?})",
            ledger.acked.len(),
            ledger.sent.len(),
            started.elapsed()
        );
    }
    let log = dir.path().join("after.log");
    let server = Server::spawn_logging(&data, &SWEEP_AT_START, &log);
    let ledger = ledger.lock().unwrap();
    let stored = check_consistent(&server, &data, &log, &ledger);
    eprintln!(
        "after {ROUNDS} kills: {stored} stored, {} acknowledged, {} sent",
        ledger.acked.len(),
        ledger.sent.len()
    );
}

fn small_instance(study: &str, n: usize) -> (String, String, Vec<u8>) {
    let series = format!("{study}.1");
    let uid = format!("{series}.{n}");
    let mut spec = Spec::new(study, &series, &uid);
    spec.instance_number = n as i32;
    let bytes = dicom_file(&spec);
    (series, uid, bytes)
}

/// A STOW of one file: status, `Retry-After`, body text, and how long it took.
fn stow(server: &Server, file: &[u8]) -> (u16, Option<String>, String, Duration) {
    let started = Instant::now();
    let (content_type, body) = multipart(&[file.to_vec()]);
    let response = client()
        .post(server.url("/studies"))
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .expect("the STOW is answered");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let text = response.text().unwrap_or_default();
    (status, retry_after, text, started.elapsed())
}

/// A GET: status, `Retry-After`, body text, how long it took.
fn get(url: &str) -> (u16, Option<String>, String, Duration) {
    let started = Instant::now();
    let response = client().get(url).send().expect("the GET is answered");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let text = response.text().unwrap_or_default();
    (status, retry_after, text, started.elapsed())
}

fn readyz(server: &Server) -> (u16, String) {
    let (status, _, text, _) = get(&format!("http://127.0.0.1:{}/readyz", server.port));
    (status, text)
}

/// A 503 that tells the client when to come back, in bounded time.
fn assert_unavailable(what: &str, answer: (u16, Option<String>, String, Duration)) {
    let (status, retry_after, text, took) = answer;
    assert_eq!(status, 503, "{what}: {text}");
    assert!(retry_after.is_some(), "{what}: 503 without Retry-After");
    assert!(took < FAIL_WITHIN, "{what} took {took:?}");
    eprintln!("{what}: 503 in {took:.1?}");
}

#[test]
fn a_cut_index_connection_answers_503_and_the_server_recovers_by_itself() {
    if std::env::var("KASTELL_TEST_INDEX").as_deref() != Ok("postgres") {
        eprintln!(
            "skipped: the index is on SQLite; this test runs with KASTELL_TEST_INDEX=postgres"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let proxy = index_through_proxy(&data).expect("PostgreSQL");
    let server = Server::spawn(&data, &[("KASTELL__INDEX__ACQUIRE_TIMEOUT_MS", "2000")]);
    let study = format!("{ROOT}.20");
    let (series_a, uid_a, a) = small_instance(&study, 1);
    let (series_b, uid_b, b) = small_instance(&study, 2);
    let (status, _, text, _) = stow(&server, &a);
    assert_eq!(status, 200, "{text}");

    proxy.cut();
    assert_unavailable("STOW with the index cut", stow(&server, &b));
    assert_unavailable(
        "QIDO with the index cut",
        get(&server.url(&format!("/studies/{study}/instances"))),
    );
    let (status, text) = readyz(&server);
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("index: unavailable"), "{text}");
    assert!(text.contains("blob store: ok"), "{text}");

    proxy.restore();
    // No restart: the next requests find the index again.
    wait_until("the server is ready again", || readyz(&server).0 == 200);
    let (status, _, text, _) = stow(&server, &b);
    assert_eq!(status, 200, "{text}");
    for (series, uid, bytes) in [(&series_a, &uid_a, &a), (&series_b, &uid_b, &b)] {
        let stored = retrieve_instance(&server, &study, series, uid).expect("retrievable");
        assert!(stored == *bytes, "{uid} is not byte-identical");
    }
    let listed = search(&server, &format!("/studies/{study}/instances"));
    assert_eq!(listed.len(), 2);
    // The blob of the STOW that failed went with it.
    wait_until("verify finds both blobs and nothing else", || {
        let (ok, out) = verify(&data);
        ok && out.contains("2 indexed blobs checked, 0 failed, 0 orphaned")
    });
}

#[test]
fn a_cut_blob_store_answers_503_and_the_server_recovers_by_itself() {
    let Some((proxy, env)) = s3_through_proxy() else {
        eprintln!(
            "skipped: no S3 server; this test runs with KASTELL_TEST_BLOB_URL=s3://… and \
             AWS_ENDPOINT_URL (tests/run-all.sh starts moto for it)"
        );
        return;
    };
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::spawn(&data, &env);
    let study = format!("{ROOT}.30");
    let (series_a, uid_a, a) = small_instance(&study, 1);
    let (series_b, uid_b, b) = small_instance(&study, 2);
    let (status, _, text, _) = stow(&server, &a);
    assert_eq!(status, 200, "{text}");

    proxy.cut();
    assert_unavailable("STOW with the blob store cut", stow(&server, &b));
    assert_unavailable(
        "retrieval with the blob store cut",
        get(&server.url(&format!(
            "/studies/{study}/series/{series_a}/instances/{uid_a}"
        ))),
    );
    let (status, text) = readyz(&server);
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("blob store: unavailable"), "{text}");
    assert!(text.contains("index: ok"), "{text}");
    // The index still answers, and shows nothing of the failed STOW.
    let listed = search(&server, &format!("/studies/{study}/instances"));
    assert_eq!(listed.len(), 1, "only the acknowledged instance is listed");

    proxy.restore();
    wait_until("the server is ready again", || readyz(&server).0 == 200);
    let (status, _, text, _) = stow(&server, &b);
    assert_eq!(status, 200, "{text}");
    for (series, uid, bytes) in [(&series_a, &uid_a, &a), (&series_b, &uid_b, &b)] {
        let stored = retrieve_instance(&server, &study, series, uid).expect("retrievable");
        assert!(stored == *bytes, "{uid} is not byte-identical");
    }
    // What the failed STOW may have left in the store goes in the orphan sweep.
    drop(server);
    let mut restart = env.clone();
    restart.extend(SWEEP_AT_START);
    let _server = Server::spawn(&data, &restart);
    wait_until("verify finds both blobs and nothing else", || {
        let (ok, out) = verify(&data);
        ok && out.contains("2 indexed blobs checked, 0 failed, 0 orphaned")
    });
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(dir).unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(Tmpfs(dir.to_path_buf()))
        } else {
            Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Fills the file system of `path` with a file that leaves `free` bytes.
fn fill(path: &Path, free: u64) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0xA5_u8; 1 << 20];
    while file.write_all(&chunk).is_ok() {}
    let len = file.metadata().unwrap().len();
    file.set_len(len.saturating_sub(free)).unwrap();
}

#[test]
fn a_full_disk_answers_507_and_storing_works_again_once_space_is_freed() {
    if std::env::var("KASTELL_TEST_BLOB_URL").is_ok() {
        eprintln!("skipped: the blob store is not on the local disk");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    let _mounted = match Tmpfs::mount(&disk, "32m") {
        Ok(mounted) => mounted,
        Err(why) => {
            eprintln!(
                "\n!!!!!!!! SKIPPED the full-disk test: cannot mount a tmpfs ({why}); \
                 it needs root (or CAP_SYS_ADMIN) !!!!!!!!\n"
            );
            return;
        }
    };
    let data = disk.join("data");
    let server = Server::spawn(&data, &[]);
    let study = format!("{ROOT}.40");
    let early: Vec<_> = (1..=3).map(|n| small_instance(&study, n)).collect();
    for (_, _, bytes) in &early {
        let (status, _, text, _) = stow(&server, bytes);
        assert_eq!(status, 200, "{text}");
    }
    // 4 MiB of pixels where 1 MiB is left.
    let series = format!("{study}.1");
    let uid = format!("{series}.100");
    let mut spec = Spec::new(&study, &series, &uid);
    spec.size = 512;
    spec.frames = 8;
    let big = dicom_file(&spec);
    let filler = disk.join("filler");
    fill(&filler, 1 << 20);

    let (status, _, text, _) = stow(&server, &big);
    assert_eq!(status, 507, "{text}");
    // Nothing of it visible, nothing of it left on the disk, the rest intact.
    assert_eq!(
        retrieve_instance(&server, &study, &series, &uid).err(),
        Some(404),
        "the instance that did not fit"
    );
    let listed = search(&server, &format!("/studies/{study}/instances"));
    assert_eq!(listed.len(), early.len());
    for (series, uid, bytes) in &early {
        let stored = retrieve_instance(&server, &study, series, uid).expect("retrievable");
        assert!(stored == *bytes, "{uid} is not byte-identical");
    }
    wait_until("the failed upload is cleaned up", || {
        server.blob_files().len() == early.len()
    });

    std::fs::remove_file(&filler).unwrap();
    let (status, _, text, _) = stow(&server, &big);
    assert_eq!(status, 200, "{text}");
    let stored = retrieve_instance(&server, &study, &series, &uid).expect("retrievable");
    assert!(stored == big, "the big instance is not byte-identical");
    drop(server);
    let (ok, out) = verify(&data);
    assert!(
        ok && out.contains("4 indexed blobs checked, 0 failed, 0 orphaned"),
        "{out}"
    );
}
