//! `[events]`: the change feed's HTTP paging, "study stable", the broker
//! (NATS JetStream) events and jobs go to, the webhook subscriptions, and the
//! workers that run the jobs (issue 14).

use serde::{Deserialize, Serialize};

use super::sovereignty::Location;
use super::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Seconds a study must go without a new instance before one "study-stable"
    /// change announces it complete (0: never announced).
    pub stable_after_secs: u64,
    /// Milliseconds between two looks at the feed by an idle sink, and between
    /// two looks for studies that became stable.
    pub poll_interval_ms: u64,
    /// Most changes one `GET …/changefeed` page returns (`limit` above is 400).
    pub max_page: u32,
    /// Changes one sink delivery handles at most.
    pub batch: u32,
    /// Seconds a process holds a sink's lease (another process takes the sink
    /// over this long after the holder died).
    pub lease_secs: u64,
    /// Whether this process runs the sinks and the stable-study announcements
    /// (`kastell serve`); workers (`kastell worker`) always run jobs.
    pub dispatch: bool,
    /// The broker: empty `nats.url` means none (jobs run in-process).
    pub nats: NatsConfig,
    /// Webhook subscriptions.
    pub webhooks: Vec<WebhookConfig>,
    /// The jobs that follow changes (precomputing a stable study's metadata and
    /// thumbnails).
    pub jobs: JobsConfig,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            stable_after_secs: 60,
            poll_interval_ms: 250,
            max_page: 1000,
            batch: 256,
            lease_secs: 15,
            dispatch: true,
            nats: NatsConfig::default(),
            webhooks: Vec::new(),
            jobs: JobsConfig::default(),
        }
    }
}

/// NATS JetStream: events are published to `{subject_prefix}.{tenant}.{action}`
/// in the stream `stream`, jobs to `{jobs_subject_prefix}.{kind}` in the work
/// queue stream `jobs_stream`; both streams are created when missing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// `nats://host:4222` (or `tls://`); empty: no broker.
    pub url: String,
    /// A NATS credentials file (JWT and NKey seed), if the server asks for one.
    pub credentials_file: String,
    /// Where the broker is and who runs it (the sovereignty report and policy).
    pub location: Option<Location>,
    pub stream: String,
    pub subject_prefix: String,
    pub jobs_stream: String,
    pub jobs_subject_prefix: String,
    /// Name of the durable consumer the workers share.
    pub jobs_consumer: String,
    /// Whether events carry PatientName, PatientID and PatientBirthDate.
    pub include_patient: bool,
    /// JetStream's window (seconds) for dropping a message published twice
    /// under the same id (stream setting, applied when the stream is created).
    pub duplicate_window_secs: u64,
    /// Seconds to wait for the broker to confirm a publish.
    pub ack_timeout_secs: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            credentials_file: String::new(),
            location: None,
            stream: "KASTELL_EVENTS".into(),
            subject_prefix: "kastell.events".into(),
            jobs_stream: "KASTELL_JOBS".into(),
            jobs_subject_prefix: "kastell.jobs".into(),
            jobs_consumer: "kastell-workers".into(),
            include_patient: false,
            duplicate_window_secs: 24 * 3600,
            ack_timeout_secs: 10,
        }
    }
}

/// One webhook subscription: every event of its tenants and actions is POSTed
/// to `url` as a CloudEvent, signed with HMAC-SHA256 under its secret
/// (Standard Webhooks headers), retried with backoff, then dead-lettered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Names the subscription in status, metrics and the sink cursor.
    pub name: String,
    /// `https://…`; `http://` only to a loopback address.
    pub url: String,
    /// The signing secret (prefer `secret_file`), at least 16 bytes.
    pub secret: String,
    pub secret_file: String,
    /// Tenants whose events it receives (`*`: all).
    pub tenants: Vec<String>,
    /// Actions it receives (empty: all).
    pub actions: Vec<String>,
    /// Whether events carry PatientName, PatientID and PatientBirthDate.
    pub include_patient: bool,
    /// Deliveries of one event before it is dead-lettered.
    pub max_attempts: u32,
    /// The first retry's delay; each next one doubles, up to `max_backoff_secs`.
    pub initial_backoff_ms: u64,
    pub max_backoff_secs: u64,
    /// Seconds one delivery may take.
    pub timeout_secs: u64,
    /// PEM file of CA certificates to trust for this endpoint (besides the system's).
    pub ca_file: String,
    /// A new subscription starts with the next change (`latest`) or replays
    /// the whole feed (`beginning`).
    pub start: String,
    /// Where the receiver is and who runs it (the sovereignty report and policy).
    pub location: Option<Location>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            url: String::new(),
            secret: String::new(),
            secret_file: String::new(),
            tenants: vec!["*".into()],
            actions: Vec::new(),
            include_patient: false,
            max_attempts: 8,
            initial_backoff_ms: 500,
            max_backoff_secs: 300,
            timeout_secs: 10,
            ca_file: String::new(),
            start: "latest".into(),
            location: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Precompute series metadata and thumbnails of a study once stable.
    pub precompute_on_stable: bool,
    /// Seconds a worker may hold a job unacknowledged before the broker gives
    /// it to another worker (a worker that died).
    pub ack_wait_secs: u64,
    /// Deliveries of one job before the broker stops redelivering it.
    pub max_deliver: i64,
    /// Jobs one worker runs at once.
    pub concurrency: usize,
    /// Whether `kastell serve` also runs a worker when a broker is configured
    /// (one process is then enough; `kastell worker` processes add more).
    pub worker_in_serve: bool,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            precompute_on_stable: true,
            ack_wait_secs: 60,
            max_deliver: 5,
            concurrency: 2,
            worker_in_serve: true,
        }
    }
}

