//! Answers for a caller who may only ever receive de-identified data (the
//! research permission without read; see `Endpoint::serves_research`), and for
//! WADO-URI `anonymize=yes`. Everything goes through the tenant's project
//! (`service::deid`): the caller names the project's UIDs, which are traced
//! back to the originals it handed out (a UID it never handed out, an original
//! one included, is not found); every instance is de-identified whole, and an
//! instance that may carry burned-in text is left out (403 when nothing is
//! left); search results and metadata are de-identified as JSON; search keys
//! on attributes the profile does not keep are refused (matching on a name
//! would reveal whose the studies are).

use std::sync::Arc;

use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use bytes::Bytes;
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use futures_util::stream::{self, BoxStream};
use futures_util::StreamExt;
use serde_json::Value as Json;

use super::accept::InstanceChoice;
use super::multipart::{multipart_body, new_boundary, OutgoingPart};
use crate::dicom::deid::Deidentified;
use crate::http::error::ApiError;
use crate::http::state::{AppState, DeidentifiedBy};
use crate::service::deid::{self, Project};
use crate::service::wado::{self, Representation};
use crate::service::{IncludeField, Resource, Scope, SearchRequest, ServiceError, Services};

/// Notes on the request, for its audit record, what it went through.
pub fn mark(request: &HttpRequest, project: &Project, originals: Option<Scope>) {
    request.extensions_mut().insert(DeidentifiedBy {
        project: project.name.clone(),
        profile: project.profile.description(),
        originals,
    });
}

/// The representation of each instance, chosen before anything is sent.
fn plan(
    instances: Vec<crate::service::StoredInstance>,
    choice: &InstanceChoice,
) -> Result<Vec<(crate::service::StoredInstance, Representation)>, ApiError> {
    instances
        .into_iter()
        .map(|instance| {
            let representation = choice
                .transfer_syntaxes
                .iter()
                .find_map(|ts| wado::representation_for(&instance, ts))
                .ok_or_else(|| {
                    ApiError::NotAcceptable(format!(
                        "an instance is stored in transfer syntax {} and cannot be sent in {}; \
                         request transfer-syntax=* to receive it as stored",
                        instance.transfer_syntax_uid,
                        choice.transfer_syntaxes.join(", ")
                    ))
                })?;
            Ok((instance, representation))
        })
        .collect()
}

fn part(body: Vec<u8>, syntax: &str, url: String) -> OutgoingPart {
    OutgoingPart {
        content_type: format!("application/dicom; transfer-syntax={syntax}"),
        content_location: Some(url),
        body: stream::once(async move { Ok(Bytes::from(body)) }).boxed(),
    }
}

/// WADO-RS instances of a scope the caller names by the project's UIDs.
pub async fn retrieve(
    state: &AppState,
    request: &HttpRequest,
    project: Arc<Project>,
    scope: Scope,
    choice: InstanceChoice,
) -> Result<HttpResponse, ApiError> {
    let services = state.services.clone();
    let originals = deid::original_scope(&services, &project, scope).await?;
    mark(request, &project, Some(originals.clone()));
    let instances = wado::locate_for_reading(&services, originals).await?;
    let mut plan = plan(instances, &choice)?.into_iter();
    let base_url = state.base_url(request);
    // The first instance that may go is de-identified before answering, so a
    // scope where none may gets a status, not an empty body.
    let mut excluded = Vec::new();
    let first = loop {
        let Some((instance, representation)) = plan.next() else {
            return Err(ServiceError::Forbidden(format!(
                "nothing here can be served de-identified: {}",
                excluded.join("; ")
            ))
            .into());
        };
        match deid::deidentified_instance(&services, &project, &instance, representation).await? {
            Deidentified::File { bytes, .. } => break (instance, representation, bytes),
            Deidentified::Excluded { reason } => excluded.push(reason),
        }
    };
    let (instance, representation, bytes) = first;
    let syntax = wado::syntax_of(&instance, representation).to_string();
    let url = deid::deidentified_url(&base_url, &project, &instance);
    if choice.single_part {
        return Ok(HttpResponse::Ok()
            .content_type(format!("application/dicom; transfer-syntax={syntax}"))
            .insert_header(("Content-Location", url))
            .body(bytes));
    }
    let boundary = new_boundary();
    let first_part = part(bytes, &syntax, url);
    let rest = stream::iter(plan.collect::<Vec<_>>())
        .then(move |(instance, representation)| {
            let (services, project, base_url) =
                (services.clone(), project.clone(), base_url.clone());
            async move {
                let result =
                    deid::deidentified_instance(&services, &project, &instance, representation)
                        .await
                        .map_err(wado::log_stream_failure)?;
                Ok(match result {
                    Deidentified::File { bytes, .. } => Some(part(
                        bytes,
                        wado::syntax_of(&instance, representation),
                        deid::deidentified_url(&base_url, &project, &instance),
                    )),
                    Deidentified::Excluded { .. } => None,
                })
            }
        })
        .filter_map(
            |part: Result<Option<OutgoingPart>, ServiceError>| async move { part.transpose() },
        );
    let parts: BoxStream<'static, Result<OutgoingPart, ServiceError>> =
        stream::once(async move { Ok(first_part) })
            .chain(rest)
            .boxed();
    Ok(HttpResponse::Ok()
        .content_type(format!(
            "multipart/related; type=\"application/dicom\"; boundary={boundary}"
        ))
        .streaming(multipart_body(boundary, parts)))
}

