//! OAuth2 / OIDC bearer tokens: JWTs signed by the identity provider (RS256 or
//! ES256), checked against its published keys (a JWKS from a file or a URL).
//!
//! The key set is cached by `kid` and reloaded every `refresh_secs`, and when a
//! token names a key we do not know (the provider rotated its keys) — but at most
//! once per `min_refetch`, so that tokens with made-up key ids cannot make us
//! hammer the provider.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::grants::Grant;
use super::{AuthError, AuthSetupError, Principal, PrincipalKind};
use crate::config::JwtConfig;

/// A JWKS larger than this is refused (a real one is a few kilobytes).
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Where the provider's keys come from.
#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Url(String),
}

/// One usable verification key.
#[derive(Clone)]
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The keys as last loaded.
#[derive(Default)]
struct KeySet {
    keys: Vec<Key>,
    loaded_at: Option<Instant>,
}

/// Bookkeeping of fetches, behind an async mutex so that one fetch runs at a time.
#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
}

pub(crate) struct JwtVerifier {
    issuer: String,
    audience: String,
    roles_claim: String,
    leeway_secs: u64,
    refresh: Duration,
    min_refetch: Duration,
    source: Source,
    http: reqwest::Client,
    keys: RwLock<Arc<KeySet>>,
    fetch: tokio::sync::Mutex<FetchState>,
}

impl JwtVerifier {
    /// Builds the verifier; a JWKS file is read now, so that a bad file stops the
    /// server at start, while a URL is fetched on first use (the archive starts
    /// even if the identity provider is down for a moment).
    pub(crate) fn new(
        config: &JwtConfig,
        min_refetch: Duration,
        fetch_timeout: Duration,
    ) -> Result<Self, AuthSetupError> {
        let source = if !config.jwks_file.is_empty() {
            Source::File(PathBuf::from(&config.jwks_file))
        } else {
            let url = url::Url::parse(&config.jwks_url)
                .map_err(|e| AuthSetupError::Config(format!("auth.jwt.jwks_url: {e}")))?;
            let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
            if url.scheme() == "http" && !loopback {
                tracing::warn!(
                    jwks_url = %config.jwks_url,
                    "the JWKS is fetched over plain http: whoever sits on the path can sign tokens for this server; use https"
                );
            }
            Source::Url(config.jwks_url.clone())
        };
        let http = reqwest::Client::builder()
            .timeout(fetch_timeout)
            .build()
            .map_err(|e| AuthSetupError::Config(format!("building the JWKS HTTP client: {e}")))?;
        let verifier = Self {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            roles_claim: config.roles_claim.clone(),
            leeway_secs: config.leeway_secs,
            refresh: Duration::from_secs(config.refresh_secs),
            min_refetch,
            source,
            http,
            keys: RwLock::new(Arc::new(KeySet::default())),
            fetch: tokio::sync::Mutex::new(FetchState::default()),
        };
        if let Source::File(path) = &verifier.source {
            let bytes = std::fs::read(path).map_err(|e| {
                AuthSetupError::Jwks(format!("reading the JWKS file {}: {e}", path.display()))
            })?;
            let keys = parse_jwks(&bytes).map_err(|e| {
                AuthSetupError::Jwks(format!("the JWKS file {}: {e}", path.display()))
            })?;
            verifier.install(keys);
        }
        Ok(verifier)
    }

    /// Loads the keys now (for a URL source at start-up); errors are also logged.
    pub(crate) async fn warm_up(&self) -> Result<(), AuthError> {
        let mut state = self.fetch.lock().await;
        self.fetch_locked(&mut state).await
    }

    fn current(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn install(&self, keys: Vec<Key>) {
        let set = Arc::new(KeySet {
            keys,
            loaded_at: Some(Instant::now()),
        });
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = set;
    }

    /// Fetches and installs the keys; the caller holds the fetch lock.
    async fn fetch_locked(&self, state: &mut FetchState) -> Result<(), AuthError> {
        state.last_attempt = Some(Instant::now());
        let loaded = match &self.source {
            Source::File(path) => tokio::fs::read(path)
                .await
                .map_err(|e| format!("reading {}: {e}", path.display())),
            Source::Url(url) => self.download(url).await,
        }
        .and_then(|bytes| parse_jwks(&bytes));
        match loaded {
            Ok(keys) => {
                tracing::debug!(keys = keys.len(), "JWKS loaded");
                self.install(keys);
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%error, "cannot load the JWKS; keeping the keys loaded before");
                Err(AuthError::Unavailable(format!(
                    "the identity provider's keys cannot be loaded: {error}"
                )))
            }
        }
    }

