//! A master key in a remote KMS speaking the HashiCorp Vault / OpenBao Transit
//! API: tenant keys are sent to `POST <mount>/encrypt/<key>` and
//! `POST <mount>/decrypt/<key>` (the key's context as `associated_data`), so the
//! master key stays in the KMS. Authenticated by a token (`X-Vault-Token`, from a
//! file or the environment) and/or mutual TLS.
//!
//! Configured as `transit+https://kms.example:8200/v1/transit/keys/<key>`; plain
//! `transit+http://` only towards a loopback address.
//!
//! The calls run on a thread of their own with reqwest's blocking client: the
//! key ring asks from the blocking pool, the command line from async code, and a
//! blocking client must never run (or be dropped) on an async worker.

use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use zeroize::Zeroizing;

use crate::crypto::{CryptoError, KeyProvider, SecretKey};

use super::{read_secret, KeyFacts, SecretSource};

/// Answers read at most (a KMS answer is a few hundred bytes).
const MAX_ANSWER: usize = 64 * 1024;
/// A wrapped key is the KMS's ciphertext text (`vault:v1:…`); longer is refused.
const MAX_WRAPPED: usize = 1024;

/// A parsed `transit+http(s)://` URL: the engine's mount and the key's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitUrl {
    /// `https://host:8200/v1/transit`
    pub mount: String,
    pub key: String,
}

impl TransitUrl {
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text
            .strip_prefix("transit+")
            .ok_or("a Transit URL starts with transit+https://")?;
        let url = url::Url::parse(rest).map_err(|e| format!("{e}"))?;
        if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
            return Err("put the token in token_file or token_env, not in the URL".into());
        }
        match url.scheme() {
            "https" => {}
            "http" => {
                let loopback = match url.host() {
                    Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                    Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                    Some(url::Host::Domain(name)) => name == "localhost",
                    None => false,
                };
                if !loopback {
                    return Err(
                        "transit+http:// is only for a loopback address: keys would \
                                travel in clear; use transit+https://"
                            .into(),
                    );
                }
            }
            other => return Err(format!("unsupported scheme transit+{other}")),
        }
        let path = url.path().trim_end_matches('/');
        let (mount, key) = path
            .rsplit_once("/keys/")
            .ok_or("the path ends in /keys/<key name>, e.g. /v1/transit/keys/kastell")?;
        if key.is_empty()
            || key.len() > 128
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(format!("{key:?} is not a Transit key name"));
        }
        let mut base = url.clone();
        base.set_path(mount);
        Ok(Self {
            mount: base.as_str().trim_end_matches('/').to_string(),
            key: key.to_string(),
        })
    }
}

/// How to reach the KMS.
pub struct TransitSettings {
    pub token: SecretSource,
    pub ca_file: Option<std::path::PathBuf>,
    pub client_identity_file: Option<std::path::PathBuf>,
    pub timeout: Duration,
}

type Reply = Result<serde_json::Value, CryptoError>;

struct Call {
    method: reqwest::Method,
    path: String,
    body: Option<serde_json::Value>,
    reply: mpsc::Sender<Reply>,
}

pub struct TransitMaster {
    name: String,
    url: TransitUrl,
    calls: Mutex<mpsc::Sender<Call>>,
    timeout: Duration,
}

