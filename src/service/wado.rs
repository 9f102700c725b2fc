//! WADO-RS: locating instances, streaming them as stored (or re-encoded when the
//! stored encoding may not go on the wire), their metadata, and their bulk data.

use bytes::Bytes;
use dicom_core::value::Value;
use dicom_core::Tag;
use dicom_object::InMemDicomObject;
use futures_util::stream::{self, BoxStream};
use futures_util::{StreamExt, TryStreamExt};
use serde_json::{Map, Value as Json};

use super::{derived, ServiceError, Services};
use crate::dicom::header::parse_file_meta;
use crate::dicom::pixels::{self, FramePixels};
use crate::dicom::{fragments, instance, json as dicom_json, transfer_syntax, DicomError};
use crate::index::{Scope, StoredInstance};
use crate::store::{BlobKey, StoreError};

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

pub type ByteStream = BoxStream<'static, Result<Bytes, StoreError>>;

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

/// The one instance of an instance scope.
pub async fn locate_one(services: &Services, scope: Scope) -> Result<StoredInstance, ServiceError> {
    let instance = locate(services, scope).await?.into_iter().next();
    instance.ok_or(ServiceError::NotFound("instance"))
}

fn blob_key(instance: &StoredInstance) -> Result<BlobKey, ServiceError> {
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
pub async fn instance_body(
    services: &Services,
    instance: &StoredInstance,
    representation: Representation,
) -> Result<ByteStream, ServiceError> {
    let key = blob_key(instance)?;
    let already = representation == Representation::AsStored
        || (representation == Representation::ExplicitLittleEndian
            && instance.transfer_syntax_uid == transfer_syntax::EXPLICIT_VR_LE);
    if already {
        // Decrypt the first segment now: a damaged object fails here, with a
        // status, rather than after the response has started.
        let mut stream = services.store.read_stream(&key).await?;
        return Ok(match stream.next().await {
            Some(Ok(first)) => stream::once(async move { Ok(first) }).chain(stream).boxed(),
            Some(Err(error)) => return Err(error.into()),
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

/// An entity tag for the metadata of `instances` as seen from `base_url`: it
/// changes whenever an instance is added, replaced or removed (the content hashes
/// are in it), so a client may revalidate with If-None-Match.
pub fn metadata_etag(instances: &[StoredInstance], base_url: &str) -> String {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    digest.update(b"kastell-metadata-v1\0");
    digest.update(base_url.as_bytes());
    for instance in instances {
        digest.update(instance.sop_instance_uid.as_bytes());
        digest.update(instance.content_sha256.as_bytes());
    }
    format!("\"{}\"", hex::encode(&digest.finish().as_ref()[..16]))
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

/// The DICOM JSON metadata of one instance: every attribute but the file meta
/// group, bulk values (and Pixel Data) as BulkDataURIs.
pub async fn metadata(
    services: &Services,
    instance: &StoredInstance,
    base_url: &str,
) -> Result<Json, ServiceError> {
    let dataset = read_header(services, instance).await?;
    let trailer = read_trailer(services, instance).await?;
    let url = instance_url(base_url, instance);
    let mut json: Map<String, Json> =
        dicom_json::dataset_to_json(&dataset, &|path| format!("{url}/bulkdata/{path}"));
    if instance.pixel_data_offset.is_some() {
        let vr = if transfer_syntax::is_native(&instance.transfer_syntax_uid)
            && instance.bits_allocated.unwrap_or(8) > 8
        {
            "OW"
        } else {
            "OB"
        };
        json.insert(
            "7FE00010".into(),
            serde_json::json!({"vr": vr, "BulkDataURI": format!("{url}/bulkdata/7FE00010")}),
        );
    }
    if let Some(trailer) = trailer {
        json.extend(dicom_json::dataset_to_json(&trailer, &|path| {
            format!("{url}/bulkdata/{path}")
        }));
    }
    Ok(Json::Object(json))
}

/// The elements after Pixel Data, if the object has any. (After encapsulated Pixel
/// Data stored before frames were indexed, the end is unknown; not shown.)
async fn read_trailer(
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

/// The metadata of many instances, fetched a few at a time, in order.
pub fn metadata_stream(
    services: Services,
    instances: Vec<StoredInstance>,
    base_url: String,
) -> BoxStream<'static, Result<Json, ServiceError>> {
    stream::iter(instances)
        .map(move |instance| {
            let services = services.clone();
            let base_url = base_url.clone();
            async move { metadata(&services, &instance, &base_url).await }
        })
        .buffered(8)
        .boxed()
}

/// The metadata of `instances` as one DICOM JSON array. Series are answered from
/// their cached derived object when it is current for this base URL, otherwise
/// built from each instance's header and kept for next time. The first bytes are
/// produced before returning, so an unreadable object gets a status (410, 500)
/// rather than a cut-off array.
pub async fn metadata_body(
    services: &Services,
    instances: Vec<StoredInstance>,
    base_url: &str,
) -> Result<ByteStream, ServiceError> {
    let mut groups: Vec<Vec<StoredInstance>> = Vec::new();
    for instance in instances {
        match groups.last_mut() {
            Some(group) if group[0].series_instance_uid == instance.series_instance_uid => {
                group.push(instance)
            }
            _ => groups.push(vec![instance]),
        }
    }
    let mut groups = groups.into_iter();
    let first_group = groups.next().ok_or(ServiceError::NotFound("instance"))?;
    let first = series_items(services, first_group, base_url).await?;
    let services = services.clone();
    let base_url = base_url.to_string();
    let rest = stream::iter(groups)
        .then(move |group| {
            let services = services.clone();
            let base_url = base_url.clone();
            async move {
                match series_items(&services, group, &base_url).await {
                    Ok(items) => stream::once(async { Ok(Bytes::from_static(b",")) })
                        .chain(items)
                        .boxed(),
                    Err(error) => stream::once(async move { Err(to_store_error(error)) }).boxed(),
                }
            }
        })
        .flatten();
    Ok(stream::once(async { Ok(Bytes::from_static(b"[")) })
        .chain(first)
        .chain(rest)
        .chain(stream::once(async { Ok(Bytes::from_static(b"]")) }))
        .boxed())
}

/// Errors after a response started can only end its stream; the cause is logged.
pub fn to_store_error(error: ServiceError) -> StoreError {
    tracing::error!(%error, "retrieval failed while streaming");
    match error {
        ServiceError::Store(e) => e,
        other => StoreError::Io(std::io::Error::other(other.to_string())),
    }
}

const METADATA: &str = "metadata";

/// One series' metadata items joined by commas (no brackets).
async fn series_items(
    services: &Services,
    instances: Vec<StoredInstance>,
    base_url: &str,
) -> Result<ByteStream, ServiceError> {
    // Single instances are one ranged read anyway: only series are cached.
    let cacheable = instances.len() > 1;
    if !cacheable {
        return series_items_written(services, instances, base_url, None).await;
    }
    // The cached copy holds a placeholder where the base URL goes, filled in
    // as it is sent: what a client sends (Host, X-Forwarded-*) never names or
    // mints a cached object.
    let etag = metadata_etag(&instances, CACHED_BASE_URL);
    let series_uid = instances[0].series_instance_uid.clone();
    let body = match derived::open(services, &series_uid, METADATA, CACHED_VARIANT, &etag).await? {
        Some(body) => body,
        None => {
            let tee = (series_uid, etag);
            series_items_written(services, instances, CACHED_BASE_URL, Some(tee)).await?
        }
    };
    let placeholder = json_string_body(CACHED_BASE_URL);
    let base = json_string_body(base_url);
    Ok(replace_in_stream(body, placeholder, base))
}

/// The base URL written into cached metadata, replaced by the client's on the
/// way out (characters no URL holds, so it cannot be confused with one).
const CACHED_BASE_URL: &str = "\u{0}kastell-base-url\u{0}";
/// The one cached variant of a series' metadata.
const CACHED_VARIANT: &str = "relative";

/// Text as it appears inside a JSON string (escaped, without the quotes).
fn json_string_body(text: &str) -> Vec<u8> {
    let quoted = Json::String(text.to_string()).to_string();
    quoted.as_bytes()[1..quoted.len() - 1].to_vec()
}

/// Replaces every `needle` in a byte stream by `with`, across chunk boundaries.
fn replace_in_stream(body: ByteStream, needle: Vec<u8>, with: Vec<u8>) -> ByteStream {
    struct State {
        body: ByteStream,
        carry: Vec<u8>,
        done: bool,
    }
    let keep = needle.len().saturating_sub(1);
    stream::unfold(
        State {
            body,
            carry: Vec::new(),
            done: false,
        },
        move |mut state| {
            let (needle, with) = (needle.clone(), with.clone());
            async move {
                if state.done {
                    return None;
                }
                let chunk = match state.body.next().await {
                    Some(Ok(chunk)) => chunk,
                    Some(Err(error)) => {
                        state.done = true;
                        return Some((Err(error), state));
                    }
                    None => {
                        state.done = true;
                        let rest = std::mem::take(&mut state.carry);
                        return Some((Ok(Bytes::from(rest)), state));
                    }
                };
                let mut buffer = std::mem::take(&mut state.carry);
                buffer.extend_from_slice(&chunk);
                let mut out = Vec::with_capacity(buffer.len());
                let mut at = 0;
                while let Some(found) = memchr::memmem::find(&buffer[at..], &needle) {
                    out.extend_from_slice(&buffer[at..at + found]);
                    out.extend_from_slice(&with);
                    at += found + needle.len();
                }
                // The tail might begin a needle that the next chunk completes.
                let cut = buffer.len().saturating_sub(keep).max(at);
                out.extend_from_slice(&buffer[at..cut]);
                state.carry = buffer[cut..].to_vec();
                Some((Ok(Bytes::from(out)), state))
            }
        },
    )
    .boxed()
}

/// One series' metadata items joined by commas, written with `base_url`; with
/// `cache` (series UID, entity tag), a copy goes to the derived-object cache.
async fn series_items_written(
    services: &Services,
    instances: Vec<StoredInstance>,
    base_url: &str,
    cache: Option<(String, String)>,
) -> Result<ByteStream, ServiceError> {
    let mut items = metadata_stream(services.clone(), instances, base_url.to_string());
    let first = items
        .next()
        .await
        .ok_or(ServiceError::NotFound("instance"))??;
    let tee = cache.map(|(series_uid, etag)| {
        derived::Tee::spawn(
            services.clone(),
            series_uid,
            METADATA,
            CACHED_VARIANT.to_string(),
            etag,
        )
    });
    struct State {
        first: Option<Json>,
        items: BoxStream<'static, Result<Json, ServiceError>>,
        tee: Option<derived::Tee>,
        written: usize,
        failed: bool,
    }
    let state = State {
        first: Some(first),
        items,
        tee,
        written: 0,
        failed: false,
    };
    Ok(stream::unfold(state, |mut state| async move {
        if state.failed {
            return None;
        }
        let next = match state.first.take() {
            Some(first) => Some(Ok(first)),
            None => state.items.next().await,
        };
        match next {
            Some(Ok(item)) => {
                let mut bytes = Vec::with_capacity(4096);
                if state.written > 0 {
                    bytes.push(b',');
                }
                if let Err(error) = serde_json::to_writer(&mut bytes, &item) {
                    state.failed = true;
                    state.tee = None;
                    return Some((Err(StoreError::Io(error.into())), state));
                }
                let bytes = Bytes::from(bytes);
                if let Some(tee) = state.tee.as_mut() {
                    tee.copy(&bytes).await;
                }
                state.written += 1;
                Some((Ok(bytes), state))
            }
            Some(Err(error)) => {
                state.failed = true;
                state.tee = None; // abandons the cached copy
                Some((Err(to_store_error(error)), state))
            }
            None => {
                if let Some(tee) = state.tee.take() {
                    tee.finish().await;
                }
                None
            }
        }
    })
    .boxed())
}

/// A bulk data value, ready to send.
pub enum BulkBody {
    /// Native pixel data or another value, streamed from the blob.
    Stream { length: u64, body: ByteStream },
    /// A value taken from the header.
    Bytes(Bytes),
    /// Encapsulated pixel data: its frames, compressed.
    Frames(Frames),
}

/// Parses a bulk data path `GGGGEEEE[/item/GGGGEEEE...]`.
pub fn parse_bulk_path(path: &str) -> Option<(Vec<(Tag, usize)>, Tag)> {
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() % 2 == 0 {
        return None;
    }
    let tag = |s: &str| crate::dicom::attributes::resolve(s).filter(|_| s.len() == 8);
    let mut steps = Vec::new();
    for pair in parts[..parts.len() - 1].chunks(2) {
        steps.push((tag(pair[0])?, pair[1].parse().ok()?));
    }
    Some((steps, tag(parts[parts.len() - 1])?))
}

pub async fn bulkdata(
    services: &Services,
    instance: &StoredInstance,
    path: &str,
) -> Result<BulkBody, ServiceError> {
    let (steps, tag) = parse_bulk_path(path).ok_or(ServiceError::NotFound("bulk data"))?;
    let key = blob_key(instance)?;
    if steps.is_empty() && tag == Tag(0x7FE0, 0x0010) && instance.pixel_data_offset.is_some() {
        let offset = instance
            .pixel_data_offset
            .ok_or(ServiceError::NotFound("pixel data"))? as u64;
        if let Some(length) = instance.pixel_data_length {
            let range = offset..offset + length as u64;
            let body = if length as u64 > 8 * 1024 * 1024 {
                // Large: stream the range in chunks rather than buffering it.
                chunked_range(services.clone(), key, range)
            } else {
                let bytes = services.store.read_range(&key, range).await?;
                stream::once(async move { Ok(bytes) }).boxed()
            };
            // Bulk data is always little endian (PS3.18 §8.7.3.3): swap words of
            // pixel data stored big endian. Chunks start at even offsets of the value.
            let body = match (
                instance.transfer_syntax_uid.as_str(),
                instance.bits_allocated,
            ) {
                (transfer_syntax::EXPLICIT_VR_BE, Some(bits)) if bits > 8 => {
                    let width = (bits as usize).div_ceil(8);
                    body.map(move |chunk| chunk.map(|c| swap_words(&c, width)))
                        .boxed()
                }
                _ => body,
            };
            return Ok(BulkBody::Stream {
                length: length as u64,
                body,
            });
        }
        let count = instance.number_of_frames.unwrap_or(1).max(1) as u64;
        let all: Vec<u64> = (1..=count).collect();
        return Ok(BulkBody::Frames(frames(services, instance, &all).await?));
    }
    let mut dataset = read_header(services, instance).await?;
    if let Some(trailer) = read_trailer(services, instance).await? {
        for element in trailer {
            dataset.put(element);
        }
    }
    let mut current = &dataset;
    for (sequence, item) in &steps {
        current = instance::items(current, *sequence)
            .get(*item)
            .ok_or(ServiceError::NotFound("bulk data"))?;
    }
    let element = current
        .get(tag)
        .ok_or(ServiceError::NotFound("bulk data"))?;
    match element.value() {
        Value::Primitive(value) => Ok(BulkBody::Bytes(Bytes::copy_from_slice(&value.to_bytes()))),
        Value::PixelSequence(sequence) => {
            let fragments: Vec<u8> = sequence
                .fragments()
                .iter()
                .flat_map(|f| f.iter().copied())
                .collect();
            Ok(BulkBody::Bytes(Bytes::from(fragments)))
        }
        Value::Sequence(_) => Err(ServiceError::NotFound("bulk data")),
    }
}

/// Whether a bulk data path names the top-level native Pixel Data of `instance`
/// (which can be read by byte range).
pub fn is_native_pixel_data_path(instance: &StoredInstance, path: &str) -> bool {
    path.eq_ignore_ascii_case("7FE00010")
        && instance.pixel_data_offset.is_some()
        && instance.pixel_data_length.is_some()
}

/// Bytes `range` of the native Pixel Data value, little endian.
pub async fn pixel_data_range(
    services: &Services,
    instance: &StoredInstance,
    range: std::ops::Range<u64>,
) -> Result<Bytes, ServiceError> {
    let (Some(offset), Some(length)) = (instance.pixel_data_offset, instance.pixel_data_length)
    else {
        return Err(ServiceError::NotFound("pixel data"));
    };
    let key = blob_key(instance)?;
    let end = range.end.min(length as u64);
    let big_endian = instance.transfer_syntax_uid == transfer_syntax::EXPLICIT_VR_BE;
    let width = (instance.bits_allocated.unwrap_or(8).max(8) as u64).div_ceil(8);
    if !(big_endian && width > 1) {
        let start = offset as u64 + range.start;
        return Ok(services
            .store
            .read_range(&key, start..offset as u64 + end)
            .await?);
    }
    // Swapping works on whole words: read the words the range touches.
    let aligned_start = range.start / width * width;
    let aligned_end = end.div_ceil(width) * width;
    let words = services
        .store
        .read_range(
            &key,
            offset as u64 + aligned_start..offset as u64 + aligned_end.min(length as u64),
        )
        .await?;
    let swapped = swap_words(&words, width as usize);
    let from = (range.start - aligned_start) as usize;
    Ok(swapped.slice(from..from + (end - range.start) as usize))
}

/// Reverses the bytes of each `width`-byte word.
fn swap_words(chunk: &[u8], width: usize) -> Bytes {
    let mut out = chunk.to_vec();
    for word in out.chunks_exact_mut(width) {
        word.reverse();
    }
    Bytes::from(out)
}

fn chunked_range(services: Services, key: BlobKey, range: std::ops::Range<u64>) -> ByteStream {
    const CHUNK: u64 = 4 * 1024 * 1024;
    let starts: Vec<u64> = (range.start..range.end).step_by(CHUNK as usize).collect();
    stream::iter(starts)
        .map(move |start| {
            let services = services.clone();
            let key = key.clone();
            let end = (start + CHUNK).min(range.end);
            async move { services.store.read_range(&key, start..end).await }
        })
        .buffered(2)
        .boxed()
}

/// Frames of an instance, in request order.
pub struct Frames {
    /// `None`: native pixel data (Explicit VR Little Endian bytes); else the
    /// compressed media type of every frame.
    pub media_type: Option<&'static str>,
    pub transfer_syntax: String,
    pub frames: Vec<Bytes>,
}

/// A frame list entry that is not a 1-based frame number.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidFrame(pub String);

/// Parses `1,3,5` into 1-based frame numbers, at most `max` of them.
pub fn parse_frame_list(list: &str, max: usize) -> Result<Vec<u64>, InvalidFrame> {
    if list.split(',').nth(max).is_some() {
        return Err(InvalidFrame(format!("more than {max} frame numbers")));
    }
    list.split(',')
        .map(|part| match part.trim().parse::<u64>() {
            Ok(0) | Err(_) => Err(InvalidFrame(part.to_string())),
            Ok(n) => Ok(n),
        })
        .collect()
}

/// Reads the requested frames. Native frames are ranged reads of exactly their
/// bytes; encapsulated frames are cut from the Pixel Data value (read whole).
pub async fn frames(
    services: &Services,
    instance: &StoredInstance,
    numbers: &[u64],
) -> Result<Frames, ServiceError> {
    let count = instance.number_of_frames.unwrap_or(1).max(1) as u64;
    if numbers.iter().any(|n| *n > count) {
        return Err(ServiceError::NotFound("frame"));
    }
    let Some(offset) = instance.pixel_data_offset.map(|o| o as u64) else {
        // A deflated object has no byte offsets: its data set is parsed whole.
        let dataset = read_header(services, instance).await?;
        let pixels = dataset
            .get(Tag(0x7FE0, 0x0010))
            .and_then(|e| {
                e.value()
                    .primitive()
                    .map(|p| Bytes::copy_from_slice(&p.to_bytes()))
            })
            .ok_or(ServiceError::NotFound("pixel data"))?;
        let frame_length = pixels.len() / count as usize;
        return Ok(Frames {
            media_type: None,
            transfer_syntax: transfer_syntax::EXPLICIT_VR_LE.to_string(),
            frames: numbers
                .iter()
                .map(|n| pixels.slice((*n as usize - 1) * frame_length..*n as usize * frame_length))
                .collect(),
        });
    };
    let key = blob_key(instance)?;
    if let Some(length) = instance.pixel_data_length {
        let frame_length = length as u64 / count;
        let big_endian = instance.transfer_syntax_uid == transfer_syntax::EXPLICIT_VR_BE;
        let width = (instance.bits_allocated.unwrap_or(8).max(8) as usize).div_ceil(8);
        let mut frames = Vec::with_capacity(numbers.len());
        for n in numbers {
            let start = offset + (n - 1) * frame_length;
            let bytes = services
                .store
                .read_range(&key, start..start + frame_length)
                .await?;
            frames.push(if big_endian && width > 1 {
                swap_words(&bytes, width)
            } else {
                bytes
            });
        }
        return Ok(Frames {
            media_type: None,
            transfer_syntax: transfer_syntax::EXPLICIT_VR_LE.to_string(),
            frames,
        });
    }
    let frames = match frame_boundaries(instance).filter(|b| b.len() as u64 == count + 1) {
        // Indexed at STOW: one ranged read of exactly each frame's items.
        Some(boundaries) => {
            let spans: Vec<std::ops::Range<u64>> = numbers
                .iter()
                .map(|n| boundaries[(n - 1) as usize]..boundaries[*n as usize])
                .collect();
            let store = services.store.clone();
            stream::iter(spans)
                .map(move |span| {
                    let (store, key) = (store.clone(), key.clone());
                    async move {
                        let items = store.read_range(&key, span).await?;
                        Ok::<_, ServiceError>(fragments::join_items(items)?)
                    }
                })
                .buffered(4)
                .try_collect()
                .await?
        }
        // Stored before frames were indexed, or fragments that could not be told
        // apart: the whole value is read and split.
        None => {
            let value = services
                .store
                .read_range(&key, offset..instance.blob_size as u64)
                .await?;
            let all = split_frames(&value, count as usize)?;
            numbers
                .iter()
                .map(|n| {
                    all.get((n - 1) as usize)
                        .cloned()
                        .ok_or(ServiceError::NotFound("frame"))
                })
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    Ok(Frames {
        media_type: Some(
            transfer_syntax::compressed_media_type(&instance.transfer_syntax_uid)
                .unwrap_or("application/octet-stream"),
        ),
        transfer_syntax: instance.transfer_syntax_uid.clone(),
        frames,
    })
}

/// The frame index recorded at STOW, if any.
fn frame_boundaries(instance: &StoredInstance) -> Option<Vec<u64>> {
    instance
        .frame_offsets
        .as_deref()
        .and_then(fragments::parse_boundaries)
}

/// Frames in native Explicit VR Little Endian: compressed frames are decoded
/// (the transcoding path of frames, bulk data and pixel data). 406 when this
/// build cannot decode the stored syntax.
pub async fn decode_frames(
    services: &Services,
    instance: &StoredInstance,
    frames: Frames,
) -> Result<Frames, ServiceError> {
    if frames.media_type.is_none() {
        return Ok(frames);
    }
    if !pixels::can_decode(&frames.transfer_syntax) {
        return Err(ServiceError::NotAcceptable(format!(
            "pixel data in transfer syntax {} cannot be decoded by this server; \
             request transfer-syntax=* to receive it as stored",
            frames.transfer_syntax
        )));
    }
    let header = read_header(services, instance).await?;
    let _permit = services
        .settings
        .decoding
        .take(instance::PixelShape::of(&header).decoded_bytes(frames.frames.len() as u64))?;
    let syntax = frames.transfer_syntax;
    let decoded = tokio::task::spawn_blocking(move || {
        frames
            .frames
            .into_iter()
            .map(|data| {
                pixels::native_frame(
                    &header,
                    FramePixels::Encapsulated {
                        transfer_syntax: syntax.clone(),
                        data,
                    },
                )
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| ServiceError::Task(e.to_string()))??;
    Ok(Frames {
        media_type: None,
        transfer_syntax: transfer_syntax::EXPLICIT_VR_LE.to_string(),
        frames: decoded,
    })
}

/// Splits an encapsulated Pixel Data value (items after the element header) into
/// frames, using the Basic Offset Table when there is one.
pub fn split_frames(value: &[u8], number_of_frames: usize) -> Result<Vec<Bytes>, DicomError> {
    let mut items: Vec<(usize, &[u8])> = Vec::new(); // (offset from first item, data)
    let mut pos = 0;
    while pos + 8 <= value.len() {
        let group = u16::from_le_bytes([value[pos], value[pos + 1]]);
        let element = u16::from_le_bytes([value[pos + 2], value[pos + 3]]);
        let length = u32::from_le_bytes([
            value[pos + 4],
            value[pos + 5],
            value[pos + 6],
            value[pos + 7],
        ]) as usize;
        match (group, element) {
            (0xFFFE, 0xE0DD) => break,
            (0xFFFE, 0xE000) => {
                let start = pos + 8;
                let end = start
                    .checked_add(length)
                    .filter(|e| *e <= value.len())
                    .ok_or(DicomError::Truncated)?;
                items.push((pos, &value[start..end]));
                pos = end;
            }
            _ => {
                return Err(DicomError::Malformed(
                    "unexpected element in encapsulated pixel data".into(),
                ))
            }
        }
    }
    let Some(((_, offset_table), fragments)) = items.split_first() else {
        return Err(DicomError::Malformed(
            "encapsulated pixel data without items".into(),
        ));
    };
    if fragments.is_empty() {
        return Ok(Vec::new());
    }
    let first_fragment = fragments[0].0;
    let concat = |fs: &[(usize, &[u8])]| {
        Bytes::from(
            fs.iter()
                .flat_map(|(_, d)| d.iter().copied())
                .collect::<Vec<u8>>(),
        )
    };
    if number_of_frames <= 1 {
        return Ok(vec![concat(fragments)]);
    }
    if fragments.len() == number_of_frames {
        return Ok(fragments
            .iter()
            .map(|(_, d)| Bytes::copy_from_slice(d))
            .collect());
    }
    if offset_table.len() >= 4 * number_of_frames {
        let offsets: Vec<usize> = offset_table
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize)
            .collect();
        let mut frames = Vec::with_capacity(number_of_frames);
        for (i, start) in offsets.iter().enumerate() {
            let end = offsets.get(i + 1).copied().unwrap_or(usize::MAX);
            let in_frame: Vec<(usize, &[u8])> = fragments
                .iter()
                .filter(|(p, _)| {
                    let relative = p - first_fragment;
                    relative >= *start && relative < end
                })
                .copied()
                .collect();
            frames.push(concat(&in_frame));
        }
        return Ok(frames);
    }
    Ok(vec![concat(fragments)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn base_urls_are_replaced_across_chunk_boundaries() {
        let needle = json_string_body(CACHED_BASE_URL);
        let placeholder = String::from_utf8(needle.clone()).unwrap();
        let text = format!(
            "[{{\"u\":\"{placeholder}/studies/1\"}},{{\"u\":\"{placeholder}/studies/2\"}}]"
        );
        for size in [1, 2, 3, 7, 18, 19, 20, 1000] {
            let chunks: Vec<Result<Bytes, StoreError>> = text
                .as_bytes()
                .chunks(size)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            let out = replace_in_stream(
                stream::iter(chunks).boxed(),
                needle.clone(),
                json_string_body("http://h\"x"),
            );
            let joined: Vec<u8> = out.map(|c| c.unwrap()).collect::<Vec<_>>().await.concat();
            let parsed: Json = serde_json::from_slice(&joined).unwrap();
            assert_eq!(parsed[1]["u"], "http://h\"x/studies/2", "chunk size {size}");
            assert_eq!(parsed[0]["u"], "http://h\"x/studies/1", "chunk size {size}");
        }
    }
}
