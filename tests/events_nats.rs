//! Events on a real broker (issue 14): a private `nats-server -js` per test
//! (tests/common/nats.rs), the real `kastell` binary, and async-nats reading
//! what reached the streams. Every STOW and DELETE is published in order and
//! once, failed parts are not; a broker killed during ingest loses nothing and
//! duplicates nothing; a job whose worker is killed is done once by another;
//! "study stable" comes once per completion; without a broker the jobs run in
//! the server.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use common::nats::Nats;
use common::*;
use serde_json::Value;

const EVENTS: &str = "KASTELL_EVENTS";
const JOBS: &str = "KASTELL_JOBS";
const CONSUMER: &str = "kastell-workers";

/// The index of a data directory, opened beside the server (read here only).
fn open_index(data_dir: &Path) -> kastell::index::Index {
    let args = index_args(data_dir);
    let url = match args.get(1) {
        Some(url) => url.clone(),
        None => format!("sqlite://{}", data_dir.join("index.sqlite").display()),
    };
    kastell::index::Index::open(
        &url,
        kastell::index::IndexOptions {
            pool_size: 1,
            busy_timeout: Duration::from_secs(10),
            acquire_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(10),
            group_commit: true,
        },
    )
    .expect("open the index")
}

/// The server's change feed.
fn feed(server: &Server) -> Vec<Value> {
    let body: Value = client()
        .get(server.url("/changefeed?after=0&limit=1000"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    body.as_array().unwrap().clone()
}

/// The sequence number of the `n`th (from 1) study-stable change of `study`.
fn stable_seq(server: &Server, study: &str, n: usize) -> i64 {
    let mut found = None;
    wait_until(&format!("study {study} is announced stable"), || {
        found = feed(server)
            .iter()
            .filter(|e| e["action"] == "study-stable" && e["studyInstanceUID"] == study)
            .nth(n - 1)
            .map(|e| e["sequence"].as_i64().unwrap());
        found.is_some()
    });
    found.unwrap()
}

fn instance(study: &str, series: &str, n: u32) -> Vec<u8> {
    let mut spec = Spec::new(study, series, &format!("{series}.{n}"));
    spec.instance_number = n as i32;
    dicom_file(&spec)
}

/// The events of the stream (payloads) once it holds at least `count`.
fn events_when(nats: &Nats, count: usize) -> Vec<(String, String, Value)> {
    let mut messages = Vec::new();
    wait_until(&format!("{count} events are in the stream"), || {
        messages = nats.messages(EVENTS);
        messages.len() >= count
    });
    messages
}

#[test]
fn every_store_and_delete_is_published_once_in_order_and_failed_parts_are_not() {
    let nats = Nats::start();
    let server = Server::start_with(&[
        ("KASTELL__EVENTS__NATS__URL", &nats.url()),
        ("KASTELL__EVENTS__STABLE_AFTER_SECS", "0"),
    ]);
    let (status, body) = store(
        &server,
        "/studies",
        &[
            instance("2.25.1", "2.25.1.1", 1),
            instance("2.25.1", "2.25.1.1", 2),
        ],
    );
    assert_eq!(status, 200, "{body}");
    // One good part, one that is not DICOM: only the good one is an event.
    let (status, body) = store(
        &server,
        "/studies",
        &[
            instance("2.25.2", "2.25.2.1", 1),
            b"not DICOM at all".to_vec(),
        ],
    );
    assert_eq!(status, 202, "{body}");
    let deleted = client()
        .delete(server.url("/studies/2.25.1"))
        .send()
        .unwrap()
        .status();
    assert_eq!(deleted.as_u16(), 204);
    // A last store: once its event is there, everything before it is (the
    // events go out in order), so the stream holds exactly what is below.
    assert_eq!(
        store(&server, "/studies", &[instance("2.25.3", "2.25.3.1", 1)]).0,
        200
    );
    let messages = events_when(&nats, 6);
    assert_eq!(messages.len(), 6, "{messages:#?}");

    for (i, (subject, id, event)) in messages.iter().enumerate() {
        let seq = i as i64 + 1;
        assert_eq!(id, &format!("default:{seq}"));
        assert_eq!(event["id"], format!("default:{seq}"));
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["data"]["sequence"], seq);
        assert_eq!(event["data"]["tenant"], "default");
        let action = event["data"]["action"].as_str().unwrap();
        assert_eq!(subject, &format!("kastell.events.default.{action}"));
        assert!(event["data"].get("patient").is_none(), "{event}");
    }
    let actions: Vec<&str> = messages
        .iter()
        .map(|(_, _, e)| e["data"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["created", "created", "created", "deleted", "deleted", "created"]
    );
    let sops = |range: std::ops::Range<usize>| -> BTreeSet<String> {
        messages[range]
            .iter()
            .map(|(_, _, e)| e["data"]["sopInstanceUID"].as_str().unwrap().to_string())
            .collect()
    };
    let study_one: BTreeSet<String> = ["2.25.1.1.1".into(), "2.25.1.1.2".into()].into();
    assert_eq!(sops(0..2), study_one);
    assert_eq!(sops(2..3), ["2.25.2.1.1".to_string()].into());
    assert_eq!(sops(3..5), study_one);
    assert_eq!(sops(5..6), ["2.25.3.1.1".to_string()].into());
    // Once idle, the sink's cursor in the index (a checkpoint) says so too.
    let index = open_index(&server.data_dir);
    wait_until("the nats sink's cursor is written", || {
        index
            .sinks()
            .unwrap()
            .iter()
            .any(|sink| sink.name == "nats" && sink.delivered_seq == 6)
    });
}

/// The number in `/readyz`'s `events backlog: N (tenant default, sink nats)`.
fn nats_backlog(server: &Server) -> Option<u64> {
    let body = client()
        .get(format!("http://127.0.0.1:{}/readyz", server.port))
        .send()
        .ok()?
        .text()
        .ok()?;
    body.lines()
        .find(|l| l.contains("(tenant default, sink nats)"))
        .and_then(|l| l.strip_prefix("events backlog: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
}

#[test]
fn a_broker_killed_during_ingest_loses_and_duplicates_no_event() {
    let mut nats = Nats::start();
    let server = Server::start_with(&[
        ("KASTELL__EVENTS__NATS__URL", &nats.url()),
        ("KASTELL__EVENTS__NATS__ACK_TIMEOUT_SECS", "1"),
        ("KASTELL__EVENTS__STABLE_AFTER_SECS", "0"),
    ]);
    // Ingest: one instance per STOW, until told to stop; each must answer 200
    // whether the broker is up or down.
    let stored = AtomicU32::new(0);
    let stop = AtomicBool::new(false);
    let total = std::thread::scope(|scope| {
        let ingest = scope.spawn(|| {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let (status, body) =
                    store(&server, "/studies", &[instance("2.25.9", "2.25.9.1", n)]);
                assert_eq!(status, 200, "STOW {n}: {body}");
                stored.store(n, Ordering::SeqCst);
            }
            n
        });
        let at_least = |count: u32| {
            wait_until(&format!("{count} instances are stored"), || {
                stored.load(Ordering::SeqCst) >= count || ingest.is_finished()
            })
        };
        at_least(5);
        events_when(&nats, 1);
        nats.kill9();
        let killed_at = stored.load(Ordering::SeqCst);
        // Stores go on, and /readyz shows the events waiting for the broker.
        at_least(killed_at + 5);
        wait_until("/readyz shows the NATS backlog", || {
            nats_backlog(&server).is_some_and(|backlog| backlog > 0)
        });
        nats.restart();
        let restarted_at = stored.load(Ordering::SeqCst);
        at_least(restarted_at + 5);
        stop.store(true, Ordering::SeqCst);
        ingest.join().unwrap()
    });
    let caught_up = poll(Duration::from_secs(60), || {
        (nats_backlog(&server).is_none()
            && nats
                .messages(EVENTS)
                .iter()
                .any(|(_, _, e)| e["data"]["sequence"] == total))
        .then_some(())
    });
    assert!(
        caught_up.is_some(),
        "the events did not catch up: backlog {:?}, {} in the stream",
        nats_backlog(&server),
        nats.messages(EVENTS).len()
    );
    // Every event once, in order: the repeats of publishes whose
    // acknowledgement was lost were dropped by the broker (Nats-Msg-Id).
    let sequences: Vec<i64> = nats
        .messages(EVENTS)
        .iter()
        .map(|(_, _, e)| e["data"]["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(sequences, (1..=i64::from(total)).collect::<Vec<_>>());
}

/// A `kastell worker` on the server's data directory with `env`.
fn worker(data_dir: &Path, env: &[(&str, &str)]) -> Child {
    cli_command(&["worker"], data_dir)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start kastell worker")
}

fn signal(child: &Child, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_job_whose_worker_is_killed_is_redelivered_and_done_once() {
    let nats = Nats::start();
    let url = nats.url();
    let env = [
        ("KASTELL__EVENTS__NATS__URL", url.as_str()),
        ("KASTELL__EVENTS__STABLE_AFTER_SECS", "1"),
        ("KASTELL__EVENTS__JOBS__WORKER_IN_SERVE", "false"),
        ("KASTELL__EVENTS__JOBS__ACK_WAIT_SECS", "2"),
        ("KASTELL__EVENTS__JOBS__CONCURRENCY", "1"),
    ];
    let server = Server::start_with(&env);
    let index = open_index(&server.data_dir);
    let mut first = worker(&server.data_dir, &env);

    // A first job, done by the first worker on its first delivery.
    let two = |study: &str| {
        let series = format!("{study}.1");
        let parts = [instance(study, &series, 1), instance(study, &series, 2)];
        assert_eq!(store(&server, "/studies", &parts).0, 200);
    };
    two("2.25.41");
    let job = format!("default:{}", stable_seq(&server, "2.25.41", 1));
    wait_until("the first job is done", || {
        index.job_attempts(&job).unwrap() == Some(1)
    });
    // Its worker asks for the next job (a request that waits two minutes):
    // stopped now, it will take that job and never finish it.
    wait_until("the worker waits for a job", || {
        nats.consumer_state(JOBS, CONSUMER) == Some((1, 0, 0))
    });
    signal(&first, "STOP");
    two("2.25.42");
    let job = format!("default:{}", stable_seq(&server, "2.25.42", 1));
    wait_until("the stopped worker holds the job", || {
        nats.consumer_state(JOBS, CONSUMER)
            .is_some_and(|(_, pending, _)| pending == 1)
    });
    assert_eq!(index.job_attempts(&job).unwrap(), None);
    first.kill().unwrap();
    first.wait().unwrap();

    let mut second = worker(&server.data_dir, &env);
    wait_until("the job is done by the second worker", || {
        index.job_attempts(&job).unwrap().is_some()
    });
    // Done once, on its second delivery; acknowledged and gone from the queue.
    assert_eq!(index.job_attempts(&job).unwrap(), Some(2));
    wait_until("the job is acknowledged", || {
        nats.consumer_state(JOBS, CONSUMER)
            .is_some_and(|(_, pending, _)| pending == 0)
            && nats.messages(JOBS).is_empty()
    });
    assert_precomputed(&index, "2.25.42");
    second.kill().unwrap();
    second.wait().unwrap();
}

/// The study's and its series' default thumbnails and the series' metadata
/// are in the derived-object cache.
fn assert_precomputed(index: &kastell::index::Index, study: &str) {
    let series = format!("{study}.1");
    for (uid, kind, variant) in [
        (study, "thumbnail", "image/jpeg:128x128:0"),
        (series.as_str(), "thumbnail", "image/jpeg:128x128:0"),
        (series.as_str(), "metadata", "relative"),
    ] {
        assert!(
            index.derived(uid, kind, variant).unwrap().is_some(),
            "{kind} {variant} of {uid} was not precomputed"
        );
    }
}

#[test]
fn a_study_is_announced_stable_once_per_completion() {
    let nats = Nats::start();
    let server = Server::start_with(&[
        ("KASTELL__EVENTS__NATS__URL", &nats.url()),
        ("KASTELL__EVENTS__STABLE_AFTER_SECS", "1"),
        ("KASTELL__EVENTS__NATS__INCLUDE_PATIENT", "true"),
    ]);
    let stables = |study: &str| -> Vec<Value> {
        nats.messages(EVENTS)
            .into_iter()
            .filter(|(_, _, e)| {
                e["type"] == "org.kastell.study.stable" && e["data"]["studyInstanceUID"] == study
            })
            .map(|(_, _, e)| e)
            .collect()
    };
    let parts = [
        instance("2.25.51", "2.25.51.1", 1),
        instance("2.25.51", "2.25.51.1", 2),
    ];
    assert_eq!(store(&server, "/studies", &parts).0, 200);
    wait_until("the study is announced stable", || {
        stables("2.25.51").len() == 1
    });
    // More instances: the study is open again, and stable again once quiet.
    assert_eq!(
        store(&server, "/studies", &[instance("2.25.51", "2.25.51.1", 3)]).0,
        200
    );
    wait_until("the study is announced stable again", || {
        stables("2.25.51").len() == 2
    });
    // Another study stored after that: once it is announced, every
    // announcement of the first one due before it has been made.
    assert_eq!(
        store(&server, "/studies", &[instance("2.25.52", "2.25.52.1", 1)]).0,
        200
    );
    wait_until("the other study is announced stable", || {
        stables("2.25.52").len() == 1
    });
    let first = stables("2.25.51");
    assert_eq!(first.len(), 2);
    assert_eq!(first[0]["data"]["numberOfStudyRelatedInstances"], 2);
    assert_eq!(first[1]["data"]["numberOfStudyRelatedInstances"], 3);
    assert_eq!(first[0]["subject"], "studies/2.25.51");
    // This server is configured to carry the patient (events.nats.include_patient).
    assert_eq!(first[0]["data"]["patient"]["PatientID"], "PID-1");
    assert_eq!(first[0]["data"]["patient"]["PatientName"], "Doe^John");
}

#[test]
fn without_a_broker_the_jobs_run_in_the_server() {
    let server = Server::start_with(&[("KASTELL__EVENTS__STABLE_AFTER_SECS", "1")]);
    let index = open_index(&server.data_dir);
    let parts = [
        instance("2.25.61", "2.25.61.1", 1),
        instance("2.25.61", "2.25.61.1", 2),
    ];
    assert_eq!(store(&server, "/studies", &parts).0, 200);
    let job = format!("default:{}", stable_seq(&server, "2.25.61", 1));
    wait_until("the precompute job is done", || {
        index.job_attempts(&job).unwrap().is_some()
    });
    assert_eq!(index.job_attempts(&job).unwrap(), Some(1));
    assert_precomputed(&index, "2.25.61");
    // What was built is what the thumbnail request reads (not made again).
    let built = index
        .derived("2.25.61", "thumbnail", "image/jpeg:128x128:0")
        .unwrap();
    let thumbnail = client()
        .get(server.url("/studies/2.25.61/thumbnail"))
        .header("Accept", "image/jpeg")
        .send()
        .unwrap();
    assert_eq!(thumbnail.status().as_u16(), 200);
    assert_eq!(
        index
            .derived("2.25.61", "thumbnail", "image/jpeg:128x128:0")
            .unwrap(),
        built
    );
}

#[test]
fn lifecycle_passes_go_through_the_work_queue_to_a_worker_once_per_period() {
    let nats = Nats::start();
    let url = nats.url();
    let dir = tempfile::tempdir().unwrap();
    let cold = dir.path().join("cold");
    let config = dir.path().join("kastell.toml");
    std::fs::write(
        &config,
        format!(
            "[storage.stores.cold]\nurl = \"file://{}\"\n\
             [[lifecycle.moves]]\nname = \"cool CT\"\nmin_age_days = 30\n\
             modalities = [\"CT\"]\nto = \"cold\"\n",
            cold.display()
        ),
    )
    .unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(60 * 86_400);
    let later = humantime::format_rfc3339_seconds(later).to_string();
    let env = [
        ("KASTELL_CONFIG", config.to_str().unwrap()),
        ("KASTELL__EVENTS__NATS__URL", url.as_str()),
        ("KASTELL__EVENTS__JOBS__WORKER_IN_SERVE", "false"),
        ("KASTELL__LIFECYCLE__PASS__INTERVAL_SECS", "1"),
        ("KASTELL__LIFECYCLE__NOW", later.as_str()),
    ];
    let server = Server::start_with(&env);
    let moved = || {
        std::fs::read_dir(cold.join("instances"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| !e.file_name().to_string_lossy().contains('#'))
                    .count()
            })
            .unwrap_or(0)
    };
    let mut parts = Vec::new();
    for n in 1..=3 {
        let mut spec = Spec::new("2.25.71", "2.25.71.1", &format!("2.25.71.1.{n}"));
        spec.modality = "CT".into();
        parts.push(dicom_file(&spec));
    }
    assert_eq!(store(&server, "/studies", &parts).0, 200);

    // No worker: the passes wait in the queue, one per period, and nothing moves.
    wait_until("passes are queued", || {
        nats.messages(JOBS)
            .iter()
            .filter(|(subject, _, _)| subject.ends_with(".lifecycle-pass"))
            .count()
            >= 2
    });
    assert_eq!(moved(), 0, "a pass ran without a worker");
    let queued = nats.messages(JOBS);
    let ids: BTreeSet<&String> = queued.iter().map(|(_, id, _)| id).collect();
    assert_eq!(ids.len(), queued.len(), "a job id twice in the queue");

    // A worker takes them: the instances move, the pass is audited.
    let mut worker = worker(&server.data_dir, &env);
    wait_until("the worker has moved the instances", || moved() == 3);
    for part in 1..=3 {
        let status = client()
            .get(server.url(&format!(
                "/studies/2.25.71/series/2.25.71.1/instances/2.25.71.1.{part}"
            )))
            .header(
                "Accept",
                "multipart/related; type=\"application/dicom\"; transfer-syntax=*",
            )
            .send()
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 200);
    }
    // Passes of several periods may run at once, each moving what it claimed.
    let audited = || {
        let text = serde_json::to_string(&audit_events(&server.data_dir, &env)).unwrap();
        let moved: u64 = text
            .split("scheduled lifecycle pass: ")
            .skip(1)
            .filter_map(|rest| rest.split(' ').next()?.parse::<u64>().ok())
            .sum();
        moved == 3
    };
    wait_until("the worker's passes are in the audit trail", audited);
    signal(&worker, "TERM");
    worker.wait().unwrap();
}
