//! The encrypted blob format, version 1 (documented with test vectors in
//! `schema/BLOB_FORMAT.md`).
//!
//! ```text
//! header  = "KSTL" | version u8 = 1 | algorithm u8 = 1 (AES-256-GCM) | 0u16
//!         | segment size u32 BE | object id [16] | key id length u16 BE | key id (UTF-8)
//!         | wrapped data key [60]
//! body    = segment 0 | segment 1 | ... | segment n-1      (n ≥ 1)
//! segment = AES-256-GCM(data key, nonce = 0u32 | index u64 BE,
//!                       aad = object id | index u64 BE | final u8) of ≤ segment size bytes | tag [16]
//! ```
//!
//! Every segment but the last holds exactly `segment size` plaintext bytes; the last
//! holds 0 to `segment size` and is flagged final, so truncation at a segment
//! boundary fails like any other change. The data key is wrapped by the tenant key
//! with the header before it as associated data, so editing any header field
//! (segment size, object id, key id) makes the key unwrap fail. The object id is
//! the blob's own name, so two valid objects swapped under each other's names fail
//! too. Each object has its own random data key, so per-object nonces from the
//! segment index never repeat under one key.

use bytes::{Bytes, BytesMut};
use ring::aead::{Aad, LessSafeKey, Nonce, NONCE_LEN};

use super::keys::{SecretKey, WRAPPED_KEY_LEN};
use super::CryptoError;

pub const MAGIC: &[u8; 4] = b"KSTL";
pub const VERSION: u8 = 1;
pub const ALGORITHM_AES_256_GCM: u8 = 1;
/// Plaintext bytes per segment: small enough that one frame's range reads little
/// extra, large enough that the 16-byte tags cost 0.02%.
pub const SEGMENT_SIZE: u32 = 64 * 1024;
pub const TAG_LEN: u64 = 16;
const FIXED_HEADER_LEN: usize = 30;
/// Longest header: fixed part, a key id of at most 255 bytes, the wrapped key.
pub const MAX_HEADER_LEN: usize = FIXED_HEADER_LEN + 255 + WRAPPED_KEY_LEN;

/// The parsed header of an encrypted object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub segment_size: u32,
    pub object_id: [u8; 16],
    pub key_id: String,
    pub wrapped_data_key: Vec<u8>,
}

impl Header {
    /// The bytes the wrapped data key is bound to: everything before it.
    pub fn authenticated_prefix(segment_size: u32, object_id: &[u8; 16], key_id: &str) -> Vec<u8> {
        let mut prefix = Vec::with_capacity(FIXED_HEADER_LEN + key_id.len());
        prefix.extend_from_slice(MAGIC);
        prefix.push(VERSION);
        prefix.push(ALGORITHM_AES_256_GCM);
        prefix.extend_from_slice(&[0, 0]);
        prefix.extend_from_slice(&segment_size.to_be_bytes());
        prefix.extend_from_slice(object_id);
        prefix.extend_from_slice(&(key_id.len() as u16).to_be_bytes());
        prefix.extend_from_slice(key_id.as_bytes());
        prefix
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut bytes =
            Self::authenticated_prefix(self.segment_size, &self.object_id, &self.key_id);
        bytes.extend_from_slice(&self.wrapped_data_key);
        bytes
    }

