//! `kastell sovereignty report`: the control chain of this configuration.

use clap::Subcommand;

use super::startup::{start, Logging, Start};
use super::{merge, CommonArgs, ReportFormat};

#[derive(Subcommand, Debug)]
pub enum SovereigntyAction {
    /// Print the control chain: for each kind of data (images, personal metadata,
    /// keys, audit trail, logs) where it sits, under whose law, encrypted or not,
    /// and who holds the keys. Exits non-zero, listing them, on policy violations.
    Report {
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
        #[command(flatten)]
        common: CommonArgs,
    },
}

pub fn run(outer: &CommonArgs, action: SovereigntyAction) -> anyhow::Result<()> {
    let SovereigntyAction::Report { format, common } = action;
    let how = Start {
        logging: Logging::Off,
        ..Start::LOGGED
    };
    let config = start(&merge(outer, &common), how)?.config;
    // The policy check is pure: it reads the configuration and environment.
    let mut report = kastell::app::sovereignty_report(&config);
    // Who holds each tenant's key asks the index and the key holders: without
    // them the rest of the report still stands.
    if let Err(error) = kastell::app::add_tenant_keys(&config, &mut report) {
        eprintln!("(tenant keys not listed: {error:#})");
    }
    match format {
        ReportFormat::Text => print!("{report}"),
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    if report.violations.is_empty() {
        Ok(())
    } else {
        Err(kastell::sovereignty::Refusal(report.violations).into())
    }
}
