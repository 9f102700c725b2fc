//! Locates the parts of a PS3.10 stream without decoding values: where the data set
//! starts, its transfer syntax, and where the top-level Pixel Data element sits.
//!
//! STOW uses it incrementally on the bytes of a part as they arrive, so the server
//! keeps only the header in memory while the (possibly huge) pixel data streams
//! straight to the blob store. The byte offsets it finds are kept in the index, so
//! retrieval can fetch the header or the pixel data with a ranged read.

use super::element::Reader;
use super::transfer_syntax::{self, Encoding};
use super::DicomError;

const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);
const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_DELIMITATION: (u16, u16) = (0xFFFE, 0xE00D);
const SEQUENCE_DELIMITATION: (u16, u16) = (0xFFFE, 0xE0DD);
const UNDEFINED_LENGTH: u32 = 0xFFFF_FFFF;

/// The file meta information of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// Offset of the `DICM` magic (0 or 128).
    pub magic_offset: usize,
    /// Offset of the first data set element.
    pub dataset_offset: usize,
    pub transfer_syntax: String,
    pub encoding: Encoding,
    /// Media Storage SOP Class UID (0002,0002), if present: tells a DICOMDIR
    /// (a media directory, not an instance) from what can be stored.
    pub media_storage_sop_class_uid: Option<String>,
}

/// Where the top-level Pixel Data element is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelDataLocation {
    /// Offset of the element's tag: the header is every byte before it.
    pub element_offset: u64,
    /// Offset of the element's value.
    pub value_offset: u64,
    /// Length of the value; `None` for undefined length (encapsulated pixel data).
    pub value_length: Option<u64>,
}

/// The outcome of scanning the bytes seen so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// More bytes are needed; scanning resumes at this offset.
    NeedMore { resume_at: usize },
    /// The top-level Pixel Data element was found.
    PixelData(PixelDataLocation),
    /// The data set is deflated: element offsets are meaningless, parse it whole.
    Deflated,
}

/// Incremental scanner over a growing prefix of one PS3.10 stream.
#[derive(Debug, Default)]
pub struct HeaderScanner {
    meta: Option<FileMeta>,
    resume_at: usize,
}

impl HeaderScanner {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn meta(&self) -> Option<&FileMeta> {
        self.meta.as_ref()
    }

    /// Scans `prefix` (all bytes received so far, from the start of the stream).
    pub fn scan(&mut self, prefix: &[u8]) -> Result<Scan, DicomError> {
        if self.meta.is_none() {
            // A stream that starts with `DICM` may have it again after a
            // preamble (which then wins): the magic is decided once byte 132 is
            // there, so the answer does not depend on how the bytes arrive.
            if prefix.len() < 132 && prefix.starts_with(b"DICM") {
                return Ok(Scan::NeedMore { resume_at: 0 });
            }
            match parse_file_meta(prefix)? {
                Some(meta) => {
                    self.resume_at = meta.dataset_offset;
                    self.meta = Some(meta);
                }
                None => return Ok(Scan::NeedMore { resume_at: 0 }),
            }
        }
        let Some(meta) = self.meta.as_ref() else {
            return Ok(Scan::NeedMore { resume_at: 0 });
        };
        if meta.encoding.deflated {
            return Ok(Scan::Deflated);
        }
        let reader = Reader {
            buf: prefix,
            encoding: meta.encoding,
        };
        let mut pos = self.resume_at;
        loop {
            let start = pos;
            let Some(header) = reader.header(pos)? else {
                self.resume_at = start;
                return Ok(Scan::NeedMore { resume_at: start });
            };
            if (header.group, header.element) == PIXEL_DATA {
                return Ok(Scan::PixelData(PixelDataLocation {
                    element_offset: start as u64,
                    value_offset: (start + header.header_len) as u64,
                    value_length: (header.length != UNDEFINED_LENGTH)
                        .then_some(header.length as u64),
                }));
            }
            if header.group == 0xFFFE {
                return Err(DicomError::Malformed(format!(
                    "item tag ({:04X},{:04X}) at top level, offset {start}",
                    header.group, header.element
                )));
            }
            let value_start = start + header.header_len;
            let end = if header.length == UNDEFINED_LENGTH {
                match skip_undefined_length(&reader, value_start, 0)? {
                    Some(end) => end,
                    None => {
                        self.resume_at = start;
                        return Ok(Scan::NeedMore { resume_at: start });
                    }
                }
            } else {
                value_start + header.length as usize
            };
            if end > prefix.len() {
                self.resume_at = start;
                return Ok(Scan::NeedMore { resume_at: start });
            }
            pos = end;
        }
    }
}

