//! The server's life cycle: SIGTERM in the middle of a large STOW request. The
//! request either completes and is acknowledged before the process exits, or it
//! is cut off at `server.shutdown_timeout_secs` and nothing of it is acknowledged;
//! either way, after a restart on the same data, every acknowledged instance is
//! there byte for byte, QIDO finds exactly those, no blob is left without its
//! index row, and `kastell verify` passes. The tests order events (the signal
//! lands while the body is being sent) without timing assertions; the waits have
//! generous deadlines only so that a hung server fails the test.

mod common;

use std::io::Read;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use common::*;

const INSTANCES: usize = 120;
/// Parts sent before the signal.
const BEFORE_SIGNAL: usize = 20;
const STUDY: &str = "1.2.826.0.1.3680043.9.7781.1";

fn instance_files() -> Vec<(String, String, Vec<u8>)> {
    (0..INSTANCES)
        .map(|i| {
            let series = format!("{STUDY}.{}", i % 3 + 1);
            let uid = format!("{series}.{}", i + 1);
            let mut spec = Spec::new(STUDY, &series, &uid);
            spec.instance_number = i as i32 + 1;
            (series, uid, dicom_file(&spec))
        })
        .collect()
}

/// A multipart body read part by part that, once `BEFORE_SIGNAL` parts have been
/// read, says so on `reached` and waits on `gate` before going on; a gate dropped
/// (or sent `false`) ends the body with an error instead, and until then the
/// client holds the connection open without sending.
struct GatedBody {
    pieces: Vec<Vec<u8>>,
    /// Where in part `BEFORE_SIGNAL` the gate is: 0 between parts, more in the
    /// middle of one (its blob half written).
    gate_offset: usize,
    next: usize,
    offset: usize,
    reached: Option<mpsc::Sender<()>>,
    gate: mpsc::Receiver<bool>,
    stalled: bool,
}

impl Read for GatedBody {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let at_gate = self.next == BEFORE_SIGNAL;
        if at_gate && self.offset == self.gate_offset {
            if let Some(reached) = self.reached.take() {
                let _ = reached.send(());
                // `false` or a dropped gate: never send the rest.
                self.stalled = !self.gate.recv().unwrap_or(false);
            }
        }
        if self.stalled {
            return Err(std::io::Error::other("the test stopped sending"));
        }
        let Some(piece) = self.pieces.get(self.next) else {
            return Ok(0);
        };
        let mut n = buf.len().min(piece.len() - self.offset);
        if at_gate && self.offset < self.gate_offset && self.reached.is_some() {
            n = n.min(self.gate_offset - self.offset);
        }
        buf[..n].copy_from_slice(&piece[self.offset..self.offset + n]);
        self.offset += n;
        if self.offset == piece.len() {
            self.next += 1;
            self.offset = 0;
        }
        Ok(n)
    }
}

/// Starts a STOW of `files` in a thread; returns the thread (status and body of
/// the answer, or the transport error) and the channels of the gate.
#[allow(clippy::type_complexity)]
fn start_gated_stow(
    server: &Server,
    files: &[(String, String, Vec<u8>)],
    gate_offset: usize,
) -> (
    std::thread::JoinHandle<Result<(u16, serde_json::Value), String>>,
    mpsc::Receiver<()>,
    mpsc::Sender<bool>,
) {
    let (content_type, _) = multipart(&[]);
    let boundary = content_type.rsplit("boundary=").next().unwrap().to_string();
    let mut pieces: Vec<Vec<u8>> = files
        .iter()
        .map(|(_, _, bytes)| {
            let mut piece =
                format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").into_bytes();
            piece.extend_from_slice(bytes);
            piece.extend_from_slice(b"\r\n");
            piece
        })
        .collect();
    pieces.push(format!("--{boundary}--\r\n").into_bytes());
    let (reached_tx, reached_rx) = mpsc::channel();
    let (gate_tx, gate_rx) = mpsc::channel();
    let body = GatedBody {
        pieces,
        gate_offset,
        next: 0,
        offset: 0,
        reached: Some(reached_tx),
        gate: gate_rx,
        stalled: false,
    };
    let url = server.url("/studies");
    let thread = std::thread::spawn(move || {
        // A client of its own, dropped with the thread: a pooled keep-alive
        // connection would only make the server's shutdown wait for it.
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .unwrap();
        let response = client
            .post(url)
            .header("Content-Type", content_type)
            .body(reqwest::blocking::Body::new(body))
            .send()
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let json = response.json().map_err(|e| e.to_string())?;
        Ok((status, json))
    });
    (thread, reached_rx, gate_tx)
}

