//! The frame index of encapsulated Pixel Data (PS3.5 A.4), built while an instance
//! streams in: the item headers are followed chunk by chunk (never buffering a
//! fragment), and at the end each frame is assigned its run of fragments from the
//! Extended or Basic Offset Table, one fragment per frame, or the codestream start
//! markers. Retrieval then reads one frame with one ranged read.

/// The Basic Offset Table is kept only up to this size (4 bytes per frame: enough
/// for four million frames); larger tables are ignored and the markers decide.
const MAX_OFFSET_TABLE: usize = 16 * 1024 * 1024;
/// Fragments followed in one Pixel Data value: about 16 bytes of memory each;
/// a million is more than any real multi-frame object has (one fragment per
/// frame, or a few per frame).
pub const MAX_FRAGMENTS: usize = 1_000_000;

#[derive(Debug, Clone, Copy)]
struct Item {
    /// Offset of the item tag in the stream.
    offset: u64,
    /// The first two bytes of the value (a codestream start marker, if any).
    start: [u8; 2],
    start_len: u8,
}

/// Follows the items of one encapsulated Pixel Data value.
#[derive(Debug)]
pub struct FragmentScanner {
    /// Stream offset of the next byte fed.
    position: u64,
    /// A partial item header.
    pending: Vec<u8>,
    /// Bytes of the current item's value still to come.
    remaining: u64,
    items: Vec<Item>,
    offset_table: Vec<u8>,
    /// Offset of the sequence delimiter, once seen.
    end: Option<u64>,
    broken: bool,
    /// More fragments than [`MAX_FRAGMENTS`].
    too_many: bool,
}

impl FragmentScanner {
    /// Starts at `value_offset`, the first byte after the Pixel Data element header.
    pub fn new(value_offset: u64) -> Self {
        Self {
            position: value_offset,
            pending: Vec::with_capacity(8),
            remaining: 0,
            items: Vec::new(),
            offset_table: Vec::new(),
            end: None,
            broken: false,
            too_many: false,
        }
    }