/// Parses the preamble, magic and file meta group. `Ok(None)` means more bytes are
/// needed to decide.
pub fn parse_file_meta(prefix: &[u8]) -> Result<Option<FileMeta>, DicomError> {
    let magic_offset = if prefix.len() >= 132 && &prefix[128..132] == b"DICM" {
        128
    } else if prefix.len() >= 4 && &prefix[..4] == b"DICM" {
        0
    } else if prefix.len() < 132 {
        return Ok(None);
    } else {
        return Err(DicomError::NotDicom(
            "no DICM magic after the 128-byte preamble",
        ));
    };
    // The file meta group is always Explicit VR Little Endian.
    let reader = Reader {
        buf: prefix,
        encoding: Encoding {
            explicit_vr: true,
            big_endian: false,
            deflated: false,
        },
    };
    let mut pos = magic_offset + 4;
    let mut transfer_syntax = None;
    let mut media_storage_sop_class_uid = None;
    loop {
        if prefix.len() < pos + 2 {
            return Ok(None);
        }
        let group = u16::from_le_bytes([prefix[pos], prefix[pos + 1]]);
        if group != 0x0002 {
            break;
        }
        let Some(header) = reader.header(pos)? else {
            return Ok(None);
        };
        if header.length == UNDEFINED_LENGTH {
            return Err(DicomError::Malformed(
                "undefined length in the file meta group".into(),
            ));
        }
        let value_start = pos + header.header_len;
        let end = value_start + header.length as usize;
        if end > prefix.len() {
            return Ok(None);
        }
        let uid = || {
            String::from_utf8_lossy(&prefix[value_start..end])
                .trim_end_matches(['\0', ' '])
                .to_string()
        };
        match header.element {
            0x0002 => media_storage_sop_class_uid = Some(uid()),
            0x0010 => transfer_syntax = Some(uid()),
            _ => {}
        }
        pos = end;
    }
    let transfer_syntax = transfer_syntax.ok_or(DicomError::NotDicom(
        "the file meta group has no Transfer Syntax UID",
    ))?;
    if !transfer_syntax::looks_like_uid(&transfer_syntax) {
        return Err(DicomError::Malformed(format!(
            "invalid Transfer Syntax UID {transfer_syntax:?}"
        )));
    }
    Ok(Some(FileMeta {
        magic_offset,
        dataset_offset: pos,
        encoding: transfer_syntax::encoding_of(&transfer_syntax),
        transfer_syntax,
        media_storage_sop_class_uid,
    }))
}

/// Skips the value of an undefined-length element (a sequence or encapsulated
/// pixel data): items until the sequence delimiter. Returns the offset after it.
fn skip_undefined_length(
    reader: &Reader,
    mut pos: usize,
    depth: usize,
) -> Result<Option<usize>, DicomError> {
    if depth > 64 {
        return Err(DicomError::Malformed(
            "sequences nested deeper than 64 levels".into(),
        ));
    }
    loop {
        let Some(item) = reader.header(pos)? else {
            return Ok(None);
        };
        match (item.group, item.element) {
            SEQUENCE_DELIMITATION => return Ok(Some(pos + 8)),
            ITEM if item.length == UNDEFINED_LENGTH => {
                match skip_item_elements(reader, pos + 8, depth + 1)? {
                    Some(end) => pos = end,
                    None => return Ok(None),
                }
            }
            ITEM => pos += 8 + item.length as usize,
            (g, e) => {
                return Err(DicomError::Malformed(format!(
                    "expected an item in a sequence, found ({g:04X},{e:04X}) at offset {pos}"
                )))
            }
        }
        if pos > reader.buf.len() {
            return Ok(None);
        }
    }
}

