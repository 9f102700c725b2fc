//! What DICOMweb requests and responses are made of, shared by the handlers:
//! Accept negotiation, multipart/related bodies in and out, byte ranges, the
//! query string, the UIDs of the path, entity tags.

pub mod accept;
pub mod etag;
pub mod feed;
pub mod multipart;
pub mod query;
pub mod range;
pub mod rendering;
pub mod research;
pub mod target;
