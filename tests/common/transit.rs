//! A loopback stand-in for the Transit secrets engine of HashiCorp Vault and
//! OpenBao, for the tests of the remote KMS master-key provider: the same
//! routes, bodies, ciphertext format (`vault:v1:<base64>`) and error answers as
//! the real engine for what Kastell uses, plus the faults a test needs to
//! provoke — a key destroyed, access revoked, the whole KMS unreachable — and
//! counters of the calls, to see what a cache saves.
//!
//! Plain `std::net` and one thread per connection: a request is read up to its
//! `Content-Length`, answered with `Connection: close`, and the connection is
//! closed, so that no client ever reuses a connection across a `stop`.

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{json, Value};

/// Larger request bodies are refused with 413, unread.
const MAX_BODY: usize = 64 * 1024;
/// The request line and headers together; a client sending more is broken.
const MAX_HEAD: usize = 16 * 1024;
const TAG_LEN: usize = 16;
/// Each key has one version (no rotation here): the `v1` of its ciphertexts.
const KEY_VERSION: u64 = 1;

pub struct TransitServer {
    port: u16,
    shared: Arc<Shared>,
    /// `None` while stopped.
    listening: Mutex<Option<Listening>>,
}

/// The accepting thread and the flag that tells it to drop its socket.
struct Listening {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

struct Shared {
    token: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// AES-256 key material by key name; a deleted key is removed for good.
    keys: HashMap<String, [u8; 32]>,
    /// Key names the token may no longer use (whether the key exists or not).
    denied: HashSet<String>,
    encrypt_calls: usize,
    decrypt_calls: usize,
}

impl TransitServer {
    /// Starts on a free loopback port with the keys `keys`, accepting `token`.
    pub fn start(token: &str, keys: &[&str]) -> TransitServer {
        Self::start_on(0, token, keys)
    }

    /// Starts on `port` (0: a free one) with new keys `keys` — for a second
    /// KMS at an address a test chose. To bring the same keys back after an
    /// outage, use [`TransitServer::stop`] and [`TransitServer::resume`].
    pub fn start_on(port: u16, token: &str, keys: &[&str]) -> TransitServer {
        let shared = Arc::new(Shared {
            token: token.to_string(),
            state: Mutex::new(State::default()),
        });
        let listener = bind_retrying(port);
        let port = listener.local_addr().unwrap().port();
        let server = TransitServer {
            port,
            listening: Mutex::new(Some(listen(listener, shared.clone()))),
            shared,
        };
        for name in keys {
            server.add_key(name);
        }
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The mount URL a client configures, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/transit", self.port)
    }

    /// Creates the key `name` with new material; an existing key is kept as it
    /// is. After [`TransitServer::delete_key`] this is a different key: the
    /// ciphertexts of the deleted one fail authentication.
    pub fn add_key(&self, name: &str) {
        let mut material = [0u8; 32];
        SystemRandom::new().fill(&mut material).unwrap();
        let mut state = self.shared.state.lock().unwrap();
        state.keys.entry(name.to_string()).or_insert(material);
    }

    /// Destroys the key material: encrypt and decrypt with that key answer 400
    /// "encryption key not found" from then on, as Vault does.
    pub fn delete_key(&self, name: &str) {
        self.shared.state.lock().unwrap().keys.remove(name);
    }

    /// Revokes (`true`) or restores the token's access to the key `name`: 403
    /// "permission denied" meanwhile, the key material kept — the customer
    /// taking access away from the archive.
    pub fn deny(&self, name: &str, denied: bool) {
        let mut state = self.shared.state.lock().unwrap();
        if denied {
            state.denied.insert(name.to_string());
        } else {
            state.denied.remove(name);
        }
    }

    /// Requests received on `decrypt/<name>`, whatever their answer (but for a
    /// body over 64 KiB, refused before it is read).
    pub fn decrypt_calls(&self) -> usize {
        self.shared.state.lock().unwrap().decrypt_calls
    }

    /// Requests received on `encrypt/<name>`, whatever their answer (but for a
    /// body over 64 KiB, refused before it is read).
    pub fn encrypt_calls(&self) -> usize {
        self.shared.state.lock().unwrap().encrypt_calls
    }

