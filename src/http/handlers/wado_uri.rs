//! WADO-URI (PS3.18 §9): `GET {wado_uri_path}?requestType=WADO&studyUID=…&seriesUID=…&objectUID=…`.
//! `contentType=application/dicom` returns the instance as one PS3.10 file; the
//! rendered types (image/jpeg by default, image/png, image/gif) render one frame
//! with `frameNumber`, `rows`, `columns`, `region`, `windowCenter`/`windowWidth`,
//! `imageQuality` and `annotation`.

use actix_web::{web, HttpRequest, HttpResponse};

use crate::dicom::deid::Deidentified;
use crate::dicom::render::{ImageFormat, Region, RenderOptions, VoiFunction, Window};
use crate::dicom::transfer_syntax;
use crate::http::error::ApiError;
use crate::http::protocol::query::query_pairs;
use crate::http::protocol::rendering::{parse_annotation, parse_quality};
use crate::http::protocol::research;
use crate::http::state::AppState;
use crate::service::Scope;
use crate::service::{deid, render, wado};

/// The parameters of one WADO-URI request.
#[derive(Debug, PartialEq)]
struct WadoUriRequest {
    scope: Scope,
    /// `None`: application/dicom; else the rendered type.
    rendered: Option<ImageFormat>,
    /// Whether the type was the default (no `contentType`, no rendering
    /// parameters): then a non-image object is sent as application/dicom.
    default_type: bool,
    transfer_syntax: String,
    frame_number: Option<u64>,
    options: RenderOptions,
    warning: Option<String>,
    /// `anonymize=yes`: the object de-identified (PS3.18 §9.4.2.3).
    anonymize: bool,
}

fn parse(pairs: Vec<(String, String)>) -> Result<WadoUriRequest, ApiError> {
    let get = |name: &str| -> Vec<&str> {
        pairs
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let single = |name: &str| -> Result<Option<String>, ApiError> {
        match get(name).as_slice() {
            [] => Ok(None),
            [value] => Ok(Some(value.to_string())),
            _ => Err(ApiError::BadRequest(format!("{name} may be given once"))),
        }
    };
    match single("requestType")?.as_deref() {
        Some("WADO") => {}
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unsupported requestType {other:?}"
            )))
        }
        None => return Err(ApiError::BadRequest("requestType=WADO is required".into())),
    }
    let uid = |name: &str| -> Result<String, ApiError> {
        single(name)?
            .filter(|v| transfer_syntax::looks_like_uid(v))
            .ok_or_else(|| ApiError::BadRequest(format!("{name} is required and must be a UID")))
    };
    let scope = Scope::Instance {
        study: uid("studyUID")?,
        series: uid("seriesUID")?,
        instance: uid("objectUID")?,
    };
    let anonymize = match single("anonymize")?.as_deref() {
        None => false,
        Some("yes") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "anonymize must be yes, got {other:?}"
            )))
        }
    };
    let content_types = single("contentType")?.unwrap_or_default();
    // The first supported type listed wins; none listed means image/jpeg.
    let mut chosen: Option<Option<ImageFormat>> = None;
    let mut listed = false;
    for media in content_types
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        listed = true;
        if media.contains(';') {
            return Err(ApiError::BadRequest(
                "contentType takes media types without parameters (no transfer-syntax or charset)"
                    .into(),
            ));
        }
        let media = media.to_ascii_lowercase();
        if chosen.is_none() {
            if media == "application/dicom" {
                chosen = Some(None);
            } else if let Some(format) = ImageFormat::from_media_type(&media) {
                chosen = Some(Some(format));
            } else if media == "image/*" || media == "*/*" {
                chosen = Some(Some(ImageFormat::Jpeg));
            }
        }
    }
    let rendered = match chosen {
        Some(choice) => choice,
        None if !listed => Some(ImageFormat::Jpeg),
        None => {
            return Err(ApiError::NotAcceptable(format!(
                "contentType {content_types:?} names nothing this server produces \
                 (application/dicom, image/jpeg, image/png, image/gif)"
            )))
        }
    };
    let mut options = RenderOptions::default();
    let mut warning = None;
    let positive = |name: &str| -> Result<Option<u32>, ApiError> {
        match single(name)? {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .map(Some)
                .ok_or_else(|| ApiError::BadRequest(format!("{name} must be a positive integer"))),
        }
    };
    options.max_rows = positive("rows")?;
    options.max_columns = positive("columns")?;
    let frame_number = positive("frameNumber")?.map(u64::from);
    if let Some(region) = single("region")? {
        let values: Vec<f64> = region
            .split(',')
            .map(|v| v.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| ApiError::BadRequest(format!("invalid region {region:?}")))?;
        match values.as_slice() {
            [x0, y0, x1, y1]
                if [*x0, *y0, *x1, *y1].iter().all(|v| (0.0..=1.0).contains(v))
                    && x0 < x1
                    && y0 < y1 =>
            {
                options.region = Some(Region {
                    x_min: *x0,
                    y_min: *y0,
                    x_max: *x1,
                    y_max: *y1,
                })
            }
            _ => {
                return Err(ApiError::BadRequest(format!(
                "region must be xmin,ymin,xmax,ymax between 0 and 1 with min < max; got {region:?}"
            )))
            }
        }
    }
    match (single("windowCenter")?, single("windowWidth")?) {
        (None, None) => {}
        (Some(center), Some(width)) => {
            let center: f64 = center
                .trim()
                .parse()
                .map_err(|_| ApiError::BadRequest(format!("invalid windowCenter {center:?}")))?;
            let width: f64 = width
                .trim()
                .parse()
                .ok()
                .filter(|w: &f64| *w > 0.0)
                .ok_or_else(|| ApiError::BadRequest(format!("invalid windowWidth {width:?}")))?;
            options.window = Some(Window {
                center,
                width,
                function: VoiFunction::Linear,
            });
        }
        _ => {
            return Err(ApiError::BadRequest(
                "windowCenter and windowWidth come together".into(),
            ))
        }
    }
    if let Some(quality) = single("imageQuality")? {
        options.quality = parse_quality(&quality)?;
    }
    let annotation = match (single("annotation")?, single("imageAnnotation")?) {
        (Some(a), None) | (None, Some(a)) => Some(a),
        (None, None) => None,
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "give annotation or imageAnnotation, not both".into(),
            ))
        }
    };
    if let Some(annotation) = annotation {
        let (known, unknown) = parse_annotation(&annotation)?;
        options.annotations = known;
        if !unknown.is_empty() {
            warning = Some(format!(
                "The following annotation values are not supported: {}",
                unknown.join(",")
            ));
        }
    }
    match (single("presentationUID")?, single("presentationSeriesUID")?) {
        (None, None) => {}
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "presentation states are not applied by this server".into(),
            ))
        }
        _ => {
            return Err(ApiError::BadRequest(
                "presentationUID and presentationSeriesUID come together".into(),
            ))
        }
    }
    let has_render_params = options != RenderOptions::default() || frame_number.is_some();
    if rendered.is_none() && has_render_params {
        return Err(ApiError::BadRequest(
            "rendering parameters do not apply to contentType=application/dicom".into(),
        ));
    }
    let transfer_syntax = match single("transferSyntax")? {
        Some(ts) if ts == "*" || transfer_syntax::looks_like_uid(&ts) => ts,
        Some(ts) => {
            return Err(ApiError::BadRequest(format!(
                "invalid transferSyntax {ts:?}"
            )))
        }
        None => transfer_syntax::EXPLICIT_VR_LE.to_string(),
    };
    Ok(WadoUriRequest {
        scope,
        rendered,
        default_type: !listed && !has_render_params,
        transfer_syntax,
        frame_number,
        options,
        warning,
        anonymize,
    })
}

