//! The resource a DICOMweb URL names, read from the route's `{study}`, `{series}`,
//! `{instance}` and `{frames}` segments. One extractor for every level, so that a
//! transaction has one handler whatever level the route table mounts it at.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};

use super::error::ApiError;
use crate::index::Scope;

/// A study, series or instance, and the frame list when the route has one.
pub struct Target {
    pub scope: Scope,
    pub frames: Option<String>,
}

impl FromRequest for Target {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
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
