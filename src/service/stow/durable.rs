//! Making a STOW request's blobs durable while the request goes on.
//!
//! Completing an upload (the last encrypted segment, flush, fsync, rename on
//! the file store; the multipart completion on a cloud store) is waiting on
//! the disk or the network, not work. Done in line, a request of ten parts
//! waits for ten fsyncs one after the other. Here each part's completion runs
//! as a task of its own while the next part arrives, so that the fsyncs of a
//! request (and of concurrent requests) overlap and the file system can serve
//! them with fewer journal commits. Durability does not change: the request
//! waits for every completion before the index commit that makes its
//! instances visible, and fails, as before, when one of them failed.
//!
//! Invariants the session relies on:
//! - a blob whose completion may still run is never deleted: its rename could
//!   come after the deletion and leave it behind (see [`Completions::settle`]
//!   and the session's drop);
//! - at most `storage.upload_completions_per_request` (default 16)
//!   completions of one request run at once, so a request of ten thousand
//!   parts holds a bounded number of tasks and open files.

use std::collections::VecDeque;
use std::time::Instant;

use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::service::ServiceError;
use crate::store::{BlobKey, BlobStore, BlobWriter, StoreError};
use crate::telemetry::metrics;

type Completion = JoinHandle<Result<(), StoreError>>;

/// The running upload completions of one STOW session.
#[derive(Default)]
pub(super) struct Completions {
    running: VecDeque<(BlobKey, Completion)>,
}

impl Completions {
    /// Starts completing `writer`'s upload in a task of its own, after waiting
    /// for the oldest running ones while `limit` run. Its error, if any, is
    /// returned by a later [`settle`](Self::settle) or
    /// [`wait_all`](Self::wait_all), or by a later call for the oldest ones.
    pub async fn start(
        &mut self,
        store: &BlobStore,
        writer: BlobWriter,
        limit: usize,
    ) -> Result<(), ServiceError> {
        while self.running.len() >= limit.max(1) {
            if let Some((_, oldest)) = self.running.pop_front() {
                joined(oldest.await)?;
            }
        }
        let key = writer.key().clone();
        // Counted as an upload in progress until it ends (shutdown waits for it).
        let guard = store.upload_guard();
        let task = tokio::spawn(
            async move {
                let finishing = Instant::now();
                let finished = writer.finish().await.map(|_| ());
                metrics::stow_stage("finish", finishing.elapsed());
                drop(guard);
                finished
            }
            .instrument(tracing::info_span!("stow.finish")),
        );
        self.running.push_back((key, task));
        Ok(())
    }

    /// Waits for the completion of `key`, if it runs: before its blob is
    /// deleted (a rejected part).
    pub async fn settle(&mut self, key: &BlobKey) -> Result<(), ServiceError> {
        let at = self.running.iter().position(|(k, _)| k == key);
        match at.and_then(|at| self.running.remove(at)) {
            Some((_, task)) => joined(task.await),
            None => Ok(()),
        }
    }

    /// Waits for every running completion; the first error, once all ended.
    pub async fn wait_all(&mut self) -> Result<(), ServiceError> {
        let mut first_error = None;
        while let Some((_, task)) = self.running.pop_front() {
            if let Err(error) = joined(task.await) {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The completions still running, for a session dropped before it waited
    /// for them: its blobs are deleted only after they end.
    pub fn take_running(&mut self) -> Vec<Completion> {
        self.running.drain(..).map(|(_, task)| task).collect()
    }
}

fn joined(
    result: Result<Result<(), StoreError>, tokio::task::JoinError>,
) -> Result<(), ServiceError> {
    match result {
        Ok(finished) => finished.map_err(ServiceError::from),
        Err(error) => Err(ServiceError::Task(format!("completing an upload: {error}"))),
    }
}
