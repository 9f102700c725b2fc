//! STOW-RS: each part streams into a new blob while its header is scanned and kept;
//! when the part ends the blob is durable and the header is parsed; when the request
//! ends every accepted instance is indexed in one transaction. A session dropped
//! before `commit` (the client went away, the request failed) deletes its blobs.

use super::{ServiceError, Services};
use dicom_object::InMemDicomObject;

use crate::dicom::fragments::{self, format_boundaries, FragmentScanner};
use crate::dicom::instance::{self, ParsedHeader};
use crate::dicom::{json as dicom_json, DicomError};
use crate::index::catalog::{self, Level};
use crate::index::{NewInstance, StoreOutcome};
use crate::store::{BlobKey, BlobKind};
use crate::telemetry::metrics::{self, instances_stored};
use serde_json::Value as Json;
use std::time::Instant;
use tracing::Instrument;

mod durable;
mod json;
mod outcome;
mod part;
pub use json::BulkWriter;
use outcome::{Failure, Referenced};
pub use outcome::{PartOutcome, StowOutcome};
pub use part::PartWriter;

/// Failure reasons of the Store Instances Response (PS3.18 Table I.2-2 and ours, as
/// documented in the Conformance Statement).
pub mod reason {
    /// 0110: processing failure (a storage or index error).
    pub const PROCESSING_FAILURE: u16 = 0x0110;
    /// 0111: a different object is already stored under this SOP Instance UID.
    pub const DUPLICATE_SOP_INSTANCE: u16 = 0x0111;
    /// C000: the part cannot be understood (not DICOM, truncated, missing UIDs).
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
    /// C001: the header before Pixel Data is larger than the server accepts.
    pub const HEADER_TOO_LARGE: u16 = 0xC001;
    /// C002: the series already exists in another study.
    pub const SERIES_IN_OTHER_STUDY: u16 = 0xC002;
    /// C003: Rows, Columns, samples, bits or NumberOfFrames promise more than
    /// the Pixel Data holds (a "cannot understand" code of PS3.18 Table I.2-2's
    /// Cxxx range).
    pub const PIXEL_MISMATCH: u16 = 0xC003;
    /// A901: the StudyInstanceUID differs from the study in the request URL.
    pub const STUDY_MISMATCH: u16 = 0xA901;
    /// C122 (PS3.18): the part's media type is not supported.
    pub const UNSUPPORTED_MEDIA: u16 = 0xC122;
}

struct Pending {
    part: usize,
    record: NewInstance,
    key: BlobKey,
}

/// One STOW request in progress.
pub struct StowSession {
    services: Services,
    target_study: Option<String>,
    pending: Vec<Pending>,
    failed: Vec<Failure>,
    /// Blobs written by this session and not (yet) referenced by the index.
    uncommitted: Vec<BlobKey>,
    /// Uploads of finished parts still being made durable.
    completions: durable::Completions,
    /// Parts begun so far (the next part's number).
    parts: usize,
    /// Bulk data parts of a request with DICOM JSON metadata.
    bulk: json::BulkParts,
    /// Declared last, so that it is released after `drop` has handed the
    /// uncommitted blobs to the store's deletion.
    _uploads: crate::store::UploadGuard,
}

impl StowSession {
    pub fn new(services: Services, target_study: Option<String>) -> Self {
        Self {
            _uploads: services.store.upload_guard(),
            services,
            target_study,
            pending: Vec::new(),
            failed: Vec::new(),
            uncommitted: Vec::new(),
            completions: durable::Completions::default(),
            parts: 0,
            bulk: json::BulkParts::default(),
        }
    }

    /// Starts a part. `acceptable` is false when the part's media type is not
    /// `application/dicom`; the part is then read and discarded, and fails.
    pub async fn begin_part(&mut self, acceptable: bool) -> Result<PartWriter, ServiceError> {
        let part = self.parts;
        self.parts += 1;
        if !acceptable {
            return Ok(PartWriter::rejected(part, reason::UNSUPPORTED_MEDIA));
        }
        let key = BlobKey::new(BlobKind::Instance);
        let writer = self.services.store.writer(key.clone()).await?;
        self.uncommitted.push(key);
        Ok(PartWriter::new(
            part,
            writer,
            self.services.settings.max_header_bytes,
        ))
    }

