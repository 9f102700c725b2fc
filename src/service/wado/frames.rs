//! Frames of an instance (PS3.18 §10.4.1.1.2): native frames by byte range,
//! encapsulated ones from the frame index STOW recorded, and their decoding to
//! native pixels when the client takes only those.

use bytes::Bytes;
use dicom_core::Tag;
use futures_util::stream;
use futures_util::{StreamExt, TryStreamExt};

use super::{blob_key, frame_boundaries, read_header, swap_words};
use crate::dicom::pixels::{self, FramePixels};
use crate::dicom::{fragments, instance, transfer_syntax, DicomError};
use crate::index::StoredInstance;
use crate::service::{ServiceError, Services};

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
        // Stored before frames were indexed: the value is read whole and its
        // frames found the way STOW finds them.
        None => {
            let value = services
                .store
                .read_range(&key, offset..instance.blob_size as u64)
                .await?;
            let header = read_header(services, instance).await?;
            let mut scanner = fragments::FragmentScanner::new(offset);
            scanner.feed(&value);
            let boundaries = fragments::frame_index(&scanner, &header).ok_or_else(|| {
                DicomError::Malformed(
                    "the fragments of this pixel data cannot be told apart into frames".into(),
                )
            })?;
            let relative = |at: u64| (at - offset) as usize;
            numbers
                .iter()
                .map(|n| {
                    let span = value.slice(
                        relative(boundaries[(n - 1) as usize])..relative(boundaries[*n as usize]),
                    );
                    fragments::join_items(span).map_err(ServiceError::from)
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
