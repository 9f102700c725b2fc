"""Transcoding on retrieval (rules 17, 19, 87 and the contract): instances, frames and
bulk data of compressed fixtures negotiate down to Explicit VR Little Endian, checked
against pydicom's decoding of the same fixture file; lossless targets are exact or 406,
lossy targets of lossless-able originals 406, never a 500.

Tolerance for lossy JPEG / irreversible JPEG 2000: see kastell_pixels (max abs 8, mean < 1.0).
12-bit JPEG (JPGExtended.dcm) is decoded too (libjpeg-turbo 3, since issue 13);
no fixture may get a 406 where decoding is needed, or a 500.
"""
from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

import kastell_helpers as kh
import kastell_pixels as kp
from kastell_helpers import ACCEPT_DICOM, DEFLATED, EXPLICIT_LE, describe, entry_path

COMPRESSED = kh.collect_names(lambda e: not e["native"] and e["has_pixel_data"])
NATIVE_16 = ["MR_small.dcm", "CT_small.dcm"]
OCTET_DEFAULT = 'multipart/related; type="application/octet-stream"'

JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_XL_LOSSLESS = "1.2.840.10008.1.2.4.110"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"
RLE = "1.2.840.10008.1.2.5"
LOSSY_TARGETS = {JPEG_BASELINE, JPEG_EXTENDED, J2K, "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.93"}


def _accept(ts: str | None) -> dict:
    return {"Accept": ACCEPT_DICOM if ts is None else f"{ACCEPT_DICOM}; transfer-syntax={ts}"}


def _one_file(resp, ts_expected: str):
    assert resp.status_code == 200, describe(resp)
    parts = kh.multipart_response(resp, "application/dicom")
    assert len(parts) == 1, f"expected one part, got {len(parts)}"
    mtype, params = kh.parse_media_type(parts[0].content_type)
    assert mtype == "application/dicom", parts[0].content_type
    if "transfer-syntax" in params:
        assert params["transfer-syntax"] == ts_expected, (
            f"part Content-Type names {params['transfer-syntax']}, the file is {ts_expected}")
    got = pydicom.dcmread(io.BytesIO(parts[0].content))
    assert str(got.file_meta.TransferSyntaxUID) == ts_expected, (
        f"returned file is {got.file_meta.TransferSyntaxUID}, expected {ts_expected}")
    return parts[0], got


def _check_decoded(manifest, e, content: bytes, got, lossy_source: bool):
    orig = manifest.dataset(e)
    assert str(got.SOPInstanceUID) == e["sop_instance_uid"]
    for kw in ("Rows", "Columns", "BitsAllocated", "PixelRepresentation", "SamplesPerPixel"):
        assert got.get(kw) == orig.get(kw), f"{kw}: {got.get(kw)} != original {orig.get(kw)}"
    assert kp.n_frames(got) == kp.n_frames(orig), "NumberOfFrames changed"
    if int(orig.SamplesPerPixel) == 3:
        pi = str(got.PhotometricInterpretation)
        assert pi in ("RGB", "YBR_FULL"), f"decoded colour must be RGB (or YBR_FULL), got {pi}"
    else:
        assert str(got.PhotometricInterpretation) == str(orig.PhotometricInterpretation)
    ref = kp.reference(manifest, e)
    arr = kp.with_frames(kp.decode_file(content), got)
    errs = kp.compare_pixels(arr, ref, lossy_source)
    assert not errs, "\n".join(errs)


