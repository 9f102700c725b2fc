//! `[storage]`: the data directory, the blob store URL and its settings,
//! uploads, header size, orphan sweep and retries.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Location};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Directory of the embedded defaults: the SQLite index and the local blob store.
    pub data_dir: PathBuf,
    /// Where blobs live; empty means `file://<data_dir>/blobs`.
    pub blob_url: String,
    /// object_store settings of a cloud backend (`aws_endpoint`, `aws_region`,
    /// `aws_virtual_hosted_style_request`, `azure_storage_account_name`, ...); they
    /// win over the `AWS_*` / `AZURE_*` / `GOOGLE_*` environment variables.
    pub blob_options: std::collections::BTreeMap<String, String>,
    /// Upload part size for blob writes, in bytes. Bounds memory per upload.
    pub upload_part_bytes: usize,
    /// Upload parts in flight per blob.
    pub upload_concurrency: usize,
    /// Blobs of one STOW request being made durable (flush, fsync, rename;
    /// a multipart completion) at once, beside the parts that follow; 1
    /// completes each part before the next is read.
    pub upload_completions_per_request: usize,
    /// Largest DICOM header (everything before Pixel Data) kept in memory for parsing.
    pub max_header_bytes: usize,
    /// Blobs not referenced by the index and older than this many seconds are
    /// removed by the orphan sweep at start-up (left-overs of a crash mid-upload).
    pub orphan_grace_secs: u64,
    /// A cloud backend retries a failed request (connection error, timeout,
    /// server error) at most this many times...
    pub blob_max_retries: usize,
    /// ...and begins no retry later than this after the first attempt, in
    /// milliseconds; then the request fails with 503. Bounds how long a request
    /// waits for a blob store that went away.
    pub blob_retry_timeout_ms: u64,
    /// Where the blob store is; a local one (file://, memory://, a loopback
    /// endpoint) inherits `server.location` when this is absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// What a GB-month costs in the primary store, for `kastell lifecycle
    /// plan`'s estimate (any currency, the same for every store; 0: unknown).
    pub price_per_gb_month: f64,
    /// Named stores beside the primary one, where lifecycle rules
    /// (`[[lifecycle.moves]]`) move instances as they age (issue 15). Stores
    /// share a URL only as tiers of one S3 bucket prefix, each with a storage
    /// class of its own (a move between them changes the class of the object
    /// in place); any other store has a place of its own.
    pub stores: std::collections::BTreeMap<String, NamedStoreConfig>,
}

/// One named blob store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NamedStoreConfig {
    /// As `storage.blob_url`: `file:///dir`, `s3://bucket/prefix`, `az://…`, `gs://…`.
    pub url: String,
    /// object_store settings, as `storage.blob_options`.
    pub options: std::collections::BTreeMap<String, String>,
    /// The storage class objects are written with: an S3 storage class
    /// (`STANDARD_IA`, `GLACIER_IR`, …), an Azure access tier (`Cool`, `Cold`),
    /// a GCS class (`NEARLINE`, `COLDLINE`); empty: the bucket's default.
    /// `GLACIER` (Glacier Flexible Retrieval) and `DEEP_ARCHIVE` make an
    /// offline S3 tier, Azure's `Archive` an offline Azure tier: their objects
    /// are restored (rehydrated) before they can be read (retrieval answers
    /// 503 with `Retry-After` meanwhile; see `restore_days`).
    pub storage_class: String,
    /// Offline tiers: days a restored copy stays readable (S3 RestoreObject
    /// `Days`; on Azure, days a rehydrated blob stays Hot before the server
    /// archives it again).
    pub restore_days: u32,
    /// Offline tiers: the speed of restores, S3's retrieval tier
    /// (`Expedited`, `Standard` or `Bulk`) or Azure's rehydrate priority
    /// (`Standard` or `High`): faster costs more.
    pub restore_tier: String,
    /// Offline tiers: the `Retry-After` of a retrieval that waits for a restore,
    /// in seconds; 0: what the class and tier usually take (Glacier Standard
    /// some 4 hours, Deep Archive 12).
    pub retry_after_secs: u64,
    /// What a GB-month costs here (see `storage.price_per_gb_month`).
    pub price_per_gb_month: f64,
    /// Where the store is and who runs it (the sovereignty policy: it holds
    /// ciphertext only, as the primary store).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
}

impl Default for NamedStoreConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            options: Default::default(),
            storage_class: String::new(),
            restore_days: 7,
            restore_tier: "Standard".into(),
            retry_after_secs: 0,
            price_per_gb_month: 0.0,
            location: None,
        }
    }
}

/// The S3 storage classes whose objects must be restored before a read.
pub const OFFLINE_S3_CLASSES: [&str; 2] = ["GLACIER", "DEEP_ARCHIVE"];

impl NamedStoreConfig {
    /// Whether the store's objects must be restored before they can be read.
    pub fn is_offline(&self) -> bool {
        OFFLINE_S3_CLASSES.contains(&self.storage_class.as_str())
            || self.storage_class.eq_ignore_ascii_case("archive")
    }

