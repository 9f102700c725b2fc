//! WADO-RS (PS3.18 §10.4): instances, metadata and bulk data of studies, series
//! and instances.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::stream::{self, BoxStream};
use futures_util::StreamExt;

use super::accept::{
    acceptable, accepts_dicom_json, negotiate_bulk, negotiate_instances, MediaRange,
};
use super::error::ApiError;
use super::multipart::{multipart_body, new_boundary, OutgoingPart};
use super::{query_pairs, AppState};
use crate::index::{Scope, StoredInstance};
use crate::service::wado::{self, BulkBody, Representation};
use crate::service::ServiceError;
use crate::store::StoreError;

fn ranges(request: &HttpRequest) -> Result<Vec<MediaRange>, ApiError> {
    let query_accept: Vec<String> = query_pairs(request)?
        .into_iter()
        .filter(|(name, _)| name == "accept")
        .map(|(_, value)| value)
        .collect();
    let header_value = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    Ok(acceptable(&query_accept, header_value))
}

pub async fn retrieve_study(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    retrieve(
        state,
        request,
        Scope::Study {
            study: path.into_inner(),
        },
    )
    .await
}

pub async fn retrieve_series(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (study, series) = path.into_inner();
    retrieve(state, request, Scope::Series { study, series }).await
}

pub async fn retrieve_instance(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (study, series, instance) = path.into_inner();
    retrieve(
        state,
        request,
        Scope::Instance {
            study,
            series,
            instance,
        },
    )
    .await
}

