"""Hostile requests (issue 11 contract): frame lists, viewports, QIDO paging and
includefield, URL and header sizes, invalid UIDs in paths, and derived objects
(thumbnails, series metadata) that a client could multiply at will. Each case is
refused with the contract's status, the server lives and answers /healthz, and
its peak RSS stays under the case's bound."""
from __future__ import annotations

import io

import pytest
from PIL import Image

import hostile
import kastell_helpers as kh

RSS = 128  # MiB: the bound of these cases (a debug server idles at ~40 MiB)


@pytest.fixture(scope="module")
def single(servers) -> str:
    """A stored 4x4 single-frame instance: its path."""
    ds, file = hostile.instance()
    assert kh.stow(servers.get("default").api, [file]).status_code == 200
    return kh.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


@pytest.fixture(scope="module")
def multiframe(servers) -> str:
    """A stored instance of 2000 frames of 1x1 pixel: its path."""
    ds, _ = hostile.instance()
    ds.Rows, ds.Columns, ds.NumberOfFrames = 1, 1, 2000
    ds.PixelData = bytes(i % 256 for i in range(2000))
    assert kh.stow(servers.get("default").api, [hostile.to_bytes(ds)]).status_code == 200
    return kh.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


# --------------------------------------------------------------------------
# Frames and viewports
# --------------------------------------------------------------------------
def test_a_frame_list_of_100k_numbers_is_414_or_431(default, multiframe):
    """~590 KB of URL: over max_url_bytes (8192) before any frame is counted: 414,
    or 431 from the HTTP layer's bound on the request head, which such a URL
    also passes."""
    frames = ",".join(str(n) for n in range(1, 100_001))
    with default.watch(rss_mib=RSS):
        resp = default.api.get(f"{multiframe}/frames/{frames}", headers={"Accept": kh.ACCEPT_OCTET})
        assert resp.status_code in (414, 431), hostile.brief(resp)


def test_1001_frame_numbers_are_400(default, multiframe):
    """max_frames_per_request 1000 (the URL, ~5 KB, is within max_url_bytes); 3 frames are served."""
    control = default.api.get(f"{multiframe}/frames/1,2,3", headers={"Accept": kh.ACCEPT_OCTET})
    assert control.status_code == 200, hostile.brief(control)
    frames = ",".join(str(n) for n in range(1, 1002))
    with default.watch(rss_mib=RSS):
        resp = default.api.get(f"{multiframe}/frames/{frames}", headers={"Accept": kh.ACCEPT_OCTET})
        assert resp.status_code == 400, hostile.brief(resp)


@pytest.mark.parametrize("resource", ["/rendered", "/frames/1/rendered"])
def test_a_rendered_viewport_of_100000x100000_is_400(default, single, resource):
    """10^10 output pixels > max_render_pixels (16 777 216)."""
    with default.watch(rss_mib=RSS):
        resp = default.api.get(single + resource, params={"viewport": "100000,100000"},
                               headers={"Accept": "image/png"})
        assert resp.status_code == 400, hostile.brief(resp)


@pytest.mark.parametrize("resource", ["/thumbnail", "/frames/1/thumbnail"])
def test_a_thumbnail_viewport_of_100000x100000_gets_at_most_512(default, single, resource):
    """Thumbnail sizes are a fixed set capped at 512: 200 with an image of at most 512x512."""
    with default.watch(rss_mib=RSS):
        resp = default.api.get(single + resource, params={"viewport": "100000,100000"},
                               headers={"Accept": "image/png"})
        assert resp.status_code == 200, hostile.brief(resp)
        size = Image.open(io.BytesIO(resp.content)).size
        assert max(size) <= 512, f"thumbnail of {size}"


def test_thumbnails_at_50_sizes_make_at_most_4_cached_objects(default):
    """Sizes 8, 18, ... 498: the server keeps the fixed sizes 64/128/256/512 only,
    so at most 4 derived objects appear in the blob store (data dir, derived/)."""
    ds, file = hostile.instance()
    assert kh.stow(default.api, [file]).status_code == 200
    path = kh.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    before = default.derived_settled()
    with default.watch(rss_mib=RSS):
        statuses = [default.api.get(path + "/thumbnail", params={"viewport": f"{s},{s}"},
                                    headers={"Accept": "image/jpeg"}).status_code
                    for s in range(8, 508, 10)]
        assert set(statuses) == {200}, statuses
    made = default.derived_settled() - before
    assert made <= 4, f"50 thumbnail sizes made {made} derived objects"