    async fn download(&self, url: &str) -> Result<Vec<u8>, String> {
        let mut response = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("fetching {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("fetching {url}: HTTP {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("reading {url}: {e}"))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("{url} answered more than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn may_fetch(&self, state: &FetchState) -> bool {
        state
            .last_attempt
            .is_none_or(|at| at.elapsed() >= self.min_refetch)
    }

    /// Reloads keys that are older than `refresh`. The one request that takes the
    /// fetch lock waits for the reload (at most the fetch timeout); the others go
    /// on with the keys they have, unless there are none yet.
    async fn refresh_if_stale(&self) {
        let set = self.current();
        let stale = set.loaded_at.is_none_or(|at| at.elapsed() >= self.refresh);
        if !stale {
            return;
        }
        let mut state = if set.loaded_at.is_none() {
            self.fetch.lock().await
        } else {
            match self.fetch.try_lock() {
                Ok(state) => state,
                Err(_) => return,
            }
        };
        // Someone may have loaded them while we waited for the lock.
        let reloaded = self.current().loaded_at != set.loaded_at;
        if !reloaded && self.may_fetch(&state) {
            // A failure is logged there; the old keys stay in use.
            let _ = self.fetch_locked(&mut state).await;
        }
    }

    /// The key a token names, reloading the set once (rate-limited) when the
    /// `kid` is unknown.
    async fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<Key, AuthError> {
        let set = self.current();
        if let Some(key) = pick(&set, kid, alg)? {
            return Ok(key);
        }
        let mut state = self.fetch.lock().await;
        let reloaded = self.current().loaded_at != set.loaded_at;
        if !reloaded && self.may_fetch(&state) {
            if let Err(error) = self.fetch_locked(&mut state).await {
                // With no keys at all the provider is unreachable, not the token wrong.
                if self.current().keys.is_empty() {
                    return Err(error);
                }
            }
        }
        drop(state);
        let set = self.current();
        if set.loaded_at.is_none() {
            return Err(AuthError::Unavailable(
                "the identity provider's keys are not loaded yet".into(),
            ));
        }
        pick(&set, kid, alg)?.ok_or(AuthError::UnknownKey)
    }

    /// Checks a JWT and turns its roles and scopes into grants.
    pub(crate) async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Malformed("the bearer token is not a JWT"))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(AuthError::Malformed(
                "the token is not signed with RS256 or ES256",
            ));
        }
        self.refresh_if_stale().await;
        let key = self.key_for(header.kid.as_deref(), header.alg).await?;
        // Only the key's own algorithm is accepted: a token cannot pick a weaker
        // one (or HMAC with the public key as secret).
        let mut validation = Validation::new(key.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = self.leeway_secs;
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<Value>(token, &key.key, &validation)
            .map_err(|e| claim_error(e.kind()))?;
        let claims = data.claims;
        Ok(Principal {
            subject: subject(&claims),
            kind: PrincipalKind::Token,
            grants: grants_from_claims(&claims, &self.roles_claim),
        })
    }
}

/// The key for `kid` (or the only key of the algorithm when the token names none).
fn pick(set: &KeySet, kid: Option<&str>, alg: Algorithm) -> Result<Option<Key>, AuthError> {
    match kid {
        Some(kid) => match set.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
            Some(key) if key.alg != alg => Err(AuthError::Malformed(
                "the token's algorithm does not match its key",
            )),
            found => Ok(found.cloned()),
        },
        None => {
            let mut candidates = set.keys.iter().filter(|k| k.alg == alg);
            match (candidates.next(), candidates.next()) {
                (Some(only), None) => Ok(Some(only.clone())),
                _ => Ok(None),
            }
        }
    }
}

fn claim_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(_) => {
            AuthError::Malformed("the token lacks one of the claims exp, iss, aud")
        }
        ErrorKind::InvalidAlgorithm => {
            AuthError::Malformed("the token's algorithm does not match its key")
        }
        // A key the provider published but that cannot verify anything: to the
        // client this is a token that does not verify.
        ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidKeyFormat => {
            AuthError::BadSignature
        }
        // Fixed texts: decoder messages could echo claim values.
        _ => AuthError::Malformed("the token cannot be decoded"),
    }
}

/// Who the token speaks for: `sub`, else the client (`azp`, `client_id`) of a
/// client-credentials token.
fn subject(claims: &Value) -> String {
    ["sub", "azp", "client_id"]
        .iter()
        .find_map(|name| claims.get(*name).and_then(Value::as_str))
        .unwrap_or("(no subject)")
        .to_string()
}

/// The claim named `path`: first as a literal name (namespaced claims such as
/// `https://example.org/roles` contain dots), then as a dotted path.
fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    claims.get(path).or_else(|| {
        path.split('.')
            .try_fold(claims, |value, part| value.get(part))
    })
}

fn words(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.extend(s.split_whitespace().map(str::to_string)),
        Value::Array(items) => {
            for item in items {
                if let Value::String(s) = item {
                    out.push(s.clone());
                }
            }
        }
        _ => {}
    }
}

