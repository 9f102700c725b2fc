//! `[sovereignty]` and the `location` of each backend: the jurisdiction
//! declarations and the policy `crate::sovereignty` checks them against.

use serde::{Deserialize, Serialize};

/// A backend's jurisdiction declaration: where it is and under whose law. Kastell
/// cannot find this out by itself (an IP address says nothing about who may be
/// compelled to hand the data over), so the operator states it and
/// `crate::sovereignty` checks it against the policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Location {
    /// ISO 3166-1 alpha-2 code of the country the data sits in, e.g. `DE`.
    pub country: String,
    /// Who runs the backend, e.g. `Klinikum Nord IT` or `Amazon Web Services EMEA SARL`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operator: String,
    /// Whether the operator is subject to a law that lets a foreign state compel
    /// access to the data (e.g. the US CLOUD Act for a European subsidiary of a US
    /// company). Left out means "not stated", which a policy forbidding such
    /// operators does not accept for personal data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreign_access_law: Option<bool>,
    /// Free text shown in the report (contract, data centre, certification).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// The jurisdiction policy checked at start-up (see `crate::sovereignty`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SovereigntyConfig {
    /// Countries (ISO 3166-1 alpha-2) where personal metadata (the index), the
    /// keys, the audit trail and the host processing them may be.
    pub personal_data_countries: Vec<String>,
    /// Whether those may sit with an operator subject to foreign-access law.
    pub allow_foreign_access_law: bool,
    /// What blob stores may be.
    pub blob_stores: BlobStorePolicy,
    /// Where events may go (the NATS broker, webhook receivers).
    pub event_destinations: EventDestinationPolicy,
    /// Where de-identified exports may go (`[exports.<name>]`).
    pub export_destinations: ExportDestinationPolicy,
    /// Refuse to start while any backend (or the host) has no location declared.
    pub require_declarations: bool,
}

/// Where the blob store may be.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BlobStorePolicy {
    /// Anywhere: every blob is encrypted before it leaves the host and its keys
    /// stay where the personal-data rules allow, so the provider holds ciphertext only.
    CiphertextAnywhere,
    /// Under the same rules as personal metadata.
    SameAsPersonalData,
}

/// Where events may go: the broker and every webhook receiver get the UIDs of
/// each study, series and instance stored or deleted (pseudonymous personal
/// data), and patient names, IDs and birth dates where `include_patient` says.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum EventDestinationPolicy {
    /// Under the same rules as personal metadata.
    #[default]
    SameAsPersonalData,
    /// Anywhere while the events carry no patient data (`include_patient =
    /// false`); under the personal-data rules where they do.
    AnywhereWithoutPatientData,
}

/// Where exports may go. An export is always de-identified (PS3.15 Annex E
/// through a project); pseudonymous data is still personal data under the GDPR
/// while its key exists, so the default keeps it where personal data may be.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ExportDestinationPolicy {
    /// Under the same rules as personal metadata.
    #[default]
    SameAsPersonalData,
    /// De-identified data may go to any export store that declares its location.
    DeidentifiedAnywhere,
}

impl Default for SovereigntyConfig {
    fn default() -> Self {
        Self {
            personal_data_countries: crate::sovereignty::country::EU_EEA_COUNTRIES
                .iter()
                .map(|c| c.to_string())
                .collect(),
            allow_foreign_access_law: false,
            blob_stores: BlobStorePolicy::CiphertextAnywhere,
            event_destinations: EventDestinationPolicy::SameAsPersonalData,
            export_destinations: ExportDestinationPolicy::SameAsPersonalData,
            // The embedded default must start with no configuration at all; it warns
            // loudly instead that the host's location is undeclared.
            require_declarations: false,
        }
    }
}
