//! NATS JetStream: the broker connection the event publisher, the job queue
//! and the workers share ([`Broker`]), and the sink that publishes every change
//! of the feed as a CloudEvent ([`NatsSink`]).
//!
//! The connection is made lazily and in the background: a server whose broker
//! is down starts and stores as usual, its sinks fail and retry (the backlog
//! grows), and catch up in order once the broker answers. Every message carries
//! `Nats-Msg-Id` (the event or job id), so that JetStream drops the repeats an
//! at-least-once delivery makes within the stream's duplicate window.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{Mutex, OnceCell};

use super::cloudevent::{cloud_event, event_id};
use super::{exponential_backoff, Sink, Stopped, TenantRef};
use crate::config::NatsConfig;
use crate::index::changes::Change;

/// The connection to the broker, made on first use and kept (the client
/// reconnects by itself), and the streams known to exist on it.
pub struct Broker {
    config: NatsConfig,
    client: OnceCell<async_nats::Client>,
    /// Streams created or found since the last failure (a restarted broker
    /// with a fresh store has none: any failure forgets them).
    ensured: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: not shown.
        f.debug_struct("Broker")
            .field("stream", &self.config.stream)
            .finish_non_exhaustive()
    }
}

/// A stream's shape: what the broker is asked to create when it is missing.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub name: String,
    pub subjects: Vec<String>,
    /// A work queue (each message removed once acknowledged by a worker).
    pub work_queue: bool,
}

impl Broker {
    pub fn new(config: &NatsConfig) -> Self {
        Self {
            config: config.clone(),
            client: OnceCell::new(),
            ensured: Mutex::new(Vec::new()),
        }
    }

    pub fn config(&self) -> &NatsConfig {
        &self.config
    }

    /// The seconds to wait for a publish acknowledgement.
    pub fn ack_timeout(&self) -> Duration {
        Duration::from_secs(self.config.ack_timeout_secs.max(1))
    }

    /// The client, connecting on first use. The connection is made in the
    /// background and retried for ever: this returns at once even when the
    /// broker is down (requests then fail until it is back).
    pub async fn client(&self) -> Result<async_nats::Client, String> {
        self.client
            .get_or_try_init(|| async {
                let mut options = async_nats::ConnectOptions::new()
                    .name("kastell")
                    .retry_on_initial_connect()
                    .max_reconnects(None)
                    .connection_timeout(Duration::from_secs(5))
                    // At most two seconds between attempts: after an outage,
                    // the backlog starts moving soon after the broker is back.
                    .reconnect_delay_callback(|attempts| {
                        Duration::from_millis((attempts as u64 * 100).min(2000))
                    })
                    .event_callback(|event| async move {
                        tracing::info!(%event, "events: NATS connection");
                    });
                if !self.config.credentials_file.is_empty() {
                    options = options
                        .credentials_file(&self.config.credentials_file)
                        .await
                        .map_err(|e| {
                            format!(
                                "events.nats.credentials_file {:?}: {e}",
                                self.config.credentials_file
                            )
                        })?;
                }
                options
                    .connect(self.config.url.as_str())
                    .await
                    .map_err(|e| format!("connecting to NATS: {e}"))
            })
            .await
            .cloned()
    }

    /// A JetStream context whose requests and publish acknowledgements wait
    /// at most the configured ack timeout.
    pub async fn jetstream(&self) -> Result<jetstream::Context, String> {
        let client = self.client().await?;
        Ok(jetstream::ContextBuilder::new()
            .timeout(self.ack_timeout())
            .build(client))
    }

    /// Makes sure `spec`'s stream exists (created when missing, an existing
    /// one is left as it is), once until the next [`Broker::forget_streams`].
    pub async fn ensure_stream(
        &self,
        js: &jetstream::Context,
        spec: &StreamSpec,
    ) -> Result<(), String> {
        if self.ensured.lock().await.contains(&spec.name) {
            return Ok(());
        }
        let config = stream::Config {
            name: spec.name.clone(),
            subjects: spec.subjects.clone(),
            retention: if spec.work_queue {
                stream::RetentionPolicy::WorkQueue
            } else {
                stream::RetentionPolicy::Limits
            },
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(self.config.duplicate_window_secs.max(1)),
            ..Default::default()
        };
        js.get_or_create_stream(config)
            .await
            .map_err(|e| format!("NATS stream {}: {e}", spec.name))?;
        self.ensured.lock().await.push(spec.name.clone());
        Ok(())
    }

    /// Forgets which streams exist (after a failure: the broker may have come
    /// back without them).
    pub async fn forget_streams(&self) {
        self.ensured.lock().await.clear();
    }

