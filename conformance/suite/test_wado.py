"""WADO-RS instance/series/study retrieval (rules 8, 10-20, 25, 85, 98 and the contract)."""
from __future__ import annotations


import numpy as np
import pytest

import kastell_helpers as kh
from kastell_helpers import (ACCEPT_DICOM, DEFLATED, EXPLICIT_BE, EXPLICIT_LE, IMPLICIT_LE, describe,
                             entry_path)


def _accept(ts: str | None) -> dict:
    if ts is None:
        return {"Accept": ACCEPT_DICOM}
    return {"Accept": f'{ACCEPT_DICOM}; transfer-syntax={ts}'}


def _retrieve(api, path, ts=None, headers=None):
    return api.get(path, headers=headers if headers is not None else _accept(ts))


def _single_part(resp):
    assert resp.status_code == 200, describe(resp)
    parts = kh.multipart_response(resp, "application/dicom")
    assert len(parts) == 1, f"expected one part, got {len(parts)}"
    return parts[0]


def _check_part_headers(part, e, ts_expected):
    mtype, params = kh.parse_media_type(part.content_type)
    assert mtype == "application/dicom", f"part Content-Type {part.content_type!r}"
    if "transfer-syntax" in params:
        assert params["transfer-syntax"] == ts_expected, (
            f"part transfer-syntax {params['transfer-syntax']} does not state the actual encoding {ts_expected}")
    loc = part.headers.get("content-location")
    assert loc, "each part must carry Content-Location (rule 25/85)"
    assert loc.endswith(entry_path(e)), f"Content-Location {loc!r}"


_collect = kh.collect_names


EVRLE = _collect(lambda e: e["transfer_syntax"] == EXPLICIT_LE)
NON_LE_NATIVE = _collect(lambda e: e["transfer_syntax"] in (IMPLICIT_LE, EXPLICIT_BE))
COMPRESSED = _collect(lambda e: not e["native"])
DEFLATED_FILES = _collect(lambda e: e["transfer_syntax"] == DEFLATED)


# --------------------------------------------------------------------------
# Explicit VR LE: byte-identical
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", EVRLE)
@pytest.mark.parametrize("ts", [None, "*", EXPLICIT_LE], ids=["default", "ts-star", "ts-evrle"])
def test_evrle_instance_bytes_identical(api, manifest, name, ts):
    e = manifest.by_name(name)
    part = _single_part(_retrieve(api, entry_path(e), ts))
    _check_part_headers(part, e, EXPLICIT_LE)
    assert part.content == manifest.bytes(e), (
        f"retrieved bytes differ from the stored file ({len(part.content)} vs {len(manifest.bytes(e))} bytes)")


# --------------------------------------------------------------------------
# Implicit VR LE / Explicit VR BE: always delivered as Explicit VR LE
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", NON_LE_NATIVE)
@pytest.mark.parametrize("ts", [None, "*", EXPLICIT_LE], ids=["default", "ts-star", "ts-evrle"])
def test_implicit_and_big_endian_delivered_as_evrle(api, manifest, name, ts):
    e = manifest.by_name(name)
    part = _single_part(_retrieve(api, entry_path(e), ts))
    _check_part_headers(part, e, EXPLICIT_LE)
    got = kh.read_part(part)
    assert str(got.file_meta.TransferSyntaxUID) == EXPLICIT_LE, got.file_meta.TransferSyntaxUID
    assert got.is_little_endian and not got.is_implicit_VR, "dataset must actually be Explicit VR LE"
    assert str(got.file_meta.MediaStorageSOPInstanceUID) == e["sop_instance_uid"]
    orig = manifest.dataset(e)
    errs = kh.compare_datasets(orig, got, expected_big_endian=e["transfer_syntax"] == EXPLICIT_BE,
                               relaxed_vr=e["transfer_syntax"] == IMPLICIT_LE)
    assert not errs, "\n".join(errs[:30])
    if "PixelData" in orig:
        assert np.array_equal(orig.pixel_array, got.pixel_array), "pixel values differ"


