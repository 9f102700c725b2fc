"""QIDO-RS result contents, includefield, paging, errors (rules 1-2, 46-62, 75-84)."""
from __future__ import annotations

import re

import pytest

import kastell_helpers as kh
from kastell_helpers import describe, first, values

STUDY_REQUIRED = ["00080020", "00080030", "00080050", "00080061", "00080090", "00100010", "00100020",
                  "00100030", "00100040", "0020000D", "00200010", "00201206", "00201208"]
SERIES_REQUIRED = ["00080060", "00081190", "0020000E", "00200011", "00201209"]
INSTANCE_REQUIRED = ["00080016", "00080018", "00081190", "00200013"]


@pytest.fixture(scope="module")
def A(manifest):
    return manifest.syn("A")


@pytest.fixture(scope="module")
def B(manifest):
    return manifest.syn("B")


def _one(api, path, params):
    resp, res = kh.qido(api, path, params=params)
    assert resp.status_code == 200, describe(resp)
    assert len(res) == 1, f"expected exactly one result for {path} {params}: {res}"
    return res[0]


def _missing(obj, keys):
    return [k for k in keys if k not in obj]


# --------------------------------------------------------------------------
# Media type and JSON model
# --------------------------------------------------------------------------
def test_qido_content_type(api, A):
    resp = api.get("/studies", params={"PatientID": "KST-PAT-001"}, headers={"Accept": kh.DICOM_JSON})
    assert resp.status_code == 200, describe(resp)
    mtype, params = kh.parse_media_type(resp.headers.get("Content-Type", ""))
    assert mtype == kh.DICOM_JSON
    assert params.get("charset", "utf-8").lower() in ("utf-8", "utf8")


def test_qido_without_accept_header(api):
    """Missing Accept = */* -> application/dicom+json."""
    resp = api.session.get(api.url("/studies"), params={"PatientID": "KST-PAT-001"}, timeout=30,
                           headers={"Accept": None})
    assert "Accept" not in resp.request.headers
    assert resp.status_code == 200, describe(resp)
    assert kh.parse_media_type(resp.headers.get("Content-Type", ""))[0] == kh.DICOM_JSON


def test_qido_unacceptable_accept_406(api):
    resp = api.get("/studies", params={"PatientID": "KST-PAT-001"}, headers={"Accept": "image/png"})
    assert resp.status_code == 406, describe(resp)


@pytest.mark.parametrize("level", ["studies", "series", "instances", "study-series", "study-instances",
                                   "series-instances"])
def test_json_model_of_qido_results(api, A, level):
    st = A["study_instance_uid"]
    se = A["series_instance_uids"][0]
    path = {"studies": "/studies", "series": "/series", "instances": "/instances",
            "study-series": f"/studies/{st}/series", "study-instances": f"/studies/{st}/instances",
            "series-instances": f"/studies/{st}/series/{se}/instances"}[level]
    params = {"PatientID": "KST-PAT-001,KST-PAT-002", "includefield": "all"}
    resp, res = kh.qido(api, path, params=params)
    assert resp.status_code == 200, describe(resp)
    errs = kh.check_json_model(resp.json())
    assert not errs, "\n".join(errs[:30])


def test_json_model_of_qido_charset_results(api, manifest):
    ids = ",".join(sorted({e["patient_id"] for e in manifest.in_group("charset")}))
    resp, res = kh.qido(api, "/studies", params={"PatientID": ids, "includefield": "all"})
    assert resp.status_code == 200, describe(resp)
    errs = kh.check_json_model(resp.json())
    assert not errs, "\n".join(errs[:30])


