"""STOW-RS with DICOM JSON metadata and bulk data parts (rule 33, PS3.18 §10.5.1.4):
`multipart/related; type="application/dicom+json"`, one metadata part holding an array of
data sets, bulk data parts named by the BulkDataURIs (Content-Location, or cid: + Content-ID).
What is stored is checked by retrieving it as a PS3.10 file and comparing with pydicom's
reading of the source file: attributes, pixels, compressed frames byte for byte."""
from __future__ import annotations

import io
import json
import uuid

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

import kastell_helpers as kh
from kastell_helpers import FAILURE_REASON, describe, failed, first, referenced, store_response

NOT_DICOM = 0xC000
UNSUPPORTED_MEDIA = 0xC122


def _source(name: str) -> pydicom.Dataset:
    path = get_testdata_file(name, download=False)
    if not path:
        pytest.skip(f"pydicom ships no {name}")
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    return ds


def _metadata(ds: pydicom.Dataset, uris: dict[str, str]) -> dict:
    """The data set as DICOM JSON, the attributes in `uris` (tag -> URI) as BulkDataURIs."""
    doc = ds.to_json_dict()
    for tag, uri in uris.items():
        doc[tag] = {"vr": doc[tag]["vr"], "BulkDataURI": uri}
    return doc


def _post(api, parts: list[tuple[bytes, dict[str, str]]], study: str | None = None):
    """POST a multipart/related; type="application/dicom+json" body of (content, headers) parts."""
    boundary = f"kastell-{uuid.uuid4().hex}"
    out = io.BytesIO()
    for content, headers in parts:
        out.write(f"--{boundary}\r\n".encode())
        for name, value in headers.items():
            out.write(f"{name}: {value}\r\n".encode())
        out.write(b"\r\n" + content + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    ctype = f'multipart/related; type="application/dicom+json"; boundary={boundary}'
    path = f"/studies/{study}" if study else "/studies"
    return api.post(path, data=out.getvalue(), headers={"Content-Type": ctype, "Accept": kh.DICOM_JSON})


def _json_part(datasets: list[dict]) -> tuple[bytes, dict[str, str]]:
    return json.dumps(datasets).encode(), {"Content-Type": "application/dicom+json"}


def _retrieve(api, ds: pydicom.Dataset) -> pydicom.Dataset:
    resp = api.get(kh.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID),
                   headers={"Accept": 'application/dicom; transfer-syntax=*'})
    assert resp.status_code == 200, describe(resp)
    return pydicom.dcmread(io.BytesIO(resp.content))


def _same_attributes(stored: pydicom.Dataset, source: pydicom.Dataset):
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                    "SOPClassUID", "Modality", "Rows", "Columns", "BitsAllocated", "PhotometricInterpretation"):
        if keyword in source:
            assert stored.get(keyword) == source.get(keyword), keyword


def _delete(api, *datasets):
    for ds in datasets:
        api.session.delete(api.url(kh.study_path(ds.StudyInstanceUID)), timeout=kh.TIMEOUT)


def test_native_pixels_from_an_octet_stream_part(api):
    """CT_small as metadata + one octet-stream part, the metadata part last (order does not
    matter): stored as Explicit VR Little Endian, pixels equal to pydicom's."""
    ds = _source("CT_small.dcm")
    uri = f"{api.base}/bulk/{uuid.uuid4().hex}"
    resp = _post(api, [
        (ds.PixelData, {"Content-Type": "application/octet-stream", "Content-Location": uri}),
        _json_part([_metadata(ds, {"7FE00010": uri})]),
    ])
    assert resp.status_code == 200, describe(resp)
    assert len(referenced(store_response(resp))) == 1
    stored = _retrieve(api, ds)
    assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert stored.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    _same_attributes(stored, ds)
    assert np.array_equal(stored.pixel_array, ds.pixel_array)
    # Searchable and rendered like any other instance.
    _, found = kh.qido(api, "/instances", {"SOPInstanceUID": ds.SOPInstanceUID})
    assert len(found) == 1
    rendered = api.get(kh.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) + "/rendered",
                       headers={"Accept": "image/png"})
    assert rendered.status_code == 200, describe(rendered)
    _delete(api, ds)


