//! Pixel data through dicom-rs (`dicom-pixeldata`): decoding one frame from any
//! stored syntax this build can read, transcoding whole instances, and which
//! syntaxes can be produced. Everything here works on one instance (or one frame)
//! in memory, never on a study.

use bytes::Bytes;
use dicom_core::value::{PixelFragmentSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::file::ReadPreamble;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{FileDicomObject, InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::{DecodedPixelData, PixelDecoder, Transcode};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use super::header::FileMeta;
use super::transfer_syntax::{self, DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_LE};
use super::DicomError;

/// JPEG-LS Lossless (written through CharLS when built with `jpeg-ls`).
pub const JPEG_LS_LOSSLESS: &str = "1.2.840.10008.1.2.4.80";

/// The bytes of one stored frame.
#[derive(Debug, Clone)]
pub enum FramePixels {
    /// Native pixels in Explicit VR Little Endian layout.
    Native(Bytes),
    /// One compressed frame (its fragments joined) in the instance's syntax.
    Encapsulated {
        transfer_syntax: String,
        data: Bytes,
    },
}

/// Whether this build can decode pixel data stored in `uid`.
pub fn can_decode(uid: &str) -> bool {
    transfer_syntax::is_native(uid)
        || TransferSyntaxRegistry
            .get(uid)
            .is_some_and(|ts| ts.can_decode_all())
}

/// JPEG Extended with more than 8 bits per sample (12-bit): the JPEG decoder
/// dicom-rs uses reads 8-bit JPEG only; `jpeg12` (feature `jpeg-12bit`) does.
const JPEG_EXTENDED: &str = "1.2.840.10008.1.2.4.51";

/// Whether this build can decode pixel data stored in `uid` with
/// `bits_allocated` bits per sample.
pub fn can_decode_samples(uid: &str, bits_allocated: Option<i64>) -> bool {
    can_decode(uid)
        && (cfg!(feature = "jpeg-12bit")
            || !(uid == JPEG_EXTENDED && bits_allocated.unwrap_or(8) > 8))
}

/// Whether `header` describes samples wider than 8 bits.
fn wide_samples(header: &InMemDicomObject) -> bool {
    super::instance::text(header, tags::BITS_ALLOCATED)
        .and_then(|b| b.trim().parse::<u16>().ok())
        .is_some_and(|bits| bits > 8)
}

/// A 12-bit JPEG Extended frame decoded to native samples (and the header that
/// describes them: colour comes out as interleaved RGB); other frames as they
/// are.
fn decode_12_bit(
    header: &InMemDicomObject,
    frame: FramePixels,
) -> Result<(std::borrow::Cow<'_, InMemDicomObject>, FramePixels), DicomError> {
    use std::borrow::Cow;
    let FramePixels::Encapsulated {
        transfer_syntax,
        data,
    } = &frame
    else {
        return Ok((Cow::Borrowed(header), frame));
    };
    if transfer_syntax != JPEG_EXTENDED || !wide_samples(header) {
        return Ok((Cow::Borrowed(header), frame));
    }
    #[cfg(feature = "jpeg-12bit")]
    {
        let number =
            |tag| super::instance::text(header, tag).and_then(|v| v.trim().parse::<u32>().ok());
        let (rows, columns) = (number(tags::ROWS), number(tags::COLUMNS));
        let (Some(rows), Some(columns)) = (rows, columns) else {
            return Err(DicomError::CannotDecode("Rows or Columns missing".into()));
        };
        let samples = number(tags::SAMPLES_PER_PIXEL).unwrap_or(1) as u16;
        let native = super::jpeg12::decode_frame(data, rows, columns, samples)?;
        let mut header = header.clone();
        if samples == 3 {
            header.put(DataElement::new(
                tags::PHOTOMETRIC_INTERPRETATION,
                VR::CS,
                PrimitiveValue::from("RGB"),
            ));
            header.put(DataElement::new(
                tags::PLANAR_CONFIGURATION,
                VR::US,
                PrimitiveValue::from(0u16),
            ));
        }
        Ok((Cow::Owned(header), FramePixels::Native(Bytes::from(native))))
    }
    #[cfg(not(feature = "jpeg-12bit"))]
    {
        let _ = data;
        Err(DicomError::UnsupportedTransferSyntax(
            transfer_syntax.clone(),
        ))
    }
}

/// Whether Kastell writes `uid` when a client asks for it. Only lossless targets:
/// an archive does not degrade an image on the way out unless it was stored so.
pub fn can_encode(uid: &str) -> bool {
    match uid {
        EXPLICIT_VR_LE | DEFLATED_EXPLICIT_VR_LE => true,
        JPEG_LS_LOSSLESS => TransferSyntaxRegistry
            .get(uid)
            .is_some_and(|ts| ts.pixel_data_writer().is_some()),
        _ => false,
    }
}

/// The static name of a syntax Kastell writes, for a requested UID.
pub fn writable_syntax(uid: &str) -> Option<&'static str> {
    [EXPLICIT_VR_LE, DEFLATED_EXPLICIT_VR_LE, JPEG_LS_LOSSLESS]
        .into_iter()
        .find(|s| *s == uid && can_encode(s))
}

/// Whether an instance stored in `stored` can be sent in `target`.
pub fn can_transcode(stored: &str, target: &str) -> bool {
    if stored == target {
        return true;
    }
    if transfer_syntax::is_native(stored) && transfer_syntax::is_native(target) {
        return can_encode(target);
    }
    can_decode(stored) && can_encode(target)
}

fn decode_error(error: impl std::fmt::Display) -> DicomError {
    DicomError::CannotDecode(error.to_string())
}

/// A one-frame object: the instance's header with `frame` as its Pixel Data.
fn frame_object(
    header: &InMemDicomObject,
    frame: FramePixels,
) -> Result<FileDicomObject<InMemDicomObject>, DicomError> {
    let mut dataset = header.clone();
    dataset.put(DataElement::new(
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        PrimitiveValue::from("1"),
    ));
    dataset.remove_element(tags::EXTENDED_OFFSET_TABLE);
    dataset.remove_element(tags::EXTENDED_OFFSET_TABLE_LENGTHS);
    let syntax = match frame {
        FramePixels::Native(bytes) => {
            let bits = super::instance::text(header, tags::BITS_ALLOCATED)
                .and_then(|b| b.parse::<u16>().ok())
                .unwrap_or(8);
            let vr = if bits > 8 { VR::OW } else { VR::OB };
            dataset.put(DataElement::new(
                tags::PIXEL_DATA,
                vr,
                PrimitiveValue::U8(bytes.to_vec().into()),
            ));
            EXPLICIT_VR_LE.to_string()
        }
        FramePixels::Encapsulated {
            transfer_syntax,
            data,
        } => {
            let fragments = PixelFragmentSequence::new_fragments(vec![data.to_vec()]);
            dataset.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OB,
                Value::PixelSequence(fragments),
            ));
            transfer_syntax
        }
    };
    dataset
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(syntax))
        .map_err(|e| DicomError::Malformed(e.to_string()))
}

