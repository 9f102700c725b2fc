//! Who is calling and what they may do. Framework-free: the HTTP layer hands in
//! the `Authorization` header as text and gets back a [`Principal`] or a typed
//! [`AuthError`] plus the `WWW-Authenticate` challenge to answer with.
//!
//! Credentials, in `Authorization`:
//! * `Bearer <JWT>` — an OAuth2 / OIDC access token from the configured issuer
//!   (`[auth.jwt]`), its roles and scopes read as grants (see [`grants`]);
//! * `ApiKey kst_…` or `Bearer kst_…` — a static key made by `kastell apikeys add`;
//! * nothing — the anonymous grants of `auth.anonymous` on every tenant, or 401
//!   when that list is empty.
//!
//! Presented credentials that fail are refused even when anonymous access is on:
//! a client that meant to authenticate must learn that it did not.
//!
//! Tokens and keys are never logged, nor put in error texts.

pub mod api_key;
pub mod grants;
mod jwt;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

pub use api_key::{
    administrator, administrators, create_api_key, list_api_keys, revoke_api_key, ApiKeyError,
    NewApiKey,
};
pub use grants::{parse_actions, Action, Grant, GrantError, Permission, TenantScope, GRANT_PREFIX};

use crate::config::AuthConfig;
use crate::index::Index;

/// How a principal authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    Token,
    ApiKey,
    Anonymous,
}

/// An authenticated caller (or the anonymous one) and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Who: the token's `sub` (else its client id), `apikey:<id>:<name>`, or
    /// `anonymous`. Meant for the audit trail; not secret.
    pub subject: String,
    pub kind: PrincipalKind,
    pub grants: Vec<Grant>,
}

impl Principal {
    /// Whether this caller may do `action` in `tenant`.
    pub fn may(&self, tenant: &str, action: Action) -> bool {
        self.grants.iter().any(|grant| grant.allows(tenant, action))
    }

    fn anonymous(grants: Vec<Grant>) -> Self {
        Self {
            subject: "anonymous".into(),
            kind: PrincipalKind::Anonymous,
            grants,
        }
    }
}

/// Why a request is not authenticated. Texts are safe to show the client: they
/// never contain the credential or its claims.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication is required")]
    MissingCredentials,
    #[error("unsupported authorization scheme: use Bearer or ApiKey")]
    UnsupportedScheme,
    #[error("{0}")]
    Malformed(&'static str),
    #[error("bearer tokens (JWT) are not enabled on this server")]
    TokensDisabled,
    #[error("the token signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued by another issuer")]
    WrongIssuer,
    #[error("the token was issued for another audience")]
    WrongAudience,
    #[error("the token is signed with a key the identity provider does not publish")]
    UnknownKey,
    #[error("unknown API key")]
    UnknownApiKey,
    #[error("the API key has been revoked")]
    RevokedApiKey,
    /// Not the client's fault: the identity provider's keys or the index cannot be
    /// reached. Answer 503, not 401. The text is for the log.
    #[error("authentication is unavailable: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// True when the server, not the credentials, is at fault (answer 503).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, AuthError::Unavailable(_))
    }
}

/// Errors of building an [`Authenticator`] from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("invalid auth configuration: {0}")]
    Config(String),
    #[error("cannot load the JWKS: {0}")]
    Jwks(String),
}

/// Timings that tests shorten; [`Tuning::from_config`] gives the production ones.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// How long an API key lookup is remembered (`auth.api_key_cache_secs`).
    pub api_key_cache: Duration,
    /// Least time between two JWKS fetches triggered by unknown key ids.
    pub jwks_min_refetch: Duration,
    /// Timeout of one JWKS download.
    pub jwks_fetch_timeout: Duration,
}

impl Tuning {
    pub fn from_config(config: &AuthConfig) -> Self {
        Self {
            api_key_cache: Duration::from_secs(config.api_key_cache_secs),
            jwks_min_refetch: Duration::from_secs(10),
            jwks_fetch_timeout: Duration::from_secs(10),
        }
    }
}

/// The realm named in every challenge.
const REALM: &str = "kastell";

/// Turns `Authorization` headers into principals. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    anonymous: Vec<Grant>,
    jwt: Option<jwt::JwtVerifier>,
    api_keys: api_key::ApiKeyVerifier,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("anonymous", &self.inner.anonymous)
            .field("jwt", &self.inner.jwt.is_some())
            .finish()
    }
}

