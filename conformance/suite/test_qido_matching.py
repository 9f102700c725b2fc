"""QIDO-RS matching semantics (rules 46, 63-74 and the Kastell contract).

Synthetic study A: Müller^Jürgen / KST-PAT-001 / 20230415 101530 / KSTACC001 /
"Kastell synthetic study A" / CT+MR.  Study B: Doe^Jane / KST-PAT-002 /
20230416 083000 / KSTACC002 / "kastell synthetic study B" / CT.
Assertions are restricted to the fixture universe so that data stored by
other tests cannot interfere.
"""
from __future__ import annotations

import pytest

import kastell_helpers as kh
from kastell_helpers import describe, first

STUDY_UID = "0020000D"
SERIES_UID = "0020000E"
SOP_UID = "00080018"


@pytest.fixture(scope="module")
def A(manifest):
    return manifest.syn("A")


@pytest.fixture(scope="module")
def B(manifest):
    return manifest.syn("B")


@pytest.fixture(scope="module")
def AB(A, B):
    return {A["study_instance_uid"], B["study_instance_uid"]}


def studies(api, params, universe) -> set[str]:
    """Study UIDs returned for *params*, restricted to *universe*."""
    resp, res = kh.qido(api, "/studies", params=params)
    assert resp.status_code in (200, 204), describe(resp)
    if resp.status_code == 204:
        assert resp.content == b"", "204 must have an empty body"
    return {first(r, STUDY_UID) for r in res} & set(universe)


def expect(api, params, universe, expected, msg=""):
    got = studies(api, params, universe)
    assert got == set(expected), (f"{msg} query {params}: got {sorted(got)} expected {sorted(expected)}")


# --------------------------------------------------------------------------
# Single value, case sensitivity
# --------------------------------------------------------------------------
def test_patient_id_single_value(api, A, AB):
    expect(api, {"PatientID": "KST-PAT-001"}, AB, {A["study_instance_uid"]})


def test_match_key_by_tag(api, A, AB):
    expect(api, {"00100020": "KST-PAT-001"}, AB, {A["study_instance_uid"]})


def test_match_key_tag_lowercase_hex(api, A, AB):
    """Rule 2: an 8-hex tag is HEXDIG, which is case-insensitive."""
    expect(api, {"0020000d": A["study_instance_uid"]}, AB, {A["study_instance_uid"]})


def test_accession_number_single_value(api, B, AB):
    expect(api, {"AccessionNumber": "KSTACC002"}, AB, {B["study_instance_uid"]})


def test_study_id(api, A, AB):
    expect(api, {"StudyID": "KSTS1"}, AB, {A["study_instance_uid"]})


def test_lo_single_value_is_case_sensitive(api, AB):
    """Rule 65: non-PN strings match case-sensitively."""
    expect(api, {"PatientID": "kst-pat-001"}, AB, set())
    expect(api, {"AccessionNumber": "kstacc001"}, AB, set())


def test_patient_name_exact(api, A, AB):
    expect(api, {"PatientName": "Müller^Jürgen"}, AB, {A["study_instance_uid"]})


@pytest.mark.parametrize("name", ["müller^jürgen", "MÜLLER^JÜRGEN", "mÜlLeR^JüRgEn"])
def test_patient_name_case_insensitive(api, A, AB, name):
    """Contract: PN matching is always case-insensitive (also for non-ASCII letters)."""
    expect(api, {"PatientName": name}, AB, {A["study_instance_uid"]})


def test_referring_physician_name(api, A, AB):
    expect(api, {"ReferringPhysicianName": "Weiß^Anna"}, AB, {A["study_instance_uid"]})
    expect(api, {"ReferringPhysicianName": "weiß^ANNA"}, AB, {A["study_instance_uid"]})


