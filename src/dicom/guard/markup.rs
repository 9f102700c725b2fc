//! Depth checks on DICOM JSON and XML metadata text, done on the raw bytes before
//! a recursive parser sees them.

use super::ParseLimits;
use crate::dicom::DicomError;

/// Checks the nesting depth of JSON text without parsing it (brackets outside
/// strings). DICOM JSON spends three levels per sequence level (attribute,
/// `Value` array, item), plus the array of data sets and the data set itself.
pub fn check_json_depth(text: &[u8], limits: &ParseLimits) -> Result<(), DicomError> {
    let max = limits.max_depth.saturating_mul(3).saturating_add(4);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in text {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(DicomError::Malformed(format!(
                        "the metadata nests deeper than {} sequence levels",
                        limits.max_depth
                    )));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Checks the element nesting of XML text before an XML parser sees it (the
/// parser roxmltree recurses on nested elements): start tags open a level,
/// end tags close one; comments, CDATA, processing instructions and
/// declarations are skipped, quoted attribute values are not read as markup.
/// The Native DICOM Model spends two levels per sequence level
/// (DicomAttribute, Item) under NativeDicomModel.
pub fn check_xml_depth(text: &[u8], limits: &ParseLimits) -> Result<(), DicomError> {
    let max = limits.max_depth.saturating_mul(2).saturating_add(3);
    let too_deep = || {
        DicomError::Malformed(format!(
            "the metadata nests deeper than {} sequence levels",
            limits.max_depth
        ))
    };
    let skip_past = |from: usize, end: &[u8]| -> usize {
        text[from..]
            .windows(end.len())
            .position(|w| w == end)
            .map_or(text.len(), |at| from + at + end.len())
    };
    let mut depth = 0usize;
    let mut i = 0;
    while i < text.len() {
        if text[i] != b'<' {
            i += 1;
            continue;
        }
        let rest = &text[i..];
        if rest.starts_with(b"<!--") {
            i = skip_past(i + 4, b"-->");
        } else if rest.starts_with(b"<![CDATA[") {
            i = skip_past(i + 9, b"]]>");
        } else if rest.starts_with(b"<?") {
            i = skip_past(i + 2, b"?>");
        } else if rest.starts_with(b"<!") {
            // A declaration; an internal subset in brackets may hold '>'.
            let mut brackets = 0i32;
            i += 2;
            while i < text.len() {
                match text[i] {
                    b'[' => brackets += 1,
                    b']' => brackets -= 1,
                    b'>' if brackets <= 0 => break,
                    _ => {}
                }
                i += 1;
            }
            i += 1;
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            i = skip_past(i + 2, b">");
        } else {
            // A start tag: to its '>' outside quotes; `/>` closes it at once.
            let mut quote = None;
            let mut j = i + 1;
            while j < text.len() {
                match (quote, text[j]) {
                    (None, b'"' | b'\'') => quote = Some(text[j]),
                    (Some(q), c) if c == q => quote = None,
                    (None, b'>') => break,
                    _ => {}
                }
                j += 1;
            }
            let self_closing = j > i + 1 && text.get(j - 1) == Some(&b'/');
            if !self_closing {
                depth += 1;
                if depth > max {
                    return Err(too_deep());
                }
            }
            i = j + 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_depth_is_counted_outside_comments_and_quotes() {
        let limits = ParseLimits::default();
        let deep = "<Item>".repeat(300_000);
        assert!(check_xml_depth(deep.as_bytes(), &limits).is_err());
        let flat = "<a><b/><c x='<d>'><!-- <e><e><e> --><![CDATA[<f><f>]]></c></a>".repeat(1000);
        assert!(check_xml_depth(flat.as_bytes(), &limits).is_ok());
        let at_limit = format!("{}{}", "<i>".repeat(67), "</i>".repeat(67));
        assert!(check_xml_depth(at_limit.as_bytes(), &limits).is_ok());
        let over = format!("{}{}", "<i>".repeat(68), "</i>".repeat(68));
        assert!(check_xml_depth(over.as_bytes(), &limits).is_err());
    }

    #[test]
    fn json_depth_is_counted_outside_strings() {
        let limits = ParseLimits::default();
        let deep = "[".repeat(300_000);
        assert!(check_json_depth(deep.as_bytes(), &limits).is_err());
        let quoted = format!("[\"{}\"]", "[".repeat(1000));
        assert!(check_json_depth(quoted.as_bytes(), &limits).is_ok());
        let escaped = r#"["\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["]"#;
        assert!(check_json_depth(escaped.as_bytes(), &limits).is_ok());
    }
}
