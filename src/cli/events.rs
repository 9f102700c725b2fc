//! `kastell events status`: the change feed, the sinks and the dead letters of
//! every tenant.

use clap::Subcommand;

use super::startup::{start, Start};
use super::{merge, CommonArgs, ReportFormat};

#[derive(Subcommand, Debug)]
pub enum EventsAction {
    /// For every tenant: the latest change number, the studies waiting to
    /// become stable, each sink's cursor, backlog, lease and last error, and
    /// the events sinks gave up on (dead letters). Exits 0 whatever it shows.
    Status {
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
        #[command(flatten)]
        common: CommonArgs,
    },
}

pub fn run(outer: &CommonArgs, action: EventsAction) -> anyhow::Result<()> {
    let EventsAction::Status { format, common } = action;
    let config = start(&merge(outer, &common), Start::LOGGED)?.config;
    let status = kastell::ops::events::status(&config)?;
    match format {
        ReportFormat::Text => print!("{status}"),
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&status)?),
    }
    Ok(())
}
