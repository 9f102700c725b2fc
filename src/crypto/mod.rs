//! Envelope encryption: the key hierarchy (master → tenant → data key) and the
//! chunked authenticated blob format. Pure computation with `ring`: no network,
//! database or files — key material comes in through [`KeyProvider`] and the
//! tenant key loader the application injects.

pub mod format;
pub mod keyring;
pub mod keys;
pub mod masters;

pub use format::{Layout, Opener, Sealer, SEGMENT_SIZE};
pub use keyring::{CacheLimits, KeyId, KeyRing, TenantKeyLoader, TenantKeyRecord, TenantKeyState};
pub use keys::{KeyProvider, LocalMasterKey, SecretKey};
pub use masters::{MasterKeys, LOCAL_MASTER};

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CryptoError {
    /// Authentication failed: the object was modified, truncated, reordered, swapped
    /// or encrypted under another key.
    #[error("integrity check failed: {0}")]
    Integrity(&'static str),
    #[error("not an encrypted Kastell object: {0}")]
    Format(&'static str),
    #[error("unknown key {0}")]
    UnknownKey(String),
    /// The tenant key was destroyed (crypto-shredding): the data is gone for good.
    #[error("key {0} was shredded")]
    Shredded(String),
    #[error("invalid key material: {0}")]
    KeyMaterial(&'static str),
    #[error("key store error: {0}")]
    KeyStore(String),
    /// The provider holding a key-encryption key (an HSM, a remote KMS) cannot be
    /// reached or did not answer: the same operation may succeed later.
    #[error("key provider unavailable: {0}")]
    Unavailable(String),
    /// The holder of a key-encryption key refuses to use it or destroyed it (a
    /// tenant revoked its own key): its data cannot be opened while that lasts.
    #[error("the key was revoked by its holder: {0}")]
    Revoked(String),
    #[error("the system random generator failed")]
    Random,
}
