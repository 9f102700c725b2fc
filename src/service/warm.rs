//! Builds each series' cached metadata once the series has been quiet for a
//! while after STOW, so that the first viewer to open a new study gets it from
//! one object instead of waiting for every instance's header to be read and
//! decrypted. STOW only announces which series it touched; a background task
//! waits until a series has had no new instance for `quiet` (a modality sends a
//! series in many requests: building after each would redo the work each time),
//! then builds it, one series at a time. Losing an announcement costs nothing
//! but speed: the metadata is built on its first request, as without warming.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{Scope, Services};

/// Announcements waiting in the channel; beyond, they are dropped.
const QUEUE: usize = 1024;
/// Series waiting for their quiet time; beyond, new ones are not warmed.
const MAX_PENDING: usize = 10_000;

/// A series STOW touched.
struct Touched {
    services: Services,
    study: String,
    series: String,
}

/// The handle STOW announces to. Cheap to clone; the task starts with the
/// first announcement (inside the server's runtime).
#[derive(Clone)]
pub struct MetadataWarmer {
    quiet: Duration,
    sender: Arc<OnceLock<mpsc::Sender<Touched>>>,
}

impl std::fmt::Debug for MetadataWarmer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataWarmer")
            .field("quiet", &self.quiet)
            .finish()
    }
}

impl MetadataWarmer {
    /// Warms series quiet for `quiet`; `Duration::ZERO` turns warming off.
    pub fn new(quiet: Duration) -> Self {
        Self {
            quiet,
            sender: Arc::new(OnceLock::new()),
        }
    }

    /// STOW stored instances of `series` (in `study`) for the tenant of `services`.
    pub fn touched(&self, services: &Services, study: &str, series: &str) {
        if self.quiet.is_zero() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let quiet = self.quiet;
        let sender = self.sender.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(QUEUE);
            runtime.spawn(run(receiver, quiet));
            sender
        });
        let touched = Touched {
            services: services.clone(),
            study: study.to_string(),
            series: series.to_string(),
        };
        if sender.try_send(touched).is_err() {
            tracing::debug!("metadata warmer busy: the series will be built on first request");
        }
    }
}

async fn run(mut receiver: mpsc::Receiver<Touched>, quiet: Duration) {
    // (tenant, series) → the latest announcement and when it came.
    let mut pending: HashMap<(String, String), (Touched, Instant)> = HashMap::new();
    let mut tick = tokio::time::interval(quiet.min(Duration::from_secs(1)) / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            announcement = receiver.recv() => {
                let Some(touched) = announcement else {
                    return;
                };
                let key = (
                    touched.services.store.tenant().to_string(),
                    touched.series.clone(),
                );
                if pending.len() < MAX_PENDING || pending.contains_key(&key) {
                    pending.insert(key, (touched, Instant::now()));
                }
            }
            _ = tick.tick() => {
                let due: Vec<(String, String)> = pending
                    .iter()
                    .filter(|(_, (_, at))| at.elapsed() >= quiet)
                    .map(|(key, _)| key.clone())
                    .collect();
                for key in due {
                    if let Some((touched, _)) = pending.remove(&key) {
                        warm(touched).await;
                    }
                }
            }
        }
    }
}

async fn warm(touched: Touched) {
    let Touched {
        services,
        study,
        series,
    } = touched;
    let scope = Scope::Series {
        study,
        series: series.clone(),
    };
    let instances = match services
        .with_index(move |index| index.instances(&scope))
        .await
    {
        Ok(instances) => instances,
        Err(error) => {
            tracing::debug!(%error, "metadata warmer: series not found");
            return;
        }
    };
    let started = Instant::now();
    match super::wado::warm_series(&services, instances).await {
        Ok(true) => tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "series metadata built ahead of its first request"
        ),
        Ok(false) => {}
        Err(error) => tracing::debug!(%error, "metadata warmer: series not built"),
    }
}
