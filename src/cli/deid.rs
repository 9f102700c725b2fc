//! `kastell deidentify`: DICOM files in, de-identified files out, keyed by a
//! secret file or by a tenant's project (the same UIDs and pseudonyms as its
//! de-identified retrievals).

use std::path::PathBuf;

use clap::Args;
use kastell::dicom::deid::Profile;

use super::projects::parse_profile_flags;
use super::startup::{start, tokio_runtime, Start};
use super::{merge, CommonArgs};

#[derive(Args, Debug)]
pub struct DeidArgs {
    /// A DICOM file, or a directory of them.
    pub input: PathBuf,
    /// Where the de-identified file (or tree) goes.
    pub output: PathBuf,
    /// The secret (at least 32 bytes, readable by its owner only): it keys the
    /// UID mapping, the pseudonyms and the date offsets.
    #[arg(long, conflicts_with = "project")]
    pub secret_file: Option<PathBuf>,
    /// De-identify as project <PROJECT> of --tenant does (its profile and
    /// secret; see `kastell projects`).
    #[arg(long, requires = "tenant")]
    pub project: Option<String>,
    #[arg(long)]
    pub tenant: Option<String>,
    /// An option of the profile (repeatable): retain-safe-private, retain-uids,
    /// retain-device-identity, retain-institution-identity,
    /// retain-patient-characteristics, retain-longitudinal-full-dates,
    /// retain-longitudinal-modified-dates, clean-descriptors,
    /// clean-structured-content, clean-graphics. With --secret-file only.
    #[arg(long = "option")]
    pub options: Vec<String>,
    /// A private attribute kept under retain-safe-private, as
    /// `<private creator>:<element low byte in hex>` (repeatable).
    #[arg(long = "safe-private")]
    pub safe_private: Vec<String>,
    /// A region blanked in every frame of images that may carry burned-in text
    /// (BurnedInAnnotation YES, ultrasound, secondary capture), as
    /// `x,y,width,height` in pixels (repeatable). Without one, such images are
    /// excluded; compressed ones always are.
    #[arg(long = "blank-region")]
    pub blank_regions: Vec<String>,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub fn run(outer: &CommonArgs, args: DeidArgs) -> anyhow::Result<()> {
    let report = match (&args.secret_file, &args.project, &args.tenant) {
        (Some(secret_file), None, _) => {
            let secret = kastell::custody::read_secret_file(secret_file)?;
            if secret.len() < 32 {
                anyhow::bail!("the secret must be at least 32 bytes");
            }
            let flags =
                parse_profile_flags(&args.options, &args.safe_private, &args.blank_regions)?;
            let mut profile = Profile::new(&secret, flags.options);
            profile.safe_private = flags.safe_private;
            profile.blank_regions = flags.blank_regions;
            kastell::ops::deid::deidentify_tree(&args.input, &args.output, &profile)?
        }
        (None, Some(project), Some(tenant)) => {
            if !(args.options.is_empty()
                && args.safe_private.is_empty()
                && args.blank_regions.is_empty())
            {
                anyhow::bail!("a project's profile is its own: no --option, --safe-private or --blank-region with --project");
            }
            let config = start(&merge(outer, &args.common), Start::LOGGED)?.config;
            let project = tokio_runtime()?
                .block_on(kastell::ops::projects::open(&config, tenant, project))?;
            kastell::ops::deid::deidentify_tree(&args.input, &args.output, &project.profile)?
        }
        _ => anyhow::bail!("give --secret-file, or --project with --tenant"),
    };
    println!(
        "{} files de-identified, {} excluded, {} failed",
        report.done,
        report.excluded.len(),
        report.failed.len()
    );
    for (file, reason) in &report.excluded {
        println!("  excluded {}: {reason}", file.display());
    }
    for (file, error) in &report.failed {
        println!("  failed {}: {error}", file.display());
    }
    Ok(())
}
