//! Lifecycle moves (issue 15): instances go to other stores and tiers as they
//! age, by the tenant's rules (`[[lifecycle.moves]]`). A pass weighs every
//! instance, and moves each that a rule sends elsewhere: claim it in the index's
//! journal, copy the object byte for byte, read the copy back whole (it must
//! decrypt), switch the instance's blob key in the index, delete the old
//! object. A kill at any point leaves each instance readable from exactly one
//! object that the index names; the journal row it leaves lets the next pass
//! (after the claim's lease) undo the copy or finish the deletion.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::NaiveDate;

use super::{ServiceError, Services};
use crate::config::{MoveRule, PassConfig};
use crate::index::moves::{BlobMove, MoveCandidate};
use crate::store::{BlobKey, RestoreState, PRIMARY_STORE};
use crate::telemetry::metrics;

/// Instances read from the index at a time.
const PAGE: i64 = 1000;

/// The rule that sends `candidate` elsewhere as of `today`, and where.
pub fn destination<'r>(
    rules: &'r [MoveRule],
    candidate: &MoveCandidate,
    today: NaiveDate,
) -> Option<&'r MoveRule> {
    let received = candidate
        .received_at
        .get(..10)
        .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
    let study_day = candidate
        .study_date
        .as_deref()
        .and_then(|d| NaiveDate::parse_from_str(d.trim(), "%Y%m%d").ok());
    let retrieved = candidate
        .last_retrieved_on
        .as_deref()
        .and_then(|d| NaiveDate::parse_from_str(d.trim(), "%Y%m%d").ok())
        .or(received);
    let days_since = |day: Option<NaiveDate>| day.map(|d| (today - d).num_days());
    let listed = |wanted: &[String], value: Option<&str>| {
        wanted.is_empty()
            || value.is_some_and(|v| wanted.iter().any(|w| w.trim().eq_ignore_ascii_case(v)))
    };
    let rule = rules.iter().find(|rule| {
        days_since(received).is_some_and(|d| d >= i64::from(rule.min_age_days))
            && (rule.min_study_age_days == 0
                || days_since(study_day).is_some_and(|d| d >= i64::from(rule.min_study_age_days)))
            && listed(&rule.modalities, candidate.modality.as_deref())
            && listed(&rule.sop_classes, Some(&candidate.sop_class_uid))
            && u64::try_from(candidate.blob_size).unwrap_or(0) >= rule.min_size_bytes
            && (rule.min_days_since_retrieval == 0
                || days_since(retrieved)
                    .is_some_and(|d| d >= i64::from(rule.min_days_since_retrieval)))
    })?;
    let here = BlobKey::parse(&candidate.blob_key)
        .map(|key| key.store_name().to_string())
        .ok()?;
    (rule.to != here).then_some(rule)
}

/// One line of a plan: objects a rule would move from one store to another.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PlanLine {
    pub rule: String,
    pub from: String,
    pub to: String,
    pub objects: u64,
    pub bytes: u64,
}

/// What the next pass would move (a dry run), and what it would change in the
/// monthly storage bill at the configured prices.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Plan {
    pub lines: Vec<PlanLine>,
    /// Negative: a saving. 0 when no prices are configured.
    pub monthly_cost_change: f64,
    /// Objects a rule would send to an offline tier that a legal hold keeps
    /// where they are.
    pub held_back: u64,
}

/// Remembers, per study, whether a legal hold covers it (one lookup per study
/// and pass): a held study does not go to an offline tier, where it could not
/// be produced at once.
#[derive(Default)]
struct Holds(std::collections::HashMap<String, bool>);

impl Holds {
    async fn covers(&mut self, services: &Services, study: &str) -> Result<bool, ServiceError> {
        if let Some(held) = self.0.get(study) {
            return Ok(*held);
        }
        let uid = study.to_string();
        let held = services
            .with_index(move |index| index.study_facts(&uid))
            .await?
            .is_some_and(|facts| !facts.holds.is_empty());
        self.0.insert(study.to_string(), held);
        Ok(held)
    }
}

