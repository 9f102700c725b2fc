"""Rendered resources (rules 90-97, 14, 22-24 and the contract): study, series, instance
and frame level, media types, window / viewport / quality / annotation parameters, and
the rendered pixels checked against a numpy rendering of pydicom's pixels (PS3.3
C.11.2.1.2 VOI functions on modality-rescaled values, 8-bit output).

Tolerances (kastell_pixels): +-1 level for the VOI formulas (rounding); the lossy
tolerance (max 8, mean < 1.0, plus 1 for rounding) for lossy originals; for the
default min-max window of an image without WindowCenter/Width, 1 + ceil(255/(max-min))
levels (capped at 20), since min-max conventions differ by up to one input step.
"""
from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

import kastell_helpers as kh
import kastell_pixels as kp
from kastell_helpers import describe, entry_path

PNG = {"Accept": "image/png"}
JPEG = {"Accept": "image/jpeg"}
GIF = {"Accept": "image/gif"}

IMAGE_FIXTURES = kh.collect_names(lambda e: e["has_pixel_data"] and "image" in e["tags"]
                                  and e["group"] == "pydicom") + ["synthetic-A-s1-i1.dcm", "synthetic-B-s1-i2.dcm"]


def rendered(api, path: str, params=None, headers=None):
    return api.get(path + "/rendered", params=params, headers=headers if headers is not None else {})


def single_image(resp, mtype: str):
    assert resp.status_code == 200, describe(resp)
    got_type, params = kh.parse_media_type(resp.headers.get("Content-Type", ""))
    assert got_type == mtype, f"expected a single {mtype} body, got {describe(resp, 200)}"
    assert "transfer-syntax" not in params, "rule 20: no transfer-syntax on rendered types"
    assert resp.content.startswith(kp.MAGIC[mtype]), f"body is not {mtype}: {resp.content[:16]!r}"
    return resp.content


def png_of(api, e, params=None, frame: int | None = None) -> np.ndarray:
    path = entry_path(e) + (f"/frames/{frame}" if frame else "")
    return kp.image_array(single_image(rendered(api, path, params, PNG), "image/png"))


def size_of(body: bytes) -> tuple[int, int]:
    """(width, height)."""
    return kp.open_image(body).size


def _store_variant(api, path: str, change) -> tuple[pydicom.Dataset, dict]:
    """A copy of the file at `path` changed by `change(ds)`, with fresh UIDs, stored."""
    from pydicom.uid import generate_uid
    ds = pydicom.dcmread(path)
    change(ds)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    resp = kh.stow(api, [buf.getvalue()])
    assert resp.status_code == 200, describe(resp)
    return pydicom.dcmread(io.BytesIO(buf.getvalue())), {
        "study_instance_uid": str(ds.StudyInstanceUID), "series_instance_uid": str(ds.SeriesInstanceUID),
        "sop_instance_uid": str(ds.SOPInstanceUID)}


# --------------------------------------------------------------------------
# Media types, levels
# --------------------------------------------------------------------------
@pytest.mark.parametrize("headers,params,mtype", [
    ({"Accept": None}, None, "image/jpeg"),
    ({"Accept": "*/*"}, None, "image/jpeg"),
    (JPEG, None, "image/jpeg"),
    (PNG, None, "image/png"),
    (GIF, None, "image/gif"),
    ({}, {"accept": "image/png"}, "image/png"),
    (JPEG, {"accept": "image/png"}, "image/png"),
    ({"Accept": "image/png;q=0.5, image/gif"}, None, "image/gif"),
], ids=["none", "star", "jpeg", "png", "gif", "accept-param", "param-beats-header", "q-values"])
def test_instance_media_types(api, manifest, headers, params, mtype):
    e = manifest.by_name("CT_small.dcm")
    body = single_image(rendered(api, entry_path(e), params, headers), mtype)
    assert size_of(body) == (128, 128), "without viewport the image has the stored Columns x Rows"


