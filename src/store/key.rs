//! Object names: the kinds of blob and [`BlobKey`], the one type that builds every
//! name in the bucket.

use object_store::path::Path as ObjectPath;

use super::StoreError;

/// The kinds of object Kastell stores; the kind is the first path segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKind {
    /// A stored DICOM instance (PS3.10 file, as received).
    Instance,
    /// Something computed from instances and kept to answer faster: series
    /// metadata, thumbnails. Recorded in the index's `derived_blobs`.
    Derived,
}

impl BlobKind {
    pub(super) fn prefix(self) -> &'static str {
        match self {
            BlobKind::Instance => "instances",
            BlobKind::Derived => "derived",
        }
    }
}

/// The name of one object in the blob store: `<kind>/<random uuid>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobKey(String);

impl BlobKey {
    /// A fresh, never-used key. Random, so it carries no patient data and two
    /// concurrent uploads of the same instance never write the same object.
    pub fn new(kind: BlobKind) -> Self {
        BlobKey(format!(
            "{}/{}",
            kind.prefix(),
            uuid::Uuid::new_v4().simple()
        ))
    }

    /// Re-creates a key read back from the index, rejecting anything we would not
    /// have produced ourselves.
    pub fn parse(raw: &str) -> Result<Self, StoreError> {
        let valid = raw.split_once('/').is_some_and(|(kind, id)| {
            (kind == BlobKind::Instance.prefix() || kind == BlobKind::Derived.prefix())
                && id.len() == 32
                && id.bytes().all(|b| b.is_ascii_hexdigit())
        });
        if valid {
            Ok(BlobKey(raw.to_string()))
        } else {
            Err(StoreError::InvalidKey(raw.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(super) fn path(&self) -> ObjectPath {
        ObjectPath::from(self.0.as_str())
    }

    /// The 16 random bytes of the name, which the encrypted object is bound to.
    pub(super) fn object_id(&self) -> [u8; 16] {
        let hex = self.0.rsplit('/').next().unwrap_or_default();
        let mut id = [0u8; 16];
        if hex::decode_to_slice(hex, &mut id).is_err() {
            unreachable!("keys are validated on creation");
        }
        id
    }
}

impl std::fmt::Display for BlobKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
