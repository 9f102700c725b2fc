//! A DICOMDIR (PS3.10 §8, the Basic Directory IOD of PS3.3 F.3) for a file-set
//! of exported instances: PATIENT → STUDY → SERIES → IMAGE records, each
//! pointing at its next sibling and its first child by byte offset from the
//! start of the file. Written by hand: dicom-rs reads DICOMDIRs but does not
//! make them, and the offsets need the layout of every record before any is
//! written (each record has a fixed size once its keys are known).

/// One instance of the file-set and the keys its records carry (de-identified
/// values: this is written for exports).
#[derive(Debug, Clone, Default)]
pub struct DirectoryEntry {
    /// The file's path components in the file-set, each 1–8 of `A-Z0-9_`.
    pub file_id: Vec<String>,
    pub patient_id: String,
    pub patient_name: String,
    pub study_instance_uid: String,
    pub study_date: String,
    pub study_time: String,
    pub study_id: String,
    pub accession_number: String,
    pub series_instance_uid: String,
    pub modality: String,
    pub series_number: String,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub transfer_syntax_uid: String,
    pub instance_number: String,
}

const MEDIA_STORAGE_DIRECTORY: &str = "1.2.840.10008.1.3.10";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
const IMPLEMENTATION_CLASS_UID: &str = "2.25.190046374574519486328540624180455839305";