    pub fn len(&self) -> usize {
        FIXED_HEADER_LEN + self.key_id.len() + WRAPPED_KEY_LEN
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Parses a header from the start of `bytes`. `Ok(None)`: more bytes needed.
    pub fn decode(bytes: &[u8]) -> Result<Option<Header>, CryptoError> {
        if bytes.len() < FIXED_HEADER_LEN {
            return Ok(None);
        }
        if &bytes[..4] != MAGIC {
            return Err(CryptoError::Format("bad magic"));
        }
        if bytes[4] != VERSION || bytes[5] != ALGORITHM_AES_256_GCM {
            return Err(CryptoError::Format(
                "unsupported format version or algorithm",
            ));
        }
        // The wrapped key is bound to the header as `authenticated_prefix` writes
        // it, reserved bytes zero: any other value would go unauthenticated.
        if bytes[6..8] != [0, 0] {
            return Err(CryptoError::Format("reserved header bytes are not zero"));
        }
        let segment_size = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if segment_size == 0 || segment_size > 64 * 1024 * 1024 {
            return Err(CryptoError::Format("segment size out of range"));
        }
        let mut object_id = [0u8; 16];
        object_id.copy_from_slice(&bytes[12..28]);
        let key_id_len = u16::from_be_bytes([bytes[28], bytes[29]]) as usize;
        if key_id_len > 255 {
            return Err(CryptoError::Format("key id too long"));
        }
        let total = FIXED_HEADER_LEN + key_id_len + WRAPPED_KEY_LEN;
        if bytes.len() < total {
            return Ok(None);
        }
        let key_id = std::str::from_utf8(&bytes[FIXED_HEADER_LEN..FIXED_HEADER_LEN + key_id_len])
            .map_err(|_| CryptoError::Format("key id is not UTF-8"))?
            .to_string();
        Ok(Some(Header {
            segment_size,
            object_id,
            key_id,
            wrapped_data_key: bytes[FIXED_HEADER_LEN + key_id_len..total].to_vec(),
        }))
    }
}

fn nonce(index: u64) -> Nonce {
    let mut bytes = [0u8; NONCE_LEN];
    bytes[4..].copy_from_slice(&index.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

fn aad(object_id: &[u8; 16], index: u64, last: bool) -> [u8; 25] {
    let mut bytes = [0u8; 25];
    bytes[..16].copy_from_slice(object_id);
    bytes[16..24].copy_from_slice(&index.to_be_bytes());
    bytes[24] = last as u8;
    bytes
}

/// Encrypts a stream: feed plaintext in any pieces, take sealed segments out.
///
/// Output comes as pieces to be written in order (each segment's ciphertext, then
/// its tag). Owned input is encrypted in place: whole segments of it are never
/// copied.
pub struct Sealer {
    key: LessSafeKey,
    object_id: [u8; 16],
    segment_size: usize,
    /// The segment being filled, or a full one waiting to learn whether it is the
    /// last (the final flag is part of its associated data).
    pending: Option<BytesMut>,
    index: u64,
}

impl Sealer {
    pub fn new(data_key: &SecretKey, object_id: [u8; 16], segment_size: u32) -> Self {
        Self {
            key: data_key.aead(),
            object_id,
            segment_size: segment_size as usize,
            pending: None,
            index: 0,
        }
    }

    // ring refuses to seal only more than 2^36 bytes at once (AES-GCM's limit);
    // a segment is at most 64 MiB (checked where the size is set).
    #[allow(clippy::expect_used)]
    fn seal(&mut self, mut segment: BytesMut, last: bool, out: &mut Vec<Bytes>) {
        let tag = self
            .key
            .seal_in_place_separate_tag(
                nonce(self.index),
                Aad::from(aad(&self.object_id, self.index, last)),
                &mut segment,
            )
            .expect("sealing a segment cannot fail");
        self.index += 1;
        out.push(segment.freeze());
        out.push(Bytes::copy_from_slice(tag.as_ref()));
    }

    /// Adds plaintext it may encrypt in place; returns the pieces completed by it.
    pub fn push_owned(&mut self, mut chunk: BytesMut) -> Vec<Bytes> {
        let mut out = Vec::new();
        if let Some(pending) = self.pending.as_mut() {
            if pending.len() < self.segment_size {
                let take = (self.segment_size - pending.len()).min(chunk.len());
                pending.extend_from_slice(&chunk[..take]);
                let _ = chunk.split_to(take);
            }
        }
        while !chunk.is_empty() {
            // More data follows, so the pending (full) segment is not the last.
            if let Some(full) = self.pending.take() {
                self.seal(full, false, &mut out);
            }
            let take = self.segment_size.min(chunk.len());
            self.pending = Some(chunk.split_to(take));
        }
        out
    }

    /// Adds plaintext (copied once).
    pub fn push(&mut self, plaintext: &[u8]) -> Vec<Bytes> {
        self.push_owned(BytesMut::from(plaintext))
    }

    /// Seals the final segment.
    pub fn finish(mut self) -> Vec<Bytes> {
        let last = self.pending.take().unwrap_or_default();
        let mut out = Vec::with_capacity(2);
        self.seal(last, true, &mut out);
        out
    }
}

/// Where the segments of an object are, from its sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub header_len: u64,
    pub segment_size: u64,
    pub segments: u64,
    pub plaintext_len: u64,
}

impl Layout {
    /// The layout of an object of `ciphertext_len` bytes in total.
    pub fn from_ciphertext_len(
        header_len: u64,
        segment_size: u32,
        ciphertext_len: u64,
    ) -> Result<Self, CryptoError> {
        let segment_size = segment_size as u64;
        let body = ciphertext_len
            .checked_sub(header_len)
            .filter(|b| *b >= TAG_LEN)
            .ok_or(CryptoError::Integrity("the object is truncated"))?;
        let sealed = segment_size + TAG_LEN;
        let segments = body.div_ceil(sealed).max(1);
        let last = body - (segments - 1) * sealed;
        if last < TAG_LEN {
            return Err(CryptoError::Integrity("the object is truncated"));
        }
        // Every segment holds its tag (checked above for the last one).
        let plaintext_len = body - segments * TAG_LEN;
        Ok(Self {
            header_len,
            segment_size,
            segments,
            plaintext_len,
        })
    }

    /// The ciphertext size of `plaintext_len` bytes.
    pub fn ciphertext_len(header_len: u64, segment_size: u32, plaintext_len: u64) -> u64 {
        let segments = plaintext_len.div_ceil(segment_size as u64).max(1);
        header_len + plaintext_len + segments * TAG_LEN
    }

    /// Segments holding the plaintext `range` (non-empty, within the object).
    pub fn segments_for(&self, range: &std::ops::Range<u64>) -> std::ops::Range<u64> {
        let first = range.start / self.segment_size;
        let last = (range.end.max(range.start + 1) - 1) / self.segment_size;
        first..(last + 1).min(self.segments)
    }

    /// The ciphertext bytes of `segments`.
    pub fn ciphertext_range(&self, segments: &std::ops::Range<u64>) -> std::ops::Range<u64> {
        let sealed = self.segment_size + TAG_LEN;
        let total = self.header_len + self.plaintext_len + self.segments * TAG_LEN;
        let start = self.header_len + segments.start * sealed;
        let end = (self.header_len + segments.end * sealed).min(total);
        start..end
    }
}

/// Decrypts segments of one object.
pub struct Opener {
    key: LessSafeKey,
    object_id: [u8; 16],
    layout: Layout,
}

impl Opener {
    pub fn new(data_key: &SecretKey, object_id: [u8; 16], layout: Layout) -> Self {
        Self {
            key: data_key.aead(),
            object_id,
            layout,
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Decrypts one sealed segment in place (no copy): `segment` becomes its plaintext.
    pub fn open_in_place(&self, index: u64, segment: &mut BytesMut) -> Result<(), CryptoError> {
        if index >= self.layout.segments {
            return Err(CryptoError::Integrity("more segments than the object has"));
        }
        let last = index == self.layout.segments - 1;
        let full = (self.layout.segment_size + TAG_LEN) as usize;
        if segment.len() < TAG_LEN as usize || (!last && segment.len() != full) {
            return Err(CryptoError::Integrity("the object is truncated"));
        }
        let plain_len = self
            .key
            .open_in_place(
                nonce(index),
                Aad::from(aad(&self.object_id, index, last)),
                segment,
            )
            .map_err(|_| CryptoError::Integrity("a segment failed authentication"))?
            .len();
        segment.truncate(plain_len);
        Ok(())
    }

    /// Decrypts consecutive sealed segments starting at `first`; `sealed` must hold
    /// whole segments. Returns their plaintext.
    pub fn open(&self, first: u64, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let segment = (self.layout.segment_size + TAG_LEN) as usize;
        let mut plaintext = Vec::with_capacity(sealed.len());
        for (offset, chunk) in sealed.chunks(segment).enumerate() {
            let index = first + offset as u64;
            if index >= self.layout.segments {
                return Err(CryptoError::Integrity("more segments than the object has"));
            }
            let last = index == self.layout.segments - 1;
            if chunk.len() < TAG_LEN as usize || (!last && chunk.len() != segment) {
                return Err(CryptoError::Integrity("the object is truncated"));
            }
            let mut buffer = chunk.to_vec();
            let opened = self
                .key
                .open_in_place(
                    nonce(index),
                    Aad::from(aad(&self.object_id, index, last)),
                    &mut buffer,
                )
                .map_err(|_| CryptoError::Integrity("a segment failed authentication"))?;
            plaintext.extend_from_slice(opened);
        }
        Ok(plaintext)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn seal_all(
        key: &SecretKey,
        object_id: [u8; 16],
        segment_size: u32,
        data: &[u8],
        piece: usize,
    ) -> Vec<u8> {
        let mut sealer = Sealer::new(key, object_id, segment_size);
        let mut out = Vec::new();
        for chunk in data.chunks(piece.max(1)) {
            for segment in sealer.push(chunk) {
                out.extend_from_slice(&segment);
            }
        }
        for piece in sealer.finish() {
            out.extend_from_slice(&piece);
        }
        out
    }

    fn open_all(
        key: &SecretKey,
        object_id: [u8; 16],
        segment_size: u32,
        body: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let layout = Layout::from_ciphertext_len(0, segment_size, body.len() as u64)?;
        Opener::new(key, object_id, layout).open(0, body)
    }

    #[test]
    fn round_trips_every_size_around_segment_boundaries() {
        let key = SecretKey::generate().unwrap();
        let id = [9u8; 16];
        let size = 16u32;
        for length in [0usize, 1, 15, 16, 17, 31, 32, 33, 47, 48, 49, 160] {
            let data: Vec<u8> = (0..length).map(|i| (i * 7) as u8).collect();
            for piece in [1, 5, 16, 1000] {
                let body = seal_all(&key, id, size, &data, piece);
                assert_eq!(
                    body.len() as u64,
                    Layout::ciphertext_len(0, size, length as u64)
                );
                assert_eq!(
                    open_all(&key, id, size, &body).unwrap(),
                    data,
                    "length {length} piece {piece}"
                );
            }
        }
    }

    #[test]
    fn ranges_decrypt_from_their_segments_alone() {
        let key = SecretKey::generate().unwrap();
        let id = [3u8; 16];
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 253) as u8).collect();
        let body = seal_all(&key, id, 64, &data, 100);
        let layout = Layout::from_ciphertext_len(0, 64, body.len() as u64).unwrap();
        assert_eq!(layout.plaintext_len, 1000);
        for range in [0..1u64, 63..65, 64..128, 500..999, 999..1000, 0..1000] {
            let segments = layout.segments_for(&range);
            let sealed = layout.ciphertext_range(&segments);
            let plain = Opener::new(&key, id, layout)
                .open(
                    segments.start,
                    &body[sealed.start as usize..sealed.end as usize],
                )
                .unwrap();
            let skip = (range.start - segments.start * 64) as usize;
            assert_eq!(
                &plain[skip..skip + (range.end - range.start) as usize],
                &data[range.start as usize..range.end as usize]
            );
        }
    }

    #[test]
    fn tampering_truncation_reordering_swapping_and_wrong_keys_fail() {
        let key = SecretKey::generate().unwrap();
        let id = [1u8; 16];
        let data = vec![0x42u8; 200];
        let body = seal_all(&key, id, 64, &data, 64);
        for i in 0..body.len() {
            let mut flipped = body.clone();
            flipped[i] ^= 0x80;
            assert!(open_all(&key, id, 64, &flipped).is_err(), "flip at {i}");
        }
        let sealed = 64 + 16;
        // Truncation at a segment boundary (drops the final segment).
        assert!(open_all(&key, id, 64, &body[..2 * sealed]).is_err());
        assert!(open_all(&key, id, 64, &body[..body.len() - 1]).is_err());
        // Reordering two full segments.
        let mut reordered = body.clone();
        reordered[..sealed].copy_from_slice(&body[sealed..2 * sealed]);
        reordered[sealed..2 * sealed].copy_from_slice(&body[..sealed]);
        assert!(open_all(&key, id, 64, &reordered).is_err());
        // Another object's id, another key.
        assert!(open_all(&key, [2u8; 16], 64, &body).is_err());
        assert!(open_all(&SecretKey::generate().unwrap(), id, 64, &body).is_err());
        // Appending a segment.
        let mut longer = body.clone();
        longer.extend_from_slice(&body[..sealed]);
        assert!(open_all(&key, id, 64, &longer).is_err());
    }

    /// fuzz/regressions/blob_container/crash-2690026ccd30ca6a6d848595138df1ba3dbcf262:
    /// a body whose last segment is shorter than a tag (18 bytes with 1-byte
    /// segments) made the plaintext length underflow before the check.
    #[test]
    fn a_last_segment_shorter_than_its_tag_is_truncation() {
        for (segment_size, body) in [
            (1u32, 18u64),
            (1, 17 + 17 + 5),
            (64, 80 + 15),
            (16, 32 + 15),
        ] {
            assert_eq!(
                Layout::from_ciphertext_len(7, segment_size, 7 + body),
                Err(CryptoError::Integrity("the object is truncated")),
                "{body} bytes in segments of {segment_size}"
            );
        }
        let layout = Layout::from_ciphertext_len(7, 1, 7 + 17 + 16).unwrap();
        assert_eq!((layout.segments, layout.plaintext_len), (2, 1));
    }

    #[test]
    fn header_round_trip_and_validation() {
        let header = Header {
            segment_size: SEGMENT_SIZE,
            object_id: [5u8; 16],
            key_id: "default/1".into(),
            wrapped_data_key: vec![7u8; WRAPPED_KEY_LEN],
        };
        let bytes = header.encode();
        assert_eq!(bytes.len(), header.len());
        assert_eq!(Header::decode(&bytes).unwrap().unwrap(), header);
        assert_eq!(Header::decode(&bytes[..bytes.len() - 1]).unwrap(), None);
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(Header::decode(&bad).is_err());
        // fuzz/regressions/blob_container/crash-reserved-header-bytes: the
        // reserved bytes are not authenticated, so they must be zero.
        for reserved in [6, 7] {
            let mut bad = bytes.clone();
            bad[reserved] = 1;
            assert_eq!(
                Header::decode(&bad),
                Err(CryptoError::Format("reserved header bytes are not zero"))
            );
        }
        assert!(Header::decode(b"DICM and more than thirty bytes of stuff").is_err());
    }

    /// A fixed vector: key, object id and plaintext give exactly these bytes (also
    /// in `schema/BLOB_FORMAT.md`), so the format cannot drift unnoticed.
    #[test]
    fn test_vector() {
        let key = SecretKey::from_bytes(&[0x11; 32]).unwrap();
        let id = [0x22; 16];
        let body = seal_all(&key, id, 4, b"kastell!!", 3);
        assert_eq!(hex::encode(&body), TEST_VECTOR_BODY,);
    }

    pub(crate) const TEST_VECTOR_BODY: &str = "afab6d13d722ebceb48ad6d39c3abd0a4e879680ace764e990315558016879e0beb59e62a4c6f807678b54af4731178d7dc4860fd2e7054332";
}
