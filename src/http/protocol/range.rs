//! HTTP Range requests (RFC 9110 §14) on single-part bulk data and frames: one
//! byte range is served as 206; several are answered whole, as RFC 9110 allows.

use actix_web::http::header;
use actix_web::HttpRequest;

use crate::http::error::ApiError;

/// A `Range: bytes=…` request against a body of `total` bytes: `Ok(None)` when
/// there is none (or several ranges, which we answer whole, as RFC 9110 allows).
pub fn requested_range(
    request: &HttpRequest,
    total: u64,
) -> Result<Option<std::ops::Range<u64>>, ApiError> {
    match request
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
    {
        Some(value) => byte_range(value, total),
        None => Ok(None),
    }
}

/// A `Range` header value against a body of `total` bytes, as [`requested_range`]
/// reads it.
pub fn byte_range(value: &str, total: u64) -> Result<Option<std::ops::Range<u64>>, ApiError> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (start, end) = spec.split_once('-').unwrap_or((spec, ""));
    let parse = |s: &str| s.trim().parse::<u64>().ok();
    let range = match (start.trim().is_empty(), end.trim().is_empty()) {
        (true, false) => {
            let suffix = parse(end).ok_or(ApiError::RangeNotSatisfiable(total))?;
            total.saturating_sub(suffix)..total
        }
        (false, _) => {
            let first = parse(start).ok_or(ApiError::RangeNotSatisfiable(total))?;
            let last = if end.trim().is_empty() {
                total.saturating_sub(1)
            } else {
                parse(end)
                    .ok_or(ApiError::RangeNotSatisfiable(total))?
                    .min(total.saturating_sub(1))
            };
            if first > last {
                return Err(ApiError::RangeNotSatisfiable(total));
            }
            first..last + 1
        }
        (true, true) => return Ok(None),
    };
    if range.start >= total || range.is_empty() {
        return Err(ApiError::RangeNotSatisfiable(total));
    }
    Ok(Some(range))
}
