"""WADO-URI rendered retrieval (rules 99-104 and the contract): contentType image/jpeg
(the default with Accept */*) and image/png, frameNumber, rows/columns, region,
windowCenter/windowWidth, imageQuality, annotation/imageAnnotation, anonymize (the object
de-identified, as application/dicom); and the application/dicom default for objects
without pixel data."""
from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

import kastell_helpers as kh
import kastell_pixels as kp
from kastell_helpers import describe


@pytest.fixture(scope="module")
def wado(api):
    url = api.root() + "/wado"

    def get(e: dict, headers=None, **params):
        q = [("requestType", "WADO"), ("studyUID", e["study_instance_uid"]),
             ("seriesUID", e["series_instance_uid"]), ("objectUID", e["sop_instance_uid"])]
        q += [(k, v) for k, v in params.items()]
        return api.get(url, params=q, headers=headers if headers is not None else {"Accept": "*/*"})
    return get


def image(resp, mtype: str) -> bytes:
    assert resp.status_code == 200, describe(resp)
    got, params = kh.parse_media_type(resp.headers.get("Content-Type", ""))
    assert got == mtype, f"expected {mtype}: {describe(resp, 200)}"
    assert "transfer-syntax" not in params
    assert resp.content.startswith(kp.MAGIC[mtype]), f"body is not {mtype}"
    return resp.content


def png(wado, e, **params) -> np.ndarray:
    return kp.image_array(image(wado(e, contentType="image/png", **params), "image/png"))


# --------------------------------------------------------------------------
# content types
# --------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [{"Accept": "*/*"}, {"Accept": None}], ids=["star", "no-accept"])
def test_default_is_jpeg(api, manifest, wado, headers):
    e = manifest.by_name("CT_small.dcm")
    body = image(wado(e, headers=headers), "image/jpeg")
    assert kp.open_image(body).size == (128, 128)


@pytest.mark.parametrize("ctype", ["image/jpeg", "image/png", "image/gif"])
def test_content_type(manifest, wado, ctype):
    e = manifest.by_name("MR_small.dcm")
    body = image(wado(e, contentType=ctype), ctype)
    assert kp.open_image(body).size == (64, 64)


def test_content_type_list_first_supported(manifest, wado):
    e = manifest.by_name("MR_small.dcm")
    image(wado(e, contentType="image/png,image/jpeg"), "image/png")


def test_dicom_still_works(manifest, wado):
    """Already working: contentType=application/dicom."""
    e = manifest.by_name("MR_small.dcm")
    resp = wado(e, contentType="application/dicom")
    assert resp.status_code == 200, describe(resp)
    assert kh.parse_media_type(resp.headers["Content-Type"])[0] == "application/dicom"


@pytest.mark.parametrize("name", ["test-SR.dcm", "reportsi.dcm"])
@pytest.mark.parametrize("headers", [{"Accept": "*/*"}, {"Accept": None}], ids=["star", "no-accept"])
def test_non_image_default_is_dicom(manifest, wado, name, headers):
    """PS3.18 §9: with no contentType, an object without pixel data (here an SR) comes
    back as application/dicom, the very object stored, not 406."""
    e = manifest.by_name(name)
    resp = wado(e, headers=headers)
    assert resp.status_code == 200, describe(resp)
    assert kh.parse_media_type(resp.headers["Content-Type"])[0] == "application/dicom"
    got = pydicom.dcmread(io.BytesIO(resp.content))
    assert str(got.SOPInstanceUID) == e["sop_instance_uid"]
    assert "PixelData" not in got


def test_non_image_asked_as_image_is_not_200(manifest, wado):
    """Asked for explicitly, a rendered type of an SR is refused, never a 500."""
    e = manifest.by_name("test-SR.dcm")
    resp = wado(e, contentType="image/jpeg")
    assert resp.status_code in (400, 406), describe(resp)


def test_rendered_matches_rs_rendered(api, manifest, wado):
    """The same picture as WADO-RS …/rendered for the same instance."""
    e = manifest.by_name("MR_small.dcm")
    rs = api.get(kh.entry_path(e) + "/rendered", headers={"Accept": "image/png"})
    assert rs.status_code == 200, describe(rs)
    assert np.array_equal(png(wado, e), kp.image_array(rs.content))


