//! Accept negotiation (src/http/protocol/accept.rs) and the `Range` header of WADO-RS
//! bulk data (src/http/protocol/range.rs `byte_range`).
//!
//! Input: eight bytes of body size, then lines: the Accept header, an `accept`
//! query parameter, the Range header.
//! Property: a range that is granted lies inside the body and is not empty.
#![no_main]

use kastell::http::protocol::accept::{
    acceptable, negotiate_bulk, negotiate_instances, negotiate_model, parse_media_range,
};
use kastell::http::protocol::multipart::parse_related_content_type;
use kastell::http::protocol::range::byte_range;
use kastell_fuzz::take_u64;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (total, rest) = take_u64(data);
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let mut lines = text.split('\n');
    let header = lines.next();
    let query: Vec<String> = lines.next().map(str::to_string).into_iter().collect();
    let range = lines.next().unwrap_or_default();

    for ranges in [acceptable(&[], header), acceptable(&query, header)] {
        for range in &ranges {
            assert!((0.0..=1.0).contains(&range.q) && range.q > 0.0);
            assert!(range.essence.contains('/'));
        }
        let _ = negotiate_instances(&ranges, true);
        let _ = negotiate_instances(&ranges, false);
        let _ = negotiate_model(&ranges, true);
        let _ = negotiate_model(&ranges, false);
        let _ = negotiate_bulk(&ranges);
    }
    if let Some(header) = header {
        if let Some(media) = parse_media_range(header) {
            // The essence it keeps reads back as itself.
            let again = parse_media_range(&media.essence).expect("an essence parses");
            assert_eq!(again.essence, media.essence);
        }
        let _ = parse_related_content_type(Some(header));
    }

    // Small bodies too, where the edge cases are.
    for total in [total, total % 4096, 0, 1] {
        if let Ok(Some(granted)) = byte_range(range, total) {
            assert!(
                granted.start < granted.end && granted.end <= total,
                "{range:?} of {total} bytes gave {granted:?}"
            );
        }
    }
});
