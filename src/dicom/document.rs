//! Rendering instances that are documents rather than images (PS3.18 §10.4.1.1.3,
//! Table 10.4.4-1 "Rendered, text": text/html by default, text/plain): a
//! Structured Report's content tree as nested headings and `name: value` lines;
//! and an encapsulated document (PDF, CDA) as the document it holds.

use std::fmt::Write;

use dicom_core::value::Value;
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::instance::text;
use super::xml::escape;

/// The text types a report is rendered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextFormat {
    Html,
    Plain,
}

impl TextFormat {
    pub fn media_type(self) -> &'static str {
        match self {
            TextFormat::Html => "text/html",
            TextFormat::Plain => "text/plain",
        }
    }
}

/// Whether the data set is a Structured Report (it has a content tree).
pub fn is_structured_report(dataset: &InMemDicomObject) -> bool {
    dataset.get(tags::CONTENT_SEQUENCE).is_some()
        || text(dataset, tags::VALUE_TYPE).as_deref() == Some("CONTAINER")
}

/// The document types an Encapsulated Document is rendered as (PS3.3
/// C.24.2: PDF, CDA, STL, OBJ/MTL, plus plain text). Anything else a modality
/// or an attacker declares (text/html, image/svg+xml, ...) is served as
/// `application/octet-stream`, as an attachment: the archive's origin must
/// never run markup from an instance.
pub const DOCUMENT_TYPES: &[&str] = &[
    "application/pdf",
    "text/plain",
    "text/xml",
    "application/xml",
    "model/stl",
    "model/obj",
    "model/mtl",
];

/// The media type an instance's document is served as.
pub const UNLISTED_DOCUMENT_TYPE: &str = "application/octet-stream";

/// The document an Encapsulated Document instance holds, with the media type it
/// is served as (its declared one if on [`DOCUMENT_TYPES`], else
/// [`UNLISTED_DOCUMENT_TYPE`]).
pub fn encapsulated_document(dataset: &InMemDicomObject) -> Option<(String, Vec<u8>)> {
    let element = dataset.get(tags::ENCAPSULATED_DOCUMENT)?;
    let Value::Primitive(value) = element.value() else {
        return None;
    };
    let mut bytes = value.to_bytes().into_owned();
    let media_type = text(dataset, tags::MIME_TYPE_OF_ENCAPSULATED_DOCUMENT)
        .map(|m| m.trim().to_ascii_lowercase())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "application/octet-stream".into());
    // The value is padded to even length; a PDF ends at its %%EOF line.
    if media_type == "application/pdf" && bytes.last() == Some(&0) {
        bytes.pop();
    }
    let media_type = if DOCUMENT_TYPES.contains(&media_type.as_str()) {
        media_type
    } else {
        UNLISTED_DOCUMENT_TYPE.to_string()
    };
    Some((media_type, bytes))
}

/// One line of a rendered report: its depth in the tree, the concept name and
/// the value (either may be empty).
struct Line {
    depth: usize,
    name: String,
    value: String,
    /// A container: rendered as a heading.
    heading: bool,
}

