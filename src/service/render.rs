//! Rendered and thumbnail resources: frames decoded and rendered for people
//! (`dicom::render`), and thumbnails kept encrypted in the blob store as derived
//! objects so a study list does not decode a study per row.

use bytes::Bytes;
use futures_util::stream::{self, BoxStream};
use futures_util::StreamExt;

use super::wado::{self, Frames};
use super::{derived, ServiceError, Services};
use crate::dicom::document::{self, TextFormat};
use crate::dicom::pixels::FramePixels;
use crate::dicom::render::{self, Annotation, ImageFormat, RenderOptions, Viewport};
use crate::dicom::transfer_syntax;
use crate::index::StoredInstance;
use crate::service::Scope;

/// The box a thumbnail fits in when the client names no viewport.
pub const THUMBNAIL_SIZE: u32 = 128;

/// The square thumbnail viewports kept as derived objects (`viewport=s,s`).
pub const CACHED_THUMBNAIL_SIZES: [u32; 4] = [64, 128, 256, 512];

/// Whether an instance has pixel data to render.
pub fn has_pixel_data(instance: &StoredInstance) -> bool {
    instance.bits_allocated.is_some()
        && (instance.pixel_data_offset.is_some()
            || transfer_syntax::encoding_of(&instance.transfer_syntax_uid).deflated)
}

fn frame_count(instance: &StoredInstance) -> u64 {
    instance.number_of_frames.unwrap_or(1).max(1) as u64
}

fn to_pixels(frames: Frames) -> Vec<FramePixels> {
    let syntax = frames.transfer_syntax;
    let compressed = frames.media_type.is_some();
    frames
        .frames
        .into_iter()
        .map(|data| {
            if compressed {
                FramePixels::Encapsulated {
                    transfer_syntax: syntax.clone(),
                    data,
                }
            } else {
                FramePixels::Native(data)
            }
        })
        .collect()
}

/// Renders an instance that is a document rather than an image, in the first of
/// `wanted` (media types in the client's order of preference, wildcards
/// included) it can be had in: a Structured Report as text/html (for
/// wildcards) or text/plain, naming the patient only with
/// `annotation=patient`; an Encapsulated Document as the document it holds.
/// Returns the media type and the body.
pub async fn render_document(
    services: &Services,
    instance: &StoredInstance,
    wanted: &[String],
    options: &RenderOptions,
) -> Result<(String, Bytes), ServiceError> {
    let header = wado::read_header(services, instance).await?;
    if let Some((media_type, bytes)) = document::encapsulated_document(&header) {
        let (kind, _) = media_type
            .split_once('/')
            .unwrap_or((media_type.as_str(), ""));
        let acceptable = wanted
            .iter()
            .any(|w| w == &media_type || w == "*/*" || w.strip_suffix("/*") == Some(kind));
        return if acceptable {
            Ok((media_type, Bytes::from(bytes)))
        } else {
            Err(ServiceError::NotAcceptable(format!(
                "this instance holds a document of type {media_type}"
            )))
        };
    }
    if !document::is_structured_report(&header) {
        return Err(ServiceError::NotAcceptable(
            "this instance has neither pixel data nor a document to render".into(),
        ));
    }
    let format = wanted
        .iter()
        .find_map(|w| match w.as_str() {
            "text/html" | "text/*" | "*/*" => Some(TextFormat::Html),
            "text/plain" => Some(TextFormat::Plain),
            _ => None,
        })
        .ok_or_else(|| {
            ServiceError::NotAcceptable(
                "a structured report renders as text/html or text/plain".into(),
            )
        })?;
    let with_patient = options.annotations.contains(&Annotation::Patient);
    let text = document::render_report(&header, format, with_patient);
    Ok((
        format!("{}; charset=utf-8", format.media_type()),
        Bytes::from(text),
    ))
}

/// Renders one instance: frame `frame` (1-based), or without one, the first frame
/// (JPEG, PNG) or every frame as an animation (GIF).
pub async fn render_instance(
    services: &Services,
    instance: &StoredInstance,
    frame: Option<u64>,
    format: ImageFormat,
    options: &RenderOptions,
) -> Result<Bytes, ServiceError> {
    if !has_pixel_data(instance) {
        return Err(ServiceError::NotAcceptable(
            "this instance has no pixel data to render".into(),
        ));
    }
    let count = frame_count(instance);
    if frame.is_some_and(|n| n > count) {
        return Err(ServiceError::NotFound("frame"));
    }
    let header = wado::read_header(services, instance).await?;
    let rendered_frames = match frame {
        None if format == ImageFormat::Gif => count,
        _ => 1,
    };
    // What decoding and rendering will hold, checked before anything is decoded
    // (and before the frame list is made: NumberOfFrames comes from the instance).
    let _permit = services.settings.decoding.take(render_cost(
        &header,
        options,
        rendered_frames,
        &services.settings.limits,
    )?)?;
    let numbers: Vec<u64> = match frame {
        Some(n) => vec![n],
        None if format == ImageFormat::Gif => (1..=count).collect(),
        None => vec![1],
    };
    let frames = to_pixels(wado::frames(services, instance, &numbers).await?);
    let options = options.clone();
    let delay_ms = crate::dicom::instance::text(&header, dicom_dictionary_std::tags::FRAME_TIME)
        .and_then(|t| t.trim().parse::<f64>().ok())
        .map_or(100, |ms| ms.round() as u32);
    let image = tokio::task::spawn_blocking(move || {
        let rendered = frames
            .into_iter()
            .zip(numbers)
            .map(|(pixels, n)| render::render_frame(&header, pixels, n, &options))
            .collect::<Result<Vec<_>, _>>()?;
        render::encode(rendered, format, options.quality, delay_ms)
    })
    .await
    .map_err(|e| ServiceError::Task(e.to_string()))??;
    Ok(Bytes::from(image))
}