impl Authenticator {
    /// Builds the authenticator; reads a configured JWKS file now.
    pub fn new(config: &AuthConfig, index: Index) -> Result<Self, AuthSetupError> {
        Self::with_tuning(config, index, Tuning::from_config(config))
    }

    pub fn with_tuning(
        config: &AuthConfig,
        index: Index,
        tuning: Tuning,
    ) -> Result<Self, AuthSetupError> {
        let anonymous = parse_actions(&config.anonymous)
            .map_err(|e| AuthSetupError::Config(format!("auth.anonymous: {e}")))?
            .into_iter()
            .map(|permission| Grant::new(TenantScope::Every, permission))
            .collect();
        let jwt = if config.jwt.enabled() {
            if config.jwt.audience.is_empty() {
                return Err(AuthSetupError::Config(
                    "auth.jwt.audience must be set when JWT is enabled".into(),
                ));
            }
            Some(jwt::JwtVerifier::new(
                &config.jwt,
                tuning.jwks_min_refetch,
                tuning.jwks_fetch_timeout,
            )?)
        } else {
            None
        };
        Ok(Self {
            inner: Arc::new(Inner {
                anonymous,
                jwt,
                api_keys: api_key::ApiKeyVerifier::new(index, tuning.api_key_cache),
            }),
        })
    }

    /// Loads the identity provider's keys now when they come from a URL (at
    /// start-up, so that a wrong URL shows in the log at once). The server can
    /// start without them: they are fetched again on the first token.
    pub async fn warm_up(&self) -> Result<(), AuthError> {
        match &self.inner.jwt {
            Some(jwt) => jwt.warm_up().await,
            None => Ok(()),
        }
    }

    /// Whether requests without credentials get any permission.
    pub fn anonymous_enabled(&self) -> bool {
        !self.inner.anonymous.is_empty()
    }

    /// Authenticates the value of the `Authorization` header (`None` when absent).
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let Some(value) = authorization.map(str::trim).filter(|v| !v.is_empty()) else {
            return if self.inner.anonymous.is_empty() {
                Err(AuthError::MissingCredentials)
            } else {
                Ok(Principal::anonymous(self.inner.anonymous.clone()))
            };
        };
        let (scheme, credential) = value
            .split_once(|c: char| c.is_ascii_whitespace())
            .map(|(s, c)| (s, c.trim()))
            .unwrap_or((value, ""));
        if credential.is_empty() {
            return Err(AuthError::Malformed(
                "the Authorization header has no credentials",
            ));
        }
        // Schemes are case-insensitive (RFC 9110 §11.1).
        if scheme.eq_ignore_ascii_case("apikey") {
            self.inner.api_keys.verify(credential).await
        } else if scheme.eq_ignore_ascii_case("bearer") {
            if credential.starts_with(api_key::API_KEY_PREFIX) {
                self.inner.api_keys.verify(credential).await
            } else if let Some(jwt) = &self.inner.jwt {
                jwt.verify(credential).await
            } else {
                Err(AuthError::TokensDisabled)
            }
        } else {
            Err(AuthError::UnsupportedScheme)
        }
    }

    /// The `WWW-Authenticate` value of a 401 for `error` (RFC 6750 §3): no error
    /// attribute when credentials were missing, `invalid_request` for a header we
    /// cannot read, `invalid_token` for credentials that did not check out.
    pub fn challenge(&self, error: &AuthError) -> String {
        let code = match error {
            AuthError::MissingCredentials | AuthError::Unavailable(_) => None,
            AuthError::UnsupportedScheme => Some("invalid_request"),
            _ => Some("invalid_token"),
        };
        match code {
            None => format!("Bearer realm=\"{REALM}\""),
            Some(code) => format!(
                "Bearer realm=\"{REALM}\", error=\"{code}\", error_description=\"{}\"",
                quoted_text(&error.to_string())
            ),
        }
    }
}

/// Text allowed inside `error_description` (RFC 6750 §3: %x20-21 / %x23-5B /
/// %x5D-7E, so no quote and no backslash); anything else becomes a space.
fn quoted_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => ' ',
        })
        .collect()
}

/// The warning to log at start while anonymous access is on, if it is.
pub fn anonymous_warning(config: &AuthConfig) -> Option<String> {
    if config.anonymous.is_empty() {
        return None;
    }
    Some(format!(
        "!!! ANONYMOUS ACCESS IS ON: requests without credentials may {} on every tenant. \
         Anyone who reaches this port can do so. Set auth.anonymous = [] and configure \
         [auth.jwt] or API keys for real use. !!!",
        config.anonymous.join(", ")
    ))
}
