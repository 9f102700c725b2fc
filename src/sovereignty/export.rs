//! Where a de-identified export may go: `[exports.<name>]` judged against
//! `sovereignty.export_destinations` before anything is written.

use super::{country, Rule, Violation};
use crate::config::{ExportDestinationPolicy, Location, SovereigntyConfig};

/// Whether export store `name`, at `location`, may receive de-identified data.
pub fn export_allowed(
    policy: &SovereigntyConfig,
    name: &str,
    location: Option<&Location>,
) -> Result<(), Violation> {
    let backend = format!("export store {name} ([exports.{name}])");
    let Some(location) = location else {
        return Err(Violation {
            backend,
            rule: Rule::ExportDestinations,
            problem: "no location is declared: nobody can tell in which country and under whose \
                      law the exported data would be"
                .into(),
            fix: format!(
                "add location = {{ country = \"..\", operator = \"..\", foreign_access_law = \
                 false }} to [exports.{name}]"
            ),
        });
    };
    let code = country::normalize(&location.country);
    if !country::is_assigned(&code) {
        return Err(Violation {
            backend,
            rule: Rule::CountryCode,
            problem: format!(
                "its country {:?} is not an ISO 3166-1 alpha-2 code",
                location.country
            ),
            fix: "declare a two-letter ISO 3166-1 code, e.g. \"DE\"".into(),
        });
    }
    if policy.export_destinations == ExportDestinationPolicy::DeidentifiedAnywhere {
        return Ok(());
    }
    let allowed = policy
        .personal_data_countries
        .iter()
        .any(|c| country::normalize(c) == code);
    if !allowed {
        return Err(Violation {
            backend,
            rule: Rule::ExportDestinations,
            problem: format!(
                "it is in {code}, outside sovereignty.personal_data_countries: de-identified data \
                 is still personal data while a project's secret exists"
            ),
            fix: "export to a store in an allowed country, or set \
                  sovereignty.export_destinations = \"deidentified-anywhere\""
                .into(),
        });
    }
    if location.foreign_access_law != Some(false) && !policy.allow_foreign_access_law {
        return Err(Violation {
            backend,
            rule: Rule::ForeignAccessLaw,
            problem: "its operator is (or is not stated not to be) subject to a foreign-access \
                      law"
            .into(),
            fix: "declare foreign_access_law = false for an operator that is not, or set \
                  sovereignty.export_destinations = \"deidentified-anywhere\""
                .into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(country: &str, foreign: Option<bool>) -> Location {
        Location {
            country: country.into(),
            operator: "x".into(),
            foreign_access_law: foreign,
            note: String::new(),
        }
    }

    #[test]
    fn exports_follow_the_personal_data_rules_unless_the_policy_frees_them() {
        let mut policy = SovereigntyConfig::default();
        assert!(export_allowed(&policy, "a", Some(&at("DE", Some(false)))).is_ok());
        let refused = export_allowed(&policy, "a", Some(&at("US", Some(false)))).unwrap_err();
        assert_eq!(refused.rule, Rule::ExportDestinations);
        let refused = export_allowed(&policy, "a", Some(&at("DE", None))).unwrap_err();
        assert_eq!(refused.rule, Rule::ForeignAccessLaw);
        assert!(export_allowed(&policy, "a", None).is_err(), "undeclared");
        assert!(export_allowed(&policy, "a", Some(&at("XX", Some(false)))).is_err());
        policy.export_destinations = ExportDestinationPolicy::DeidentifiedAnywhere;
        assert!(export_allowed(&policy, "a", Some(&at("US", Some(true)))).is_ok());
        assert!(
            export_allowed(&policy, "a", None).is_err(),
            "still undeclared"
        );
    }
}
