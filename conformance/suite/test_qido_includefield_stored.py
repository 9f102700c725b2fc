"""includefield of attributes the index does not keep (issue 13): any attribute of the
stored instances comes back at every QIDO level, named by keyword or tag (private tags
and sequences included), and includefield=all adds every attribute of the result's levels;
lower-level attributes are not returned at a higher level (rule 53)."""
from __future__ import annotations

import pytest

import kastell_helpers as kh
from kastell_helpers import describe, first

CT_SERIES_DESCRIPTION = "Axial CT"


@pytest.fixture(scope="module")
def A(manifest):
    return manifest.syn("A")


def _search(api, path, params):
    resp, res = kh.qido(api, path, params=params)
    assert resp.status_code == 200, describe(resp)
    assert res, f"no results for {path} {params}"
    return resp, res


def _ct_series_uid(api, A):
    _, res = _search(api, f"/studies/{A['study_instance_uid']}/series", {"Modality": "CT"})
    return first(res[0], "0020000E")


def test_instance_level_any_attribute_by_keyword_and_tag(api, A):
    series = _ct_series_uid(api, A)
    _, res = _search(api, f"/studies/{A['study_instance_uid']}/series/{series}/instances",
                     [("includefield", "ImageType"), ("includefield", "00180050")])
    assert len(res) == 3
    for r in res:
        assert r.get("00080008", {}).get("Value") == ["ORIGINAL", "PRIMARY", "AXIAL"], r.get("00080008")
        assert r["00080008"]["vr"] == "CS"
        assert r.get("00180050", {}).get("Value") == [1.25], r.get("00180050")
        # Not asked for: not there.
        assert "00080070" not in r and "00281050" not in r


def test_private_attribute_by_tag_comes_with_its_creator(api, A):
    series = _ct_series_uid(api, A)
    _, res = _search(api, f"/studies/{A['study_instance_uid']}/series/{series}/instances",
                     {"includefield": "00091001"})
    with_private = [r for r in res if "00091001" in r]
    assert len(with_private) == 1, "exactly one synthetic instance carries the private element"
    r = with_private[0]
    assert first(r, "00091001") == "private value"
    assert first(r, "00090010") == "KASTELL CONFORMANCE"


@pytest.mark.parametrize("field", ["AnatomicRegionSequence", "00082218",
                                   "AnatomicRegionSequence.CodeValue"])
def test_sequences_come_back_whole(api, A, field):
    series = _ct_series_uid(api, A)
    _, res = _search(api, f"/studies/{A['study_instance_uid']}/series/{series}/instances",
                     {"includefield": field})
    for r in res:
        seq = r.get("00082218")
        assert seq and seq["vr"] == "SQ", r
        item = seq["Value"][0]
        assert first(item, "00080100") == "T-D0050"
        assert first(item, "00080104") == "Tissue"


@pytest.mark.parametrize("path", ["/series", "study-series"])
def test_series_level_attribute_from_the_stored_series(api, A, path):
    url = "/series" if path == "/series" else f"/studies/{A['study_instance_uid']}/series"
    _, res = _search(api, url, {"PatientID": "KST-PAT-001", "includefield": "Manufacturer,FrameOfReferenceUID"})
    assert len(res) == 2
    for r in res:
        assert first(r, "00080070") == "Kastell Conformance", r.get("00080070")
        assert first(r, "00200052"), "FrameOfReferenceUID missing"


def test_study_level_attribute_from_the_stored_study(api):
    _, res = _search(api, "/studies", {"PatientID": "KST-PAT-001", "includefield": "PatientWeight"})
    assert len(res) == 1
    assert first(res[0], "00101030") == 72.5, res[0].get("00101030")


@pytest.mark.parametrize("field", ["Manufacturer", "ImageType", "00180050"])
def test_lower_level_attribute_is_not_returned_at_study_level(api, field):
    tag = {"Manufacturer": "00080070", "ImageType": "00080008", "00180050": "00180050"}[field]
    resp, res = _search(api, "/studies", {"PatientID": "KST-PAT-001", "includefield": field})
    assert tag not in res[0], f"{tag} must not be returned at study level"
    assert kh.has_warning_299(resp), kh.warnings_of(resp)


def test_includefield_all_per_level(api, A):
    _, studies = _search(api, "/studies", {"PatientID": "KST-PAT-001", "includefield": "all"})
    study = studies[0]
    assert first(study, "00101030") == 72.5
    assert first(study, "00081030") == "Kastell synthetic study A"
    for lower in ("00080070", "00080008", "0020000E", "00080018", "7FE00010"):
        assert lower not in study, f"{lower} is not a study attribute"

    _, series = _search(api, f"/studies/{A['study_instance_uid']}/series",
                        {"Modality": "CT", "includefield": "all"})
    assert first(series[0], "00080070") == "Kastell Conformance"
    assert first(series[0], "0008103E") == CT_SERIES_DESCRIPTION
    for lower in ("00080008", "00080018", "00281050", "7FE00010"):
        assert lower not in series[0], f"{lower} is not a series attribute"

    _, instances = _search(api, "/instances", {"PatientID": "KST-PAT-001", "includefield": "all"})
    assert len(instances) == 6
    for r in instances:
        # Every level's attributes on /instances, values but never bulk data.
        assert first(r, "00101030") == 72.5
        assert first(r, "00080070") == "Kastell Conformance"
        assert r["00080008"]["Value"][:2] == ["ORIGINAL", "PRIMARY"]
        assert "00281050" in r and "00200032" in r
        assert "7FE00010" not in r
        assert not any("BulkDataURI" in v for v in r.values() if isinstance(v, dict))


def test_stored_attributes_keep_tag_order_and_index_values(api, A):
    """The merged result is still a valid DICOM JSON object: keys in ascending order, and
    what the index keeps (counts, the retrieve URL) unchanged."""
    _, res = _search(api, "/series", {"PatientID": "KST-PAT-001", "includefield": "all"})
    for r in res:
        keys = list(r.keys())
        assert keys == sorted(keys), keys
        assert first(r, "00201209") == 3
        assert first(r, "00081190").endswith(f"/series/{first(r, '0020000E')}")
