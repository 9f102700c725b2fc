//! The OpenAPI 3.1 description of the site, `GET {prefix}/openapi.json`, generated
//! from the route table and the site's other resources (the same lists `configure`
//! registers, so it cannot drift from what is routed): a path per resource with its
//! template parameters typed (UIDs, frame lists), the query parameters each
//! endpoint reads, request bodies by what it consumes, and responses by what it
//! produces with the status codes the server answers. The test command runs
//! schemathesis against it (`tests/api/run.sh`).

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Map, Value as Json};

use crate::http::endpoint::{self, Endpoint, Mount, Route};
use crate::http::protocol::etag::with_etag;
use crate::http::state::AppState;
use crate::http::state::Site;

/// The endpoint name of this description (not "Retrieve…": fetching it is not a
/// retrieval of patient data and is not audited as one).
pub const NAME: &str = "OpenApiDescription";

/// A DICOM UID as the paths take it (PS3.5 §9.1).
const UID_PATTERN: &str = r"^[0-9]+(\.[0-9]+)*$";
/// A frame list: frame numbers from 1, comma-separated (PS3.18 §10.4.1.1.3).
const FRAME_LIST_PATTERN: &str = r"^[1-9][0-9]*(,[1-9][0-9]*)*$";
/// Errors are HTML Status Reports (PS3.18 §8.6.3).
const ERROR_TYPE: &str = "text/html";

/// Where the site's parts are, as the client reached them.
pub struct Bases<'a> {
    /// Scheme, host and any path of the public URL: the `servers` entry.
    pub server: &'a str,
    /// The DICOMweb prefix, with the tenant part for another tenant's service.
    pub prefix: &'a str,
    /// The WADO-URI path, likewise.
    pub wado_uri: &'a str,
}

/// `GET {prefix}/openapi.json`.
pub async fn describe(
    state: web::ReqData<AppState>,
    site: web::Data<Site>,
    request: HttpRequest,
) -> HttpResponse {
    let base = state.base_url(&request);
    let server = base.strip_suffix(&state.path_prefix).unwrap_or(&base);
    // `/tenants/{t}` for another tenant's service, empty for the default tenant.
    let tenant = state
        .path_prefix
        .strip_suffix(&state.route_prefix)
        .unwrap_or("");
    let wado_uri = format!("{tenant}{}", site.wado_uri_path);
    let bases = Bases {
        server,
        prefix: &state.path_prefix,
        wado_uri: &wado_uri,
    };
    let document = document(endpoint::table(), &bases);
    with_etag(&request, "application/json", document.to_string())
}

/// The document for the routes of `table`: the site's resources first, then
/// the DICOMweb transactions.
pub fn document(table: &[Route], bases: &Bases) -> Json {
    let all = table
        .iter()
        .filter(|r| !r.endpoint.is_transaction())
        .chain(table.iter().filter(|r| r.endpoint.is_transaction()))
        .map(|r| (r.mount, r));
    let mut paths = Map::new();
    let mut operation_ids: Vec<String> = Vec::new();
    for (mount, endpoint) in all {
        let (path, names) = template(endpoint.path);
        let path = match mount {
            Mount::Prefix => format!("{}{path}", bases.prefix),
            Mount::WadoUri => bases.wado_uri.to_string(),
            Mount::Root => path,
        };
        // Names repeat where one transaction is mounted at two paths (STOW-RS with
        // and without a study, the capabilities with and without the slash).
        let seen = operation_ids
            .iter()
            .filter(|id| id.split('-').next() == Some(endpoint.name()))
            .count();
        let operation_id = match seen {
            0 => endpoint.name().to_string(),
            n => format!("{}-{}", endpoint.name(), n + 1),
        };
        operation_ids.push(operation_id.clone());
        let mut parameters: Vec<Json> = names.iter().map(|name| path_parameter(name)).collect();
        parameters.extend(endpoint.query.iter().map(|name| {
            if endpoint.endpoint == Endpoint::ChangeFeed && *name == "limit" {
                // At most `events.max_page` (default 1000); more is a 400.
                json!({"name": "limit", "in": "query", "required": false,
                    "schema": {"type": "integer", "minimum": 1}})
            } else {
                query_parameter(name)
            }
        }));
        let mut operation = json!({
            "operationId": operation_id,
            "summary": endpoint.name(),
            "tags": [match mount {
                Mount::Prefix => "DICOMweb",
                Mount::WadoUri => "WADO-URI",
                Mount::Root => "Operations",
            }],
            "parameters": parameters,
            "responses": responses(mount, endpoint),
        });
        if mount == Mount::Root && !endpoint.path.starts_with("/admin") {
            // The health checks and the metrics need no credentials.
            operation["security"] = json!([]);
        }
        if !endpoint.consumes.is_empty() {
            operation["requestBody"] = json!({
                "required": true,
                "content": endpoint.consumes.iter()
                    .map(|media| (media.to_string(), json!({"schema": binary()})))
                    .collect::<Map<_, _>>(),
            });
        }
        if let Some(item) = paths
            .entry(path)
            .or_insert_with(|| json!({}))
            .as_object_mut()
        {
            item.insert(endpoint.method.as_str().to_lowercase(), operation);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Kastell",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "DICOMweb (PS3.18) Studies Service, WADO-URI, health checks and \
                metrics, generated from the route table the server registers its routes from. \
                Matching keys of the searches are attributes by keyword or tag; \
                errors are HTML Status Reports (PS3.18 §8.6.3).",
        },
        "servers": [{"url": bases.server}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "apiKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`ApiKey <key>`",
                },
            },
        },
        // Anonymous access is what the configuration grants.
        "security": [{}, {"bearer": []}, {"apiKey": []}],
    })
}

