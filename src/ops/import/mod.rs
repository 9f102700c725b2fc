//! `kastell import DIR`: stores every DICOM file under a directory through the
//! STOW pipeline ([`StowSession`]), so that an imported instance is validated,
//! encrypted, indexed and deduplicated exactly like one sent over DICOMweb.
//!
//! The directory is walked first (names and sizes only, for the totals behind the
//! progress bar's ETA). Then `jobs` workers take files in turn; each streams its
//! files in fixed-size chunks into the session of its current batch and indexes
//! the batch in one transaction. Nothing holds more than a file's header and one
//! chunk in memory, whatever the size of the studies.
//!
//! Running the import again stores nothing twice: before uploading, a worker reads
//! the file's header, asks the index what it holds under that SOP Instance UID,
//! and when the size matches it hashes the file (the bytes it would send). An
//! equal SHA-256 means the very bytes are stored: the file is counted as already
//! present without being encrypted, written and thrown away again. Any difference
//! (the file changed since) goes to the pipeline, which stores it, replaces the
//! old object (`dicomweb.overwrite_existing`) or refuses it (0111) as for STOW.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use dicom_dictionary_std::tags;
use ring::digest;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::dicom::files::{self, FileKind, HEAD_BYTES};
use crate::dicom::header::{HeaderScanner, Scan};
use crate::dicom::instance;
use crate::service::stow::{PartOutcome, StowSession};
use crate::service::{ServiceError, Services};

mod report;
pub use report::{FailureGroup, ImportReport};

/// Bytes read from a file at a time, each handed to the pipeline as one chunk.
const CHUNK_BYTES: usize = 256 * 1024;
/// How much of a file is read, at most, to learn its SOP Instance UID before
/// uploading. A larger header is uploaded without the check: the pipeline still
/// recognises bytes it stored before, at the cost of an upload.
const IDENTITY_HEADER_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("an import worker failed: {0}")]
    Task(String),
}

#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Files imported in parallel.
    pub jobs: usize,
    /// Files indexed per transaction (one STOW session)...
    pub batch_files: usize,
    /// ... or fewer, once their bytes reach this: an interrupted import loses at
    /// most this much work per worker (a re-run stores it).
    pub batch_bytes: u64,
    /// At most this many files a second over all workers (`--rate`).
    pub files_per_second: Option<u32>,
}

impl ImportOptions {
    pub fn with_jobs(jobs: usize) -> Self {
        Self {
            jobs: jobs.max(1),
            batch_files: 32,
            batch_bytes: 256 * 1024 * 1024,
            files_per_second: None,
        }
    }
}

/// What became of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOutcome {
    /// Stored now (or replaced an older version, with overwrite enabled).
    Stored,
    /// The same bytes were stored before.
    AlreadyPresent,
    /// Not an instance to store (not DICOM, a DICOMDIR, a link); why.
    Skipped(String),
    /// Should have been stored and was not; why.
    Failed(String),
}

/// Told of the import's progress (the terminal's progress bar).
pub trait Observer: Send + Sync {
    /// The walk is done: this many entries (files and unreadable ones) to go.
    fn started(&self, _files: u64, _bytes: u64) {}
    fn file_done(&self, _bytes: u64, _outcome: &FileOutcome) {}
}

/// An observer that ignores everything.
pub struct Quiet;

impl Observer for Quiet {}

/// A file found by the walk.
struct Candidate {
    path: PathBuf,
    size: u64,
}

/// Collects what the workers report.
struct Recorder {
    root: PathBuf,
    report: Mutex<ImportReport>,
    observer: Arc<dyn Observer>,
}

impl Recorder {
    fn record(&self, path: &Path, bytes: u64, outcome: FileOutcome) {
        let relative = path.strip_prefix(&self.root).unwrap_or(path);
        self.report
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(relative, bytes, &outcome);
        self.observer.file_done(bytes, &outcome);
    }
}

