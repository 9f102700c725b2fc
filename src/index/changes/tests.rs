//! The change feed on SQLite and, when `KASTELL_TEST_POSTGRES` names a server,
//! on PostgreSQL.

use super::*;
use crate::index::catalog;
use crate::index::tests::test_indexes;
use crate::index::NewInstance;
use crate::service::request::Scope;
use dicom_core::Tag;

fn instance(study: &str, series: &str, sop: &str, sha: &str) -> NewInstance {
    let attr = |tag: (u16, u16)| catalog::find(Tag(tag.0, tag.1)).unwrap();
    NewInstance {
        study_instance_uid: study.into(),
        series_instance_uid: series.into(),
        sop_instance_uid: sop.into(),
        sop_class_uid: "1.2.840.10008.5.1.4.1.1.7".into(),
        transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
        blob_key: format!("key-{sop}-{sha}"),
        blob_size: 1,
        content_sha256: sha.into(),
        header_length: 1,
        pixel_data_offset: None,
        pixel_data_length: None,
        frame_offsets: None,
        metadata: None,
        values: vec![(attr((0x0020, 0x000D)), Some(study.into()))],
        request_items: vec![],
    }
}

fn actions(changes: &[Change]) -> Vec<(i64, &str, Option<&str>)> {
    changes
        .iter()
        .map(|c| (c.seq, c.action.as_str(), c.sop_instance_uid.as_deref()))
        .collect()
}

