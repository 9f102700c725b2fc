//! Rendering a frame for people (PS3.18 §8.3.5, rendered and thumbnail resources):
//! modality rescale or Modality LUT, VOI windowing (linear, linear-exact, sigmoid
//! per PS3.3 C.11.2.1) or VOI LUT, MONOCHROME1 inversion, colour conversion and palettes, then region,
//! viewport and annotation, in that order (DICOMWEB.md rule 96), and encoding as
//! JPEG, PNG or GIF.

use std::io::Cursor;

use dicom_core::value::Value;
use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_pixeldata::{ConvertOptions, DecodedPixelData, ModalityLutOption, VoiLutOption};
use image::{DynamicImage, GrayImage, ImageEncoder, Rgb, RgbImage};

use super::instance::text;
use super::pixels::{self, FramePixels};
use super::DicomError;

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

fn float_list(dataset: &InMemDicomObject, tag: Tag) -> Vec<f64> {
    text(dataset, tag)
        .map(|v| {
            v.split('\\')
                .filter_map(|p| p.trim().parse::<f64>().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The window stored in the instance: the first WindowCenter/Width pair.
fn stored_window(header: &InMemDicomObject) -> Option<Window> {
    let center = *float_list(header, tags::WINDOW_CENTER).first()?;
    let width = *float_list(header, tags::WINDOW_WIDTH).first()?;
    let function = text(header, tags::VOILUT_FUNCTION)
        .and_then(|f| VoiFunction::parse(&f))
        .unwrap_or(VoiFunction::Linear);
    (width > 0.0).then_some(Window {
        center,
        width,
        function,
    })
}

/// The presentation step: pixel values to displayable 8-bit grey or RGB.
fn presentation(
    header: &InMemDicomObject,
    decoded: &DecodedPixelData<'_>,
    window: Option<Window>,
) -> Result<DynamicImage, DicomError> {
    let (columns, rows) = (decoded.columns(), decoded.rows());
    let photometric = decoded.photometric_interpretation().to_string();
    let photometric = photometric.trim();
    if photometric == "PALETTE COLOR" {
        let indices: Vec<u16> = decoded
            .to_vec_frame_with_options(
                0,
                &ConvertOptions::new()
                    .with_modality_lut(ModalityLutOption::None)
                    .with_voi_lut(VoiLutOption::Identity),
            )
            .map_err(|e| DicomError::Malformed(e.to_string()))?;
        return palette_image(header, &indices, columns, rows);
    }
    if decoded.samples_per_pixel() > 1 {
        let image = decoded
            .to_dynamic_image_with_options(0, &ConvertOptions::new().force_8bit())
            .map_err(|e| DicomError::Malformed(e.to_string()))?;
        return Ok(DynamicImage::ImageRgb8(image.to_rgb8()));
    }
    let values = modality_values(header, decoded)?;
    let invert = photometric == "MONOCHROME1";
    let to_grey = |y: f64| {
        let y = y.round() as u8;
        if invert {
            255 - y
        } else {
            y
        }
    };
    // A requested window wins; otherwise the instance's own VOI: its VOI LUT
    // (preferred, as most viewers do, when it also has a window), its window,
    // or the full range of the values.
    let voi_lut = match window {
        Some(_) => None,
        None => LookupTable::usable(header, tags::VOILUT_SEQUENCE),
    };
    if let Some(lut) = voi_lut {
        let scale = 255.0 / lut.max_output();
        let grey: Vec<u8> = values
            .iter()
            .map(|v| to_grey(f64::from(lut.look_up(v.floor() as i64)) * scale))
            .collect();
        return GrayImage::from_raw(columns, rows, grey)
            .map(DynamicImage::ImageLuma8)
            .ok_or_else(|| DicomError::Malformed("pixel data shorter than Rows x Columns".into()));
    }
    let window = window.or_else(|| stored_window(header)).unwrap_or_else(|| {
        let (min, max) = values
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        let width = (max - min).max(1.0);
        Window {
            center: min + width / 2.0,
            width,
            function: VoiFunction::LinearExact,
        }
    });
    let grey: Vec<u8> = values.iter().map(|v| to_grey(window.apply(*v))).collect();
    GrayImage::from_raw(columns, rows, grey)
        .map(DynamicImage::ImageLuma8)
        .ok_or_else(|| DicomError::Malformed("pixel data shorter than Rows x Columns".into()))
}

/// The stored values of a monochrome frame through the Modality LUT or else the
/// modality rescale (PS3.3 C.11.1), for every BitsAllocated DICOM allows (1, 8,
/// 16, 32): values are masked to BitsStored and sign-extended when
/// PixelRepresentation is 1.
fn modality_values(
    header: &InMemDicomObject,
    decoded: &DecodedPixelData<'_>,
) -> Result<Vec<f64>, DicomError> {
    let data = decoded.data();
    let bits = decoded.bits_allocated();
    let stored = decoded.bits_stored().clamp(1, bits.max(1));
    let signed = decoded.pixel_representation() == dicom_pixeldata::PixelRepresentation::Signed;
    let count = decoded.rows() as usize * decoded.columns() as usize;
    let raw: Vec<i64> = match bits {
        // dicom-pixeldata expands 1-bit samples to bytes of 0 or 255.
        1 => data.iter().take(count).map(|b| (*b != 0) as i64).collect(),
        8 => data.iter().take(count).map(|b| *b as i64).collect(),
        16 => data
            .chunks_exact(2)
            .take(count)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
            .collect(),
        32 => data
            .chunks_exact(4)
            .take(count)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
            .collect(),
        other => {
            return Err(DicomError::CannotDecode(format!(
                "BitsAllocated {other} is not rendered"
            )))
        }
    };
    if raw.len() < count {
        return Err(DicomError::Malformed(
            "pixel data shorter than Rows x Columns".into(),
        ));
    }
    let mask: i64 = if stored >= 64 {
        -1
    } else {
        (1i64 << stored) - 1
    };
    let sign_bit = 1i64 << (stored - 1);
    let stored_value = |v: i64| {
        let v = v & mask;
        if signed && bits > 1 && v & sign_bit != 0 {
            v - (mask + 1)
        } else {
            v
        }
    };
    if let Some(lut) = LookupTable::usable(header, tags::MODALITY_LUT_SEQUENCE) {
        return Ok(raw
            .into_iter()
            .map(|v| f64::from(lut.look_up(stored_value(v))))
            .collect());
    }
    let slope = float_list(header, tags::RESCALE_SLOPE)
        .first()
        .copied()
        .unwrap_or(1.0);
    let intercept = float_list(header, tags::RESCALE_INTERCEPT)
        .first()
        .copied()
        .unwrap_or(0.0);
    Ok(raw
        .into_iter()
        .map(|v| stored_value(v) as f64 * slope + intercept)
        .collect())
}

/// The first item of a sequence, if the data set has one.
fn first_item(dataset: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    dataset.get(tag)?.items()?.first()
}

/// A Modality or VOI LUT (PS3.3 C.11.1.1, C.11.2.1.1): LUT Descriptor (number of
/// entries, first value mapped, bits per entry) and LUT Data.
struct LookupTable {
    first_mapped: i64,
    bits: u32,
    entries: Vec<u16>,
}

impl LookupTable {
    /// The table in the first item of `sequence`, if there is one that can be
    /// used: a broken table is passed over (with a warning) for the rescale or
    /// window the instance also has, as viewers do, rather than failing the image.
    fn usable(dataset: &InMemDicomObject, sequence: Tag) -> Option<Self> {
        let item = first_item(dataset, sequence)?;
        match Self::read(item) {
            Ok(table) => Some(table),
            Err(error) => {
                tracing::warn!(%sequence, %error, "lookup table ignored");
                None
            }
        }
    }

    fn read(item: &InMemDicomObject) -> Result<Self, DicomError> {
        let malformed = |what: &str| DicomError::Malformed(format!("lookup table: {what}"));
        let descriptor = item
            .get(tags::LUT_DESCRIPTOR)
            .ok_or(DicomError::MissingAttribute("LUT Descriptor"))?;
        let values: Vec<i64> = match descriptor.value() {
            Value::Primitive(v) => v
                .to_multi_int::<i64>()
                .map_err(|_| malformed("descriptor is not numeric"))?,
            _ => return Err(malformed("descriptor is not numeric")),
        };
        let [count, first_mapped, bits] = values[..] else {
            return Err(malformed("descriptor has not three values"));
        };
        // PS3.3 C.11.1.1.1: 0 entries means 2^16; the first value mapped is
        // signed when the descriptor says so (SS) or was read unsigned from a
        // value that is negative.
        let count = if count == 0 { 65536 } else { count as usize };
        let first_mapped = if descriptor.vr() != VR::SS && first_mapped > i64::from(i16::MAX) {
            first_mapped - 65536
        } else {
            first_mapped
        };
        if !(1..=16).contains(&bits) {
            return Err(malformed("bits per entry must be 1 to 16"));
        }
        let data = match item.get(tags::LUT_DATA).map(|e| e.value()) {
            Some(Value::Primitive(v)) => v.to_bytes().into_owned(),
            _ => return Err(DicomError::MissingAttribute("LUT Data")),
        };
        // 16-bit words as the standard writes them; tables of 8-bit entries
        // packed one per byte are read as they come.
        let entries: Vec<u16> = if data.len() >= 2 * count {
            data.chunks_exact(2)
                .take(count)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect()
        } else if bits <= 8 && data.len() >= count {
            data.iter().take(count).map(|b| u16::from(*b)).collect()
        } else {
            return Err(malformed("fewer data than entries"));
        };
        // Tables that declare more bits than their values use are common; the
        // output range comes from the declaration unless a value exceeds it.
        let widest = entries.iter().max().map_or(1, |m| 16 - m.leading_zeros());
        Ok(Self {
            first_mapped,
            bits: (bits as u32).max(widest),
            entries,
        })
    }

    /// The entry for `value`: the first below the range, the last above it.
    fn look_up(&self, value: i64) -> u16 {
        let last = self.entries.len() as i64 - 1;
        self.entries[(value - self.first_mapped).clamp(0, last) as usize]
    }

    /// The largest output the table's bit depth allows.
    fn max_output(&self) -> f64 {
        f64::from((1u32 << self.bits) - 1)
    }
}

/// Looks up PALETTE COLOR indices in the red, green and blue tables (PS3.3
/// C.7.6.3.1.5–6).
fn palette_image(
    header: &InMemDicomObject,
    indices: &[u16],
    columns: u32,
    rows: u32,
) -> Result<DynamicImage, DicomError> {
    let table = |descriptor: Tag, data: Tag| -> Result<(i64, u16, Vec<u16>), DicomError> {
        let descriptor: Vec<i64> = match header.get(descriptor).map(|e| e.value()) {
            Some(Value::Primitive(v)) => v
                .to_multi_int::<i64>()
                .map_err(|e| DicomError::Malformed(e.to_string()))?,
            _ => return Err(DicomError::MissingAttribute("Palette Color Lookup Table")),
        };
        let (first, bits) = match descriptor.as_slice() {
            [_, first, bits, ..] => (*first, *bits as u16),
            _ => return Err(DicomError::Malformed("palette descriptor".into())),
        };
        let bytes = match header.get(data).map(|e| e.value()) {
            Some(Value::Primitive(v)) => v.to_bytes().into_owned(),
            _ => {
                return Err(DicomError::MissingAttribute(
                    "Palette Color Lookup Table Data",
                ))
            }
        };
        let entries = bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        Ok((first, bits, entries))
    };
    let red = table(
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
    )?;
    let green = table(
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
    )?;
    let blue = table(
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
    )?;
    let look_up = |(first, bits, entries): &(i64, u16, Vec<u16>), index: u16| -> u8 {
        if entries.is_empty() {
            return 0;
        }
        let i = (index as i64 - first).clamp(0, entries.len() as i64 - 1) as usize;
        if *bits > 8 {
            (entries[i] >> 8) as u8
        } else {
            entries[i] as u8
        }
    };
    let mut image = RgbImage::new(columns, rows);
    for (pixel, index) in image.pixels_mut().zip(indices) {
        *pixel = Rgb([
            look_up(&red, *index),
            look_up(&green, *index),
            look_up(&blue, *index),
        ]);
    }
    Ok(DynamicImage::ImageRgb8(image))
}

fn apply_region(image: DynamicImage, region: Option<Region>) -> DynamicImage {
    let Some(region) = region else {
        return image;
    };
    let (w, h) = (image.width() as f64, image.height() as f64);
    let x = (region.x_min * w).floor() as u32;
    let y = (region.y_min * h).floor() as u32;
    let width = (((region.x_max - region.x_min) * w).round() as u32).max(1);
    let height = (((region.y_max - region.y_min) * h).round() as u32).max(1);
    image.crop_imm(x, y, width, height)
}

/// The viewport crops (`sx,sy,sw,sh`, negative sizes flip) and then scales to fit
/// `vw × vh` with the aspect ratio kept.
fn apply_viewport(
    mut image: DynamicImage,
    viewport: Option<Viewport>,
) -> Result<DynamicImage, DicomError> {
    let Some(viewport) = viewport else {
        return Ok(image);
    };
    if let Some(source) = viewport.source {
        let (w, h) = (image.width() as i64, image.height() as i64);
        let sw = source.width.unwrap_or(w - source.x);
        let sh = source.height.unwrap_or(h - source.y);
        let (x0, x1) = ordered(source.x, source.x + sw);
        let (y0, y1) = ordered(source.y, source.y + sh);
        let (x0, x1) = (x0.clamp(0, w), x1.clamp(0, w));
        let (y0, y1) = (y0.clamp(0, h), y1.clamp(0, h));
        if x1 <= x0 || y1 <= y0 {
            return Err(DicomError::OutsideImage);
        }
        image = image.crop_imm(x0 as u32, y0 as u32, (x1 - x0) as u32, (y1 - y0) as u32);
        if sw < 0 {
            image = image.fliph();
        }
        if sh < 0 {
            image = image.flipv();
        }
    }
    Ok(fit(image, viewport.width, viewport.height))
}

fn ordered(a: i64, b: i64) -> (i64, i64) {
    (a.min(b), a.max(b))
}

/// Scales to the largest size inside `width × height` with the aspect ratio kept.
fn fit(image: DynamicImage, width: u32, height: u32) -> DynamicImage {
    if image.width() == width && image.height() == height {
        return image;
    }
    let scale = (width as f64 / image.width() as f64).min(height as f64 / image.height() as f64);
    let new_width = ((image.width() as f64 * scale).round() as u32).max(1);
    let new_height = ((image.height() as f64 * scale).round() as u32).max(1);
    image.resize_exact(new_width, new_height, image::imageops::FilterType::Triangle)
}

fn apply_maxima(image: DynamicImage, rows: Option<u32>, columns: Option<u32>) -> DynamicImage {
    if rows.is_none() && columns.is_none() {
        return image;
    }
    let max_w = columns.unwrap_or(u32::MAX).min(image.width());
    let max_h = rows.unwrap_or(u32::MAX).min(image.height());
    fit(image, max_w, max_h)
}

/// Burns the requested annotation text into the top-left corner (8×8 bitmap font,
/// white on a dark shadow so it reads on any image).
fn annotate(
    image: DynamicImage,
    header: &InMemDicomObject,
    frame_number: u64,
    annotations: &[Annotation],
) -> DynamicImage {
    if annotations.is_empty() {
        return image;
    }
    let value = |tag| text(header, tag).unwrap_or_default();
    let mut lines = Vec::new();
    for annotation in annotations {
        match annotation {
            Annotation::Patient => {
                lines.push(value(tags::PATIENT_NAME).replace('^', " "));
                lines.push(format!(
                    "ID {}  {} {}",
                    value(tags::PATIENT_ID),
                    value(tags::PATIENT_SEX),
                    value(tags::PATIENT_BIRTH_DATE)
                ));
            }
            Annotation::Technique => {
                lines.push(format!(
                    "{} {}",
                    value(tags::MODALITY),
                    value(tags::SERIES_DESCRIPTION)
                ));
                lines.push(format!(
                    "{}x{} frame {frame_number}",
                    value(tags::COLUMNS),
                    value(tags::ROWS)
                ));
            }
        }
    }
    // Grey images stay grey: the text is white on a black shadow either way.
    match image {
        DynamicImage::ImageLuma8(mut grey) => {
            for (row, line) in lines.iter().enumerate() {
                let y = 2 + row as u32 * 10;
                draw_text(&mut grey, 3, y + 1, line, image::Luma([0]));
                draw_text(&mut grey, 2, y, line, image::Luma([255]));
            }
            DynamicImage::ImageLuma8(grey)
        }
        other => {
            let mut rgb = other.to_rgb8();
            for (row, line) in lines.iter().enumerate() {
                let y = 2 + row as u32 * 10;
                draw_text(&mut rgb, 3, y + 1, line, Rgb([0, 0, 0]));
                draw_text(&mut rgb, 2, y, line, Rgb([255, 255, 255]));
            }
            DynamicImage::ImageRgb8(rgb)
        }
    }
}

fn draw_text<P: image::Pixel>(
    image: &mut image::ImageBuffer<P, Vec<P::Subpixel>>,
    x: u32,
    y: u32,
    line: &str,
    colour: P,
) {
    use font8x8::UnicodeFonts;
    for (i, ch) in line.chars().enumerate() {
        let glyph = font8x8::BASIC_FONTS
            .get(ch)
            .or_else(|| font8x8::LATIN_FONTS.get(ch))
            .unwrap_or([0; 8]);
        for (gy, bits) in glyph.iter().enumerate() {
            for gx in 0..8 {
                if bits & (1 << gx) != 0 {
                    let (px, py) = (x + i as u32 * 8 + gx, y + gy as u32);
                    if px < image.width() && py < image.height() {
                        image.put_pixel(px, py, colour);
                    }
                }
            }
        }
    }
}

/// Encodes rendered frames: one image, or an animation (GIF only) when several.
/// `frame_delay_ms` is the GIF frame time.
pub fn encode(
    frames: Vec<DynamicImage>,
    format: ImageFormat,
    quality: u8,
    frame_delay_ms: u32,
) -> Result<Vec<u8>, DicomError> {
    let encode_error = |e: image::ImageError| DicomError::Encode(e.to_string());
    let mut out = Vec::new();
    match format {
        ImageFormat::Jpeg => {
            let first = frames.into_iter().next().ok_or(DicomError::Truncated)?;
            // Baseline 8-bit Huffman JPEG (PS3.18 §8.7.4), grey or RGB.
            let encoder =
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100));
            match first {
                DynamicImage::ImageLuma8(grey) => encoder
                    .write_image(
                        grey.as_raw(),
                        grey.width(),
                        grey.height(),
                        image::ExtendedColorType::L8,
                    )
                    .map_err(encode_error)?,
                other => {
                    let rgb = other.to_rgb8();
                    encoder
                        .write_image(
                            rgb.as_raw(),
                            rgb.width(),
                            rgb.height(),
                            image::ExtendedColorType::Rgb8,
                        )
                        .map_err(encode_error)?
                }
            }
        }
        ImageFormat::Png => {
            let first = frames.into_iter().next().ok_or(DicomError::Truncated)?;
            first
                .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
                .map_err(encode_error)?;
        }
        ImageFormat::Gif => {
            let mut encoder = image::codecs::gif::GifEncoder::new_with_speed(&mut out, 10);
            if frames.len() > 1 {
                encoder
                    .set_repeat(image::codecs::gif::Repeat::Infinite)
                    .map_err(encode_error)?;
            }
            let delay = image::Delay::from_numer_denom_ms(frame_delay_ms.max(10), 1);
            for frame in frames {
                encoder
                    .encode_frame(image::Frame::from_parts(frame.to_rgba8(), 0, 0, delay))
                    .map_err(encode_error)?;
            }
        }
    }
    Ok(out)
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

    #[test]
    fn viewport_crops_flips_and_fits() {
        let mut image = GrayImage::new(100, 50);
        image.put_pixel(0, 0, image::Luma([255]));
        let image = DynamicImage::ImageLuma8(image);
        let fitted = apply_viewport(
            image.clone(),
            Some(Viewport {
                width: 40,
                height: 40,
                source: None,
            }),
        )
        .unwrap();
        assert_eq!((fitted.width(), fitted.height()), (40, 20));
        let flipped = apply_viewport(
            image,
            Some(Viewport {
                width: 10,
                height: 10,
                source: Some(SourceRect {
                    x: 10,
                    y: 0,
                    width: Some(-10),
                    height: Some(10),
                }),
            }),
        )
        .unwrap();
        assert_eq!((flipped.width(), flipped.height()), (10, 10));
        // The lit corner pixel moved to the right edge.
        assert_eq!(flipped.to_luma8().get_pixel(9, 0).0, [255]);
    }

    #[test]
    fn every_format_encodes() {
        let image = DynamicImage::ImageLuma8(GrayImage::from_fn(16, 16, |x, y| {
            image::Luma([(x * 16 + y) as u8])
        }));
        let jpeg = encode(vec![image.clone()], ImageFormat::Jpeg, 80, 100).unwrap();
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
        let png = encode(vec![image.clone()], ImageFormat::Png, 80, 100).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let gif = encode(vec![image.clone(), image], ImageFormat::Gif, 80, 100).unwrap();
        assert_eq!(&gif[..3], b"GIF");
    }
}
