//! Lookup tables read from the data set: the Modality and VOI LUTs, and the red,
//! green and blue tables of PALETTE COLOR images.

use dicom_core::value::Value;
use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use image::{DynamicImage, Rgb, RgbImage};

use crate::dicom::DicomError;

/// The first item of a sequence, if the data set has one.
fn first_item(dataset: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    dataset.get(tag)?.items()?.first()
}

/// A Modality or VOI LUT (PS3.3 C.11.1.1, C.11.2.1.1): LUT Descriptor (number of
/// entries, first value mapped, bits per entry) and LUT Data.
pub(super) struct LookupTable {
    first_mapped: i64,
    bits: u32,
    entries: Vec<u16>,
}

impl LookupTable {
    /// The table in the first item of `sequence`, if there is one that can be
    /// used: a broken table is passed over (with a warning) for the rescale or
    /// window the instance also has, as viewers do, rather than failing the image.
    pub(super) fn usable(dataset: &InMemDicomObject, sequence: Tag) -> Option<Self> {
        let item = first_item(dataset, sequence)?;
        match Self::read(item) {
            Ok(table) => Some(table),
            Err(error) => {
                tracing::warn!(%sequence, %error, "lookup table ignored");
                None
            }
        }
    }

    fn read(item: &InMemDicomObject) -> Result<Self, DicomError> {
        let malformed = |what: &str| DicomError::Malformed(format!("lookup table: {what}"));
        let descriptor = item
            .get(tags::LUT_DESCRIPTOR)
            .ok_or(DicomError::MissingAttribute("LUT Descriptor"))?;
        let values: Vec<i64> = match descriptor.value() {
            Value::Primitive(v) => v
                .to_multi_int::<i64>()
                .map_err(|_| malformed("descriptor is not numeric"))?,
            _ => return Err(malformed("descriptor is not numeric")),
        };
        let [count, first_mapped, bits] = values[..] else {
            return Err(malformed("descriptor has not three values"));
        };
        // PS3.3 C.11.1.1.1: 0 entries means 2^16; the first value mapped is
        // signed when the descriptor says so (SS) or was read unsigned from a
        // value that is negative.
        let count = if count == 0 { 65536 } else { count as usize };
        let first_mapped = if descriptor.vr() != VR::SS && first_mapped > i64::from(i16::MAX) {
            first_mapped - 65536
        } else {
            first_mapped
        };
        if !(1..=16).contains(&bits) {
            return Err(malformed("bits per entry must be 1 to 16"));
        }
        let data = match item.get(tags::LUT_DATA).map(|e| e.value()) {
            Some(Value::Primitive(v)) => v.to_bytes().into_owned(),
            _ => return Err(DicomError::MissingAttribute("LUT Data")),
        };
        // 16-bit words as the standard writes them; tables of 8-bit entries
        // packed one per byte are read as they come.
        let entries: Vec<u16> = if data.len() >= 2 * count {
            data.chunks_exact(2)
                .take(count)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect()
        } else if bits <= 8 && data.len() >= count {
            data.iter().take(count).map(|b| u16::from(*b)).collect()
        } else {
            return Err(malformed("fewer data than entries"));
        };
        // Tables that declare more bits than their values use are common; the
        // output range comes from the declaration unless a value exceeds it.
        let widest = entries.iter().max().map_or(1, |m| 16 - m.leading_zeros());
        Ok(Self {
            first_mapped,
            bits: (bits as u32).max(widest),
            entries,
        })
    }

    /// The entry for `value`: the first below the range, the last above it.
    pub(super) fn look_up(&self, value: i64) -> u16 {
        let last = self.entries.len() as i64 - 1;
        self.entries[(value - self.first_mapped).clamp(0, last) as usize]
    }

    /// The largest output the table's bit depth allows.
    pub(super) fn max_output(&self) -> f64 {
        f64::from((1u32 << self.bits) - 1)
    }
}

/// Looks up PALETTE COLOR indices in the red, green and blue tables (PS3.3
/// C.7.6.3.1.5–6).
pub(super) fn palette_image(
    header: &InMemDicomObject,
    indices: &[u16],
    columns: u32,
    rows: u32,
) -> Result<DynamicImage, DicomError> {
    let table = |descriptor: Tag, data: Tag| -> Result<(i64, u16, Vec<u16>), DicomError> {
        let descriptor: Vec<i64> = match header.get(descriptor).map(|e| e.value()) {
            Some(Value::Primitive(v)) => v
                .to_multi_int::<i64>()
                .map_err(|e| DicomError::Malformed(e.to_string()))?,
            _ => return Err(DicomError::MissingAttribute("Palette Color Lookup Table")),
        };
        let (first, bits) = match descriptor.as_slice() {
            [_, first, bits, ..] => (*first, *bits as u16),
            _ => return Err(DicomError::Malformed("palette descriptor".into())),
        };
        let bytes = match header.get(data).map(|e| e.value()) {
            Some(Value::Primitive(v)) => v.to_bytes().into_owned(),
            _ => {
                return Err(DicomError::MissingAttribute(
                    "Palette Color Lookup Table Data",
                ))
            }
        };
        let entries = bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        Ok((first, bits, entries))
    };
    let red = table(
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
    )?;
    let green = table(
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
    )?;
    let blue = table(
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
    )?;
    let look_up = |(first, bits, entries): &(i64, u16, Vec<u16>), index: u16| -> u8 {
        if entries.is_empty() {
            return 0;
        }
        let i = (index as i64 - first).clamp(0, entries.len() as i64 - 1) as usize;
        if *bits > 8 {
            (entries[i] >> 8) as u8
        } else {
            entries[i] as u8
        }
    };
    let mut image = RgbImage::new(columns, rows);
    for (pixel, index) in image.pixels_mut().zip(indices) {
        *pixel = Rgb([
            look_up(&red, *index),
            look_up(&green, *index),
            look_up(&blue, *index),
        ]);
    }
    Ok(DynamicImage::ImageRgb8(image))
}
