//! Building an object_store backend from a URL, its options, the conventional
//! environment variables and a bounded retry policy.

use std::sync::Arc;
use std::time::Duration;

use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;

use super::StoreError;

/// How a cloud backend retries a failed request (connection errors, timeouts, 5xx):
/// bounded, so that a request to a store that went away fails in bounded time
/// (object_store's own default keeps trying for three minutes).
#[derive(Debug, Clone, Copy)]
pub struct Retries {
    /// Retries of one request after its first attempt.
    pub max_retries: usize,
    /// No retry begins later than this after the first attempt.
    pub timeout: Duration,
}

impl Retries {
    pub(super) fn config(self) -> object_store::RetryConfig {
        object_store::RetryConfig {
            max_retries: self.max_retries,
            retry_timeout: self.timeout,
            backoff: object_store::BackoffConfig {
                max_backoff: Duration::from_secs(2),
                ..Default::default()
            },
        }
    }
}

/// The backend named by a URL: `file:///absolute/dir`, `memory://`, `s3://bucket/prefix`,
/// `az://container/prefix` (also `azure://`, `abfs://`), `gs://bucket/prefix`. Cloud
/// backends read their settings from `options` (object_store config keys such as
/// `aws_endpoint`, `aws_region`, `aws_virtual_hosted_style_request`) and from the
/// conventional environment variables (`AWS_*`, `AZURE_*`, `GOOGLE_*`).
pub fn backend_from_url(
    url: &str,
    options: &[(String, String)],
    retries: Retries,
) -> Result<Arc<dyn ObjectStore>, StoreError> {
    if let Some(dir) = url.strip_prefix("file://") {
        if dir.is_empty() || !dir.starts_with('/') {
            return Err(StoreError::UnsupportedUrl(crate::redact::redact_url(url)));
        }
        std::fs::create_dir_all(dir)?;
        return Ok(Arc::new(
            object_store::local::LocalFileSystem::new_with_prefix(dir)?
                .with_automatic_cleanup(true),
        ));
    }
    if url == "memory://" || url == "memory:///" {
        return Ok(Arc::new(InMemory::new()));
    }
    let parsed = url::Url::parse(url)
        .map_err(|_| StoreError::UnsupportedUrl(crate::redact::redact_url(url)))?;
    if !matches!(
        parsed.scheme(),
        "s3" | "s3a" | "az" | "azure" | "abfs" | "abfss" | "adl" | "gs"
    ) {
        return Err(StoreError::UnsupportedUrl(crate::redact::redact_url(url)));
    }
    let mut settings = environment_settings();
    settings.extend(options.iter().cloned());
    // What object_store's `parse_url_opts` does, plus the retry policy it cannot set.
    macro_rules! build {
        ($builder:ty) => {{
            let builder = settings.iter().fold(
                <$builder>::new().with_url(parsed.as_str()),
                |builder, (key, value)| match key.parse() {
                    Ok(key) => builder.with_config(key, value),
                    Err(_) => builder,
                },
            );
            // A configuration error, not an outage.
            let store = builder.with_retry(retries.config()).build();
            Arc::new(store.map_err(StoreError::Backend)?) as Arc<dyn ObjectStore>
        }};
    }
    let store = match parsed.scheme() {
        "s3" | "s3a" => build!(object_store::aws::AmazonS3Builder),
        "gs" => build!(object_store::gcp::GoogleCloudStorageBuilder),
        _ => build!(object_store::azure::MicrosoftAzureBuilder),
    };
    // The host is the bucket or container; the path is our prefix. (object_store's
    // own split reads `az://` URLs as `az://account/container/...` and loses it.)
    let prefix = ObjectPath::parse(parsed.path().trim_start_matches('/'))
        .map_err(|_| StoreError::UnsupportedUrl(crate::redact::redact_url(url)))?;
    if prefix.as_ref().is_empty() {
        Ok(store)
    } else {
        Ok(Arc::new(object_store::prefix::PrefixStore::new(
            store, prefix,
        )))
    }
}

