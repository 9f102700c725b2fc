//! Encoding rendered frames as JPEG, PNG or GIF (animated when several).

use std::io::Cursor;

use image::{DynamicImage, ImageEncoder};

use super::ImageFormat;
use crate::dicom::DicomError;

/// Encodes rendered frames: one image, or an animation (GIF only) when several.
/// `frame_delay_ms` is the GIF frame time.
pub fn encode(
    frames: Vec<DynamicImage>,
    format: ImageFormat,
    quality: u8,
    frame_delay_ms: u32,
) -> Result<Vec<u8>, DicomError> {
    let encode_error = |e: image::ImageError| DicomError::Encode(e.to_string());
    let mut out = Vec::new();
    match format {
        ImageFormat::Jpeg => {
            let first = frames.into_iter().next().ok_or(DicomError::Truncated)?;
            // Baseline 8-bit Huffman JPEG (PS3.18 §8.7.4), grey or RGB.
            let encoder =
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100));
            match first {
                DynamicImage::ImageLuma8(grey) => encoder
                    .write_image(
                        grey.as_raw(),
                        grey.width(),
                        grey.height(),
                        image::ExtendedColorType::L8,
                    )
                    .map_err(encode_error)?,
                other => {
                    let rgb = other.to_rgb8();
                    encoder
                        .write_image(
                            rgb.as_raw(),
                            rgb.width(),
                            rgb.height(),
                            image::ExtendedColorType::Rgb8,
                        )
                        .map_err(encode_error)?
                }
            }
        }
        ImageFormat::Png => {
            let first = frames.into_iter().next().ok_or(DicomError::Truncated)?;
            first
                .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
                .map_err(encode_error)?;
        }
        ImageFormat::Gif => {
            let mut encoder = image::codecs::gif::GifEncoder::new_with_speed(&mut out, 10);
            if frames.len() > 1 {
                encoder
                    .set_repeat(image::codecs::gif::Repeat::Infinite)
                    .map_err(encode_error)?;
            }
            let delay = image::Delay::from_numer_denom_ms(frame_delay_ms.max(10), 1);
            for frame in frames {
                encoder
                    .encode_frame(image::Frame::from_parts(frame.to_rgba8(), 0, 0, delay))
                    .map_err(encode_error)?;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::GrayImage;

    #[test]
    fn every_format_encodes() {
        let image = DynamicImage::ImageLuma8(GrayImage::from_fn(16, 16, |x, y| {
            image::Luma([(x * 16 + y) as u8])
        }));
        let jpeg = encode(vec![image.clone()], ImageFormat::Jpeg, 80, 100).unwrap();
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
        let png = encode(vec![image.clone()], ImageFormat::Png, 80, 100).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let gif = encode(vec![image.clone(), image], ImageFormat::Gif, 80, 100).unwrap();
        assert_eq!(&gif[..3], b"GIF");
    }
}
