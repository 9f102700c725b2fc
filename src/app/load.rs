//! Loading the configuration for a command: the layered [`Config`], then the
//! checks that need another module's rules (the grants of `auth.anonymous`).
//!
//! `config` holds plain data and checks its own shape; it does not call `auth`.

use std::path::Path;

use crate::config::{Config, ConfigError, Overrides};

/// The layered configuration (defaults → TOML → environment → flags), checked
/// whole: its own rules, and `auth.anonymous` against the grant vocabulary.
pub fn load_config(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
    let config = Config::load(file, overrides)?;
    check_anonymous(&config)?;
    Ok(config)
}

/// `auth.anonymous` must name permissions `auth` knows: `read`, `write`,
/// `delete`, `admin` or `*`.
pub fn check_anonymous(config: &Config) -> Result<(), ConfigError> {
    crate::auth::parse_actions(&config.auth.anonymous)
        .map(drop)
        .map_err(|e| ConfigError::Rule(format!("auth.anonymous: {e}")))
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::*;

    /// Moved from `config`'s tests with the check itself.
    #[test]
    fn unknown_anonymous_permissions_are_refused() {
        figment::Jail::expect_with(|jail| {
            let bad = "[auth]\nanonymous = [\"read\", \"everything\"]\n";
            jail.create_file("bad.toml", bad)?;
            assert!(
                load_config(Some(Path::new("bad.toml")), &Overrides::default()).is_err(),
                "{bad}"
            );
            jail.create_file("good.toml", "[auth]\nanonymous = [\"read\", \"*\"]\n")?;
            assert!(load_config(Some(Path::new("good.toml")), &Overrides::default()).is_ok());
            Ok(())
        });
    }
}