def test_rendered_jpeg_is_baseline_8bit(api, manifest):
    """Rule 24: rendered image/jpeg is baseline (SOF0) 8-bit."""
    e = manifest.by_name("MR_small.dcm")
    body = single_image(rendered(api, entry_path(e), None, JPEG), "image/jpeg")
    assert kp.jpeg_sof(body) == (0xC0, 8), f"SOF marker/precision {kp.jpeg_sof(body)}"


def test_unacceptable_type_406(api, manifest):
    e = manifest.by_name("CT_small.dcm")
    resp = rendered(api, entry_path(e), None, {"Accept": "application/dicom"})
    assert resp.status_code == 406, describe(resp)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "JPGExtended.dcm", "JPEG2000.dcm",
                                  "SC_rgb_small_odd.dcm", "examples_ybr_color.dcm"])
@pytest.mark.parametrize("mtype", ["image/jpeg", "image/png", "image/gif"])
def test_dimensions_are_stored_size(api, manifest, name, mtype):
    e = manifest.by_name(name)
    resp = rendered(api, entry_path(e), None, {"Accept": mtype})
    if kp.undecodable_ok(e, resp):
        return
    body = single_image(resp, mtype)
    assert size_of(body) == (e["columns"], e["rows"])


@pytest.mark.parametrize("mtype", ["image/jpeg", "image/png"])
def test_frame_level_single_image(api, manifest, mtype):
    e = manifest.by_name("CT_small.dcm")
    body = single_image(rendered(api, entry_path(e) + "/frames/1", None, {"Accept": mtype}), mtype)
    assert size_of(body) == (128, 128)


def test_frame_level_equals_instance_level_for_single_frame(api, manifest):
    e = manifest.by_name("MR_small.dcm")
    assert np.array_equal(png_of(api, e), png_of(api, e, frame=1))


def _multipart_images(resp, mtype):
    assert resp.status_code == 200, describe(resp)
    parts = kh.multipart_response(resp, mtype)
    for p in parts:
        assert kh.parse_media_type(p.content_type)[0] == mtype, p.content_type
        assert p.content.startswith(kp.MAGIC[mtype]), f"part is not {mtype}"
    return parts


@pytest.mark.parametrize("level", ["series", "study"])
@pytest.mark.parametrize("accept,mtype", [
    (None, "image/jpeg"),
    ('multipart/related; type="image/jpeg"', "image/jpeg"),
    ('multipart/related; type="image/png"', "image/png"),
    ('multipart/related; type=image/gif', "image/gif"),
], ids=["none", "jpeg", "png", "gif"])
def test_series_and_study_are_multipart(api, manifest, level, accept, mtype):
    A = manifest.syn("A")
    st = A["study_instance_uid"]
    if level == "series":
        se = A["series_instance_uids"][1]
        path, entries = kh.series_path(st, se), manifest.series(se)
    else:
        path, entries = kh.study_path(st), manifest.syn_files("A")
    resp = rendered(api, path, None, {"Accept": accept})
    parts = _multipart_images(resp, mtype)
    assert len(parts) == len(entries), f"{len(parts)} parts for {len(entries)} instances"
    sops = {e["sop_instance_uid"] for e in entries}
    named = set()
    for p in parts:
        loc = p.headers.get("content-location") or ""
        hit = [s for s in sops if s in loc]
        assert len(hit) == 1, f"part Content-Location {loc!r} names none of the instances"
        named.add(hit[0])
        assert kp.open_image(p.content).size == (8, 8)
    assert named == sops


def test_series_png_parts_match_instances(api, manifest):
    A = manifest.syn("A")
    st, se = A["study_instance_uid"], A["series_instance_uids"][0]
    entries = {e["sop_instance_uid"]: e for e in manifest.series(se)}
    parts = _multipart_images(rendered(api, kh.series_path(st, se), None,
                                       {"Accept": 'multipart/related; type="image/png"'}), "image/png")
    for p in parts:
        sop = [s for s in entries if s in (p.headers.get("content-location") or "")][0]
        assert np.array_equal(kp.image_array(p.content), png_of(api, entries[sop]))


