//! Operator commands that work beside the server rather than in it: the bulk
//! import of a directory (through the same store pipeline as STOW-RS) with its
//! terminal progress, and the statistics of `kastell stats`.
//!
//! May use `service`, `index`, `store` and `dicom`; no actix. Backends are built by
//! `app` and handed in.

pub mod import;
pub mod progress;
pub mod stats;