def test_series_metadata_under_50_host_headers_makes_at_most_1_cached_object(default):
    """Series metadata is cached per series; the Host header is the client's to
    choose, so 50 of them must not mint 50 cached copies."""
    ds1, file1 = hostile.instance()
    ds2, file2 = hostile.instance(StudyInstanceUID=ds1.StudyInstanceUID,
                                  SeriesInstanceUID=ds1.SeriesInstanceUID)
    assert kh.stow(default.api, [file1, file2]).status_code == 200
    path = kh.series_path(ds1.StudyInstanceUID, ds1.SeriesInstanceUID) + "/metadata"
    before = default.derived_settled()
    with default.watch(rss_mib=RSS):
        statuses = [default.api.get(path, headers={"Accept": kh.DICOM_JSON,
                                                   "Host": f"h{i}.example:{default.port}"}).status_code
                    for i in range(50)]
        assert set(statuses) == {200}, statuses
    made = default.derived_settled() - before
    assert made <= 1, f"50 Host headers made {made} derived objects"


# --------------------------------------------------------------------------
# QIDO
# --------------------------------------------------------------------------
def test_qido_limit_beyond_the_server_maximum_is_clamped(default):
    """limit=10^12: PS3.18 §8.3.4.4 lets the server return at most its maximum
    (dicomweb.qido_max_results), so the search answers, bounded, rather than 400;
    a limit that is not a number at all is a 400."""
    with default.watch(rss_mib=RSS):
        resp = default.api.get("/studies", params={"limit": str(10**12)},
                               headers={"Accept": kh.DICOM_JSON})
        assert resp.status_code in (200, 204), hostile.brief(resp)
        if resp.status_code == 200:
            assert len(resp.json()) <= 1000
        resp = default.api.get("/studies", params={"limit": str(10**30)},
                               headers={"Accept": kh.DICOM_JSON})
        assert resp.status_code == 400, hostile.brief(resp)


@pytest.mark.parametrize("params", [
    {"offset": str(10**15)},
    {"includefield": ",".join(f"0009{n:04X}" for n in range(300))},
], ids=["offset=10^15", "300-includefield-names"])
def test_qido_paging_and_includefield_beyond_the_limits_are_400(default, params):
    with default.watch(rss_mib=RSS):
        resp = default.api.get("/studies", params=params, headers={"Accept": kh.DICOM_JSON})
        assert resp.status_code == 400, hostile.brief(resp)


def test_qido_with_10k_includefield_values_is_414_or_431(default):
    """10 000 includefield parameters (~220 KB of query): over max_url_bytes (414),
    and over the HTTP layer's bound on the request head (431)."""
    params = [("includefield", f"0009{n % 0x10000:04X}") for n in range(10_000)]
    with default.watch(rss_mib=RSS):
        resp = default.api.get("/studies", params=params, headers={"Accept": kh.DICOM_JSON})
        assert resp.status_code in (414, 431), hostile.brief(resp)


@pytest.mark.parametrize("params", [
    # 1,000 values in one key, under the URL bound (a backslash is sent as %5C):
    # each would be a subquery.
    {"ModalitiesInStudy": "\\".join(["CT"] * 1000), "multiplevaluematching": "true"},
    {"StudyDate": "20230601", "TimezoneOffsetFromUTC": "+" + "9" * 4000},
    {"StudyDate": "99991231", "TimezoneOffsetFromUTC": "-1459"},
    # 1,900 alternatives in one comma list: one OR each, past SQLite's depth.
    {"ModalitiesInStudy": ",".join(["A"] * 1900)},
    {"StudyDescription": ",".join(["A"] * 1900)},
], ids=["1000-values-all-of", "huge-timezone", "date-at-the-end-of-time",
        "1900-modalities", "1900-descriptions"])
def test_qido_matching_keys_of_this_release_are_bounded(default, params):
    """Multiple value matching takes at most 16 values, a list at most 500 and a
    timezone offset is +HHMM/-HHMM (400 otherwise); a date whose UTC instant
    leaves year 9999 is still a valid query. None of them may cost a 5xx."""
    with default.watch(rss_mib=RSS):
        resp = default.api.get("/studies", params=params, headers={"Accept": kh.DICOM_JSON})
        assert resp.status_code in (200, 204, 400), hostile.brief(resp)
        assert resp.status_code < 500


def test_qido_includefield_all_over_the_largest_page_is_bounded(default):
    """includefield=all reads one stored header per result: at most the server's page
    (qido_max_results), eight at a time, whatever limit asks for."""
    with default.watch(rss_mib=RSS):
        resp = default.api.get("/instances", params={"includefield": "all", "limit": str(10**12)},
                               headers={"Accept": kh.DICOM_JSON})
        assert resp.status_code in (200, 204), hostile.brief(resp)
        if resp.status_code == 200:
            assert len(resp.json()) <= 1000


