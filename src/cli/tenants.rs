//! `kastell tenants`: add, list, disable and enable tenants.

use clap::Subcommand;

use super::startup::{start, Start};
use super::{merge, CommonArgs};

#[derive(Subcommand, Debug)]
pub enum TenantsAction {
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

pub fn run(outer: &CommonArgs, action: TenantsAction) -> anyhow::Result<()> {
    match action {
        TenantsAction::Add {
            name,
            display_name,
            common,
        } => add(&merge(outer, &common), &name, display_name),
        TenantsAction::List(common) => list(&merge(outer, &common)),
        TenantsAction::Disable { name, common } => set_status(&merge(outer, &common), &name, false),
        TenantsAction::Enable { name, common } => set_status(&merge(outer, &common), &name, true),
    }
}

fn add(common: &CommonArgs, name: &str, display_name: Option<String>) -> anyhow::Result<()> {
    let config = start(common, Start::writing("add a tenant"))?.config;
    let display = display_name.unwrap_or_else(|| name.to_string());
    let added = kastell::ops::tenants::add_tenant(&config, name, &display)?;
    println!(
        "tenant {name} {}; served at /tenants/{name}{}",
        if added { "added" } else { "already registered" },
        config.dicomweb.path_prefix
    );
    Ok(())
}

fn list(common: &CommonArgs) -> anyhow::Result<()> {
    let config = start(common, Start::LOGGED)?.config;
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

fn set_status(common: &CommonArgs, name: &str, active: bool) -> anyhow::Result<()> {
    let config = start(common, Start::LOGGED)?.config;
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
