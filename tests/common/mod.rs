//! Shared harness of the integration tests: start the real `kastell` binary on a
//! loopback port with a fresh data directory, build DICOM files, talk HTTP.

#![allow(dead_code)]

pub mod nats;
pub mod proxy;
pub mod transit;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

pub struct Server {
    child: Child,
    pub port: u16,
    pub data_dir: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts the server with extra environment variables (`KASTELL__...`).
    pub fn start_with(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data");
        let mut server = Self::spawn(&data_dir, env);
        server._dir = Some(dir);
        server
    }

    /// Starts a server on an existing data directory.
    pub fn spawn(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::spawn_to(data_dir, env, Stdio::null())
    }

    /// Starts a server on an existing data directory with its log (standard
    /// error) written to `log`; `env` may set RUST_LOG.
    pub fn spawn_logging(data_dir: &Path, env: &[(&str, &str)], log: &Path) -> Self {
        Self::spawn_to(data_dir, env, std::fs::File::create(log).unwrap().into())
    }

    fn spawn_to(data_dir: &Path, env: &[(&str, &str)], stderr: Stdio) -> Self {
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_kastell"));
        command
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data_dir)
            .args(index_args(data_dir))
            .args(blob_args(data_dir))
            .envs(master_key_env())
            .env("RUST_LOG", "warn")
            // Metadata built behind the tests' backs would change what some of
            // them count in the blob store; the warmer's own test turns it on.
            .env("KASTELL__DICOMWEB__METADATA_WARM_AFTER_SECS", "0")
            .stdout(Stdio::null())
            .stderr(stderr);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("start kastell");
        let server = Server {
            child,
            port,
            data_dir: data_dir.to_path_buf(),
            _dir: None,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::blocking::get(format!("http://127.0.0.1:{}/healthz", self.port))
            {
                if r.status().is_success() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("kastell did not become healthy");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/dicomweb{}", self.port, path)
    }

    /// Stops the server the way an orchestrator does (SIGTERM) and waits for it to
    /// exit on its own: in-flight work and the audit writer finish first.
    pub fn terminate(mut self) -> PathBuf {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        self.data_dir.clone()
    }

    pub fn stop(mut self) -> PathBuf {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.data_dir.clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`TERM`, `INT`, ...) to the server with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits up to `within` for the server to exit; `None` if it still runs.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let child = &mut self.child;
        poll(within, || child.try_wait().expect("wait for kastell"))
    }

