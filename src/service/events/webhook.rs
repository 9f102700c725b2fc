//! Webhook subscriptions (issue 14): each `[[events.webhooks]]` entry is a sink
//! (`webhook.{name}`) that POSTs every event of its tenants and actions alone,
//! as a CloudEvent in structured mode (`application/cloudevents+json`), signed
//! the Standard Webhooks way: `webhook-id` (the event id, the same on every
//! attempt, for the receiver to deduplicate), `webhook-timestamp` (Unix
//! seconds of this attempt, for the receiver to refuse old ones) and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
//! A 2xx answer delivers; anything else, a redirect included, is a failed
//! attempt, retried by the dispatcher with this sink's backoff and
//! dead-lettered after `max_attempts`. Neither the secret nor a body is ever
//! logged or put in an error.
//!
//! Delivery is at least once: a receiver should answer 2xx to a `webhook-id`
//! it has already processed (a retry after a lost answer, or a process that
//! took over a sink), not an error, which would only be retried. Patient data
//! (`include_patient`) is read from the index at delivery: a "deleted" event
//! of a study that is gone entirely carries none.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use ring::hmac;
use zeroize::Zeroizing;

use super::cloudevent::{cloud_event, event_id};
use super::{exponential_backoff, Sink, Stopped, TenantRef};
use crate::config::WebhookConfig;
use crate::index::changes::{Change, SinkStart};

/// The content type of a CloudEvent in structured mode (CloudEvents JSON format).
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";

/// The shortest signing key accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// Why a webhook subscription cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("events.webhooks {name}: the secret file {path} cannot be read: {source}")]
    SecretFile {
        name: String,
        path: String,
        source: std::io::Error,
    },
    #[error(
        "events.webhooks {name}: the signing key is {len} bytes; at least {MIN_SECRET_BYTES} \
         are needed (e.g. `openssl rand -base64 32`)"
    )]
    ShortSecret { name: String, len: usize },
    #[error("events.webhooks {name}: the secret starts with whsec_ but the rest is not base64")]
    NotBase64 { name: String },
    #[error("events.webhooks {name}: the CA file {path}: {reason}")]
    CaFile {
        name: String,
        path: String,
        reason: String,
    },
    #[error("events.webhooks {name}: the HTTP client cannot be built: {reason}")]
    Client { name: String, reason: String },
}

/// The HMAC key of a subscription's secret: a Standard Webhooks secret
/// (`whsec_` and base64) is the base64 of its key; any other secret is its
/// own bytes.
pub fn signing_key(secret: &[u8]) -> Result<Zeroizing<Vec<u8>>, base64::DecodeError> {
    match secret.strip_prefix(b"whsec_") {
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map(Zeroizing::new),
        None => Ok(Zeroizing::new(secret.to_vec())),
    }
}

/// The `webhook-signature` value of a delivery: `v1,` and the base64 of
/// HMAC-SHA256 under `key` of `{id}.{timestamp}.{body}`.
pub fn signature(key: &hmac::Key, id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut context = hmac::Context::with_key(key);
    context.update(id.as_bytes());
    context.update(b".");
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    let tag = context.sign();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    )
}

/// One webhook subscription, as a sink of the dispatcher.
pub struct WebhookSink {
    /// `webhook.{name}`.
    sink: String,
    url: reqwest::Url,
    key: hmac::Key,
    /// Empty: every tenant (`*`).
    tenants: Vec<String>,
    /// Empty: every action.
    actions: Vec<String>,
    include_patient: bool,
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    start: SinkStart,
    client: reqwest::Client,
}

impl std::fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Neither the key nor the URL (it may carry a token).
        f.debug_struct("WebhookSink")
            .field("sink", &self.sink)
            .finish_non_exhaustive()
    }
}

