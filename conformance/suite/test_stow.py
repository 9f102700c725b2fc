"""STOW-RS (rules 28, 32-45 and the Kastell contract)."""
from __future__ import annotations

import uuid

import pydicom
import pytest

import kastell_helpers as kh
from kastell_helpers import (FAILURE_REASON, REF_SOP_CLASS, REF_SOP_INSTANCE, RETRIEVE_URL,
                             describe, failed, failed_by_uid, first, referenced, store_response)

NOT_DICOM = 49152          # 0xC000
STUDY_MISMATCH = 43265     # 0xA901
DIFFERENT_CONTENT = 273    # 0x0111

RUN = uuid.uuid4().hex[:8]


def _patient() -> str:
    return f"KST-STOW-{RUN}"


def _new_instance(**kw):
    st, se, sop = kh.new_uid(), kh.new_uid(), kh.new_uid()
    st = kw.pop("study", st)
    se = kw.pop("series", se)
    return st, se, sop, kh.make_instance(st, se, sop, patient_id=_patient(), **kw)


def _get_instance(api, st, se, sop, **params):
    return api.get(kh.instance_path(st, se, sop), params=params or None,
                   headers={"Accept": kh.ACCEPT_DICOM})


# --------------------------------------------------------------------------
# The session fixture set
# --------------------------------------------------------------------------
def test_fixture_set_stored(stored, manifest):
    """Every fixture file is accepted: 200 and each SOP in ReferencedSOPSequence."""
    problems = []
    for req in stored.requests:
        resp = req["response"]
        label = f"POST /studies{'/' + req['study'] if req['study'] else ''} ({len(req['entries'])} parts)"
        if isinstance(resp, Exception):
            problems.append(f"{label}: request failed: {resp!r}")
            continue
        if resp.status_code != 200:
            problems.append(f"{label}: status {resp.status_code}, expected 200")
        try:
            doc = store_response(resp)
        except Exception as exc:
            problems.append(f"{label}: bad response body: {exc}")
            continue
        refs = referenced(doc)
        fails = failed_by_uid(doc)
        for e in req["entries"]:
            if e["sop_instance_uid"] not in refs:
                problems.append(f"{label}: {e['source']} ({e['transfer_syntax']}) not referenced; "
                                f"failure reason={fails.get(e['sop_instance_uid'])}")
    for req in stored.fallback:
        resp = req["response"]
        e = req["entries"][0]
        if isinstance(resp, Exception):
            problems.append(f"  single-file retry of {e['source']}: request failed: {resp!r}")
        elif resp.status_code != 200:
            problems.append(f"  single-file retry of {e['source']} ({e['transfer_syntax']}): "
                            f"{resp.status_code} {resp.content[:200]!r}")
    assert not problems, "\n".join(problems)


def test_fixture_store_response_items(stored, api):
    """ReferencedSOPSequence items carry 00081150, 00081155 and a RetrieveURL per instance."""
    req = stored.requests[0]  # study A via POST /studies/{A}
    resp = req["response"]
    assert not isinstance(resp, Exception), resp
    doc = store_response(resp)
    refs = referenced(doc)
    for e in req["entries"]:
        item = refs.get(e["sop_instance_uid"])
        assert item is not None, f"{e['sop_instance_uid']} missing from ReferencedSOPSequence"
        assert first(item, REF_SOP_CLASS) == e["sop_class_uid"]
        assert item[REF_SOP_CLASS]["vr"] == "UI" and item[REF_SOP_INSTANCE]["vr"] == "UI"
        url = first(item, RETRIEVE_URL)
        assert url and url.endswith(kh.entry_path(e)), f"instance RetrieveURL {url!r}"
    top = first(doc, RETRIEVE_URL)
    assert RETRIEVE_URL in doc, "top-level RetrieveURL (Type 2) must be present"
    assert top and top.endswith(f"/studies/{req['study']}"), f"study RetrieveURL {top!r}"
    assert doc[RETRIEVE_URL]["vr"] == "UR"


def test_fixture_multi_study_response_has_retrieve_url(stored):
    """RetrieveURL (0008,1190) is Type 2: present even when several studies were stored."""
    req = stored.requests[1]
    resp = req["response"]
    assert not isinstance(resp, Exception), resp
    doc = store_response(resp)
    assert RETRIEVE_URL in doc, f"top-level 00081190 missing: {sorted(doc)}"
    assert doc[RETRIEVE_URL]["vr"] == "UR"


