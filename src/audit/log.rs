//! The server's audit handle: record from request handlers without waiting for the
//! database, write in batches from one background task.
//!
//! * **Batching.** One writer task per process takes events off a bounded channel
//!   and appends them in one transaction per batch: up to `max_batch` events, or
//!   whatever arrived within `max_delay` of the batch's first event, or everything
//!   before a [`AuditLog::flush`]. A busy server thus pays one commit (one fsync on
//!   SQLite) per few hundred requests, not one per request.
//! * **Backpressure, never silent loss.** [`AuditLog::record`] awaits room in the
//!   channel. Normally that is immediate; when the database stalls and the
//!   channel fills, requests wait for their audit record rather than the record
//!   being dropped: an archive that cannot audit should slow down, not carry on
//!   unaudited. A failed batch is kept and retried with backoff (logged as an
//!   error each time), never discarded.
//! * **One chain across processes.** Each batch takes the writers' lock
//!   (`pg_advisory_xact_lock` on PostgreSQL, the write transaction on SQLite)
//!   and reads the head inside that transaction (see `Index::append_audit`), so
//!   servers sharing a database interleave their batches on one chain. The
//!   writer also remembers the head it last wrote and reports loudly if the
//!   stored head has moved backwards since: the newest rows were removed, the
//!   one tampering the chain itself cannot show.
//! * **Writes and deletes are durable before they are answered.**
//!   [`AuditLog::record_committed`] waits until its record is committed: the
//!   server records STOW and DELETE that way, so a request acknowledged and then
//!   a crash (`kill -9`) still leaves its record. Reads stay batched.
//! * **Refusals cannot flood the trail**: [`AuditLog::record_refusal`] goes
//!   through a [`RefusalLimiter`]; a task writes the aggregated records of
//!   windows that ended, and [`AuditLog::close`] those still open.
//! * **Blocking work** (the database) runs on tokio's blocking pool.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::limit::{RefusalLimiter, RefusalLimits};
use super::{chain, AuditError, AuditEvent, ChainKey};
use crate::index::audit::AuditHead;
use crate::index::Index;

/// Sizes and delays of the writer.
#[derive(Debug, Clone, Copy)]
pub struct AuditLogOptions {
    /// Events waiting in the channel before `record` waits (backpressure).
    pub capacity: usize,
    /// Most events per transaction.
    pub max_batch: usize,
    /// Longest an event waits for its batch to fill.
    pub max_delay: Duration,
    /// How many refusals (login failures, access denied) are recorded one by one.
    pub refusals: RefusalLimits,
}

impl Default for AuditLogOptions {
    fn default() -> Self {
        AuditLogOptions {
            capacity: 10_000,
            max_batch: 500,
            max_delay: Duration::from_millis(200),
            refusals: RefusalLimits::default(),
        }
    }
}

enum Message {
    Event(Box<AuditEvent>),
    /// Answered once every event sent before it is stored.
    Flush(oneshot::Sender<()>),
}

/// Cheap to clone: every clone feeds the same writer. The writer stops once the
/// last clone is dropped and what was recorded is written; call
/// [`AuditLog::flush`] before the runtime shuts down so nothing is left behind.
///
/// The server is meant to start one in `app::run` with
/// `AuditLog::start(services.index.clone(), chain_key)` (inside the server's runtime), hand
/// clones to the handlers through the app state, and after `server.run().await`
/// call `flush()` under a timeout, so the last batch is stored before exit.
#[derive(Clone)]
pub struct AuditLog {
    sender: mpsc::Sender<Message>,
    refusals: Arc<RefusalLimiter>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field(
                "queued",
                &(self.sender.max_capacity() - self.sender.capacity()),
            )
            .finish()
    }
}

impl AuditLog {
    /// Starts the writer for `index` with the default sizes. Must be called within
    /// a tokio runtime (the server's); the writer runs as a task of it.
    pub fn start(index: Index, key: ChainKey) -> AuditLog {
        Self::start_with(index, key, AuditLogOptions::default())
    }

    pub fn start_with(index: Index, key: ChainKey, options: AuditLogOptions) -> AuditLog {
        let (sender, receiver) = mpsc::channel(options.capacity.max(1));
        tokio::spawn(run_writer(index, key, receiver, options));
        let refusals = Arc::new(RefusalLimiter::new(options.refusals));
        tokio::spawn(write_ended_windows(
            sender.downgrade(),
            refusals.clone(),
            options.refusals.window,
        ));
        AuditLog { sender, refusals }
    }

    /// Queues an event. Returns at once unless the channel is full, then waits for
    /// room (backpressure, see the module documentation). Fails only when the
    /// writer is gone, which is logged as an error: the event is not recorded.
    pub async fn record(&self, event: AuditEvent) -> Result<(), AuditError> {
        self.sender
            .send(Message::Event(Box::new(event)))
            .await
            .map_err(|lost| {
                if let Message::Event(event) = lost.0 {
                    tracing::error!(
                        action = %event.action,
                        tenant = %event.tenant,
                        "AUDIT EVENT LOST: the audit writer has stopped"
                    );
                }
                AuditError::WriterStopped
            })
    }

