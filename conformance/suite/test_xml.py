"""The XML Native DICOM Model (PS3.19 Annex A; rule 23: required for search results, metadata
and STOW-RS): `multipart/related; type="application/dicom+xml"` answers hold the same data sets
as their DICOM JSON twins, STOW-RS takes XML metadata with bulk data parts, and the Store
Instances Response comes as XML on request. The XML is read here with ElementTree into the
DICOM JSON model, independently of the server's own reader."""
from __future__ import annotations

import io
import uuid
import xml.etree.ElementTree as ET

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

import kastell_helpers as kh
from kastell_helpers import describe, entry_path

XML_PARTS = 'multipart/related; type="application/dicom+xml"'
NUMBER_VRS = {"FL", "FD", "SL", "SS", "UL", "US"}
NAME_COMPONENTS = ["FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix"]


def xml_to_json(document: bytes) -> dict:
    root = ET.fromstring(document)
    assert root.tag == "NativeDicomModel", root.tag
    return _attributes(root)


def _attributes(parent) -> dict:
    out = {}
    for attribute in parent.findall("DicomAttribute"):
        tag, vr = attribute.get("tag"), attribute.get("vr")
        entry: dict = {"vr": vr}
        values = []
        for child in attribute:
            number = int(child.get("number", "0"))
            if child.tag == "Value":
                text = child.text
                if text is None:
                    value = None
                elif vr in NUMBER_VRS:
                    value = float(text) if vr in ("FL", "FD") else int(text)
                else:
                    value = text
                values.append((number, value))
            elif child.tag == "PersonName":
                groups = {}
                for group in child:
                    parts = [(group.findtext(c) or "") for c in NAME_COMPONENTS]
                    joined = "^".join(parts).rstrip("^")
                    if joined:
                        groups[group.tag] = joined
                values.append((number, groups))
            elif child.tag == "Item":
                values.append((number, _attributes(child)))
            elif child.tag == "BulkData":
                entry["BulkDataURI"] = child.get("uri")
            elif child.tag == "InlineBinary":
                entry["InlineBinary"] = (child.text or "").strip()
        if values:
            assert [n for n, _ in values] == list(range(1, len(values) + 1)), f"{tag}: numbering"
            entry["Value"] = [v for _, v in values]
        out[tag] = entry
    return out


def _normalize(dataset: dict) -> dict:
    """DICOM JSON with DS/IS/SV/UV values as text and numbers as floats, for comparison."""
    out = {}
    for tag, attribute in dataset.items():
        entry = dict(attribute)
        vr = entry.get("vr")
        if "Value" in entry:
            values = []
            for v in entry["Value"]:
                if vr == "SQ" and isinstance(v, dict):
                    v = _normalize(v)
                elif vr in NUMBER_VRS and v is not None:
                    v = float(v)
                elif vr in ("DS", "IS", "SV", "UV") and v is not None:
                    v = str(v)
                values.append(v)
            entry["Value"] = values
        out[tag] = entry
    return out


def _xml_parts(resp) -> list[dict]:
    assert resp.status_code == 200, describe(resp)
    mtype, params = kh.parse_media_type(resp.headers.get("Content-Type", ""))
    assert mtype == "multipart/related" and params.get("type") == "application/dicom+xml", describe(resp, 200)
    parts = kh.multipart_response(resp, "application/dicom+xml")
    return [xml_to_json(p.content) for p in parts]


def _by_uid(datasets: list[dict], tag: str) -> dict[str, dict]:
    return {d[tag]["Value"][0]: _normalize(d) for d in datasets}


@pytest.mark.parametrize("path,params,key", [
    ("/studies", {"limit": "50"}, "0020000D"),
    ("/series", {"limit": "50", "includefield": "all"}, "0020000E"),
    ("/instances", {"limit": "50"}, "00080018"),
])
def test_search_results_as_xml_equal_the_json(api, path, params, key):
    json_resp = api.get(path, params=params, headers={"Accept": kh.DICOM_JSON})
    assert json_resp.status_code == 200, describe(json_resp)
    xml_resp = api.get(path, params=params, headers={"Accept": XML_PARTS})
    xml = _by_uid(_xml_parts(xml_resp), key)
    assert xml == _by_uid(json_resp.json(), key)
    assert "Accept" in xml_resp.headers.get("Vary", "")


def test_search_xml_by_query_parameter_and_quality(api):
    """The accept query parameter works too, and q-values choose between the models."""
    resp = api.get("/studies", params={"limit": "5", "accept": XML_PARTS})
    assert _xml_parts(resp)
    resp = api.get("/studies", params={"limit": "5"},
                   headers={"Accept": f"{XML_PARTS}; q=0.5, {kh.DICOM_JSON}"})
    assert kh.parse_media_type(resp.headers["Content-Type"])[0] == kh.DICOM_JSON


def test_search_with_nothing_acceptable_is_406(api):
    assert api.get("/studies", headers={"Accept": "text/html"}).status_code == 406


