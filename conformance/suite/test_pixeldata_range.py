"""`/pixeldata` at instance, series and study level (rule 89 and the contract), and HTTP
Range on single-part bulk data responses (rule 98: 206 / 416 with Content-Range)."""
from __future__ import annotations

import re

import pytest

import kastell_helpers as kh
import kastell_pixels as kp
from kastell_helpers import EXPLICIT_LE, describe, entry_path

OCTET_DEFAULT = 'multipart/related; type="application/octet-stream"'
OCTET_ANY = f"{OCTET_DEFAULT}; transfer-syntax=*"


def _parts(resp, expected_type="application/octet-stream"):
    assert resp.status_code == 200, describe(resp)
    return kh.multipart_response(resp, expected_type)


def _check_octet_part(part):
    mtype, params = kh.parse_media_type(part.content_type)
    assert mtype == "application/octet-stream", part.content_type
    if "transfer-syntax" in params:
        assert params["transfer-syntax"] == EXPLICIT_LE, part.content_type


def _expected_native(manifest, e) -> bytes:
    ds = manifest.dataset(e)
    if kp.transfer_syntax(ds) in kh.NATIVE_SYNTAXES:
        return kh.pixel_bytes_le(ds)
    return kp.native_bytes(kp.reference(manifest, e))


def _owner(part, entries: dict[str, dict]) -> dict:
    loc = part.headers.get("content-location") or ""
    assert loc, "each part must carry Content-Location (rule 25)"
    hits = [e for sop, e in entries.items() if sop in loc]
    assert len(hits) == 1, f"Content-Location {loc!r} names none (or several) of the instances"
    return hits[0]


# --------------------------------------------------------------------------
# /pixeldata
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_bigendian.dcm", "rtdose.dcm", "image_dfl.dcm"])
@pytest.mark.parametrize("accept", [None, OCTET_DEFAULT], ids=["no-accept", "octet"])
def test_instance_pixeldata_native(api, manifest, name, accept):
    e = manifest.by_name(name)
    headers = {"Accept": accept}  # None removes the header
    parts = _parts(api.get(entry_path(e) + "/pixeldata", headers=headers))
    assert len(parts) == 1, f"{len(parts)} parts for one native instance"
    _check_octet_part(parts[0])
    assert e["sop_instance_uid"] in (parts[0].headers.get("content-location") or ""), parts[0].headers
    assert parts[0].content == kh.pixel_bytes_le(manifest.dataset(e))


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "SC_rgb_rle_2frame.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_instance_pixeldata_compressed_decoded(api, manifest, name):
    """Compressed pixel data is decoded to native LE unless transfer-syntax=* is accepted."""
    e = manifest.by_name(name)
    parts = _parts(api.get(entry_path(e) + "/pixeldata", headers={"Accept": OCTET_DEFAULT}))
    for p in parts:
        _check_octet_part(p)
    assert b"".join(p.content for p in parts) == _expected_native(manifest, e)


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "SC_rgb_rle_2frame.dcm"])
def test_instance_pixeldata_ts_star_as_stored(api, manifest, name):
    e = manifest.by_name(name)
    resp = api.get(entry_path(e) + "/pixeldata", headers={"Accept": OCTET_ANY})
    assert resp.status_code == 200, describe(resp)
    parts = kh.multipart_response(resp)
    frames = kh.encapsulated_frames(manifest.dataset(e))
    assert len(parts) == len(frames), f"{len(parts)} parts for {len(frames)} compressed frames"
    for p, f in zip(parts, frames):
        mtype, params = kh.parse_media_type(p.content_type)
        assert params.get("transfer-syntax") == e["transfer_syntax"], p.content_type
        assert mtype != "application/octet-stream", "compressed part must name its media type"
        assert p.content.rstrip(b"\0") == f.rstrip(b"\0")


def test_series_pixeldata_native(api, manifest):
    A = manifest.syn("A")
    se = A["series_instance_uids"][0]
    entries = {e["sop_instance_uid"]: e for e in manifest.series(se)}
    parts = _parts(api.get(kh.series_path(A["study_instance_uid"], se) + "/pixeldata",
                           headers={"Accept": OCTET_DEFAULT}))
    assert len(parts) == len(entries) == 3
    seen = set()
    for p in parts:
        _check_octet_part(p)
        e = _owner(p, entries)
        seen.add(e["sop_instance_uid"])
        assert p.content == kh.pixel_bytes_le(manifest.dataset(e)), e["file"]
    assert seen == set(entries)


def test_study_pixeldata_native(api, manifest):
    A = manifest.syn("A")
    entries = {e["sop_instance_uid"]: e for e in manifest.syn_files("A")}
    parts = _parts(api.get(kh.study_path(A["study_instance_uid"]) + "/pixeldata"))
    assert len(parts) == len(entries) == 6
    assert {_owner(p, entries)["sop_instance_uid"] for p in parts} == set(entries)
    for p in parts:
        assert p.content == kh.pixel_bytes_le(manifest.dataset(_owner(p, entries)))


