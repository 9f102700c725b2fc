//! `kastell tenants add`: registers a tenant with its key-encryption key and its
//! own index.

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
