//! `[limits]`: every bound on what one request may make the server spend. Each
//! is refused with a clear 4xx (or 503 with `Retry-After` for load) before the
//! work is done. The defaults are the safe ones; the Conformance Statement's
//! "Limits" table lists them all.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Sequences nested inside each other in one data set (binary DICOM, DICOM
    /// JSON and XML metadata alike).
    pub max_sequence_depth: usize,
    /// Elements (items included) in one DICOM header.
    pub max_elements: usize,
    /// Largest inflated size of a Deflated data set, in bytes.
    pub max_inflated_bytes: u64,
    /// Largest inflated size of a Deflated data set as a multiple of its size.
    pub max_inflate_ratio: u64,
    /// Parts in one multipart request body (STOW-RS).
    pub max_parts: usize,
    /// Largest metadata part (DICOM JSON or XML) of a STOW-RS request, in bytes.
    pub max_metadata_part_bytes: u64,
    /// All metadata parts of one STOW-RS request together, in bytes.
    pub max_metadata_bytes: u64,
    /// Attributes that may take their value from one bulk data part.
    pub max_bulk_references: usize,
    /// Frame numbers in one frame list (WADO-RS frames, rendered frames).
    pub max_frames_per_request: usize,
    /// Pixels of one rendered image or thumbnail (width × height), and of one
    /// decoded source frame.
    pub max_render_pixels: u64,
    /// Decoded pixel bytes one rendering may hold (every frame of an animated
    /// GIF together).
    pub max_render_bytes: u64,
    /// Decoded pixel bytes all renderings and transcodings in flight may hold
    /// together; beyond it requests get 503 with `Retry-After`.
    pub max_decoding_bytes: u64,
    /// Largest `offset` of a search.
    pub max_query_offset: u64,
    /// `includefield` names in one search.
    pub max_includefields: usize,
    /// Longest request target (path and query), in bytes; longer gets 414.
    pub max_url_bytes: usize,
    /// Requests being served at once, all tenants together; more get 503.
    pub max_in_flight: usize,
    /// Requests being served at once for one tenant; more get 503.
    pub max_in_flight_per_tenant: usize,
    /// `Retry-After` of a 503 for load, in seconds.
    pub retry_after_secs: u64,
    /// A request body that sends nothing for this long ends with 408, in seconds.
    pub body_idle_timeout_secs: u64,
    /// Time a client has to send a request's headers, in seconds (slow clients
    /// do not hold a worker).
    pub header_timeout_secs: u64,
    /// How long an idle kept-alive connection stays open, in seconds.
    pub keep_alive_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        // The parsing bounds have one set of defaults, the DICOM layer's.
        let parse = crate::dicom::guard::ParseLimits::default();
        Self {
            max_sequence_depth: parse.max_depth,
            max_elements: parse.max_elements,
            max_inflated_bytes: parse.max_inflated_bytes,
            max_inflate_ratio: parse.max_inflate_ratio,
            max_parts: 10_000,
            max_metadata_part_bytes: 64 * 1024 * 1024,
            max_metadata_bytes: 256 * 1024 * 1024,
            max_bulk_references: 16,
            max_frames_per_request: 1_000,
            max_render_pixels: 16 * 1024 * 1024,
            max_render_bytes: 512 * 1024 * 1024,
            max_decoding_bytes: 1024 * 1024 * 1024,
            max_query_offset: 10_000_000,
            max_includefields: 256,
            max_url_bytes: 8 * 1024,
            max_in_flight: 256,
            max_in_flight_per_tenant: 128,
            retry_after_secs: 2,
            body_idle_timeout_secs: 30,
            header_timeout_secs: 10,
            keep_alive_secs: 30,
        }
    }
}

impl LimitsConfig {
    /// The bounds of DICOM parsing.
    pub fn parse_limits(&self) -> crate::dicom::guard::ParseLimits {
        crate::dicom::guard::ParseLimits {
            max_depth: self.max_sequence_depth,
            max_elements: self.max_elements,
            max_inflated_bytes: self.max_inflated_bytes,
            max_inflate_ratio: self.max_inflate_ratio,
        }
    }
}