impl WebhookSink {
    /// The sink of `config` (validated by `Config::load`): reads `secret_file`,
    /// refuses a key shorter than [`MIN_SECRET_BYTES`], builds the client with
    /// the `ca_file` certificates as extra roots.
    pub fn new(config: &WebhookConfig) -> Result<Self, WebhookError> {
        let name = config.name.clone();
        let secret: Zeroizing<Vec<u8>> = if config.secret_file.is_empty() {
            Zeroizing::new(config.secret.as_bytes().to_vec())
        } else {
            let read = Zeroizing::new(std::fs::read(&config.secret_file).map_err(|source| {
                WebhookError::SecretFile {
                    name: name.clone(),
                    path: config.secret_file.clone(),
                    source,
                }
            })?);
            Zeroizing::new(read.trim_ascii().to_vec())
        };
        let key =
            signing_key(&secret).map_err(|_| WebhookError::NotBase64 { name: name.clone() })?;
        if key.len() < MIN_SECRET_BYTES {
            return Err(WebhookError::ShortSecret {
                name,
                len: key.len(),
            });
        }
        let url = reqwest::Url::parse(&config.url).map_err(|e| WebhookError::Client {
            name: name.clone(),
            reason: format!("the url is invalid: {e}"),
        })?;
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(config.timeout_secs))
            .connect_timeout(Duration::from_secs(config.timeout_secs))
            .user_agent(concat!("kastell/", env!("CARGO_PKG_VERSION")));
        if !config.ca_file.is_empty() {
            let ca_error = |reason: String| WebhookError::CaFile {
                name: name.clone(),
                path: config.ca_file.clone(),
                reason,
            };
            let pem = std::fs::read(&config.ca_file).map_err(|e| ca_error(e.to_string()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| ca_error(format!("not PEM certificates: {e}")))?;
            if certificates.is_empty() {
                return Err(ca_error("holds no PEM certificate".into()));
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder.build().map_err(|e| WebhookError::Client {
            name: name.clone(),
            reason: e.to_string(),
        })?;
        let initial_backoff = Duration::from_millis(config.initial_backoff_ms);
        Ok(Self {
            sink: format!("webhook.{name}"),
            url,
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
            tenants: if config.tenants.iter().any(|t| t == "*") {
                Vec::new()
            } else {
                config.tenants.clone()
            },
            actions: config.actions.clone(),
            include_patient: config.include_patient,
            max_attempts: config.max_attempts,
            initial_backoff,
            max_backoff: Duration::from_secs(config.max_backoff_secs).max(initial_backoff),
            start: if config.start == "beginning" {
                SinkStart::Beginning
            } else {
                SinkStart::Latest
            },
            client,
        })
    }

    /// Whether the subscription takes changes of `action`.
    fn wants(&self, action: &str) -> bool {
        self.actions.is_empty() || self.actions.iter().any(|a| a == action)
    }

    /// The body of `change`'s delivery: its CloudEvent, with the study's
    /// patient when the subscription asks for it and the study is still stored.
    async fn body(&self, tenant: &TenantRef, change: &Change) -> Result<Vec<u8>, String> {
        let patient = match (&change.study_instance_uid, self.include_patient) {
            (Some(study), true) => {
                let study = study.clone();
                tenant
                    .services
                    .with_index(move |index| index.study_patient(&study))
                    .await
                    .map_err(|e| format!("the study's patient could not be read: {e}"))?
            }
            _ => None,
        };
        let event = cloud_event(&tenant.name, change, patient.as_ref());
        serde_json::to_vec(&event).map_err(|e| format!("the event could not be serialized: {e}"))
    }

    /// One attempt to deliver `body` as event `id`.
    async fn post(&self, id: &str, body: Vec<u8>) -> Result<(), String> {
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let signature = signature(&self.key, id, timestamp, &body);
        let response = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, CLOUDEVENTS_JSON)
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(describe)?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status.is_redirection() {
            Err(format!(
                "the receiver answered {status}; redirects are not followed (point url at the \
                 final address)"
            ))
        } else {
            Err(format!("the receiver answered {status}"))
        }
    }
}

/// A request error with its causes, without the URL (it may carry a token).
fn describe(error: reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    let error = error.without_url();
    let mut text = format!("the request {kind}: {error}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[async_trait]
impl Sink for WebhookSink {
    fn name(&self) -> &str {
        &self.sink
    }

    fn start(&self) -> SinkStart {
        self.start
    }

    fn serves(&self, tenant: &str) -> bool {
        self.tenants.is_empty() || self.tenants.iter().any(|t| t == tenant)
    }

    fn max_attempts(&self) -> Option<u32> {
        Some(self.max_attempts)
    }

    fn backoff(&self, attempt: u32) -> Duration {
        exponential_backoff(attempt, self.initial_backoff, self.max_backoff)
    }

    async fn deliver(&self, tenant: &TenantRef, changes: &[Change]) -> Result<(), Stopped> {
        for (delivered, change) in changes.iter().enumerate() {
            // An action the subscription does not want is delivered by skipping it.
            if !self.wants(&change.action) {
                continue;
            }
            let stopped = |error| Stopped { delivered, error };
            let body = self.body(tenant, change).await.map_err(stopped)?;
            self.post(&event_id(&tenant.name, change.seq), body)
                .await
                .map_err(stopped)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn config() -> WebhookConfig {
        WebhookConfig {
            name: "ris".into(),
            url: "https://ris.example/hook".into(),
            secret: "0123456789abcdef".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_id_timestamp_and_body() {
        // Computed independently: python3 -c 'import hmac,hashlib,base64;
        // print(base64.b64encode(hmac.new(b"0123456789abcdef",
        // b"north:7.1767225600.{\"a\":1}", hashlib.sha256).digest()).decode())'
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"0123456789abcdef");
        assert_eq!(
            signature(&key, "north:7", 1_767_225_600, br#"{"a":1}"#),
            "v1,loz8oe4Qd0E/oNpkxPllvWOBKE6PhzVT3L57IpfFyug="
        );
    }

    #[test]
    fn a_standard_webhooks_secret_is_the_base64_of_its_key() {
        let key = signing_key(b"whsec_MDEyMzQ1Njc4OWFiY2RlZg==").unwrap();
        assert_eq!(key.as_slice(), b"0123456789abcdef");
        assert_eq!(
            signing_key(b"plain secret").unwrap().as_slice(),
            b"plain secret"
        );
        assert!(signing_key(b"whsec_not base64!").is_err());
    }

    #[test]
    fn a_short_or_unreadable_secret_refuses_to_start() {
        let mut short = config();
        short.secret = "whsec_c2hvcnQ=".into(); // "short"
        assert!(matches!(
            WebhookSink::new(&short),
            Err(WebhookError::ShortSecret { len: 5, .. })
        ));
        let mut missing = config();
        missing.secret = String::new();
        missing.secret_file = "/nonexistent/kastell-webhook-secret".into();
        let error = WebhookSink::new(&missing).unwrap_err().to_string();
        assert!(
            error.contains("/nonexistent/kastell-webhook-secret"),
            "{error}"
        );
    }

    #[test]
    fn the_secret_file_is_read_without_its_final_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "0123456789abcdef\n").unwrap();
        let mut from_file = config();
        from_file.secret = String::new();
        from_file.secret_file = path.display().to_string();
        let sink = WebhookSink::new(&from_file).unwrap();
        let expected = hmac::Key::new(hmac::HMAC_SHA256, b"0123456789abcdef");
        assert_eq!(
            signature(&sink.key, "t:1", 1, b"x"),
            signature(&expected, "t:1", 1, b"x")
        );
    }

    #[test]
    fn tenants_actions_start_and_backoff_follow_the_configuration() {
        let mut hook = config();
        hook.tenants = vec!["north".into()];
        hook.actions = vec!["created".into()];
        hook.start = "beginning".into();
        hook.initial_backoff_ms = 100;
        hook.max_backoff_secs = 1;
        let sink = WebhookSink::new(&hook).unwrap();
        assert_eq!(sink.name(), "webhook.ris");
        assert!(sink.serves("north") && !sink.serves("south"));
        assert!(sink.wants("created") && !sink.wants("deleted"));
        assert_eq!(sink.start(), SinkStart::Beginning);
        assert_eq!(sink.max_attempts(), Some(8));
        let waits: Vec<u128> = (1..=6).map(|a| sink.backoff(a).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);

        let all = WebhookSink::new(&config()).unwrap();
        assert!(all.serves("any") && all.wants("study-stable"));
        assert_eq!(all.start(), SinkStart::Latest);
        assert!(!format!("{all:?}").contains("ris.example"));
    }

    /// A loopback server answering every request with `answer`; returns its
    /// URL and the requests' heads.
    fn answering(answer: &'static str) -> (String, Arc<Mutex<Vec<String>>>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut head = String::new();
                let mut reader = BufReader::new(&mut stream);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line.to_ascii_lowercase());
                }
                seen.lock().unwrap().push(head);
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        (url, heads)
    }

    #[tokio::test]
    async fn a_redirect_is_a_failed_attempt_and_is_not_followed() {
        let (url, heads) = answering(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: /elsewhere\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n",
        );
        let mut hook = config();
        hook.url = url;
        let sink = WebhookSink::new(&hook).unwrap();
        let error = sink.post("north:7", b"{}".to_vec()).await.unwrap_err();
        assert!(error.contains("307"), "{error}");
        assert!(error.contains("redirects are not followed"), "{error}");
        let heads = heads.lock().unwrap().clone();
        assert_eq!(heads.len(), 1, "{heads:?}");
        assert!(heads[0].starts_with("post /hook "), "{}", heads[0]);
        assert!(heads[0].contains("content-type: application/cloudevents+json"));
        assert!(heads[0].contains("webhook-id: north:7"));
        assert!(heads[0].contains("webhook-signature: v1,"));
    }

    #[tokio::test]
    async fn a_receiver_that_does_not_answer_in_timeout_secs_is_a_failed_attempt() {
        // Accepts connections and never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut hook = config();
        hook.url = format!("http://{}/hook", listener.local_addr().unwrap());
        hook.timeout_secs = 1;
        std::thread::spawn(move || {
            let held: Vec<_> = listener.incoming().take(1).collect();
            std::thread::sleep(Duration::from_secs(5));
            drop(held);
        });
        let sink = WebhookSink::new(&hook).unwrap();
        let error = sink.post("north:7", b"{}".to_vec()).await.unwrap_err();
        assert!(error.contains("timed out"), "{error}");
    }

    #[tokio::test]
    async fn an_unreachable_receiver_is_a_failed_attempt_naming_no_url() {
        // A port nobody listens on (bound, then freed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut hook = config();
        hook.url = format!("http://127.0.0.1:{port}/hook?token=hunter2");
        let sink = WebhookSink::new(&hook).unwrap();
        let error = sink.post("north:7", b"{}".to_vec()).await.unwrap_err();
        assert!(error.contains("could not connect"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn a_ca_file_without_certificates_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let mut hook = config();
        hook.ca_file = path.display().to_string();
        assert!(matches!(
            WebhookSink::new(&hook),
            Err(WebhookError::CaFile { .. })
        ));
    }
}
