//! What a credential allows: actions on tenants, and the one text form of a grant
//! that tokens (roles, scopes), API keys and the configuration share.
//!
//! A grant is written `kastell:<tenant>:<action>`:
//! * `<tenant>` is a tenant name (letters, digits, `-`, `_`) or `*` for every tenant;
//! * `<action>` is `read` (QIDO, WADO), `write` (STOW), `delete`, `admin`
//!   (administration; it implies nothing else), `research` (search and
//!   retrieve, de-identified only, through the tenant's research project) or
//!   `*` (all five).
//!
//! Examples: `kastell:default:read`, `kastell:*:write`, `kastell:radiology:*`.

use std::fmt;
use std::str::FromStr;

/// The prefix that marks a role or scope as one of ours; others are ignored.
pub const GRANT_PREFIX: &str = "kastell:";

/// Something a request does to a tenant's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Search and retrieve (QIDO-RS, WADO-RS, WADO-URI).
    Read,
    /// Store (STOW-RS).
    Write,
    /// Delete studies, series and instances.
    Delete,
    /// Administration (tenants, keys, reports). Deliberately implies neither
    /// read nor write: an operator need not see images.
    Admin,
    /// Search and retrieve de-identified data only: every answer goes through
    /// the tenant's research project (`service::deid`); identified data, and
    /// what cannot be de-identified, is refused. `read` does not imply it nor
    /// it `read`: a caller with both is served identified data.
    Research,
}

impl Action {
    pub const ALL: [Action; 5] = [
        Action::Read,
        Action::Write,
        Action::Delete,
        Action::Admin,
        Action::Research,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Delete => "delete",
            Action::Admin => "admin",
            Action::Research => "research",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = GrantError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| GrantError::Action(s.to_string()))
    }
}

/// The action part of a grant: one action, or `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    Only(Action),
    Every,
}

impl Permission {
    pub fn allows(self, action: Action) -> bool {
        match self {
            Permission::Only(a) => a == action,
            Permission::Every => true,
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Permission::Only(action) => action.fmt(f),
            Permission::Every => f.write_str("*"),
        }
    }
}

impl FromStr for Permission {
    type Err = GrantError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "*" {
            Ok(Permission::Every)
        } else {
            s.parse().map(Permission::Only)
        }
    }
}

/// The tenant part of a grant: one tenant, or `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TenantScope {
    One(String),
    Every,
}

impl TenantScope {
    pub fn covers(&self, tenant: &str) -> bool {
        match self {
            TenantScope::One(t) => t == tenant,
            TenantScope::Every => true,
        }
    }
}

impl fmt::Display for TenantScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TenantScope::One(t) => f.write_str(t),
            TenantScope::Every => f.write_str("*"),
        }
    }
}

impl FromStr for TenantScope {
    type Err = GrantError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "*" {
            Ok(TenantScope::Every)
        } else if is_tenant_name(s) {
            Ok(TenantScope::One(s.to_string()))
        } else {
            Err(GrantError::Tenant(s.to_string()))
        }
    }
}

/// Tenant names as the configuration accepts them (`keys.default_tenant`).
pub fn is_tenant_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// One permission on one tenant (or on all).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Grant {
    pub tenant: TenantScope,
    pub permission: Permission,
}

impl Grant {
    pub fn new(tenant: TenantScope, permission: Permission) -> Self {
        Self { tenant, permission }
    }

    pub fn allows(&self, tenant: &str, action: Action) -> bool {
        self.tenant.covers(tenant) && self.permission.allows(action)
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{GRANT_PREFIX}{}:{}", self.tenant, self.permission)
    }
}

impl FromStr for Grant {
    type Err = GrantError;