    /// Ends a part: the blob is made durable and the header parsed.
    pub async fn finish_part(&mut self, mut part: PartWriter) -> Result<(), ServiceError> {
        if let Some(error) = part.error.take() {
            let known = part.known_uids();
            if let Some(writer) = part.writer.take() {
                self.forget(writer.key().clone());
                writer.abort().await;
            }
            self.failed.push(Failure {
                part: part.part,
                sop_class_uid: known.0,
                sop_instance_uid: known.1,
                reason: error.reason(),
                detail: error.to_string(),
            });
            return Ok(());
        }
        let Some(writer) = part.writer.take() else {
            // Only rejected parts have no writer, and those returned above.
            return Err(ServiceError::Task(
                "a STOW part without a blob writer".into(),
            ));
        };
        let key = writer.key().clone();
        metrics::stow_stage("receive", part.started.elapsed());
        metrics::stow_stage("encrypt_write", part.writing);
        // Made durable beside what follows; `commit` waits for it.
        let size = writer.bytes_written();
        let limit = self.services.settings.upload_completions;
        self.completions
            .start(&self.services.store, writer, limit)
            .await?;
        let parsing = Instant::now();
        let parse_span = tracing::info_span!("stow.parse").entered();
        let parsed = part.parse(size).and_then(|parsed| {
            let (header, _, pixel) = &parsed;
            let native_length = pixel.and_then(|(_, length)| length);
            let fragments = match &part.fragments {
                Some(fragments) if fragments.too_many_fragments() => {
                    return Err(DicomError::Malformed(format!(
                        "the pixel data has more than {} fragments",
                        crate::dicom::fragments::MAX_FRAGMENTS
                    )))
                }
                // Fragments that could not be followed to the end are stored as
                // before (retrieval splits the value); the rendering budgets bound
                // what NumberOfFrames can then make the server do.
                Some(fragments) => fragments.fragment_count(),
                None => None,
            };
            crate::dicom::guard::check_pixel_description(
                &header.dataset,
                native_length,
                fragments,
            )?;
            Ok(parsed)
        });
        drop(parse_span);
        metrics::stow_stage("parse", parsing.elapsed());
        match parsed {
            Ok((header, header_length, pixel)) => {
                if let Some(target) = &self.target_study {
                    if &header.study_instance_uid != target {
                        let failure = Failure {
                            part: part.part,
                            sop_class_uid: header.sop_class_uid.clone(),
                            sop_instance_uid: header.sop_instance_uid.clone(),
                            reason: reason::STUDY_MISMATCH,
                            detail: "StudyInstanceUID differs from the study in the request URL"
                                .into(),
                        };
                        self.fail(key, failure).await;
                        return Ok(());
                    }
                }
                let digest = part.hasher.finish();
                let frame_offsets = part
                    .fragments
                    .as_ref()
                    .and_then(|fragments| frame_boundaries(fragments, &header.dataset));
                let mut record = new_instance(
                    &header,
                    &key,
                    size,
                    hex::encode(digest.as_ref()),
                    header_length,
                    pixel,
                );
                record.frame_offsets = frame_offsets;
                let sealing = Instant::now();
                record.metadata = super::wado::seal_metadata_record(
                    &self.services,
                    &key,
                    &header.dataset,
                    &record,
                )
                .instrument(tracing::info_span!("stow.metadata"))
                .await;
                metrics::stow_stage("metadata", sealing.elapsed());
                self.pending.push(Pending {
                    part: part.part,
                    record,
                    key,
                });
            }
            Err(error) => {
                tracing::info!(%error, "STOW part rejected");
                let known = part.known_uids();
                self.forget(key.clone());
                self.settle(&key).await;
                self.services.store.delete(&key).await?;
                self.failed.push(Failure {
                    part: part.part,
                    sop_class_uid: known.0,
                    sop_instance_uid: known.1,
                    reason: reason_for(&error),
                    detail: error.to_string(),
                });
            }
        }
        Ok(())
    }

    fn forget(&mut self, key: BlobKey) {
        self.uncommitted.retain(|k| k != &key);
    }

    /// Waits until `key`'s upload is no longer being completed, so that
    /// deleting it is final; whether the completion failed does not matter to
    /// a blob being deleted.
    async fn settle(&mut self, key: &BlobKey) {
        if let Err(error) = self.completions.settle(key).await {
            tracing::debug!(blob = %key, %error, "a rejected part's upload did not complete");
        }
    }

    async fn fail(&mut self, key: BlobKey, failure: Failure) {
        self.forget(key.clone());
        self.settle(&key).await;
        if let Err(error) = self.services.store.delete(&key).await {
            tracing::warn!(blob = %key, %error, "could not remove a rejected blob");
        }
        self.failed.push(failure);
    }

