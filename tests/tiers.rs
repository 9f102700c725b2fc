//! Moves between stores by lifecycle rules (issue 15), through the binary: a
//! second, named store (a directory, or an S3 prefix with a storage class when
//! the tests run on moto: `KASTELL_TEST_BLOB_URL` and `AWS_ENDPOINT_URL` set);
//! the rules and the clock (`lifecycle.now`) from a TOML file, not sleeps.
//! A rule moves exactly the matching instances and retrieval returns the same
//! bytes; a pass killed with -9 and run again loses, duplicates and orphans
//! nothing; two passes at once never move one object twice.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;

/// Where the named store `cold` is, and how to count what it holds.
enum Cold {
    Dir(PathBuf),
    /// moto: the bucket, the prefix and the endpoint.
    S3 {
        endpoint: String,
        bucket: String,
        prefix: String,
    },
}

impl Cold {
    fn new(dir: &Path) -> Self {
        match (
            std::env::var("KASTELL_TEST_BLOB_URL"),
            std::env::var("AWS_ENDPOINT_URL"),
            std::env::var("KASTELL_S3_BUCKET"),
        ) {
            (Ok(_), Ok(endpoint), Ok(bucket)) => Cold::S3 {
                endpoint,
                bucket,
                prefix: format!("cold-{}", uuid::Uuid::new_v4().simple()),
            },
            _ => Cold::Dir(dir.join("cold")),
        }
    }

    fn toml(&self) -> String {
        match self {
            Cold::Dir(dir) => format!("url = \"file://{}\"\n", dir.display()),
            Cold::S3 { bucket, prefix, .. } => {
                format!("url = \"s3://{bucket}/{prefix}\"\nstorage_class = \"STANDARD_IA\"\n")
            }
        }
    }

    /// The instance objects in the store: their names, with the storage class
    /// S3 reports for each (None on a directory).
    fn objects(&self) -> BTreeMap<String, Option<String>> {
        match self {
            Cold::Dir(dir) => std::fs::read_dir(dir.join("instances"))
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok())
                        .map(|e| (e.file_name().to_string_lossy().into_owned(), None))
                        .filter(|(name, _)| !name.contains('#'))
                        .collect()
                })
                .unwrap_or_default(),
            Cold::S3 {
                endpoint,
                bucket,
                prefix,
            } => {
                // moto lists without a signature.
                let listing = client()
                    .get(format!(
                        "{endpoint}/{bucket}?list-type=2&prefix={prefix}/instances/"
                    ))
                    .send()
                    .unwrap()
                    .text()
                    .unwrap();
                // Each object's class as the listing says it (a HEAD without
                // a signature is refused for some objects).
                listing
                    .split("<Contents>")
                    .skip(1)
                    .filter_map(|entry| {
                        let field = |name: &str| {
                            let rest = entry.split(&format!("<{name}>")).nth(1)?;
                            Some(rest.split(&format!("</{name}>")).next()?.to_string())
                        };
                        let key = field("Key")?;
                        let class = field("StorageClass").or_else(|| Some("STANDARD".into()));
                        Some((key.rsplit('/').next()?.to_string(), class))
                    })
                    .collect()
            }
        }
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    data: PathBuf,
    config: PathBuf,
    cold: Cold,
}

/// A data directory, a `cold` store and a rule moving instances of `modality`
/// received at least 30 days ago there; `extra` is appended to the file.
fn setup(modality: &str, extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cold = Cold::new(dir.path());
    let config = dir.path().join("kastell.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nprice_per_gb_month = 0.02\n\
             [storage.stores.cold]\n{}price_per_gb_month = 0.004\n\
             [[lifecycle.moves]]\nname = \"cool {modality}\"\nmin_age_days = 30\n\
             modalities = [\"{modality}\"]\nto = \"cold\"\n{extra}",
            cold.toml()
        ),
    )
    .unwrap();
    Setup {
        _dir: dir,
        data,
        config,
        cold,
    }
}

