//! Accept negotiation (PS3.18 §8.7): media ranges from the `accept` query parameter
//! (first) and the Accept header, ordered by preference, and the choice of what to
//! send for each resource category.

use crate::dicom::transfer_syntax;
use crate::http::error::ApiError;

/// One media range: `type/subtype; name=value; q=0.5`.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaRange {
    /// `type/subtype`, lower case.
    pub essence: String,
    /// Parameters other than q, names lower case, values unquoted.
    pub params: Vec<(String, String)>,
    pub q: f32,
}

impl MediaRange {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `type` parameter of a multipart range, lower case.
    pub fn related_type(&self) -> Option<String> {
        self.param("type").map(|t| t.to_ascii_lowercase())
    }

    pub fn transfer_syntax(&self) -> Option<&str> {
        self.param("transfer-syntax")
    }

    fn is_wildcard(&self) -> bool {
        self.essence == "*/*"
    }
}

/// Splits on `sep` outside double quotes.
fn split_unquoted(value: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (i, c) in value.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(&value[start..i]);
            start = i + 1;
        }
    }
    parts.push(&value[start..]);
    parts
}

/// Parses one media type or range; `None` if it is not `type/subtype`.
pub fn parse_media_range(text: &str) -> Option<MediaRange> {
    let mut pieces = split_unquoted(text, ';').into_iter();
    let essence = pieces.next()?.trim().to_ascii_lowercase();
    let (kind, subtype) = essence.split_once('/')?;
    if kind.is_empty() || subtype.is_empty() || essence.contains(char::is_whitespace) {
        return None;
    }
    let mut params = Vec::new();
    let mut q = 1.0;
    for piece in pieces {
        let Some((name, value)) = piece.split_once('=') else {
            continue;
        };
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim().trim_matches('"').to_string();
        if name == "q" {
            q = value
                .parse::<f32>()
                .ok()
                .filter(|q| (0.0..=1.0).contains(q))?;
        } else {
            params.push((name, value));
        }
    }
    Some(MediaRange { essence, params, q })
}

/// The acceptable ranges, most preferred first: the `accept` query parameter, then
/// the Accept header, each sorted by q (stable), q=0 and unparseable ranges dropped.
/// No Accept at all means `*/*` (our documented decision).
pub fn acceptable(query_accept: &[String], header: Option<&str>) -> Vec<MediaRange> {
    let parse_all = |text: &str| -> Vec<MediaRange> {
        let mut ranges: Vec<MediaRange> = split_unquoted(text, ',')
            .into_iter()
            .filter(|t| !t.trim().is_empty())
            .filter_map(parse_media_range)
            .filter(|r| r.q > 0.0)
            .collect();
        ranges.sort_by(|a, b| b.q.partial_cmp(&a.q).unwrap_or(std::cmp::Ordering::Equal));
        ranges
    };
    let mut ranges = Vec::new();
    for value in query_accept {
        ranges.extend(parse_all(value));
    }
    match header {
        Some(header) if !header.trim().is_empty() => ranges.extend(parse_all(header)),
        _ if query_accept.is_empty() => ranges.push(MediaRange {
            essence: "*/*".into(),
            params: vec![],
            q: 1.0,
        }),
        _ => {}
    }
    ranges
}

/// How DICOM instances are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceChoice {
    /// One `application/dicom` body instead of multipart (single instance only).
    pub single_part: bool,
    /// Acceptable transfer syntaxes in preference order (`*` = any).
    pub transfer_syntaxes: Vec<String>,
}

/// The media ranges a request accepts: its `accept` query parameters, else its
/// `Accept` header (PS3.18 §8.3.3.1).
pub fn ranges(request: &actix_web::HttpRequest) -> Result<Vec<MediaRange>, ApiError> {
    let query_accept: Vec<String> = super::query::query_pairs(request)?
        .into_iter()
        .filter(|(name, _)| name == "accept")
        .map(|(_, value)| value)
        .collect();
    let header_value = request
        .headers()
        .get(actix_web::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    Ok(acceptable(&query_accept, header_value))
}

/// Negotiates the "DICOM" resource category (instances, series, studies).
pub fn negotiate_instances(ranges: &[MediaRange], single_allowed: bool) -> Option<InstanceChoice> {
    let mut choice: Option<InstanceChoice> = None;
    for range in ranges {
        let (single, syntax) = match range.essence.as_str() {
            "multipart/related" => match range.related_type().as_deref() {
                Some("application/dicom") | None => (false, range.transfer_syntax()),
                _ => continue,
            },
            "application/dicom" if single_allowed => (true, range.transfer_syntax()),
            "*/*" | "multipart/*" => {
                let choice = choice.get_or_insert(InstanceChoice {
                    single_part: false,
                    transfer_syntaxes: vec![],
                });
                for ts in [transfer_syntax::EXPLICIT_VR_LE, "*"] {
                    if !choice.transfer_syntaxes.iter().any(|t| t == ts) {
                        choice.transfer_syntaxes.push(ts.to_string());
                    }
                }
                continue;
            }
            _ => continue,
        };
        let syntax = syntax
            .unwrap_or(transfer_syntax::EXPLICIT_VR_LE)
            .to_string();
        let choice = choice.get_or_insert(InstanceChoice {
            single_part: single,
            transfer_syntaxes: vec![],
        });
        if choice.single_part == single && !choice.transfer_syntaxes.contains(&syntax) {
            choice.transfer_syntaxes.push(syntax);
        }
    }
    choice
}

/// Whether a range takes DICOM JSON (metadata, search results).
fn is_dicom_json(range: &MediaRange) -> bool {
    matches!(
        range.essence.as_str(),
        "application/dicom+json" | "application/json" | "application/*"
    ) || range.is_wildcard()
}

/// The representation of DICOM data sets (search results, metadata, the Store
/// Instances Response): DICOM JSON, or the Native DICOM Model in XML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataModel {
    Json,
    Xml,
}