def test_patient_birth_date_and_sex(api, A, B, AB):
    expect(api, {"PatientBirthDate": "19600101"}, AB, {A["study_instance_uid"]})
    expect(api, {"PatientBirthDate": "19700101-19800101"}, AB, {B["study_instance_uid"]})
    expect(api, {"PatientSex": "F", "PatientID": "KST-PAT-001,KST-PAT-002"}, AB, {B["study_instance_uid"]})


def test_study_description(api, A, AB):
    expect(api, {"StudyDescription": "Kastell synthetic study A"}, AB, {A["study_instance_uid"]})


def test_combined_keys_are_anded(api, A, AB):
    expect(api, {"PatientID": "KST-PAT-001", "AccessionNumber": "KSTACC002"}, AB, set())
    expect(api, {"PatientID": "KST-PAT-001", "AccessionNumber": "KSTACC001"}, AB, {A["study_instance_uid"]})


# --------------------------------------------------------------------------
# Wildcards (rule 68)
# --------------------------------------------------------------------------
def test_wildcard_star_and_question_mark(api, A, B, AB):
    both = {A["study_instance_uid"], B["study_instance_uid"]}
    expect(api, {"AccessionNumber": "KSTACC00?"}, AB, both)
    expect(api, {"AccessionNumber": "KSTACC0*"}, AB, both)
    expect(api, {"AccessionNumber": "*002"}, AB, {B["study_instance_uid"]})
    expect(api, {"AccessionNumber": "K*C?01"}, AB, {A["study_instance_uid"]})
    expect(api, {"PatientID": "KST-PAT-00?"}, AB, both)


def test_wildcard_question_mark_is_exactly_one_character(api, AB):
    expect(api, {"AccessionNumber": "KSTACC0?"}, AB, set())
    expect(api, {"AccessionNumber": "KSTACC00??"}, AB, set())


def test_wildcard_is_case_sensitive_for_non_pn(api, A, B, AB):
    expect(api, {"StudyDescription": "Kastell*"}, AB, {A["study_instance_uid"]})
    expect(api, {"StudyDescription": "kastell*"}, AB, {B["study_instance_uid"]})
    expect(api, {"StudyDescription": "*synthetic study ?"}, AB, AB)


def test_wildcard_pn(api, A, AB):
    a = {A["study_instance_uid"]}
    expect(api, {"PatientName": "Müll*"}, AB, a)
    expect(api, {"PatientName": "*Jürgen"}, AB, a)
    expect(api, {"PatientName": "müll*"}, AB, a, "PN wildcard is case-insensitive (contract)")


def test_wildcard_question_mark_matches_one_non_ascii_character(api, A, AB):
    """'?' is one character: ü is two bytes in UTF-8 but one character."""
    expect(api, {"PatientName": "M?ller^J?rgen"}, AB, {A["study_instance_uid"]})
    expect(api, {"PatientName": "M??ller^Jürgen"}, AB, set())


def test_star_alone_is_universal(api, A, AB):
    expect(api, {"PatientID": "KST-PAT-001", "AccessionNumber": "*"}, AB, {A["study_instance_uid"]})


def test_no_wildcards_for_uid(api, A, AB):
    """Rule 68: wildcards never apply to UI."""
    uid = A["study_instance_uid"]
    resp, res = kh.qido(api, "/studies", params={"StudyInstanceUID": uid[:-3] + "*"})
    assert resp.status_code in (200, 204, 400), describe(resp)
    assert uid not in {first(r, STUDY_UID) for r in res}


def test_no_wildcards_for_dates(api, A, AB):
    resp, res = kh.qido(api, "/studies", params={"StudyDate": "2023041*", "PatientID": "KST-PAT-001"})
    assert resp.status_code in (200, 204, 400), describe(resp)
    assert A["study_instance_uid"] not in {first(r, STUDY_UID) for r in res}


