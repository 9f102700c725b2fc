"""Pixel helpers for the retrieval tests: pydicom's decoding of a fixture as the
reference, images decoded with Pillow, and the PS3.3 VOI LUT formulas in numpy.

Tolerances
----------
Lossless paths (native, RLE, JPEG lossless, JPEG-LS lossless, reversible JPEG 2000)
are compared exactly.  Lossy JPEG (baseline/extended) and irreversible JPEG 2000
may be decoded by the server with another decoder than pydicom's (pylibjpeg /
libjpeg, openjpeg): IDCT rounding and chroma upsampling differ between
implementations.  Measured on the fixtures: pydicom (pylibjpeg-libjpeg) vs Pillow
(libjpeg-turbo) differ by at most 3 levels, mean 0.026, on examples_ybr_color.dcm
(YBR_FULL_422) and not at all on SC_rgb_jpeg_dcmtk.dcm; the server's decoder
(work in progress, Nov 2026) vs pydicom: at most 3, mean 0.024 (examples_ybr_color)
and at most 1, mean 0.010 (SC_rgb_jpeg_dcmtk).  The accepted difference
is LOSSY_MAX_ABS = 8 levels per sample and LOSSY_MEAN_ABS = 1.0 on average, in
the sample units of the image (also for the 12-bit JPGExtended.dcm, where an
IDCT rounding difference is still a few units, not scaled by the bit depth).

Rendered 8-bit output is compared with the numpy reference within RENDER_TOL = 1
level (rounding vs truncation of the VOI formula), plus the lossy tolerance for a
lossy original.
"""
from __future__ import annotations

import io
import math

import numpy as np
import pydicom
from pydicom.dataset import Dataset

import kastell_helpers as kh  # noqa: F401  (sets pydicom's validation modes)

LOSSY_MAX_ABS = 8
LOSSY_MEAN_ABS = 1.0
RENDER_TOL = 1

JPEG_LOSSY = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"}
EXPLICIT_LE = kh.EXPLICIT_LE

_REF_CACHE: dict[str, np.ndarray] = {}

# Fixtures this server may be unable to decode, answering 406 where a decoded result
# was asked for -- never a 500. Empty: 12-bit JPEG Extended (JPGExtended.dcm) is
# decoded since issue 13 (libjpeg-turbo 3), so every fixture must decode.
MAY_BE_UNDECODABLE: set[str] = set()


def undecodable_ok(e: dict, resp) -> bool:
    """True when *resp* is the documented 406 for a fixture the server may not decode."""
    name = e["source"].split(":", 1)[1]
    return name in MAY_BE_UNDECODABLE and resp.status_code == 406


def transfer_syntax(ds: Dataset) -> str:
    return str(ds.file_meta.TransferSyntaxUID)


def is_lossy(ds: Dataset) -> bool:
    """True when decoders may legitimately disagree on this dataset's pixels."""
    ts = transfer_syntax(ds)
    if ts in JPEG_LOSSY:
        return True
    return ts in ("1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.93") and \
        str(ds.get("LossyImageCompression", "")) == "01"


def n_frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def decode_file(data: bytes | str) -> np.ndarray:
    """pydicom's pixel array of a PS3.10 file (bytes or path), colour as RGB."""
    from pydicom.pixels import pixel_array
    # Read the whole dataset first: pixel_array()'s own lightweight parser does not
    # inflate Deflated Explicit VR Little Endian files.
    ds = pydicom.dcmread(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data)
    return pixel_array(ds, as_rgb=True)


def reference(manifest, e: dict) -> np.ndarray:
    """pydicom's decoding of a fixture, always shaped (frames, rows, cols[, 3])."""
    key = e["file"]
    if key not in _REF_CACHE:
        ds = manifest.dataset(e)
        arr = decode_file(str(manifest.path(e)))
        _REF_CACHE[key] = with_frames(arr, ds)
    return _REF_CACHE[key]