#[test]
fn stores_replacements_and_deletions_are_numbered_without_gaps() {
    for (index, _db) in test_indexes() {
        assert_eq!(index.latest_change().unwrap(), 0);
        index
            .store_instances(
                vec![
                    instance("1.9", "1.9.1", "1.9.1.2", "a"),
                    instance("1.8", "1.8.1", "1.8.1.1", "a"),
                ],
                false,
            )
            .unwrap();
        // The same bytes again change nothing; a conflict neither.
        index
            .store_instances(vec![instance("1.9", "1.9.1", "1.9.1.2", "a")], false)
            .unwrap();
        index
            .store_instances(vec![instance("1.9", "1.9.1", "1.9.1.2", "b")], false)
            .unwrap();
        // Overwrite allowed: a replacement.
        index
            .store_instances(vec![instance("1.9", "1.9.1", "1.9.1.2", "c")], true)
            .unwrap();
        index
            .delete(
                &Scope::Study {
                    study: "1.8".into(),
                },
                &|_| Ok(()),
            )
            .unwrap();
        let feed = index.changes_after(0, 100).unwrap();
        assert_eq!(
            actions(&feed),
            vec![
                (1, "created", Some("1.9.1.2")),
                (2, "created", Some("1.8.1.1")),
                (3, "replaced", Some("1.9.1.2")),
                (4, "deleted", Some("1.8.1.1")),
            ],
            "request order, nothing for what did not change"
        );
        assert_eq!(feed[3].study_instance_uid.as_deref(), Some("1.8"));
        assert_eq!(feed[3].series_instance_uid.as_deref(), Some("1.8.1"));
        assert_eq!(index.latest_change().unwrap(), 4);
        assert_eq!(
            actions(&index.changes_after(2, 1).unwrap()),
            vec![(3, "replaced", Some("1.9.1.2"))]
        );
        assert!(index.changes_after(4, 10).unwrap().is_empty());
        // A change of the tenant itself: no UIDs, its facts as detail.
        index
            .record_tenant_change(
                ChangeAction::KeyRotated,
                Some(serde_json::json!({"keyVersion": 2})),
            )
            .unwrap();
        let key = &index.changes_after(4, 10).unwrap()[0];
        assert_eq!((key.seq, key.action.as_str()), (5, "key-rotated"));
        assert_eq!(key.study_instance_uid, None);
        assert_eq!(key.detail.as_deref(), Some(r#"{"keyVersion":2}"#));
        // A deletion that matched nothing writes nothing.
        index
            .delete(
                &Scope::Study {
                    study: "1.7".into(),
                },
                &|_| Ok(()),
            )
            .unwrap();
        assert_eq!(index.latest_change().unwrap(), 5);
    }
}

#[test]
fn a_study_is_announced_stable_once_and_again_after_new_instances() {
    for (index, _db) in test_indexes() {
        index
            .store_instances(
                vec![
                    instance("2.1", "2.1.1", "2.1.1.1", "a"),
                    instance("2.1", "2.1.2", "2.1.2.1", "a"),
                    instance("2.2", "2.2.1", "2.2.1.1", "a"),
                ],
                false,
            )
            .unwrap();
        assert_eq!(index.settling_studies().unwrap(), 2);
        // Not yet quiet.
        assert_eq!(index.announce_stable_studies(0, 100).unwrap(), 0);
        let later = epoch_ms() + 1_000;
        assert_eq!(index.announce_stable_studies(later, 100).unwrap(), 2);
        assert_eq!(
            index.announce_stable_studies(later, 100).unwrap(),
            0,
            "once"
        );
        let feed = index.changes_after(3, 100).unwrap();
        assert_eq!(feed.len(), 2);
        let stable = feed
            .iter()
            .find(|c| c.study_instance_uid.as_deref() == Some("2.1"))
            .unwrap();
        assert_eq!(stable.action, "study-stable");
        let detail: serde_json::Value =
            serde_json::from_str(stable.detail.as_deref().unwrap()).unwrap();
        assert_eq!(detail["numberOfStudyRelatedInstances"], 2);
        assert_eq!(detail["numberOfStudyRelatedSeries"], 2);
        // More instances re-open the study; a deleted one is never announced.
        index
            .store_instances(vec![instance("2.1", "2.1.2", "2.1.2.2", "a")], false)
            .unwrap();
        index
            .store_instances(vec![instance("2.3", "2.3.1", "2.3.1.1", "a")], false)
            .unwrap();
        index
            .delete(
                &Scope::Study {
                    study: "2.3".into(),
                },
                &|_| Ok(()),
            )
            .unwrap();
        let later = epoch_ms() + 1_000;
        assert_eq!(index.announce_stable_studies(later, 100).unwrap(), 1);
        let last = index
            .changes_after(index.latest_change().unwrap() - 1, 1)
            .unwrap();
        assert_eq!(last[0].action, "study-stable");
        assert_eq!(last[0].study_instance_uid.as_deref(), Some("2.1"));
        assert_eq!(index.settling_studies().unwrap(), 0);
        // Announcements off: the marks are dropped without a word.
        index
            .store_instances(vec![instance("2.4", "2.4.1", "2.4.1.1", "a")], false)
            .unwrap();
        let latest = index.latest_change().unwrap();
        assert_eq!(index.forget_settling_before(epoch_ms() + 1).unwrap(), 1);
        assert_eq!(
            index
                .announce_stable_studies(epoch_ms() + 1_000, 100)
                .unwrap(),
            0
        );
        assert_eq!(index.latest_change().unwrap(), latest);
    }
}

#[test]
fn a_sink_lease_is_one_process_at_a_time_and_its_cursor_moves_only_forward() {
    for (index, _db) in test_indexes() {
        index
            .store_instances(
                vec![
                    instance("3.1", "3.1.1", "3.1.1.1", "a"),
                    instance("3.1", "3.1.1", "3.1.1.2", "a"),
                    instance("3.1", "3.1.1", "3.1.1.3", "a"),
                ],
                false,
            )
            .unwrap();
        let now = epoch_ms();
        assert_eq!(
            index
                .take_sink_lease("nats", "a", now, now + 10_000, SinkStart::Beginning)
                .unwrap(),
            Some(0)
        );
        assert_eq!(
            index
                .take_sink_lease("nats", "b", now, now + 10_000, SinkStart::Beginning)
                .unwrap(),
            None,
            "held by a"
        );
        assert!(index.advance_sink("nats", "a", 0, 2).unwrap());
        assert!(
            !index.advance_sink("nats", "a", 0, 3).unwrap(),
            "stale from"
        );
        assert!(!index.advance_sink("nats", "b", 2, 3).unwrap(), "not b's");
        // The lease ran out: b takes over where a stopped.
        assert_eq!(
            index
                .take_sink_lease(
                    "nats",
                    "b",
                    now + 20_000,
                    now + 30_000,
                    SinkStart::Beginning
                )
                .unwrap(),
            Some(2)
        );
        assert!(index.dead_letter("nats", "b", 3, 8, "HTTP 500").unwrap());
        assert!(!index.dead_letter("nats", "b", 3, 8, "again").unwrap());
        let dead = index.dead_letters(10).unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!((dead[0].seq, dead[0].attempts), (3, 8));
        let sinks = index.sinks().unwrap();
        assert_eq!(sinks[0].delivered_seq, 3);
        assert_eq!(sinks[0].lease_owner.as_deref(), Some("b"));
        // A sink first seen now starts after the latest change.
        assert_eq!(
            index
                .take_sink_lease("hook", "a", now, now + 10_000, SinkStart::Latest)
                .unwrap(),
            Some(3)
        );
        assert!(!index.job_done("precompute-7").unwrap());
        assert!(index
            .record_job_done("precompute-7", "precompute", 2)
            .unwrap());
        assert!(!index
            .record_job_done("precompute-7", "precompute", 3)
            .unwrap());
        assert!(index.job_done("precompute-7").unwrap());
    }
}

/// Several writers at once (threads on one pool here; processes in
/// tests/events.rs): the numbers are 1..N with none missing or repeated.
#[test]
fn concurrent_writers_leave_no_gap() {
    for (index, _db) in test_indexes() {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let index = index.clone();
                std::thread::spawn(move || {
                    for i in 0..10 {
                        index
                            .store_instances(
                                vec![
                                    instance(
                                        &format!("4.{t}"),
                                        &format!("4.{t}.1"),
                                        &format!("4.{t}.1.{i}"),
                                        "a",
                                    ),
                                    instance(
                                        &format!("4.{t}"),
                                        &format!("4.{t}.1"),
                                        &format!("4.{t}.1.{i}.9"),
                                        "a",
                                    ),
                                ],
                                false,
                            )
                            .unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let feed = index.changes_after(0, 1000).unwrap();
        let seqs: Vec<i64> = feed.iter().map(|c| c.seq).collect();
        assert_eq!(seqs, (1..=80).collect::<Vec<_>>());
    }
}
