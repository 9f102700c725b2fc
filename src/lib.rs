//! Kastell: a sovereign DICOMweb archive.
//!
//! Dependency direction: `http` → `service` → (`index`, `store`, `dicom`); `app`
//! is the only place concrete backends are built. See `STYLE.md` in the team notes.

pub mod app;
pub mod audit;
pub mod auth;
pub mod config;
pub mod crypto;
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
