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

use std::io::Read;
use std::sync::OnceLock;

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

use super::header::{has_long_length, FileMeta};
use super::transfer_syntax::Encoding;
use super::DicomError;

const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_DELIMITATION: (u16, u16) = (0xFFFE, 0xE00D);
const SEQUENCE_DELIMITATION: (u16, u16) = (0xFFFE, 0xE0DD);
const UNDEFINED_LENGTH: u32 = 0xFFFF_FFFF;

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

/// What a frame of the walk is inside of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    /// The data set itself or an item: elements follow.
    Elements,
    /// A sequence: items follow.
    Sequence,
    /// Encapsulated pixel data: fragments (items whose content is not parsed).
    Fragments,
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    container: Container,
    /// Where a defined-length container ends; `None` for undefined length (ends
    /// at its delimiter).
    end: Option<usize>,
    encoding: Encoding,
}

/// Checks the data set in `bytes[start..]`, encoded as `encoding` (not deflated;
/// see [`inflate`]). The data set must end exactly at the end of `bytes`, as the
/// part before Pixel Data that STOW keeps does and a whole file does.
pub fn check_dataset(
    bytes: &[u8],
    start: usize,
    encoding: Encoding,
    limits: &ParseLimits,
) -> Result<(), DicomError> {
    let mut stack = vec![Frame {
        container: Container::Elements,
        end: Some(bytes.len()),
        encoding,
    }];
    let mut pos = start;
    let mut elements = 0usize;
    let mut depth = 0usize;
    loop {
        // Close every defined-length container that ends here.
        while let Some(frame) = stack.last() {
            match frame.end {
                Some(end) if pos == end && stack.len() > 1 => {
                    if frame.container == Container::Sequence {
                        depth -= 1;
                    }
                    stack.pop();
                }
                Some(end) if pos > end => {
                    return Err(overrun(pos));
                }
                _ => break,
            }
        }
        let frame = *stack.last().expect("the data set frame is never popped");
        if stack.len() == 1 && pos == bytes.len() {
            return Ok(());
        }
        // The innermost defined end bounds everything inside it, undefined-length
        // containers included.
        let limit = stack
            .iter()
            .rev()
            .find_map(|f| f.end)
            .unwrap_or(bytes.len());
        let reader = Reader {
            buf: &bytes[..limit],
            encoding: frame.encoding,
        };
        let header = reader.header(pos)?;
        elements += 1;
        if elements > limits.max_elements {
            return Err(DicomError::Malformed(format!(
                "the data set holds more than {} elements",
                limits.max_elements
            )));
        }
        let value_start = pos + header.header_len;
        let defined_end = |length: u32| -> Result<usize, DicomError> {
            let end = value_start
                .checked_add(length as usize)
                .ok_or_else(|| overrun(pos))?;
            if end > limit {
                return Err(DicomError::Malformed(format!(
                    "the element ({:04X},{:04X}) at offset {pos} declares {length} bytes; \
                     only {} are there",
                    header.group,
                    header.element,
                    limit.saturating_sub(value_start)
                )));
            }
            Ok(end)
        };
        let tag = (header.group, header.element);
        match frame.container {
            Container::Sequence | Container::Fragments => match tag {
                SEQUENCE_DELIMITATION if frame.end.is_none() => {
                    if frame.container == Container::Sequence {
                        depth -= 1;
                    }
                    stack.pop();
                    pos = value_start;
                }
                ITEM if header.length == UNDEFINED_LENGTH => {
                    if frame.container == Container::Fragments {
                        return Err(DicomError::Malformed(format!(
                            "a pixel data fragment of undefined length at offset {pos}"
                        )));
                    }
                    stack.push(Frame {
                        container: Container::Elements,
                        end: None,
                        encoding: frame.encoding,
                    });
                    pos = value_start;
                }
                ITEM => {
                    let end = defined_end(header.length)?;
                    if frame.container == Container::Sequence {
                        stack.push(Frame {
                            container: Container::Elements,
                            end: Some(end),
                            encoding: frame.encoding,
                        });
                        pos = value_start;
                    } else {
                        pos = end;
                    }
                }
                (g, e) => {
                    return Err(DicomError::Malformed(format!(
                        "expected an item, found ({g:04X},{e:04X}) at offset {pos}"
                    )))
                }
            },
            Container::Elements => {
                if tag == ITEM_DELIMITATION {
                    if frame.end.is_some() || stack.len() == 1 {
                        return Err(DicomError::Malformed(format!(
                            "an item delimiter outside an undefined-length item at offset {pos}"
                        )));
                    }
                    stack.pop();
                    pos = value_start;
                    continue;
                }
                if header.group == 0xFFFE {
                    return Err(DicomError::Malformed(format!(
                        "item tag ({:04X},{:04X}) among elements at offset {pos}",
                        header.group, header.element
                    )));
                }
                let undefined = header.length == UNDEFINED_LENGTH;
                let opens = opens_container(&header, frame.encoding, undefined)?;
                match opens {
                    None => pos = defined_end(header.length)?,
                    Some((container, encoding)) => {
                        if container == Container::Sequence {
                            depth += 1;
                            if depth > limits.max_depth {
                                return Err(DicomError::Malformed(format!(
                                    "sequences nested deeper than {} levels",
                                    limits.max_depth
                                )));
                            }
                        }
                        let end = if undefined {
                            None
                        } else {
                            Some(defined_end(header.length)?)
                        };
                        stack.push(Frame {
                            container,
                            end,
                            encoding,
                        });
                        pos = value_start;
                    }
                }
            }
        }
    }
}