# --------------------------------------------------------------------------
# Universal matching (rule 64)
# --------------------------------------------------------------------------
def test_empty_value_is_universal_and_returns_attribute(api, A):
    resp, res = kh.qido(api, "/studies", params={"PatientID": "KST-PAT-001", "StudyDescription": ""})
    assert resp.status_code == 200, describe(resp)
    assert [first(r, STUDY_UID) for r in res] == [A["study_instance_uid"]]
    assert first(res[0], "00081030") == "Kastell synthetic study A", res[0].get("00081030")


def test_empty_uid_value_is_universal(api, A):
    resp, res = kh.qido(api, "/studies", params={"PatientID": "KST-PAT-001", "StudyInstanceUID": ""})
    assert resp.status_code == 200, describe(resp)
    assert [first(r, STUDY_UID) for r in res] == [A["study_instance_uid"]]


def test_empty_value_matches_study_with_empty_attribute(api, B):
    """B's ReferringPhysicianName is zero-length; universal matching still matches."""
    resp, res = kh.qido(api, "/studies", params={"PatientID": "KST-PAT-002", "ReferringPhysicianName": ""})
    assert resp.status_code == 200, describe(resp)
    assert [first(r, STUDY_UID) for r in res] == [B["study_instance_uid"]]


def test_non_empty_key_does_not_match_empty_value(api, B, AB):
    """B has an empty ReferringPhysicianName: a non-universal key must not match it."""
    expect(api, {"ReferringPhysicianName": "*a*", "PatientID": "KST-PAT-002"}, AB, set())


# --------------------------------------------------------------------------
# UID lists and comma lists (rules 69, contract)
# --------------------------------------------------------------------------
def test_uid_list(api, A, B, AB):
    expect(api, {"StudyInstanceUID": f"{A['study_instance_uid']},{B['study_instance_uid']}"}, AB, AB)
    expect(api, {"StudyInstanceUID": f"{A['study_instance_uid']},1.2.3.4.5.6.7"}, AB, {A["study_instance_uid"]})


def test_uid_list_over_all_fixtures(api, manifest):
    uids = sorted(manifest.study_uids())
    resp, res = kh.qido(api, "/studies", params={"StudyInstanceUID": ",".join(uids)})
    assert resp.status_code == 200, describe(resp)
    got = [first(r, STUDY_UID) for r in res]
    assert sorted(got) == uids, "each study exactly once"


def test_comma_list_on_non_uid_is_any_of(api, A, B, AB):
    expect(api, {"PatientID": "KST-PAT-001,KST-PAT-002"}, AB, AB)
    expect(api, {"AccessionNumber": "KSTACC001,NOPE"}, AB, {A["study_instance_uid"]})


def test_list_separator_raw_or_percent_encoded(api, A, B, AB):
    """requests / dicomweb-client send ',' as %2C; a raw ',' must work as well."""
    a, b = A["study_instance_uid"], B["study_instance_uid"]
    for path in (f"/studies?StudyInstanceUID={a},{b}", f"/studies?StudyInstanceUID={a}%2C{b}",
                 "/studies?PatientID=KST-PAT-001,KST-PAT-002"):
        resp, res = kh.qido(api, path)
        assert resp.status_code == 200, describe(resp)
        assert {first(r, STUDY_UID) for r in res} & AB == AB, path


def test_modalities_in_study(api, manifest, A, B, AB):
    a, b = A["study_instance_uid"], B["study_instance_uid"]
    expect(api, {"ModalitiesInStudy": "MR"}, AB, {a})
    expect(api, {"ModalitiesInStudy": "CT"}, AB, {a, b})
    expect(api, {"ModalitiesInStudy": "MR,XA"}, AB, {a})
    # over all fixtures: studies having an SR
    universe = manifest.study_uids()
    expected = {e["study_instance_uid"] for e in manifest.files if e["modality"] == "SR"}
    assert expected, "fixture set has SR documents"
    expect(api, {"ModalitiesInStudy": "SR"}, universe, expected)


