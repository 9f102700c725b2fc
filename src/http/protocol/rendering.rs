//! The query parameters of rendered resources and thumbnails (PS3.18 §8.3.5.1),
//! shared by WADO-RS rendered requests and WADO-URI: viewport, window, quality,
//! annotation, ICC profile, and the image type the client takes.

use crate::dicom::render::{
    Annotation, ImageFormat, RenderOptions, SourceRect, Viewport, VoiFunction, Window,
};
use crate::http::error::ApiError;
use crate::http::protocol::accept::MediaRange;

/// The image type to answer with, and whether the client asked for multipart.
pub fn negotiate_image(ranges: &[MediaRange]) -> Option<(ImageFormat, bool)> {
    ranges
        .iter()
        .find_map(|range| match range.essence.as_str() {
            "multipart/related" => range
                .related_type()
                .and_then(|t| ImageFormat::from_media_type(&t))
                .map(|f| (f, true)),
            "image/*" | "*/*" => Some((ImageFormat::Jpeg, false)),
            essence => ImageFormat::from_media_type(essence).map(|f| (f, false)),
        })
}

pub fn not_acceptable() -> ApiError {
    ApiError::NotAcceptable(
        "rendered images are available as image/jpeg, image/png and image/gif".into(),
    )
}

/// Parsed rendering parameters plus the text of a Warning for ignored values.
pub struct Params {
    pub options: RenderOptions,
    pub warning: Option<String>,
}

fn bad(text: String) -> ApiError {
    ApiError::BadRequest(text)
}

fn one<'a>(pairs: &'a [(String, String)], name: &str) -> Result<Option<&'a str>, ApiError> {
    let mut values = pairs
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str());
    let first = values.next();
    if values.next().is_some() {
        return Err(bad(format!("{name} may be given once")));
    }
    Ok(first)
}

pub fn parse_quality(value: &str) -> Result<u8, ApiError> {
    value
        .trim()
        .parse::<u8>()
        .ok()
        .filter(|q| (1..=100).contains(q))
        .ok_or_else(|| {
            bad(format!(
                "quality must be an integer from 1 to 100, got {value:?}"
            ))
        })
}

/// `annotation=patient,technique`: unknown keywords are ignored (with a warning);
/// an empty value or item is an error (DICOMWEB.md rule 91).
pub fn parse_annotation(value: &str) -> Result<(Vec<Annotation>, Vec<String>), ApiError> {
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for item in value.split(',') {
        let item = item.trim();
        match item {
            "" => return Err(bad("annotation takes a comma list of keywords".into())),
            "patient" => known.push(Annotation::Patient),
            "technique" => known.push(Annotation::Technique),
            other
                if other
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
            {
                unknown.push(other.to_string())
            }
            other => return Err(bad(format!("invalid annotation value {other:?}"))),
        }
    }
    Ok((known, unknown))
}

fn parse_window(value: &str) -> Result<Window, ApiError> {
    let parts: Vec<&str> = value.split(',').map(str::trim).collect();
    let error = || {
        bad(format!(
            "window must be center,width,function with function linear, linear-exact or sigmoid; got {value:?}"
        ))
    };
    let [center, width, function] = parts.as_slice() else {
        return Err(error());
    };
    let center: f64 = center.parse().map_err(|_| error())?;
    let width: f64 = width.parse().map_err(|_| error())?;
    let function = VoiFunction::parse(function).ok_or_else(error)?;
    if width <= 0.0 || width.is_nan() || !center.is_finite() || !width.is_finite() {
        return Err(error());
    }
    Ok(Window {
        center,
        width,
        function,
    })
}

fn parse_viewport(value: &str, thumbnail: bool) -> Result<Viewport, ApiError> {
    let parts: Vec<&str> = value.split(',').map(str::trim).collect();
    let error = || {
        bad(format!(
            "viewport must be vw,vh{} with positive vw and vh; got {value:?}",
            if thumbnail { "" } else { "[,sx,sy,sw,sh]" }
        ))
    };
    if parts.len() < 2 || parts.len() > 6 || (thumbnail && parts.len() != 2) {
        return Err(error());
    }
    // A thumbnail is small whatever is asked: a larger viewport gets the
    // largest cached size.
    let largest_thumbnail = *crate::service::render::CACHED_THUMBNAIL_SIZES
        .last()
        .unwrap_or(&512);
    let size = |s: &str| {
        s.parse::<u32>()
            .ok()
            .filter(|v| *v > 0)
            .map(|v| {
                if thumbnail {
                    v.min(largest_thumbnail)
                } else {
                    v
                }
            })
            .filter(|v| *v <= 16384)
    };
    let (width, height) = (
        size(parts[0]).ok_or_else(error)?,
        size(parts[1]).ok_or_else(error)?,
    );
    let optional = |i: usize| -> Result<Option<i64>, ApiError> {
        match parts.get(i).copied() {
            None | Some("") => Ok(None),
            Some(s) => s.parse::<i64>().map(Some).map_err(|_| error()),
        }
    };
    let source = if parts.len() > 2 {
        let (x, y) = (optional(2)?.unwrap_or(0), optional(3)?.unwrap_or(0));
        let (w, h) = (optional(4)?, optional(5)?);
        if x < 0 || y < 0 || w == Some(0) || h == Some(0) {
            return Err(error());
        }
        Some(SourceRect {
            x,
            y,
            width: w,
            height: h,
        })
    } else {
        None
    };
    Ok(Viewport {
        width,
        height,
        source,
    })
}

