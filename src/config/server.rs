//! `[server]`: the listening socket, workers, request size, shutdown, CORS,
//! trusted proxies, and where the host is.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::proxies;
use super::{ConfigError, Location};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the HTTP server binds to.
    pub listen: SocketAddr,
    /// Number of HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// Largest request body accepted, in bytes; larger requests get 413.
    pub max_request_bytes: u64,
    /// How long in-flight requests may take to finish on shutdown, in seconds.
    pub shutdown_timeout_secs: u64,
    /// On SIGTERM or SIGINT, how long to keep serving with `/readyz` answering
    /// 503 before the listening socket closes, in seconds: time for a load
    /// balancer to take the instance out of rotation, so that no client meets a
    /// refused connection during a rolling update.
    pub drain_delay_secs: u64,
    /// Origins browsers may call from (a viewer served elsewhere), e.g.
    /// `["https://viewer.example.org"]`; `["*"]` allows any; empty disables CORS.
    pub cors_allowed_origins: Vec<String>,
    /// Reverse proxies (IP addresses or CIDR blocks) whose `client_address_header`
    /// names the client in the audit trail and access log. Empty: the TCP peer is
    /// the client and no forwarding header is believed.
    pub trusted_proxies: Vec<String>,
    /// The header the trusted proxies write: `x-forwarded-for` or `forwarded`.
    pub client_address_header: proxies::ClientAddressHeader,
    /// Serve on a non-loopback address although anonymous requests may write or
    /// delete, or the master key is the generated development key. Refused
    /// without this; meant for closed test networks only.
    pub allow_insecure_exposure: bool,
    /// Where the host running Kastell is. It decrypts images, holds the master key in
    /// memory and writes the logs; backends local to it (the SQLite file, the local
    /// blob directory, a loopback database) inherit this declaration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers: 0,
            max_request_bytes: 16 * 1024 * 1024 * 1024,
            shutdown_timeout_secs: 30,
            drain_delay_secs: 0,
            cors_allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            client_address_header: proxies::ClientAddressHeader::XForwardedFor,
            allow_insecure_exposure: false,
            location: None,
        }
    }
}

impl ServerConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        proxies::TrustedProxies::parse(&self.trusted_proxies)
            .map_err(|e| ConfigError::Rule(format!("server.trusted_proxies: {e}")))?;
        Ok(())
    }
}
