//! Key material and key wrapping (AES-256-GCM), HKDF-SHA256 derivation, and the
//! [`KeyProvider`] boundary behind which a master key lives (a local key here;
//! an HSM through PKCS#11 and a remote KMS in `crate::custody`).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroize;

use super::CryptoError;

pub const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;
/// nonce ‖ encrypted key ‖ tag.
pub const WRAPPED_KEY_LEN: usize = NONCE_LEN + KEY_LEN + TAG_LEN;

/// 256 bits of key material. Zeroed when dropped; never printed.
pub struct SecretKey(Box<[u8; KEY_LEN]>);

impl SecretKey {
    pub fn generate() -> Result<Self, CryptoError> {
        let mut bytes = Box::new([0u8; KEY_LEN]);
        SystemRandom::new()
            .fill(&mut bytes[..])
            .map_err(|_| CryptoError::Random)?;
        Ok(SecretKey(bytes))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let array: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| CryptoError::KeyMaterial("a key is 32 bytes"))?;
        Ok(SecretKey(Box::new(array)))
    }

    /// The raw bytes, for handing to the cipher or writing a key file. Keep the
    /// borrow short.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    // A 32-byte key is what AES-256 takes: `UnboundKey::new` cannot refuse it.
    #[allow(clippy::expect_used)]
    pub(crate) fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.0[..]).expect("32-byte AES-256 key"))
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(redacted)")
    }
}

/// Random bytes.
pub fn random<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CryptoError::Random)?;
    Ok(bytes)
}

/// Encrypts `key` under `kek` with a random nonce; `context` is authenticated with
/// it, so a wrapped key only unwraps in the place it was made for.
pub fn wrap(kek: &SecretKey, key: &SecretKey, context: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let nonce = random::<NONCE_LEN>()?;
    let mut sealed = key.expose().to_vec();
    kek.aead()
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(context),
            &mut sealed,
        )
        .map_err(|_| CryptoError::KeyMaterial("wrapping failed"))?;
    let mut wrapped = Vec::with_capacity(WRAPPED_KEY_LEN);
    wrapped.extend_from_slice(&nonce);
    wrapped.extend_from_slice(&sealed);
    sealed.zeroize();
    Ok(wrapped)
}

pub fn unwrap(kek: &SecretKey, wrapped: &[u8], context: &[u8]) -> Result<SecretKey, CryptoError> {
    if wrapped.len() != WRAPPED_KEY_LEN {
        return Err(CryptoError::Format("a wrapped key is 60 bytes"));
    }
    let nonce = Nonce::try_assume_unique_for_key(&wrapped[..NONCE_LEN])
        .map_err(|_| CryptoError::Format("nonce"))?;
    let mut buffer = wrapped[NONCE_LEN..].to_vec();
    let result = kek
        .aead()
        .open_in_place(nonce, Aad::from(context), &mut buffer)
        .map_err(|_| {
            CryptoError::Integrity("a wrapped key does not open with this key and context")
        })
        .and_then(|plain| SecretKey::from_bytes(plain));
    buffer.zeroize();
    result
}

struct KeyLength;

impl hkdf::KeyType for KeyLength {
    fn len(&self) -> usize {
        KEY_LEN
    }
}

/// HKDF-SHA256 of `secret` for one purpose (`info`).
// HKDF-SHA256 gives up to 8160 bytes; 32 are asked for.
#[allow(clippy::expect_used)]
pub fn derive(secret: &[u8], info: &[u8]) -> SecretKey {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"kastell/v1").extract(secret);
    let mut bytes = Box::new([0u8; KEY_LEN]);
    prk.expand(&[info], KeyLength)
        .and_then(|okm| okm.fill(&mut bytes[..]))
        .expect("HKDF output of 32 bytes");
    SecretKey(bytes)
}

/// Where tenant keys are wrapped and unwrapped: the root of the hierarchy.
pub trait KeyProvider: Send + Sync {
    fn wrap_tenant_key(&self, key: &SecretKey, context: &[u8]) -> Result<Vec<u8>, CryptoError>;
    fn unwrap_tenant_key(&self, wrapped: &[u8], context: &[u8]) -> Result<SecretKey, CryptoError>;
    /// Who holds the master key, for operators (never the key itself).
    fn describe(&self) -> String;
    /// The kind of provider, for metrics and reports: `file`, `pkcs11`, `transit`.
    fn kind(&self) -> &'static str;
}

/// A master key held by this process: 32 random bytes from a file or the
/// environment. Tenant keys are wrapped with a key derived from it by HKDF, so the
/// master secret itself never keys a cipher.
pub struct LocalMasterKey {
    wrapping: SecretKey,
    origin: String,
}

impl LocalMasterKey {
    pub fn new(master: &SecretKey, origin: impl Into<String>) -> Self {
        Self {
            wrapping: derive(master.expose(), b"kastell/tenant-key-wrapping/v1"),
            origin: origin.into(),
        }
    }
}

impl KeyProvider for LocalMasterKey {
    fn wrap_tenant_key(&self, key: &SecretKey, context: &[u8]) -> Result<Vec<u8>, CryptoError> {
        wrap(&self.wrapping, key, context)
    }

    fn unwrap_tenant_key(&self, wrapped: &[u8], context: &[u8]) -> Result<SecretKey, CryptoError> {
        unwrap(&self.wrapping, wrapped, context)
    }

    fn describe(&self) -> String {
        format!("local master key ({})", self.origin)
    }

    fn kind(&self) -> &'static str {
        "file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_round_trip_and_context_binding() {
        let kek = SecretKey::generate().unwrap();
        let key = SecretKey::generate().unwrap();
        let wrapped = wrap(&kek, &key, b"tenant-a/1").unwrap();
        assert_eq!(wrapped.len(), WRAPPED_KEY_LEN);
        assert_eq!(
            unwrap(&kek, &wrapped, b"tenant-a/1").unwrap().expose(),
            key.expose()
        );
        assert!(
            unwrap(&kek, &wrapped, b"tenant-b/1").is_err(),
            "context is bound"
        );
        let other = SecretKey::generate().unwrap();
        assert!(
            unwrap(&other, &wrapped, b"tenant-a/1").is_err(),
            "wrong key"
        );
        let mut flipped = wrapped.clone();
        flipped[20] ^= 1;
        assert!(unwrap(&kek, &flipped, b"tenant-a/1").is_err(), "tamper");
    }

    #[test]
    fn keys_never_print() {
        let key = SecretKey::from_bytes(&[7u8; 32]).unwrap();
        assert_eq!(format!("{key:?}"), "SecretKey(redacted)");
    }

    #[test]
    fn hkdf_is_deterministic_and_separates_purposes() {
        let a = derive(b"master", b"one");
        assert_eq!(a.expose(), derive(b"master", b"one").expose());
        assert_ne!(a.expose(), derive(b"master", b"two").expose());
    }
}