# --------------------------------------------------------------------------
# Required return keys (rules 49-52)
# --------------------------------------------------------------------------
def test_study_result_required_keys_and_values(api, manifest, A):
    r = _one(api, "/studies", {"PatientID": "KST-PAT-001"})
    assert not _missing(r, STUDY_REQUIRED), f"missing study keys: {_missing(r, STUDY_REQUIRED)}"
    assert first(r, "00080020") == "20230415"
    assert first(r, "00080030") == "101530"
    assert first(r, "00080050") == "KSTACC001"
    assert sorted(values(r, "00080061")) == ["CT", "MR"]
    assert first(r, "00080090") == {"Alphabetic": "Weiß^Anna"}
    assert first(r, "00100010") == {"Alphabetic": "Müller^Jürgen"}
    assert first(r, "00100020") == "KST-PAT-001"
    assert first(r, "00100030") == "19600101"
    assert first(r, "00100040") == "M"
    assert first(r, "0020000D") == A["study_instance_uid"]
    assert first(r, "00200010") == "KSTS1"
    assert first(r, "00201206") == 2, r.get("00201206")
    assert first(r, "00201208") == 6, r.get("00201208")
    for tag, vr in (("00080020", "DA"), ("00080030", "TM"), ("00080050", "SH"), ("00080061", "CS"),
                    ("00080090", "PN"), ("00100010", "PN"), ("00100020", "LO"), ("0020000D", "UI"),
                    ("00200010", "SH"), ("00201206", "IS"), ("00201208", "IS")):
        assert r[tag]["vr"] == vr, f"{tag} vr {r[tag]['vr']} != {vr}"


def test_study_result_retrieve_url(api, A):
    r = _one(api, "/studies", {"PatientID": "KST-PAT-001"})
    url = first(r, "00081190")
    assert url and url.endswith(f"/studies/{A['study_instance_uid']}"), r.get("00081190")
    assert r["00081190"]["vr"] == "UR"


def test_study_result_empty_attribute_has_no_value(api, B):
    """Rule 78: B's ReferringPhysicianName is zero-length -> {"vr":"PN"} without Value."""
    r = _one(api, "/studies", {"PatientID": "KST-PAT-002"})
    assert "00080090" in r, "ReferringPhysicianName is a required study key even when empty"
    assert r["00080090"] == {"vr": "PN"}, r["00080090"]
    assert first(r, "00201206") == 1 and first(r, "00201208") == 2


def test_study_result_required_keys_for_sparse_study(api, manifest):
    """pydicom's chrFren has empty StudyDate/Time/Accession: keys present, no Value."""
    e = manifest.by_name("chrFren.dcm")
    r = _one(api, "/studies", {"StudyInstanceUID": e["study_instance_uid"]})
    assert not _missing(r, STUDY_REQUIRED), f"missing study keys: {_missing(r, STUDY_REQUIRED)}"
    assert r["00080020"] == {"vr": "DA"}
    assert r["00080050"] == {"vr": "SH"}


def test_study_result_timezone_when_known(api, manifest):
    """Rule 49: 00080201 TimezoneOffsetFromUTC is returned when known."""
    e = manifest.by_name("chrFren.dcm")
    assert e["timezone_offset"]
    r = _one(api, "/studies", {"StudyInstanceUID": e["study_instance_uid"]})
    assert first(r, "00080201") == e["timezone_offset"], r.get("00080201")


def test_study_counts_over_fixtures(api, manifest):
    studies = manifest.studies()
    resp, res = kh.qido(api, "/studies", params={"StudyInstanceUID": ",".join(sorted(studies))})
    assert resp.status_code == 200, describe(resp)
    by_uid = {first(r, "0020000D"): r for r in res}
    problems = []
    for st, files in studies.items():
        r = by_uid.get(st)
        if r is None:
            problems.append(f"{st}: not found")
            continue
        n_series = len({f["series_instance_uid"] for f in files})
        if first(r, "00201206") != n_series or first(r, "00201208") != len(files):
            problems.append(f"{st} ({files[0]['source']}): series={first(r, '00201206')} (want {n_series}) "
                            f"instances={first(r, '00201208')} (want {len(files)})")
        mods = sorted({f["modality"] for f in files if f["modality"]})
        if sorted(values(r, "00080061")) != mods:
            problems.append(f"{st}: ModalitiesInStudy {values(r, '00080061')} want {mods}")
    assert not problems, "\n".join(problems)


