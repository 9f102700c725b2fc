//! The audit trail from the command line: the record of an operator command
//! (appended to the control index with the installation's chain key) and the
//! check of the trail (`kastell audit verify`).

use crate::app::master_keys;
use crate::audit::AuditEvent;
use crate::config::Config;
use crate::index::Index;

/// The key that seals the audit chain in the control index `index`, made on
/// first use (wrapped by the master key provider).
pub fn audit_chain_key(config: &Config, index: &Index) -> anyhow::Result<crate::audit::ChainKey> {
    let masters = master_keys(config)?;
    Ok(crate::audit::ChainKey::load_or_create(index, &masters)?)
}

/// Appends `events` to the audit trail of the control index `index` (for the
/// command line; the server goes through its `AuditLog`).
pub fn append_audit(config: &Config, index: &Index, events: &[AuditEvent]) -> anyhow::Result<()> {
    let key = audit_chain_key(config, index)?;
    crate::audit::append(index, &key, events)?;
    Ok(())
}

/// Verifies the audit trail of the control index `index`, keyed rows with the
/// installation's chain key (none made yet: every row is unkeyed).
pub fn verify_audit(
    config: &Config,
    index: &Index,
    anchor: Option<crate::audit::Anchor>,
) -> anyhow::Result<crate::audit::VerifyReport> {
    let masters = master_keys(config)?;
    let key = crate::audit::ChainKey::load(index, &masters)?;
    Ok(crate::audit::verify_anchored(index, key, anchor)?)
}

/// Appends the audit record of a command-line operation, then hands back the
/// operation's result. An operation that happened but could not be audited fails
/// the command, so the operator knows the trail lacks it.
pub(crate) fn audit_cli<T>(
    config: &Config,
    index: &Index,
    event: AuditEvent,
    result: anyhow::Result<T>,
) -> anyhow::Result<T> {
    let action = event.action;
    match (append_audit(config, index, &[event]), result) {
        (Ok(_), result) => result,
        (Err(audit), Ok(_)) => Err(audit.context(format!(
            "the {action} operation was carried out, but its audit record could not be written"
        ))),
        (Err(audit), Err(error)) => {
            tracing::error!(%audit, %action, "the audit record of a failed operation could not be written");
            Err(error)
        }
    }
}