/// Grants from the roles claim and the `scope` claim. Roles and scopes that are
/// not `kastell:…` belong to other applications and are ignored; a malformed
/// `kastell:…` one is ignored too (logged), so that one typo in the identity
/// provider does not lock a user out of everything else.
pub(crate) fn grants_from_claims(claims: &Value, roles_claim: &str) -> Vec<Grant> {
    let mut values = Vec::new();
    if let Some(roles) = claim(claims, roles_claim) {
        words(roles, &mut values);
    }
    if roles_claim != "scope" {
        if let Some(scope) = claims.get("scope") {
            words(scope, &mut values);
        }
    }
    let mut grants: Vec<Grant> = Vec::new();
    for value in values {
        match value.parse::<Grant>() {
            Ok(grant) if !grants.contains(&grant) => grants.push(grant),
            Ok(_) | Err(super::GrantError::NotOurs) => {}
            Err(error) => tracing::debug!(%error, "ignoring a malformed kastell role or scope"),
        }
    }
    grants
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<Value>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

/// The signing keys we can use from a JWKS. Keys of other kinds (encryption
/// keys, EdDSA, …) are skipped rather than failing the whole set, since
/// providers publish keys for several purposes in one document.
fn parse_jwks(bytes: &[u8]) -> Result<Vec<Key>, String> {
    let set: RawSet =
        serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    for value in set.keys {
        let Ok(raw) = serde_json::from_value::<RawJwk>(value) else {
            continue;
        };
        if raw.usage.as_deref().is_some_and(|u| u != "sig") {
            continue;
        }
        let key = match (raw.kty.as_str(), raw.alg.as_deref()) {
            ("RSA", None | Some("RS256")) => match (&raw.n, &raw.e) {
                (Some(n), Some(e)) => DecodingKey::from_rsa_components(n, e)
                    .ok()
                    .map(|key| (Algorithm::RS256, key)),
                _ => None,
            },
            ("EC", None | Some("ES256")) if raw.crv.as_deref() == Some("P-256") => {
                match (&raw.x, &raw.y) {
                    (Some(x), Some(y)) if coordinate_ok(x) && coordinate_ok(y) => {
                        DecodingKey::from_ec_components(x, y)
                            .ok()
                            .map(|key| (Algorithm::ES256, key))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some((alg, key)) = key {
            keys.push(Key {
                kid: raw.kid,
                alg,
                key,
            });
        }
    }
    if keys.is_empty() {
        return Err("the JWKS holds no RS256 or P-256 (ES256) signing key".into());
    }
    Ok(keys)
}

/// A P-256 coordinate: 32 bytes, base64url without padding.
fn coordinate_ok(text: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .is_ok_and(|bytes| bytes.len() == 32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn roles_and_scopes_become_grants() {
        let claims = json!({
            "roles": ["kastell:default:read", "offline_access", "kastell:*:write"],
            "scope": "openid profile kastell:radiology:* kastell:default:read",
        });
        let grants: Vec<String> = grants_from_claims(&claims, "roles")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            grants,
            [
                "kastell:default:read",
                "kastell:*:write",
                "kastell:radiology:*"
            ]
        );
    }

    #[test]
    fn roles_claim_may_be_a_path_a_namespaced_name_or_a_string() {
        let keycloak = json!({"realm_access": {"roles": ["kastell:a:read"]}});
        assert_eq!(grants_from_claims(&keycloak, "realm_access.roles").len(), 1);
        let namespaced = json!({"https://kastell.example/roles": "kastell:a:read kastell:b:read"});
        assert_eq!(
            grants_from_claims(&namespaced, "https://kastell.example/roles").len(),
            2
        );
        let malformed = json!({"roles": ["kastell:a:execute", "kastell:b:read"], "scope": 7});
        assert_eq!(grants_from_claims(&malformed, "roles").len(), 1);
        assert!(grants_from_claims(&json!({}), "roles").is_empty());
    }

    #[test]
    fn jwks_parsing_keeps_usable_signing_keys_only() {
        let x = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
        let y = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
        let jwks = json!({"keys": [
            {"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": "ec", "use": "sig"},
            {"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": "enc", "use": "enc"},
            {"kty": "EC", "crv": "P-384", "x": x, "y": y, "kid": "p384"},
            {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": y, "kid": "short"},
            {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "ed"},
            {"kty": "RSA", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB", "kid": "rsa", "alg": "RS256"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "ps", "alg": "PS256"},
            "not an object"
        ]});
        let keys = parse_jwks(jwks.to_string().as_bytes()).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.clone().unwrap()).collect();
        assert_eq!(kids, ["ec", "rsa"]);
        assert_eq!(keys[0].alg, Algorithm::ES256);
        assert_eq!(keys[1].alg, Algorithm::RS256);
        assert!(parse_jwks(br#"{"keys": []}"#).is_err());
        assert!(parse_jwks(b"<html>").is_err());
    }
}
