//! The pixel description check: the attributes that size frames must be backed by
//! the Pixel Data actually stored.

use crate::dicom::DicomError;

/// Checks that the values that drive work (NumberOfFrames, Rows, Columns,
/// SamplesPerPixel, BitsAllocated) agree with the Pixel Data actually stored,
/// so that nothing later allocates or loops by a number the data does not back:
/// native pixel data must hold every frame they describe; encapsulated pixel
/// data must have a fragment for every frame. `native_length` is the native
/// value's length, `fragments` the number of fragments (Basic Offset Table not
/// counted) of encapsulated pixel data.
pub fn check_pixel_description(
    dataset: &dicom_object::InMemDicomObject,
    native_length: Option<u64>,
    fragments: Option<usize>,
) -> Result<(), DicomError> {
    use dicom_dictionary_std::tags;
    let number = |tag, name: &str| -> Result<Option<u64>, DicomError> {
        match crate::dicom::instance::text(dataset, tag) {
            None => Ok(None),
            Some(text) if text.trim().is_empty() => Ok(None),
            Some(text) => text
                .trim()
                .parse::<u64>()
                .map(Some)
                .map_err(|_| DicomError::PixelMismatch(format!("{name} is not a number"))),
        }
    };
    let frames = number(tags::NUMBER_OF_FRAMES, "NumberOfFrames")?.unwrap_or(1);
    if frames == 0 {
        return Err(DicomError::PixelMismatch("NumberOfFrames is 0".into()));
    }
    if let Some(fragments) = fragments {
        if frames > fragments as u64 {
            return Err(DicomError::PixelMismatch(format!(
                "NumberOfFrames is {frames}; the encapsulated pixel data has {fragments} fragment(s)"
            )));
        }
    }
    let Some(length) = native_length else {
        return Ok(());
    };
    let rows = number(tags::ROWS, "Rows")?.unwrap_or(0);
    let columns = number(tags::COLUMNS, "Columns")?.unwrap_or(0);
    let samples = number(tags::SAMPLES_PER_PIXEL, "SamplesPerPixel")?.unwrap_or(1);
    let bits = number(tags::BITS_ALLOCATED, "BitsAllocated")?.unwrap_or(0);
    if rows == 0 || columns == 0 || bits == 0 {
        return Err(DicomError::PixelMismatch(
            "native Pixel Data without Rows, Columns or BitsAllocated".into(),
        ));
    }
    // 4:2:2 subsampled colour keeps two samples per pixel on the wire.
    let photometric =
        crate::dicom::instance::text(dataset, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
    let samples = if photometric.trim().ends_with("_422") {
        2
    } else {
        samples
    };
    let bits_needed = [columns, samples, bits, frames]
        .into_iter()
        .fold(u128::from(rows), |product, n| {
            product.saturating_mul(u128::from(n))
        });
    let bytes_needed = bits_needed.div_ceil(8);
    if bytes_needed > u128::from(length) {
        return Err(DicomError::PixelMismatch(format!(
            "{frames} frame(s) of {rows} x {columns} x {samples} samples of {bits} bits \
             need {bytes_needed} bytes; Pixel Data holds {length}"
        )));
    }
    Ok(())
}
