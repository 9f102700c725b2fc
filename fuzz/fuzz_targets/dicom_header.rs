//! The PS3.10 header scanner fed in arbitrary chunkings, then the attribute
//! extraction STOW does on what it accepts (src/service/stow.rs `PartWriter`).
//!
//! Property: the scanner's outcome does not depend on how the bytes arrive.
#![no_main]

use kastell::dicom::fragments::FragmentScanner;
use kastell::dicom::header::{HeaderScanner, Scan};
use kastell::dicom::instance;
use kastell::store::{BlobKey, BlobKind};
use kastell_fuzz::{chunks, split_seed};
use libfuzzer_sys::fuzz_target;

/// The scanner's verdict, comparable whatever the error text.
fn verdict(result: &Result<Scan, kastell::dicom::DicomError>) -> Result<Scan, String> {
    result.as_ref().map(Clone::clone).map_err(|e| e.to_string())
}

fuzz_target!(|data: &[u8]| {
    let (seed, file) = split_seed(data);

    // The whole stream at once.
    let mut whole = HeaderScanner::new();
    let at_once = verdict(&whole.scan(file));

    // The same bytes as they arrive in chunks: scanning stops at the first
    // verdict that is not "need more", as STOW's part writer does.
    let mut scanner = HeaderScanner::new();
    let mut prefix = Vec::with_capacity(file.len());
    let mut outcome = Ok(Scan::NeedMore { resume_at: 0 });
    for chunk in chunks(seed, file) {
        prefix.extend_from_slice(chunk);
        outcome = verdict(&scanner.scan(&prefix));
        if !matches!(outcome, Ok(Scan::NeedMore { .. })) {
            break;
        }
    }
    assert_eq!(outcome, at_once, "the verdict depends on the chunking");
    assert_eq!(scanner.meta(), whole.meta());

    let Some(meta) = whole.meta().cloned() else {
        return;
    };
    // What STOW parses once the part has ended (`PartWriter::parse`).
    let (header, fragments) = match at_once {
        Ok(Scan::PixelData(location)) => {
            let element = location.element_offset as usize;
            let value = location.value_offset as usize;
            assert!(element < value && value <= file.len());
            let fragments = location.value_length.is_none().then(|| {
                let mut fragments = FragmentScanner::new(location.value_offset);
                for chunk in chunks(seed, &file[value..]) {
                    fragments.feed(chunk);
                }
                fragments
            });
            (&file[..element], fragments)
        }
        Ok(Scan::Deflated) => (file, None),
        Ok(Scan::NeedMore { resume_at }) if resume_at == file.len() => (file, None),
        _ => return,
    };
    parse_accepted(header, &meta, fragments.as_ref());
});

/// The parse STOW runs on an accepted header, and the index record it makes.
fn parse_accepted(
    header: &[u8],
    meta: &kastell::dicom::header::FileMeta,
    fragments: Option<&FragmentScanner>,
) {
    let Ok(parsed) = instance::parse_header(header, meta) else {
        return;
    };
    if let Some(fragments) = fragments {
        let _ = kastell::service::stow::frame_boundaries(fragments, &parsed.dataset);
    }
    let key = BlobKey::new(BlobKind::Instance);
    let _ = kastell::service::stow::new_instance(
        &parsed,
        &key,
        header.len() as u64,
        String::new(),
        header.len() as u64,
        None,
    );
}
