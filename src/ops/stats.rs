//! `kastell stats`: what each tenant holds (from its index) and where (the
//! backends, their URLs redacted by `config::redact_url`), as text or JSON.

use std::fmt;

use anyhow::Context;
use indicatif::HumanBytes;
use serde::Serialize;

use crate::app::blob_retries;
use crate::config::{redact_url, Config};
use crate::index::stats::{IndexStats, StoreUsage};
use crate::store::BlobUsage;

/// Counts and sizes per tenant and backend (`kastell stats`), from the indexes
/// alone: no key is needed and nothing is decrypted. With `list_blobs` the blob
/// store is listed too.
pub async fn collect(config: &Config, list_blobs: bool) -> anyhow::Result<StatsReport> {
    use crate::index::conn::Dialect;
    let control_url = config.effective_index_url();
    let indexes = super::tenants::tenant_indexes(config)?;
    // The default tenant's index is the control index.
    let control = indexes
        .first()
        .map(|t| t.index.clone())
        .context("no tenant index")?;
    let mut tenants = Vec::new();
    let mut sqlite_bytes = 0;
    for super::tenants::TenantIndex {
        name,
        status,
        index,
    } in indexes
    {
        let stats = index.stats()?;
        let stores = index
            .usage_by_store()?
            .into_iter()
            .map(|usage| StoreStats::of(config, usage))
            .collect();
        let restores_waiting = index.restores_waiting()?;
        if index.dialect() == Dialect::Sqlite {
            sqlite_bytes += index.database_bytes()?;
        }
        tenants.push(TenantStats {
            name,
            status,
            stats,
            stores,
            restores_waiting,
        });
    }
    let (database, bytes) = match control.dialect() {
        Dialect::Sqlite => ("sqlite", sqlite_bytes),
        // One database holds every tenant's schema.
        Dialect::Postgres => ("postgresql", control.database_bytes()?),
    };
    let blob_url = config.effective_blob_url();
    let listed = if list_blobs {
        let options = config.storage.blob_option_pairs();
        Some(crate::store::usage(&blob_url, &options, blob_retries(config)).await?)
    } else {
        None
    };
    Ok(StatsReport::new(
        IndexBackend {
            url: redact_url(&control_url),
            database,
            bytes,
        },
        BlobBackend {
            url: redact_url(&blob_url),
            listed,
        },
        tenants,
    ))
}

#[derive(Debug, Clone, Serialize)]
pub struct StatsReport {
    pub index: IndexBackend,
    pub blob_store: BlobBackend,
    pub tenants: Vec<TenantStats>,
    /// Every tenant added up.
    pub total: IndexStats,
}

#[derive(Debug, Clone, Serialize)]
pub struct IndexBackend {
    /// The control index's URL, secrets redacted; tenants' indexes sit beside it.
    pub url: String,
    /// `sqlite` or `postgresql`.
    pub database: &'static str,
    /// Bytes the database takes: every tenant's SQLite file, or the PostgreSQL
    /// database that holds every tenant's schema.
    pub bytes: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BlobBackend {
    /// Redacted like the index URL.
    pub url: String,
    /// What a listing found (`kastell stats --blobs`); absent when not listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listed: Option<BlobUsage>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantStats {
    pub name: String,
    /// `active` or `disabled`.
    pub status: String,
    #[serde(flatten)]
    pub stats: IndexStats,
    /// Instances and bytes per store (issue 15: rules move them as they age).
    pub stores: Vec<StoreStats>,
    /// Objects whose restore from an offline tier is not finished.
    pub restores_waiting: i64,
}

/// What a tenant keeps in one store.
#[derive(Debug, Clone, Serialize)]
pub struct StoreStats {
    /// `primary` or the name of a store in `storage.stores`.
    pub store: String,
    /// The store's storage class (tier); empty: the backend's default.
    pub storage_class: String,
    /// Whether its objects must be restored before they are read.
    pub offline: bool,
    pub objects: i64,
    pub bytes: i64,
}

impl StoreStats {
    fn of(config: &Config, usage: StoreUsage) -> Self {
        let named = config.storage.stores.get(&usage.store);
        Self {
            storage_class: named.map(|s| s.storage_class.clone()).unwrap_or_default(),
            offline: named.is_some_and(|s| s.is_offline()),
            store: usage.store,
            objects: usage.objects,
            bytes: usage.bytes,
        }
    }
}

impl StatsReport {
    /// Adds the tenants up into `total`.
    pub fn new(index: IndexBackend, blob_store: BlobBackend, tenants: Vec<TenantStats>) -> Self {
        let mut total = IndexStats::default();
        for tenant in &tenants {
            let s = &tenant.stats;
            total.studies += s.studies;
            total.series += s.series;
            total.instances += s.instances;
            total.instance_bytes += s.instance_bytes;
            total.derived_objects += s.derived_objects;
            // RFC 3339 times in UTC compare as text.
            total.last_stored_at = total.last_stored_at.clone().max(s.last_stored_at.clone());
        }
        Self {
            index,
            blob_store,
            tenants,
            total,
        }
    }
}

fn bytes(n: i64) -> String {
    HumanBytes(n.max(0) as u64).to_string()
}

fn row(f: &mut fmt::Formatter<'_>, name: &str, status: &str, s: &IndexStats) -> fmt::Result {
    writeln!(
        f,
        "{name:<20} {status:<9} {:>9} {:>9} {:>10} {:>14} {:>8}  {}",
        s.studies,
        s.series,
        s.instances,
        bytes(s.instance_bytes),
        s.derived_objects,
        s.last_stored_at.as_deref().unwrap_or("-")
    )
}

impl fmt::Display for StatsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "index       {} ({}, {})",
            self.index.url,
            self.index.database,
            bytes(self.index.bytes)
        )?;
        match &self.blob_store.listed {
            Some(usage) => writeln!(
                f,
                "blob store  {} ({} objects, {} encrypted)",
                self.blob_store.url,
                usage.objects,
                HumanBytes(usage.bytes)
            )?,
            None => writeln!(
                f,
                "blob store  {} (not listed; `kastell stats --blobs` counts its objects)",
                self.blob_store.url
            )?,
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:<20} {:<9} {:>9} {:>9} {:>10} {:>14} {:>8}  last stored",
            "tenant", "status", "studies", "series", "instances", "instance bytes", "derived"
        )?;
        for tenant in &self.tenants {
            row(f, &tenant.name, &tenant.status, &tenant.stats)?;
        }
        row(f, "total", "", &self.total)?;
        if self.tenants.iter().any(|t| {
            t.stores
                .iter()
                .any(|s| s.store != crate::store::PRIMARY_STORE)
        }) {
            writeln!(f)?;
            writeln!(
                f,
                "{:<20} {:<12} {:<14} {:>10} {:>14}",
                "tenant", "store", "class", "instances", "bytes"
            )?;
            for tenant in &self.tenants {
                for store in &tenant.stores {
                    writeln!(
                        f,
                        "{:<20} {:<12} {:<14} {:>10} {:>14}",
                        tenant.name,
                        store.store,
                        if store.offline {
                            format!("{} (offline)", store.storage_class)
                        } else {
                            store.storage_class.clone()
                        },
                        store.objects,
                        bytes(store.bytes)
                    )?;
                }
                if tenant.restores_waiting > 0 {
                    writeln!(
                        f,
                        "{:<20} {} objects waiting for their restore from an offline tier",
                        tenant.name, tenant.restores_waiting
                    )?;
                }
            }
        }
        Ok(())
    }
}
