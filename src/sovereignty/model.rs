//! The vocabulary of the check: the environment snapshot, the places that hold
//! data, their declared jurisdictions, and the links of the control chain.

use std::fmt;

use serde::Serialize;

use super::country;
use crate::config::Location;

/// What the check needs from the process environment: the settings with which the
/// backends' libraries pick their endpoints. The application collects them (this
/// module does no I/O); the default means "the configuration alone".
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// object_store settings from the `AWS_*`, `AZURE_*` and `GOOGLE_*` variables,
    /// names lower-cased, as the blob store passes them (`aws_endpoint_url`, ...).
    pub blob_settings: Vec<(String, String)>,
    /// `AZURITE_BLOB_STORAGE_URL`: where object_store's Azure emulator mode connects.
    pub azurite_url: Option<String>,
    /// `PGHOST`: libpq's host when the index URL names none.
    pub pg_host: Option<String>,
}

/// The places that hold data, each with its own declaration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// The host running Kastell: decrypts, holds the master key in memory, logs.
    Server,
    /// The index database: personal metadata, wrapped tenant keys, the audit trail.
    Index,
    /// The blob store: encrypted DICOM objects and derived objects.
    BlobStore,
    /// Where the master key is held.
    Keys,
    /// The NATS broker events are published to (`[events.nats]`).
    EventBroker,
    /// A webhook receiver events are POSTed to (`[[events.webhooks]]`).
    Webhook,
    /// A store de-identified exports are written to (`[exports.<name>]`).
    ExportStore,
}

impl BackendKind {
    /// The configuration section holding its `location`.
    pub(super) fn section(self) -> &'static str {
        match self {
            BackendKind::Server => "[server]",
            BackendKind::Index => "[index]",
            BackendKind::BlobStore => "[storage]",
            BackendKind::Keys => "[keys]",
            BackendKind::EventBroker => "[events.nats]",
            BackendKind::Webhook => "[[events.webhooks]]",
            BackendKind::ExportStore => "[exports]",
        }
    }

    /// Whether events go there (rather than data being kept).
    pub fn is_event_destination(self) -> bool {
        matches!(self, BackendKind::EventBroker | BackendKind::Webhook)
    }

    /// What the personal-data rules protect there, for messages.
    pub(super) fn protects(self) -> &'static str {
        match self {
            BackendKind::Server => "the host that decrypts images and uses the master key",
            BackendKind::Index => "personal metadata and the audit trail",
            BackendKind::BlobStore => "blobs (sovereignty.blob_stores = \"same-as-personal-data\")",
            BackendKind::Keys => "the master key",
            BackendKind::EventBroker | BackendKind::Webhook => {
                "events, which carry study, series and instance UIDs (pseudonymous personal data)"
            }
            BackendKind::ExportStore => {
                "de-identified exports (pseudonymous personal data while the project's secret \
                 exists)"
            }
        }
    }

    /// How to comply by moving, for fixes.
    pub(super) fn move_advice(self) -> &'static str {
        match self {
            BackendKind::Server => "run Kastell on a host",
            BackendKind::Index => "move the index to a database",
            BackendKind::BlobStore => "use a blob store",
            BackendKind::Keys => "hold the master key",
            BackendKind::EventBroker => "run the broker",
            BackendKind::Webhook => "point the webhook at a receiver",
            BackendKind::ExportStore => "export to a store",
        }
    }
}

/// The kinds of data the control chain follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataKind {
    Images,
    PersonalMetadata,
    Keys,
    AuditTrail,
    Logs,
    /// What the broker and the webhook receivers get.
    Events,
}

impl fmt::Display for DataKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DataKind::Images => "images",
            DataKind::PersonalMetadata => "personal metadata",
            DataKind::Keys => "keys",
            DataKind::AuditTrail => "audit trail",
            DataKind::Logs => "logs",
            DataKind::Events => "events",
        })
    }
}

/// Where a backend's jurisdiction comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Its own `location`.
    Declared,
    /// Local to the host, which declared its location.
    InheritedFromServer,
    /// Nobody said.
    Undeclared,
}

/// A backend's effective jurisdiction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Jurisdiction {
    pub source: Source,
    /// ISO 3166-1 alpha-2, upper case.
    pub country: Option<String>,
    pub operator: Option<String>,
    /// `None`: not stated.
    pub foreign_access_law: Option<bool>,
    pub note: Option<String>,
}

impl Jurisdiction {
    pub(super) fn from_location(location: &Location, source: Source) -> Self {
        let text = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
        Jurisdiction {
            source,
            country: Some(country::normalize(&location.country)),
            operator: text(&location.operator),
            foreign_access_law: location.foreign_access_law,
            note: text(&location.note),
        }
    }

    pub(super) fn undeclared() -> Self {
        Jurisdiction {
            source: Source::Undeclared,
            country: None,
            operator: None,
            foreign_access_law: None,
            note: None,
        }
    }
}

impl fmt::Display for Jurisdiction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(country) = &self.country else {
            return f.write_str("undeclared");
        };
        write!(f, "{country}")?;
        if let Some(operator) = &self.operator {
            write!(f, ", {operator}")?;
        }
        f.write_str(match self.foreign_access_law {
            Some(true) => ", subject to foreign-access law",
            Some(false) => ", not subject to foreign-access law",
            None => ", foreign-access law not stated",
        })?;
        f.write_str(match self.source {
            Source::Declared => " (declared)",
            Source::InheritedFromServer => " (the host's, inherited)",
            Source::Undeclared => "",
        })
    }
}

/// One place that holds data.
#[derive(Debug, Clone, Serialize)]
pub struct Backend {
    pub kind: BackendKind,
    /// How messages name it, e.g. `index (postgres://db.example.com/kastell)`;
    /// never with a password.
    pub name: String,
    /// What and where, as far as the configuration tells.
    pub placement: String,
    /// On the host (the SQLite file, the local blob directory, a loopback server).
    pub local: bool,
    /// Has no declaration of its own and takes the host's.
    pub inherits_from_server: bool,
    /// Whether the personal-data rules apply to it.
    pub personal_data_rules: bool,
    pub jurisdiction: Jurisdiction,
    /// Where its `location` is declared, e.g. `[index]`.
    pub section: String,
    /// What goes there, for the places events go (the storage backends'
    /// contents are in the control chain).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receives: Option<String>,
    /// Events there carry patient names, IDs and birth dates (`include_patient`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub patient_data: bool,
}

impl Backend {
    /// What the personal-data rules protect there, for messages.
    pub(super) fn protects(&self) -> &'static str {
        if self.patient_data {
            "events carrying patient names, IDs and birth dates (include_patient = true)"
        } else {
            self.kind.protects()
        }
    }
}

/// Part of a kind of data, held by one backend.
#[derive(Debug, Clone, Serialize)]
pub struct Holding {
    pub what: String,
    pub backend: BackendKind,
    pub name: String,
    pub encrypted: bool,
    pub jurisdiction: Jurisdiction,
}

/// One link of the control chain: a kind of data, where it sits and who can read it.
#[derive(Debug, Clone, Serialize)]
pub struct Custody {
    pub data: DataKind,
    /// The policy rule that applies.
    pub rule: String,
    pub held: Vec<Holding>,
    /// Whether and how it is encrypted, at rest and on the way.
    pub encryption: String,
    /// Who holds the keys that open it.
    pub keys: String,
}

/// Something the operator should know that does not stop Kastell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notice {
    pub backend: String,
    pub message: String,
}
