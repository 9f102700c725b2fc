//! WADO-RS: locating instances and streaming them as stored (or re-encoded when
//! the stored encoding may not go on the wire). Their metadata, bulk data and
//! frames are in the files beside this one.

mod ahead;
mod bulk;
mod frames;
mod metadata;

pub use ahead::{bodies_ahead, Opened, Planned};
pub use bulk::{bulkdata, is_native_pixel_data_path, parse_bulk_path, pixel_data_range, BulkBody};
pub use frames::{decode_frames, frames, parse_frame_list, Frames, InvalidFrame};
pub use metadata::{
    metadata, metadata_body, metadata_etag, metadata_records, metadata_stream,
    open_metadata_record, seal_metadata_record, warm_series,
};

use bytes::Bytes;
use dicom_object::InMemDicomObject;
use futures_util::stream::{self, BoxStream};
use futures_util::{StreamExt, TryStreamExt};

use super::{ServiceError, Services};
use crate::dicom::header::parse_file_meta;
use crate::dicom::pixels;
use crate::dicom::{fragments, instance, transfer_syntax, DicomError};
use crate::index::StoredInstance;
use crate::service::Scope;
use crate::store::BlobKey;

/// How an instance is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Representation {
    /// The stored bytes, unchanged.
    AsStored,
    /// Re-encoded in Explicit VR Little Endian (native pixel data only).
    ExplicitLittleEndian,
    /// Transcoded by dicom-rs into this syntax (compressed pixel data decoded,
    /// or native pixel data written in a lossless syntax).
    Transcoded(&'static str),
}

/// A body as the service layer streams it; an error ends the stream (the
/// response has started: the cause is logged by [`log_stream_failure`]).
pub type ByteStream = BoxStream<'static, Result<Bytes, ServiceError>>;

/// The instances in a scope; `NotFound` when there are none.
pub async fn locate(
    services: &Services,
    scope: Scope,
) -> Result<Vec<StoredInstance>, ServiceError> {
    let what = match scope {
        Scope::Study { .. } => "study",
        Scope::Series { .. } => "series",
        Scope::Instance { .. } => "instance",
    };
    let lookup = scope.clone();
    let instances = services
        .with_index(move |index| index.instances(&scope))
        .await?;
    if instances.is_empty() {
        let deleted = services
            .with_index(move |index| index.was_deleted(&lookup))
            .await?;
        return Err(if deleted {
            ServiceError::Gone(what)
        } else {
            ServiceError::NotFound(what)
        });
    }
    Ok(instances)
}

/// The instances of a scope whose objects a retrieval reads: as [`locate`],
/// and each readable now (an instance in an offline tier must have been
/// restored: else the answer is 503 and the restore of its study is asked
/// for, see `restore`). The retrieval is noted for move rules on the time
/// since the last one.
pub async fn locate_for_reading(
    services: &Services,
    scope: Scope,
) -> Result<Vec<StoredInstance>, ServiceError> {
    let instances = locate(services, scope).await?;
    super::restore::note_retrieved(services, &instances).await;
    super::restore::ensure_readable(services, &instances).await?;
    Ok(instances)
}

/// The one instance of an instance scope, readable now (see [`locate_for_reading`]).
pub async fn locate_one_for_reading(
    services: &Services,
    scope: Scope,
) -> Result<StoredInstance, ServiceError> {
    let instance = locate_for_reading(services, scope)
        .await?
        .into_iter()
        .next();
    instance.ok_or(ServiceError::NotFound("instance"))
}

/// The one instance of an instance scope.
pub async fn locate_one(services: &Services, scope: Scope) -> Result<StoredInstance, ServiceError> {
    let instance = locate(services, scope).await?.into_iter().next();
    instance.ok_or(ServiceError::NotFound("instance"))
}

pub(super) fn blob_key(instance: &StoredInstance) -> Result<BlobKey, ServiceError> {
    Ok(BlobKey::parse(&instance.blob_key)?)
}

/// Which representations of a stored instance can be produced for a requested
/// transfer syntax (`*` = any).
pub fn representation_for(instance: &StoredInstance, requested: &str) -> Option<Representation> {
    let stored_syntax = instance.transfer_syntax_uid.as_str();
    let forbidden = transfer_syntax::is_forbidden_on_the_wire(stored_syntax);
    match requested {
        "*" if forbidden => Some(Representation::ExplicitLittleEndian),
        "*" => Some(Representation::AsStored),
        r if r == stored_syntax && !forbidden => Some(Representation::AsStored),
        transfer_syntax::EXPLICIT_VR_LE if transfer_syntax::is_native(stored_syntax) => {
            Some(Representation::ExplicitLittleEndian)
        }
        r if pixels::can_transcode(stored_syntax, r)
            && (transfer_syntax::is_native(stored_syntax)
                || pixels::can_decode_samples(stored_syntax, instance.bits_allocated)) =>
        {
            pixels::writable_syntax(r).map(Representation::Transcoded)
        }
        _ => None,
    }
}

/// The transfer syntax a representation of an instance is in.
pub fn syntax_of(instance: &StoredInstance, representation: Representation) -> &str {
    match representation {
        Representation::AsStored => &instance.transfer_syntax_uid,
        Representation::ExplicitLittleEndian => transfer_syntax::EXPLICIT_VR_LE,
        Representation::Transcoded(target) => target,
    }
}

