//! Recognising DICOM files on disk (the bulk import): a PS3.10 file as written by
//! a modality or a DICOM CD (128-byte preamble, `DICM`, file meta group), the same
//! without its preamble, a file meta group without preamble and magic, or a bare
//! data set with no file meta at all, as some older archives keep them.
//!
//! The STOW pipeline takes a PS3.10 stream (`DICM` at offset 0 or 128, then the file
//! meta group that names the transfer syntax). For the other two forms this module
//! makes the bytes to send first, so the file is streamed as it is behind them and
//! never copied: 128 zero bytes and `DICM` before a bare file meta group, and
//! before a bare data set also a file meta group made for it. The prefix depends
//! only on the file's bytes, so importing the same file again sends the same
//! stream, which the pipeline recognises as already stored.

use dicom_object::FileMetaTableBuilder;

use super::element::{has_long_length, is_known_vr as is_vr};
use super::header::parse_file_meta;
use super::transfer_syntax::{EXPLICIT_VR_LE, IMPLICIT_VR_LE};

/// Media Storage SOP Class UID of a DICOMDIR (PS3.3 F.2, Media Storage Directory).
pub const DICOMDIR_SOP_CLASS: &str = "1.2.840.10008.1.3.10";

/// How many leading bytes of a file [`classify`] wants to see (fewer if the file
/// is shorter): enough for the preamble, the file meta group and, for a bare data
/// set, the group 0008 elements that name its SOP Class and Instance.
pub const HEAD_BYTES: usize = 64 * 1024;

/// What a file is, for the import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    /// A PS3.10 stream as it is.
    Part10,
    /// DICOM that needs `prefix` in front of it to be a PS3.10 stream.
    Wrapped { prefix: Vec<u8>, form: BareForm },
    /// A DICOMDIR: an index of removable media, not an instance.
    Dicomdir,
    /// Not DICOM, and why.
    NotDicom(&'static str),
}

/// The two forms of DICOM without a preamble and magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareForm {
    /// Starts with the file meta group (0002,xxxx).
    FileMeta,
    /// Starts with the data set itself (group 0008); the file meta group is made.
    DataSet,
}

/// Classifies a file by its name and its first bytes (`head`: the first
/// [`HEAD_BYTES`] bytes, or the whole file if shorter).
pub fn classify(file_name: &str, head: &[u8]) -> FileKind {
    if file_name.eq_ignore_ascii_case("DICOMDIR") {
        return FileKind::Dicomdir;
    }
    if head.is_empty() {
        return FileKind::NotDicom("empty file");
    }
    let has_magic = (head.len() >= 132 && &head[128..132] == b"DICM") || head.starts_with(b"DICM");
    if has_magic {
        return if is_dicomdir(head) {
            FileKind::Dicomdir
        } else {
            // Whatever else is wrong with it, the pipeline says (and the import
            // reports it as a failure, with the pipeline's reason).
            FileKind::Part10
        };
    }
    if starts_with_file_meta(head) {
        let mut prefix = vec![0u8; 128];
        prefix.extend_from_slice(b"DICM");
        let mut whole = prefix.clone();
        whole.extend_from_slice(head);
        if is_dicomdir(&whole) {
            return FileKind::Dicomdir;
        }
        return FileKind::Wrapped {
            prefix,
            form: BareForm::FileMeta,
        };
    }
    if let Some(prefix) = bare_data_set_prefix(head) {
        return FileKind::Wrapped {
            prefix,
            form: BareForm::DataSet,
        };
    }
    FileKind::NotDicom("no DICM magic")
}

fn is_dicomdir(stream: &[u8]) -> bool {
    matches!(
        parse_file_meta(stream),
        Ok(Some(meta)) if meta.media_storage_sop_class_uid.as_deref() == Some(DICOMDIR_SOP_CLASS)
    )
}

fn le16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// The file meta group is always Explicit VR Little Endian: group 0002, a VR.
fn starts_with_file_meta(head: &[u8]) -> bool {
    head.len() >= 8 && le16(head, 0) == 0x0002 && is_vr(&head[4..6])
}

