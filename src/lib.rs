//! Kastell: a sovereign DICOMweb archive.
//!
//! Dependency direction: `http` → `service` → (`index`, `store`, `dicom`); `app`
//! is the only place concrete backends are built. `ARCHITECTURE.md` is the map.
//!
//! No request may end the process: `unwrap` and `expect` are refused in the
//! library's code (tests may use them, `clippy.toml`); the few invariants that
//! remain say why where they are allowed.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod app;
pub mod audit;
pub mod auth;
pub mod config;
pub mod crypto;
pub mod custody;
pub mod dicom;
pub mod http;
pub mod index;
pub mod ops;
pub mod private_files;
pub mod redact;
pub mod service;
pub mod sovereignty;
pub mod store;
pub mod telemetry;