def test_multiple_value_matching_modalities(api, A, B, AB):
    """PS3.4 C.2.2.2.8 through PS3.18's multiplevaluematching=true: CT\\MR matches the
    study with both a CT and an MR series (A), not the CT-only one (B); values in any
    order; a value no series has matches nothing; no 299 "not supported" warning."""
    a = A["study_instance_uid"]
    for value in ("CT\\MR", "MR\\CT"):
        params = {"ModalitiesInStudy": value, "multiplevaluematching": "true"}
        expect(api, params, AB, {a})
        resp, _ = kh.qido(api, "/studies", params=params)
        assert not any("multiplevaluematching" in w for w in kh.warnings_of(resp)), kh.warnings_of(resp)
    expect(api, {"ModalitiesInStudy": "CT\\PT", "multiplevaluematching": "true"}, AB, set())
    # One value with the flag is plain single value matching.
    expect(api, {"ModalitiesInStudy": "CT", "multiplevaluematching": "true"}, AB,
           {a, B["study_instance_uid"]})


@pytest.mark.parametrize("value", ["CT\\M*", "CT\\", "CT\\MR,PT"])
def test_multiple_value_matching_refuses_wildcards_and_empty_values(api, value):
    resp = api.get("/studies", params={"ModalitiesInStudy": value, "multiplevaluematching": "true"},
                   headers={"Accept": kh.DICOM_JSON})
    assert resp.status_code == 400, describe(resp)


@pytest.fixture(scope="module")
def timezone_studies(api):
    """Two studies on 2023-06-01 at 00:30 local time: one stating TimezoneOffsetFromUTC
    +0100 (2023-05-31 23:30 UTC), one stating no offset."""
    import io

    import pydicom.data
    from pydicom.uid import generate_uid

    made = {}
    files = []
    for name, offset in (("with-offset", "+0100"), ("without-offset", None)):
        ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID = "KST-TZ"
        ds.StudyDate, ds.StudyTime = "20230601", "003000"
        if offset:
            ds.TimezoneOffsetFromUTC = offset
        elif "TimezoneOffsetFromUTC" in ds:
            del ds.TimezoneOffsetFromUTC
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        files.append(out.getvalue())
        made[name] = str(ds.StudyInstanceUID)
    resp = kh.stow(api, files)
    assert resp.status_code == 200, describe(resp)
    yield made
    for uid in made.values():
        api.session.delete(api.url(kh.study_path(uid)), timeout=kh.TIMEOUT)


@pytest.mark.parametrize("params,expected", [
    # In UTC the study with an offset is on May 31; the other one has no known
    # instant and is matched on its local date.
    ({"StudyDate": "20230531", "TimezoneOffsetFromUTC": "+0000"}, {"with-offset"}),
    ({"StudyDate": "20230601", "TimezoneOffsetFromUTC": "+0000"}, {"without-offset"}),
    ({"StudyDate": "20230601", "TimezoneOffsetFromUTC": "+0100"}, {"with-offset", "without-offset"}),
    ({"StudyDate": "20230601", "TimezoneOffsetFromUTC": "-0500"}, {"without-offset"}),
    ({"StudyDate": "20230531", "StudyTime": "2300-2359", "TimezoneOffsetFromUTC": "+0000"}, {"with-offset"}),
    ({"StudyDate": "20230531", "StudyTime": "2200-2300", "TimezoneOffsetFromUTC": "+0000"}, set()),
    ({"StudyDate": "20230531-20230602", "TimezoneOffsetFromUTC": "+0200"}, {"with-offset", "without-offset"}),
    # Without the key, dates are matched as stored.
    ({"StudyDate": "20230601"}, {"with-offset", "without-offset"}),
    ({"StudyDate": "20230531"}, set()),
])
def test_timezone_adjustment_of_date_time_matching(api, timezone_studies, params, expected):
    universe = set(timezone_studies.values())
    want = {timezone_studies[name] for name in expected}
    expect(api, {"PatientID": "KST-TZ", **params}, universe, want)