/// The plan of `services`' tenant under `rules` as of `today`; `prices` per GB-month by store.
pub async fn plan(
    services: &Services,
    rules: &[MoveRule],
    today: NaiveDate,
    prices: &BTreeMap<String, f64>,
) -> Result<Plan, ServiceError> {
    let mut lines: BTreeMap<(String, String, String), PlanLine> = BTreeMap::new();
    let mut holds = Holds::default();
    let mut held_back = 0;
    let mut after = 0;
    while let Some(page) = next_page(services, &mut after).await? {
        for candidate in &page {
            let Some(rule) = destination(rules, candidate, today) else {
                continue;
            };
            if services.store.is_offline_store(&rule.to)
                && holds
                    .covers(services, &candidate.study_instance_uid)
                    .await?
            {
                held_back += 1;
                continue;
            }
            let from = BlobKey::parse(&candidate.blob_key)
                .map(|k| k.store_name().to_string())
                .unwrap_or_else(|_| PRIMARY_STORE.to_string());
            let line = lines
                .entry((rule.name.clone(), from.clone(), rule.to.clone()))
                .or_insert_with(|| PlanLine {
                    rule: rule.name.clone(),
                    from,
                    to: rule.to.clone(),
                    ..Default::default()
                });
            line.objects += 1;
            line.bytes += u64::try_from(candidate.blob_size).unwrap_or(0);
        }
    }
    let price = |store: &str| prices.get(store).copied().unwrap_or(0.0);
    let monthly_cost_change = lines
        .values()
        .map(|l| (price(&l.to) - price(&l.from)) * l.bytes as f64 / 1e9)
        .sum();
    Ok(Plan {
        lines: lines.into_values().collect(),
        monthly_cost_change,
        held_back,
    })
}

/// The next page of instances after `after` (moved on), None past the last.
async fn next_page(
    services: &Services,
    after: &mut i64,
) -> Result<Option<Vec<MoveCandidate>>, ServiceError> {
    if *after < 0 {
        return Ok(None);
    }
    let from = *after;
    let page = services
        .with_index(move |index| index.move_candidates(from, PAGE))
        .await?;
    *after = match page.last() {
        Some(last) if page.len() as i64 == PAGE => last.instance_pk,
        _ => -1,
    };
    Ok((!page.is_empty()).then_some(page))
}

/// What one pass did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PassReport {
    pub moved: u64,
    pub bytes: u64,
    /// Moves another process had claimed.
    pub claimed_elsewhere: u64,
    /// Moves left by a process that died, undone or finished.
    pub recovered: u64,
    pub failed: Vec<(String, String)>,
    /// The pass stopped at `lifecycle.pass.max_moves`.
    pub reached_limit: bool,
    /// Moves to an offline tier a legal hold kept back.
    pub held_back: u64,
    /// Moves out of an offline tier waiting for their restore (asked for).
    pub restoring: u64,
    /// Of the moves, those made in place (a storage class change by S3).
    pub in_place: u64,
}

