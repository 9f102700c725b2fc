//! The audit trail: who did what to which study, when, from where, and how it
//! ended. Records live in the index database (`audit_events`), append-only and
//! hash-chained so that `kastell audit verify` detects an edited, inserted or
//! deleted row, and are exported as DICOM audit messages (IHE ATNA) or FHIR
//! AuditEvent resources for the hospital's audit repository.
//!
//! * [`AuditEvent`] is what a caller records; [`StoredEvent`] is a chained row.
//! * [`AuditLog`] is the handle the server records through: a bounded channel to
//!   one background writer that appends in batches; stores and deletes wait for
//!   their commit, refusals are rate-limited per client ([`limit`]).
//! * [`append`] writes synchronously (the CLI, whose process ends right after).
//! * [`verify`] walks the chain; [`export_atna`] / [`export_fhir`] /
//!   [`write_export`] turn rows into the two interchange formats.
//!
//! Audit records carry UIDs (they say which study was touched: that is their
//! purpose), but never patient names or IDs: `detail` is short operator text.

pub mod chain;
pub mod export;
pub mod limit;
mod log;
#[cfg(test)]
mod tests;

use std::str::FromStr;
use std::time::SystemTime;

use crate::index::audit::{AuditHead, AuditRow};
use crate::index::{Index, IndexError};

pub use chain::{
    verify, verify_anchored, Anchor, Break, ChainKey, Problem, VerifyReport, GENESIS_HASH,
};
pub use export::{export_atna, export_fhir, parse_since, write_export, ExportFormat};
pub use limit::{RefusalLimiter, RefusalLimits};
pub use log::{AuditLog, AuditLogOptions};

/// Longest `detail` kept, in characters; longer text is cut (it is a note for
/// operators, not a log).
pub const MAX_DETAIL_CHARS: usize = 500;
/// Longest actor (token subject, API key name, OS user) kept, in characters.
pub const MAX_ACTOR_CHARS: usize = 256;
/// Longest client address kept (an IPv6 address with zone fits), in characters.
pub const MAX_ADDRESS_CHARS: usize = 64;
/// Longest tenant name kept, in characters.
pub const MAX_TENANT_CHARS: usize = 64;
/// Longest UID kept, in characters: the DICOM maximum (PS3.5 §9.1); a longer
/// one is not a UID, and is cut.
pub const MAX_UID_CHARS: usize = 64;
/// Most instance UIDs one record lists; the server splits larger lists over
/// several records, and a longer list is cut with a count of what was left out.
pub const MAX_INSTANCE_UIDS: usize = 500;
/// What a cut field ends with, so that nobody takes it for the whole value.
pub const TRUNCATION_MARKER: &str = "…[truncated]";

/// `text` cut to `max` characters plus [`TRUNCATION_MARKER`] when longer: a
/// request cannot write more than a bounded amount into one record.
pub fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((end, _)) => format!("{}{TRUNCATION_MARKER}", &text[..end]),
    }
}

/// At most [`MAX_INSTANCE_UIDS`] UIDs, each bounded, space-separated; what was
/// left out is counted in a last `…[+N more]` word.
fn bounded_uid_list(uids: &[String]) -> String {
    let mut words: Vec<String> = uids
        .iter()
        .take(MAX_INSTANCE_UIDS)
        .map(|uid| bounded(uid, MAX_UID_CHARS).replace(' ', "_"))
        .collect();
    if uids.len() > MAX_INSTANCE_UIDS {
        words.push(format!("…[+{}-more]", uids.len() - MAX_INSTANCE_UIDS));
    }
    words.join(" ")
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Index(#[from] IndexError),
    /// A stored row does not parse back into an event (edited, or written by a
    /// newer Kastell); `kastell audit verify` says whether the chain holds.
    #[error("audit row {seq} has an unreadable {field}: {value:?}")]
    Corrupt {
        seq: i64,
        field: &'static str,
        value: String,
    },
    #[error("the audit writer has stopped: the event was not recorded")]
    WriterStopped,
    #[error("writing the audit export: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "invalid time {0:?}: expected RFC 3339 UTC (2026-01-31T12:00:00Z) or a date (2026-01-31)"
    )]
    Since(String),
    #[error("invalid anchor {0:?}: expected SEQ:HASH as printed by `kastell audit verify`")]
    Anchor(String),
    /// The wrapped chain key does not open: another master key, or the stored
    /// key (or the seq bound to it) was changed.
    #[error("the audit chain key cannot be used (another master key, or its row in the index was changed): {0}")]
    ChainKey(#[source] crate::crypto::CryptoError),
    #[error("the audit chain key could not be made: other writers kept appending")]
    ChainKeyContention,
}

