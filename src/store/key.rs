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

/// The name of one object: `<kind>/<random uuid>` in the primary store, or
/// `<store>/<kind>/<random uuid>` in the named store `<store>` (issue 15: a
/// study's instances may be moved to other stores and tiers as they age). The
/// store part routes the request; the object's path inside its store is always
/// `<kind>/<uuid>`, so a moved object keeps its name, and its bytes: the
/// encryption binds the uuid, not the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobKey(String);

/// Whether `name` may name a store: lower-case letters, digits and dashes, at
/// most 63 characters, and not a kind's prefix.
pub fn valid_store_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && name != BlobKind::Instance.prefix()
        && name != BlobKind::Derived.prefix()
        && name != PRIMARY_STORE
}

/// The name the primary store (`storage.blob_url`) goes by in reports and rules.
pub const PRIMARY_STORE: &str = "primary";

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
        let mut parts: Vec<&str> = raw.split('/').collect();
        if parts.len() == 3 && valid_store_name(parts[0]) {
            parts.remove(0);
        }
        let valid = parts.len() == 2
            && (parts[0] == BlobKind::Instance.prefix() || parts[0] == BlobKind::Derived.prefix())
            && parts[1].len() == 32
            && parts[1].bytes().all(|b| b.is_ascii_hexdigit());
        if valid {
            Ok(BlobKey(raw.to_string()))
        } else {
            Err(StoreError::InvalidKey(raw.to_string()))
        }
    }

    /// An instance's object (not a derived one).
    pub fn is_instance(&self) -> bool {
        self.object_path()
            .starts_with(&format!("{}/", BlobKind::Instance.prefix()))
    }

    /// The named store the object is in; None for the primary store.
    pub fn store(&self) -> Option<&str> {
        let (first, rest) = self.0.split_once('/')?;
        rest.contains('/').then_some(first)
    }

    /// The store's name, `primary` for the primary store.
    pub fn store_name(&self) -> &str {
        self.store().unwrap_or(PRIMARY_STORE)
    }

    /// The same object's name in another store (`None` or `primary`: the primary).
    pub fn in_store(&self, store: Option<&str>) -> BlobKey {
        let path = self.object_path();
        match store.filter(|s| *s != PRIMARY_STORE) {
            Some(store) => BlobKey(format!("{store}/{path}")),
            None => BlobKey(path.to_string()),
        }
    }

    /// `<kind>/<uuid>`: the path inside its store.
    fn object_path(&self) -> &str {
        match self.store() {
            Some(store) => &self.0[store.len() + 1..],
            None => &self.0,
        }
    }

    /// The key of an object listed in store `store` at `path`.
    pub(super) fn listed(store: Option<&str>, path: &str) -> Result<Self, StoreError> {
        let key = Self::parse(path)?;
        if key.store().is_some() {
            return Err(StoreError::InvalidKey(path.to_string()));
        }
        Ok(key.in_store(store))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(super) fn path(&self) -> ObjectPath {
        ObjectPath::from(self.object_path())
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
