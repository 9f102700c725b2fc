//! Retention and legal holds from the command line (issue 15), each action
//! audited: placing and lifting legal holds, releasing a study from its
//! retention period (the audited override), the retention report with its
//! dry run of what has expired, and erasing what has.

use crate::app::build_tenants;
use crate::audit::{Action, AuditEvent, Outcome};
use crate::config::Config;
use crate::index::protection::{HoldTarget, LegalHold, StudyFacts};
use crate::service::retention::{each_study, KeepUntil, RetentionPolicy};
use crate::service::{Scope, Services};

use super::audit::{append_audit, audit_cli};

/// Longest reason kept with a hold, a lift or a release.
pub const MAX_REASON_CHARS: usize = 1000;

/// A stated reason: not blank, bounded.
fn reason(text: &str) -> anyhow::Result<String> {
    let text = text.trim();
    if text.is_empty() {
        anyhow::bail!("a reason is required (--reason)");
    }
    if text.chars().count() > MAX_REASON_CHARS {
        anyhow::bail!("the reason is longer than {MAX_REASON_CHARS} characters");
    }
    Ok(text.to_string())
}

async fn tenant_services(config: &Config, tenant: &str) -> anyhow::Result<(Services, Services)> {
    let tenants = build_tenants(config)?;
    let control = tenants.default_services().clone();
    let services = tenants
        .get(tenant)
        .await
        .map_err(|e| anyhow::anyhow!("tenant {tenant}: {e}"))?;
    Ok((services, control))
}

/// Audits `result` as `action` on `tenant` (the study, when one is named).
fn audited<T>(
    config: &Config,
    control: &Services,
    event: AuditEvent,
    result: anyhow::Result<T>,
    detail: impl FnOnce(&T) -> String,
) -> anyhow::Result<T> {
    let event = match &result {
        Ok(value) => {
            let status = if event.outcome == Outcome::Success {
                0
            } else {
                1
            };
            event.status(status).detail(detail(value))
        }
        Err(error) => AuditEvent {
            outcome: Outcome::Failure,
            ..event
        }
        .status(1)
        .detail(format!("{error:#}")),
    };
    audit_cli(config, &control.index, event, result)
}

/// Places a legal hold on a study or a patient; returns its number.
pub async fn place_hold(
    config: &Config,
    tenant: &str,
    target: HoldTarget,
    why: &str,
) -> anyhow::Result<i64> {
    let (services, control) = tenant_services(config, tenant).await?;
    let mut event = AuditEvent::cli(tenant, Action::LegalHold, Outcome::Success);
    let what = match &target {
        HoldTarget::Study(uid) => {
            event.study_uid = Some(uid.clone());
            "a study".to_string()
        }
        // Never the PatientID in the trail: the hold's number leads to it.
        HoldTarget::Patient { .. } => "every study of a patient".to_string(),
    };
    let result = async {
        let why = reason(why)?;
        // DICOM bounds what a hold can name (UI and LO: 64 characters); a longer
        // value names nothing stored and is refused rather than kept.
        let named = match &target {
            HoldTarget::Study(uid) => vec![uid.as_str()],
            HoldTarget::Patient { id, issuer } => std::iter::once(id.as_str())
                .chain(issuer.as_deref())
                .collect(),
        };
        if named
            .iter()
            .any(|v| v.trim().is_empty() || v.chars().count() > 64)
        {
            anyhow::bail!("a study UID, PatientID or issuer is 1 to 64 characters");
        }
        if let HoldTarget::Study(uid) = &target {
            // A hold on a study names a stored one: a mistyped UID would hold nothing.
            let lookup = uid.clone();
            if services
                .with_index(move |index| index.study_facts(&lookup))
                .await?
                .is_none()
            {
                anyhow::bail!("there is no study {uid} in tenant {tenant}");
            }
        }
        let user = crate::audit::cli_user();
        Ok(services
            .with_index(move |index| index.place_hold(&target, &why, &user))
            .await?)
    }
    .await;
    audited(config, &control, event, result, |id| {
        format!("legal hold #{id} placed on {what}: {}", why.trim())
    })
}

/// Lifts an active legal hold.
pub async fn lift_hold(config: &Config, tenant: &str, hold: i64, why: &str) -> anyhow::Result<()> {
    let (services, control) = tenant_services(config, tenant).await?;
    let event = AuditEvent::cli(tenant, Action::LegalHoldLift, Outcome::Success);
    let result = async {
        let why = reason(why)?;
        let user = crate::audit::cli_user();
        let lifted = services
            .with_index(move |index| index.lift_hold(hold, &why, &user))
            .await?;
        if !lifted {
            anyhow::bail!("there is no active legal hold #{hold}");
        }
        Ok(())
    }
    .await;
    audited(config, &control, event, result, |_| {
        format!("legal hold #{hold} lifted: {}", why.trim())
    })
}