    /// Indexes every accepted instance in one transaction.
    pub async fn commit(mut self) -> Result<StowOutcome, ServiceError> {
        // Every blob is durable before a row refers to it (on an error the
        // drop deletes them all, none still being completed).
        self.completions.wait_all().await?;
        let pending = std::mem::take(&mut self.pending);
        // From here the blobs are no longer the drop guard's: if this future is
        // dropped while the transaction runs, the transaction may still commit and
        // its rows must find their blobs. Blobs of a transaction that did not commit
        // are unreferenced and go in the start-up orphan sweep.
        self.uncommitted.clear();
        let records: Vec<NewInstance> = pending.iter().map(|p| p.record.clone()).collect();
        let overwrite = self.services.settings.overwrite_existing;
        let outcomes = if records.is_empty() {
            Vec::new()
        } else {
            let indexing = Instant::now();
            let stored = self
                .services
                .with_index(move |index| index.store_instances(records, overwrite))
                .instrument(tracing::info_span!("stow.index"))
                .await;
            metrics::stow_stage("index", indexing.elapsed());
            match stored {
                Ok(outcomes) => outcomes,
                Err(error) => {
                    let written = pending.iter().map(|p| p.key.clone()).collect();
                    self.services.store.delete_detached(written);
                    return Err(error);
                }
            }
        };
        record_outcomes(self.services.store.tenant(), &outcomes);
        super::events::changes_committed();
        let mut referenced = Vec::new();
        let mut unreferenced = Vec::new();
        let mut parts: Vec<Option<PartOutcome>> = vec![None; self.parts];
        for (pending, outcome) in pending.into_iter().zip(outcomes) {
            let record = &pending.record;
            let failure = |reason, detail: &str| Failure {
                part: pending.part,
                sop_class_uid: record.sop_class_uid.clone(),
                sop_instance_uid: record.sop_instance_uid.clone(),
                reason,
                detail: detail.to_string(),
            };
            let stored = match outcome {
                StoreOutcome::Stored => PartOutcome::Stored,
                StoreOutcome::Replaced { old_blob_key } => {
                    if let Ok(old) = BlobKey::parse(&old_blob_key) {
                        unreferenced.push(old);
                    }
                    PartOutcome::Replaced
                }
                StoreOutcome::AlreadyStored => {
                    unreferenced.push(pending.key.clone());
                    PartOutcome::AlreadyStored
                }
                StoreOutcome::Conflict => {
                    unreferenced.push(pending.key.clone());
                    self.failed.push(failure(
                        reason::DUPLICATE_SOP_INSTANCE,
                        "a different object is already stored under this SOP Instance UID",
                    ));
                    continue;
                }
                StoreOutcome::SeriesInOtherStudy => {
                    unreferenced.push(pending.key.clone());
                    self.failed.push(failure(
                        reason::SERIES_IN_OTHER_STUDY,
                        "the series already exists in another study",
                    ));
                    continue;
                }
            };
            parts[pending.part] = Some(stored);
            referenced.push(Referenced {
                study_uid: record.study_instance_uid.clone(),
                series_uid: record.series_instance_uid.clone(),
                sop_class_uid: record.sop_class_uid.clone(),
                sop_instance_uid: record.sop_instance_uid.clone(),
            });
        }
        self.services.store.delete_detached(unreferenced);
        let mut announced: Vec<(&str, &str)> = Vec::new();
        for item in &referenced {
            let series = (item.study_uid.as_str(), item.series_uid.as_str());
            if !announced.contains(&series) {
                announced.push(series);
                self.services
                    .settings
                    .warmer
                    .touched(&self.services, series.0, series.1);
            }
        }
        for failure in &self.failed {
            parts[failure.part] = Some(PartOutcome::Failed {
                reason: failure.reason,
                detail: failure.detail.clone(),
            });
        }
        // A part begun but never finished (its writer failed) has no outcome of
        // its own; the caller saw the error.
        let parts = parts
            .into_iter()
            .map(|outcome| {
                outcome.unwrap_or(PartOutcome::Failed {
                    reason: reason::PROCESSING_FAILURE,
                    detail: "the part was not finished".into(),
                })
            })
            .collect();
        Ok(StowOutcome {
            referenced,
            failed: std::mem::take(&mut self.failed),
            parts,
        })
    }
}

