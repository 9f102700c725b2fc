//! `kastell tenants add`: registers a tenant with its key-encryption key and its
//! own index; the walk over every tenant's index the reports share.

use anyhow::Context;

use crate::app::{index_options, open_index, tenant_key_ring};
use crate::config::Config;
use crate::index::Index;

/// Registers a tenant: its entry in the control index, its key-encryption key and
/// its own index. `false` when it was registered already (nothing changes).
pub fn add_tenant(config: &Config, name: &str, display_name: &str) -> anyhow::Result<bool> {
    if name == config.keys.default_tenant {
        anyhow::bail!("{name} is the default tenant; it always exists");
    }
    let control = open_index(config)?;
    let added = control.add_tenant(name, display_name)?;
    let ring = tenant_key_ring(config, &control)?;
    ring.ensure_tenant(name)
        .with_context(|| format!("making the key of tenant {name}"))?;
    Index::open_tenant(
        &config.effective_index_url(),
        name,
        index_options(2, config),
    )
    .with_context(|| format!("creating the index of tenant {name}"))?;
    Ok(added)
}

/// A tenant's index, as the reports over every tenant walk them.
pub struct TenantIndex {
    pub name: String,
    /// `active` or `disabled`.
    pub status: String,
    pub index: Index,
}

/// The index of every tenant, the default tenant's (the control index) first,
/// then the registered ones by name.
pub fn tenant_indexes(config: &Config) -> anyhow::Result<Vec<TenantIndex>> {
    let control_url = config.effective_index_url();
    let control = open_index(config)?;
    let options = index_options(2, config);
    let mut indexes = vec![TenantIndex {
        name: config.keys.default_tenant.clone(),
        status: "active".to_string(),
        index: control.clone(),
    }];
    for row in control.tenants()? {
        if row.name == config.keys.default_tenant {
            continue;
        }
        let index = Index::open_tenant(&control_url, &row.name, options)
            .with_context(|| format!("opening the index of tenant {}", row.name))?;
        indexes.push(TenantIndex {
            name: row.name,
            status: row.status,
            index,
        });
    }
    Ok(indexes)
}
