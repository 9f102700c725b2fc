use std::collections::BTreeSet;

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::*;

fn text(tag: Tag, vr: VR, value: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::from(value))
}

fn value(object: &InMemDicomObject, tag: Tag) -> Option<String> {
    object
        .get(tag)
        .map(|e| e.to_str().map(|s| s.trim().to_string()).unwrap_or_default())
}

/// An instance with identifying attributes at the top, in a sequence, and in
/// private attributes.
fn identified() -> InMemDicomObject {
    let referenced = InMemDicomObject::from_element_iter([
        text(
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            "1.2.840.10008.5.1.4.1.1.2",
        ),
        text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, "1.2.3.4.5.6.7"),
        text(tags::PERSON_NAME, VR::PN, "Doe^Referrer"),
    ]);
    InMemDicomObject::from_element_iter([
        text(tags::PATIENT_NAME, VR::PN, "Müller^Jürgen"),
        text(tags::PATIENT_ID, VR::LO, "PID-4711"),
        text(tags::PATIENT_BIRTH_DATE, VR::DA, "19610305"),
        text(tags::PATIENT_SEX, VR::CS, "M"),
        text(tags::PATIENT_AGE, VR::AS, "063Y"),
        text(tags::ACCESSION_NUMBER, VR::SH, "ACC-99"),
        text(tags::STUDY_DATE, VR::DA, "20240115"),
        text(tags::STUDY_TIME, VR::TM, "101500"),
        text(tags::INSTITUTION_NAME, VR::LO, "Klinikum Nord"),
        text(tags::STATION_NAME, VR::SH, "CT-3"),
        text(tags::STUDY_DESCRIPTION, VR::LO, "CT chest for J. Müller"),
        text(tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3.4"),
        text(tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3.4.5"),
        text(tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.4.5.6"),
        text(tags::SOP_CLASS_UID, VR::UI, "1.2.840.10008.5.1.4.1.1.2"),
        text(tags::MODALITY, VR::CS, "CT"),
        text(tags::ROWS, VR::US, "2"),
        DataElement::new(
            tags::REFERENCED_IMAGE_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(vec![referenced]),
        ),
        text(Tag(0x0009, 0x0010), VR::LO, "ACME 1.0"),
        text(Tag(0x0009, 0x1001), VR::LO, "the patient's home address"),
        text(Tag(0x0009, 0x1002), VR::LO, "slice thickness hint"),
    ])
}

#[test]
fn the_table_is_the_standards() {
    assert!(RULES.len() > 500, "{}", RULES.len());
    let rule = |tag: Tag| super::rule_for(tag).unwrap();
    assert_eq!(rule(tags::PATIENT_NAME).basic, BasicAction::Z);
    assert_eq!(rule(tags::STUDY_INSTANCE_UID).basic, BasicAction::U);
    assert_eq!(rule(tags::INSTITUTION_NAME).basic, BasicAction::XZD);
    // Overlay data by its masked tag (60xx,3000).
    assert_eq!(rule(Tag(0x6002, 0x3000)).basic, BasicAction::X);
    assert!(super::rule_for(tags::ROWS).is_none(), "not listed: kept");
}

#[test]
fn every_listed_attribute_is_found_by_the_lookup_as_the_table_lists_it() {
    // The lookup is a sorted index over the table: each single-attribute rule
    // comes back as the first the table lists for its tag (the standard lists
    // three AE Titles twice, cleaned and kept under Retain Device Identity).
    let mut twice = 0;
    for rule in RULES.iter().filter(|rule| rule.mask == u32::MAX) {
        let tag = Tag((rule.tag >> 16) as u16, (rule.tag & 0xFFFF) as u16);
        let first = RULES
            .iter()
            .find(|r| r.mask == u32::MAX && r.tag == rule.tag)
            .unwrap();
        let found = super::rule_for(tag).unwrap();
        assert!(
            std::ptr::eq(found, first),
            "{} found as {}",
            rule.name,
            found.name
        );
        twice += usize::from(!std::ptr::eq(first, rule));
    }
    assert_eq!(twice, 3, "attributes the table lists twice");
    let ae = super::rule_for(Tag(0x0040, 0x0241)).unwrap();
    assert_eq!(ae.options[2], OptionAction::C, "the cleaning rule wins");
    // Overlay rows of every repeating group, and curve data (50xx,xxxx).
    for group in [0x6000u16, 0x601E, 0x5000, 0x50FE] {
        let tag = if group >= 0x6000 {
            Tag(group, 0x3000)
        } else {
            Tag(group, 0x0010)
        };
        assert!(super::rule_for(tag).is_some(), "{tag}");
    }
}

#[test]
fn the_basic_profile_removes_empties_replaces_and_maps_everywhere() {
    let profile = Profile::new(b"project secret", BTreeSet::new());
    let mut object = identified();
    let outcome = profile.deidentify(&mut object);
    // Nothing identifying is left, at the top or in the sequence.
    let dump = format!("{object:?}");
    for secret in [
        "Müller",
        "Jürgen",
        "PID-4711",
        "19610305",
        "ACC-99",
        "Klinikum Nord",
        "CT-3",
        "home address",
        "Doe^Referrer",
        "1.2.3.4.5.6.7\"",
        "20240115",
    ] {
        assert!(!dump.contains(secret), "{secret} left in {dump}");
    }
    assert_eq!(value(&object, tags::ACCESSION_NUMBER).as_deref(), Some(""));
    assert_eq!(value(&object, tags::STUDY_DATE).as_deref(), Some(""));
    assert_eq!(
        value(&object, tags::PATIENT_BIRTH_DATE).as_deref(),
        Some("")
    );
    assert_eq!(value(&object, tags::STUDY_DESCRIPTION), None, "X: removed");
    assert_eq!(value(&object, tags::PATIENT_SEX).as_deref(), Some(""));
    assert_eq!(
        value(&object, tags::MODALITY).as_deref(),
        Some("CT"),
        "not listed: kept"
    );
    assert_eq!(value(&object, tags::ROWS).as_deref(), Some("2"));
    // UIDs: mapped, UUID-derived, consistent with the reference inside the sequence.
    let study = value(&object, tags::STUDY_INSTANCE_UID).unwrap();
    assert!(study.starts_with("2.25.") && study.len() <= 64, "{study}");
    assert_eq!(study, profile.map_uid("1.2.3.4"));
    let sop_class = value(&object, tags::SOP_CLASS_UID).unwrap();
    assert_eq!(
        sop_class, "1.2.840.10008.5.1.4.1.1.2",
        "the SOP class is no identifier"
    );
    let item = &object
        .get(tags::REFERENCED_IMAGE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0];
    assert_eq!(
        value(item, tags::REFERENCED_SOP_INSTANCE_UID).unwrap(),
        profile.map_uid("1.2.3.4.5.6.7")
    );
    // Private attributes, creator included, are gone.
    assert!(object.get(Tag(0x0009, 0x0010)).is_none());
    assert!(object.get(Tag(0x0009, 0x1002)).is_none());
    assert_eq!(outcome.private_removed, 3);
    // The marks the standard asks for; the pseudonym.
    assert_eq!(
        value(&object, tags::PATIENT_IDENTITY_REMOVED).as_deref(),
        Some("YES")
    );
    assert!(value(&object, tags::DEIDENTIFICATION_METHOD)
        .unwrap()
        .contains("Table E.1-1"));
    let codes = object
        .get(tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert_eq!(codes.len(), 1);
    assert_eq!(
        value(&codes[0], tags::CODE_VALUE).as_deref(),
        Some("113100")
    );
    assert_eq!(
        value(&object, tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED).as_deref(),
        Some("REMOVED")
    );
    let pseudonym = value(&object, tags::PATIENT_ID).unwrap();
    assert_eq!(pseudonym, profile.pseudonym("PID-4711"));
    assert_eq!(value(&object, tags::PATIENT_NAME).unwrap(), pseudonym);
}

#[test]
fn the_same_project_maps_the_same_way_and_another_does_not() {
    let one = Profile::new(b"project one", BTreeSet::new());
    let again = Profile::new(b"project one", BTreeSet::new());
    let other = Profile::new(b"project two", BTreeSet::new());
    assert_eq!(one.map_uid("1.2.3"), again.map_uid("1.2.3"));
    assert_ne!(one.map_uid("1.2.3"), one.map_uid("1.2.4"));
    assert_ne!(one.map_uid("1.2.3"), other.map_uid("1.2.3"));
    assert_eq!(one.pseudonym("P1"), again.pseudonym("P1"));
    assert_ne!(one.pseudonym("P1"), other.pseudonym("P1"));
}

#[test]
fn options_retain_or_shift_what_the_basic_profile_would_remove() {
    let options: BTreeSet<ProfileOption> = [
        ProfileOption::RetainPatientCharacteristics,
        ProfileOption::RetainDeviceIdentity,
        ProfileOption::RetainInstitutionIdentity,
        ProfileOption::RetainLongitudinalModifiedDates,
        ProfileOption::RetainSafePrivate,
    ]
    .into_iter()
    .collect();
    let mut profile = Profile::new(b"s", options);
    profile.safe_private.push(("ACME 1.0".into(), 0x02));
    let mut object = identified();
    profile.deidentify(&mut object);
    assert_eq!(value(&object, tags::PATIENT_SEX).as_deref(), Some("M"));
    assert_eq!(value(&object, tags::PATIENT_AGE).as_deref(), Some("063Y"));
    assert_eq!(value(&object, tags::STATION_NAME).as_deref(), Some("CT-3"));
    assert_eq!(
        value(&object, tags::INSTITUTION_NAME).as_deref(),
        Some("Klinikum Nord")
    );
    // Dates moved back by the patient's offset, consistently.
    let offset = profile.date_offset_days("PID-4711");
    let expected =
        chrono::NaiveDate::from_ymd_opt(2024, 1, 15).unwrap() - chrono::Duration::days(offset);
    assert_eq!(
        value(&object, tags::STUDY_DATE).unwrap(),
        expected.format("%Y%m%d").to_string()
    );
    assert_eq!(
        value(&object, tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED).as_deref(),
        Some("MODIFIED")
    );
    // The safe private attribute and its creator stay; the other goes.
    assert_eq!(
        value(&object, Tag(0x0009, 0x1002)).as_deref(),
        Some("slice thickness hint")
    );
    assert_eq!(
        value(&object, Tag(0x0009, 0x0010)).as_deref(),
        Some("ACME 1.0")
    );
    assert!(object.get(Tag(0x0009, 0x1001)).is_none());
    // Each option is named in the code sequence.
    let codes = object
        .get(tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert_eq!(codes.len(), 6);
}

#[test]
fn retain_uids_keeps_them() {
    let profile = Profile::new(b"s", [ProfileOption::RetainUids].into_iter().collect());
    let mut object = identified();
    profile.deidentify(&mut object);
    assert_eq!(
        value(&object, tags::STUDY_INSTANCE_UID).as_deref(),
        Some("1.2.3.4")
    );
}

#[test]
fn attributes_received_as_un_are_read_by_the_dictionary_or_removed() {
    let un = |tag: Tag, bytes: &[u8]| {
        DataElement::new(tag, VR::UN, PrimitiveValue::from(bytes.to_vec()))
    };
    let mut object = InMemDicomObject::from_element_iter([
        un(tags::SOP_CLASS_UID, b"1.2.840.10008.5.1.4.1.1.481.2\0"),
        un(tags::PATIENT_NAME, b"Doe^John"),
        un(tags::ROWS, &[0x00, 0x02]),
        un(tags::STUDY_INSTANCE_UID, b"1.2.3.4\0"),
        un(Tag(0x300C, 0x0002), b"\xfe\xff\x00\xe0\xff\xff\xff\xff"),
    ]);
    let profile = Profile::new(b"s", BTreeSet::new());
    profile.deidentify(&mut object);
    assert_eq!(object.get(tags::SOP_CLASS_UID).unwrap().vr(), VR::UI);
    assert_eq!(
        value(&object, tags::SOP_CLASS_UID).as_deref(),
        Some("1.2.840.10008.5.1.4.1.1.481.2")
    );
    assert_eq!(
        object.get(tags::ROWS).unwrap().to_int::<u16>().unwrap(),
        512
    );
    assert_eq!(
        value(&object, tags::STUDY_INSTANCE_UID).unwrap(),
        profile.map_uid("1.2.3.4")
    );
    assert!(
        object.get(Tag(0x300C, 0x0002)).is_none(),
        "an opaque sequence is removed"
    );
    assert!(!format!("{object:?}").contains("Doe^John"));
}
