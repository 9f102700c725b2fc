//! Telemetry of the real binary: OTLP/HTTP export of spans and metrics to a small
//! receiver on loopback (and nothing without an endpoint), the Prometheus text at
//! `/metrics`, JSON log lines. Nothing received may carry a UID or a patient's
//! name or ID.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use common::*;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// A patient no other test uses, so finding any of this in telemetry is a leak.
fn patient() -> Spec {
    let mut spec = Spec::new(
        "1.2.826.0.1.3680043.10.777.1",
        "1.2.826.0.1.3680043.10.777.1.2",
        "1.2.826.0.1.3680043.10.777.1.2.3",
    );
    spec.patient_name = "Zyxwort^Quill".into();
    spec.patient_id = "PID-ZQ-4711".into();
    spec.accession = "ACC-ZQ-4711".into();
    spec
}

/// What must never leave the host in telemetry.
fn personal_data(spec: &Spec) -> Vec<String> {
    vec![
        spec.study.clone(),
        spec.series.clone(),
        spec.instance.clone(),
        spec.patient_name.clone(),
        "Zyxwort".into(),
        spec.patient_id.clone(),
        spec.accession.clone(),
    ]
}

fn assert_no_personal_data(what: &str, bytes: &[u8], spec: &Spec) {
    for needle in personal_data(spec) {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle} found in {what}"
        );
    }
}

/// (path, body) of every request received.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A minimal OTLP/HTTP receiver: answers every POST with 200 and keeps what it got.
struct Receiver {
    port: u16,
    received: Received,
}

impl Receiver {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Received::default();
        let keep = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let keep = keep.clone();
                std::thread::spawn(move || serve(stream, &keep));
            }
        });
        Receiver { port, received }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn bodies(&self, path: &str) -> Vec<Vec<u8>> {
        let received = self.received.lock().unwrap();
        received
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, body)| body.clone())
            .collect()
    }

    fn spans(&self) -> Vec<Span> {
        self.bodies("/v1/traces")
            .iter()
            .flat_map(|body| {
                ExportTraceServiceRequest::decode(body.as_slice())
                    .expect("an OTLP trace export")
                    .resource_spans
            })
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
            .collect()
    }

    fn metric_exports(&self) -> Vec<ExportMetricsServiceRequest> {
        self.bodies("/v1/metrics")
            .iter()
            .map(|body| {
                ExportMetricsServiceRequest::decode(body.as_slice()).expect("an OTLP metric export")
            })
            .collect()
    }
}

/// One keep-alive connection: HTTP/1.1 requests with a Content-Length body.
fn serve(stream: TcpStream, keep: &Mutex<Vec<(String, Vec<u8>)>>) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        keep.lock().unwrap().push((path, body));
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|a| a.key == key)?.value.as_ref()?;
    Some(match value.value.as_ref()? {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::IntValue(i) => i.to_string(),
        any_value::Value::BoolValue(b) => b.to_string(),
        any_value::Value::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

/// (attributes, value) of every data point of a metric, over all exports: sums
/// and gauges give their value, histograms their count.
fn points(
    exports: &[ExportMetricsServiceRequest],
    name: &str,
) -> Vec<(BTreeMap<String, String>, f64)> {
    let labels = |attributes: &[KeyValue]| {
        attributes
            .iter()
            .map(|a| (a.key.clone(), attribute(attributes, &a.key).unwrap()))
            .collect::<BTreeMap<_, _>>()
    };
    let number = |value: &Option<number_data_point::Value>| match value {
        Some(number_data_point::Value::AsInt(i)) => *i as f64,
        Some(number_data_point::Value::AsDouble(d)) => *d,
        None => f64::NAN,
    };
    let mut found = Vec::new();
    for metric in exports
        .iter()
        .flat_map(|e| &e.resource_metrics)
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .filter(|m| m.name == name)
    {
        match &metric.data {
            Some(metric::Data::Sum(sum)) => found.extend(
                sum.data_points
                    .iter()
                    .map(|p| (labels(&p.attributes), number(&p.value))),
            ),
            Some(metric::Data::Gauge(gauge)) => found.extend(
                gauge
                    .data_points
                    .iter()
                    .map(|p| (labels(&p.attributes), number(&p.value))),
            ),
            Some(metric::Data::Histogram(histogram)) => found.extend(
                histogram
                    .data_points
                    .iter()
                    .map(|p| (labels(&p.attributes), p.count as f64)),
            ),
            _ => {}
        }
    }
    found
}

fn has_point(exports: &[ExportMetricsServiceRequest], name: &str, wanted: &[(&str, &str)]) -> bool {
    points(exports, name).iter().any(|(labels, value)| {
        *value > 0.0
            && wanted
                .iter()
                .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
    })
}

/// STOW of the test patient, a QIDO search by name and ID, a frame: the
/// transactions whose telemetry the tests look at.
fn exercise(server: &Server, spec: &Spec, authorization: Option<&str>) {
    let (content_type, body) = multipart(&[dicom_file(spec)]);
    let mut stow = client()
        .post(server.url("/studies"))
        .header("Content-Type", content_type)
        .body(body);
    if let Some(authorization) = authorization {
        stow = stow.header("Authorization", authorization);
    }
    assert_eq!(stow.send().unwrap().status().as_u16(), 200);
    let mut search =
        client().get(server.url("/studies?PatientName=Zyxwort*&PatientID=PID-ZQ-4711"));
    if let Some(authorization) = authorization {
        search = search.header("Authorization", authorization);
    }
    let found: serde_json::Value = search.send().unwrap().json().unwrap();
    assert_eq!(found.as_array().map(Vec::len), Some(1), "{found}");
    let mut frame = client()
        .get(server.url(&format!(
            "/studies/{}/series/{}/instances/{}/frames/1",
            spec.study, spec.series, spec.instance
        )))
        .header(
            "Accept",
            "multipart/related; type=\"application/octet-stream\"",
        );
    if let Some(authorization) = authorization {
        frame = frame.header("Authorization", authorization);
    }
    assert_eq!(frame.send().unwrap().status().as_u16(), 200);
}

fn otlp_env<'a>(receiver: &'a str, service: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("KASTELL__TELEMETRY__OTLP_ENDPOINT", receiver),
        ("KASTELL__TELEMETRY__SERVICE_NAME", service),
        ("KASTELL__TELEMETRY__EXPORT_INTERVAL_SECS", "1"),
        // Spans leave in batches; keep the test's wait short.
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]
}

