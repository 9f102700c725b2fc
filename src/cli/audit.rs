//! `kastell audit`: verify the hash chain of the audit trail, or export it (the
//! export is itself audited).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};

use super::startup::{start, Start};
use super::{merge, CommonArgs};

#[derive(Subcommand, Debug)]
pub enum AuditAction {
    /// Walk the hash chain and report the first edited, inserted or deleted row;
    /// prints the head (seq and hash) to record elsewhere. Fails when broken.
    Verify {
        /// A head recorded earlier (SEQ:HASH, as printed): also fails when that row
        /// is gone or changed, which catches removed newest rows and a rewritten
        /// chain.
        #[arg(long)]
        anchor: Option<String>,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Write the events recorded since a time as DICOM audit messages (IHE ATNA
    /// XML) or a FHIR R4 Bundle of AuditEvents. The export is itself audited.
    Export {
        /// RFC 3339 UTC time (2026-01-31T12:00:00Z) or date (2026-01-31).
        #[arg(long)]
        since: String,
        #[arg(long, value_enum, default_value_t = AuditFormat::Atna)]
        format: AuditFormat,
        /// File to write; standard output by default.
        #[arg(long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        common: CommonArgs,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum AuditFormat {
    /// DICOM PS3.15 A.5 audit messages (IHE ATNA), XML.
    Atna,
    /// FHIR R4 Bundle of AuditEvent resources, JSON.
    Fhir,
}

pub fn run(outer: &CommonArgs, action: AuditAction) -> anyhow::Result<()> {
    match action {
        AuditAction::Verify { anchor, common } => verify(&merge(outer, &common), anchor),
        AuditAction::Export {
            since,
            format,
            output,
            common,
        } => export(&merge(outer, &common), &since, format, output),
    }
}

fn verify(common: &CommonArgs, anchor: Option<String>) -> anyhow::Result<()> {
    let config = start(common, Start::LOGGED)?.config;
    let anchor = anchor.as_deref().map(str::parse).transpose()?;
    let index = kastell::app::open_index(&config)?;
    let report = kastell::ops::audit::verify_audit(&config, &index, anchor)?;
    print!("{report}");
    match report.first_broken() {
        None => Ok(()),
        Some(seq) => anyhow::bail!("the audit trail is broken at seq {seq}"),
    }
}

fn export(
    common: &CommonArgs,
    since: &str,
    format: AuditFormat,
    output: Option<PathBuf>,
) -> anyhow::Result<()> {
    use kastell::audit::{self, Action, AuditEvent, ExportFormat, Outcome};
    let config = start(common, Start::LOGGED)?.config;
    let since = audit::parse_since(since)?;
    let format = match format {
        AuditFormat::Atna => ExportFormat::Atna,
        AuditFormat::Fhir => ExportFormat::Fhir,
    };
    let index = kastell::app::open_index(&config)?;
    let count = match &output {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            audit::write_export(&index, &since, format, &mut std::io::BufWriter::new(file))?
        }
        None => audit::write_export(
            &index,
            &since,
            format,
            &mut std::io::BufWriter::new(std::io::stdout().lock()),
        )?,
    };
    // Reading the trail is itself an audited event (DICOM "Audit Log Used");
    // the trail spans every tenant, the record goes under the default one.
    let event = AuditEvent::cli(
        &config.keys.default_tenant,
        Action::AuditExport,
        Outcome::Success,
    )
    .status(0)
    .detail(format!(
        "{count} events since {since} as {}",
        format.as_str()
    ));
    kastell::ops::audit::append_audit(&config, &index, &[event])
        .context("recording the export in the audit trail")?;
    if let Some(path) = output {
        println!("{count} audit events written to {}", path.display());
    }
    Ok(())
}