/// How the instance goes out in `transfer_syntax`, or 406.
fn representation(
    instance: &crate::service::StoredInstance,
    transfer_syntax: &str,
) -> Result<wado::Representation, ApiError> {
    wado::representation_for(instance, transfer_syntax).ok_or_else(|| {
        ApiError::NotAcceptable(format!(
            "the instance is stored in {} and cannot be sent in {transfer_syntax}",
            instance.transfer_syntax_uid
        ))
    })
}

pub async fn retrieve(
    state: web::ReqData<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let parsed = parse(query_pairs(&request)?)?;
    let project = match (&state.research, parsed.anonymize) {
        (Some(project), _) => Some(project.clone()),
        (None, true) => Some(deid::wado_uri_project(&state.services).await?),
        (None, false) => None,
    };
    if let Some(project) = project {
        return anonymized(&state, &request, project, parsed).await;
    }
    let instance = wado::locate_one_for_reading(&state.services, parsed.scope).await?;
    // PS3.18 §9 (contentType): image/jpeg is the default for images only; an
    // object without pixel data (SR, encapsulated document, presentation state,
    // key object selection…) defaults to application/dicom.
    let is_image = instance.pixel_data_offset.is_some();
    let rendered = parsed.rendered.filter(|_| is_image || !parsed.default_type);
    if let Some(format) = rendered {
        let frames = instance.number_of_frames.unwrap_or(1).max(1) as u64;
        if let Some(n) = parsed.frame_number {
            if frames == 1 || n > frames {
                return Err(ApiError::BadRequest(format!(
                    "frameNumber {n} does not exist: this object has {frames} frame(s) and \
                     frameNumber applies to multi-frame objects only"
                )));
            }
        }
        let image = render::render_instance(
            &state.services,
            &instance,
            Some(parsed.frame_number.unwrap_or(1)),
            format,
            &parsed.options,
        )
        .await?;
        let mut response = HttpResponse::Ok();
        if let Some(warning) = parsed.warning {
            response.insert_header((actix_web::http::header::WARNING, state.warning(&warning)));
        }
        return Ok(response.content_type(format.media_type()).body(image));
    }
    let representation = representation(&instance, &parsed.transfer_syntax)?;
    let body = wado::instance_body(&state.services, &instance, representation).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/dicom")
        .streaming(body))
}

