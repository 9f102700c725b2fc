"""Authorization on the routed path (issue 11 contract): the decision is made on
the decoded, normalised path the router matches, so no spelling of a path lets a
caller past it. An API key that may only read tenant `a` (and no key at all) tries
the administration route, every route of tenant `b` and of the default tenant, and
the write and delete routes of `a`, each in many spellings (`/%61dmin/...`,
`//admin/...`, `/admin/./...`, `/x/../admin/...`, `/ADMIN/...`, trailing `/`,
`%2F`, `%5C`, `%00`, `/tenants/%62/...`, `/tenants/a/../b/...`, ...). None may
answer 2xx (nor anything but 400, 401, 403 or 404).

The routes are read from the endpoint table, src/http/endpoint.rs, so a new
route is covered without editing this file."""
from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

import hostile
import kastell_helpers as kh

ROUTES_RS = Path(__file__).resolve().parents[2] / "src" / "http" / "endpoint.rs"
ENDPOINT = re.compile(r'route\(E::\w+, M::(\w+), \w+, "([^"]+)"')
ALLOWED = {400, 401, 403, 404}


def route_table() -> list[tuple[str, str]]:
    found = ENDPOINT.findall(ROUTES_RS.read_text())
    assert len(found) > 20, f"route table not found in {ROUTES_RS}"
    return found


def api_key(server, tenant: str, permissions: str) -> str:
    out = server.cli("apikeys", "add", "--tenant", tenant, "--name", f"hostile-{uuid.uuid4().hex[:8]}",
                     "--permissions", permissions)
    return "ApiKey " + next(w for w in out.split() if w.startswith("kst_"))


class Site:
    def __init__(self, server):
        self.server = server
        self.root = api_key(server, "*", "*")
        self.reader_a = api_key(server, "a", "read")
        self.uids: dict[str, tuple[str, str, str]] = {}
        self.stow_file = hostile.instance()[1]
        for tenant, prefix in (("default", "/dicomweb"), ("a", "/tenants/a/dicomweb"),
                               ("b", "/tenants/b/dicomweb")):
            ds, file = hostile.instance()
            status, _, body = self.stow(prefix + "/studies", self.root, file)
            assert status == 200, f"seeding tenant {tenant}: {status} {body[:200]!r}"
            self.uids[tenant] = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)

    def stow(self, path: str, authorization: str | None, file: bytes | None = None):
        boundary = f"kastell-{uuid.uuid4().hex}"
        body = kh.encode_multipart([(file or self.stow_file, "application/dicom")], boundary)
        headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                   "Accept": kh.DICOM_JSON}
        if authorization:
            headers["Authorization"] = authorization
        return hostile.raw(self.server, "POST", path, headers, body, timeout=20)

    def send(self, method: str, path: str, authorization: str | None) -> int:
        if method == "POST":
            return self.stow(path, authorization)[0]
        headers = {"Accept": "*/*"}
        if authorization:
            headers["Authorization"] = authorization
        return hostile.raw(self.server, method, path, headers, timeout=20)[0]

    def routes_of(self, tenant: str, prefix: str, wado: str) -> list[tuple[str, str]]:
        """Every route of the table, and capabilities and WADO-URI, for `tenant`."""
        st, se, sop = self.uids[tenant]
        out = []
        for method, template in route_table():
            path = (template.replace("{study}", st).replace("{series}", se).replace("{instance}", sop)
                    .replace("{frames}", "1").replace("{path:.*}", "00100010"))
            out.append((method, prefix + path))
        out.append(("OPTIONS", prefix + "/"))
        out.append(("GET", f"{wado}?requestType=WADO&studyUID={st}&seriesUID={se}&objectUID={sop}"
                           "&contentType=application/dicom"))
        return out


@pytest.fixture(scope="module")
def site(servers) -> Site:
    server = servers.get("authz", env={"KASTELL__AUTH__ANONYMOUS": "[]",
                                       "KASTELL__AUTH__API_KEY_CACHE_SECS": "0"}, tenants=("a", "b"))
    return Site(server)