# --------------------------------------------------------------------------
# frameNumber
# --------------------------------------------------------------------------
@pytest.mark.parametrize("frame", [1, 2])
def test_frame_number(manifest, wado, frame):
    e = manifest.by_name("SC_rgb_rle_2frame.dcm")
    ref = kp.reference(manifest, e)
    ok, msg = kp.within(kp.rgb(png(wado, e, frameNumber=str(frame))), ref[frame - 1], kp.RENDER_TOL)
    assert ok, f"frameNumber={frame}: {msg}"


@pytest.mark.parametrize("name,frame", [("SC_rgb_rle_2frame.dcm", "3"), ("SC_rgb_rle_2frame.dcm", "0"),
                                        ("SC_rgb_rle_2frame.dcm", "x"), ("CT_small.dcm", "1"),
                                        ("CT_small.dcm", "2")])
def test_frame_number_invalid_400(manifest, wado, name, frame):
    """Rule 103: out of range, or on an object that is not multi-frame -> 400."""
    e = manifest.by_name(name)
    resp = wado(e, contentType="image/jpeg", frameNumber=frame)
    assert resp.status_code == 400, describe(resp)


# --------------------------------------------------------------------------
# rows / columns / region
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name,params,size", [
    ("CT_small.dcm", {"rows": "64"}, (64, 64)),
    ("CT_small.dcm", {"columns": "32"}, (32, 32)),
    ("CT_small.dcm", {"rows": "64", "columns": "32"}, (32, 32)),
    ("JPEG2000.dcm", {"rows": "512"}, (128, 512)),
    ("JPEG2000.dcm", {"columns": "64"}, (64, 256)),
])
def test_rows_columns_are_maxima(manifest, wado, name, params, size):
    e = manifest.by_name(name)
    body = image(wado(e, contentType="image/png", **params), "image/png")
    assert kp.open_image(body).size == size, f"{params}: {kp.open_image(body).size} (w,h), expected {size}"


@pytest.mark.parametrize("value", ["0", "-1", "abc"])
def test_rows_invalid_400(manifest, wado, value):
    e = manifest.by_name("CT_small.dcm")
    resp = wado(e, contentType="image/png", rows=value)
    assert resp.status_code == 400, describe(resp)


def test_region_crops(manifest, wado):
    e = manifest.by_name("CT_small.dcm")
    w = {"windowCenter": "40", "windowWidth": "400"}
    full = kp.gray(png(wado, e, **w)).astype(int)
    crop = kp.gray(png(wado, e, region="0.25,0.25,0.75,0.75", **w)).astype(int)
    assert crop.shape == (64, 64), f"region gave {crop.shape}"
    d = np.abs(crop - full[32:96, 32:96])
    assert d.max() <= kp.RENDER_TOL, f"region differs from the full image's centre: max {d.max()}"


def test_region_then_rows(manifest, wado):
    e = manifest.by_name("CT_small.dcm")
    body = image(wado(e, contentType="image/png", region="0,0,0.5,1", rows="64"), "image/png")
    assert kp.open_image(body).size == (32, 64)


@pytest.mark.parametrize("value", ["0.5,0.5,0.25,0.75", "0,0,1", "0,0,1.5,1", "a,b,c,d", "-0.1,0,1,1",
                                   "0.5,0,0.5,1", ""])
def test_region_malformed_400(manifest, wado, value):
    e = manifest.by_name("CT_small.dcm")
    resp = wado(e, contentType="image/png", region=value)
    assert resp.status_code == 400, describe(resp)


# --------------------------------------------------------------------------
# windowCenter / windowWidth
# --------------------------------------------------------------------------
def test_window(manifest, wado):
    e = manifest.by_name("CT_small.dcm")
    ds = manifest.dataset(e)
    x = kp.modality(kp.reference(manifest, e)[0], ds)
    got = kp.gray(png(wado, e, windowCenter="40", windowWidth="400"))
    ok, msg = kp.within(got, kp.voi(x, 40, 400, "linear"), kp.RENDER_TOL)
    assert ok, msg


