//! STOW-RS (PS3.18 §10.5): `POST /studies[/{study}]`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use futures_util::StreamExt;

use crate::dicom::DicomError;
use crate::http::error::ApiError;
use crate::http::protocol::accept::{acceptable, negotiate_model, DataModel};
use crate::http::protocol::multipart::{parse_related_content_type, ContentTypeError};
use crate::http::state::AppState;
use crate::service::stow::StowSession;

pub async fn store(
    state: web::ReqData<AppState>,
    request: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    run(state, request, body, None).await
}

pub async fn store_in_study(
    state: web::ReqData<AppState>,
    request: HttpRequest,
    body: web::Payload,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    run(state, request, body, Some(path.into_inner())).await
}

async fn run(
    state: web::ReqData<AppState>,
    request: HttpRequest,
    body: web::Payload,
    target_study: Option<String>,
) -> Result<HttpResponse, ApiError> {
    crate::http::protocol::target::check_path_uids(&request)?;
    let content_type = request
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let related = parse_related_content_type(content_type).map_err(|e| match e {
        ContentTypeError::Unsupported(m) => ApiError::UnsupportedMediaType(m),
        ContentTypeError::Malformed(m) => ApiError::BadRequest(m),
    })?;
    // PS3.10 files, or metadata (DICOM JSON or XML) with bulk data parts.
    let metadata_model = match related.related_type.as_str() {
        "application/dicom" => None,
        "application/dicom+json" => Some(DataModel::Json),
        "application/dicom+xml" => Some(DataModel::Xml),
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "STOW-RS accepts multipart/related with type=\"application/dicom\", \
                 \"application/dicom+json\" or \"application/dicom+xml\"; got type={other:?}"
            )))
        }
    };
    // The response's representation, settled before anything is stored.
    let accept = request
        .headers()
        .get(actix_web::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let response_model = negotiate_model(&acceptable(&[], accept), true).ok_or_else(|| {
        ApiError::NotAcceptable(
            "the Store Instances Response is available as application/dicom+json or \
             application/dicom+xml"
                .into(),
        )
    })?;
    let limit = state.max_request_bytes;
    let declared_length = request
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_length.is_some_and(|l| l > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }

    let limits = state.services.settings.limits.clone();
    let idle = std::time::Duration::from_secs(limits.body_idle_timeout_secs);
    let stalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stream = sendable(body, idle, stalled.clone());
    let multipart_error = |error: multer::Error, limit: u64| {
        if stalled.load(std::sync::atomic::Ordering::Acquire) {
            ApiError::BodyTimeout(limits.body_idle_timeout_secs)
        } else {
            multipart_error(error, limit)
        }
    };
    let constraints =
        multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(limit));
    let mut multipart = multer::Multipart::with_constraints(stream, related.boundary, constraints);
    let mut session = StowSession::new(state.services.clone(), target_study);
    let mut parts = 0usize;
    let mut metadata = Vec::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(error) => return Err(multipart_error(error, limit)),
        };
        parts += 1;
        if parts > limits.max_parts {
            return Err(ApiError::TooManyParts(limits.max_parts));
        }
        if let Some(model) = metadata_model {
            receive_metadata_request_part(
                &mut session,
                model,
                field,
                &mut metadata,
                &limits,
                limit,
                &multipart_error,
            )
            .await?;
            continue;
        }
        let acceptable = field
            .content_type()
            .is_none_or(|m| m.essence_str().eq_ignore_ascii_case("application/dicom"));
        let mut field = field;
        let mut part = session.begin_part(acceptable).await?;
        loop {
            match field.chunk().await {
                Ok(Some(chunk)) => part.write(chunk).await?,
                Ok(None) => break,
                Err(error) => return Err(multipart_error(error, limit)),
            }
        }
        session.finish_part(part).await?;
    }
    if parts == 0 {
        return Err(ApiError::BadRequest(
            "the multipart body has no parts".into(),
        ));
    }
    if let Some(model) = metadata_model {
        let mut datasets = Vec::new();
        for part in &metadata {
            let read = match model {
                DataModel::Json => crate::dicom::compose::metadata_datasets(part),
                // One Native DICOM Model document holds one data set.
                DataModel::Xml => std::str::from_utf8(part)
                    .map_err(|_| DicomError::Malformed("the metadata part is not UTF-8".into()))
                    .and_then(crate::dicom::xml::from_native_dicom_model)
                    .map(|dataset| vec![dataset]),
            };
            datasets.extend(read.map_err(|e| ApiError::BadRequest(e.to_string()))?);
        }
        if datasets.is_empty() {
            return Err(ApiError::BadRequest(
                "no metadata part with a data set".into(),
            ));
        }
        // Counted per data set from here on (the Warning's "of N").
        parts = datasets.len();
        session.store_metadata(datasets).await?;
    }
    let outcome = session.commit().await?;
    // The audit record (written by the tenancy middleware) names what was stored.
    request
        .extensions_mut()
        .insert(crate::http::state::StoredStudies(outcome.stored_by_study()));
    let status = match (outcome.stored_count(), outcome.failed_count()) {
        (_, 0) => StatusCode::OK,
        (0, _) => StatusCode::CONFLICT,
        _ => StatusCode::ACCEPTED,
    };
    let base_url = state.base_url(&request);
    let mut response = HttpResponse::build(status);
    if let Some(study) = outcome.single_study() {
        response.insert_header(("Content-Location", format!("{base_url}/studies/{study}")));
    }
    if outcome.failed_count() > 0 {
        response.append_header((
            "Warning",
            state.warning(&format!(
                "{} of {} instances were not stored",
                outcome.failed_count(),
                parts
            )),
        ));
    }
    let body = outcome.response(&base_url);
    Ok(match response_model {
        DataModel::Json => response
            .content_type("application/dicom+json")
            .body(body.to_string()),
        DataModel::Xml => {
            let empty = serde_json::Map::new();
            let dataset = body.as_object().unwrap_or(&empty);
            response
                .content_type(crate::dicom::xml::DICOM_XML)
                .body(crate::dicom::xml::to_native_dicom_model(dataset))
        }
    })
}

