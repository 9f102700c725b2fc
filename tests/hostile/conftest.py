"""pytest wiring of the hostile-input suite (issue 11, "No request can take Kastell down").

The suite starts its own servers (tests/hostile/run.sh sets KASTELL_BIN and the
memory cap in KASTELL_SERVER_WRAPPER), one per configuration, each lazily on
first use and on its own data directory:
  default  the shipped configuration (anonymous read, write, delete);
  tight    short header/body/keep-alive timeouts and max_parts = 100;
  busy     max_in_flight = 3;
  authz    no anonymous access, tenants a and b, API keys (test_authz_paths.py).

Every response the suite receives must carry `X-Content-Type-Options: nosniff`
(and a sandboxing CSP when script-capable): checked after each test by the hook
below, which fails the test naming the responses.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "conformance" / "suite"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import hostile  # noqa: E402

# Timeouts of the `tight` server, seconds: limits.header_timeout_secs,
# limits.keep_alive_secs and limits.body_idle_timeout_secs (the contract first
# named the first two server.client_request_timeout_secs and server.keep_alive_secs).
TIGHT_TIMEOUT = 2
TIGHT_MAX_PARTS = 100
BUSY_MAX_IN_FLIGHT = 3

CONFIGS = {
    "default": {},
    "tight": {
        "KASTELL__LIMITS__HEADER_TIMEOUT_SECS": str(TIGHT_TIMEOUT),
        "KASTELL__LIMITS__KEEP_ALIVE_SECS": str(TIGHT_TIMEOUT),
        "KASTELL__LIMITS__BODY_IDLE_TIMEOUT_SECS": str(TIGHT_TIMEOUT),
        "KASTELL__LIMITS__MAX_PARTS": str(TIGHT_MAX_PARTS),
    },
    "busy": {
        "KASTELL__LIMITS__MAX_IN_FLIGHT": str(BUSY_MAX_IN_FLIGHT),
        "KASTELL__LIMITS__MAX_IN_FLIGHT_PER_TENANT": str(BUSY_MAX_IN_FLIGHT),
    },
}


class Servers:
    def __init__(self, root: Path):
        self.root = root
        self.running: dict[str, hostile.Server] = {}
        self.failed: dict[str, str] = {}

    def get(self, name: str, env: dict[str, str] | None = None, tenants=()) -> hostile.Server:
        """The server `name`, started on first use, and started again (same data
        directory) when a previous case killed it, so that one crash does not
        fail every case after it."""
        if name in self.failed:
            pytest.fail(self.failed[name])
        if name in self.running and not self.running[name].alive():
            try:
                self.running[name].start()
            except RuntimeError as exc:
                self.failed[name] = str(exc)
                pytest.fail(str(exc))
        if name not in self.running:
            (self.root / name).mkdir()
            try:
                self.running[name] = hostile.Server(name, self.root / name,
                                                    env if env is not None else CONFIGS[name], tenants)
            except RuntimeError as exc:
                self.failed[name] = str(exc)
                pytest.fail(str(exc))
        return self.running[name]

    def stop(self):
        for server in self.running.values():
            server.stop()


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    s = Servers(tmp_path_factory.mktemp("hostile"))
    yield s
    s.stop()


# Function-scoped: each case gets a live server (see Servers.get).
@pytest.fixture
def default(servers) -> hostile.Server:
    return servers.get("default")


@pytest.fixture
def tight(servers) -> hostile.Server:
    return servers.get("tight")


@pytest.fixture
def busy(servers) -> hostile.Server:
    return servers.get("busy")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    hostile.VIOLATIONS.clear()
    result = yield
    if hostile.VIOLATIONS:
        shown = "\n  ".join(hostile.VIOLATIONS[:8])
        more = len(hostile.VIOLATIONS) - 8
        raise AssertionError(f"browser safety headers missing on {len(hostile.VIOLATIONS)} response(s):\n  "
                             f"{shown}" + (f"\n  ... and {more} more" if more > 0 else ""))
    return result


def pytest_terminal_summary(terminalreporter):
    if hostile.PEAKS:
        terminalreporter.section("peak RSS of the server per case (MiB, bound)")
        for case, peak, bound in hostile.PEAKS:
            terminalreporter.write_line(f"{peak:7.0f} / {bound:4d}  {case}")
