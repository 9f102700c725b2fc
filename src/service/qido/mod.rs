//! QIDO-RS: runs a search and renders each match as a DICOM JSON object: the
//! attributes the index keeps from its rows, any other `includefield` from a
//! stored instance (`stored`).

mod stored;

use dicom_core::VR;
use serde_json::{json, Map, Value as Json};

use super::{ServiceError, Services};
use crate::dicom::json as dicom_json;
use crate::index::catalog::{self, Attr, Kind, Level, Presence};
use crate::index::Hit;
use crate::service::SearchRequest;

/// A page of search results, rendered.
#[derive(Debug)]
pub struct SearchPage {
    pub results: Vec<Json>,
    /// Whether matches follow this page.
    pub more: bool,
    pub ignored: Vec<String>,
}

pub async fn search(
    services: &Services,
    request: SearchRequest,
    base_url: &str,
) -> Result<SearchPage, ServiceError> {
    let max = services.settings.qido_max_results;
    let levels = request.resource.result_levels();
    let result = {
        let request = request.clone();
        services
            .with_index(move |index| index.search(&request, max))
            .await?
    };
    let extra = stored::attributes(
        services,
        &result.hits,
        request.resource.level(),
        levels,
        &result.stored,
        base_url,
    )
    .await?;
    let results = result
        .hits
        .iter()
        .zip(extra)
        .map(|(hit, extra)| Json::Object(render(hit, levels, &result.requested, extra, base_url)))
        .collect();
    Ok(SearchPage {
        results,
        more: result.more,
        ignored: result.ignored,
    })
}

fn row_text(hit: &Hit, attr: &Attr) -> Option<String> {
    let text = match attr.level {
        Level::Study => hit.study.text(attr.column),
        Level::Series => hit.series.as_ref()?.text(attr.column),
        Level::Instance => hit.instance.as_ref()?.text(attr.column),
    };
    text.filter(|t| !t.is_empty())
}

fn render(
    hit: &Hit,
    levels: &[Level],
    requested: &[&'static Attr],
    stored: Map<String, Json>,
    base_url: &str,
) -> Map<String, Json> {
    let mut attributes: Vec<(String, Json)> = Vec::new();
    let mut add = |attr: &'static Attr, value: Option<String>| {
        let json = match (attr.kind, value) {
            (Kind::RequestSequence, Some(text)) => {
                let items = serde_json::from_str::<Json>(&text).unwrap_or(Json::Array(vec![]));
                json!({"vr": "SQ", "Value": items})
            }
            (_, Some(text)) => {
                dicom_json::attribute(attr.vr, dicom_json::values_from_text(attr.vr, &text))
            }
            (_, None) => dicom_json::attribute(attr.vr, None),
        };
        attributes.push((crate::dicom::attributes::hex(attr.tag), json));
    };
    for attr in catalog::ATTRIBUTES {
        let value = row_text(hit, attr);
        let in_result_level = levels.contains(&attr.level);
        let wanted = requested.iter().any(|a| a.tag == attr.tag);
        let shown = wanted
            || (in_result_level
                && match attr.presence {
                    Presence::Always => true,
                    Presence::IfKnown => value.is_some(),
                    Presence::OnRequest => false,
                });
        if shown {
            add(attr, value);
        }
    }
    // Instance Availability and the Retrieve URL of the entity returned.
    attributes.push((
        "00080056".into(),
        dicom_json::attribute(VR::CS, Some(vec![json!("ONLINE")])),
    ));
    let study = &hit.study.study_instance_uid;
    let url = match (levels.last(), &hit.series, &hit.instance) {
        (Some(Level::Instance), Some(series), Some(instance)) => format!(
            "{base_url}/studies/{study}/series/{}/instances/{}",
            series.series_instance_uid, instance.sop_instance_uid
        ),
        (Some(Level::Series), Some(series), _) => {
            format!(
                "{base_url}/studies/{study}/series/{}",
                series.series_instance_uid
            )
        }
        _ => format!("{base_url}/studies/{study}"),
    };
    attributes.push((
        "00081190".into(),
        dicom_json::attribute(VR::UR, Some(vec![json!(url)])),
    ));
    // What the index keeps wins; the stored instance adds the rest.
    for (key, value) in stored {
        if !attributes.iter().any(|(k, _)| *k == key) {
            attributes.push((key, value));
        }
    }
    // Keys in ascending tag order (PS3.18 F.2).
    attributes.sort_by(|a, b| a.0.cmp(&b.0));
    attributes.into_iter().collect()
}
