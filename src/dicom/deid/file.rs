//! A whole PS3.10 file de-identified: checked by the hostile-input guard as
//! every stored object is, parsed, de-identified, its file meta group made to
//! follow the new SOP Instance UID, and written again in its own transfer
//! syntax (Pixel Data untouched).

use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::OpenFileOptions;

use super::{Outcome, Profile};
use crate::dicom::guard::ParseLimits;
use crate::dicom::header::parse_file_meta;
use crate::dicom::DicomError;

/// De-identifies the PS3.10 file `file` (with or without its preamble).
pub fn deidentify_file_bytes(
    file: &[u8],
    profile: &Profile,
) -> Result<(Vec<u8>, Outcome), DicomError> {
    let meta = parse_file_meta(file)?.ok_or(DicomError::Truncated)?;
    crate::dicom::guard::check_file(file, &meta, &ParseLimits::current())?;
    let mut object = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .from_reader(file.get(meta.magic_offset..).ok_or(DicomError::Truncated)?)
        .map_err(|e| DicomError::Malformed(e.to_string()))?;
    let outcome = profile.deidentify(&mut object);
    if let Some(uid) = object
        .get(tags::SOP_INSTANCE_UID)
        .and_then(|e| e.to_str().ok())
        .map(|uid| uid.trim_end_matches(['\0', ' ']).to_string())
    {
        object.meta_mut().media_storage_sop_instance_uid = uid;
    }
    object.meta_mut().update_information_group_length();
    let mut out = Vec::with_capacity(file.len() + 1024);
    object
        .write_all(&mut out)
        .map_err(|e| DicomError::Encode(e.to_string()))?;
    Ok((out, outcome))
}
