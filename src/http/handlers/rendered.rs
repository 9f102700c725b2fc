//! Rendered and thumbnail resources (PS3.18 §10.4.1.1.3–4, §8.3.5): the answers
//! at study, series, instance and frame level. Their query parameters and the
//! image type negotiation are in `protocol/rendering.rs`.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::stream::{self, BoxStream};
use futures_util::StreamExt;

use crate::dicom::render::ImageFormat;
use crate::http::error::ApiError;
use crate::http::protocol::accept::ranges;
use crate::http::protocol::multipart::{multipart_body, new_boundary, OutgoingPart};
use crate::http::protocol::query::query_pairs;
use crate::http::protocol::rendering::{negotiate_image, not_acceptable, parse_params};
use crate::http::protocol::target::Target;
use crate::http::state::AppState;
use crate::service::Scope;
use crate::service::ServiceError;
use crate::service::{render, restore, wado};

fn single_image(
    state: &AppState,
    request: &HttpRequest,
    format: ImageFormat,
    multipart: bool,
    image: bytes::Bytes,
    warning: Option<String>,
) -> HttpResponse {
    let path = request.path();
    let location = format!(
        "{}{}",
        state.base_url(request),
        path.strip_prefix(&state.route_prefix).unwrap_or(path)
    );
    let mut response = HttpResponse::Ok();
    if let Some(warning) = warning {
        response.insert_header((header::WARNING, state.warning(&warning)));
    }
    if !multipart {
        return response
            .content_type(format.media_type())
            .insert_header(("Content-Location", location))
            .body(image);
    }
    let boundary = new_boundary();
    let part = OutgoingPart {
        content_type: format.media_type().to_string(),
        content_location: Some(location),
        body: stream::once(async move { Ok(image) }).boxed(),
    };
    response
        .content_type(format!(
            "multipart/related; type=\"{}\"; boundary={boundary}",
            format.media_type()
        ))
        .streaming(multipart_body(
            boundary,
            stream::once(async move { Ok(part) }).boxed(),
        ))
}