impl Setup {
    fn env<'a>(&'a self, now: &'a str) -> Vec<(&'a str, &'a str)> {
        let mut env = vec![("KASTELL_CONFIG", self.config.to_str().unwrap())];
        if !now.is_empty() {
            env.push(("KASTELL__LIFECYCLE__NOW", now));
        }
        env
    }

    fn lifecycle(&self, now: &str, args: &[&str]) -> (bool, String, String) {
        let mut all = vec!["lifecycle"];
        all.extend_from_slice(args);
        let output = cli_command(&all, &self.data)
            .envs(self.env(now))
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    fn json(&self, now: &str, args: &[&str]) -> serde_json::Value {
        lifecycle_json(&self.data, &self.config, now, args)
    }

    fn verify(&self) -> (bool, String) {
        let output = cli_command(&["verify"], &self.data)
            .envs(self.env(""))
            .output()
            .unwrap();
        (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    }
}

/// `kastell lifecycle ARGS` on `data` with the configuration file `config`
/// and the lifecycle clock at `now` (empty: the system clock); its stdout,
/// which it must have printed successfully.
fn lifecycle_out(data: &Path, config: &Path, now: &str, args: &[&str]) -> String {
    let mut all = vec!["lifecycle"];
    all.extend_from_slice(args);
    let mut command = cli_command(&all, data);
    command.env("KASTELL_CONFIG", config);
    if !now.is_empty() {
        command.env("KASTELL__LIFECYCLE__NOW", now);
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The same, parsing its JSON report.
fn lifecycle_json(data: &Path, config: &Path, now: &str, args: &[&str]) -> serde_json::Value {
    let stdout = lifecycle_out(data, config, now, args);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Sixty days after today: past the rules' 30 days.
fn later() -> String {
    let in_60_days = std::time::SystemTime::now() + std::time::Duration::from_secs(60 * 86_400);
    humantime::format_rfc3339_seconds(in_60_days).to_string()
}

fn store_series(server: &Server, study: &str, modality: &str, count: usize) -> Vec<Spec> {
    let specs: Vec<Spec> = (1..=count)
        .map(|n| {
            let mut spec = Spec::new(study, &format!("{study}.1"), &format!("{study}.1.{n}"));
            spec.modality = modality.into();
            spec.instance_number = n as i32;
            spec
        })
        .collect();
    let files: Vec<Vec<u8>> = specs.iter().map(dicom_file).collect();
    for chunk in files.chunks(20) {
        assert_eq!(store(server, "/studies", chunk).0, 200);
    }
    specs
}

fn contents(server: &Server, specs: &[Spec]) -> Vec<Vec<u8>> {
    specs
        .iter()
        .map(|s| retrieve_instance(server, &s.study, &s.series, &s.instance).unwrap())
        .collect()
}

#[test]
fn a_rule_moves_exactly_the_matching_instances_and_reads_stay_identical() {
    let setup = setup("CT", "");
    let server = Server::spawn(&setup.data, &setup.env(""));
    let ct = store_series(&server, "31.1", "CT", 3);
    let mr = store_series(&server, "31.2", "MR", 2);
    let before_ct = contents(&server, &ct);
    let before_mr = contents(&server, &mr);

    // Received today: nothing is 30 days old.
    let plan = setup.json("", &["plan", "--format", "json"]);
    assert_eq!(plan["lines"], serde_json::json!([]), "{plan}");

    // Sixty days on: the three CT instances, at a saving.
    let later = later();
    let plan = setup.json(&later, &["plan", "--format", "json"]);
    let lines = plan["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{plan}");
    assert_eq!(lines[0]["rule"], "cool CT");
    assert_eq!(lines[0]["from"], "primary");
    assert_eq!(lines[0]["to"], "cold");
    assert_eq!(lines[0]["objects"], 3);
    assert!(
        plan["monthly_cost_change"].as_f64().unwrap() < 0.0,
        "{plan}"
    );
    assert!(setup.cold.objects().is_empty(), "the plan moved something");

    let report = setup.json(&later, &["run", "--format", "json"]);
    assert_eq!(report["moved"], 3, "{report}");
    assert_eq!(report["failed"], serde_json::json!([]));
    let cold = setup.cold.objects();
    assert_eq!(cold.len(), 3, "{cold:?}");
    if let Cold::S3 { .. } = setup.cold {
        for class in cold.values() {
            assert_eq!(class.as_deref(), Some("STANDARD_IA"));
        }
    }
    // The server reads them from the other store, byte for byte as stored.
    assert_eq!(contents(&server, &ct), before_ct);
    assert_eq!(contents(&server, &mr), before_mr);
    let (ok, out) = setup.verify();
    assert!(ok, "{out}");
    assert!(out.contains(" 0 orphaned blobs"), "{out}");

    // `kastell stats` counts the instances per store.
    let output = cli_command(&["stats", "--format", "json"], &setup.data)
        .envs(setup.env(""))
        .output()
        .unwrap();
    assert!(output.status.success());
    let stats: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let stores: BTreeMap<String, i64> = stats["tenants"][0]["stores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["store"].as_str().unwrap().to_string(),
                s["objects"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        stores,
        BTreeMap::from([("cold".to_string(), 3), ("primary".to_string(), 2)])
    );

    // Nothing left to do; the pass is audited.
    let report = setup.json(&later, &["run", "--format", "json"]);
    assert_eq!(report["moved"], 0, "{report}");

    // Deleting the study removes its objects from the store they are in.
    let status = client()
        .delete(server.url("/studies/31.1"))
        .send()
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 204);
    wait_until("the moved objects are deleted", || {
        setup.cold.objects().is_empty()
    });
}

#[test]
fn a_pass_killed_midway_then_run_again_loses_and_duplicates_nothing() {
    // Slow enough to be killed in the middle; claims expire after a second.
    let setup = setup(
        "CT",
        "[lifecycle.pass]\nmoves_per_second = 20.0\nlease_secs = 1\n",
    );
    let server = Server::spawn(&setup.data, &setup.env(""));
    let specs = store_series(&server, "32.1", "CT", 40);
    let before = contents(&server, &specs);
    let later = later();

    let mut pass = cli_command(&["lifecycle", "run"], &setup.data)
        .envs(setup.env(&later))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the pass has moved some objects", || {
        setup.cold.objects().len() >= 5
    });
    pass.kill().unwrap();
    let _ = pass.wait();
    let moved_before_kill = setup.cold.objects().len();
    assert!(moved_before_kill < 40, "the pass finished before the kill");

    // Every instance reads the same meanwhile, wherever it is.
    assert_eq!(contents(&server, &specs), before);

    // Passes until the dead pass's claims have expired and been taken over:
    // then everything is in the cold store, once, and nothing is orphaned.
    wait_until("a later pass has finished the work", || {
        let (ok, _, _) = setup.lifecycle(&later, &["run"]);
        let (verified, out) = setup.verify();
        ok && verified && out.contains(" 0 orphaned blobs")
    });
    assert_eq!(setup.cold.objects().len(), 40);
    assert_eq!(contents(&server, &specs), before);
    let (ok, out) = setup.verify();
    assert!(ok, "{out}");
    assert!(out.contains(" 0 orphaned blobs"), "{out}");
    if let Cold::Dir(_) = setup.cold {
        if std::env::var("KASTELL_TEST_BLOB_URL").is_err() {
            let primary = std::fs::read_dir(setup.data.join("blobs/instances"))
                .map(|d| d.count())
                .unwrap_or(0);
            assert_eq!(primary, 0, "old objects left in the primary store");
        }
    }
}

#[test]
fn two_passes_at_once_never_move_one_object_twice() {
    let setup = setup("MR", "");
    let server = Server::spawn(&setup.data, &setup.env(""));
    let specs = store_series(&server, "33.1", "MR", 30);
    let before = contents(&server, &specs);
    let later = later();
    let spawn = || {
        cli_command(&["lifecycle", "run", "--format", "json"], &setup.data)
            .envs(setup.env(&later))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let (first, second) = (spawn(), spawn());
    let reports: Vec<serde_json::Value> = [first, second]
        .into_iter()
        .map(|child| {
            let output = child.wait_with_output().unwrap();
            assert!(output.status.success());
            serde_json::from_slice(&output.stdout).unwrap()
        })
        .collect();
    let moved: u64 = reports.iter().map(|r| r["moved"].as_u64().unwrap()).sum();
    assert_eq!(moved, 30, "{reports:?}");
    for report in &reports {
        assert_eq!(report["failed"], serde_json::json!([]), "{report}");
    }
    assert_eq!(setup.cold.objects().len(), 30);
    assert_eq!(contents(&server, &specs), before);
    let (ok, out) = setup.verify();
    assert!(ok, "{out}");
}

#[test]
fn a_rule_naming_an_unknown_store_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kastell.toml");
    std::fs::write(
        &config,
        "[[lifecycle.moves]]\nname = \"nowhere\"\nto = \"glacier\"\n",
    )
    .unwrap();
    let output = cli_command(&["config"], &dir.path().join("data"))
        .env("KASTELL_CONFIG", &config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not primary nor in storage.stores"));
}

#[test]
fn the_server_runs_passes_on_its_schedule_and_audits_them() {
    let setup = setup("CT", "[lifecycle.pass]\ninterval_secs = 1\n");
    let later = later();
    let server = Server::spawn(&setup.data, &setup.env(&later));
    let specs = store_series(&server, "34.1", "CT", 2);
    let before = contents(&server, &specs);
    wait_until("the scheduled pass has moved the instances", || {
        setup.cold.objects().len() == 2
    });
    assert_eq!(contents(&server, &specs), before);
    let audited = || {
        serde_json::to_string(&audit_events(&setup.data, &setup.env("")))
            .unwrap()
            .contains("scheduled lifecycle pass: 2 objects")
    };
    wait_until("the pass is in the audit trail", audited);
}

#[test]
fn a_pass_stops_at_its_limit_and_the_next_one_goes_on() {
    let setup = setup("CT", "[lifecycle.pass]\nmax_moves = 2\n");
    let server = Server::spawn(&setup.data, &setup.env(""));
    let specs = store_series(&server, "35.1", "CT", 3);
    let before = contents(&server, &specs);
    let later = later();
    let report = setup.json(&later, &["run", "--format", "json"]);
    assert_eq!(report["moved"], 2, "{report}");
    assert_eq!(report["reached_limit"], true, "{report}");
    let report = setup.json(&later, &["run", "--format", "json"]);
    assert_eq!(report["moved"], 1, "{report}");
    assert_eq!(report["reached_limit"], false, "{report}");
    assert_eq!(setup.cold.objects().len(), 3);
    assert_eq!(contents(&server, &specs), before);
}

/// The instance objects under `prefix` in moto's bucket, with their storage class.
fn s3_classes(endpoint: &str, bucket: &str, prefix: &str) -> BTreeMap<String, Option<String>> {
    Cold::S3 {
        endpoint: endpoint.into(),
        bucket: bucket.into(),
        prefix: prefix.into(),
    }
    .objects()
}

/// GET of one instance: its status, Retry-After and Warning.
fn try_instance(server: &Server, spec: &Spec) -> (u16, Option<String>, Option<String>) {
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
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    (
        response.status().as_u16(),
        header("retry-after"),
        header("warning"),
    )
}

#[test]
fn an_offline_tier_answers_503_until_restored_and_a_legal_hold_keeps_a_study_out_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let Cold::S3 {
        endpoint, bucket, ..
    } = Cold::new(dir.path())
    else {
        eprintln!("skipped: offline tiers are S3 storage classes (run on moto: KASTELL_TEST_BLOB_URL, AWS_ENDPOINT_URL, KASTELL_S3_BUCKET)");
        return;
    };
    let prefix = format!("glacier-{}", uuid::Uuid::new_v4().simple());
    let data = dir.path().join("data");
    let config = dir.path().join("kastell.toml");
    std::fs::write(
        &config,
        format!(
            "[storage.stores.glacier]\nurl = \"s3://{bucket}/{prefix}\"\n\
             storage_class = \"GLACIER\"\nretry_after_secs = 7\n\
             [[lifecycle.moves]]\nname = \"archive CT\"\nmin_age_days = 30\n\
             modalities = [\"CT\"]\nto = \"glacier\"\n\
             [lifecycle.restore]\npoll_secs = 3600\n"
        ),
    )
    .unwrap();
    let env = |now: &str| {
        let mut env = vec![("KASTELL_CONFIG".to_string(), config.display().to_string())];
        if !now.is_empty() {
            env.push(("KASTELL__LIFECYCLE__NOW".to_string(), now.to_string()));
        }
        env
    };
    let lifecycle = |now: &str, args: &[&str]| lifecycle_out(&data, &config, now, args);
    let json = |now: &str, args: &[&str]| lifecycle_json(&data, &config, now, args);
    let server_env = env("");
    let server_env: Vec<(&str, &str)> = server_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let server = Server::spawn(&data, &server_env);
    let archived = store_series(&server, "41.1", "CT", 3);
    let held = store_series(&server, "41.2", "CT", 2);
    let before = contents(&server, &archived);
    let before_held = contents(&server, &held);
    lifecycle(
        "",
        &["hold", "--study", "41.2", "--reason", "litigation 7/2026"],
    );

    // The held study stays out of the offline tier: in the plan and the pass.
    let later = later();
    let plan = json(&later, &["plan", "--format", "json"]);
    assert_eq!(plan["lines"][0]["objects"], 3, "{plan}");
    assert_eq!(plan["held_back"], 2, "{plan}");
    let report = json(&later, &["run", "--format", "json"]);
    assert_eq!(report["moved"], 3, "{report}");
    assert_eq!(report["held_back"], 2, "{report}");
    assert_eq!(report["failed"], serde_json::json!([]), "{report}");
    let objects = s3_classes(&endpoint, &bucket, &prefix);
    assert_eq!(objects.len(), 3, "{objects:?}");
    assert!(
        objects.values().all(|c| c.as_deref() == Some("GLACIER")),
        "{objects:?}"
    );

    // Retrieval waits for a restore, which the first request started.
    let (status, retry_after, warning) = try_instance(&server, &archived[0]);
    assert_eq!(status, 503);
    assert_eq!(retry_after.as_deref(), Some("7"));
    let warning = warning.unwrap_or_default();
    assert!(
        warning.starts_with("299 ") && warning.contains("a restore was started"),
        "{warning}"
    );
    let (status, _, warning) = try_instance(&server, &archived[1]);
    assert_eq!(status, 503);
    assert!(
        warning.unwrap_or_default().contains("in progress"),
        "the second request does not start another restore"
    );
    // Frames wait too; the held study reads at once.
    let frame = client()
        .get(server.url(&format!(
            "/studies/41.1/series/41.1.1/instances/{}/frames/1",
            archived[0].instance
        )))
        .header(
            "Accept",
            "multipart/related; type=\"application/octet-stream\"",
        )
        .send()
        .unwrap();
    assert_eq!(frame.status().as_u16(), 503);
    assert_eq!(contents(&server, &held), before_held);

    // Search, metadata and thumbnails never wait for a restore.
    let search = client()
        .get(server.url("/studies?StudyInstanceUID=41.1"))
        .send()
        .unwrap();
    assert_eq!(search.status().as_u16(), 200);
    let metadata = client()
        .get(server.url("/studies/41.1/metadata"))
        .header("Accept", "application/dicom+json")
        .send()
        .unwrap();
    assert_eq!(metadata.status().as_u16(), 200);
    let items: Vec<serde_json::Value> = metadata.json().unwrap();
    assert_eq!(items.len(), 3);
    let thumbnail = client()
        .get(server.url("/studies/41.1/thumbnail"))
        .header("Accept", "image/jpeg")
        .send()
        .unwrap();
    assert_eq!(thumbnail.status().as_u16(), 200);

    // The journal shows the study waiting; a poll finds the restores done
    // (moto restores at once); the instances read as stored.
    let restores = json("", &["restores", "--format", "json"]);
    assert_eq!(
        restores["studies"][0]["study_instance_uid"], "41.1",
        "{restores}"
    );
    assert_eq!(restores["studies"][0]["waiting"], 3, "{restores}");
    let polled = json("", &["restores", "--poll", "--format", "json"]);
    assert_eq!(polled["poll"]["ready"], 3, "{polled}");
    assert_eq!(polled["studies"][0]["waiting"], 0, "{polled}");
    assert_eq!(contents(&server, &archived), before);

    // `kastell lifecycle restore` is the same request from the command line
    // (nothing new to ask for here), audited; stats name the tier.
    let out = lifecycle("", &["restore", "--study", "41.1"]);
    assert!(
        out.contains("3 instances in offline tiers, 0 restores asked for"),
        "{out}"
    );
    let events = serde_json::to_string(&audit_events(&data, &server_env)).unwrap();
    assert!(
        events.contains("restore from offline tiers: 3 instances offline"),
        "the restore is not in the audit trail"
    );
    let stats = cli_command(&["stats", "--format", "json"], &data)
        .envs(env(""))
        .output()
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    let glacier = stats["tenants"][0]["stores"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["store"] == "glacier")
        .cloned()
        .unwrap();
    assert_eq!(glacier["objects"], 3, "{stats}");
    assert_eq!(glacier["offline"], true, "{stats}");
    assert_eq!(glacier["storage_class"], "GLACIER", "{stats}");
    let verify = cli_command(&["verify"], &data)
        .envs(env(""))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{out}");
    assert!(out.contains(" 0 orphaned blobs"), "{out}");
}

#[test]
fn an_offline_class_is_refused_where_it_cannot_be_restored() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kastell.toml");
    std::fs::write(
        &config,
        format!(
            "[storage.stores.deep]\nurl = \"file://{}\"\nstorage_class = \"DEEP_ARCHIVE\"\n",
            dir.path().join("deep").display()
        ),
    )
    .unwrap();
    let output = cli_command(&["config"], &dir.path().join("data"))
        .env("KASTELL_CONFIG", &config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("offline tier"), "{stderr}");
}

/// `days` days after today, as an RFC 3339 time.
fn in_days(days: u64) -> String {
    let then = std::time::SystemTime::now() + std::time::Duration::from_secs(days * 86_400);
    humantime::format_rfc3339_seconds(then).to_string()
}

#[test]
fn a_rule_on_the_last_retrieval_leaves_the_studies_read_lately() {
    let setup = setup(
        "XX",
        "[[lifecycle.moves]]\nname = \"unread\"\nmin_days_since_retrieval = 90\nto = \"cold\"\n",
    );
    // The server's clock 60 days on: what it serves is noted as read then.
    let read_on = in_days(60);
    let server = Server::spawn(&setup.data, &setup.env(&read_on));
    let read = store_series(&server, "36.1", "CT", 2);
    let unread = store_series(&server, "36.2", "CT", 2);
    // Only study 36.1 is retrieved (storing reads nothing back).
    let before_read = contents(&server, &read);

    // 100 days on: 36.1 was read on day 60, 40 days ago; 36.2 never was, and
    // counts from its receipt (day 0): only 36.2 has gone 90 days unread.
    let plan = setup.json(&in_days(100), &["plan", "--format", "json"]);
    assert_eq!(plan["lines"][0]["rule"], "unread", "{plan}");
    let report = setup.json(&in_days(100), &["run", "--format", "json"]);
    assert_eq!(report["moved"], 2, "{report}");
    assert_eq!(setup.cold.objects().len(), 2);
    // 155 days on, 36.1 has too.
    let report = setup.json(&in_days(155), &["run", "--format", "json"]);
    assert_eq!(report["moved"], 2, "{report}");
    assert_eq!(contents(&server, &read), before_read);
    let stored: Vec<Vec<u8>> = unread.iter().map(dicom_file).collect();
    assert_eq!(contents(&server, &unread), stored);
}

#[test]
fn tiers_of_one_bucket_prefix_move_in_place_and_are_never_taken_for_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let Cold::S3 {
        endpoint, bucket, ..
    } = Cold::new(dir.path())
    else {
        eprintln!("skipped: tiers of one bucket prefix are S3's (run on moto)");
        return;
    };
    let prefix = format!("tiers-{}", uuid::Uuid::new_v4().simple());
    let data = dir.path().join("data");
    let config = dir.path().join("kastell.toml");
    std::fs::write(
        &config,
        format!(
            "[storage.stores.warm]\nurl = \"s3://{bucket}/{prefix}\"\nstorage_class = \"STANDARD_IA\"\n\
             [storage.stores.deep]\nurl = \"s3://{bucket}/{prefix}\"\nstorage_class = \"GLACIER\"\n\
             retry_after_secs = 5\n\
             [[lifecycle.moves]]\nname = \"deep\"\nmin_age_days = 90\nto = \"deep\"\n\
             [[lifecycle.moves]]\nname = \"warm\"\nmin_age_days = 30\nto = \"warm\"\n\
             [lifecycle.restore]\npoll_secs = 3600\n"
        ),
    )
    .unwrap();
    let config_env = ("KASTELL_CONFIG", config.to_str().unwrap());
    let run = |days: u64, args: &[&str]| lifecycle_json(&data, &config, &in_days(days), args);
    let server = Server::spawn(&data, &[config_env]);
    let specs = store_series(&server, "42.1", "CT", 3);
    let before = contents(&server, &specs);

    // Into the bucket prefix (a copy), then to its Glacier tier in place.
    let report = run(60, &["run", "--format", "json"]);
    assert_eq!(
        (report["moved"].as_u64(), report["in_place"].as_u64()),
        (Some(3), Some(0)),
        "{report}"
    );
    let warm = s3_classes(&endpoint, &bucket, &prefix);
    assert_eq!(warm.len(), 3, "{warm:?}");
    assert!(
        warm.values().all(|c| c.as_deref() == Some("STANDARD_IA")),
        "{warm:?}"
    );
    let report = run(120, &["run", "--format", "json"]);
    assert_eq!(
        (report["moved"].as_u64(), report["in_place"].as_u64()),
        (Some(3), Some(3)),
        "{report}"
    );
    assert_eq!(report["failed"], serde_json::json!([]), "{report}");
    let deep = s3_classes(&endpoint, &bucket, &prefix);
    assert_eq!(
        deep.keys().collect::<Vec<_>>(),
        warm.keys().collect::<Vec<_>>(),
        "the same objects, not copies"
    );
    assert!(
        deep.values().all(|c| c.as_deref() == Some("GLACIER")),
        "{deep:?}"
    );

    // Listed once, known under either store's name: no orphan, for verify
    // nor for the sweep of a server started with no grace.
    let verify = cli_command(&["verify"], &data)
        .env(config_env.0, config_env.1)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{out}");
    assert!(out.contains(" 0 orphaned blobs"), "{out}");
    drop(server);
    let log = dir.path().join("server.log");
    let server = Server::spawn_logging(
        &data,
        &[
            config_env,
            ("KASTELL__STORAGE__ORPHAN_GRACE_SECS", "0"),
            ("RUST_LOG", "info"),
        ],
        &log,
    );
    wait_until("the orphan sweep has run", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("orphan sweep"))
    });
    assert_eq!(
        s3_classes(&endpoint, &bucket, &prefix).len(),
        3,
        "the sweep took tiers for orphans"
    );

    // Offline now: a rule back to `warm` asks for the restore first and moves
    // nothing; a retrieval meanwhile waits for that restore.
    let back = dir.path().join("back.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let stores = text.split("[[lifecycle.moves]]").next().unwrap();
    std::fs::write(
        &back,
        format!("{stores}[[lifecycle.moves]]\nname = \"back\"\nto = \"warm\"\n"),
    )
    .unwrap();
    let run_back = || -> serde_json::Value {
        let output = cli_command(&["lifecycle", "run", "--format", "json"], &data)
            .env("KASTELL_CONFIG", &back)
            .output()
            .unwrap();
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let report = run_back();
    assert_eq!(
        (report["moved"].as_u64(), report["restoring"].as_u64()),
        (Some(0), Some(3)),
        "{report}"
    );
    let (status, _, warning) = try_instance(&server, &specs[0]);
    assert_eq!(status, 503);
    assert!(warning.unwrap_or_default().contains("in progress"));
    // The polls send the restores and see them done.
    wait_until("the restores are done", || {
        let polled = run(0, &["restores", "--poll", "--format", "json"]);
        polled["studies"][0]["waiting"] == 0
    });
    assert_eq!(contents(&server, &specs), before);
    let report = run_back();
    assert_eq!(
        (report["moved"].as_u64(), report["in_place"].as_u64()),
        (Some(3), Some(3)),
        "{report}"
    );
    let warm_again = s3_classes(&endpoint, &bucket, &prefix);
    assert!(
        warm_again
            .values()
            .all(|c| c.as_deref() == Some("STANDARD_IA")),
        "{warm_again:?}"
    );
    assert_eq!(contents(&server, &specs), before);
}

/// Azurite's container and the tiers of the blobs under `prefix` (by
/// blobctl.py, which signs with the emulator's well-known key).
fn azure_tiers(container: &str, prefix: &str) -> BTreeMap<String, String> {
    let output = std::process::Command::new("python3")
        .args([
            "tests/backends/blobctl.py",
            "az",
            "tiers",
            container,
            prefix,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (tier, name) = line.split_once(' ')?;
            Some((name.rsplit('/').next()?.to_string(), tier.to_string()))
        })
        .collect()
}

#[test]
fn azure_access_tiers_cool_and_archive_with_rehydration_and_archiving_again() {
    let (Ok(_), Ok(container)) = (
        std::env::var("AZURITE_BLOB_STORAGE_URL"),
        std::env::var("KASTELL_AZURE_CONTAINER"),
    ) else {
        eprintln!("skipped: Azure access tiers need Azurite (AZURITE_BLOB_STORAGE_URL, KASTELL_AZURE_CONTAINER)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("tiers-{}", uuid::Uuid::new_v4().simple());
    let data = dir.path().join("data");
    let config = dir.path().join("kastell.toml");
    std::fs::write(
        &config,
        format!(
            "[storage.stores.cool]\nurl = \"az://{container}/{prefix}/cool\"\nstorage_class = \"Cool\"\n\
             [storage.stores.archive]\nurl = \"az://{container}/{prefix}/archive\"\n\
             storage_class = \"Archive\"\nretry_after_secs = 9\nrestore_days = 2\n\
             [[lifecycle.moves]]\nname = \"archive\"\nmin_age_days = 90\nto = \"archive\"\n\
             [[lifecycle.moves]]\nname = \"cool\"\nmin_age_days = 30\nto = \"cool\"\n\
             [lifecycle.restore]\npoll_secs = 3600\n"
        ),
    )
    .unwrap();
    let config_env = ("KASTELL_CONFIG", config.to_str().unwrap());
    let run = |now: &str, args: &[&str]| lifecycle_json(&data, &config, now, args);
    let server = Server::spawn(&data, &[config_env]);
    let specs = store_series(&server, "43.1", "CT", 3);
    let before = contents(&server, &specs);

    // Cool after 30 days, Archive after 90: the blobs carry the tiers.
    let report = run(&in_days(60), &["run", "--format", "json"]);
    assert_eq!(report["moved"], 3, "{report}");
    let cool = azure_tiers(&container, &format!("{prefix}/cool/"));
    assert_eq!(cool.len(), 3, "{cool:?}");
    assert!(cool.values().all(|t| t == "Cool"), "{cool:?}");
    assert_eq!(contents(&server, &specs), before);
    let report = run(&in_days(120), &["run", "--format", "json"]);
    assert_eq!(report["moved"], 3, "{report}");
    let archive = azure_tiers(&container, &format!("{prefix}/archive/"));
    assert!(azure_tiers(&container, &format!("{prefix}/cool/")).is_empty());
    assert_eq!(archive.len(), 3, "{archive:?}");
    assert!(archive.values().all(|t| t == "Archive"), "{archive:?}");

    // Archived: 503 and a rehydration; Azurite rehydrates at once (the
    // request or the poll sees it), and the blobs read as stored, Hot.
    let (status, retry_after, warning) = try_instance(&server, &specs[0]);
    assert_eq!(status, 503);
    assert_eq!(retry_after.as_deref(), Some("9"));
    assert!(warning
        .unwrap_or_default()
        .contains("a restore was started"));
    let polled = run("", &["restores", "--poll", "--format", "json"]);
    assert_eq!(polled["studies"][0]["waiting"], 0, "{polled}");
    assert_eq!(polled["studies"][0]["ready"], 3, "{polled}");
    assert_eq!(contents(&server, &specs), before);
    let rehydrated = azure_tiers(&container, &format!("{prefix}/archive/"));
    assert!(rehydrated.values().all(|t| t == "Hot"), "{rehydrated:?}");

    // restore_days later the server's poll archives them again.
    let polled = run(&in_days(3), &["restores", "--poll", "--format", "json"]);
    assert_eq!(polled["poll"]["pruned"], 3, "{polled}");
    let archived = azure_tiers(&container, &format!("{prefix}/archive/"));
    assert!(archived.values().all(|t| t == "Archive"), "{archived:?}");
    assert_eq!(try_instance(&server, &specs[1]).0, 503);
}
