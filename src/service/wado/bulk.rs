//! Bulk data of an instance (PS3.18 §10.4.1.1.5): a value of the header, native
//! Pixel Data by byte range, or encapsulated Pixel Data as its frames.

use bytes::Bytes;
use dicom_core::value::Value;
use dicom_core::Tag;
use futures_util::stream;
use futures_util::StreamExt;

use super::{blob_key, frames, read_header, read_trailer, swap_words, ByteStream, Frames};
use crate::dicom::{instance, transfer_syntax};
use crate::index::StoredInstance;
use crate::service::{ServiceError, Services};
use crate::store::BlobKey;

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

fn chunked_range(services: Services, key: BlobKey, range: std::ops::Range<u64>) -> ByteStream {
    const CHUNK: u64 = 4 * 1024 * 1024;
    let starts: Vec<u64> = (range.start..range.end).step_by(CHUNK as usize).collect();
    stream::iter(starts)
        .map(move |start| {
            let services = services.clone();
            let key = key.clone();
            let end = (start + CHUNK).min(range.end);
            async move {
                services
                    .store
                    .read_range(&key, start..end)
                    .await
                    .map_err(ServiceError::from)
            }
        })
        .buffered(2)
        .boxed()
}
