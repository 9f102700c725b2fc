//! WADO-RS (PS3.18 §10.4): instances, metadata and bulk data of studies, series
//! and instances.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::stream::{self, BoxStream};
use futures_util::StreamExt;

use crate::http::error::ApiError;
use crate::http::protocol::accept::{
    negotiate_bulk, negotiate_instances, negotiate_model, ranges, BulkChoice, DataModel, MediaRange,
};
use crate::http::protocol::multipart::{multipart_body, new_boundary, OutgoingPart};
use crate::http::protocol::range::requested_range;
use crate::http::protocol::research;
use crate::http::protocol::target::Target;
use crate::http::state::AppState;
use crate::service::wado::{self, log_stream_failure, BulkBody, Frames, Representation};
use crate::service::ServiceError;
use crate::service::{Scope, StoredInstance};

/// Retrieve a study, series or instance (PS3.18 §10.4.1.1.1).
pub async fn retrieve(
    state: web::ReqData<AppState>,
    request: HttpRequest,
    target: Target,
) -> Result<HttpResponse, ApiError> {
    let scope = target.scope;
    let single_allowed = matches!(scope, Scope::Instance { .. });
    let choice = negotiate_instances(&ranges(&request)?, single_allowed).ok_or_else(|| {
        ApiError::NotAcceptable(
            "instances are available as multipart/related; type=\"application/dicom\"".into(),
        )
    })?;
    if let Some(project) = state.research.clone() {
        return research::retrieve(&state, &request, project, scope, choice).await;
    }
    let instances = wado::locate_for_reading(&state.services, scope).await?;
    // Choose every part's representation before sending anything: a part that
    // cannot be produced makes the whole answer 406, not a broken stream.
    let mut plan: Vec<(StoredInstance, Representation)> = Vec::with_capacity(instances.len());
    for instance in instances {
        let representation = choice
            .transfer_syntaxes
            .iter()
            .find_map(|ts| wado::representation_for(&instance, ts))
            .ok_or_else(|| {
                ApiError::NotAcceptable(format!(
                    "an instance is stored in transfer syntax {} and cannot be sent in {} (this server \
                     decodes every stored syntax it can read and writes only lossless syntaxes); \
                     request transfer-syntax=* to receive it as stored",
                    instance.transfer_syntax_uid,
                    choice.transfer_syntaxes.join(", ")
                ))
            })?;
        plan.push((instance, representation));
    }
    let base_url = state.base_url(&request);
    let services = state.services.clone();

    if choice.single_part {
        let Some((instance, representation)) = plan.into_iter().next() else {
            return Err(ServiceError::NotFound("instance").into());
        };
        let syntax = wado::syntax_of(&instance, representation).to_string();
        let body = wado::instance_body(&services, &instance, representation).await?;
        return Ok(HttpResponse::Ok()
            .content_type(format!("application/dicom; transfer-syntax={syntax}"))
            .insert_header(("Content-Location", wado::instance_url(&base_url, &instance)))
            .streaming(body));
    }

    let boundary = new_boundary();
    let part = |instance: &StoredInstance, representation, base_url: &str, body| OutgoingPart {
        content_type: format!(
            "application/dicom; transfer-syntax={}",
            wado::syntax_of(instance, representation)
        ),
        content_location: Some(wado::instance_url(base_url, instance)),
        body,
    };
    // The first part is opened before answering, so a missing or damaged object
    // gets a proper status instead of a broken stream.
    let mut plan = plan.into_iter();
    let Some((first, first_representation)) = plan.next() else {
        return Err(ServiceError::NotFound("instance").into());
    };
    let first_body = wado::instance_body(&services, &first, first_representation).await?;
    let first_part = part(&first, first_representation, &base_url, first_body);
    // The next instances are opened while one streams, in order (small ones
    // read several at a time): see `service/wado/ahead.rs`.
    let rest = wado::bodies_ahead(services, plan.collect()).map(move |opened| {
        let (instance, representation, body) = opened.map_err(log_stream_failure)?;
        Ok(part(&instance, representation, &base_url, body))
    });
    let parts: BoxStream<'static, Result<OutgoingPart, ServiceError>> =
        stream::once(async move { Ok(first_part) })
            .chain(rest)
            .boxed();
    Ok(HttpResponse::Ok()
        .content_type(format!(
            "multipart/related; type=\"application/dicom\"; boundary={boundary}"
        ))
        .streaming(multipart_body(boundary, parts)))
}

