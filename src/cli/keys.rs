//! `kastell keys`: rotate, retire and shred tenant keys.

use clap::Subcommand;

use super::startup::{start, tokio_runtime, Start};
use super::{merge, CommonArgs};

#[derive(Subcommand, Debug)]
pub enum KeysAction {
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

pub fn run(outer: &CommonArgs, action: KeysAction) -> anyhow::Result<()> {
    match action {
        KeysAction::Rotate { tenant, common } => rotate(&merge(outer, &common), &tenant),
        KeysAction::Retire {
            tenant,
            version,
            common,
        } => retire(&merge(outer, &common), &tenant, version),
        KeysAction::Shred {
            tenant,
            yes,
            common,
        } => shred(&merge(outer, &common), &tenant, yes),
    }
}

fn rotate(common: &CommonArgs, tenant: &str) -> anyhow::Result<()> {
    let config = start(common, Start::writing("rotate a key"))?.config;
    let report =
        tokio_runtime()?.block_on(kastell::ops::keys::rotate_tenant_key(&config, tenant))?;
    println!(
        "tenant {tenant}: new key {}; {} data keys re-wrapped, {} already current, {} metadata records re-wrapped, {} failed",
        report.new_key,
        report.rewrapped,
        report.already_current,
        report.records_rewrapped,
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

fn retire(common: &CommonArgs, tenant: &str, version: u32) -> anyhow::Result<()> {
    let config = start(common, Start::LOGGED)?.config;
    let checked = tokio_runtime()?.block_on(kastell::ops::keys::retire_tenant_key(
        &config, tenant, version,
    ))?;
    println!("tenant {tenant}: key version {version} destroyed ({checked} objects checked, none used it)");
    Ok(())
}

fn shred(common: &CommonArgs, tenant: &str, yes: bool) -> anyhow::Result<()> {
    let config = start(common, Start::LOGGED)?.config;
    if !yes {
        anyhow::bail!(
            "shredding destroys every image of tenant {tenant} for good; repeat with --yes"
        );
    }
    let erased = tokio_runtime()?.block_on(kastell::ops::keys::shred_tenant(&config, tenant))?;
    println!(
        "tenant {tenant}: every key destroyed; its images can no longer be read; \
         {} studies ({} instances) erased from the index, their UIDs kept for 410 Gone",
        erased.studies, erased.instances
    );
    Ok(())
}