@pytest.mark.parametrize("name", NON_LE_NATIVE)
@pytest.mark.parametrize("ts", [IMPLICIT_LE, EXPLICIT_BE], ids=["ivrle", "evrbe"])
def test_forbidden_transfer_syntax_406(api, manifest, name, ts):
    """Rule 8: Implicit VR LE / Explicit VR BE must never be produced."""
    e = manifest.by_name(name)
    resp = _retrieve(api, entry_path(e), ts)
    assert resp.status_code == 406, describe(resp)


# --------------------------------------------------------------------------
# Deflated
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", DEFLATED_FILES)
def test_deflated_with_ts_star_keeps_stored_encoding(api, manifest, name):
    e = manifest.by_name(name)
    part = _single_part(_retrieve(api, entry_path(e), "*"))
    _check_part_headers(part, e, DEFLATED)
    got = kh.read_part(part)
    assert str(got.file_meta.TransferSyntaxUID) == DEFLATED
    errs = kh.compare_datasets(manifest.dataset(e), got)
    assert not errs, "\n".join(errs[:30])


@pytest.mark.parametrize("name", DEFLATED_FILES)
def test_deflated_default_is_evrle(api, manifest, name):
    """Rule 17: with no transfer syntax requested, natively encoded data comes as Explicit VR LE."""
    e = manifest.by_name(name)
    part = _single_part(_retrieve(api, entry_path(e)))
    _check_part_headers(part, e, EXPLICIT_LE)
    got = kh.read_part(part)
    assert str(got.file_meta.TransferSyntaxUID) == EXPLICIT_LE
    errs = kh.compare_datasets(manifest.dataset(e), got)
    assert not errs, "\n".join(errs[:30])


# --------------------------------------------------------------------------
# Compressed
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", COMPRESSED)
@pytest.mark.parametrize("mode", ["ts-star", "ts-stored"])
def test_compressed_instance_as_stored(api, manifest, name, mode):
    e = manifest.by_name(name)
    ts = "*" if mode == "ts-star" else e["transfer_syntax"]
    part = _single_part(_retrieve(api, entry_path(e), ts))
    _check_part_headers(part, e, e["transfer_syntax"])
    got = kh.read_part(part)
    assert str(got.file_meta.TransferSyntaxUID) == e["transfer_syntax"]
    orig = manifest.dataset(e)
    assert got.PixelData == orig.PixelData, "encapsulated pixel data must be returned unchanged"
    errs = kh.compare_datasets(orig, got)
    assert not errs, "\n".join(errs[:30])


@pytest.mark.parametrize("name", COMPRESSED)
def test_compressed_instance_default_is_decoded_or_406(api, manifest, name):
    """Rule 17/19: the default is Explicit VR Little Endian, so every compressed fixture
    (12-bit JPEG Extended included) is decoded (its pixels are compared in
    test_transcode.py) -- never a 406 or a 500."""
    e = manifest.by_name(name)
    resp = _retrieve(api, entry_path(e))
    assert resp.status_code == 200, describe(resp)
    got = kh.read_part(_single_part(resp))
    assert str(got.file_meta.TransferSyntaxUID) == EXPLICIT_LE


def test_compressed_instance_other_compressed_syntax_406(api, manifest):
    e = manifest.by_name("SC_rgb_jpeg_dcmtk.dcm")
    resp = _retrieve(api, entry_path(e), "1.2.840.10008.1.2.4.90")
    assert resp.status_code == 406, describe(resp)


def test_native_instance_compressed_syntax_406(api, manifest):
    e = manifest.by_name("CT_small.dcm")
    resp = _retrieve(api, entry_path(e), "1.2.840.10008.1.2.4.50")
    assert resp.status_code == 406, describe(resp)


