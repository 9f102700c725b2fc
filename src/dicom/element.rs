//! One element (or item) header of a PS3.5 stream: tag, VR and value length,
//! read without decoding the value. The one reader of the header scanner
//! (`header.rs`), the guard's walk (`guard/walk.rs`) and the file classifier
//! (`files.rs`).

use super::transfer_syntax::Encoding;
use super::DicomError;

/// The VRs of PS3.5 Table 6.2-1, as dicom-rs knows them.
pub const KNOWN_VRS: [&[u8; 2]; 34] = [
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"OB",
    b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM",
    b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
];

/// Whether the first two bytes are a VR of PS3.5.
pub fn is_known_vr(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && KNOWN_VRS.iter().any(|vr| vr[..] == bytes[..2])
}

/// Whether a value length of this VR takes four bytes (after two reserved ones)
/// in Explicit VR encodings (PS3.5 Table 7.1-1).
pub fn has_long_length(vr: &[u8]) -> bool {
    matches!(
        vr,
        b"OB"
            | b"OD"
            | b"OF"
            | b"OL"
            | b"OV"
            | b"OW"
            | b"SQ"
            | b"UC"
            | b"UN"
            | b"UR"
            | b"UT"
            | b"SV"
            | b"UV"
    )
}

/// The size of one value of a binary VR (PS3.5 Table 6.2-1), `None` for the
/// VRs whose values are bytes or text. A value length that is not a multiple of
/// it is malformed, and dicom-rs reads such an element short: it decodes
/// `length / size` values, steps over `length` bytes in its position count but
/// not in the stream, and reads every later header from the wrong offset.
pub fn value_size(vr: &[u8]) -> Option<u32> {
    match vr {
        b"SS" | b"US" | b"OW" => Some(2),
        b"AT" | b"FL" | b"OF" | b"SL" | b"UL" | b"OL" => Some(4),
        b"FD" | b"OD" | b"SV" | b"UV" | b"OV" => Some(8),
        _ => None,
    }
}

/// The header of one element or item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElementHeader {
    pub group: u16,
    pub element: u16,
    /// `None` for items and delimiters, and in Implicit VR encodings.
    pub vr: Option<[u8; 2]>,
    pub length: u32,
    /// Bytes of the header (8 or 12).
    pub header_len: usize,
}

/// Reads element headers from `buf` in `encoding`.
pub struct Reader<'a> {
    pub buf: &'a [u8],
    pub encoding: Encoding,
}

impl Reader<'_> {
    fn bytes<const N: usize>(&self, pos: usize) -> Option<[u8; N]> {
        self.buf
            .get(pos..pos.checked_add(N)?)
            .and_then(|b| b.try_into().ok())
    }

    pub fn u16_at(&self, pos: usize) -> Option<u16> {
        let b = self.bytes::<2>(pos)?;
        Some(if self.encoding.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }

    pub fn u32_at(&self, pos: usize) -> Option<u32> {
        let b = self.bytes::<4>(pos)?;
        Some(if self.encoding.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    /// The header at `pos`: `Ok(None)` when it is not all there yet. A VR
    /// outside PS3.5 is refused: dicom-rs reads one as UN with a four-byte
    /// length, where these two bytes would be the length of a short VR, and
    /// the two readings of such an element disagree (found by fuzzing: an
    /// unknown VR hid a 3 GB length from the guard).
    pub fn header(&self, pos: usize) -> Result<Option<ElementHeader>, DicomError> {
        let (Some(group), Some(element)) = (self.u16_at(pos), self.u16_at(pos + 2)) else {
            return Ok(None);
        };
        // Items and delimiters never carry a VR, whatever the transfer syntax.
        if group == 0xFFFE || !self.encoding.explicit_vr {
            return Ok(self.u32_at(pos + 4).map(|length| ElementHeader {
                group,
                element,
                vr: None,
                length,
                header_len: 8,
            }));
        }
        let Some(vr) = self.bytes::<2>(pos + 4) else {
            return Ok(None);
        };
        if !is_known_vr(&vr) {
            return Err(DicomError::Malformed(format!(
                "invalid VR bytes {vr:02X?} for ({group:04X},{element:04X}) at offset {pos}"
            )));
        }
        Ok(if has_long_length(&vr) {
            self.u32_at(pos + 8).map(|length| ElementHeader {
                group,
                element,
                vr: Some(vr),
                length,
                header_len: 12,
            })
        } else {
            self.u16_at(pos + 6).map(|length| ElementHeader {
                group,
                element,
                vr: Some(vr),
                length: length as u32,
                header_len: 8,
            })
        })
    }
}