@pytest.mark.parametrize("value", ["0100", "+01:00", "+2500", "UTC"])
def test_timezone_key_must_be_an_offset(api, value):
    resp = api.get("/studies", params={"StudyDate": "20230601", "TimezoneOffsetFromUTC": value},
                   headers={"Accept": kh.DICOM_JSON})
    assert resp.status_code == 400, describe(resp)


# --------------------------------------------------------------------------
# Dates and times (rules 63, 67, 70)
# --------------------------------------------------------------------------
def test_date_single(api, A, AB):
    expect(api, {"StudyDate": "20230415"}, AB, {A["study_instance_uid"]})


def test_date_ranges(api, A, B, AB):
    a, b = A["study_instance_uid"], B["study_instance_uid"]
    expect(api, {"StudyDate": "20230415-20230416"}, AB, {a, b})
    expect(api, {"StudyDate": "20230416-"}, AB, {b})
    expect(api, {"StudyDate": "-20230415"}, AB, {a})
    expect(api, {"StudyDate": "20230101-20230414"}, AB, set())


def _range_expected(manifest, lo, hi):
    out = set()
    for st, files in manifest.studies().items():
        d = files[0]["study_date"]
        if d and (lo is None or d >= lo) and (hi is None or d <= hi):
            out.add(st)
    return out


@pytest.mark.parametrize("lo,hi", [(None, "20040826"), ("20040101", "20041231"), ("20170101", None)])
def test_date_range_over_all_fixtures(api, manifest, lo, hi):
    """Range matching over the whole fixture set; empty StudyDate never matches a range."""
    value = f"{lo or ''}-{hi or ''}"
    expected = _range_expected(manifest, lo, hi)
    assert expected
    expect(api, {"StudyDate": value}, manifest.study_uids(), expected)


def test_time_single_and_ranges(api, A, B, AB):
    a, b = A["study_instance_uid"], B["study_instance_uid"]
    expect(api, {"StudyTime": "101530"}, AB, {a})
    expect(api, {"StudyTime": "100000-110000"}, AB, {a})
    expect(api, {"StudyTime": "-090000"}, AB, {b})
    expect(api, {"StudyTime": "090000-"}, AB, {a})
    expect(api, {"StudyTime": "1000-1100"}, AB, {a}, "TM range with HHMM bounds")


def test_time_range_never_crosses_midnight(api, AB):
    """Rule 70: an inverted TM range (110000-090000) does not wrap around midnight."""
    expect(api, {"StudyTime": "110000-090000"}, AB, set())


def test_time_single_value_matches_by_meaning(api, A, AB):
    """Rule 67: TM single values match by meaning (101530.000 == 101530)."""
    expect(api, {"StudyTime": "101530.000"}, AB, {A["study_instance_uid"]})


@pytest.mark.parametrize("date,time,expected", [
    ("20230415-20230416", "090000-120000", "AB"),  # combined: B (0416 08:30) is inside
    ("20230415-20230416", "101000-083500", "AB"),  # independent TM range would be empty
    ("20230415-20230416", "110000-120000", "B"),   # combined excludes A, includes B
    ("20230415", "100000-110000", "A"),            # single date: ordinary AND
])
def test_combined_date_time_range(api, A, B, AB, date, time, expected):
    """Rule 63: StudyDate range + StudyTime range of the same form match as one DT range."""
    want = set()
    if "A" in expected:
        want.add(A["study_instance_uid"])
    if "B" in expected:
        want.add(B["study_instance_uid"])
    expect(api, {"StudyDate": date, "StudyTime": time}, AB, want)


# --------------------------------------------------------------------------
# Fuzzy matching (contract)
# --------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["mull", "MULLER", "Müller", "müll", "jurg", "JÜRGEN", "Jurgen"])
def test_fuzzy_matching_prefix_case_accent_insensitive(api, A, AB, value):
    expect(api, {"PatientName": value, "fuzzymatching": "true"}, AB, {A["study_instance_uid"]})