/// Imports every DICOM file under `dir` into a tenant (the default one when
/// `None`), `options.jobs` files at a time (`kastell import`).
pub async fn import_dir(
    config: &crate::config::Config,
    dir: &std::path::Path,
    tenant: Option<&str>,
    options: ImportOptions,
    observer: Arc<dyn Observer>,
) -> anyhow::Result<ImportReport> {
    let jobs = options.jobs;
    let mut config = config.clone();
    // Each worker may hold a connection at once (a look-up, a commit).
    config.index.pool_size = config.index.pool_size.max(jobs as u32 + 1);
    let tenants = crate::service::tenants::Tenants::new(
        crate::app::build_services(&config)?,
        &config.keys.default_tenant,
        &config.effective_index_url(),
        crate::app::index_options(config.index.pool_size, &config),
    );
    let tenant = tenant.unwrap_or(&config.keys.default_tenant);
    let services = match tenants.get(tenant).await {
        Ok(services) => services,
        Err(ServiceError::NotFound(_)) => {
            anyhow::bail!("no tenant {tenant}; `kastell tenants list` shows them")
        }
        Err(ServiceError::TenantDisabled) => anyhow::bail!(
            "tenant {tenant} is disabled; `kastell tenants enable {tenant}` to import into it"
        ),
        Err(error) => return Err(error.into()),
    };
    Ok(run(services, dir, &options, observer).await?)
}

/// Imports every file under `dir` into the tenant of `services`.
pub async fn run(
    services: Services,
    dir: &Path,
    options: &ImportOptions,
    observer: Arc<dyn Observer>,
) -> Result<ImportReport, ImportError> {
    let started = Instant::now();
    if !dir.is_dir() {
        return Err(ImportError::NotADirectory(dir.to_path_buf()));
    }
    let root = dir.to_path_buf();
    let (candidates, unreadable) = tokio::task::spawn_blocking(move || walk(&root))
        .await
        .map_err(|e| ImportError::Task(e.to_string()))?;
    observer.started(
        (candidates.len() + unreadable.len()) as u64,
        candidates.iter().map(|c| c.size).sum(),
    );
    let recorder = Arc::new(Recorder {
        root: dir.to_path_buf(),
        report: Mutex::new(ImportReport::default()),
        observer,
    });
    for (path, outcome) in unreadable {
        recorder.record(&path, 0, outcome);
    }
    let work = Arc::new(Work {
        services: services.clone(),
        files: candidates,
        next: AtomicUsize::new(0),
        pacer: options.files_per_second.map(Pacer::new),
        options: options.clone(),
        recorder: recorder.clone(),
    });
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..options.jobs.max(1) {
        workers.spawn(work.clone().run());
    }
    while let Some(joined) = workers.join_next().await {
        joined.map_err(|e| ImportError::Task(e.to_string()))?;
    }
    // Duplicates the pipeline threw away are deleted in the background; do it now,
    // before the runtime ends, so that they do not wait for the orphan sweep.
    services
        .store
        .finish_detached(Duration::from_secs(10))
        .await;
    let mut report = std::mem::take(
        &mut *recorder
            .report
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Walks `dir` (links are not followed: a link to a directory could loop, or lead
/// outside the tree the operator named). Returns the regular files, sorted, and
/// the entries that are skipped or failed already.
fn walk(dir: &Path) -> (Vec<Candidate>, Vec<(PathBuf, FileOutcome)>) {
    let mut files = Vec::new();
    let mut other = Vec::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                let path = error.path().unwrap_or(dir).to_path_buf();
                let why = error
                    .io_error()
                    .map_or_else(|| error.to_string(), |e| e.to_string());
                other.push((path, FileOutcome::Failed(format!("cannot read: {why}"))));
                continue;
            }
        };
        let kind = entry.file_type();
        if kind.is_dir() {
            continue;
        }
        let path = entry.path().to_path_buf();
        if kind.is_symlink() {
            other.push((
                path,
                FileOutcome::Skipped("symbolic link (not followed)".into()),
            ));
        } else if !kind.is_file() {
            other.push((path, FileOutcome::Skipped("not a regular file".into())));
        } else {
            match entry.metadata() {
                Ok(meta) => files.push(Candidate {
                    path,
                    size: meta.len(),
                }),
                Err(error) => {
                    other.push((path, FileOutcome::Failed(format!("cannot read: {error}"))))
                }
            }
        }
    }
    (files, other)
}

/// The shared state of the workers.
struct Work {
    services: Services,
    files: Vec<Candidate>,
    /// The next file to take.
    next: AtomicUsize,
    /// `--rate`: the slot each file waits for.
    pacer: Option<Pacer>,
    options: ImportOptions,
    recorder: Arc<Recorder>,
}

