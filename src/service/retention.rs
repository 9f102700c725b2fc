//! Retention and legal holds (issue 15): when a study may be deleted.
//!
//! A study's keep-until day is computed, whenever a deletion is weighed, from
//! the tenant's rules (`[lifecycle.retention]`) and the study's facts in the
//! index: so new rules apply to every study, stored before them or after.
//! Deletion is refused (409) before that day unless the study was released by
//! an audited override, and always while a legal hold covers it.

use chrono::{Months, NaiveDate};

use super::{ServiceError, Services};
use crate::config::{LifecycleConfig, RetentionAnchor, RetentionConfig, RetentionRule};
use crate::index::protection::StudyFacts;

/// The name of the period that applies when no rule sets a longer one.
pub const DEFAULT_RULE: &str = "default";

/// Until when a study is kept, and which rule says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepUntil {
    pub day: NaiveDate,
    pub rule: String,
}

/// One tenant's retention as of one day: what deletions are weighed against.
#[derive(Debug, Clone)]
pub struct RetentionPolicy {
    retention: RetentionConfig,
    today: NaiveDate,
}

/// Today as the lifecycle clock says (`lifecycle.now`, else the system clock).
pub fn today(lifecycle: &LifecycleConfig) -> NaiveDate {
    lifecycle
        .fixed_today()
        .and_then(|day| dicom_day(&day))
        .unwrap_or_else(|| chrono::Utc::now().date_naive())
}

/// A DICOM DA value (`YYYYMMDD`, maybe padded) as a day.
fn dicom_day(value: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(value.trim(), "%Y%m%d").ok()
}

/// The day of an RFC 3339 time as stored by the index.
fn stored_day(value: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(value.get(..10)?, "%Y-%m-%d").ok()
}

fn plus_years(day: NaiveDate, years: u32) -> NaiveDate {
    // 29 February plus a year is 28 February (chrono clamps to the month's end).
    day.checked_add_months(Months::new(years.saturating_mul(12)))
        .unwrap_or(NaiveDate::MAX)
}

fn whole_years_between(from: NaiveDate, to: NaiveDate) -> Option<u32> {
    to.years_since(from)
}

impl RetentionPolicy {
    pub fn new(retention: RetentionConfig, today: NaiveDate) -> Self {
        Self { retention, today }
    }

    /// `tenant`'s retention as of the lifecycle clock's today.
    pub fn of(lifecycle: &LifecycleConfig, tenant: &str) -> Self {
        Self::new(lifecycle.retention_of(tenant).clone(), today(lifecycle))
    }

    pub fn today(&self) -> NaiveDate {
        self.today
    }

    /// Whether the tenant keeps anything at all for a time.
    pub fn is_active(&self) -> bool {
        self.retention.default_years > 0 || !self.retention.rules.is_empty()
    }

    /// The day a study may be deleted from, and the rule that sets it; None
    /// when no period applies to it.
    pub fn keep_until(&self, study: &StudyFacts) -> Option<KeepUntil> {
        let received = stored_day(&study.received_at);
        let study_date = study.study_date.as_deref().and_then(dicom_day);
        let anchor = match self.retention.anchor {
            RetentionAnchor::Received => received.or(study_date),
            RetentionAnchor::StudyDate => study_date.or(received),
            RetentionAnchor::Later => received.max(study_date),
        }?;
        let birth = study.patient_birth_date.as_deref().and_then(dicom_day);
        let default = (self.retention.default_years > 0).then(|| KeepUntil {
            day: plus_years(anchor, self.retention.default_years),
            rule: DEFAULT_RULE.to_string(),
        });
        self.retention
            .rules
            .iter()
            .filter(|rule| matches(rule, study, birth, study_date.or(received)))
            .map(|rule| {
                let mut day = plus_years(anchor, rule.years);
                if let (Some(age), Some(birth)) = (rule.until_patient_age_years, birth) {
                    day = day.max(plus_years(birth, age));
                }
                KeepUntil {
                    day,
                    rule: rule.name.clone(),
                }
            })
            .chain(default)
            // The longest period of all that apply; the first rule on a tie.
            .fold(None, |longest: Option<KeepUntil>, next| match longest {
                Some(kept) if kept.day >= next.day => Some(kept),
                _ => Some(next),
            })
    }