/// The parameters of a rendered request (PS3.18 §8.3.5.1).
pub fn parse_params(pairs: &[(String, String)], thumbnail: bool) -> Result<Params, ApiError> {
    let mut options = RenderOptions::default();
    let mut warning = None;
    if let Some(value) = one(pairs, "quality")? {
        options.quality = parse_quality(value)?;
    }
    if let Some(value) = one(pairs, "viewport")? {
        options.viewport = Some(parse_viewport(value, thumbnail)?);
    }
    if let Some(value) = one(pairs, "iccprofile")? {
        match value.trim() {
            "no" => {}
            "yes" | "srgb" | "adobergb" | "rommrgb" => {
                return Err(bad(format!(
                "iccprofile={value} is not supported: images are rendered without an ICC profile"
            )))
            }
            other => return Err(bad(format!("invalid iccprofile {other:?}"))),
        }
    }
    if !thumbnail {
        if let Some(value) = one(pairs, "window")? {
            options.window = Some(parse_window(value)?);
        }
        if let Some(value) = one(pairs, "annotation")? {
            let (known, unknown) = parse_annotation(value)?;
            options.annotations = known;
            if !unknown.is_empty() {
                warning = Some(format!(
                    "The following annotation values are not supported: {}",
                    unknown.join(",")
                ));
            }
        }
    }
    Ok(Params { options, warning })
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
    fn parameters_follow_the_rules() {
        let params = parse_params(
            &pairs(&[
                ("window", "40,400,linear"),
                ("viewport", "64,32,10,0,-20,"),
                ("quality", "55"),
                ("annotation", "patient,foo"),
            ]),
            false,
        )
        .unwrap();
        assert_eq!(params.options.quality, 55);
        assert_eq!(params.options.window.unwrap().function, VoiFunction::Linear);
        let viewport = params.options.viewport.unwrap();
        assert_eq!((viewport.width, viewport.height), (64, 32));
        assert_eq!(viewport.source.unwrap().width, Some(-20));
        assert_eq!(viewport.source.unwrap().height, None);
        assert_eq!(params.options.annotations, vec![Annotation::Patient]);
        assert!(params.warning.unwrap().contains("foo"));
        for bad in [
            ("window", "40,400"),
            ("window", "40,400,cubic"),
            ("window", "a,400,linear"),
            ("window", "40,0,linear"),
            ("viewport", "64"),
            ("viewport", "0,64"),
            ("viewport", "a,b"),
            ("quality", "0"),
            ("quality", "101"),
            ("quality", "abc"),
            ("annotation", ""),
            ("annotation", "patient,"),
            ("iccprofile", "srgb"),
        ] {
            assert!(parse_params(&pairs(&[bad]), false).is_err(), "{bad:?}");
        }
        assert!(parse_params(&pairs(&[("viewport", "64,64,0,0,10,10")]), true).is_err());
        assert!(parse_params(&pairs(&[("viewport", "64,64")]), true).is_ok());
    }

    #[test]
    fn image_types_are_negotiated() {
        let ranges =
            crate::http::protocol::accept::acceptable(&[], Some("image/png, image/jpeg;q=0.5"));
        assert_eq!(negotiate_image(&ranges), Some((ImageFormat::Png, false)));
        let ranges = crate::http::protocol::accept::acceptable(
            &[],
            Some("multipart/related; type=\"image/gif\""),
        );
        assert_eq!(negotiate_image(&ranges), Some((ImageFormat::Gif, true)));
        let ranges = crate::http::protocol::accept::acceptable(&[], None);
        assert_eq!(negotiate_image(&ranges), Some((ImageFormat::Jpeg, false)));
        let ranges = crate::http::protocol::accept::acceptable(&[], Some("application/dicom"));
        assert_eq!(negotiate_image(&ranges), None);
    }
}
