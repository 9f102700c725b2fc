//! The audit trail against real databases: SQLite always, PostgreSQL when
//! `KASTELL_TEST_POSTGRES` names a server (the test command always sets it), each
//! test in databases of its own.

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection, SqliteConnection};

use super::*;
use crate::crypto::{LocalMasterKey, MasterKeys, SecretKey};
use crate::index::audit::AuditRow;
use crate::index::test_db::PgTestDb;
use crate::index::IndexOptions;

/// The master key the tests' chain keys are wrapped with.
fn provider() -> MasterKeys {
    MasterKeys::single(
        "local",
        std::sync::Arc::new(LocalMasterKey::new(
            &SecretKey::from_bytes(&[7; 32]).unwrap(),
            "test",
        )),
    )
}

/// The database's chain key, made on first use like the server does.
fn chain_key(index: &Index) -> ChainKey {
    ChainKey::load_or_create(index, &provider()).unwrap()
}

fn append(index: &Index, events: &[AuditEvent]) -> Result<Option<AuditHead>, AuditError> {
    super::append(index, &chain_key(index), events)
}

fn verify(index: &Index) -> Result<VerifyReport, AuditError> {
    super::verify(index, ChainKey::load(index, &provider())?)
}

struct TestDb {
    index: Index,
    url: String,
    /// The PostgreSQL database made for the test, dropped when the test is done
    /// (after `index`: fields drop in order).
    _pg: Option<PgTestDb>,
}

impl TestDb {
    fn is_postgres(&self) -> bool {
        self.url.starts_with("postgres")
    }

    /// Runs SQL behind Kastell's back, as an intruder with database access would.
    fn raw(&self, sql: &str) -> Result<(), diesel::result::Error> {
        if self.is_postgres() {
            PgConnection::establish(&self.url)
                .unwrap()
                .batch_execute(sql)
        } else {
            let path = crate::index::sqlite_path(&self.url).unwrap();
            SqliteConnection::establish(path)
                .unwrap()
                .batch_execute(sql)
        }
    }

    /// Like [`TestDb::raw`], with the append-only triggers out of the way first.
    fn tamper(&self, sql: &str) {
        let disable = if self.is_postgres() {
            "ALTER TABLE audit_events DISABLE TRIGGER USER;"
        } else {
            "DROP TRIGGER IF EXISTS audit_events_no_update; DROP TRIGGER IF EXISTS audit_events_no_delete;"
        };
        self.raw(&format!("{disable} {sql}")).unwrap();
    }

    /// Like [`TestDb::tamper`], on the chain key's row.
    fn tamper_key(&self, sql: &str) {
        let disable = if self.is_postgres() {
            "ALTER TABLE audit_chain_key DISABLE TRIGGER USER;"
        } else {
            "DROP TRIGGER IF EXISTS audit_chain_key_no_update; \
             DROP TRIGGER IF EXISTS audit_chain_key_no_delete;"
        };
        self.raw(&format!("{disable} {sql}")).unwrap();
    }

    /// A second, independent handle on the same database: another server process.
    fn reopen(&self) -> Index {
        Index::open(&self.url, options()).unwrap()
    }
}

fn options() -> IndexOptions {
    IndexOptions {
        pool_size: 4,
        busy_timeout: Duration::from_secs(10),
        acquire_timeout: Duration::from_secs(10),
        statement_timeout: Duration::from_secs(30),
        group_commit: true,
    }
}

/// A fresh SQLite index and, when configured, a fresh PostgreSQL one.
fn databases() -> Vec<TestDb> {
    let dir = tempfile::tempdir().unwrap().keep();
    let url = format!("sqlite://{}/i.sqlite", dir.display());
    let mut dbs = vec![TestDb {
        index: Index::open(&url, options()).unwrap(),
        url,
        _pg: None,
    }];
    if let Some(db) = PgTestDb::from_env() {
        let url = db.url();
        dbs.push(TestDb {
            index: Index::open(&url, options()).unwrap(),
            url,
            _pg: Some(db),
        });
    } else {
        eprintln!("KASTELL_TEST_POSTGRES is not set: the PostgreSQL half of this test did not run");
    }
    dbs
}

fn event(n: usize) -> AuditEvent {
    AuditEvent::new(
        format!("user-{}", n % 7),
        ActorKind::Token,
        "default",
        Action::Retrieve,
        Outcome::Success,
    )
    .client_address("192.0.2.10")
    .status(200)
    .study(format!("1.2.826.0.1.{n}"))
    .instances([format!("1.2.826.0.1.{n}.1"), format!("1.2.826.0.1.{n}.2")])
}