    /// Why `study` may not be deleted today, if it may not.
    pub fn refusal(&self, study: &StudyFacts) -> Option<String> {
        if let Some(hold) = study.holds.first() {
            return Some(format!(
                "study {} is under legal hold #{hold}; it cannot be deleted until the hold is lifted",
                study.study_instance_uid
            ));
        }
        if study.released {
            return None;
        }
        let kept = self.keep_until(study)?;
        (self.today < kept.day).then(|| {
            format!(
                "study {} is under retention until {} (rule {:?}); it can be deleted from that day, \
                 or earlier once released by `kastell lifecycle release` with a stated reason",
                study.study_instance_uid,
                kept.day.format("%Y-%m-%d"),
                kept.rule
            )
        })
    }

    /// The study's keep-until day when its retention applied and has ended
    /// and no legal hold covers it.
    pub fn expired(&self, study: &StudyFacts) -> Option<KeepUntil> {
        if !study.holds.is_empty() {
            return None;
        }
        self.keep_until(study).filter(|kept| kept.day <= self.today)
    }

    /// The deletion guard the index calls inside its transaction: refuses when
    /// any study touched is protected, naming the first and counting the rest.
    pub fn check(&self, studies: &[StudyFacts]) -> Result<(), String> {
        let mut refusals = studies.iter().filter_map(|study| self.refusal(study));
        match refusals.next() {
            None => Ok(()),
            Some(first) => {
                let others = refusals.count();
                Err(if others == 0 {
                    first
                } else {
                    format!("{first} (and {others} more studies are protected)")
                })
            }
        }
    }
}

/// Calls `visit` with the facts of every study of `services`' tenant, a page
/// at a time.
pub async fn each_study(
    services: &Services,
    mut visit: impl FnMut(StudyFacts),
) -> Result<(), ServiceError> {
    const PAGE: i64 = 1000;
    let mut after: Option<String> = None;
    loop {
        let from = after.clone();
        let page = services
            .with_index(move |index| index.study_facts_page(from.as_deref(), PAGE))
            .await?;
        let done = (page.len() as i64) < PAGE;
        after = page.last().map(|facts| facts.study_instance_uid.clone());
        page.into_iter().for_each(&mut visit);
        if done {
            return Ok(());
        }
    }
}

/// The studies whose retention period applied and has ended, with no legal
/// hold: what may be erased (a release alone does not make a study expire).
pub async fn expired_studies(
    services: &Services,
    policy: &RetentionPolicy,
) -> Result<Vec<(String, KeepUntil)>, ServiceError> {
    let mut expired = Vec::new();
    each_study(services, |facts| {
        if let Some(kept) = policy.expired(&facts) {
            expired.push((facts.study_instance_uid, kept));
        }
    })
    .await?;
    Ok(expired)
}

/// The audit note of an erasure after retention.
pub fn erasure_note(kept: &KeepUntil, outcome: &Result<usize, ServiceError>) -> String {
    let ended = format!(
        "retention ended on {} (rule {:?})",
        kept.day.format("%Y-%m-%d"),
        kept.rule
    );
    match outcome {
        Ok(count) => format!("erased after its {ended}: {count} instances"),
        Err(error) => format!("erasure after its {ended} failed: {error}"),
    }
}

