"""Retrieve Capabilities (rule 105, Annexes G/H) and its separation from CORS preflight (rule 106):
`OPTIONS {base}` with an Accept header answers a WADL (or JSON) description of the service."""
from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET

import pytest

from kastell_helpers import describe

WADL = "application/vnd.sun.wadl+xml"
WADL_NS = "{http://wadl.dev.java.net/2009/02}"

# The resource tree (Table H-1) as segment patterns ("{}" = any template), with the
# methods each must offer.
REQUIRED = {
    ("studies",): {"GET", "POST"},
    ("studies", "{}"): {"GET", "POST", "DELETE"},
    ("studies", "{}", "metadata"): {"GET"},
    ("studies", "{}", "rendered"): {"GET"},
    ("studies", "{}", "thumbnail"): {"GET"},
    ("studies", "{}", "pixeldata"): {"GET"},
    ("studies", "{}", "series"): {"GET"},
    ("studies", "{}", "instances"): {"GET"},
    ("studies", "{}", "series", "{}"): {"GET", "DELETE"},
    ("studies", "{}", "series", "{}", "metadata"): {"GET"},
    ("studies", "{}", "series", "{}", "rendered"): {"GET"},
    ("studies", "{}", "series", "{}", "thumbnail"): {"GET"},
    ("studies", "{}", "series", "{}", "pixeldata"): {"GET"},
    ("studies", "{}", "series", "{}", "instances"): {"GET"},
    ("studies", "{}", "series", "{}", "instances", "{}"): {"GET", "DELETE"},
    ("studies", "{}", "series", "{}", "instances", "{}", "metadata"): {"GET"},
    ("studies", "{}", "series", "{}", "instances", "{}", "rendered"): {"GET"},
    ("studies", "{}", "series", "{}", "instances", "{}", "thumbnail"): {"GET"},
    ("studies", "{}", "series", "{}", "instances", "{}", "pixeldata"): {"GET"},
    ("studies", "{}", "series", "{}", "instances", "{}", "frames", "{}"): {"GET"},
    ("studies", "{}", "series", "{}", "instances", "{}", "frames", "{}", "rendered"): {"GET"},
    ("studies", "{}", "series", "{}", "instances", "{}", "frames", "{}", "thumbnail"): {"GET"},
    ("series",): {"GET"},
    ("instances",): {"GET"},
}
KEYWORDS = ["studies", "series", "instances", "metadata", "frames", "rendered", "thumbnail", "bulkdata",
            "pixeldata"]


def _norm(path: str) -> tuple[str, ...]:
    segs = [s for s in path.strip("/").split("/") if s]
    return tuple("{}" if s.startswith("{") and s.endswith("}") else s for s in segs)


def _options(api, path: str, headers: dict):
    return api.session.request("OPTIONS", api.base + path, headers=headers, timeout=30)


def _wadl_tree(root) -> dict[tuple[str, ...], set[str]]:
    """Full resource paths (normalised) -> methods, walking nested <resource> elements."""
    out: dict[tuple[str, ...], set[str]] = {}

    def walk(el, prefix: tuple[str, ...]):
        for res in el.findall(f"{WADL_NS}resource"):
            full = prefix + _norm(res.get("path", ""))
            methods = {m.get("name", "").upper() for m in res.findall(f"{WADL_NS}method")}
            out.setdefault(full, set()).update(methods)
            walk(res, full)
    for resources in root.findall(f"{WADL_NS}resources"):
        walk(resources, ())
    return out


@pytest.mark.parametrize("path", ["", "/"], ids=["base", "base-slash"])
def test_options_wadl(api, path):
    resp = _options(api, path, {"Accept": WADL})
    assert resp.status_code == 200, describe(resp)
    assert resp.headers.get("Content-Type", "").split(";")[0].strip().lower() == WADL, describe(resp, 200)
    root = ET.fromstring(resp.content)
    assert root.tag == f"{WADL_NS}application", f"root element {root.tag}, expected WADL <application>"
    assert len(root.findall(f".//{WADL_NS}application")) == 0, "exactly one <application>"
    resources = root.findall(f"{WADL_NS}resources")
    assert len(resources) == 1, f"{len(resources)} <resources> elements, expected exactly one"
    base = resources[0].get("base")
    assert base and base.rstrip("/").endswith("/dicomweb"), f"<resources base={base!r}>"
    tree = _wadl_tree(root)
    assert tree, "no <resource> elements"
    problems = []
    for want, methods in REQUIRED.items():
        have = tree.get(want)
        if have is None:
            problems.append(f"missing resource /{'/'.join(want)}")
        elif not methods <= have:
            problems.append(f"/{'/'.join(want)}: methods {sorted(have)}, expected at least {sorted(methods)}")
    bulk = [p for p in tree if "bulkdata" in p]
    if not bulk or not any("GET" in tree[p] for p in bulk):
        problems.append("no GET …/bulkdata/… resource")
    assert not problems, "\n".join(problems)