fn events(range: std::ops::Range<usize>) -> Vec<AuditEvent> {
    range.map(event).collect()
}

/// An INSERT of `row` with its values spelled out, as an intruder would type it.
fn insert_literal(row: &AuditRow) -> String {
    let text = |v: &str| format!("'{}'", v.replace('\'', "''"));
    let opt = |v: &Option<String>| v.as_deref().map_or("NULL".to_string(), text);
    format!(
        "INSERT INTO audit_events (seq, at, actor, actor_kind, client_address, tenant, action, \
         outcome, status, study_uid, series_uid, instance_uids, detail, prev_hash, hash) \
         VALUES ({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {});",
        row.seq,
        text(&row.at),
        text(&row.actor),
        text(&row.actor_kind),
        opt(&row.client_address),
        text(&row.tenant),
        text(&row.action),
        text(&row.outcome),
        row.status.map_or("NULL".to_string(), |s| s.to_string()),
        opt(&row.study_uid),
        opt(&row.series_uid),
        opt(&row.instance_uids),
        opt(&row.detail),
        text(&row.prev_hash),
        text(&row.hash),
    )
}

fn stored(index: &Index) -> Vec<StoredEvent> {
    index
        .audit_page(i64::MIN, i64::MAX)
        .unwrap()
        .into_iter()
        .map(|row| StoredEvent::try_from(row).unwrap())
        .collect()
}

#[test]
fn appended_batches_form_one_verified_chain() {
    for db in databases() {
        assert!(verify(&db.index).unwrap().is_intact());
        assert_eq!(verify(&db.index).unwrap().head, None);
        let first = events(0..3);
        append(&db.index, &first).unwrap();
        // More than a page of verification, in batches of more than one INSERT.
        let head = append(&db.index, &events(3..1203)).unwrap().unwrap();
        assert_eq!(head.seq, 1203);
        let report = verify(&db.index).unwrap();
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.events, 1203);
        assert_eq!(report.head, Some(head.clone()));
        assert_eq!(db.index.audit_head().unwrap(), Some(head));
        // Stored as given.
        let all = stored(&db.index);
        assert_eq!(all[0].prev_hash, GENESIS_HASH);
        assert_eq!(all[5].event.study_uid.as_deref(), Some("1.2.826.0.1.5"));
        assert_eq!(all[5].event.instance_uids.len(), 2);
        assert_eq!(
            all[1].event.at, first[1].at,
            "microsecond precision is kept"
        );
        assert_eq!(all[1].event, first[1]);
    }
}

#[test]
fn the_database_refuses_updates_and_deletes() {
    for db in databases() {
        append(&db.index, &events(0..2)).unwrap();
        assert!(db
            .raw("UPDATE audit_events SET actor = 'mallory' WHERE seq = 1")
            .is_err());
        assert!(db.raw("DELETE FROM audit_events WHERE seq = 2").is_err());
        if db.is_postgres() {
            assert!(db.raw("TRUNCATE audit_events").is_err());
        }
        assert!(verify(&db.index).unwrap().is_intact());
    }
}

#[test]
fn an_edited_row_is_named() {
    for db in databases() {
        append(&db.index, &events(0..10)).unwrap();
        db.tamper("UPDATE audit_events SET actor = 'mallory' WHERE seq = 3");
        let report = verify(&db.index).unwrap();
        assert_eq!(report.first_broken(), Some(3), "{report}");
        assert_eq!(report.breaks[0].problem, Problem::Edited);
        assert_eq!(report.break_count, 1);
        // The trail goes on; the break stays visible.
        append(&db.index, &events(10..12)).unwrap();
        let report = verify(&db.index).unwrap();
        assert_eq!((report.first_broken(), report.events), (Some(3), 12));
    }
}

#[test]
fn a_deleted_row_is_named() {
    for db in databases() {
        append(&db.index, &events(0..10)).unwrap();
        db.tamper("DELETE FROM audit_events WHERE seq = 4");
        let report = verify(&db.index).unwrap();
        assert_eq!(report.first_broken(), Some(4), "{report}");
        assert_eq!(report.breaks[0].problem, Problem::Missing { next_found: 5 });
    }
}

