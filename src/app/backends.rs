//! The only place the concrete index and blob backends are built from the
//! configuration: the default tenant's services, every tenant, the index alone.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::Config;
use crate::index::{Index, IndexOptions};
use crate::service::tenants::Tenants;
use crate::service::{ServiceSettings, Services};
use crate::store::{BlobStore, Retries, WriteOptions};

use super::keys::key_ring;

/// The index pool settings of the configuration, with `pool_size` connections.
pub fn index_options(pool_size: u32, config: &Config) -> IndexOptions {
    IndexOptions {
        pool_size,
        busy_timeout: Duration::from_millis(config.index.busy_timeout_ms),
        acquire_timeout: Duration::from_millis(config.index.acquire_timeout_ms),
        statement_timeout: Duration::from_millis(config.index.statement_timeout_ms),
        group_commit: config.index.group_commit,
    }
}

/// Every tenant over the configured backends (for the CLI: small pools).
pub fn build_tenants(config: &Config) -> anyhow::Result<Tenants> {
    Ok(Tenants::new(
        build_services(config)?,
        &config.keys.default_tenant,
        &config.effective_index_url(),
        index_options(2, config),
    ))
}

/// Opens the index and the blob store named by the configuration (the default
/// tenant's services; other tenants are reached through [`Tenants`]).
pub fn build_services(config: &Config) -> anyhow::Result<Services> {
    // The embedded index and blobs live in the data directory: only the service
    // user may enter it (0700 when Kastell creates it, whatever the umask).
    if config.storage.blob_url.is_empty() || config.index.url.is_empty() {
        crate::private_files::create_dir_all(&config.storage.data_dir).with_context(|| {
            format!(
                "creating the data directory {}",
                config.storage.data_dir.display()
            )
        })?;
    }
    let index_url = config.effective_index_url();
    let index = Index::open(&index_url, index_options(config.index.pool_size, config))
        .with_context(|| {
            format!(
                "opening the index at {}",
                crate::config::redact_url(&index_url)
            )
        })?;
    let keys = key_ring(config, &index)?;
    let blob_url = config.effective_blob_url();
    let options = config.storage.blob_option_pairs();
    let store = BlobStore::from_url(
        &blob_url,
        &options,
        WriteOptions {
            part_bytes: config.storage.upload_part_bytes,
            concurrency: config.storage.upload_concurrency,
        },
        blob_retries(config),
        keys,
        &config.keys.default_tenant,
    )
    .with_context(|| {
        format!(
            "opening the blob store at {}",
            crate::config::redact_url(&blob_url)
        )
    })?;
    let store = config
        .storage
        .stores
        .iter()
        .try_fold(store, |store, (name, named)| {
            store
                .with_named_store(
                    name,
                    &named.url,
                    &named.option_pairs(),
                    Some(named.storage_class.clone()),
                    named.is_offline().then(|| crate::store::OfflineTier {
                        restore_days: named.restore_days,
                        restore_tier: named.restore_tier.clone(),
                        retry_after: Duration::from_secs(named.restore_retry_after_secs()),
                    }),
                    blob_retries(config),
                )
                .with_context(|| {
                    format!(
                        "opening the blob store {name} at {}",
                        crate::config::redact_url(&named.url)
                    )
                })
        })?;
    crate::dicom::guard::ParseLimits::install(config.limits.parse_limits());
    Ok(Services {
        index,
        store,
        settings: Arc::new(ServiceSettings {
            max_header_bytes: config.storage.max_header_bytes,
            upload_completions: config.storage.upload_completions_per_request.max(1),
            overwrite_existing: config.dicomweb.overwrite_existing,
            qido_max_results: config.dicomweb.qido_max_results as u64,
            orphan_grace: Duration::from_secs(config.storage.orphan_grace_secs),
            limits: config.limits.clone(),
            decoding: crate::service::DecodingBudget::new(
                config.limits.max_decoding_bytes,
                config.limits.retry_after_secs,
            ),
            warmer: crate::service::warm::MetadataWarmer::new(Duration::from_secs(
                config.dicomweb.metadata_warm_after_secs,
            )),
            metadata_in_index: config.dicomweb.metadata_in_index,
            lifecycle: config.lifecycle.clone(),
            lifecycle_uses_retrieval: config
                .lifecycle
                .all_moves()
                .iter()
                .any(|(_, rules)| rules.iter().any(|r| r.min_days_since_retrieval > 0)),
            retrievals: Default::default(),
        }),
    })
}

/// How a cloud blob store retries failed requests (`storage.blob_*retr*`).
pub fn blob_retries(config: &Config) -> Retries {
    Retries {
        max_retries: config.storage.blob_max_retries,
        timeout: Duration::from_millis(config.storage.blob_retry_timeout_ms),
    }
}

/// The index alone (for tools that need no blob store).
pub fn open_index(config: &Config) -> anyhow::Result<Index> {
    Ok(Index::open(
        &config.effective_index_url(),
        index_options(2, config),
    )?)
}
