"""High-Throughput JPEG 2000 (issue 13): an HTJ2K Lossless instance (.4.201) and one with
RPCL options (.4.202), made here from pydicom's MR_small.dcm with OpenJPH's encoder
(`ojph_compress`, Debian's openjph-tools, which the test command installs), is stored
as sent and decoded on retrieval to exactly the original pixels: the instance in
Explicit VR Little Endian, a frame as native octets, and a rendered image."""
from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid

import kastell_helpers as kh
from kastell_helpers import ACCEPT_DICOM, EXPLICIT_LE, describe

HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_RPCL = "1.2.840.10008.1.2.4.202"
OCTET_NATIVE = f'multipart/related; type="application/octet-stream"; transfer-syntax={EXPLICIT_LE}'


def _htj2k_instance(syntax: str) -> tuple[pydicom.Dataset, np.ndarray, bytes]:
    encoder = shutil.which("ojph_compress")
    assert encoder, "ojph_compress (Debian: openjph-tools) is needed to make the HTJ2K fixture"
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("MR_small.dcm"))
    pixels = ds.pixel_array.astype("<i2")
    rows, columns = pixels.shape
    with tempfile.TemporaryDirectory() as tmp:
        raw, j2c = Path(tmp) / "in.yuv", Path(tmp) / "out.j2c"
        pixels.tofile(raw)
        args = [encoder, "-i", str(raw), "-o", str(j2c), "-reversible", "true",
                "-dims", f"{{{columns},{rows}}}", "-num_comps", "1", "-signed", "true",
                "-bit_depth", "16", "-downsamp", "{1,1}"]
        args += ["-prog_order", "RPCL" if syntax == HTJ2K_RPCL else "LRCP"]
        subprocess.run(args, check=True, capture_output=True)
        codestream = j2c.read_bytes()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PatientID = "KST-HTJ2K"
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return ds, pixels, out.getvalue()


@pytest.fixture(scope="module", params=[HTJ2K_LOSSLESS, HTJ2K_RPCL], ids=["4.201", "4.202"])
def stored(api, request):
    ds, pixels, data = _htj2k_instance(request.param)
    resp = kh.stow(api, [data])
    assert resp.status_code == 200, describe(resp)
    path = kh.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    yield request.param, path, pixels
    api.session.delete(api.url(kh.study_path(ds.StudyInstanceUID)), timeout=kh.TIMEOUT)


def test_stored_as_sent(api, stored):
    syntax, path, _ = stored
    resp = api.get(path, headers={"Accept": f"{ACCEPT_DICOM}; transfer-syntax=*"})
    assert resp.status_code == 200, describe(resp)
    (part,) = kh.multipart_response(resp, "application/dicom")
    got = pydicom.dcmread(io.BytesIO(part.content))
    assert str(got.file_meta.TransferSyntaxUID) == syntax


def test_decoded_to_explicit_le_exactly(api, stored):
    _, path, pixels = stored
    resp = api.get(path, headers={"Accept": f"{ACCEPT_DICOM}; transfer-syntax={EXPLICIT_LE}"})
    assert resp.status_code == 200, describe(resp)
    (part,) = kh.multipart_response(resp, "application/dicom")
    got = pydicom.dcmread(io.BytesIO(part.content))
    assert str(got.file_meta.TransferSyntaxUID) == EXPLICIT_LE
    assert np.array_equal(got.pixel_array.astype("<i2"), pixels), "lossless HTJ2K must decode exactly"


def test_frame_decoded_exactly(api, stored):
    _, path, pixels = stored
    resp = api.get(f"{path}/frames/1", headers={"Accept": OCTET_NATIVE})
    assert resp.status_code == 200, describe(resp)
    (part,) = kh.multipart_response(resp)
    got = np.frombuffer(part.content, dtype="<i2").reshape(pixels.shape)
    assert np.array_equal(got, pixels)


def test_rendered(api, stored):
    _, path, pixels = stored
    resp = api.get(f"{path}/rendered", headers={"Accept": "image/png"})
    assert resp.status_code == 200, describe(resp)
    assert resp.content.startswith(b"\x89PNG")
