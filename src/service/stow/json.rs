//! STOW-RS with DICOM JSON metadata and bulk data parts (PS3.18 §10.5.1.4):
//! bulk data parts are staged as encrypted blobs while the request streams in
//! (in whatever order the parts come); once it has ended, each data set of the
//! metadata is composed into a PS3.10 file — its header from the JSON, its
//! pixel data streamed from the staged part — and fed through the same part
//! pipeline as an `application/dicom` part, so that everything after (frame
//! index, duplicates, the study check, the index transaction) is one code path.
//! Staged blobs go when the request ends, or with the session's drop guard.

use std::collections::HashMap;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value as Json;

use super::{reason, Failure, PartWriter, StowSession};
use crate::dicom::compose::{self, JsonInstance, SEQUENCE_DELIMITER};
use crate::dicom::transfer_syntax::EXPLICIT_VR_LE;
use crate::dicom::DicomError;
use crate::service::ServiceError;
use crate::store::{BlobKey, BlobKind, BlobWriter};

/// A bulk data part kept for the data sets that reference it.
#[derive(Debug, Clone)]
struct StagedBulk {
    key: BlobKey,
    size: u64,
    /// `None`: native little-endian bytes (`application/octet-stream`).
    transfer_syntax: Option<String>,
}

/// The bulk data parts of a session, by the URIs they answer to (their
/// Content-Location, and `cid:` + their Content-ID), in arrival order: several
/// parts under one URI are the frames of compressed pixel data.
#[derive(Debug, Default)]
pub(super) struct BulkParts {
    by_uri: HashMap<String, Vec<StagedBulk>>,
    /// URIs of parts whose media type cannot be used, with why.
    unusable: HashMap<String, String>,
    keys: Vec<BlobKey>,
}

/// A bulk data part being received.
pub struct BulkWriter {
    writer: BlobWriter,
    uris: Vec<String>,
    /// The part's transfer syntax, or why it cannot be used.
    transfer_syntax: Result<Option<String>, String>,
}

impl BulkWriter {
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), ServiceError> {
        Ok(self.writer.write(chunk).await?)
    }
}

impl StowSession {
    /// Starts a bulk data part of media type `media_type` (with its
    /// `transfer-syntax` parameter, if any), known by `uris`.
    pub async fn begin_bulk(
        &mut self,
        uris: Vec<String>,
        media_type: &str,
        transfer_syntax: Option<&str>,
    ) -> Result<BulkWriter, ServiceError> {
        let key = BlobKey::new(BlobKind::Instance);
        let writer = self.services.store.writer(key.clone()).await?;
        self.uncommitted.push(key.clone());
        self.bulk.keys.push(key);
        Ok(BulkWriter {
            writer,
            uris,
            transfer_syntax: compose::bulk_transfer_syntax(media_type, transfer_syntax)
                .map_err(|e| e.to_string()),
        })
    }

    /// Ends a bulk data part: its blob is durable and it can be referenced.
    pub async fn finish_bulk(&mut self, bulk: BulkWriter) -> Result<(), ServiceError> {
        let key = bulk.writer.key().clone();
        let size = bulk.writer.finish().await?;
        let transfer_syntax = match bulk.transfer_syntax {
            Ok(ts) => ts,
            Err(why) => {
                // Kept out of reach: a data set naming it fails with the reason.
                tracing::info!(%why, "bulk data part of an unusable media type");
                for uri in bulk.uris {
                    self.bulk.unusable.insert(uri, why.clone());
                }
                return Ok(());
            }
        };
        let staged = StagedBulk {
            key,
            size,
            transfer_syntax,
        };
        for uri in bulk.uris {
            self.bulk
                .by_uri
                .entry(uri)
                .or_default()
                .push(staged.clone());
        }
        Ok(())
    }

    /// Stores each data set of the metadata (DICOM JSON objects) as one
    /// instance of the session, then removes the staged bulk data. A data set
    /// that cannot be stored fails alone.
    pub async fn store_metadata(&mut self, datasets: Vec<Json>) -> Result<(), ServiceError> {
        for dataset in datasets {
            let claimed = compose::claimed_uids(&dataset);
            let result = match JsonInstance::from_json(dataset) {
                Ok(instance) => self.store_composed(&instance).await,
                Err(error) => Err(error.into()),
            };
            match result {
                Ok(()) => {}
                Err(DataSetError::Dicom(error)) => {
                    tracing::info!(%error, "STOW data set rejected");
                    self.reject(claimed, super::reason_for(&error), error.to_string());
                }
                Err(DataSetError::Unusable(why)) => {
                    self.reject(claimed, reason::UNSUPPORTED_MEDIA, why);
                }
                Err(DataSetError::Service(error)) => return Err(error),
            }
        }
        self.remove_staged().await;
        Ok(())
    }

    /// Records a data set that failed before becoming a part.
    fn reject(
        &mut self,
        (sop_class_uid, sop_instance_uid): (String, String),
        reason: u16,
        detail: String,
    ) {
        let part = self.parts;
        self.parts += 1;
        self.failed.push(Failure {
            part,
            sop_class_uid,
            sop_instance_uid,
            reason,
            detail,
        });
    }

