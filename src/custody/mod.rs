//! Key custody: where master keys are held and how Kastell asks them to wrap
//! and unwrap tenant keys — a key file (the local master), an HSM through
//! PKCS#11, or a remote KMS speaking the Vault/OpenBao Transit API. Every
//! provider is wrapped in a [`Custodian`] that counts its calls and failures
//! (`kastell.keys.provider.*`) and answers what the sovereignty report states
//! about it ([`KeyFacts`]).
//!
//! The key hierarchy itself (tenant keys, data keys, the cache of unwrapped
//! keys) is `crate::crypto`'s; this module only reaches the holders.

pub mod pkcs11;
pub mod transit;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use crate::crypto::{CryptoError, KeyProvider, LocalMasterKey, SecretKey};

pub use pkcs11::Pkcs11Master;
pub use transit::{TransitMaster, TransitSettings};

/// Where a secret (an HSM PIN, a KMS token) is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
    None,
}

/// Reads a secret; a file readable by its group or others is refused, like the
/// master key file.
pub fn read_secret(source: &SecretSource) -> Result<Zeroizing<String>, CryptoError> {
    let text = match source {
        SecretSource::File(path) => {
            let bytes = read_private_file(path, "")?;
            Zeroizing::new(String::from_utf8(bytes.to_vec()).map_err(|_| {
                CryptoError::KeyStore(format!("{} is not UTF-8 text", path.display()))
            })?)
        }
        SecretSource::Env(name) => Zeroizing::new(std::env::var(name).map_err(|_| {
            CryptoError::KeyStore(format!("the environment variable {name} is not set"))
        })?),
        SecretSource::None => {
            return Err(CryptoError::KeyStore(
                "no PIN or token is configured (a file or an environment variable)".into(),
            ))
        }
    };
    Ok(Zeroizing::new(text.trim().to_string()))
}

/// Reads a secret file as bytes (a de-identification secret), refusing one its
/// group or others may read.
pub fn read_secret_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    read_private_file(path, "the secret file ")
}

/// Reads a file holding a secret, refusing one its group or others may read:
/// whoever can read it holds what it protects. `what` names it in errors
/// ("the master key file ", or nothing).
fn read_private_file(path: &Path, what: &str) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let unreadable =
        |e: std::io::Error| CryptoError::KeyStore(format!("reading {what}{}: {e}", path.display()));
    let shared = crate::private_files::shared_mode_bits(path).map_err(unreadable)?;
    if shared != 0 {
        return Err(CryptoError::KeyStore(format!(
            "{what}{} is accessible to its group or to others (mode bits {shared:03o} beyond \
             the owner's): whoever can read it holds what it protects. Make it readable by the \
             service user only: `chmod 600 {}` (or 400)",
            path.display(),
            path.display()
        )));
    }
    Ok(Zeroizing::new(std::fs::read(path).map_err(unreadable)?))
}

/// Decodes key text: 32 raw bytes, or their base64 or hex form.
pub fn decode_key(bytes: &[u8]) -> Result<SecretKey, CryptoError> {
    use base64::Engine;
    if bytes.len() == 32 {
        return SecretKey::from_bytes(bytes);
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| {
            CryptoError::KeyMaterial("a master key is 32 bytes or their base64 or hex text")
        })?
        .trim();
    let decoded = Zeroizing::new(
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|_| CryptoError::KeyMaterial("hex"))?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| CryptoError::KeyMaterial("the master key is not valid base64"))?
        },
    );
    SecretKey::from_bytes(&decoded)
        .map_err(|_| CryptoError::KeyMaterial("the master key must be 32 bytes (256 bits)"))
}

/// Reads a master key file, refusing one that its group or others may read.
pub fn read_key_file(path: &Path) -> Result<SecretKey, CryptoError> {
    let bytes = read_private_file(path, "the master key file ")?;
    decode_key(&bytes)
}

/// What can be said of a master key without seeing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFacts {
    /// Who and what holds it (token, model, serial; KMS key; file).
    pub holder: String,
    /// Whether its value can leave its holder (`None`: the holder does not say).
    pub extractable: Option<bool>,
    pub sensitive: Option<bool>,
    pub never_extractable: Option<bool>,
}

/// The provider of one named master key.
pub enum Holder {
    /// Bytes in a file or the environment, read into this process.
    Local {
        key: LocalMasterKey,
        origin: String,
    },
    Pkcs11(Pkcs11Master),
    Transit(TransitMaster),
}

/// A master key provider with its name, counted in the metrics.
pub struct Custodian {
    name: String,
    holder: Holder,
}

impl Custodian {
    pub fn new(name: &str, holder: Holder) -> Self {
        Self {
            name: name.to_string(),
            holder,
        }
    }

    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    fn provider(&self) -> &dyn KeyProvider {
        match &self.holder {
            Holder::Local { key, .. } => key,
            Holder::Pkcs11(hsm) => hsm,
            Holder::Transit(kms) => kms,
        }
    }

    /// What the holder says of the key (asks the HSM or KMS).
    pub fn facts(&self) -> Result<KeyFacts, CryptoError> {
        match &self.holder {
            Holder::Local { origin, .. } => Ok(KeyFacts {
                holder: format!("read into the Kastell process from {origin}"),
                extractable: Some(true),
                sensitive: Some(false),
                never_extractable: Some(false),
            }),
            Holder::Pkcs11(hsm) => hsm.facts(),
            Holder::Transit(kms) => kms.facts(),
        }
    }

    fn counted<T>(
        &self,
        operation: &'static str,
        call: impl FnOnce() -> Result<T, CryptoError>,
    ) -> Result<T, CryptoError> {
        let started = Instant::now();
        let result = call();
        let outcome = match &result {
            Ok(_) => "ok",
            Err(CryptoError::Unavailable(why)) => {
                tracing::warn!(master = %self.name, %why, "{operation}: the key provider is unavailable");
                "unavailable"
            }
            Err(CryptoError::Revoked(why)) => {
                tracing::warn!(master = %self.name, %why, "{operation}: the key's holder refuses it");
                "revoked"
            }
            Err(_) => "failed",
        };
        crate::telemetry::metrics::key_provider_call(
            &self.name,
            self.provider().kind(),
            operation,
            outcome,
            started.elapsed(),
        );
        result
    }
}

impl KeyProvider for Custodian {
    fn wrap_tenant_key(&self, key: &SecretKey, context: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.counted("wrap", || self.provider().wrap_tenant_key(key, context))
    }

    fn unwrap_tenant_key(&self, wrapped: &[u8], context: &[u8]) -> Result<SecretKey, CryptoError> {
        self.counted("unwrap", || {
            self.provider().unwrap_tenant_key(wrapped, context)
        })
    }

    fn describe(&self) -> String {
        self.provider().describe()
    }

    fn kind(&self) -> &'static str {
        self.provider().kind()
    }
}

/// A KMS request's time limit when none is configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