/// An S3 store's own client (not behind `dyn ObjectStore`: offline tiers and
/// copies in place need its credentials and signer), its region, bucket and
/// the prefix of `url`.
pub(super) fn s3_client(
    url: &str,
    options: &[(String, String)],
    retries: Retries,
) -> Result<(object_store::aws::AmazonS3, String, String, ObjectPath), StoreError> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    let parsed = url::Url::parse(url)
        .map_err(|_| StoreError::UnsupportedUrl(crate::redact::redact_url(url)))?;
    if !matches!(parsed.scheme(), "s3" | "s3a") {
        return Err(StoreError::UnsupportedUrl(crate::redact::redact_url(url)));
    }
    let mut settings = environment_settings();
    settings.extend(options.iter().cloned());
    let builder = settings.iter().fold(
        AmazonS3Builder::new().with_url(parsed.as_str()),
        |builder, (key, value)| match key.parse() {
            Ok(key) => builder.with_config(key, value),
            Err(_) => builder,
        },
    );
    let region = builder
        .get_config_value(&AmazonS3ConfigKey::Region)
        .unwrap_or_else(|| "us-east-1".into());
    // The URL names the bucket (the builder parses it only when it builds).
    let bucket = parsed.host_str().unwrap_or_default().to_string();
    let s3 = builder
        .with_retry(retries.config())
        .build()
        .map_err(StoreError::Backend)?;
    let prefix = ObjectPath::parse(parsed.path().trim_start_matches('/'))
        .map_err(|_| StoreError::UnsupportedUrl(crate::redact::redact_url(url)))?;
    Ok((s3, region, bucket, prefix))
}

/// An Azure store's own client (its credentials and signer), its storage
/// account and the prefix of `url`.
pub(super) fn azure_client(
    url: &str,
    options: &[(String, String)],
    retries: Retries,
) -> Result<(object_store::azure::MicrosoftAzure, String, ObjectPath), StoreError> {
    use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
    let parsed = url::Url::parse(url)
        .map_err(|_| StoreError::UnsupportedUrl(crate::redact::redact_url(url)))?;
    let mut settings = environment_settings();
    settings.extend(options.iter().cloned());
    let builder = settings.iter().fold(
        MicrosoftAzureBuilder::new().with_url(parsed.as_str()),
        |builder, (key, value)| match key.parse() {
            Ok(key) => builder.with_config(key, value),
            Err(_) => builder,
        },
    );
    let emulator = builder
        .get_config_value(&AzureConfigKey::UseEmulator)
        .is_some_and(|v| v == "true");
    // abfs://container@account.dfs.core.windows.net names the account too.
    let in_url = parsed.host_str().and_then(|host| {
        let account = host.split('.').next()?;
        (host.contains('.') && !parsed.username().is_empty()).then(|| account.to_string())
    });
    let account = builder
        .get_config_value(&AzureConfigKey::AccountName)
        .or(in_url)
        .or_else(|| emulator.then(|| "devstoreaccount1".to_string()))
        .ok_or_else(|| StoreError::UnsupportedUrl(crate::redact::redact_url(url)))?;
    let azure = builder
        .with_retry(retries.config())
        .build()
        .map_err(StoreError::Backend)?;
    let prefix = ObjectPath::parse(parsed.path().trim_start_matches('/'))
        .map_err(|_| StoreError::UnsupportedUrl(crate::redact::redact_url(url)))?;
    Ok((azure, account, prefix))
}

/// The cloud backends' settings from the conventional environment variables
/// (`AWS_*`, `AZURE_*`, `GOOGLE_*`), names lower-cased into object_store config keys
/// (`AWS_ENDPOINT_URL` → `aws_endpoint_url`). `storage.blob_options` win over them.
pub fn environment_settings() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("AWS_") || k.starts_with("AZURE_") || k.starts_with("GOOGLE_")
        })
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}
