//! The Retrieve Capabilities transaction (PS3.18 §8.9, Annexes G and H):
//! `OPTIONS {prefix}` with an Accept header answers a WADL document (or the same
//! tree as JSON) generated from the route table. CORS preflight requests never
//! get here: the CORS middleware answers them first.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value as Json};

use crate::dicom::xml::escape;
use crate::http::endpoint::{self, Route};
use crate::http::error::ApiError;
use crate::http::protocol::accept::ranges;
use crate::http::state::AppState;

use crate::http::endpoint::WADL;
use crate::http::protocol::etag::with_etag;

/// A node of the resource tree: one path segment with its methods.
struct Node<'a> {
    segment: String,
    methods: Vec<&'a Route>,
    children: Vec<Node<'a>>,
}

fn tree<'a>(endpoints: &[&'a Route]) -> Node<'a> {
    let mut root = Node {
        segment: String::new(),
        methods: Vec::new(),
        children: Vec::new(),
    };
    for endpoint in endpoints {
        let mut node = &mut root;
        for segment in endpoint.path.trim_start_matches('/').split('/') {
            // `{path:.*}` is actix syntax; the description names the template.
            let segment = segment.split(':').next().unwrap_or(segment);
            let segment = if segment.starts_with('{') && !segment.ends_with('}') {
                format!("{segment}}}")
            } else {
                segment.to_string()
            };
            let index = match node.children.iter().position(|c| c.segment == segment) {
                Some(index) => index,
                None => {
                    node.children.push(Node {
                        segment,
                        methods: Vec::new(),
                        children: Vec::new(),
                    });
                    node.children.len() - 1
                }
            };
            node = &mut node.children[index];
        }
        node.methods.push(endpoint);
    }
    root
}

fn wadl_node(node: &Node, depth: usize, out: &mut String) {
    let pad = "  ".repeat(depth);
    out.push_str(&format!(
        "{pad}<resource path=\"{}\">\n",
        escape(&node.segment)
    ));
    if node.segment.starts_with('{') {
        let name = node.segment.trim_matches(['{', '}']);
        out.push_str(&format!(
            "{pad}  <param name=\"{}\" style=\"template\" type=\"xs:string\" required=\"true\"/>\n",
            escape(name)
        ));
    }
    for method in &node.methods {
        out.push_str(&format!(
            "{pad}  <method name=\"{}\" id=\"{}\">\n{pad}    <request>\n",
            method.method,
            method.name()
        ));
        for param in method.query {
            out.push_str(&format!(
                "{pad}      <param name=\"{}\" style=\"query\"/>\n",
                escape(param)
            ));
        }
        for media in method.consumes {
            out.push_str(&format!(
                "{pad}      <representation mediaType=\"{}\"/>\n",
                escape(media)
            ));
        }
        out.push_str(&format!("{pad}    </request>\n{pad}    <response>\n"));
        for media in method.produces {
            out.push_str(&format!(
                "{pad}      <representation mediaType=\"{}\"/>\n",
                escape(media)
            ));
        }
        out.push_str(&format!("{pad}    </response>\n{pad}  </method>\n"));
    }
    for child in &node.children {
        wadl_node(child, depth + 1, out);
    }
    out.push_str(&format!("{pad}</resource>\n"));
}

/// The WADL description of `endpoints` served at `base`.
pub fn wadl(endpoints: &[&Route], base: &str) -> String {
    let root = tree(endpoints);
    let mut out = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <application xmlns=\"http://wadl.dev.java.net/2009/02\" \
         xmlns:xs=\"http://www.w3.org/2001/XMLSchema\">\n",
    );
    out.push_str(&format!(
        "  <doc title=\"Kastell {}\">DICOMweb (PS3.18) Studies Service. Matching: fuzzymatching \
         supported for person names; emptyvaluematching supported; multiplevaluematching \
         supported for ModalitiesInStudy. Charsets: UTF-8.</doc>\n",
        env!("CARGO_PKG_VERSION")
    ));
    out.push_str(&format!("  <resources base=\"{}/\">\n", escape(base)));
    for child in &root.children {
        wadl_node(child, 2, &mut out);
    }
    out.push_str("  </resources>\n</application>\n");
    out
}

fn json_node(node: &Node) -> Json {
    json!({
        "path": node.segment,
        "method": node.methods.iter().map(|m| json!({
            "name": m.method.as_str(),
            "id": m.name(),
            "request": {
                "param": m.query.iter().map(|p| json!({"name": p, "style": "query"})).collect::<Vec<_>>(),
                "representation": m.consumes.iter().map(|t| json!({"mediaType": t})).collect::<Vec<_>>(),
            },
            "response": {
                "representation": m.produces.iter().map(|t| json!({"mediaType": t})).collect::<Vec<_>>(),
            },
        })).collect::<Vec<_>>(),
        "resource": node.children.iter().map(json_node).collect::<Vec<_>>(),
    })
}

/// The same tree as JSON.
pub fn json_description(endpoints: &[&Route], base: &str) -> Json {
    let root = tree(endpoints);
    json!({
        "application": {
            "doc": {
                "title": format!("Kastell {}", env!("CARGO_PKG_VERSION")),
                "fuzzymatching": true,
                "emptyvaluematching": true,
                "multiplevaluematching": true,
                "charsets": ["UTF-8"],
            },
            "resources": {
                "base": format!("{base}/"),
                "resource": root.children.iter().map(json_node).collect::<Vec<_>>(),
            }
        }
    })
}

pub async fn describe(
    state: web::ReqData<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let as_json = ranges(&request)?
        .iter()
        .find_map(|r| match r.essence.as_str() {
            WADL | "application/xml" | "text/xml" | "*/*" | "application/*" => Some(false),
            "application/json" | "application/dicom+json" => Some(true),
            _ => None,
        })
        .ok_or_else(|| {
            ApiError::NotAcceptable(format!(
                "the capabilities are described as {WADL} or application/json"
            ))
        })?;
    let endpoints: Vec<&Route> = endpoint::transactions().collect();
    let base = state.base_url(&request);
    let (content_type, body) = if as_json {
        (
            "application/json",
            json_description(&endpoints, &base).to_string(),
        )
    } else {
        (WADL, wadl(&endpoints, &base))
    };
    Ok(with_etag(&request, content_type, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_description_lists_every_routed_endpoint() {
        let endpoints: Vec<&Route> = endpoint::transactions().collect();
        let wadl = wadl(&endpoints, "http://archive.example/dicomweb");
        assert_eq!(wadl.matches("<application").count(), 1);
        assert_eq!(wadl.matches("<resources ").count(), 1);
        for endpoint in &endpoints {
            assert!(
                wadl.contains(&format!("id=\"{}\"", endpoint.name())),
                "{} missing",
                endpoint.name()
            );
        }
        assert!(wadl.contains("<resource path=\"frames\">"));
        assert!(wadl.contains("<resource path=\"{path}\">"));
        let json = json_description(&endpoints, "http://archive.example/dicomweb");
        assert_eq!(
            json["application"]["resources"]["resource"][0]["path"],
            "studies"
        );
    }
}
