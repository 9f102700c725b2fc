"""The research permission (issue 17): a caller holding only `research` on a
tenant is served de-identified data through the tenant's research project and
nothing identified, route by route. Every route of the endpoint table (read from
src/http/endpoint.rs, so a new route is covered without editing this file),
capabilities and WADO-URI are tried with the original UIDs and with the UIDs the
project hands out: no 2xx answer may hold any identifying value stored (names,
IDs, accession number, institution, birth date, original UIDs); a route that
cannot de-identify answers 403; an original UID is not found; matching on what
the profile removes is refused; an image that may carry burned-in text is not
served; re-identification is an administrator's, audited."""
from __future__ import annotations

import email.parser
import io
import json
import subprocess
import uuid
from urllib.parse import quote

import pydicom
import pytest

import hostile
import kastell_helpers as kh
from test_authz_paths import route_table

CT = "1.2.840.10008.5.1.4.1.1.2"
NAME, PID = "Geheim^Erika^Maria", "PID-7731-SECRET"
IDENTIFYING = {
    "PatientName": NAME, "PatientID": PID, "AccessionNumber": "ACC-99-SECRET",
    "InstitutionName": "Klinikum Geheimstadt", "PatientBirthDate": "19610203",
    "ReferringPhysicianName": "Doktor^Verrat",
}
READ_ROUTES = ("Search", "Retrieve")


def api_key(server, tenant: str, permissions: str) -> str:
    out = server.cli("apikeys", "add", "--tenant", tenant, "--name", f"research-{uuid.uuid4().hex[:8]}",
                     "--permissions", permissions)
    return next(w for w in out.split() if w.startswith("kst_"))


class Site:
    def __init__(self, server):
        self.server = server
        self.root = api_key(server, "*", "*")
        self.research = api_key(server, "r", "research")
        self.reader = api_key(server, "r", "read")
        self.research_q = api_key(server, "q", "research")
        # An identified CT image, and a secondary capture of the same patient
        # (a kind that carries burned-in text) in a study of its own.
        self.ct, ct_file = hostile.instance(SOPClassUID=CT, Modality="CT", **IDENTIFYING)
        self.sc, sc_file = hostile.instance(**IDENTIFYING)
        for file in (ct_file, sc_file):
            status, body = self.stow("/tenants/r/dicomweb/studies", file)
            assert status == 200, f"seeding: {status} {body[:300]!r}"
        server.cli("projects", "create", "trial-7", "--tenant", "r", "--reidentification", "audited",
                   "--research", "--option", "retain-longitudinal-modified-dates")
        self.originals = {self.ct.StudyInstanceUID, self.ct.SeriesInstanceUID, self.ct.SOPInstanceUID,
                          self.sc.StudyInstanceUID, self.sc.SeriesInstanceUID, self.sc.SOPInstanceUID}
        self.secrets = [v.encode() for v in IDENTIFYING.values()] + [u.encode() for u in self.originals]
        self.secrets += [b"Geheim", b"Erika", b"Klinikum"]

    def stow(self, path: str, file: bytes, key: str | None = None):
        boundary = f"kastell-{uuid.uuid4().hex}"
        body = kh.encode_multipart([(file, "application/dicom")], boundary)
        headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                   "Accept": kh.DICOM_JSON, "Authorization": "ApiKey " + (key or self.root)}
        status, _, data = hostile.raw(self.server, "POST", path, headers, body, timeout=20)
        return status, data

    def get(self, path: str, key: str, accept: str = "*/*", method: str = "GET"):
        headers = {"Accept": accept, "Authorization": "ApiKey " + key}
        return hostile.raw(self.server, method, path, headers, timeout=30)

    def leaks(self, body: bytes) -> list[str]:
        return [s.decode() for s in self.secrets if s in body]

    def search(self, path: str, key: str | None = None) -> list[dict]:
        status, _, body = self.get(path, key or self.research, kh.DICOM_JSON)
        assert status in (200, 204), f"{path}: {status} {body[:300]!r}"
        return json.loads(body) if status == 200 else []

    def mapped(self) -> dict[str, str]:
        """The project's UIDs of the CT and the SC, through de-identified searches."""
        out = {}
        for which, ds in (("ct", self.ct), ("sc", self.sc)):
            studies = [s for s in self.search("/tenants/r/dicomweb/studies?ModalitiesInStudy="
                                              + ("CT" if which == "ct" else "OT"))]
            assert len(studies) == 1, studies
            study = studies[0]["0020000D"]["Value"][0]
            series = self.search(f"/tenants/r/dicomweb/studies/{study}/series")[0]["0020000E"]["Value"][0]
            sop = self.search(f"/tenants/r/dicomweb/studies/{study}/series/{series}/instances")[0][
                "00080018"]["Value"][0]
            out[which] = (study, series, sop)
        return out

    def routes(self, uids: tuple[str, str, str]) -> list[tuple[str, str, str]]:
        """(endpoint, method, path) of every route, capabilities and WADO-URI, on tenant r."""
        st, se, sop = uids
        prefix = "/tenants/r/dicomweb"
        out = []
        for method, template, endpoint in route_table_named():
            path = (template.replace("{study}", st).replace("{series}", se).replace("{instance}", sop)
                    .replace("{frames}", "1").replace("{path:.*}", "00100010"))
            out.append((endpoint, method, prefix + path))
        out.append(("RetrieveCapabilities", "OPTIONS", prefix + "/"))
        out.append(("RetrieveWadoUri", "GET", f"/tenants/r/wado?requestType=WADO&studyUID={st}"
                                              f"&seriesUID={se}&objectUID={sop}&contentType=application/dicom"))
        return out


