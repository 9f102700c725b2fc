//! The binary walker: one iterative pass over a data set's element headers that
//! bounds nesting, element count and every declared length by its container.

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

use super::ParseLimits;
use crate::dicom::element::{value_size, ElementHeader, Reader};
use crate::dicom::transfer_syntax::Encoding;
use crate::dicom::DicomError;

const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_DELIMITATION: (u16, u16) = (0xFFFE, 0xE00D);
const SEQUENCE_DELIMITATION: (u16, u16) = (0xFFFE, 0xE0DD);
const UNDEFINED_LENGTH: u32 = 0xFFFF_FFFF;

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
/// see [`super::inflate`]). The data set must end exactly at the end of `bytes`, as the
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
        // The data set's frame is never popped; an empty stack would be a bug of
        // this walk, refused rather than trusted.
        let Some(&frame) = stack.last() else {
            return Err(DicomError::Malformed(
                "the element walk lost its place".into(),
            ));
        };
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
        let header = reader.header(pos)?.ok_or(DicomError::Truncated)?;
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
                    None => {
                        check_value_size(&header, pos)?;
                        pos = defined_end(header.length)?
                    }
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
/// undefined-length element in implicit VR), or encapsulated pixel data (OB/OW
/// of undefined length). UN of undefined length is refused (see below).
fn opens_container(
    header: &ElementHeader,
    encoding: Encoding,
    undefined: bool,
) -> Result<Option<(Container, Encoding)>, DicomError> {
    let Some(vr) = header.vr else {
        // Implicit VR: the dictionary says what a defined-length element is.
        let is_sequence = undefined || dictionary_vr(Tag(header.group, header.element)) == VR::SQ;
        return Ok(is_sequence.then_some((Container::Sequence, encoding)));
    };
    match &vr {
        b"SQ" => Ok(Some((Container::Sequence, encoding))),
        // PS3.5 §6.2.2 allows it (a sequence in implicit VR LE), but dicom-rs
        // reads it as a value of 0xFFFFFFFF bytes: 4 GiB asked for by a few
        // hundred bytes (found by the `deidentify` fuzz target on pydicom's
        // UN_sequence.dcm). Refused until the parser reads it as a sequence.
        b"UN" if undefined => Err(DicomError::Malformed(format!(
            "({:04X},{:04X}) is UN of undefined length: a sequence whose VR its sender did \
             not know; this server does not read it (send it with VR SQ)",
            header.group, header.element
        ))),
        // Encapsulated: Pixel Data only. dicom-rs reads any other OB/OW of
        // undefined length as a value of 0xFFFFFFFF bytes (a 2 KB file made
        // a process take 2 GB: found by the `deidentify` fuzz target).
        b"OB" | b"OW" if undefined && (header.group, header.element) == (0x7FE0, 0x0010) => {
            Ok(Some((Container::Fragments, encoding)))
        }
        b"OB" | b"OW" if undefined => Err(DicomError::Malformed(format!(
            "({:04X},{:04X}) is {} of undefined length: only Pixel Data (7FE0,0010) may be \
             encapsulated",
            header.group,
            header.element,
            String::from_utf8_lossy(&vr)
        ))),
        _ if undefined => Err(DicomError::Malformed(format!(
            "undefined length on ({:04X},{:04X}) with VR {}",
            header.group,
            header.element,
            String::from_utf8_lossy(&vr)
        ))),
        _ => Ok(None),
    }
}

/// A binary value whose length is not a whole number of values is refused:
/// dicom-rs would lose its place after it (see [`value_size`]; found by
/// fuzzing: an SS of 573 bytes shifted the next header by one byte, and the
/// misread header declared 1.9 GB that dicom-rs then reserved).
fn check_value_size(header: &ElementHeader, pos: usize) -> Result<(), DicomError> {
    // In Implicit VR dicom-rs decodes by the dictionary's VR.
    let vr = header
        .vr
        .unwrap_or_else(|| dictionary_vr(Tag(header.group, header.element)).to_bytes());
    match value_size(&vr) {
        Some(size) if header.length % size != 0 => Err(DicomError::Malformed(format!(
            "the element ({:04X},{:04X}) at offset {pos} has VR {} and {} bytes, \
             not a multiple of its value size {size}",
            header.group,
            header.element,
            String::from_utf8_lossy(&vr),
            header.length
        ))),
        _ => Ok(()),
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn un_of_undefined_length_is_refused() {
        let mut stream = vec![
            0x53, 0x44, 0x0C, 0x10, b'U', b'N', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ];
        stream.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        stream.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        stream.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        let error = check_dataset(&stream, 0, EXPLICIT, &ParseLimits::default()).unwrap_err();
        assert!(
            error.to_string().contains("UN of undefined length"),
            "{error}"
        );
    }

    #[test]
    fn only_pixel_data_may_be_encapsulated() {
        let encapsulated = |group: u16| {
            let mut stream = group.to_le_bytes().to_vec();
            stream.extend_from_slice(&[0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
            stream.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
            stream.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 2, 0, 0, 0, 1, 2]);
            stream.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
            stream
        };
        let limits = ParseLimits::default();
        assert!(check_dataset(&encapsulated(0x7FE0), 0, EXPLICIT, &limits).is_ok());
        let error = check_dataset(&encapsulated(0x5FE0), 0, EXPLICIT, &limits).unwrap_err();
        assert!(error.to_string().contains("only Pixel Data"), "{error}");
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
    fn binary_values_of_a_partial_value_are_refused() {
        let limits = ParseLimits::default();
        // (0019,1047) SS of 3 bytes, then a well-formed LO.
        let mut odd = vec![0x19, 0x00, 0x47, 0x10, b'S', b'S', 3, 0, 1, 0, 2];
        odd.extend_from_slice(&[0x10, 0x00, 0x20, 0x00, b'L', b'O', 2, 0, b'I', b'D']);
        let error = check_dataset(&odd, 0, EXPLICIT, &limits).unwrap_err();
        assert!(error.to_string().contains("value size 2"), "{error}");
        // The same element with an even length passes.
        let mut even = odd.clone();
        even[6] = 2;
        even.remove(10);
        assert!(check_dataset(&even, 0, EXPLICIT, &limits).is_ok());
        // Implicit VR: (0028,0010) Rows is US by the dictionary.
        let rows = [0x28, 0x00, 0x10, 0x00, 3, 0, 0, 0, 1, 2, 3];
        assert!(check_dataset(&rows, 0, IMPLICIT, &limits).is_err());
        assert!(check_dataset(&rows[..10], 0, IMPLICIT, &limits).is_err());
        let mut two = rows[..10].to_vec();
        two[4] = 2;
        assert!(check_dataset(&two, 0, IMPLICIT, &limits).is_ok());
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
}