# --------------------------------------------------------------------------
# Multi-frame
# --------------------------------------------------------------------------
def test_multiframe_png_is_first_frame(api, manifest):
    e = manifest.by_name("SC_rgb_rle_2frame.dcm")
    ref = kp.reference(manifest, e)
    got = kp.rgb(png_of(api, e))
    ok, msg = kp.within(got, ref[0], kp.RENDER_TOL)
    assert ok, f"instance render is not frame 1: {msg}"


@pytest.mark.parametrize("frame", [1, 2])
def test_multiframe_frame_render(api, manifest, frame):
    e = manifest.by_name("SC_rgb_rle_2frame.dcm")
    ref = kp.reference(manifest, e)
    got = kp.rgb(png_of(api, e, frame=frame))
    ok, msg = kp.within(got, ref[frame - 1], kp.RENDER_TOL)
    assert ok, f"frame {frame}: {msg}"


def test_multiframe_jpeg_frame_render(api, manifest):
    e = manifest.by_name("examples_ybr_color.dcm")
    ref = kp.reference(manifest, e)
    got = kp.rgb(png_of(api, e, frame=7))
    ok, msg = kp.lossy_within(got, ref[6])
    assert ok, f"frame 7 of the YBR JPEG: {msg}"


@pytest.mark.parametrize("name", ["SC_rgb_rle_2frame.dcm", "rtdose.dcm"])
def test_multiframe_gif_is_animated(api, manifest, name):
    e = manifest.by_name(name)
    body = single_image(rendered(api, entry_path(e), None, GIF), "image/gif")
    im = kp.open_image(body)
    assert getattr(im, "n_frames", 1) == e["number_of_frames"], (
        f"animated GIF has {getattr(im, 'n_frames', 1)} frames, instance has {e['number_of_frames']}")
    assert im.size == (e["columns"], e["rows"])


def test_multiframe_gif_frames_follow_the_data(api, manifest):
    e = manifest.by_name("SC_rgb_rle_2frame.dcm")
    im = kp.open_image(single_image(rendered(api, entry_path(e), None, GIF), "image/gif"))
    ref = kp.reference(manifest, e)
    frames = []
    for i in range(im.n_frames):
        im.seek(i)
        frames.append(np.asarray(im.convert("RGB")).astype(int))
    # A GIF has a 256-colour palette: compare loosely, but each frame must be nearer its own frame.
    for i, f in enumerate(frames):
        d_own = np.abs(f - ref[i].astype(int)).mean()
        d_other = np.abs(f - ref[1 - i].astype(int)).mean()
        assert d_own < d_other, f"GIF frame {i + 1} is not frame {i + 1} of the instance"


def test_frame_beyond_number_of_frames_404(api, manifest):
    e = manifest.by_name("SC_rgb_rle_2frame.dcm")
    assert rendered(api, entry_path(e) + "/frames/3", None, JPEG).status_code == 404
    e = manifest.by_name("CT_small.dcm")
    resp = rendered(api, entry_path(e) + "/frames/2", None, JPEG)
    assert resp.status_code == 404, describe(resp)


@pytest.mark.parametrize("frames", ["0", "abc"])
def test_frame_invalid_400(api, manifest, frames):
    e = manifest.by_name("SC_rgb_rle_2frame.dcm")
    resp = rendered(api, entry_path(e) + f"/frames/{frames}", None, JPEG)
    assert resp.status_code == 400, describe(resp)


@pytest.mark.parametrize("name", ["reportsi.dcm", "rtplan.dcm"])
def test_rendered_without_pixels_404_or_406(api, manifest, name):
    e = manifest.by_name(name)
    resp = rendered(api, entry_path(e), None, JPEG)
    assert resp.status_code in (404, 406), describe(resp)


def test_rendered_unknown_instance_404(api, manifest):
    e = manifest.by_name("CT_small.dcm")
    path = kh.instance_path(e["study_instance_uid"], e["series_instance_uid"], "1.2.3.4.5.6.7.8.9.10")
    resp = rendered(api, path, None, JPEG)
    assert resp.status_code == 404, describe(resp)


