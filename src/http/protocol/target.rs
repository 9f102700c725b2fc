//! The resource a DICOMweb URL names, read from the route's `{study}`, `{series}`,
//! `{instance}` and `{frames}` segments. One extractor for every level, so that a
//! transaction has one handler whatever level the route table mounts it at.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};

use crate::http::error::ApiError;
use crate::service::Scope;

/// A study, series or instance, and the frame list when the route has one.
pub struct Target {
    pub scope: Scope,
    pub frames: Option<String>,
}

impl FromRequest for Target {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        if let Err(error) = check_path_uids(request) {
            return ready(Err(error));
        }
        let info = request.match_info();
        let segment = |name| info.get(name).map(str::to_string);
        let scope = match (segment("study"), segment("series"), segment("instance")) {
            (Some(study), None, None) => Ok(Scope::Study { study }),
            (Some(study), Some(series), None) => Ok(Scope::Series { study, series }),
            (Some(study), Some(series), Some(instance)) => Ok(Scope::Instance {
                study,
                series,
                instance,
            }),
            // Only a route without UIDs could get here: a route table mistake.
            _ => Err(ApiError::NotFound("no such resource".into())),
        };
        ready(scope.map(|scope| Target {
            scope,
            frames: segment("frames"),
        }))
    }
}

/// Refuses a request whose `{study}`, `{series}` or `{instance}` segment is not
/// a UID, before it reaches the index or the audit trail.
pub fn check_path_uids(request: &HttpRequest) -> Result<(), ApiError> {
    let info = request.match_info();
    for name in ["study", "series", "instance"] {
        if let Some(uid) = info.get(name) {
            if !is_valid_uid(uid) {
                return Err(ApiError::BadRequest(format!(
                    "the {name} UID in the path is not a UID (up to 64 digits and dots)"
                )));
            }
        }
    }
    Ok(())
}

/// A UID as PS3.5 §9 defines it: up to 64 characters, digits and dots. Checked
/// before a UID from a request is used anywhere (the index, the audit trail).
pub fn is_valid_uid(uid: &str) -> bool {
    !uid.is_empty() && uid.len() <= 64 && uid.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::is_valid_uid;

    #[test]
    fn uids_are_digits_and_dots_up_to_64() {
        assert!(is_valid_uid("1.2.840.10008.5.1.4.1.1.2"));
        assert!(is_valid_uid(&"1".repeat(64)));
        assert!(!is_valid_uid(&"1".repeat(65)));
        assert!(!is_valid_uid(""));
        assert!(!is_valid_uid("1.2.<script>"));
        assert!(!is_valid_uid("1.2.3 "));
    }
}
