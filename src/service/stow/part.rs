//! One part of a STOW request as it streams in: the header scanned as the bytes
//! arrive (only the header is kept in memory), the rest written straight to an
//! encrypted blob, the fragments of encapsulated Pixel Data followed; parsed
//! once the part has ended.

use bytes::{Bytes, BytesMut};
use ring::digest;

use super::{reason_for, ParsedPart};
use crate::dicom::fragments::FragmentScanner;
use crate::dicom::header::{FileMeta, HeaderScanner, Scan};
use crate::dicom::instance;
use crate::dicom::DicomError;
use crate::service::ServiceError;
use crate::store::BlobWriter;

/// One part being received.
pub struct PartWriter {
    /// Its number in the session.
    pub(super) part: usize,
    pub(super) writer: Option<BlobWriter>,
    pub(super) scanner: HeaderScanner,
    /// The bytes up to Pixel Data (or the whole part, if it has none).
    pub(super) prefix: BytesMut,
    /// Set once the top-level Pixel Data element is found.
    pub(super) header_end: Option<(u64, u64, Option<u64>)>,
    /// Follows encapsulated Pixel Data to index its frames.
    pub(super) fragments: Option<FragmentScanner>,
    pub(super) deflated: bool,
    pub(super) hasher: digest::Context,
    pub(super) max_header: usize,
    pub(super) error: Option<PartError>,
    pub(super) scan_position: usize,
    /// When the part began, and the time spent sealing and writing its bytes
    /// (the `receive` and `encrypt_write` stages of `kastell.stow.stage.duration`).
    pub(super) started: std::time::Instant,
    pub(super) writing: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum PartError {
    #[error("the part is not application/dicom")]
    Rejected(u16),
    #[error(transparent)]
    Dicom(DicomError),
}

impl PartError {
    pub(super) fn reason(&self) -> u16 {
        match self {
            PartError::Rejected(reason) => *reason,
            PartError::Dicom(error) => reason_for(error),
        }
    }
}

impl PartWriter {
    /// Part number `part`, written to `writer`, keeping at most `max_header`
    /// bytes of header in memory.
    pub(super) fn new(part: usize, writer: BlobWriter, max_header: usize) -> Self {
        Self {
            writer: Some(writer),
            max_header,
            ..Self::unwritten(part)
        }
    }

    /// A part refused before its bytes are read (they are drained).
    pub(super) fn rejected(part: usize, reason: u16) -> Self {
        Self {
            error: Some(PartError::Rejected(reason)),
            ..Self::unwritten(part)
        }
    }

    fn unwritten(part: usize) -> Self {
        Self {
            part,
            writer: None,
            scanner: HeaderScanner::new(),
            prefix: BytesMut::new(),
            header_end: None,
            fragments: None,
            deflated: false,
            hasher: digest::Context::new(&digest::SHA256),
            max_header: 0,
            error: None,
            scan_position: 0,
            started: std::time::Instant::now(),
            writing: std::time::Duration::ZERO,
        }
    }

    /// Takes the next chunk of the part.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), ServiceError> {
        if self.error.is_some() {
            return Ok(()); // the part has failed; drain it
        }
        self.hasher.update(&chunk);
        if self.header_end.is_none() {
            self.prefix.extend_from_slice(&chunk);
            self.scan_more();
        } else if let Some(fragments) = self.fragments.as_mut() {
            fragments.feed(&chunk);
        }
        if let Some(writer) = self.writer.as_mut() {
            let started = std::time::Instant::now();
            writer.write(chunk).await?;
            self.writing += started.elapsed();
        }
        Ok(())
    }

    pub(super) fn scan_more(&mut self) {
        if self.deflated {
            if self.prefix.len() > self.max_header {
                self.error = Some(PartError::Dicom(DicomError::HeaderTooLarge(
                    self.max_header,
                )));
            }
            return;
        }
        match self.scanner.scan(&self.prefix) {
            Ok(Scan::PixelData(location)) => {
                self.header_end = Some((
                    location.element_offset,
                    location.value_offset,
                    location.value_length,
                ));
                if location.value_length.is_none() {
                    let mut fragments = FragmentScanner::new(location.value_offset);
                    fragments.feed(&self.prefix[location.value_offset as usize..]);
                    self.fragments = Some(fragments);
                }
                // Only the header is kept; pixel data goes to the blob alone.
                self.prefix.truncate(location.element_offset as usize);
            }
            Ok(Scan::Deflated) => self.deflated = true,
            Ok(Scan::NeedMore { resume_at }) => {
                self.scan_position = resume_at;
                if self.prefix.len() > self.max_header {
                    self.error = Some(PartError::Dicom(DicomError::HeaderTooLarge(
                        self.max_header,
                    )));
                }
            }
            Err(error) => self.error = Some(PartError::Dicom(error)),
        }
    }

    pub(super) fn meta(&self) -> Option<&FileMeta> {
        self.scanner.meta()
    }

    /// Parses the kept header once the part is complete.
    pub(super) fn parse(&mut self, size: u64) -> Result<ParsedPart, DicomError> {
        let meta = self
            .meta()
            .cloned()
            .ok_or(DicomError::NotDicom("the part is too short to be DICOM"))?;
        match self.header_end {
            Some((element_offset, value_offset, value_length)) => {
                if let Some(length) = value_length {
                    if value_offset + length > size {
                        return Err(DicomError::Truncated);
                    }
                }
                let header = instance::parse_header(&self.prefix, &meta)?;
                Ok((header, element_offset, Some((value_offset, value_length))))
            }
            None => {
                // No Pixel Data: the data set must end exactly at the end of the part.
                if !self.deflated && self.scan_position != self.prefix.len() {
                    return Err(DicomError::Truncated);
                }
                let header = instance::parse_header(&self.prefix, &meta)?;
                Ok((header, size, None))
            }
        }
    }

    /// SOP Class and Instance UIDs, if the header got far enough to tell.
    pub(super) fn known_uids(&self) -> (String, String) {
        let Some(meta) = self.meta() else {
            return Default::default();
        };
        let Ok(dataset) = instance::parse_dataset(&self.prefix, meta) else {
            return Default::default();
        };
        let uid = |tag| instance::text(&dataset, tag).unwrap_or_default();
        (
            uid(dicom_dictionary_std::tags::SOP_CLASS_UID),
            uid(dicom_dictionary_std::tags::SOP_INSTANCE_UID),
        )
    }
}