/// One line for operators and the audit trail: what the pass did.
impl std::fmt::Display for PassReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} objects ({} bytes) moved, {} failed, {} claimed by another process, {} recovered",
            self.moved,
            self.bytes,
            self.failed.len(),
            self.claimed_elsewhere,
            self.recovered
        )?;
        if self.in_place > 0 {
            write!(f, ", {} of the moves in place", self.in_place)?;
        }
        if self.held_back > 0 {
            write!(f, ", {} held back by legal holds", self.held_back)?;
        }
        if self.restoring > 0 {
            write!(f, ", {} waiting for their restore", self.restoring)?;
        }
        if self.reached_limit {
            f.write_str("; stopped at lifecycle.pass.max_moves")?;
        }
        Ok(())
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Runs one pass for `services`' tenant: first what dead processes left, then
/// the moves `rules` ask for as of `today`, rate-limited and bounded by `pass`.
/// `owner` names this process in its claims.
pub async fn run_pass(
    services: &Services,
    rules: &[MoveRule],
    today: NaiveDate,
    pass: &PassConfig,
    owner: &str,
) -> Result<PassReport, ServiceError> {
    let lease_ms = i64::try_from(pass.lease_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let mut report = PassReport::default();
    let who = owner.to_string();
    let now = now_ms();
    let stale = services
        .with_index(move |index| index.take_over_stale_moves(&who, now, now + lease_ms))
        .await?;
    let tenant = services.store.tenant().to_string();
    for left in stale {
        recover(services, &left).await?;
        report.recovered += 1;
        let store = BlobKey::parse(&left.to_key).map(|k| k.store_name().to_string());
        metrics::lifecycle_moved(&tenant, &store.unwrap_or_default(), "recovered", 1);
    }
    // At most `max_moves` objects are listed, so a pass's memory is bounded by
    // the limit, not by the size of the archive.
    let limit = usize::try_from(pass.max_moves).unwrap_or(usize::MAX);
    let mut wanted = Vec::new();
    let mut holds = Holds::default();
    let mut after = 0;
    'pages: while let Some(page) = next_page(services, &mut after).await? {
        for candidate in page {
            let Some(rule) = destination(rules, &candidate, today) else {
                continue;
            };
            let offline = services.store.is_offline_store(&rule.to);
            if offline
                && holds
                    .covers(services, &candidate.study_instance_uid)
                    .await?
            {
                report.held_back += 1;
                continue;
            }
            if wanted.len() == limit {
                report.reached_limit = true;
                break 'pages;
            }
            wanted.push(Wanted {
                from: candidate.blob_key,
                to_store: rule.to.clone(),
                study: candidate.study_instance_uid,
                offline,
            });
        }
    }
    // What a viewer lists and previews of a study (series metadata, thumbnails)
    // is built in the hot store before the study's instances go offline.
    let mut prepared = std::collections::HashSet::new();
    for want in wanted.iter().filter(|w| w.offline) {
        if prepared.insert(want.study.clone()) {
            if let Err(error) = super::events::jobs::precompute(services, &want.study).await {
                tracing::warn!(%error, "the metadata and thumbnails of a study going offline could not be built ahead");
            }
        }
    }
    let pause =
        (pass.moves_per_second > 0.0).then(|| Duration::from_secs_f64(1.0 / pass.moves_per_second));
    let mut switched = Vec::new();
    for Wanted { from, to_store, .. } in wanted {
        let started = tokio::time::Instant::now();
        match move_one(services, &from, &to_store, owner, lease_ms).await {
            Ok(Moved::Switched(to, bytes)) => {
                metrics::lifecycle_moved(&tenant, &to_store, "moved", 1);
                report.moved += 1;
                report.bytes += bytes;
                switched.push((from, to));
            }
            Ok(Moved::Elsewhere) => report.claimed_elsewhere += 1,
            Ok(Moved::Restoring) => report.restoring += 1,
            Ok(Moved::InPlace(bytes)) => {
                metrics::lifecycle_moved(&tenant, &to_store, "moved", 1);
                report.moved += 1;
                report.in_place += 1;
                report.bytes += bytes;
            }
            Err(error) => {
                metrics::lifecycle_moved(&tenant, &to_store, "failed", 1);
                tracing::warn!(blob = %from, %error, "lifecycle move failed");
                report.failed.push((from, error.to_string()));
            }
        }
        if let Some(pause) = pause {
            tokio::time::sleep_until(started + pause).await;
        }
    }
    // The old objects go last: a read that found the old key just before the
    // switch has had the rest of the pass to finish.
    for (from, _) in switched {
        finish_switched(services, &from).await?;
    }
    Ok(report)
}

/// An object a pass moves.
struct Wanted {
    from: String,
    to_store: String,
    study: String,
    /// Its destination is an offline tier.
    offline: bool,
}

/// What became of one move.
enum Moved {
    /// The index points at the copy (its key) of this many bytes.
    Switched(String, u64),
    /// Another process holds its move, or it is gone.
    Elsewhere,
    /// It is in an offline tier: its restore was asked for, a later pass moves it.
    Restoring,
    /// Moved between tiers of one bucket prefix, in place (this many bytes).
    InPlace(u64),
}

/// Moves one object.
async fn move_one(
    services: &Services,
    from: &str,
    to_store: &str,
    owner: &str,
    lease_ms: i64,
) -> Result<Moved, ServiceError> {
    let from_key = BlobKey::parse(from)?;
    let to_key = from_key.in_store(Some(to_store));
    let (f, t, o) = (from.to_string(), to_key.to_string(), owner.to_string());
    let lease_until = now_ms() + lease_ms;
    let claimed = services
        .with_index(move |index| index.claim_move(&f, &t, &o, lease_until))
        .await?;
    if !claimed {
        return Ok(Moved::Elsewhere);
    }
    if services.store.same_object(&from_key, &to_key) {
        return move_in_place(services, &from_key, &to_key, owner).await;
    }
    let copied = async {
        if services.store.is_offline(&to_key) {
            // A copy in an offline tier cannot be read back: the source is
            // read whole (it must decrypt) and the copy must have its size.
            services.store.check_decrypts(&from_key).await?;
            let bytes = services.store.copy_object(&from_key, &to_key).await?;
            let stored = services.store.stored_size(&to_key).await?;
            if stored != bytes {
                return Err(crate::store::StoreError::Integrity(
                    "the copy in the offline tier does not have the size of its source",
                ));
            }
            Ok(bytes)
        } else {
            let bytes = services.store.copy_object(&from_key, &to_key).await?;
            services.store.check_decrypts(&to_key).await?;
            Ok(bytes)
        }
    }
    .await;
    let bytes = match copied {
        Ok(bytes) => bytes,
        Err(crate::store::StoreError::Archived) => {
            undo(services, from, &to_key).await;
            return ask_restore(services, from).await;
        }
        Err(error) => {
            undo(services, from, &to_key).await;
            return Err(error.into());
        }
    };
    let (f, t, o) = (from.to_string(), to_key.to_string(), owner.to_string());
    let switched = services
        .with_index(move |index| index.switch_move(&f, &t, &o))
        .await?;
    if !switched {
        // Deleted or replaced meanwhile: the copy is not needed.
        undo(services, from, &to_key).await;
        return Ok(Moved::Elsewhere);
    }
    Ok(Moved::Switched(to_key.to_string(), bytes))
}