/// Metadata of a study, series or instance, as one DICOM JSON array.
pub async fn metadata(
    state: web::ReqData<AppState>,
    request: HttpRequest,
    target: Target,
) -> Result<HttpResponse, ApiError> {
    let scope = target.scope;
    let model = negotiate_model(&ranges(&request)?, false).ok_or_else(|| {
        ApiError::NotAcceptable(
            "metadata is available as application/dicom+json or \
             multipart/related; type=\"application/dicom+xml\""
                .into(),
        )
    })?;
    if let Some(project) = state.research.clone() {
        if model != DataModel::Json {
            return Err(ApiError::NotAcceptable(
                "de-identified metadata is available as application/dicom+json".into(),
            ));
        }
        return research::metadata(&state, &request, project, scope).await;
    }
    let instances = wado::locate(&state.services, scope).await?;
    crate::service::restore::note_retrieved(&state.services, &instances).await;
    let base_url = state.base_url(&request);
    // Viewers fetch series metadata on every study open: an unchanged series is
    // answered 304 without reading a single blob.
    let mut etag = wado::metadata_etag(&instances, &base_url);
    if model == DataModel::Xml {
        // Another representation, another entity tag.
        etag = format!("{}-xml\"", etag.trim_end_matches('"'));
    }
    let revalidated = request
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag == etag || tag.strip_prefix("W/") == Some(etag.as_str())
        });
    if revalidated {
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, etag))
            .insert_header((header::VARY, "Accept"))
            .finish());
    }
    if model == DataModel::Xml {
        // One document an instance, written as each instance's metadata
        // arrives (from its record; the cached JSON of a series is not used). The first is read
        // before answering, so that an unreadable object gets a status (410,
        // 500) rather than a cut-off body, as in JSON.
        let mut items = wado::metadata_stream(state.services.clone(), instances, base_url).await?;
        let first = items
            .next()
            .await
            .ok_or(crate::service::ServiceError::NotFound("instance"))??;
        let datasets = futures_util::stream::once(async { Ok(first) })
            .chain(items.map(|item| item.map_err(wado::log_stream_failure)))
            .boxed();
        let mut response = HttpResponse::Ok();
        response
            .insert_header((header::ETAG, etag))
            .insert_header((header::VARY, "Accept"));
        return Ok(crate::http::protocol::multipart::xml_response(
            &mut response,
            datasets,
        ));
    }
    // One JSON array: cached series come from their derived object, others are
    // written as each instance's metadata arrives.
    let body = wado::metadata_body(&state.services, instances, &base_url).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/dicom+json")
        .insert_header((header::ETAG, etag))
        .insert_header((header::VARY, "Accept"))
        .streaming(body))
}

/// How frames of an instance go out: as stored when the client takes that
/// encoding, else decoded to native pixels when it takes those, else 406.
async fn negotiate_frames(
    state: &AppState,
    instance: &StoredInstance,
    frames: Frames,
    choice: &BulkChoice,
) -> Result<Frames, ApiError> {
    match frames.media_type {
        None if choice.uncompressed => Ok(frames),
        Some(media)
            if choice.any_compressed || choice.compressed_types.iter().any(|t| t == media) =>
        {
            Ok(frames)
        }
        Some(_) if choice.uncompressed => {
            Ok(wado::decode_frames(&state.services, instance, frames).await?)
        }
        Some(media) => Err(ApiError::NotAcceptable(format!(
            "this pixel data is stored as {media}; transfer-syntax={} and is available as \
             that or as application/octet-stream (decoded)",
            frames.transfer_syntax
        ))),
        None => Err(ApiError::NotAcceptable(
            "this pixel data is available as application/octet-stream".into(),
        )),
    }
}

/// The Content-Type of a part carrying frames.
fn frame_part_type(frames: &Frames) -> (String, &'static str) {
    let media = frames.media_type.unwrap_or("application/octet-stream");
    (
        format!("{media}; transfer-syntax={}", frames.transfer_syntax),
        media,
    )
}

/// Whether the client takes a single-part `application/octet-stream` body (and so
/// may use HTTP Range), rather than multipart.
fn wants_single_part(ranges: &[MediaRange]) -> bool {
    ranges
        .iter()
        .find(|r| r.essence == "application/octet-stream" || r.essence == "multipart/related")
        .is_some_and(|r| r.essence == "application/octet-stream")
}