# --------------------------------------------------------------------------
# The change feed (issue 14)
# --------------------------------------------------------------------------
@pytest.mark.parametrize("params", [
    {"limit": "1001"}, {"limit": str(10**30)}, {"limit": "0"}, {"limit": "-5"},
    {"after": str(10**30)}, {"after": "-1"}, {"after": "1e3"}, {"after": "\u0661"},
    [("after", "1"), ("after", "2")], {"offset": "0"},
], ids=["limit-over-max", "limit-10^30", "limit-0", "limit-negative", "after-10^30",
        "after-negative", "after-float", "after-arabic-digit", "after-twice", "unknown-param"])
def test_change_feed_paging_out_of_bounds_is_400(default, params):
    """A page is at most events.max_page (1000) entries; after is a sequence number.
    Anything else is refused before the index is asked."""
    with default.watch(rss_mib=RSS):
        resp = default.api.get("/changefeed", params=params)
        assert resp.status_code == 400, hostile.brief(resp)


def test_change_feed_largest_page_is_bounded(default):
    """The largest page the server gives, from the start: at most 1000 entries."""
    with default.watch(rss_mib=RSS):
        resp = default.api.get("/changefeed", params={"after": "0", "limit": "1000"})
        assert resp.status_code == 200, hostile.brief(resp)
        assert len(resp.json()) <= 1000
        latest = default.api.get("/changefeed/latest")
        assert latest.status_code == 200 and latest.json()["sequence"] >= 0


# --------------------------------------------------------------------------
# URL and headers
# --------------------------------------------------------------------------
@pytest.mark.parametrize("kib", [16, 60, 100])
def test_a_long_url_is_414(default, kib):
    """Over max_url_bytes (8192): 414. From 64 KiB on, the `http` crate under
    actix refuses the URI itself (bare 400, before any application code), which
    the 100 KiB case accepts too."""
    with default.watch(rss_mib=RSS):
        resp = default.api.get("/studies", params={"PatientID": "A" * (kib << 10)},
                               headers={"Accept": kh.DICOM_JSON})
        allowed = (414, 400) if kib >= 64 else (414,)
        assert resp.status_code in allowed, hostile.brief(resp)
        if resp.status_code == 400:
            assert not resp.content and "Content-Type" not in resp.headers, hostile.brief(resp)


@pytest.mark.parametrize("headers", [
    {"X-Filler": "a" * 200_000},
    {f"X-Filler-{n}": "a" * 100 for n in range(2000)},
], ids=["one-200kb-header", "2000-headers-of-100-bytes"])
def test_200_kb_of_headers_is_431(default, headers):
    with default.watch(rss_mib=RSS):
        try:
            resp = default.api.get("/studies", headers={"Accept": kh.DICOM_JSON, **headers})
        except Exception as exc:  # noqa: BLE001
            raise AssertionError(f"no response, expected 431: {exc!r}")
        assert resp.status_code == 431, hostile.brief(resp)


# As written in the path. The markup is percent-encoded: a raw `<` is refused by
# the HTTP layer itself (bare 400), before the application could echo it.
BAD_UIDS = {"65-digits": "1" * 65, "letters": "1.2.abc", "markup": "1.2.%3Cscript%3Ealert(1)"}
UID_ROUTES = [
    ("GET", "/studies/{bad}"),
    ("GET", "/studies/{bad}/metadata"),
    ("GET", "/studies/1.2.3/series/{bad}/metadata"),
    ("GET", "/studies/1.2.3/series/1.2.3.4/instances/{bad}"),
    ("GET", "/studies/1.2.3/series/1.2.3.4/instances/{bad}/frames/1"),
    ("GET", "/studies/{bad}/thumbnail"),
    ("DELETE", "/studies/{bad}"),
]


@pytest.mark.parametrize("bad", list(BAD_UIDS.values()), ids=list(BAD_UIDS))
def test_invalid_uids_in_paths_are_400_and_not_echoed(default, bad):
    """UIDs in paths: at most 64 characters of [0-9.]; the error body never echoes
    markup. STOW to /studies/{bad} too. RSS bound 128 MiB."""
    wrong = []
    with default.watch(rss_mib=RSS):
        for method, template in UID_ROUTES:
            path = "/dicomweb" + template.format(bad=bad)
            status, _, body = hostile.raw(default, method, path, {"Accept": "*/*"})
            if status != 400 or b"<script" in body.lower():
                wrong.append(f"{method} {template}: {status} {body[:120]!r}")
        _, file = hostile.instance()
        resp = kh.stow(default.api, [file], study=bad)
        if resp.status_code != 400 or b"<script" in resp.content.lower():
            wrong.append(f"POST /studies/{{bad}}: {resp.status_code} {resp.content[:120]!r}")
    assert not wrong, "\n".join(wrong)
