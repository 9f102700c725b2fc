//! Helpers shared by the fuzz targets: how an input names the chunking its
//! payload is fed in, so that one input exercises the incremental readers
//! (header scanner, fragment scanner, multipart reader) the way a network does.

/// Splits an input into a chunking seed and the payload: the first byte gives
/// the seed's length (0 to 15), the seed follows, then the payload.
/// `fuzz/make_corpus.py` writes its seeds in this form (`b"\x00"` + payload
/// for "one chunk").
pub fn split_seed(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return (&[], &[]);
    };
    let n = (first as usize % 16).min(rest.len());
    rest.split_at(n)
}

/// Cuts `payload` into chunks whose sizes cycle through the seed bytes
/// (a byte `b` makes a chunk of `b + 1` bytes; a zero-length seed makes one chunk).
pub fn chunks<'a>(seed: &[u8], payload: &'a [u8]) -> Vec<&'a [u8]> {
    if seed.is_empty() {
        return vec![payload];
    }
    let mut out = Vec::new();
    let mut rest = payload;
    let mut sizes = seed.iter().cycle();
    while !rest.is_empty() {
        let size = (*sizes.next().expect("cycle") as usize + 1).min(rest.len());
        let (head, tail) = rest.split_at(size);
        out.push(head);
        rest = tail;
    }
    out
}

/// Reads a little-endian u64 from the first (up to) 8 bytes; returns it and the rest.
pub fn take_u64(data: &[u8]) -> (u64, &[u8]) {
    let n = data.len().min(8);
    let mut bytes = [0u8; 8];
    bytes[..n].copy_from_slice(&data[..n]);
    (u64::from_le_bytes(bytes), &data[n..])
}