/// Declares a closed set of values stored as kebab-case text.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The text stored in the index.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl FromStr for $name {
            type Err = ();
            fn from_str(text: &str) -> Result<Self, ()> {
                match text {
                    $($text => Ok($name::$variant),)+
                    _ => Err(()),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum! {
    /// How the actor was identified.
    ActorKind {
        /// An OAuth2/OIDC bearer token; the actor is its subject.
        Token => "token",
        /// A static API key; the actor is the key's name.
        ApiKey => "api-key",
        /// No credentials (only where anonymous access is configured).
        Anonymous => "anonymous",
        /// The `kastell` command line; the actor is the OS user.
        Cli => "cli",
        /// The server's own scheduled work (lifecycle passes); the actor names it.
        System => "system",
    }
}

text_enum! {
    /// What was done. New actions may be added; each maps to DICOM audit codes in
    /// `export`.
    Action {
        /// STOW-RS.
        Store => "store",
        /// QIDO-RS.
        Search => "search",
        /// WADO-RS / WADO-URI (any resource: instances, metadata, frames, rendered).
        Retrieve => "retrieve",
        /// DELETE of a study, series or instance.
        Delete => "delete",
        /// `kastell keys rotate`.
        KeyRotate => "key-rotate",
        /// `kastell keys retire`.
        KeyRetire => "key-retire",
        /// `kastell keys shred`.
        KeyShred => "key-shred",
        /// `kastell keys create-master`: a master key made in its HSM or file.
        MasterCreate => "master-create",
        /// `kastell keys rotate-master`: wrapped keys moved to their master.
        MasterRotate => "master-rotate",
        /// `kastell keys retire-master`: a master key nothing uses destroyed.
        MasterRetire => "master-retire",
        /// A destructive key operation filed under dual control.
        KeyRequest => "key-request",
        /// A second administrator's approval of one.
        KeyApprove => "key-approve",
        /// Credentials presented and refused (401).
        LoginFailure => "login-failure",
        /// Authenticated but not allowed (403).
        AccessDenied => "access-denied",
        /// The audit trail itself was read out (`kastell audit export`).
        AuditExport => "audit-export",
        /// A legal hold placed on a study or a patient (`kastell lifecycle hold`).
        LegalHold => "legal-hold",
        /// A legal hold lifted (`kastell lifecycle lift`).
        LegalHoldLift => "legal-hold-lift",
        /// A study released from its retention period before it ended
        /// (`kastell lifecycle release`), the override with its reason.
        RetentionRelease => "retention-release",
        /// A lifecycle pass moved instances between stores (`kastell lifecycle run`).
        LifecycleMove => "lifecycle-move",
        /// The restore of a study from an offline tier asked for (`kastell
        /// lifecycle restore`, or a retrieval that needed it).
        LifecycleRestore => "lifecycle-restore",
        /// A de-identification project made, or chosen as the research project
        /// (`kastell projects`).
        DeidProject => "deid-project",
        /// What a project's de-identified identifier stands for, looked up
        /// (`kastell projects reidentify`).
        Reidentify => "reidentify",
        /// A de-identified export (`kastell export`): made, and each study that
        /// went, with the project, its profile and the target.
        Export => "export",
    }
}

text_enum! {
    /// How it ended.
    Outcome {
        Success => "success",
        Failure => "failure",
    }
}

/// One audited event, as the code that saw it describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// When it happened (stored as RFC 3339 UTC with microseconds; finer parts
    /// are dropped).
    pub at: SystemTime,
    /// Token subject, API key name, `anonymous`, or the OS user of the CLI.
    pub actor: String,
    pub actor_kind: ActorKind,
    /// The client's IP address (as the server saw it, or from a trusted proxy).
    pub client_address: Option<String>,
    pub tenant: String,
    pub action: Action,
    pub outcome: Outcome,
    /// HTTP status, or the CLI's exit code.
    pub status: Option<i64>,
    pub study_uid: Option<String>,
    pub series_uid: Option<String>,
    /// SOP Instance UIDs (stored space-separated).
    pub instance_uids: Vec<String>,
    /// A short note for operators, cut to [`MAX_DETAIL_CHARS`]. Never patient
    /// names or IDs, never query values (a QIDO query may hold a name).
    ///
    /// Every text field is bounded when stored (see [`bounded`] and the `MAX_*`
    /// constants), whatever a request put in it.
    pub detail: Option<String>,
}

impl AuditEvent {
    /// An event happening now, with nothing but its mandatory fields.
    pub fn new(
        actor: impl Into<String>,
        actor_kind: ActorKind,
        tenant: impl Into<String>,
        action: Action,
        outcome: Outcome,
    ) -> Self {
        // Whole microseconds, as stored: an event read back equals the one recorded.
        let now = SystemTime::now();
        let nanos = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() % 1000);
        AuditEvent {
            at: now - std::time::Duration::from_nanos(nanos.into()),
            actor: actor.into(),
            actor_kind,
            client_address: None,
            tenant: tenant.into(),
            action,
            outcome,
            status: None,
            study_uid: None,
            series_uid: None,
            instance_uids: Vec::new(),
            detail: None,
        }
    }

    /// An event of the command line, by the OS user running it ([`cli_user`]).
    pub fn cli(tenant: impl Into<String>, action: Action, outcome: Outcome) -> Self {
        Self::new(cli_user(), ActorKind::Cli, tenant, action, outcome)
    }

    pub fn client_address(mut self, address: impl Into<String>) -> Self {
        self.client_address = Some(address.into());
        self
    }

    pub fn status(mut self, status: i64) -> Self {
        self.status = Some(status);
        self
    }

    pub fn study(mut self, uid: impl Into<String>) -> Self {
        self.study_uid = Some(uid.into());
        self
    }

    pub fn series(mut self, uid: impl Into<String>) -> Self {
        self.series_uid = Some(uid.into());
        self
    }

    pub fn instances<I, S>(mut self, uids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.instance_uids.extend(uids.into_iter().map(Into::into));
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The row for this event, without its place in the chain (seq and hashes
    /// are filled in by [`chain::seal`]).
    fn to_row(&self) -> AuditRow {
        let uid = |uid: &Option<String>| uid.as_deref().map(|u| bounded(u, MAX_UID_CHARS));
        AuditRow {
            seq: 0,
            at: format_time(self.at),
            actor: bounded(&self.actor, MAX_ACTOR_CHARS),
            actor_kind: self.actor_kind.as_str().to_string(),
            client_address: self
                .client_address
                .as_deref()
                .map(|a| bounded(a, MAX_ADDRESS_CHARS)),
            tenant: bounded(&self.tenant, MAX_TENANT_CHARS),
            action: self.action.as_str().to_string(),
            outcome: self.outcome.as_str().to_string(),
            status: self.status,
            study_uid: uid(&self.study_uid),
            series_uid: uid(&self.series_uid),
            instance_uids: (!self.instance_uids.is_empty())
                .then(|| bounded_uid_list(&self.instance_uids)),
            detail: self.detail.as_deref().map(|d| bounded(d, MAX_DETAIL_CHARS)),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }
}

/// The OS user running the command line: `$USER`, else `$LOGNAME`, else `unknown`.
pub fn cli_user() -> String {
    ["USER", "LOGNAME"]
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .find(|user| !user.trim().is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// A stored event with its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: i64,
    pub event: AuditEvent,
    pub prev_hash: String,
    pub hash: String,
}

impl TryFrom<AuditRow> for StoredEvent {
    type Error = AuditError;

    fn try_from(row: AuditRow) -> Result<Self, AuditError> {
        let seq = row.seq;
        let corrupt = |field: &'static str, value: &str| AuditError::Corrupt {
            seq,
            field,
            value: value.to_string(),
        };
        let at = humantime::parse_rfc3339(&row.at).map_err(|_| corrupt("at", &row.at))?;
        let actor_kind = row
            .actor_kind
            .parse()
            .map_err(|_| corrupt("actor_kind", &row.actor_kind))?;
        let action = row
            .action
            .parse()
            .map_err(|_| corrupt("action", &row.action))?;
        let outcome = row
            .outcome
            .parse()
            .map_err(|_| corrupt("outcome", &row.outcome))?;
        Ok(StoredEvent {
            seq,
            event: AuditEvent {
                at,
                actor: row.actor,
                actor_kind,
                client_address: row.client_address,
                tenant: row.tenant,
                action,
                outcome,
                status: row.status,
                study_uid: row.study_uid,
                series_uid: row.series_uid,
                instance_uids: row
                    .instance_uids
                    .map(|uids| {
                        uids.split(' ')
                            .filter(|u| !u.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
                detail: row.detail,
            },
            prev_hash: row.prev_hash,
            hash: row.hash,
        })
    }
}

/// The stored form of a time: RFC 3339 UTC with exactly six fractional digits,
/// so that text order is time order (`--since` compares text).
pub fn format_time(at: SystemTime) -> String {
    humantime::format_rfc3339_micros(at).to_string()
}

/// Appends `events` to the trail now, in one transaction, and returns the new
/// head. Blocking: the command line uses it directly; the server goes through
/// [`AuditLog`], whose writer calls this on the blocking pool.
pub fn append(
    index: &Index,
    key: &ChainKey,
    events: &[AuditEvent],
) -> Result<Option<AuditHead>, AuditError> {
    Ok(index.append_audit(|head| chain::seal(key, head, events))?)
}
