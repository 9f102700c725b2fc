//! A whole PS3.10 file de-identified: checked by the hostile-input guard as
//! every stored object is, parsed, its burned-in annotation dealt with
//! (`pixels.rs`: blanked or the file excluded), de-identified, its file meta
//! group made to follow the new SOP Instance UID, and written again in its own
//! transfer syntax (Pixel Data otherwise untouched).

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{InMemDicomObject, OpenFileOptions};

use super::pixels::{clean_pixels, PixelVerdict};
use super::{Outcome, Profile};
use crate::dicom::guard::ParseLimits;
use crate::dicom::header::parse_file_meta;
use crate::dicom::DicomError;

/// What became of one file.
#[derive(Debug)]
pub enum Deidentified {
    /// The de-identified file.
    File { bytes: Vec<u8>, outcome: Outcome },
    /// Not de-identified: it may carry identifying text in its pixels.
    Excluded { reason: String },
}

/// De-identifies the PS3.10 file `file` (with or without its preamble).
pub fn deidentify_file_bytes(file: &[u8], profile: &Profile) -> Result<Deidentified, DicomError> {
    let meta = parse_file_meta(file)?.ok_or(DicomError::Truncated)?;
    crate::dicom::guard::check_file(file, &meta, &ParseLimits::current())?;
    let mut object = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .from_reader(file.get(meta.magic_offset..).ok_or(DicomError::Truncated)?)
        .map_err(|e| DicomError::Malformed(e.to_string()))?;
    let transfer_syntax = object
        .meta()
        .transfer_syntax()
        .trim_end_matches(['\0', ' '])
        .to_string();
    let pixels = clean_pixels(&mut object, &transfer_syntax, &profile.blank_regions);
    if let PixelVerdict::Excluded { reason } = pixels {
        return Ok(Deidentified::Excluded { reason });
    }
    let mut outcome = profile.deidentify(&mut object);
    if let PixelVerdict::Blanked { .. } = pixels {
        add_method_code(&mut object, ("113101", "Clean Pixel Data Option"));
    }
    outcome.pixels = pixels;
    if let Some(uid) = object
        .get(tags::SOP_INSTANCE_UID)
        .and_then(|e| e.to_str().ok())
        .map(|uid| uid.trim_end_matches(['\0', ' ']).to_string())
    {
        object.meta_mut().media_storage_sop_instance_uid = uid;
    }
    object.meta_mut().update_information_group_length();
    let mut bytes = Vec::with_capacity(file.len() + 1024);
    object
        .write_all(&mut bytes)
        .map_err(|e| DicomError::Encode(e.to_string()))?;
    Ok(Deidentified::File { bytes, outcome })
}

/// Appends one code to the De-identification Method Code Sequence.
fn add_method_code(object: &mut InMemDicomObject, code: (&str, &str)) {
    let mut items: Vec<InMemDicomObject> = object
        .get(tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE)
        .and_then(|e| e.items())
        .map(<[InMemDicomObject]>::to_vec)
        .unwrap_or_default();
    items.push(super::method_code(code));
    object.put(DataElement::new(
        tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE,
        VR::SQ,
        DataSetSequence::from(items),
    ));
}