/// A single-part octet-stream answer from memory, honouring Range.
fn single_part_bulk(
    request: &HttpRequest,
    location: String,
    content_type: String,
    bytes: Bytes,
) -> Result<HttpResponse, ApiError> {
    let range = requested_range(request, bytes.len() as u64)?;
    let total = bytes.len();
    let mut response = if range.is_some() {
        HttpResponse::PartialContent()
    } else {
        HttpResponse::Ok()
    };
    response
        .content_type(content_type)
        .insert_header(("Content-Location", location))
        .insert_header((header::ACCEPT_RANGES, "bytes"));
    Ok(match range {
        Some(range) => response
            .insert_header((
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{total}", range.start, range.end - 1),
            ))
            .body(bytes.slice(range.start as usize..range.end as usize)),
        None => response.body(bytes),
    })
}

pub async fn bulkdata(
    state: web::ReqData<AppState>,
    request: HttpRequest,
    path: web::Path<(String, String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    crate::http::protocol::target::check_path_uids(&request)?;
    let (study, series, instance, bulk_path) = path.into_inner();
    let ranges = ranges(&request)?;
    let choice = negotiate_bulk(&ranges);
    let single = wants_single_part(&ranges);
    let scope = Scope::Instance {
        study,
        series,
        instance,
    };
    let stored = wado::locate_one_for_reading(&state.services, scope).await?;
    let location = format!(
        "{}/bulkdata/{}",
        wado::instance_url(&state.base_url(&request), &stored),
        bulk_path
    );
    // Native pixel data: ranged reads of the blob, never the whole value in memory.
    if single && wado::is_native_pixel_data_path(&stored, &bulk_path) {
        if !choice.uncompressed {
            return Err(ApiError::NotAcceptable(
                "bulk data is available as application/octet-stream".into(),
            ));
        }
        let total = stored.pixel_data_length.unwrap_or(0) as u64;
        if let Some(range) = requested_range(&request, total)? {
            let bytes = wado::pixel_data_range(&state.services, &stored, range.clone()).await?;
            return Ok(HttpResponse::PartialContent()
                .content_type("application/octet-stream")
                .insert_header(("Content-Location", location))
                .insert_header((header::ACCEPT_RANGES, "bytes"))
                .insert_header((
                    header::CONTENT_RANGE,
                    format!("bytes {}-{}/{total}", range.start, range.end - 1),
                ))
                .body(bytes));
        }
    }
    let body = wado::bulkdata(&state.services, &stored, &bulk_path).await?;
    let parts: Vec<OutgoingPart> = match body {
        BulkBody::Stream { length, body } => {
            if !choice.uncompressed {
                return Err(ApiError::NotAcceptable(
                    "bulk data is available as application/octet-stream".into(),
                ));
            }
            if single {
                return Ok(HttpResponse::Ok()
                    .content_type("application/octet-stream")
                    .insert_header(("Content-Location", location))
                    .insert_header((header::ACCEPT_RANGES, "bytes"))
                    .no_chunking(length)
                    .streaming(body));
            }
            vec![OutgoingPart {
                content_type: "application/octet-stream".into(),
                content_location: Some(location),
                body,
            }]
        }
        BulkBody::Bytes(bytes) => {
            if !choice.uncompressed {
                return Err(ApiError::NotAcceptable(
                    "bulk data is available as application/octet-stream".into(),
                ));
            }
            if single {
                return single_part_bulk(
                    &request,
                    location,
                    "application/octet-stream".into(),
                    bytes,
                );
            }
            vec![OutgoingPart {
                content_type: "application/octet-stream".into(),
                content_location: Some(location),
                body: stream::once(async move { Ok(bytes) }).boxed(),
            }]
        }
        BulkBody::Frames(frames) => {
            let frames = negotiate_frames(&state, &stored, frames, &choice).await?;
            let (part_type, _) = frame_part_type(&frames);
            if frames.media_type.is_none() {
                // Decoded: the native Pixel Data value, frames one after another.
                let bytes = Bytes::from(frames.frames.concat());
                if single {
                    return single_part_bulk(&request, location, part_type, bytes);
                }
                vec![OutgoingPart {
                    content_type: part_type,
                    content_location: Some(location),
                    body: stream::once(async move { Ok(bytes) }).boxed(),
                }]
            } else {
                frames
                    .frames
                    .into_iter()
                    .map(|frame| OutgoingPart {
                        content_type: part_type.clone(),
                        content_location: Some(location.clone()),
                        body: stream::once(async move { Ok(frame) }).boxed(),
                    })
                    .collect()
            }
        }
    };
    Ok(multipart_response(parts))
}

/// A multipart/related answer whose `type` is the first part's media type.
fn multipart_response(parts: Vec<OutgoingPart>) -> HttpResponse {
    let related_type = parts
        .first()
        .map(|p| {
            p.content_type
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "application/octet-stream".into());
    let boundary = new_boundary();
    let parts = parts.into_iter().map(Ok::<_, ServiceError>);
    HttpResponse::Ok()
        .content_type(format!(
            "multipart/related; type=\"{related_type}\"; boundary={boundary}"
        ))
        .streaming(multipart_body(boundary, stream::iter(parts).boxed()))
}

pub async fn frames(
    state: web::ReqData<AppState>,
    request: HttpRequest,
    path: web::Path<(String, String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    crate::http::protocol::target::check_path_uids(&request)?;
    let (study, series, instance, list) = path.into_inner();
    let max = state.services.settings.limits.max_frames_per_request;
    let numbers = wado::parse_frame_list(&list, max).map_err(|invalid| {
        ApiError::BadRequest(format!(
            "invalid frame list: {}; frame numbers start at 1, at most {max} of them",
            invalid.0
        ))
    })?;
    let choice = negotiate_bulk(&ranges(&request)?);
    let scope = Scope::Instance {
        study,
        series,
        instance,
    };
    let stored = wado::locate_one_for_reading(&state.services, scope).await?;
    let frames = wado::frames(&state.services, &stored, &numbers).await?;
    let frames = negotiate_frames(&state, &stored, frames, &choice).await?;
    let (part_type, _) = frame_part_type(&frames);
    let base = format!(
        "{}/frames",
        wado::instance_url(&state.base_url(&request), &stored)
    );
    let parts = numbers
        .iter()
        .zip(frames.frames)
        .map(|(n, frame)| OutgoingPart {
            content_type: part_type.clone(),
            content_location: Some(format!("{base}/{n}")),
            body: stream::once(async move { Ok(frame) }).boxed(),
        })
        .collect();
    Ok(multipart_response(parts))
}

/// Pixel data of a study, series or instance (PS3.18 §10.4.1.1.6).
pub async fn pixeldata(
    state: web::ReqData<AppState>,
    request: HttpRequest,
    target: Target,
) -> Result<HttpResponse, ApiError> {
    let scope = target.scope;
    let choice = negotiate_bulk(&ranges(&request)?);
    let instances: Vec<StoredInstance> = wado::locate_for_reading(&state.services, scope)
        .await?
        .into_iter()
        .filter(crate::service::render::has_pixel_data)
        .collect();
    if instances.is_empty() {
        return Err(ApiError::NotFound("there is no pixel data here".into()));
    }
    let base_url = state.base_url(&request);
    let mut parts = Vec::new();
    // Each instance's Pixel Data: native values streamed whole; compressed ones
    // as stored, one part per frame, or decoded into one native value.
    for instance in instances {
        let location = format!("{}/pixeldata", wado::instance_url(&base_url, &instance));
        match wado::bulkdata(&state.services, &instance, "7FE00010").await? {
            BulkBody::Frames(frames) => {
                let frames = negotiate_frames(&state, &instance, frames, &choice).await?;
                let (part_type, _) = frame_part_type(&frames);
                if frames.media_type.is_none() {
                    let bytes = Bytes::from(frames.frames.concat());
                    parts.push(OutgoingPart {
                        content_type: part_type,
                        content_location: Some(location),
                        body: stream::once(async move { Ok(bytes) }).boxed(),
                    });
                } else {
                    for frame in frames.frames {
                        parts.push(OutgoingPart {
                            content_type: part_type.clone(),
                            content_location: Some(location.clone()),
                            body: stream::once(async move { Ok(frame) }).boxed(),
                        });
                    }
                }
            }
            BulkBody::Stream { body, .. } if choice.uncompressed => parts.push(OutgoingPart {
                content_type: format!(
                    "application/octet-stream; transfer-syntax={}",
                    crate::dicom::transfer_syntax::EXPLICIT_VR_LE
                ),
                content_location: Some(location),
                body,
            }),
            BulkBody::Bytes(bytes) if choice.uncompressed => parts.push(OutgoingPart {
                content_type: format!(
                    "application/octet-stream; transfer-syntax={}",
                    crate::dicom::transfer_syntax::EXPLICIT_VR_LE
                ),
                content_location: Some(location),
                body: stream::once(async move { Ok(bytes) }).boxed(),
            }),
            _ => {
                return Err(ApiError::NotAcceptable(
                    "pixel data is available as application/octet-stream".into(),
                ))
            }
        }
    }
    Ok(multipart_response(parts))
}