    /// The `Retry-After` of a retrieval waiting for this store's restore.
    pub fn restore_retry_after_secs(&self) -> u64 {
        if self.retry_after_secs > 0 {
            return self.retry_after_secs;
        }
        let hours = match (self.storage_class.as_str(), self.restore_tier.as_str()) {
            (_, "Expedited" | "High") => 1,
            ("Archive", _) => 15,
            ("DEEP_ARCHIVE", "Bulk") => 48,
            ("DEEP_ARCHIVE", _) => 12,
            (_, "Bulk") => 12,
            _ => 4,
        };
        hours * 3600
    }

    pub fn option_pairs(&self) -> Vec<(String, String)> {
        self.options
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Store names: lower-case letters, digits and dashes (they prefix object keys).
fn valid_store_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !["primary", "instances", "derived"].contains(&name)
}

impl StorageConfig {
    /// `blob_options` as the (name, value) pairs the blob store is built with.
    pub fn blob_option_pairs(&self) -> Vec<(String, String)> {
        self.blob_options
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("kastell-data"),
            blob_url: String::new(),
            blob_options: Default::default(),
            upload_part_bytes: 8 * 1024 * 1024,
            upload_concurrency: 2,
            upload_completions_per_request: 16,
            max_header_bytes: 64 * 1024 * 1024,
            orphan_grace_secs: 24 * 3600,
            blob_max_retries: 3,
            blob_retry_timeout_ms: 10_000,
            location: None,
            price_per_gb_month: 0.0,
            stores: Default::default(),
        }
    }
}

impl StorageConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.upload_part_bytes < 5 * 1024 * 1024 {
            return Err(ConfigError::Rule(
                "storage.upload_part_bytes must be at least 5 MiB (the S3 minimum part size)"
                    .into(),
            ));
        }
        for (name, store) in &self.stores {
            if !valid_store_name(name) {
                return Err(ConfigError::Rule(format!(
                    "storage.stores.{name}: a store name is lower-case letters, digits and dashes, \
                     and not primary, instances or derived"
                )));
            }
            let class = &store.storage_class;
            if class.len() > 64
                || !class
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(ConfigError::Rule(format!(
                    "storage.stores.{name}.storage_class is a class name such as STANDARD_IA or Cool"
                )));
            }
            if store.is_offline() {
                let s3 = store.url.starts_with("s3://") || store.url.starts_with("s3a://");
                let azure = ["az://", "azure://", "abfs://", "abfss://"]
                    .iter()
                    .any(|scheme| store.url.starts_with(scheme));
                let tiers: &[&str] = if s3 {
                    &["Expedited", "Standard", "Bulk"]
                } else {
                    &["Standard", "High"]
                };
                let class = store.storage_class.as_str();
                if !(s3 && OFFLINE_S3_CLASSES.contains(&class) || azure && class == "Archive") {
                    return Err(ConfigError::Rule(format!(
                        "storage.stores.{name}: storage_class {class:?} is an offline tier, which \
                         Kastell restores on S3 (GLACIER, DEEP_ARCHIVE) and Azure (Archive) only"
                    )));
                }
                if !tiers.contains(&store.restore_tier.as_str())
                    || !(1..=3650).contains(&store.restore_days)
                    || store.retry_after_secs > 7 * 86_400
                {
                    return Err(ConfigError::Rule(format!(
                        "storage.stores.{name}: restore_tier is one of {}, restore_days 1 to 3650 \
                         and retry_after_secs at most a week (604800)",
                        tiers.join(", ")
                    )));
                }
            }
            if store.url.is_empty() {
                return Err(ConfigError::Rule(format!(
                    "storage.stores.{name}.url is empty"
                )));
            }
        }
        self.validate_shared_places()
    }

    /// Stores may share a place (a URL) only as tiers of one S3 bucket prefix:
    /// every store there on S3, each with a storage class of its own (the
    /// primary store's is the bucket's default). A move between them is S3's
    /// own copy in place, changing the class of the same object.
    fn validate_shared_places(&self) -> Result<(), ConfigError> {
        let mut places: std::collections::BTreeMap<&str, Vec<(&str, &str)>> = Default::default();
        if !self.blob_url.is_empty() {
            places
                .entry(self.blob_url.trim_end_matches('/'))
                .or_default()
                .push(("primary", ""));
        }
        for (name, store) in &self.stores {
            places
                .entry(store.url.trim_end_matches('/'))
                .or_default()
                .push((name.as_str(), store.storage_class.as_str()));
        }
        for (url, stores) in places.into_iter().filter(|(_, s)| s.len() > 1) {
            let s3 = url.starts_with("s3://") || url.starts_with("s3a://");
            let classes: std::collections::HashSet<&str> = stores
                .iter()
                .map(|(_, class)| if class.is_empty() { "STANDARD" } else { class })
                .collect();
            if !s3 || classes.len() != stores.len() {
                let names: Vec<&str> = stores.iter().map(|(name, _)| *name).collect();
                return Err(ConfigError::Rule(format!(
                    "storage.stores: {} share the URL {:?}; stores may share one only as tiers \
                     of an S3 bucket prefix, each with a storage_class of its own; else give \
                     each its own prefix",
                    names.join(", "),
                    crate::redact::redact_url(url)
                )));
            }
        }
        Ok(())
    }
}
