//! QIDO-RS (PS3.18 §10.6): the six search resources.

use actix_web::http::header;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};

use crate::dicom::attributes;
use crate::http::endpoint::Endpoint;
use crate::http::error::ApiError;
use crate::http::protocol::accept::{acceptable, negotiate_model, DataModel};
use crate::http::protocol::query::query_pairs;
use crate::http::protocol::research;
use crate::http::state::AppState;
use crate::service::qido;
use crate::service::{IncludeField, MatchKey, Resource, SearchRequest};

/// The 299 warning of a page that more matches follow (PS3.18 §8.3.4.4.1).
const ADDITIONAL_RESULTS: &str = "There are additional results that can be requested";

/// The six search resources (PS3.18 Table 10.6.1-1) in one handler: the
/// endpoint the request reached names the resource, the routed path its UIDs.
pub async fn search(
    state: web::ReqData<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let endpoint = request
        .extensions()
        .get::<crate::http::endpoint::Routed>()
        .map(|routed| routed.endpoint);
    let uid = |name: &str| {
        request
            .match_info()
            .get(name)
            .map(str::to_string)
            .unwrap_or_default()
    };
    let resource = match endpoint {
        Some(Endpoint::SearchForStudies) => Resource::Studies,
        Some(Endpoint::SearchForSeries) => Resource::Series,
        Some(Endpoint::SearchForInstances) => Resource::Instances,
        Some(Endpoint::SearchForStudySeries) => Resource::StudySeries {
            study: uid("study"),
        },
        Some(Endpoint::SearchForStudyInstances) => Resource::StudyInstances {
            study: uid("study"),
        },
        Some(Endpoint::SearchForSeriesInstances) => Resource::SeriesInstances {
            study: uid("study"),
            series: uid("series"),
        },
        _ => return Err(ApiError::NotFound("no such resource".into())),
    };
    run_search(state, request, resource).await
}

/// A parsed search: the request plus what the HTTP layer itself ignored.
pub struct ParsedSearch {
    pub request: SearchRequest,
    pub accept: Vec<String>,
    pub ignored: Vec<String>,
}

fn parse_bool(name: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ApiError::BadRequest(format!(
            "{name} must be true or false, got {value:?}"
        ))),
    }
}

/// The query parameters of a search, as the handler reads them.
pub fn parse_search(
    pairs: Vec<(String, String)>,
    resource: Resource,
) -> Result<ParsedSearch, ApiError> {
    let mut request = SearchRequest::new(resource);
    let mut accept = Vec::new();
    let mut ignored = Vec::new();
    for (name, value) in pairs {
        match name.as_str() {
            "limit" => {
                request.limit = Some(value.parse().map_err(|_| {
                    ApiError::BadRequest(format!(
                        "limit must be a non-negative integer, got {value:?}"
                    ))
                })?)
            }
            "offset" => {
                request.offset = value.parse().map_err(|_| {
                    ApiError::BadRequest(format!(
                        "offset must be a non-negative integer, got {value:?}"
                    ))
                })?
            }
            "fuzzymatching" => request.fuzzy = parse_bool(&name, &value)?,
            "emptyvaluematching" => request.empty_value_matching = parse_bool(&name, &value)?,
            "multiplevaluematching" => request.multiple_value_matching = parse_bool(&name, &value)?,
            "includefield" => {
                for field in value.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                    if field == "all" {
                        request.include.push(IncludeField::All);
                    } else {
                        match attributes::resolve_path(field) {
                            Some(path) => request.include.push(IncludeField::Path {
                                name: field.to_string(),
                                path,
                            }),
                            None => ignored.push(field.to_string()),
                        }
                    }
                }
            }
            "accept" => accept.push(value),
            "charset" => {}
            _ => match attributes::resolve_path(&name) {
                Some(path) => request.matches.push(MatchKey { name, path, value }),
                None => ignored.push(name),
            },
        }
    }
    Ok(ParsedSearch {
        request,
        accept,
        ignored,
    })
}