/// WADO-RS metadata (DICOM JSON) of a scope named by the project's UIDs.
pub async fn metadata(
    state: &AppState,
    request: &HttpRequest,
    project: Arc<Project>,
    scope: Scope,
) -> Result<HttpResponse, ApiError> {
    let services = state.services.clone();
    let originals = deid::original_scope(&services, &project, scope).await?;
    mark(request, &project, Some(originals.clone()));
    let instances = wado::locate(&services, originals).await?;
    let base_url = state.base_url(request);
    let mut items = wado::metadata_stream(services.clone(), instances, base_url).await?;
    // One instance at a time, written as it is de-identified (a study's
    // metadata is never held whole); the first before answering, so that an
    // unreadable object gets a status rather than a cut-off body.
    let deidentified = move |item: Result<Json, ServiceError>| {
        let (services, project) = (services.clone(), project.clone());
        async move {
            let mut dataset = [item?];
            deid::deidentify_json(&services, &project, &mut dataset).await?;
            let [dataset] = dataset;
            serde_json::to_vec(&dataset).map_err(|e| ServiceError::Task(e.to_string()))
        }
    };
    let first = items
        .next()
        .await
        .ok_or(ServiceError::NotFound("instance"))?;
    let first = deidentified(first).await?;
    let rest = items
        .then(deidentified)
        .map(|item| item.map(|bytes| [b",".as_slice(), &bytes].concat()));
    let body = stream::once(async move { Ok([b"[".as_slice(), &first].concat()) })
        .chain(rest)
        .chain(stream::once(async { Ok(b"]".to_vec()) }))
        .map(|chunk: Result<Vec<u8>, ServiceError>| {
            chunk.map(Bytes::from).map_err(wado::log_stream_failure)
        });
    Ok(HttpResponse::Ok()
        .content_type("application/dicom+json")
        .streaming(body))
}

/// UIDs one key of a research search may list (each is looked up).
const MAX_UIDS_PER_KEY: usize = 64;

/// The UID attributes a research search may match on, by the project's UIDs.
const UID_KEYS: [(Tag, &str); 3] = [
    (tags::STUDY_INSTANCE_UID, "study"),
    (tags::SERIES_INSTANCE_UID, "series"),
    (tags::SOP_INSTANCE_UID, "instance"),
];

/// Makes a search one a research caller may run: its UIDs (path and keys)
/// traced back to the originals, keys on what the profile does not keep
/// refused, fuzzy matching refused, PatientID included (so dates move by the
/// patient's offset at every level). `Ok(false)`: a UID the project never
/// handed out, so nothing can match.
pub async fn prepare_search(
    services: &Services,
    project: &Project,
    search: &mut SearchRequest,
) -> Result<bool, ApiError> {
    if search.fuzzy {
        return Err(ServiceError::Forbidden(
            "fuzzy matching is not available to de-identified searches".into(),
        )
        .into());
    }
    let original = |uid: String, level: &'static str| async move {
        deid::original_of(services, project, &uid, level).await
    };
    match &mut search.resource {
        Resource::Studies | Resource::Series | Resource::Instances => {}
        Resource::StudySeries { study } | Resource::StudyInstances { study } => {
            match original(study.clone(), "study").await? {
                Some(found) => *study = found,
                None => return Ok(false),
            }
        }
        Resource::SeriesInstances { study, series } => {
            match (
                original(study.clone(), "study").await?,
                original(series.clone(), "series").await?,
            ) {
                (Some(a), Some(b)) => (*study, *series) = (a, b),
                _ => return Ok(false),
            }
        }
    }
    for key in &mut search.matches {
        if let (1, Some((_, level))) = (
            key.path.len(),
            UID_KEYS
                .iter()
                .find(|(tag, _)| key.path.first() == Some(tag)),
        ) {
            let uids: Vec<&str> = key.value.split('\\').filter(|v| !v.is_empty()).collect();
            if uids.len() > MAX_UIDS_PER_KEY {
                return Err(ApiError::BadRequest(format!(
                    "a de-identified search matches at most {MAX_UIDS_PER_KEY} UIDs per key"
                )));
            }
            let mut originals = Vec::new();
            for uid in uids {
                if let Some(found) = original(uid.to_string(), level).await? {
                    originals.push(found);
                }
            }
            if originals.is_empty() {
                return Ok(false);
            }
            key.value = originals.join("\\");
            continue;
        }
        if !key.path.iter().all(|tag| project.profile.keeps(*tag)) {
            return Err(ServiceError::Forbidden(format!(
                "{} is not kept by this project's de-identification: it cannot be matched on",
                key.name
            ))
            .into());
        }
    }
    search.include.push(IncludeField::Path {
        name: "PatientID".into(),
        path: vec![tags::PATIENT_ID],
    });
    Ok(true)
}

/// De-identifies a page of search results.
pub async fn search_results(
    services: &Services,
    project: &Project,
    results: &mut [Json],
) -> Result<(), ApiError> {
    Ok(deid::deidentify_json(services, project, results).await?)
}