/// Skips the elements of an undefined-length item up to its delimiter.
fn skip_item_elements(
    reader: &Reader,
    mut pos: usize,
    depth: usize,
) -> Result<Option<usize>, DicomError> {
    loop {
        let Some(header) = reader.header(pos)? else {
            return Ok(None);
        };
        if (header.group, header.element) == ITEM_DELIMITATION {
            return Ok(Some(pos + 8));
        }
        let value_start = pos + header.header_len;
        pos = if header.length == UNDEFINED_LENGTH {
            match skip_undefined_length(reader, value_start, depth)? {
                Some(end) => end,
                None => return Ok(None),
            }
        } else {
            value_start + header.length as usize
        };
        if pos > reader.buf.len() {
            return Ok(None);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a small Explicit VR LE file: meta, PatientName, a sequence of undefined
    /// length holding one undefined-length item, then native Pixel Data.
    pub(crate) fn sample_file(pixels: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 128];
        f.extend_from_slice(b"DICM");
        let ts = b"1.2.840.10008.1.2.1\0";
        f.extend_from_slice(&[0x02, 0x00, 0x10, 0x00, b'U', b'I']);
        f.extend_from_slice(&(ts.len() as u16).to_le_bytes());
        f.extend_from_slice(ts);
        // (0010,0010) PN "Doe^J"
        f.extend_from_slice(&[0x10, 0x00, 0x10, 0x00, b'P', b'N', 6, 0]);
        f.extend_from_slice(b"Doe^J ");
        // (0040,0275) SQ undefined length, one undefined-length item with (0040,0009) SH
        f.extend_from_slice(&[
            0x40, 0x00, 0x75, 0x02, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        f.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        f.extend_from_slice(&[0x40, 0x00, 0x09, 0x00, b'S', b'H', 2, 0, b'A', b'1']);
        f.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        f.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        f.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0]);
        f.extend_from_slice(&(pixels.len() as u32).to_le_bytes());
        f.extend_from_slice(pixels);
        f
    }

    #[test]
    fn finds_pixel_data_in_every_prefix_length() {
        let file = sample_file(&[1, 2, 3, 4]);
        let element_offset = file.len() - 4 - 12;
        // Feed the bytes one at a time: the result must never change once found,
        // and never be found early.
        let mut scanner = HeaderScanner::new();
        let mut found_at = None;
        for end in 0..=file.len() {
            match scanner.scan(&file[..end]).unwrap() {
                Scan::PixelData(location) => {
                    found_at.get_or_insert(end);
                    assert_eq!(location.element_offset as usize, element_offset);
                    assert_eq!(location.value_offset as usize, element_offset + 12);
                    assert_eq!(location.value_length, Some(4));
                }
                Scan::NeedMore { .. } => assert!(found_at.is_none()),
                Scan::Deflated => panic!("not deflated"),
            }
        }
        assert_eq!(found_at, Some(element_offset + 12));
    }

    #[test]
    fn rejects_non_dicom() {
        let garbage = vec![b'x'; 200];
        assert!(matches!(
            HeaderScanner::new().scan(&garbage),
            Err(DicomError::NotDicom(_))
        ));
        assert!(matches!(
            HeaderScanner::new().scan(&garbage[..10]),
            Ok(Scan::NeedMore { .. })
        ));
    }

    /// Found by fuzzing: a stream that starts with `DICM` and has it again after
    /// 128 bytes was read as preamble-less when the first chunk was short, and
    /// with a preamble when it came whole.
    #[test]
    fn the_magic_does_not_depend_on_the_chunking() {
        let mut file = b"DICM".to_vec();
        file.extend_from_slice(&sample_file(&[1, 2])[4..]);
        let mut whole = HeaderScanner::new();
        let _ = whole.scan(&file).unwrap();
        assert_eq!(whole.meta().unwrap().magic_offset, 128);
        let mut scanner = HeaderScanner::new();
        assert_eq!(
            scanner.scan(&file[..40]).unwrap(),
            Scan::NeedMore { resume_at: 0 }
        );
        for end in [131, 132, 200, file.len()] {
            let _ = scanner.scan(&file[..end]).unwrap();
        }
        assert_eq!(scanner.meta(), whole.meta());
    }

    #[test]
    fn reads_the_transfer_syntax() {
        let file = sample_file(&[]);
        let meta = parse_file_meta(&file).unwrap().unwrap();
        assert_eq!(meta.transfer_syntax, "1.2.840.10008.1.2.1");
        assert_eq!(meta.magic_offset, 128);
    }
}
