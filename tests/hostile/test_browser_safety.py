"""Browser safety (issue 11 contract). `X-Content-Type-Options: nosniff` on every
response, and a sandboxing CSP on script-capable ones, are checked for every
response of the whole suite by the hook in conftest.py. Here: an Encapsulated
Document claiming text/html is not served as a page, and error bodies do not
echo markup from the request."""
from __future__ import annotations

import io
from urllib.parse import quote

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import hostile
import kastell_helpers as kh
from kastell_helpers import describe

SCRIPT = b"<html><body><script>alert(document.cookie)</script></body></html>"


def encapsulated_html() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"  # Encapsulated PDF Storage
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "DOC", "KST-HOSTILE-HTML", "Hostile^Html"
    ds.MIMETypeOfEncapsulatedDocument = "text/html"
    ds.EncapsulatedDocument = SCRIPT + (b"\0" if len(SCRIPT) % 2 else b"")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


@pytest.mark.parametrize("accept", ["*/*", None, "text/html"])
def test_an_encapsulated_document_claiming_text_html_is_an_attachment(default, accept):
    """Served as application/octet-stream with Content-Disposition: attachment
    (text/html is not on the allow-list); with only text/html acceptable, 406 also
    does. Never text/html without a sandboxing CSP. RSS bound 128 MiB."""
    ds = encapsulated_html()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    resp = kh.stow(default.api, [buf.getvalue()])
    assert resp.status_code == 200, describe(resp)
    path = kh.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) + "/rendered"
    with default.watch(rss_mib=128):
        resp = default.http.get(default.api.url(path), headers={"Accept": accept}, timeout=kh.TIMEOUT)
        mtype = kh.parse_media_type(resp.headers.get("Content-Type", ""))[0]
        assert not (mtype == "text/html" and "sandbox" not in resp.headers.get("Content-Security-Policy", "")), \
            describe(resp, 200)
        if accept == "text/html" and resp.status_code == 406:
            return
        assert resp.status_code == 200, describe(resp, 200)
        assert mtype == "application/octet-stream", describe(resp, 200)
        assert resp.headers.get("Content-Disposition", "").lower().startswith("attachment"), \
            f"Content-Disposition: {resp.headers.get('Content-Disposition')!r}"


MARKUP = "<script>alert(1)</script>"
ENCODED = quote(MARKUP, safe="")
ECHO_CASES = {
    # raw in a path: no `/` (it would split the segment) and no space (not sendable)
    "uid-in-path": ("GET", "/dicomweb/studies/1.2.<script>alert(1)/metadata", {}),
    "uid-in-path-encoded": ("GET", f"/dicomweb/studies/1.2.{ENCODED}/metadata", {}),
    "unknown-path": ("GET", f"/dicomweb/{ENCODED}", {}),
    "bad-limit": ("GET", f"/dicomweb/studies?limit={ENCODED}", {}),
    "bad-fuzzymatching": ("GET", f"/dicomweb/studies?fuzzymatching={ENCODED}", {}),
    "bad-viewport": ("GET", f"/dicomweb/studies/1.2.3/rendered?viewport={ENCODED}", {}),
    "bad-accept": ("GET", "/dicomweb/studies", {"Accept": MARKUP}),
    "bad-stow-content-type": ("POST", "/dicomweb/studies", {"Content-Type": f"multipart/related; type=\"{MARKUP}\""}),
    "wado-uri-uid": ("GET", f"/wado?requestType=WADO&studyUID={ENCODED}&seriesUID=1&objectUID=1", {}),
}


@pytest.mark.parametrize("case", list(ECHO_CASES))
def test_error_bodies_do_not_echo_markup(default, case):
    """The answer to a request carrying `<script>` (an error, mostly) holds no
    `<script`. RSS bound 128 MiB."""
    method, path, headers = ECHO_CASES[case]
    with default.watch(rss_mib=128):
        status, hdrs, body = hostile.raw(default, method, path, {"Accept": "*/*", **headers},
                                         body=b"" if method == "POST" else None)
        assert status < 500, f"{status} {body[:200]!r}"
        assert b"<script" not in body.lower(), f"{status} {hdrs.get('content-type')}: {body[:300]!r}"