/// The bytes of one instance in the chosen representation.
/// Whether `instance` goes out in `representation` as its stored bytes (a
/// stream from the blob store, no re-encoding in memory).
pub fn is_passthrough(instance: &StoredInstance, representation: Representation) -> bool {
    representation == Representation::AsStored
        || (representation == Representation::ExplicitLittleEndian
            && instance.transfer_syntax_uid == transfer_syntax::EXPLICIT_VR_LE)
}

pub async fn instance_body(
    services: &Services,
    instance: &StoredInstance,
    representation: Representation,
) -> Result<ByteStream, ServiceError> {
    let key = blob_key(instance)?;
    if is_passthrough(instance, representation) {
        // Decrypt the first segment now: a damaged object fails here, with a
        // status, rather than after the response has started.
        let mut stream = services
            .store
            .read_stream(&key)
            .await?
            .map_err(ServiceError::from);
        return Ok(match stream.next().await {
            Some(Ok(first)) => stream::once(async move { Ok(first) }).chain(stream).boxed(),
            Some(Err(error)) => return Err(error),
            None => stream::empty().boxed(),
        });
    }
    // Re-encoding needs the whole object; this holds one instance, never a study.
    // What it holds (the object, its parsed form, the output and, transcoding,
    // the decoded pixels) is taken from the shared decoding budget first.
    let decoded = match representation {
        Representation::Transcoded(_) => {
            let header = read_header(services, instance).await?;
            let shape = instance::PixelShape::of(&header);
            shape.decoded_bytes(shape.frames)
        }
        _ => 0,
    };
    let cost = (instance.blob_size.max(0) as u64)
        .saturating_mul(3)
        .saturating_add(decoded.saturating_mul(2));
    let _permit = services.settings.decoding.take(cost)?;
    let file = services.store.read_all(&key).await?;
    let reencoded = tokio::task::spawn_blocking(move || {
        let meta = parse_file_meta(&file)?.ok_or(DicomError::Truncated)?;
        match representation {
            Representation::Transcoded(target) => pixels::transcode(&file, &meta, target),
            _ => instance::reencode_explicit_le(&file, &meta),
        }
    })
    .await
    .map_err(|e| ServiceError::Task(e.to_string()))??;
    Ok(stream::once(async move { Ok(Bytes::from(reencoded)) }).boxed())
}

/// The URL of an instance under `base_url`.
pub fn instance_url(base_url: &str, instance: &StoredInstance) -> String {
    format!(
        "{base_url}/studies/{}/series/{}/instances/{}",
        instance.study_instance_uid, instance.series_instance_uid, instance.sop_instance_uid
    )
}

/// The data set of an instance without its Pixel Data (one ranged read).
pub async fn read_header(
    services: &Services,
    instance: &StoredInstance,
) -> Result<InMemDicomObject, ServiceError> {
    let key = blob_key(instance)?;
    let bytes = services
        .store
        .read_range(&key, 0..instance.header_length as u64)
        .await?;
    let dataset = tokio::task::spawn_blocking(move || {
        let meta = parse_file_meta(&bytes)?.ok_or(DicomError::Truncated)?;
        instance::parse_header(&bytes, &meta).map(|h| h.dataset)
    })
    .await
    .map_err(|e| ServiceError::Task(e.to_string()))??;
    Ok(dataset)
}

/// Reverses the bytes of each `width`-byte word.
pub(super) fn swap_words(chunk: &[u8], width: usize) -> Bytes {
    let mut out = chunk.to_vec();
    for word in out.chunks_exact_mut(width) {
        word.reverse();
    }
    Bytes::from(out)
}

/// The elements after Pixel Data, if the object has any. (After encapsulated Pixel
/// Data stored before frames were indexed, the end is unknown; not shown.)
pub(super) async fn read_trailer(
    services: &Services,
    instance: &StoredInstance,
) -> Result<Option<InMemDicomObject>, ServiceError> {
    let end = match (
        instance.pixel_data_offset,
        instance.pixel_data_length,
        frame_boundaries(instance),
    ) {
        (Some(offset), Some(length), _) => (offset + length) as u64,
        // After encapsulated pixel data: past the sequence delimiter item.
        (Some(_), None, Some(boundaries)) => boundaries.last().copied().unwrap_or(0) + 8,
        _ => return Ok(None),
    };
    if end >= instance.blob_size as u64 {
        return Ok(None);
    }
    let key = blob_key(instance)?;
    let bytes = services
        .store
        .read_range(&key, end..instance.blob_size as u64)
        .await?;
    let syntax = instance.transfer_syntax_uid.clone();
    let trailer = tokio::task::spawn_blocking(move || instance::parse_trailer(&bytes, &syntax))
        .await
        .map_err(|e| ServiceError::Task(e.to_string()))?;
    match trailer {
        Ok(trailer) => Ok(Some(trailer)),
        Err(error) => {
            tracing::warn!(%error, "unreadable elements after Pixel Data are left out of metadata");
            Ok(None)
        }
    }
}

/// The frame index recorded at STOW, if any.
pub(super) fn frame_boundaries(instance: &StoredInstance) -> Option<Vec<u64>> {
    instance
        .frame_offsets
        .as_deref()
        .and_then(fragments::parse_boundaries)
}

/// Errors after a response started can only end its stream; the cause is logged.
pub fn log_stream_failure(error: ServiceError) -> ServiceError {
    tracing::error!(%error, "retrieval failed while streaming");
    error
}
