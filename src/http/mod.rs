//! The HTTP face of Kastell, and the only module that knows actix. Layout:
//!
//! - `endpoint.rs`: the endpoint table (every route, its name, audit action and
//!   permission); `routes.rs` registers each with its handler;
//! - `state.rs`: what middleware and handlers share ([`Site`], [`AppState`]);
//! - `middleware/`: telemetry (outermost), the shield (bounds, panics),
//!   CORS, tenancy (tenant, authentication, authorization, audit);
//! - `handlers/`: one file per DICOMweb service and the site's resources;
//! - `protocol/`: what requests and responses are made of (Accept
//!   negotiation, multipart, ranges, query strings, path targets, ETags);
//! - `error.rs`: the one mapping of errors to HTTP answers.
//!
//! Handlers call the service layer only (`crate::service`); they never import
//! the index or the store, and never each other.

pub mod endpoint;
pub mod error;
pub mod handlers;
pub mod middleware;
pub mod protocol;
pub mod routes;
pub mod state;

pub use middleware::cors::cors;
pub use middleware::{shield, telemetry, tenancy};
pub use routes::{configure, not_found};
pub use state::{AppState, Site};