    /// Feeds the next bytes of the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.end.is_none() && !self.broken {
            if self.remaining > 0 {
                let take = (self.remaining.min(bytes.len() as u64)) as usize;
                self.note_value(&bytes[..take]);
                self.remaining -= take as u64;
                self.position += take as u64;
                bytes = &bytes[take..];
                continue;
            }
            let need = 8 - self.pending.len();
            let take = need.min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.pending.len() < 8 {
                return;
            }
            let header = &self.pending;
            let tag = (
                u16::from_le_bytes([header[0], header[1]]),
                u16::from_le_bytes([header[2], header[3]]),
            );
            let length = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            let item_offset = self.position;
            self.position += 8;
            self.pending.clear();
            match tag {
                (0xFFFE, 0xE000) if length != u32::MAX && self.items.len() >= MAX_FRAGMENTS => {
                    // Millions of empty fragments would grow this list without
                    // bound: such pixel data is not followed further.
                    self.broken = true;
                    self.too_many = true;
                }
                (0xFFFE, 0xE000) if length != u32::MAX => {
                    self.items.push(Item {
                        offset: item_offset,
                        start: [0; 2],
                        start_len: 0,
                    });
                    self.remaining = length as u64;
                }
                (0xFFFE, 0xE0DD) => self.end = Some(item_offset),
                _ => self.broken = true,
            }
        }
    }

    fn note_value(&mut self, bytes: &[u8]) {
        let first_item = self.items.len() == 1;
        let Some(item) = self.items.last_mut() else {
            return;
        };
        for byte in bytes.iter().take(2 - item.start_len as usize) {
            item.start[item.start_len as usize] = *byte;
            item.start_len += 1;
        }
        if first_item {
            if self.offset_table.len() + bytes.len() <= MAX_OFFSET_TABLE {
                self.offset_table.extend_from_slice(bytes);
            } else {
                self.offset_table.clear();
            }
        }
    }

    /// The fragments seen (Basic Offset Table not counted), or `None` when the
    /// value could not be followed to its end (malformed, or more than
    /// [`MAX_FRAGMENTS`]).
    pub fn fragment_count(&self) -> Option<usize> {
        (self.end.is_some() && !self.broken).then(|| self.items.len().saturating_sub(1))
    }

    /// Whether the value holds more fragments than are followed.
    pub fn too_many_fragments(&self) -> bool {
        self.too_many
    }

    /// The stream offset just after the sequence delimiter (where elements after
    /// Pixel Data start), if the value ended properly.
    pub fn value_end(&self) -> Option<u64> {
        self.end.map(|end| end + 8)
    }

    /// The frame boundaries: offsets of each frame's first item header, then the
    /// sequence delimiter's. `None` when the fragments cannot be told apart.
    /// `extended_offsets` is the Extended Offset Table (7FE0,0001), if the header
    /// has one.
    pub fn frame_boundaries(
        &self,
        number_of_frames: u64,
        extended_offsets: Option<&[u64]>,
    ) -> Option<Vec<u64>> {
        let end = self.end?;
        if self.broken || self.items.len() < 2 || number_of_frames == 0 {
            return None;
        }
        let fragments = &self.items[1..];
        let first = fragments[0].offset;
        let frames = number_of_frames as usize;
        let starts: Vec<u64> = if frames == 1 {
            vec![first]
        } else if let Some(table) = extended_offsets.filter(|t| t.len() == frames) {
            // The table comes from the client's header: an offset past the end of
            // any stream names no fragment.
            table
                .iter()
                .map(|o| first.checked_add(*o))
                .collect::<Option<_>>()?
        } else if self.offset_table.len() >= 4 * frames && self.offset_table.len() % 4 == 0 {
            self.offset_table
                .chunks_exact(4)
                .take(frames)
                .map(|c| first + u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64)
                .collect()
        } else if fragments.len() == frames {
            fragments.iter().map(|f| f.offset).collect()
        } else {
            // Frames spanning several fragments without an offset table: a frame
            // starts where a JPEG (SOI, FFD8) or JPEG 2000 (SOC, FF4F) codestream does.
            fragments
                .iter()
                .filter(|f| {
                    f.start_len == 2 && f.start[0] == 0xFF && matches!(f.start[1], 0xD8 | 0x4F)
                })
                .map(|f| f.offset)
                .collect()
        };
        let valid = starts.len() == frames
            && starts[0] == first
            && starts.windows(2).all(|w| w[0] < w[1])
            && starts
                .iter()
                .all(|s| fragments.binary_search_by_key(s, |f| f.offset).is_ok());
        valid.then(|| {
            let mut boundaries = starts;
            boundaries.push(end);
            boundaries
        })
    }
}

/// The frame boundaries of a data set's encapsulated Pixel Data, scanned by
/// `fragments`: its NumberOfFrames, and its Extended Offset Table when it has one.
/// The one way frames are found, at STOW and for objects stored before.
pub fn frame_index(
    fragments: &FragmentScanner,
    dataset: &dicom_object::InMemDicomObject,
) -> Option<Vec<u64>> {
    use dicom_dictionary_std::tags;
    let frames = super::instance::text(dataset, tags::NUMBER_OF_FRAMES)
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(1)
        .max(1);
    let extended: Option<Vec<u64>> = dataset
        .get(tags::EXTENDED_OFFSET_TABLE)
        .and_then(|e| e.value().primitive().map(|p| p.to_bytes().into_owned()))
        .map(|bytes| {
            bytes
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect()
        });
    fragments.frame_boundaries(frames, extended.as_deref())
}

