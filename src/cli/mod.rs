//! The `kastell` command line: the commands and their flags (clap), and the
//! dispatch to one file per command group. Every command starts through
//! [`startup::start`].
//!
//! A module of the binary, not of the library: it parses the process's
//! arguments, prints and picks exit codes, which nothing else should call; the
//! library stays what tests and other programs use.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

mod apikeys;
mod audit;
mod deid;
mod events;
mod export;
mod import;
mod index;
mod keys;
mod lifecycle;
mod projects;
mod serve;
mod sovereignty;
mod startup;
mod tenants;
mod worker;

#[derive(Parser, Debug)]
#[command(name = "kastell", version, about = "A sovereign DICOMweb archive")]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve DICOMweb (the default).
    Serve(ServeArgs),
    /// Take jobs from the broker's work queue (events.nats.url) until stopped.
    Worker(ServeArgs),
    /// Create or upgrade the index schema, then exit.
    Migrate(CommonArgs),
    /// Print the effective configuration, secrets redacted.
    Config(ServeArgs),
    /// Manage tenants: each has its own index and key-encryption key.
    Tenants {
        #[command(subcommand)]
        action: tenants::TenantsAction,
    },
    /// Manage tenant keys.
    Keys {
        #[command(subcommand)]
        action: keys::KeysAction,
    },
    /// Retention and legal holds: what may be deleted when, holds, releases.
    Lifecycle {
        #[command(subcommand)]
        action: lifecycle::LifecycleAction,
    },
    /// Manage static API keys (for modalities and scripts).
    Apikeys {
        #[command(subcommand)]
        action: apikeys::ApiKeysAction,
    },
    /// Decrypt every indexed blob end to end and report failures and orphaned blobs.
    Verify(CommonArgs),
    /// De-identify DICOM files (PS3.15 Annex E, Basic Profile and options) into
    /// new files: UIDs mapped consistently under the project's secret.
    Deidentify(deid::DeidArgs),
    /// De-identified exports to another tenant or an export store, as
    /// resumable jobs.
    Export {
        #[command(subcommand)]
        action: export::ExportAction,
    },
    /// De-identification projects: make, list, choose the research project,
    /// re-identify (an administrator's, audited).
    Projects {
        #[command(subcommand)]
        action: projects::ProjectsAction,
    },
    /// Check or export the audit trail.
    Audit {
        #[command(subcommand)]
        action: audit::AuditAction,
    },
    /// Events: the change feed's sinks (webhooks, the broker) and their dead letters.
    Events {
        #[command(subcommand)]
        action: events::EventsAction,
    },
    /// The jurisdiction policy: where each kind of data sits and under whose law.
    Sovereignty {
        #[command(subcommand)]
        action: sovereignty::SovereigntyAction,
    },
    /// Fill the index with synthetic studies for scale tests and benches (index rows
    /// only, no blobs: such an index is for searching, not retrieval).
    Generate {
        #[arg(long, default_value_t = 100_000)]
        studies: u64,
        #[arg(long, default_value_t = 2)]
        series_per_study: u64,
        #[arg(long, default_value_t = 5)]
        instances_per_series: u64,
        /// Varies names, dates and UIDs; runs with different seeds add up.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Store every DICOM file under a directory, through the STOW-RS pipeline.
    ///
    /// Recursive; files with or without the 128-byte preamble, a bare file meta
    /// group or a bare data set. DICOMDIRs and non-DICOM files are skipped. Run it
    /// again to resume: nothing is stored twice. Exits non-zero when a file failed.
    Import {
        /// The directory to import.
        dir: PathBuf,
        /// Tenant to store into (default: keys.default_tenant).
        #[arg(long)]
        tenant: Option<String>,
        /// Files imported in parallel (default: one per core).
        #[arg(long)]
        jobs: Option<usize>,
        /// At most this many files a second, over all jobs: an import beside a
        /// live server leaves its readers room. (Lower its CPU and disk priority
        /// too with `nice -n 19 ionice -c 3 kastell import …`.)
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        rate: Option<u32>,
        /// The summary as text, or as JSON for scripts.
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Counts and sizes per tenant and backend.
    ///
    /// Studies, series, instances, bytes of instances and derived objects per
    /// tenant, from the indexes; the index and blob store URLs (redacted).
    Stats {
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
        /// Also list the blob store to count its objects and stored bytes (one
        /// LIST request per thousand objects on a cloud store).
        #[arg(long)]
        blobs: bool,
        #[command(flatten)]
        common: CommonArgs,
    },
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
enum ReportFormat {
    Text,
    Json,
}

#[derive(Args, Debug, Default, Clone)]
struct CommonArgs {
    /// TOML configuration file.
    #[arg(long, global = true, env = "KASTELL_CONFIG")]
    config: Option<PathBuf>,
    /// Directory of the embedded SQLite index and local blob store.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Index database URL, e.g. sqlite:///var/lib/kastell/index.sqlite.
    #[arg(long, global = true)]
    index_url: Option<String>,
    /// Blob store URL, e.g. file:///var/lib/kastell/blobs or memory://.
    #[arg(long, global = true)]
    blob_url: Option<String>,
}

#[derive(Args, Debug, Default, Clone)]
struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:8080.
    #[arg(long)]
    listen: Option<SocketAddr>,
    #[command(flatten)]
    common: CommonArgs,
}

/// Flags may come before or after the subcommand; the later one wins.
fn merge(outer: &CommonArgs, inner: &CommonArgs) -> CommonArgs {
    CommonArgs {
        config: inner.config.clone().or_else(|| outer.config.clone()),
        data_dir: inner.data_dir.clone().or_else(|| outer.data_dir.clone()),
        index_url: inner.index_url.clone().or_else(|| outer.index_url.clone()),
        blob_url: inner.blob_url.clone().or_else(|| outer.blob_url.clone()),
    }
}

/// Runs the command `cli` names (`serve` when none).
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let outer = &cli.common;
    match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => serve::serve(&merge(outer, &args.common), args.listen),
        Command::Worker(args) => worker::worker(&merge(outer, &args.common)),
        Command::Migrate(args) => index::migrate(&merge(outer, &args)),
        Command::Config(args) => serve::print_config(&merge(outer, &args.common), args.listen),
        Command::Tenants { action } => tenants::run(outer, action),
        Command::Keys { action } => keys::run(outer, action),
        Command::Apikeys { action } => apikeys::run(outer, action),
        Command::Lifecycle { action } => lifecycle::run(outer, action),
        Command::Verify(args) => index::verify(&merge(outer, &args)),
        Command::Deidentify(args) => deid::run(outer, args),
        Command::Projects { action } => projects::run(outer, action),
        Command::Export { action } => export::run(outer, action),
        Command::Audit { action } => audit::run(outer, action),
        Command::Events { action } => events::run(outer, action),
        Command::Sovereignty { action } => sovereignty::run(outer, action),
        Command::Generate {
            studies,
            series_per_study,
            instances_per_series,
            seed,
            common,
        } => index::generate(
            &merge(outer, &common),
            studies,
            series_per_study,
            instances_per_series,
            seed,
        ),
        Command::Import {
            dir,
            tenant,
            jobs,
            rate,
            format,
            common,
        } => import::import(
            &merge(outer, &common),
            &dir,
            tenant.as_deref(),
            jobs,
            rate,
            format,
        ),
        Command::Stats {
            format,
            blobs,
            common,
        } => index::stats(&merge(outer, &common), format, blobs),
    }
}