def test_transfer_syntax_preference_with_q(api, manifest):
    """Rule 16: preferences expressed as several ranges; the most preferred one the
    server can produce wins (decoding to Explicit VR LE, or the stored syntax)."""
    e = manifest.by_name("SC_rgb_jpeg_dcmtk.dcm")
    native_first = (f'{ACCEPT_DICOM}; transfer-syntax={EXPLICIT_LE}, '
                    f'{ACCEPT_DICOM}; transfer-syntax=1.2.840.10008.1.2.4.50; q=0.5')
    got = kh.read_part(_single_part(_retrieve(api, entry_path(e), headers={"Accept": native_first})))
    assert str(got.file_meta.TransferSyntaxUID) == EXPLICIT_LE
    stored_first = (f'{ACCEPT_DICOM}; transfer-syntax={EXPLICIT_LE}; q=0.4, '
                    f'{ACCEPT_DICOM}; transfer-syntax=1.2.840.10008.1.2.4.50')
    got = kh.read_part(_single_part(_retrieve(api, entry_path(e), headers={"Accept": stored_first})))
    assert str(got.file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.50"


# --------------------------------------------------------------------------
# Multi-frame
# --------------------------------------------------------------------------
def test_multiframe_native(api, manifest):
    e = manifest.by_name("rtdose.dcm")
    part = _single_part(_retrieve(api, entry_path(e)))
    got = kh.read_part(part)
    assert int(got.NumberOfFrames) == e["number_of_frames"] == 15
    assert np.array_equal(got.pixel_array, manifest.dataset(e).pixel_array)


def test_multiframe_jpeg(api, manifest):
    e = manifest.by_name("examples_ybr_color.dcm")
    part = _single_part(_retrieve(api, entry_path(e), "*"))
    got = kh.read_part(part)
    assert int(got.NumberOfFrames) == 30
    assert got.PixelData == manifest.dataset(e).PixelData


# --------------------------------------------------------------------------
# Study / series retrieval
# --------------------------------------------------------------------------
def test_retrieve_study(api, manifest):
    A = manifest.syn("A")
    resp = _retrieve(api, kh.study_path(A["study_instance_uid"]))
    assert resp.status_code == 200, describe(resp)
    parts = kh.multipart_response(resp, "application/dicom")
    files = {e["sop_instance_uid"]: e for e in manifest.syn_files("A")}
    assert len(parts) == 6
    seen = set()
    for p in parts:
        ds = kh.read_part(p)
        sop = str(ds.SOPInstanceUID)
        assert sop in files
        seen.add(sop)
        _check_part_headers(p, files[sop], EXPLICIT_LE)
        assert p.content == manifest.bytes(files[sop])
    assert seen == set(files)


def test_retrieve_series(api, manifest):
    A = manifest.syn("A")
    st, se = A["study_instance_uid"], A["series_instance_uids"][1]
    resp = _retrieve(api, kh.series_path(st, se))
    assert resp.status_code == 200, describe(resp)
    parts = kh.multipart_response(resp, "application/dicom")
    want = {e["sop_instance_uid"]: e for e in manifest.series(se)}
    got = {str(kh.read_part(p).SOPInstanceUID): p for p in parts}
    assert set(got) == set(want)
    for sop, p in got.items():
        assert p.content == manifest.bytes(want[sop])


def test_retrieve_mixed_syntax_series_with_ts_star(api, manifest):
    """A series holding JPEG baseline, JPEG lossless and EVRLE instances, retrieved as stored."""
    e = manifest.by_name("SC_rgb_jpeg_dcmtk.dcm")
    members = manifest.series(e["series_instance_uid"])
    assert len({m["transfer_syntax"] for m in members}) > 1
    resp = _retrieve(api, kh.series_path(e["study_instance_uid"], e["series_instance_uid"]), "*")
    assert resp.status_code == 200, describe(resp)
    parts = kh.multipart_response(resp, "application/dicom")
    got = {}
    for p in parts:
        ds = kh.read_part(p)
        got[str(ds.SOPInstanceUID)] = (str(ds.file_meta.TransferSyntaxUID), p)
    assert set(got) == {m["sop_instance_uid"] for m in members}
    for m in members:
        ts, p = got[m["sop_instance_uid"]]
        assert ts == m["transfer_syntax"]
        _check_part_headers(p, m, ts)


def test_dicomweb_client_retrieve(client, manifest):
    e = manifest.by_name("CT_small.dcm")
    ds = client.retrieve_instance(e["study_instance_uid"], e["series_instance_uid"], e["sop_instance_uid"])
    assert str(ds.SOPInstanceUID) == e["sop_instance_uid"]
    assert ds.PixelData == manifest.dataset(e).PixelData
    A = manifest.syn("A")
    dss = client.retrieve_series(A["study_instance_uid"], A["series_instance_uids"][0])
    assert len(dss) == 3
    dss = client.retrieve_study(A["study_instance_uid"])
    assert len(dss) == 6


# --------------------------------------------------------------------------
# Content negotiation
# --------------------------------------------------------------------------
@pytest.mark.parametrize("accept", [None, "*/*", "multipart/related; type=application/dicom",
                                    "multipart/related; type=\"application/dicom\"; q=1",
                                    "image/png, multipart/related; type=\"application/dicom\"; q=0.5",
                                    "multipart/*"],
                         ids=["none", "star", "unquoted", "quoted-q", "png-then-dicom", "multipart-star"])
def test_accept_variants(api, manifest, accept):
    e = manifest.by_name("MR_small.dcm")
    headers = {"Accept": accept}  # None removes the header
    resp = api.session.get(api.url(entry_path(e)), headers=headers, timeout=30)
    if accept is None:
        assert "Accept" not in resp.request.headers
    part = _single_part(resp)
    assert part.content == manifest.bytes(e)


@pytest.mark.parametrize("accept", ["image/png", "application/json", "text/html",
                                    'multipart/related; type="image/png"'])
def test_unacceptable_accept_406(api, manifest, accept):
    e = manifest.by_name("MR_small.dcm")
    resp = api.get(entry_path(e), headers={"Accept": accept})
    assert resp.status_code == 406, describe(resp)


def test_unacceptable_accept_406_on_study(api, manifest):
    A = manifest.syn("A")
    resp = api.get(kh.study_path(A["study_instance_uid"]), headers={"Accept": "image/png"})
    assert resp.status_code == 406, describe(resp)


# --------------------------------------------------------------------------
# Not found
# --------------------------------------------------------------------------
def test_not_found(api, manifest):
    A = manifest.syn("A")
    st = A["study_instance_uid"]
    s_ct, s_mr = A["series_instance_uids"]
    ct_inst = [e for e in manifest.syn_files("A") if e["series_instance_uid"] == s_ct][0]
    unknown = "1.2.826.0.1.3680043.8.498.99999999999999999999"
    cases = [
        kh.study_path(unknown),
        kh.series_path(st, unknown),
        kh.series_path(unknown, s_ct),
        kh.instance_path(st, s_ct, unknown),
        kh.instance_path(unknown, s_ct, ct_inst["sop_instance_uid"]),
        kh.instance_path(st, s_mr, ct_inst["sop_instance_uid"]),  # instance exists, wrong series
        kh.study_path(unknown) + "/metadata",
        kh.series_path(st, unknown) + "/metadata",
        kh.instance_path(st, s_ct, unknown) + "/metadata",
    ]
    bad = []
    for path in cases:
        resp = api.get(path, headers={"Accept": "*/*"})
        if resp.status_code != 404:
            bad.append(f"GET {path} -> {resp.status_code} (expected 404)")
    assert not bad, "\n".join(bad)


def test_responses_carry_length_or_chunking(api, manifest):
    """Rule 7: Content-Type with any payload, and Content-Length unless Transfer-Encoding."""
    e = manifest.by_name("MR_small.dcm")
    for path, accept in ((entry_path(e), ACCEPT_DICOM), (entry_path(e) + "/metadata", kh.DICOM_JSON),
                         ("/studies?PatientID=KST-PAT-001", kh.DICOM_JSON)):
        resp = api.get(path, headers={"Accept": accept})
        assert resp.status_code == 200, describe(resp)
        assert resp.headers.get("Content-Type"), f"{path}: no Content-Type"
        assert "Content-Length" in resp.headers or "chunked" in resp.headers.get("Transfer-Encoding", ""), (
            f"{path}: neither Content-Length nor chunked Transfer-Encoding")


def test_405_carries_allow(api):
    """Rule 4: a 405 answer MUST carry Allow."""
    resp = api.session.put(api.url("/studies"), data=b"", timeout=30)
    assert 400 <= resp.status_code < 500 or resp.status_code == 501, describe(resp)
    if resp.status_code == 405:
        assert resp.headers.get("Allow"), "405 without Allow header"


def test_health(health_url):
    import requests
    assert requests.get(health_url, timeout=10).status_code == 200