    /// Instance blobs present on disk.
    pub fn blob_files(&self) -> Vec<PathBuf> {
        let dir = self.data_dir.join("blobs").join("instances");
        match std::fs::read_dir(dir) {
            Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--index-url` for a data directory when the tests run on PostgreSQL
/// (`KASTELL_TEST_INDEX=postgres` with `KASTELL_TEST_POSTGRES=postgres://user@host:port`):
/// each data directory gets its
/// own fresh database, remembered in a file inside it so a restarted server (or a
/// CLI command) finds the same one. Empty on SQLite, the default.
pub fn index_args(data_dir: &Path) -> Vec<String> {
    if std::env::var("KASTELL_TEST_INDEX").as_deref() != Ok("postgres") {
        return Vec::new();
    }
    use kastell::index::test_db::PgTestDb;
    let base = PgTestDb::server().expect("KASTELL_TEST_INDEX=postgres needs KASTELL_TEST_POSTGRES");
    let marker = data_dir.join("test-index-url");
    if let Ok(url) = std::fs::read_to_string(&marker) {
        return vec!["--index-url".into(), url];
    }
    // Kept: the servers and CLI commands on this data directory are other
    // processes, which may run after every value of the test is gone.
    let url = PgTestDb::create(&base).keep();
    std::fs::create_dir_all(data_dir).unwrap();
    std::fs::write(&marker, &url).unwrap();
    vec!["--index-url".into(), url]
}

/// `--blob-url` when the tests run on a cloud store (`KASTELL_TEST_BLOB_URL`, e.g.
/// `s3://kastell-test/rust` with the `AWS_*` variables of tests/backends/start_s3.sh):
/// one prefix per data directory, remembered like the index URL. Empty by default
/// (the local store under the data directory).
pub fn blob_args(data_dir: &Path) -> Vec<String> {
    let Ok(base) = std::env::var("KASTELL_TEST_BLOB_URL") else {
        return Vec::new();
    };
    let marker = data_dir.join("test-blob-url");
    let url = match std::fs::read_to_string(&marker) {
        Ok(url) => url,
        Err(_) => {
            let url = format!(
                "{}/{}",
                base.trim_end_matches('/'),
                uuid::Uuid::new_v4().simple()
            );
            std::fs::create_dir_all(data_dir).unwrap();
            std::fs::write(&marker, &url).unwrap();
            url
        }
    };
    vec!["--blob-url".into(), url]
}

/// A fixed master key when the blob store is not the embedded one (which would
/// otherwise get a generated development key).
pub fn master_key_env() -> Vec<(String, String)> {
    if std::env::var("KASTELL_TEST_BLOB_URL").is_ok() {
        vec![(
            "KASTELL__KEYS__MASTER_KEY".into(),
            "S2FzdGVsbCB0ZXN0IG1hc3RlciBrZXkgMzIgYnl0ZXM=".into(),
        )]
    } else {
        Vec::new()
    }
}

/// A `kastell` CLI command on a data directory, with the test's index, blob
/// store and master key, logging warnings only.
pub fn cli_command(args: &[&str], data_dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kastell"));
    command
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .args(index_args(data_dir))
        .args(blob_args(data_dir))
        .envs(master_key_env())
        .env("RUST_LOG", "warn");
    command
}

/// Runs [`cli_command`]; returns success and stdout + stderr.
pub fn cli(args: &[&str], data_dir: &Path) -> (bool, String) {
    cli_with(args, data_dir, &[])
}

/// Runs [`cli_command`] with extra environment; returns success and stdout +
/// stderr.
pub fn cli_with(args: &[&str], data_dir: &Path, env: &[(String, String)]) -> (bool, String) {
    let output = cli_command(args, data_dir)
        .envs(env.iter().cloned())
        .output()
        .expect("run kastell");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

/// Waits until `done` holds, polling, for at most a minute: the server finishes
/// some work (clean-ups, sweeps) behind its responses, and a loaded machine may
/// take a while. Fails naming `what` when it never happens.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    if poll(Duration::from_secs(60), || done().then_some(())).is_none() {
        panic!("timed out waiting until {what}");
    }
}

/// The one polling loop of the tests: asks `check` every 20 ms until it gives
/// `Some`, for at most `within`; `None` when time ran out (the caller decides
/// whether that fails the test).
pub fn poll<T>(within: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = check() {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The audit trail of a data directory as FHIR AuditEvents (`kastell audit
/// export --format fhir`), with extra environment `env`.
pub fn audit_events(data_dir: &Path, env: &[(&str, &str)]) -> Vec<serde_json::Value> {
    let output = cli_command(
        &[
            "audit",
            "export",
            "--since",
            "2000-01-01",
            "--format",
            "fhir",
        ],
        data_dir,
    )
    .envs(env.iter().copied())
    .output()
    .expect("run kastell");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let bundle: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    bundle["entry"].as_array().cloned().unwrap_or_default()
}

/// `kastell verify` on a data directory (with the test's index and blob store).
pub fn verify(data_dir: &Path) -> (bool, String) {
    cli(&["verify"], data_dir)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// What a generated test instance looks like.
#[derive(Clone, Debug)]
pub struct Spec {
    pub study: String,
    pub series: String,
    pub instance: String,
    pub patient_name: String,
    pub patient_id: String,
    pub study_date: String,
    pub study_time: String,
    pub modality: String,
    pub accession: String,
    pub series_number: i32,
    pub instance_number: i32,
    pub transfer_syntax: String,
    pub charset: Option<String>,
    /// Rows and columns of each frame.
    pub size: u16,
    /// Number of Frames (written when more than one).
    pub frames: u32,
    pub sop_class: String,
}

impl Spec {
    pub fn new(study: &str, series: &str, instance: &str) -> Self {
        Spec {
            study: study.into(),
            series: series.into(),
            instance: instance.into(),
            patient_name: "Doe^John".into(),
            patient_id: "PID-1".into(),
            study_date: "20240115".into(),
            study_time: "101500".into(),
            modality: "CT".into(),
            accession: "ACC-1".into(),
            series_number: 1,
            instance_number: 1,
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            charset: None,
            size: 4,
            frames: 1,
            sop_class: SECONDARY_CAPTURE.into(),
        }
    }
}

pub const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";

/// A PS3.10 file for `spec`, with 16-bit pixel data (4x4, one frame, unless the
/// spec says otherwise).
pub fn dicom_file(spec: &Spec) -> Vec<u8> {
    let mut obj = InMemDicomObject::new_empty();
    let mut put = |tag, vr, value: PrimitiveValue| obj.put(DataElement::new(tag, vr, value));
    if let Some(charset) = &spec.charset {
        put(
            tags::SPECIFIC_CHARACTER_SET,
            VR::CS,
            PrimitiveValue::from(charset.as_str()),
        );
    }
    put(
        tags::SOP_CLASS_UID,
        VR::UI,
        PrimitiveValue::from(spec.sop_class.as_str()),
    );
    put(
        tags::SOP_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from(spec.instance.as_str()),
    );
    put(
        tags::STUDY_DATE,
        VR::DA,
        PrimitiveValue::from(spec.study_date.as_str()),
    );
    put(
        tags::STUDY_TIME,
        VR::TM,
        PrimitiveValue::from(spec.study_time.as_str()),
    );
    put(
        tags::ACCESSION_NUMBER,
        VR::SH,
        PrimitiveValue::from(spec.accession.as_str()),
    );
    put(
        tags::MODALITY,
        VR::CS,
        PrimitiveValue::from(spec.modality.as_str()),
    );
    put(
        tags::REFERRING_PHYSICIAN_NAME,
        VR::PN,
        PrimitiveValue::from(""),
    );
    put(
        tags::PATIENT_NAME,
        VR::PN,
        PrimitiveValue::from(spec.patient_name.as_str()),
    );
    put(
        tags::PATIENT_ID,
        VR::LO,
        PrimitiveValue::from(spec.patient_id.as_str()),
    );
    put(
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from(spec.study.as_str()),
    );
    put(
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from(spec.series.as_str()),
    );
    put(tags::STUDY_ID, VR::SH, PrimitiveValue::from("S1"));
    put(
        tags::SERIES_NUMBER,
        VR::IS,
        PrimitiveValue::from(spec.series_number.to_string()),
    );
    put(
        tags::INSTANCE_NUMBER,
        VR::IS,
        PrimitiveValue::from(spec.instance_number.to_string()),
    );
    put(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1_u16));
    put(
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        PrimitiveValue::from("MONOCHROME2"),
    );
    put(tags::ROWS, VR::US, PrimitiveValue::from(spec.size));
    put(tags::COLUMNS, VR::US, PrimitiveValue::from(spec.size));
    if spec.frames > 1 {
        put(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            PrimitiveValue::from(spec.frames.to_string()),
        );
    }
    put(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16_u16));
    put(tags::BITS_STORED, VR::US, PrimitiveValue::from(12_u16));
    put(tags::HIGH_BIT, VR::US, PrimitiveValue::from(11_u16));
    put(
        tags::PIXEL_REPRESENTATION,
        VR::US,
        PrimitiveValue::from(0_u16),
    );
    let samples = spec.frames * u32::from(spec.size) * u32::from(spec.size);
    let pixels: Vec<u16> = (0..samples)
        .map(|i| (i.wrapping_mul(100) as u16).wrapping_add(spec.instance_number as u16))
        .collect();
    put(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(pixels.into()));
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(spec.transfer_syntax.as_str())
                .media_storage_sop_class_uid(spec.sop_class.as_str())
                .media_storage_sop_instance_uid(spec.instance.as_str()),
        )
        .expect("file meta");
    let mut bytes = Vec::new();
    file.write_all(&mut bytes).expect("write file");
    bytes
}

/// A multipart/related body of `application/dicom` parts; returns (content type, body).
pub fn multipart(parts: &[Vec<u8>]) -> (String, Vec<u8>) {
    multipart_typed(
        parts
            .iter()
            .map(|p| ("application/dicom", p.clone()))
            .collect(),
    )
}

pub fn multipart_typed(parts: Vec<(&str, Vec<u8>)>) -> (String, Vec<u8>) {
    let boundary = "test-boundary-7d1f";
    let mut body = Vec::new();
    for (content_type, part) in parts {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: {content_type}\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(&part);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (
        format!("multipart/related; type=\"application/dicom\"; boundary={boundary}"),
        body,
    )
}

/// POSTs instances; returns (status, JSON body).
pub fn store(server: &Server, path: &str, parts: &[Vec<u8>]) -> (u16, serde_json::Value) {
    let (content_type, body) = multipart(parts);
    let response = client()
        .post(server.url(path))
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .unwrap();
    let status = response.status().as_u16();
    let json = response.json().unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// Retrieves one instance as `application/dicom` in the transfer syntax it was
/// stored in: its bytes, or the status when it is not 200.
pub fn retrieve_instance(
    server: &Server,
    study: &str,
    series: &str,
    instance: &str,
) -> Result<Vec<u8>, u16> {
    let response = client()
        .get(server.url(&format!(
            "/studies/{study}/series/{series}/instances/{instance}"
        )))
        .header(
            "Accept",
            "multipart/related; type=\"application/dicom\"; transfer-syntax=*",
        )
        .send()
        .unwrap();
    let status = response.status().as_u16();
    if status != 200 {
        return Err(status);
    }
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    let body = response.bytes().unwrap();
    let mut parts = split_multipart(&content_type, &body);
    assert_eq!(parts.len(), 1, "one instance, one part");
    Ok(parts.remove(0).1)
}

/// Splits a multipart body into its parts' (headers, body).
pub fn split_multipart(content_type: &str, body: &[u8]) -> Vec<(String, Vec<u8>)> {
    let boundary = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .expect("boundary")
        .trim_matches('"')
        .to_string();
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = body;
    while let Some(start) = find(rest, delimiter.as_bytes()) {
        rest = &rest[start + delimiter.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        rest = &rest[2..]; // CRLF
        let header_end = find(rest, b"\r\n\r\n").expect("part headers");
        let headers = String::from_utf8_lossy(&rest[..header_end]).to_string();
        rest = &rest[header_end + 4..];
        let end = find(rest, format!("\r\n{delimiter}").as_bytes()).expect("part end");
        parts.push((headers, rest[..end].to_vec()));
        rest = &rest[end + 2..];
    }
    parts
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Values of a DICOM JSON attribute.
pub fn values<'a>(item: &'a serde_json::Value, tag: &str) -> Vec<&'a serde_json::Value> {
    item.get(tag)
        .and_then(|a| a.get("Value"))
        .and_then(|v| v.as_array())
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

pub fn first_string(item: &serde_json::Value, tag: &str) -> Option<String> {
    values(item, tag)
        .first()
        .and_then(|v| v.as_str())
        .map(String::from)
}