impl TransitMaster {
    pub fn open(name: &str, url: &str, settings: TransitSettings) -> Result<Self, CryptoError> {
        let url = TransitUrl::parse(url)
            .map_err(|e| CryptoError::KeyStore(format!("keys.masters.{name}.url: {e}")))?;
        let token = match settings.token {
            SecretSource::None => None,
            source => Some(Zeroizing::new(read_secret(&source)?.to_string())),
        };
        let mut builder = reqwest::blocking::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &settings.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                CryptoError::KeyStore(format!("reading the KMS CA {}: {e}", path.display()))
            })?;
            let ca = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| CryptoError::KeyStore(format!("the KMS CA: {e}")))?;
            builder = builder.add_root_certificate(ca);
        }
        if let Some(path) = &settings.client_identity_file {
            let pem = Zeroizing::new(std::fs::read(path).map_err(|e| {
                CryptoError::KeyStore(format!(
                    "reading the KMS client identity {}: {e}",
                    path.display()
                ))
            })?);
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| CryptoError::KeyStore(format!("the KMS client identity: {e}")))?;
            builder = builder.identity(identity);
        }
        let (sender, receiver) = mpsc::channel::<Call>();
        let mount = url.mount.clone();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("kms-{name}"))
            .spawn(move || {
                let client = match builder.build() {
                    Ok(client) => {
                        let _ = ready_tx.send(Ok(()));
                        client
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                for call in receiver {
                    let answer = send(&client, &mount, token.as_deref().map(|t| t.as_str()), &call);
                    let _ = call.reply.send(answer);
                }
            })
            .map_err(|e| CryptoError::KeyStore(format!("starting the KMS client: {e}")))?;
        ready_rx
            .recv()
            .map_err(|_| CryptoError::KeyStore("the KMS client did not start".into()))?
            .map_err(|e| CryptoError::KeyStore(format!("the KMS client: {e}")))?;
        Ok(Self {
            name: name.to_string(),
            url,
            calls: Mutex::new(sender),
            timeout: settings.timeout,
        })
    }

    fn call(
        &self,
        method: reqwest::Method,
        path: String,
        body: Option<serde_json::Value>,
    ) -> Reply {
        let (reply, answer) = mpsc::channel();
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Call {
                method,
                path,
                body,
                reply,
            })
            .map_err(|_| CryptoError::Unavailable("the KMS client thread ended".into()))?;
        // The client's own timeout ends the request; this one covers a queue of
        // calls ahead of ours.
        answer.recv_timeout(self.timeout * 4).map_err(|_| {
            CryptoError::Unavailable(format!(
                "the KMS of master key {} did not answer",
                self.name
            ))
        })?
    }

    /// The key's properties as the KMS states them.
    pub fn facts(&self) -> Result<KeyFacts, CryptoError> {
        let answer = self.call(reqwest::Method::GET, format!("keys/{}", self.url.key), None)?;
        let data = &answer["data"];
        Ok(KeyFacts {
            holder: format!(
                "Transit key {:?} ({}) at {}",
                self.url.key,
                data["type"].as_str().unwrap_or("type not stated"),
                crate::redact::display_url(&self.url.mount)
            ),
            extractable: data["exportable"].as_bool(),
            sensitive: None,
            never_extractable: data["exportable"].as_bool().map(|e| !e),
        })
    }
}