    /// Closes the listening socket (new connections are refused) and keeps the
    /// keys: a KMS outage. Returns once the socket is closed.
    pub fn stop(&self) {
        if let Some(listening) = self.listening.lock().unwrap().take() {
            listening.stop.store(true, Ordering::SeqCst);
            // Wakes the blocking accept, which then sees the flag.
            let _ = TcpStream::connect(("127.0.0.1", self.port));
            let _ = listening.thread.join();
        }
    }

    /// Listens again on the same port, with the same keys and counters.
    pub fn resume(&self) {
        let mut listening = self.listening.lock().unwrap();
        if listening.is_none() {
            *listening = Some(listen(bind_retrying(self.port), self.shared.clone()));
        }
    }
}

impl Drop for TransitServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds `127.0.0.1:port`, retrying for 5 s: a port just closed by `stop` (or
/// by the previous server of a test) may take a moment to be free again.
fn bind_retrying(port: u16) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(listener) => return listener,
            Err(error) if Instant::now() >= deadline => {
                panic!("bind the transit server on port {port}: {error}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Accepts on `listener` in a thread until told to stop, then drops it. The
/// accept blocks (no polling delay on each request, which the bench of
/// `benches/key_custody.rs` would measure); `stop` wakes it with a connection
/// of its own after raising the flag.
fn listen(listener: TcpListener, shared: Arc<Shared>) -> Listening {
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::spawn(move || {
        for stream in listener.incoming() {
            if stopping.load(Ordering::SeqCst) {
                break;
            }
            if let Ok(stream) = stream {
                let shared = shared.clone();
                std::thread::spawn(move || serve(stream, &shared));
            }
        }
    });
    Listening { stop, thread }
}

struct Request {
    method: String,
    path: String,
    token: Option<String>,
    body: Vec<u8>,
}

/// Answers one request and closes the connection.
fn serve(mut stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let (status, body) = match read_request(&stream) {
        Ok(request) => respond(&request, shared),
        Err(Some((status, message))) => (status, errors(message)),
        Err(None) => return,
    };
    let body = serde_json::to_vec(&body).unwrap();
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
    let _ = stream.flush();
    // Read what the client still sends (the body of a refused request) until
    // it closes: closing with unread data would reset the connection, and the
    // client could lose the answer.
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut sink = [0u8; 8192];
    while Instant::now() < deadline && matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}

/// Reads the head and exactly `Content-Length` bytes of body. `Err(None)`: the
/// connection ended or failed, nothing to answer.
fn read_request(stream: &TcpStream) -> Result<Request, Option<(u16, &'static str)>> {
    const MALFORMED: Option<(u16, &str)> = Some((400, "malformed request"));
    let mut reader = BufReader::new(stream);
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        match reader.read(&mut byte) {
            Ok(1) if head.len() < MAX_HEAD => head.push(byte[0]),
            Ok(1) => return Err(Some((431, "request header too large"))),
            _ => return Err(None),
        }
    }
    let head = String::from_utf8(head).map_err(|_| MALFORMED)?;
    let mut lines = head.split("\r\n").filter(|line| !line.is_empty());
    let mut request_line = lines.next().ok_or(MALFORMED)?.split(' ');
    let (Some(method), Some(path)) = (request_line.next(), request_line.next()) else {
        return Err(MALFORMED);
    };
    let mut token = None;
    let mut length = 0;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(MALFORMED)?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "x-vault-token" => token = Some(value.to_string()),
            "content-length" => length = value.parse().map_err(|_| MALFORMED)?,
            "transfer-encoding" => return Err(Some((411, "content-length required"))),
            _ => {}
        }
    }
    if length > MAX_BODY {
        return Err(Some((413, "request body too large")));
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).map_err(|_| None)?;
    let (method, path) = (method.to_string(), path.to_string());
    Ok(Request {
        method,
        path,
        token,
        body,
    })
}

/// Routes a request. As Vault, the token is checked before the route.
fn respond(request: &Request, shared: &Shared) -> (u16, Value) {
    let path = request.path.split('?').next().unwrap_or_default();
    let route = path
        .strip_prefix("/v1/transit/")
        .and_then(|rest| rest.split_once('/'))
        .filter(|(_, name)| !name.is_empty() && !name.contains('/'));
    let mut state = shared.state.lock().unwrap();
    match route {
        Some(("encrypt", _)) => state.encrypt_calls += 1,
        Some(("decrypt", _)) => state.decrypt_calls += 1,
        _ => {}
    }
    if request.token.as_deref() != Some(shared.token.as_str()) {
        return (403, errors("permission denied"));
    }
    let (operation, name) = match route {
        Some((operation @ ("encrypt" | "decrypt" | "keys"), name)) => (operation, name),
        _ => return (404, json!({ "errors": [] })),
    };
    let method = if operation == "keys" { "GET" } else { "POST" };
    if request.method != method {
        return (405, errors("unsupported operation"));
    }
    if state.denied.contains(name) {
        return (403, errors("permission denied"));
    }
    let key = state.keys.get(name);
    let result = match operation {
        "encrypt" => encrypt(key, &request.body),
        "decrypt" => decrypt(key, &request.body),
        _ => key_info(key, name),
    };
    result.unwrap_or_else(|(status, message)| (status, errors(&message)))
}

type Answer = Result<(u16, Value), (u16, String)>;

fn encrypt(key: Option<&[u8; 32]>, body: &[u8]) -> Answer {
    let body = parse(body)?;
    let key = sealing_key(key)?;
    let mut sealed = base64_field(&body, "plaintext")?
        .ok_or((400, "missing plaintext to encrypt".to_string()))?;
    let aad = base64_field(&body, "associated_data")?.unwrap_or_default();
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).unwrap();
    let unique = Nonce::assume_unique_for_key(nonce);
    key.seal_in_place_append_tag(unique, Aad::from(&aad), &mut sealed)
        .unwrap();
    let ciphertext = [&nonce[..], &sealed].concat();
    let ciphertext = format!("vault:v{KEY_VERSION}:{}", BASE64.encode(ciphertext));
    let data = json!({ "ciphertext": ciphertext, "key_version": KEY_VERSION });
    Ok((200, json!({ "data": data })))
}