/// The files being stored in one STOW session, indexed together.
struct Batch {
    session: StowSession,
    /// For each part begun in the session, the file it holds once it was
    /// finished (`None`: the file failed while streaming and was reported then).
    parts: Vec<Option<usize>>,
    bytes: u64,
}

/// What importing one file did, before its batch is indexed.
enum Step {
    Done(FileOutcome),
    /// Streamed into the batch; its outcome comes with the batch's commit.
    Queued,
}

impl Work {
    async fn run(self: Arc<Self>) {
        let mut batch = self.new_batch();
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(file) = self.files.get(i) else {
                break;
            };
            if let Some(pacer) = &self.pacer {
                pacer.wait().await;
            }
            match self.import_file(&mut batch, i).await {
                Ok(Step::Done(outcome)) => self.recorder.record(&file.path, file.size, outcome),
                Ok(Step::Queued) => {}
                Err(reason) => {
                    self.recorder
                        .record(&file.path, file.size, FileOutcome::Failed(reason))
                }
            }
            let queued = batch.parts.iter().flatten().count();
            if queued >= self.options.batch_files || batch.bytes >= self.options.batch_bytes {
                let full = std::mem::replace(&mut batch, self.new_batch());
                self.commit(full).await;
            }
        }
        self.commit(batch).await;
    }

    fn new_batch(&self) -> Batch {
        Batch {
            session: StowSession::new(self.services.clone(), None),
            parts: Vec::new(),
            bytes: 0,
        }
    }

    /// Indexes a batch and reports the outcome of each of its files.
    async fn commit(&self, batch: Batch) {
        if batch.parts.is_empty() {
            return;
        }
        let files: Vec<(usize, usize)> = batch
            .parts
            .iter()
            .enumerate()
            .filter_map(|(part, file)| file.map(|file| (part, file)))
            .collect();
        match batch.session.commit().await {
            Ok(outcome) => {
                for (part, i) in files {
                    let file = &self.files[i];
                    let result = match outcome.parts().get(part) {
                        Some(PartOutcome::Stored | PartOutcome::Replaced) => FileOutcome::Stored,
                        Some(PartOutcome::AlreadyStored) => FileOutcome::AlreadyPresent,
                        Some(PartOutcome::Failed { reason, detail }) => {
                            FileOutcome::Failed(format!("{reason:04X} {detail}"))
                        }
                        None => FileOutcome::Failed("no outcome from the store pipeline".into()),
                    };
                    self.recorder.record(&file.path, file.size, result);
                }
            }
            Err(error) => {
                for (_, i) in files {
                    let file = &self.files[i];
                    self.recorder.record(
                        &file.path,
                        file.size,
                        FileOutcome::Failed(format!("not indexed: {error}")),
                    );
                }
            }
        }
    }

    /// Imports file `i` into `batch`: skipped, found present, or streamed into
    /// the session. `Err` carries the reason it failed.
    async fn import_file(&self, batch: &mut Batch, i: usize) -> Result<Step, String> {
        let file = &self.files[i];
        let unreadable = |e: std::io::Error| format!("cannot read: {e}");
        let mut reader = tokio::fs::File::open(&file.path)
            .await
            .map_err(unreadable)?;
        let head = read_up_to(&mut reader, HEAD_BYTES)
            .await
            .map_err(unreadable)?;
        let name = file
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let prefix = match files::classify(&name, &head) {
            FileKind::Dicomdir => {
                return Ok(Step::Done(FileOutcome::Skipped(
                    "DICOMDIR (a media directory, not an instance)".into(),
                )))
            }
            FileKind::NotDicom(why) => {
                return Ok(Step::Done(FileOutcome::Skipped(format!(
                    "not DICOM: {why}"
                ))))
            }
            FileKind::Part10 => Vec::new(),
            FileKind::Wrapped { prefix, .. } => prefix,
        };
        let mut eof = head.len() < HEAD_BYTES;
        // The stream as the pipeline will see it, as far as it has been read.
        let mut start = BytesMut::with_capacity(prefix.len() + head.len());
        start.extend_from_slice(&prefix);
        start.extend_from_slice(&head);
        let mut scanner = HeaderScanner::new();
        let identity = loop {
            match identify(&mut scanner, &start, eof) {
                Identity::Known(uid) => break Some(uid),
                Identity::Unknown => break None,
                Identity::NeedMore if start.len() >= IDENTITY_HEADER_BYTES => break None,
                Identity::NeedMore => {
                    let more = read_up_to(&mut reader, CHUNK_BYTES)
                        .await
                        .map_err(unreadable)?;
                    eof = more.len() < CHUNK_BYTES;
                    start.extend_from_slice(&more);
                }
            }
        };
        let stream_len = prefix.len() as u64 + file.size;
        if let Some(uid) = identity {
            let stored = self
                .services
                .with_index(move |index| index.stored_fingerprint(&uid))
                .await
                .map_err(|e| e.to_string())?;
            if let Some((_, sha256)) = stored.filter(|(size, _)| *size as u64 == stream_len) {
                let mut hasher = digest::Context::new(&digest::SHA256);
                hasher.update(&start);
                if !eof {
                    loop {
                        let chunk = read_up_to(&mut reader, CHUNK_BYTES)
                            .await
                            .map_err(unreadable)?;
                        hasher.update(&chunk);
                        if chunk.len() < CHUNK_BYTES {
                            break;
                        }
                    }
                }
                if hex::encode(hasher.finish().as_ref()) == sha256 {
                    return Ok(Step::Done(FileOutcome::AlreadyPresent));
                }
                // Same instance UID and size, other bytes: read it again from the
                // start, for the pipeline to judge like any other.
                reader.seek(SeekFrom::Start(0)).await.map_err(unreadable)?;
                start = BytesMut::from(&prefix[..]);
                eof = false;
            }
        }
        let failed = |e: ServiceError| e.to_string();
        batch.parts.push(None);
        let mut part = batch.session.begin_part(true).await.map_err(failed)?;
        part.write(start.freeze()).await.map_err(failed)?;
        while !eof {
            let chunk = read_up_to(&mut reader, CHUNK_BYTES)
                .await
                .map_err(unreadable)?;
            eof = chunk.len() < CHUNK_BYTES;
            if !chunk.is_empty() {
                part.write(Bytes::from(chunk)).await.map_err(failed)?;
            }
        }
        batch.session.finish_part(part).await.map_err(failed)?;
        if let Some(last) = batch.parts.last_mut() {
            *last = Some(i);
        }
        batch.bytes += stream_len;
        Ok(Step::Queued)
    }
}

