//! Parsing the header of one stored instance (everything before Pixel Data) into a
//! data set, reading attribute values as text, and re-encoding a whole instance.

use dicom_core::value::Value;
use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{InMemDicomObject, OpenFileOptions};

use super::guard::ParseLimits;
use super::header::FileMeta;
use super::text::trim_value;
use super::DicomError;

/// The data set of an instance without its Pixel Data, plus the identifying UIDs.
#[derive(Debug, Clone)]
pub struct ParsedHeader {
    pub dataset: InMemDicomObject,
    pub transfer_syntax: String,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub study_instance_uid: String,
    pub series_instance_uid: String,
}

/// Parses `bytes`: a PS3.10 stream from its start, cut before the top-level Pixel
/// Data element (or the whole stream if it has none).
pub fn parse_header(bytes: &[u8], meta: &FileMeta) -> Result<ParsedHeader, DicomError> {
    let dataset = parse_dataset(bytes, meta)?;
    let transfer_syntax = meta.transfer_syntax.clone();
    let required = |tag: Tag, name: &'static str| -> Result<String, DicomError> {
        text(&dataset, tag)
            .filter(|v| !v.is_empty())
            .ok_or(DicomError::MissingAttribute(name))
    };
    Ok(ParsedHeader {
        sop_class_uid: required(tags::SOP_CLASS_UID, "SOPClassUID (0008,0016)")?,
        sop_instance_uid: required(tags::SOP_INSTANCE_UID, "SOPInstanceUID (0008,0018)")?,
        study_instance_uid: required(tags::STUDY_INSTANCE_UID, "StudyInstanceUID (0020,000D)")?,
        series_instance_uid: required(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID (0020,000E)")?,
        transfer_syntax,
        dataset,
    })
}

/// Parses the data set of `bytes` (a PS3.10 stream from its start) up to Pixel Data,
/// with text decoded to UTF-8, without requiring any attribute.
pub fn parse_dataset(bytes: &[u8], meta: &FileMeta) -> Result<InMemDicomObject, DicomError> {
    super::guard::check_file(bytes, meta, &ParseLimits::current())?;
    let source = bytes
        .get(meta.magic_offset..)
        .ok_or(DicomError::Truncated)?;
    let mut options = OpenFileOptions::new().read_preamble(ReadPreamble::Never);
    // A deflated data set is kept whole (its byte offsets mean nothing), Pixel Data
    // included; otherwise `bytes` end before Pixel Data anyway.
    if !meta.encoding.deflated {
        options = options.read_until(tags::PIXEL_DATA);
    }
    let object = options
        .from_reader(source)
        .map_err(|e| DicomError::Malformed(e.to_string()))?;
    let mut dataset = object.into_inner();
    super::charset::fix_code_extensions(&mut dataset);
    Ok(dataset)
}

/// What decoding an instance's pixels takes, from its header (0 for what is
/// absent or not a number): the rendering and transcoding budgets read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelShape {
    pub rows: u64,
    pub columns: u64,
    pub samples: u64,
    /// Bytes of one decoded sample (BitsAllocated rounded up to bytes).
    pub sample_bytes: u64,
    /// NumberOfFrames, at least 1.
    pub frames: u64,
}