/// Leaving an offline tier starts with a restore: journals the one of `from`
/// (the poll sends it); a later pass moves the object.
async fn ask_restore(services: &Services, from: &str) -> Result<Moved, ServiceError> {
    let key = from.to_string();
    let study = services
        .with_index(move |index| index.study_of_blob(&key))
        .await?;
    if let Some(study) = study {
        let objects = vec![(from.to_string(), study)];
        let now = super::restore::now_ms(services);
        services
            .with_index(move |index| index.journal_restores(&objects, now))
            .await?;
    }
    Ok(Moved::Restoring)
}

/// A claimed move between tiers of one bucket prefix: the index switches to
/// the new store first, then S3 changes the object's class in place (a kill
/// between the two leaves the switch journaled: the next pass changes the
/// class; meanwhile the object reads as before, or through a restore request
/// that finds it readable). Nothing is copied and nothing deleted.
async fn move_in_place(
    services: &Services,
    from: &BlobKey,
    to: &BlobKey,
    owner: &str,
) -> Result<Moved, ServiceError> {
    if services.store.is_offline(from) {
        // Out of an archive class in place: only a restored object can be
        // copied (before the switch, so that nothing points at a class that
        // cannot be read).
        let restored = matches!(
            services.store.restore_state(from).await?,
            RestoreState::Restored { .. } | RestoreState::Online
        );
        if !restored {
            undo(services, from.as_str(), to).await;
            return ask_restore(services, from.as_str()).await;
        }
    }
    if services.store.is_offline(to) && !services.store.is_offline(from) {
        // Its last chance to be read whole before it goes offline.
        if let Err(error) = services.store.check_decrypts(from).await {
            undo(services, from.as_str(), to).await;
            return Err(error.into());
        }
    }
    let (f, t, o) = (from.to_string(), to.to_string(), owner.to_string());
    let switched = services
        .with_index(move |index| index.switch_move(&f, &t, &o))
        .await?;
    if !switched {
        undo(services, from.as_str(), to).await;
        return Ok(Moved::Elsewhere);
    }
    // On failure the switched row stays for the next pass to finish.
    let bytes = services.store.move_in_place(from, to).await?;
    let f = from.to_string();
    services
        .with_index(move |index| index.finish_move(&f))
        .await?;
    Ok(Moved::InPlace(bytes))
}

/// Removes a copy the index does not point at, and the journal row.
async fn undo(services: &Services, from: &str, copy: &BlobKey) {
    // A move in place made no copy: the object is the instance's.
    let in_place = BlobKey::parse(from).is_ok_and(|f| services.store.same_object(&f, copy));
    if in_place {
        let f = from.to_string();
        let _ = services
            .with_index(move |index| index.finish_move(&f))
            .await;
        return;
    }
    if let Err(error) = services.store.delete(copy).await {
        tracing::warn!(blob = %copy, %error, "could not remove the copy of a move that did not complete; the next pass will");
        return;
    }
    let f = from.to_string();
    if let Err(error) = services
        .with_index(move |index| index.finish_move(&f))
        .await
    {
        tracing::warn!(%error, "could not end a lifecycle move's journal row; the next pass will");
    }
}

/// Deletes the old object of a switched move and ends its journal row.
async fn finish_switched(services: &Services, from: &str) -> Result<(), ServiceError> {
    services.store.delete(&BlobKey::parse(from)?).await?;
    let f = from.to_string();
    services
        .with_index(move |index| index.finish_move(&f))
        .await
}