fn matches(
    rule: &RetentionRule,
    study: &StudyFacts,
    birth: Option<NaiveDate>,
    study_day: Option<NaiveDate>,
) -> bool {
    let listed = |wanted: &[String], present: &[String]| {
        wanted.is_empty()
            || wanted
                .iter()
                .any(|w| present.iter().any(|p| p.eq_ignore_ascii_case(w.trim())))
    };
    let young_enough = match rule.patient_age_below_years {
        None => true,
        Some(limit) => match (birth, study_day) {
            (Some(birth), Some(day)) => whole_years_between(birth, day).is_some_and(|a| a < limit),
            _ => false,
        },
    };
    listed(&rule.modalities, &study.modalities)
        && listed(&rule.sop_classes, &study.sop_classes)
        && young_enough
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    fn study() -> StudyFacts {
        StudyFacts {
            study_instance_uid: "1.2.3".into(),
            received_at: "2024-03-01T10:00:00.000000Z".into(),
            study_date: Some("20240115".into()),
            patient_birth_date: Some("20100620".into()),
            modalities: vec!["CT".into(), "SR".into()],
            sop_classes: vec!["1.2.840.10008.5.1.4.1.1.2".into()],
            holds: vec![],
            released: false,
        }
    }

    fn rule(name: &str, years: u32) -> RetentionRule {
        RetentionRule {
            name: name.into(),
            years,
            ..Default::default()
        }
    }

    fn policy(retention: RetentionConfig, today: &str) -> RetentionPolicy {
        RetentionPolicy::new(retention, day(today))
    }

    #[test]
    fn no_rules_keep_nothing() {
        let policy = policy(RetentionConfig::default(), "2024-03-02");
        assert!(!policy.is_active());
        assert_eq!(policy.keep_until(&study()), None);
        assert_eq!(policy.check(&[study()]), Ok(()));
    }

    #[test]
    fn the_default_period_runs_from_the_anchor() {
        let mut retention = RetentionConfig {
            default_years: 10,
            ..Default::default()
        };
        let kept = |retention: &RetentionConfig| {
            policy(retention.clone(), "2024-03-02")
                .keep_until(&study())
                .unwrap()
                .day
        };
        assert_eq!(kept(&retention), day("2034-03-01"));
        retention.anchor = RetentionAnchor::StudyDate;
        assert_eq!(kept(&retention), day("2034-01-15"));
        retention.anchor = RetentionAnchor::Later;
        assert_eq!(kept(&retention), day("2034-03-01"));
        // Deletable from the keep-until day on, not before.
        let retention = RetentionConfig {
            default_years: 10,
            ..Default::default()
        };
        assert!(policy(retention.clone(), "2034-02-28")
            .check(&[study()])
            .unwrap_err()
            .contains("until 2034-03-01 (rule \"default\")"));
        assert_eq!(policy(retention, "2034-03-01").check(&[study()]), Ok(()));
    }

    #[test]
    fn the_longest_matching_rule_wins() {
        let mut radiotherapy = rule("radiotherapy", 30);
        radiotherapy.modalities = vec!["RTDOSE".into(), "ct".into()];
        let mut mammography = rule("mammography", 40);
        mammography.modalities = vec!["MG".into()];
        let retention = RetentionConfig {
            default_years: 10,
            rules: vec![radiotherapy, mammography],
            ..Default::default()
        };
        let kept = policy(retention, "2024-03-02")
            .keep_until(&study())
            .unwrap();
        assert_eq!(kept.rule, "radiotherapy");
        assert_eq!(kept.day, day("2054-03-01"));
    }

    #[test]
    fn minors_are_kept_until_an_age() {
        let mut minors = rule("minors", 10);
        minors.patient_age_below_years = Some(18);
        minors.until_patient_age_years = Some(28);
        let retention = RetentionConfig {
            rules: vec![minors],
            ..Default::default()
        };
        let policy = policy(retention, "2024-03-02");
        // 13 years old at the study: kept until 28 (2038-06-20), later than 10 years.
        assert_eq!(policy.keep_until(&study()).unwrap().day, day("2038-06-20"));
        let mut adult = study();
        adult.patient_birth_date = Some("19800101".into());
        assert_eq!(policy.keep_until(&adult), None);
        let mut unknown = study();
        unknown.patient_birth_date = None;
        assert_eq!(policy.keep_until(&unknown), None);
    }

    #[test]
    fn sop_class_rules_match_listed_classes_only() {
        let mut dose = rule("dose reports", 30);
        dose.sop_classes = vec!["1.2.840.10008.5.1.4.1.1.88.67".into()];
        let retention = RetentionConfig {
            rules: vec![dose],
            ..Default::default()
        };
        let policy = policy(retention, "2024-03-02");
        assert_eq!(policy.keep_until(&study()), None);
        let mut with_dose = study();
        with_dose
            .sop_classes
            .push("1.2.840.10008.5.1.4.1.1.88.67".into());
        assert_eq!(policy.keep_until(&with_dose).unwrap().rule, "dose reports");
    }

    #[test]
    fn a_release_lifts_retention_but_not_a_hold() {
        let retention = RetentionConfig {
            default_years: 10,
            ..Default::default()
        };
        let policy = policy(retention, "2024-03-02");
        let mut released = study();
        released.released = true;
        assert_eq!(policy.check(&[released.clone()]), Ok(()));
        released.holds = vec![7];
        let refusal = policy.check(&[released]).unwrap_err();
        assert!(refusal.contains("legal hold #7"), "{refusal}");
        let mut held = study();
        held.holds = vec![3];
        let no_retention =
            super::RetentionPolicy::new(RetentionConfig::default(), day("2024-03-02"));
        assert!(no_retention.check(&[held]).is_err());
    }

    #[test]
    fn a_refusal_counts_the_other_protected_studies() {
        let retention = RetentionConfig {
            default_years: 1,
            ..Default::default()
        };
        let policy = policy(retention, "2024-03-02");
        let refusal = policy.check(&[study(), study(), study()]).unwrap_err();
        assert!(
            refusal.ends_with("(and 2 more studies are protected)"),
            "{refusal}"
        );
    }
}
