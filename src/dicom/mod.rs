//! DICOM handling as pure functions: locating the header of a PS3.10 stream, extracting
//! the attributes the index needs, the DICOM JSON model (PS3.18 Annex F), transfer
//! syntax rules, and the text rules of matching (PN folding, DA/TM normalisation).

pub mod attributes;
pub mod charset;
pub mod compose;
pub mod deid;
pub mod dicomdir;
pub mod document;
pub mod element;
pub mod files;
pub mod fragments;
pub mod guard;
pub mod header;
pub mod instance;
#[cfg(feature = "jpeg-12bit")]
pub mod jpeg12;
pub mod json;
pub mod pixels;
pub mod render;
pub mod text;
pub mod transfer_syntax;
pub mod xml;

pub use dicom_core::Tag;

#[derive(Debug, thiserror::Error)]
pub enum DicomError {
    #[error("not a DICOM PS3.10 stream: {0}")]
    NotDicom(&'static str),
    #[error("the DICOM stream is truncated")]
    Truncated,
    #[error("malformed DICOM data: {0}")]
    Malformed(String),
    #[error("the DICOM header (everything before Pixel Data) exceeds {0} bytes")]
    HeaderTooLarge(usize),
    #[error("required attribute {0} is missing or empty")]
    MissingAttribute(&'static str),
    #[error("unsupported transfer syntax {0}")]
    UnsupportedTransferSyntax(String),
    #[error("cannot encode the object: {0}")]
    Encode(String),
    /// Rows, Columns, samples, bits or NumberOfFrames promise more pixel data
    /// than the object holds.
    #[error("the pixel description does not match Pixel Data: {0}")]
    PixelMismatch(String),
    #[error("the requested region lies outside the image")]
    OutsideImage,
    /// The stored pixel data cannot be decoded by this build (e.g. 12-bit JPEG).
    #[error("this server cannot decode the stored pixel data: {0}")]
    CannotDecode(String),
}