/// Reads until `limit` bytes or the end of the file: fewer means the end.
async fn read_up_to(reader: &mut tokio::fs::File, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut buffer = Vec::with_capacity(limit.min(CHUNK_BYTES));
    reader.take(limit as u64).read_to_end(&mut buffer).await?;
    Ok(buffer)
}

enum Identity {
    Known(String),
    /// It cannot be told cheaply (deflated, malformed, no UID): upload, and let
    /// the pipeline decide and explain.
    Unknown,
    NeedMore,
}

/// The SOP Instance UID of a stream, from its header (everything before Pixel
/// Data, or the whole stream if it has none).
fn identify(scanner: &mut HeaderScanner, stream: &[u8], eof: bool) -> Identity {
    let header_end = match scanner.scan(stream) {
        Ok(Scan::PixelData(location)) => location.element_offset as usize,
        Ok(Scan::NeedMore { .. }) if eof => stream.len(),
        Ok(Scan::NeedMore { .. }) => return Identity::NeedMore,
        // A deflated data set would have to be inflated whole to be read.
        Ok(Scan::Deflated) | Err(_) => return Identity::Unknown,
    };
    let Some(meta) = scanner.meta() else {
        return Identity::Unknown;
    };
    match instance::parse_dataset(&stream[..header_end], meta) {
        Ok(dataset) => instance::text(&dataset, tags::SOP_INSTANCE_UID)
            .filter(|uid| !uid.is_empty())
            .map_or(Identity::Unknown, Identity::Known),
        Err(_) => Identity::Unknown,
    }
}

/// Spaces files out evenly to at most a rate, over all workers: each takes the
/// next free slot (no bursts after an idle spell).
struct Pacer {
    interval: std::time::Duration,
    next: Mutex<tokio::time::Instant>,
}

impl Pacer {
    fn new(per_second: u32) -> Self {
        Pacer {
            interval: std::time::Duration::from_secs(1) / per_second.max(1),
            next: Mutex::new(tokio::time::Instant::now()),
        }
    }

    async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let slot = (*next).max(tokio::time::Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}