/// One request to the KMS and what its answer means.
fn send(
    client: &reqwest::blocking::Client,
    mount: &str,
    token: Option<&str>,
    call: &Call,
) -> Reply {
    let mut request = client.request(call.method.clone(), format!("{mount}/{}", call.path));
    if let Some(token) = token {
        request = request.header("X-Vault-Token", token);
    }
    if let Some(body) = &call.body {
        request = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
    }
    let response = request
        .send()
        .map_err(|e| CryptoError::Unavailable(format!("the KMS cannot be reached: {e}")))?;
    let status = response.status().as_u16();
    let mut text = Vec::new();
    use std::io::Read;
    response
        .take(MAX_ANSWER as u64 + 1)
        .read_to_end(&mut text)
        .map_err(|e| CryptoError::Unavailable(format!("reading the KMS's answer: {e}")))?;
    if text.len() > MAX_ANSWER {
        return Err(CryptoError::KeyStore(
            "the KMS's answer is too large".into(),
        ));
    }
    let body: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
    let errors = body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .filter_map(|e| e.as_str())
                .map(|e| e.chars().take(200).collect::<String>())
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default();
    match status {
        200..=299 => Ok(body),
        // Vault answers 400 "encryption key not found" for a deleted key, 403
        // for a token without the right (a revoked policy).
        403 => Err(CryptoError::Revoked(format!(
            "the KMS denies access: {errors}"
        ))),
        404 => Err(CryptoError::Revoked(format!(
            "the KMS has no such key: {errors}"
        ))),
        400 if errors.contains("not found") => Err(CryptoError::Revoked(format!(
            "the KMS has no such key: {errors}"
        ))),
        400 if errors.contains("authentication failed")
            || errors.contains("invalid ciphertext") =>
        {
            Err(CryptoError::Integrity(
                "a wrapped key does not open with this key and context",
            ))
        }
        429 | 500..=599 => Err(CryptoError::Unavailable(format!(
            "the KMS answered {status}: {errors}"
        ))),
        _ => Err(CryptoError::KeyStore(format!(
            "the KMS answered {status}: {errors}"
        ))),
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl KeyProvider for TransitMaster {
    fn wrap_tenant_key(&self, key: &SecretKey, context: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let plaintext = Zeroizing::new(b64(key.expose()));
        let answer = self.call(
            reqwest::Method::POST,
            format!("encrypt/{}", self.url.key),
            Some(serde_json::json!({
                "plaintext": plaintext.as_str(),
                "associated_data": b64(context),
            })),
        )?;
        let ciphertext = answer["data"]["ciphertext"]
            .as_str()
            .filter(|c| c.starts_with("vault:") && c.len() <= MAX_WRAPPED)
            .ok_or_else(|| CryptoError::KeyStore("the KMS answered no ciphertext".into()))?;
        Ok(ciphertext.as_bytes().to_vec())
    }

    fn unwrap_tenant_key(&self, wrapped: &[u8], context: &[u8]) -> Result<SecretKey, CryptoError> {
        let ciphertext = std::str::from_utf8(wrapped)
            .ok()
            .filter(|c| c.starts_with("vault:") && c.len() <= MAX_WRAPPED)
            .ok_or(CryptoError::Format(
                "not a key wrapped by a Transit master key",
            ))?;
        let answer = self.call(
            reqwest::Method::POST,
            format!("decrypt/{}", self.url.key),
            Some(serde_json::json!({
                "ciphertext": ciphertext,
                "associated_data": b64(context),
            })),
        )?;
        let plaintext = answer["data"]["plaintext"]
            .as_str()
            .ok_or_else(|| CryptoError::KeyStore("the KMS answered no plaintext".into()))?;
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(plaintext)
                .map_err(|_| CryptoError::KeyStore("the KMS's plaintext is not base64".into()))?,
        );
        SecretKey::from_bytes(&bytes)
    }

    fn describe(&self) -> String {
        format!(
            "Transit key {:?} at {}",
            self.url.key,
            crate::redact::display_url(&self.url.mount)
        )
    }

    fn kind(&self) -> &'static str {
        "transit"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_mount_and_the_key_and_refuse_clear_text_off_loopback() {
        let url =
            TransitUrl::parse("transit+https://kms.example:8200/v1/transit/keys/kastell").unwrap();
        assert_eq!(url.mount, "https://kms.example:8200/v1/transit");
        assert_eq!(url.key, "kastell");
        let local =
            TransitUrl::parse("transit+http://127.0.0.1:8200/v1/hospital/keys/k-1").unwrap();
        assert_eq!(local.mount, "http://127.0.0.1:8200/v1/hospital");
        for bad in [
            "transit+http://kms.example:8200/v1/transit/keys/k",
            "transit+https://kms.example/v1/transit/k",
            "transit+https://kms.example/v1/transit/keys/",
            "transit+https://kms.example/v1/transit/keys/a%2Fb",
            "transit+https://user:pw@kms.example/v1/transit/keys/k",
            "transit+https://kms.example/v1/transit/keys/k?token=x",
            "transit+ftp://kms.example/v1/transit/keys/k",
            "https://kms.example/v1/transit/keys/k",
        ] {
            assert!(TransitUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
