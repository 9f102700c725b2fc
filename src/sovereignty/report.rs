//! The report: the policy, the backends and the control chain, as data (serialized
//! for `--json`) and as the text an operator reads.

use std::fmt;

use serde::Serialize;

use super::{Backend, BackendKind, Custody, Notice, Violation};
use crate::config::{BlobStorePolicy, EventDestinationPolicy, SovereigntyConfig};

/// The control chain: the policy, the backends with their jurisdictions, and for
/// each kind of data where it sits, encrypted or not, and who holds the keys.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub policy: SovereigntyConfig,
    pub backends: Vec<Backend>,
    pub chain: Vec<Custody>,
    pub warnings: Vec<Notice>,
    pub violations: Vec<Violation>,
    /// For each tenant, who holds the key-encryption key of its keys: filled by
    /// the command line from the index and the key holders themselves (the rest
    /// of the report reads the configuration alone).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tenant_keys: Vec<TenantKeyCustody>,
}

/// Who holds the master key wrapping one tenant's keys, where, under which
/// law, and whether it can leave its holder.
#[derive(Debug, Clone, Serialize)]
pub struct TenantKeyCustody {
    pub tenant: String,
    /// The master key's name (`local` or a `keys.masters` name).
    pub master: String,
    /// `file`, `pkcs11` or `transit`.
    pub provider: String,
    /// What holds it, as the holder describes itself (token, model and serial;
    /// KMS key) or why it could not be asked.
    pub holder: String,
    /// `operator` or `tenant` (bring your own key).
    pub held_by: String,
    pub jurisdiction: super::Jurisdiction,
    /// `yes`, `no` or `not stated`, as the holder reports it.
    pub extractable: String,
    /// Keys of the tenant wrapped by each master now (more than one while a
    /// rotation of the master key is under way).
    pub wrapped_keys: Vec<(String, i64)>,
}

impl Report {
    /// The report when the policy holds, else its violations.
    pub fn into_result(self) -> Result<Report, Vec<Violation>> {
        if self.violations.is_empty() {
            Ok(self)
        } else {
            Err(self.violations)
        }
    }

    // The report holds one backend of each kind (built by `assess`).
    #[allow(clippy::expect_used)]
    pub fn backend(&self, kind: BackendKind) -> &Backend {
        self.backends
            .iter()
            .find(|b| b.kind == kind)
            .expect("every kind of backend is in the report")
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policy = &self.policy;
        writeln!(
            f,
            "Kastell sovereignty report: where each kind of data sits, under whose law\n"
        )?;
        writeln!(f, "Policy")?;
        writeln!(
            f,
            "  personal-data countries (index, keys, audit trail, host): {}",
            policy.personal_data_countries.join(", ")
        )?;
        writeln!(
            f,
            "  operators subject to foreign-access law: {}",
            if policy.allow_foreign_access_law {
                "allowed"
            } else {
                "not allowed"
            }
        )?;
        writeln!(
            f,
            "  blob stores: {}",
            match policy.blob_stores {
                BlobStorePolicy::CiphertextAnywhere => "ciphertext-anywhere",
                BlobStorePolicy::SameAsPersonalData => "same-as-personal-data",
            }
        )?;
        writeln!(
            f,
            "  event destinations: {}",
            match policy.event_destinations {
                EventDestinationPolicy::SameAsPersonalData => "same-as-personal-data",
                EventDestinationPolicy::AnywhereWithoutPatientData =>
                    "anywhere-without-patient-data",
            }
        )?;
        writeln!(
            f,
            "  declarations required: {}",
            if policy.require_declarations {
                "yes"
            } else {
                "no"
            }
        )?;

        writeln!(f, "\nBackends, and the places events go")?;
        for b in &self.backends {
            writeln!(f, "  {}", b.name)?;
            writeln!(f, "    where:        {}", b.placement)?;
            writeln!(f, "    jurisdiction: {}", b.jurisdiction)?;
            if let Some(receives) = &b.receives {
                writeln!(f, "    receives:     {receives}")?;
            }
            if let Some(note) = &b.jurisdiction.note {
                writeln!(f, "    note:         {note}")?;
            }
        }

        writeln!(f, "\nControl chain")?;
        for link in &self.chain {
            writeln!(f, "  {}", link.data)?;
            writeln!(f, "    rule:       {}", link.rule)?;
            for holding in &link.held {
                writeln!(
                    f,
                    "    held in:    {}: {} [{}]\n                {}",
                    holding.name,
                    holding.what,
                    if holding.encrypted {
                        "encrypted"
                    } else {
                        "not encrypted"
                    },
                    holding.jurisdiction
                )?;
            }
            writeln!(f, "    encryption: {}", link.encryption)?;
            writeln!(f, "    keys:       {}", link.keys)?;
        }

        if !self.tenant_keys.is_empty() {
            writeln!(
                f,
                "\nTenant keys: who holds each tenant's key-encryption key"
            )?;
            for t in &self.tenant_keys {
                writeln!(f, "  tenant {}", t.tenant)?;
                writeln!(f, "    master key:   {} ({})", t.master, t.provider)?;
                writeln!(f, "    holder:       {}", t.holder)?;
                writeln!(f, "    held by:      {}", t.held_by)?;
                writeln!(f, "    jurisdiction: {}", t.jurisdiction)?;
                writeln!(f, "    extractable:  {}", t.extractable)?;
                let wrapped: Vec<String> = t
                    .wrapped_keys
                    .iter()
                    .map(|(master, n)| format!("{n} by {master}"))
                    .collect();
                writeln!(f, "    keys wrapped: {}", wrapped.join(", "))?;
            }
        }

        if !self.warnings.is_empty() {
            writeln!(f, "\nWarnings")?;
            for warning in &self.warnings {
                writeln!(f, "  - {}: {}", warning.backend, warning.message)?;
            }
        }
        writeln!(f, "\nViolations")?;
        if self.violations.is_empty() {
            writeln!(f, "  none: the configuration keeps to the policy")?;
        }
        for violation in &self.violations {
            writeln!(f, "  - {violation}")?;
        }
        Ok(())
    }
}