def test_series_result_required_keys(api, A):
    st = A["study_instance_uid"]
    resp, res = kh.qido(api, f"/studies/{st}/series")
    assert resp.status_code == 200, describe(resp)
    assert len(res) == 2
    by_mod = {first(r, "00080060"): r for r in res}
    assert set(by_mod) == {"CT", "MR"}
    for mod, r in by_mod.items():
        assert not _missing(r, SERIES_REQUIRED), f"{mod}: missing {_missing(r, SERIES_REQUIRED)}"
        assert first(r, "00201209") == 3
        se = first(r, "0020000E")
        assert first(r, "00081190", "").endswith(f"/studies/{st}/series/{se}")
    assert first(by_mod["CT"], "00200011") == 1 and first(by_mod["MR"], "00200011") == 2
    # known optional keys (rule 50: "if known")
    assert first(by_mod["CT"], "0008103E") == "Axial CT"
    assert first(by_mod["MR"], "00400244") == "20230415"
    assert first(by_mod["MR"], "00400245") == "103000"


def test_instance_result_required_keys(api, manifest, A):
    st, se = A["study_instance_uid"], A["series_instance_uids"][0]
    resp, res = kh.qido(api, f"/studies/{st}/series/{se}/instances")
    assert resp.status_code == 200, describe(resp)
    files = {e["sop_instance_uid"]: e for e in manifest.series(se)}
    assert sorted(first(r, "00080018") for r in res) == sorted(files)
    for r in res:
        assert not _missing(r, INSTANCE_REQUIRED), f"missing {_missing(r, INSTANCE_REQUIRED)}"
        sop = first(r, "00080018")
        assert first(r, "00080016") == files[sop]["sop_class_uid"]
        assert first(r, "00200013") == files[sop]["instance_number"]
        assert first(r, "00081190", "").endswith(kh.entry_path(files[sop]))
        # "if known" keys
        assert first(r, "00280010") == 8 and first(r, "00280011") == 8, (r.get("00280010"), r.get("00280011"))
        assert first(r, "00280100") == 16, r.get("00280100")


def test_instance_result_number_of_frames_when_known(api, manifest):
    e = manifest.by_name("rtdose.dcm")
    r = _one(api, "/instances", {"SOPInstanceUID": e["sop_instance_uid"]})
    assert first(r, "00280008") == e["number_of_frames"], r.get("00280008")


def test_series_level_results_carry_study_keys(api, A):
    resp, res = kh.qido(api, "/series", params={"PatientID": "KST-PAT-001"})
    assert resp.status_code == 200, describe(resp)
    assert len(res) == 2
    for r in res:
        missing = _missing(r, ["0020000D", "00100010", "00100020", "00080020"] + SERIES_REQUIRED)
        assert not missing, f"missing {missing}"
        assert first(r, "0020000D") == A["study_instance_uid"]


def test_all_instances_results_carry_study_and_series_keys(api, A):
    resp, res = kh.qido(api, "/instances", params={"PatientID": "KST-PAT-001"})
    assert resp.status_code == 200, describe(resp)
    assert len(res) == 6
    for r in res:
        missing = _missing(r, ["0020000D", "00100010", "00100020", "00080020", "00080060", "0020000E"]
                           + INSTANCE_REQUIRED)
        assert not missing, f"missing {missing}"


def test_study_instances_results_carry_series_keys(api, A):
    resp, res = kh.qido(api, f"/studies/{A['study_instance_uid']}/instances")
    assert resp.status_code == 200, describe(resp)
    assert len(res) == 6
    for r in res:
        missing = _missing(r, ["00080060", "0020000E", "00200011"] + INSTANCE_REQUIRED)
        assert not missing, f"missing {missing}"


# --------------------------------------------------------------------------
# includefield (rules 53-54)
# --------------------------------------------------------------------------
@pytest.mark.parametrize("params", [
    {"includefield": "StudyDescription"},
    {"includefield": "00081030"},
    {"includefield": "all"},
])
def test_includefield_study_description(api, params):
    r = _one(api, "/studies", {"PatientID": "KST-PAT-001", **params})
    assert first(r, "00081030") == "Kastell synthetic study A", r.get("00081030")


