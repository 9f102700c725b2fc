//! The presentation step: a decoded frame's pixel values to displayable 8-bit grey
//! or RGB, through the modality rescale or LUT, the VOI window or LUT, and
//! MONOCHROME1 inversion.

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_pixeldata::{ConvertOptions, DecodedPixelData, ModalityLutOption, VoiLutOption};
use image::{DynamicImage, GrayImage};

use super::lut::{palette_image, LookupTable};
use super::{VoiFunction, Window};
use crate::dicom::instance::text;
use crate::dicom::DicomError;

fn float_list(dataset: &InMemDicomObject, tag: Tag) -> Vec<f64> {
    text(dataset, tag)
        .map(|v| {
            v.split('\\')
                .filter_map(|p| p.trim().parse::<f64>().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The window stored in the instance: the first WindowCenter/Width pair.
fn stored_window(header: &InMemDicomObject) -> Option<Window> {
    let center = *float_list(header, tags::WINDOW_CENTER).first()?;
    let width = *float_list(header, tags::WINDOW_WIDTH).first()?;
    let function = text(header, tags::VOILUT_FUNCTION)
        .and_then(|f| VoiFunction::parse(&f))
        .unwrap_or(VoiFunction::Linear);
    (width > 0.0).then_some(Window {
        center,
        width,
        function,
    })
}

/// The presentation step: pixel values to displayable 8-bit grey or RGB.
pub(super) fn presentation(
    header: &InMemDicomObject,
    decoded: &DecodedPixelData<'_>,
    window: Option<Window>,
) -> Result<DynamicImage, DicomError> {
    let (columns, rows) = (decoded.columns(), decoded.rows());
    let photometric = decoded.photometric_interpretation().to_string();
    let photometric = photometric.trim();
    if photometric == "PALETTE COLOR" {
        let indices: Vec<u16> = decoded
            .to_vec_frame_with_options(
                0,
                &ConvertOptions::new()
                    .with_modality_lut(ModalityLutOption::None)
                    .with_voi_lut(VoiLutOption::Identity),
            )
            .map_err(|e| DicomError::Malformed(e.to_string()))?;
        return palette_image(header, &indices, columns, rows);
    }
    if decoded.samples_per_pixel() > 1 {
        let image = decoded
            .to_dynamic_image_with_options(0, &ConvertOptions::new().force_8bit())
            .map_err(|e| DicomError::Malformed(e.to_string()))?;
        return Ok(DynamicImage::ImageRgb8(image.to_rgb8()));
    }
    let values = modality_values(header, decoded)?;
    let invert = photometric == "MONOCHROME1";
    let to_grey = |y: f64| {
        let y = y.round() as u8;
        if invert {
            255 - y
        } else {
            y
        }
    };
    // A requested window wins; otherwise the instance's own VOI: its VOI LUT
    // (preferred, as most viewers do, when it also has a window), its window,
    // or the full range of the values.
    let voi_lut = match window {
        Some(_) => None,
        None => LookupTable::usable(header, tags::VOILUT_SEQUENCE),
    };
    if let Some(lut) = voi_lut {
        let scale = 255.0 / lut.max_output();
        let grey: Vec<u8> = values
            .iter()
            .map(|v| to_grey(f64::from(lut.look_up(v.floor() as i64)) * scale))
            .collect();
        return GrayImage::from_raw(columns, rows, grey)
            .map(DynamicImage::ImageLuma8)
            .ok_or_else(|| DicomError::Malformed("pixel data shorter than Rows x Columns".into()));
    }
    let window = window.or_else(|| stored_window(header)).unwrap_or_else(|| {
        let (min, max) = values
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        let width = (max - min).max(1.0);
        Window {
            center: min + width / 2.0,
            width,
            function: VoiFunction::LinearExact,
        }
    });
    let grey: Vec<u8> = values.iter().map(|v| to_grey(window.apply(*v))).collect();
    GrayImage::from_raw(columns, rows, grey)
        .map(DynamicImage::ImageLuma8)
        .ok_or_else(|| DicomError::Malformed("pixel data shorter than Rows x Columns".into()))
}

/// The stored values of a monochrome frame through the Modality LUT or else the
/// modality rescale (PS3.3 C.11.1), for every BitsAllocated DICOM allows (1, 8,
/// 16, 32): values are masked to BitsStored and sign-extended when
/// PixelRepresentation is 1.
fn modality_values(
    header: &InMemDicomObject,
    decoded: &DecodedPixelData<'_>,
) -> Result<Vec<f64>, DicomError> {
    let data = decoded.data();
    let bits = decoded.bits_allocated();
    let stored = decoded.bits_stored().clamp(1, bits.max(1));
    let signed = decoded.pixel_representation() == dicom_pixeldata::PixelRepresentation::Signed;
    let count = decoded.rows() as usize * decoded.columns() as usize;
    let raw: Vec<i64> = match bits {
        // dicom-pixeldata expands 1-bit samples to bytes of 0 or 255.
        1 => data.iter().take(count).map(|b| (*b != 0) as i64).collect(),
        8 => data.iter().take(count).map(|b| *b as i64).collect(),
        16 => data
            .chunks_exact(2)
            .take(count)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
            .collect(),
        32 => data
            .chunks_exact(4)
            .take(count)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
            .collect(),
        other => {
            return Err(DicomError::CannotDecode(format!(
                "BitsAllocated {other} is not rendered"
            )))
        }
    };
    if raw.len() < count {
        return Err(DicomError::Malformed(
            "pixel data shorter than Rows x Columns".into(),
        ));
    }
    let mask: i64 = if stored >= 64 {
        -1
    } else {
        (1i64 << stored) - 1
    };
    let sign_bit = 1i64 << (stored - 1);
    let stored_value = |v: i64| {
        let v = v & mask;
        if signed && bits > 1 && v & sign_bit != 0 {
            v - (mask + 1)
        } else {
            v
        }
    };
    if let Some(lut) = LookupTable::usable(header, tags::MODALITY_LUT_SEQUENCE) {
        return Ok(raw
            .into_iter()
            .map(|v| f64::from(lut.look_up(stored_value(v))))
            .collect());
    }
    let slope = float_list(header, tags::RESCALE_SLOPE)
        .first()
        .copied()
        .unwrap_or(1.0);
    let intercept = float_list(header, tags::RESCALE_INTERCEPT)
        .first()
        .copied()
        .unwrap_or(0.0);
    Ok(raw
        .into_iter()
        .map(|v| stored_value(v) as f64 * slope + intercept)
        .collect())
}
