//! The policy check: the rules, the violations with their fixes, and judging every
//! backend's declaration against `[sovereignty]`.

use std::fmt;

use serde::Serialize;

use super::{assess, country, Backend, BackendKind, Environment, Notice, Report, Source};
use crate::config::{Config, EventDestinationPolicy, SovereigntyConfig};

/// The policy rule a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// `sovereignty.personal_data_countries`
    PersonalDataCountries,
    /// `sovereignty.allow_foreign_access_law = false`
    ForeignAccessLaw,
    /// `sovereignty.require_declarations = true`
    RequireDeclarations,
    /// Countries are ISO 3166-1 alpha-2 codes.
    CountryCode,
    /// `sovereignty.export_destinations`
    ExportDestinations,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::PersonalDataCountries => "sovereignty.personal_data_countries",
            Rule::ForeignAccessLaw => "sovereignty.allow_foreign_access_law = false",
            Rule::RequireDeclarations => "sovereignty.require_declarations = true",
            Rule::CountryCode => "ISO 3166-1 alpha-2 country codes",
            Rule::ExportDestinations => "sovereignty.export_destinations",
        })
    }
}

/// A declaration the policy does not allow: which backend, what is wrong, which
/// rule, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{backend}: {problem} (rule: {rule}). Fix: {fix}")]
pub struct Violation {
    pub backend: String,
    pub rule: Rule,
    pub problem: String,
    pub fix: String,
}

/// The refusal to start: every violation at once, so one edit can fix them all.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Refusal(pub Vec<Violation>);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "the sovereignty policy is violated ({n} violation{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for violation in &self.0 {
            write!(f, "\n  - {violation}")?;
        }
        Ok(())
    }
}

/// Checks the configuration's declarations against its policy, from the
/// configuration alone (see [`assess`] for the endpoints the environment sets).
pub fn check(config: &Config) -> Result<Report, Vec<Violation>> {
    assess(config, &Environment::default()).into_result()
}