def test_includefield_repeated_and_comma_list(api):
    r = _one(api, "/studies", [("PatientID", "KST-PAT-001"), ("includefield", "StudyDescription"),
                               ("includefield", "00100030")])
    assert first(r, "00081030") == "Kastell synthetic study A"
    assert first(r, "00100030") == "19600101"
    r = _one(api, "/studies?PatientID=KST-PAT-001&includefield=StudyDescription,PatientSex", None)
    assert first(r, "00081030") == "Kastell synthetic study A"
    assert first(r, "00100040") == "M"


def test_includefield_all_on_series(api, A):
    resp, res = kh.qido(api, f"/studies/{A['study_instance_uid']}/series",
                        params={"Modality": "CT", "includefield": "all"})
    assert resp.status_code == 200, describe(resp)
    assert len(res) == 1
    r = res[0]
    assert first(r, "0008103E") == "Axial CT"
    assert first(r, "00400244") == "20230415"
    assert first(r, "00400245") == "101600"


def test_includefield_higher_level_on_series(api):
    """Study attributes may be included at a lower level (rule 53: same or higher level)."""
    resp, res = kh.qido(api, "/series", params={"PatientID": "KST-PAT-001", "includefield": "StudyDescription"})
    assert resp.status_code == 200, describe(resp)
    assert len(res) == 2
    assert all(first(r, "00081030") == "Kastell synthetic study A" for r in res)


@pytest.mark.parametrize("field", ["SeriesDescription", "0008103E", "SOPInstanceUID", "Modality"])
def test_includefield_lower_level_not_returned(api, field):
    """Rule 53: lower-level includefield attributes MUST NOT be returned on /studies."""
    tag = {"SeriesDescription": "0008103E", "0008103E": "0008103E", "SOPInstanceUID": "00080018",
           "Modality": "00080060"}[field]
    resp, res = kh.qido(api, "/studies", params={"PatientID": "KST-PAT-001", "includefield": field})
    assert resp.status_code == 200, describe(resp)
    assert len(res) == 1
    assert tag not in res[0], f"{tag} must not be returned at study level: {res[0].get(tag)}"


def test_match_key_is_returned(api):
    """Rule 53: a supported attribute used as match key is returned."""
    r = _one(api, "/studies", {"PatientID": "KST-PAT-001", "StudyDescription": "Kastell*"})
    assert first(r, "00081030") == "Kastell synthetic study A"


# --------------------------------------------------------------------------
# Unsupported keys / parameters (rules 1, 56, contract)
# --------------------------------------------------------------------------
@pytest.mark.parametrize("params", [
    {"NotAKeyword": "x"},
    {"includefield": "NotAKeyword"},
    {"includefield": "StudyDescription,NotAKeyword"},
    {"patientid": "NOPE"},  # keywords are case-sensitive (rule 2): unknown, ignored
])
def test_unknown_key_or_includefield_is_ignored_with_warning(api, A, params):
    resp, res = kh.qido(api, "/studies", params={"PatientID": "KST-PAT-001", **params})
    assert resp.status_code == 200, describe(resp)
    assert [first(r, "0020000D") for r in res] == [A["study_instance_uid"]]
    assert kh.has_warning_299(resp), f"expected a 'Warning: 299 ...' header, got {kh.warnings_of(resp)}"


def test_unknown_query_parameter_does_not_fail(api, A):
    resp, res = kh.qido(api, "/studies", params={"PatientID": "KST-PAT-001", "foo": "bar"})
    assert resp.status_code == 200, describe(resp)
    assert [first(r, "0020000D") for r in res] == [A["study_instance_uid"]]


@pytest.mark.parametrize("params", [
    {"limit": "abc"}, {"offset": "-1"}, {"fuzzymatching": "yes"}, {"limit": "-1"}, {"offset": "x"},
])
def test_invalid_parameter_values_400(api, params):
    resp = api.get("/studies", params={"PatientID": "KST-PAT-001", **params}, headers={"Accept": kh.DICOM_JSON})
    assert resp.status_code == 400, describe(resp)


