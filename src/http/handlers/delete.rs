//! DELETE of studies, series and instances (the paths Microsoft's DICOM server
//! uses; not part of PS3.18's Studies Service): 204 on success, 404 when unknown,
//! 410 when already deleted.

use actix_web::{web, HttpResponse};

use crate::http::error::ApiError;
use crate::http::protocol::target::Target;
use crate::http::state::AppState;

/// Deletes the study, series or instance the URL names.
pub async fn delete(
    state: web::ReqData<AppState>,
    target: Target,
) -> Result<HttpResponse, ApiError> {
    crate::service::delete::delete(&state.services, target.scope).await?;
    Ok(HttpResponse::NoContent().finish())
}
