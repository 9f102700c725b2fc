"""Thumbnails (rules 27, 93, 97 and the contract): study, series, instance and frame level,
one image (never multipart), image/jpeg by default, `viewport=vw,vh` bounds the size,
a cropping viewport is refused, and nothing identifies the patient."""
from __future__ import annotations

import numpy as np
import pytest

import kastell_helpers as kh
import kastell_pixels as kp
from kastell_helpers import describe, entry_path


def thumbnail(api, path, params=None, headers=None):
    return api.get(path + "/thumbnail", params=params, headers=headers or {})


def one_image(resp, mtype="image/jpeg") -> bytes:
    assert resp.status_code == 200, describe(resp)
    got, _ = kh.parse_media_type(resp.headers.get("Content-Type", ""))
    assert got == mtype, f"thumbnail must be one {mtype} image (never multipart): {describe(resp, 200)}"
    assert resp.content.startswith(kp.MAGIC[mtype]), f"body is not {mtype}: {resp.content[:16]!r}"
    return resp.content


def _paths(manifest) -> dict[str, str]:
    A = manifest.syn("A")
    st, se = A["study_instance_uid"], A["series_instance_uids"][0]
    ct = manifest.by_name("CT_small.dcm")
    rle = manifest.by_name("SC_rgb_rle_2frame.dcm")
    return {
        "study": kh.study_path(st),
        "series": kh.series_path(st, se),
        "instance": entry_path(ct),
        "frame": entry_path(rle) + "/frames/2",
    }


LEVELS = ["study", "series", "instance", "frame"]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("headers", [{"Accept": None}, {"Accept": "*/*"}, {"Accept": "image/jpeg"}], ids=["none", "star", "jpeg"])
def test_thumbnail_default_jpeg(api, manifest, level, headers):
    one_image(thumbnail(api, _paths(manifest)[level], None, headers))


@pytest.mark.parametrize("level", LEVELS)
def test_thumbnail_png_when_asked(api, manifest, level):
    path = _paths(manifest)[level]
    one_image(thumbnail(api, path, None, {"Accept": "image/png"}), "image/png")
    one_image(thumbnail(api, path, {"accept": "image/png"}), "image/png")


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("viewport,bound", [("64,64", (64, 64)), ("40,20", (40, 20)), ("16,48", (16, 48))])
def test_thumbnail_viewport_bounds_size(api, manifest, level, viewport, bound):
    body = one_image(thumbnail(api, _paths(manifest)[level], {"viewport": viewport}, {"Accept": "image/png"}),
                     "image/png")
    w, h = kp.open_image(body).size
    assert 0 < w <= bound[0] and 0 < h <= bound[1], f"viewport={viewport} gave {w}x{h}"


def test_thumbnail_viewport_keeps_aspect(api, manifest):
    """JPEG2000.dcm is 256 wide and 1024 high: its thumbnail keeps that 1:4 aspect ratio."""
    e = manifest.by_name("JPEG2000.dcm")
    body = one_image(thumbnail(api, entry_path(e), {"viewport": "64,64"}, {"Accept": "image/png"}), "image/png")
    w, h = kp.open_image(body).size
    assert (w, h) == (16, 64), f"{w}x{h}, expected 16x64"


@pytest.mark.parametrize("value", ["64,64,0,0,32,32", "64,64,0,0", "64", "0,64", "a,b", ""])
def test_thumbnail_viewport_invalid_400(api, manifest, value):
    """Rule 93: on a thumbnail only vw,vh are allowed; anything else is ill-formed."""
    e = manifest.by_name("CT_small.dcm")
    resp = thumbnail(api, entry_path(e), {"viewport": value})
    assert resp.status_code == 400, describe(resp)


def test_thumbnail_of_instance_without_pixels(api, manifest):
    e = manifest.by_name("reportsi.dcm")
    resp = thumbnail(api, entry_path(e))
    assert resp.status_code in (404, 406), describe(resp)


def test_thumbnail_unknown_study_404(api):
    resp = thumbnail(api, kh.study_path("1.2.3.4.5.6.7.8.9.10.11"))
    assert resp.status_code == 404, describe(resp)


def test_thumbnail_frame_beyond_404(api, manifest):
    e = manifest.by_name("SC_rgb_rle_2frame.dcm")
    resp = thumbnail(api, entry_path(e) + "/frames/3")
    assert resp.status_code == 404, describe(resp)


@pytest.mark.parametrize("name", ["CT_small.dcm", "SC_rgb_jpeg_gdcm.dcm"])
def test_thumbnail_has_no_patient_information(api, manifest, name):
    """No patient name or ID in the body or the headers, and the pixels are those of the plain
    render, not of an annotation=patient render."""
    e = manifest.by_name(name)
    resp = thumbnail(api, entry_path(e), {"viewport": f"{e['columns']},{e['rows']}"}, {"Accept": "image/png"})
    body = one_image(resp, "image/png")
    headers = "\n".join(f"{k}: {v}" for k, v in resp.headers.items())
    ds = manifest.dataset(e)
    needles = [str(v) for v in (ds.get("PatientName"), ds.get("PatientID")) if v and len(str(v)) >= 4]
    needles += [n.split("^")[0] for n in needles if "^" in n and len(n.split("^")[0]) >= 4]
    for n in needles:
        assert n.encode() not in body, f"thumbnail body carries {n!r}"
        assert n not in headers, f"thumbnail headers carry {n!r}"
    thumb = kp.rgb(kp.image_array(body)).astype(int)
    ann = api.get(entry_path(e) + "/rendered", params={"annotation": "patient"}, headers={"Accept": "image/png"})
    plain = api.get(entry_path(e) + "/rendered", headers={"Accept": "image/png"})
    assert ann.status_code == 200 and plain.status_code == 200, describe(ann)
    ann_a = kp.rgb(kp.image_array(ann.content)).astype(int)
    plain_a = kp.rgb(kp.image_array(plain.content)).astype(int)
    if ann_a.shape != thumb.shape or plain_a.shape != thumb.shape:
        pytest.fail(f"thumbnail {thumb.shape} vs render {plain_a.shape}: the viewport should give the stored size")
    assert not np.array_equal(thumb, ann_a), "thumbnail equals the annotation=patient render"
    text = np.any(ann_a != plain_a, axis=-1)
    if text.any():
        near_plain = np.abs(thumb - plain_a)[text].mean()
        near_ann = np.abs(thumb - ann_a)[text].mean()
        assert near_plain < near_ann, "where the annotation writes text, the thumbnail looks like the annotated image"