/// Waits until the server has begun storing parts of the request (blobs beyond
/// the `before` already there appear), so that the signal lands in the middle of it.
fn wait_for_new_blobs(server: &Server, before: usize) {
    wait_until("the server begins storing the request", || {
        server.blob_files().len() > before
    });
}

fn acknowledged(response: &serde_json::Value) -> Vec<String> {
    values(response, "00081199")
        .into_iter()
        .map(|item| first_string(item, "00081155").expect("a SOP Instance UID"))
        .collect()
}

/// After a restart: every acknowledged instance is retrievable byte for byte, QIDO
/// finds those and no more, every blob on disk belongs to one of them, and
/// `kastell verify` passes. With `env`, the restarted server's settings (e.g. an
/// orphan sweep without grace, which then gets time to run).
fn check_after_restart(
    data: &Path,
    files: &[(String, String, Vec<u8>)],
    acked: &[String],
    env: &[(&str, &str)],
) {
    let server = Server::spawn(data, env);
    if !env.is_empty() {
        // The sweep gets time to run; what it left is checked below.
        poll(Duration::from_secs(60), || {
            (server.blob_files().len() <= acked.len()).then_some(())
        });
    }
    for uid in acked {
        let (series, _, bytes) = files
            .iter()
            .find(|(_, u, _)| u == uid)
            .expect("an instance of the request");
        let stored = retrieve_instance(&server, STUDY, series, uid)
            .unwrap_or_else(|status| panic!("{uid}: {status}"));
        assert!(stored == *bytes, "{uid} is not byte-identical");
    }
    let found: Vec<serde_json::Value> = client()
        .get(server.url(&format!("/studies/{STUDY}/instances?limit=1000")))
        .send()
        .unwrap()
        .json()
        .unwrap_or_default();
    assert_eq!(
        found.len(),
        acked.len(),
        "QIDO must find exactly the acknowledged instances"
    );
    let blobs = server.blob_files();
    assert_eq!(
        blobs.len(),
        acked.len(),
        "no blob may outlive its request unindexed: {blobs:?}"
    );
    drop(server);
    let (ok, out) = verify(data);
    assert!(ok, "{out}");
    assert!(out.contains(" 0 failed, 0 orphaned"), "{out}");
}

#[test]
fn sigterm_lets_a_stow_in_flight_finish_and_every_acknowledged_instance_survives() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let files = instance_files();
    let mut server = Server::spawn(&data, &[("KASTELL__SERVER__SHUTDOWN_TIMEOUT_SECS", "120")]);
    let (stow, reached, gate) = start_gated_stow(&server, &files, 0);
    reached.recv().expect("the body reached the signal point");
    wait_for_new_blobs(&server, 0);
    server.signal("TERM");
    // The process keeps the request it is in the middle of: send the rest.
    gate.send(true).unwrap();
    let (status, response) = stow.join().unwrap().expect("the STOW is answered");
    assert_eq!(status, 200, "{response}");
    let acked = acknowledged(&response);
    assert_eq!(acked.len(), INSTANCES);
    let exit = server
        .wait_exit(Duration::from_secs(120 + 30))
        .expect("the server exits after the request");
    assert!(exit.success(), "exit status {exit:?}");
    check_after_restart(&data, &files, &acked, &[]);
}