/// An actix path to an OpenAPI template and its parameter names:
/// `/bulkdata/{path:.*}` → `/bulkdata/{path}`, `["path"]`.
fn template(path: &str) -> (String, Vec<&str>) {
    let mut names = Vec::new();
    let segments: Vec<String> = path
        .split('/')
        .map(|segment| match segment.strip_prefix('{') {
            Some(inner) => {
                let name = inner
                    .trim_end_matches('}')
                    .split(':')
                    .next()
                    .unwrap_or(inner);
                names.push(name);
                format!("{{{name}}}")
            }
            None => segment.to_string(),
        })
        .collect();
    (segments.join("/"), names)
}

fn uid(description: &str) -> Json {
    json!({
        "type": "string",
        "pattern": UID_PATTERN,
        "maxLength": 64,
        "description": description,
    })
}

fn binary() -> Json {
    json!({"type": "string", "format": "binary"})
}

fn path_parameter(name: &str) -> Json {
    let schema = match name {
        "study" => uid("Study Instance UID"),
        "series" => uid("Series Instance UID"),
        "instance" => uid("SOP Instance UID"),
        "frames" => json!({
            "type": "string",
            "pattern": FRAME_LIST_PATTERN,
            "description": "frame numbers from 1, comma-separated",
        }),
        "path" => json!({
            "type": "string",
            "minLength": 1,
            "description": "the bulk data's place in the instance, as its BulkDataURI names it",
        }),
        other => json!({"type": "string", "minLength": 1, "description": other}),
    };
    json!({"name": name, "in": "path", "required": true, "schema": schema})
}

/// A query parameter of the route table (or of WADO-URI) with its type.
fn query_parameter(name: &str) -> Json {
    let string = || json!({"type": "string"});
    let boolean = || json!({"type": "boolean"});
    let count = |minimum: u32| json!({"type": "integer", "minimum": minimum});
    let comma_list = |items: Json| json!({"type": "array", "items": items, "minItems": 1});
    if name == "{attributeID}" {
        // Any number of `{attributeID}={value}` pairs: an exploded object.
        let key =
            r"^([0-9A-Fa-f]{8}|[A-Za-z][A-Za-z0-9]*)(\.([0-9A-Fa-f]{8}|[A-Za-z][A-Za-z0-9]*))*$";
        return json!({
            "name": "attributes",
            "in": "query",
            "style": "form",
            "explode": true,
            "description": "matching keys: {attributeID}={value}, the attribute by keyword \
                or tag, a sequence's by dotted path (PS3.18 §8.3.4.1)",
            "schema": {
                "type": "object",
                "properties": {
                    "PatientName": string(),
                    "PatientID": string(),
                    "StudyDate": string(),
                    "AccessionNumber": string(),
                    "ModalitiesInStudy": string(),
                    "StudyInstanceUID": uid("Study Instance UID"),
                    "SeriesInstanceUID": uid("Series Instance UID"),
                },
                "propertyNames": {"pattern": key},
                "additionalProperties": string(),
            },
        });
    }
    let (schema, style) = match name {
        "includefield" => (comma_list(string()), Some("form")),
        "fuzzymatching" | "emptyvaluematching" | "multiplevaluematching" => (boolean(), None),
        "limit" => (count(0), None),
        // The change feed's: a sequence number.
        "after" => (count(0), None),
        // At most `limits.max_query_offset` (default 10 000 000); more is a 400.
        "offset" => (count(0), None),
        "quality" | "imageQuality" => (
            json!({"type": "integer", "minimum": 1, "maximum": 100}),
            None,
        ),
        "rows" | "columns" | "frameNumber" => (count(1), None),
        "annotation" => (
            comma_list(json!({"type": "string", "enum": ["patient", "technique"]})),
            Some("form"),
        ),
        "iccprofile" => (
            json!({"type": "string", "enum": ["no", "yes", "srgb", "adobergb", "rommrgb"]}),
            None,
        ),
        "viewport" => (
            json!({"type": "string", "pattern": r"^[0-9]+,[0-9]+(,-?[0-9.]*,-?[0-9.]*,-?[0-9.]+,-?[0-9.]+)?$"}),
            None,
        ),
        "window" => (
            json!({"type": "string", "pattern": r"^-?[0-9.]+,[0-9.]+(,(linear|linear-exact|sigmoid))?$"}),
            None,
        ),
        "region" => (
            json!({"type": "string", "pattern": r"^[0-9.]+,[0-9.]+,[0-9.]+,[0-9.]+$"}),
            None,
        ),
        "windowCenter" | "windowWidth" => (json!({"type": "number"}), None),
        "requestType" => (json!({"type": "string", "enum": ["WADO"]}), None),
        "studyUID" => (uid("Study Instance UID"), None),
        "seriesUID" => (uid("Series Instance UID"), None),
        "objectUID" => (uid("SOP Instance UID"), None),
        "transferSyntax" | "presentationUID" | "presentationSeriesUID" => (uid("a UID"), None),
        _ => (string(), None),
    };
    let required = matches!(name, "requestType" | "studyUID" | "seriesUID" | "objectUID");
    let mut parameter =
        json!({"name": name, "in": "query", "required": required, "schema": schema});
    if let Some(style) = style {
        parameter["style"] = json!(style);
        parameter["explode"] = json!(false);
    }
    parameter
}

