//! The Native DICOM Model (PS3.19 Annex A), the XML representation DICOMweb
//! requires beside DICOM JSON (PS3.18 Tables 10.4.4-1, 10.6.4-1, 10.5.4-1):
//! search results and metadata as `multipart/related; type="application/dicom+xml"`,
//! STOW-RS metadata parts and the Store Instances Response. Written from, and read
//! into, DICOM JSON objects: everything Kastell answers is built as DICOM JSON
//! first, and the STOW pipeline reads DICOM JSON, so one model maps onto the other.

use std::fmt::Write;

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::Tag;
use dicom_dictionary_std::StandardDataDictionary;
use serde_json::{Map, Value as Json};

use super::DicomError;

/// The media type of one Native DICOM Model document.
pub const DICOM_XML: &str = "application/dicom+xml";

/// PS3.19 A.1.1: the five components of a person name group, in order.
const NAME_COMPONENTS: [&str; 5] = [
    "FamilyName",
    "GivenName",
    "MiddleName",
    "NamePrefix",
    "NameSuffix",
];
const NAME_GROUPS: [&str; 3] = ["Alphabetic", "Ideographic", "Phonetic"];

/// One DICOM JSON data set as a Native DICOM Model document.
pub fn to_native_dicom_model(dataset: &Map<String, Json>) -> String {
    let mut out = String::with_capacity(4096);
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str("<NativeDicomModel xml:space=\"preserve\">");
    write_attributes(&mut out, dataset);
    out.push_str("</NativeDicomModel>\n");
    out
}

fn write_attributes(out: &mut String, dataset: &Map<String, Json>) {
    let mut keys: Vec<&String> = dataset.keys().collect();
    keys.sort();
    for key in keys {
        let attribute = &dataset[key];
        let vr = attribute.get("vr").and_then(Json::as_str).unwrap_or("UN");
        // Keys and VRs come from data sets a client sent: escaped like values.
        let _ = write!(
            out,
            "<DicomAttribute tag=\"{}\" vr=\"{}\"",
            escape(key),
            escape(vr)
        );
        if let Some(keyword) = keyword_of(key) {
            let _ = write!(out, " keyword=\"{keyword}\"");
        }
        out.push('>');
        if let Some(values) = attribute.get("Value").and_then(Json::as_array) {
            for (i, value) in values.iter().enumerate() {
                let number = i + 1;
                match (vr, value) {
                    ("SQ", Json::Object(item)) => {
                        let _ = write!(out, "<Item number=\"{number}\">");
                        write_attributes(out, item);
                        out.push_str("</Item>");
                    }
                    ("PN", Json::Object(groups)) => write_person_name(out, number, groups),
                    (_, Json::Null) => {
                        let _ = write!(out, "<Value number=\"{number}\"/>");
                    }
                    (_, Json::String(text)) => {
                        let _ = write!(out, "<Value number=\"{number}\">{}</Value>", escape(text));
                    }
                    (_, other) => {
                        let _ = write!(out, "<Value number=\"{number}\">{other}</Value>");
                    }
                }
            }
        } else if let Some(uri) = attribute.get("BulkDataURI").and_then(Json::as_str) {
            let _ = write!(out, "<BulkData uri=\"{}\"/>", escape(uri));
        } else if let Some(data) = attribute.get("InlineBinary").and_then(Json::as_str) {
            let _ = write!(out, "<InlineBinary>{}</InlineBinary>", escape(data));
        }
        out.push_str("</DicomAttribute>");
    }
}

fn write_person_name(out: &mut String, number: usize, groups: &Map<String, Json>) {
    let _ = write!(out, "<PersonName number=\"{number}\">");
    for group in NAME_GROUPS {
        let Some(text) = groups.get(group).and_then(Json::as_str) else {
            continue;
        };
        let _ = write!(out, "<{group}>");
        for (component, value) in NAME_COMPONENTS.iter().zip(text.split('^')) {
            if !value.is_empty() {
                let _ = write!(out, "<{component}>{}</{component}>", escape(value));
            }
        }
        let _ = write!(out, "</{group}>");
    }
    out.push_str("</PersonName>");
}

fn keyword_of(key: &str) -> Option<&'static str> {
    let group = u16::from_str_radix(key.get(..4)?, 16).ok()?;
    let element = u16::from_str_radix(key.get(4..)?, 16).ok()?;
    StandardDataDictionary
        .by_tag(Tag(group, element))
        .map(|entry| entry.alias())
}