def with_frames(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    single_ndim = 3 if spp > 1 else 2
    if arr.ndim == single_ndim:
        arr = arr[np.newaxis, ...]
    return arr


def native_bytes(arr: np.ndarray) -> bytes:
    """Little-endian bytes of a decoded array (colour interleaved as pydicom returns it)."""
    return np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"), copy=False)).tobytes()


def compare_pixels(got: np.ndarray, ref: np.ndarray, lossy: bool, where: str = "") -> list[str]:
    """Exact comparison, or the lossy tolerance; returns a list of problems."""
    if got.shape != ref.shape:
        return [f"{where}shape {got.shape} != pydicom's {ref.shape}"]
    a = got.astype(np.int64)
    b = ref.astype(np.int64)
    if not lossy:
        if not np.array_equal(a, b):
            d = np.abs(a - b)
            return [f"{where}pixels differ from pydicom's (lossless path must be exact): "
                    f"{int((d > 0).sum())} samples, max abs diff {int(d.max())}"]
        return []
    d = np.abs(a - b)
    errs = []
    if d.max() > LOSSY_MAX_ABS or d.mean() >= LOSSY_MEAN_ABS:
        errs.append(f"{where}lossy pixels too far from pydicom's: max abs diff {int(d.max())} "
                    f"(limit {LOSSY_MAX_ABS}), mean {d.mean():.3f} (limit {LOSSY_MEAN_ABS})")
    return errs


def frame_from_bytes(data: bytes, ds: Dataset, ref_frame: np.ndarray) -> np.ndarray | None:
    """Interpret native little-endian frame bytes with the reference frame's dtype and shape."""
    dt = ref_frame.dtype.newbyteorder("<")
    if len(data) != ref_frame.size * dt.itemsize:
        return None
    return np.frombuffer(data, dtype=dt).reshape(ref_frame.shape)


def pixel_bulk_uri(api, e: dict) -> str:
    """The Pixel Data BulkDataURI of an instance, from its metadata."""
    resp = api.get(kh.entry_path(e) + "/metadata", headers={"Accept": kh.DICOM_JSON})
    assert resp.status_code == 200, kh.describe(resp)
    attr = resp.json()[0].get("7FE00010") or {}
    uri = attr.get("BulkDataURI")
    assert uri, f"Pixel Data has no BulkDataURI in the metadata: {attr!r:.200}"
    return uri


# --------------------------------------------------------------------------
# Images (rendered / thumbnail)
# --------------------------------------------------------------------------
MAGIC = {
    "image/jpeg": b"\xff\xd8\xff",
    "image/png": b"\x89PNG\r\n\x1a\n",
    "image/gif": b"GIF8",
}


def open_image(body: bytes):
    from PIL import Image
    im = Image.open(io.BytesIO(body))
    im.load()
    return im


def image_array(body: bytes) -> np.ndarray:
    """Decoded first image as uint8: (h, w) for grey, (h, w, 3) for colour."""
    im = open_image(body)
    if im.mode in ("L", "P", "RGB", "RGBA", "LA"):
        if im.mode == "P":
            im = im.convert("RGB")
        elif im.mode == "RGBA":
            im = im.convert("RGB")
        elif im.mode == "LA":
            im = im.convert("L")
        return np.asarray(im)
    if im.mode in ("I;16", "I;16B", "I"):
        raise AssertionError(f"rendered image is not 8-bit (mode {im.mode})")
    return np.asarray(im.convert("RGB"))


def gray(arr: np.ndarray) -> np.ndarray:
    """A grey image from a decoded image: L as is, RGB only when its channels agree."""
    if arr.ndim == 2:
        return arr
    chan = arr.astype(int)
    if np.abs(chan[..., 0] - chan[..., 1]).max() > 1 or np.abs(chan[..., 0] - chan[..., 2]).max() > 1:
        raise AssertionError("expected a grey image, got colour (channels differ)")
    return arr[..., 0]


def rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        return np.stack([arr] * 3, axis=-1)
    return arr


def jpeg_sof(body: bytes) -> tuple[int, int] | None:
    """(SOFn marker, sample precision) of a JPEG stream, or None."""
    i = 2
    while i + 4 <= len(body):
        if body[i] != 0xFF:
            return None
        marker = body[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        length = int.from_bytes(body[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return marker, body[i + 4]
        if marker == 0xDA:
            return None
        i += 2 + length
    return None


# --------------------------------------------------------------------------
# VOI LUT (PS3.3 C.11.2.1.2)
# --------------------------------------------------------------------------
def modality(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut
    return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)


def voi(x: np.ndarray, c: float, w: float, function: str = "linear") -> np.ndarray:
    """8-bit output of the VOI window function (ymin 0, ymax 255), as floats."""
    x = np.asarray(x, dtype=np.float64)
    f = function.lower().replace("_", "-")
    if f == "linear":
        if w <= 1:
            return np.where(x <= c - 0.5, 0.0, 255.0)
        y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0
        y = np.where(x <= c - 0.5 - (w - 1) / 2, 0.0, y)
        y = np.where(x > c - 0.5 + (w - 1) / 2, 255.0, y)
        return y
    if f == "linear-exact":
        y = ((x - c) / w + 0.5) * 255.0
        y = np.where(x <= c - w / 2, 0.0, y)
        y = np.where(x > c + w / 2, 255.0, y)
        return y
    if f == "sigmoid":
        return 255.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    raise ValueError(function)


def first_value(v) -> float:
    if isinstance(v, pydicom.multival.MultiValue) or isinstance(v, (list, tuple)):
        v = v[0]
    return float(v)


def default_grey_references(ds: Dataset, frames: np.ndarray, frame_index: int = 0) -> tuple[list[np.ndarray], int]:
    """Reference renders of one grey frame with the default VOI, and the tolerance.

    WindowCenter/Width when present (first pair, VOILUTFunction or LINEAR); else
    min-max of the modality values.  For min-max, both "of this frame" and "of
    all frames" are accepted (the contract does not say which for multi-frame), and
    the tolerance grows for a narrow value range, where the conventions (width =
    max-min or max-min+1, rounding) differ by up to 255/(max-min) levels:
    RENDER_TOL + ceil(255/(max-min)), at most 20 (2 for a CT or MR range).
    """
    frame = frames[frame_index]
    x = modality(frame, ds)
    mono1 = str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"
    refs: list[np.ndarray] = []
    tol = RENDER_TOL
    if "WindowCenter" in ds and "WindowWidth" in ds:
        c, w = first_value(ds.WindowCenter), first_value(ds.WindowWidth)
        fn = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").lower().replace("_", "-")
        refs.append(voi(x, c, w, fn))
    else:
        allx = modality(frames, ds)
        for lo, hi in ((float(x.min()), float(x.max())), (float(allx.min()), float(allx.max()))):
            if hi <= lo:
                refs.append(np.zeros_like(x))
                continue
            refs.append((x - lo) / (hi - lo) * 255.0)
            rng = hi - lo
            tol = max(tol, min(20, RENDER_TOL + math.ceil(255.0 / rng)) if rng > 1 else RENDER_TOL + 1)
    if mono1:
        refs = [255.0 - r for r in refs]
    return refs, tol


def within(got: np.ndarray, ref: np.ndarray, tol: float) -> tuple[bool, str]:
    if got.shape != ref.shape:
        return False, f"shape {got.shape} != expected {ref.shape}"
    d = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    return bool(d.max() <= tol + 1e-9), f"max abs diff {d.max():.2f} (tolerance {tol}), mean {d.mean():.3f}"


def lossy_within(got: np.ndarray, ref: np.ndarray, extra: float = RENDER_TOL) -> tuple[bool, str]:
    """Lossy tolerance (plus rounding of the render) for 8-bit images."""
    if got.shape != ref.shape:
        return False, f"shape {got.shape} != expected {ref.shape}"
    d = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    ok = d.max() <= LOSSY_MAX_ABS + extra and d.mean() < LOSSY_MEAN_ABS + extra
    return bool(ok), f"max abs diff {d.max():.2f}, mean {d.mean():.3f}"