    /// Composes one data set with its bulk data and feeds it as a part.
    async fn store_composed(&mut self, instance: &JsonInstance) -> Result<(), DataSetError> {
        let pixel = instance.pixel_reference();
        let frames = match pixel {
            Some(reference) => self.resolve(&reference.uri)?,
            None => Vec::new(),
        };
        let transfer_syntax = frames
            .first()
            .and_then(|f| f.transfer_syntax.clone())
            .unwrap_or_else(|| EXPLICIT_VR_LE.to_string());
        if frames
            .iter()
            .any(|f| f.transfer_syntax.as_deref() != frames[0].transfer_syntax.as_deref())
        {
            return Err(DataSetError::Dicom(DicomError::Malformed(
                "the pixel data parts differ in transfer syntax".into(),
            )));
        }
        let native = frames.first().is_some_and(|f| f.transfer_syntax.is_none());
        if native {
            let total: u64 = frames.iter().map(|f| f.size).sum();
            if frames.len() > 1 {
                return Err(DataSetError::Dicom(DicomError::Malformed(
                    "native pixel data must be one bulk data part".into(),
                )));
            }
            if let Some(expected) = instance.expected_native_pixel_bytes() {
                if expected != total {
                    return Err(DataSetError::Dicom(DicomError::Malformed(format!(
                        "the pixel data part has {total} bytes; Rows, Columns, \
                         SamplesPerPixel, BitsAllocated and NumberOfFrames make {expected}"
                    ))));
                }
            }
        }
        let mut inline = Vec::new();
        // What references may make the composed header hold: each bulk part
        // named by a bounded number of attributes, all of them together no more
        // than a header may be.
        let mut references: std::collections::HashMap<&str, usize> = Default::default();
        let mut inline_bytes = 0u64;
        let max_references = self.services.settings.limits.max_bulk_references;
        for reference in instance.bulk.iter().filter(|b| !b.is_pixel_data()) {
            let count = references.entry(reference.uri.as_str()).or_default();
            *count += 1;
            if *count > max_references {
                return Err(DataSetError::Dicom(DicomError::Malformed(format!(
                    "more than {max_references} attributes reference {}",
                    reference.uri
                ))));
            }
            let parts = self.resolve(&reference.uri)?;
            let [staged] = parts.as_slice() else {
                return Err(DataSetError::Dicom(DicomError::Malformed(format!(
                    "{} bulk data parts answer to {}; one was expected",
                    parts.len(),
                    reference.uri
                ))));
            };
            inline_bytes += staged.size;
            if inline_bytes > self.services.settings.max_header_bytes as u64 {
                return Err(DataSetError::Dicom(DicomError::HeaderTooLarge(
                    self.services.settings.max_header_bytes,
                )));
            }
            let bytes = self
                .services
                .store
                .read_all(&staged.key)
                .await
                .map_err(ServiceError::from)?;
            inline.push((reference.tag, reference.vr, bytes.to_vec()));
        }
        let composed = compose::compose(instance, inline, &transfer_syntax)?;
        let mut part = self.begin_part(true).await?;
        part.write(Bytes::from(composed.head)).await?;
        if let Some(reference) = pixel {
            if native {
                let size = frames[0].size;
                let length = u32::try_from(size + size % 2)
                    .map_err(|_| DicomError::Malformed("native pixel data over 4 GiB".into()))?;
                part.write(Bytes::copy_from_slice(&compose::native_pixel_header(
                    reference.tag,
                    reference.vr,
                    length,
                )))
                .await?;
                self.copy_staged(&frames[0], &mut part).await?;
            } else {
                part.write(Bytes::copy_from_slice(&compose::encapsulated_pixel_header()))
                    .await?;
                for frame in &frames {
                    let length = u32::try_from(frame.size + frame.size % 2).map_err(|_| {
                        DicomError::Malformed("a pixel data fragment over 4 GiB".into())
                    })?;
                    part.write(Bytes::copy_from_slice(&compose::item_header(length)))
                        .await?;
                    self.copy_staged(frame, &mut part).await?;
                }
                part.write(Bytes::from_static(&SEQUENCE_DELIMITER)).await?;
            }
        }
        part.write(Bytes::from(composed.tail)).await?;
        self.finish_part(part).await?;
        Ok(())
    }

    /// The staged parts a BulkDataURI names.
    fn resolve(&self, uri: &str) -> Result<Vec<StagedBulk>, DataSetError> {
        if let Some(why) = self.bulk.unusable.get(uri) {
            return Err(DataSetError::Unusable(why.clone()));
        }
        self.bulk.by_uri.get(uri).cloned().ok_or_else(|| {
            DataSetError::Dicom(DicomError::Malformed(format!(
                "no bulk data part has Content-Location {uri}"
            )))
        })
    }

    /// Streams a staged part into `part`, padded to even length.
    async fn copy_staged(
        &self,
        staged: &StagedBulk,
        part: &mut PartWriter,
    ) -> Result<(), ServiceError> {
        let mut stream = self.services.store.read_stream(&staged.key).await?;
        while let Some(chunk) = stream.next().await {
            part.write(chunk?).await?;
        }
        if staged.size % 2 == 1 {
            part.write(Bytes::from_static(&[0])).await?;
        }
        Ok(())
    }

    /// Removes the staged bulk data (now copied into the instances).
    async fn remove_staged(&mut self) {
        let keys = std::mem::take(&mut self.bulk.keys);
        for key in keys {
            self.forget(key.clone());
            if let Err(error) = self.services.store.delete(&key).await {
                tracing::warn!(blob = %key, %error, "could not remove a staged bulk data part; the orphan sweep will");
            }
        }
        self.bulk.by_uri.clear();
    }
}

/// Why a data set was not stored.
enum DataSetError {
    /// The data set or its bulk data is wrong: it fails alone.
    Dicom(DicomError),
    /// A bulk data part it names has an unsupported media type.
    Unusable(String),
    /// The server failed: the request fails.
    Service(ServiceError),
}

impl From<DicomError> for DataSetError {
    fn from(error: DicomError) -> Self {
        DataSetError::Dicom(error)
    }
}

impl From<ServiceError> for DataSetError {
    fn from(error: ServiceError) -> Self {
        DataSetError::Service(error)
    }
}
