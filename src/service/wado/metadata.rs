//! The metadata of instances (DICOM JSON, bulk values as BulkDataURIs). Each
//! instance's is written at STOW into the index, sealed (a "metadata record",
//! see `store::record`), so a series' metadata is one query; instances without
//! one are read from their blob. Each series' metadata is also cached whole as
//! a derived object. Both hold a placeholder for the base URL, filled in as it
//! is sent.

use std::io::Read;

use bytes::Bytes;
use dicom_object::InMemDicomObject;
use futures_util::stream::{self, BoxStream};
use futures_util::{StreamExt, TryStreamExt};
use serde_json::{Map, Value as Json};

use super::{instance_url, log_stream_failure, read_header, read_trailer, ByteStream};
use crate::dicom::{json as dicom_json, transfer_syntax};
use crate::index::{NewInstance, StoredInstance};
use crate::service::{derived, ServiceError, Services};
use crate::store::BlobKey;

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

/// The DICOM JSON metadata of one instance: every attribute but the file meta
/// group, bulk values (and Pixel Data) as BulkDataURIs. Read from its blob.
pub async fn metadata(
    services: &Services,
    instance: &StoredInstance,
    base_url: &str,
) -> Result<Json, ServiceError> {
    let dataset = read_header(services, instance).await?;
    let trailer = read_trailer(services, instance).await?;
    let pixel_data = instance
        .pixel_data_offset
        .map(|_| pixel_data_vr(&instance.transfer_syntax_uid, instance.bits_allocated));
    Ok(instance_json(
        &dataset,
        trailer.as_ref(),
        pixel_data,
        &instance_url(base_url, instance),
    ))
}

/// The DICOM JSON of an instance from its data set (`trailer`: the elements
/// after Pixel Data; `pixel_data`: the VR of its Pixel Data, if it has any),
/// bulk values as BulkDataURIs under the instance's `url`.
fn instance_json(
    dataset: &InMemDicomObject,
    trailer: Option<&InMemDicomObject>,
    pixel_data: Option<&'static str>,
    url: &str,
) -> Json {
    let mut json: Map<String, Json> =
        dicom_json::dataset_to_json(dataset, &|path| format!("{url}/bulkdata/{path}"));
    if let Some(vr) = pixel_data {
        json.insert(
            "7FE00010".into(),
            serde_json::json!({"vr": vr, "BulkDataURI": format!("{url}/bulkdata/7FE00010")}),
        );
    }
    if let Some(trailer) = trailer {
        json.extend(dicom_json::dataset_to_json(trailer, &|path| {
            format!("{url}/bulkdata/{path}")
        }));
    }
    Json::Object(json)
}

/// The VR Pixel Data is given in metadata: OW for native data over 8 bits, else OB.
fn pixel_data_vr(transfer_syntax_uid: &str, bits_allocated: Option<i64>) -> &'static str {
    if transfer_syntax::is_native(transfer_syntax_uid) && bits_allocated.unwrap_or(8) > 8 {
        "OW"
    } else {
        "OB"
    }
}

/// Decompressed metadata records larger than this are refused (a record is
/// authenticated, so this guards against our own mistakes, not an attacker).
const MAX_RECORD_BYTES: u64 = 256 * 1024 * 1024;

/// The sealed metadata record of an instance STOW is storing (`dataset`: its
/// header as parsed), or `None` when it gets none: the copy is turned off, or
/// elements follow its Pixel Data (read from the blob, as before records).
pub async fn seal_metadata_record(
    services: &Services,
    key: &BlobKey,
    dataset: &InMemDicomObject,
    record: &NewInstance,
) -> Option<Vec<u8>> {
    if !services.settings.metadata_in_index {
        return None;
    }
    let pixel_end = match (record.pixel_data_offset, record.pixel_data_length) {
        (Some(offset), Some(length)) => Some(offset + length),
        (Some(_), None) => record
            .frame_offsets
            .as_deref()
            .and_then(crate::dicom::fragments::parse_boundaries)
            .and_then(|boundaries| boundaries.last().map(|end| *end as i64 + 8)),
        (None, _) => None,
    };
    if pixel_end.is_some_and(|end| end < record.blob_size) {
        return None;
    }
    let bits_allocated =
        crate::dicom::instance::text(dataset, dicom_dictionary_std::tags::BITS_ALLOCATED)
            .and_then(|bits| bits.trim().parse::<i64>().ok());
    let pixel_data = record
        .pixel_data_offset
        .map(|_| pixel_data_vr(&record.transfer_syntax_uid, bits_allocated));
    let url = format!(
        "{CACHED_BASE_URL}/studies/{}/series/{}/instances/{}",
        record.study_instance_uid, record.series_instance_uid, record.sop_instance_uid
    );
    let json = instance_json(dataset, None, pixel_data, &url);
    let deflated = serde_json::to_vec(&json)
        .map_err(std::io::Error::other)
        .and_then(|text| deflate(&text));
    let sealed = match deflated {
        Ok(deflated) => services.store.seal_record(key, &deflated).await,
        Err(error) => Err(error.into()),
    };
    sealed
        .inspect_err(|error| tracing::warn!(%error, "an instance's metadata record was not kept"))
        .ok()
}

