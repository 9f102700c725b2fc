//! multipart/related: reading the request's Content-Type, and writing streamed
//! responses (one part per instance, frame or bulk value).

use bytes::Bytes;
use futures_util::stream::{self, BoxStream};
use futures_util::StreamExt;

use super::accept::parse_media_range;
use crate::service::ServiceError;

/// The `type` and `boundary` of a multipart/related request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelatedContentType {
    pub related_type: String,
    pub boundary: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ContentTypeError {
    /// Not multipart/related, or a type we do not take (→ 415).
    Unsupported(String),
    /// multipart/related without boundary or type (→ 400).
    Malformed(String),
}

pub fn parse_related_content_type(
    value: Option<&str>,
) -> Result<RelatedContentType, ContentTypeError> {
    let value = value
        .ok_or_else(|| ContentTypeError::Unsupported("the request has no Content-Type".into()))?;
    let range = parse_media_range(value)
        .ok_or_else(|| ContentTypeError::Unsupported(format!("invalid Content-Type {value:?}")))?;
    if range.essence != "multipart/related" {
        return Err(ContentTypeError::Unsupported(format!(
            "Content-Type must be multipart/related; type=\"application/dicom\", got {}",
            range.essence
        )));
    }
    let related_type = range.related_type().ok_or_else(|| {
        ContentTypeError::Malformed("multipart/related needs a type parameter".into())
    })?;
    let boundary = range
        .param("boundary")
        .filter(|b| !b.is_empty() && b.len() <= 70)
        .ok_or_else(|| {
            ContentTypeError::Malformed("multipart/related needs a boundary parameter".into())
        })?
        .to_string();
    Ok(RelatedContentType {
        related_type,
        boundary,
    })
}

/// One part of a response: its headers and a body produced when the part is reached.
pub struct OutgoingPart {
    pub content_type: String,
    pub content_location: Option<String>,
    pub body: BoxStream<'static, Result<Bytes, ServiceError>>,
}

/// A fresh boundary for a response.
pub fn new_boundary() -> String {
    format!("kastell-{}", uuid::Uuid::new_v4().simple())
}

/// Streams parts as a multipart body. Parts come from a stream so each one's
/// blob is opened only when the response reaches it.
pub fn multipart_body(
    boundary: String,
    parts: BoxStream<'static, Result<OutgoingPart, ServiceError>>,
) -> BoxStream<'static, Result<Bytes, ServiceError>> {
    let closing = Bytes::from(format!("--{boundary}--\r\n"));
    parts
        .flat_map(move |part| match part {
            Ok(part) => {
                let mut head = format!("--{boundary}\r\nContent-Type: {}\r\n", part.content_type);
                if let Some(location) = &part.content_location {
                    head.push_str(&format!("Content-Location: {location}\r\n"));
                }
                head.push_str("\r\n");
                stream::once(async move { Ok(Bytes::from(head)) })
                    .chain(part.body)
                    .chain(stream::once(async { Ok(Bytes::from_static(b"\r\n")) }))
                    .boxed()
            }
            Err(error) => stream::once(async move { Err(error) }).boxed(),
        })
        .chain(stream::once(async move { Ok(closing) }))
        .boxed()
}

/// DICOM data sets (DICOM JSON objects) as `multipart/related;
/// type="application/dicom+xml"`: one Native DICOM Model document a part,
/// written as each data set arrives.
pub fn xml_response(
    builder: &mut actix_web::HttpResponseBuilder,
    datasets: BoxStream<'static, Result<serde_json::Value, ServiceError>>,
) -> actix_web::HttpResponse {
    let boundary = new_boundary();
    let parts = datasets
        .map(|dataset| {
            dataset.map(|dataset| {
                let xml = match dataset.as_object() {
                    Some(object) => crate::dicom::xml::to_native_dicom_model(object),
                    None => crate::dicom::xml::to_native_dicom_model(&Default::default()),
                };
                OutgoingPart {
                    content_type: crate::dicom::xml::DICOM_XML.to_string(),
                    content_location: None,
                    body: stream::once(async move { Ok(Bytes::from(xml)) }).boxed(),
                }
            })
        })
        .boxed();
    builder
        .content_type(format!(
            "multipart/related; type=\"{}\"; boundary={boundary}",
            crate::dicom::xml::DICOM_XML
        ))
        .streaming(multipart_body(boundary, parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_request_content_types() {
        let ok = parse_related_content_type(Some(
            "multipart/related; type=\"application/dicom\"; boundary=abc",
        ))
        .unwrap();
        assert_eq!(
            ok,
            RelatedContentType {
                related_type: "application/dicom".into(),
                boundary: "abc".into()
            }
        );
        let unquoted = parse_related_content_type(Some(
            "Multipart/Related; boundary=\"x y\"; type=application/dicom",
        ))
        .unwrap();
        assert_eq!(unquoted.boundary, "x y");
        assert!(matches!(
            parse_related_content_type(Some("application/json")),
            Err(ContentTypeError::Unsupported(_))
        ));
        assert!(matches!(
            parse_related_content_type(Some("multipart/related; type=application/dicom")),
            Err(ContentTypeError::Malformed(_))
        ));
        assert!(matches!(
            parse_related_content_type(None),
            Err(ContentTypeError::Unsupported(_))
        ));
    }

    #[tokio::test]
    async fn writes_parts_in_order() {
        let parts = vec![
            Ok(OutgoingPart {
                content_type: "application/dicom".into(),
                content_location: Some("/a".into()),
                body: stream::once(async { Ok(Bytes::from_static(b"AAA")) }).boxed(),
            }),
            Ok(OutgoingPart {
                content_type: "text/plain".into(),
                content_location: None,
                body: stream::empty().boxed(),
            }),
        ];
        let body: Vec<Bytes> = multipart_body("b".into(), stream::iter(parts).boxed())
            .map(|r| r.unwrap())
            .collect()
            .await;
        let text = String::from_utf8(body.concat()).unwrap();
        assert_eq!(
            text,
            "--b\r\nContent-Type: application/dicom\r\nContent-Location: /a\r\n\r\nAAA\r\n--b\r\nContent-Type: text/plain\r\n\r\n\r\n--b--\r\n"
        );
    }
}
