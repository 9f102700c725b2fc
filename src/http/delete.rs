//! DELETE of studies, series and instances (the paths Microsoft's DICOM server
//! uses; not part of PS3.18's Studies Service): 204 on success, 404 when unknown,
//! 410 when already deleted.

use actix_web::{web, HttpResponse};

use super::error::ApiError;
use super::AppState;
use crate::index::Scope;
use crate::service::delete::delete;

pub async fn delete_study(
    state: web::ReqData<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    delete(
        &state.services,
        Scope::Study {
            study: path.into_inner(),
        },
    )
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn delete_series(
    state: web::ReqData<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (study, series) = path.into_inner();
    delete(&state.services, Scope::Series { study, series }).await?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn delete_instance(
    state: web::ReqData<AppState>,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (study, series, instance) = path.into_inner();
    delete(
        &state.services,
        Scope::Instance {
            study,
            series,
            instance,
        },
    )
    .await?;
    Ok(HttpResponse::NoContent().finish())
}