# --------------------------------------------------------------------------
# Single-request behaviour
# --------------------------------------------------------------------------
def test_store_new_instance_200(api):
    st, se, sop, data = _new_instance()
    resp = kh.stow(api, [data])
    assert resp.status_code == 200, describe(resp)
    doc = store_response(resp)
    refs = referenced(doc)
    assert set(refs) == {sop}
    item = refs[sop]
    assert first(item, REF_SOP_CLASS) == "1.2.840.10008.5.1.4.1.1.7"
    url = first(item, RETRIEVE_URL)
    assert url and url.endswith(kh.instance_path(st, se, sop)), url
    assert not failed(doc), f"FailedSOPSequence must be absent/empty on full success: {doc}"
    assert first(doc, RETRIEVE_URL, "").endswith(f"/studies/{st}")
    # The instance is retrievable byte-for-byte at its RetrieveURL.
    got = api.get(api.resolve(url), headers={"Accept": kh.ACCEPT_DICOM})
    assert got.status_code == 200, describe(got)
    parts = kh.multipart_response(got, "application/dicom")
    assert [p.content for p in parts] == [data]


def test_store_to_study_url_200(api):
    st, se, sop, data = _new_instance()
    resp = kh.stow(api, [data], study=st)
    assert resp.status_code == 200, describe(resp)
    assert set(referenced(store_response(resp))) == {sop}


def test_store_multiple_parts_one_request(api):
    st, se = kh.new_uid(), kh.new_uid()
    sops = [kh.new_uid() for _ in range(3)]
    files = [kh.make_instance(st, se, s, patient_id=_patient(), seed=i, instance_number=i + 1)
             for i, s in enumerate(sops)]
    resp = kh.stow(api, files)
    assert resp.status_code == 200, describe(resp)
    assert set(referenced(store_response(resp))) == set(sops)
    _, res = kh.qido(api, f"/studies/{st}/instances")
    assert {first(r, "00080018") for r in res} == set(sops)


@pytest.mark.parametrize("ctype", [
    'multipart/related; type=application/dicom; boundary={b}',
    'multipart/related; boundary={b}; type="application/dicom"',
    'Multipart/Related; Type="Application/DICOM"; Boundary={b}',
], ids=["unquoted-type", "boundary-first", "mixed-case"])
def test_store_content_type_variants(api, ctype):
    """Rule 15: type quoted or unquoted; names/values compare case-insensitively."""
    st, se, sop, data = _new_instance()
    boundary = f"b-{uuid.uuid4().hex}"
    body = kh.encode_multipart([(data, "application/dicom")], boundary)
    resp = api.post("/studies", data=body,
                    headers={"Content-Type": ctype.format(b=boundary), "Accept": kh.DICOM_JSON})
    assert resp.status_code == 200, describe(resp)
    assert sop in referenced(store_response(resp))


def test_store_with_dicomweb_client(client, api):
    st, se, sop, data = _new_instance()
    import io
    ds = pydicom.dcmread(io.BytesIO(data))
    result = client.store_instances([ds])
    refs = [str(it.ReferencedSOPInstanceUID) for it in result.ReferencedSOPSequence]
    assert refs == [sop]


def test_restore_identical_instance_is_idempotent(api):
    st, se, sop, data = _new_instance()
    r1 = kh.stow(api, [data])
    assert r1.status_code == 200, describe(r1)
    r2 = kh.stow(api, [data])
    assert r2.status_code == 200, describe(r2)
    doc = store_response(r2)
    assert sop in referenced(doc)
    assert not failed(doc)
    _, res = kh.qido(api, "/instances", params={"SOPInstanceUID": sop})
    assert len(res) == 1, f"re-store must not duplicate the instance: {res}"


def test_different_content_same_sop_uid_conflicts(api):
    st, se, sop, data = _new_instance(seed=1)
    assert kh.stow(api, [data]).status_code == 200
    other = kh.make_instance(st, se, sop, patient_id=_patient(), seed=99)
    assert other != data
    resp = kh.stow(api, [other])
    assert resp.status_code == 409, describe(resp)
    doc = store_response(resp)
    assert not referenced(doc)
    assert failed_by_uid(doc) == {sop: DIFFERENT_CONTENT}, doc
    item = failed(doc)[0]
    assert first(item, REF_SOP_CLASS) == "1.2.840.10008.5.1.4.1.1.7"
    assert item[FAILURE_REASON]["vr"] == "US"
    # The original object is untouched.
    got = _get_instance(api, st, se, sop)
    assert got.status_code == 200, describe(got)
    assert [p.content for p in kh.multipart_response(got)] == [data]


def test_partial_success_is_202(api):
    st, se, sop_ok, ok = _new_instance(seed=3)
    st2, se2, sop_dup, dup = _new_instance(seed=4)
    assert kh.stow(api, [dup]).status_code == 200
    conflicting = kh.make_instance(st2, se2, sop_dup, patient_id=_patient(), seed=77)
    resp = kh.stow(api, [ok, conflicting])
    assert resp.status_code == 202, describe(resp)
    doc = store_response(resp)
    assert set(referenced(doc)) == {sop_ok}
    assert failed_by_uid(doc) == {sop_dup: DIFFERENT_CONTENT}


