//! Operator commands that work beside the server rather than in it, one file per
//! job: the bulk import of a directory (through the same store pipeline as
//! STOW-RS) with its terminal progress, `kastell stats`, `kastell verify`, the
//! tenant key life cycle, registering tenants, the audit trail from the
//! command line, and the status of the events (`kastell events status`).
//!
//! May use `service`, `index`, `store` and `dicom`; no actix. Backends are built by
//! `app` (its builders are called here); the command line prints what these return.

pub mod audit;
pub mod custody;
pub mod deid;
pub mod dual_control;
pub mod events;
pub mod export;
pub mod import;
pub mod keys;
pub mod lifecycle;
pub mod progress;
pub mod projects;
pub mod stats;
pub mod tenants;
pub mod verify;