def test_series_pixeldata_mixed_syntaxes_decoded(api, manifest):
    """A series with JPEG baseline, JPEG lossless and native instances: all native LE by default.
    Decoded parts are grouped by Content-Location (one part per instance, or per frame)."""
    e0 = manifest.by_name("SC_rgb_jpeg_dcmtk.dcm")
    entries = {e["sop_instance_uid"]: e for e in manifest.series(e0["series_instance_uid"])}
    parts = _parts(api.get(kh.series_path(e0["study_instance_uid"], e0["series_instance_uid"]) + "/pixeldata",
                           headers={"Accept": OCTET_DEFAULT}))
    bodies: dict[str, bytes] = {}
    for p in parts:
        _check_octet_part(p)
        sop = _owner(p, entries)["sop_instance_uid"]
        bodies[sop] = bodies.get(sop, b"") + p.content
    assert set(bodies) == set(entries)
    for sop, body in bodies.items():
        e = entries[sop]
        ds = manifest.dataset(e)
        if kp.is_lossy(ds):
            ref = kp.reference(manifest, e)
            arr = kp.frame_from_bytes(body, ds, ref)
            assert arr is not None, f"{e['source']}: {len(body)} bytes, expected {ref.nbytes}"
            errs = kp.compare_pixels(arr, ref, True, f"{e['source']}: ")
            assert not errs, "\n".join(errs)
        else:
            assert body == _expected_native(manifest, e), e["source"]


@pytest.mark.parametrize("name", ["reportsi.dcm", "rtplan.dcm"])
def test_pixeldata_of_instance_without_pixels_404(api, manifest, name):
    e = manifest.by_name(name)
    resp = api.get(entry_path(e) + "/pixeldata", headers={"Accept": OCTET_DEFAULT})
    assert resp.status_code == 404, describe(resp)


def test_pixeldata_unknown_instance_404(api, manifest):
    e = manifest.by_name("CT_small.dcm")
    path = kh.instance_path(e["study_instance_uid"], e["series_instance_uid"], "1.2.3.4.5.6.7.8.9") + "/pixeldata"
    resp = api.get(path, headers={"Accept": OCTET_DEFAULT})
    assert resp.status_code == 404, describe(resp)


# --------------------------------------------------------------------------
# HTTP Range on single-part bulk data
# --------------------------------------------------------------------------
SINGLE = {"Accept": "application/octet-stream"}


def _bulk(api, manifest, name):
    e = manifest.by_name(name)
    uri = api.resolve(kp.pixel_bulk_uri(api, e))
    return uri, kh.pixel_bytes_le(manifest.dataset(e))


def _content_range(resp) -> str:
    return re.sub(r"\s+", " ", resp.headers.get("Content-Range", "").strip())


def test_single_part_without_range(api, manifest):
    uri, raw = _bulk(api, manifest, "CT_small.dcm")
    resp = api.get(uri, headers=SINGLE)
    assert resp.status_code == 200, describe(resp)
    assert kh.parse_media_type(resp.headers.get("Content-Type", ""))[0] == "application/octet-stream", describe(resp)
    assert resp.headers.get("Accept-Ranges", "").lower() == "bytes", f"Accept-Ranges: {resp.headers}"
    assert resp.content == raw


RANGES = {
    "10-99": lambda total: "10-99",
    "100-": lambda total: "100-",
    "-50": lambda total: "-50",
    "0-0": lambda total: "0-0",
    "past-end": lambda total: f"{total - 10}-{total + 1000}",  # last-byte-pos beyond the end is clipped
}


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_bigendian.dcm"])
@pytest.mark.parametrize("case", list(RANGES))
def test_range_206(api, manifest, name, case):
    uri, raw = _bulk(api, manifest, name)
    total = len(raw)
    rng = RANGES[case](total)
    first_s, last_s = rng.split("-")
    if first_s == "":
        first, last = total - int(last_s), total - 1
    else:
        first = int(first_s)
        last = min(int(last_s), total - 1) if last_s else total - 1
    resp = api.get(uri, headers={**SINGLE, "Range": f"bytes={rng}"})
    assert resp.status_code == 206, describe(resp)
    assert _content_range(resp) == f"bytes {first}-{last}/{total}", f"Content-Range {resp.headers.get('Content-Range')!r}"
    assert kh.parse_media_type(resp.headers.get("Content-Type", ""))[0] == "application/octet-stream"
    assert resp.content == raw[first:last + 1], f"{len(resp.content)} bytes, expected {last + 1 - first}"
    if "Content-Length" in resp.headers:
        assert int(resp.headers["Content-Length"]) == last + 1 - first


def test_range_unsatisfiable_416(api, manifest):
    uri, raw = _bulk(api, manifest, "CT_small.dcm")
    resp = api.get(uri, headers={**SINGLE, "Range": "bytes=999999999-"})
    assert resp.status_code == 416, describe(resp)
    assert _content_range(resp) == f"bytes */{len(raw)}", f"Content-Range {resp.headers.get('Content-Range')!r}"
