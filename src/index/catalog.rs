//! What the index knows: every attribute it stores per level, the column holding it,
//! how it is matched, and when QIDO returns it. The row types read back from the
//! database are generated here from the same column lists.

use dicom_core::{Tag, VR};
use diesel::sql_types::{BigInt, Nullable, Text as SqlText};
use diesel::QueryableByName;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Study,
    Series,
    Instance,
}

/// How an attribute is stored and matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// UID: single value or UID list.
    Uid,
    /// String: single value, wildcards, any-of list; case-sensitive.
    Text,
    /// Person name: case- and accent-insensitive, fuzzy on request.
    PersonName,
    /// DA: by meaning, ranges.
    Date,
    /// TM: by meaning, ranges.
    Time,
    /// IS / US stored as integers.
    Int,
    /// ModalitiesInStudy: matches a study when any of its series matches.
    ModalitiesInStudy,
    /// SOPClassesInStudy: matches a study when any of its instances matches.
    SopClassesInStudy,
    /// A count kept by the index; returned, not matched.
    Count,
    /// Request Attributes Sequence: stored as JSON, matched through its items.
    RequestSequence,
}

/// When QIDO returns an attribute (PS3.18 Tables 10.6.3-3 to -5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Always, even when empty (`{"vr": ..}`).
    Always,
    /// When the object has a value.
    IfKnown,
    /// Only when matched on or named in `includefield`.
    OnRequest,
}

#[derive(Debug)]
pub struct Attr {
    pub tag: Tag,
    pub vr: VR,
    pub level: Level,
    pub column: &'static str,
    pub kind: Kind,
    pub presence: Presence,
}

const fn attr(
    tag: (u16, u16),
    vr: VR,
    level: Level,
    column: &'static str,
    kind: Kind,
    presence: Presence,
) -> Attr {
    Attr {
        tag: Tag(tag.0, tag.1),
        vr,
        level,
        column,
        kind,
        presence,
    }
}

use Kind::*;
use Level::*;
use Presence::*;

/// The information entity an attribute belongs to (PS3.3 Annex A's Patient,
/// Study, Series and Equipment modules, as far as the query levels of PS3.4
/// C.6.1 go): patient and study attributes are of the study level, series and
/// equipment attributes of the series level, everything else of the instance.
/// Used for the attributes the index does not keep (`includefield`).
pub fn entity_level(tag: Tag) -> Level {
    // Private attributes: their level is unknown, so they count as the
    // instance's (for `includefield=all`); named, they are returned at any level.
    const STUDY: &[(u16, u16)] = &[
        (0x0008, 0x0020), // StudyDate
        (0x0008, 0x0030), // StudyTime
        (0x0008, 0x0050), // AccessionNumber
        (0x0008, 0x0051), // IssuerOfAccessionNumberSequence
        (0x0008, 0x0090), // ReferringPhysicianName
        (0x0008, 0x0096), // ReferringPhysicianIdentificationSequence
        (0x0008, 0x0201), // TimezoneOffsetFromUTC
        (0x0008, 0x1030), // StudyDescription
        (0x0008, 0x1032), // ProcedureCodeSequence
        (0x0008, 0x1048), // PhysiciansOfRecord
        (0x0008, 0x1049), // PhysiciansOfRecordIdentificationSequence
        (0x0008, 0x1060), // NameOfPhysiciansReadingStudy
        (0x0008, 0x1062), // PhysiciansReadingStudyIdentificationSequence
        (0x0008, 0x1080), // AdmittingDiagnosesDescription
        (0x0008, 0x1084), // AdmittingDiagnosesCodeSequence
        (0x0008, 0x1110), // ReferencedStudySequence
        (0x0020, 0x000D), // StudyInstanceUID
        (0x0020, 0x0010), // StudyID
        (0x0032, 0x1032), // RequestingPhysician
        (0x0032, 0x1033), // RequestingService
        (0x0032, 0x1060), // RequestedProcedureDescription
        (0x0032, 0x1064), // RequestedProcedureCodeSequence
        (0x0038, 0x0010), // AdmissionID
        (0x0038, 0x0060), // ServiceEpisodeID
        (0x0038, 0x0500), // PatientState
    ];
    const SERIES: &[(u16, u16)] = &[
        (0x0008, 0x0021), // SeriesDate
        (0x0008, 0x0031), // SeriesTime
        (0x0008, 0x0060), // Modality
        (0x0008, 0x0070), // Manufacturer
        (0x0008, 0x0080), // InstitutionName
        (0x0008, 0x0081), // InstitutionAddress
        (0x0008, 0x1010), // StationName
        (0x0008, 0x103E), // SeriesDescription
        (0x0008, 0x103F), // SeriesDescriptionCodeSequence
        (0x0008, 0x1040), // InstitutionalDepartmentName
        (0x0008, 0x1050), // PerformingPhysicianName
        (0x0008, 0x1052), // PerformingPhysicianIdentificationSequence
        (0x0008, 0x1070), // OperatorsName
        (0x0008, 0x1072), // OperatorIdentificationSequence
        (0x0008, 0x1090), // ManufacturerModelName
        (0x0008, 0x1111), // ReferencedPerformedProcedureStepSequence
        (0x0008, 0x1250), // RelatedSeriesSequence
        (0x0018, 0x0015), // BodyPartExamined
        (0x0018, 0x1000), // DeviceSerialNumber
        (0x0018, 0x1020), // SoftwareVersions
        (0x0018, 0x1030), // ProtocolName
        (0x0018, 0x5100), // PatientPosition
        (0x0020, 0x000E), // SeriesInstanceUID
        (0x0020, 0x0011), // SeriesNumber
        (0x0020, 0x0052), // FrameOfReferenceUID
        (0x0020, 0x0060), // Laterality
        (0x0020, 0x1040), // PositionReferenceIndicator
        (0x0028, 0x0108), // SmallestPixelValueInSeries
        (0x0028, 0x0109), // LargestPixelValueInSeries
        (0x0040, 0x0244), // PerformedProcedureStepStartDate
        (0x0040, 0x0245), // PerformedProcedureStepStartTime
        (0x0040, 0x0253), // PerformedProcedureStepID
        (0x0040, 0x0254), // PerformedProcedureStepDescription
        (0x0040, 0x0260), // PerformedProtocolCodeSequence
        (0x0040, 0x0275), // RequestAttributesSequence
    ];
    let key = (tag.0, tag.1);
    // The Patient module (and the Patient Study module's group 0010 elements).
    if tag.0 == 0x0010 || STUDY.contains(&key) {
        Level::Study
    } else if SERIES.contains(&key) {
        Level::Series
    } else {
        Level::Instance
    }
}

