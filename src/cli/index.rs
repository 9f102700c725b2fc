//! The index and the blob store as a whole: `migrate`, `generate`, `verify` and
//! `stats`.

use super::startup::{start, tokio_runtime, Start};
use super::{CommonArgs, ReportFormat};

pub fn migrate(common: &CommonArgs) -> anyhow::Result<()> {
    let config = start(common, Start::writing("migrate the index"))?.config;
    let applied = kastell::index::Index::migrate(&config.effective_index_url())?;
    if applied.is_empty() {
        println!("the index schema is up to date");
    }
    for name in applied {
        println!("applied {name}");
    }
    Ok(())
}

pub fn generate(
    common: &CommonArgs,
    studies: u64,
    series_per_study: u64,
    instances_per_series: u64,
    seed: u64,
) -> anyhow::Result<()> {
    let config = start(common, Start::writing("generate an index"))?.config;
    let index = kastell::app::open_index(&config)?;
    let started = std::time::Instant::now();
    let generated = kastell::index::generate::generate(
        &index,
        studies,
        series_per_study,
        instances_per_series,
        seed,
        &|done| {
            if done % 10_000 == 0 || done == studies {
                eprintln!(
                    "{done} / {studies} studies ({:.0} s)",
                    started.elapsed().as_secs_f64()
                );
            }
        },
    )?;
    println!(
        "generated {} studies, {} series, {} instances in {:.1} s",
        generated.studies,
        generated.series,
        generated.instances,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn verify(common: &CommonArgs) -> anyhow::Result<()> {
    let config = start(common, Start::LOGGED)?.config;
    let report = tokio_runtime()?.block_on(kastell::ops::verify::verify(&config))?;
    println!(
        "{} indexed blobs checked, {} failed, {} orphaned blobs",
        report.checked,
        report.failed.len(),
        report.orphans.len()
    );
    if report.archived > 0 {
        println!(
            "  {} of them in offline tiers, not restored: their size checked, not their content",
            report.archived
        );
    }
    for (blob, error) in &report.failed {
        println!("  FAILED {blob}: {error}");
    }
    for blob in &report.orphans {
        println!("  orphan {blob} (no index row references it)");
    }
    if report.failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{} blobs failed verification", report.failed.len())
    }
}

pub fn stats(common: &CommonArgs, format: ReportFormat, blobs: bool) -> anyhow::Result<()> {
    let config = start(common, Start::LOGGED)?.config;
    let report = tokio_runtime()?.block_on(kastell::ops::stats::collect(&config, blobs))?;
    match format {
        ReportFormat::Text => print!("{report}"),
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(())
}