/// Whether an element opens a container the parser descends into, and the
/// encoding inside it: a sequence (SQ, a dictionary SQ in implicit VR, any
/// undefined-length element in implicit VR, UN of undefined length — read as
/// implicit VR LE by PS3.5 §6.2.2), or encapsulated pixel data (OB/OW of
/// undefined length).
fn opens_container(
    header: &ElementHeader,
    encoding: Encoding,
    undefined: bool,
) -> Result<Option<(Container, Encoding)>, DicomError> {
    let implicit_le = Encoding {
        explicit_vr: false,
        big_endian: false,
        deflated: false,
    };
    let Some(vr) = header.vr else {
        // Implicit VR: the dictionary says what a defined-length element is.
        let is_sequence = undefined || dictionary_vr(Tag(header.group, header.element)) == VR::SQ;
        return Ok(is_sequence.then_some((Container::Sequence, encoding)));
    };
    match &vr {
        b"SQ" => Ok(Some((Container::Sequence, encoding))),
        b"UN" if undefined => Ok(Some((Container::Sequence, implicit_le))),
        b"OB" | b"OW" if undefined => Ok(Some((Container::Fragments, encoding))),
        _ if undefined => Err(DicomError::Malformed(format!(
            "undefined length on ({:04X},{:04X}) with VR {}",
            header.group,
            header.element,
            String::from_utf8_lossy(&vr)
        ))),
        _ => Ok(None),
    }
}

fn dictionary_vr(tag: Tag) -> VR {
    match StandardDataDictionary.by_tag(tag).map(|e| e.vr()) {
        Some(VirtualVr::Exact(vr)) => vr,
        _ => VR::UN,
    }
}

fn overrun(pos: usize) -> DicomError {
    DicomError::Malformed(format!(
        "an element at offset {pos} runs past the end of its sequence or item"
    ))
}

/// The VRs of PS3.5 Table 6.2-1, as dicom-rs knows them.
const KNOWN_VRS: [&[u8; 2]; 34] = [
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"OB",
    b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM",
    b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
];

struct ElementHeader {
    group: u16,
    element: u16,
    vr: Option<[u8; 2]>,
    length: u32,
    header_len: usize,
}

struct Reader<'a> {
    buf: &'a [u8],
    encoding: Encoding,
}