#[test]
fn spans_and_metrics_reach_an_otlp_receiver_without_patient_data() {
    let receiver = Receiver::start();
    let url = receiver.url();
    let server = Server::start_with(&otlp_env(&url, "kastell-otlp-test"));
    let spec = patient();
    exercise(&server, &spec, None);

    let request_span = |spans: &[Span], name: &str| spans.iter().find(|s| s.name == name).cloned();
    let children = |spans: &[Span], parent: &Span| {
        spans
            .iter()
            .filter(|s| s.parent_span_id == parent.span_id && s.trace_id == parent.trace_id)
            .map(|s| s.name.clone())
            .collect::<Vec<_>>()
    };
    wait_until("the request spans and their children", || {
        let spans = receiver.spans();
        ["StoreInstances", "SearchForStudies", "RetrieveFrames"]
            .iter()
            .all(|name| request_span(&spans, name).is_some())
            && spans.iter().any(|s| s.name == "index.search")
            && spans.iter().any(|s| s.name.starts_with("store.read"))
    });
    let spans = receiver.spans();
    let stow = request_span(&spans, "StoreInstances").unwrap();
    assert_eq!(
        attribute(&stow.attributes, "http.route").as_deref(),
        Some("/dicomweb/studies")
    );
    assert_eq!(
        attribute(&stow.attributes, "http.method").as_deref(),
        Some("POST")
    );
    assert_eq!(
        attribute(&stow.attributes, "http.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attribute(&stow.attributes, "tenant").as_deref(),
        Some("default")
    );
    let stow_children = children(&spans, &stow);
    // The stages of the write path, and the index transaction inside its stage.
    for child in [
        "stow.finish",
        "stow.parse",
        "stow.metadata",
        "stow.index",
        "store.write",
    ] {
        assert!(
            stow_children.iter().any(|c| c == child),
            "{child} is not a child of StoreInstances: {stow_children:?}"
        );
    }
    let index_stage = request_span(&spans, "stow.index").unwrap();
    assert!(
        children(&spans, &index_stage).contains(&"index.store_instances".to_string()),
        "index.store_instances is not inside the stow.index stage"
    );
    let search = request_span(&spans, "SearchForStudies").unwrap();
    assert!(children(&spans, &search).contains(&"index.search".to_string()));
    let index_search = spans.iter().find(|s| s.name == "index.search").unwrap();
    let system = attribute(&index_search.attributes, "db.system").unwrap();
    assert!(system == "sqlite" || system == "postgresql", "{system}");
    let frames = request_span(&spans, "RetrieveFrames").unwrap();
    assert!(
        children(&spans, &frames)
            .iter()
            .any(|c| c.starts_with("store.read")),
        "{:?}",
        children(&spans, &frames)
    );

    wait_until("the request metrics", || {
        let exports = receiver.metric_exports();
        has_point(
            &exports,
            "kastell.http.requests",
            &[("endpoint", "SearchForStudies"), ("status", "200")],
        ) && has_point(
            &exports,
            "kastell.http.requests",
            &[("endpoint", "RetrieveFrames"), ("tenant", "default")],
        )
    });
    let exports = receiver.metric_exports();
    for (name, labels) in [
        (
            "kastell.http.requests",
            &[
                ("endpoint", "StoreInstances"),
                ("method", "POST"),
                ("status_class", "2xx"),
                ("tenant", "default"),
            ][..],
        ),
        (
            "kastell.http.request.duration",
            &[("endpoint", "StoreInstances")],
        ),
        ("kastell.http.received", &[("endpoint", "StoreInstances")]),
        ("kastell.http.sent", &[("endpoint", "SearchForStudies")]),
        (
            "kastell.instances.stored",
            &[("tenant", "default"), ("outcome", "stored")],
        ),
        ("kastell.index.duration", &[("operation", "search")]),
        (
            "kastell.index.duration",
            &[("operation", "store_instances")],
        ),
        ("kastell.store.duration", &[("operation", "write")]),
        ("kastell.stow.stage.duration", &[("stage", "receive")]),
        ("kastell.stow.stage.duration", &[("stage", "encrypt_write")]),
        ("kastell.stow.stage.duration", &[("stage", "parse")]),
        ("kastell.stow.stage.duration", &[("stage", "index")]),
        ("kastell.stow.stage.duration", &[("stage", "audit")]),
        ("kastell.crypto.sealed", &[]),
        ("kastell.crypto.opened", &[]),
        ("kastell.index.pool.connections", &[("pool", "main")]),
    ] {
        let present = has_point(&exports, name, labels)
            || (name == "kastell.index.pool.connections"
                && points(&exports, name)
                    .iter()
                    .any(|(l, _)| l.get("pool").map(String::as_str) == Some("main")));
        assert!(
            present,
            "no {name} {labels:?} in {:?}",
            points(&exports, name)
        );
    }
    let service = exports[0].resource_metrics[0]
        .resource
        .as_ref()
        .map(|r| attribute(&r.attributes, "service.name"));
    assert_eq!(service, Some(Some("kastell-otlp-test".to_string())));

    let received = receiver.received.lock().unwrap();
    assert!(!received.is_empty());
    for (path, body) in received.iter() {
        assert_no_personal_data(path, body, &spec);
    }
}

#[test]
fn nothing_is_exported_without_an_endpoint() {
    let receiver = Receiver::start();
    let url = receiver.url();
    let traces = format!("{url}/v1/traces");
    let metrics = format!("{url}/v1/metrics");
    // Were an exporter built, the SDK's own variables would send it here.
    let silent = Server::start_with(&[
        ("KASTELL__TELEMETRY__SERVICE_NAME", "kastell-silent"),
        ("KASTELL__TELEMETRY__EXPORT_INTERVAL_SECS", "1"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces.as_str()),
        ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", metrics.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);
    let spec = patient();
    exercise(&silent, &spec, None);
    // The control: a server with the endpoint, started after and doing the same,
    // is heard twice; by then the silent one would have been heard too.
    let loud = Server::start_with(&otlp_env(&url, "kastell-loud"));
    exercise(&loud, &spec, None);
    wait_until("two metric exports of the configured server", || {
        receiver.bodies("/v1/metrics").len() >= 2 && !receiver.spans().is_empty()
    });
    for (path, body) in receiver.received.lock().unwrap().iter() {
        let text = String::from_utf8_lossy(body);
        assert!(
            !text.contains("kastell-silent"),
            "the server without an endpoint exported to {path}"
        );
        assert!(text.contains("kastell-loud"), "{path}");
    }
}

/// Parses one sample line `name{a="b",…} value` of the Prometheus text format.
fn sample(line: &str) -> (String, BTreeMap<String, String>, f64) {
    let (series, value) = line.rsplit_once(' ').expect("name and value");
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}")),
    };
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}').expect("closing brace")),
        None => (series, ""),
    };
    assert!(
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
            && !name.as_bytes()[0].is_ascii_digit(),
        "bad metric name in {line}"
    );
    let mut map = BTreeMap::new();
    // Label values here hold no `",`, so a plain split reads them.
    for pair in labels.split("\",").filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once("=\"").expect("label=\"value\"");
        map.insert(key.to_string(), value.trim_end_matches('"').to_string());
    }
    (name.to_string(), map, value)
}