def test_options_json(api):
    resp = _options(api, "", {"Accept": "application/json"})
    assert resp.status_code == 200, describe(resp)
    assert "json" in resp.headers.get("Content-Type", ""), describe(resp, 200)
    data = resp.json()
    text = json.dumps(data)
    for kw in KEYWORDS:
        assert re.search(rf'(^|[/"]){kw}([/"]|$)', text), f"JSON description does not mention {kw}"
    for method in ("GET", "POST", "DELETE"):
        assert f'"{method}"' in text or f'"{method.lower()}"' in text, f"no {method} method in the JSON description"


def test_wadl_lists_rendered_media_types(api):
    resp = _options(api, "", {"Accept": WADL})
    assert resp.status_code == 200, describe(resp)
    text = resp.text
    for mtype in ("application/dicom", "application/dicom+json", "image/jpeg", "image/png",
                  "application/octet-stream"):
        assert mtype in text, f"WADL does not list {mtype}"


def test_cors_preflight_is_not_capabilities(api):
    """A CORS preflight to the base path is answered as a preflight, never with the WADL."""
    origin = "http://viewer.example"
    allowed = os.environ.get("KASTELL__SERVER__CORS_ALLOWED_ORIGINS", "")
    resp = _options(api, "", {"Origin": origin, "Access-Control-Request-Method": "GET",
                              "Accept": WADL})
    assert resp.status_code < 500, describe(resp)
    assert WADL not in resp.headers.get("Content-Type", ""), f"preflight got the WADL: {describe(resp, 200)}"
    assert b"<application" not in resp.content, "preflight got the WADL body"
    if allowed:
        assert resp.status_code in (200, 204), describe(resp)
        assert resp.headers.get("Access-Control-Allow-Origin"), f"no CORS headers: {resp.headers}"
    else:
        # No origin configured: the preflight is refused (or answered without allowing the origin).
        assert resp.headers.get("Access-Control-Allow-Origin") in (None, ""), resp.headers


def test_options_without_accept_still_described_or_not_500(api):
    resp = _options(api, "", {"Accept": None})
    assert resp.status_code < 500, describe(resp)


def test_openapi_document_describes_the_same_routes(api):
    """`GET {base}/openapi.json` (an extension): OpenAPI 3.1 with every resource and
    method of the WADL under the base path, UIDs typed, and the health checks."""
    resp = api.session.get(api.base + "/openapi.json", timeout=30)
    assert resp.status_code == 200, describe(resp)
    assert resp.headers.get("Content-Type", "").split(";")[0].strip() == "application/json", describe(resp, 200)
    doc = resp.json()
    assert doc["openapi"].startswith("3.1"), doc["openapi"]
    base_path = "/" + api.base.split("://", 1)[1].split("/", 1)[1].strip("/")
    documented: dict[tuple[str, ...], set[str]] = {}
    for path, item in doc["paths"].items():
        if path.startswith(base_path + "/"):
            documented.setdefault(_norm(path[len(base_path):]), set()).update(m.upper() for m in item)
    wadl = ET.fromstring(_options(api, "", {"Accept": WADL}).content)
    for resource, methods in _wadl_tree(wadl).items():
        if methods:
            assert methods <= documented.get(resource, set()), f"{resource}: {methods} not all in the OpenAPI document"
    study = doc["paths"][base_path + "/studies/{study}"]["get"]["parameters"][0]["schema"]
    assert study["maxLength"] == 64 and study["pattern"] == r"^[0-9]+(\.[0-9]+)*$", study
    assert "/healthz" in doc["paths"] and "get" in doc["paths"]["/healthz"]