# --------------------------------------------------------------------------
# Instances
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", COMPRESSED)
@pytest.mark.parametrize("ts", [EXPLICIT_LE, None], ids=["ts-evrle", "default"])
def test_compressed_instance_transcoded_to_evrle(api, manifest, name, ts):
    """Rules 17/19: a compressed instance asked for as Explicit VR LE (or with no syntax) is decoded."""
    e = manifest.by_name(name)
    resp = api.get(entry_path(e), headers=_accept(ts))
    if kp.undecodable_ok(e, resp):
        return
    part, got = _one_file(resp, EXPLICIT_LE)
    assert got.is_little_endian and not got.is_implicit_VR
    assert "PixelData" in got and not got.file_meta.TransferSyntaxUID.is_compressed
    _check_decoded(manifest, e, part.content, got, kp.is_lossy(manifest.dataset(e)))


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "SC_rgb_jpeg_gdcm.dcm"])
def test_compressed_instance_single_part_evrle(api, manifest, name):
    """Single-part application/dicom (one instance) negotiates the same way."""
    e = manifest.by_name(name)
    resp = api.get(entry_path(e), headers={"Accept": f"application/dicom; transfer-syntax={EXPLICIT_LE}"})
    assert resp.status_code == 200, describe(resp)
    assert kh.parse_media_type(resp.headers.get("Content-Type", ""))[0] == "application/dicom", describe(resp)
    got = pydicom.dcmread(io.BytesIO(resp.content))
    assert str(got.file_meta.TransferSyntaxUID) == EXPLICIT_LE
    _check_decoded(manifest, e, resp.content, got, False)


def test_compressed_series_default_is_decoded(api, manifest):
    """A series mixing JPEG baseline, JPEG lossless and EVRLE comes as EVRLE throughout by default."""
    e = manifest.by_name("SC_rgb_jpeg_dcmtk.dcm")
    members = {m["sop_instance_uid"]: m for m in manifest.series(e["series_instance_uid"])}
    resp = api.get(kh.series_path(e["study_instance_uid"], e["series_instance_uid"]), headers=_accept(None))
    assert resp.status_code == 200, describe(resp)
    parts = kh.multipart_response(resp, "application/dicom")
    assert len(parts) == len(members)
    for p in parts:
        got = kh.read_part(p)
        m = members[str(got.SOPInstanceUID)]
        assert str(got.file_meta.TransferSyntaxUID) == EXPLICIT_LE, m["source"]
        _check_decoded(manifest, m, p.content, got, kp.is_lossy(manifest.dataset(m)))


# --------------------------------------------------------------------------
# Lossless targets: deflated always; JPEG-LS / JPEG XL exact or 406
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", NATIVE_16 + ["MR_small_RLE.dcm"])
def test_deflated_target(api, manifest, name):
    e = manifest.by_name(name)
    part, got = _one_file(api.get(entry_path(e), headers=_accept(DEFLATED)), DEFLATED)
    _check_decoded(manifest, e, part.content, got, False)


def _decodable(ts: str) -> bool:
    from pydicom.pixels import get_decoder
    try:
        return get_decoder(ts).is_available
    except Exception:
        return False


@pytest.mark.parametrize("name", NATIVE_16 + ["MR_small_RLE.dcm", "SC_rgb_rle_2frame.dcm"])
@pytest.mark.parametrize("target", [JPEG_LS_LOSSLESS, JPEG_XL_LOSSLESS], ids=["jpegls", "jpegxl"])
def test_lossless_compressed_target_exact_or_406(api, manifest, name, target):
    e = manifest.by_name(name)
    resp = api.get(entry_path(e), headers=_accept(target))
    assert resp.status_code in (200, 406), describe(resp)
    if resp.status_code == 406:
        return
    part, got = _one_file(resp, target)
    assert got.file_meta.TransferSyntaxUID.is_compressed
    frames = kh.encapsulated_frames(got)
    assert len(frames) == kp.n_frames(manifest.dataset(e)), "one fragment set per frame"
    if not _decodable(target):
        pytest.skip(f"200 for {target}; no decoder for it is installed to check the pixels")
    _check_decoded(manifest, e, part.content, got, False)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg_gdcm.dcm"])
