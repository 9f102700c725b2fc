"""pytest wiring for the Kastell DICOMweb conformance suite.

Environment:
  KASTELL_URL       DICOMweb base URL, e.g. http://127.0.0.1:18080/dicomweb (required)
  KASTELL_FIXTURES  directory written by conformance/fixtures.py (optional: built
                    into a temp dir when unset)
  KASTELL_HEALTH_URL  health endpoint (default: <scheme://host:port>/healthz)

The suite never starts the server.  A session-scoped, autouse fixture stores the
whole fixture set once via STOW-RS; tests then query it by the fixtures' UIDs and
patient IDs, so extra data stored by other tests does not disturb them.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kastell_helpers as kh  # noqa: E402


def pytest_report_header(config):
    return [f"KASTELL_URL={os.environ.get('KASTELL_URL', '<unset>')}",
            f"KASTELL_FIXTURES={os.environ.get('KASTELL_FIXTURES', '<unset: built on the fly>')}"]


@pytest.fixture(scope="session")
def base_url() -> str:
    url = os.environ.get("KASTELL_URL")
    if not url:
        pytest.exit("KASTELL_URL is not set (e.g. http://127.0.0.1:18080/dicomweb)", returncode=4)
    return url.rstrip("/")


@pytest.fixture(scope="session")
def api(base_url) -> kh.Api:
    return kh.Api(base_url)


@pytest.fixture(scope="session")
def health_url(api) -> str:
    return os.environ.get("KASTELL_HEALTH_URL") or api.root() + "/healthz"


@pytest.fixture(scope="session")
def manifest(tmp_path_factory) -> kh.Manifest:
    root = kh.ensure_fixtures(os.environ.get("KASTELL_FIXTURES"), tmp_path_factory.mktemp("kastell"))
    return kh.Manifest(root)


@pytest.fixture(scope="session")
def client(base_url):
    from dicomweb_client.api import DICOMwebClient
    return DICOMwebClient(url=base_url)


class StoredFixtures:
    """Outcome of storing the fixture set (one entry per STOW request)."""

    def __init__(self):
        self.requests: list[dict] = []  # {"study", "entries", "response"}
        self.fallback: list[dict] = []  # per-file retries when a batch failed


@pytest.fixture(scope="session", autouse=True)
def stored(api, manifest, health_url) -> StoredFixtures:
    """Store the whole fixture set once per session.

    Synthetic study A is stored with POST /studies/{A}; everything else with
    one POST /studies.  Assertions about the outcome live in test_stow.py so a
    server failure here shows up as test failures, not as a setup error.
    """
    import requests

    deadline = time.time() + 60
    while True:
        try:
            if requests.get(health_url, timeout=5).status_code == 200:
                break
        except requests.RequestException:
            pass
        if time.time() > deadline:
            pytest.exit(f"server not healthy at {health_url}", returncode=3)
        time.sleep(0.3)

    out = StoredFixtures()
    a_uid = manifest.syn("A")["study_instance_uid"]
    a_files = [e for e in manifest.files if e["study_instance_uid"] == a_uid]
    rest = [e for e in manifest.files if e["study_instance_uid"] != a_uid]
    for study, entries in ((a_uid, a_files), (None, rest)):
        try:
            resp = kh.stow(api, [manifest.bytes(e) for e in entries], study=study)
        except requests.RequestException as exc:  # server crashed / connection reset
            resp = exc
        out.requests.append({"study": study, "entries": entries, "response": resp})
        ok = not isinstance(resp, Exception) and resp.status_code in (200, 202)
        if not ok:
            # The batch failed as a whole (e.g. a 500): store file by file so that
            # the rest of the suite can still run and the culprit is visible in
            # test_fixture_set_stored.  The batch failure itself still fails that test.
            for e in entries:
                try:
                    r = kh.stow(api, [manifest.bytes(e)], study=study)
                except requests.RequestException as exc:
                    r = exc
                out.fallback.append({"study": study, "entries": [e], "response": r})
    return out