/// One element, explicit VR little endian, its value padded to an even length.
fn element(out: &mut Vec<u8>, group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) {
    let pad = if vr == b"UI" || vr == b"OB" {
        0u8
    } else {
        b' '
    };
    let mut value = value.to_vec();
    if value.len() % 2 == 1 {
        value.push(pad);
    }
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(vr);
    if matches!(vr, b"OB" | b"SQ" | b"UN" | b"UT") {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(&value);
}

fn ul(value: u32) -> [u8; 4] {
    value.to_le_bytes()
}

/// A record before its offsets are known.
struct Record {
    kind: &'static str,
    /// (group, element, VR, value) in ascending tag order, after the four
    /// structural elements.
    keys: Vec<(u16, u16, [u8; 2], Vec<u8>)>,
    next: Option<usize>,
    child: Option<usize>,
}

impl Record {
    fn new(kind: &'static str, keys: Vec<(u16, u16, [u8; 2], Vec<u8>)>) -> Self {
        Self {
            kind,
            keys,
            next: None,
            child: None,
        }
    }

    fn encode(&self, offsets: &[u32]) -> Vec<u8> {
        let mut body = Vec::new();
        let at = |i: Option<usize>| i.map_or(0, |i| offsets[i]);
        element(&mut body, 0x0004, 0x1400, b"UL", &ul(at(self.next)));
        element(&mut body, 0x0004, 0x1410, b"US", &0xFFFFu16.to_le_bytes());
        element(&mut body, 0x0004, 0x1420, b"UL", &ul(at(self.child)));
        element(&mut body, 0x0004, 0x1430, b"CS", self.kind.as_bytes());
        let mut keys = self.keys.clone();
        keys.sort_by_key(|(g, e, _, _)| (*g, *e));
        for (group, elem, vr, value) in &keys {
            element(&mut body, *group, *elem, vr, value);
        }
        let mut item = Vec::with_capacity(body.len() + 8);
        item.extend_from_slice(&0xFFFEu16.to_le_bytes());
        item.extend_from_slice(&0xE000u16.to_le_bytes());
        item.extend_from_slice(&(body.len() as u32).to_le_bytes());
        item.extend_from_slice(&body);
        item
    }
}

fn text(value: &str) -> Vec<u8> {
    value.as_bytes().to_vec()
}

/// Builds the records, depth first, linking siblings and first children.
fn records(entries: &[DirectoryEntry]) -> (Vec<Record>, Vec<usize>) {
    let mut records: Vec<Record> = Vec::new();
    // Indexes of the last record at each level, to link the next sibling.
    let mut roots: Vec<usize> = Vec::new();
    let (mut patient, mut study, mut series): (Option<usize>, Option<usize>, Option<usize>) =
        (None, None, None);
    let (mut last_study, mut last_series, mut last_image) = (None, None, None);
    let link =
        |records: &mut Vec<Record>, previous: Option<usize>, parent: Option<usize>, new: usize| {
            match previous {
                Some(previous) => records[previous].next = Some(new),
                None => {
                    if let Some(parent) = parent {
                        records[parent].child = Some(new);
                    }
                }
            }
        };
    for entry in entries {
        let same_patient = patient.is_some_and(|p: usize| {
            records[p]
                .keys
                .iter()
                .any(|k| k.1 == 0x0020 && k.3 == text(&entry.patient_id))
        });
        if !same_patient {
            let new = records.len();
            records.push(Record::new(
                "PATIENT",
                vec![
                    (0x0010, 0x0010, *b"PN", text(&entry.patient_name)),
                    (0x0010, 0x0020, *b"LO", text(&entry.patient_id)),
                ],
            ));
            if let Some(&previous) = roots.last() {
                records[previous].next = Some(new);
            }
            roots.push(new);
            (patient, study, series) = (Some(new), None, None);
            (last_study, last_series, last_image) = (None, None, None);
        }
        let same_study = study.is_some_and(|s: usize| {
            records[s]
                .keys
                .iter()
                .any(|k| k.1 == 0x000D && k.3 == text(&entry.study_instance_uid))
        });
        if !same_study {
            let new = records.len();
            records.push(Record::new(
                "STUDY",
                vec![
                    (0x0008, 0x0020, *b"DA", text(&entry.study_date)),
                    (0x0008, 0x0030, *b"TM", text(&entry.study_time)),
                    (0x0008, 0x0050, *b"SH", text(&entry.accession_number)),
                    (0x0020, 0x000D, *b"UI", text(&entry.study_instance_uid)),
                    (0x0020, 0x0010, *b"SH", text(&entry.study_id)),
                ],
            ));
            link(&mut records, last_study, patient, new);
            (study, last_study, series, last_series, last_image) =
                (Some(new), Some(new), None, None, None);
        }
        let same_series = series.is_some_and(|s: usize| {
            records[s]
                .keys
                .iter()
                .any(|k| k.1 == 0x000E && k.3 == text(&entry.series_instance_uid))
        });
        if !same_series {
            let new = records.len();
            records.push(Record::new(
                "SERIES",
                vec![
                    (0x0008, 0x0060, *b"CS", text(&entry.modality)),
                    (0x0020, 0x000E, *b"UI", text(&entry.series_instance_uid)),
                    (0x0020, 0x0011, *b"IS", text(&entry.series_number)),
                ],
            ));
            link(&mut records, last_series, study, new);
            (series, last_series, last_image) = (Some(new), Some(new), None);
        }
        let new = records.len();
        records.push(Record::new(
            "IMAGE",
            vec![
                (0x0004, 0x1500, *b"CS", text(&entry.file_id.join("\\"))),
                (0x0004, 0x1510, *b"UI", text(&entry.sop_class_uid)),
                (0x0004, 0x1511, *b"UI", text(&entry.sop_instance_uid)),
                (0x0004, 0x1512, *b"UI", text(&entry.transfer_syntax_uid)),
                (0x0020, 0x0013, *b"IS", text(&entry.instance_number)),
            ],
        ));
        link(&mut records, last_image, series, new);
        last_image = Some(new);
    }
    (records, roots)
}

/// The DICOMDIR of `entries`, in the order given (an entry's patient, study
/// and series are those of the entry before it when their keys are the same).
pub fn write_dicomdir(
    entries: &[DirectoryEntry],
    file_set_id: &str,
    file_set_uid: &str,
) -> Vec<u8> {
    let mut meta = Vec::new();
    element(&mut meta, 0x0002, 0x0001, b"OB", &[0, 1]);
    element(
        &mut meta,
        0x0002,
        0x0002,
        b"UI",
        MEDIA_STORAGE_DIRECTORY.as_bytes(),
    );
    element(&mut meta, 0x0002, 0x0003, b"UI", file_set_uid.as_bytes());
    element(&mut meta, 0x0002, 0x0010, b"UI", EXPLICIT_VR_LE.as_bytes());
    element(
        &mut meta,
        0x0002,
        0x0012,
        b"UI",
        IMPLEMENTATION_CLASS_UID.as_bytes(),
    );
    element(&mut meta, 0x0002, 0x0013, b"SH", b"KASTELL");
    let mut file = vec![0u8; 128];
    file.extend_from_slice(b"DICM");
    element(&mut file, 0x0002, 0x0000, b"UL", &ul(meta.len() as u32));
    file.extend_from_slice(&meta);

    let (records, roots) = records(entries);
    // Sizes do not depend on the offsets' values: lay out with zeros first.
    let zeros = vec![0u32; records.len()];
    let sizes: Vec<usize> = records.iter().map(|r| r.encode(&zeros).len()).collect();
    let mut head = Vec::new();
    element(&mut head, 0x0004, 0x1130, b"CS", file_set_id.as_bytes());
    // The two root offsets, the consistency flag and the sequence header.
    let start = file.len() + head.len() + 12 + 12 + 10 + 12;
    let mut offsets = Vec::with_capacity(records.len());
    let mut at = start;
    for size in &sizes {
        offsets.push(at as u32);
        at += size;
    }
    let first = roots.first().map_or(0, |&i| offsets[i]);
    let last = roots.last().map_or(0, |&i| offsets[i]);
    element(&mut head, 0x0004, 0x1200, b"UL", &ul(first));
    element(&mut head, 0x0004, 0x1202, b"UL", &ul(last));
    element(&mut head, 0x0004, 0x1212, b"US", &0u16.to_le_bytes());
    let body: Vec<u8> = records.iter().flat_map(|r| r.encode(&offsets)).collect();
    head.extend_from_slice(&0x0004u16.to_le_bytes());
    head.extend_from_slice(&0x1220u16.to_le_bytes());
    head.extend_from_slice(b"SQ\0\0");
    head.extend_from_slice(&(body.len() as u32).to_le_bytes());
    file.extend_from_slice(&head);
    debug_assert_eq!(file.len(), start);
    file.extend_from_slice(&body);
    file
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_point_at_the_records_they_name() {
        let entry = |patient: &str, study: &str, series: &str, n: u32| DirectoryEntry {
            file_id: vec!["DICOM".into(), format!("IM{n:06}")],
            patient_id: patient.into(),
            patient_name: patient.into(),
            study_instance_uid: study.into(),
            series_instance_uid: series.into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            sop_instance_uid: format!("1.2.3.{n}"),
            transfer_syntax_uid: EXPLICIT_VR_LE.into(),
            instance_number: n.to_string(),
            ..Default::default()
        };
        let entries = [
            entry("P1", "1.1", "1.1.1", 1),
            entry("P1", "1.1", "1.1.1", 2),
            entry("P1", "1.1", "1.1.2", 3),
            entry("P2", "2.1", "2.1.1", 4),
        ];
        let file = write_dicomdir(&entries, "EXPORT", "2.25.1");
        let object = dicom_object::OpenFileOptions::new()
            .read_preamble(dicom_object::file::ReadPreamble::Always)
            .from_reader(&file[..])
            .unwrap();
        let items = object
            .element(dicom_dictionary_std::tags::DIRECTORY_RECORD_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()
            .to_vec();
        assert_eq!(
            items.len(),
            2 + 2 + 3 + 4,
            "patients, studies, series, images"
        );
        // Every non-zero offset is the start of an item header in the file.
        let offsets_of = |item: &dicom_object::InMemDicomObject, tag| {
            item.element(tag).unwrap().to_int::<u32>().unwrap()
        };
        for item in &items {
            for tag in [
                dicom_dictionary_std::tags::OFFSET_OF_THE_NEXT_DIRECTORY_RECORD,
                dicom_dictionary_std::tags::OFFSET_OF_REFERENCED_LOWER_LEVEL_DIRECTORY_ENTITY,
            ] {
                let at = offsets_of(item, tag) as usize;
                if at != 0 {
                    assert_eq!(&file[at..at + 4], &[0xFE, 0xFF, 0x00, 0xE0], "item at {at}");
                }
            }
        }
        let first = offsets_of(
            &object,
            dicom_dictionary_std::tags::OFFSET_OF_THE_FIRST_DIRECTORY_RECORD_OF_THE_ROOT_DIRECTORY_ENTITY,
        ) as usize;
        assert_eq!(&file[first..first + 4], &[0xFE, 0xFF, 0x00, 0xE0]);
    }
}
