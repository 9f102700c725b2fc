//! `kastell stats`: what each tenant holds (from its index) and where (the
//! backends, with the index URL's password redacted), as text or JSON.

use std::fmt;

use indicatif::HumanBytes;
use serde::Serialize;

use crate::index::stats::IndexStats;
use crate::store::BlobUsage;

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
    /// The control index's URL, password redacted; tenants' indexes sit beside it.
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
        row(f, "total", "", &self.total)
    }
}