@pytest.mark.parametrize("path", ["/series", "/instances"])
def test_invalid_limit_400_on_other_resources(api, path):
    resp = api.get(path, params={"limit": "abc"}, headers={"Accept": kh.DICOM_JSON})
    assert resp.status_code == 400, describe(resp)


# --------------------------------------------------------------------------
# Paging (rules 58, 60, 61)
# --------------------------------------------------------------------------
def test_limit_and_warning(api, A):
    path = f"/studies/{A['study_instance_uid']}/instances"
    resp, res = kh.qido(api, path, params={"limit": "2"})
    assert resp.status_code == 200, describe(resp)
    assert len(res) == 2
    assert kh.has_warning_299(resp), f"expected Warning 299 about remaining results: {kh.warnings_of(resp)}"
    text = " ".join(kh.warnings_of(resp))
    assert "There are additional results that can be requested" in text, text
    # Kastell states that more matches follow, not how many (a count would walk
    # every match: CONFORMANCE.md §4, "additional results").
    assert not re.search(r"There are \d", text), f"no number expected: {text!r}"


def test_no_warning_when_nothing_remains(api, A):
    path = f"/studies/{A['study_instance_uid']}/instances"
    resp, res = kh.qido(api, path, params={"limit": "6"})
    assert resp.status_code == 200 and len(res) == 6, describe(resp)
    assert "additional results" not in " ".join(kh.warnings_of(resp))
    resp, res = kh.qido(api, path, params={"limit": "2", "offset": "4"})
    assert resp.status_code == 200 and len(res) == 2, describe(resp)
    assert "additional results" not in " ".join(kh.warnings_of(resp))


def test_paging_is_stable_and_complete(api, A):
    path = f"/studies/{A['study_instance_uid']}/instances"
    _, full = kh.qido(api, path)
    _, full2 = kh.qido(api, path)
    order = [first(r, "00080018") for r in full]
    assert order == [first(r, "00080018") for r in full2], "identical requests must return the same order"
    assert len(order) == 6
    pages = []
    for off in (0, 2, 4):
        resp, res = kh.qido(api, path, params={"limit": "2", "offset": str(off)})
        assert resp.status_code == 200, describe(resp)
        pages.extend(first(r, "00080018") for r in res)
    assert pages == order, "pages must partition the full result in the same order"


def test_offset_beyond_end_is_204(api, A):
    resp = api.get(f"/studies/{A['study_instance_uid']}/instances", params={"offset": "6"},
                   headers={"Accept": kh.DICOM_JSON})
    assert resp.status_code == 204, describe(resp)
    assert resp.content == b""


def test_limit_on_studies(api, A, B):
    resp, res = kh.qido(api, "/studies", params={"PatientID": "KST-PAT-001,KST-PAT-002", "limit": "1"})
    assert resp.status_code == 200, describe(resp)
    assert len(res) == 1
    assert kh.has_warning_299(resp)
    resp2, res2 = kh.qido(api, "/studies", params={"PatientID": "KST-PAT-001,KST-PAT-002", "limit": "1",
                                                   "offset": "1"})
    assert len(res2) == 1
    assert {first(res[0], "0020000D"), first(res2[0], "0020000D")} == {A["study_instance_uid"],
                                                                       B["study_instance_uid"]}


# --------------------------------------------------------------------------
# dicomweb-client interoperability
# --------------------------------------------------------------------------
def test_dicomweb_client_search(client, A):
    res = client.search_for_studies(search_filters={"PatientID": "KST-PAT-001"})
    assert [first(r, "0020000D") for r in res] == [A["study_instance_uid"]]
    res = client.search_for_series(A["study_instance_uid"])
    assert len(res) == 2
    res = client.search_for_instances(A["study_instance_uid"], A["series_instance_uids"][1])
    assert len(res) == 3
    res = client.search_for_studies(search_filters={"PatientID": "KST-NO-SUCH"})
    assert res == []