@pytest.mark.parametrize("name,media_type", [
    ("SC_rgb_jpeg_dcmtk.dcm", "image/jpeg"),
    ("SC_rgb_rle_2frame.dcm", "image/dicom-rle"),
])
def test_compressed_frames_one_part_each(api, name, media_type):
    """Compressed pixel data as one part per frame under one Content-Location, with the
    transfer-syntax parameter: stored encapsulated in that syntax, each frame byte for byte."""
    ds = _source(name)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    count = int(ds.get("NumberOfFrames", 1))
    frames = list(generate_frames(ds.PixelData, number_of_frames=count))
    uri = f"{api.base}/bulk/{uuid.uuid4().hex}"
    parts = [_json_part([_metadata(ds, {"7FE00010": uri})])]
    parts += [(frame, {"Content-Type": f"{media_type}; transfer-syntax={syntax}", "Content-Location": uri})
              for frame in frames]
    resp = _post(api, parts)
    assert resp.status_code == 200, describe(resp)
    stored = _retrieve(api, ds)
    assert stored.file_meta.TransferSyntaxUID == syntax
    _same_attributes(stored, ds)
    got = list(generate_frames(stored.PixelData, number_of_frames=count))
    assert [g[:len(f)] for g, f in zip(got, frames)] == frames
    # Frames are found and served as stored.
    path = kh.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    frame = api.get(f"{path}/frames/{count}", headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'})
    assert frame.status_code == 200, describe(frame)
    body = kh.multipart_response(frame)[0].content
    assert body[:len(frames[-1])] == frames[-1]
    _delete(api, ds)


def test_non_pixel_bulk_data_and_content_id(api):
    """An Encapsulated PDF whose document is a bulk data part named by cid: + Content-ID."""
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "DOC", "KST-JSON-PDF", "Json^Pdf"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    document = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"
    ds.EncapsulatedDocument = document + (b"\0" if len(document) % 2 else b"")
    doc = ds.to_json_dict()
    doc["00420011"] = {"vr": "OB", "BulkDataURI": "cid:pdf-1@kastell.test"}
    resp = _post(api, [
        _json_part([doc]),
        (document, {"Content-Type": "application/octet-stream", "Content-ID": "<pdf-1@kastell.test>"}),
    ])
    assert resp.status_code == 200, describe(resp)
    stored = _retrieve(api, ds)
    assert stored.EncapsulatedDocument.rstrip(b"\0") == document.rstrip(b"\0")
    assert stored.PatientName == "Json^Pdf"
    _delete(api, ds)


def test_each_data_set_fails_alone(api):
    """Three data sets: one stored, one without SOPInstanceUID, one naming a part that is not
    there: 202, two FailedSOPSequence items with 0xC000, the good one retrievable."""
    good, no_uid, dangling = _source("CT_small.dcm"), _source("CT_small.dcm"), _source("CT_small.dcm")
    uri = f"{api.base}/bulk/{uuid.uuid4().hex}"
    missing = _metadata(no_uid, {"7FE00010": uri})
    del missing["00080018"]
    resp = _post(api, [
        _json_part([_metadata(good, {"7FE00010": uri}), missing,
                    _metadata(dangling, {"7FE00010": uri + "-not-sent"})]),
        (good.PixelData, {"Content-Type": "application/octet-stream", "Content-Location": uri}),
    ])
    assert resp.status_code == 202, describe(resp)
    doc = store_response(resp)
    assert [first(item, FAILURE_REASON) for item in failed(doc)] == [NOT_DICOM, NOT_DICOM]
    assert list(referenced(doc)) == [good.SOPInstanceUID]
    _retrieve(api, good)
    path = kh.instance_path(dangling.StudyInstanceUID, dangling.SeriesInstanceUID, dangling.SOPInstanceUID)
    assert api.get(path, headers={"Accept": kh.ACCEPT_DICOM}).status_code == 404
    _delete(api, good)


def test_pixel_length_must_match_the_image_description(api):
    ds = _source("CT_small.dcm")
    uri = f"{api.base}/bulk/{uuid.uuid4().hex}"
    resp = _post(api, [
        _json_part([_metadata(ds, {"7FE00010": uri})]),
        (ds.PixelData[:-2], {"Content-Type": "application/octet-stream", "Content-Location": uri}),
    ])
    assert resp.status_code == 409, describe(resp)
    assert [first(item, FAILURE_REASON) for item in failed(store_response(resp))] == [NOT_DICOM]
    path = kh.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert api.get(path, headers={"Accept": kh.ACCEPT_DICOM}).status_code == 404


def test_unsupported_bulk_media_type_fails_the_data_set(api):
    ds = _source("CT_small.dcm")
    uri = f"{api.base}/bulk/{uuid.uuid4().hex}"
    resp = _post(api, [
        _json_part([_metadata(ds, {"7FE00010": uri})]),
        (ds.PixelData, {"Content-Type": "text/plain", "Content-Location": uri}),
    ])
    assert resp.status_code == 409, describe(resp)
    assert [first(item, FAILURE_REASON) for item in failed(store_response(resp))] == [UNSUPPORTED_MEDIA]


def test_study_in_the_url_is_checked(api):
    ds = _source("CT_small.dcm")
    uri = f"{api.base}/bulk/{uuid.uuid4().hex}"
    resp = _post(api, [
        _json_part([_metadata(ds, {"7FE00010": uri})]),
        (ds.PixelData, {"Content-Type": "application/octet-stream", "Content-Location": uri}),
    ], study=generate_uid())
    assert resp.status_code == 409, describe(resp)


@pytest.mark.parametrize("metadata", [b"not json", b'"a string"', b"[]"], ids=["garbage", "string", "empty"])
def test_bad_metadata_is_400(api, metadata):
    resp = _post(api, [(metadata, {"Content-Type": "application/dicom+json"})])
    assert resp.status_code == 400, describe(resp)


def test_no_metadata_part_is_400(api):
    resp = _post(api, [(b"\0" * 16, {"Content-Type": "application/octet-stream", "Content-Location": "x"})])
    assert resp.status_code == 400, describe(resp)