#[test]
fn forged_rows_are_detected() {
    for db in databases() {
        append(&db.index, &events(0..10)).unwrap();
        let rows = db.index.audit_page(0, 100).unwrap();
        // A row slipped in after seq 5, with a correct hash of its own and the
        // later rows renumbered: the row after it neither links nor matches.
        let mut forged = rows[4].clone();
        forged.seq = 6;
        forged.actor = "mallory".into();
        forged.prev_hash = rows[4].hash.clone();
        forged.hash = chain::row_hash(&chain_key(&db.index), &forged.prev_hash, &forged);
        db.tamper(&format!(
            "UPDATE audit_events SET seq = seq + 1000000 WHERE seq > 5; \
             UPDATE audit_events SET seq = seq - 999999 WHERE seq > 1000000; {}",
            insert_literal(&forged)
        ));
        let report = verify(&db.index).unwrap();
        assert_eq!(report.events, 11);
        assert_eq!(report.first_broken(), Some(7), "{report}");
        // Row 7 neither links to the forgery nor matches (its seq changed), and
        // every renumbered row after it no longer matches either.
        assert_eq!(
            report.breaks[..2],
            [
                Break {
                    seq: 7,
                    problem: Problem::Unlinked
                },
                Break {
                    seq: 7,
                    problem: Problem::Edited
                },
            ]
        );
        assert!(report.breaks.iter().all(|b| b.seq >= 7));

        // A naive forgery at the end: linked, but its hash is made up.
        let mut naive = rows[9].clone();
        naive.seq = 12;
        naive.action = "delete".into();
        naive.prev_hash = rows[9].hash.clone();
        naive.hash = "f".repeat(64);
        db.tamper(&insert_literal(&naive));
        let report = verify(&db.index).unwrap();
        assert!(
            report.breaks.contains(&Break {
                seq: 12,
                problem: Problem::Edited
            }),
            "{report}"
        );
    }
}

#[test]
fn the_chain_key_is_made_once_wrapped_and_bound_to_its_first_seq() {
    for db in databases() {
        // Rows of a Kastell that did not key the chain yet.
        db.index
            .append_audit(|head| {
                assert!(head.is_none());
                let mut prev = GENESIS_HASH.to_string();
                events(0..3)
                    .iter()
                    .zip(1..)
                    .map(|(event, seq)| {
                        let mut row = event.to_row();
                        row.seq = seq;
                        row.prev_hash = prev.clone();
                        row.hash = chain::unkeyed_row_hash(&prev, &row);
                        prev = row.hash.clone();
                        row
                    })
                    .collect()
            })
            .unwrap();
        let report = verify(&db.index).unwrap();
        assert!(report.is_intact() && report.unkeyed_events == 3, "{report}");
        // The first writer that needs a key makes it, to seal from seq 4.
        append(&db.index, &events(3..6)).unwrap();
        assert_eq!(chain_key(&db.index).first_keyed_seq(), 4);
        let report = verify(&db.index).unwrap();
        assert!(report.is_intact(), "{report}");
        assert_eq!((report.events, report.unkeyed_events), (6, 3));
        // Stored wrapped: not under another master key, and not with its first
        // seq moved (to pass keyed rows off as unkeyed ones).
        let stranger = MasterKeys::single(
            "local",
            std::sync::Arc::new(LocalMasterKey::new(
                &SecretKey::from_bytes(&[9; 32]).unwrap(),
                "other",
            )),
        );
        assert!(matches!(
            ChainKey::load(&db.index, &stranger),
            Err(AuditError::ChainKey(_))
        ));
        db.tamper_key("UPDATE audit_chain_key SET first_keyed_seq = 100");
        assert!(matches!(
            ChainKey::load(&db.index, &provider()),
            Err(AuditError::ChainKey(_))
        ));
        // Removed, a new key is made from the head on: the rows sealed with the
        // old one no longer verify.
        db.tamper_key("DELETE FROM audit_chain_key");
        append(&db.index, &events(6..7)).unwrap();
        let report = verify(&db.index).unwrap();
        assert_eq!(report.first_broken(), Some(4), "{report}");
    }
}

#[test]
fn an_intruder_without_the_master_key_cannot_recompute_the_chain() {
    for db in databases() {
        append(&db.index, &events(0..8)).unwrap();
        let rows = db.index.audit_page(0, 100).unwrap();
        // Row 3 edited, and every hash from there recomputed and relinked with
        // what the database holds: a plain SHA-256 chain.
        let mut prev = rows[1].hash.clone();
        let mut rewritten = String::new();
        for row in &rows[2..] {
            let mut row = row.clone();
            if row.seq == 3 {
                row.actor = "mallory".into();
            }
            row.prev_hash = prev.clone();
            row.hash = chain::unkeyed_row_hash(&prev, &row);
            prev = row.hash.clone();
            rewritten.push_str(&insert_literal(&row));
        }
        db.tamper(&format!(
            "DELETE FROM audit_events WHERE seq >= 3; {rewritten}"
        ));
        let report = verify(&db.index).unwrap();
        assert_eq!(report.first_broken(), Some(3), "{report}");
        assert_eq!(report.break_count, 6, "{report}");
    }
}

