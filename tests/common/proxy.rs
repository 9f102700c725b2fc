//! A TCP proxy on loopback that a test puts between Kastell and a backend
//! (PostgreSQL, an S3 server) to cut the connection and restore it: a network
//! fault in the middle of requests, without touching the backend itself.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    upstream: String,
    cut: AtomicBool,
    closing: AtomicBool,
    /// Both ends of every connection passed on so far.
    open: Mutex<Vec<TcpStream>>,
}

impl Shared {
    fn close_all(&self) {
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl TcpProxy {
    /// Listens on a free loopback port and passes every connection on to
    /// `upstream` (`host:port`), one thread per direction.
    pub fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            cut: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            open: Mutex::new(Vec::new()),
        });
        let accepting = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.closing.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                // Cut: the connection is closed as soon as it is made.
                if accepting.cut.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&accepting.upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let ends = [client.try_clone(), server.try_clone()];
                let [Ok(client_end), Ok(server_end)] = ends else {
                    continue;
                };
                accepting
                    .open
                    .lock()
                    .unwrap()
                    .extend([client_end, server_end]);
                // A cut between the check and the registration closes it too.
                if accepting.cut.load(Ordering::SeqCst) {
                    accepting.close_all();
                }
                pump(client.try_clone().unwrap(), server.try_clone().unwrap());
                pump(server, client);
            }
        });
        TcpProxy { addr, shared }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Closes every connection passed on so far, and every new one at once,
    /// until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.shared.close_all();
    }

    /// Passes new connections on again.
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        // Wake the accepting thread so that it sees `closing`.
        let _ = TcpStream::connect(self.addr);
        self.shared.close_all();
    }
}

/// Copies one direction until it ends, then passes the end on.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// `host:port` of a URL (`postgres://user@host:port/db`, `http://host:port`).
fn authority(url: &str, default_port: u16) -> String {
    let parsed = url::Url::parse(url).expect("a URL");
    format!(
        "{}:{}",
        parsed.host_str().expect("a host"),
        parsed.port().unwrap_or(default_port)
    )
}

/// On PostgreSQL (`KASTELL_TEST_INDEX=postgres`): gives `data_dir` its test
/// database (see `index_args`) reached through a new proxy, for the servers and
/// CLI commands started on it from then on. `None` on SQLite.
pub fn index_through_proxy(data_dir: &Path) -> Option<TcpProxy> {
    let args = super::index_args(data_dir);
    let url = args.get(1)?;
    let proxy = TcpProxy::start(&authority(url, 5432));
    let mut through = url::Url::parse(url).unwrap();
    through.set_host(Some("127.0.0.1")).unwrap();
    through.set_port(Some(proxy.port())).unwrap();
    std::fs::write(data_dir.join("test-index-url"), through.as_str()).unwrap();
    Some(proxy)
}

/// On an S3 server (`KASTELL_TEST_BLOB_URL` with `AWS_ENDPOINT_URL`, as
/// tests/backends/start_s3.sh sets them): a proxy in front of it, and the
/// environment a server needs to reach the store through it. `None` otherwise.
pub fn s3_through_proxy() -> Option<(TcpProxy, Vec<(String, String)>)> {
    std::env::var("KASTELL_TEST_BLOB_URL")
        .ok()
        .filter(|url| url.starts_with("s3://"))?;
    let endpoint = std::env::var("AWS_ENDPOINT_URL").ok()?;
    let proxy = TcpProxy::start(&authority(&endpoint, 80));
    let env = vec![(
        "AWS_ENDPOINT_URL".to_string(),
        format!("http://127.0.0.1:{}", proxy.port()),
    )];
    Some((proxy, env))
}