/// Every attribute the index stores, in tag order within each level.
pub static ATTRIBUTES: &[Attr] = &[
    attr((0x0008, 0x0020), VR::DA, Study, "study_date", Date, Always),
    attr((0x0008, 0x0030), VR::TM, Study, "study_time", Time, Always),
    attr(
        (0x0008, 0x0050),
        VR::SH,
        Study,
        "accession_number",
        Text,
        Always,
    ),
    attr(
        (0x0008, 0x0061),
        VR::CS,
        Study,
        "modalities_in_study",
        ModalitiesInStudy,
        Always,
    ),
    attr(
        (0x0008, 0x0062),
        VR::UI,
        Study,
        "sop_classes_in_study",
        SopClassesInStudy,
        OnRequest,
    ),
    attr(
        (0x0008, 0x0080),
        VR::LO,
        Study,
        "institution_name",
        Text,
        OnRequest,
    ),
    attr(
        (0x0008, 0x0090),
        VR::PN,
        Study,
        "referring_physician_name",
        PersonName,
        Always,
    ),
    attr(
        (0x0008, 0x0201),
        VR::SH,
        Study,
        "timezone_offset_from_utc",
        Text,
        IfKnown,
    ),
    attr(
        (0x0008, 0x1030),
        VR::LO,
        Study,
        "study_description",
        Text,
        OnRequest,
    ),
    attr(
        (0x0010, 0x0010),
        VR::PN,
        Study,
        "patient_name",
        PersonName,
        Always,
    ),
    attr((0x0010, 0x0020), VR::LO, Study, "patient_id", Text, Always),
    attr(
        (0x0010, 0x0021),
        VR::LO,
        Study,
        "issuer_of_patient_id",
        Text,
        OnRequest,
    ),
    attr(
        (0x0010, 0x0030),
        VR::DA,
        Study,
        "patient_birth_date",
        Date,
        Always,
    ),
    attr((0x0010, 0x0040), VR::CS, Study, "patient_sex", Text, Always),
    attr(
        (0x0020, 0x000D),
        VR::UI,
        Study,
        "study_instance_uid",
        Uid,
        Always,
    ),
    attr((0x0020, 0x0010), VR::SH, Study, "study_id", Text, Always),
    attr(
        (0x0020, 0x1206),
        VR::IS,
        Study,
        "number_of_study_related_series",
        Count,
        Always,
    ),
    attr(
        (0x0020, 0x1208),
        VR::IS,
        Study,
        "number_of_study_related_instances",
        Count,
        Always,
    ),
    attr(
        (0x0008, 0x0021),
        VR::DA,
        Series,
        "series_date",
        Date,
        OnRequest,
    ),
    attr(
        (0x0008, 0x0031),
        VR::TM,
        Series,
        "series_time",
        Time,
        OnRequest,
    ),
    attr((0x0008, 0x0060), VR::CS, Series, "modality", Text, Always),
    attr(
        (0x0008, 0x103E),
        VR::LO,
        Series,
        "series_description",
        Text,
        IfKnown,
    ),
    attr(
        (0x0018, 0x0015),
        VR::CS,
        Series,
        "body_part_examined",
        Text,
        OnRequest,
    ),
    attr(
        (0x0020, 0x000E),
        VR::UI,
        Series,
        "series_instance_uid",
        Uid,
        Always,
    ),
    attr(
        (0x0020, 0x0011),
        VR::IS,
        Series,
        "series_number",
        Int,
        Always,
    ),
    attr(
        (0x0020, 0x1209),
        VR::IS,
        Series,
        "number_of_series_related_instances",
        Count,
        Always,
    ),
    attr(
        (0x0040, 0x0244),
        VR::DA,
        Series,
        "performed_procedure_step_start_date",
        Date,
        IfKnown,
    ),
    attr(
        (0x0040, 0x0245),
        VR::TM,
        Series,
        "performed_procedure_step_start_time",
        Time,
        IfKnown,
    ),
    attr(
        (0x0040, 0x0275),
        VR::SQ,
        Series,
        "request_attributes_sequence",
        RequestSequence,
        IfKnown,
    ),
    attr(
        (0x0008, 0x0016),
        VR::UI,
        Instance,
        "sop_class_uid",
        Uid,
        Always,
    ),
    attr(
        (0x0008, 0x0018),
        VR::UI,
        Instance,
        "sop_instance_uid",
        Uid,
        Always,
    ),
    attr(
        (0x0008, 0x0023),
        VR::DA,
        Instance,
        "content_date",
        Date,
        OnRequest,
    ),
    attr(
        (0x0008, 0x0033),
        VR::TM,
        Instance,
        "content_time",
        Time,
        OnRequest,
    ),
    attr(
        (0x0008, 0x3002),
        VR::UI,
        Instance,
        "transfer_syntax_uid",
        Uid,
        IfKnown,
    ),
    attr(
        (0x0020, 0x0013),
        VR::IS,
        Instance,
        "instance_number",
        Int,
        Always,
    ),
    attr(
        (0x0028, 0x0008),
        VR::IS,
        Instance,
        "number_of_frames",
        Int,
        IfKnown,
    ),
    attr(
        (0x0028, 0x0010),
        VR::US,
        Instance,
        "image_rows",
        Int,
        IfKnown,
    ),
    attr(
        (0x0028, 0x0011),
        VR::US,
        Instance,
        "image_columns",
        Int,
        IfKnown,
    ),
    attr(
        (0x0028, 0x0100),
        VR::US,
        Instance,
        "bits_allocated",
        Int,
        IfKnown,
    ),
];