impl Drop for StowSession {
    fn drop(&mut self) {
        let uncommitted = std::mem::take(&mut self.uncommitted);
        let running = self.completions.take_running();
        let runtime = tokio::runtime::Handle::try_current();
        let (false, Ok(runtime)) = (running.is_empty(), runtime) else {
            self.services.store.delete_detached(uncommitted);
            return;
        };
        // A completion ending after the deletion would rename its blob back
        // into place: delete once they ended (shutdown waits for the guard).
        let store = self.services.store.clone();
        let guard = store.upload_guard();
        runtime.spawn(async move {
            futures_util::future::join_all(running).await;
            store.delete_detached(uncommitted);
            drop(guard);
        });
    }
}

/// The frame index of encapsulated pixel data, as stored in the index.
pub fn frame_boundaries(fragments: &FragmentScanner, dataset: &InMemDicomObject) -> Option<String> {
    fragments::frame_index(fragments, dataset).map(|b| format_boundaries(&b))
}

/// The failure reason of an instance the DICOM layer refused.
pub(super) fn reason_for(error: &DicomError) -> u16 {
    match error {
        DicomError::HeaderTooLarge(_) => reason::HEADER_TOO_LARGE,
        DicomError::PixelMismatch(_) => reason::PIXEL_MISMATCH,
        _ => reason::CANNOT_UNDERSTAND,
    }
}

/// The index record of a parsed instance.
pub fn new_instance(
    header: &ParsedHeader,
    key: &BlobKey,
    size: u64,
    sha256: String,
    header_length: u64,
    pixel: Option<(u64, Option<u64>)>,
) -> NewInstance {
    let dataset = &header.dataset;
    let mut values = Vec::new();
    for level in [Level::Study, Level::Series, Level::Instance] {
        for attr in catalog::stored_from_header(level) {
            let value = if attr.tag == catalog::REQUEST_ATTRIBUTES_SEQUENCE {
                let items = instance::items(dataset, attr.tag);
                (!items.is_empty()).then(|| {
                    let json: Vec<Json> = items
                        .iter()
                        .map(|item| {
                            Json::Object(dicom_json::dataset_to_json(item, &|_| String::new()))
                        })
                        .collect();
                    Json::Array(json).to_string()
                })
            } else {
                instance::text(dataset, attr.tag).filter(|v| !v.is_empty())
            };
            values.push((attr, value));
        }
    }
    let request_items = instance::items(dataset, catalog::REQUEST_ATTRIBUTES_SEQUENCE)
        .iter()
        .map(|item| {
            (
                instance::text(item, catalog::SCHEDULED_PROCEDURE_STEP_ID)
                    .filter(|v| !v.is_empty()),
                instance::text(item, catalog::REQUESTED_PROCEDURE_ID).filter(|v| !v.is_empty()),
            )
        })
        .collect();
    NewInstance {
        study_instance_uid: header.study_instance_uid.clone(),
        series_instance_uid: header.series_instance_uid.clone(),
        sop_instance_uid: header.sop_instance_uid.clone(),
        sop_class_uid: header.sop_class_uid.clone(),
        transfer_syntax_uid: header.transfer_syntax.clone(),
        blob_key: key.as_str().to_string(),
        blob_size: size as i64,
        content_sha256: sha256,
        header_length: header_length as i64,
        pixel_data_offset: pixel.map(|(offset, _)| offset as i64),
        pixel_data_length: pixel.and_then(|(_, length)| length).map(|l| l as i64),
        frame_offsets: None,
        metadata: None,
        values,
        request_items,
    }
}

/// A parsed part: its header, the header's length, and the Pixel Data value's
/// offset and length (`None` length: undefined, i.e. encapsulated).
pub(super) type ParsedPart = (ParsedHeader, u64, Option<(u64, Option<u64>)>);

/// Counts the instances a commit stored, by outcome (`kastell.instances.stored`).
fn record_outcomes(tenant: &str, outcomes: &[StoreOutcome]) {
    let (mut stored, mut replaced, mut already_stored) = (0, 0, 0);
    for outcome in outcomes {
        match outcome {
            StoreOutcome::Stored => stored += 1,
            StoreOutcome::Replaced { .. } => replaced += 1,
            StoreOutcome::AlreadyStored => already_stored += 1,
            // Failures, reported to the client in FailedSOPSequence.
            StoreOutcome::Conflict | StoreOutcome::SeriesInOtherStudy => {}
        }
    }
    instances_stored(tenant, "stored", stored);
    instances_stored(tenant, "replaced", replaced);
    instances_stored(tenant, "already_stored", already_stored);
}