/// One part of a request with metadata (DICOM JSON or XML, as `model`): a
/// metadata part is read whole (it is parsed when the request has ended, with
/// every bulk data part in); any other part is bulk data, staged under its
/// Content-Location (and `cid:` + its Content-ID), the URIs a BulkDataURI (or an
/// XML BulkData uri) names it by.
async fn receive_metadata_request_part(
    session: &mut StowSession,
    model: DataModel,
    mut field: multer::Field<'static>,
    metadata: &mut Vec<bytes::Bytes>,
    limits: &crate::config::LimitsConfig,
    limit: u64,
    multipart_error: &impl Fn(multer::Error, u64) -> ApiError,
) -> Result<(), ApiError> {
    let media = field.content_type().cloned();
    let essence = media
        .as_ref()
        .map(|m| m.essence_str().to_ascii_lowercase())
        .unwrap_or_else(|| "application/octet-stream".into());
    let metadata_type = match model {
        DataModel::Json => "application/dicom+json",
        DataModel::Xml => crate::dicom::xml::DICOM_XML,
    };
    if essence == metadata_type {
        // Metadata is read whole (it is parsed once every bulk part is in):
        // bounded per part and for the request.
        let held: u64 = metadata.iter().map(|m| m.len() as u64).sum();
        let mut body = bytes::BytesMut::new();
        loop {
            match field.chunk().await {
                Ok(Some(chunk)) => {
                    let size = (body.len() + chunk.len()) as u64;
                    if size > limits.max_metadata_part_bytes {
                        return Err(ApiError::PayloadTooLarge(limits.max_metadata_part_bytes));
                    }
                    if held + size > limits.max_metadata_bytes {
                        return Err(ApiError::PayloadTooLarge(limits.max_metadata_bytes));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(error) => return Err(multipart_error(error, limit)),
            }
        }
        metadata.push(body.freeze());
        return Ok(());
    }
    let header = |name: &str| {
        field
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string())
    };
    let mut uris = Vec::new();
    uris.extend(header("content-location"));
    if let Some(id) = header("content-id") {
        uris.push(format!(
            "cid:{}",
            id.trim_start_matches('<').trim_end_matches('>')
        ));
    }
    let transfer_syntax = media
        .as_ref()
        .and_then(|m| m.get_param("transfer-syntax"))
        .map(|v| v.as_str().to_string());
    let mut bulk = session
        .begin_bulk(uris, &essence, transfer_syntax.as_deref())
        .await?;
    loop {
        match field.chunk().await {
            Ok(Some(chunk)) => bulk.write(chunk).await?,
            Ok(None) => break,
            Err(error) => return Err(multipart_error(error, limit)),
        }
    }
    session.finish_bulk(bulk).await?;
    Ok(())
}

fn multipart_error(error: multer::Error, limit: u64) -> ApiError {
    match error {
        multer::Error::StreamSizeExceeded { .. } => ApiError::PayloadTooLarge(limit),
        other => ApiError::BadRequest(format!("malformed multipart body: {other}")),
    }
}

/// multer needs a `Send` stream and actix's payload is not: forward the chunks
/// through a small bounded channel (which also gives back-pressure).
/// A body that sends nothing for `idle` ends with an error and sets `stalled`:
/// a slow client cannot hold a request (and its staged blobs) open for ever.
fn sendable(
    mut body: web::Payload,
    idle: std::time::Duration,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    actix_web::rt::spawn(async move {
        loop {
            let chunk = match tokio::time::timeout(idle, body.next()).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(_) => {
                    stalled.store(true, std::sync::atomic::Ordering::Release);
                    let _ = sender
                        .send(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the request body stalled",
                        )))
                        .await;
                    break;
                }
            };
            let chunk = chunk.map_err(|e| std::io::Error::other(e.to_string()));
            let failed = chunk.is_err();
            if sender.send(chunk).await.is_err() || failed {
                break;
            }
        }
    });
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
}