/// Text for XML content and attribute values (every XML Kastell writes: the
/// Native DICOM Model, DICOM audit messages, the WADL): markup characters
/// escaped, whitespace that attribute normalisation would fold kept as
/// references, and characters XML 1.0 forbids replaced by U+FFFD.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// VRs whose JSON values are numbers (PS3.18 Table F.2.3-1; IS, DS, SV and UV
/// stay strings, which DICOM JSON readers accept).
fn is_json_number(vr: &str) -> bool {
    matches!(vr, "FL" | "FD" | "SL" | "SS" | "UL" | "US")
}

/// Reads a Native DICOM Model document into a DICOM JSON data set.
pub fn from_native_dicom_model(xml: &str) -> Result<Json, DicomError> {
    super::guard::check_xml_depth(xml.as_bytes(), &super::guard::ParseLimits::current())?;
    let document = roxmltree::Document::parse(xml)
        .map_err(|e| DicomError::Malformed(format!("the metadata part is not XML: {e}")))?;
    let root = document.root_element();
    if root.tag_name().name() != "NativeDicomModel" {
        return Err(DicomError::Malformed(format!(
            "the root element is {:?}, not NativeDicomModel",
            root.tag_name().name()
        )));
    }
    read_attributes(root).map(Json::Object)
}

fn read_attributes(parent: roxmltree::Node<'_, '_>) -> Result<Map<String, Json>, DicomError> {
    let malformed = |what: String| DicomError::Malformed(what);
    let mut dataset = Map::new();
    for attribute in parent
        .children()
        .filter(|n| n.has_tag_name("DicomAttribute"))
    {
        let tag = attribute
            .attribute("tag")
            .filter(|t| t.len() == 8 && t.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| malformed("a DicomAttribute without a valid tag".into()))?
            .to_ascii_uppercase();
        let vr = attribute
            .attribute("vr")
            .ok_or_else(|| malformed(format!("attribute {tag} has no vr")))?;
        let mut json = Map::new();
        json.insert("vr".into(), Json::String(vr.to_string()));
        let mut values: Vec<(usize, Json)> = Vec::new();
        for child in attribute.children().filter(roxmltree::Node::is_element) {
            let number = || -> Result<usize, DicomError> {
                child
                    .attribute("number")
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| malformed(format!("a value of {tag} has no valid number")))
            };
            match child.tag_name().name() {
                "Value" => {
                    let text = child.text().unwrap_or_default();
                    let value = if child.children().next().is_none() {
                        Json::Null
                    } else if is_json_number(vr) {
                        serde_json::from_str::<serde_json::Number>(text.trim())
                            .map(Json::Number)
                            .map_err(|_| {
                                malformed(format!("{tag} holds a value that is not a number"))
                            })?
                    } else {
                        Json::String(text.to_string())
                    };
                    values.push((number()?, value));
                }
                "PersonName" => values.push((number()?, read_person_name(child))),
                "Item" => values.push((number()?, Json::Object(read_attributes(child)?))),
                "BulkData" => {
                    let uri = child
                        .attribute("uri")
                        .ok_or_else(|| malformed(format!("the BulkData of {tag} has no uri")))?;
                    json.insert("BulkDataURI".into(), Json::String(uri.to_string()));
                }
                "InlineBinary" => {
                    let data: String = child
                        .text()
                        .unwrap_or_default()
                        .chars()
                        .filter(|c| !c.is_whitespace())
                        .collect();
                    json.insert("InlineBinary".into(), Json::String(data));
                }
                _ => {}
            }
        }
        if !values.is_empty() {
            values.sort_by_key(|(number, _)| *number);
            json.insert(
                "Value".into(),
                Json::Array(values.into_iter().map(|(_, v)| v).collect()),
            );
        }
        dataset.insert(tag, Json::Object(json));
    }
    Ok(dataset)
}