# --------------------------------------------------------------------------
# Pixels: default VOI, window parameter, colour, MONOCHROME1, palette
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", IMAGE_FIXTURES)
def test_default_render_matches_reference(api, manifest, name):
    """Every image fixture renders (PNG, frame 1) like the numpy reference of its default presentation:
    WindowCenter/Width when present, else min-max; colour as RGB.  1-bit (SEG) may answer 406,
    and so may 12-bit JPEG (documented, kastell_pixels.MAY_BE_UNDECODABLE); never a 500."""
    e = manifest.by_name(name)
    ds = manifest.dataset(e)
    resp = rendered(api, entry_path(e), None, PNG)
    if int(ds.get("BitsAllocated", 8)) == 1 and resp.status_code == 406:
        return
    if kp.undecodable_ok(e, resp):
        return
    got = kp.image_array(single_image(resp, "image/png"))
    frames = kp.reference(manifest, e)
    lossy = kp.is_lossy(ds)
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        ok, msg = (kp.lossy_within if lossy else lambda g, r: kp.within(g, r, kp.RENDER_TOL))(kp.rgb(got), frames[0])
        assert ok, msg
        return
    refs, tol = kp.default_grey_references(ds, frames)
    g = kp.gray(got)
    results = []
    for ref in refs:
        ok, msg = kp.lossy_within(g, ref, tol) if lossy else kp.within(g, ref, tol)
        if ok:
            return
        results.append(msg)
    pytest.fail(f"{name}: no reference matches: {results}")


@pytest.mark.parametrize("function", ["linear", "linear-exact", "sigmoid"])
def test_window_param_ct(api, manifest, function):
    """window=40,400,<function> on CT_small against PS3.3 C.11.2.1.2 applied to pydicom's
    modality-rescaled pixels (RescaleSlope/Intercept), 8-bit output, +-1."""
    e = manifest.by_name("CT_small.dcm")
    ds = manifest.dataset(e)
    x = kp.modality(kp.reference(manifest, e)[0], ds)
    ref = kp.voi(x, 40, 400, function)
    got = kp.gray(png_of(api, e, {"window": f"40,400,{function}"}))
    ok, msg = kp.within(got, ref, kp.RENDER_TOL)
    assert ok, msg


def test_window_param_differs_from_default(api, manifest):
    e = manifest.by_name("MR_small.dcm")
    assert not np.array_equal(png_of(api, e), png_of(api, e, {"window": "100,200,linear"}))


def test_window_param_on_frame(api, manifest):
    e = manifest.by_name("MR_small.dcm")
    ds = manifest.dataset(e)
    x = kp.modality(kp.reference(manifest, e)[0], ds)
    got = kp.gray(png_of(api, e, {"window": "300,600,linear"}, frame=1))
    ok, msg = kp.within(got, kp.voi(x, 300, 600, "linear"), kp.RENDER_TOL)
    assert ok, msg


@pytest.mark.parametrize("value", ["40,400", "40", "40,400,cubic", "a,400,linear", "40,b,linear", "",
                                   "40,400,linear,1"])
def test_window_malformed_400(api, manifest, value):
    e = manifest.by_name("CT_small.dcm")
    resp = rendered(api, entry_path(e), {"window": value}, PNG)
    assert resp.status_code == 400, describe(resp)


@pytest.fixture(scope="module")
def monochrome1(api, manifest):
    """MR_small turned MONOCHROME1 with fresh UIDs; deleted afterwards."""
    e = manifest.by_name("MR_small.dcm")
    _, entry = _store_variant(api, manifest.path(e),
                              lambda ds: setattr(ds, "PhotometricInterpretation", "MONOCHROME1"))
    yield e, entry
    api.session.delete(api.url(kh.study_path(entry["study_instance_uid"])), timeout=kh.TIMEOUT)


@pytest.mark.parametrize("params", [None, {"window": "600,1600,linear"}, {"window": "300,600,sigmoid"}],
                         ids=["default", "window", "sigmoid"])
