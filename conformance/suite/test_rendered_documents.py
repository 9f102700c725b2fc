"""Rendered documents (rule 23 "Rendered, text"; PS3.18 §10.4.1.1.3): a Structured Report's
rendered resource is text/html by default, or text/plain, holding every concept name and value
of its content tree (checked against a walk of the same file with pydicom); the patient is named
only with annotation=patient; an Encapsulated PDF renders as the PDF it holds."""
from __future__ import annotations

import html
import io

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import kastell_helpers as kh
from kastell_helpers import describe, entry_path

REPORTS = ["reportsi.dcm", "test-SR.dcm"]


def _rendered(api, e, accept=None, params=None):
    headers = {"Accept": accept} if accept else {"Accept": None}
    return api.session.get(api.url(entry_path(e) + "/rendered"), headers=headers, params=params,
                           timeout=kh.TIMEOUT)


def _expected_texts(ds) -> list[str]:
    """Every concept name, TEXT value and CODE meaning of the content tree."""
    out = []

    def walk(item):
        for child in item.get("ContentSequence", []):
            if "ConceptNameCodeSequence" in child:
                out.append(str(child.ConceptNameCodeSequence[0].CodeMeaning))
            if child.get("ValueType") == "TEXT":
                out.append(str(child.TextValue))
            if child.get("ValueType") == "CODE":
                out.append(str(child.ConceptCodeSequence[0].CodeMeaning))
            walk(child)
    walk(ds)
    return [t.strip() for t in out if t.strip()]


@pytest.mark.parametrize("name", REPORTS)
@pytest.mark.parametrize("accept,media_type", [(None, "text/html"), ("text/html", "text/html"),
                                               ("text/plain", "text/plain"),
                                               ("image/jpeg;q=0.5, text/plain", "text/plain")])
def test_report_renders_its_content_tree(api, manifest, name, accept, media_type):
    e = manifest.by_name(name)
    ds = manifest.dataset(e)
    resp = _rendered(api, e, accept)
    assert resp.status_code == 200, describe(resp)
    assert kh.parse_media_type(resp.headers["Content-Type"])[0] == media_type
    body = resp.content.decode("utf-8")
    # Line breaks in text values are <br> in HTML.
    text = html.unescape(body.replace("<br>", "\n")) if media_type == "text/html" else body
    if media_type == "text/html":
        assert body.lstrip().startswith("<!DOCTYPE html>")
    expected = _expected_texts(ds)
    assert expected, "the fixture has a content tree"
    missing = [t for t in expected if " ".join(t.split()) not in " ".join(text.split())]
    assert not missing, f"not rendered: {missing[:5]}"


@pytest.mark.parametrize("name", REPORTS)
def test_report_names_the_patient_only_when_asked(api, manifest, name):
    e = manifest.by_name(name)
    ds = manifest.dataset(e)
    family = str(ds.PatientName).split("^")[0].strip()
    if not family:
        pytest.skip("the fixture names no patient")
    plain = _rendered(api, e, "text/plain").text
    assert family not in plain
    annotated = _rendered(api, e, "text/plain", {"annotation": "patient"})
    assert annotated.status_code == 200, describe(annotated)
    assert family in annotated.text


def test_a_non_image_non_document_is_406(api, manifest):
    e = manifest.by_name("rtplan.dcm")
    assert _rendered(api, e, "text/html").status_code == 406


def test_encapsulated_pdf_renders_as_the_pdf(api):
    document = b"%PDF-1.4\n" + b"1 0 obj\n<<>>\nendobj\n" * 50 + b"%%EOF\n"
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "DOC", "KST-RENDER-PDF", "Render^Pdf"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = document + (b"\0" if len(document) % 2 else b"")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert kh.stow(api, [buf.getvalue()]).status_code == 200
    entry = {"study_instance_uid": ds.StudyInstanceUID, "series_instance_uid": ds.SeriesInstanceUID,
             "sop_instance_uid": ds.SOPInstanceUID}
    resp = _rendered(api, entry, "application/pdf")
    assert resp.status_code == 200, describe(resp)
    assert kh.parse_media_type(resp.headers["Content-Type"])[0] == "application/pdf"
    assert resp.content == document
    assert _rendered(api, entry, "text/html").status_code == 406
    api.session.delete(api.url(kh.study_path(ds.StudyInstanceUID)), timeout=kh.TIMEOUT)