fn read_person_name(node: roxmltree::Node<'_, '_>) -> Json {
    let mut groups = Map::new();
    for group in node.children().filter(roxmltree::Node::is_element) {
        let name = group.tag_name().name();
        if !NAME_GROUPS.contains(&name) {
            continue;
        }
        let components: Vec<String> = NAME_COMPONENTS
            .iter()
            .map(|component| {
                group
                    .children()
                    .find(|c| c.has_tag_name(*component))
                    .and_then(|c| c.text())
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        let joined = components.join("^");
        let joined = joined.trim_end_matches('^');
        if !joined.is_empty() {
            groups.insert(name.to_string(), Json::String(joined.to_string()));
        }
    }
    Json::Object(groups)
}

#[cfg(test)]
mod tests {
    #[test]
    fn tags_vrs_and_inline_binary_from_a_client_are_escaped() {
        let dataset: Json = serde_json::json!({
            "0009\"<1": {"vr": "C\"S<", "Value": ["x"]},
            "00091002": {"vr": "OB", "InlineBinary": "AA==\"/><x"}
        });
        let xml = to_native_dicom_model(dataset.as_object().unwrap());
        assert!(roxmltree::Document::parse(&xml).is_ok(), "{xml}");
    }

    use super::*;
    use serde_json::json;

    /// Found by fuzzing: without serde_json's exact float parsing, the shortest
    /// text the writer prints for a value read from XML could read back one
    /// ULP away.
    #[test]
    fn floats_survive_the_xml_round_trip() {
        for text in [
            "1.401298464224817e-45",
            "2.560266267932768e-29",
            "0.1",
            "-600.1818237304688",
        ] {
            let xml = format!(
                "<NativeDicomModel><DicomAttribute tag=\"00189327\" vr=\"FD\">\
                 <Value number=\"1\">{text}</Value></DicomAttribute></NativeDicomModel>"
            );
            let read = from_native_dicom_model(&xml).unwrap();
            let written = to_native_dicom_model(read.as_object().unwrap());
            assert_eq!(from_native_dicom_model(&written).unwrap(), read, "{text}");
        }
    }

    fn dataset() -> Json {
        json!({
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane^^Dr", "Ideographic": "山田^太郎"}]},
            "00080060": {"vr": "CS", "Value": ["CT"]},
            "00081030": {"vr": "LO", "Value": ["Chest <w/ contrast> & more"]},
            "00180050": {"vr": "DS", "Value": ["1.25"]},
            "00280010": {"vr": "US", "Value": [512]},
            "00080008": {"vr": "CS", "Value": ["ORIGINAL", null, "AXIAL"]},
            "00081115": {"vr": "SQ", "Value": [
                {"0020000E": {"vr": "UI", "Value": ["1.2.3"]}}
            ]},
            "7FE00010": {"vr": "OW", "BulkDataURI": "http://x/bulk?a=1&b=2"},
            "00291010": {"vr": "OB", "InlineBinary": "AAEC"},
            "00100020": {"vr": "LO"}
        })
    }

    #[test]
    fn writes_the_native_dicom_model() {
        let xml = to_native_dicom_model(dataset().as_object().unwrap());
        assert!(xml.contains(
            "<DicomAttribute tag=\"00100010\" vr=\"PN\" keyword=\"PatientName\"><PersonName \
             number=\"1\"><Alphabetic><FamilyName>Doe</FamilyName><GivenName>Jane</GivenName>\
             <NamePrefix>Dr</NamePrefix></Alphabetic>"
        ));
        assert!(xml.contains("<Value number=\"1\">Chest &lt;w/ contrast&gt; &amp; more</Value>"));
        assert!(xml.contains("<Value number=\"2\"/>"));
        assert!(xml.contains("<Item number=\"1\"><DicomAttribute tag=\"0020000E\""));
        assert!(xml.contains("<BulkData uri=\"http://x/bulk?a=1&amp;b=2\"/>"));
        assert!(xml.contains("<InlineBinary>AAEC</InlineBinary>"));
        // Attributes in tag order.
        assert!(xml.find("00080008").unwrap() < xml.find("00100010").unwrap());
    }

    #[test]
    fn reads_back_what_it_writes() {
        let xml = to_native_dicom_model(dataset().as_object().unwrap());
        assert_eq!(from_native_dicom_model(&xml).unwrap(), dataset());
    }

    #[test]
    fn refuses_what_is_not_the_model() {
        assert!(from_native_dicom_model("not xml").is_err());
        assert!(from_native_dicom_model("<Other/>").is_err());
        assert!(from_native_dicom_model(
            "<NativeDicomModel><DicomAttribute vr=\"CS\"/></NativeDicomModel>"
        )
        .is_err());
    }
}
