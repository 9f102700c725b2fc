//! XML Native DICOM Model metadata of STOW-RS (src/dicom/xml.rs): a document
//! read into DICOM JSON, then taken as a `JsonInstance` as STOW does.
//!
//! Property: a data set STOW accepts writes back (as search results and
//! metadata are written) to XML that reads back the same.
#![no_main]

use kastell::dicom::compose::JsonInstance;
use kastell::dicom::xml::{from_native_dicom_model, to_native_dicom_model};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(xml) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(dataset) = from_native_dicom_model(xml) else {
        return;
    };
    if JsonInstance::from_json(dataset.clone()).is_err() {
        return;
    }
    let written = to_native_dicom_model(dataset.as_object().expect("an object"));
    let again = from_native_dicom_model(&written).expect("what we write reads back");
    assert_eq!(again, dataset, "the XML round trip changed the data set");
});
