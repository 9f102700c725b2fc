//! The handlers: one file per DICOMweb service (PS3.18 names them) and one for
//! the site's operational resources. Each turns a request into a call of the
//! service layer and its answer into a response; shared pieces live in
//! `protocol/`, never in another handler.

pub mod capabilities;
pub mod changefeed;
pub mod delete;
pub mod openapi;
pub mod qido;
pub mod rendered;
pub mod site;
pub mod stow;
pub mod wado;
pub mod wado_uri;
