"""Metadata stays right when the server caches it: identical answers for identical requests,
and STOW / DELETE change the series, study and instance metadata (and the ETag) at once.
Works on its own study with fresh UIDs, deleted at the end."""
from __future__ import annotations

import pytest
from pydicom.uid import generate_uid

import kastell_helpers as kh
from kastell_helpers import DICOM_JSON, describe

SOP = "00080018"


def _meta(api, path):
    resp = api.get(path + "/metadata", headers={"Accept": DICOM_JSON})
    assert resp.status_code == 200, describe(resp)
    data = resp.json()
    assert isinstance(data, list)
    return resp, data


def _sops(data) -> set[str]:
    return {kh.first(d, SOP) for d in data}


@pytest.fixture()
def study(api):
    st, se = generate_uid(), generate_uid()
    sops = [generate_uid() for _ in range(2)]
    files = [kh.make_instance(st, se, s, patient_id="KST-CACHE", seed=i, instance_number=i + 1)
             for i, s in enumerate(sops)]
    resp = kh.stow(api, files, study=st)
    assert resp.status_code == 200, describe(resp)
    yield st, se, sops
    api.session.delete(api.url(kh.study_path(st)), timeout=kh.TIMEOUT)


def test_series_metadata_twice_identical(api, manifest):
    A = manifest.syn("A")
    path = kh.series_path(A["study_instance_uid"], A["series_instance_uids"][0])
    r1, d1 = _meta(api, path)
    r2, d2 = _meta(api, path)
    assert r1.content == r2.content, "two identical requests gave different metadata"
    assert r1.headers.get("ETag") == r2.headers.get("ETag")
    assert len(d1) == 3


def test_stow_into_series_updates_metadata(api, study):
    st, se, sops = study
    paths = [kh.series_path(st, se), kh.study_path(st)]
    before = {p: _meta(api, p) for p in paths}
    for p in paths:
        assert _sops(before[p][1]) == set(sops)
    extra = generate_uid()
    resp = kh.stow(api, [kh.make_instance(st, se, extra, patient_id="KST-CACHE", seed=9, instance_number=3)],
                   study=st)
    assert resp.status_code == 200, describe(resp)
    for p in paths:
        r, data = _meta(api, p)
        assert len(data) == len(sops) + 1, f"{p}: {len(data)} instances after adding one to {len(sops)}"
        assert _sops(data) == set(sops) | {extra}
        assert r.headers.get("ETag") != before[p][0].headers.get("ETag"), f"{p}: ETag unchanged after STOW"
        # The old ETag must not earn a 304 now.
        old = before[p][0].headers.get("ETag")
        if old:
            r304 = api.get(p + "/metadata", headers={"Accept": DICOM_JSON, "If-None-Match": old})
            assert r304.status_code == 200, describe(r304)
    _, inst = _meta(api, kh.instance_path(st, se, extra))
    assert _sops(inst) == {extra}


def test_delete_instance_updates_metadata(api, study):
    st, se, sops = study
    path = kh.series_path(st, se)
    r0, d0 = _meta(api, path)
    assert len(d0) == 2
    gone = sops[0]
    resp = api.session.delete(api.url(kh.instance_path(st, se, gone)), timeout=kh.TIMEOUT)
    assert resp.status_code in (200, 204), describe(resp)
    r1, d1 = _meta(api, path)
    assert _sops(d1) == {sops[1]}, f"deleted instance still in the series metadata: {_sops(d1)}"
    assert r1.headers.get("ETag") != r0.headers.get("ETag"), "ETag unchanged after DELETE"
    _, ds = _meta(api, kh.study_path(st))
    assert _sops(ds) == {sops[1]}
    r = api.get(kh.instance_path(st, se, gone) + "/metadata", headers={"Accept": DICOM_JSON})
    assert r.status_code == 410, describe(r)


def test_metadata_after_restore_of_deleted_instance(api, study):
    """Delete then store the same instance again: metadata shows it again."""
    st, se, sops = study
    path = kh.series_path(st, se)
    _meta(api, path)  # warm any cache
    api.session.delete(api.url(kh.instance_path(st, se, sops[1])), timeout=kh.TIMEOUT)
    assert _sops(_meta(api, path)[1]) == {sops[0]}
    resp = kh.stow(api, [kh.make_instance(st, se, sops[1], patient_id="KST-CACHE", seed=1, instance_number=2)],
                   study=st)
    assert resp.status_code == 200, describe(resp)
    assert _sops(_meta(api, path)[1]) == set(sops)


def test_rendered_after_delete_410(api, study):
    """A cached render must not outlive its instance: after DELETE, rendered answers 410 Gone."""
    st, se, sops = study
    path = kh.instance_path(st, se, sops[0]) + "/rendered"
    first = api.get(path, headers={"Accept": "image/png"})
    assert first.status_code == 200, describe(first)
    api.session.delete(api.url(kh.instance_path(st, se, sops[0])), timeout=kh.TIMEOUT)
    again = api.get(path, headers={"Accept": "image/png"})
    assert again.status_code == 410, describe(again)