#[test]
fn a_stow_cut_off_at_the_shutdown_timeout_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let files = instance_files();
    // An instance stored before, acknowledged, must survive the cut-off request.
    let first = Server::spawn(&data, &[]);
    let (status, response) = store(&first, "/studies", &[files[0].2.clone()]);
    assert_eq!(status, 200, "{response}");
    drop(first);
    let mut server = Server::spawn(&data, &[("KASTELL__SERVER__SHUTDOWN_TIMEOUT_SECS", "2")]);
    // Stopped in the middle of a part: one blob is half written when the
    // request is cut off.
    let (stow, reached, gate) = start_gated_stow(&server, &files[1..], 300);
    reached.recv().expect("the body reached the signal point");
    wait_for_new_blobs(&server, 1);
    server.signal("TERM");
    // The client never sends the rest: the server must give up on it.
    let exit = server
        .wait_exit(Duration::from_secs(2 + 60))
        .expect("the server exits at the shutdown timeout");
    assert!(exit.success(), "exit status {exit:?}");
    drop(gate);
    match stow.join().unwrap() {
        Err(_) => {}
        Ok((status, response)) => panic!("a cut-off request was answered {status}: {response}"),
    }
    check_after_restart(&data, &files, &[files[0].1.clone()], &[]);
}

#[test]
fn a_second_signal_exits_at_once_and_the_orphan_sweep_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let files = instance_files();
    let mut server = Server::spawn(&data, &[("KASTELL__SERVER__SHUTDOWN_TIMEOUT_SECS", "600")]);
    let (stow, reached, gate) = start_gated_stow(&server, &files, 0);
    reached.recv().expect("the body reached the signal point");
    wait_for_new_blobs(&server, 0);
    server.signal("TERM");
    // Signals sent together may arrive as one: send the second once the first has
    // closed the listening socket.
    wait_until("the first signal closes the listening socket", || {
        std::net::TcpStream::connect(("127.0.0.1", server.port)).is_err()
    });
    server.signal("TERM");
    // Long before the 600 s the first signal would have waited.
    let exit = server
        .wait_exit(Duration::from_secs(120))
        .expect("the second signal ends the process");
    assert_eq!(exit.code(), Some(128 + 15), "exit status {exit:?}");
    drop(gate);
    assert!(stow.join().unwrap().is_err(), "nothing was answered");
    // The blobs of the request are left to the sweep of the next start.
    check_after_restart(
        &data,
        &files,
        &[],
        &[("KASTELL__STORAGE__ORPHAN_GRACE_SECS", "0")],
    );
}

#[test]
fn sigint_stops_an_idle_server_cleanly() {
    let mut server = Server::start();
    server.signal("INT");
    let exit = server
        .wait_exit(Duration::from_secs(60))
        .expect("the server exits");
    assert!(exit.success(), "exit status {exit:?}");
}

#[test]
fn with_a_drain_delay_readyz_fails_first_while_requests_are_still_served() {
    let mut server = Server::start_with(&[("KASTELL__SERVER__DRAIN_DELAY_SECS", "10")]);
    let get = |path: &str| {
        client()
            .get(format!("http://127.0.0.1:{}{path}", server.port))
            .send()
            .map(|r| r.status().as_u16())
    };
    assert_eq!(get("/readyz").unwrap(), 200);
    server.signal("TERM");
    wait_until("/readyz answers 503", || get("/readyz").unwrap() == 503);
    // Still serving: alive, and DICOMweb answers.
    assert_eq!(get("/healthz").unwrap(), 200);
    assert_eq!(get("/dicomweb/studies").unwrap(), 204);
    let exit = server
        .wait_exit(Duration::from_secs(60))
        .expect("the server exits after the delay");
    assert!(exit.success(), "exit status {exit:?}");
}