@pytest.mark.parametrize("target", [JPEG_BASELINE, J2K], ids=["jpeg-baseline", "j2k"])
def test_no_lossy_transcoding_406(api, manifest, name, target):
    """We do not transcode to a lossy syntax: a lossless-able original asked for as lossy -> 406."""
    e = manifest.by_name(name)
    resp = api.get(entry_path(e), headers=_accept(target))
    assert resp.status_code == 406, describe(resp)


TARGETS = [EXPLICIT_LE, DEFLATED, JPEG_BASELINE, JPEG_EXTENDED, JPEG_LOSSLESS_SV1, JPEG_LS_LOSSLESS,
           "1.2.840.10008.1.2.4.81", J2K_LOSSLESS, J2K, RLE, JPEG_XL_LOSSLESS, "1.2.840.10008.1.2.4.201"]


def test_never_500_transcoding_matrix(api, manifest):
    """Every image fixture asked for every syntax: 200 naming the syntax asked for, or 406.

    A lossless-able original is never sent in a lossy syntax other than the stored one.
    Implicit VR LE and Explicit VR BE are never produced (rule 8)."""
    problems = []
    names = kh.collect_names(lambda e: e["has_pixel_data"] and e["group"] in ("pydicom", "synthetic"))
    for name in dict.fromkeys(names):
        e = manifest.by_name(name)
        orig = manifest.dataset(e)
        stored = kp.transfer_syntax(orig)
        for target in TARGETS + [kh.IMPLICIT_LE, kh.EXPLICIT_BE]:
            resp = api.get(entry_path(e), headers=_accept(target))
            code = resp.status_code
            if target in (kh.IMPLICIT_LE, kh.EXPLICIT_BE):
                if code != 406:
                    problems.append(f"{name} -> {target}: {code}, expected 406 (rule 8)")
                continue
            if code not in (200, 406):
                problems.append(f"{name} -> {target}: {describe(resp, 200)}")
                continue
            if code != 200:
                continue
            try:
                parts = kh.multipart_response(resp, "application/dicom")
                got = kh.read_part(parts[0])
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{name} -> {target}: unreadable answer ({exc})")
                continue
            got_ts = str(got.file_meta.TransferSyntaxUID)
            if got_ts != target:
                problems.append(f"{name} -> {target}: 200 with a {got_ts} file")
            if target in LOSSY_TARGETS and target != stored and not kp.is_lossy(orig):
                problems.append(f"{name} -> {target}: lossless-able original sent lossy")
    assert not problems, "\n".join(problems[:40])


# --------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------
def _frame_parts(api, e, frames: list[int], accept: str):
    resp = api.get(entry_path(e) + "/frames/" + ",".join(map(str, frames)), headers={"Accept": accept})
    if kp.undecodable_ok(e, resp):
        pytest.skip("documented: 12-bit JPEG is not decoded (406)")
    assert resp.status_code == 200, describe(resp)
    parts = kh.multipart_response(resp, "application/octet-stream")
    assert len(parts) == len(frames), f"{len(parts)} parts for {len(frames)} frames"
    return parts


@pytest.mark.parametrize("name", COMPRESSED)
@pytest.mark.parametrize("accept", [OCTET_DEFAULT, f"{OCTET_DEFAULT}; transfer-syntax={EXPLICIT_LE}"],
                         ids=["default", "ts-evrle"])
def test_compressed_frames_decoded(api, manifest, name, accept):
    """Frames of a compressed instance asked for as octet-stream: native LE bytes equal to pydicom's frame."""
    e = manifest.by_name(name)
    ds = manifest.dataset(e)
    ref = kp.reference(manifest, e)
    numbers = sorted({1, kp.n_frames(ds)})
    parts = _frame_parts(api, e, numbers, accept)
    lossy = kp.is_lossy(ds)
    for n, part in zip(numbers, parts):
        mtype, params = kh.parse_media_type(part.content_type)
        assert mtype == "application/octet-stream", part.content_type
        assert params.get("transfer-syntax") == EXPLICIT_LE, (
            f"frame {n}: Content-Type {part.content_type!r} must name {EXPLICIT_LE}")
        assert (part.headers.get("content-location") or "").endswith(f"/frames/{n}"), (
            f"frame {n}: Content-Location {part.headers.get('content-location')!r}")
        want = ref[n - 1]
        if not lossy:
            assert part.content == kp.native_bytes(want), (
                f"frame {n}: {len(part.content)} bytes differ from pydicom's {len(kp.native_bytes(want))}")
        else:
            arr = kp.frame_from_bytes(part.content, ds, want)
            assert arr is not None, f"frame {n}: {len(part.content)} bytes, expected {want.nbytes}"
            errs = kp.compare_pixels(arr, want, True, f"frame {n}: ")
            assert not errs, "\n".join(errs)


