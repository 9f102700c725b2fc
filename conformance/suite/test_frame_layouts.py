"""Encapsulated frame layouts (issue 5): frames split over several fragments with a
Basic Offset Table, without one (frames found by their JPEG start markers), and with
an Extended Offset Table. Each layout is built with pydicom from the 30-frame JPEG
fixture, stored, and every frame is compared as stored and decoded."""
from __future__ import annotations

import copy
import io

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

import kastell_helpers as kh
from kastell_helpers import describe

OCTET_ANY = "multipart/related; type=application/octet-stream; transfer-syntax=*"
OCTET_NATIVE = "multipart/related; type=application/octet-stream"


def _split(frame: bytes, pieces: int) -> list[bytes]:
    """Cuts a frame into `pieces` even-length fragments."""
    size = -(-len(frame) // pieces)
    size += size % 2
    return [frame[i:i + size] for i in range(0, len(frame), size)]


def _item(value: bytes) -> bytes:
    return b"\xfe\xff\x00\xe0" + len(value).to_bytes(4, "little") + value


def _layout(source, layout: str):
    """Re-encapsulates the fixture's frames, three fragments each, with a Basic
    Offset Table ("bot"), an empty one ("markers") or an Extended one ("extended")."""
    ds = copy.deepcopy(source)
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    fragments, offsets, at = [], [], 0
    for frame in frames:
        offsets.append(at)
        for piece in _split(frame, 3):
            item = _item(piece)
            fragments.append(item)
            at += len(item)
    table = b"".join(o.to_bytes(4, "little") for o in offsets) if layout == "bot" else b""
    if layout == "extended":
        ds.ExtendedOffsetTable = b"".join(o.to_bytes(8, "little") for o in offsets)
        ds.ExtendedOffsetTableLengths = b"".join(len(f).to_bytes(8, "little") for f in frames)
    ds.PixelData = _item(table) + b"".join(fragments) + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    ds["PixelData"].is_undefined_length = True
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return ds, frames, out.getvalue()


@pytest.mark.parametrize("layout", ["bot", "markers", "extended"])
def test_fragmented_frames(api, layout):
    source = pydicom.dcmread(pydicom.data.get_testdata_file("examples_ybr_color.dcm"))
    ds, frames, data = _layout(source, layout)
    resp = kh.stow(api, [data])
    assert resp.status_code == 200, describe(resp)
    path = kh.study_path(ds.StudyInstanceUID) + f"/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    try:
        for n in (1, 2, 15, len(frames)):
            r = api.get(f"{path}/frames/{n}", headers={"Accept": OCTET_ANY})
            assert r.status_code == 200, describe(r)
            (part,) = kh.multipart_response(r)
            assert part.content.rstrip(b"\0") == frames[n - 1].rstrip(b"\0"), f"{layout} frame {n}"
        # Decoded: the same pixels pydicom decodes from the stored layout.
        reference = pydicom.dcmread(pydicom.data.get_testdata_file("examples_ybr_color.dcm")).pixel_array
        r = api.get(f"{path}/frames/{len(frames)}", headers={"Accept": OCTET_NATIVE})
        assert r.status_code == 200, describe(r)
        (part,) = kh.multipart_response(r)
        got = np.frombuffer(part.content, dtype=np.uint8).reshape(reference[-1].shape)
        diff = np.abs(got.astype(int) - reference[-1].astype(int))
        assert diff.max() <= 8 and diff.mean() < 1.0, (layout, diff.max(), diff.mean())
    finally:
        api.session.delete(api.url(kh.study_path(ds.StudyInstanceUID)))
