//! The encrypted blob container (src/crypto/format.rs), read the way the blob
//! store reads it (src/store/read.rs `open_prefetching`, `read_range`), with a
//! fixed tenant key.
//!
//! Input: the first byte chooses the mode.
//! - even: the rest is a stored object as found in the bucket: header decoded,
//!   data key unwrapped, layout computed, segments opened; nothing may panic.
//! - odd: the rest describes a write: segment size, chunking, a plaintext, a
//!   byte range and a tampering. The object is sealed with the real writer;
//!   properties: it opens to the plaintext (whole, and the range from its
//!   segments alone), and a tampered object never opens.
#![no_main]

use kastell::crypto::format::{Header, Layout, Opener, Sealer};
use kastell::crypto::keys::{self, SecretKey};
use kastell_fuzz::{chunks, take_u64};
use libfuzzer_sys::fuzz_target;

const TENANT_KEY: [u8; 32] = [0x5A; 32];
const DATA_KEY: [u8; 32] = [0xC3; 32];
const OBJECT_ID: [u8; 16] = [0x11; 16];
const KEY_ID: &str = "fuzz/1";

/// What the store does with an object: the plaintext, or the first error.
fn open_object(object: &[u8]) -> Result<Vec<u8>, kastell::crypto::CryptoError> {
    let tenant_key = SecretKey::from_bytes(&TENANT_KEY).expect("32 bytes");
    let header =
        Header::decode(object)?.ok_or(kastell::crypto::CryptoError::Format("truncated header"))?;
    assert_eq!(header.encode(), object[..header.len()], "header round trip");
    let prefix =
        Header::authenticated_prefix(header.segment_size, &header.object_id, &header.key_id);
    let data_key = keys::unwrap(&tenant_key, &header.wrapped_data_key, &prefix)?;
    let layout = Layout::from_ciphertext_len(
        header.len() as u64,
        header.segment_size,
        object.len() as u64,
    )?;
    let all = layout.ciphertext_range(&(0..layout.segments));
    assert!(all.start <= all.end && all.end <= object.len() as u64);
    Opener::new(&data_key, header.object_id, layout)
        .open(0, &object[all.start as usize..all.end as usize])
}

fn seal(segment_size: u32, seed: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let tenant_key = SecretKey::from_bytes(&TENANT_KEY).expect("32 bytes");
    let data_key = SecretKey::from_bytes(&DATA_KEY).expect("32 bytes");
    let prefix = Header::authenticated_prefix(segment_size, &OBJECT_ID, KEY_ID);
    let header = Header {
        segment_size,
        object_id: OBJECT_ID,
        key_id: KEY_ID.into(),
        wrapped_data_key: keys::wrap(&tenant_key, &data_key, &prefix).expect("wrap"),
    };
    let mut object = header.encode();
    let mut sealer = Sealer::new(&data_key, OBJECT_ID, segment_size);
    for chunk in chunks(seed, plaintext) {
        for piece in sealer.push(chunk) {
            object.extend_from_slice(&piece);
        }
    }
    for piece in sealer.finish() {
        object.extend_from_slice(&piece);
    }
    assert_eq!(
        (object.len() - header.len()) as u64,
        Layout::ciphertext_len(0, segment_size, plaintext.len() as u64)
    );
    object
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let _ = open_object(rest);
        return;
    }
    // segment size 1..=256, a range, a tampering position, a chunking seed.
    if rest.len() < 4 {
        return;
    }
    let segment_size = rest[0] as u32 + 1;
    let seed_len = (rest[1] % 8) as usize;
    let (range_start, rest2) = take_u64(&rest[2..]);
    let (range_len, rest2) = take_u64(rest2);
    let (tamper, rest2) = take_u64(rest2);
    let seed_len = seed_len.min(rest2.len());
    let (seed, plaintext) = rest2.split_at(seed_len);

    let object = seal(segment_size, seed, plaintext);
    assert_eq!(
        open_object(&object).expect("a sealed object opens"),
        plaintext
    );

    // A range, from its segments alone (`BlobStore::read_range`).
    let tenant_key = SecretKey::from_bytes(&TENANT_KEY).expect("32 bytes");
    let header = Header::decode(&object).unwrap().unwrap();
    let layout =
        Layout::from_ciphertext_len(header.len() as u64, segment_size, object.len() as u64)
            .expect("layout");
    assert_eq!(layout.plaintext_len, plaintext.len() as u64);
    if !plaintext.is_empty() {
        let len = plaintext.len() as u64;
        let start = range_start % len;
        let end = start + 1 + range_len % (len - start);
        let range = start..end;
        let segments = layout.segments_for(&range);
        let sealed = layout.ciphertext_range(&segments);
        let prefix = Header::authenticated_prefix(segment_size, &OBJECT_ID, KEY_ID);
        let data_key = keys::unwrap(&tenant_key, &header.wrapped_data_key, &prefix).unwrap();
        let plain = Opener::new(&data_key, OBJECT_ID, layout)
            .open(
                segments.start,
                &object[sealed.start as usize..sealed.end as usize],
            )
            .expect("a range opens");
        let skip = (range.start - segments.start * layout.segment_size) as usize;
        assert_eq!(
            &plain[skip..skip + (end - start) as usize],
            &plaintext[start as usize..end as usize]
        );
    }

    // Tampering: flip one bit, cut the object short, or append a byte.
    let mut tampered = object.clone();
    let position = (tamper >> 8) as usize % object.len();
    match tamper % 3 {
        0 => tampered[position] ^= 1 << (tamper % 8),
        1 => tampered.truncate(position),
        _ => tampered.push(tamper as u8),
    }
    assert!(
        open_object(&tampered).is_err(),
        "a tampered object opened (mode {}, position {position})",
        tamper % 3
    );
});
