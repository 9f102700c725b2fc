//! A private NATS server with JetStream for one test (`nats-server -js`, the
//! Debian package), on a free loopback port and a store directory of its own,
//! which the test can kill (-9) and start again on the same port and store;
//! and the few JetStream reads the tests make, through async-nats.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;

use super::{free_port, poll};

pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    store: PathBuf,
    _dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
}

impl Nats {
    /// Starts a fresh server; panics naming the package when `nats-server`
    /// is not installed.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = dir.path().join("jetstream");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut nats = Nats {
            child: None,
            port: free_port(),
            store,
            _dir: dir,
            runtime,
        };
        nats.restart();
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server with SIGKILL (no clean shutdown, no flush).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on the same port and store directory, and
    /// waits until it accepts JetStream requests.
    pub fn restart(&mut self) {
        self.kill9();
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server (Debian package nats-server; tests/run-all.sh installs it)");
        self.child = Some(child);
        let url = self.url();
        let up = poll(Duration::from_secs(30), || {
            self.runtime
                .block_on(async {
                    let client = async_nats::connect(&url).await.ok()?;
                    // JetStream answers (its account info; the 2.9 server's
                    // answer is older than async-nats' type of it).
                    client.request("$JS.API.INFO", "".into()).await.ok()
                })
                .map(|_| ())
        });
        assert!(up.is_some(), "nats-server did not start on {url}");
    }

    /// Runs `f` on a JetStream context connected to the server.
    pub fn with_jetstream<T>(&self, f: impl AsyncFnOnce(&jetstream::Context) -> T) -> T {
        let url = self.url();
        self.runtime.block_on(async move {
            let client = async_nats::connect(&url).await.expect("connect to NATS");
            let js = jetstream::new(client);
            f(&js).await
        })
    }

    /// Every message of `stream`, in stream order: (subject, `Nats-Msg-Id`,
    /// payload as JSON). Empty when the stream does not exist (yet).
    pub fn messages(&self, stream: &str) -> Vec<(String, String, serde_json::Value)> {
        self.with_jetstream(async |js| {
            let Ok(mut stream) = js.get_stream(stream).await else {
                return Vec::new();
            };
            let state = stream.info().await.expect("stream info").state.clone();
            let mut found = Vec::new();
            for seq in state.first_sequence..=state.last_sequence {
                let Ok(message) = stream.get_raw_message(seq).await else {
                    continue; // removed (a work queue's acknowledged job)
                };
                let id = message
                    .headers
                    .get(async_nats::header::NATS_MESSAGE_ID)
                    .map(|v| v.as_str().to_string())
                    .unwrap_or_else(|| format!("{:?}", message.headers));
                let payload = serde_json::from_slice(&message.payload).expect("JSON payload");
                found.push((message.subject.to_string(), id, payload));
            }
            found
        })
    }

    /// (waiting pull requests, messages delivered and not acknowledged,
    /// messages not yet delivered) of `consumer` on `stream`; `None` while it
    /// does not exist.
    pub fn consumer_state(&self, stream: &str, consumer: &str) -> Option<(usize, usize, u64)> {
        self.with_jetstream(async |js| {
            let stream = js.get_stream(stream).await.ok()?;
            let info = stream.consumer_info(consumer).await.ok()?;
            Some((info.num_waiting, info.num_ack_pending, info.num_pending))
        })
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill9();
    }
}