def spellings(path: str) -> dict[str, str]:
    """Ways of writing `path` (without its query) that a lax router or a check on
    the raw path might read differently."""
    path, _, query = path.partition("?")
    query = "?" + query if query else ""
    segs = path.strip("/").split("/")
    first, rest = segs[0], "/".join(segs[1:])
    join = (lambda sep: "/" + first + sep + rest) if rest else (lambda sep: "/" + first + sep)
    out = {
        "as is": path,
        "leading //": "/" + path,
        "inner //": join("//"),
        "/./": join("/./"),
        "/x/../ before": "/x/.." + path,
        "/x/%2e%2e/ before": "/x/%2e%2e" + path,
        "upper-case first segment": "/" + first.upper() + ("/" + rest if rest else ""),
        "trailing /": path + "/",
        "trailing /.": path + "/.",
        "%-encoded first letter": f"/%{ord(first[0]):02x}{first[1:]}" + ("/" + rest if rest else ""),
        "%-encoded last character": path[:-1] + f"%{ord(path[-1]):02X}",
        "%2F for /": join("%2F"),
        "%5C for /": join("%5C"),
        "\\ for /": join("\\"),
        ";x after first segment": join(";x/"),
        "%00 after first segment": join("%00/"),
    }
    return {k: v + query for k, v in out.items()}


def tenant_spellings(path: str, own: str = "a") -> dict[str, str]:
    """Ways of reaching `path` through the caller's own tenant prefix or an
    encoded tenant name."""
    out = {f"/tenants/{own}/.. before": f"/tenants/{own}/.." + path,
           f"/tenants/{own}/dicomweb/../.. before": f"/tenants/{own}/dicomweb/../.." + path,
           f"/tenants/{own}%2F..%2F before": f"/tenants/{own}%2F..%2F.." + path}
    m = re.match(r"^/tenants/([^/]+)(/.*)$", path)
    if m:
        tenant, tail = m.groups()
        out.update({
            "%-encoded tenant": f"/tenants/%{ord(tenant[0]):02x}{tenant[1:]}{tail}",
            "upper-case tenant": f"/tenants/{tenant.upper()}{tail}",
            "tenant%2Fx": f"/tenants/{tenant}%2Fx{tail}",
            f"/tenants/{own}/../{tenant}": f"/tenants/{own}/../{tenant}{tail}",
            f"/tenants/{own}/dicomweb/../../{tenant}": f"/tenants/{own}/dicomweb/../../{tenant}{tail}",
            "/TENANTS/": f"/TENANTS/{tenant}{tail}",
        })
    else:
        out["/tenants/default"] = "/tenants/default" + path
    return out


def attempts(site: Site, group: str) -> list[tuple[str, str]]:
    if group == "admin":
        targets = [("GET", "/admin/sovereignty")]
    elif group == "tenant-b":
        targets = site.routes_of("b", "/tenants/b/dicomweb", "/tenants/b/wado")
    elif group == "default-tenant":
        targets = site.routes_of("default", "/dicomweb", "/wado")
    elif group == "writes-on-a":
        targets = [(m, p) for m, p in site.routes_of("a", "/tenants/a/dicomweb", "/tenants/a/wado")
                   if m in ("POST", "DELETE")]
        # deletes last: a delete that wrongly succeeds must not hide the other cases
        targets.sort(key=lambda t: t[0] == "DELETE")
    else:
        raise ValueError(group)
    out = []
    for method, path in targets:
        for spelling in {**spellings(path), **tenant_spellings(path)}.values():
            out.append((method, spelling))
    return out


@pytest.mark.parametrize("who", ["reader-of-a", "no-credentials"])
@pytest.mark.parametrize("group", ["admin", "tenant-b", "default-tenant", "writes-on-a"])
def test_no_spelling_of_a_forbidden_path_gets_through(site, group, who):
    """RSS bound 128 MiB over the whole group."""
    authorization = site.reader_a if who == "reader-of-a" else None
    wrong = []
    tried = attempts(site, group)
    with site.server.watch(rss_mib=128):
        for method, path in tried:
            status = site.send(method, path, authorization)
            if status not in ALLOWED:
                wrong.append(f"{method} {path} -> {status}")
    assert not wrong, f"{len(wrong)} of {len(tried)} attempts not refused:\n  " + "\n  ".join(wrong[:25])


def test_the_keys_work_where_they_should(site):
    """Controls: the reader reads tenant a; the administrator reaches /admin/sovereignty."""
    assert site.send("GET", "/tenants/a/dicomweb/studies", site.reader_a) == 200
    assert site.send("GET", "/admin/sovereignty", site.root) == 200
    assert site.send("GET", "/tenants/b/dicomweb/studies", site.reader_a) == 403