/// The legal holds of a tenant, newest first.
pub async fn holds(
    config: &Config,
    tenant: &str,
    include_lifted: bool,
) -> anyhow::Result<Vec<LegalHold>> {
    let (services, _) = tenant_services(config, tenant).await?;
    Ok(services
        .with_index(move |index| index.legal_holds(include_lifted))
        .await?)
}

/// Releases a study from its retention period before it ends: the override,
/// with its reason in the audit trail. A legal hold still blocks deletion.
pub async fn release(config: &Config, tenant: &str, study: &str, why: &str) -> anyhow::Result<()> {
    let (services, control) = tenant_services(config, tenant).await?;
    let mut event = AuditEvent::cli(tenant, Action::RetentionRelease, Outcome::Success);
    event.study_uid = Some(study.to_string());
    let result = async {
        let why = reason(why)?;
        let user = crate::audit::cli_user();
        let uid = study.to_string();
        let released = services
            .with_index(move |index| index.release_retention(&uid, &why, &user))
            .await?;
        if !released {
            anyhow::bail!("there is no study {study} in tenant {tenant}");
        }
        Ok(())
    }
    .await;
    audited(config, &control, event, result, |_| {
        format!("released from retention: {}", why.trim())
    })
}

/// One study in the retention report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RetentionEntry {
    pub study_instance_uid: String,
    /// The day the study may be deleted from (`YYYY-MM-DD`); none when no
    /// period applies.
    pub keep_until: Option<String>,
    pub rule: Option<String>,
    pub legal_holds: Vec<i64>,
    pub released: bool,
    /// Whether a DELETE would be accepted today.
    pub deletable: bool,
    /// Whether its retention period applied and has ended, with no hold:
    /// what `erase-expired` would erase.
    pub expired: bool,
}

fn entry(policy: &RetentionPolicy, study: StudyFacts) -> RetentionEntry {
    let kept: Option<KeepUntil> = policy.keep_until(&study);
    let deletable = policy.refusal(&study).is_none();
    let expired = policy.expired(&study).is_some();
    RetentionEntry {
        keep_until: kept.as_ref().map(|k| k.day.format("%Y-%m-%d").to_string()),
        rule: kept.map(|k| k.rule),
        legal_holds: study.holds,
        released: study.released,
        deletable,
        expired,
        study_instance_uid: study.study_instance_uid,
    }
}

/// Every study of a tenant (or the one named) with its retention as of the
/// lifecycle clock's today.
pub async fn retention_report(
    config: &Config,
    tenant: &str,
    study: Option<&str>,
) -> anyhow::Result<Vec<RetentionEntry>> {
    let (services, _) = tenant_services(config, tenant).await?;
    let policy = RetentionPolicy::of(&config.lifecycle, tenant);
    if let Some(study) = study {
        let uid = study.to_string();
        let facts = services
            .with_index(move |index| index.study_facts(&uid))
            .await?
            .ok_or_else(|| anyhow::anyhow!("there is no study {study} in tenant {tenant}"))?;
        return Ok(vec![entry(&policy, facts)]);
    }
    let mut report = Vec::new();
    each_study(&services, |facts| report.push(entry(&policy, facts))).await?;
    Ok(report)
}

/// Why a tenant's keys may not be shredded, if any study is protected:
/// shredding erases every study, so each must be deletable.
pub async fn shred_refusal(
    services: &Services,
    config: &Config,
    tenant: &str,
) -> anyhow::Result<Option<String>> {
    let policy = RetentionPolicy::of(&config.lifecycle, tenant);
    let mut refusals = Vec::new();
    each_study(services, |facts| refusals.extend(policy.refusal(&facts))).await?;
    Ok(refusals.first().map(|first| {
        format!(
            "{} studies of tenant {tenant} are protected from deletion, so its keys cannot be shredded; the first: {first}",
            refusals.len()
        )
    }))
}

/// What `erase-expired` did.
#[derive(Debug, Default)]
pub struct EraseReport {
    pub studies: usize,
    pub instances: usize,
    pub failed: Vec<(String, String)>,
}

