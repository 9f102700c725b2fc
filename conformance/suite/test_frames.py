"""WADO-RS frames (rule 87, 88 and VIEWER.md): every frame of every image fixture,
compared with pydicom's reading of the stored file."""
from __future__ import annotations

import pytest

import kastell_helpers as kh
from kastell_helpers import EXPLICIT_LE, describe, entry_path

OCTET_ANY = "multipart/related; type=application/octet-stream; transfer-syntax=*"


def _frames_of(ds) -> list[bytes]:
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if "PixelData" not in ds:
        return []
    ts = str(ds.file_meta.TransferSyntaxUID)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        return kh.encapsulated_frames(ds)
    raw = kh.pixel_bytes_le(ds)
    size = len(raw) // n
    return [raw[i * size:(i + 1) * size] for i in range(n)] if ts else []


def _image_entries(manifest):
    out = []
    for e in manifest.files:
        ds = manifest.dataset(e)
        if "PixelData" in ds and int(ds.get("BitsAllocated", 8)) >= 8:
            out.append((e, ds))
    return out


def test_every_frame_of_every_image(api, manifest, stored):
    checked = 0
    problems = []
    for e, ds in _image_entries(manifest):
        expected = _frames_of(ds)
        numbers = list(range(1, len(expected) + 1))
        resp = api.get(entry_path(e) + "/frames/" + ",".join(map(str, numbers)), headers={"Accept": OCTET_ANY})
        if resp.status_code != 200:
            problems.append(f"{e['source']}: {describe(resp)}")
            continue
        parts = kh.multipart_response(resp)
        if len(parts) != len(expected):
            problems.append(f"{e['source']}: {len(parts)} parts for {len(expected)} frames")
            continue
        compressed = ds.file_meta.TransferSyntaxUID.is_compressed
        for n, (part, frame) in enumerate(zip(parts, expected), start=1):
            mtype, params = kh.parse_media_type(part.content_type)
            want_ts = str(ds.file_meta.TransferSyntaxUID) if compressed else EXPLICIT_LE
            if params.get("transfer-syntax") != want_ts:
                problems.append(f"{e['source']} frame {n}: Content-Type {part.content_type!r}, expected {want_ts}")
            if compressed == (mtype == "application/octet-stream"):
                problems.append(f"{e['source']} frame {n}: media type {mtype} does not name the encoding")
            if not (part.headers.get("content-location") or "").endswith(f"/frames/{n}"):
                problems.append(f"{e['source']} frame {n}: Content-Location {part.headers.get('content-location')!r}")
            body = part.content
            # Fragments may carry one trailing padding byte to even length.
            if body != frame and body.rstrip(b"\0") != frame.rstrip(b"\0"):
                problems.append(f"{e['source']} frame {n}: {len(body)} bytes differ from pydicom's {len(frame)}")
        checked += 1
    assert checked >= 5, f"only {checked} images checked"
    assert not problems, "\n".join(problems[:30])


def test_frame_errors(api, manifest, stored):
    e, ds = _image_entries(manifest)[0]
    n = int(ds.get("NumberOfFrames", 1) or 1)
    base = entry_path(e) + "/frames/"
    assert api.get(base + "0", headers={"Accept": OCTET_ANY}).status_code == 400
    assert api.get(base + "abc", headers={"Accept": OCTET_ANY}).status_code == 400
    assert api.get(base + str(n + 1), headers={"Accept": OCTET_ANY}).status_code == 404


def test_encapsulated_frames_are_indexed_at_stow(manifest, stored):
    """Each compressed frame is located from an offset table built while the instance
    streamed in (so one frame is one ranged read). Checked in the SQLite index of the
    embedded default; other index databases are covered by the same code path."""
    import os
    import sqlite3

    if os.environ.get("KASTELL_INDEX_URL"):
        pytest.skip("the index is not the embedded SQLite file")
    index = os.path.join(os.environ["KASTELL_DATA_DIR"], "index.sqlite")
    db = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
    try:
        for name, frames in [("examples_ybr_color.dcm", 30), ("SC_rgb_rle_2frame.dcm", 2),
                             ("JPEG2000.dcm", 1), ("MR_small_RLE.dcm", 1)]:
            e = manifest.by_name(name)
            (offsets,) = db.execute("SELECT frame_offsets FROM instances WHERE sop_instance_uid = ?",
                                    (e["sop_instance_uid"],)).fetchone()
            assert offsets, f"{name}: no frame index"
            bounds = [int(v) for v in offsets.split()]
            assert len(bounds) == frames + 1, (name, bounds)
            assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds), (name, bounds)
        e = manifest.by_name("CT_small.dcm")
        (offsets,) = db.execute("SELECT frame_offsets FROM instances WHERE sop_instance_uid = ?",
                                (e["sop_instance_uid"],)).fetchone()
        assert offsets is None, "native pixel data needs no index"
    finally:
        db.close()
