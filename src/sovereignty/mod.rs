//! Jurisdiction: where each kind of data Kastell keeps sits, under whose law, and
//! whether the policy allows it.
//!
//! The operator declares each backend's location in the configuration
//! ([`Location`] in `[server]`, `[index]`, `[storage]` and `[keys]`); a backend local
//! to the host inherits the host's declaration. [`check`] holds the declarations
//! against the `[sovereignty]` policy and returns the control chain ([`Report`]) or
//! the violations. Pure — configuration (and a snapshot of the environment the
//! backends' libraries read) in, verdict out — so `kastell serve` runs it before it
//! opens anything.
//!
//! Kastell cannot verify a declaration (an address says nothing about who may be
//! compelled to hand data over); what it can do is refuse a configuration whose own
//! declarations break the policy, and say plainly what is undeclared.

mod assess;
mod chain;
pub mod country;
mod export;
mod model;
mod place;
mod policy;
mod report;

#[cfg(test)]
mod tests;

use assess::describe_key_source;
use chain::chain;
use policy::judge;

pub use crate::redact::display_url;
pub use assess::assess;
pub use export::export_allowed;
pub use model::{
    Backend, BackendKind, Custody, DataKind, Environment, Holding, Jurisdiction, Notice, Source,
};
pub use policy::{check, Refusal, Rule, Violation};
pub use report::{Report, TenantKeyCustody};