/// Rendered study, series, instance or frames (PS3.18 §10.4.1.1.3).
pub async fn rendered(
    state: web::ReqData<AppState>,
    request: HttpRequest,
    target: Target,
) -> Result<HttpResponse, ApiError> {
    let Target { scope, frames } = target;
    let params = parse_params(&query_pairs(&request)?, false)?;
    let frame_numbers = match &frames {
        Some(list) => {
            let max = state.services.settings.limits.max_frames_per_request;
            Some(wado::parse_frame_list(list, max).map_err(|invalid| {
                ApiError::BadRequest(format!(
                    "invalid frame list: {}; frame numbers start at 1, at most {max} of them",
                    invalid.0
                ))
            })?)
        }
        None => None,
    };
    let ranges = ranges(&request)?;
    let single_item = matches!(scope, Scope::Instance { .. });
    let instances = wado::locate_for_reading(&state.services, scope).await?;
    if single_item && frame_numbers.is_none() && !render::has_pixel_data(&instances[0]) {
        // A report or an encapsulated document: rendered as text or as itself.
        let wanted: Vec<String> = ranges
            .iter()
            .map(|range| match range.related_type() {
                Some(related) if range.essence == "multipart/related" => related,
                _ => range.essence.clone(),
            })
            .collect();
        let (media_type, body) =
            render::render_document(&state.services, &instances[0], &wanted, &params.options)
                .await?;
        let mut response = HttpResponse::Ok();
        if let Some(warning) = params.warning {
            response.insert_header((header::WARNING, state.warning(&warning)));
        }
        // A document from an instance never runs on the archive's origin.
        response.insert_header((
            header::CONTENT_SECURITY_POLICY,
            crate::http::middleware::shield::SANDBOX_POLICY,
        ));
        if media_type == crate::dicom::document::UNLISTED_DOCUMENT_TYPE {
            response.insert_header((header::CONTENT_DISPOSITION, "attachment"));
        }
        return Ok(response.content_type(media_type).body(body));
    }
    let (format, multipart) = negotiate_image(&ranges).ok_or_else(not_acceptable)?;
    if single_item {
        let instance = &instances[0];
        let numbers = frame_numbers.unwrap_or_default();
        if numbers.len() <= 1 {
            let image = render::render_instance(
                &state.services,
                instance,
                numbers.first().copied(),
                format,
                &params.options,
            )
            .await?;
            return Ok(single_image(
                &state,
                &request,
                format,
                multipart,
                image,
                params.warning,
            ));
        }
        // Several frames: one part each.
        let base = wado::instance_url(&state.base_url(&request), instance);
        let mut parts = Vec::with_capacity(numbers.len());
        for n in numbers {
            let image = render::render_instance(
                &state.services,
                instance,
                Some(n),
                format,
                &params.options,
            )
            .await?;
            parts.push(Ok(OutgoingPart {
                content_type: format.media_type().to_string(),
                content_location: Some(format!("{base}/frames/{n}/rendered")),
                body: stream::once(async move { Ok(image) }).boxed(),
            }));
        }
        return Ok(multipart_response(
            &state,
            format,
            params.warning,
            stream::iter(parts).boxed(),
        ));
    }
    let base_url = state.base_url(&request);
    let mut images = render::render_each(state.services.clone(), instances, format, params.options);
    // The first image is rendered before answering: errors get a status.
    let first = images.next().await.ok_or_else(|| {
        ApiError::NotAcceptable("none of these instances has pixel data to render".into())
    })??;
    let parts = stream::once(async move { Ok(first) })
        .chain(images)
        .map(move |item| {
            let (instance, image) = item.map_err(wado::log_stream_failure)?;
            Ok(OutgoingPart {
                content_type: format.media_type().to_string(),
                content_location: Some(format!(
                    "{}/rendered",
                    wado::instance_url(&base_url, &instance)
                )),
                body: stream::once(async move { Ok(image) }).boxed(),
            })
        })
        .boxed();
    Ok(multipart_response(&state, format, params.warning, parts))
}

fn multipart_response(
    state: &AppState,
    format: ImageFormat,
    warning: Option<String>,
    parts: BoxStream<'static, Result<OutgoingPart, ServiceError>>,
) -> HttpResponse {
    let boundary = new_boundary();
    let mut response = HttpResponse::Ok();
    if let Some(warning) = warning {
        response.insert_header((header::WARNING, state.warning(&warning)));
    }
    response
        .content_type(format!(
            "multipart/related; type=\"{}\"; boundary={boundary}",
            format.media_type()
        ))
        .streaming(multipart_body(boundary, parts))
}

/// Thumbnail of a study, series, instance or frame (PS3.18 §10.4.1.1.4).
pub async fn thumbnail(
    state: web::ReqData<AppState>,
    request: HttpRequest,
    target: Target,
) -> Result<HttpResponse, ApiError> {
    let Target {
        scope,
        frames: frame,
    } = target;
    let params = parse_params(&query_pairs(&request)?, true)?;
    let frame = match &frame {
        Some(text) => match wado::parse_frame_list(text, 1) {
            Ok(list) if list.len() == 1 => Some(list[0]),
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "a thumbnail is of one frame; got {text:?}"
                )))
            }
        },
        None => None,
    };
    let (format, _) = negotiate_image(&ranges(&request)?).ok_or_else(not_acceptable)?;
    let instances = wado::locate(&state.services, scope.clone()).await?;
    let viewport = params.options.viewport.map(|v| (v.width, v.height));
    // Thumbnails are kept in the hot store (built before instances go to an
    // offline tier); one that must be made from an archived instance waits
    // for the restore of its study.
    let image = restore::when_archived(
        &state.services,
        &instances,
        render::thumbnail(&state.services, &scope, &instances, frame, format, viewport).await,
    )
    .await?;
    Ok(single_image(&state, &request, format, false, image, None))
}
