"""Helpers of the hostile-input suite (issue 11): the server under test, its
memory, raw HTTP for requests that `requests` would not send as written, and the
hostile DICOM payloads. Nothing in here talks to pytest.

The DICOMweb helpers (STOW bodies, Store Instances Response, instances) come
from the conformance suite's kastell_helpers, which conftest.py puts on the path.
"""
from __future__ import annotations

import glob
import http.client
import io
import os
import re
import shlex
import socket
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pydicom
import requests

import kastell_helpers as kh

# ---------------------------------------------------------------------------
# Browser safety of every response (checked by a hook in conftest.py)
# ---------------------------------------------------------------------------
SCRIPT_CAPABLE = ("text/html", "image/svg+xml", "application/xhtml+xml")
VIOLATIONS: list[str] = []


# Refusals the HTTP layer (actix-http's dispatcher) writes itself when it cannot
# parse a request head, before any application code: bare status lines, no
# Content-Type, no body; nothing there to sniff, and no way for the application
# to add a header to them.
HEAD_REFUSALS = {400, 408, 413, 414, 431}


def check_headers(where: str, status: int, headers) -> None:
    """Records a response without `X-Content-Type-Options: nosniff`, or of a
    script-capable type without a sandboxing Content-Security-Policy (contract)."""
    lower = {k.lower(): v for k, v in headers.items()}
    get = lower.get
    bare = status in HEAD_REFUSALS and not get("content-type") and get("content-length", "0") == "0"
    if not bare and (get("x-content-type-options") or "").strip().lower() != "nosniff":
        VIOLATIONS.append(f"{where} -> {status}: no X-Content-Type-Options: nosniff")
    mtype = kh.parse_media_type(get("content-type") or "")[0]
    if mtype in SCRIPT_CAPABLE or mtype.endswith("xml"):
        if "sandbox" not in (get("content-security-policy") or ""):
            VIOLATIONS.append(f"{where} -> {status}: {mtype} without Content-Security-Policy sandbox")


def _hook(resp: requests.Response, *args, **kwargs):
    check_headers(f"{resp.request.method} {resp.request.url[:120]}", resp.status_code, resp.headers)


def session() -> requests.Session:
    s = requests.Session()
    s.hooks["response"].append(_hook)
    return s


# ---------------------------------------------------------------------------
# The server under test
# ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerDied(AssertionError):
    pass


