//! Burning the requested annotations (patient, technique) into a rendered image
//! with an 8×8 bitmap font.

use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use image::{DynamicImage, Rgb};

use super::Annotation;
use crate::dicom::instance::text;

/// Burns the requested annotation text into the top-left corner (8×8 bitmap font,
/// white on a dark shadow so it reads on any image).
pub(super) fn annotate(
    image: DynamicImage,
    header: &InMemDicomObject,
    frame_number: u64,
    annotations: &[Annotation],
) -> DynamicImage {
    if annotations.is_empty() {
        return image;
    }
    let value = |tag| text(header, tag).unwrap_or_default();
    let mut lines = Vec::new();
    for annotation in annotations {
        match annotation {
            Annotation::Patient => {
                lines.push(value(tags::PATIENT_NAME).replace('^', " "));
                lines.push(format!(
                    "ID {}  {} {}",
                    value(tags::PATIENT_ID),
                    value(tags::PATIENT_SEX),
                    value(tags::PATIENT_BIRTH_DATE)
                ));
            }
            Annotation::Technique => {
                lines.push(format!(
                    "{} {}",
                    value(tags::MODALITY),
                    value(tags::SERIES_DESCRIPTION)
                ));
                lines.push(format!(
                    "{}x{} frame {frame_number}",
                    value(tags::COLUMNS),
                    value(tags::ROWS)
                ));
            }
        }
    }
    // Grey images stay grey: the text is white on a black shadow either way.
    match image {
        DynamicImage::ImageLuma8(mut grey) => {
            for (row, line) in lines.iter().enumerate() {
                let y = 2 + row as u32 * 10;
                draw_text(&mut grey, 3, y + 1, line, image::Luma([0]));
                draw_text(&mut grey, 2, y, line, image::Luma([255]));
            }
            DynamicImage::ImageLuma8(grey)
        }
        other => {
            let mut rgb = other.to_rgb8();
            for (row, line) in lines.iter().enumerate() {
                let y = 2 + row as u32 * 10;
                draw_text(&mut rgb, 3, y + 1, line, Rgb([0, 0, 0]));
                draw_text(&mut rgb, 2, y, line, Rgb([255, 255, 255]));
            }
            DynamicImage::ImageRgb8(rgb)
        }
    }
}

fn draw_text<P: image::Pixel>(
    image: &mut image::ImageBuffer<P, Vec<P::Subpixel>>,
    x: u32,
    y: u32,
    line: &str,
    colour: P,
) {
    use font8x8::UnicodeFonts;
    for (i, ch) in line.chars().enumerate() {
        let glyph = font8x8::BASIC_FONTS
            .get(ch)
            .or_else(|| font8x8::LATIN_FONTS.get(ch))
            .unwrap_or([0; 8]);
        for (gy, bits) in glyph.iter().enumerate() {
            for gx in 0..8 {
                if bits & (1 << gx) != 0 {
                    let (px, py) = (x + i as u32 * 8 + gx, y + gy as u32);
                    if px < image.width() && py < image.height() {
                        image.put_pixel(px, py, colour);
                    }
                }
            }
        }
    }
}