impl PixelShape {
    pub fn of(dataset: &InMemDicomObject) -> Self {
        let number = |tag| {
            text(dataset, tag)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        PixelShape {
            rows: number(tags::ROWS),
            columns: number(tags::COLUMNS),
            samples: number(tags::SAMPLES_PER_PIXEL).max(1),
            sample_bytes: number(tags::BITS_ALLOCATED).div_ceil(8).max(1),
            frames: number(tags::NUMBER_OF_FRAMES).max(1),
        }
    }

    pub fn pixels_per_frame(&self) -> u64 {
        self.rows.saturating_mul(self.columns)
    }

    /// Decoded bytes of `frames` frames.
    pub fn decoded_bytes(&self, frames: u64) -> u64 {
        self.pixels_per_frame()
            .saturating_mul(self.samples.saturating_mul(self.sample_bytes))
            .saturating_mul(frames)
    }
}

/// Whether leading spaces are significant in values of this VR (PS3.5 §6.2).
pub fn keeps_leading_spaces(vr: VR) -> bool {
    matches!(vr, VR::LT | VR::ST | VR::UT | VR::UR)
}

/// The value of a top-level attribute as DICOM text: values joined by `\`, padding
/// trimmed. `None` if absent or not a primitive value.
pub fn text(dataset: &InMemDicomObject, tag: Tag) -> Option<String> {
    let element = dataset.get(tag)?;
    let Value::Primitive(value) = element.value() else {
        return None;
    };
    let keep_leading = keeps_leading_spaces(element.vr());
    let values = value.to_multi_str();
    let joined = values
        .iter()
        .map(|v| trim_value(v, keep_leading))
        .collect::<Vec<_>>()
        .join("\\");
    Some(joined)
}

/// The items of a top-level sequence.
pub fn items(dataset: &InMemDicomObject, tag: Tag) -> &[InMemDicomObject] {
    match dataset.get(tag).map(|e| e.value()) {
        Some(Value::Sequence(sequence)) => sequence.items(),
        _ => &[],
    }
}

/// Re-encodes a whole PS3.10 file in Explicit VR Little Endian. Only for natively
/// encoded objects (the pixel data bytes are kept, byte-swapped where needed).
pub fn reencode_explicit_le(file: &[u8], meta: &FileMeta) -> Result<Vec<u8>, DicomError> {
    super::guard::check_file(file, meta, &ParseLimits::current())?;
    let mut object = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .from_reader(file.get(meta.magic_offset..).ok_or(DicomError::Truncated)?)
        .map_err(|e| DicomError::Malformed(e.to_string()))?;
    object.meta_mut().set_transfer_syntax(
        &dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased(),
    );
    let mut out = Vec::with_capacity(file.len() + 1024);
    object
        .write_all(&mut out)
        .map_err(|e| DicomError::Encode(e.to_string()))?;
    Ok(out)
}

/// Parses the elements stored after Pixel Data (trailing padding, digital
/// signatures): a bare data set fragment in `transfer_syntax`.
pub fn parse_trailer(bytes: &[u8], transfer_syntax: &str) -> Result<InMemDicomObject, DicomError> {
    use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
    let ts = dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(transfer_syntax)
        .ok_or_else(|| DicomError::UnsupportedTransferSyntax(transfer_syntax.to_string()))?;
    let encoding = super::transfer_syntax::encoding_of(transfer_syntax);
    let limits = ParseLimits::current();
    if encoding.deflated {
        // A deflated data set has no Pixel Data boundary: nothing is stored after it.
        return Ok(InMemDicomObject::new_empty());
    }
    super::guard::check_dataset(bytes, 0, encoding, &limits)?;
    InMemDicomObject::read_dataset_with_ts(bytes, ts)
        .map_err(|e| DicomError::Malformed(e.to_string()))
}

/// Inputs the dicom_header fuzz target (fuzz/) found: each must be refused with
/// an error, without allocating what a length declares. The first is ignored:
/// it still passes src/dicom/guard.rs and dicom-rs then allocates about 3.3 GB
/// (run them with `--ignored` under `ulimit -v`).
#[cfg(test)]
mod fuzz_regressions {
    use super::super::header::{HeaderScanner, Scan};
    use super::*;

    /// The header STOW would parse from a reproducer (its first byte and the
    /// chunking seed after it are the fuzz target's; see fuzz/src/lib.rs).
    fn parse_reproducer(input: &[u8]) -> Result<ParsedHeader, DicomError> {
        let skip = 1 + (input[0] as usize % 16);
        let file = &input[skip..];
        let mut scanner = HeaderScanner::new();
        let header = match scanner.scan(file)? {
            Scan::PixelData(location) => &file[..location.element_offset as usize],
            _ => file,
        };
        parse_header(header, scanner.meta().expect("a file meta group"))
    }

    /// An OB value inside nested sequences declares about 3.3 GB, behind an
    /// element whose VR dicom-rs does not know (read as UN, long length).
    #[test]
    fn a_length_beyond_the_bytes_present_is_an_error() {
        let input = include_bytes!(
            "../../fuzz/regressions/dicom_header/timeout-200e291fe3ec0f493d31b18e2505afcfcd5c30b6"
        );
        assert!(parse_reproducer(input).is_err());
    }

    /// An SS value of 573 bytes (not a whole number of values): dicom-rs read
    /// every later header one byte off, and one of them declared 1.9 GB, which
    /// it reserved and zero-filled before failing. The guard refuses the
    /// element, so dicom-rs never sees it.
    #[test]
    fn a_binary_value_of_a_partial_value_is_refused_before_dicom_rs_reads_it() {
        let input = include_bytes!("../../fuzz/regressions/dicom_header/oom-734f1094");
        let error = parse_reproducer(input).unwrap_err().to_string();
        assert!(
            error.contains("(0019,1047)") && error.contains("value size 2"),
            "{error}"
        );
    }

    /// Refused by the guard.
    #[test]
    fn a_length_beyond_the_bytes_present_is_an_error_too() {
        let input = include_bytes!(
            "../../fuzz/regressions/dicom_header/oom-10c379d4743313a943afb0abab2b4ae8006c63eb"
        );
        assert!(parse_reproducer(input).is_err());
    }
}