/// A file meta group for a bare Little Endian data set that starts in group 0008
/// (where every image and most other objects start), with preamble and magic;
/// `None` when `head` does not look like one.
fn bare_data_set_prefix(head: &[u8]) -> Option<Vec<u8>> {
    if head.len() < 8 || le16(head, 0) != 0x0008 {
        return None;
    }
    let explicit = is_vr(&head[4..6]);
    let (sop_class, sop_instance) = group_0008_uids(head, explicit);
    let transfer_syntax = if explicit {
        EXPLICIT_VR_LE
    } else {
        IMPLICIT_VR_LE
    };
    let mut builder = FileMetaTableBuilder::new().transfer_syntax(transfer_syntax);
    // Only the transfer syntax is needed to read the file; the two UIDs make the
    // stored file a well-formed PS3.10 file for whoever retrieves it.
    if let Some(class) = sop_class {
        builder = builder.media_storage_sop_class_uid(class);
    }
    if let Some(instance) = sop_instance {
        builder = builder.media_storage_sop_instance_uid(instance);
    }
    let meta = builder.build().ok()?;
    let mut prefix = vec![0u8; 128];
    prefix.extend_from_slice(b"DICM");
    meta.write(&mut prefix).ok()?;
    Some(prefix)
}

/// SOP Class UID (0008,0016) and SOP Instance UID (0008,0018) from the elements of
/// group 0008 at the start of a bare data set. Stops at the first element it cannot
/// step over (one of undefined length, or past `head`): the UIDs are then missing
/// and the pipeline, which parses the whole header, has the last word.
fn group_0008_uids(head: &[u8], explicit: bool) -> (Option<String>, Option<String>) {
    let (mut class, mut instance) = (None, None);
    let mut pos = 0;
    while pos + 8 <= head.len() && le16(head, pos) == 0x0008 {
        let element = le16(head, pos + 2);
        let (header_len, length) = if explicit {
            let vr = &head[pos + 4..pos + 6];
            if has_long_length(vr) {
                if pos + 12 > head.len() {
                    break;
                }
                (12, le32(head, pos + 8))
            } else {
                (8, u32::from(le16(head, pos + 6)))
            }
        } else {
            (8, le32(head, pos + 4))
        };
        if length == u32::MAX {
            break;
        }
        let start = pos + header_len;
        let end = start + length as usize;
        if end > head.len() {
            break;
        }
        let text = || {
            String::from_utf8_lossy(&head[start..end])
                .trim_end_matches(['\0', ' '])
                .to_string()
        };
        match element {
            0x0016 => class = Some(text()),
            0x0018 => instance = Some(text()),
            _ => {}
        }
        pos = end;
    }
    (class, instance)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::header::tests::sample_file;
    use crate::dicom::header::{HeaderScanner, Scan};

    /// Group 0008 elements (SOP Class, SOP Instance) of a bare data set.
    fn bare(explicit: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for (element, value) in [
            (0x0016u16, &b"1.2.840.10008.5.1.4.1.1.7\0"[..]),
            (0x0018, b"1.2.3.4"),
        ] {
            let mut value = value.to_vec();
            if value.len() % 2 == 1 {
                value.push(0);
            }
            out.extend_from_slice(&0x0008u16.to_le_bytes());
            out.extend_from_slice(&element.to_le_bytes());
            if explicit {
                out.extend_from_slice(b"UI");
                out.extend_from_slice(&(value.len() as u16).to_le_bytes());
            } else {
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            }
            out.extend_from_slice(&value);
        }
        // (0010,0010) PatientName
        out.extend_from_slice(&[0x10, 0, 0x10, 0]);
        if explicit {
            out.extend_from_slice(b"PN");
            out.extend_from_slice(&4u16.to_le_bytes());
        } else {
            out.extend_from_slice(&4u32.to_le_bytes());
        }
        out.extend_from_slice(b"Do^J");
        out
    }

    #[test]
    fn part10_files_are_sent_as_they_are() {
        let file = sample_file(&[1, 2, 3, 4]);
        assert_eq!(classify("IM0001", &file), FileKind::Part10);
        // Without the preamble, DICM first: the pipeline takes it.
        assert_eq!(classify("x.dcm", &file[128..]), FileKind::Part10);
    }

    #[test]
    fn file_meta_without_preamble_gets_preamble_and_magic() {
        let file = sample_file(&[1, 2, 3, 4]);
        let FileKind::Wrapped { prefix, form } = classify("x", &file[132..]) else {
            panic!("not wrapped");
        };
        assert_eq!(form, BareForm::FileMeta);
        let mut stream = prefix.clone();
        stream.extend_from_slice(&file[132..]);
        assert_eq!(stream, file, "the wrapped stream is the original file");
    }

    #[test]
    fn bare_data_sets_get_a_file_meta_group() {
        for explicit in [true, false] {
            let data = bare(explicit);
            let FileKind::Wrapped { prefix, form } = classify("x", &data) else {
                panic!("not wrapped");
            };
            assert_eq!(form, BareForm::DataSet);
            let mut stream = prefix.clone();
            stream.extend_from_slice(&data);
            let meta = parse_file_meta(&stream).unwrap().unwrap();
            assert_eq!(
                meta.transfer_syntax,
                if explicit {
                    EXPLICIT_VR_LE
                } else {
                    IMPLICIT_VR_LE
                }
            );
            assert_eq!(
                meta.media_storage_sop_class_uid.as_deref(),
                Some("1.2.840.10008.5.1.4.1.1.7")
            );
            assert_eq!(meta.dataset_offset, prefix.len());
            // The pipeline's scanner reads the whole data set (no Pixel Data here).
            let mut scanner = HeaderScanner::new();
            assert_eq!(
                scanner.scan(&stream).unwrap(),
                Scan::NeedMore {
                    resume_at: stream.len()
                }
            );
            let parsed =
                crate::dicom::instance::parse_dataset(&stream, scanner.meta().unwrap()).unwrap();
            assert_eq!(
                crate::dicom::instance::text(&parsed, dicom_dictionary_std::tags::SOP_INSTANCE_UID)
                    .as_deref(),
                Some("1.2.3.4")
            );
            // Deterministic: the same file gives the same stream, so a second
            // import finds it already stored.
            assert_eq!(classify("x", &data), FileKind::Wrapped { prefix, form });
        }
    }

    #[test]
    fn dicomdirs_are_recognised_by_name_and_by_sop_class() {
        assert_eq!(classify("DICOMDIR", b"anything"), FileKind::Dicomdir);
        assert_eq!(classify("dicomdir", b""), FileKind::Dicomdir);
        let mut file = vec![0u8; 128];
        file.extend_from_slice(b"DICM");
        for (element, value) in [
            (0x0002u16, DICOMDIR_SOP_CLASS),
            (0x0010, "1.2.840.10008.1.2.1"),
        ] {
            let mut value = value.as_bytes().to_vec();
            if value.len() % 2 == 1 {
                value.push(0);
            }
            file.extend_from_slice(&[0x02, 0x00]);
            file.extend_from_slice(&element.to_le_bytes());
            file.extend_from_slice(b"UI");
            file.extend_from_slice(&(value.len() as u16).to_le_bytes());
            file.extend_from_slice(&value);
        }
        file.extend_from_slice(&[0x04, 0x00, 0x30, 0x11, b'C', b'S', 2, 0, b'C', b'D']);
        assert_eq!(classify("renamed", &file), FileKind::Dicomdir);
        assert_eq!(classify("renamed", &file[128..]), FileKind::Dicomdir);
        assert_eq!(classify("renamed", &file[132..]), FileKind::Dicomdir);
    }

    #[test]
    fn other_files_are_not_dicom() {
        assert_eq!(
            classify("notes.txt", b"Patient list, do not import\n"),
            FileKind::NotDicom("no DICM magic")
        );
        assert_eq!(classify("empty", b""), FileKind::NotDicom("empty file"));
        assert_eq!(
            classify("short", b"\x08\x00"),
            FileKind::NotDicom("no DICM magic")
        );
        let mut garbage = vec![0u8; 300];
        garbage[0] = 0x7F;
        assert_eq!(
            classify("garbage.bin", &garbage),
            FileKind::NotDicom("no DICM magic")
        );
    }
}