    /// Records events and waits until they are committed (with every event
    /// recorded before them): for what must be in the trail before it is
    /// acknowledged (stores, deletes).
    pub async fn record_committed(
        &self,
        events: impl IntoIterator<Item = AuditEvent>,
    ) -> Result<(), AuditError> {
        for event in events {
            self.record(event).await?;
        }
        self.flush().await
    }

    /// Records a refusal (login failure, access denied) within the limits of
    /// its client: beyond them it is counted in an aggregated record instead.
    pub async fn record_refusal(&self, event: AuditEvent) -> Result<(), AuditError> {
        for event in self.refusals.admit(event, std::time::Instant::now()) {
            self.record(event).await?;
        }
        Ok(())
    }

    /// At shutdown: records the aggregates of refusal windows still open, then
    /// waits until everything recorded is stored.
    pub async fn close(&self) -> Result<(), AuditError> {
        for event in self.refusals.drain() {
            self.record(event).await?;
        }
        self.flush().await
    }

    /// Waits until every event recorded before this call is stored.
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (done, stored) = oneshot::channel();
        self.sender
            .send(Message::Flush(done))
            .await
            .map_err(|_| AuditError::WriterStopped)?;
        stored.await.map_err(|_| AuditError::WriterStopped)
    }
}

/// Hands the aggregated records of refusal windows that ended to the writer, a
/// few times per window, until the last [`AuditLog`] is gone.
async fn write_ended_windows(
    sender: mpsc::WeakSender<Message>,
    refusals: Arc<RefusalLimiter>,
    window: Duration,
) {
    let period = (window / 4).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(period).await;
        let Some(sender) = sender.upgrade() else {
            return;
        };
        for event in refusals.ended(std::time::Instant::now()) {
            if sender.send(Message::Event(Box::new(event))).await.is_err() {
                return;
            }
        }
    }
}

async fn run_writer(
    index: Index,
    key: ChainKey,
    mut receiver: mpsc::Receiver<Message>,
    options: AuditLogOptions,
) {
    let max_batch = options.max_batch.max(1);
    let mut last_written: Option<AuditHead> = None;
    let mut batch: Vec<AuditEvent> = Vec::with_capacity(max_batch);
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    let mut open = true;
    while open {
        match receiver.recv().await {
            Some(message) => take(message, &mut batch, &mut waiting),
            None => break,
        }
        let deadline = Instant::now() + options.max_delay;
        while batch.len() < max_batch && waiting.is_empty() {
            tokio::select! {
                message = receiver.recv() => match message {
                    Some(message) => take(message, &mut batch, &mut waiting),
                    None => {
                        open = false;
                        break;
                    }
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        if !batch.is_empty() {
            let events = std::mem::replace(&mut batch, Vec::with_capacity(max_batch));
            last_written = write_until_stored(&index, &key, events, last_written).await;
        }
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
    }
    tracing::debug!("the audit writer stopped: every recorded event is stored");
}

fn take(message: Message, batch: &mut Vec<AuditEvent>, waiting: &mut Vec<oneshot::Sender<()>>) {
    match message {
        Message::Event(event) => batch.push(*event),
        Message::Flush(done) => waiting.push(done),
    }
}

/// Appends one batch, retrying with backoff until the database takes it: the
/// batch is never dropped. Returns the head written.
async fn write_until_stored(
    index: &Index,
    key: &ChainKey,
    events: Vec<AuditEvent>,
    last_written: Option<AuditHead>,
) -> Option<AuditHead> {
    let mut backoff = Duration::from_millis(100);
    let mut events = events;
    loop {
        let index = index.clone();
        let key = key.clone();
        let known = last_written.clone();
        let attempt = tokio::task::spawn_blocking(move || {
            let result = index.append_audit(|head| {
                check_head(known.as_ref(), head);
                chain::seal(&key, head, &events)
            });
            (events, result)
        })
        .await;
        let error = match attempt {
            Ok((_, Ok(head))) => {
                tracing::debug!(seq = head.as_ref().map(|h| h.seq), "audit batch stored");
                return head;
            }
            Ok((back, Err(error))) => {
                events = back;
                AuditError::Index(error)
            }
            // The blocking task panicked and took the batch with it; nothing else
            // can be done for those events than saying so.
            Err(join) => {
                tracing::error!(error = %join, "AUDIT EVENTS LOST: the audit write task failed");
                return last_written;
            }
        };
        tracing::error!(
            %error,
            events = events.len(),
            retry_in_ms = backoff.as_millis() as u64,
            "the audit trail could not be written; retrying (requests wait once the queue is full)"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Reports a stored head behind the one this writer wrote last: rows were
/// removed from the end of the trail (or rewritten), which the chain itself
/// cannot show. Another process moving the head forward is normal.
fn check_head(last_written: Option<&AuditHead>, stored: Option<&AuditHead>) {
    let Some(mine) = last_written else {
        return;
    };
    let tampered = match stored {
        None => true,
        Some(stored) => {
            stored.seq < mine.seq || (stored.seq == mine.seq && stored.hash != mine.hash)
        }
    };
    if tampered {
        tracing::error!(
            written_seq = mine.seq,
            stored_seq = stored.map(|h| h.seq),
            "AUDIT TRAIL TAMPERED: its newest rows were removed or rewritten since this process wrote them"
        );
    }
}
