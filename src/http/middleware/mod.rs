//! The middleware, outermost first as `app` wraps them: telemetry (one span and
//! the metrics per request, named by the endpoint table), the shield (URL
//! length, requests in flight, panics → 500, security headers), CORS, and
//! tenancy (the tenant, authentication, authorization and the audit record).
//! They depend on the endpoint table and the shared state, never on handlers.

pub mod auth;
pub mod client_addr;
pub mod cors;
pub mod shield;
pub mod telemetry;
pub mod tenancy;