/// The object de-identified through `project` (`anonymize=yes`, or a caller
/// who may only receive de-identified data, whose UIDs are the project's).
/// Only as application/dicom: a rendered image could show burned-in text.
async fn anonymized(
    state: &AppState,
    request: &HttpRequest,
    project: std::sync::Arc<deid::Project>,
    parsed: WadoUriRequest,
) -> Result<HttpResponse, ApiError> {
    if parsed.rendered.is_some() && !parsed.default_type {
        return Err(if state.research.is_some() {
            ApiError::Forbidden(
                "a de-identified object is available as contentType=application/dicom only".into(),
            )
        } else {
            ApiError::BadRequest("anonymize=yes applies to contentType=application/dicom".into())
        });
    }
    let scope = if state.research.is_some() {
        deid::original_scope(&state.services, &project, parsed.scope).await?
    } else {
        parsed.scope
    };
    research::mark(request, &project, Some(scope.clone()));
    let instance = wado::locate_one_for_reading(&state.services, scope).await?;
    let representation = representation(&instance, &parsed.transfer_syntax)?;
    match deid::deidentified_instance(&state.services, &project, &instance, representation).await? {
        Deidentified::File { bytes, .. } => Ok(HttpResponse::Ok()
            .content_type("application/dicom")
            .body(bytes)),
        Deidentified::Excluded { reason } => Err(ApiError::Forbidden(format!(
            "this object cannot be served de-identified: {reason}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &[(&str, &str)]) -> Vec<(String, String)> {
        query
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn rendered_is_the_default_and_parameters_parse() {
        let ok = parse(pairs(&[
            ("requestType", "WADO"),
            ("studyUID", "1.2"),
            ("seriesUID", "1.2.1"),
            ("objectUID", "1.2.3"),
            ("frameNumber", "2"),
            ("rows", "64"),
            ("region", "0.25,0.25,0.75,0.75"),
            ("windowCenter", "40"),
            ("windowWidth", "400"),
            ("imageAnnotation", "patient"),
        ]))
        .unwrap();
        assert_eq!(ok.rendered, Some(ImageFormat::Jpeg));
        assert_eq!(ok.frame_number, Some(2));
        assert_eq!(ok.options.max_rows, Some(64));
        assert_eq!(ok.options.window.unwrap().width, 400.0);
        assert_eq!(ok.options.annotations.len(), 1);
    }

    #[test]
    fn parses_and_rejects_per_section_9() {
        let ok = parse(pairs(&[
            ("objectUID", "1.2.3"),
            ("requestType", "WADO"),
            ("studyUID", "1.2"),
            ("seriesUID", "1.2.1"),
            ("contentType", "application/dicom"),
            ("transferSyntax", "*"),
        ]))
        .unwrap();
        assert_eq!(ok.rendered, None);
        assert_eq!(ok.transfer_syntax, "*");
        let base = [
            ("requestType", "WADO"),
            ("studyUID", "1.2"),
            ("seriesUID", "1.2.1"),
            ("objectUID", "1.2.3"),
        ];
        for extra in [
            vec![("requestType", "WADO")],
            vec![("transferSyntax", "abc")],
            vec![(
                "contentType",
                "application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
            )],
            vec![("anonymize", "no")],
            vec![("anonymize", "yes"), ("anonymize", "yes")],
            vec![
                ("contentType", "application/dicom"),
                ("windowCenter", "40"),
                ("windowWidth", "400"),
            ],
            vec![("windowCenter", "40")],
            vec![("region", "0.5,0.5,0.2,0.9")],
            vec![("region", "0,0,1")],
            vec![("imageQuality", "0")],
            vec![("rows", "-3")],
            vec![("contentType", "text/plain")],
        ] {
            let mut query: Vec<(&str, &str)> = base.to_vec();
            query.extend(extra.iter().copied());
            assert!(parse(pairs(&query)).is_err(), "{extra:?}");
        }
        assert!(
            parse(pairs(&[("requestType", "WADO"), ("studyUID", "1.2")])).is_err(),
            "UIDs required"
        );
        assert!(parse(pairs(&[
            ("requestType", "XYZ"),
            ("studyUID", "1.2"),
            ("seriesUID", "1"),
            ("objectUID", "2")
        ]))
        .is_err());
    }
}