/// Holds every declaration against the policy: violations, and notices for what
/// is undeclared but allowed to be.
pub(super) fn judge(
    policy: &SovereigntyConfig,
    backends: &[Backend],
) -> (Vec<Violation>, Vec<Notice>) {
    let mut violations = Vec::new();
    let mut warnings = Vec::new();
    let mut allowed = Vec::new();
    for code in &policy.personal_data_countries {
        let normalized = country::normalize(code);
        if !country::is_assigned(&normalized) {
            violations.push(Violation {
                backend: "policy ([sovereignty])".into(),
                rule: Rule::CountryCode,
                problem: format!(
                    "personal_data_countries lists {code:?}, which is not an assigned ISO \
                     3166-1 alpha-2 code{}",
                    country::hint(&normalized)
                ),
                fix: "list two-letter ISO 3166-1 codes, e.g. [\"DE\", \"AT\"]".into(),
            });
        }
        allowed.push(normalized);
    }
    // Backends on the host are judged with the host: one message naming them all,
    // not one per inheritor.
    let inheritors: Vec<&str> = backends
        .iter()
        .filter(|b| b.inherits_from_server)
        .map(|b| b.name.as_str())
        .collect();

    for b in backends {
        let section = b.section.as_str();
        let also = if b.kind == BackendKind::Server && !inheritors.is_empty() {
            format!(
                "; this also covers {}, which are on the host and inherit its location",
                inheritors.join(", ")
            )
        } else {
            String::new()
        };
        let violation = |rule, problem: String, fix: String| Violation {
            backend: b.name.clone(),
            rule,
            problem,
            fix,
        };
        match b.jurisdiction.source {
            Source::InheritedFromServer => {}
            Source::Undeclared if b.inherits_from_server => {}
            Source::Undeclared if policy.require_declarations => violations.push(violation(
                Rule::RequireDeclarations,
                format!("no location is declared{also}"),
                format!(
                    "add location = {{ country = \"..\", operator = \"..\", foreign_access_law = \
                     false }} to {section}, or set sovereignty.require_declarations = false"
                ),
            )),
            Source::Undeclared => warnings.push(Notice {
                backend: b.name.clone(),
                message: format!(
                    "no location is declared, so nobody can tell in which country and under \
                     whose law it is{also}; add location = {{ country = \"..\", operator = \
                     \"..\", foreign_access_law = false }} to {section}"
                ),
            }),
            Source::Declared => {
                let country = b.jurisdiction.country.clone().unwrap_or_default();
                if !country::is_assigned(&country) {
                    violations.push(violation(
                        Rule::CountryCode,
                        format!(
                            "declares country {country:?}, which is not an assigned ISO 3166-1 \
                             alpha-2 code{}",
                            country::hint(&country)
                        ),
                        format!("use a two-letter ISO 3166-1 code in the location in {section}"),
                    ));
                    continue;
                }
                if !b.personal_data_rules {
                    continue;
                }
                let other_way = alternative(policy, b);
                if !allowed.contains(&country) {
                    violations.push(violation(
                        Rule::PersonalDataCountries,
                        format!(
                            "is declared in {country}, outside the countries allowed for {} ({}){also}",
                            b.protects(),
                            allowed.join(", ")
                        ),
                        format!(
                            "{} in an allowed country (or correct the location in {section} if \
                             it is wrong); to allow {country}, add it to \
                             sovereignty.personal_data_countries{other_way}",
                            b.kind.move_advice()
                        ),
                    ));
                }
                if policy.allow_foreign_access_law {
                    continue;
                }
                match b.jurisdiction.foreign_access_law {
                    Some(false) => {}
                    Some(true) => violations.push(violation(
                        Rule::ForeignAccessLaw,
                        format!(
                            "its operator{} is declared subject to foreign-access law, which the \
                             policy forbids for {}{also}",
                            b.jurisdiction
                                .operator
                                .as_ref()
                                .map(|o| format!(" ({o})"))
                                .unwrap_or_default(),
                            b.protects()
                        ),
                        format!(
                            "{} with an operator not subject to foreign-access law, or set \
                             sovereignty.allow_foreign_access_law = true if your risk assessment \
                             accepts the exposure{other_way}",
                            b.kind.move_advice()
                        ),
                    )),
                    None => violations.push(violation(
                        Rule::ForeignAccessLaw,
                        format!(
                            "does not state whether its operator is subject to foreign-access \
                             law, which the policy must know for {}{also}",
                            b.protects()
                        ),
                        format!(
                            "add foreign_access_law = true or false to the location in {section}"
                        ),
                    )),
                }
            }
        }
    }
    (violations, warnings)
}

/// The other way to comply than moving `b`, when the policy has one: a blob
/// store that may hold ciphertext anywhere, an event destination without
/// patient data.
fn alternative(policy: &SovereigntyConfig, b: &Backend) -> String {
    if b.kind == BackendKind::BlobStore {
        return ", or set sovereignty.blob_stores = \"ciphertext-anywhere\" (every blob is \
                encrypted before upload and its keys stay under the personal-data rules)"
            .into();
    }
    if b.kind == BackendKind::ExportStore {
        return ", or set sovereignty.export_destinations = \"deidentified-anywhere\" (exports \
                are de-identified, yet pseudonymous while the project's secret exists)"
            .into();
    }
    if !b.kind.is_event_destination() {
        return String::new();
    }
    let anywhere = "sovereignty.event_destinations = \"anywhere-without-patient-data\"";
    match (b.patient_data, policy.event_destinations) {
        (true, EventDestinationPolicy::SameAsPersonalData) => format!(
            ", or set include_patient = false in {} and {anywhere} if the events' UIDs may \
             leave (they are pseudonymous personal data)",
            b.section
        ),
        (true, EventDestinationPolicy::AnywhereWithoutPatientData) => {
            format!(", or set include_patient = false in {}", b.section)
        }
        (false, _) => format!(
            ", or set {anywhere} if the events' UIDs may leave (they are pseudonymous \
             personal data)"
        ),
    }
}
