//! Safe by default when exposed. The embedded defaults (anonymous write and
//! delete, a development master key stored next to the data) are convenient on
//! a loopback address and dangerous anywhere else: listening on any other
//! address with them is refused unless `server.allow_insecure_exposure` says
//! the operator means it.
//!
//! Here rather than in `config`: it reads `auth.anonymous` with the grant rules
//! of `auth`, and the configuration holds plain data.

use crate::auth::{Action, Permission};
use crate::config::{Config, ConfigError, MasterKeySource};

/// What makes this configuration unsafe to serve on its listening address:
/// empty on a loopback address, or when nothing is.
pub fn exposure_risks(config: &Config) -> Vec<String> {
    if config.server.listen.ip().to_canonical().is_loopback() {
        return Vec::new();
    }
    let mut risks = Vec::new();
    let anonymous = crate::auth::parse_actions(&config.auth.anonymous).unwrap_or_default();
    let unsafe_actions: Vec<String> = [Action::Write, Action::Delete, Action::Admin]
        .into_iter()
        .filter(|action| anonymous.iter().any(|p| p.allows(*action)))
        .map(|action| action.to_string())
        .collect();
    if !unsafe_actions.is_empty() {
        let all = anonymous.contains(&Permission::Every);
        risks.push(format!(
            "requests without credentials may {} (auth.anonymous = {:?}{}): set \
             auth.anonymous = [] (or [\"read\"]) and give clients API keys \
             (`kastell apikeys add`) or tokens ([auth.jwt])",
            unsafe_actions.join(", "),
            config.auth.anonymous,
            if all { ", which allows everything" } else { "" }
        ));
    }
    if let MasterKeySource::Development(path) = config.master_key_source() {
        risks.push(format!(
            "the master key would be the generated development key {}, stored next \
             to the data it protects: set keys.master_key_file \
             (KASTELL__KEYS__MASTER_KEY_FILE) to a file of 32 random bytes \
             (`head -c 32 /dev/urandom > master.key; chmod 600 master.key`)",
            path.display()
        ));
    }
    risks
}

/// Refuses to serve on a non-loopback address with [`exposure_risks`],
/// unless `server.allow_insecure_exposure` is set (then each risk is only
/// returned for a loud warning).
pub fn check_exposure(config: &Config) -> Result<Vec<String>, ConfigError> {
    let risks = exposure_risks(config);
    if risks.is_empty() || config.server.allow_insecure_exposure {
        return Ok(risks);
    }
    Err(ConfigError::Rule(format!(
        "kastell would listen on {} (not a loopback address, so reachable from other \
         hosts) with insecure defaults:\n  - {}\nConfigure the above, or listen on \
         127.0.0.1 behind a reverse proxy. To serve like this anyway (a closed test \
         network only), set server.allow_insecure_exposure = true \
         (KASTELL__SERVER__ALLOW_INSECURE_EXPOSURE=true).",
        config.server.listen,
        risks.join("\n  - ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &str, anonymous: &[&str], key_file: bool) -> Config {
        let mut config = Config::default();
        config.server.listen = listen.parse().unwrap();
        config.auth.anonymous = anonymous.iter().map(|s| s.to_string()).collect();
        if key_file {
            config.keys.master_key_file = "/etc/kastell/master.key".into();
        }
        config
    }

    #[test]
    fn loopback_keeps_the_embedded_defaults() {
        for listen in ["127.0.0.1:8080", "127.0.0.2:8080", "[::1]:8080"] {
            let mut config = Config::default();
            config.server.listen = listen.parse().unwrap();
            assert_eq!(check_exposure(&config).unwrap(), Vec::<String>::new());
        }
    }

    #[test]
    fn exposed_with_anonymous_writes_or_the_development_key_is_refused() {
        let defaults = config("0.0.0.0:8080", &["read", "write", "delete"], false);
        let error = check_exposure(&defaults).unwrap_err().to_string();
        for needle in [
            "0.0.0.0:8080",
            "may write, delete",
            "auth.anonymous = []",
            "development key",
            "keys.master_key_file",
            "server.allow_insecure_exposure = true",
            "KASTELL__SERVER__ALLOW_INSECURE_EXPOSURE=true",
        ] {
            assert!(error.contains(needle), "{needle:?} in {error}");
        }
        // Each risk alone is enough.
        let anonymous_delete = config("[::]:8080", &["read", "delete"], true);
        let error = check_exposure(&anonymous_delete).unwrap_err().to_string();
        assert!(error.contains("may delete") && !error.contains("development key"));
        let everything = config("192.0.2.10:8080", &["*"], true);
        assert!(check_exposure(&everything).is_err());
        let development_key = config("0.0.0.0:8080", &[], false);
        let error = check_exposure(&development_key).unwrap_err().to_string();
        assert!(error.contains("development key") && !error.contains("auth.anonymous"));
    }

    #[test]
    fn exposed_with_credentials_and_a_real_key_is_fine_and_the_option_overrides() {
        assert!(check_exposure(&config("0.0.0.0:8080", &[], true))
            .unwrap()
            .is_empty());
        assert!(check_exposure(&config("0.0.0.0:8080", &["read"], true))
            .unwrap()
            .is_empty());
        let mut allowed = config("0.0.0.0:8080", &["read", "write", "delete"], false);
        allowed.server.allow_insecure_exposure = true;
        assert_eq!(check_exposure(&allowed).unwrap().len(), 2, "warned about");
    }
}
