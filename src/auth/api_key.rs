//! Static API keys for modalities and scripts: `kst_` followed by 32 random bytes
//! in base64url, shown once when made. The index keeps only the SHA-256 of the
//! key text.
//!
//! Why a plain SHA-256 and not a slow password hash (Argon2, bcrypt): slow hashes
//! exist to make guessing low-entropy passwords expensive. These keys are 256
//! random bits, which no amount of guessing reaches, so a fast hash loses nothing
//! — and, being unsalted and deterministic, it lets a presented key be found with
//! one indexed lookup (`key_hash` is unique) instead of a hash per stored key.
//!
//! The lookup is by hash, so its timing depends on the hash of what was
//! presented, not on how much of a stored key it matches.
//!
//! Looked-up keys are remembered for a short time (`auth.api_key_cache_secs`), so
//! that not every request costs an index query; a revoked key therefore keeps
//! working on a running server for at most that long.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::grants::{
    is_tenant_name, parse_permission_list, permission_list_text, Grant, TenantScope,
};
use super::{AuthError, Principal, PrincipalKind};
use crate::index::api_keys::ApiKeyRecord;
use crate::index::{Index, IndexError};

/// What every API key starts with, so that it is recognised (also by secret
/// scanners) and told apart from a JWT in `Authorization: Bearer`.
pub const API_KEY_PREFIX: &str = "kst_";
/// Random bytes in a key.
const KEY_BYTES: usize = 32;
/// Characters after the prefix: 32 bytes in unpadded base64url.
const KEY_CHARS: usize = 43;
/// Entries the lookup cache holds at most; beyond, it is emptied (a bound on
/// memory, whatever the number of keys in use).
const CACHE_CAPACITY: usize = 10_000;

/// A key just made. The key text exists only here, to be shown once.
pub struct NewApiKey {
    pub id: i64,
    pub key: Zeroizing<String>,
}

impl std::fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiKey")
            .field("id", &self.id)
            .field("key", &"***")
            .finish()
    }
}

/// Errors of making, listing and revoking keys (the `kastell apikeys` commands).
#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    #[error("{0}")]
    Invalid(String),
    #[error("the system random number generator failed")]
    Random,
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// Whether a credential has the shape of one of our keys (checked before any
/// lookup, so that junk costs no index query).
pub fn is_api_key(credential: &str) -> bool {
    credential.strip_prefix(API_KEY_PREFIX).is_some_and(|rest| {
        rest.len() == KEY_CHARS
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// The stored form of a key: hex SHA-256 of its text.
pub fn hash_key(key: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, key.as_bytes()))
}

fn generate_key() -> Result<Zeroizing<String>, ApiKeyError> {
    let mut bytes = Zeroizing::new([0u8; KEY_BYTES]);
    SystemRandom::new()
        .fill(bytes.as_mut())
        .map_err(|_| ApiKeyError::Random)?;
    let mut key = Zeroizing::new(String::with_capacity(API_KEY_PREFIX.len() + KEY_CHARS));
    key.push_str(API_KEY_PREFIX);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(bytes.as_ref(), &mut key);
    Ok(key)
}

/// Makes a key for `tenant` (a name or `*`) with `permissions` (`read,write`).
pub fn create_api_key(
    index: &Index,
    name: &str,
    tenant: &str,
    permissions: &str,
) -> Result<NewApiKey, ApiKeyError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(ApiKeyError::Invalid(
            "the key needs a name of 1 to 200 characters (e.g. the modality's AE title)".into(),
        ));
    }
    if tenant != "*" && !is_tenant_name(tenant) {
        return Err(ApiKeyError::Invalid(format!(
            "{tenant:?} is not a tenant name (letters, digits, '-', '_') or *"
        )));
    }
    let permissions = parse_permission_list(permissions)
        .map_err(|e| ApiKeyError::Invalid(format!("--permissions: {e}")))?;
    let key = generate_key()?;
    let id = index.add_api_key(
        name,
        tenant,
        &permission_list_text(&permissions),
        &hash_key(&key),
    )?;
    Ok(NewApiKey { id, key })
}

/// Every key (no key text exists to list: only hashes are stored, and those are
/// not returned either).
pub fn list_api_keys(index: &Index) -> Result<Vec<ApiKeyRecord>, ApiKeyError> {
    Ok(index.api_keys()?)
}

/// Whether an API key record is an active administrator of `tenant` (`*`: of
/// the whole installation, as retiring a master key asks).
fn administers(record: &ApiKeyRecord, tenant: &str) -> bool {
    record.revoked_at.is_none()
        && (record.tenant == "*" || (tenant != "*" && record.tenant == tenant))
        && record
            .permissions
            .split(',')
            .any(|p| matches!(p.trim(), "admin" | "*"))
}