/// Renders a Structured Report: the document title, then every content item
/// in tree order. `with_patient` adds the patient's name and ID (the rendered
/// resources' `annotation=patient`); otherwise the rendering names no one.
pub fn render_report(dataset: &InMemDicomObject, format: TextFormat, with_patient: bool) -> String {
    let title = concept_name(dataset).unwrap_or_else(|| "Structured Report".into());
    let mut lines = Vec::new();
    for (label, tag) in [
        ("Completion", tags::COMPLETION_FLAG),
        ("Verification", tags::VERIFICATION_FLAG),
        ("Content date", tags::CONTENT_DATE),
        ("Content time", tags::CONTENT_TIME),
    ] {
        if let Some(value) = text(dataset, tag).filter(|v| !v.is_empty()) {
            lines.push(Line {
                depth: 0,
                name: label.into(),
                value,
                heading: false,
            });
        }
    }
    if with_patient {
        for (label, tag) in [
            ("Patient", tags::PATIENT_NAME),
            ("Patient ID", tags::PATIENT_ID),
        ] {
            if let Some(value) = text(dataset, tag).filter(|v| !v.is_empty()) {
                lines.push(Line {
                    depth: 0,
                    name: label.into(),
                    value: value.replace('^', " ").trim().to_string(),
                    heading: false,
                });
            }
        }
    }
    content_lines(dataset, 0, &mut lines);
    match format {
        TextFormat::Plain => {
            let mut out = format!("{title}\n{}\n", "=".repeat(title.chars().count()));
            for line in lines {
                let indent = "  ".repeat(line.depth);
                let _ = match (line.name.is_empty(), line.value.is_empty()) {
                    (false, false) => writeln!(out, "{indent}{}: {}", line.name, line.value),
                    (false, true) => writeln!(out, "{indent}{}", line.name),
                    (true, _) => writeln!(out, "{indent}{}", line.value),
                };
            }
            out
        }
        TextFormat::Html => {
            let title = escape(&title);
            let mut out = format!(
                "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
                 <body><h1>{title}</h1>\n"
            );
            for line in lines {
                let level = (line.depth + 2).min(6);
                let name = escape(&line.name);
                // The escape keeps line breaks as &#10;: shown as such in HTML.
                let value = escape(&line.value).replace("&#10;", "<br>");
                let margin = line.depth * 2;
                let _ = if line.heading {
                    writeln!(
                        out,
                        "<h{level} style=\"margin-left:{margin}em\">{name}</h{level}>"
                    )
                } else {
                    writeln!(
                        out,
                        "<p style=\"margin-left:{margin}em\"><b>{name}</b>{}{value}</p>",
                        if name.is_empty() || value.is_empty() {
                            ""
                        } else {
                            ": "
                        }
                    )
                };
            }
            out.push_str("</body></html>\n");
            out
        }
    }
}

fn content_lines(item: &InMemDicomObject, depth: usize, lines: &mut Vec<Line>) {
    let Some(children) = item.get(tags::CONTENT_SEQUENCE).and_then(|e| e.items()) else {
        return;
    };
    for child in children {
        let value_type = text(child, tags::VALUE_TYPE).unwrap_or_default();
        let name = concept_name(child).unwrap_or_default();
        let heading = value_type == "CONTAINER";
        lines.push(Line {
            depth,
            value: if heading {
                String::new()
            } else {
                item_value(child, &value_type)
            },
            name,
            heading,
        });
        content_lines(child, depth + 1, lines);
    }
}

fn first_item(dataset: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    dataset.get(tag)?.items()?.first()
}

fn code_meaning(dataset: &InMemDicomObject, sequence: Tag) -> Option<String> {
    let code = first_item(dataset, sequence)?;
    text(code, tags::CODE_MEANING)
        .filter(|m| !m.is_empty())
        .or_else(|| text(code, tags::CODE_VALUE))
}

fn concept_name(item: &InMemDicomObject) -> Option<String> {
    code_meaning(item, tags::CONCEPT_NAME_CODE_SEQUENCE)
}