#[test]
fn an_anchor_detects_removed_newest_rows() {
    for db in databases() {
        append(&db.index, &events(0..5)).unwrap();
        let head = verify(&db.index).unwrap().head.unwrap();
        let anchor: Anchor = format!("{}:{}", head.seq, head.hash).parse().unwrap();
        db.tamper("DELETE FROM audit_events WHERE seq >= 4");
        assert!(verify(&db.index).unwrap().is_intact());
        let key = ChainKey::load(&db.index, &provider()).unwrap();
        let report = chain::verify_anchored(&db.index, key, Some(anchor)).unwrap();
        assert_eq!(
            report.breaks,
            vec![Break {
                seq: 5,
                problem: Problem::AnchorMissing
            }]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_batches_applies_backpressure_and_flushes() {
    for db in databases() {
        // A channel of one: every record waits for the writer, none is lost.
        let log = AuditLog::start_with(
            db.index.clone(),
            chain_key(&db.index),
            AuditLogOptions {
                capacity: 1,
                max_batch: 16,
                max_delay: Duration::from_millis(20),
                ..Default::default()
            },
        );
        for e in events(0..100) {
            log.record(e).await.unwrap();
        }
        log.flush().await.unwrap();
        let report = verify(&db.index).unwrap();
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.events, 100);
        // A flush with nothing pending answers at once.
        log.flush().await.unwrap();
        // Stored in recording order.
        let all = stored(&db.index);
        assert_eq!(all[42].event.study_uid.as_deref(), Some("1.2.826.0.1.42"));
    }
}

/// A store or delete is in the database when `record_committed` returns, even
/// with batches that would otherwise wait for a long time; reads stay batched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_records_are_stored_before_the_call_returns() {
    for db in databases() {
        let log = AuditLog::start_with(
            db.index.clone(),
            chain_key(&db.index),
            AuditLogOptions {
                max_delay: Duration::from_secs(3600),
                ..Default::default()
            },
        );
        log.record(event(1)).await.unwrap();
        let store = AuditEvent::new(
            "pacs",
            ActorKind::ApiKey,
            "default",
            Action::Store,
            Outcome::Success,
        )
        .study("1.2.3");
        tokio::time::timeout(Duration::from_secs(30), log.record_committed([store]))
            .await
            .expect("not held back for the batch delay")
            .unwrap();
        let all = stored(&db.index);
        assert_eq!(all.len(), 2, "the read before it is written along");
        assert_eq!(all[1].event.action, Action::Store);
    }
}

/// A flood of refusals leaves the per-client limit of records and, at close,
/// one aggregated record counting the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_limited_per_client_and_counted_at_close() {
    for db in databases() {
        let log = AuditLog::start_with(
            db.index.clone(),
            chain_key(&db.index),
            AuditLogOptions {
                refusals: RefusalLimits {
                    per_window: 5,
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        for _ in 0..200 {
            let refusal = AuditEvent::new(
                "unknown",
                ActorKind::Anonymous,
                "default",
                Action::LoginFailure,
                Outcome::Failure,
            )
            .client_address("203.0.113.9")
            .status(401);
            log.record_refusal(refusal).await.unwrap();
        }
        log.close().await.unwrap();
        let all = stored(&db.index);
        assert_eq!(all.len(), 6);
        let detail = all[5].event.detail.as_deref().unwrap();
        assert!(
            detail.starts_with("195 more login-failure records"),
            "{detail}"
        );
        assert!(verify(&db.index).unwrap().is_intact());
    }
}

/// Two server processes on one database (two pools, two writers), recording at
/// the same time: one chain, no fork, no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_on_one_database_keep_one_chain() {
    for db in databases() {
        let options = AuditLogOptions {
            capacity: 64,
            max_batch: 7,
            max_delay: Duration::from_millis(5),
            ..Default::default()
        };
        let logs = [
            AuditLog::start_with(db.index.clone(), chain_key(&db.index), options),
            AuditLog::start_with(db.reopen(), chain_key(&db.index), options),
        ];
        let mut tasks = Vec::new();
        for (w, log) in logs.iter().enumerate() {
            for t in 0..3 {
                let log = log.clone();
                tasks.push(tokio::spawn(async move {
                    for n in 0..100 {
                        let e = event(w * 1000 + t * 100 + n);
                        log.record(e).await.unwrap();
                    }
                }));
            }
        }
        for task in tasks {
            task.await.unwrap();
        }
        for log in &logs {
            log.flush().await.unwrap();
        }
        let report = verify(&db.index).unwrap();
        assert!(report.is_intact(), "{} {report}", db.url);
        assert_eq!(report.events, 600);
        assert_eq!(report.head.unwrap().seq, 600);
    }
}

#[test]
fn exports_stream_the_same_documents_and_honour_since() {
    for db in databases() {
        let mut old = event(0);
        old.at = humantime::parse_rfc3339("2020-01-01T00:00:00Z").unwrap();
        append(&db.index, &[old]).unwrap();
        append(&db.index, &events(1..4)).unwrap();
        let all = stored(&db.index);

        let since = parse_since("2021-01-01").unwrap();
        let mut fhir = Vec::new();
        let count = write_export(&db.index, &since, ExportFormat::Fhir, &mut fhir).unwrap();
        assert_eq!(count, 3);
        let fhir: serde_json::Value = serde_json::from_slice(&fhir).unwrap();
        assert_eq!(fhir, export_fhir(&all[1..]));

        let mut atna = Vec::new();
        write_export(
            &db.index,
            "2000-01-01T00:00:00.000000Z",
            ExportFormat::Atna,
            &mut atna,
        )
        .unwrap();
        assert_eq!(String::from_utf8(atna).unwrap(), export_atna(&all));

        let mut empty = Vec::new();
        assert_eq!(
            write_export(
                &db.index,
                "2999-01-01T00:00:00.000000Z",
                ExportFormat::Fhir,
                &mut empty
            )
            .unwrap(),
            0
        );
        let empty: serde_json::Value = serde_json::from_slice(&empty).unwrap();
        assert_eq!(empty, export_fhir(&[]));
    }
}

#[test]
fn every_text_field_is_bounded_with_a_marker() {
    let huge = "x".repeat(1 << 20);
    let uids: Vec<String> = (0..MAX_INSTANCE_UIDS + 7)
        .map(|n| format!("1.2.3.{n}"))
        .collect();
    let row = AuditEvent::new(
        &huge,
        ActorKind::Token,
        &huge,
        Action::Store,
        Outcome::Success,
    )
    .client_address(&huge)
    .study(&huge)
    .series("1.2.3")
    .instances(uids)
    .instances([huge.clone()])
    .detail("é".repeat(MAX_DETAIL_CHARS + 10))
    .to_row();
    let detail = row.detail.unwrap();
    assert_eq!(
        detail.chars().count(),
        MAX_DETAIL_CHARS + TRUNCATION_MARKER.chars().count()
    );
    assert!(detail.ends_with(TRUNCATION_MARKER));
    assert_eq!(row.actor, bounded(&huge, MAX_ACTOR_CHARS));
    assert!(row.actor.ends_with(TRUNCATION_MARKER));
    assert!(row.tenant.len() < 100 && row.tenant.ends_with(TRUNCATION_MARKER));
    let address = row.client_address.unwrap();
    assert!(address.len() < 100 && address.ends_with(TRUNCATION_MARKER));
    let study = row.study_uid.unwrap();
    assert_eq!(
        study,
        format!("{}{TRUNCATION_MARKER}", "x".repeat(MAX_UID_CHARS))
    );
    assert_eq!(
        row.series_uid.as_deref(),
        Some("1.2.3"),
        "short values are kept"
    );
    let instances = row.instance_uids.unwrap();
    let words: Vec<&str> = instances.split(' ').collect();
    assert_eq!(words.len(), MAX_INSTANCE_UIDS + 1);
    assert_eq!(words[0], "1.2.3.0");
    assert_eq!(*words.last().unwrap(), "…[+8-more]");
    // However much a request sends, a record stays small.
    let total = row.actor.len() + row.tenant.len() + address.len() + instances.len() + detail.len();
    assert!(total < 64 * 1024, "{total} bytes");
}

#[test]
fn enum_texts_round_trip() {
    for a in Action::ALL {
        assert_eq!(a.as_str().parse::<Action>(), Ok(*a));
    }
    for k in ActorKind::ALL {
        assert_eq!(k.as_str().parse::<ActorKind>(), Ok(*k));
    }
    for o in Outcome::ALL {
        assert_eq!(o.as_str().parse::<Outcome>(), Ok(*o));
    }
    assert!("nope".parse::<Action>().is_err());
}