/// The actions events name (the change feed's `action`).
pub const EVENT_ACTIONS: &[&str] = &[
    "created",
    "replaced",
    "deleted",
    "study-stable",
    "key-rotated",
    "key-retired",
    "key-shredded",
];

impl EventsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let rule = |message: String| Err(ConfigError::Rule(message));
        if self.poll_interval_ms == 0 || self.max_page == 0 || self.batch == 0 {
            return rule("events.poll_interval_ms, max_page and batch must be positive".into());
        }
        if self.lease_secs < 2 {
            return rule("events.lease_secs must be at least 2".into());
        }
        if self.jobs.ack_wait_secs == 0 || self.jobs.concurrency == 0 || self.jobs.max_deliver < 1 {
            return rule(
                "events.jobs.ack_wait_secs, concurrency and max_deliver must be positive".into(),
            );
        }
        let nats = &self.nats;
        if !nats.url.is_empty() {
            for (key, value) in [
                ("stream", &nats.stream),
                ("jobs_stream", &nats.jobs_stream),
                ("jobs_consumer", &nats.jobs_consumer),
            ] {
                if value.is_empty()
                    || !value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    return rule(format!(
                        "events.nats.{key} must be letters, digits, '-' or '_', got {value:?}"
                    ));
                }
            }
            for (key, value) in [
                ("subject_prefix", &nats.subject_prefix),
                ("jobs_subject_prefix", &nats.jobs_subject_prefix),
            ] {
                if value.is_empty()
                    || value.split('.').any(|token| {
                        token.is_empty()
                            || !token
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    })
                {
                    return rule(format!(
                        "events.nats.{key} must be dot-separated tokens of letters, digits, '-' or '_', got {value:?}"
                    ));
                }
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for hook in &self.webhooks {
            let name = &hook.name;
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return rule(format!(
                    "events.webhooks: name must be 1-64 letters, digits, '-' or '_', got {name:?}"
                ));
            }
            if !names.insert(name.as_str()) {
                return rule(format!("events.webhooks: the name {name:?} is used twice"));
            }
            if hook.secret.is_empty() == hook.secret_file.is_empty() {
                return rule(format!(
                    "events.webhooks.{name}: set exactly one of secret and secret_file"
                ));
            }
            if !hook.secret.is_empty() && hook.secret.len() < 16 {
                return rule(format!(
                    "events.webhooks.{name}: the secret must be at least 16 bytes"
                ));
            }
            if let Some(action) = hook
                .actions
                .iter()
                .find(|a| !EVENT_ACTIONS.contains(&a.as_str()))
            {
                return rule(format!(
                    "events.webhooks.{name}: unknown action {action:?} (known: {})",
                    EVENT_ACTIONS.join(", ")
                ));
            }
            if hook.start != "latest" && hook.start != "beginning" {
                return rule(format!(
                    "events.webhooks.{name}: start must be \"latest\" or \"beginning\""
                ));
            }
            if hook.max_attempts == 0 || hook.timeout_secs == 0 {
                return rule(format!(
                    "events.webhooks.{name}: max_attempts and timeout_secs must be positive"
                ));
            }
            check_webhook_url(name, &hook.url)?;
        }
        Ok(())
    }
}

/// A webhook goes over HTTPS; plain HTTP only to this host (a receiver on
/// loopback, as in tests), so that signed events never cross a network in clear.
fn check_webhook_url(name: &str, url: &str) -> Result<(), ConfigError> {
    let parsed = url::Url::parse(url).map_err(|e| {
        ConfigError::Rule(format!(
            "events.webhooks.{name}: url {url:?} is invalid: {e}"
        ))
    })?;
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(domain)) => domain == "localhost",
        None => false,
    };
    match parsed.scheme() {
        "https" if parsed.host().is_some() => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(ConfigError::Rule(format!(
            "events.webhooks.{name}: url must be https:// (http:// only to a loopback address), got {url:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(url: &str) -> WebhookConfig {
        WebhookConfig {
            name: "ris".into(),
            url: url.into(),
            secret: "0123456789abcdef".into(),
            ..Default::default()
        }
    }

    #[test]
    fn webhooks_go_over_https_or_to_loopback() {
        for url in [
            "https://ris.example/hook",
            "http://127.0.0.1:9000/hook",
            "http://[::1]:9000/",
            "http://localhost/x",
        ] {
            let config = EventsConfig {
                webhooks: vec![hook(url)],
                ..Default::default()
            };
            assert!(config.validate().is_ok(), "{url}");
        }
        for url in [
            "http://ris.example/hook",
            "ftp://x/",
            "not a url",
            "https://",
        ] {
            let config = EventsConfig {
                webhooks: vec![hook(url)],
                ..Default::default()
            };
            assert!(config.validate().is_err(), "{url}");
        }
    }

    #[test]
    fn a_webhook_needs_one_long_enough_secret_and_known_actions() {
        let mut short = hook("https://a.example/");
        short.secret = "short".into();
        let mut both = hook("https://a.example/");
        both.secret_file = "/x".into();
        let mut action = hook("https://a.example/");
        action.actions = vec!["created".into(), "exploded".into()];
        for bad in [short, both, action] {
            let config = EventsConfig {
                webhooks: vec![bad.clone()],
                ..Default::default()
            };
            assert!(config.validate().is_err(), "{bad:?}");
        }
        let twice = EventsConfig {
            webhooks: vec![hook("https://a.example/"), hook("https://b.example/")],
            ..Default::default()
        };
        assert!(twice.validate().is_err());
    }
}