def test_native_frames_default_still_native(api, manifest):
    """Already working: a native fixture's frames with no transfer-syntax are its LE bytes."""
    e = manifest.by_name("MR_small_bigendian.dcm")
    parts = _frame_parts(api, e, [1], OCTET_DEFAULT)
    assert parts[0].content == kh.pixel_bytes_le(manifest.dataset(e))


# --------------------------------------------------------------------------
# Bulk data
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "SC_rgb_rle_2frame.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg_dcmtk.dcm", "examples_ybr_color.dcm"])
def test_pixel_bulkdata_decoded(api, manifest, name):
    """The Pixel Data BulkDataURI of a compressed instance, asked for as octet-stream, gives native LE
    pixels.  Accepted: one part with all frames, or one part per frame (their concatenation is checked)."""
    e = manifest.by_name(name)
    ds = manifest.dataset(e)
    uri = kp.pixel_bulk_uri(api, e)
    resp = api.get(api.resolve(uri), headers={"Accept": OCTET_DEFAULT})
    assert resp.status_code == 200, describe(resp)
    parts = kh.multipart_response(resp, "application/octet-stream")
    for p in parts:
        mtype, params = kh.parse_media_type(p.content_type)
        assert mtype == "application/octet-stream", p.content_type
        if "transfer-syntax" in params:
            assert params["transfer-syntax"] == EXPLICIT_LE, p.content_type
    body = b"".join(p.content for p in parts)
    ref = kp.reference(manifest, e)
    if not kp.is_lossy(ds):
        assert body == kp.native_bytes(ref), f"{len(body)} bytes differ from pydicom's {ref.nbytes}"
    else:
        arr = kp.frame_from_bytes(body, ds, ref)
        assert arr is not None, f"{len(body)} bytes, expected {ref.nbytes}"
        errs = kp.compare_pixels(arr, ref, True)
        assert not errs, "\n".join(errs)


def test_pixel_bulkdata_ts_star_as_stored(api, manifest):
    """Already working: with transfer-syntax=* the compressed frames come as stored."""
    e = manifest.by_name("SC_rgb_rle_2frame.dcm")
    uri = kp.pixel_bulk_uri(api, e)
    resp = api.get(api.resolve(uri), headers={"Accept": f"{OCTET_DEFAULT}; transfer-syntax=*"})
    assert resp.status_code == 200, describe(resp)
    parts = kh.multipart_response(resp)
    frames = kh.encapsulated_frames(manifest.dataset(e))
    assert [p.content.rstrip(b"\0") for p in parts] == [f.rstrip(b"\0") for f in frames]
    assert all(kh.parse_media_type(p.content_type)[1].get("transfer-syntax") == RLE for p in parts)


def test_frames_sum_to_instance(api, manifest):
    """Decoded frames 1..n of a multi-frame RLE instance equal the decoded instance's pixel data, frame by frame."""
    e = manifest.by_name("SC_rgb_rle_2frame.dcm")
    parts = _frame_parts(api, e, [1, 2], OCTET_DEFAULT)
    ref = kp.reference(manifest, e)
    assert b"".join(p.content for p in parts) == kp.native_bytes(ref)
    assert not np.array_equal(ref[0], ref[1]), "fixture frames should differ"
