//! The geometry steps: WADO-URI region, the viewport's crop, flip and fit, and the
//! `rows`/`columns` maxima, all keeping the aspect ratio.

use image::DynamicImage;

use super::{Region, Viewport};
use crate::dicom::DicomError;

pub(super) fn apply_region(image: DynamicImage, region: Option<Region>) -> DynamicImage {
    let Some(region) = region else {
        return image;
    };
    let (w, h) = (image.width() as f64, image.height() as f64);
    let x = (region.x_min * w).floor() as u32;
    let y = (region.y_min * h).floor() as u32;
    let width = (((region.x_max - region.x_min) * w).round() as u32).max(1);
    let height = (((region.y_max - region.y_min) * h).round() as u32).max(1);
    image.crop_imm(x, y, width, height)
}

/// The viewport crops (`sx,sy,sw,sh`, negative sizes flip) and then scales to fit
/// `vw × vh` with the aspect ratio kept.
pub(super) fn apply_viewport(
    mut image: DynamicImage,
    viewport: Option<Viewport>,
) -> Result<DynamicImage, DicomError> {
    let Some(viewport) = viewport else {
        return Ok(image);
    };
    if let Some(source) = viewport.source {
        let (w, h) = (image.width() as i64, image.height() as i64);
        let sw = source.width.unwrap_or(w - source.x);
        let sh = source.height.unwrap_or(h - source.y);
        let (x0, x1) = ordered(source.x, source.x + sw);
        let (y0, y1) = ordered(source.y, source.y + sh);
        let (x0, x1) = (x0.clamp(0, w), x1.clamp(0, w));
        let (y0, y1) = (y0.clamp(0, h), y1.clamp(0, h));
        if x1 <= x0 || y1 <= y0 {
            return Err(DicomError::OutsideImage);
        }
        image = image.crop_imm(x0 as u32, y0 as u32, (x1 - x0) as u32, (y1 - y0) as u32);
        if sw < 0 {
            image = image.fliph();
        }
        if sh < 0 {
            image = image.flipv();
        }
    }
    Ok(fit(image, viewport.width, viewport.height))
}

fn ordered(a: i64, b: i64) -> (i64, i64) {
    (a.min(b), a.max(b))
}

/// Scales to the largest size inside `width × height` with the aspect ratio kept.
fn fit(image: DynamicImage, width: u32, height: u32) -> DynamicImage {
    if image.width() == width && image.height() == height {
        return image;
    }
    let scale = (width as f64 / image.width() as f64).min(height as f64 / image.height() as f64);
    let new_width = ((image.width() as f64 * scale).round() as u32).max(1);
    let new_height = ((image.height() as f64 * scale).round() as u32).max(1);
    image.resize_exact(new_width, new_height, image::imageops::FilterType::Triangle)
}

pub(super) fn apply_maxima(
    image: DynamicImage,
    rows: Option<u32>,
    columns: Option<u32>,
) -> DynamicImage {
    if rows.is_none() && columns.is_none() {
        return image;
    }
    let max_w = columns.unwrap_or(u32::MAX).min(image.width());
    let max_h = rows.unwrap_or(u32::MAX).min(image.height());
    fit(image, max_w, max_h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::render::SourceRect;
    use image::GrayImage;

    #[test]
    fn viewport_crops_flips_and_fits() {
        let mut image = GrayImage::new(100, 50);
        image.put_pixel(0, 0, image::Luma([255]));
        let image = DynamicImage::ImageLuma8(image);
        let fitted = apply_viewport(
            image.clone(),
            Some(Viewport {
                width: 40,
                height: 40,
                source: None,
            }),
        )
        .unwrap();
        assert_eq!((fitted.width(), fitted.height()), (40, 20));
        let flipped = apply_viewport(
            image,
            Some(Viewport {
                width: 10,
                height: 10,
                source: Some(SourceRect {
                    x: 10,
                    y: 0,
                    width: Some(-10),
                    height: Some(10),
                }),
            }),
        )
        .unwrap();
        assert_eq!((flipped.width(), flipped.height()), (10, 10));
        // The lit corner pixel moved to the right edge.
        assert_eq!(flipped.to_luma8().get_pixel(9, 0).0, [255]);
    }
}
