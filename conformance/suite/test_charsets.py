"""Non-ASCII character sets: names stored in ISO_IR 100/126/127/138/144/192, GB18030 and
ISO 2022 (IR 13/87/149) must come back as correct UTF-8 in QIDO and metadata
(rules 21, 81, 84 and the contract).  Expected values are pydicom's decoding.
"""
from __future__ import annotations

import pytest

import kastell_helpers as kh
from kastell_helpers import describe, entry_path, first

CHARSET = kh.collect_names(lambda e: e["group"] == "charset")
SYN_A = "Müller^Jürgen"


def _pn_expected(e):
    return e["patient_name_json"]


@pytest.mark.parametrize("name", CHARSET)
def test_qido_patient_name_utf8(api, manifest, name):
    e = manifest.by_name(name)
    resp, res = kh.qido(api, "/studies", params={"StudyInstanceUID": e["study_instance_uid"]})
    assert resp.status_code == 200, describe(resp)
    assert len(res) == 1
    got = first(res[0], "00100010")
    assert kh._norm_pn(got) == kh._norm_pn(_pn_expected(e)), (
        f"PatientName: server {got!r}, pydicom decodes {_pn_expected(e)!r} "
        f"(SpecificCharacterSet {e['specific_character_set']!r})")


@pytest.mark.parametrize("name", CHARSET)
def test_instance_qido_patient_name_utf8(api, manifest, name):
    e = manifest.by_name(name)
    resp, res = kh.qido(api, "/instances", params={"SOPInstanceUID": e["sop_instance_uid"]})
    assert resp.status_code == 200, describe(resp)
    assert len(res) == 1
    assert kh._norm_pn(first(res[0], "00100010")) == kh._norm_pn(_pn_expected(e))


@pytest.mark.parametrize("name", CHARSET)
def test_metadata_patient_name_utf8(api, manifest, name):
    e = manifest.by_name(name)
    resp = api.get(entry_path(e) + "/metadata", headers={"Accept": kh.DICOM_JSON})
    assert resp.status_code == 200, describe(resp)
    _, params = kh.parse_media_type(resp.headers.get("Content-Type", ""))
    assert params.get("charset", "utf-8").lower() in ("utf-8", "utf8")
    data = resp.json()  # requests decodes as UTF-8 for application/*+json
    assert kh._norm_pn(first(data[0], "00100010")) == kh._norm_pn(_pn_expected(e))


@pytest.mark.parametrize("name", ["chrFren.dcm", "chrGerm.dcm", "chrRuss.dcm", "chrGreek.dcm",
                                  "chrArab.dcm", "chrHbrw.dcm"])
def test_search_by_non_ascii_name(api, manifest, name):
    """A UTF-8 (percent-encoded) query value matches a name stored in another charset."""
    e = manifest.by_name(name)
    alpha = e["patient_name_json"]["Alphabetic"]
    resp, res = kh.qido(api, "/studies", params={"PatientName": alpha, "PatientID": e["patient_id"]})
    assert resp.status_code == 200, describe(resp)
    assert e["study_instance_uid"] in {first(r, "0020000D") for r in res}


@pytest.mark.parametrize("name,case", [
    ("chrFren.dcm", "lower"), ("chrFren.dcm", "upper"), ("chrGerm.dcm", "lower"),
    ("chrGerm.dcm", "upper"), ("chrRuss.dcm", "upper"), ("chrGreek.dcm", "lower"),
])
def test_non_ascii_name_case_insensitive(api, manifest, name, case):
    e = manifest.by_name(name)
    alpha = e["patient_name_json"]["Alphabetic"]
    query = alpha.lower() if case == "lower" else alpha.upper()
    assert query != alpha
    resp, res = kh.qido(api, "/studies", params={"PatientName": query, "PatientID": e["patient_id"]})
    assert resp.status_code == 200, describe(resp)
    assert e["study_instance_uid"] in {first(r, "0020000D") for r in res}, f"query {query!r}"


def test_non_ascii_wildcard(api, manifest):
    e = manifest.by_name("chrGerm.dcm")
    resp, res = kh.qido(api, "/studies", params={"PatientName": "Äne*", "PatientID": e["patient_id"]})
    assert resp.status_code == 200, describe(resp)
    assert e["study_instance_uid"] in {first(r, "0020000D") for r in res}


def test_ideographic_component_search(api, manifest):
    """PN matching applies to each component group; the Ideographic group of chrX1 is 王^小東."""
    e = manifest.by_name("chrX1.dcm")
    resp, res = kh.qido(api, "/studies", params={"PatientName": "Wang^XiaoDong=王^小東",
                                                  "PatientID": e["patient_id"]})
    assert resp.status_code == 200, describe(resp)
    assert e["study_instance_uid"] in {first(r, "0020000D") for r in res}


@pytest.mark.parametrize("value", ["aneas", "RUDIGER", "rudi", "Äneas"])
def test_fuzzy_non_ascii(api, manifest, value):
    e = manifest.by_name("chrGerm.dcm")
    resp, res = kh.qido(api, "/studies", params={"PatientName": value, "fuzzymatching": "true",
                                                  "PatientID": e["patient_id"]})
    assert resp.status_code == 200, describe(resp)
    assert e["study_instance_uid"] in {first(r, "0020000D") for r in res}


def test_multivalued_non_ascii_attributes(api, manifest):
    e = manifest.by_name("chrFrenMulti.dcm")
    resp = api.get(entry_path(e) + "/metadata", headers={"Accept": kh.DICOM_JSON})
    assert resp.status_code == 200, describe(resp)
    md = resp.json()[0]
    ds = manifest.dataset(e)
    assert kh.values(md, "00101000") == list(ds.OtherPatientIDs)
    assert [kh._norm_pn(v) for v in kh.values(md, "00101001")] == \
        [kh._norm_pn({"Alphabetic": str(n)}) for n in ds.OtherPatientNames]


def test_synthetic_utf8_name(api, manifest):
    resp, res = kh.qido(api, "/studies", params={"PatientID": "KST-PAT-001"})
    assert resp.status_code == 200, describe(resp)
    assert first(res[0], "00100010") == {"Alphabetic": SYN_A}
