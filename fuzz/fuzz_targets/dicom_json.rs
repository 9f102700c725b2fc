//! DICOM JSON metadata of STOW-RS (src/dicom/compose.rs): the part's data sets,
//! each read as a `JsonInstance`, then composed into a PS3.10 file.
//!
//! Property: a composed file without pixel bulk data reads back through the
//! header scanner and parser with the SOP Instance UID it was given.
#![no_main]

use kastell::dicom::compose::{claimed_uids, compose, metadata_datasets, JsonInstance};
use kastell::dicom::header::{HeaderScanner, Scan};
use kastell::dicom::instance;
use kastell::dicom::transfer_syntax::EXPLICIT_VR_LE;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(datasets) = metadata_datasets(data) else {
        return;
    };
    for dataset in datasets {
        let _ = claimed_uids(&dataset);
        let Ok(instance) = JsonInstance::from_json(dataset) else {
            continue;
        };
        let _ = instance.expected_native_pixel_bytes();
        if instance.pixel_reference().is_some() {
            continue;
        }
        let Ok(composed) = compose(&instance, Vec::new(), EXPLICIT_VR_LE) else {
            continue;
        };
        let file = composed.head;
        let mut scanner = HeaderScanner::new();
        let header = match scanner.scan(&file) {
            Ok(Scan::PixelData(location)) => &file[..location.element_offset as usize],
            Ok(Scan::NeedMore { resume_at }) if resume_at == file.len() => &file[..],
            other => panic!("a composed file does not scan: {other:?}"),
        };
        let meta = scanner.meta().expect("scanned").clone();
        let dataset = instance::parse_dataset(header, &meta).expect("a composed file parses");
        assert_eq!(
            instance::text(&dataset, dicom_core::Tag(0x0008, 0x0018)).as_deref(),
            Some(instance.sop_instance_uid.as_str())
        );
    }
});