def test_fuzzy_matching_not_a_prefix(api, AB):
    expect(api, {"PatientName": "ller", "fuzzymatching": "true"}, AB, set())
    expect(api, {"PatientName": "rgen", "fuzzymatching": "true"}, AB, set())


def test_fuzzy_matching_referring_physician(api, A, AB):
    expect(api, {"ReferringPhysicianName": "anna", "fuzzymatching": "true"}, AB, {A["study_instance_uid"]})


def test_fuzzy_matching_false_is_literal(api, AB):
    expect(api, {"PatientName": "mull", "fuzzymatching": "false"}, AB, set())


def test_fuzzy_matching_does_not_affect_non_pn(api, AB):
    """fuzzymatching only concerns PN; LO stays case-sensitive."""
    expect(api, {"PatientID": "kst-pat-001", "fuzzymatching": "true"}, AB, set())


# --------------------------------------------------------------------------
# Series / instance level keys
# --------------------------------------------------------------------------
def _series(api, path, params):
    resp, res = kh.qido(api, path, params=params)
    assert resp.status_code in (200, 204), describe(resp)
    return resp, res


def test_series_modality_and_number(api, A):
    st = A["study_instance_uid"]
    s_ct, s_mr = A["series_instance_uids"]
    _, res = _series(api, f"/studies/{st}/series", {"Modality": "MR"})
    assert [first(r, SERIES_UID) for r in res] == [s_mr]
    _, res = _series(api, f"/studies/{st}/series", {"SeriesNumber": "1"})
    assert [first(r, SERIES_UID) for r in res] == [s_ct]
    _, res = _series(api, f"/studies/{st}/series", {"Modality": "CT,MR"})
    assert sorted(first(r, SERIES_UID) for r in res) == sorted([s_ct, s_mr])
    _, res = _series(api, f"/studies/{st}/series", {"SeriesDescription": "Axial*"})
    assert [first(r, SERIES_UID) for r in res] == [s_ct]
    _, res = _series(api, f"/studies/{st}/series", {"SeriesDescription": "axial*"})
    assert res == [], "SeriesDescription (LO) wildcard is case-sensitive"


def test_series_pps_start_date_time(api, A):
    st = A["study_instance_uid"]
    s_ct, s_mr = A["series_instance_uids"]
    _, res = _series(api, f"/studies/{st}/series", {"PerformedProcedureStepStartDate": "20230415"})
    assert sorted(first(r, SERIES_UID) for r in res) == sorted([s_ct, s_mr])
    _, res = _series(api, f"/studies/{st}/series", {"PerformedProcedureStepStartTime": "102000-110000"})
    assert [first(r, SERIES_UID) for r in res] == [s_mr]


def test_series_uid_of_other_study_does_not_match(api, A, B):
    resp, res = kh.qido(api, f"/studies/{A['study_instance_uid']}/series",
                        params={"SeriesInstanceUID": B["series_instance_uids"][0]})
    assert resp.status_code == 204, describe(resp)
    assert res == []


def test_all_series_with_study_level_key(api, A):
    _, res = _series(api, "/series", {"PatientID": "KST-PAT-001", "Modality": "MR"})
    assert [first(r, SERIES_UID) for r in res] == [A["series_instance_uids"][1]]


def test_series_uid_match_key(api, A, B):
    wanted = [A["series_instance_uids"][0], B["series_instance_uids"][0]]
    _, res = _series(api, "/series", {"SeriesInstanceUID": ",".join(wanted)})
    assert sorted(first(r, SERIES_UID) for r in res) == sorted(wanted)
    _, res = _series(api, "/instances", {"SeriesInstanceUID": A["series_instance_uids"][1]})
    assert len(res) == 3


