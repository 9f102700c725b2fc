//! `kastell import DIR`: stores a directory through the STOW pipeline with a
//! progress bar, prints the summary and leaves one audit record.

use anyhow::Context;

use super::startup::{start, Logging, Start};
use super::{CommonArgs, ReportFormat};

pub fn import(
    common: &CommonArgs,
    dir: &std::path::Path,
    tenant: Option<&str>,
    jobs: Option<usize>,
    rate: Option<u32>,
    format: ReportFormat,
) -> anyhow::Result<()> {
    let how = Start {
        logging: Logging::Quiet,
        ..Start::writing("import")
    };
    let config = start(common, how)?.config;
    let jobs = jobs.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
    });
    let progress = std::sync::Arc::new(kastell::ops::progress::TerminalProgress::stderr());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(jobs.max(1))
        .enable_all()
        .build()?;
    let report = runtime.block_on(kastell::ops::import::import_dir(
        &config,
        dir,
        tenant,
        kastell::ops::import::ImportOptions {
            files_per_second: rate,
            ..kastell::ops::import::ImportOptions::with_jobs(jobs)
        },
        progress.clone(),
    ));
    progress.finish();
    let report = report?;
    match format {
        ReportFormat::Text => print!("import of {}: {report}", dir.display()),
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report.to_json())?),
    }
    // The import stores around HTTP: it leaves one audit record of its own (the
    // directory is named by the operator and may name patients: not recorded).
    {
        use kastell::audit::{Action, AuditEvent, Outcome};
        let outcome = if report.failed > 0 {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        let event = AuditEvent::cli(
            tenant.unwrap_or(&config.keys.default_tenant),
            Action::Store,
            outcome,
        )
        .status(i64::from(report.failed > 0))
        .detail(format!(
            "import: {} stored, {} already present, {} skipped, {} failed",
            report.stored, report.already_present, report.skipped, report.failed
        ));
        let index = kastell::app::open_index(&config)?;
        kastell::ops::audit::append_audit(&config, &index, &[event])
            .context("recording the import in the audit trail")?;
    }
    if report.failed > 0 {
        anyhow::bail!(
            "{} files failed; fix them and run the import again (what is stored stays stored)",
            report.failed
        );
    }
    Ok(())
}