/// The client's preferred data model: the first acceptable range that names
/// one, JSON for wildcards (the default representation). XML is
/// `multipart/related; type="application/dicom+xml"`, or, where one document
/// answers (`single_xml`, the Store Instances Response), `application/dicom+xml`.
pub fn negotiate_model(ranges: &[MediaRange], single_xml: bool) -> Option<DataModel> {
    ranges.iter().find_map(|range| {
        if is_dicom_json(range) {
            Some(DataModel::Json)
        } else if (range.essence == "multipart/related"
            && range.related_type().as_deref() == Some("application/dicom+xml"))
            || (single_xml && range.essence == "application/dicom+xml")
        {
            Some(DataModel::Xml)
        } else {
            None
        }
    })
}

/// What bulk data may be sent as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkChoice {
    /// Uncompressed bytes are acceptable.
    pub uncompressed: bool,
    /// Compressed frames are acceptable as stored (`transfer-syntax=*`, a wildcard).
    pub any_compressed: bool,
    /// Specific compressed media types accepted.
    pub compressed_types: Vec<String>,
}

pub fn negotiate_bulk(ranges: &[MediaRange]) -> BulkChoice {
    let mut choice = BulkChoice {
        uncompressed: false,
        any_compressed: false,
        compressed_types: vec![],
    };
    for range in ranges {
        let (media, syntax) = match range.essence.as_str() {
            "multipart/related" => (
                range
                    .related_type()
                    .unwrap_or_else(|| "application/octet-stream".into()),
                range.transfer_syntax(),
            ),
            "application/octet-stream" => (
                "application/octet-stream".to_string(),
                range.transfer_syntax(),
            ),
            "*/*" | "multipart/*" => {
                choice.uncompressed = true;
                choice.any_compressed = true;
                continue;
            }
            _ => continue,
        };
        match (media.as_str(), syntax) {
            ("application/octet-stream", Some("*")) => {
                choice.uncompressed = true;
                choice.any_compressed = true;
            }
            ("application/octet-stream", _) => choice.uncompressed = true,
            ("*/*", _) => {
                choice.uncompressed = true;
                choice.any_compressed = true;
            }
            (other, _) => choice.compressed_types.push(other.to_string()),
        }
    }
    choice
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_model_follows_preference() {
        let ranges = |text: &str| acceptable(&[], Some(text));
        let xml = r#"multipart/related; type="application/dicom+xml""#;
        assert_eq!(negotiate_model(&ranges(xml), false), Some(DataModel::Xml));
        assert_eq!(
            negotiate_model(
                &ranges(&format!("{xml}, application/dicom+json;q=0.5")),
                false
            ),
            Some(DataModel::Xml)
        );
        assert_eq!(
            negotiate_model(
                &ranges(&format!("{xml};q=0.4, application/dicom+json")),
                false
            ),
            Some(DataModel::Json)
        );
        assert_eq!(
            negotiate_model(&ranges("*/*"), false),
            Some(DataModel::Json)
        );
        assert_eq!(
            negotiate_model(&ranges("application/dicom+xml"), false),
            None
        );
        assert_eq!(
            negotiate_model(&ranges("application/dicom+xml"), true),
            Some(DataModel::Xml)
        );
        assert_eq!(negotiate_model(&ranges("text/html"), false), None);
    }

    #[test]
    fn parses_quoted_and_unquoted_types() {
        let a =
            parse_media_range("multipart/related; type=\"application/dicom\"; transfer-syntax=*")
                .unwrap();
        let b = parse_media_range("Multipart/Related; Type=application/dicom; transfer-syntax=*")
            .unwrap();
        assert_eq!(a.related_type(), b.related_type());
        assert_eq!(a.transfer_syntax(), Some("*"));
        assert!(parse_media_range("garbage").is_none());
    }

    #[test]
    fn query_parameter_wins_and_q_orders() {
        let ranges = acceptable(
            &["application/dicom+json".into()],
            Some("text/html;q=0.1, application/json;q=0.9, image/png;q=0"),
        );
        let essences: Vec<&str> = ranges.iter().map(|r| r.essence.as_str()).collect();
        assert_eq!(
            essences,
            ["application/dicom+json", "application/json", "text/html"]
        );
        assert_eq!(acceptable(&[], None)[0].essence, "*/*");
    }

    #[test]
    fn instance_negotiation() {
        let ranges = acceptable(&[], Some("multipart/related; type=\"application/dicom\"; transfer-syntax=1.2.840.10008.1.2.4.50, multipart/related; type=application/dicom; q=0.5"));
        let choice = negotiate_instances(&ranges, false).unwrap();
        assert_eq!(
            choice.transfer_syntaxes,
            ["1.2.840.10008.1.2.4.50", transfer_syntax::EXPLICIT_VR_LE]
        );
        assert!(negotiate_instances(&acceptable(&[], Some("image/png")), false).is_none());
        let single =
            negotiate_instances(&acceptable(&[], Some("application/dicom")), true).unwrap();
        assert!(single.single_part);
        assert!(negotiate_instances(&acceptable(&[], Some("application/dicom")), false).is_none());
    }
}
