//! The tenants a running server serves: the default tenant (the control index and
//! the configured default key) and every registered tenant, each with its own
//! index and its own key-encryption key. Services are opened on first use and the
//! registry's status (active, disabled) is re-read every few seconds so that
//! `kastell tenants disable` reaches running servers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::RwLock;

use super::{ServiceError, Services};
use crate::index::{Index, IndexOptions};
use crate::store::BlobKind;

/// How long a tenant's registry status is trusted before it is read again.
const STATUS_TTL: Duration = Duration::from_secs(5);

struct Opened {
    services: Services,
    active: bool,
    checked: Instant,
}

pub struct Tenants {
    default: Services,
    default_name: String,
    control_url: String,
    options: IndexOptions,
    opened: RwLock<HashMap<String, Opened>>,
}

impl Tenants {
    pub fn new(
        default: Services,
        default_name: &str,
        control_url: &str,
        options: IndexOptions,
    ) -> Self {
        Self {
            default,
            default_name: default_name.to_string(),
            control_url: control_url.to_string(),
            options,
            opened: RwLock::new(HashMap::new()),
        }
    }

    pub fn default_name(&self) -> &str {
        &self.default_name
    }

    /// The default tenant's services (its index is the control index).
    pub fn default_services(&self) -> &Services {
        &self.default
    }

    /// The services of `name`: `NotFound` for an unknown tenant, `TenantDisabled`
    /// for a disabled one.
    pub async fn get(&self, name: &str) -> Result<Services, ServiceError> {
        if name == self.default_name {
            return Ok(self.default.clone());
        }
        if let Some(opened) = self.opened.read().await.get(name) {
            if opened.checked.elapsed() < STATUS_TTL {
                return if opened.active {
                    Ok(opened.services.clone())
                } else {
                    Err(ServiceError::TenantDisabled)
                };
            }
        }
        let lookup = name.to_string();
        let row = self
            .default
            .with_index(move |index| index.tenant(&lookup))
            .await?
            .ok_or(ServiceError::NotFound("tenant"))?;
        let mut opened = self.opened.write().await;
        let services = match opened.get(name) {
            Some(existing) => existing.services.clone(),
            None => self.open(name).await?,
        };
        opened.insert(
            name.to_string(),
            Opened {
                services: services.clone(),
                active: row.is_active(),
                checked: Instant::now(),
            },
        );
        if row.is_active() {
            Ok(services)
        } else {
            Err(ServiceError::TenantDisabled)
        }
    }

    async fn open(&self, name: &str) -> Result<Services, ServiceError> {
        let (url, tenant, options) = (self.control_url.clone(), name.to_string(), self.options);
        let index = tokio::task::spawn_blocking(move || Index::open_tenant(&url, &tenant, options))
            .await
            .map_err(|e| ServiceError::Task(e.to_string()))??;
        Ok(Services {
            index,
            store: self.default.store.for_tenant(name),
            settings: self.default.settings.clone(),
        })
    }

    /// Every tenant's services, the default first (for background work that must
    /// see all indexes, such as the orphan sweep). Disabled tenants included.
    pub async fn all(&self) -> Result<Vec<(String, Services)>, ServiceError> {
        let names: Vec<String> = self
            .default
            .with_index(|index| index.tenants())
            .await?
            .into_iter()
            .map(|row| row.name)
            .collect();
        let mut all = vec![(self.default_name.clone(), self.default.clone())];
        for name in names {
            if name == self.default_name {
                continue;
            }
            let services = match self.get(&name).await {
                Ok(services) => services,
                Err(ServiceError::TenantDisabled) => {
                    let opened = self.opened.read().await;
                    match opened.get(&name) {
                        Some(o) => o.services.clone(),
                        None => continue,
                    }
                }
                Err(error) => return Err(error),
            };
            all.push((name, services));
        }
        Ok(all)
    }

    /// Removes blobs that no tenant's index references and that are older than the
    /// grace period: what a crash in the middle of a STOW, or between writing a
    /// derived object (metadata, thumbnail) and recording it, left behind. The blob
    /// store is shared, so a blob is an orphan only if every index disowns it.
    pub async fn sweep_orphans(&self) -> Result<usize, ServiceError> {
        let grace = self.default.settings.orphan_grace;
        let stale = self.default.store.remove_stale_uploads(grace).await?;
        let mut candidates = Vec::new();
        for kind in [BlobKind::Instance, BlobKind::Derived] {
            candidates.extend(self.default.store.keys_older_than(kind, grace).await?);
        }
        if candidates.is_empty() {
            return Ok(stale);
        }
        // An object of stores sharing a place is referenced under any of its names.
        let store = &self.default.store;
        let names: Vec<String> = candidates
            .iter()
            .flat_map(|k| store.aliases(k))
            .map(|k| k.as_str().to_string())
            .collect();
        let mut referenced = std::collections::HashSet::new();
        for (_, services) in self.all().await? {
            let names = names.clone();
            referenced.extend(
                services
                    .with_index(move |index| index.referenced_blob_keys(&names))
                    .await?,
            );
        }
        let mut removed = stale;
        for key in candidates {
            let aliases = self.default.store.aliases(&key);
            if !aliases.iter().any(|a| referenced.contains(a.as_str())) {
                self.default.store.delete(&key).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Shared handle.
pub type TenantsHandle = Arc<Tenants>;