#[test]
fn metrics_are_served_for_prometheus_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, out) = cli(
        &[
            "apikeys",
            "add",
            "--tenant",
            "default",
            "--name",
            "scraper-test",
            "--permissions",
            "read,write",
        ],
        &data,
    );
    assert!(ok, "{out}");
    let api_key = out
        .split_whitespace()
        .find(|w| w.starts_with("kst_"))
        .unwrap()
        .to_string();
    let server = Server::spawn(&data, &[("KASTELL__AUTH__ANONYMOUS", "[]")]);
    let metrics_url = format!("http://127.0.0.1:{}/metrics", server.port);
    // Refused: no credentials on DICOMweb. Counted, without a tenant.
    let refused = client().get(server.url("/studies")).send().unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let spec = patient();
    exercise(&server, &spec, Some(&format!("ApiKey {api_key}")));

    let response = client().get(&metrics_url).send().unwrap();
    assert_eq!(response.status().as_u16(), 200, "open like /healthz");
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().unwrap();
    assert_no_personal_data("/metrics", text.as_bytes(), &spec);

    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.insert(name.to_string(), kind.to_string());
        } else if !line.starts_with("# HELP ") {
            assert!(!line.starts_with('#'), "unexpected comment {line}");
            samples.push(sample(line));
        }
    }
    for (name, kind) in [
        ("kastell_http_requests_total", "counter"),
        ("kastell_http_request_duration_seconds", "histogram"),
        ("kastell_http_received_bytes_total", "counter"),
        ("kastell_http_sent_bytes_total", "counter"),
        ("kastell_instances_stored_total", "counter"),
        ("kastell_store_duration_seconds", "histogram"),
        ("kastell_stow_stage_duration_seconds", "histogram"),
        ("kastell_index_duration_seconds", "histogram"),
        ("kastell_index_pool_connections", "gauge"),
        ("kastell_crypto_sealed_bytes_total", "counter"),
        ("kastell_crypto_opened_bytes_total", "counter"),
    ] {
        assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name}");
    }
    let value = |name: &str, wanted: &[(&str, &str)]| -> f64 {
        samples
            .iter()
            .filter(|(n, labels, _)| {
                n == name
                    && wanted
                        .iter()
                        .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    };
    assert_eq!(
        value(
            "kastell_http_requests_total",
            &[
                ("endpoint", "StoreInstances"),
                ("method", "POST"),
                ("status", "200"),
                ("status_class", "2xx"),
                ("tenant", "default"),
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            "kastell_http_requests_total",
            &[
                ("endpoint", "SearchForStudies"),
                ("status", "401"),
                ("tenant", "(none)")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            "kastell_http_request_duration_seconds_count",
            &[("endpoint", "RetrieveFrames")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "kastell_http_request_duration_seconds_bucket",
            &[("endpoint", "RetrieveFrames"), ("le", "+Inf")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "kastell_instances_stored_total",
            &[("outcome", "stored"), ("tenant", "default")]
        ),
        1.0
    );
    assert!(value("kastell_crypto_sealed_bytes_total", &[]) > 0.0);
    assert!(
        value(
            "kastell_http_received_bytes_total",
            &[("endpoint", "StoreInstances")]
        ) > 0.0
    );
    assert!(
        value(
            "kastell_index_duration_seconds_count",
            &[("operation", "search")]
        ) >= 1.0
    );
    assert!(samples
        .iter()
        .any(|(n, labels, _)| n == "kastell_index_pool_connections"
            && labels.get("pool").map(String::as_str) == Some("main")
            && labels.get("state").map(String::as_str) == Some("idle")));
    // Scraping is counted too, under its own name.
    let again = client().get(&metrics_url).send().unwrap().text().unwrap();
    assert!(again.contains("endpoint=\"Metrics\""), "{again}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("kastell.log");
    let server = Server::spawn_logging(
        &data,
        &[("KASTELL__LOG__FORMAT", "json"), ("RUST_LOG", "info")],
        &log,
    );
    let server_url = |path: &str| server.url(path);
    let spec = patient();
    let (content_type, body) = multipart(&[dicom_file(&spec)]);
    let stored = client()
        .post(server_url("/studies"))
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .unwrap();
    assert_eq!(stored.status().as_u16(), 200);
    let searched = client()
        .get(server_url("/studies?PatientName=Zyxwort*"))
        .send()
        .unwrap();
    assert_eq!(searched.status().as_u16(), 200);
    // The access log line of the search is written once its answer is out.
    let is_search = |entry: &serde_json::Value| {
        entry["target"] == "kastell::access"
            && entry["fields"]["method"] == "GET"
            && entry["fields"]["route"] == "/dicomweb/studies"
    };
    wait_until("the access log of the search", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|entry| is_search(&entry))
    });
    drop(server);

    let text = std::fs::read_to_string(&log).unwrap();
    let mut entries = Vec::new();
    for line in text.lines() {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(entry.is_object(), "{line}");
        assert!(entry.get("level").is_some() && entry.get("timestamp").is_some());
        entries.push(entry);
    }
    let search = entries
        .iter()
        .find(|e| is_search(e))
        .expect("the search's access log");
    assert_eq!(search["fields"]["tenant"], "default");
    assert_eq!(search["fields"]["status"], 200);
    // Inside the request span, named after the endpoint.
    assert_eq!(search["span"]["otel.name"], "SearchForStudies");
    assert_no_personal_data("the JSON log", text.as_bytes(), &spec);
}