async fn run_search(
    state: web::ReqData<AppState>,
    request: HttpRequest,
    resource: Resource,
) -> Result<HttpResponse, ApiError> {
    crate::http::protocol::target::check_path_uids(&request)?;
    let parsed = parse_search(query_pairs(&request)?, resource)?;
    let limits = &state.services.settings.limits;
    if parsed.request.offset > limits.max_query_offset {
        return Err(ApiError::BadRequest(format!(
            "offset may be at most {}",
            limits.max_query_offset
        )));
    }
    if parsed.request.include.len() > limits.max_includefields {
        return Err(ApiError::BadRequest(format!(
            "at most {} includefield names may be given",
            limits.max_includefields
        )));
    }
    let header_accept = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let model =
        negotiate_model(&acceptable(&parsed.accept, header_accept), false).ok_or_else(|| {
            ApiError::NotAcceptable(
                "search results are available as application/dicom+json or \
                 multipart/related; type=\"application/dicom+xml\""
                    .into(),
            )
        })?;
    let base_url = state.base_url(&request);
    let mut search = parsed.request;
    if let Some(project) = &state.research {
        research::mark(&request, project, None);
        if !research::prepare_search(&state.services, project, &mut search).await? {
            return Ok(HttpResponse::NoContent()
                .insert_header((header::VARY, "Accept"))
                .finish());
        }
    }
    let mut page = qido::search(&state.services, search, &base_url).await?;
    if let Some(project) = &state.research {
        research::search_results(&state.services, project, &mut page.results).await?;
    }

    let mut ignored = parsed.ignored;
    ignored.extend(page.ignored);
    let mut warnings = Vec::new();
    if !ignored.is_empty() {
        warnings.push(state.warning(&format!(
            "The following query parameters are not supported and were ignored: {}",
            ignored.join(", ")
        )));
    }
    if page.more {
        // PS3.18 §8.3.4.4.1 puts the number of remaining matches in this text;
        // the index knows only that there are more (counting them would cost
        // a walk over every match), so the number is left out: a deviation
        // stated in conformance/CONFORMANCE.md §4.
        warnings.push(state.warning(ADDITIONAL_RESULTS));
    }
    let mut response = if page.results.is_empty() {
        HttpResponse::NoContent()
    } else {
        HttpResponse::Ok()
    };
    response.insert_header((header::VARY, "Accept"));
    for warning in warnings {
        response.append_header((header::WARNING, warning));
    }
    if page.results.is_empty() {
        return Ok(response.finish());
    }
    if model == DataModel::Xml {
        let results = futures_util::stream::iter(page.results.into_iter().map(Ok));
        return Ok(crate::http::protocol::multipart::xml_response(
            &mut response,
            futures_util::StreamExt::boxed(results),
        ));
    }
    let body =
        serde_json::to_vec(&page.results).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(response.content_type("application/dicom+json").body(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn parses_ohif_study_list_query() {
        let parsed = parse_search(
            pairs(&[
                ("limit", "101"),
                ("offset", "0"),
                ("fuzzymatching", "false"),
                ("includefield", "00081030,00080060"),
                ("PatientName", "*Doe*"),
                ("00100020", "X1"),
                ("Nonsense", "1"),
            ]),
            Resource::Studies,
        )
        .unwrap();
        assert_eq!(parsed.request.limit, Some(101));
        assert_eq!(parsed.request.include.len(), 2);
        assert_eq!(parsed.request.matches.len(), 2);
        assert_eq!(parsed.ignored, vec!["Nonsense".to_string()]);
    }

    #[test]
    fn rejects_invalid_values() {
        for (name, value) in [("limit", "abc"), ("offset", "-1"), ("fuzzymatching", "yes")] {
            assert!(
                parse_search(pairs(&[(name, value)]), Resource::Studies).is_err(),
                "{name}={value}"
            );
        }
    }
}
