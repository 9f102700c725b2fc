//! `kastell export`: de-identified exports of a selection, as resumable jobs.

use clap::Subcommand;
use kastell::ops::export::{ExportStatus, Selection, Target};

use super::startup::{start, tokio_runtime, Start};
use super::{merge, CommonArgs};

#[derive(Subcommand, Debug)]
pub enum ExportAction {
    /// Export studies of --tenant, de-identified through --project, to another
    /// tenant (--to tenant:<name>) or an export store (--to export:<name> of
    /// [exports.<name>]: DICOM files, a DICOMDIR and manifest.json). Runs the job
    /// at once; if interrupted, `kastell export resume <job>` finishes it.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        project: String,
        #[arg(long)]
        to: String,
        /// A study to export (repeatable).
        #[arg(long = "study")]
        studies: Vec<String>,
        /// A QIDO-RS query at study level, e.g. `ModalitiesInStudy=CT&StudyDate=20240101-20241231`.
        #[arg(long)]
        query: Option<String>,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Carry on with a job's pending instances and finish it.
    Resume {
        job: i64,
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Where a job stands.
    Status {
        job: i64,
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// The export jobs of a tenant.
    List {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        common: CommonArgs,
    },
}

fn print(status: &ExportStatus) {
    let total: i64 = status.counts.iter().map(|c| c.n).sum();
    println!(
        "export job {}: {} to {} with project {} ({}): {} of {total} done, {} excluded, {} failed, {} pending{}",
        status.job.job_id,
        status.job.selection,
        status.job.target,
        status.job.project,
        status.job.state,
        status.count("done"),
        status.count("excluded"),
        status.count("failed"),
        status.count("pending"),
        status
            .job
            .finished_at
            .as_deref()
            .map(|at| format!(", finished {at}"))
            .unwrap_or_default()
    );
}

fn run_job(config: &kastell::config::Config, tenant: &str, job: i64) -> anyhow::Result<()> {
    let progress = |done: i64, total: i64| {
        if done == total || done % 10 == 0 {
            eprintln!("export job {job}: {done} of {total}");
        }
    };
    let status =
        tokio_runtime()?.block_on(kastell::ops::export::run(config, tenant, job, &progress))?;
    print(&status);
    Ok(())
}

pub fn run(outer: &CommonArgs, action: ExportAction) -> anyhow::Result<()> {
    match action {
        ExportAction::Create {
            tenant,
            project,
            to,
            studies,
            query,
            common,
        } => {
            let target = Target::parse(&to)?;
            if studies.is_empty() && query.is_none() {
                anyhow::bail!("select studies with --study or --query");
            }
            let config = start(&merge(outer, &common), Start::writing("export"))?.config;
            let selection = Selection { studies, query };
            let job = tokio_runtime()?.block_on(kastell::ops::export::create(
                &config, &tenant, &project, &selection, &target,
            ))?;
            eprintln!("export job {job} made");
            run_job(&config, &tenant, job)
        }
        ExportAction::Resume {
            job,
            tenant,
            common,
        } => {
            let config = start(&merge(outer, &common), Start::writing("export"))?.config;
            run_job(&config, &tenant, job)
        }
        ExportAction::Status {
            job,
            tenant,
            common,
        } => {
            let config = start(&merge(outer, &common), Start::LOGGED)?.config;
            print(&tokio_runtime()?.block_on(kastell::ops::export::status(&config, &tenant, job))?);
            Ok(())
        }
        ExportAction::List { tenant, common } => {
            let config = start(&merge(outer, &common), Start::LOGGED)?.config;
            for status in tokio_runtime()?.block_on(kastell::ops::export::list(&config, &tenant))? {
                print(&status);
            }
            Ok(())
        }
    }
}