class Server:
    """One `kastell serve` on loopback, on its own data directory, under the memory
    cap of $KASTELL_SERVER_WRAPPER (run.sh: prlimit --as=...)."""

    def __init__(self, name: str, root: Path, env: dict[str, str] | None = None,
                 tenants: tuple[str, ...] = ()):
        self.name = name
        self.bin = os.environ.get("KASTELL_BIN") or os.path.expanduser("~/.cache/kastell-target/debug/kastell")
        self.root = Path(root)
        self.data_dir = self.root / "data"
        self.log = self.root / "server.log"
        self.env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn"), **(env or {})}
        for tenant in tenants:
            self.cli("tenants", "add", tenant)
        self.http = session()
        self.start()

    def start(self) -> None:
        """Starts the server (again, after a crash: same data directory, new port)."""
        self.port = free_port()
        wrapper = shlex.split(os.environ.get("KASTELL_SERVER_WRAPPER", ""))
        cmd = wrapper + [self.bin, "serve", "--listen", f"127.0.0.1:{self.port}",
                         "--data-dir", str(self.data_dir)]
        self.log_from = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=log)
        self.pid = self.proc.pid  # prlimit execs the server: same process
        self.root_url = f"http://127.0.0.1:{self.port}"
        self.api = kh.Api(self.root_url + "/dicomweb")
        self.api.session = self.http
        deadline = time.time() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server {self.name!r} exited at start ({self.proc.returncode}): "
                                   f"{self.log_tail()}")
            try:
                if requests.get(self.root_url + "/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"server {self.name!r} not healthy after 30 s: {self.log_tail()}")
            time.sleep(0.1)

    def cli(self, *args: str) -> str:
        out = subprocess.run([self.bin, *args, "--data-dir", str(self.data_dir)], env=self.env,
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"kastell {' '.join(args)} failed: {out.stdout}{out.stderr}")
        return out.stdout + out.stderr

    def log_tail(self, lines: int = 4) -> str:
        """The end of the server's log without backtrace frames and start-up warnings."""
        try:
            with open(self.log, "rb") as log:
                log.seek(self.log_from)
                text = log.read().decode(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        kept = [line for line in text if line.strip() and not re.match(r"^\s+(\d+: |at )", line)
                and "!!!" not in line and "backtrace" not in line.lower()
                and "request parse error" not in line]  # the suite's own unparseable heads
        return "\n".join(kept[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # -- liveness and memory ------------------------------------------------
    def alive(self) -> bool:
        return self.proc.poll() is None

    def status_field(self, field: str) -> int | None:
        """A `Vm*` line of /proc/PID/status, in KiB (None once the process has
        exited: a zombie has no memory lines)."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        except OSError:
            pass
        return None

    def reset_peak(self) -> None:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def healthz(self, timeout: float = 5) -> int | str:
        try:
            # a fresh connection: a pooled one may be closing (short keep-alive)
            with session() as fresh:
                return fresh.get(self.root_url + "/healthz", timeout=timeout).status_code
        except requests.RequestException as exc:
            return f"no answer ({type(exc).__name__})"

    def watch(self, rss_mib: int) -> "Watch":
        return Watch(self, rss_mib)

    # -- the blob store ------------------------------------------------------
    def derived_objects(self) -> int:
        """Derived objects (cached metadata, thumbnails) in the file blob store."""
        return len([p for p in glob.glob(str(self.data_dir / "**" / "derived" / "*"), recursive=True)
                    if os.path.isfile(p)])

    def derived_settled(self) -> int:
        """The count once derived writes (done behind the responses) stop."""
        last, stable_since = self.derived_objects(), time.time()
        deadline = time.time() + 10
        while time.time() < deadline:
            time.sleep(0.2)
            now = self.derived_objects()
            if now != last:
                last, stable_since = now, time.time()
            elif time.time() - stable_since > 1.0:
                break
        return last


PEAKS: list[tuple[str, float, int]] = []  # (case, peak RSS MiB, bound MiB), for the summary


class Watch:
    """Around one hostile request: peak RSS reset before; after, the process is
    alive, /healthz answers 200 and VmHWM stayed under the case's bound. Its
    findings are raised even when the case's own assertion failed first."""

    def __init__(self, server: Server, rss_mib: int):
        self.server, self.rss_mib = server, rss_mib
        self.peak_mib: float | None = None

    def __enter__(self):
        if not self.server.alive():
            raise ServerDied(f"server {self.server.name!r} was already dead: {self.server.log_tail()}")
        self.server.reset_peak()
        return self

    def __exit__(self, exc_type, exc, tb):
        problems = []
        s = self.server
        peak = s.status_field("VmHWM")
        if peak is None or not s.alive():
            time.sleep(0.3)  # let a dying process be reaped
        if not s.alive():
            problems.append(f"the server died (exit {s.proc.returncode}); log: {s.log_tail()}")
        else:
            self.peak_mib = (peak or 0) / 1024
            case = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0].split("::")[-1]
            PEAKS.append((case, self.peak_mib, self.rss_mib))
            health = s.healthz()
            if health != 200:
                problems.append(f"/healthz answered {health}")
            if self.peak_mib > self.rss_mib:
                problems.append(f"peak RSS {self.peak_mib:.0f} MiB > bound {self.rss_mib} MiB")
        if problems:
            text = "; ".join(problems)
            if exc is not None:
                raise AssertionError(f"{exc}\nAND {text}") from exc
            raise AssertionError(text)
        return False


def brief(resp: requests.Response) -> str:
    """Status, type and the start of the body (describe() without the long URL)."""
    return (f"{resp.request.method} -> {resp.status_code} {resp.headers.get('Content-Type', '')!r} "
            f"{resp.content[:160]!r}")


# ---------------------------------------------------------------------------
# Raw HTTP
# ---------------------------------------------------------------------------
def raw(server: Server, method: str, path: str, headers: dict[str, str] | None = None,
        body: bytes | None = None, timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    """One request with the path sent exactly as written (no normalisation of dot
    segments or percent escapes, which requests/urllib3 would do)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        check_headers(f"{method} {path[:120]}", resp.status, resp.headers)
        return resp.status, hdrs, data
    finally:
        conn.close()


def read_response_head(sock: socket.socket, deadline: float) -> tuple[str, bytes]:
    """Reads until the end of a response head, EOF or the deadline.

    Returns ("response", head) / ("closed", partial) / ("timeout", partial)."""
    buf = b""
    while time.time() < deadline:
        sock.settimeout(max(0.05, min(0.5, deadline - time.time())))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return "closed", buf
        if not chunk:
            return ("response", buf) if b"\r\n\r\n" in buf else ("closed", buf)
        buf += chunk
        if b"\r\n\r\n" in buf:
            return "response", buf
    return "timeout", buf


def head_status(head: bytes) -> int | None:
    try:
        return int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def head_headers(head: bytes) -> dict[str, str]:
    out = {}
    for line in head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        if b":" in line:
            k, v = line.split(b":", 1)
            out[k.decode("latin-1").strip().lower()] = v.decode("latin-1").strip()
    return out


# ---------------------------------------------------------------------------
# DICOM payloads
# ---------------------------------------------------------------------------
def instance(**overrides) -> tuple[pydicom.Dataset, bytes]:
    """The conformance suite's small valid instance (4x4 MONOCHROME2, 8 bit),
    with attributes changed by `overrides` (keyword=value)."""
    st, se, sop = kh.new_uid(), kh.new_uid(), kh.new_uid()
    ds = pydicom.dcmread(io.BytesIO(kh.make_instance(st, se, sop, patient_id="KST-HOSTILE")))
    for k, v in overrides.items():
        setattr(ds, k, v)
    return ds, to_bytes(ds)


def to_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


PIXEL_DATA_OB = struct.pack("<HH", 0x7FE0, 0x0010) + b"OB"


def splice_before_pixel_data(file: bytes, elements: bytes) -> bytes:
    """Inserts raw Explicit VR LE elements right before Pixel Data."""
    at = file.rindex(PIXEL_DATA_OB)
    return file[:at] + elements + file[at:]


SQ_TAG = (0x0040, 0xA730)  # Content Sequence
ITEM, ITEM_END, SEQ_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)


def _sq_header(length: int) -> bytes:
    return struct.pack("<HH2sHI", *SQ_TAG, b"SQ", 0, length)


def _item_header(tag, length: int) -> bytes:
    return struct.pack("<HHI", *tag, length)


def nested_sequence(depth: int, defined_length: bool) -> bytes:
    """Content Sequence nested `depth` deep (one item per level), Explicit VR LE."""
    if not defined_length:
        opening = _sq_header(0xFFFFFFFF) + _item_header(ITEM, 0xFFFFFFFF)
        closing = _item_header(ITEM_END, 0) + _item_header(SEQ_END, 0)
        return opening * depth + closing * depth
    # Each level adds a 12-byte SQ header and an 8-byte item header; the innermost
    # item is empty. Sequence value length at level k: 8 + 20 * (depth - 1 - k).
    out = []
    for k in range(depth):
        inner = 20 * (depth - 1 - k)
        out.append(_sq_header(8 + inner) + _item_header(ITEM, inner))
    return b"".join(out)


def explicit_element(group: int, elem: int, vr: bytes, value: bytes, declared: int | None = None) -> bytes:
    length = len(value) if declared is None else declared
    if vr in (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"):
        return struct.pack("<HH2sHI", group, elem, vr, 0, length) + value
    return struct.pack("<HH2sH", group, elem, vr, length) + value


def huge_element_file(where: str) -> bytes:
    """A few hundred bytes declaring a 4 GiB - 2 element (`where`: private-ob,
    ut-text or pixel-data) whose value is not there."""
    _, file = instance()
    huge = 0xFFFFFFFE
    at = file.rindex(PIXEL_DATA_OB)
    if where == "pixel-data":
        return file[:at] + explicit_element(0x7FE0, 0x0010, b"OB", b"\0" * 16, declared=huge)
    if where == "private-ob":  # (0029,xx01) sorts between Image Pixel and Pixel Data
        return file[:at] + PRIVATE_CREATOR + explicit_element(0x0029, 0x1001, b"OB", b"\0" * 16, declared=huge)
    if where == "ut-text":  # Text Value (0040,A160) UT
        return file[:at] + explicit_element(0x0040, 0xA160, b"UT", b"abcd" * 4, declared=huge)
    raise ValueError(where)


PRIVATE_CREATOR = explicit_element(0x0029, 0x0010, b"LO", b"HOSTILE ")


def _meta_end(file: bytes) -> int:
    """End of the File Meta Information (after the preamble, DICM and group 0002)."""
    (group_length,) = struct.unpack("<I", file[140:144])
    return 144 + group_length


def deflate_bomb(inflated_bytes: int) -> bytes:
    """A Deflated Explicit VR Little Endian file whose data set inflates to
    `inflated_bytes`: the small valid instance with a private OB element of zeros
    before Pixel Data (deflate packs ~1000:1). With 0, the instance alone."""
    ds, file = instance()
    meta_end = _meta_end(file)
    body = file[meta_end:]
    at = body.rindex(PIXEL_DATA_OB)
    pad = max(0, inflated_bytes - len(body))
    pad -= pad % 2
    # Raw deflate blocks that end byte-aligned with no reference to what came
    # before (full flush) can be concatenated: the run of zeros is one such piece,
    # compressed once and repeated, so a GiB bomb is built in milliseconds.
    def piece(data: bytes, final: bool = False) -> bytes:
        comp = zlib.compressobj(9, zlib.DEFLATED, -15)
        return comp.compress(data) + comp.flush(zlib.Z_FINISH if final else zlib.Z_FULL_FLUSH)

    unit = 1 << 24
    count, rest = divmod(pad, unit)
    padding = PRIVATE_CREATOR + struct.pack("<HH2sHI", 0x0029, 0x1001, b"OB", 0, pad) if pad else b""
    out = [piece(body[:at] + padding), piece(bytes(unit)) * count, piece(bytes(rest) + body[at:], final=True)]
    ds.file_meta.TransferSyntaxUID = kh.DEFLATED
    meta = io.BytesIO()
    pydicom.filewriter.write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    return file[:128] + b"DICM" + meta.getvalue() + b"".join(out)