@pytest.mark.parametrize("params", [{"windowCenter": "40"}, {"windowWidth": "400"},
                                    {"windowCenter": "a", "windowWidth": "400"},
                                    {"windowCenter": "40", "windowWidth": "400", "contentType": "application/dicom"}],
                         ids=["center-alone", "width-alone", "not-a-number", "with-dicom"])
def test_window_invalid_400(manifest, wado, params):
    e = manifest.by_name("CT_small.dcm")
    params = {"contentType": "image/png", **params}
    resp = wado(e, **params)
    assert resp.status_code == 400, describe(resp)


# --------------------------------------------------------------------------
# imageQuality, annotation, anonymize
# --------------------------------------------------------------------------
def test_image_quality(manifest, wado):
    e = manifest.by_name("CT_small.dcm")
    low = image(wado(e, contentType="image/jpeg", imageQuality="5"), "image/jpeg")
    high = image(wado(e, contentType="image/jpeg", imageQuality="95"), "image/jpeg")
    assert len(low) < len(high), f"imageQuality=5 gave {len(low)} bytes, 95 gave {len(high)}"


@pytest.mark.parametrize("value", ["0", "101", "abc"])
def test_image_quality_invalid_400(manifest, wado, value):
    e = manifest.by_name("CT_small.dcm")
    resp = wado(e, contentType="image/jpeg", imageQuality=value)
    assert resp.status_code == 400, describe(resp)


@pytest.mark.parametrize("param", ["annotation", "imageAnnotation"])
def test_annotation(manifest, wado, param):
    e = manifest.by_name("CT_small.dcm")
    plain = kp.rgb(png(wado, e))
    ann = kp.rgb(png(wado, e, **{param: "patient,technique"}))
    assert ann.shape == plain.shape
    assert not np.array_equal(plain, ann), f"{param}=patient,technique left the image unchanged"


@pytest.mark.parametrize("value", ["yes", "no", "true"])
def test_anonymize_400(manifest, wado, value):
    """anonymize applies to application/dicom (a rendered image could show
    burned-in text) -> 400 with a rendered type; values other than yes -> 400."""
    e = manifest.by_name("CT_small.dcm")
    resp = wado(e, contentType="image/jpeg", anonymize=value)
    assert resp.status_code == 400, describe(resp)


def test_anonymize_yes_returns_the_object_de_identified(manifest, wado):
    """anonymize=yes (PS3.18 §9.4.2.3): the Basic Profile applied, new UIDs (the
    same on every request), Patient Identity Removed YES, pixels untouched."""
    e = manifest.by_name("CT_small.dcm")
    original = manifest.dataset(e)
    resp = wado(e, contentType="application/dicom", anonymize="yes")
    assert resp.status_code == 200, describe(resp)
    assert resp.headers["Content-Type"].startswith("application/dicom")
    ds = pydicom.dcmread(io.BytesIO(resp.content))
    assert ds.PatientIdentityRemoved == "YES"
    assert "113100" in [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        assert getattr(ds, keyword) != getattr(original, keyword), keyword
        assert getattr(ds, keyword).startswith("2.25."), keyword
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert str(ds.PatientName) != str(original.PatientName)
    assert ds.PatientID != original.PatientID
    for keyword in ("InstitutionName", "StudyDate", "AccessionNumber"):
        if original.get(keyword):
            assert ds.get(keyword) != original.get(keyword), f"{keyword} kept"
    assert str(original.PatientName).encode() not in resp.content
    assert ds.PixelData == original.PixelData
    again = pydicom.dcmread(io.BytesIO(wado(e, contentType="application/dicom", anonymize="yes").content))
    assert again.SOPInstanceUID == ds.SOPInstanceUID, "the mapping is consistent"


def test_rendered_of_sr_not_200(manifest, wado):
    e = manifest.by_name("reportsi.dcm")
    resp = wado(e, contentType="image/jpeg")
    assert resp.status_code in (400, 404, 406), describe(resp)
