//! The multipart/related reader of STOW-RS (src/http/protocol/multipart.rs for the
//! request's Content-Type, then multer over the body, as src/http/handlers/stow.rs runs
//! it), the body fed in arbitrary chunkings.
//!
//! Input: the Content-Type value up to the first `\n`, then the body.
//! Property: the parts read (headers and bytes) do not depend on the chunking.
#![no_main]

use bytes::Bytes;
use futures::executor::block_on;
use futures::stream;
use kastell::http::protocol::accept::acceptable;
use kastell::http::protocol::multipart::parse_related_content_type;
use kastell_fuzz::{chunks, split_seed};
use libfuzzer_sys::fuzz_target;

/// The request limit the reader runs with (small, so the limit path is reached).
const LIMIT: u64 = 1 << 20;

#[derive(Debug, PartialEq)]
struct Part {
    essence: Option<String>,
    transfer_syntax: Option<String>,
    location: Option<String>,
    content_id: Option<String>,
    body: Vec<u8>,
}

/// Reads every part; `Err` carries only whether the limit was hit (multer's
/// messages name positions that may differ with the chunking).
fn read(boundary: &str, pieces: Vec<&[u8]>) -> Result<Vec<Part>, bool> {
    let body = stream::iter(
        pieces
            .into_iter()
            .map(|p| Ok::<_, std::io::Error>(Bytes::copy_from_slice(p))),
    );
    let constraints =
        multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(LIMIT));
    let mut multipart = multer::Multipart::with_constraints(body, boundary, constraints);
    let limit = |e: multer::Error| matches!(e, multer::Error::StreamSizeExceeded { .. });
    block_on(async {
        let mut parts = Vec::new();
        while let Some(mut field) = multipart.next_field().await.map_err(limit)? {
            let header = |name: &str| {
                field
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.trim().to_string())
            };
            let mut part = Part {
                essence: field
                    .content_type()
                    .map(|m| m.essence_str().to_ascii_lowercase()),
                transfer_syntax: field
                    .content_type()
                    .and_then(|m| m.get_param("transfer-syntax"))
                    .map(|v| v.as_str().to_string()),
                location: header("content-location"),
                content_id: header("content-id"),
                body: Vec::new(),
            };
            while let Some(chunk) = field.chunk().await.map_err(limit)? {
                part.body.extend_from_slice(&chunk);
            }
            parts.push(part);
        }
        Ok(parts)
    })
}

fuzz_target!(|data: &[u8]| {
    let (seed, rest) = split_seed(data);
    let (content_type, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(content_type) = std::str::from_utf8(content_type) else {
        return;
    };
    let _ = acceptable(&[], Some(content_type));
    let Ok(related) = parse_related_content_type(Some(content_type)) else {
        return;
    };
    let at_once = read(&related.boundary, vec![body]);
    let chunked = read(&related.boundary, chunks(seed, body));
    match (&at_once, &chunked) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "the parts depend on the chunking"),
        (Err(_), Err(_)) => {}
        _ => panic!("one chunking reads the body, another fails: {at_once:?} / {chunked:?}"),
    }
});
