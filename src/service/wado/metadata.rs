//! The metadata of instances (DICOM JSON, bulk values as BulkDataURIs), with
//! each series' metadata cached as a derived object that holds a placeholder
//! for the base URL, filled in as it is sent.

use bytes::Bytes;
use futures_util::stream::{self, BoxStream};
use futures_util::{StreamExt, TryStreamExt};
use serde_json::{Map, Value as Json};

use super::{instance_url, log_stream_failure, read_header, read_trailer, ByteStream};
use crate::dicom::{json as dicom_json, transfer_syntax};
use crate::index::StoredInstance;
use crate::service::{derived, ServiceError, Services};

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
        Some(body) => body.map_err(ServiceError::from).boxed(),
        None => {
            let tee = (series_uid, etag);
            series_items_written(services, instances, CACHED_BASE_URL, Some(tee)).await?
        }
    };
    let placeholder = json_string_body(CACHED_BASE_URL);
    let base = json_string_body(base_url);
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
    let body = series_items_written(services, instances, CACHED_BASE_URL, None).await?;
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
                    return Some((Err(ServiceError::Task(error.to_string())), state));
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
