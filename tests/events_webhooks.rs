//! Webhook subscriptions through the binary (issue 14): a loopback receiver,
//! written here, verifies each delivery the way the Standard Webhooks spec asks
//! a receiver to (the HMAC-SHA256 signature under the subscription's secret, a
//! timestamp at most five minutes old, a `webhook-id` not accepted before) and
//! records what it accepted. The server gets its subscriptions from a TOML
//! file (`KASTELL_CONFIG`), since arrays of tables do not come through
//! `KASTELL__…` variables.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::*;
use serde_json::Value;

const SECRET: &str = "kastell-test-webhook-secret-0123";

/// One POST as the receiver got it.
#[derive(Clone, Debug)]
struct Delivery {
    id: String,
    timestamp: String,
    signature: String,
    content_type: String,
    body: Vec<u8>,
}

impl Delivery {
    fn event(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// Decides whether a verified delivery is accepted (2xx) or answered 500:
/// given the delivery and how many requests came before it.
type Policy = Box<dyn FnMut(&Delivery, usize) -> bool + Send>;

struct State {
    /// Every request, with the status it got.
    requests: Vec<(Option<String>, u16)>,
    accepted: Vec<Delivery>,
    accepted_ids: HashSet<String>,
    policy: Policy,
}

/// A webhook receiver on a loopback port.
#[derive(Clone)]
struct Receiver {
    port: u16,
    state: Arc<Mutex<State>>,
    https: bool,
}

impl Receiver {
    fn accepting_all() -> Self {
        Self::with_policy(Box::new(|_, _| true))
    }

    fn with_policy(policy: Policy) -> Self {
        Self::listening(policy, None)
    }

    /// A receiver that speaks HTTPS with the test certificate for `localhost`
    /// (`tests/tls`).
    fn with_tls() -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls");
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(dir.join("localhost.pem"))
                .unwrap()
                .map(Result::unwrap)
                .collect();
        let key = PrivateKeyDer::from_pem_file(dir.join("localhost.key")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        Self::listening(Box::new(|_, _| true), Some(Arc::new(config)))
    }

    fn listening(policy: Policy, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            requests: Vec::new(),
            accepted: Vec::new(),
            accepted_ids: HashSet::new(),
            policy,
        }));
        let receiver = Receiver {
            port,
            state,
            https: tls.is_some(),
        };
        let serving = receiver.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let serving = serving.clone();
                let tls = tls.clone();
                std::thread::spawn(move || {
                    stream
                        .set_read_timeout(Some(Duration::from_secs(30)))
                        .unwrap();
                    match tls {
                        None => serving.serve(stream),
                        Some(config) => {
                            let Ok(connection) = rustls::ServerConnection::new(config) else {
                                return;
                            };
                            let mut tls = rustls::StreamOwned::new(connection, stream);
                            serving.serve(&mut tls);
                            tls.conn.send_close_notify();
                            let _ = tls.flush();
                        }
                    }
                });
            }
        });
        receiver
    }

    fn url(&self) -> String {
        if self.https {
            format!("https://localhost:{}/hook", self.port)
        } else {
            format!("http://127.0.0.1:{}/hook", self.port)
        }
    }

    /// Reads one request, answers it, closes the connection.
    fn serve(&self, mut stream: impl Read + Write) {
        let Some(delivery) = read_request(&mut stream) else {
            return;
        };
        let status = self.judge(delivery);
        let reason = if status < 300 { "OK" } else { "Refused" };
        let _ = write!(
            stream,
            "HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let _ = stream.flush();
    }

    /// The receiver's checks, then its policy.
    fn judge(&self, delivery: Delivery) -> u16 {
        let mut state = self.state.lock().unwrap();
        let id = (!delivery.id.is_empty()).then(|| delivery.id.clone());
        let status = match verify(&delivery, now()) {
            Err(status) => status,
            Ok(()) if state.accepted_ids.contains(&delivery.id) => 409,
            Ok(()) => {
                let before = state.requests.len();
                if (state.policy)(&delivery, before) {
                    state.accepted_ids.insert(delivery.id.clone());
                    state.accepted.push(delivery);
                    204
                } else {
                    500
                }
            }
        };
        state.requests.push((id, status));
        status
    }

    fn accepted(&self) -> Vec<Delivery> {
        self.state.lock().unwrap().accepted.clone()
    }

    /// The statuses this receiver answered to deliveries of event `id`.
    fn answers(&self, id: &str) -> Vec<u16> {
        let state = self.state.lock().unwrap();
        state
            .requests
            .iter()
            .filter(|(i, _)| i.as_deref() == Some(id))
            .map(|(_, status)| *status)
            .collect()
    }

    /// Waits until `n` events were accepted; returns them.
    fn wait_for(&self, n: usize) -> Vec<Delivery> {
        wait_until(&format!("the receiver accepted {n} events"), || {
            self.accepted().len() >= n
        });
        self.accepted()
    }

    /// Sends `delivery` as it is to this receiver; returns the status.
    fn send(&self, delivery: &Delivery) -> u16 {
        client()
            .post(self.url())
            .header("Content-Type", &delivery.content_type)
            .header("webhook-id", &delivery.id)
            .header("webhook-timestamp", &delivery.timestamp)
            .header("webhook-signature", &delivery.signature)
            .body(delivery.body.clone())
            .send()
            .unwrap()
            .status()
            .as_u16()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` under [`SECRET`].
fn sign(id: &str, timestamp: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    let tag = ring::hmac::sign(&key, &signed);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    )
}

/// A receiver's checks: the headers are there (400), the timestamp is within
/// five minutes of `now` (401), one of the `v1` signatures matches (401).
fn verify(delivery: &Delivery, now: u64) -> Result<(), u16> {
    if delivery.id.is_empty() || delivery.timestamp.is_empty() || delivery.signature.is_empty() {
        return Err(400);
    }
    let timestamp: u64 = delivery.timestamp.parse().map_err(|_| 400u16)?;
    if timestamp.abs_diff(now) > 5 * 60 {
        return Err(401);
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let mut signed = format!("{}.{}.", delivery.id, delivery.timestamp).into_bytes();
    signed.extend_from_slice(&delivery.body);
    let matches = delivery.signature.split(' ').any(|entry| {
        entry
            .strip_prefix("v1,")
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .is_some_and(|tag| ring::hmac::verify(&key, &signed, &tag).is_ok())
    });
    if matches {
        Ok(())
    } else {
        Err(401)
    }
}

/// One HTTP/1.1 request with a Content-Length body.
fn read_request(stream: &mut impl Read) -> Option<Delivery> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    if !line.starts_with("POST ") {
        return None;
    }
    let mut delivery = Delivery {
        id: String::new(),
        timestamp: String::new(),
        signature: String::new(),
        content_type: String::new(),
        body: Vec::new(),
    };
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        let value = value.trim().to_string();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse().ok()?,
            "content-type" => delivery.content_type = value,
            "webhook-id" => delivery.id = value,
            "webhook-timestamp" => delivery.timestamp = value,
            "webhook-signature" => delivery.signature = value,
            _ => {}
        }
    }
    delivery.body = vec![0; length];
    reader.read_exact(&mut delivery.body).ok()?;
    Some(delivery)
}

/// A webhook subscription of the test configuration.
struct Hook<'a> {
    name: &'a str,
    url: String,
    extra: &'a str,
}

/// Writes the configuration: `[events]` settings for quick tests, then each
/// subscription (small backoffs; the whole feed from the start).
fn write_config(dir: &Path, events: &str, hooks: &[Hook]) -> PathBuf {
    let mut text = format!("[events]\npoll_interval_ms = 50\n{events}\n");
    for hook in hooks {
        text.push_str(&format!(
            "\n[[events.webhooks]]\nname = \"{}\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\n\
             start = \"beginning\"\ninitial_backoff_ms = 50\nmax_backoff_secs = 1\n\
             timeout_secs = 10\n{}\n",
            hook.name, hook.url, hook.extra
        ));
    }
    let path = dir.join("kastell.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A server on a fresh data directory with the configuration file `config`.
fn serve(dir: &Path, config: &Path) -> Server {
    let data = dir.join("data");
    Server::spawn(&data, &[("KASTELL_CONFIG", config.to_str().unwrap())])
}

/// `kastell events status` with the server's configuration.
fn events_status(server: &Server, config: &Path, format: &str) -> String {
    let output = cli_command(&["events", "status", "--format", format], &server.data_dir)
        .env("KASTELL_CONFIG", config)
        .output()
        .expect("run kastell events status");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn types(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| d.event()["type"].as_str().unwrap().to_string())
        .collect()
}

fn instance(study: &str, n: u32) -> Spec {
    let mut spec = Spec::new(study, &format!("{study}.1"), &format!("{study}.1.{n}"));
    spec.instance_number = n as i32;
    spec
}

#[test]
fn stow_and_delete_reach_the_receivers_in_order_signed_and_with_patient_data_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let plain = Receiver::accepting_all();
    let with_patient = Receiver::accepting_all();
    let config = write_config(
        dir.path(),
        // Quick "study stable", so that the test can wait for it before deleting.
        "stable_after_secs = 1",
        &[
            Hook {
                name: "plain",
                url: plain.url(),
                extra: "",
            },
            Hook {
                name: "patient",
                url: with_patient.url(),
                extra: "include_patient = true\nactions = [\"created\", \"deleted\"]",
            },
        ],
    );
    let server = serve(dir.path(), &config);
    let (a, b) = (instance("21.1", 1), instance("21.1", 2));
    assert_eq!(
        store(&server, "/studies", &[dicom_file(&a), dicom_file(&b)]).0,
        200
    );
    // Two instances, then the study gone quiet.
    plain.wait_for(3);
    let deleted = client()
        .delete(server.url("/studies/21.1"))
        .send()
        .unwrap()
        .status();
    assert_eq!(deleted.as_u16(), 204);

    let events = plain.wait_for(5);
    assert_eq!(
        types(&events),
        [
            "org.kastell.instance.created",
            "org.kastell.instance.created",
            "org.kastell.study.stable",
            "org.kastell.instance.deleted",
            "org.kastell.instance.deleted",
        ]
    );
    for (n, delivery) in events.iter().enumerate() {
        let seq = n as i64 + 1;
        let event = delivery.event();
        assert_eq!(delivery.id, format!("default:{seq}"));
        assert_eq!(event["id"], delivery.id);
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["source"], "/kastell/tenants/default");
        assert_eq!(event["data"]["sequence"], seq);
        assert_eq!(event["data"]["tenant"], "default");
        assert_eq!(event["data"]["studyInstanceUID"], "21.1");
        assert_eq!(delivery.content_type, "application/cloudevents+json");
        assert_eq!(verify(delivery, now()), Ok(()));
        let body = String::from_utf8_lossy(&delivery.body);
        for patient_data in ["Doe^John", "PID-1", "patient", "Patient"] {
            assert!(!body.contains(patient_data), "{body}");
        }
    }
    let mut created: Vec<&str> = events[..2]
        .iter()
        .map(|d| d.body.as_slice())
        .map(|b| {
            let event: Value = serde_json::from_slice(b).unwrap();
            if event["data"]["sopInstanceUID"] == "21.1.1.1" {
                "21.1.1.1"
            } else {
                "21.1.1.2"
            }
        })
        .collect();
    created.sort();
    assert_eq!(created, ["21.1.1.1", "21.1.1.2"]);
    assert_eq!(
        events[2].event()["data"]["numberOfStudyRelatedInstances"],
        2
    );

    // The other subscription skipped "study stable" and got the patient.
    let events = with_patient.wait_for(4);
    assert_eq!(
        types(&events),
        [
            "org.kastell.instance.created",
            "org.kastell.instance.created",
            "org.kastell.instance.deleted",
            "org.kastell.instance.deleted",
        ]
    );
    let ids: Vec<&str> = events.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["default:1", "default:2", "default:4", "default:5"]);
    for delivery in &events[..2] {
        assert_eq!(verify(delivery, now()), Ok(()));
        let patient = &delivery.event()["data"]["patient"];
        assert_eq!(patient["PatientName"], "Doe^John", "{patient}");
        assert_eq!(patient["PatientID"], "PID-1", "{patient}");
    }
    // Nothing more came, and every sink is at the end of the feed.
    assert_eq!(plain.accepted().len(), 5);
    let status: Value = serde_json::from_str(&events_status(&server, &config, "json")).unwrap();
    let tenant = &status["tenants"][0];
    assert_eq!(tenant["latest_seq"], 5);
    assert_eq!(tenant["dead_letters"], serde_json::json!([]));
    wait_until("both sinks are at the end of the feed", || {
        let status: Value = serde_json::from_str(&events_status(&server, &config, "json")).unwrap();
        let sinks = webhook_sinks(&status["tenants"][0]);
        sinks.len() == 2 && sinks.iter().all(|s| s["cursor"] == 5 && s["backlog"] == 0)
    });
}

#[test]
fn a_replayed_stale_or_tampered_delivery_is_rejected_by_the_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::accepting_all();
    let config = write_config(
        dir.path(),
        "stable_after_secs = 0",
        &[Hook {
            name: "ris",
            url: receiver.url(),
            extra: "",
        }],
    );
    let server = serve(dir.path(), &config);
    assert_eq!(
        store(&server, "/studies", &[dicom_file(&instance("22.1", 1))]).0,
        200
    );
    let captured = receiver.wait_for(1).remove(0);
    assert_eq!(receiver.answers("default:1"), [204]);

    // Sent again as captured: the id was accepted before.
    assert_eq!(receiver.send(&captured), 409);
    // The body changed: the signature no longer matches.
    let mut tampered = captured.clone();
    tampered.id = "default:999".into();
    tampered.body = String::from_utf8(captured.body.clone())
        .unwrap()
        .replace("22.1.1.1", "22.1.1.9")
        .into_bytes();
    assert_eq!(receiver.send(&tampered), 401);
    // Signed by someone else.
    let mut forged = captured.clone();
    forged.id = "default:998".into();
    forged.signature = "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into();
    assert_eq!(receiver.send(&forged), 401);
    // Correctly signed, but six minutes old.
    let mut stale = captured.clone();
    stale.id = "default:997".into();
    stale.timestamp = (now() - 6 * 60).to_string();
    stale.signature = sign(&stale.id, &stale.timestamp, &stale.body);
    assert_eq!(receiver.send(&stale), 401);
    // The same, fresh: the receiver does accept what it should.
    let mut fresh = stale.clone();
    fresh.timestamp = now().to_string();
    fresh.signature = sign(&fresh.id, &fresh.timestamp, &fresh.body);
    assert_eq!(receiver.send(&fresh), 204);
    drop(server);
}

#[test]
fn a_receiver_that_fails_twice_gets_the_event_on_the_third_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::with_policy(Box::new(|_, before| before >= 2));
    let config = write_config(
        dir.path(),
        "stable_after_secs = 0",
        &[Hook {
            name: "ris",
            url: receiver.url(),
            extra: "max_attempts = 5",
        }],
    );
    let server = serve(dir.path(), &config);
    assert_eq!(
        store(&server, "/studies", &[dicom_file(&instance("23.1", 1))]).0,
        200
    );
    let accepted = receiver.wait_for(1);
    assert_eq!(accepted[0].id, "default:1");
    assert_eq!(receiver.answers("default:1"), [500, 500, 204]);
    let status: Value = serde_json::from_str(&events_status(&server, &config, "json")).unwrap();
    assert_eq!(status["tenants"][0]["dead_letters"], serde_json::json!([]));
}

#[test]
fn an_event_a_receiver_always_refuses_is_dead_lettered_and_later_events_still_arrive() {
    let dir = tempfile::tempdir().unwrap();
    // Refuses every delivery of the first instance.
    let receiver = Receiver::with_policy(Box::new(|delivery, _| {
        !String::from_utf8_lossy(&delivery.body).contains("24.1.1.1")
    }));
    let config = write_config(
        dir.path(),
        "stable_after_secs = 0",
        &[Hook {
            name: "ris",
            url: receiver.url(),
            extra: "max_attempts = 3",
        }],
    );
    let server = serve(dir.path(), &config);
    assert_eq!(
        store(&server, "/studies", &[dicom_file(&instance("24.1", 1))]).0,
        200
    );
    wait_until("the refused event is dead-lettered", || {
        let status: Value = serde_json::from_str(&events_status(&server, &config, "json")).unwrap();
        !status["tenants"][0]["dead_letters"]
            .as_array()
            .unwrap()
            .is_empty()
    });
    assert_eq!(receiver.answers("default:1"), [500, 500, 500]);

    let status: Value = serde_json::from_str(&events_status(&server, &config, "json")).unwrap();
    let tenant = &status["tenants"][0];
    let dead = &tenant["dead_letters"][0];
    assert_eq!(dead["sink"], "webhook.ris");
    assert_eq!(dead["seq"], 1);
    assert_eq!(dead["attempts"], 3);
    assert!(
        dead["last_error"].as_str().unwrap().contains("500"),
        "{dead}"
    );
    assert!(
        dead["failed_at"].as_str().unwrap().starts_with("20"),
        "{dead}"
    );
    let sink = &webhook_sinks(tenant)[0];
    assert_eq!(sink["name"], "webhook.ris");
    assert_eq!(sink["cursor"], 1);
    let text = events_status(&server, &config, "text");
    assert!(
        text.contains("Tenant default (active): latest change 1"),
        "{text}"
    );
    assert!(
        text.contains("webhook.ris seq 1 after 3 attempts"),
        "{text}"
    );
    assert!(text.contains("the receiver answered 500"), "{text}");

    // The next event goes through.
    assert_eq!(
        store(&server, "/studies", &[dicom_file(&instance("24.2", 1))]).0,
        200
    );
    let accepted = receiver.wait_for(1);
    assert_eq!(accepted[0].id, "default:2");
    assert_eq!(accepted[0].event()["data"]["sopInstanceUID"], "24.2.1.1");
    // The dead letter was not tried again.
    assert_eq!(receiver.answers("default:1"), [500, 500, 500]);
    wait_until("the sink is at the end of the feed", || {
        let status: Value = serde_json::from_str(&events_status(&server, &config, "json")).unwrap();
        let sink = &status["tenants"][0]["sinks"][0];
        sink["cursor"] == 2 && sink["backlog"] == 0 && sink["last_error"].is_null()
    });
}

#[test]
fn serve_refuses_a_webhook_declared_outside_the_personal_data_countries() {
    let dir = tempfile::tempdir().unwrap();
    let location = |country: &str, law: bool| {
        format!(
            "location = {{ country = \"{country}\", operator = \"Example Cloud Inc.\", \
             foreign_access_law = {law} }}"
        )
    };
    let host = "[server]\nlocation = { country = \"DE\", operator = \"Klinikum\", \
                foreign_access_law = false }\n";
    let config_with = |hook_location: String| {
        let path = write_config(
            dir.path(),
            "",
            &[Hook {
                name: "ris",
                url: "http://127.0.0.1:9/hook".into(),
                extra: "",
            }],
        );
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{host}\n{text}{hook_location}\n")).unwrap();
        path
    };

    // Declared in Germany: the report lists the webhook and what it receives.
    let config = config_with(location("DE", false));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kastell"))
        .args(["sovereignty", "report", "--format", "json"])
        .env("KASTELL_CONFIG", &config)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let hook = report["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["kind"] == "webhook")
        .expect("the webhook is in the report")
        .clone();
    assert_eq!(hook["jurisdiction"]["country"], "DE");
    assert!(
        hook["receives"].as_str().unwrap().contains("UIDs"),
        "{hook}"
    );
    assert!(report["chain"]
        .as_array()
        .unwrap()
        .iter()
        .any(|link| link["data"] == "events"));

    // Declared in the US under foreign-access law: kastell serve refuses.
    let config = config_with(location("US", true));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kastell"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("KASTELL_CONFIG", &config)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if poll(Duration::from_secs(30), || child.try_wait().unwrap()).is_none() {
        let _ = child.kill();
        panic!("kastell serve started with a webhook in the US");
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("refuses to start"), "{stderr}");
    assert!(
        stderr.contains("webhook ris (http://127.0.0.1:9/…)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("sovereignty.personal_data_countries"),
        "{stderr}"
    );
    // Nothing was created before the refusal.
    assert!(!dir.path().join("data").join("index.sqlite").exists());
}

#[test]
fn two_servers_deliver_each_event_once_even_when_a_delivery_outlasts_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    // A slow receiver: delivering the batch takes twice the lease.
    let receiver = Receiver::with_policy(Box::new(|_, _| {
        std::thread::sleep(Duration::from_millis(1000));
        true
    }));
    let config = write_config(
        dir.path(),
        "stable_after_secs = 0\nlease_secs = 2",
        &[Hook {
            name: "ris",
            url: receiver.url(),
            extra: "",
        }],
    );
    let data = dir.path().join("data");
    let env = [("KASTELL_CONFIG", config.to_str().unwrap())];
    let a = Server::spawn(&data, &env);
    let _b = Server::spawn(&data, &env);
    let parts: Vec<Vec<u8>> = (1..=4).map(|n| dicom_file(&instance("25.1", n))).collect();
    assert_eq!(store(&a, "/studies", &parts).0, 200);
    receiver.wait_for(4);
    wait_until("the sink is at the end of the feed", || {
        let status: Value = serde_json::from_str(&events_status(&a, &config, "json")).unwrap();
        let sink = &status["tenants"][0]["sinks"][0];
        sink["cursor"] == 4 && sink["backlog"] == 0
    });
    // The process holding the lease kept it while delivering: the other one
    // never delivered the same events again.
    for seq in 1..=4 {
        assert_eq!(receiver.answers(&format!("default:{seq}")), [204], "{seq}");
    }
}

#[test]
fn deliveries_go_over_https_to_a_receiver_trusted_through_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::with_tls();
    let ca = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls/ca.pem");
    let config = write_config(
        dir.path(),
        "stable_after_secs = 0",
        &[
            Hook {
                name: "trusted",
                url: receiver.url(),
                extra: &format!("ca_file = \"{}\"", ca.display()),
            },
            // The same receiver without its CA: the handshake fails.
            Hook {
                name: "untrusted",
                url: receiver.url(),
                extra: "max_attempts = 1",
            },
        ],
    );
    let server = serve(dir.path(), &config);
    assert_eq!(
        store(&server, "/studies", &[dicom_file(&instance("26.1", 1))]).0,
        200
    );
    let accepted = receiver.wait_for(1);
    assert_eq!(accepted[0].id, "default:1");
    assert_eq!(verify(&accepted[0], now()), Ok(()));
    wait_until("the untrusted subscription dead-letters the event", || {
        let status: Value = serde_json::from_str(&events_status(&server, &config, "json")).unwrap();
        !status["tenants"][0]["dead_letters"]
            .as_array()
            .unwrap()
            .is_empty()
    });
    let status: Value = serde_json::from_str(&events_status(&server, &config, "json")).unwrap();
    let dead = &status["tenants"][0]["dead_letters"][0];
    assert_eq!(dead["sink"], "webhook.untrusted");
    let error = dead["last_error"].as_str().unwrap();
    assert!(error.contains("certificate"), "{error}");
    // Only the trusted subscription's delivery got through.
    assert_eq!(receiver.answers("default:1"), [204]);
}

#[test]
fn serve_refuses_a_webhook_whose_secret_file_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "",
        &[Hook {
            name: "ris",
            url: "http://127.0.0.1:9/hook".into(),
            extra: "",
        }],
    );
    let missing = dir.path().join("no-such-secret");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        &format!("secret = \"{SECRET}\""),
        &format!("secret_file = \"{}\"", missing.display()),
    );
    std::fs::write(&path, text).unwrap();
    let data = dir.path().join("data");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kastell"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .args(index_args(&data))
        .env("KASTELL_CONFIG", &path)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if poll(Duration::from_secs(30), || child.try_wait().unwrap()).is_none() {
        let _ = child.kill();
        panic!("kastell serve started without the webhook's secret");
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("secret file"), "{stderr}");
    assert!(stderr.contains("no-such-secret"), "{stderr}");
}

#[test]
fn each_subscription_gets_the_events_of_the_tenants_it_lists() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, out) = cli(&["tenants", "add", "radiology"], &data);
    assert!(ok, "{out}");
    let every = Receiver::accepting_all();
    let radiology = Receiver::accepting_all();
    let config = write_config(
        dir.path(),
        "stable_after_secs = 0",
        &[
            Hook {
                name: "every",
                url: every.url(),
                extra: "",
            },
            Hook {
                name: "radiology",
                url: radiology.url(),
                extra: "tenants = [\"radiology\"]",
            },
        ],
    );
    let server = serve(dir.path(), &config);
    let file = dicom_file(&instance("27.1", 1));
    assert_eq!(
        store(&server, "/studies", std::slice::from_ref(&file)).0,
        200
    );
    let (content_type, body) = multipart(std::slice::from_ref(&file));
    let stored = client()
        .post(format!(
            "http://127.0.0.1:{}/tenants/radiology/dicomweb/studies",
            server.port
        ))
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .unwrap()
        .status();
    assert_eq!(stored.as_u16(), 200);

    let mut ids: Vec<String> = every.wait_for(2).into_iter().map(|d| d.id).collect();
    ids.sort();
    assert_eq!(ids, ["default:1", "radiology:1"]);
    let only = radiology.wait_for(1);
    assert_eq!(only[0].id, "radiology:1");
    assert_eq!(only[0].event()["source"], "/kastell/tenants/radiology");
    wait_until("every sink is at the end of its tenant's feed", || {
        let status: Value = serde_json::from_str(&events_status(&server, &config, "json")).unwrap();
        let tenants = status["tenants"].as_array().unwrap();
        tenants.len() == 2
            && tenants.iter().all(|t| {
                t["sinks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|s| s["cursor"] == 1 && s["backlog"] == 0)
            })
    });
    let status: Value = serde_json::from_str(&events_status(&server, &config, "json")).unwrap();
    let sinks = |tenant: usize| -> Vec<String> {
        webhook_sinks(&status["tenants"][tenant])
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(status["tenants"][0]["name"], "default");
    assert_eq!(sinks(0), ["webhook.every"]);
    assert_eq!(status["tenants"][1]["name"], "radiology");
    assert_eq!(sinks(1), ["webhook.every", "webhook.radiology"]);
    assert_eq!(radiology.accepted().len(), 1);
}

/// The webhook sinks of a tenant in `kastell events status --format json` (the
/// server's jobs sink is there too).
fn webhook_sinks(tenant: &Value) -> Vec<Value> {
    tenant["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"].as_str().unwrap().starts_with("webhook."))
        .cloned()
        .collect()
}