/// Deletes every study whose retention period applied and has ended (and no
/// hold covers), each deletion audited with the rule and the day it ended.
pub async fn erase_expired(config: &Config, tenant: &str) -> anyhow::Result<EraseReport> {
    let (services, control) = tenant_services(config, tenant).await?;
    let policy = RetentionPolicy::of(&config.lifecycle, tenant);
    let mut report = EraseReport::default();
    for (study, kept) in crate::service::retention::expired_studies(&services, &policy).await? {
        let result = crate::service::delete::delete(
            &services,
            Scope::Study {
                study: study.clone(),
            },
        )
        .await;
        let note = crate::service::retention::erasure_note(&kept, &result);
        let mut event = AuditEvent::cli(tenant, Action::Delete, Outcome::Success);
        event.study_uid = Some(study.clone());
        let event = match result {
            Ok(count) => {
                report.studies += 1;
                report.instances += count;
                event.status(0).detail(note)
            }
            Err(error) => {
                report.failed.push((study, error.to_string()));
                AuditEvent {
                    outcome: Outcome::Failure,
                    ..event
                }
                .status(1)
                .detail(note)
            }
        };
        append_audit(config, &control.index, &[event])?;
    }
    Ok(report)
}

/// The prices per GB-month of every store (`primary` included), for plans.
fn prices(config: &Config) -> std::collections::BTreeMap<String, f64> {
    std::iter::once((
        crate::store::PRIMARY_STORE.to_string(),
        config.storage.price_per_gb_month,
    ))
    .chain(
        config
            .storage
            .stores
            .iter()
            .map(|(name, store)| (name.clone(), store.price_per_gb_month)),
    )
    .collect()
}

/// What the next lifecycle pass would move for `tenant` (a dry run).
pub async fn plan_moves(
    config: &Config,
    tenant: &str,
) -> anyhow::Result<crate::service::tiering::Plan> {
    let (services, _) = tenant_services(config, tenant).await?;
    let today = crate::service::retention::today(&config.lifecycle);
    Ok(crate::service::tiering::plan(
        &services,
        config.lifecycle.moves_of(tenant),
        today,
        &prices(config),
    )
    .await?)
}

/// Runs one lifecycle pass for `tenant`; audited with its counts.
pub async fn run_moves(
    config: &Config,
    tenant: &str,
) -> anyhow::Result<crate::service::tiering::PassReport> {
    let (services, control) = tenant_services(config, tenant).await?;
    let today = crate::service::retention::today(&config.lifecycle);
    let owner = format!(
        "{}:{}:{}",
        crate::audit::cli_user(),
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    let result = crate::service::tiering::run_pass(
        &services,
        config.lifecycle.moves_of(tenant),
        today,
        &config.lifecycle.pass,
        &owner,
    )
    .await
    .map_err(anyhow::Error::from);
    let event = AuditEvent::cli(tenant, Action::LifecycleMove, Outcome::Success);
    let event = match &result {
        Ok(report) if !report.failed.is_empty() => AuditEvent {
            outcome: Outcome::Failure,
            ..event
        },
        _ => event,
    };
    audited(config, &control, event, result, |report| {
        format!("lifecycle pass: {report}")
    })
}

/// Asks for the restore of `study`'s instances in offline tiers (the
/// requests sent before returning); audited.
pub async fn restore_study(
    config: &Config,
    tenant: &str,
    study: &str,
) -> anyhow::Result<crate::service::restore::StudyRestore> {
    // A UID is at most 64 characters (PS3.5 §9.1).
    if study.is_empty() || study.len() > 64 {
        anyhow::bail!("--study is a Study Instance UID of 1 to 64 characters");
    }
    let (services, control) = tenant_services(config, tenant).await?;
    let result = crate::service::restore::request_study(&services, study, true)
        .await
        .map_err(anyhow::Error::from)
        .and_then(|asked| {
            if asked.queue_full {
                anyhow::bail!(
                    "not started: the tenant has lifecycle.restore.max_pending_objects restores waiting"
                )
            }
            Ok(asked)
        });
    let mut event = AuditEvent::cli(tenant, Action::LifecycleRestore, Outcome::Success);
    event.study_uid = Some(study.to_string());
    audited(config, &control, event, result, |asked| {
        format!(
            "restore from offline tiers: {} instances offline, {} restores asked for",
            asked.offline, asked.journaled
        )
    })
}

/// The restores of `tenant` by study; with `poll`, after checking those not
/// ready (what the server does every `lifecycle.restore.poll_secs`).
pub async fn restores(
    config: &Config,
    tenant: &str,
    poll: bool,
) -> anyhow::Result<(
    Vec<crate::index::restores::StudyRestores>,
    Option<crate::service::restore::PollReport>,
)> {
    let (services, _) = tenant_services(config, tenant).await?;
    let report = match poll {
        true => Some(crate::service::restore::poll(&services).await?),
        false => None,
    };
    let studies = services
        .with_index(|index| index.restores_by_study(1000))
        .await?;
    Ok((studies, report))
}