/// The metadata records of `instances` that have one, by blob key (one query
/// per 500 instances).
pub async fn metadata_records(
    services: &Services,
    instances: &[StoredInstance],
) -> Result<std::collections::HashMap<String, Vec<u8>>, ServiceError> {
    let keys: Vec<String> = instances.iter().map(|i| i.blob_key.clone()).collect();
    services
        .with_index(move |index| {
            index.instance_metadata(&keys.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
}

thread_local! {
    /// One compressor per thread, reset for each record: making one allocates
    /// and clears some 300 KB of tables, which cost more than compressing a
    /// record's few kilobytes.
    static DEFLATER: std::cell::RefCell<flate2::Compress> =
        std::cell::RefCell::new(flate2::Compress::new(flate2::Compression::fast(), false));
}

/// Raw DEFLATE of `text`, in one call (serde_json's many small writes into a
/// streaming encoder would each be a call into the compressor).
fn deflate(text: &[u8]) -> std::io::Result<Vec<u8>> {
    DEFLATER.with_borrow_mut(|compress| {
        compress.reset();
        let mut out = Vec::with_capacity(text.len() / 2 + 128);
        loop {
            let consumed = compress.total_in() as usize;
            match compress.compress_vec(&text[consumed..], &mut out, flate2::FlushCompress::Finish)
            {
                Ok(flate2::Status::StreamEnd) => return Ok(out),
                Ok(_) => out.reserve(out.capacity().max(1024)),
                Err(error) => return Err(std::io::Error::other(error)),
            }
        }
    })
}

/// Opens a metadata record: the instance's DICOM JSON with the placeholder base
/// URL (`BulkDataURI`s only hold it).
pub async fn open_metadata_record(
    services: &Services,
    instance: &StoredInstance,
    sealed: &[u8],
) -> Result<Bytes, ServiceError> {
    let key = super::blob_key(instance)?;
    let deflated = services.store.open_record(&key, sealed).await?;
    let mut json = Vec::with_capacity(deflated.len() * 4);
    let mut inflater = flate2::read::DeflateDecoder::new(&deflated[..]).take(MAX_RECORD_BYTES + 1);
    inflater
        .read_to_end(&mut json)
        .map_err(|error| ServiceError::Task(format!("an unreadable metadata record: {error}")))?;
    if json.len() as u64 > MAX_RECORD_BYTES {
        return Err(ServiceError::Task("a metadata record is too large".into()));
    }
    Ok(Bytes::from(json))
}

/// The DICOM JSON of each of `instances`, in order, with the placeholder base
/// URL: from their metadata records (one query), else from their blobs (a few
/// at a time).
async fn metadata_items(
    services: &Services,
    instances: Vec<StoredInstance>,
) -> Result<BoxStream<'static, Result<Bytes, ServiceError>>, ServiceError> {
    let mut records = metadata_records(services, &instances).await?;
    let items: Vec<(StoredInstance, Option<Vec<u8>>)> = instances
        .into_iter()
        .map(|instance| {
            let record = records.remove(&instance.blob_key);
            (instance, record)
        })
        .collect();
    let services = services.clone();
    Ok(stream::iter(items)
        .map(move |(instance, record)| {
            let services = services.clone();
            async move {
                if let Some(sealed) = record {
                    match open_metadata_record(&services, &instance, &sealed).await {
                        Ok(json) => return Ok(json),
                        Err(error) => tracing::warn!(
                            %error,
                            "an instance's metadata record is unreadable; reading its blob"
                        ),
                    }
                }
                let json = metadata(&services, &instance, CACHED_BASE_URL).await?;
                serde_json::to_vec(&json)
                    .map(Bytes::from)
                    .map_err(|error| ServiceError::Task(error.to_string()))
            }
        })
        .buffered(8)
        .boxed())
}

/// The metadata of many instances as JSON values, in order (for the XML
/// model): from their metadata records, else from their blobs a few at a time.
pub async fn metadata_stream(
    services: Services,
    instances: Vec<StoredInstance>,
    base_url: String,
) -> Result<BoxStream<'static, Result<Json, ServiceError>>, ServiceError> {
    let placeholder = json_string_body(CACHED_BASE_URL);
    let base = json_string_body(&base_url);
    let items = metadata_items(&services, instances).await?;
    Ok(items
        .map(move |item| {
            let text = replace_all(&item?, &placeholder, &base);
            serde_json::from_slice(&text).map_err(|error| ServiceError::Task(error.to_string()))
        })
        .boxed())
}

/// `haystack` with every `needle` replaced by `with`.
fn replace_all(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut at = 0;
    while let Some(found) = memchr::memmem::find(&haystack[at..], needle) {
        out.extend_from_slice(&haystack[at..at + found]);
        out.extend_from_slice(with);
        at += found + needle.len();
    }
    out.extend_from_slice(&haystack[at..]);
    out
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
                    Err(error) => {
                        stream::once(async move { Err(log_stream_failure(error)) }).boxed()
                    }
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

const METADATA: &str = "metadata";

/// One series' metadata items joined by commas (no brackets).
async fn series_items(
    services: &Services,
    instances: Vec<StoredInstance>,
    base_url: &str,
) -> Result<ByteStream, ServiceError> {
    // Items are written with a placeholder where the base URL goes, filled in
    // as they are sent: what a client sends (Host, X-Forwarded-*) never names
    // or mints a cached object. Single instances are one read anyway: only
    // series are cached whole.
    let placeholder = json_string_body(CACHED_BASE_URL);
    let base = json_string_body(base_url);
    if instances.len() < 2 {
        let body = series_items_written(services, instances, None).await?;
        return Ok(replace_in_stream(body, placeholder, base));
    }
    let etag = metadata_etag(&instances, CACHED_BASE_URL);
    let series_uid = instances[0].series_instance_uid.clone();
    let body = match derived::open(services, &series_uid, METADATA, CACHED_VARIANT, &etag).await? {
        Some(body) => body.map_err(ServiceError::from).boxed(),
        None => {
            let tee = (series_uid, etag);
            series_items_written(services, instances, Some(tee)).await?
        }
    };
    Ok(replace_in_stream(body, placeholder, base))
}

/// Builds the cached metadata of the series `instances` make up, unless it is
/// current already; `true` when it was built. What the warmer calls once a
/// series has been quiet for a while (`service::warm`), so that the first
/// viewer to open it does not wait for every instance's header.
pub async fn warm_series(
    services: &Services,
    instances: Vec<StoredInstance>,
) -> Result<bool, ServiceError> {
    // Single instances are not cached (see `series_items`).
    if instances.len() < 2 {
        return Ok(false);
    }
    let etag = metadata_etag(&instances, CACHED_BASE_URL);
    let series_uid = instances[0].series_instance_uid.clone();
    if derived::is_current(services, &series_uid, METADATA, CACHED_VARIANT, &etag).await? {
        return Ok(false);
    }
    let body = series_items_written(services, instances, None).await?;
    derived::write(services, &series_uid, METADATA, CACHED_VARIANT, &etag, body).await?;
    Ok(true)
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

/// One series' metadata items joined by commas, with the placeholder base URL;
/// with `cache` (series UID, entity tag), a copy goes to the derived-object cache.
async fn series_items_written(
    services: &Services,
    instances: Vec<StoredInstance>,
    cache: Option<(String, String)>,
) -> Result<ByteStream, ServiceError> {
    let mut items = metadata_items(services, instances).await?;
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
        first: Option<Bytes>,
        items: BoxStream<'static, Result<Bytes, ServiceError>>,
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
                let bytes = if state.written > 0 {
                    let mut bytes = Vec::with_capacity(item.len() + 1);
                    bytes.push(b',');
                    bytes.extend_from_slice(&item);
                    Bytes::from(bytes)
                } else {
                    item
                };
                if let Some(tee) = state.tee.as_mut() {
                    tee.copy(&bytes).await;
                }
                state.written += 1;
                Some((Ok(bytes), state))
            }
            Some(Err(error)) => {
                state.failed = true;
                state.tee = None; // abandons the cached copy
                Some((Err(log_stream_failure(error)), state))
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

#[cfg(test)]
mod tests {
    #[test]
    fn deflate_round_trips_with_a_reused_compressor() {
        use std::io::Read;
        for text in [
            b"".to_vec(),
            b"{\"00100010\":{\"vr\":\"PN\"}}".repeat(3),
            (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect(),
            b"{}".to_vec(),
        ] {
            let deflated = super::deflate(&text).unwrap();
            let mut back = Vec::new();
            flate2::read::DeflateDecoder::new(&deflated[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, text);
        }
    }

    use super::*;

    #[tokio::test]
    async fn base_urls_are_replaced_across_chunk_boundaries() {
        let needle = json_string_body(CACHED_BASE_URL);
        let placeholder = String::from_utf8(needle.clone()).unwrap();
        let text = format!(
            "[{{\"u\":\"{placeholder}/studies/1\"}},{{\"u\":\"{placeholder}/studies/2\"}}]"
        );
        for size in [1, 2, 3, 7, 18, 19, 20, 1000] {
            let chunks: Vec<Result<Bytes, ServiceError>> = text
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