/// The decoded bytes rendering `frames` frames of an instance holds (its
/// samples as decoded, plus the RGBA image rendered from each), refused when one
/// frame or the output is larger than the configured pixel budget or the whole
/// is larger than the per-rendering byte budget.
fn render_cost(
    header: &dicom_object::InMemDicomObject,
    options: &RenderOptions,
    frames: u64,
    limits: &crate::config::LimitsConfig,
) -> Result<u64, ServiceError> {
    let shape = crate::dicom::instance::PixelShape::of(header);
    let (rows, columns) = (shape.rows, shape.columns);
    let source_pixels = shape.pixels_per_frame();
    if source_pixels > limits.max_render_pixels {
        return Err(ServiceError::TooLarge(format!(
            "the image has {rows} x {columns} pixels; at most {} are rendered",
            limits.max_render_pixels
        )));
    }
    let output_pixels = match &options.viewport {
        Some(viewport) => u64::from(viewport.width) * u64::from(viewport.height),
        None => source_pixels,
    };
    if output_pixels > limits.max_render_pixels {
        return Err(ServiceError::TooLarge(format!(
            "the viewport asks for {output_pixels} pixels; at most {} are rendered",
            limits.max_render_pixels
        )));
    }
    // The decoded samples, the RGBA image made of them, the output image.
    let per_frame = shape
        .decoded_bytes(1)
        .saturating_add(source_pixels.saturating_mul(4))
        .saturating_add(output_pixels.saturating_mul(4));
    let total = per_frame.saturating_mul(frames);
    if total > limits.max_render_bytes {
        return Err(ServiceError::TooLarge(format!(
            "rendering {frames} frame(s) of {rows} x {columns} needs {total} bytes; \
             at most {} are spent on one rendering (ask for one frame)",
            limits.max_render_bytes
        )));
    }
    Ok(total)
}

/// Renders each instance of a study or series in turn (instances without pixel
/// data are skipped), for a multipart answer.
pub fn render_each(
    services: Services,
    instances: Vec<StoredInstance>,
    format: ImageFormat,
    options: RenderOptions,
) -> BoxStream<'static, Result<(StoredInstance, Bytes), ServiceError>> {
    stream::iter(instances.into_iter().filter(has_pixel_data))
        .map(move |instance| {
            let services = services.clone();
            let options = options.clone();
            async move {
                let image = render_instance(&services, &instance, None, format, &options).await?;
                Ok((instance, image))
            }
        })
        .buffered(2)
        .boxed()
}

/// The instance a study or series thumbnail shows: the middle image of the first
/// series that has images.
pub fn representative(instances: &[StoredInstance]) -> Option<&StoredInstance> {
    let first_series = &instances
        .iter()
        .find(|i| has_pixel_data(i))?
        .series_instance_uid;
    let images: Vec<&StoredInstance> = instances
        .iter()
        .filter(|i| &i.series_instance_uid == first_series && has_pixel_data(i))
        .collect();
    images.get(images.len() / 2).copied()
}

/// A thumbnail of a scope: one small image, no annotation (so no patient data),
/// cached as an encrypted derived blob until the source instance changes.
pub async fn thumbnail(
    services: &Services,
    scope: &Scope,
    instances: &[StoredInstance],
    frame: Option<u64>,
    format: ImageFormat,
    viewport: Option<(u32, u32)>,
) -> Result<Bytes, ServiceError> {
    let instance = representative(instances).ok_or_else(|| {
        ServiceError::NotAcceptable("there is no image to make a thumbnail of".into())
    })?;
    if frame.is_some_and(|n| n > frame_count(instance)) {
        return Err(ServiceError::NotFound("frame"));
    }
    let (width, height) = viewport.unwrap_or((THUMBNAIL_SIZE, THUMBNAIL_SIZE));
    // Only the default box and a few square sizes are kept, so that clients
    // asking for many sizes cannot mint a cached object per size; other
    // viewports are rendered each time (within the rendering budgets).
    let cached = viewport.is_none() || (width == height && CACHED_THUMBNAIL_SIZES.contains(&width));
    let variant = format!(
        "{}:{}x{}:{}",
        format.media_type(),
        width,
        height,
        frame.unwrap_or(0)
    );
    let etag = format!("{}:{}", instance.sop_instance_uid, instance.content_sha256);
    let scope_uid = match scope {
        Scope::Study { study } => study,
        Scope::Series { series, .. } => series,
        Scope::Instance { instance, .. } => instance,
    };
    if cached {
        if let Some(bytes) =
            derived::read(services, scope_uid, "thumbnail", &variant, &etag).await?
        {
            return Ok(bytes);
        }
    }
    let options = RenderOptions {
        viewport: Some(Viewport {
            width,
            height,
            source: None,
        }),
        ..RenderOptions::default()
    };
    // A default thumbnail never enlarges a small image.
    let options = if viewport.is_none() {
        RenderOptions {
            viewport: None,
            max_columns: Some(width),
            max_rows: Some(height),
            ..options
        }
    } else {
        options
    };
    let image = render_instance(
        services,
        instance,
        Some(frame.unwrap_or(1)),
        format,
        &options,
    )
    .await?;
    if !cached {
        return Ok(image);
    }
    derived::write(
        services,
        scope_uid,
        "thumbnail",
        &variant,
        &etag,
        stream::iter([Ok::<_, ServiceError>(image.clone())]).boxed(),
    )
    .await?;
    Ok(image)
}
