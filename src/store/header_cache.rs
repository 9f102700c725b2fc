//! The headers of recently read objects, so that reading a byte range of an
//! object read before (the next frame of a series being scrolled) is one
//! request to the backend instead of two: on object storage each is a round
//! trip. A header holds nothing secret (its data key is wrapped), and every
//! use still unwraps the data key through the key ring, so a retired or
//! shredded tenant key stops reads at once, cached or not.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::BlobKey;
use crate::crypto::format::Header;

/// Headers kept; beyond, the oldest go first (about 200 bytes each).
const CAPACITY: usize = 16_384;

/// A header and the object's total size, as fetched.
#[derive(Debug, Clone)]
pub(super) struct KnownHeader {
    pub header: Header,
    pub total: u64,
}

#[derive(Debug, Default)]
pub(super) struct HeaderCache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    headers: HashMap<BlobKey, KnownHeader>,
    /// Insertion order, for eviction.
    order: VecDeque<BlobKey>,
}

impl HeaderCache {
    pub fn get(&self, key: &BlobKey) -> Option<KnownHeader> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.headers.get(key).cloned()
    }

    pub fn insert(&self, key: &BlobKey, known: KnownHeader) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.headers.insert(key.clone(), known).is_none() {
            inner.order.push_back(key.clone());
        }
        while inner.order.len() > CAPACITY {
            if let Some(oldest) = inner.order.pop_front() {
                inner.headers.remove(&oldest);
            }
        }
    }

    /// Forgets an object's header: it was rewritten (a key rotation gives it a
    /// new header) or removed.
    pub fn forget(&self, key: &BlobKey) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.headers.remove(key).is_some() {
            inner.order.retain(|k| k != key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::BlobKind;

    fn known() -> KnownHeader {
        KnownHeader {
            header: Header {
                segment_size: 65536,
                object_id: [0; 16],
                key_id: "default/1".into(),
                wrapped_data_key: vec![0; 60],
            },
            total: 1000,
        }
    }

    #[test]
    fn holds_at_most_its_capacity_oldest_out_first() {
        let cache = HeaderCache::default();
        let keys: Vec<BlobKey> = (0..CAPACITY + 10)
            .map(|_| BlobKey::new(BlobKind::Instance))
            .collect();
        for key in &keys {
            cache.insert(key, known());
        }
        let inner = cache.inner.lock().unwrap();
        assert_eq!(inner.headers.len(), CAPACITY);
        assert_eq!(inner.order.len(), CAPACITY);
        drop(inner);
        assert!(cache.get(&keys[9]).is_none());
        assert!(cache.get(&keys[10]).is_some());
        cache.forget(&keys[10]);
        assert!(cache.get(&keys[10]).is_none());
    }
}