/// Items of the Request Attributes Sequence that can be matched.
pub const SCHEDULED_PROCEDURE_STEP_ID: Tag = Tag(0x0040, 0x0009);
pub const REQUESTED_PROCEDURE_ID: Tag = Tag(0x0040, 0x1001);
pub const REQUEST_ATTRIBUTES_SEQUENCE: Tag = Tag(0x0040, 0x0275);

pub fn find(tag: Tag) -> Option<&'static Attr> {
    ATTRIBUTES.iter().find(|a| a.tag == tag)
}

pub fn at_level(level: Level) -> impl Iterator<Item = &'static Attr> {
    ATTRIBUTES.iter().filter(move |a| a.level == level)
}

/// Attributes stored from the instance header (not computed by the index).
pub fn stored_from_header(level: Level) -> impl Iterator<Item = &'static Attr> {
    at_level(level)
        .filter(|a| !matches!(a.kind, ModalitiesInStudy | SopClassesInStudy | Count))
        .filter(|a| a.column != "transfer_syntax_uid")
}

/// Reads a column of a row as DICOM text.
trait ColumnText {
    fn column_text(&self) -> Option<String>;
}

impl ColumnText for Option<String> {
    fn column_text(&self) -> Option<String> {
        self.clone()
    }
}

impl ColumnText for String {
    fn column_text(&self) -> Option<String> {
        Some(self.clone())
    }
}

impl ColumnText for Option<i64> {
    fn column_text(&self) -> Option<String> {
        self.map(|v| v.to_string())
    }
}

