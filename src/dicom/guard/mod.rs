//! Checks a DICOM data set before any recursive parser sees it.
//!
//! dicom-rs reads sequences by recursion and reserves a value's declared length
//! before reading it, so a few hundred hostile bytes could overflow a worker's
//! stack (sequences nested 100,000 deep) or make it zero-fill gigabytes (an
//! element declaring 4 GiB). Everything Kastell hands to dicom-rs goes through
//! [`check_dataset`] first: one iterative walk over the element headers (values are
//! skipped, never copied) that refuses nesting deeper than the configured depth,
//! any length running past the bytes of its container (the data set, item or
//! sequence around it), more elements than the configured count, and deflated
//! data sets that inflate past the configured size or ratio. The same bounds
//! apply to DICOM JSON and XML metadata ([`check_json_depth`]; the XML reader walks
//! its tree with [`ParseLimits::max_depth`]).

mod markup;
mod pixel_description;
mod walk;

use std::io::Read;
use std::sync::OnceLock;

use super::header::FileMeta;
use super::transfer_syntax::Encoding;
use super::DicomError;

pub use markup::{check_json_depth, check_xml_depth};
pub use pixel_description::check_pixel_description;
pub use walk::check_dataset;

/// The bounds on what one data set may make the parser spend (`[limits]` in the
/// configuration; these defaults are the safe ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseLimits {
    /// Sequences nested inside each other (DICOM JSON and XML: sequence levels).
    pub max_depth: usize,
    /// Elements in one data set, items included.
    pub max_elements: usize,
    /// Largest inflated size of a Deflated data set, in bytes.
    pub max_inflated_bytes: u64,
    /// Largest inflated size as a multiple of the deflated one.
    pub max_inflate_ratio: u64,
}

impl Default for ParseLimits {
    fn default() -> Self {
        Self {
            max_depth: 32,
            max_elements: 500_000,
            max_inflated_bytes: 256 * 1024 * 1024,
            max_inflate_ratio: 200,
        }
    }
}

static LIMITS: OnceLock<ParseLimits> = OnceLock::new();

impl ParseLimits {
    /// Sets the process's limits; called once at start-up from the
    /// configuration, before any request is served. Parsing happens in pure
    /// functions far from the request (transcoding, rendering, metadata), so the
    /// limits are process-wide rather than threaded through every call.
    pub fn install(limits: ParseLimits) {
        // A second call (tests starting several servers in one process) keeps
        // the first limits; they come from the same defaults.
        let _ = LIMITS.set(limits);
    }

    /// The limits in force.
    pub fn current() -> ParseLimits {
        LIMITS.get().copied().unwrap_or_default()
    }
}

/// Inflates a Deflated data set (raw deflate, PS3.5 §A.5), refusing output past
/// the configured size or ratio before it is produced.
pub fn inflate(deflated: &[u8], limits: &ParseLimits) -> Result<Vec<u8>, DicomError> {
    let cap = limits
        .max_inflated_bytes
        .min((deflated.len() as u64).saturating_mul(limits.max_inflate_ratio))
        .max(64 * 1024);
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(deflated)
        .take(cap + 1)
        .read_to_end(&mut out)
        .map_err(|e| DicomError::Malformed(format!("the deflated data set is corrupt: {e}")))?;
    if out.len() as u64 > cap {
        return Err(DicomError::Malformed(format!(
            "the deflated data set inflates past {cap} bytes"
        )));
    }
    Ok(out)
}

/// Checks the data set of a PS3.10 stream (`file` from its start, the preamble
/// included when `meta` says so), cut before top-level Pixel Data or whole.
pub fn check_file(file: &[u8], meta: &FileMeta, limits: &ParseLimits) -> Result<(), DicomError> {
    check_group_length(file, meta)?;
    let dataset = file
        .get(meta.dataset_offset..)
        .ok_or(DicomError::Truncated)?;
    if meta.encoding.deflated {
        let inflated = inflate(dataset, limits)?;
        let encoding = Encoding {
            deflated: false,
            ..meta.encoding
        };
        return check_dataset(&inflated, 0, encoding, limits);
    }
    check_dataset(file, meta.dataset_offset, meta.encoding, limits)
}

/// dicom-rs ends the file meta group where its group length (0002,0000) says;
/// Kastell's scanner where group 0002 ends. A group length that disagrees
/// would make the two read the data set from different offsets (found by
/// fuzzing: dicom-rs then took a float value for a 1.9 GB length), so it is
/// refused.
fn check_group_length(file: &[u8], meta: &FileMeta) -> Result<(), DicomError> {
    let first = meta.magic_offset + 4;
    let Some(element) = file.get(first..first + 12) else {
        return Ok(());
    };
    if element[..6] != [0x02, 0x00, 0x00, 0x00, b'U', b'L'] {
        return Ok(());
    }
    let declared = u32::from_le_bytes([element[8], element[9], element[10], element[11]]);
    let actual = meta.dataset_offset.saturating_sub(first + 12);
    if declared as usize != actual {
        return Err(DicomError::Malformed(format!(
            "the file meta group length says {declared} bytes; its elements take {actual}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::header::tests::sample_file;
    use crate::dicom::header::{parse_file_meta, HeaderScanner, Scan};

    #[test]
    fn a_real_header_passes() {
        let file = sample_file(&[1, 2, 3, 4]);
        let meta = parse_file_meta(&file).unwrap().unwrap();
        let mut scanner = HeaderScanner::new();
        let Scan::PixelData(location) = scanner.scan(&file).unwrap() else {
            panic!("pixel data not found");
        };
        let header = &file[..location.element_offset as usize];
        check_file(header, &meta, &ParseLimits::default()).unwrap();
        // The whole file, pixel data included.
        check_file(&file, &meta, &ParseLimits::default()).unwrap();
    }

    #[test]
    fn deflate_bombs_are_refused_before_they_inflate() {
        use std::io::Write;
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        // 64 MiB of zeros deflates to about 64 KiB: a ratio of about 1,000.
        let zeros = vec![0u8; 1024 * 1024];
        for _ in 0..64 {
            encoder.write_all(&zeros).unwrap();
        }
        let bomb = encoder.finish().unwrap();
        let error = inflate(&bomb, &ParseLimits::default()).unwrap_err();
        assert!(error.to_string().contains("inflates past"), "{error}");
        let roomy = ParseLimits {
            max_inflate_ratio: 10_000,
            ..ParseLimits::default()
        };
        assert_eq!(inflate(&bomb, &roomy).unwrap().len(), 64 * 1024 * 1024);
    }
}
