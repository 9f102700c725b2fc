//! `kastell deidentify`: DICOM files in, de-identified files out.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::Args;
use kastell::dicom::deid::{Profile, ProfileOption};

#[derive(Args, Debug)]
pub struct DeidArgs {
    /// A DICOM file, or a directory of them.
    pub input: PathBuf,
    /// Where the de-identified file (or tree) goes.
    pub output: PathBuf,
    /// The project's secret (at least 32 bytes, mode 600): it keys the UID
    /// mapping, the pseudonyms and the date offsets.
    #[arg(long)]
    pub secret_file: PathBuf,
    /// An option of the profile (repeatable): retain-safe-private, retain-uids,
    /// retain-device-identity, retain-institution-identity,
    /// retain-patient-characteristics, retain-longitudinal-full-dates,
    /// retain-longitudinal-modified-dates, clean-descriptors,
    /// clean-structured-content, clean-graphics.
    #[arg(long = "option")]
    pub options: Vec<String>,
    /// A private attribute kept under retain-safe-private, as
    /// `<private creator>:<element low byte in hex>` (repeatable).
    #[arg(long = "safe-private")]
    pub safe_private: Vec<String>,
}

pub fn run(args: DeidArgs) -> anyhow::Result<()> {
    let secret = std::fs::read(&args.secret_file)?;
    if secret.len() < 32 {
        anyhow::bail!("the secret must be at least 32 bytes");
    }
    let mut options = BTreeSet::new();
    for option in &args.options {
        options.insert(
            ProfileOption::parse(option)
                .ok_or_else(|| anyhow::anyhow!("unknown option {option:?}"))?,
        );
    }
    let mut profile = Profile::new(&secret, options);
    for safe in &args.safe_private {
        let (creator, element) = safe
            .rsplit_once(':')
            .ok_or_else(|| anyhow::anyhow!("--safe-private is <creator>:<hex byte>"))?;
        let element = u8::from_str_radix(element, 16)
            .map_err(|_| anyhow::anyhow!("--safe-private {safe:?}: the element is a hex byte"))?;
        profile.safe_private.push((creator.to_string(), element));
    }
    let (done, failed) = kastell::ops::deid::deidentify_tree(&args.input, &args.output, &profile)?;
    println!("{done} files de-identified, {} failed", failed.len());
    for (file, error) in &failed {
        println!("  failed {}: {error}", file.display());
    }
    Ok(())
}