impl ColumnText for i64 {
    fn column_text(&self) -> Option<String> {
        Some(self.to_string())
    }
}

macro_rules! index_row {
    ($(#[$meta:meta])* $row:ident { $($field:ident : $ty:ty => $sql:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, QueryableByName)]
        pub struct $row {
            $( #[diesel(sql_type = $sql)] pub $field: $ty, )*
        }

        impl $row {
            /// The value of a catalog column as DICOM text.
            pub fn text(&self, column: &str) -> Option<String> {
                match column {
                    $( stringify!($field) => self.$field.column_text(), )*
                    _ => None,
                }
            }
        }
    };
}

index_row!(
    /// A study as QIDO returns it.
    StudyRow {
        study_pk: i64 => BigInt,
        study_instance_uid: String => SqlText,
        patient_name: Option<String> => Nullable<SqlText>,
        patient_id: Option<String> => Nullable<SqlText>,
        issuer_of_patient_id: Option<String> => Nullable<SqlText>,
        patient_birth_date: Option<String> => Nullable<SqlText>,
        patient_sex: Option<String> => Nullable<SqlText>,
        study_date: Option<String> => Nullable<SqlText>,
        study_time: Option<String> => Nullable<SqlText>,
        accession_number: Option<String> => Nullable<SqlText>,
        study_id: Option<String> => Nullable<SqlText>,
        study_description: Option<String> => Nullable<SqlText>,
        referring_physician_name: Option<String> => Nullable<SqlText>,
        institution_name: Option<String> => Nullable<SqlText>,
        timezone_offset_from_utc: Option<String> => Nullable<SqlText>,
        modalities_in_study: Option<String> => Nullable<SqlText>,
        sop_classes_in_study: Option<String> => Nullable<SqlText>,
        number_of_study_related_series: i64 => BigInt,
        number_of_study_related_instances: i64 => BigInt,
    }
);

index_row!(
    /// A series as QIDO returns it.
    SeriesRow {
        series_pk: i64 => BigInt,
        series_instance_uid: String => SqlText,
        modality: Option<String> => Nullable<SqlText>,
        series_number: Option<i64> => Nullable<BigInt>,
        series_description: Option<String> => Nullable<SqlText>,
        series_date: Option<String> => Nullable<SqlText>,
        series_time: Option<String> => Nullable<SqlText>,
        body_part_examined: Option<String> => Nullable<SqlText>,
        performed_procedure_step_start_date: Option<String> => Nullable<SqlText>,
        performed_procedure_step_start_time: Option<String> => Nullable<SqlText>,
        request_attributes_sequence: Option<String> => Nullable<SqlText>,
        number_of_series_related_instances: i64 => BigInt,
    }
);

index_row!(
    /// An instance as QIDO returns it.
    InstanceRow {
        instance_pk: i64 => BigInt,
        sop_instance_uid: String => SqlText,
        sop_class_uid: String => SqlText,
        instance_number: Option<i64> => Nullable<BigInt>,
        image_rows: Option<i64> => Nullable<BigInt>,
        image_columns: Option<i64> => Nullable<BigInt>,
        bits_allocated: Option<i64> => Nullable<BigInt>,
        number_of_frames: Option<i64> => Nullable<BigInt>,
        content_date: Option<String> => Nullable<SqlText>,
        content_time: Option<String> => Nullable<SqlText>,
        transfer_syntax_uid: String => SqlText,
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_is_consistent() {
        let mut seen = std::collections::HashSet::new();
        for a in ATTRIBUTES {
            assert!(seen.insert(a.tag), "duplicate {:?}", a.tag);
            assert_eq!(crate::dicom::attributes::vr_of(a.tag), a.vr, "{}", a.column);
        }
        // Every required match key of PS3.18 Table 10.6.1-5 is in the catalog.
        for tag in [
            (0x0008, 0x0020),
            (0x0008, 0x0030),
            (0x0008, 0x0050),
            (0x0008, 0x0061),
            (0x0008, 0x0090),
            (0x0010, 0x0010),
            (0x0010, 0x0020),
            (0x0020, 0x000D),
            (0x0020, 0x0010),
            (0x0008, 0x0060),
            (0x0020, 0x000E),
            (0x0020, 0x0011),
            (0x0040, 0x0244),
            (0x0040, 0x0245),
            (0x0040, 0x0275),
            (0x0008, 0x0016),
            (0x0008, 0x0018),
            (0x0020, 0x0013),
        ] {
            assert!(find(Tag(tag.0, tag.1)).is_some(), "{tag:04X?} missing");
        }
    }
}