/// Decodes one frame and hands the result to `work` (the decoded data borrows the
/// object it came from).
pub fn with_decoded_frame<T>(
    header: &InMemDicomObject,
    frame: FramePixels,
    work: impl FnOnce(&DecodedPixelData<'_>) -> Result<T, DicomError>,
) -> Result<T, DicomError> {
    let (header, frame) = decode_12_bit(header, frame)?;
    let header = header.as_ref();
    if let FramePixels::Encapsulated {
        transfer_syntax, ..
    } = &frame
    {
        if !can_decode(transfer_syntax) {
            return Err(DicomError::UnsupportedTransferSyntax(
                transfer_syntax.clone(),
            ));
        }
    }
    let object = frame_object(header, frame)?;
    let decoded = object.decode_pixel_data().map_err(decode_error)?;
    work(&decoded)
}

/// One frame as native Explicit VR Little Endian bytes, samples interleaved (what
/// DICOMweb sends for `application/octet-stream` frames).
pub fn native_frame(header: &InMemDicomObject, frame: FramePixels) -> Result<Bytes, DicomError> {
    if let (_, FramePixels::Native(bytes)) = decode_12_bit(header, frame.clone())? {
        return Ok(bytes);
    }
    with_decoded_frame(header, frame, |decoded| {
        let data = decoded.data();
        let samples = decoded.samples_per_pixel() as usize;
        if samples > 1
            && decoded.planar_configuration() == dicom_pixeldata::PlanarConfiguration::PixelFirst
        {
            return Ok(Bytes::from(interleave_planes(
                data,
                samples,
                (decoded.bits_allocated() as usize).div_ceil(8),
            )));
        }
        Ok(Bytes::copy_from_slice(data))
    })
}

/// Replaces the 12-bit JPEG Pixel Data of `object` with native samples, one
/// frame at a time (one fragment a frame, or one frame in any number of
/// fragments), and makes the object Explicit VR Little Endian.
fn decode_12_bit_frames(object: &mut FileDicomObject<InMemDicomObject>) -> Result<(), DicomError> {
    let declared = super::instance::text(object, tags::NUMBER_OF_FRAMES)
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let fragments: Vec<Vec<u8>> = match object.element(tags::PIXEL_DATA).map(|e| e.value()) {
        Ok(Value::PixelSequence(sequence)) => sequence.fragments().to_vec(),
        _ => {
            return Err(DicomError::CannotDecode(
                "no encapsulated Pixel Data".into(),
            ))
        }
    };
    let frames = if fragments.len() == declared {
        fragments
    } else if declared == 1 {
        vec![fragments.concat()]
    } else {
        return Err(DicomError::CannotDecode(format!(
            "{} fragments for {declared} frames: the frames cannot be told apart",
            fragments.len()
        )));
    };
    let mut native = Vec::new();
    let mut decoded_header = None;
    for frame in frames {
        let (header, pixels) = decode_12_bit(
            object,
            FramePixels::Encapsulated {
                transfer_syntax: JPEG_EXTENDED.into(),
                data: Bytes::from(frame),
            },
        )?;
        let FramePixels::Native(pixels) = pixels else {
            return Err(DicomError::CannotDecode("a frame was not decoded".into()));
        };
        native.extend_from_slice(&pixels);
        decoded_header.get_or_insert_with(|| header.into_owned());
    }
    if let Some(header) = decoded_header {
        for tag in [tags::PHOTOMETRIC_INTERPRETATION, tags::PLANAR_CONFIGURATION] {
            if let Ok(element) = header.element(tag) {
                object.put(element.clone());
            }
        }
    }
    object.remove_element(tags::EXTENDED_OFFSET_TABLE);
    object.remove_element(tags::EXTENDED_OFFSET_TABLE_LENGTHS);
    object.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U8(native.into()),
    ));
    let explicit = dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN;
    object.meta_mut().set_transfer_syntax(&explicit);
    object.meta_mut().update_information_group_length();
    Ok(())
}

