//! The frame splitter of encapsulated Pixel Data (src/dicom/fragments.rs) fed in
//! arbitrary chunkings, and the joining of a frame's items on retrieval.
//!
//! Properties: the frame index does not depend on the chunking; every frame it
//! finds is a run of whole items, which `join_items` reads back; the index
//! survives its text form in the database.
#![no_main]

use kastell::dicom::fragments::{format_boundaries, join_items, parse_boundaries, FragmentScanner};
use kastell_fuzz::{chunks, split_seed, take_u64};
use libfuzzer_sys::fuzz_target;

/// Where the Pixel Data value starts in the (imagined) stream.
const VALUE_OFFSET: u64 = 1000;

fuzz_target!(|data: &[u8]| {
    let (seed, rest) = split_seed(data);
    // Two bytes: NumberOfFrames; one byte: whether an Extended Offset Table of
    // that many entries follows (8 bytes each, as in the header).
    if rest.len() < 3 {
        return;
    }
    let frames = u16::from_le_bytes([rest[0], rest[1]]) as u64;
    let with_table = rest[2] & 1 == 1;
    let mut stream = &rest[3..];
    let mut extended = Vec::new();
    if with_table {
        for _ in 0..frames.min(64) {
            let (offset, tail) = take_u64(stream);
            extended.push(offset);
            stream = tail;
        }
    }
    let extended = with_table.then_some(extended.as_slice());

    let mut whole = FragmentScanner::new(VALUE_OFFSET);
    whole.feed(stream);
    let mut chunked = FragmentScanner::new(VALUE_OFFSET);
    for chunk in chunks(seed, stream) {
        chunked.feed(chunk);
    }
    let boundaries = whole.frame_boundaries(frames, extended);
    assert_eq!(
        boundaries,
        chunked.frame_boundaries(frames, extended),
        "the frame index depends on the chunking"
    );
    assert_eq!(whole.value_end(), chunked.value_end());

    let _ = join_items(bytes::Bytes::copy_from_slice(stream));
    let Some(boundaries) = boundaries else {
        return;
    };
    assert_eq!(boundaries.len() as u64, frames.max(1) + 1);
    assert!(boundaries.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(Some(boundaries.last().unwrap() + 8), whole.value_end());
    for frame in boundaries.windows(2) {
        let span = &stream[(frame[0] - VALUE_OFFSET) as usize..(frame[1] - VALUE_OFFSET) as usize];
        join_items(bytes::Bytes::copy_from_slice(span)).expect("a frame is a run of whole items");
    }
    assert_eq!(
        parse_boundaries(&format_boundaries(&boundaries)),
        Some(boundaries)
    );
});