async fn retrieve(
    state: web::Data<AppState>,
    request: HttpRequest,
    scope: Scope,
) -> Result<HttpResponse, ApiError> {
    let single_allowed = matches!(scope, Scope::Instance { .. });
    let choice = negotiate_instances(&ranges(&request)?, single_allowed).ok_or_else(|| {
        ApiError::NotAcceptable(
            "instances are available as multipart/related; type=\"application/dicom\"".into(),
        )
    })?;
    let instances = wado::locate(&state.services, scope).await?;
    // Choose every part's representation before sending anything: a part that
    // cannot be produced makes the whole answer 406, not a broken stream.
    let mut plan: Vec<(StoredInstance, Representation)> = Vec::with_capacity(instances.len());
    for instance in instances {
        let representation = choice
            .transfer_syntaxes
            .iter()
            .find_map(|ts| wado::representation_for(&instance.transfer_syntax_uid, ts))
            .ok_or_else(|| {
                ApiError::NotAcceptable(format!(
                    "an instance is stored in transfer syntax {} and cannot be sent in {} (transcoding is not supported yet); \
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
        let (instance, representation) = plan.into_iter().next().expect("located at least one");
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
    let (first, first_representation) = plan.next().expect("located at least one");
    let first_body = wado::instance_body(&services, &first, first_representation).await?;
    let first_part = part(&first, first_representation, &base_url, first_body);
    let rest = stream::iter(plan).then(move |(instance, representation)| {
        let services = services.clone();
        let base_url = base_url.clone();
        async move {
            let body = wado::instance_body(&services, &instance, representation)
                .await
                .map_err(to_store_error)?;
            Ok(part(&instance, representation, &base_url, body))
        }
    });
    let parts: BoxStream<'static, Result<OutgoingPart, StoreError>> =
        stream::once(async move { Ok(first_part) })
            .chain(rest)
            .boxed();
    Ok(HttpResponse::Ok()
        .content_type(format!(
            "multipart/related; type=\"application/dicom\"; boundary={boundary}"
        ))
        .streaming(multipart_body(boundary, parts)))
}

/// Errors after the response started can only end the stream; log the cause.
fn to_store_error(error: ServiceError) -> StoreError {
    tracing::error!(%error, "retrieval failed while streaming");
    match error {
        ServiceError::Store(e) => e,
        other => StoreError::Io(std::io::Error::other(other.to_string())),
    }
}

pub async fn study_metadata(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    metadata(
        state,
        request,
        Scope::Study {
            study: path.into_inner(),
        },
    )
    .await
}

pub async fn series_metadata(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (study, series) = path.into_inner();
    metadata(state, request, Scope::Series { study, series }).await
}

pub async fn instance_metadata(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (study, series, instance) = path.into_inner();
    metadata(
        state,
        request,
        Scope::Instance {
            study,
            series,
            instance,
        },
    )
    .await
}

async fn metadata(
    state: web::Data<AppState>,
    request: HttpRequest,
    scope: Scope,
) -> Result<HttpResponse, ApiError> {
    if !accepts_dicom_json(&ranges(&request)?) {
        return Err(ApiError::NotAcceptable(
            "metadata is available as application/dicom+json".into(),
        ));
    }
    let instances = wado::locate(&state.services, scope).await?;
    let base_url = state.base_url(&request);
    // Viewers fetch series metadata on every study open: an unchanged series is
    // answered 304 without reading a single blob.
    let etag = wado::metadata_etag(&instances, &base_url);
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
            .finish());
    }
    // One JSON array, written as each instance's metadata arrives.
    let mut items = wado::metadata_stream(state.services.clone(), instances, base_url);
    // The first item is produced before answering, so an unreadable object gets a
    // status (410, 500) rather than a cut-off array.
    let first = items.next().await.expect("located at least one")?;
    let body = stream::once(async move { Ok(first) })
        .chain(items)
        .enumerate()
        .map(|(i, item)| {
            let item = item.map_err(to_store_error)?;
            let mut bytes = Vec::with_capacity(4096);
            bytes.push(if i == 0 { b'[' } else { b',' });
            serde_json::to_writer(&mut bytes, &item).map_err(|e| StoreError::Io(e.into()))?;
            Ok::<Bytes, StoreError>(Bytes::from(bytes))
        })
        .chain(stream::once(async { Ok(Bytes::from_static(b"]")) }));
    Ok(HttpResponse::Ok()
        .content_type("application/dicom+json")
        .insert_header((header::ETAG, etag))
        .streaming(body))
}

pub async fn bulkdata(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<(String, String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (study, series, instance, bulk_path) = path.into_inner();
    let choice = negotiate_bulk(&ranges(&request)?);
    let scope = Scope::Instance {
        study,
        series,
        instance,
    };
    let stored = wado::locate_one(&state.services, scope).await?;
    let body = wado::bulkdata(&state.services, &stored, &bulk_path).await?;
    let location = format!(
        "{}/bulkdata/{}",
        wado::instance_url(&state.base_url(&request), &stored),
        bulk_path
    );
    let boundary = new_boundary();
    let mut related_type = "application/octet-stream";
    let parts: Vec<Result<OutgoingPart, StoreError>> = match body {
        BulkBody::Stream { body, .. } => {
            if !choice.uncompressed {
                return Err(ApiError::NotAcceptable(
                    "bulk data is available as application/octet-stream".into(),
                ));
            }
            vec![Ok(OutgoingPart {
                content_type: "application/octet-stream".into(),
                content_location: Some(location),
                body,
            })]
        }
        BulkBody::Bytes(bytes) => {
            if !choice.uncompressed {
                return Err(ApiError::NotAcceptable(
                    "bulk data is available as application/octet-stream".into(),
                ));
            }
            vec![Ok(OutgoingPart {
                content_type: "application/octet-stream".into(),
                content_location: Some(location),
                body: stream::once(async move { Ok(bytes) }).boxed(),
            })]
        }
        BulkBody::Frames {
            media_type,
            transfer_syntax,
            frames,
        } => {
            if !(choice.any_compressed || choice.compressed_types.iter().any(|t| t == media_type)) {
                return Err(ApiError::NotAcceptable(format!(
                    "this pixel data is stored compressed ({media_type}; transfer-syntax={transfer_syntax}); \
                     request transfer-syntax=* or {media_type}"
                )));
            }
            related_type = media_type;
            frames
                .into_iter()
                .map(|frame| {
                    Ok(OutgoingPart {
                        content_type: format!("{media_type}; transfer-syntax={transfer_syntax}"),
                        content_location: Some(location.clone()),
                        body: stream::once(async move { Ok(frame) }).boxed(),
                    })
                })
                .collect()
        }
    };
    Ok(HttpResponse::Ok()
        .content_type(format!(
            "multipart/related; type=\"{related_type}\"; boundary={boundary}"
        ))
        .streaming(multipart_body(boundary, stream::iter(parts).boxed())))
}

pub async fn frames(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<(String, String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (study, series, instance, list) = path.into_inner();
    let numbers = wado::parse_frame_list(&list).map_err(|_| {
        ApiError::BadRequest(format!(
            "invalid frame list {list:?}: frame numbers start at 1"
        ))
    })?;
    let choice = negotiate_bulk(&ranges(&request)?);
    let scope = Scope::Instance {
        study,
        series,
        instance,
    };
    let stored = wado::locate_one(&state.services, scope).await?;
    let frames = wado::frames(&state.services, &stored, &numbers).await?;
    let (part_type, related_type) = match frames.media_type {
        None if choice.uncompressed => (
            format!("application/octet-stream; transfer-syntax={}", frames.transfer_syntax),
            "application/octet-stream",
        ),
        Some(media) if choice.any_compressed || choice.compressed_types.iter().any(|t| t == media) => {
            (format!("{media}; transfer-syntax={}", frames.transfer_syntax), media)
        }
        Some(media) => {
            return Err(ApiError::NotAcceptable(format!(
                "these frames are stored compressed ({media}; transfer-syntax={}) and transcoding is not supported yet; \
                 request transfer-syntax=* or {media}",
                frames.transfer_syntax
            )))
        }
        None => return Err(ApiError::NotAcceptable("frames are available as application/octet-stream".into())),
    };
    let base = format!(
        "{}/frames",
        wado::instance_url(&state.base_url(&request), &stored)
    );
    let parts: Vec<Result<OutgoingPart, StoreError>> = numbers
        .iter()
        .zip(frames.frames)
        .map(|(n, frame)| {
            Ok(OutgoingPart {
                content_type: part_type.clone(),
                content_location: Some(format!("{base}/{n}")),
                body: stream::once(async move { Ok(frame) }).boxed(),
            })
        })
        .collect();
    let boundary = new_boundary();
    Ok(HttpResponse::Ok()
        .content_type(format!(
            "multipart/related; type=\"{related_type}\"; boundary={boundary}"
        ))
        .streaming(multipart_body(boundary, stream::iter(parts).boxed())))
}