/// The boundaries as stored in the index: offsets separated by spaces.
pub fn format_boundaries(boundaries: &[u64]) -> String {
    boundaries
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn parse_boundaries(text: &str) -> Option<Vec<u64>> {
    text.split(' ').map(|n| n.parse().ok()).collect()
}

/// The fragment values in `span` (a run of whole items, as read from the blob),
/// joined: one frame's codestream. A single fragment is returned without copying.
pub fn join_items(span: bytes::Bytes) -> Result<bytes::Bytes, super::DicomError> {
    let mut values = Vec::new();
    let mut pos = 0usize;
    while pos + 8 <= span.len() {
        let length =
            u32::from_le_bytes([span[pos + 4], span[pos + 5], span[pos + 6], span[pos + 7]])
                as usize;
        let start = pos + 8;
        let end = start
            .checked_add(length)
            .filter(|e| *e <= span.len())
            .ok_or(super::DicomError::Truncated)?;
        values.push(span.slice(start..end));
        pos = end;
    }
    Ok(if values.len() == 1 {
        values.swap_remove(0)
    } else {
        bytes::Bytes::from(values.concat())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(value: &[u8]) -> Vec<u8> {
        let mut out = vec![0xFE, 0xFF, 0x00, 0xE0];
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
        out
    }

    fn delimiter() -> Vec<u8> {
        vec![0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]
    }

    /// Feeds `stream` in chunks of every size from 1 to 9.
    fn scan(stream: &[u8], frames: u64) -> Vec<Option<Vec<u64>>> {
        (1..10)
            .map(|chunk| {
                let mut scanner = FragmentScanner::new(100);
                for piece in stream.chunks(chunk) {
                    scanner.feed(piece);
                }
                scanner.frame_boundaries(frames, None)
            })
            .collect()
    }

    #[test]
    fn one_fragment_per_frame() {
        let mut stream = item(&[]);
        stream.extend(item(&[0xFF, 0xD8, 1, 2]));
        stream.extend(item(&[0xFF, 0xD8, 3]));
        stream.extend(delimiter());
        for result in scan(&stream, 2) {
            assert_eq!(result, Some(vec![108, 120, 131]));
        }
    }

    #[test]
    fn basic_offset_table_groups_fragments() {
        // Frame 1 = fragments 1 and 2 (12 + 10 bytes with headers), frame 2 = fragment 3.
        let mut table = 0u32.to_le_bytes().to_vec();
        table.extend(22u32.to_le_bytes());
        let mut stream = item(&table);
        stream.extend(item(&[0xFF, 0xD8, 1, 2]));
        stream.extend(item(&[5, 6]));
        stream.extend(item(&[0xFF, 0xD8]));
        stream.extend(delimiter());
        for result in scan(&stream, 2) {
            assert_eq!(result, Some(vec![116, 138, 148]));
        }
    }

    #[test]
    fn markers_split_fragments_without_a_table() {
        let mut stream = item(&[]);
        stream.extend(item(&[0xFF, 0x4F, 1]));
        stream.extend(item(&[7, 7]));
        stream.extend(item(&[0xFF, 0x4F, 2]));
        stream.extend(delimiter());
        for result in scan(&stream, 2) {
            assert_eq!(result, Some(vec![108, 129, 140]));
        }
        // Two starts (and three fragments) cannot make four frames.
        for result in scan(&stream, 4) {
            assert_eq!(result, None);
        }
    }

    #[test]
    fn unfinished_or_broken_values_have_no_index() {
        let mut stream = item(&[]);
        stream.extend(item(&[1, 2]));
        assert_eq!(scan(&stream, 1)[0], None, "no delimiter yet");
        let mut broken = item(&[]);
        broken.extend([0x08, 0x00, 0x10, 0x00, 0, 0, 0, 0]);
        broken.extend(delimiter());
        assert_eq!(scan(&broken, 1)[0], None);
    }

    /// fuzz/regressions/fragments/crash-41fb86eed3981abb11f1c4bcc600aa67592b68d2:
    /// an Extended Offset Table entry near `u64::MAX` overflowed the addition.
    #[test]
    fn extended_offsets_past_any_stream_give_no_index() {
        let mut stream = item(&[]);
        stream.extend(item(&[0xFF, 0x4F, 1, 2]));
        stream.extend(item(&[0xFF, 0x4F, 3, 4]));
        stream.extend(delimiter());
        let mut scanner = FragmentScanner::new(100);
        scanner.feed(&stream);
        let table = [0, 0xFFFF_FFFF_FFFF_FFFC];
        assert_eq!(scanner.frame_boundaries(2, Some(&table)), None);
        assert_eq!(
            scanner.frame_boundaries(2, Some(&[0, 12])),
            Some(vec![108, 120, 132])
        );
    }

    #[test]
    fn items_are_joined_into_frames() {
        let mut span = item(&[1, 2, 3]);
        span.extend(item(&[4]));
        assert_eq!(join_items(span.into()).unwrap().as_ref(), &[1, 2, 3, 4]);
        assert!(join_items(item(&[1, 2])[..9].to_vec().into()).is_err());
        let boundaries = vec![1, 20, 300];
        assert_eq!(
            parse_boundaries(&format_boundaries(&boundaries)),
            Some(boundaries)
        );
    }
}
