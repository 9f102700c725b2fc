//! Dual control of destructive key operations: shredding a tenant and retiring a
//! master key. Where it applies (`keys.dual_control`: always, never, or — the
//! default — when more than one administrator exists), the first administrator
//! files a request and a different one approves it within the window; the
//! approval carries it out. Administrators are active API keys with the `admin`
//! permission on the tenant (on `*` for master keys), identified by the key they
//! present (`--admin-key-file`, or `KASTELL_ADMIN_KEY`). Filing and approving
//! are both in the audit trail, under the key's identity.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::app::open_index;
use crate::audit::{Action, ActorKind, AuditEvent, Outcome};
use crate::config::{Config, DualControlMode};
use crate::index::key_requests::KeyRequest;
use crate::index::Index;

use super::audit::audit_cli;

pub const SHRED_TENANT: &str = "shred-tenant";
pub const RETIRE_MASTER: &str = "retire-master";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Whose approval an operation on `scope` (a tenant, or `*`) needs.
fn scope_of(action: &str, target: &str) -> String {
    if action == SHRED_TENANT {
        target.to_string()
    } else {
        "*".to_string()
    }
}

/// Whether `action` on `target` needs a second administrator now.
pub fn required(
    config: &Config,
    index: &Index,
    action: &str,
    target: &str,
) -> anyhow::Result<bool> {
    let mode = if action == SHRED_TENANT {
        config.keys.dual_control.mode_for_tenant(target)
    } else {
        config.keys.dual_control.mode
    };
    Ok(match mode {
        DualControlMode::Always => true,
        DualControlMode::Never => false,
        DualControlMode::Auto => {
            crate::auth::administrators(index, &scope_of(action, target))?.len() > 1
        }
    })
}

/// Who presents `admin_key` as an administrator for `action` on `target`.
fn identify(
    index: &Index,
    admin_key: Option<&str>,
    action: &str,
    target: &str,
) -> anyhow::Result<String> {
    let key = admin_key.ok_or_else(|| {
        anyhow::anyhow!(
            "this operation is under dual control: identify yourself with an administrator's \
             API key (--admin-key-file, or KASTELL_ADMIN_KEY)"
        )
    })?;
    Ok(crate::auth::administrator(
        index,
        key.trim(),
        &scope_of(action, target),
    )?)
}

/// Files a request for `action` on `target` by the administrator presenting
/// `admin_key`. Returns its id. Audited.
pub fn file(
    config: &Config,
    action: &str,
    target: &str,
    admin_key: Option<&str>,
) -> anyhow::Result<KeyRequest> {
    let index = open_index(config)?;
    let identity = match identify(&index, admin_key, action, target) {
        Ok(identity) => identity,
        Err(error) => return refused(config, &index, action, target, Action::KeyRequest, error),
    };
    let at = now();
    let expires = at + config.keys.dual_control.window_secs as i64;
    let result = (|| {
        let id = index.file_key_request(action, target, &identity, at, expires)?;
        index
            .key_request(id)?
            .ok_or_else(|| anyhow::anyhow!("the request was not stored"))
    })();
    let event = AuditEvent::new(identity.clone(), ActorKind::ApiKey, scope_of(action, target), Action::KeyRequest, if result.is_ok() { Outcome::Success } else { Outcome::Failure })
        .status(i64::from(result.is_err()))
        .detail(match &result {
            Ok(request) => format!(
                "request {} to {action} {target} filed; it needs another administrator's approval within {} s",
                request.request_id, config.keys.dual_control.window_secs
            ),
            Err(error) => format!("{action} {target}: {error:#}"),
        });
    audit_cli(config, &index, event, result)
}

/// Approves request `id` as the administrator presenting `admin_key` (not its
/// filer, before it expires) and returns it with the approver's identity, for
/// the caller to carry out. Audited, refusals included.
pub fn approve(
    config: &Config,
    id: i64,
    admin_key: Option<&str>,
) -> anyhow::Result<(KeyRequest, String)> {
    let index = open_index(config)?;
    let request = index
        .key_request(id)?
        .ok_or_else(|| anyhow::anyhow!("there is no request {id}"))?;
    let identity = match identify(&index, admin_key, &request.action, &request.target) {
        Ok(identity) => identity,
        Err(error) => {
            return refused(
                config,
                &index,
                &request.action,
                &request.target,
                Action::KeyApprove,
                error,
            )
        }
    };
    let at = now();
    let result = (|| {
        if request.state != "pending" {
            anyhow::bail!("request {id} is {} already", request.state);
        }
        if request.expires_at <= at {
            anyhow::bail!(
                "request {id} expired {} s ago: an approval must come within \
                 keys.dual_control.window_secs; file a new request",
                at - request.expires_at
            );
        }
        if request.requested_by == identity {
            anyhow::bail!(
                "request {id} was filed by {identity}: it needs a different administrator's approval"
            );
        }
        if !index.approve_key_request(id, &identity, at)? {
            anyhow::bail!("request {id} was approved, cancelled or expired meanwhile");
        }
        anyhow::Ok(request.clone())
    })();
    let event = AuditEvent::new(
        identity.clone(),
        ActorKind::ApiKey,
        scope_of(&request.action, &request.target),
        Action::KeyApprove,
        if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        },
    )
    .status(i64::from(result.is_err()))
    .detail(match &result {
        Ok(_) => format!(
            "request {id} ({} {}, filed by {}) approved",
            request.action, request.target, request.requested_by
        ),
        Err(error) => format!("request {id}: {error:#}"),
    });
    let approved = audit_cli(config, &index, event, result)?;
    Ok((approved, identity))
}

/// Records a filing or approval refused because who asked is not an
/// administrator (or did not say who they are), then hands the refusal back.
fn refused<T>(
    config: &Config,
    index: &Index,
    action: &str,
    target: &str,
    audited: Action,
    error: anyhow::Error,
) -> anyhow::Result<T> {
    let event = AuditEvent::cli(scope_of(action, target), audited, Outcome::Failure)
        .status(1)
        .detail(format!("{action} {target}: {error:#}"));
    audit_cli(config, index, event, Err(error))
}

/// Pending requests, not expired.
pub fn pending(config: &Config) -> anyhow::Result<Vec<KeyRequest>> {
    Ok(open_index(config)?.pending_key_requests(now())?)
}