def route_table_named() -> list[tuple[str, str, str]]:
    import re
    from test_authz_paths import ROUTES_RS
    found = re.findall(r'route\(E::(\w+), M::(\w+), \w+, "([^"]+)"', ROUTES_RS.read_text())
    assert len(found) == len(route_table())
    return [(method, path, endpoint) for endpoint, method, path in found]


# The routes a research caller is served on (Endpoint::serves_research).
SERVED = {"SearchForStudies", "SearchForSeries", "SearchForInstances", "SearchForStudySeries",
          "SearchForStudyInstances", "SearchForSeriesInstances", "RetrieveStudy", "RetrieveSeries",
          "RetrieveInstance", "RetrieveStudyMetadata", "RetrieveSeriesMetadata",
          "RetrieveInstanceMetadata", "RetrieveWadoUri", "RetrieveCapabilities", "OpenApiDescription"}


@pytest.fixture(scope="module")
def site(servers) -> Site:
    server = servers.get("research", env={"KASTELL__AUTH__ANONYMOUS": "[]",
                                          "KASTELL__AUTH__API_KEY_CACHE_SECS": "0"}, tenants=("r", "q"))
    return Site(server)


def dicom_parts(headers: dict[str, str], body: bytes) -> list[pydicom.Dataset]:
    ctype = headers.get("content-type", "")
    if ctype.startswith("application/dicom"):
        return [pydicom.dcmread(io.BytesIO(body))]
    message = email.parser.BytesParser().parsebytes(
        b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
    return [pydicom.dcmread(io.BytesIO(part.get_payload(decode=True))) for part in message.get_payload()]


def test_every_route_with_original_uids_answers_nothing_identified(site):
    """RSS bound 128 MiB. Original UIDs are never found; writes, deletes and the
    routes that cannot de-identify are refused; searches without UIDs answer
    de-identified."""
    wrong = []
    with site.server.watch(rss_mib=128):
        for uids in ((site.ct.StudyInstanceUID, site.ct.SeriesInstanceUID, site.ct.SOPInstanceUID),):
            for endpoint, method, path in site.routes(uids):
                if method == "POST":
                    status = site.stow(path, hostile.instance()[1], site.research)[0]
                    body = b""
                else:
                    status, _, body = site.get(path, site.research, method=method)
                if endpoint not in SERVED and status != 403:
                    wrong.append(f"{endpoint} {method} {path}: {status}, not 403")
                if 200 <= status < 300 and site.leaks(body):
                    wrong.append(f"{endpoint} {method} {path}: {status} holds {site.leaks(body)}")
                uid_route = site.ct.StudyInstanceUID in path
                if uid_route and endpoint in SERVED and endpoint != "RetrieveCapabilities" \
                        and status not in (204, 404):
                    wrong.append(f"{endpoint} {method} {path}: {status} for an original UID")
    assert not wrong, "\n  ".join(wrong)


def test_every_route_with_the_projects_uids_serves_de_identified_or_refuses(site):
    mapped = site.mapped()
    assert mapped["ct"][0] != site.ct.StudyInstanceUID and mapped["ct"][0].startswith("2.25.")
    wrong, served = [], 0
    for endpoint, method, path in site.routes(mapped["ct"]):
        if method in ("POST", "DELETE"):
            status = site.stow(path, hostile.instance()[1], site.research)[0] if method == "POST" else \
                site.get(path, site.research, method="DELETE")[0]
            if status != 403:
                wrong.append(f"{endpoint} {method}: {status}, not 403")
            continue
        accept = "application/dicom+json" if "Metadata" in endpoint or "Search" in endpoint else "*/*"
        if endpoint in ("RetrieveStudy", "RetrieveSeries", "RetrieveInstance"):
            accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        status, headers, body = site.get(path, site.research, accept, method)
        if endpoint not in SERVED:
            if status != 403:
                wrong.append(f"{endpoint} {path}: {status}, not 403")
            continue
        if status != 200:
            wrong.append(f"{endpoint} {path}: {status} {body[:200]!r}")
            continue
        served += 1
        if site.leaks(body):
            wrong.append(f"{endpoint} {path}: holds {site.leaks(body)}")
        if endpoint in ("RetrieveStudy", "RetrieveSeries", "RetrieveInstance", "RetrieveWadoUri"):
            for ds in dicom_parts(headers, body):
                if ds.PatientIdentityRemoved != "YES" or ds.StudyInstanceUID != mapped["ct"][0]:
                    wrong.append(f"{endpoint}: {ds.PatientIdentityRemoved} {ds.StudyInstanceUID}")
                if ds.PixelData != site.ct.PixelData:
                    wrong.append(f"{endpoint}: pixel data changed")
        if "Metadata" in endpoint:
            for item in json.loads(body):
                if item["00120062"]["Value"] != ["YES"] or not item["00100020"]["Value"][0].startswith("KST-"):
                    wrong.append(f"{endpoint}: not marked de-identified: {item.get('00120062')}")
    assert served >= 10, served
    assert not wrong, "\n  ".join(wrong)


def test_searches_cannot_match_on_what_the_profile_removes(site):
    mapped = site.mapped()
    base = "/tenants/r/dicomweb/studies"
    for query in (f"PatientName={quote('Geheim*')}", f"PatientID={PID}", "AccessionNumber=ACC-99-SECRET",
                  "StudyDate=20240102", "fuzzymatching=true&Modality=CT"):
        status, _, body = site.get(f"{base}?{query}", site.research, kh.DICOM_JSON)
        assert status == 403, f"{query}: {status} {body[:200]!r}"
    assert site.get(f"{base}?StudyInstanceUID={site.ct.StudyInstanceUID}", site.research)[0] == 204
    found = site.search(f"{base}?StudyInstanceUID={mapped['ct'][0]}")
    assert [s["0020000D"]["Value"][0] for s in found] == [mapped["ct"][0]]
    assert found[0]["00100020"]["Value"][0].startswith("KST-")


def test_an_image_that_may_carry_burned_in_text_is_not_served(site):
    st, se, sop = site.mapped()["sc"]
    status, _, body = site.get(f"/tenants/r/dicomweb/studies/{st}", site.research,
                               'multipart/related; type="application/dicom"; transfer-syntax=*')
    assert status == 403 and b"burned-in" in body, (status, body[:300])
    status, _, body = site.get(f"/tenants/r/wado?requestType=WADO&studyUID={st}&seriesUID={se}"
                               f"&objectUID={sop}&contentType=application/dicom", site.research)
    assert status == 403 and not site.leaks(body), (status, body[:300])


def test_readers_and_other_tenants_are_unaffected(site):
    found = site.search("/tenants/r/dicomweb/studies?ModalitiesInStudy=CT", site.reader)
    assert found[0]["00100020"]["Value"][0] == PID, "a reader sees identified data"
    # A tenant without a research project serves its research callers nothing.
    status, _, _ = site.get("/tenants/q/dicomweb/studies", site.research_q, kh.DICOM_JSON)
    assert status == 403
    # The research key of tenant r is refused on tenant q and the default tenant.
    assert site.get("/tenants/q/dicomweb/studies", site.research)[0] == 403
    assert site.get("/dicomweb/studies", site.research)[0] == 403
    # A rendered WADO-URI answer is refused to a research caller.
    st, se, sop = site.mapped()["ct"]
    status, _, _ = site.get(f"/tenants/r/wado?requestType=WADO&studyUID={st}&seriesUID={se}"
                            f"&objectUID={sop}&contentType=image/jpeg", site.research)
    assert status == 403


def test_reidentification_is_an_administrators_and_audited(site):
    st, _, _ = site.mapped()["ct"]

    def reidentify(key: str | None):
        env = {**site.server.env}
        env.pop("KASTELL_ADMIN_KEY", None)
        if key:
            env["KASTELL_ADMIN_KEY"] = key
        return subprocess.run([site.server.bin, "projects", "reidentify", "trial-7", st, "--tenant", "r",
                               "--data-dir", str(site.server.data_dir)],
                              env=env, capture_output=True, text=True, timeout=60)

    done = reidentify(site.root)
    assert done.returncode == 0 and site.ct.StudyInstanceUID in done.stdout, done.stdout + done.stderr
    for key in (None, site.research, site.reader):
        refused = reidentify(key)
        assert refused.returncode != 0 and site.ct.StudyInstanceUID not in refused.stdout
    exported = site.server.root / "audit.json"
    site.server.cli("audit", "export", "--since", "2000-01-01", "--format", "fhir", "--output", str(exported))
    events = [e["resource"] for e in json.loads(exported.read_text())["entry"]]
    described = [e.get("outcomeDesc", "") for e in events]
    assert any("de-identified: project trial-7" in d for d in described), "retrievals name the project"
    assert sum("a study identifier looked up" in d for d in described) == 1
    assert sum("project trial-7: refused" in d for d in described) >= 3
