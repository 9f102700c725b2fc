//! Rendering a frame for people (PS3.18 §8.3.5, rendered and thumbnail resources):
//! modality rescale or Modality LUT, VOI windowing (linear, linear-exact, sigmoid
//! per PS3.3 C.11.2.1) or VOI LUT, MONOCHROME1 inversion, colour conversion and palettes, then region,
//! viewport and annotation, in that order (DICOMWEB.md rule 96), and encoding as
//! JPEG, PNG or GIF.

mod annotate;
mod encode;
mod lut;
mod presentation;
mod sizing;

use dicom_object::InMemDicomObject;
use image::DynamicImage;

use super::pixels::{self, FramePixels};
use super::DicomError;

use annotate::annotate;
use presentation::presentation;
use sizing::{apply_maxima, apply_region, apply_viewport};

pub use encode::encode;

/// The image types rendered resources are offered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg,
    Png,
    Gif,
}

impl ImageFormat {
    pub fn media_type(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Png => "image/png",
            ImageFormat::Gif => "image/gif",
        }
    }

    pub fn from_media_type(essence: &str) -> Option<Self> {
        match essence {
            "image/jpeg" => Some(ImageFormat::Jpeg),
            "image/png" => Some(ImageFormat::Png),
            "image/gif" => Some(ImageFormat::Gif),
            _ => None,
        }
    }
}

/// The VOI LUT functions of PS3.3 C.11.2.1.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoiFunction {
    Linear,
    LinearExact,
    Sigmoid,
}

impl VoiFunction {
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "linear" => Some(VoiFunction::Linear),
            "linear-exact" => Some(VoiFunction::LinearExact),
            "sigmoid" => Some(VoiFunction::Sigmoid),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub center: f64,
    pub width: f64,
    pub function: VoiFunction,
}

impl Window {
    /// Maps a modality value to 0–255 (PS3.3 C.11.2.1.2.1 and C.11.2.1.3).
    pub fn apply(&self, x: f64) -> f64 {
        let (c, w) = (self.center, self.width);
        let y = match self.function {
            VoiFunction::Linear => {
                let w = w.max(1.0);
                if x <= c - 0.5 - (w - 1.0) / 2.0 {
                    0.0
                } else if x > c - 0.5 + (w - 1.0) / 2.0 {
                    255.0
                } else {
                    ((x - (c - 0.5)) / (w - 1.0) + 0.5) * 255.0
                }
            }
            VoiFunction::LinearExact => {
                let w = w.max(f64::MIN_POSITIVE);
                ((x - c) / w + 0.5) * 255.0
            }
            VoiFunction::Sigmoid => {
                255.0 / (1.0 + (-4.0 * (x - c) / w.max(f64::MIN_POSITIVE)).exp())
            }
        };
        y.clamp(0.0, 255.0)
    }
}

/// `viewport=vw,vh[,sx,sy,sw,sh]`: the source rectangle (negative sizes flip) and
/// the box the result is scaled to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Viewport {
    pub width: u32,
    pub height: u32,
    pub source: Option<SourceRect>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceRect {
    pub x: i64,
    pub y: i64,
    /// Absent: to the image edge. Negative: flip.
    pub width: Option<i64>,
    pub height: Option<i64>,
}

/// WADO-URI `region=xmin,ymin,xmax,ymax`, normalised to 0–1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Region {
    pub x_min: f64,
    pub y_min: f64,
    pub x_max: f64,
    pub y_max: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Annotation {
    Patient,
    Technique,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RenderOptions {
    pub window: Option<Window>,
    pub region: Option<Region>,
    pub viewport: Option<Viewport>,
    /// WADO-URI `rows` / `columns`: maxima, aspect ratio kept.
    pub max_rows: Option<u32>,
    pub max_columns: Option<u32>,
    pub quality: u8,
    pub annotations: Vec<Annotation>,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            window: None,
            region: None,
            viewport: None,
            max_rows: None,
            max_columns: None,
            quality: 90,
            annotations: Vec::new(),
        }
    }
}

/// Renders one frame of an instance (`header` is its data set without Pixel
/// Data) into an 8-bit image, after every step of `options`.
pub fn render_frame(
    header: &InMemDicomObject,
    frame: FramePixels,
    frame_number: u64,
    options: &RenderOptions,
) -> Result<DynamicImage, DicomError> {
    let image = pixels::with_decoded_frame(header, frame, |decoded| {
        presentation(header, decoded, options.window)
    })?;
    let image = apply_region(image, options.region);
    let image = apply_viewport(image, options.viewport)?;
    let image = apply_maxima(image, options.max_rows, options.max_columns);
    Ok(annotate(image, header, frame_number, &options.annotations))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_window_follows_ps3_3() {
        let window = Window {
            center: 40.0,
            width: 400.0,
            function: VoiFunction::Linear,
        };
        assert_eq!(window.apply(-1000.0), 0.0);
        assert_eq!(window.apply(1000.0), 255.0);
        // The centre maps to the middle of the output range.
        assert!((window.apply(40.0) - 127.82).abs() < 0.1);
        let exact = Window {
            function: VoiFunction::LinearExact,
            ..window
        };
        assert_eq!(exact.apply(40.0), 127.5);
        let sigmoid = Window {
            function: VoiFunction::Sigmoid,
            ..window
        };
        assert_eq!(sigmoid.apply(40.0), 127.5);
        assert!((sigmoid.apply(240.0) - 224.6).abs() < 0.1);
    }
}
