//! WADO-URI (PS3.18 §9): `GET {wado_uri_path}?requestType=WADO&studyUID=…&seriesUID=…&objectUID=…`.
//! `contentType=application/dicom` returns the instance as one PS3.10 file;
//! rendered types are not produced yet and answer 406.

use actix_web::{web, HttpRequest, HttpResponse};

use super::error::ApiError;
use super::{query_pairs, AppState};
use crate::dicom::transfer_syntax;
use crate::index::Scope;
use crate::service::wado;

/// The parameters of one WADO-URI request.
#[derive(Debug, PartialEq, Eq)]
struct WadoUriRequest {
    scope: Scope,
    wants_dicom: bool,
    transfer_syntax: String,
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
    if let Some(anonymize) = single("anonymize")? {
        return Err(ApiError::BadRequest(if anonymize == "yes" {
            "anonymize=yes is not supported by this server".into()
        } else {
            format!("anonymize must be yes, got {anonymize:?}")
        }));
    }
    let content_types = single("contentType")?.unwrap_or_default();
    let mut wants_dicom = false;
    for media in content_types
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        if media.contains(';') {
            return Err(ApiError::BadRequest(
                "contentType takes media types without parameters (no transfer-syntax or charset)"
                    .into(),
            ));
        }
        if media.eq_ignore_ascii_case("application/dicom") {
            wants_dicom = true;
        }
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
        wants_dicom,
        transfer_syntax,
    })
}

pub async fn retrieve(
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let parsed = parse(query_pairs(&request)?)?;
    if !parsed.wants_dicom {
        return Err(ApiError::NotAcceptable(
            "rendered WADO-URI responses are not produced yet; ask for contentType=application/dicom".into(),
        ));
    }
    let instance = wado::locate_one(&state.services, parsed.scope).await?;
    let representation =
        wado::representation_for(&instance.transfer_syntax_uid, &parsed.transfer_syntax)
            .ok_or_else(|| {
                ApiError::NotAcceptable(format!(
                    "the instance is stored in {} and cannot be sent in {}",
                    instance.transfer_syntax_uid, parsed.transfer_syntax
                ))
            })?;
    let body = wado::instance_body(&state.services, &instance, representation).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/dicom")
        .streaming(body))
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
        assert!(ok.wants_dicom);
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
            vec![("anonymize", "yes")],
            vec![("anonymize", "no")],
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
