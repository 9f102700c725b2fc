//! `[auth]`: anonymous permissions, the API key cache and OAuth2 / OIDC bearer
//! tokens (`[auth.jwt]`). Plain data: `auth` gives the grants their meaning.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Who may do what (see `crate::auth` for the grant syntax).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Permissions of requests that carry no credentials, on every tenant:
    /// `read`, `write`, `delete`, `admin` or `*`. Empty means every request must
    /// authenticate. The default keeps the embedded setup usable without an
    /// identity provider, and the server warns loudly at start while it is on.
    pub anonymous: Vec<String>,
    /// How long a looked-up API key is remembered, in seconds: a revoked key
    /// keeps working on a running server for at most this long.
    pub api_key_cache_secs: u64,
    pub jwt: JwtConfig,
}

/// OAuth2 / OIDC bearer tokens (JWT). Enabled when `issuer` and one of
/// `jwks_file` / `jwks_url` are set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Expected `iss` claim, e.g. `https://login.example.org/realms/hospital`.
    pub issuer: String,
    /// Expected `aud` claim (required when JWT is enabled).
    pub audience: String,
    /// JWKS (the identity provider's public keys) from a file...
    pub jwks_file: String,
    /// ...or from an http(s) URL.
    pub jwks_url: String,
    /// Reload the JWKS this often, in seconds (also on an unknown `kid`).
    pub refresh_secs: u64,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Claim holding the roles, an array or a space-separated string; a dotted
    /// path reaches into objects (`realm_access.roles` for Keycloak). The
    /// `scope` claim is always read as well.
    pub roles_claim: String,
}

impl JwtConfig {
    /// JWT is on when there is an issuer to expect and somewhere to get keys from.
    pub fn enabled(&self) -> bool {
        let has_keys = !self.jwks_file.is_empty() || !self.jwks_url.is_empty();
        !self.issuer.is_empty() && has_keys
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            anonymous: vec!["read".into(), "write".into(), "delete".into()],
            api_key_cache_secs: 30,
            jwt: JwtConfig::default(),
        }
    }
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: String::new(),
            jwks_file: String::new(),
            jwks_url: String::new(),
            refresh_secs: 300,
            leeway_secs: 30,
            roles_claim: "roles".into(),
        }
    }
}

impl AuthConfig {
    /// The shape of `[auth.jwt]`. The permissions in `anonymous` are checked
    /// where their meaning is known (`crate::app::check_anonymous`, with `auth`'s
    /// grant rules), not here.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let jwt = &self.jwt;
        if !jwt.jwks_file.is_empty() && !jwt.jwks_url.is_empty() {
            return Err(ConfigError::Rule(
                "auth.jwt: set jwks_file or jwks_url, not both".into(),
            ));
        }
        let http_url = jwt.jwks_url.starts_with("https://") || jwt.jwks_url.starts_with("http://");
        if !jwt.jwks_url.is_empty() && !http_url {
            return Err(ConfigError::Rule(format!(
                "auth.jwt.jwks_url must be an http(s) URL, got {:?}",
                jwt.jwks_url
            )));
        }
        let has_keys = !jwt.jwks_file.is_empty() || !jwt.jwks_url.is_empty();
        if has_keys == jwt.issuer.is_empty() {
            return Err(ConfigError::Rule(
                "auth.jwt: issuer and a JWKS source (jwks_file or jwks_url) go together".into(),
            ));
        }
        // Without an audience, a token the same identity provider issued for any
        // other application would be accepted here.
        if jwt.enabled() && jwt.audience.is_empty() {
            return Err(ConfigError::Rule(
                "auth.jwt.audience must be set when JWT is enabled".into(),
            ));
        }
        if jwt.refresh_secs == 0 || jwt.roles_claim.is_empty() {
            return Err(ConfigError::Rule(
                "auth.jwt.refresh_secs must be positive and roles_claim not empty".into(),
            ));
        }
        Ok(())
    }
}
