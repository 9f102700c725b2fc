//! The 12-bit JPEG Extended decoder (src/dicom/jpeg12.rs: libjpeg-turbo 3 over
//! FFI, Kastell's one use of `unsafe`) on arbitrary frames.
//!
//! Input: two bytes of rows, two of columns (little endian, at most 4096 each,
//! as the server's decoding budget would bound them), one choosing 1 or 3
//! samples per pixel, then the frame's bytes. Properties: no crash (the
//! sanitizer watches the buffers handed to the C library); a decoded frame is
//! exactly rows × columns × samples 16-bit samples.
#![no_main]

use kastell::dicom::jpeg12::decode_frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [r0, r1, c0, c1, samples, frame @ ..] = data else {
        return;
    };
    let rows = u32::from(u16::from_le_bytes([*r0, *r1])) % 4096 + 1;
    let columns = u32::from(u16::from_le_bytes([*c0, *c1])) % 4096 + 1;
    let samples: u16 = if samples & 1 == 0 { 1 } else { 3 };
    if let Ok(decoded) = decode_frame(frame, rows, columns, samples) {
        assert_eq!(
            decoded.len(),
            rows as usize * columns as usize * samples as usize * 2,
            "a decoded frame has the size of the header's image"
        );
    }
});
