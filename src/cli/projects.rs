//! `kastell projects`: de-identification projects — make, list, choose the
//! research project, and the administrator's audited re-identification lookup.

use clap::Subcommand;
use kastell::dicom::deid::{parse_safe_private, PixelRegion, ProfileOption};
use kastell::service::deid::{ProjectSpec, Reidentification};

use super::keys::admin_key;
use super::startup::{start, tokio_runtime, Start};
use super::{merge, CommonArgs};

#[derive(Subcommand, Debug)]
pub enum ProjectsAction {
    /// Make a project: a profile and a new secret (wrapped by the tenant's key)
    /// that keys its UID mapping, pseudonyms and date offsets.
    Create {
        name: String,
        #[arg(long)]
        tenant: String,
        /// An option of the profile (repeatable), as for `kastell deidentify`.
        #[arg(long = "option")]
        options: Vec<String>,
        /// A private attribute kept under retain-safe-private,
        /// `<private creator>:<hex byte>` (repeatable).
        #[arg(long = "safe-private")]
        safe_private: Vec<String>,
        /// A region blanked in images that may carry burned-in text,
        /// `x,y,width,height` (repeatable); without one they are excluded.
        #[arg(long = "blank-region")]
        blank_regions: Vec<String>,
        /// `audited` (what is handed out is recorded; an administrator can look
        /// it up, audited) or `impossible` (nothing is recorded).
        #[arg(long, default_value = "impossible")]
        reidentification: String,
        /// Serve callers with only the research permission through it (it must
        /// be `audited`).
        #[arg(long)]
        research: bool,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// List a tenant's projects.
    List {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Serve callers with only the research permission through project <NAME>.
    Research {
        name: String,
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// What <VALUE>, a UID or pseudonymous PatientID project <PROJECT> handed
    /// out, stands for. An administrator's (--admin-key-file or
    /// KASTELL_ADMIN_KEY); audited.
    Reidentify {
        project: String,
        value: String,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        admin_key_file: Option<std::path::PathBuf>,
        #[command(flatten)]
        common: CommonArgs,
    },
}

/// A profile as the flags give it.
pub struct ProfileFlags {
    pub options: std::collections::BTreeSet<ProfileOption>,
    pub safe_private: Vec<(String, u8)>,
    pub blank_regions: Vec<PixelRegion>,
}

/// Parses the profile flags shared by `projects create` and `deidentify`.
pub fn parse_profile_flags(
    options: &[String],
    safe_private: &[String],
    blank_regions: &[String],
) -> anyhow::Result<ProfileFlags> {
    let options = options
        .iter()
        .map(|o| ProfileOption::parse(o).ok_or_else(|| anyhow::anyhow!("unknown option {o:?}")))
        .collect::<anyhow::Result<_>>()?;
    let safe_private = safe_private
        .iter()
        .map(|s| {
            parse_safe_private(s).ok_or_else(|| {
                anyhow::anyhow!("--safe-private {s:?} is <private creator>:<hex byte>")
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let blank_regions = blank_regions
        .iter()
        .map(|r| {
            PixelRegion::parse(r).ok_or_else(|| {
                anyhow::anyhow!("--blank-region {r:?} is x,y,width,height in pixels")
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(ProfileFlags {
        options,
        safe_private,
        blank_regions,
    })
}

pub fn run(outer: &CommonArgs, action: ProjectsAction) -> anyhow::Result<()> {
    match action {
        ProjectsAction::Create {
            name,
            tenant,
            options,
            safe_private,
            blank_regions,
            reidentification,
            research,
            common,
        } => {
            let flags = parse_profile_flags(&options, &safe_private, &blank_regions)?;
            let spec = ProjectSpec {
                name: name.clone(),
                options: flags.options,
                safe_private: flags.safe_private,
                blank_regions: flags.blank_regions,
                reidentification: Reidentification::parse(&reidentification).ok_or_else(|| {
                    anyhow::anyhow!("--reidentification is audited or impossible")
                })?,
                research,
            };
            let config = start(&merge(outer, &common), Start::writing("make a project"))?.config;
            tokio_runtime()?.block_on(kastell::ops::projects::create(&config, &tenant, &spec))?;
            println!("project {name} made for tenant {tenant}");
            Ok(())
        }
        ProjectsAction::List { tenant, common } => {
            let config = start(&merge(outer, &common), Start::LOGGED)?.config;
            for project in
                tokio_runtime()?.block_on(kastell::ops::projects::list(&config, &tenant))?
            {
                println!(
                    "{}{}: options [{}], safe private [{}], blanked regions [{}], \
                     re-identification {}, secret wrapped under tenant key v{}, made {} by {}",
                    project.name,
                    if project.research == 1 {
                        " (research)"
                    } else {
                        ""
                    },
                    project.options,
                    project.safe_private,
                    project.blank_regions,
                    project.reidentification,
                    project.key_version,
                    project.created_at,
                    project.created_by
                );
            }
            Ok(())
        }
        ProjectsAction::Research {
            name,
            tenant,
            common,
        } => {
            let config = start(&merge(outer, &common), Start::writing("choose a project"))?.config;
            tokio_runtime()?.block_on(kastell::ops::projects::choose_research(
                &config, &tenant, &name,
            ))?;
            println!("tenant {tenant}: research callers are served through project {name}");
            Ok(())
        }
        ProjectsAction::Reidentify {
            project,
            value,
            tenant,
            admin_key_file,
            common,
        } => {
            let config = start(&merge(outer, &common), Start::writing("re-identify"))?.config;
            let key = admin_key(admin_key_file)?;
            let found = tokio_runtime()?.block_on(kastell::ops::projects::reidentify(
                &config,
                &tenant,
                &project,
                &value,
                key.as_deref(),
            ))?;
            println!(
                "{} {} stands for {}",
                found.level, found.mapped, found.original
            );
            Ok(())
        }
    }
}
