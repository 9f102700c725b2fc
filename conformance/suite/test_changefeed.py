"""The change feed (Conformance Statement §11; not part of PS3.18): every create,
replace and delete of an instance numbered per tenant without a gap, paged by
`GET {prefix}/changefeed?after=&limit=`, the latest at `.../changefeed/latest`."""
from __future__ import annotations

import re

import pytest

import kastell_helpers as kh


def whole_feed(api, limit: int = 1000) -> list[dict]:
    entries, after = [], 0
    while True:
        resp = api.get("/changefeed", params={"after": str(after), "limit": str(limit)})
        assert resp.status_code == 200, kh.describe(resp)
        assert resp.headers["Content-Type"].startswith("application/json")
        page = resp.json()
        if not page:
            return entries
        entries.extend(page)
        after = page[-1]["sequence"]


def test_every_stored_fixture_is_created_once_in_a_gap_free_feed(api, manifest, stored):
    feed = whole_feed(api)
    assert [e["sequence"] for e in feed] == list(range(1, len(feed) + 1)), "numbered 1..N"
    latest = api.get("/changefeed/latest")
    assert latest.status_code == 200, kh.describe(latest)
    assert latest.json()["sequence"] == len(feed)
    created = {e["sopInstanceUID"] for e in feed if e["action"] == "created"}
    missing = [e["sop_instance_uid"] for e in manifest.files
               if e.get("expect_stored", True) and e["sop_instance_uid"] not in created]
    assert not missing, f"{len(missing)} stored fixtures not in the feed, e.g. {missing[:3]}"
    for entry in feed:
        assert set(entry) <= {"sequence", "timestamp", "action", "studyInstanceUID", "seriesInstanceUID",
                              "sopInstanceUID", "sopClassUID", "numberOfStudyRelatedSeries",
                              "numberOfStudyRelatedInstances"}, entry
        assert entry["action"] in ("created", "replaced", "deleted", "study-stable")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", entry["timestamp"]), entry


def test_a_store_and_a_delete_append_in_order(api):
    study, series, sop = kh.new_uid(), kh.new_uid(), kh.new_uid()
    before = api.get("/changefeed/latest").json()["sequence"]
    resp = kh.stow(api, [kh.make_instance(study, series, sop, patient_id="FEED-1")])
    assert resp.status_code == 200, kh.describe(resp)
    delete = api.session.delete(api.url(kh.instance_path(study, series, sop)), timeout=30)
    assert delete.status_code == 204, kh.describe(delete)
    # Other tests may store at the same time: find ours after `before`.
    feed = [e for e in whole_feed(api) if e["sequence"] > before and e.get("sopInstanceUID") == sop]
    assert [e["action"] for e in feed] == ["created", "deleted"], feed
    assert feed[0]["sequence"] < feed[1]["sequence"]
    assert (feed[0]["studyInstanceUID"], feed[0]["seriesInstanceUID"]) == (study, series)
    assert feed[0]["sopClassUID"] == "1.2.840.10008.5.1.4.1.1.7"


def test_a_full_page_links_to_the_next(api, stored):
    resp = api.get("/changefeed", params={"after": "0", "limit": "2"})
    assert resp.status_code == 200, kh.describe(resp)
    page = resp.json()
    assert len(page) == 2
    link = resp.headers.get("Link", "")
    assert f"after={page[-1]['sequence']}&limit=2" in link and 'rel="next"' in link, link
    nxt = api.get("/changefeed", params={"after": str(page[-1]["sequence"]), "limit": "2"}).json()
    assert nxt[0]["sequence"] == page[-1]["sequence"] + 1


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "1001"}, {"after": "-1"}, {"after": "x"},
                                    {"offset": "3"}], ids=lambda p: "&".join(f"{k}={v}" for k, v in p.items()))
def test_out_of_bounds_or_unknown_parameters_are_400(api, params):
    resp = api.get("/changefeed", params=params)
    assert resp.status_code == 400, kh.describe(resp)
