//! JPEG Extended (Process 4) with 12-bit samples (`1.2.840.10008.1.2.4.51`,
//! BitsAllocated 16), which the JPEG decoder dicom-rs uses cannot read (it
//! decodes 8-bit DCT only). Decoded here by libjpeg-turbo 3, whose TurboJPEG API
//! decodes 12-bit DCT, built from source by `turbojpeg-sys` with cmake (Debian's
//! libjpeg-turbo 2.1 is built without 12-bit support). No maintained pure-Rust
//! decoder reads 12-bit JPEG, so this is Kastell's one use of `unsafe`: four
//! FFI calls on a handle this module owns, each with its buffers sized and
//! checked first.
//!
//! Hostile input: the frame's dimensions must be the header's Rows and Columns
//! (checked on the JPEG header before anything is allocated, so a few bytes
//! cannot claim a huge image), progressive scans are limited, and any libjpeg
//! warning (corrupt data) fails the decode instead of returning a partial image.
#![allow(unsafe_code)]

use turbojpeg_sys as tj;

use super::DicomError;

/// Most scans a (progressive) frame may have: libjpeg-turbo's advice for
/// untrusted input, against images built to make each scan cost a full pass.
const SCAN_LIMIT: i32 = 500;

/// A TurboJPEG decompressor, destroyed when dropped.
struct Decompressor(tj::tjhandle);

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init, is not null, and is destroyed once.
        unsafe { tj::tj3Destroy(self.0) }
    }
}

impl Decompressor {
    fn new() -> Result<Self, DicomError> {
        // SAFETY: tj3Init takes a constant and returns a new handle or null.
        let handle = unsafe { tj::tj3Init(tj::TJINIT_TJINIT_DECOMPRESS as i32) };
        if handle.is_null() {
            return Err(cannot("the 12-bit JPEG decoder could not start"));
        }
        Ok(Self(handle))
    }

    fn set(&self, parameter: u32, value: i32) -> Result<(), DicomError> {
        // SAFETY: a live handle and a parameter constant of this library.
        if unsafe { tj::tj3Set(self.0, parameter as i32, value) } != 0 {
            return Err(self.error("setting a decoder parameter"));
        }
        Ok(())
    }

    fn get(&self, parameter: u32) -> i32 {
        // SAFETY: a live handle and a parameter constant of this library.
        unsafe { tj::tj3Get(self.0, parameter as i32) }
    }

    fn error(&self, doing: &str) -> DicomError {
        // SAFETY: a live handle; the library returns a NUL-terminated string it
        // owns, copied before the handle can change it.
        let message = unsafe { std::ffi::CStr::from_ptr(tj::tj3GetErrorStr(self.0)) }
            .to_string_lossy()
            .into_owned();
        cannot(&format!("{doing}: {message}"))
    }
}

fn cannot(message: &str) -> DicomError {
    DicomError::CannotDecode(format!("12-bit JPEG: {message}"))
}

/// Decodes one 12-bit JPEG frame of `rows` × `columns` with `samples` per pixel
/// (1, or 3 decoded to RGB) into native little-endian 16-bit samples,
/// interleaved.
pub fn decode_frame(
    jpeg: &[u8],
    rows: u32,
    columns: u32,
    samples: u16,
) -> Result<Vec<u8>, DicomError> {
    let decoder = Decompressor::new()?;
    decoder.set(tj::TJPARAM_TJPARAM_STOPONWARNING, 1)?;
    decoder.set(tj::TJPARAM_TJPARAM_SCANLIMIT, SCAN_LIMIT)?;
    // SAFETY: a live handle; the pointer and length describe `jpeg`, which
    // outlives the call.
    if unsafe { tj::tj3DecompressHeader(decoder.0, jpeg.as_ptr(), jpeg.len() as _) } != 0 {
        return Err(decoder.error("reading the JPEG header"));
    }
    let width = decoder.get(tj::TJPARAM_TJPARAM_JPEGWIDTH);
    let height = decoder.get(tj::TJPARAM_TJPARAM_JPEGHEIGHT);
    let precision = decoder.get(tj::TJPARAM_TJPARAM_PRECISION);
    if i64::from(width) != i64::from(columns) || i64::from(height) != i64::from(rows) {
        return Err(cannot(&format!(
            "the frame is {width}×{height}, the header says {columns}×{rows}"
        )));
    }
    if !(9..=12).contains(&precision) {
        return Err(cannot(&format!(
            "the frame has {precision}-bit samples, not 12"
        )));
    }
    let (format, channels) = match samples {
        1 => (tj::TJPF_TJPF_GRAY, 1usize),
        3 => (tj::TJPF_TJPF_RGB, 3usize),
        other => return Err(cannot(&format!("{other} samples per pixel"))),
    };
    let count = (columns as usize)
        .checked_mul(rows as usize)
        .and_then(|n| n.checked_mul(channels))
        .ok_or_else(|| cannot("the frame is too large"))?;
    let mut decoded = vec![0i16; count];
    // SAFETY: a live handle; `jpeg` as above; `decoded` holds width × height ×
    // channels samples, which is what a pitch of 0 (rows packed) and this pixel
    // format write, the dimensions having been checked against the header read
    // by this handle.
    let status = unsafe {
        tj::tj3Decompress12(
            decoder.0,
            jpeg.as_ptr(),
            jpeg.len() as _,
            decoded.as_mut_ptr(),
            0,
            format,
        )
    };
    if status != 0 {
        return Err(decoder.error("decoding"));
    }
    Ok(decoded
        .iter()
        .flat_map(|sample| (*sample as u16).to_le_bytes())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_matching_12_bit_frame() {
        assert!(decode_frame(b"not a jpeg", 4, 4, 1).is_err());
        assert!(decode_frame(&[], 4, 4, 1).is_err());
        // A truncated header: SOI then the start of an SOF1.
        assert!(decode_frame(&[0xFF, 0xD8, 0xFF, 0xC1, 0x00], 4, 4, 1).is_err());
    }
}