    /// The events stream.
    pub fn events_stream(&self) -> StreamSpec {
        StreamSpec {
            name: self.config.stream.clone(),
            subjects: vec![format!("{}.>", self.config.subject_prefix)],
            work_queue: false,
        }
    }

    /// The jobs' work-queue stream.
    pub fn jobs_stream(&self) -> StreamSpec {
        StreamSpec {
            name: self.config.jobs_stream.clone(),
            subjects: vec![format!("{}.>", self.config.jobs_subject_prefix)],
            work_queue: true,
        }
    }

    /// Publishes `messages` (subject, message id, payload) into `spec`'s
    /// stream, all first, then awaits their acknowledgements in order. On the
    /// first failure, says how many at the head were acknowledged.
    pub async fn publish_all(
        &self,
        spec: &StreamSpec,
        messages: Vec<(String, String, Bytes)>,
    ) -> Result<(), Stopped> {
        let stopped = |delivered: usize, error: String| Stopped { delivered, error };
        let js = self.jetstream().await.map_err(|e| stopped(0, e))?;
        if let Err(error) = self.ensure_stream(&js, spec).await {
            return Err(stopped(0, error));
        }
        let mut pending = Vec::with_capacity(messages.len());
        let mut failure = None;
        for (subject, id, payload) in messages {
            let publish = jetstream::message::PublishMessage::build()
                .payload(payload)
                .message_id(id);
            match js.send_publish(subject, publish).await {
                Ok(ack) => pending.push(ack),
                Err(error) => {
                    failure = Some(format!("publishing to NATS: {error}"));
                    break;
                }
            }
        }
        let sent = pending.len();
        for (delivered, ack) in pending.into_iter().enumerate() {
            if let Err(error) = ack.await {
                self.forget_streams().await;
                return Err(stopped(
                    delivered,
                    format!("NATS did not acknowledge a publish: {error}"),
                ));
            }
        }
        match failure {
            None => Ok(()),
            Some(error) => {
                self.forget_streams().await;
                // Every publish sent before the failure was acknowledged.
                Err(stopped(sent, error))
            }
        }
    }
}

/// Publishes every change of the feed as a CloudEvent to
/// `{subject_prefix}.{tenant}.{action}` (sink `nats`).
pub struct NatsSink {
    broker: std::sync::Arc<Broker>,
}

impl NatsSink {
    pub fn new(broker: std::sync::Arc<Broker>) -> Self {
        Self { broker }
    }
}

#[async_trait]
impl Sink for NatsSink {
    fn name(&self) -> &str {
        "nats"
    }

    /// The broker is retried at most every five seconds: an outage ends
    /// with a short wait.
    fn backoff(&self, attempt: u32) -> Duration {
        exponential_backoff(attempt, Duration::from_millis(250), Duration::from_secs(5))
    }

    async fn deliver(&self, tenant: &TenantRef, changes: &[Change]) -> Result<(), Stopped> {
        let config = self.broker.config();
        let patients = if config.include_patient {
            patients_of(tenant, changes)
                .await
                .map_err(|error| Stopped {
                    delivered: 0,
                    error,
                })?
        } else {
            Default::default()
        };
        let messages = changes
            .iter()
            .map(|change| {
                let patient = change
                    .study_instance_uid
                    .as_ref()
                    .and_then(|study| patients.get(study))
                    .and_then(|p| p.as_ref());
                let event = cloud_event(&tenant.name, change, patient);
                (
                    format!(
                        "{}.{}.{}",
                        config.subject_prefix, tenant.name, change.action
                    ),
                    event_id(&tenant.name, change.seq),
                    Bytes::from(event.to_string()),
                )
            })
            .collect();
        self.broker
            .publish_all(&self.broker.events_stream(), messages)
            .await
    }
}

/// The patient attributes of the studies `changes` name (those still stored).
async fn patients_of(
    tenant: &TenantRef,
    changes: &[Change],
) -> Result<std::collections::HashMap<String, Option<crate::index::changes::StudyPatient>>, String>
{
    let studies: std::collections::BTreeSet<String> = changes
        .iter()
        .filter_map(|c| c.study_instance_uid.clone())
        .collect();
    tenant
        .services
        .with_index(move |index| {
            let mut found = std::collections::HashMap::new();
            for study in studies {
                let patient = index.study_patient(&study)?;
                found.insert(study, patient);
            }
            Ok(found)
        })
        .await
        .map_err(|e| format!("reading the patient of a study: {e}"))
}
