//! Builds the concrete backends from the configuration and runs the server.
//!
//! The only place concrete backends are built (`backends`, with the key ring of
//! `keys`); the start-up refusals (`exposure`, `sovereignty`, the checks of
//! `load` that need `auth`); the HTTP server (`server`) and its graceful
//! `shutdown`. Operator commands that are not "serve" live in `crate::ops`.

mod backends;
pub mod events;
pub mod exposure;
mod keys;
mod lifecycle;
mod load;
mod server;
mod shutdown;
mod sovereignty;

pub use backends::{blob_retries, build_services, build_tenants, index_options, open_index};
pub use exposure::{check_exposure, exposure_risks};
pub use keys::{custodians, key_ring, master_keys, open_master, tenant_key_ring};
pub use load::{check_anonymous, load_config};
pub use server::run;
pub use sovereignty::{add_tenant_keys, enforce_sovereignty, sovereignty_report};
