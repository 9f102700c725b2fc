//! Records: small values sealed in the blob format (see `crate::crypto::format`)
//! but kept outside the blob store, in the index, each bound to the blob it
//! describes. An instance's metadata is one: the index holds it so that a
//! series' metadata is one query rather than a ranged read of every instance,
//! and holds it encrypted, under the tenant's key like the blob itself, so
//! that a copy of the index does not carry every header in the clear.
//!
//! A record is bound to its blob by its object id (derived from the blob's
//! name), so a record moved to another instance's row fails to open.

use super::{BlobKey, BlobStore, StoreError};
use crate::crypto::format::{Header, Layout, Opener, Sealer, SEGMENT_SIZE};
use crate::crypto::{KeyId, SecretKey};

/// The object id of the record bound to `blob`: not the blob's own (a record
/// is not the blob), but determined by it.
fn record_id(blob: &BlobKey) -> [u8; 16] {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    digest.update(b"kastell-record-v1\0");
    digest.update(&blob.object_id());
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest.finish().as_ref()[..16]);
    id
}

impl BlobStore {
    /// Seals `plaintext` as the record bound to `blob`, under the tenant's
    /// active key (a data key of its own, wrapped by it).
    pub async fn seal_record(
        &self,
        blob: &BlobKey,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let tenant = self.tenant.clone();
        let (key_id, tenant_key) =
            super::with_keys(&self.keys, &self.tenant, move |keys| keys.active(&tenant)).await?;
        let data_key = SecretKey::generate()?;
        let object_id = record_id(blob);
        let mut sealed = super::write::seal_header(&tenant_key, &data_key, &key_id, object_id)?;
        let mut sealer = Sealer::new(&data_key, object_id, SEGMENT_SIZE);
        for piece in sealer.push(plaintext).into_iter().chain(sealer.finish()) {
            sealed.extend_from_slice(&piece);
        }
        Ok(sealed)
    }

    /// Opens the record bound to `blob`.
    pub async fn open_record(&self, blob: &BlobKey, sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        let (header, data_key) = self.record_key(blob, sealed).await?;
        let layout = Layout::from_ciphertext_len(
            header.len() as u64,
            header.segment_size,
            sealed.len() as u64,
        )?;
        let opener = Opener::new(&data_key, header.object_id, layout);
        self.checked(blob, opener.open(0, &sealed[header.len()..]))
    }

    /// The key a record is sealed under (nothing is decrypted).
    pub fn record_key_id(sealed: &[u8]) -> Result<KeyId, StoreError> {
        let header = Header::decode(sealed)?
            .ok_or(StoreError::Integrity("the record header is truncated"))?;
        Ok(KeyId::parse(&header.key_id)?)
    }

    /// The record re-wrapped under the tenant's active key (a new header on the
    /// same sealed segments), or `None` when it uses that key already.
    pub async fn rewrap_record(
        &self,
        blob: &BlobKey,
        sealed: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let tenant = self.tenant.clone();
        let (active_id, active_key) =
            super::with_keys(&self.keys, &self.tenant, move |keys| keys.active(&tenant)).await?;
        if Self::record_key_id(sealed)? == active_id {
            return Ok(None);
        }
        let (header, data_key) = self.record_key(blob, sealed).await?;
        let mut rewrapped =
            super::write::seal_header(&active_key, &data_key, &active_id, header.object_id)?;
        rewrapped.extend_from_slice(&sealed[header.len()..]);
        Ok(Some(rewrapped))
    }

    /// A record's header, checked to be bound to `blob`, and its data key.
    async fn record_key(
        &self,
        blob: &BlobKey,
        sealed: &[u8],
    ) -> Result<(Header, SecretKey), StoreError> {
        let header = Header::decode(sealed)?
            .ok_or(StoreError::Integrity("the record header is truncated"))?;
        if header.object_id != record_id(blob) {
            self.incident(blob, "the record belongs to another object (swapped)");
            return Err(StoreError::Integrity(
                "the record belongs to another object",
            ));
        }
        let data_key = self
            .unwrap_data_key(blob, &header, "the record's data key does not unwrap")
            .await?;
        Ok((header, data_key))
    }
}