def test_monochrome1_inverted(api, monochrome1, params):
    mono2, mono1 = monochrome1
    a = kp.gray(png_of(api, mono2, params)).astype(int)
    b = kp.gray(png_of(api, mono1, params)).astype(int)
    d = np.abs((255 - a) - b)
    assert d.max() <= kp.RENDER_TOL, f"MONOCHROME1 render is not 255 - MONOCHROME2: max diff {d.max()}"


@pytest.mark.parametrize("name", ["SC_rgb_small_odd.dcm", "SC_rgb_jpeg_gdcm.dcm", "SC_rgb_jpeg_dcmtk.dcm",
                                  "examples_ybr_color.dcm"])
def test_colour_rendered_as_rgb(api, manifest, name):
    e = manifest.by_name(name)
    ds = manifest.dataset(e)
    ref = kp.reference(manifest, e)[0]
    got = png_of(api, e)
    assert got.ndim == 3, "colour image rendered grey"
    ok, msg = kp.lossy_within(got, ref) if kp.is_lossy(ds) else kp.within(got, ref, kp.RENDER_TOL)
    assert ok, f"{name} ({ds.PhotometricInterpretation}): {msg}"


@pytest.fixture(scope="module")
def palette(api):
    """pydicom's PALETTE COLOR example, stored with fresh UIDs; deleted afterwards."""
    from pydicom.data import get_testdata_file
    path = get_testdata_file("examples_palette.dcm", download=False)
    if not path:
        pytest.skip("pydicom ships no palette colour example")
    ds, entry = _store_variant(api, path, lambda ds: None)
    yield ds, entry
    api.session.delete(api.url(kh.study_path(entry["study_instance_uid"])), timeout=kh.TIMEOUT)


def test_palette_colour(api, palette):
    """PALETTE COLOR through its LUTs (16-bit entries scaled to 8 bits), +-2."""
    from pydicom.pixels import apply_color_lut
    ds, entry = palette
    lut = apply_color_lut(ds.pixel_array, ds).astype(np.float64)
    bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    ref = lut / ((1 << bits) - 1) * 255.0
    got = png_of(api, entry)
    assert got.ndim == 3, "palette colour rendered grey"
    ok, msg = kp.within(got, ref, 2)
    assert ok, msg


# --------------------------------------------------------------------------
# Modality LUT and VOI LUT sequences (PS3.3 C.11.1, C.11.2)
# --------------------------------------------------------------------------
VOI_LUT_FIRST, VOI_LUT_ENTRIES, VOI_LUT_BITS = -1000, 2500, 12


@pytest.fixture(scope="module")
def lut_images(api, manifest):
    """CT_small with a non-linear 12-bit VOI LUT (signed first value mapped, OW data) and a
    stored window it must be preferred to; MR_small with an inverting Modality LUT (US data)
    instead of a rescale. Both deleted afterwards."""
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset

    def with_voi_lut(ds):
        item = Dataset()
        item.add(DataElement(0x00283002, "SS", [VOI_LUT_ENTRIES, VOI_LUT_FIRST, VOI_LUT_BITS]))
        curve = np.round(4095 * (np.arange(VOI_LUT_ENTRIES) / (VOI_LUT_ENTRIES - 1)) ** 0.5).astype("<u2")
        item.add(DataElement(0x00283006, "OW", curve.tobytes()))
        item.LUTExplanation = "gamma 0.5"
        ds.VOILUTSequence = [item]
        ds.WindowCenter, ds.WindowWidth = 40, 400

    def with_modality_lut(ds):
        item = Dataset()
        item.add(DataElement(0x00283002, "US", [4096, 0, 16]))
        item.add(DataElement(0x00283006, "US", [4095 - v for v in range(4096)]))
        item.ModalityLUTType = "US"
        ds.ModalityLUTSequence = [item]
        for keyword in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
            if keyword in ds:
                delattr(ds, keyword)

    stored = {
        "voi": _store_variant(api, manifest.path(manifest.by_name("CT_small.dcm")), with_voi_lut),
        "modality": _store_variant(api, manifest.path(manifest.by_name("MR_small.dcm")), with_modality_lut),
    }
    yield stored
    for _, entry in stored.values():
        api.session.delete(api.url(kh.study_path(entry["study_instance_uid"])), timeout=kh.TIMEOUT)


