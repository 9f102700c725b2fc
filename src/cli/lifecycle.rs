//! `kastell lifecycle`: retention, legal holds and moves between stores (issue 15).

use clap::Subcommand;

use kastell::index::protection::HoldTarget;
use kastell::ops::lifecycle;

use super::startup::{start, tokio_runtime, Start};
use super::{merge, CommonArgs, ReportFormat};

#[derive(Subcommand, Debug)]
pub enum LifecycleAction {
    /// Place a legal hold on a study or on every study of a patient: no
    /// deletion (DELETE, erasure, shredding) until it is lifted. Audited.
    Hold {
        /// Tenant (default: keys.default_tenant).
        #[arg(long)]
        tenant: Option<String>,
        /// The Study Instance UID to hold.
        #[arg(long, conflicts_with = "patient", required_unless_present = "patient")]
        study: Option<String>,
        /// The PatientID whose studies to hold (those stored later too).
        #[arg(long)]
        patient: Option<String>,
        /// Only the patient's studies with this Issuer of Patient ID.
        #[arg(long, requires = "patient")]
        issuer: Option<String>,
        /// Why (kept with the hold and in the audit trail).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Lift a legal hold. Audited.
    Lift {
        #[arg(long)]
        tenant: Option<String>,
        /// The hold's number, as `hold` printed it.
        #[arg(long)]
        hold: i64,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// List the legal holds (active ones; all with --all).
    Holds {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        all: bool,
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Release a study from its retention period so that it can be deleted
    /// before the period ends: the audited override. Legal holds still apply.
    Release {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        study: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Each study's keep-until day, the rule that sets it, its holds and
    /// whether it may be deleted today (the dry run of `erase-expired`).
    Retention {
        #[arg(long)]
        tenant: Option<String>,
        /// Only this study.
        #[arg(long)]
        study: Option<String>,
        /// Only the studies whose retention has ended (what erase-expired erases).
        #[arg(long)]
        expired: bool,
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// What the next lifecycle pass would move, by rule and from store to
    /// store, with the change in the monthly storage bill at the configured
    /// prices (a dry run: nothing moves).
    Plan {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Run one lifecycle pass: move what the rules ask for ([[lifecycle.moves]]),
    /// crash-safe and resumable (run it again after a crash). Audited.
    Run {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Ask for the restore of a study's instances in offline tiers (S3
    /// Glacier, Deep Archive); retrievals serve them once restored. Audited.
    Restore {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        study: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// The restores asked for, by study: objects waiting and ready. With
    /// --poll, checks those waiting first (as the server does on its schedule).
    Restores {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        poll: bool,
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Delete every study whose retention period has ended and that no hold
    /// covers, each deletion audited. Without --yes, only says what it would do.
    EraseExpired {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        common: CommonArgs,
    },
}

pub fn run(outer: &CommonArgs, action: LifecycleAction) -> anyhow::Result<()> {
    match action {
        LifecycleAction::Hold {
            tenant,
            study,
            patient,
            issuer,
            reason,
            common,
        } => {
            let (config, tenant) = begin(
                &merge(outer, &common),
                Start::writing("place a legal hold"),
                tenant,
            )?;
            let target = match (study, patient) {
                (Some(study), _) => HoldTarget::Study(study),
                (None, Some(id)) => HoldTarget::Patient { id, issuer },
                (None, None) => anyhow::bail!("name a --study or a --patient"),
            };
            let id = tokio_runtime()?
                .block_on(lifecycle::place_hold(&config, &tenant, target, &reason))?;
            println!("tenant {tenant}: legal hold #{id} placed");
            Ok(())
        }
        LifecycleAction::Lift {
            tenant,
            hold,
            reason,
            common,
        } => {
            let (config, tenant) = begin(&merge(outer, &common), Start::LOGGED, tenant)?;
            tokio_runtime()?.block_on(lifecycle::lift_hold(&config, &tenant, hold, &reason))?;
            println!("tenant {tenant}: legal hold #{hold} lifted");
            Ok(())
        }
        LifecycleAction::Holds {
            tenant,
            all,
            format,
            common,
        } => {
            let (config, tenant) = begin(&merge(outer, &common), Start::LOGGED, tenant)?;
            let holds = tokio_runtime()?.block_on(lifecycle::holds(&config, &tenant, all))?;
            match format {
                ReportFormat::Json => {
                    let rows: Vec<serde_json::Value> = holds
                        .iter()
                        .map(|h| {
                            serde_json::json!({
                                "hold": h.hold_id, "kind": h.kind, "target": h.target,
                                "issuer_of_patient_id": h.issuer_of_patient_id,
                                "reason": h.reason, "placed_by": h.placed_by,
                                "placed_at": h.placed_at, "lifted_by": h.lifted_by,
                                "lifted_at": h.lifted_at, "lift_reason": h.lift_reason,
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                }
                ReportFormat::Text => {
                    for h in &holds {
                        let state = match &h.lifted_at {
                            Some(at) => format!("lifted {at}"),
                            None => "active".to_string(),
                        };
                        println!(
                            "#{} {} {} ({state}; placed {} by {}): {}",
                            h.hold_id, h.kind, h.target, h.placed_at, h.placed_by, h.reason
                        );
                    }
                }
            }
            Ok(())
        }
        LifecycleAction::Release {
            tenant,
            study,
            reason,
            common,
        } => {
            let (config, tenant) = begin(&merge(outer, &common), Start::LOGGED, tenant)?;
            tokio_runtime()?.block_on(lifecycle::release(&config, &tenant, &study, &reason))?;
            println!("tenant {tenant}: study {study} released from its retention period");
            Ok(())
        }
        LifecycleAction::Retention {
            tenant,
            study,
            expired,
            format,
            common,
        } => {
            let (config, tenant) = begin(&merge(outer, &common), Start::LOGGED, tenant)?;
            let report = tokio_runtime()?.block_on(lifecycle::retention_report(
                &config,
                &tenant,
                study.as_deref(),
            ))?;
            let report: Vec<_> = report
                .into_iter()
                .filter(|entry| !expired || entry.expired)
                .collect();
            match format {
                ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                ReportFormat::Text => {
                    for entry in &report {
                        println!(
                            "{} keep until {} ({}){}{}; {}",
                            entry.study_instance_uid,
                            entry.keep_until.as_deref().unwrap_or("-"),
                            entry.rule.as_deref().unwrap_or("no rule"),
                            if entry.released { ", released" } else { "" },
                            if entry.legal_holds.is_empty() {
                                String::new()
                            } else {
                                format!(", legal holds {:?}", entry.legal_holds)
                            },
                            if entry.expired {
                                "expired"
                            } else if entry.deletable {
                                "deletable"
                            } else {
                                "protected"
                            }
                        );
                    }
                }
            }
            Ok(())
        }
        LifecycleAction::Plan {
            tenant,
            format,
            common,
        } => plan(&merge(outer, &common), tenant, format),
        LifecycleAction::Run {
            tenant,
            format,
            common,
        } => run_pass(&merge(outer, &common), tenant, format),
        LifecycleAction::Restore {
            tenant,
            study,
            common,
        } => {
            let (config, tenant) = begin(&merge(outer, &common), Start::LOGGED, tenant)?;
            let asked =
                tokio_runtime()?.block_on(lifecycle::restore_study(&config, &tenant, &study))?;
            println!(
                "tenant {tenant}: study {study}: {} instances in offline tiers, {} restores asked for",
                asked.offline, asked.journaled
            );
            Ok(())
        }
        LifecycleAction::Restores {
            tenant,
            poll,
            format,
            common,
        } => {
            let (config, tenant) = begin(&merge(outer, &common), Start::LOGGED, tenant)?;
            let (studies, report) =
                tokio_runtime()?.block_on(lifecycle::restores(&config, &tenant, poll))?;
            match format {
                ReportFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "poll": report, "studies": studies })
                    )?
                ),
                ReportFormat::Text => {
                    if let Some(report) = report {
                        println!(
                            "checked {}: {} ready, {} waiting, {} failed; {} journal rows pruned",
                            report.checked,
                            report.ready,
                            report.waiting,
                            report.failed,
                            report.pruned
                        );
                    }
                    for study in &studies {
                        println!(
                            "{}: {} waiting, {} ready",
                            study.study_instance_uid, study.waiting, study.ready
                        );
                    }
                }
            }
            Ok(())
        }
        LifecycleAction::EraseExpired {
            tenant,
            yes,
            common,
        } => {
            let (config, tenant) = begin(&merge(outer, &common), Start::LOGGED, tenant)?;
            let runtime = tokio_runtime()?;
            if !yes {
                let report =
                    runtime.block_on(lifecycle::retention_report(&config, &tenant, None))?;
                let expired: Vec<_> = report.iter().filter(|e| e.expired).collect();
                for entry in &expired {
                    println!(
                        "would erase {} (retention ended {}, rule {})",
                        entry.study_instance_uid,
                        entry.keep_until.as_deref().unwrap_or("-"),
                        entry.rule.as_deref().unwrap_or("-")
                    );
                }
                println!(
                    "tenant {tenant}: {} studies would be erased; repeat with --yes to erase them",
                    expired.len()
                );
                return Ok(());
            }
            let report = runtime.block_on(lifecycle::erase_expired(&config, &tenant))?;
            println!(
                "tenant {tenant}: {} studies ({} instances) erased after their retention ended, {} failed",
                report.studies,
                report.instances,
                report.failed.len()
            );
            for (study, error) in &report.failed {
                println!("  failed {study}: {error}");
            }
            if report.failed.is_empty() {
                Ok(())
            } else {
                anyhow::bail!("some studies were not erased; run it again")
            }
        }
    }
}

fn plan(common: &CommonArgs, tenant: Option<String>, format: ReportFormat) -> anyhow::Result<()> {
    let (config, tenant) = begin(common, Start::LOGGED, tenant)?;
    let plan = tokio_runtime()?.block_on(lifecycle::plan_moves(&config, &tenant))?;
    match format {
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
        ReportFormat::Text => {
            for line in &plan.lines {
                println!(
                    "rule {:?}: {} objects ({} bytes) from {} to {}",
                    line.rule, line.objects, line.bytes, line.from, line.to
                );
            }
            println!(
                "tenant {tenant}: {} objects to move; monthly storage cost change {:+.2}",
                plan.lines.iter().map(|l| l.objects).sum::<u64>(),
                plan.monthly_cost_change
            );
            if plan.held_back > 0 {
                println!(
                    "{} objects a rule sends to an offline tier stay: legal holds cover them",
                    plan.held_back
                );
            }
        }
    }
    Ok(())
}

fn run_pass(
    common: &CommonArgs,
    tenant: Option<String>,
    format: ReportFormat,
) -> anyhow::Result<()> {
    let (config, tenant) = begin(common, Start::LOGGED, tenant)?;
    let report = tokio_runtime()?.block_on(lifecycle::run_moves(&config, &tenant))?;
    match format {
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        ReportFormat::Text => {
            println!("tenant {tenant}: {report}");
            for (blob, error) in &report.failed {
                println!("  failed {blob}: {error}");
            }
        }
    }
    if report.failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("some objects were not moved; run the pass again")
    }
}

/// The configuration, and the tenant the command acts on (default:
/// `keys.default_tenant`).
fn begin(
    common: &CommonArgs,
    how: Start,
    tenant: Option<String>,
) -> anyhow::Result<(kastell::config::Config, String)> {
    let config = start(common, how)?.config;
    let tenant = tenant.unwrap_or_else(|| config.keys.default_tenant.clone());
    Ok((config, tenant))
}