def test_study_uid_mismatch_fails_part_409(api):
    """Rules 36/41: POST /studies/{X} must not store an instance of another study."""
    url_study = kh.new_uid()
    st, se, sop, data = _new_instance()
    resp = kh.stow(api, [data], study=url_study)
    assert resp.status_code == 409, describe(resp)
    doc = store_response(resp)
    assert failed_by_uid(doc) == {sop: STUDY_MISMATCH}, doc
    assert not referenced(doc)
    assert _get_instance(api, st, se, sop).status_code == 404, "mismatching instance must not be stored"
    _, res = kh.qido(api, "/instances", params={"SOPInstanceUID": sop})
    assert res == []


def test_study_uid_mismatch_mixed_202(api):
    st = kh.new_uid()
    _, se, sop_ok, ok = _new_instance(study=st)
    st_other, se_other, sop_bad, bad = _new_instance()
    resp = kh.stow(api, [ok, bad], study=st)
    assert resp.status_code == 202, describe(resp)
    doc = store_response(resp)
    assert set(referenced(doc)) == {sop_ok}
    assert failed_by_uid(doc) == {sop_bad: STUDY_MISMATCH}
    assert _get_instance(api, st_other, se_other, sop_bad).status_code == 404


def test_non_dicom_part_fails_409(api):
    resp = kh.stow(api, [b"this is definitely not a DICOM file" * 8])
    assert resp.status_code == 409, describe(resp)
    doc = store_response(resp)
    reasons = [first(it, FAILURE_REASON) for it in failed(doc)]
    assert reasons == [NOT_DICOM], doc
    assert not referenced(doc)


def test_non_dicom_part_among_valid_202(api):
    st, se, sop, data = _new_instance()
    resp = kh.stow(api, [data, b"\x00" * 64 + b"garbage"])
    assert resp.status_code == 202, describe(resp)
    doc = store_response(resp)
    assert set(referenced(doc)) == {sop}
    assert [first(it, FAILURE_REASON) for it in failed(doc)] == [NOT_DICOM]


def test_missing_study_uid_fails_49152(api):
    st, se, sop = kh.new_uid(), kh.new_uid(), kh.new_uid()
    data = kh.make_instance(st, se, sop, patient_id=_patient(), include_study=False)
    resp = kh.stow(api, [data])
    assert resp.status_code == 409, describe(resp)
    doc = store_response(resp)
    assert failed_by_uid(doc) == {sop: NOT_DICOM}, doc


def test_truncated_dicom_part_fails(api):
    st, se, sop, data = _new_instance()
    resp = kh.stow(api, [data[: len(data) // 3]])
    assert resp.status_code == 409, describe(resp)
    doc = store_response(resp)
    assert [first(it, FAILURE_REASON) for it in failed(doc)] == [NOT_DICOM], doc
    assert _get_instance(api, st, se, sop).status_code == 404


# --------------------------------------------------------------------------
# Request-level errors
# --------------------------------------------------------------------------
@pytest.mark.parametrize("ctype", [
    "application/json",
    'multipart/related; type="image/png"; boundary=xyz',
    "text/plain",
], ids=["json", "multipart-png", "text"])
def test_unsupported_content_type_415(api, ctype):
    st, se, sop, data = _new_instance()
    body = kh.encode_multipart([(data, "application/dicom")], "xyz") if "multipart" in ctype else data
    resp = api.post("/studies", data=body, headers={"Content-Type": ctype})
    assert resp.status_code == 415, describe(resp)
    assert _get_instance(api, st, se, sop).status_code == 404


def test_multipart_without_boundary_400(api):
    st, se, sop, data = _new_instance()
    body = kh.encode_multipart([(data, "application/dicom")], "xyz")
    resp = api.post("/studies", data=body, headers={"Content-Type": 'multipart/related; type="application/dicom"'})
    assert resp.status_code == 400, describe(resp)


def test_malformed_multipart_body_400(api):
    resp = api.post("/studies", data=b"no delimiter anywhere in this body\r\n",
                    headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=abc123'})
    assert resp.status_code == 400, describe(resp)


def test_unterminated_multipart_body_400(api):
    st, se, sop, data = _new_instance()
    body = b"--abc123\r\nContent-Type: application/dicom\r\n\r\n" + data  # no closing delimiter
    resp = api.post("/studies", data=body,
                    headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=abc123'})
    assert resp.status_code == 400, describe(resp)
    assert _get_instance(api, st, se, sop).status_code == 404


def test_stored_instance_visible_in_qido(api):
    st, se, sop, data = _new_instance()
    assert kh.stow(api, [data]).status_code == 200
    resp, res = kh.qido(api, "/studies", params={"StudyInstanceUID": st})
    assert resp.status_code == 200, describe(resp)
    assert [first(r, "0020000D") for r in res] == [st]
    assert first(res[0], "00100020") == _patient()
