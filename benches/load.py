#!/usr/bin/env python3
"""Kastell load bench.

Spawns a Kastell server on a free loopback port with a fresh data directory,
then measures, through the public DICOMweb API only:

  1. STOW-RS ingest throughput (many small instances, N concurrent clients);
  2. QIDO-RS latency (mixed study/series/instance queries, p50/p99);
  3. WADO-RS whole-study retrieve throughput;
  4. peak server RSS while storing ONE large (~1 GiB) streamed STOW request.

Results are printed as a Markdown table and written to a JSON file.

Requirements: Python >= 3.11, requests, pydicom (3.x), numpy.

    cargo build --release
    python3 benches/load.py                      # full run
    python3 benches/load.py --instances 200 --big-mib 64   # quick smoke run

The server binary is --bin, else $KASTELL_BIN, else the first existing of
~/.cache/kastell-target/release/kastell, $CARGO_TARGET_DIR/release/kastell and
<repo>/target/release/kastell.  See benches/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import ctypes
import datetime as dt
import io
import json
import math
import os
import platform
import random
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

MiB = 1024 * 1024
MB = 1_000_000

DICOM_JSON = "application/dicom+json"
STOW_ACCEPT = DICOM_JSON
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'

# SOP classes per modality (anything else is stored as Secondary Capture).
SOP_CLASS = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "MR": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
}
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MODALITIES = ["CT", "MR", "US", "CR", "DX", "MG"]

# Family names: the first three letters are unique (case-insensitively), so a
# "Abc*" wildcard query has an unambiguous expected result whether or not the
# server matches PN case-insensitively.
FAMILY_NAMES = [
    "Doe", "Smith", "Jansen", "Muller", "Rossi", "Garcia", "Novak", "Kowalski",
    "Dubois", "Nielsen", "Okafor", "Tanaka", "Petrov", "Larsen", "Silva",
    "Berg", "Fischer", "Horvath", "Ivanova", "Quinn",
]
GIVEN_NAMES = ["John", "Jane", "Alex", "Maria", "Ken", "Ana", "Piet", "Eva", "Omar", "Lena"]

BASE_DATE = dt.date(2020, 1, 1)
DATE_SPAN_DAYS = 4 * 365


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------

def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def new_uid() -> str:
    # 2.25.<uuid as integer>: valid, unique, <= 64 chars, no registered root needed.
    return "2.25." + str(uuid.uuid4().int)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), p))


def dir_bytes(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS/VmHWM etc. from /proc/PID/status, in KiB."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", "r", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Vm"):
                    key, _, rest = line.partition(":")
                    parts = rest.split()
                    if parts and parts[0].isdigit():
                        out[key] = int(parts[0])
    except OSError:
        pass
    return out


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM of *pid* (Linux >= 4.0: write 5 to /proc/PID/clear_refs)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def kib_to_mib(v: int | None) -> float | None:
    return None if v is None else round(v / 1024.0, 1)


def r2(v: float | None, nd: int = 2) -> float | None:
    return None if v is None else round(v, nd)


def dicom_json_uids(item: dict, tag: str = "00081155") -> str | None:
    el = item.get(tag) or {}
    vals = el.get("Value") or []
    return vals[0] if vals else None


def parse_stow_response(resp: requests.Response) -> tuple[set[str], set[str], str | None]:
    """Return (referenced SOP UIDs, failed SOP UIDs, error) from a STOW-RS response."""
    ctype = resp.headers.get("Content-Type", "")
    if not ctype.startswith(DICOM_JSON):
        return set(), set(), f"unexpected Content-Type {ctype!r}"
    try:
        body = resp.json()
    except ValueError as e:
        return set(), set(), f"invalid JSON: {e}"
    if isinstance(body, list):  # tolerate a one-element array
        body = body[0] if body else {}
    if not isinstance(body, dict):
        return set(), set(), "JSON body is not an object"
    try:
        ok = {u for it in (body.get("00081199", {}).get("Value") or [])
              if (u := dicom_json_uids(it))}
        failed = {u for it in (body.get("00081198", {}).get("Value") or [])
                  if (u := dicom_json_uids(it))}
    except (AttributeError, TypeError) as e:
        return set(), set(), f"malformed DICOM JSON: {e}"
    return ok, failed, None


# --------------------------------------------------------------------------
# synthetic data
# --------------------------------------------------------------------------

@dataclass
class SeriesInfo:
    uid: str
    modality: str
    number: int
    instances: list[str] = field(default_factory=list)


@dataclass
class StudyInfo:
    uid: str
    patient_id: str
    patient_name: str
    date: str  # YYYYMMDD
    accession: str
    series: list[SeriesInfo] = field(default_factory=list)

    @property
    def modalities(self) -> set[str]:
        return {s.modality for s in self.series}


def base_dataset(study: StudyInfo, series: SeriesInfo, sop_uid: str, instance_number: int,
                 rows: int, cols: int) -> Dataset:
    sop_class = SOP_CLASS.get(series.modality, SECONDARY_CAPTURE)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "KASTELL_BENCH"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study.date
    ds.SeriesDate = study.date
    ds.StudyTime = "101500"
    ds.AccessionNumber = study.accession
    ds.Modality = series.modality
    ds.ConversionType = "WSD"
    ds.ReferringPhysicianName = "Referrer^Rita"
    ds.StudyDescription = f"Bench study {study.accession}"
    ds.SeriesDescription = f"Bench series {series.number}"
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = series.uid
    ds.StudyID = study.accession[-6:]
    ds.SeriesNumber = series.number
    ds.InstanceNumber = instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    return ds


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def generate_corpus(n_instances: int, n_studies: int, series_per_study: int,
                    rng: random.Random) -> tuple[list[StudyInfo], list[tuple[str, bytes]]]:
    """Build studies and *n_instances* encoded Part-10 files (64x64 uint16)."""
    n_patients = max(1, n_studies * 2 // 5)
    patients = []
    for i in range(n_patients):
        fam = FAMILY_NAMES[i % len(FAMILY_NAMES)]
        giv = GIVEN_NAMES[(i // len(FAMILY_NAMES)) % len(GIVEN_NAMES)]
        patients.append((f"KB{i:05d}", f"{fam}^{giv}"))

    studies: list[StudyInfo] = []
    for s in range(n_studies):
        pid, pname = patients[s % n_patients]
        date = BASE_DATE + dt.timedelta(days=rng.randrange(DATE_SPAN_DAYS))
        st = StudyInfo(uid=new_uid(), patient_id=pid, patient_name=pname,
                       date=date.strftime("%Y%m%d"), accession=f"ACC{s:07d}")
        primary = rng.choice(MODALITIES)
        for k in range(series_per_study):
            mod = primary if k == 0 else rng.choice([primary, *MODALITIES])
            st.series.append(SeriesInfo(uid=new_uid(), modality=mod, number=k + 1))
        studies.append(st)

    all_series = [(st, se) for st in studies for se in st.series]
    # Distribute instances over series as evenly as possible, series by series.
    per = [n_instances // len(all_series)] * len(all_series)
    for i in range(n_instances % len(all_series)):
        per[i] += 1

    nrng = np.random.default_rng(rng.randrange(2**32))
    files: list[tuple[str, bytes]] = []
    for (st, se), count in zip(all_series, per):
        for k in range(count):
            uid = new_uid()
            ds = base_dataset(st, se, uid, k + 1, 64, 64)
            ds.PixelData = nrng.integers(0, 4096, size=(64, 64), dtype=np.uint16).tobytes()
            files.append((st.uid, encode(ds)))
            se.instances.append(uid)
    return studies, files


def multipart_body(parts: list[bytes], boundary: str) -> bytes:
    b = boundary.encode("ascii")
    chunks = []
    for p in parts:
        chunks.append(b"--" + b + b"\r\nContent-Type: application/dicom\r\n\r\n")
        chunks.append(p)
        chunks.append(b"\r\n")
    chunks.append(b"--" + b + b"--\r\n")
    return b"".join(chunks)


def stow_content_type(boundary: str) -> str:
    return f'multipart/related; type="application/dicom"; boundary={boundary}'


# --------------------------------------------------------------------------
# server process
# --------------------------------------------------------------------------

def _pdeathsig() -> None:  # runs in the child before exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the bench
    except Exception:
        pass


class Server:
    def __init__(self, binary: str, data_dir: str, log_path: str, startup_timeout: float):
        self.binary = binary
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.startup_timeout = startup_timeout
        self._log_file = None
        # More `kastell serve` arguments (--index-url, --blob-url: benches/sustained.py).
        self.extra_args: list[str] = []

    def start(self) -> None:
        cmd = [self.binary, "serve", "--listen", f"127.0.0.1:{self.port}",
               "--data-dir", self.data_dir] + self.extra_args
        log(f"starting server: {' '.join(cmd)}")
        self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, preexec_fn=_pdeathsig)
        deadline = time.monotonic() + self.startup_timeout
        last_err = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited during startup with code "
                                   f"{self.proc.returncode}\n{self.log_tail()}")
            try:
                r = requests.get(self.base + "/healthz", timeout=2)
                if r.status_code == 200:
                    log(f"server up on {self.base} (pid {self.proc.pid})")
                    return
                last_err = f"/healthz returned {r.status_code}"
            except requests.RequestException as e:
                last_err = str(e)
            time.sleep(0.1)
        raise RuntimeError(f"server not healthy after {self.startup_timeout}s "
                           f"({last_err})\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
            return "--- server log (tail) ---\n" + "\n".join(lines[-n:])
        except OSError:
            return "(no server log)"

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                log("server did not exit within 15 s of SIGTERM; killing")
                self.proc.kill()
                self.proc.wait()
        if self._log_file:
            self._log_file.close()
        return self.proc.returncode


# --------------------------------------------------------------------------
# phases
# --------------------------------------------------------------------------

_tls = threading.local()


def session() -> requests.Session:
    s = getattr(_tls, "session", None)
    if s is None:
        s = requests.Session()
        _tls.session = s
    return s


def run_pool(fn, items, clients: int) -> None:
    """Run fn over items on *clients* threads; on Ctrl-C/SIGTERM drop queued work."""
    ex = cf.ThreadPoolExecutor(max_workers=clients)
    try:
        for fut in [ex.submit(fn, it) for it in items]:
            fut.result()
    except BaseException:
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown(wait=True)


def phase_stow(base: str, files: list[tuple[str, bytes]], per_request: int, clients: int,
               timeout: float) -> tuple[dict, set[str]]:
    url = base + "/dicomweb/studies"
    batches = [files[i:i + per_request] for i in range(0, len(files), per_request)]
    total_bytes = sum(len(f) for _, f in files)
    errors: list[str] = []
    latencies: list[float] = []
    stored: set[str] = set()
    failed_count = 0
    lock = threading.Lock()

    def send(batch: list[tuple[str, bytes]]) -> None:
        nonlocal failed_count
        boundary = "kastell-bench-" + uuid.uuid4().hex
        body = multipart_body([f for _, f in batch], boundary)
        t0 = time.perf_counter()
        try:
            r = session().post(url, data=body, timeout=timeout, headers={
                "Content-Type": stow_content_type(boundary), "Accept": STOW_ACCEPT})
        except requests.RequestException as e:
            with lock:
                errors.append(f"POST /studies: {e}")
            return
        dt_ms = (time.perf_counter() - t0) * 1000
        ok, failed, err = parse_stow_response(r)
        with lock:
            latencies.append(dt_ms)
            if r.status_code != 200:
                errors.append(f"POST /studies -> {r.status_code}: {one_line(r.text)}")
            if err and r.status_code in (200, 202):
                errors.append(f"POST /studies -> {r.status_code}: {err}")
            stored.update(ok)
            failed_count += len(failed)

    log(f"STOW: {len(files)} instances in {len(batches)} requests, {clients} clients")
    t0 = time.perf_counter()
    run_pool(send, batches, clients)
    wall = time.perf_counter() - t0
    res = {
        "instances": len(files),
        "requests": len(batches),
        "instances_per_request": per_request,
        "clients": clients,
        "bytes": total_bytes,
        "wall_s": r2(wall, 3),
        "instances_per_s": r2(len(files) / wall, 1),
        "mb_per_s": r2(total_bytes / MB / wall),
        "request_p50_ms": r2(percentile(latencies, 50)),
        "request_p99_ms": r2(percentile(latencies, 99)),
        "stored_ok": len(stored),
        "stored_failed": failed_count,
        "errors": len(errors),
        "error_samples": errors[:5],
    }
    return res, stored


def build_queries(studies: list[StudyInfo], n: int, rng: random.Random) -> list[tuple[str, str, dict, int | None]]:
    """Return (kind, path, params, expected_count) tuples; expected None = not checked."""
    pids = sorted({s.patient_id for s in studies})
    families = sorted({s.patient_name.split("^")[0] for s in studies})
    # Expected counts only cover what the server acknowledged storing.
    live = [s for s in studies if any(se.instances for se in s.series)]
    total = len(live)

    def mods(st: StudyInfo) -> set[str]:
        return {se.modality for se in st.series if se.instances}

    targets = live or studies  # series/instance queries address stored studies
    kinds = ["patient_id", "patient_name_wildcard", "study_date_range", "modalities_in_study",
             "accession", "limit_offset", "series_in_study", "instances_in_series"]
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        if kind == "patient_id":
            pid = rng.choice(pids)
            exp = sum(1 for s in live if s.patient_id == pid)
            out.append((kind, "/dicomweb/studies", {"PatientID": pid}, exp))
        elif kind == "patient_name_wildcard":
            prefix = rng.choice(families)[:3]
            exp = sum(1 for s in live if s.patient_name.startswith(prefix))
            out.append((kind, "/dicomweb/studies", {"PatientName": prefix + "*"}, exp))
        elif kind == "study_date_range":
            a = BASE_DATE + dt.timedelta(days=rng.randrange(DATE_SPAN_DAYS))
            b = a + dt.timedelta(days=rng.randrange(30, 120))
            lo, hi = a.strftime("%Y%m%d"), b.strftime("%Y%m%d")
            exp = sum(1 for s in live if lo <= s.date <= hi)
            out.append((kind, "/dicomweb/studies", {"StudyDate": f"{lo}-{hi}"}, exp))
        elif kind == "modalities_in_study":
            mod = rng.choice(MODALITIES)
            exp = sum(1 for s in live if mod in mods(s))
            out.append((kind, "/dicomweb/studies", {"ModalitiesInStudy": mod}, exp))
        elif kind == "accession":
            st = rng.choice(studies)
            out.append((kind, "/dicomweb/studies", {"AccessionNumber": st.accession},
                        int(st in live)))
        elif kind == "limit_offset":
            limit = rng.choice([5, 10, 25])
            offset = rng.randrange(0, total + 5)
            exp = max(0, min(limit, total - offset))
            out.append((kind, "/dicomweb/studies", {"limit": str(limit), "offset": str(offset)}, exp))
        elif kind == "series_in_study":
            st = rng.choice(targets)
            out.append((kind, f"/dicomweb/studies/{st.uid}/series", {},
                        sum(1 for se in st.series if se.instances)))
        else:
            st = rng.choice(targets)
            se = rng.choice([x for x in st.series if x.instances] or st.series)
            out.append((kind, f"/dicomweb/studies/{st.uid}/series/{se.uid}/instances", {},
                        len(se.instances)))
    return out


def phase_qido(base: str, studies: list[StudyInfo], n_queries: int, clients: int,
               rng: random.Random, timeout: float) -> dict:
    queries = build_queries(studies, n_queries, rng)
    lat_all: list[float] = []
    lat_by_kind: dict[str, list[float]] = {}
    errors: list[str] = []
    mismatches: list[str] = []
    truncated = 0
    n_mismatch = 0
    lock = threading.Lock()

    def run(q: tuple[str, str, dict, int | None]) -> None:
        nonlocal truncated, n_mismatch
        kind, path, params, expected = q
        t0 = time.perf_counter()
        try:
            r = session().get(base + path, params=params, timeout=timeout,
                              headers={"Accept": DICOM_JSON})
            content = r.content  # read the whole body inside the timed region
        except requests.RequestException as e:
            with lock:
                errors.append(f"{kind} {path} {params}: {e}")
            return
        ms = (time.perf_counter() - t0) * 1000
        err = None
        count = None
        if r.status_code == 204:
            count = 0
        elif r.status_code == 200:
            ctype = r.headers.get("Content-Type", "")
            if not ctype.startswith(DICOM_JSON):
                err = f"Content-Type {ctype!r}"
            try:
                body = json.loads(content) if content else []
                if isinstance(body, list):
                    count = len(body)
                else:
                    err = "body is not a JSON array"
            except ValueError as e:
                err = f"invalid JSON: {e}"
        else:
            err = f"HTTP {r.status_code}: {one_line(r.text, 200)}"
        with lock:
            lat_all.append(ms)
            lat_by_kind.setdefault(kind, []).append(ms)
            if err:
                errors.append(f"{kind} {path} {params}: {err}")
            elif expected is not None and count != expected:
                if count is not None and count < expected and r.headers.get("Warning"):
                    truncated += 1
                else:
                    n_mismatch += 1
                    if len(mismatches) < 10:
                        mismatches.append(f"{kind} GET {path} {params}: expected {expected}, "
                                          f"got {count} (HTTP {r.status_code})")

    log(f"QIDO: {len(queries)} queries, {clients} clients")
    t0 = time.perf_counter()
    run_pool(run, queries, clients)
    wall = time.perf_counter() - t0
    return {
        "queries": len(queries),
        "clients": clients,
        "wall_s": r2(wall, 3),
        "queries_per_s": r2(len(lat_all) / wall, 1),
        "p50_ms": r2(percentile(lat_all, 50)),
        "p99_ms": r2(percentile(lat_all, 99)),
        "max_ms": r2(max(lat_all) if lat_all else None),
        "by_kind": {k: {"n": len(v), "p50_ms": r2(percentile(v, 50)),
                        "p99_ms": r2(percentile(v, 99))}
                    for k, v in sorted(lat_by_kind.items())},
        "errors": len(errors),
        "error_samples": errors[:5],
        "count_mismatches": n_mismatch,
        "mismatch_samples": mismatches,
        "truncated_with_warning": truncated,
    }


def phase_wado(base: str, studies: list[StudyInfo], clients: int, timeout: float) -> dict:
    targets = [s for s in studies if any(se.instances for se in s.series)]
    total_bytes = 0
    latencies: list[float] = []
    errors: list[str] = []
    part_mismatches: list[str] = []
    lock = threading.Lock()

    def fetch(st: StudyInfo) -> None:
        nonlocal total_bytes
        expected = sum(len(se.instances) for se in st.series)
        t0 = time.perf_counter()
        try:
            r = session().get(f"{base}/dicomweb/studies/{st.uid}", stream=True,
                              timeout=timeout, headers={"Accept": WADO_ACCEPT})
        except requests.RequestException as e:
            with lock:
                errors.append(f"GET study {st.uid}: {e}")
            return
        with r:
            if r.status_code != 200:
                with lock:
                    errors.append(f"GET study -> {r.status_code}: {one_line(r.text, 200)}")
                return
            ctype = r.headers.get("Content-Type", "")
            boundary = None
            for p in ctype.split(";")[1:]:
                k, _, v = p.strip().partition("=")
                if k.lower() == "boundary":
                    boundary = v.strip('"')
            delim = b"--" + boundary.encode() if boundary else None
            n_delims = 0
            tail = b""
            nbytes = 0
            try:
                for chunk in r.iter_content(chunk_size=256 * 1024):
                    nbytes += len(chunk)
                    if delim:
                        buf = tail + chunk
                        n_delims += buf.count(delim)
                        tail = buf[-(len(delim) - 1):] if len(delim) > 1 else b""
            except requests.RequestException as e:
                with lock:
                    errors.append(f"GET study {st.uid} (body): {e}")
                return
        ms = (time.perf_counter() - t0) * 1000
        with lock:
            total_bytes += nbytes
            latencies.append(ms)
            if not ctype.startswith("multipart/related") or not delim:
                errors.append(f"GET study: unexpected Content-Type {ctype!r}")
            elif n_delims - 1 != expected and len(part_mismatches) < 10:
                part_mismatches.append(f"study {st.uid}: expected {expected} parts, "
                                       f"got {max(0, n_delims - 1)}")

    log(f"WADO: retrieving {len(targets)} studies, {clients} clients")
    t0 = time.perf_counter()
    run_pool(fetch, targets, clients)
    wall = time.perf_counter() - t0
    return {
        "studies": len(targets),
        "clients": clients,
        "bytes": total_bytes,
        "wall_s": r2(wall, 3),
        "mb_per_s": r2(total_bytes / MB / wall),
        "studies_per_s": r2(len(latencies) / wall, 1),
        "study_p50_ms": r2(percentile(latencies, 50)),
        "study_p99_ms": r2(percentile(latencies, 99)),
        "errors": len(errors),
        "error_samples": errors[:5],
        "part_count_mismatches": len(part_mismatches),
        "mismatch_samples": part_mismatches,
    }


class RssSampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.max_rss_kib = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            rss = proc_status(self.pid).get("VmRSS")
            if rss is not None:
                self.samples += 1
                self.max_rss_kib = max(self.max_rss_kib, rss)
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def phase_big(server: Server, big_mib: int, timeout: float) -> dict:
    cols = 2048
    target_per_instance = 10 * MiB
    n = max(1, math.ceil(big_mib * MiB / target_per_instance))
    rows = max(1, (big_mib * MiB) // n // (2 * cols))
    pixel_len = rows * cols * 2
    # One shared pixel payload (~10 MiB), generated once.
    pixels = np.random.default_rng(1234).integers(0, 4096, size=rows * cols,
                                                  dtype=np.uint16).tobytes()
    pix_view = memoryview(pixels)
    pixel_header = b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", pixel_len)

    study = StudyInfo(uid=new_uid(), patient_id="KBBIG0001", patient_name="Bigfile^Bertha",
                      date="20240601", accession="ACCBIG0001")
    series = SeriesInfo(uid=new_uid(), modality="CT", number=1)
    study.series.append(series)
    boundary = "kastell-bench-big-" + uuid.uuid4().hex
    bnd = boundary.encode("ascii")
    sent = {"bytes": 0, "instances": 0}
    sop_uids: list[str] = []
    piece = 1 * MiB

    def body():
        for k in range(n):
            uid = new_uid()
            sop_uids.append(uid)
            ds = base_dataset(study, series, uid, k + 1, rows, cols)
            head = (b"--" + bnd + b"\r\nContent-Type: application/dicom\r\n\r\n"
                    + encode(ds) + pixel_header)
            sent["bytes"] += len(head)
            yield head
            for off in range(0, pixel_len, piece):
                chunk = pix_view[off:off + piece]
                sent["bytes"] += len(chunk)
                yield chunk
            sent["bytes"] += 2
            sent["instances"] += 1
            yield b"\r\n"
        tail = b"--" + bnd + b"--\r\n"
        sent["bytes"] += len(tail)
        yield tail

    pid = server.pid
    before = proc_status(pid)
    hwm_reset = reset_peak_rss(pid)
    after_reset = proc_status(pid)
    log(f"BIG STOW: {n} instances x {pixel_len / MiB:.1f} MiB pixels "
        f"(~{n * pixel_len / MiB:.0f} MiB), chunked; VmHWM reset: {hwm_reset}")
    sampler = RssSampler(pid, 0.05)
    sampler.start()
    status = None
    err = None
    ok_uids: set[str] = set()
    failed_uids: set[str] = set()
    t0 = time.perf_counter()
    try:
        with requests.Session() as s:
            r = s.post(server.base + "/dicomweb/studies", data=body(), timeout=timeout,
                       headers={"Content-Type": stow_content_type(boundary),
                                "Accept": STOW_ACCEPT})
        status = r.status_code
        ok_uids, failed_uids, perr = parse_stow_response(r)
        if status != 200:
            err = f"HTTP {status}: {one_line(r.text)}"
        elif perr:
            err = perr
    except requests.RequestException as e:
        err = f"{type(e).__name__}: {e}"
    wall = time.perf_counter() - t0
    sampler.stop()
    after = proc_status(pid)
    return {
        "instances": n,
        "pixel_bytes_per_instance": pixel_len,
        "body_bytes_sent": sent["bytes"],
        "body_mib": r2(sent["bytes"] / MiB, 1),
        "http_status": status,
        "wall_s": r2(wall, 3),
        "mib_per_s": r2(sent["bytes"] / MiB / wall, 1),
        "referenced_instances": len(ok_uids & set(sop_uids)),
        "failed_instances": len(failed_uids),
        "error": err,
        "server_alive_after": server.alive(),
        "rss_before_mib": kib_to_mib(before.get("VmRSS")),
        "hwm_before_mib": kib_to_mib(before.get("VmHWM")),
        "hwm_reset": hwm_reset,
        "hwm_after_reset_mib": kib_to_mib(after_reset.get("VmHWM")),
        "peak_rss_vmhwm_mib": kib_to_mib(after.get("VmHWM")),
        "max_sampled_vmrss_mib": kib_to_mib(sampler.max_rss_kib or None),
        "rss_after_mib": kib_to_mib(after.get("VmRSS")),
        "rss_samples": sampler.samples,
        "study_uid": study.uid,
    }


# --------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------

def one_line(text: str, n: int = 300) -> str:
    return " ".join(text.split())[:n]


def fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.1f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def markdown(results: dict) -> str:
    rows: list[tuple[str, str, str]] = []
    st = results.get("stow")
    if st:
        rows += [
            ("STOW-RS", f"ingest rate ({st['instances']} inst, {st['instances_per_request']}/req, "
                        f"{st['clients']} clients)", f"{fmt(st['instances_per_s'])} instances/s"),
            ("STOW-RS", "ingest bandwidth", f"{fmt(st['mb_per_s'])} MB/s"),
            ("STOW-RS", "request latency p50 / p99",
             f"{fmt(st['request_p50_ms'])} / {fmt(st['request_p99_ms'])} ms"),
            ("STOW-RS", "stored OK / failed / errors",
             f"{st['stored_ok']} / {st['stored_failed']} / {st['errors']}"),
        ]
    q = results.get("qido")
    if q:
        rows += [
            ("QIDO-RS", f"latency p50 ({q['queries']} mixed queries, {q['clients']} clients)",
             f"{fmt(q['p50_ms'])} ms"),
            ("QIDO-RS", "latency p99", f"{fmt(q['p99_ms'])} ms"),
            ("QIDO-RS", "throughput", f"{fmt(q['queries_per_s'])} queries/s"),
            ("QIDO-RS", "errors / count mismatches", f"{q['errors']} / {q['count_mismatches']}"),
        ]
        for k, v in q["by_kind"].items():
            rows.append(("QIDO-RS", f"  {k} p50 / p99",
                         f"{fmt(v['p50_ms'])} / {fmt(v['p99_ms'])} ms"))
    w = results.get("wado")
    if w:
        rows += [
            ("WADO-RS", f"study retrieve bandwidth ({w['studies']} studies, {w['clients']} clients)",
             f"{fmt(w['mb_per_s'])} MB/s"),
            ("WADO-RS", "study latency p50 / p99",
             f"{fmt(w['study_p50_ms'])} / {fmt(w['study_p99_ms'])} ms"),
            ("WADO-RS", "errors / part-count mismatches",
             f"{w['errors']} / {w['part_count_mismatches']}"),
        ]
    b = results.get("big")
    if b:
        rows += [
            ("Big STOW", f"request ({b['instances']} inst, {fmt(b['body_mib'])} MiB, chunked)",
             f"HTTP {fmt(b['http_status'])} in {fmt(b['wall_s'])} s ({fmt(b['mib_per_s'])} MiB/s)"),
            ("Big STOW", "server peak RSS (VmHWM after request)",
             f"{fmt(b['peak_rss_vmhwm_mib'])} MiB"),
            ("Big STOW", f"server max sampled VmRSS ({b['rss_samples']} samples @ 50 ms)",
             f"{fmt(b['max_sampled_vmrss_mib'])} MiB"),
            ("Big STOW", "server VmRSS before / after", f"{fmt(b['rss_before_mib'])} / "
                                                      f"{fmt(b['rss_after_mib'])} MiB"),
            ("Big STOW", "instances referenced / failed",
             f"{b['referenced_instances']} / {b['failed_instances']}"),
        ]
    srv = results.get("server", {})
    if srv.get("idle_rss_mib") is not None:
        rows.append(("Server", "idle VmRSS after start", f"{fmt(srv['idle_rss_mib'])} MiB"))
    bench = results.get("bench", {})
    if bench.get("bench_peak_rss_mib") is not None:
        rows.append(("Bench", "bench process peak RSS", f"{fmt(bench['bench_peak_rss_mib'])} MiB"))
    out = ["| Phase | Metric | Value |", "|---|---|---|"]
    out += [f"| {a} | {m} | {v} |" for a, m, v in rows]
    return "\n".join(out)


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def default_bin() -> str:
    """$KASTELL_BIN, else the first existing release build among the usual target dirs."""
    if os.environ.get("KASTELL_BIN"):
        return os.environ["KASTELL_BIN"]
    primary = os.path.expanduser("~/.cache/kastell-target/release/kastell")
    candidates = [primary]
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(os.path.join(os.environ["CARGO_TARGET_DIR"], "release", "kastell"))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidates.append(os.path.join(repo, "target", "release", "kastell"))
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return primary



def add_run_args(p, *, big_timeout: float | None = None) -> None:
    """The arguments every bench takes for its server run: where the data directory
    goes and whether it stays, and the timeouts."""
    p.add_argument("--data-root", default=None,
                   help="parent directory for the temporary data dir (system temp if unset)")
    p.add_argument("--keep-data", action="store_true", help="do not delete the data dir")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request timeout (s)")
    if big_timeout is not None:
        p.add_argument("--big-timeout", type=float, default=big_timeout, help="big STOW timeout (s)")
    p.add_argument("--startup-timeout", type=float, default=60.0)

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bin", default=default_bin(),
                   help="server binary ($KASTELL_BIN, else the first existing release build)")
    p.add_argument("--instances", type=int, default=2000, help="small instances to STOW")
    p.add_argument("--studies", type=int, default=100, help="studies to spread them over")
    p.add_argument("--series-per-study", type=int, default=2)
    p.add_argument("--per-request", type=int, default=10, help="instances per STOW request")
    p.add_argument("--clients", type=int, default=4, help="concurrent client threads")
    p.add_argument("--queries", type=int, default=400, help="QIDO queries to run")
    p.add_argument("--big-mib", type=int, default=1024, help="size of the big STOW request")
    p.add_argument("--skip-big", action="store_true", help="skip the big STOW / RSS phase")
    p.add_argument("--out", default="results.json", help="JSON results file")
    p.add_argument("--seed", type=int, default=20240601)
    add_run_args(p, big_timeout=1800.0)
    a = p.parse_args(argv)
    if a.instances < 1 or a.studies < 1 or a.series_per_study < 1 or a.per_request < 1 \
            or a.clients < 1 or a.big_mib < 1:
        p.error("counts must be >= 1")
    a.studies = min(a.studies, a.instances)
    return a


def finish(args, results: dict, problems: list[str], rc: int, server, data_dir: str,
           report: str, details: list[str] | None = None, summary: str = "") -> int:
    """The end of a bench run, shared by the benches that import this module: keep
    the data directory when something went wrong (or --keep-data), remove it
    otherwise, write the JSON results, print the Markdown report and the problems.
    Returns the exit code (3 when the run had problems but did not fail)."""
    results["problems"] = problems
    if args.keep_data or rc != 0 or problems:
        results["server"]["data_dir"] = data_dir
        results["server"]["log"] = server.log_path
        log(f"data dir kept: {data_dir} (server log: {server.log_path})")
        if problems or rc != 0:
            print(server.log_tail(20), file=sys.stderr)
    else:
        shutil.rmtree(data_dir, ignore_errors=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    print(report)
    print()
    if problems:
        print("Problems observed:")
        for problem in problems + (details or []):
            print(f"  - {problem}")
    if results.get("aborted"):
        print(f"Run aborted: {results['aborted']}")
    print(f"JSON written to {args.out}{summary}")
    return 3 if rc == 0 and problems else rc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (os.path.isfile(args.bin) and os.access(args.bin, os.X_OK)):
        print(f"server binary not found or not executable: {args.bin}\n"
              f"build it with `cargo build --release` or set KASTELL_BIN", file=sys.stderr)
        return 2

    # Make SIGTERM behave like Ctrl-C so the finally-blocks below stop the server.
    def _term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, _term)

    rng = random.Random(args.seed)
    results: dict = {
        "meta": {
            "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "binary": os.path.abspath(args.bin),
            "args": {k: v for k, v in vars(args).items() if k != "bin"},
            "host": platform.node(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
    }

    log(f"generating {args.instances} instances over {args.studies} studies "
        f"x {args.series_per_study} series")
    t0 = time.perf_counter()
    studies, files = generate_corpus(args.instances, args.studies, args.series_per_study, rng)
    results["meta"]["generate_s"] = r2(time.perf_counter() - t0, 2)

    data_dir = tempfile.mkdtemp(prefix="kastell-bench-", dir=args.data_root)
    server = Server(args.bin, os.path.join(data_dir, "data"),
                    os.path.join(data_dir, "server.log"), args.startup_timeout)
    os.makedirs(server.data_dir, exist_ok=True)
    rc = 0
    try:
        server.start()
        time.sleep(0.2)
        results["server"] = {"pid": server.pid, "base": server.base,
                             "idle_rss_mib": kib_to_mib(proc_status(server.pid).get("VmRSS"))}

        stow, stored = phase_stow(server.base, files, args.per_request, args.clients, args.timeout)
        results["stow"] = stow
        del files
        # Expectations for QIDO/WADO only count what the server acknowledged.
        for st in studies:
            for se in st.series:
                se.instances = [u for u in se.instances if u in stored]
        stow["data_dir_bytes"] = dir_bytes(server.data_dir)
        if not server.alive():
            raise RuntimeError("server died during STOW\n" + server.log_tail())

        results["qido"] = phase_qido(server.base, studies, args.queries, args.clients, rng,
                                     args.timeout)
        if not server.alive():
            raise RuntimeError("server died during QIDO\n" + server.log_tail())

        results["wado"] = phase_wado(server.base, studies, args.clients, args.timeout)
        if not server.alive():
            raise RuntimeError("server died during WADO\n" + server.log_tail())

        if not args.skip_big:
            big = phase_big(server, args.big_mib, args.big_timeout)
            big["data_dir_bytes"] = dir_bytes(server.data_dir)
            results["big"] = big
            if not server.alive():
                raise RuntimeError("server died during big STOW\n" + server.log_tail())
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); stopping server")
        results["aborted"] = f"interrupted: {e}"
        rc = 130
    except Exception as e:  # report what we have, then fail
        log(f"ERROR: {e}")
        results["aborted"] = str(e)
        rc = 1
    finally:
        exit_code = server.stop()
        results.setdefault("server", {})["exit_code"] = exit_code

    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results["bench"] = {"bench_peak_rss_mib": kib_to_mib(peak_kib)}
    results["meta"]["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")

    # Any functional problem observed makes the run "unclean".
    problems = []
    for phase in ("stow", "qido", "wado"):
        ph = results.get(phase) or {}
        for key in ("errors", "count_mismatches", "part_count_mismatches", "stored_failed"):
            if ph.get(key):
                problems.append(f"{phase}.{key}={ph[key]}")
    big = results.get("big")
    if big and (big["error"] or big["http_status"] != 200
                or big["referenced_instances"] != big["instances"]):
        problems.append(f"big: {big['error'] or 'not all instances referenced'}")
    return finish(args, results, problems, rc, server, data_dir, markdown(results),
                  details=[f"{phase}: {sample}" for phase in ("stow", "qido", "wado")
                           for sample in (results.get(phase) or {}).get("error_samples", [])
                           + (results.get(phase) or {}).get("mismatch_samples", [])])


if __name__ == "__main__":
    sys.exit(main())