def test_voi_lut_sequence_is_the_default_presentation(api, lut_images):
    """The VOI LUT (preferred to the stored window, as pydicom's apply_voi_lut does) applied to
    the modality values, its 12-bit output scaled to 8 bits, +-1."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
    ds, entry = lut_images["voi"]
    values = np.floor(apply_modality_lut(ds.pixel_array, ds)).astype(np.int32)
    ref = apply_voi_lut(values, ds, prefer_lut=True).astype(np.float64) / ((1 << VOI_LUT_BITS) - 1) * 255.0
    assert not np.allclose(ref, kp.voi(values, 40, 400)), "the fixture must tell the LUT from the window"
    ok, msg = kp.within(kp.gray(png_of(api, entry)), ref, kp.RENDER_TOL)
    assert ok, msg


def test_window_parameter_overrides_the_voi_lut(api, lut_images):
    ds, entry = lut_images["voi"]
    x = kp.modality(ds.pixel_array, ds)
    got = kp.gray(png_of(api, entry, {"window": "300,1200,linear"}))
    ok, msg = kp.within(got, kp.voi(x, 300, 1200, "linear"), kp.RENDER_TOL)
    assert ok, msg


def test_voi_lut_in_thumbnail(api, lut_images):
    """Thumbnails present the image the same way: same mean grey as the rendered image, +-2."""
    _, entry = lut_images["voi"]
    full = kp.gray(png_of(api, entry)).astype(np.float64)
    resp = api.get(entry_path(entry) + "/thumbnail", headers=PNG)
    thumb = kp.gray(kp.image_array(single_image(resp, "image/png"))).astype(np.float64)
    assert abs(full.mean() - thumb.mean()) <= 2, f"rendered mean {full.mean():.1f}, thumbnail {thumb.mean():.1f}"


def test_modality_lut_sequence_replaces_the_rescale(api, lut_images):
    """Stored values through the Modality LUT (pydicom's apply_modality_lut), then the window."""
    ds, entry = lut_images["modality"]
    x = kp.modality(ds.pixel_array, ds)
    assert x.max() > 4095 - 200, "the fixture's Modality LUT must invert the values"
    got = kp.gray(png_of(api, entry, {"window": "3000,2000,linear"}))
    ok, msg = kp.within(got, kp.voi(x, 3000, 2000, "linear"), kp.RENDER_TOL)
    assert ok, msg


# --------------------------------------------------------------------------
# viewport
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name,viewport,size", [
    ("CT_small.dcm", "64,64", (64, 64)),
    ("CT_small.dcm", "64,32", (32, 32)),
    ("CT_small.dcm", "32,64", (32, 32)),
    ("JPEG2000.dcm", "128,128", (32, 128)),
    ("JPEG2000.dcm", "256,256", (64, 256)),
    ("CT_small.dcm", "64,64,0,0,64,64", (64, 64)),
    ("CT_small.dcm", "32,32,64,64,64,64", (32, 32)),
    ("CT_small.dcm", "64,64,0,0,128,64", (64, 32)),
])
def test_viewport_size(api, manifest, name, viewport, size):
    e = manifest.by_name(name)
    body = single_image(rendered(api, entry_path(e), {"viewport": viewport}, PNG), "image/png")
    assert size_of(body) == size, f"viewport={viewport}: {size_of(body)} (w,h), expected {size}"


def test_viewport_crop_content(api, manifest):
    """viewport=64,64,32,16,64,64 crops then scales 1:1: the same pixels as the full render."""
    e = manifest.by_name("CT_small.dcm")
    w = {"window": "40,400,linear"}
    full = kp.gray(png_of(api, e, w)).astype(int)
    crop = kp.gray(png_of(api, e, {**w, "viewport": "64,64,32,16,64,64"})).astype(int)
    assert crop.shape == (64, 64)
    d = np.abs(crop - full[16:80, 32:96])
    assert d.max() <= kp.RENDER_TOL, f"cropped region differs from the full render: max {d.max()}"


