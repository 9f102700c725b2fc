//! `[lifecycle]`: how long studies must be kept (retention rules, per tenant)
//! and the clock retention decisions are taken by (issue 15).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {
    /// The retention of every tenant that has none of its own below.
    pub retention: RetentionConfig,
    /// Per tenant (by name): its own retention, instead of the one above.
    pub tenants: BTreeMap<String, TenantLifecycleConfig>,
    /// "Now" for retention and move decisions, as `YYYY-MM-DD` or an RFC 3339
    /// time: a clock that tests and "what if" dry runs can move. Empty: the
    /// system clock.
    pub now: String,
    /// Where instances go as they age, for every tenant without rules of its
    /// own: the first rule that matches an instance names its store.
    pub moves: Vec<MoveRule>,
    /// How lifecycle passes run.
    pub pass: PassConfig,
    /// How instances in offline tiers are restored.
    pub restore: RestoreConfig,
    /// Seconds between two counts of each tenant's objects and bytes per
    /// store for `/metrics` (`kastell.store.objects`, `kastell.store.bytes`;
    /// one grouped query per tenant); 0: not counted.
    pub usage_interval_secs: u64,
}

/// Restores from offline tiers (S3 Glacier Flexible Retrieval, Deep Archive).
/// A retrieval of an archived instance asks for the restore of its whole study
/// and answers 503 with `Retry-After`; the server checks the restores in
/// progress every `poll_secs` and serves the instances once they are back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RestoreConfig {
    /// Seconds between two checks of the restores in progress.
    pub poll_secs: u64,
    /// Objects of one tenant being restored at a time, at most: a restore costs
    /// money, so retrievals cannot start unbounded ones (beyond, 503 without a
    /// new restore until some finish).
    pub max_pending_objects: u64,
    /// Restore requests (or status checks) sent to the store at once.
    pub concurrency: usize,
}

impl Default for RestoreConfig {
    fn default() -> Self {
        Self {
            poll_secs: 60,
            max_pending_objects: 100_000,
            concurrency: 8,
        }
    }
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            retention: Default::default(),
            tenants: Default::default(),
            now: String::new(),
            moves: Vec::new(),
            pass: Default::default(),
            restore: Default::default(),
            usage_interval_secs: 300,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TenantLifecycleConfig {
    pub retention: RetentionConfig,
    /// The tenant's own move rules instead of `lifecycle.moves` (an empty list:
    /// nothing moves); absent: `lifecycle.moves`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moves: Option<Vec<MoveRule>>,
}

/// A move rule: instances matching every condition given go to store `to`
/// (`primary` or a name in `storage.stores`). Instances matching no rule stay
/// where they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MoveRule {
    pub name: String,
    /// Days since the instance was received, at least.
    pub min_age_days: u32,
    /// Days since the StudyDate, at least (instances without one do not match
    /// when this is above 0).
    pub min_study_age_days: u32,
    pub modalities: Vec<String>,
    pub sop_classes: Vec<String>,
    /// Stored size in bytes, at least.
    pub min_size_bytes: u64,
    /// Days since the study was last retrieved (WADO), at least; a study never
    /// retrieved counts from when the instance was received. 0: no condition.
    pub min_days_since_retrieval: u32,
    pub to: String,
}

/// How lifecycle passes run: at most `max_moves` objects per pass, at most
/// `moves_per_second` (0: no limit); the server runs one every
/// `interval_secs` (0: only `kastell lifecycle run`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PassConfig {
    pub interval_secs: u64,
    pub max_moves: u64,
    pub moves_per_second: f64,
    /// Seconds a process holds its claim on an object being moved; a claim
    /// left by a process that died is taken over this long after it expired.
    pub lease_secs: u64,
}

impl Default for PassConfig {
    fn default() -> Self {
        Self {
            interval_secs: 0,
            max_moves: 100_000,
            moves_per_second: 0.0,
            lease_secs: 300,
        }
    }
}

