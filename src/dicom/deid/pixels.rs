//! Burned-in annotation (PS3.15 E.3.1, the Clean Pixel Data Option): text a
//! device wrote into the pixels (names, dates, IDs) that no attribute rule can
//! remove. An image that says it has some (`BurnedInAnnotation` YES), or is of
//! a kind that commonly does whatever it says (ultrasound, secondary capture,
//! whose screens carry the patient banner), is either blanked in the regions a
//! project configures — native pixel data only: compressed frames would have to
//! be decoded and re-encoded, which is not done here — or excluded, with why.

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

/// A rectangle of every frame, in pixels from the top left corner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelRegion {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl PixelRegion {
    /// `x,y,width,height`.
    pub fn parse(text: &str) -> Option<Self> {
        let parts: Vec<u32> = text
            .split(',')
            .map(|p| p.trim().parse().ok())
            .collect::<Option<_>>()?;
        match parts.as_slice() {
            [x, y, width, height] if *width > 0 && *height > 0 => Some(Self {
                x: *x,
                y: *y,
                width: *width,
                height: *height,
            }),
            _ => None,
        }
    }
}

impl std::fmt::Display for PixelRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{},{},{}", self.x, self.y, self.width, self.height)
    }
}

/// What was done about burned-in annotation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PixelVerdict {
    /// Nothing said or suggested text in the pixels.
    #[default]
    NotFlagged,
    /// Flagged, and the configured regions were blanked in every frame.
    Blanked { regions: usize },
    /// Flagged and not cleaned: the instance must not leave de-identified.
    Excluded { reason: String },
}

/// SOP classes whose images commonly carry burned-in text whatever their
/// `BurnedInAnnotation` says: ultrasound (single and multi-frame, and retired
/// ones) and every secondary capture.
const BURNED_IN_CLASSES: [&str; 9] = [
    "1.2.840.10008.5.1.4.1.1.6",
    "1.2.840.10008.5.1.4.1.1.6.1",
    "1.2.840.10008.5.1.4.1.1.3",
    "1.2.840.10008.5.1.4.1.1.3.1",
    "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.7.1",
    "1.2.840.10008.5.1.4.1.1.7.2",
    "1.2.840.10008.5.1.4.1.1.7.3",
    "1.2.840.10008.5.1.4.1.1.7.4",
];

fn text(object: &InMemDicomObject, tag: Tag) -> Option<String> {
    object
        .get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|v| v.trim_end_matches(['\0', ' ']).trim().to_string())
}

fn number(object: &InMemDicomObject, tag: Tag) -> Option<u32> {
    object.get(tag).and_then(|e| e.to_int::<u32>().ok())
}

/// Why `object` may carry text in its pixels, if it may (and has pixels).
pub fn burned_in_reason(object: &InMemDicomObject) -> Option<String> {
    object.get(tags::PIXEL_DATA)?;
    if text(object, tags::BURNED_IN_ANNOTATION).is_some_and(|v| v.eq_ignore_ascii_case("YES")) {
        return Some("BurnedInAnnotation is YES".into());
    }
    let class = text(object, tags::SOP_CLASS_UID).unwrap_or_default();
    BURNED_IN_CLASSES.contains(&class.as_str()).then(|| {
        format!(
            "SOP class {class} (ultrasound or secondary capture) commonly carries burned-in text"
        )
    })
}

/// Blanks `regions` of every frame of a flagged image, or says why it is excluded.
/// `transfer_syntax` is the data set's: only little-endian native pixel data is
/// blanked.
pub fn clean_pixels(
    object: &mut InMemDicomObject,
    transfer_syntax: &str,
    regions: &[PixelRegion],
) -> PixelVerdict {
    let Some(reason) = burned_in_reason(object) else {
        return PixelVerdict::NotFlagged;
    };
    if regions.is_empty() {
        return PixelVerdict::Excluded {
            reason: format!("{reason}; the project blanks no pixel regions"),
        };
    }
    const NATIVE_LE: [&str; 2] = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"];
    if !NATIVE_LE.contains(&transfer_syntax) {
        return PixelVerdict::Excluded {
            reason: format!(
                "{reason}; its pixel data is compressed ({transfer_syntax}), and only native \
                 pixel data is blanked"
            ),
        };
    }
    match blank(object, regions) {
        Ok(()) => {
            object.put(DataElement::new(
                tags::BURNED_IN_ANNOTATION,
                VR::CS,
                PrimitiveValue::from("NO"),
            ));
            PixelVerdict::Blanked {
                regions: regions.len(),
            }
        }
        Err(why) => PixelVerdict::Excluded {
            reason: format!("{reason}; {why}"),
        },
    }
}

fn blank(object: &mut InMemDicomObject, regions: &[PixelRegion]) -> Result<(), String> {
    let rows = number(object, tags::ROWS).ok_or("no Rows")? as usize;
    let columns = number(object, tags::COLUMNS).ok_or("no Columns")? as usize;
    let samples = number(object, tags::SAMPLES_PER_PIXEL).unwrap_or(1) as usize;
    let bits = number(object, tags::BITS_ALLOCATED).ok_or("no Bits Allocated")?;
    if bits % 8 != 0 || bits == 0 || bits > 32 {
        return Err(format!("Bits Allocated {bits} is not blanked"));
    }
    let bytes_per_sample = (bits / 8) as usize;
    let planar = number(object, tags::PLANAR_CONFIGURATION).unwrap_or(0) == 1;
    let frames = text(object, tags::NUMBER_OF_FRAMES)
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let element = object.get(tags::PIXEL_DATA).ok_or("no Pixel Data")?;
    let vr = element.vr();
    let mut pixels = element
        .to_bytes()
        .map_err(|_| "the pixel data is not native".to_string())?
        .into_owned();
    let frame_len = rows
        .checked_mul(columns)
        .and_then(|n| n.checked_mul(samples))
        .and_then(|n| n.checked_mul(bytes_per_sample))
        .ok_or("the image dimensions overflow")?;
    if frame_len == 0 || frame_len.saturating_mul(frames) > pixels.len() {
        return Err(format!(
            "the pixel data holds {} bytes, fewer than {frames} frame(s) of {frame_len}",
            pixels.len()
        ));
    }
    for frame in pixels.chunks_exact_mut(frame_len).take(frames) {
        for region in regions {
            let x0 = (region.x as usize).min(columns);
            let x1 = (region.x as usize)
                .saturating_add(region.width as usize)
                .min(columns);
            let y0 = (region.y as usize).min(rows);
            let y1 = (region.y as usize)
                .saturating_add(region.height as usize)
                .min(rows);
            for y in y0..y1 {
                if planar {
                    let plane = rows * columns * bytes_per_sample;
                    for sample in 0..samples {
                        let start = sample * plane + (y * columns + x0) * bytes_per_sample;
                        let end = sample * plane + (y * columns + x1) * bytes_per_sample;
                        frame[start..end].fill(0);
                    }
                } else {
                    let pixel = samples * bytes_per_sample;
                    frame[(y * columns + x0) * pixel..(y * columns + x1) * pixel].fill(0);
                }
            }
        }
    }
    object.put(DataElement::new(
        tags::PIXEL_DATA,
        vr,
        PrimitiveValue::U8(pixels.into()),
    ));
    Ok(())
}