    /// Parses `kastell:<tenant>:<action>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.strip_prefix(GRANT_PREFIX).ok_or(GrantError::NotOurs)?;
        let (tenant, action) = rest
            .split_once(':')
            .ok_or_else(|| GrantError::Shape(s.to_string()))?;
        Ok(Grant {
            tenant: tenant.parse()?,
            permission: action.parse()?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("not a Kastell grant (they start with {GRANT_PREFIX:?})")]
    NotOurs,
    #[error("{0:?} is not of the form kastell:<tenant>:<action>")]
    Shape(String),
    #[error("{0:?} is not a tenant name (letters, digits, '-', '_') or *")]
    Tenant(String),
    #[error("{0:?} is not an action: read, write, delete, admin or *")]
    Action(String),
}

/// Parses a list of permissions (`["read", "write"]`).
pub fn parse_actions<S: AsRef<str>>(list: &[S]) -> Result<Vec<Permission>, GrantError> {
    list.iter().map(|s| s.as_ref().trim().parse()).collect()
}

/// Parses a comma-separated permission list (`read,write`), the form the CLI takes
/// and the index stores. Empty items are an error, so is an empty list.
pub fn parse_permission_list(text: &str) -> Result<Vec<Permission>, GrantError> {
    if text.trim().is_empty() {
        return Err(GrantError::Action(String::new()));
    }
    let items: Vec<&str> = text.split(',').collect();
    let mut permissions: Vec<Permission> = Vec::new();
    for permission in parse_actions(&items)? {
        if !permissions.contains(&permission) {
            permissions.push(permission);
        }
    }
    Ok(permissions)
}

/// The canonical comma-separated text of a permission list.
pub fn permission_list_text(permissions: &[Permission]) -> String {
    permissions
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(s: &str) -> Grant {
        s.parse().unwrap()
    }

    #[test]
    fn grants_parse_and_print_back() {
        for text in [
            "kastell:default:read",
            "kastell:*:write",
            "kastell:radiology-2:*",
            "kastell:*:*",
            "kastell:a_b:admin",
            "kastell:x:delete",
        ] {
            assert_eq!(grant(text).to_string(), text);
        }
        assert_eq!(
            grant("kastell:default:read"),
            Grant::new(
                TenantScope::One("default".into()),
                Permission::Only(Action::Read)
            )
        );
    }

    #[test]
    fn malformed_grants_are_rejected_with_the_reason() {
        assert_eq!("openid".parse::<Grant>(), Err(GrantError::NotOurs));
        assert_eq!("Kastell:a:read".parse::<Grant>(), Err(GrantError::NotOurs));
        assert!(matches!(
            "kastell:default".parse::<Grant>(),
            Err(GrantError::Shape(_))
        ));
        assert!(matches!(
            "kastell::read".parse::<Grant>(),
            Err(GrantError::Tenant(_))
        ));
        assert!(matches!(
            "kastell:a/b:read".parse::<Grant>(),
            Err(GrantError::Tenant(_))
        ));
        assert!(matches!(
            "kastell:default:READ".parse::<Grant>(),
            Err(GrantError::Action(_))
        ));
        // A third colon leaves "read:x" as the action.
        assert!(matches!(
            "kastell:default:read:x".parse::<Grant>(),
            Err(GrantError::Action(_))
        ));
        assert!(matches!(
            "kastell:default:".parse::<Grant>(),
            Err(GrantError::Action(_))
        ));
    }

    #[test]
    fn grants_allow_exactly_their_tenant_and_action() {
        let read_default = grant("kastell:default:read");
        assert!(read_default.allows("default", Action::Read));
        assert!(!read_default.allows("default", Action::Write));
        assert!(!read_default.allows("other", Action::Read));

        let write_anywhere = grant("kastell:*:write");
        assert!(write_anywhere.allows("default", Action::Write));
        assert!(write_anywhere.allows("other", Action::Write));
        assert!(!write_anywhere.allows("other", Action::Delete));

        let all_in_one = grant("kastell:radiology:*");
        for action in Action::ALL {
            assert!(all_in_one.allows("radiology", action));
            assert!(!all_in_one.allows("cardiology", action));
        }
    }

    #[test]
    fn admin_implies_nothing_else() {
        let admin = grant("kastell:*:admin");
        assert!(admin.allows("default", Action::Admin));
        for action in [Action::Read, Action::Write, Action::Delete] {
            assert!(!admin.allows("default", action), "{action}");
        }
    }

    #[test]
    fn permission_lists_parse_and_normalise() {
        assert_eq!(
            parse_permission_list("read, write").unwrap(),
            vec![
                Permission::Only(Action::Read),
                Permission::Only(Action::Write)
            ]
        );
        assert_eq!(
            permission_list_text(&parse_permission_list("read,*,read").unwrap()),
            "read,*"
        );
        assert!(parse_permission_list("").is_err());
        assert!(parse_permission_list("read,").is_err());
        assert!(parse_permission_list("read,execute").is_err());
        assert_eq!(parse_actions::<&str>(&[]).unwrap(), vec![]);
    }
}