/// A status code, what it means, and the media types of its body (`None`: the
/// error document, or no body for a success).
type Status = (u16, &'static str, Option<Map<String, Json>>);

/// The responses of an endpoint: its successes with what it produces, and the
/// errors it can answer.
fn responses(mount: Mount, endpoint: &Route) -> Json {
    let produced = |object: bool| {
        endpoint
            .produces
            .iter()
            .map(|media| {
                let schema = match *media {
                    "application/dicom+json" if object => json!({"type": "object"}),
                    "application/dicom+json" => {
                        json!({"type": "array", "items": {"type": "object"}})
                    }
                    // The change feed's page is a list of entries.
                    "application/json" if endpoint.endpoint == Endpoint::ChangeFeed => {
                        json!({"type": "array", "items": {"type": "object"}})
                    }
                    "application/json" => json!({"type": "object"}),
                    "text/plain" => json!({"type": "string"}),
                    _ => binary(),
                };
                (media.to_string(), json!({"schema": schema}))
            })
            .collect::<Map<_, _>>()
    };
    let search = endpoint.query.contains(&"{attributeID}");
    // WADO-RS single-part retrievals of stored bytes honour `Range`; rendered ones
    // and WADO-URI do not.
    let ranged = mount == Mount::Prefix
        && !endpoint.query.contains(&"viewport")
        && endpoint
            .produces
            .iter()
            .any(|m| *m == "application/dicom" || *m == "application/octet-stream");
    let mut codes: Vec<Status> = Vec::new();
    match endpoint.method.as_str() {
        "POST" => {
            codes.push((200, "every instance stored", Some(produced(true))));
            codes.push((
                202,
                "some instances stored, others failed",
                Some(produced(true)),
            ));
            codes.push((409, "no instance stored", Some(produced(true))));
            codes.push((408, "the body stopped arriving", None));
            codes.push((507, "the blob store is full", None));
            codes.push((413, "the request exceeds a configured limit", None));
            codes.push((
                415,
                "the request body is not of a type the transaction takes",
                None,
            ));
        }
        "DELETE" => {
            codes.push((204, "deleted", None));
            codes.push((410, "already deleted", None));
        }
        "OPTIONS" => {
            codes.push((200, "the description", Some(produced(false))));
            codes.push((304, "the description has the ETag of If-None-Match", None));
        }
        _ => {
            codes.push((200, "the resource", Some(produced(false))));
            if search {
                codes.push((204, "no match", None));
            }
            if ranged {
                codes.push((206, "the byte range asked for", Some(produced(false))));
                codes.push((416, "the byte range is outside the resource", None));
            }
            if endpoint.path == "/openapi.json" {
                codes.push((304, "the document has the ETag of If-None-Match", None));
            }
        }
    }
    let dicomweb = mount != Mount::Root;
    if dicomweb {
        codes.push((400, "a parameter or the path is invalid", None));
        codes.push((401, "credentials are missing or invalid", None));
        codes.push((403, "the credentials do not allow this", None));
        codes.push((404, "no such resource", None));
        if !endpoint.produces.is_empty() {
            codes.push((
                406,
                "none of the accepted media types can be produced",
                None,
            ));
        }
        if endpoint.method.as_str() == "GET" && endpoint.path != "/openapi.json" {
            codes.push((410, "the data was deleted or erased", None));
        }
        codes.push((414, "the URL is too long", None));
        codes.push((
            503,
            "busy or a dependency is unavailable; retry later",
            None,
        ));
    } else if endpoint.path.starts_with("/admin") {
        codes.push((401, "credentials are missing or invalid", None));
        codes.push((403, "the credentials do not allow this", None));
    } else if endpoint.path == "/readyz" {
        codes.push((503, "not ready or shutting down", Some(produced(false))));
    }
    codes.sort_by_key(|(code, _, _)| *code);
    codes.dedup_by_key(|(code, _, _)| *code);
    codes
        .into_iter()
        .map(|(code, description, content)| {
            let content = content.unwrap_or_else(|| {
                if code >= 400 {
                    [(
                        ERROR_TYPE.to_string(),
                        json!({"schema": {"type": "string"}}),
                    )]
                    .into_iter()
                    .collect()
                } else {
                    Map::new()
                }
            });
            let mut response = json!({"description": description});
            if !content.is_empty() {
                response["content"] = Json::Object(content);
            }
            (code.to_string(), response)
        })
        .collect::<Map<_, _>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Json {
        document(
            endpoint::table(),
            &Bases {
                server: "http://archive.example",
                prefix: "/dicomweb",
                wado_uri: "/wado",
            },
        )
    }

    #[test]
    fn the_document_holds_every_routed_endpoint_and_nothing_else() {
        let document = sample();
        let mut expected: Vec<(String, String)> = endpoint::table()
            .iter()
            .map(|e| (e.mount, e))
            .map(|(mount, e)| {
                let path = match mount {
                    Mount::Prefix => format!("/dicomweb{}", template(e.path).0),
                    Mount::WadoUri => "/wado".to_string(),
                    Mount::Root => e.path.to_string(),
                };
                (path, e.method.as_str().to_lowercase())
            })
            .collect();
        expected.sort();
        let mut found: Vec<(String, String)> = document["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .map(move |method| (path.clone(), method.clone()))
            })
            .collect();
        found.sort();
        assert_eq!(found, expected);
        assert!(found.contains(&("/dicomweb/openapi.json".into(), "get".into())));
        assert!(found.contains(&("/healthz".into(), "get".into())));
    }

    #[test]
    fn operations_have_unique_ids_and_declare_their_template_parameters() {
        let document = sample();
        assert_eq!(document["openapi"], "3.1.0");
        let mut ids = Vec::new();
        for (path, item) in document["paths"].as_object().unwrap() {
            for operation in item.as_object().unwrap().values() {
                ids.push(operation["operationId"].as_str().unwrap().to_string());
                let declared: Vec<&str> = operation["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|p| p["in"] == "path")
                    .map(|p| p["name"].as_str().unwrap())
                    .collect();
                let in_template: Vec<&str> = path
                    .split('/')
                    .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                    .collect();
                assert_eq!(declared, in_template, "{path}");
                assert!(
                    operation["responses"]["200"].is_object()
                        || operation["responses"]["204"].is_object(),
                    "{path}"
                );
            }
        }
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count, "operationIds repeat");
    }

    #[test]
    fn uids_frames_and_queries_are_typed() {
        let document = sample();
        let frames = &document["paths"]
            ["/dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{frames}"]
            ["get"];
        let parameters = frames["parameters"].as_array().unwrap();
        assert_eq!(parameters[0]["schema"]["pattern"], UID_PATTERN);
        assert_eq!(parameters[0]["schema"]["maxLength"], 64);
        assert_eq!(parameters[3]["name"], "frames");
        assert_eq!(parameters[3]["schema"]["pattern"], FRAME_LIST_PATTERN);
        let search = &document["paths"]["/dicomweb/studies"]["get"];
        let names: Vec<&str> = search["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"attributes") && names.contains(&"limit"));
        assert!(search["responses"]["204"].is_object());
        let store = &document["paths"]["/dicomweb/studies"]["post"];
        assert!(
            store["requestBody"]["content"]["multipart/related; type=\"application/dicom\""]
                .is_object()
        );
        assert!(store["responses"]["409"].is_object());
        let wado = &document["paths"]["/wado"]["get"];
        assert_eq!(wado["parameters"][0]["name"], "requestType");
        assert_eq!(wado["parameters"][0]["required"], true);
    }
}