/// A tenant's retention: every study is kept at least `default_years` from its
/// anchor date, longer where a rule that matches it says so (the longest
/// period of all that match applies). Until then DELETE (and shredding the
/// tenant's keys) is refused with 409, unless the study was released by an
/// audited override. 0 years and no rules: no retention.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    pub default_years: u32,
    /// Where periods start: `received` (the day the study's first instance
    /// arrived), `study_date` (StudyDate; the received day when absent), or
    /// `later` (whichever of the two is later).
    pub anchor: RetentionAnchor,
    pub rules: Vec<RetentionRule>,
    /// Whether the server's scheduled lifecycle pass (`lifecycle.pass.
    /// interval_secs`) erases studies whose retention has ended and that no
    /// hold covers, each deletion audited. Off by default; `kastell lifecycle
    /// retention --expired` is the dry run of what it would erase.
    pub erase_expired: bool,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            default_years: 0,
            anchor: RetentionAnchor::Received,
            rules: Vec::new(),
            erase_expired: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RetentionAnchor {
    Received,
    StudyDate,
    Later,
}

/// One retention rule. A study matches when every condition given holds: one
/// of its modalities is listed (when `modalities` is not empty), one of its SOP
/// classes is listed (when `sop_classes` is not empty), and the patient was
/// younger than `patient_age_below_years` at the study (when given; a study
/// without both dates does not match an age condition).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionRule {
    /// Named in refusals and reports.
    pub name: String,
    pub modalities: Vec<String>,
    pub sop_classes: Vec<String>,
    pub patient_age_below_years: Option<u32>,
    /// Years kept from the anchor date.
    pub years: u32,
    /// And at least until the patient reaches this age (records of minors).
    pub until_patient_age_years: Option<u32>,
}

/// Longest period a rule may set: a typo of 1000 years would make studies
/// undeletable for good.
const MAX_YEARS: u32 = 200;

impl LifecycleConfig {
    /// The retention of `tenant`.
    pub fn retention_of(&self, tenant: &str) -> &RetentionConfig {
        self.tenants
            .get(tenant)
            .map_or(&self.retention, |t| &t.retention)
    }

    /// The move rules of `tenant`.
    pub fn moves_of(&self, tenant: &str) -> &[MoveRule] {
        self.tenants
            .get(tenant)
            .and_then(|t| t.moves.as_deref())
            .unwrap_or(&self.moves)
    }

    /// Every list of move rules with where it is configured.
    pub fn all_moves(&self) -> Vec<(String, &[MoveRule])> {
        std::iter::once(("lifecycle.moves".to_string(), self.moves.as_slice()))
            .chain(self.tenants.iter().filter_map(|(name, t)| {
                t.moves
                    .as_deref()
                    .map(|m| (format!("lifecycle.tenants.{name}.moves"), m))
            }))
            .collect()
    }

    /// The configured "now" as a time, when one is set (a day: its midnight UTC).
    pub fn fixed_now(&self) -> Option<std::time::SystemTime> {
        let text = self.now.trim();
        if text.is_empty() {
            return None;
        }
        if let Ok(day) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            let secs = day.and_hms_opt(0, 0, 0)?.and_utc().timestamp();
            return Some(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs).ok()?),
            );
        }
        humantime::parse_rfc3339_weak(text).ok()
    }

    /// The configured "now", when one is set: (the day as `YYYYMMDD`).
    pub fn fixed_today(&self) -> Option<String> {
        parse_day(&self.now)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self.now.is_empty() && parse_day(&self.now).is_none() {
            return Err(ConfigError::Rule(format!(
                "lifecycle.now must be YYYY-MM-DD or an RFC 3339 time, not {:?}",
                self.now
            )));
        }
        std::iter::once(("lifecycle.retention".to_string(), &self.retention))
            .chain(self.tenants.iter().map(|(name, tenant)| {
                (
                    format!("lifecycle.tenants.{name}.retention"),
                    &tenant.retention,
                )
            }))
            .try_for_each(|(path, retention)| retention.validate(&path))?;
        for (path, rules) in self.all_moves() {
            let mut names = std::collections::HashSet::new();
            for rule in rules {
                if rule.name.trim().is_empty() || !names.insert(rule.name.as_str()) {
                    return Err(ConfigError::Rule(format!(
                        "{path}: every move rule needs a name of its own"
                    )));
                }
            }
        }
        if self.restore.poll_secs == 0
            || self.restore.concurrency == 0
            || self.restore.concurrency > 256
        {
            return Err(ConfigError::Rule(
                "lifecycle.restore: poll_secs above 0, concurrency 1 to 256".into(),
            ));
        }
        if !(self.pass.moves_per_second >= 0.0 && self.pass.moves_per_second.is_finite())
            || self.pass.lease_secs == 0
        {
            return Err(ConfigError::Rule(
                "lifecycle.pass: moves_per_second must be 0 or more, lease_secs above 0".into(),
            ));
        }
        // A timer's period past the end of time would overflow the clock.
        const YEAR: u64 = 366 * 86_400;
        let periods = [
            ("lifecycle.pass.interval_secs", self.pass.interval_secs),
            ("lifecycle.pass.lease_secs", self.pass.lease_secs),
            ("lifecycle.restore.poll_secs", self.restore.poll_secs),
            ("lifecycle.usage_interval_secs", self.usage_interval_secs),
        ];
        if let Some((name, _)) = periods.iter().find(|(_, secs)| *secs > YEAR) {
            return Err(ConfigError::Rule(format!("{name} is at most a year")));
        }
        Ok(())
    }
}