def test_viewport_scaled_content(api, manifest):
    """viewport=64,64 on a 128x128 image is close to the 2x2 block means of the full render."""
    e = manifest.by_name("CT_small.dcm")
    w = {"window": "40,400,linear"}
    full = kp.gray(png_of(api, e, w)).astype(float)
    small = kp.gray(png_of(api, e, {**w, "viewport": "64,64"})).astype(float)
    blocks = full.reshape(64, 2, 64, 2).mean(axis=(1, 3))
    assert np.abs(small - blocks).mean() < 8, "downscaled image does not resemble the original"


@pytest.mark.parametrize("value", ["64", "0,64", "64,0", "a,b", "-64,64", "64,64,0,0,0,0,0", "64,64,x,0,10,10", ""])
def test_viewport_malformed_400(api, manifest, value):
    e = manifest.by_name("CT_small.dcm")
    resp = rendered(api, entry_path(e), {"viewport": value}, PNG)
    assert resp.status_code == 400, describe(resp)


# --------------------------------------------------------------------------
# quality
# --------------------------------------------------------------------------
def test_quality_changes_jpeg_size(api, manifest):
    e = manifest.by_name("CT_small.dcm")
    low = single_image(rendered(api, entry_path(e), {"quality": "5"}, JPEG), "image/jpeg")
    high = single_image(rendered(api, entry_path(e), {"quality": "95"}, JPEG), "image/jpeg")
    assert len(low) < len(high), f"quality=5 gave {len(low)} bytes, quality=95 {len(high)}"


@pytest.mark.parametrize("value", ["1", "100"])
def test_quality_bounds_accepted(api, manifest, value):
    e = manifest.by_name("CT_small.dcm")
    single_image(rendered(api, entry_path(e), {"quality": value}, JPEG), "image/jpeg")


@pytest.mark.parametrize("value", ["0", "101", "abc", "-5", "50.5", ""])
def test_quality_invalid_400(api, manifest, value):
    e = manifest.by_name("CT_small.dcm")
    resp = rendered(api, entry_path(e), {"quality": value}, JPEG)
    assert resp.status_code == 400, describe(resp)


# --------------------------------------------------------------------------
# annotation
# --------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["patient,technique", "patient", "technique"])
def test_annotation_changes_image(api, manifest, value):
    e = manifest.by_name("CT_small.dcm")
    # Annotation text may be coloured: compare in RGB.
    plain = kp.rgb(png_of(api, e))
    annotated = kp.rgb(png_of(api, e, {"annotation": value}))
    assert annotated.shape == plain.shape
    assert not np.array_equal(plain, annotated), f"annotation={value} left the image unchanged"


def test_annotation_empty_400(api, manifest):
    e = manifest.by_name("CT_small.dcm")
    resp = rendered(api, entry_path(e), {"annotation": ""}, PNG)
    assert resp.status_code == 400, describe(resp)


@pytest.mark.parametrize("value", ["foo", "patient,foo"])
def test_annotation_unknown_warns(api, manifest, value):
    e = manifest.by_name("CT_small.dcm")
    resp = rendered(api, entry_path(e), {"annotation": value}, PNG)
    single_image(resp, "image/png")
    assert kh.has_warning_299(resp), f"no Warning: 299 for annotation={value}: {resp.headers}"
    assert "foo" in " ".join(kh.warnings_of(resp)), "the warning should name the unsupported value"


def test_annotation_patient_on_series_parts(api, manifest):
    A = manifest.syn("A")
    path = kh.series_path(A["study_instance_uid"], A["series_instance_uids"][0])
    accept = {"Accept": 'multipart/related; type="image/png"'}
    plain = _multipart_images(rendered(api, path, None, accept), "image/png")
    ann = _multipart_images(rendered(api, path, {"annotation": "patient"}, accept), "image/png")
    assert len(plain) == len(ann) == 3
