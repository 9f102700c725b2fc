//! The `kastell` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use kastell::config::{Config, Overrides};

#[derive(Parser, Debug)]
#[command(name = "kastell", version, about = "A sovereign DICOMweb archive")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve DICOMweb (the default).
    Serve(ServeArgs),
    /// Create or upgrade the index schema, then exit.
    Migrate(CommonArgs),
    /// Print the effective configuration, secrets redacted.
    Config(ServeArgs),
    /// Manage tenants: each has its own index and key-encryption key.
    Tenants {
        #[command(subcommand)]
        action: TenantsAction,
    },
    /// Manage tenant keys.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Manage static API keys (for modalities and scripts).
    Apikeys {
        #[command(subcommand)]
        action: ApiKeysAction,
    },
    /// Decrypt every indexed blob end to end and report failures and orphaned blobs.
    Verify(CommonArgs),
    /// Check or export the audit trail.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// The jurisdiction policy: where each kind of data sits and under whose law.
    Sovereignty {
        #[command(subcommand)]
        action: SovereigntyAction,
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

#[derive(Subcommand, Debug)]
enum TenantsAction {
    /// Register a tenant: makes its key and its index; served at
    /// /tenants/NAME/dicomweb.
    Add {
        /// Lower-case letters, digits and dashes.
        name: String,
        #[arg(long)]
        display_name: Option<String>,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// List the registered tenants.
    List(CommonArgs),
    /// Stop serving a tenant (its data is kept; requests answer 403).
    Disable {
        name: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Serve a disabled tenant again.
    Enable {
        name: String,
        #[command(flatten)]
        common: CommonArgs,
    },
}

#[derive(Subcommand, Debug)]
enum KeysAction {
    /// Make a new key version for a tenant and re-wrap its data keys (images are not
    /// re-encrypted); older versions stay readable.
    Rotate {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Destroy one superseded key version once no object uses it any more.
    Retire {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        version: u32,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Destroy every key of a tenant: its images become unreadable for good
    /// (crypto-shredding, the GDPR erasure path). Asks for --yes.
    Shred {
        #[arg(long)]
        tenant: String,
        /// Confirm that the data is to be destroyed.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        common: CommonArgs,
    },
}

#[derive(Subcommand, Debug)]
enum SovereigntyAction {
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

#[derive(Subcommand, Debug)]
enum ApiKeysAction {
    /// Make a key and print it, once: only its hash is stored. Send it as
    /// `Authorization: ApiKey <key>` (or `Bearer <key>`).
    Add {
        /// Tenant the key acts on, or * for every tenant.
        #[arg(long)]
        tenant: String,
        /// What the key is for, e.g. the modality's AE title.
        #[arg(long)]
        name: String,
        /// Comma-separated: read, write, delete, admin, or * for all.
        #[arg(long)]
        permissions: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// List the keys (never the keys themselves, nor their hashes).
    List {
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Revoke a key; running servers refuse it within auth.api_key_cache_secs.
    Revoke {
        /// The id shown by `kastell apikeys list`.
        id: i64,
        #[command(flatten)]
        common: CommonArgs,
    },
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
enum ReportFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum AuditAction {
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
enum AuditFormat {
    /// DICOM PS3.15 A.5 audit messages (IHE ATNA), XML.
    Atna,
    /// FHIR R4 Bundle of AuditEvent resources, JSON.
    Fhir,
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

/// The jurisdiction policy for a command that writes personal data or keys
/// (`serve` checks it itself): it refuses, naming every violation, before
/// anything is opened. Commands that only read, and the erasure paths (retire,
/// shred), are not held back by it.
fn enforce_sovereignty(config: &Config, what: &str) -> anyhow::Result<()> {
    kastell::app::enforce_sovereignty(config)
        .map(drop)
        .with_context(|| format!("kastell refuses to {what}"))
}

fn load(common: &CommonArgs, listen: Option<SocketAddr>) -> anyhow::Result<Config> {
    let overrides = Overrides {
        listen,
        data_dir: common.data_dir.clone(),
        blob_url: common.blob_url.clone(),
        index_url: common.index_url.clone(),
    };
    Config::load(common.config.as_deref(), &overrides).context("loading the configuration")
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

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve(ServeArgs::default()));
    match command {
        Command::Serve(args) => {
            let config = load(&merge(&cli.common, &args.common), args.listen)?;
            let telemetry = kastell::telemetry::init_server(&config.log, &config.telemetry)?;
            let served = actix_web::rt::System::new().block_on(kastell::app::run(config));
            // After the runtime: flushing blocks until the exporters' threads are done.
            telemetry.shutdown();
            served
        }
        Command::Migrate(args) => {
            let config = load(&merge(&cli.common, &args), None)?;
            kastell::telemetry::init(&config.log);
            enforce_sovereignty(&config, "migrate the index")?;
            let applied = kastell::index::Index::migrate(&config.effective_index_url())?;
            if applied.is_empty() {
                println!("the index schema is up to date");
            }
            for name in applied {
                println!("applied {name}");
            }
            Ok(())
        }
        Command::Config(args) => {
            let config = load(&merge(&cli.common, &args.common), args.listen)?;
            print!("{}", config.to_redacted_toml());
            Ok(())
        }
        Command::Tenants {
            action:
                TenantsAction::Add {
                    name,
                    display_name,
                    common,
                },
        } => {
            let config = load(&merge(&cli.common, &common), None)?;
            kastell::telemetry::init(&config.log);
            enforce_sovereignty(&config, "add a tenant")?;
            let display = display_name.unwrap_or_else(|| name.clone());
            let added = kastell::app::add_tenant(&config, &name, &display)?;
            println!(
                "tenant {name} {}; served at /tenants/{name}{}",
                if added { "added" } else { "already registered" },
                config.dicomweb.path_prefix
            );
            Ok(())
        }
        Command::Tenants {
            action: TenantsAction::List(common),
        } => {
            let config = load(&merge(&cli.common, &common), None)?;
            kastell::telemetry::init(&config.log);
            let index = kastell::app::open_index(&config)?;
            println!(
                "{:<24} {:<9} {:<28} display name",
                "tenant", "status", "created"
            );
            println!(
                "{:<24} {:<9} {:<28} (default tenant)",
                config.keys.default_tenant, "active", "-"
            );
            for row in index.tenants()? {
                println!(
                    "{:<24} {:<9} {:<28} {}",
                    row.name, row.status, row.created_at, row.display_name
                );
            }
            Ok(())
        }
        Command::Tenants {
            action: TenantsAction::Disable { name, common },
        } => set_tenant_status(&merge(&cli.common, &common), &name, false),
        Command::Tenants {
            action: TenantsAction::Enable { name, common },
        } => set_tenant_status(&merge(&cli.common, &common), &name, true),
        Command::Keys {
            action: KeysAction::Rotate { tenant, common },
        } => {
            let config = load(&merge(&cli.common, &common), None)?;
            kastell::telemetry::init(&config.log);
            enforce_sovereignty(&config, "rotate a key")?;
            let report =
                tokio_runtime()?.block_on(kastell::app::rotate_tenant_key(&config, &tenant))?;
            println!(
                "tenant {tenant}: new key {}; {} data keys re-wrapped, {} already current, {} failed",
                report.new_key,
                report.rewrapped,
                report.already_current,
                report.failed.len()
            );
            for (blob, error) in &report.failed {
                println!("  failed {blob}: {error}");
            }
            if report.failed.is_empty() {
                Ok(())
            } else {
                anyhow::bail!("some data keys were not re-wrapped; run the rotation again")
            }
        }
        Command::Keys {
            action:
                KeysAction::Retire {
                    tenant,
                    version,
                    common,
                },
        } => {
            let config = load(&merge(&cli.common, &common), None)?;
            kastell::telemetry::init(&config.log);
            let checked = tokio_runtime()?
                .block_on(kastell::app::retire_tenant_key(&config, &tenant, version))?;
            println!("tenant {tenant}: key version {version} destroyed ({checked} objects checked, none used it)");
            Ok(())
        }
        Command::Keys {
            action:
                KeysAction::Shred {
                    tenant,
                    yes,
                    common,
                },
        } => {
            let config = load(&merge(&cli.common, &common), None)?;
            kastell::telemetry::init(&config.log);
            if !yes {
                anyhow::bail!(
                    "shredding destroys every image of tenant {tenant} for good; repeat with --yes"
                );
            }
            let erased = tokio_runtime()?.block_on(kastell::app::shred_tenant(&config, &tenant))?;
            println!(
                "tenant {tenant}: every key destroyed; its images can no longer be read; \
                 {} studies ({} instances) erased from the index, their UIDs kept for 410 Gone",
                erased.studies, erased.instances
            );
            Ok(())
        }
        Command::Generate {
            studies,
            series_per_study,
            instances_per_series,
            seed,
            common,
        } => {
            let config = load(&merge(&cli.common, &common), None)?;
            kastell::telemetry::init(&config.log);
            enforce_sovereignty(&config, "generate an index")?;
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
        Command::Sovereignty {
            action: SovereigntyAction::Report { format, common },
        } => {
            let config = load(&merge(&cli.common, &common), None)?;
            // Pure: reads the configuration and environment, opens no backend.
            let report = kastell::app::sovereignty_report(&config);
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
        Command::Apikeys { action } => api_keys(&cli.common, action),
        Command::Audit {
            action: AuditAction::Verify { anchor, common },
        } => {
            let config = load(&merge(&cli.common, &common), None)?;
            kastell::telemetry::init(&config.log);
            let anchor = anchor.as_deref().map(str::parse).transpose()?;
            let index = kastell::app::open_index(&config)?;
            let report = kastell::app::verify_audit(&config, &index, anchor)?;
            print!("{report}");
            match report.first_broken() {
                None => Ok(()),
                Some(seq) => anyhow::bail!("the audit trail is broken at seq {seq}"),
            }
        }
        Command::Audit {
            action:
                AuditAction::Export {
                    since,
                    format,
                    output,
                    common,
                },
        } => {
            use kastell::audit::{self, Action, AuditEvent, ExportFormat, Outcome};
            let config = load(&merge(&cli.common, &common), None)?;
            kastell::telemetry::init(&config.log);
            let since = audit::parse_since(&since)?;
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
            kastell::app::append_audit(&config, &index, &[event])
                .context("recording the export in the audit trail")?;
            if let Some(path) = output {
                println!("{count} audit events written to {}", path.display());
            }
            Ok(())
        }
        Command::Import {
            dir,
            tenant,
            jobs,
            format,
            common,
        } => import(
            &merge(&cli.common, &common),
            &dir,
            tenant.as_deref(),
            jobs,
            format,
        ),
        Command::Stats {
            format,
            blobs,
            common,
        } => {
            let config = load(&merge(&cli.common, &common), None)?;
            kastell::telemetry::init(&config.log);
            let report = tokio_runtime()?.block_on(kastell::app::stats(&config, blobs))?;
            match format {
                ReportFormat::Text => print!("{report}"),
                ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            }
            Ok(())
        }
        Command::Verify(args) => {
            let config = load(&merge(&cli.common, &args), None)?;
            kastell::telemetry::init(&config.log);
            let report = tokio_runtime()?.block_on(kastell::app::verify(&config))?;
            println!(
                "{} indexed blobs checked, {} failed, {} orphaned blobs",
                report.checked,
                report.failed.len(),
                report.orphans.len()
            );
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
    }
}

fn import(
    common: &CommonArgs,
    dir: &std::path::Path,
    tenant: Option<&str>,
    jobs: Option<usize>,
    format: ReportFormat,
) -> anyhow::Result<()> {
    let mut config = load(common, None)?;
    // The summary says what happened to every file; the pipeline's per-file
    // info lines would only tear through the progress bar.
    if config.log.level == "info" {
        config.log.level = "warn".into();
    }
    kastell::telemetry::init(&config.log);
    enforce_sovereignty(&config, "import")?;
    let jobs = jobs.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
    });
    let progress = std::sync::Arc::new(kastell::ops::progress::TerminalProgress::stderr());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(jobs.max(1))
        .enable_all()
        .build()?;
    let report = runtime.block_on(kastell::app::import(
        &config,
        dir,
        tenant,
        jobs,
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
        kastell::app::append_audit(&config, &index, &[event])
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

fn set_tenant_status(common: &CommonArgs, name: &str, active: bool) -> anyhow::Result<()> {
    let config = load(common, None)?;
    kastell::telemetry::init(&config.log);
    if name == config.keys.default_tenant {
        anyhow::bail!("the default tenant cannot be disabled");
    }
    let index = kastell::app::open_index(&config)?;
    if !index.set_tenant_status(name, active)? {
        anyhow::bail!("no tenant {name}; `kastell tenants list` shows them");
    }
    println!(
        "tenant {name} {} (running servers notice within seconds)",
        if active { "enabled" } else { "disabled" }
    );
    Ok(())
}

fn api_keys(outer: &CommonArgs, action: ApiKeysAction) -> anyhow::Result<()> {
    let common = match &action {
        ApiKeysAction::Add { common, .. }
        | ApiKeysAction::List { common }
        | ApiKeysAction::Revoke { common, .. } => merge(outer, common),
    };
    let config = load(&common, None)?;
    kastell::telemetry::init(&config.log);
    let index = kastell::app::open_index(&config)?;
    match action {
        ApiKeysAction::Add {
            tenant,
            name,
            permissions,
            ..
        } => {
            let made = kastell::auth::create_api_key(&index, &name, &tenant, &permissions)?;
            eprintln!(
                "API key {} ({name}) for tenant {tenant}. It is shown this once and cannot be recovered:",
                made.id
            );
            println!("{}", made.key.as_str());
        }
        ApiKeysAction::List { .. } => {
            let keys = kastell::auth::list_api_keys(&index)?;
            if keys.is_empty() {
                println!("no API keys");
            }
            for key in keys {
                let state = match &key.revoked_at {
                    Some(at) => format!("revoked {at}"),
                    None => "active".to_string(),
                };
                println!(
                    "{}\t{}\ttenant={}\tpermissions={}\tcreated {}\t{state}",
                    key.id, key.name, key.tenant, key.permissions, key.created_at
                );
            }
        }
        ApiKeysAction::Revoke { id, .. } => {
            if !kastell::auth::revoke_api_key(&index, id)? {
                anyhow::bail!("no active API key with id {id}");
            }
            println!(
                "API key {id} revoked; running servers refuse it within {} s",
                config.auth.api_key_cache_secs
            );
        }
    }
    Ok(())
}