/// The value of a content item, as text (PS3.3 C.17.3.2.1 value types).
fn item_value(item: &InMemDicomObject, value_type: &str) -> String {
    let value = match value_type {
        "TEXT" => text(item, tags::TEXT_VALUE),
        "CODE" => code_meaning(item, tags::CONCEPT_CODE_SEQUENCE),
        "NUM" => first_item(item, tags::MEASURED_VALUE_SEQUENCE).map(|measured| {
            let number = text(measured, tags::NUMERIC_VALUE).unwrap_or_default();
            let unit = first_item(measured, tags::MEASUREMENT_UNITS_CODE_SEQUENCE)
                .and_then(|unit| text(unit, tags::CODE_VALUE))
                .filter(|u| !u.is_empty() && u != "1");
            match unit {
                Some(unit) => format!("{number} {unit}"),
                None => number,
            }
        }),
        "DATETIME" => text(item, tags::DATE_TIME),
        "DATE" => text(item, tags::DATE),
        "TIME" => text(item, tags::TIME),
        "PNAME" => text(item, tags::PERSON_NAME).map(|n| n.replace('^', " ").trim().to_string()),
        "UIDREF" => text(item, tags::UID),
        "IMAGE" | "COMPOSITE" | "WAVEFORM" => first_item(item, tags::REFERENCED_SOP_SEQUENCE)
            .and_then(|r| text(r, tags::REFERENCED_SOP_INSTANCE_UID))
            .map(|uid| format!("{} {uid}", value_type.to_ascii_lowercase())),
        "SCOORD" | "SCOORD3D" => {
            text(item, tags::GRAPHIC_TYPE).map(|g| format!("{g} (coordinates)"))
        }
        "TCOORD" => text(item, tags::TEMPORAL_RANGE_TYPE).map(|t| format!("{t} (time range)")),
        _ => None,
    };
    value.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_object::mem::InMemElement;

    fn code(meaning: &str) -> InMemDicomObject {
        InMemDicomObject::from_element_iter([
            DataElement::new(tags::CODE_VALUE, VR::SH, PrimitiveValue::from("1")),
            DataElement::new(tags::CODE_MEANING, VR::LO, PrimitiveValue::from(meaning)),
        ])
    }

    fn sequence(tag: Tag, items: Vec<InMemDicomObject>) -> InMemElement {
        DataElement::new(tag, VR::SQ, dicom_core::value::DataSetSequence::from(items))
    }

    fn report() -> InMemDicomObject {
        let finding = InMemDicomObject::from_element_iter([
            DataElement::new(tags::VALUE_TYPE, VR::CS, PrimitiveValue::from("TEXT")),
            sequence(tags::CONCEPT_NAME_CODE_SEQUENCE, vec![code("Finding")]),
            DataElement::new(
                tags::TEXT_VALUE,
                VR::UT,
                PrimitiveValue::from("No <acute> change"),
            ),
        ]);
        let section = InMemDicomObject::from_element_iter([
            DataElement::new(tags::VALUE_TYPE, VR::CS, PrimitiveValue::from("CONTAINER")),
            sequence(tags::CONCEPT_NAME_CODE_SEQUENCE, vec![code("Impressions")]),
            sequence(tags::CONTENT_SEQUENCE, vec![finding]),
        ]);
        InMemDicomObject::from_element_iter([
            DataElement::new(tags::VALUE_TYPE, VR::CS, PrimitiveValue::from("CONTAINER")),
            DataElement::new(tags::PATIENT_NAME, VR::PN, PrimitiveValue::from("Doe^Jane")),
            sequence(tags::CONCEPT_NAME_CODE_SEQUENCE, vec![code("Chest Report")]),
            sequence(tags::CONTENT_SEQUENCE, vec![section]),
        ])
    }

    #[test]
    fn reports_render_as_a_tree() {
        let plain = render_report(&report(), TextFormat::Plain, false);
        assert_eq!(
            plain,
            "Chest Report\n============\nImpressions\n  Finding: No <acute> change\n"
        );
        let html = render_report(&report(), TextFormat::Html, false);
        assert!(html.contains("<h1>Chest Report</h1>"));
        assert!(html.contains("<h2 style=\"margin-left:0em\">Impressions</h2>"));
        assert!(html.contains("<b>Finding</b>: No &lt;acute&gt; change"));
        assert!(
            !html.contains("Doe"),
            "no patient without annotation=patient"
        );
        assert!(render_report(&report(), TextFormat::Plain, true).contains("Patient: Doe Jane"));
        assert!(is_structured_report(&report()));
    }
}