fn decrypt(key: Option<&[u8; 32]>, body: &[u8]) -> Answer {
    let body = parse(body)?;
    let key = sealing_key(key)?;
    let invalid = || (400, "invalid ciphertext".to_string());
    let ciphertext = body
        .get("ciphertext")
        .and_then(Value::as_str)
        .ok_or_else(invalid)?;
    let (version, encoded) = ciphertext
        .strip_prefix("vault:v")
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(invalid)?;
    if version.parse::<u64>().ok() != Some(KEY_VERSION) {
        return Err(invalid());
    }
    let decoded = BASE64.decode(encoded).map_err(|_| invalid())?;
    if decoded.len() < NONCE_LEN + TAG_LEN {
        return Err(invalid());
    }
    let aad = base64_field(&body, "associated_data")?.unwrap_or_default();
    let (nonce, sealed) = decoded.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).unwrap();
    let mut sealed = sealed.to_vec();
    let plaintext = key
        .open_in_place(nonce, Aad::from(&aad), &mut sealed)
        .map_err(|_| (400, "cipher: message authentication failed".to_string()))?;
    let plaintext = BASE64.encode(plaintext);
    Ok((200, json!({ "data": { "plaintext": plaintext } })))
}

fn key_info(key: Option<&[u8; 32]>, name: &str) -> Answer {
    if key.is_none() {
        return Ok((404, json!({ "errors": [] })));
    }
    let data = json!({
        "name": name,
        "type": "aes256-gcm96",
        "exportable": false,
        "deletion_allowed": false,
        "latest_version": KEY_VERSION,
    });
    Ok((200, json!({ "data": data })))
}

/// A missing or deleted key is what Vault calls "not found", with a 400.
fn sealing_key(key: Option<&[u8; 32]>) -> Result<LessSafeKey, (u16, String)> {
    let key = key.ok_or((400, "encryption key not found".to_string()))?;
    let key = UnboundKey::new(&AES_256_GCM, key).unwrap();
    Ok(LessSafeKey::new(key))
}

fn parse(body: &[u8]) -> Result<Value, (u16, String)> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object)
        .ok_or((400, "failed to parse JSON input".to_string()))
}

/// The decoded base64 string `name` of a JSON body; `None` if absent.
fn base64_field(body: &Value, name: &str) -> Result<Option<Vec<u8>>, (u16, String)> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => BASE64
            .decode(text)
            .map(Some)
            .map_err(|_| (400, format!("failed to base64-decode {name}"))),
        Some(_) => Err((400, format!("{name} must be a base64 string"))),
    }
}

fn errors(message: &str) -> Value {
    json!({ "errors": [message] })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}
