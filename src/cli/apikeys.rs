//! `kastell apikeys`: make, list and revoke static API keys.

use clap::Subcommand;

use super::startup::{start, Start};
use super::{merge, CommonArgs};

#[derive(Subcommand, Debug)]
pub enum ApiKeysAction {
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

pub fn run(outer: &CommonArgs, action: ApiKeysAction) -> anyhow::Result<()> {
    let common = match &action {
        ApiKeysAction::Add { common, .. }
        | ApiKeysAction::List { common }
        | ApiKeysAction::Revoke { common, .. } => merge(outer, common),
    };
    let config = start(&common, Start::LOGGED)?.config;
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