/// Finishes or undoes a move a dead process left, by what the index says.
async fn recover(services: &Services, left: &BlobMove) -> Result<(), ServiceError> {
    let (from, to) = (
        BlobKey::parse(&left.from_key)?,
        BlobKey::parse(&left.to_key)?,
    );
    if services.store.same_object(&from, &to) {
        // In place: switched, the class change may not have happened (it is
        // done again); not switched, nothing happened to the object.
        if left.state == "switched" {
            services.store.move_in_place(&from, &to).await?;
        }
        let f = left.from_key.clone();
        return services
            .with_index(move |index| index.finish_move(&f))
            .await;
    }
    if left.state == "switched" {
        finish_switched(services, &left.from_key).await
    } else {
        let copy = BlobKey::parse(&left.to_key)?;
        services.store.delete(&copy).await?;
        let f = left.from_key.clone();
        services
            .with_index(move |index| index.finish_move(&f))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(key: &str, received: &str, modality: &str) -> MoveCandidate {
        MoveCandidate {
            instance_pk: 1,
            blob_key: key.into(),
            blob_size: 1000,
            received_at: format!("{received}T10:00:00Z"),
            study_date: Some("20200101".into()),
            modality: Some(modality.into()),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            study_instance_uid: "1.2.3".into(),
            last_retrieved_on: None,
        }
    }

    fn rule(name: &str, days: u32, to: &str) -> MoveRule {
        MoveRule {
            name: name.into(),
            min_age_days: days,
            to: to.into(),
            ..Default::default()
        }
    }

    const KEY: &str = "instances/0123456789abcdef0123456789abcdef";

    #[test]
    fn the_first_matching_rule_decides() {
        let today = NaiveDate::from_ymd_opt(2024, 6, 1).unwrap();
        let rules = vec![rule("archive", 365, "glacier"), rule("cool", 30, "cold")];
        let young = candidate(KEY, "2024-05-20", "CT");
        assert_eq!(destination(&rules, &young, today), None);
        let month = candidate(KEY, "2024-04-01", "CT");
        assert_eq!(destination(&rules, &month, today).unwrap().to, "cold");
        let old = candidate(KEY, "2022-01-01", "CT");
        assert_eq!(destination(&rules, &old, today).unwrap().to, "glacier");
        // Already there: nothing to do.
        let there = candidate(
            "glacier/instances/0123456789abcdef0123456789abcdef",
            "2022-01-01",
            "CT",
        );
        assert_eq!(destination(&rules, &there, today), None);
    }

    #[test]
    fn conditions_narrow_a_rule() {
        let today = NaiveDate::from_ymd_opt(2024, 6, 1).unwrap();
        let mut mr_only = rule("mr", 0, "cold");
        mr_only.modalities = vec!["MR".into()];
        mr_only.min_size_bytes = 500;
        assert_eq!(
            destination(
                &[mr_only.clone()],
                &candidate(KEY, "2024-05-01", "CT"),
                today
            ),
            None
        );
        assert!(destination(
            &[mr_only.clone()],
            &candidate(KEY, "2024-05-01", "MR"),
            today
        )
        .is_some());
        mr_only.min_size_bytes = 5000;
        assert_eq!(
            destination(&[mr_only], &candidate(KEY, "2024-05-01", "MR"), today),
            None
        );
        let mut by_study_date = rule("old studies", 0, "cold");
        by_study_date.min_study_age_days = 10_000;
        assert_eq!(
            destination(&[by_study_date], &candidate(KEY, "2024-05-01", "MR"), today),
            None
        );
    }

    #[test]
    fn a_rule_on_the_last_retrieval_counts_from_it_or_from_the_reception() {
        let today = NaiveDate::from_ymd_opt(2024, 6, 1).unwrap();
        let mut unread = rule("unread", 0, "cold");
        unread.min_days_since_retrieval = 90;
        let rules = [unread];
        // Received a year ago, never retrieved: moves.
        let mut old = candidate(KEY, "2023-06-01", "CT");
        assert!(destination(&rules, &old, today).is_some());
        // Retrieved last month: stays.
        old.last_retrieved_on = Some("20240501".into());
        assert_eq!(destination(&rules, &old, today), None);
        // Retrieved half a year ago: moves.
        old.last_retrieved_on = Some("20231201".into());
        assert!(destination(&rules, &old, today).is_some());
        // Received last month, never retrieved: stays.
        let young = candidate(KEY, "2024-05-01", "CT");
        assert_eq!(destination(&rules, &young, today), None);
    }

    #[test]
    fn a_rule_back_to_the_primary_store_moves_from_a_named_one() {
        let today = NaiveDate::from_ymd_opt(2024, 6, 1).unwrap();
        let back = rule("back", 0, "primary");
        let named = candidate(
            "cold/instances/0123456789abcdef0123456789abcdef",
            "2024-05-01",
            "CT",
        );
        assert!(destination(std::slice::from_ref(&back), &named, today).is_some());
        assert_eq!(
            destination(&[back], &candidate(KEY, "2024-05-01", "CT"), today),
            None
        );
    }
}