@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_metadata_as_xml_equals_the_json(api, manifest, level):
    """Every instance's metadata, one XML document a part, equal to the JSON array's items
    (BulkDataURIs as BulkData uri, PN as components, sequences as Items)."""
    e = manifest.by_name("MR_small.dcm") if level == "instance" else manifest.syn_files("A")[0]
    path = {"study": kh.study_path(e["study_instance_uid"]),
            "series": kh.series_path(e["study_instance_uid"], e["series_instance_uid"]),
            "instance": entry_path(e)}[level]
    json_resp = api.get(path + "/metadata", headers={"Accept": kh.DICOM_JSON})
    assert json_resp.status_code == 200, describe(json_resp)
    xml_resp = api.get(path + "/metadata", headers={"Accept": XML_PARTS})
    xml = _by_uid(_xml_parts(xml_resp), "00080018")
    assert xml == _by_uid(json_resp.json(), "00080018")
    assert len(xml) >= 1
    # Another representation, another entity tag; each revalidates on its own.
    etag = xml_resp.headers["ETag"]
    assert etag != json_resp.headers["ETag"]
    again = api.get(path + "/metadata", headers={"Accept": XML_PARTS, "If-None-Match": etag})
    assert again.status_code == 304, describe(again)


def _to_xml(dataset: dict) -> bytes:
    """DICOM JSON to the Native DICOM Model (the test's own writer)."""
    def attributes(parent, ds):
        for tag in sorted(ds):
            attribute = ds[tag]
            element = ET.SubElement(parent, "DicomAttribute", tag=tag, vr=attribute["vr"])
            for n, value in enumerate(attribute.get("Value", []), start=1):
                if attribute["vr"] == "SQ":
                    attributes(ET.SubElement(element, "Item", number=str(n)), value)
                elif attribute["vr"] == "PN":
                    name = ET.SubElement(element, "PersonName", number=str(n))
                    for group, text in value.items():
                        g = ET.SubElement(name, group)
                        for component, part in zip(NAME_COMPONENTS, text.split("^")):
                            if part:
                                ET.SubElement(g, component).text = part
                else:
                    v = ET.SubElement(element, "Value", number=str(n))
                    if value is not None:
                        v.text = str(value)
            if "BulkDataURI" in attribute:
                ET.SubElement(element, "BulkData", uri=attribute["BulkDataURI"])
            if "InlineBinary" in attribute:
                ET.SubElement(element, "InlineBinary").text = attribute["InlineBinary"]
    root = ET.Element("NativeDicomModel")
    attributes(root, dataset)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8")


def test_stow_with_xml_metadata_and_an_xml_response(api):
    """CT_small as an XML metadata part and its pixel data as an octet-stream part; the Store
    Instances Response asked for as application/dicom+xml."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    uri = f"{api.base}/bulk/{uuid.uuid4().hex}"
    metadata = ds.to_json_dict()
    metadata["7FE00010"] = {"vr": "OW", "BulkDataURI": uri}
    boundary = f"kastell-{uuid.uuid4().hex}"
    body = (f"--{boundary}\r\nContent-Type: application/dicom+xml\r\n\r\n".encode() + _to_xml(metadata)
            + f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Location: {uri}\r\n\r\n".encode()
            + ds.PixelData + f"\r\n--{boundary}--\r\n".encode())
    resp = api.post("/studies", data=body, headers={
        "Content-Type": f'multipart/related; type="application/dicom+xml"; boundary={boundary}',
        "Accept": "application/dicom+xml"})
    assert resp.status_code == 200, describe(resp)
    assert kh.parse_media_type(resp.headers["Content-Type"])[0] == "application/dicom+xml"
    answer = xml_to_json(resp.content)
    items = answer["00081199"]["Value"]
    assert [item["00081155"]["Value"][0] for item in items] == [ds.SOPInstanceUID]
    stored = api.get(kh.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID),
                     headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert stored.status_code == 200, describe(stored)
    got = pydicom.dcmread(io.BytesIO(stored.content))
    assert got.PatientName == ds.PatientName
    assert np.array_equal(got.pixel_array, ds.pixel_array)
    api.session.delete(api.url(kh.study_path(ds.StudyInstanceUID)), timeout=kh.TIMEOUT)


def test_stow_with_broken_xml_is_400(api):
    boundary = "kastell-broken"
    body = (f"--{boundary}\r\nContent-Type: application/dicom+xml\r\n\r\n<NativeDicomModel>"
            f"\r\n--{boundary}--\r\n").encode()
    resp = api.post("/studies", data=body, headers={
        "Content-Type": f'multipart/related; type="application/dicom+xml"; boundary={boundary}'})
    assert resp.status_code == 400, describe(resp)


def test_stow_with_an_unacceptable_response_type_is_406_and_stores_nothing(api):
    st, se, sop = kh.new_uid(), kh.new_uid(), kh.new_uid()
    data = kh.make_instance(st, se, sop, patient_id="KST-XML-406")
    boundary = "kastell-406"
    body = kh.encode_multipart([(data, "application/dicom")], boundary)
    resp = api.post("/studies", data=body, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "text/html"})
    assert resp.status_code == 406, describe(resp)
    assert api.get(kh.instance_path(st, se, sop), headers={"Accept": kh.ACCEPT_DICOM}).status_code == 404