impl Reader<'_> {
    fn bytes<const N: usize>(&self, pos: usize) -> Result<[u8; N], DicomError> {
        self.buf
            .get(pos..pos + N)
            .and_then(|b| b.try_into().ok())
            .ok_or(DicomError::Truncated)
    }

    fn u16_at(&self, pos: usize) -> Result<u16, DicomError> {
        let b = self.bytes::<2>(pos)?;
        Ok(if self.encoding.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }

    fn u32_at(&self, pos: usize) -> Result<u32, DicomError> {
        let b = self.bytes::<4>(pos)?;
        Ok(if self.encoding.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    fn header(&self, pos: usize) -> Result<ElementHeader, DicomError> {
        let group = self.u16_at(pos)?;
        let element = self.u16_at(pos + 2)?;
        if group == 0xFFFE || !self.encoding.explicit_vr {
            return Ok(ElementHeader {
                group,
                element,
                vr: None,
                length: self.u32_at(pos + 4)?,
                header_len: 8,
            });
        }
        let vr = self.bytes::<2>(pos + 4)?;
        // dicom-rs reads a VR it does not know as UN, with a four-byte length,
        // where these two bytes would be the length of a short VR: the two
        // readings of such an element disagree, so it is refused (found by
        // fuzzing: an unknown VR hid a 3 GB length from this walk).
        if !KNOWN_VRS.contains(&&vr) {
            return Err(DicomError::Malformed(format!(
                "invalid VR bytes {vr:02X?} for ({group:04X},{element:04X}) at offset {pos}"
            )));
        }
        if has_long_length(&vr) {
            Ok(ElementHeader {
                group,
                element,
                vr: Some(vr),
                length: self.u32_at(pos + 8)?,
                header_len: 12,
            })
        } else {
            Ok(ElementHeader {
                group,
                element,
                vr: Some(vr),
                length: self.u16_at(pos + 6)? as u32,
                header_len: 8,
            })
        }
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

/// Checks the nesting depth of JSON text without parsing it (brackets outside
/// strings). DICOM JSON spends three levels per sequence level (attribute,
/// `Value` array, item), plus the array of data sets and the data set itself.
pub fn check_json_depth(text: &[u8], limits: &ParseLimits) -> Result<(), DicomError> {
    let max = limits.max_depth.saturating_mul(3).saturating_add(4);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in text {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(DicomError::Malformed(format!(
                        "the metadata nests deeper than {} sequence levels",
                        limits.max_depth
                    )));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Checks the element nesting of XML text before an XML parser sees it (the
/// parser roxmltree recurses on nested elements): start tags open a level,
/// end tags close one; comments, CDATA, processing instructions and
/// declarations are skipped, quoted attribute values are not read as markup.
/// The Native DICOM Model spends two levels per sequence level
/// (DicomAttribute, Item) under NativeDicomModel.
pub fn check_xml_depth(text: &[u8], limits: &ParseLimits) -> Result<(), DicomError> {
    let max = limits.max_depth.saturating_mul(2).saturating_add(3);
    let too_deep = || {
        DicomError::Malformed(format!(
            "the metadata nests deeper than {} sequence levels",
            limits.max_depth
        ))
    };
    let skip_past = |from: usize, end: &[u8]| -> usize {
        text[from..]
            .windows(end.len())
            .position(|w| w == end)
            .map_or(text.len(), |at| from + at + end.len())
    };
    let mut depth = 0usize;
    let mut i = 0;
    while i < text.len() {
        if text[i] != b'<' {
            i += 1;
            continue;
        }
        let rest = &text[i..];
        if rest.starts_with(b"<!--") {
            i = skip_past(i + 4, b"-->");
        } else if rest.starts_with(b"<![CDATA[") {
            i = skip_past(i + 9, b"]]>");
        } else if rest.starts_with(b"<?") {
            i = skip_past(i + 2, b"?>");
        } else if rest.starts_with(b"<!") {
            // A declaration; an internal subset in brackets may hold '>'.
            let mut brackets = 0i32;
            i += 2;
            while i < text.len() {
                match text[i] {
                    b'[' => brackets += 1,
                    b']' => brackets -= 1,
                    b'>' if brackets <= 0 => break,
                    _ => {}
                }
                i += 1;
            }
            i += 1;
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            i = skip_past(i + 2, b">");
        } else {
            // A start tag: to its '>' outside quotes; `/>` closes it at once.
            let mut quote = None;
            let mut j = i + 1;
            while j < text.len() {
                match (quote, text[j]) {
                    (None, b'"' | b'\'') => quote = Some(text[j]),
                    (Some(q), c) if c == q => quote = None,
                    (None, b'>') => break,
                    _ => {}
                }
                j += 1;
            }
            let self_closing = j > i + 1 && text.get(j - 1) == Some(&b'/');
            if !self_closing {
                depth += 1;
                if depth > max {
                    return Err(too_deep());
                }
            }
            i = j + 1;
        }
    }
    Ok(())
}

/// Checks that the values that drive work (NumberOfFrames, Rows, Columns,
/// SamplesPerPixel, BitsAllocated) agree with the Pixel Data actually stored,
/// so that nothing later allocates or loops by a number the data does not back:
/// native pixel data must hold every frame they describe; encapsulated pixel
/// data must have a fragment for every frame. `native_length` is the native
/// value's length, `fragments` the number of fragments (Basic Offset Table not
/// counted) of encapsulated pixel data.
pub fn check_pixel_description(
    dataset: &dicom_object::InMemDicomObject,
    native_length: Option<u64>,
    fragments: Option<usize>,
) -> Result<(), DicomError> {
    use dicom_dictionary_std::tags;
    let number = |tag, name: &str| -> Result<Option<u64>, DicomError> {
        match super::instance::text(dataset, tag) {
            None => Ok(None),
            Some(text) if text.trim().is_empty() => Ok(None),
            Some(text) => text
                .trim()
                .parse::<u64>()
                .map(Some)
                .map_err(|_| DicomError::PixelMismatch(format!("{name} is not a number"))),
        }
    };
    let frames = number(tags::NUMBER_OF_FRAMES, "NumberOfFrames")?.unwrap_or(1);
    if frames == 0 {
        return Err(DicomError::PixelMismatch("NumberOfFrames is 0".into()));
    }
    if let Some(fragments) = fragments {
        if frames > fragments as u64 {
            return Err(DicomError::PixelMismatch(format!(
                "NumberOfFrames is {frames}; the encapsulated pixel data has {fragments} fragment(s)"
            )));
        }
    }
    let Some(length) = native_length else {
        return Ok(());
    };
    let rows = number(tags::ROWS, "Rows")?.unwrap_or(0);
    let columns = number(tags::COLUMNS, "Columns")?.unwrap_or(0);
    let samples = number(tags::SAMPLES_PER_PIXEL, "SamplesPerPixel")?.unwrap_or(1);
    let bits = number(tags::BITS_ALLOCATED, "BitsAllocated")?.unwrap_or(0);
    if rows == 0 || columns == 0 || bits == 0 {
        return Err(DicomError::PixelMismatch(
            "native Pixel Data without Rows, Columns or BitsAllocated".into(),
        ));
    }
    // 4:2:2 subsampled colour keeps two samples per pixel on the wire.
    let photometric =
        super::instance::text(dataset, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
    let samples = if photometric.trim().ends_with("_422") {
        2
    } else {
        samples
    };
    let bits_needed = [columns, samples, bits, frames]
        .into_iter()
        .fold(u128::from(rows), |product, n| {
            product.saturating_mul(u128::from(n))
        });
    let bytes_needed = bits_needed.div_ceil(8);
    if bytes_needed > u128::from(length) {
        return Err(DicomError::PixelMismatch(format!(
            "{frames} frame(s) of {rows} x {columns} x {samples} samples of {bits} bits \
             need {bytes_needed} bytes; Pixel Data holds {length}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::header::tests::sample_file;
    use crate::dicom::header::{parse_file_meta, HeaderScanner, Scan};

    const EXPLICIT: Encoding = Encoding {
        explicit_vr: true,
        big_endian: false,
        deflated: false,
    };
    const IMPLICIT: Encoding = Encoding {
        explicit_vr: false,
        big_endian: false,
        deflated: false,
    };

    /// `depth` sequences of defined length nested inside each other, each with
    /// one defined-length item, around one short element.
    fn nested_defined(depth: usize) -> Vec<u8> {
        let mut inner = vec![0x10, 0x00, 0x20, 0x00, b'L', b'O', 2, 0, b'I', b'D'];
        for _ in 0..depth {
            let mut item = vec![0xFE, 0xFF, 0x00, 0xE0];
            item.extend_from_slice(&(inner.len() as u32).to_le_bytes());
            item.extend_from_slice(&inner);
            let mut sequence = vec![0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0];
            sequence.extend_from_slice(&(item.len() as u32).to_le_bytes());
            sequence.extend_from_slice(&item);
            inner = sequence;
        }
        inner
    }

    /// The same with undefined lengths and delimiters.
    fn nested_undefined(depth: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..depth {
            out.extend_from_slice(&[
                0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
            ]);
            out.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        }
        out.extend_from_slice(&[0x10, 0x00, 0x20, 0x00, b'L', b'O', 2, 0, b'I', b'D']);
        for _ in 0..depth {
            out.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
            out.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        }
        out
    }

    #[test]
    fn nesting_up_to_the_limit_passes_and_one_more_is_refused() {
        let limits = ParseLimits::default();
        for build in [nested_defined, nested_undefined] {
            assert!(check_dataset(&build(32), 0, EXPLICIT, &limits).is_ok());
            let error = check_dataset(&build(33), 0, EXPLICIT, &limits).unwrap_err();
            assert!(error.to_string().contains("deeper than 32"), "{error}");
        }
    }

    #[test]
    fn a_hundred_thousand_levels_are_refused_without_recursion() {
        let limits = ParseLimits::default();
        assert!(check_dataset(&nested_undefined(100_000), 0, EXPLICIT, &limits).is_err());
        assert!(check_dataset(&nested_defined(100_000), 0, EXPLICIT, &limits).is_err());
    }

    #[test]
    fn lengths_beyond_the_bytes_present_are_refused() {
        let limits = ParseLimits::default();
        // (0009,0010) OB declaring 4 GiB - 2 in a few bytes.
        let mut huge = vec![0x09, 0x00, 0x10, 0x00, b'O', b'B', 0, 0];
        huge.extend_from_slice(&0xFFFF_FFFEu32.to_le_bytes());
        huge.extend_from_slice(&[0; 16]);
        assert!(check_dataset(&huge, 0, EXPLICIT, &limits).is_err());
        // Inside a defined-length item, the item's end is the bound.
        let mut nested = nested_defined(2);
        let at = nested.len() - 4;
        nested[at] = 200; // the innermost LO claims 200 bytes
        assert!(check_dataset(&nested, 0, EXPLICIT, &limits).is_err());
        // An item longer than its sequence.
        let mut item_too_long = nested_defined(1);
        item_too_long[16] = 0xF0;
        assert!(check_dataset(&item_too_long, 0, EXPLICIT, &limits).is_err());
    }

    #[test]
    fn implicit_vr_sequences_are_found_through_the_dictionary() {
        let limits = ParseLimits::default();
        // (0008,1115) ReferencedSeriesSequence, defined length, nested 40 deep.
        let mut inner = vec![0x10, 0x00, 0x20, 0x00, 2, 0, 0, 0, b'I', b'D'];
        for _ in 0..40 {
            let mut item = vec![0xFE, 0xFF, 0x00, 0xE0];
            item.extend_from_slice(&(inner.len() as u32).to_le_bytes());
            item.extend_from_slice(&inner);
            let mut sequence = vec![0x08, 0x00, 0x15, 0x11];
            sequence.extend_from_slice(&(item.len() as u32).to_le_bytes());
            sequence.extend_from_slice(&item);
            inner = sequence;
        }
        assert!(check_dataset(&inner, 0, IMPLICIT, &limits).is_err());
    }

    #[test]
    fn element_counts_are_bounded() {
        let limits = ParseLimits {
            max_elements: 10,
            ..ParseLimits::default()
        };
        let element = [0x10, 0x00, 0x20, 0x00, b'L', b'O', 2, 0, b'I', b'D'];
        let many: Vec<u8> = element
            .iter()
            .copied()
            .cycle()
            .take(element.len() * 11)
            .collect();
        assert!(check_dataset(&many, 0, EXPLICIT, &limits).is_err());
        assert!(check_dataset(&many[..element.len() * 10], 0, EXPLICIT, &limits).is_ok());
    }

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

    #[test]
    fn xml_depth_is_counted_outside_comments_and_quotes() {
        let limits = ParseLimits::default();
        let deep = "<Item>".repeat(300_000);
        assert!(check_xml_depth(deep.as_bytes(), &limits).is_err());
        let flat = "<a><b/><c x='<d>'><!-- <e><e><e> --><![CDATA[<f><f>]]></c></a>".repeat(1000);
        assert!(check_xml_depth(flat.as_bytes(), &limits).is_ok());
        let at_limit = format!("{}{}", "<i>".repeat(67), "</i>".repeat(67));
        assert!(check_xml_depth(at_limit.as_bytes(), &limits).is_ok());
        let over = format!("{}{}", "<i>".repeat(68), "</i>".repeat(68));
        assert!(check_xml_depth(over.as_bytes(), &limits).is_err());
    }

    #[test]
    fn json_depth_is_counted_outside_strings() {
        let limits = ParseLimits::default();
        let deep = "[".repeat(300_000);
        assert!(check_json_depth(deep.as_bytes(), &limits).is_err());
        let quoted = format!("[\"{}\"]", "[".repeat(1000));
        assert!(check_json_depth(quoted.as_bytes(), &limits).is_ok());
        let escaped = r#"["\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["]"#;
        assert!(check_json_depth(escaped.as_bytes(), &limits).is_ok());
    }
}