/// The ids of the active API keys that administer `tenant` (`*`: the
/// installation): who may file and approve dual-control requests.
pub fn administrators(index: &Index, tenant: &str) -> Result<Vec<i64>, ApiKeyError> {
    Ok(index
        .api_keys()?
        .iter()
        .filter(|record| administers(record, tenant))
        .map(|record| record.id)
        .collect())
}

/// Who presents `key`, as the audit trail names them (`apikey:<id>:<name>`), if
/// it is an active administrator of `tenant`.
pub fn administrator(index: &Index, key: &str, tenant: &str) -> Result<String, ApiKeyError> {
    let refused = || {
        ApiKeyError::Invalid(format!(
            "this is not an active API key with the admin permission on {tenant}"
        ))
    };
    if !is_api_key(key) {
        return Err(refused());
    }
    let record = index.api_key_by_hash(&hash_key(key))?.ok_or_else(refused)?;
    if !administers(&record, tenant) {
        return Err(refused());
    }
    Ok(format!("apikey:{}:{}", record.id, record.name))
}

/// Revokes a key; false when there is no such key or it was revoked already.
pub fn revoke_api_key(index: &Index, id: i64) -> Result<bool, ApiKeyError> {
    Ok(index.revoke_api_key(id)?)
}

/// The grants an API key carries. Stored permissions are written by
/// `create_api_key`; one that no longer parses grants nothing (fail closed).
fn grants_of(record: &ApiKeyRecord) -> Vec<Grant> {
    let Ok(tenant) = record.tenant.parse::<TenantScope>() else {
        tracing::warn!(
            api_key = record.id,
            "API key has an invalid tenant; it grants nothing"
        );
        return Vec::new();
    };
    match parse_permission_list(&record.permissions) {
        Ok(permissions) => permissions
            .into_iter()
            .map(|permission| Grant::new(tenant.clone(), permission))
            .collect(),
        Err(error) => {
            tracing::warn!(api_key = record.id, %error, "API key has invalid permissions; it grants nothing");
            Vec::new()
        }
    }
}

/// Checks presented keys against the index, through a short-lived cache.
pub(crate) struct ApiKeyVerifier {
    index: Index,
    ttl: Duration,
    /// By key hash, never by key: the cache holds nothing that opens the archive.
    cache: Mutex<HashMap<String, (Instant, ApiKeyRecord)>>,
}

impl ApiKeyVerifier {
    pub(crate) fn new(index: Index, ttl: Duration) -> Self {
        Self {
            index,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, hash: &str) -> Option<ApiKeyRecord> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(hash)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, record)| record.clone())
    }

    fn remember(&self, hash: String, record: ApiKeyRecord) {
        if self.ttl.is_zero() {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, (at, _)| at.elapsed() < self.ttl);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(hash, (Instant::now(), record));
    }

    pub(crate) async fn verify(&self, key: &str) -> Result<Principal, AuthError> {
        if !is_api_key(key) {
            return Err(AuthError::Malformed("not a Kastell API key"));
        }
        let hash = hash_key(key);
        let record = match self.cached(&hash) {
            Some(record) => record,
            None => {
                let index = self.index.clone();
                let lookup = hash.clone();
                let found = tokio::task::spawn_blocking(move || index.api_key_by_hash(&lookup))
                    .await
                    .map_err(|e| AuthError::Unavailable(format!("API key lookup failed: {e}")))?
                    .map_err(|e| AuthError::Unavailable(format!("API key lookup failed: {e}")))?;
                // Unknown keys are not remembered: a flood of made-up keys must not
                // grow the cache (each still costs one indexed lookup).
                let record = found.ok_or(AuthError::UnknownApiKey)?;
                self.remember(hash, record.clone());
                record
            }
        };
        if record.revoked_at.is_some() {
            return Err(AuthError::RevokedApiKey);
        }
        Ok(Principal {
            subject: format!("apikey:{}:{}", record.id, record.name),
            kind: PrincipalKind::ApiKey,
            grants: grants_of(&record),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_shape_and_differ() {
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        assert!(a.starts_with("kst_"));
        assert_eq!(a.len(), 4 + 43);
        assert!(is_api_key(&a));
        assert_ne!(*a, *b);
        assert_eq!(hash_key(&a).len(), 64);
        assert_ne!(hash_key(&a), hash_key(&b));
        assert!(!is_api_key("kst_short"));
        assert!(!is_api_key(&a.replace("kst_", "kst-")));
        assert!(!is_api_key(&format!("{}=", &a[..a.len() - 1])));
    }

    #[test]
    fn a_new_key_never_prints() {
        let key = NewApiKey {
            id: 1,
            key: generate_key().unwrap(),
        };
        assert!(!format!("{key:?}").contains("kst_"));
    }
}