def test_instance_keys(api, manifest, A):
    st = A["study_instance_uid"]
    s_ct = A["series_instance_uids"][0]
    files = [e for e in manifest.syn_files("A") if e["series_instance_uid"] == s_ct]
    _, res = _series(api, f"/studies/{st}/series/{s_ct}/instances", {"InstanceNumber": "2"})
    assert [first(r, SOP_UID) for r in res] == [e["sop_instance_uid"] for e in files if e["instance_number"] == 2]
    _, res = _series(api, f"/studies/{st}/instances", {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.4"})
    assert sorted(first(r, SOP_UID) for r in res) == sorted(
        e["sop_instance_uid"] for e in manifest.syn_files("A") if e["modality"] == "MR")
    sops = [e["sop_instance_uid"] for e in files]
    _, res = _series(api, "/instances", {"SOPInstanceUID": ",".join(sops[:2])})
    assert sorted(first(r, SOP_UID) for r in res) == sorted(sops[:2])


def test_instances_by_patient_name_all_levels(api, manifest, B):
    _, res = _series(api, "/instances", {"PatientName": "Doe^Jane", "PatientID": "KST-PAT-002"})
    assert sorted(first(r, SOP_UID) for r in res) == sorted(e["sop_instance_uid"] for e in manifest.syn_files("B"))


def test_hierarchical_instances_by_study_date(api, manifest, A):
    """/studies/{s}/instances with a series-level key."""
    st = A["study_instance_uid"]
    _, res = _series(api, f"/studies/{st}/instances", {"Modality": "CT"})
    assert sorted(first(r, SOP_UID) for r in res) == sorted(
        e["sop_instance_uid"] for e in manifest.syn_files("A") if e["modality"] == "CT")


def test_empty_result_is_204(api):
    resp = api.get("/studies", params={"PatientID": "KST-NO-SUCH-PATIENT"}, headers={"Accept": kh.DICOM_JSON})
    assert resp.status_code == 204, describe(resp)
    assert resp.content == b""


# --------------------------------------------------------------------------
# emptyvaluematching (PS3.18 §8.3.4.5)
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def empty_and_filled(api):
    """Two studies of one patient: PatientSex empty in the first, "F" in the second; both
    with an empty ReferringPhysicianName. Deleted afterwards."""
    import io
    import uuid

    import pydicom
    patient = f"KST-EMPTY-{uuid.uuid4().hex[:8]}"
    studies = []
    for sex in ("", "F"):
        st, se, sop = kh.new_uid(), kh.new_uid(), kh.new_uid()
        ds = pydicom.dcmread(io.BytesIO(kh.make_instance(st, se, sop, patient_id=patient)))
        ds.PatientSex = sex
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        assert kh.stow(api, [buf.getvalue()]).status_code == 200
        studies.append(st)
    yield patient, studies
    for st in studies:
        api.session.delete(api.url(kh.study_path(st)), timeout=kh.TIMEOUT)


def test_empty_value_matching_finds_empty_values(api, empty_and_filled):
    patient, (empty, filled) = empty_and_filled
    resp, found = kh.qido(api, "/studies", {"PatientID": patient, "PatientSex": '""',
                                             "emptyvaluematching": "true"})
    assert resp.status_code == 200, describe(resp)
    assert kh.uids(found, "0020000D") == [empty]
    assert not [w for w in kh.warnings_of(resp) if "emptyvaluematching" in w]
    _, both = kh.qido(api, "/studies", {"PatientID": patient, "ReferringPhysicianName": '""',
                                         "emptyvaluematching": "true"})
    assert sorted(kh.uids(both, "0020000D")) == sorted([empty, filled])


def test_without_empty_value_matching_two_quotes_are_a_literal(api, empty_and_filled):
    patient, _ = empty_and_filled
    resp, found = kh.qido(api, "/studies", {"PatientID": patient, "PatientSex": '""'})
    assert resp.status_code == 204 and not found, describe(resp)
