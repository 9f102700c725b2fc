//! De-identification (src/dicom/deid, PS3.15 Annex E) of arbitrary PS3.10
//! files, as `kastell deidentify` and de-identified retrievals will run it on
//! stored objects: the hostile-input guard, then the profile with every option
//! off and with every option on, the second blanking a pixel region of images
//! that may carry burned-in text.
//!
//! Properties: nothing panics; what comes out and dicom-rs reads says Patient
//! Identity Removed = YES and holds no private attribute (no safe list given).
//! The same data set as DICOM JSON (as research searches and metadata are
//! de-identified), and the input itself read as JSON when it is: no panic; the
//! result says YES and holds no private attribute and no BulkDataURI.
#![no_main]

use std::collections::BTreeSet;

use kastell::dicom::deid::{deidentify_file_bytes, Deidentified, PixelRegion, Profile, ProfileOption};
use libfuzzer_sys::fuzz_target;

/// De-identifies `dataset` as JSON and checks what the JSON path promises.
fn check_json(profile: &Profile, mut dataset: serde_json::Map<String, serde_json::Value>) {
    profile.deidentify_json(&mut dataset);
    assert_eq!(dataset["00120062"]["Value"][0], "YES");
    assert!(
        dataset.keys().all(|key| key.len() == 8
            && u16::from_str_radix(&key[..4], 16).is_ok_and(|group| group % 2 == 0)),
        "a private or malformed key is left"
    );
    assert!(!serde_json::to_string(&dataset).unwrap().contains("BulkDataURI"));
}

fuzz_target!(|data: &[u8]| {
    if let Ok(serde_json::Value::Object(dataset)) = serde_json::from_slice(data) {
        check_json(&Profile::new(b"fuzzing secret, 32 bytes or more", BTreeSet::new()), dataset);
    }
    for options in [BTreeSet::new(), ProfileOption::ALL.into_iter().collect()] {
        let every_option = !options.is_empty();
        let mut profile = Profile::new(b"fuzzing secret, 32 bytes or more", options);
        if every_option {
            profile.blank_regions.push(PixelRegion { x: 0, y: 0, width: 64, height: 16 });
        }
        let Ok(result) = deidentify_file_bytes(data, &profile) else {
            continue;
        };
        // It passed the guard: as JSON too.
        if let Ok(input) = dicom_object::OpenFileOptions::new()
            .read_preamble(dicom_object::file::ReadPreamble::Auto)
            .from_reader(data)
        {
            let json = kastell::dicom::json::dataset_to_json(&input, &|path| format!("bulk/{path}"));
            check_json(&profile, json);
        }
        let Deidentified::File { bytes: out, .. } = result else {
            continue;
        };
        let strict = |bytes: &[u8]| {
            dicom_object::OpenFileOptions::new()
                .read_preamble(dicom_object::file::ReadPreamble::Auto)
                .from_reader(bytes)
        };
        // Some mutated inputs give an output dicom-rs's strict reader refuses
        // (open, see fuzz/README.md); what it reads must be de-identified.
        let Ok(again) = strict(&out) else {
            continue;
        };
        let removed = again
            .get(dicom_core::Tag(0x0012, 0x0062))
            .and_then(|e| e.to_str().ok())
            .map(|v| v.trim().to_string());
        assert_eq!(removed.as_deref(), Some("YES"));
        assert!(again.tags().all(|tag| tag.group() % 2 == 0), "a private attribute is left");
    }
});