/// Turns `RRR…GGG…BBB…` into `RGBRGB…` for samples of `width` bytes.
fn interleave_planes(data: &[u8], samples: usize, width: usize) -> Vec<u8> {
    let plane = data.len() / samples;
    let pixels = plane / width;
    let mut out = vec![0u8; data.len()];
    for pixel in 0..pixels {
        for sample in 0..samples {
            let from = sample * plane + pixel * width;
            let to = (pixel * samples + sample) * width;
            out[to..to + width].copy_from_slice(&data[from..from + width]);
        }
    }
    out
}

/// Re-encodes a whole PS3.10 file in `target` (decoding compressed pixel data
/// first when needed). Only for pairs [`can_transcode`] accepts.
pub fn transcode(file: &[u8], meta: &FileMeta, target: &str) -> Result<Vec<u8>, DicomError> {
    let ts = TransferSyntaxRegistry
        .get(target)
        .ok_or_else(|| DicomError::UnsupportedTransferSyntax(target.to_string()))?;
    super::guard::check_file(file, meta, &super::guard::ParseLimits::current())?;
    let mut object = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .from_reader(file.get(meta.magic_offset..).ok_or(DicomError::Truncated)?)
        .map_err(|e| DicomError::Malformed(e.to_string()))?;
    let samples = super::instance::text(&object, tags::SAMPLES_PER_PIXEL)
        .and_then(|s| s.trim().parse::<u16>().ok())
        .unwrap_or(1);
    if target == JPEG_LS_LOSSLESS && samples > 1 {
        // CharLS through dicom-rs scrambles colour planes here (checked against
        // pydicom); colour images are not offered in JPEG-LS rather than garbled.
        return Err(DicomError::CannotDecode(
            "JPEG-LS output is offered for monochrome images only".into(),
        ));
    }
    if meta.transfer_syntax == JPEG_EXTENDED && wide_samples(&object) {
        // dicom-rs cannot decode these: the frames are decoded here, and
        // dicom-rs carries on from native pixels (or stops, for Explicit VR LE).
        decode_12_bit_frames(&mut object)?;
        if target == EXPLICIT_VR_LE {
            let mut out = Vec::with_capacity(file.len() * 2 + 1024);
            object
                .write_all(&mut out)
                .map_err(|e| DicomError::Encode(e.to_string()))?;
            return Ok(out);
        }
    }
    object.transcode(ts).map_err(|e| {
        // Decoding the source is what usually fails (a codec feature it uses that
        // the decoder lacks); either way the representation cannot be produced.
        DicomError::CannotDecode(e.to_string())
    })?;
    let mut out = Vec::with_capacity(file.len() + 1024);
    object
        .write_all(&mut out)
        .map_err(|e| DicomError::Encode(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_are_interleaved() {
        let planar = [1, 2, 3, 10, 20, 30, 100, 200, 255];
        assert_eq!(
            interleave_planes(&planar, 3, 1),
            vec![1, 10, 100, 2, 20, 200, 3, 30, 255]
        );
        let planar16 = [1, 0, 2, 0, 3, 0, 4, 0];
        assert_eq!(
            interleave_planes(&planar16, 2, 2),
            vec![1, 0, 3, 0, 2, 0, 4, 0]
        );
    }

    #[test]
    fn only_lossless_targets_are_written() {
        assert!(can_encode(EXPLICIT_VR_LE));
        assert!(can_encode(DEFLATED_EXPLICIT_VR_LE));
        assert!(!can_encode("1.2.840.10008.1.2.4.50"));
        assert!(can_decode("1.2.840.10008.1.2.4.50"));
        assert!(can_decode("1.2.840.10008.1.2.4.90"));
        assert!(can_decode("1.2.840.10008.1.2.5"));
        assert!(can_transcode("1.2.840.10008.1.2.4.70", EXPLICIT_VR_LE));
        assert!(!can_transcode(EXPLICIT_VR_LE, "1.2.840.10008.1.2.4.50"));
        assert_eq!(
            can_encode(JPEG_LS_LOSSLESS),
            cfg!(feature = "jpeg-ls"),
            "JPEG-LS is written exactly when CharLS is built in"
        );
    }
}
