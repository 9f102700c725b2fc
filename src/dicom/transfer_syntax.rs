//! Transfer syntax rules: how a stored encoding is laid out and what DICOMweb may send.

pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
pub const DEFLATED_EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1.99";
pub const EXPLICIT_VR_BE: &str = "1.2.840.10008.1.2.2";

/// How the data set after the file meta group is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    pub explicit_vr: bool,
    pub big_endian: bool,
    pub deflated: bool,
}

/// The encoding of a transfer syntax; every syntax not listed here is an encapsulated
/// (compressed) one, which PS3.5 defines as Explicit VR Little Endian.
pub fn encoding_of(uid: &str) -> Encoding {
    match uid {
        IMPLICIT_VR_LE => Encoding {
            explicit_vr: false,
            big_endian: false,
            deflated: false,
        },
        EXPLICIT_VR_BE => Encoding {
            explicit_vr: true,
            big_endian: true,
            deflated: false,
        },
        DEFLATED_EXPLICIT_VR_LE | "1.2.840.10008.1.2.8.1" => Encoding {
            explicit_vr: true,
            big_endian: false,
            deflated: true,
        },
        _ => Encoding {
            explicit_vr: true,
            big_endian: false,
            deflated: false,
        },
    }
}

/// True when pixel data is stored uncompressed (not encapsulated).
pub fn is_native(uid: &str) -> bool {
    matches!(
        uid,
        IMPLICIT_VR_LE
            | EXPLICIT_VR_LE
            | EXPLICIT_VR_BE
            | DEFLATED_EXPLICIT_VR_LE
            | "1.2.840.10008.1.2.8.1"
    )
}

/// DICOMweb never sends Implicit VR Little Endian or Explicit VR Big Endian
/// (PS3.18 §8.7.3.4); objects stored that way are re-encoded on the way out.
pub fn is_forbidden_on_the_wire(uid: &str) -> bool {
    matches!(uid, IMPLICIT_VR_LE | EXPLICIT_VR_BE)
}

/// A transfer syntax UID is syntactically a UID: digits and dots, at most 64 chars.
pub fn looks_like_uid(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 64
        && value.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && !value.starts_with('.')
        && !value.ends_with('.')
        && !value.contains("..")
}

/// The single-part media type that carries compressed pixel data of a transfer
/// syntax (PS3.18 Table 8.7.3-5); `None` for native syntaxes.
pub fn compressed_media_type(uid: &str) -> Option<&'static str> {
    Some(match uid {
        "1.2.840.10008.1.2.4.50"
        | "1.2.840.10008.1.2.4.51"
        | "1.2.840.10008.1.2.4.57"
        | "1.2.840.10008.1.2.4.70" => "image/jpeg",
        "1.2.840.10008.1.2.5" => "image/dicom-rle",
        "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" => "image/jls",
        "1.2.840.10008.1.2.4.90" | "1.2.840.10008.1.2.4.91" => "image/jp2",
        "1.2.840.10008.1.2.4.92" | "1.2.840.10008.1.2.4.93" => "image/jpx",
        "1.2.840.10008.1.2.4.201" | "1.2.840.10008.1.2.4.202" | "1.2.840.10008.1.2.4.203" => {
            "image/jphc"
        }
        "1.2.840.10008.1.2.4.110" | "1.2.840.10008.1.2.4.111" | "1.2.840.10008.1.2.4.112" => {
            "image/jxl"
        }
        "1.2.840.10008.1.2.4.100" | "1.2.840.10008.1.2.4.101" => "video/mpeg",
        "1.2.840.10008.1.2.4.102"
        | "1.2.840.10008.1.2.4.103"
        | "1.2.840.10008.1.2.4.104"
        | "1.2.840.10008.1.2.4.105"
        | "1.2.840.10008.1.2.4.106" => "video/mp4",
        "1.2.840.10008.1.2.4.107" | "1.2.840.10008.1.2.4.108" => "video/H265",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_syntaxes() {
        assert!(!encoding_of(IMPLICIT_VR_LE).explicit_vr);
        assert!(encoding_of(EXPLICIT_VR_BE).big_endian);
        assert!(encoding_of(DEFLATED_EXPLICIT_VR_LE).deflated);
        assert!(is_native(EXPLICIT_VR_LE));
        assert!(!is_native("1.2.840.10008.1.2.4.50"));
        assert_eq!(
            compressed_media_type("1.2.840.10008.1.2.4.90"),
            Some("image/jp2")
        );
        assert!(looks_like_uid("1.2.840.10008.1.2.1"));
        assert!(!looks_like_uid("1.2..3"));
        assert!(!looks_like_uid("abc"));
    }
}