impl RetentionConfig {
    fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let rule = |message: String| Err(ConfigError::Rule(format!("{path}: {message}")));
        if self.default_years > MAX_YEARS {
            return rule(format!("default_years is above {MAX_YEARS}"));
        }
        let mut names = std::collections::HashSet::new();
        for r in &self.rules {
            if r.name.trim().is_empty() {
                return rule("every rule needs a name".into());
            }
            if !names.insert(r.name.as_str()) {
                return rule(format!("two rules are named {:?}", r.name));
            }
            let ages = [r.patient_age_below_years, r.until_patient_age_years];
            if r.years > MAX_YEARS || ages.iter().flatten().any(|&a| a > MAX_YEARS) {
                return rule(format!(
                    "rule {:?} sets a period or age above {MAX_YEARS} years",
                    r.name
                ));
            }
        }
        Ok(())
    }
}

/// `YYYY-MM-DD` or an RFC 3339 time as the day `YYYYMMDD` (UTC).
fn parse_day(text: &str) -> Option<String> {
    let text = text.trim();
    if let Ok(day) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Some(day.format("%Y%m%d").to_string());
    }
    let time = humantime::parse_rfc3339_weak(text).ok()?;
    let secs = time.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    let day = chrono::DateTime::from_timestamp(i64::try_from(secs).ok()?, 0)?;
    Some(day.format("%Y%m%d").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_override_takes_a_day_or_a_time() {
        let mut config = LifecycleConfig {
            now: "2040-02-29".into(),
            ..Default::default()
        };
        assert_eq!(config.fixed_today().as_deref(), Some("20400229"));
        config.now = "2041-03-01T23:30:00Z".into();
        assert_eq!(config.fixed_today().as_deref(), Some("20410301"));
        let now = config.fixed_now().unwrap();
        let secs = now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(secs % 86_400, 23 * 3600 + 30 * 60);
        config.now = "tomorrow".into();
        assert!(config.validate().is_err());
        config.now = String::new();
        config.usage_interval_secs = u64::MAX;
        assert!(config.validate().is_err(), "a period past the end of time");
    }

    #[test]
    fn rules_need_distinct_names_and_sane_periods() {
        let mut config = LifecycleConfig::default();
        config.retention.rules = vec![
            RetentionRule {
                name: "rt".into(),
                years: 30,
                ..Default::default()
            },
            RetentionRule {
                name: "rt".into(),
                years: 10,
                ..Default::default()
            },
        ];
        assert!(config.validate().is_err());
        config.retention.rules.pop();
        assert!(config.validate().is_ok());
        config.retention.rules[0].years = 1000;
        assert!(config.validate().is_err());
    }

    #[test]
    fn a_tenant_of_its_own_overrides_the_default() {
        let mut config = LifecycleConfig::default();
        config.retention.default_years = 10;
        let mut own = TenantLifecycleConfig::default();
        own.retention.default_years = 30;
        config.tenants.insert("radiotherapy".into(), own);
        assert_eq!(config.retention_of("radiotherapy").default_years, 30);
        assert_eq!(config.retention_of("other").default_years, 10);
    }
}
