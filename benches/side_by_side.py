#!/usr/bin/env python3
"""Kastell and Orthanc side by side, driven by a compiled client (issue 13).

The orchestrator only: it builds the data with pydicom, starts each server on a
loopback port with a fresh directory, stores the same corpus in both, and runs
wrk (C, with the Lua scripts of benches/wrk/) for every measured phase. Python is
never on the measured path. For each phase it records the server's CPU seconds
(/proc/PID/stat) and wrk's (rusage of the child) next to the throughput and
latency figures, so that the client's headroom shows in every row.

    apt-get install -y wrk orthanc orthanc-dicomweb
    python3 benches/side_by_side.py --quick          # smoke run, about 1 min
    python3 benches/side_by_side.py                  # 20 s per phase, about 5 min

The Kastell binary is --bin, else chosen as in load.py ($KASTELL_BIN,
~/.cache/kastell-target/release/kastell, ...). See benches/README.md, section
"Side by side with Orthanc, compiled client (issue 13)", for what each figure means.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse

import requests

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402  (benches/load.py: corpus, server process, STOW helpers)
from load import (DICOM_JSON, MB, SeriesInfo, StudyInfo, base_dataset, encode, log,  # noqa: E402
                  multipart_body, one_line, parse_stow_response, r2, stow_content_type)

WRK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wrk")
ORTHANC_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
INSTALL_HINT = "apt-get install -y wrk orthanc orthanc-dicomweb"
WADO_ACCEPT = load.WADO_ACCEPT
# Every UID of the STOW template holds this marker; benches/wrk/stow.lua replaces it
# per request by "9182736450" + an 8-digit request number (same length).
MARKER = "918273645000000000"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PHASES = ("qido", "wado", "wado_instance", "metadata", "metadata_1c", "stow")


# --------------------------------------------------------------------------
# CPU accounting
# --------------------------------------------------------------------------

def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def machine_busy_s() -> float:
    """CPU seconds spent not idle by the whole machine, all cores."""
    with open("/proc/stat", "rb") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return (sum(v[:8]) - idle) / CLK_TCK


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def wait_quiet(pid: int, min_wait: float, max_wait: float) -> float:
    """Wait at least *min_wait* s, then until the server used < 20 ms of CPU in a
    second (or *max_wait* s passed): the last phase's tail, or Kastell's metadata
    warmer, must not run into the next phase. Returns the seconds waited."""
    t0 = time.monotonic()
    time.sleep(min_wait)
    last = proc_cpu_s(pid)
    while time.monotonic() - t0 < max_wait:
        time.sleep(1.0)
        now = proc_cpu_s(pid)
        if now - last < 0.02:
            break
        last = now
    return time.monotonic() - t0


# --------------------------------------------------------------------------
# servers
# --------------------------------------------------------------------------

class Orthanc:
    """Orthanc with the DICOMweb plugin on a free loopback port, storage and index in
    *work_dir*, no authentication, DICOM port off; every other option its default."""

    def __init__(self, binary: str, work_dir: str, startup_timeout: float):
        self.binary = binary
        self.work_dir = work_dir
        self.port = load.free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(work_dir, "orthanc.log")
        self.config_path = os.path.join(work_dir, "orthanc.json")
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self._log_file = None

    def config(self) -> dict:
        return {
            "Name": "kastell-side-by-side",
            "StorageDirectory": os.path.join(self.work_dir, "storage"),
            "IndexDirectory": os.path.join(self.work_dir, "index"),
            "HttpPort": self.port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": False,
            "Plugins": [ORTHANC_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }

    def start(self) -> None:
        with open(self.config_path, "w", encoding="utf-8") as f:
            json.dump(self.config(), f, indent=2)
        cmd = [self.binary, self.config_path]
        log(f"starting Orthanc: {' '.join(cmd)}")
        self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, preexec_fn=load._pdeathsig)
        deadline = time.monotonic() + self.startup_timeout
        last_err = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited during startup with code "
                                   f"{self.proc.returncode}\n{self.log_tail()}")
            try:
                r = requests.get(self.base + "/dicom-web/studies?limit=1", timeout=2,
                                 headers={"Accept": DICOM_JSON})
                if r.status_code in (200, 204):
                    log(f"Orthanc up on {self.base} (pid {self.proc.pid})")
                    return
                last_err = f"QIDO returned {r.status_code}"
            except requests.RequestException as e:
                last_err = str(e)
            time.sleep(0.2)
        raise RuntimeError(f"Orthanc not ready after {self.startup_timeout}s ({last_err})\n"
                           f"{self.log_tail()}")

    # The rest is load.Server's, which has the same fields.
    pid = load.Server.pid
    alive = load.Server.alive
    log_tail = load.Server.log_tail
    stop = load.Server.stop


def version_of(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return one_line((out.stdout or out.stderr).strip().splitlines()[0], 120)
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------

def stow_template(per_request: int, boundary: str) -> bytes:
    """A STOW-RS body of one study of *per_request* instances over two series, every
    UID and the PatientID holding MARKER (see benches/wrk/stow.lua)."""
    study = StudyInfo(uid=f"2.25.{MARKER}", patient_id=f"KBS{MARKER}",
                      patient_name="Stow^Bench", date="20240115", accession="STOW000001")
    for k in (1, 2):
        study.series.append(SeriesInfo(uid=f"2.25.{MARKER}.{k}", modality="CT", number=k))
    parts = []
    pixels = random.Random(7).randbytes(64 * 64 * 2)
    for i in range(per_request):
        se = study.series[i % 2]
        ds = base_dataset(study, se, f"2.25.{MARKER}.{se.number}.{i + 1}", i + 1, 64, 64)
        ds.PixelData = pixels
        parts.append(encode(ds))
    body = multipart_body(parts, boundary)
    assert body.count(MARKER.encode()) == 5 * per_request  # meta and SOP UID, study, series, PID
    return body


def query_paths(studies: list[StudyInfo], n: int, seed: int) -> list[tuple[str, str, int | None]]:
    """load.py's QIDO mix as (kind, path after the DICOMweb root, expected count)."""
    out = []
    for kind, path, params, expected in load.build_queries(studies, n, random.Random(seed)):
        rel = path.removeprefix("/dicomweb")
        if params:
            # '*' stays literal: Orthanc 1.10 does not decode %2A in a wildcard
            rel += "?" + urllib.parse.urlencode(params, safe="*")
        out.append((kind, rel, expected))
    return out


def store_corpus(base: str, files: list[tuple[str, bytes]], per_request: int,
                 timeout: float) -> dict:
    """Store the corpus through STOW-RS with Python (set-up, not measured)."""
    errors: list[str] = []
    stored = 0
    batches = [files[i:i + per_request] for i in range(0, len(files), per_request)]

    def send(batch):
        nonlocal stored
        boundary = "kastell-bench-corpus"
        r = load.session().post(base + "/studies", data=multipart_body([f for _, f in batch], boundary),
                                timeout=timeout, headers={"Content-Type": stow_content_type(boundary),
                                                          "Accept": DICOM_JSON})
        ok, failed, err = parse_stow_response(r)
        stored += len(ok)
        if r.status_code != 200 or err or failed:
            errors.append(f"HTTP {r.status_code} {err or ''} failed={len(failed)}: {one_line(r.text, 200)}")

    t0 = time.perf_counter()
    load.run_pool(send, batches, 4)
    return {"instances": len(files), "stored": stored, "wall_s": r2(time.perf_counter() - t0),
            "errors": errors[:5], "error_count": len(errors)}


def preflight(base: str, studies: list[StudyInfo], queries, timeout: float) -> tuple[list[str], bool]:
    """Every request of the GET phases once (unmeasured; it also warms both servers'
    caches alike): status, QIDO result counts, WADO part counts, metadata size.
    Also tells whether the server closes the connection after a WADO-RS response."""
    problems: list[str] = []
    closes = False
    s = load.session()
    for kind, rel, expected in queries:
        r = s.get(base + rel, headers={"Accept": DICOM_JSON}, timeout=timeout)
        count = 0 if r.status_code == 204 else len(r.json()) if r.status_code == 200 else None
        if count is None or (expected is not None and count != expected):
            problems.append(f"QIDO {kind} {rel}: HTTP {r.status_code}, {count} results, "
                            f"expected {expected}")
    for st in studies:
        n = sum(len(se.instances) for se in st.series)
        r = s.get(f"{base}/studies/{st.uid}", headers={"Accept": WADO_ACCEPT}, timeout=timeout)
        boundary = r.headers.get("Content-Type", "").partition("boundary=")[2].split(";")[0].strip('"')
        parts = r.content.count(b"--" + boundary.encode() + b"\r\n") if boundary else 0
        closes = closes or r.headers.get("Connection", "").lower() == "close"
        if r.status_code != 200 or parts != n:
            problems.append(f"WADO study {st.uid}: HTTP {r.status_code}, {parts} parts, expected {n}")
        for se in st.series:
            for uid in se.instances:
                r = s.get(f"{base}/studies/{st.uid}/series/{se.uid}/instances/{uid}",
                          headers={"Accept": WADO_ACCEPT}, timeout=timeout)
                b = r.headers.get("Content-Type", "").partition("boundary=")[2].split(";")[0].strip('"')
                parts = r.content.count(b"--" + b.encode() + b"\r\n") if b else 0
                if r.status_code != 200 or parts != 1:
                    problems.append(f"WADO instance {uid}: HTTP {r.status_code}, {parts} parts")
        r = s.get(f"{base}/studies/{st.uid}/metadata", headers={"Accept": DICOM_JSON},
                  timeout=timeout)
        got = len(r.json()) if r.status_code == 200 else None
        if got != n:
            problems.append(f"metadata {st.uid}: HTTP {r.status_code}, {got} instances, expected {n}")
    return problems, closes


# --------------------------------------------------------------------------
# one wrk phase
# --------------------------------------------------------------------------

def run_wrk(args, pid: int, url: str, script: str, script_args: list[str], connections: int,
            threads: int, closes: bool = False) -> dict:
    """One wrk run against the server *pid*, its figures and the CPU both sides used.
    *closes*: the server ends each response by closing the connection (Orthanc's
    WADO-RS); wrk then counts a read error per response, which is no failure."""
    cmd = [args.wrk, "-t", str(threads), "-c", str(connections), "-d", f"{args.duration}s",
           "--timeout", f"{args.wrk_timeout}s", "-s", os.path.join(WRK_DIR, script), url,
           "--", *script_args]
    load_before = os.getloadavg()[0]
    client0, server0, machine0 = children_cpu_s(), proc_cpu_s(pid), machine_busy_s()
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=load._pdeathsig)
    wall = time.monotonic() - t0
    client = children_cpu_s() - client0
    server = proc_cpu_s(pid) - server0
    machine = machine_busy_s() - machine0
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {' '.join(cmd)}\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    w = json.loads(line.removeprefix("WRK_JSON "))
    secs = w["duration_us"] / 1e6
    n = w["requests"]
    lat = {k: r2(v / 1000, 3) for k, v in w["latency_us"].items()}
    res = {
        "connections": connections, "threads": threads, "duration_s": r2(secs, 2),
        "requests": n, "requests_per_s": r2(n / secs, 1), "mb_per_s": r2(w["bytes"] / MB / secs),
        "latency_ms": lat, "errors": w["errors"], "counters": w["counters"], "notes": w["notes"],
        "server_cpu_s": r2(server, 2), "client_cpu_s": r2(client, 2),
        "other_cpu_s": r2(max(0.0, machine - server - client), 2),
        "server_cores": r2(server / wall), "client_cores": r2(client / wall),
        "server_cpu_ms_per_request": r2(1000 * server / n, 3) if n else None,
        "client_cpu_ms_per_request": r2(1000 * client / n, 3) if n else None,
        "client_to_server_cpu": r2(client / server, 3) if server else None,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg()[0],
    }
    bad = sum(w["errors"].values())
    if closes and w["errors"]["read"] <= n + connections:
        bad -= w["errors"]["read"]
        res["read_errors_are_closed_connections"] = True
    if bad:
        res["problem"] = f"wrk errors {w['errors']}"
    return res


def run_server(args, name: str, server, root: str, studies, files, queries, template: bytes,
               boundary: str, work: str) -> dict:
    base = server.base + root
    out: dict = {}
    problems: list[str] = []
    server.start()
    out["pid"] = server.pid
    out["idle_rss_mib"] = load.kib_to_mib(load.proc_status(server.pid).get("VmRSS"))
    log(f"{name}: storing the corpus ({len(files)} instances)")
    out["corpus"] = store_corpus(base, files, args.per_request, args.timeout)
    if out["corpus"]["error_count"]:
        problems.append(f"corpus STOW: {out['corpus']['errors']}")
    out["settle_s"] = r2(wait_quiet(server.pid, args.settle, args.settle + 30), 1)
    log(f"{name}: preflight (every GET of the phases once)")
    pre, wado_closes = preflight(base, studies, queries, args.timeout)
    out["wado_connection_close"] = wado_closes
    out["preflight_problems"] = pre[:10]
    out["preflight_problem_count"] = len(pre)
    problems += [f"preflight: {p}" for p in pre[:5]]

    paths = {
        "qido": [root + rel for _, rel, _ in queries],
        "wado": [f"{root}/studies/{st.uid}" for st in studies],
        # Every instance of the corpus once, each alone (a viewer's or an AI
        # service's single-instance fetch), multipart as in the study phase.
        "wado_instance": [f"{root}/studies/{st.uid}/series/{se.uid}/instances/{uid}"
                          for st in studies for se in st.series for uid in se.instances],
        "metadata": [f"{root}/studies/{st.uid}/metadata" for st in studies],
    }
    for kind, lines in paths.items():
        with open(os.path.join(work, f"{name}-{kind}.txt"), "w", encoding="ascii") as f:
            f.write("\n".join(lines) + "\n")
    template_path = os.path.join(work, "stow-template.bin")
    if not os.path.exists(template_path):
        with open(template_path, "wb") as f:
            f.write(template)

    out["phases"] = {}
    for phase in args.phases:
        wait_quiet(server.pid, 1.0, 15.0)
        conns, threads = args.connections, args.threads
        if phase == "metadata_1c":
            conns, threads = 1, 1
        log(f"{name}: {phase}, {conns} connections, {args.duration} s")
        if phase == "stow":
            res = run_wrk(args, server.pid, server.base, "stow.lua",
                          [template_path, root + "/studies", stow_content_type(boundary), str(threads)],
                          conns, threads)
            c = res["counters"]
            secs = res["duration_s"]
            res["instances_per_s"] = r2(c["ok_instances"] / secs, 1)
            res["upload_mb_per_s"] = r2(c["ok_responses"] * len(template) / MB / secs)
            res["server_cpu_ms_per_instance"] = (r2(1000 * res["server_cpu_s"] / c["ok_instances"], 3)
                                                 if c["ok_instances"] else None)
            res["client_cpu_ms_per_instance"] = (r2(1000 * res["client_cpu_s"] / c["ok_instances"], 3)
                                                 if c["ok_instances"] else None)
            if name == "kastell":
                res["stages_ms"] = stow_stages(server.base)
            if c["bad_responses"] or c["ok_instances"] != c["ok_responses"] * args.per_request:
                problems.append(f"stow: {c['bad_responses']} bad responses, {c['ok_instances']} "
                                f"instances in {c['ok_responses']} good ones; {res['notes']}")
        else:
            kind = "metadata" if phase == "metadata_1c" else phase
            accept = WADO_ACCEPT if kind.startswith("wado") else DICOM_JSON
            res = run_wrk(args, server.pid, server.base, "get.lua",
                          [os.path.join(work, f"{name}-{kind}.txt"), accept], conns, threads,
                          closes=kind.startswith("wado") and wado_closes)
        if res.get("problem"):
            problems.append(f"{phase}: {res['problem']}")
        out["phases"][phase] = res
        log(f"{name}: {phase}: {res['requests_per_s']} req/s, p50 {res['latency_ms']['p50']} ms, "
            f"server {res['server_cpu_s']} s CPU, wrk {res['client_cpu_s']} s")
        if not server.alive():
            raise RuntimeError(f"{name} died during {phase}\n{server.log_tail()}")
    if "stow" in args.phases:
        problems += check_stow_sample(base, out["phases"]["stow"], args)
    out["problems"] = problems
    return out


def stow_stages(base: str) -> dict:
    """Kastell's mean time per STOW stage over the run (issue 18), in ms, from
    kastell_stow_stage_duration_seconds on /metrics: per part for receive,
    encrypt_write, finish, parse and metadata; per request for index and audit."""
    text = requests.get(base + "/metrics", timeout=10).text
    sums, counts = {}, {}
    for line in text.splitlines():
        m = re.match(r'kastell_stow_stage_duration_seconds_(sum|count)\{[^}]*stage="(\w+)"[^}]*\} ([0-9.e+-]+)',
                     line)
        if m:
            (sums if m.group(1) == "sum" else counts)[m.group(2)] = float(m.group(3))
    return {stage: {"mean_ms": r2(1000 * sums[stage] / counts[stage], 3), "count": int(counts[stage])}
            for stage in sums if counts.get(stage)}


def check_stow_sample(base: str, stow: dict, args) -> list[str]:
    """A few studies sent by wrk, looked up afterwards: each must hold its instances.
    Numbers 2 and 3 are the first requests of threads 1 and 0 (wrk spends number 1
    on checking the script); half the good responses is well inside what completed."""
    good = stow["counters"]["ok_responses"]
    problems = []
    for n in sorted({2, 3, max(3, good // 2)}):
        uid = f"2.25.9182736450{n:08d}"
        r = load.session().get(f"{base}/studies/{uid}/instances", headers={"Accept": DICOM_JSON},
                               timeout=args.timeout)
        got = len(r.json()) if r.status_code == 200 else 0
        if got != args.per_request:
            problems.append(f"stow check: study {uid} holds {got} instances (HTTP {r.status_code}), "
                            f"expected {args.per_request}")
    return problems


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------

def fmt(v) -> str:
    """Three significant figures below 100 (CPU per request is often < 0.1 ms)."""
    if isinstance(v, float) and abs(v) < 100:
        return f"{v:.3f}" if abs(v) < 1 else f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"
    return load.fmt(v)


def markdown(results: dict) -> str:
    servers = [s for s in ("kastell", "orthanc") if results["servers"].get(s, {}).get("phases")]
    if not servers:
        return "(no phase ran)"
    ph = {s: results["servers"][s].get("phases", {}) for s in servers}

    def get(s, phase, *keys):
        v = ph[s].get(phase)
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else None
        return v

    def row(label, phase, *keys, ratio=False):
        vals = [get(s, phase, *keys) for s in servers]
        cells = [fmt(v) for v in vals]
        if ratio and len(vals) == 2 and all(isinstance(v, (int, float)) and v for v in vals):
            cells.append(f"{vals[0] / vals[1]:.3g}")
        elif len(servers) == 2:
            cells.append("")
        return f"| {label} | " + " | ".join(cells) + " |"

    head = "| Figure | " + " | ".join(servers) + (" | Kastell ÷ Orthanc |" if len(servers) == 2 else " |")
    lines = [head, "|---" * (len(servers) + 1 + (len(servers) == 2)) + "|"]
    lines += [
        row("STOW-RS instances/s", "stow", "instances_per_s", ratio=True),
        row("STOW-RS request p50 ms", "stow", "latency_ms", "p50", ratio=True),
        row("STOW-RS body MB/s sent", "stow", "upload_mb_per_s", ratio=True),
        row("STOW-RS server CPU ms / instance", "stow", "server_cpu_ms_per_instance", ratio=True),
        row("STOW-RS wrk CPU ms / instance", "stow", "client_cpu_ms_per_instance"),
        row("QIDO-RS queries/s", "qido", "requests_per_s", ratio=True),
        row("QIDO-RS p50 ms", "qido", "latency_ms", "p50", ratio=True),
        row("QIDO-RS p99 ms", "qido", "latency_ms", "p99", ratio=True),
        row("QIDO-RS server CPU ms / query", "qido", "server_cpu_ms_per_request", ratio=True),
        row("QIDO-RS wrk CPU ms / query", "qido", "client_cpu_ms_per_request"),
        row("WADO-RS whole study MB/s", "wado", "mb_per_s", ratio=True),
        row("WADO-RS study p50 ms", "wado", "latency_ms", "p50", ratio=True),
        row("WADO-RS server CPU ms / study", "wado", "server_cpu_ms_per_request", ratio=True),
        row("WADO-RS wrk CPU ms / study", "wado", "client_cpu_ms_per_request"),
        row("WADO-RS single instance req/s", "wado_instance", "requests_per_s", ratio=True),
        row("WADO-RS instance p50 ms", "wado_instance", "latency_ms", "p50", ratio=True),
        row("WADO-RS instance p99 ms", "wado_instance", "latency_ms", "p99", ratio=True),
        row("WADO-RS server CPU ms / instance", "wado_instance", "server_cpu_ms_per_request",
            ratio=True),
        row("WADO-RS wrk CPU ms / instance", "wado_instance", "client_cpu_ms_per_request"),
        row(f"study metadata p50 ms ({results['args']['connections']} conns)", "metadata",
            "latency_ms", "p50", ratio=True),
        row("study metadata p99 ms", "metadata", "latency_ms", "p99", ratio=True),
        row("study metadata requests/s", "metadata", "requests_per_s", ratio=True),
        row("study metadata server CPU ms / request", "metadata", "server_cpu_ms_per_request", ratio=True),
        row("study metadata wrk CPU ms / request", "metadata", "client_cpu_ms_per_request"),
        row("study metadata p50 ms (1 conn)", "metadata_1c", "latency_ms", "p50", ratio=True),
        row("study metadata server CPU ms / request (1 conn)", "metadata_1c",
            "server_cpu_ms_per_request", ratio=True),
    ]
    if len(servers) == 2:
        for phase, label in (("metadata", f"{results['args']['connections']} connections"),
                             ("metadata_1c", "1 connection")):
            k, o = get("kastell", phase, "latency_ms", "p50"), get("orthanc", phase, "latency_ms", "p50")
            if k and o:
                verdict = "met" if k / o <= 0.25 else "not met"
                lines.append(f"\nStudy metadata p50, {label}: Kastell ÷ Orthanc = {k / o:.3f} "
                             f"(target ≤ 0.25: {verdict})")
    lines += ["", "Client headroom: CPU seconds over each phase (server / wrk / everything else on the machine)", "",
              "| Phase | " + " | ".join(servers) + " |", "|---" * (len(servers) + 1) + "|"]
    for phase in PHASES:
        cells = []
        for s in servers:
            p = ph[s].get(phase)
            cells.append("n/a" if not p else
                         f"{p['server_cpu_s']} / {p['client_cpu_s']} / {p['other_cpu_s']} "
                         f"(wrk ÷ server {fmt(p['client_to_server_cpu'])})")
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bin", default=load.default_bin(), help="Kastell binary (as in load.py)")
    p.add_argument("--orthanc", default=shutil.which("Orthanc") or "/usr/sbin/Orthanc")
    p.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk")
    p.add_argument("--servers", default="kastell,orthanc", help="comma list, run in this order")
    p.add_argument("--phases", default=",".join(PHASES), help="comma list, run in this order")
    p.add_argument("--duration", type=int, default=20, help="seconds per phase")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="wrk threads")
    p.add_argument("--wrk-timeout", type=int, default=30, help="wrk's per-request timeout (s)")
    p.add_argument("--instances", type=int, default=2000, help="corpus instances (QIDO/WADO/metadata)")
    p.add_argument("--studies", type=int, default=100)
    p.add_argument("--series-per-study", type=int, default=2)
    p.add_argument("--per-request", type=int, default=10, help="instances per STOW request")
    p.add_argument("--queries", type=int, default=400, help="distinct QIDO requests in the mix")
    p.add_argument("--settle", type=float, default=8.0,
                   help="seconds to wait after storing the corpus (Kastell's metadata warmer: 5 s)")
    p.add_argument("--wait-load", type=float, default=0.0,
                   help="first wait until the 1-minute load average is below this (0: do not wait)")
    p.add_argument("--wait-load-max", type=float, default=1800.0)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 3 s per phase, 200 instances over 10 studies, 80 queries")
    p.add_argument("--out", default="side_by_side.json")
    p.add_argument("--seed", type=int, default=20240601)
    load.add_run_args(p)
    a = p.parse_args(argv)
    if a.quick:
        a.duration, a.instances, a.studies, a.queries, a.settle = 3, 200, 10, 80, 6.0
    a.servers = [s for s in a.servers.split(",") if s]
    a.phases = [s for s in a.phases.split(",") if s]
    if set(a.servers) - {"kastell", "orthanc"} or set(a.phases) - set(PHASES):
        p.error(f"servers: kastell, orthanc; phases: {', '.join(PHASES)}")
    if a.per_request < 2:
        p.error("--per-request must be >= 2 (the STOW template has two series)")
    return a


def missing_tools(args) -> list[str]:
    out = []
    for label, path in (("wrk", args.wrk), ("Orthanc", args.orthanc if "orthanc" in args.servers else None)):
        if path and not (os.path.isfile(path) and os.access(path, os.X_OK)):
            out.append(f"{label} not found at {path}")
    if "orthanc" in args.servers and not os.path.isfile(ORTHANC_PLUGIN):
        out.append(f"Orthanc's DICOMweb plugin not found at {ORTHANC_PLUGIN}")
    if "kastell" in args.servers and not (os.path.isfile(args.bin) and os.access(args.bin, os.X_OK)):
        out.append(f"Kastell binary not found at {args.bin} (cargo build --release, or --bin)")
    return out


def wait_for_load(limit: float, max_wait: float) -> dict:
    t0 = time.monotonic()
    first = os.getloadavg()[0]
    while os.getloadavg()[0] >= limit and time.monotonic() - t0 < max_wait:
        log(f"load average {os.getloadavg()[0]:.2f} >= {limit}; waiting")
        time.sleep(30)
    return {"limit": limit, "first": first, "at_start": os.getloadavg()[0],
            "waited_s": round(time.monotonic() - t0), "reached": os.getloadavg()[0] < limit}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_tools(args)
    if missing:
        print("\n".join(missing) + f"\nInstall the tools with: {INSTALL_HINT}", file=sys.stderr)
        return 2

    def _term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, _term)

    results: dict = {"args": {k: v for k, v in vars(args).items()}, "servers": {}, "problems": []}
    if args.wait_load:
        results["wait_load"] = wait_for_load(args.wait_load, args.wait_load_max)
    results["meta"] = {
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_start": os.getloadavg(), "host": platform.node(), "platform": platform.platform(),
        "cpus": os.cpu_count(), "wrk": version_of([args.wrk, "--version"]),
    }
    work = tempfile.mkdtemp(prefix="kastell-side-", dir=args.data_root)
    rng = random.Random(args.seed)
    log(f"generating {args.instances} instances over {args.studies} studies")
    studies, files = load.generate_corpus(args.instances, args.studies, args.series_per_study, rng)
    queries = query_paths(studies, args.queries, args.seed + 1)
    boundary = "kastell-side-by-side-0123456789abcdef"
    template = stow_template(args.per_request, boundary)
    results["meta"]["corpus_bytes"] = sum(len(f) for _, f in files)
    results["meta"]["stow_body_bytes"] = len(template)

    rc = 0
    server = None
    try:
        for name in args.servers:
            sdir = os.path.join(work, name)
            os.makedirs(sdir)
            if name == "kastell":
                binary = os.path.join(work, "kastell-bin")  # a rebuild during the run changes nothing
                shutil.copy2(args.bin, binary)
                results["meta"]["kastell"] = {"bin": os.path.abspath(args.bin), "sha256": sha256_of(binary),
                                              "version": version_of([binary, "--version"])}
                server = load.Server(binary, os.path.join(sdir, "data"), os.path.join(sdir, "server.log"),
                                     args.startup_timeout)
                os.makedirs(server.data_dir)
                root = "/dicomweb"
            else:
                results["meta"]["orthanc"] = {"bin": args.orthanc,
                                              "version": version_of([args.orthanc, "--version"]),
                                              "plugin": ORTHANC_PLUGIN}
                server = Orthanc(args.orthanc, sdir, args.startup_timeout)
                root = "/dicom-web"
            try:
                res = run_server(args, name, server, root, studies, files, queries, template,
                                 boundary, work)
                results["servers"][name] = res
                results["problems"] += [f"{name}: {p}" for p in res["problems"]]
            finally:
                results["servers"].setdefault(name, {})["exit_code"] = server.stop()
                results["servers"][name]["log"] = server.log_path
    except KeyboardInterrupt as e:
        results["aborted"] = f"interrupted: {e}"
        rc = 130
    except Exception as e:
        log(f"ERROR: {e}")
        results["aborted"] = str(e)
        rc = 1
    results["meta"]["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    results["meta"]["loadavg_end"] = os.getloadavg()

    keep = args.keep_data or rc != 0 or results["problems"]
    if keep:
        log(f"work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    print(markdown(results))
    la0, la1 = results["meta"]["loadavg_start"], results["meta"]["loadavg_end"]
    print(f"\nload average (1/5/15 min) at start {la0[0]:.2f}/{la0[1]:.2f}/{la0[2]:.2f}, "
          f"at end {la1[0]:.2f}/{la1[1]:.2f}/{la1[2]:.2f}")
    for p in results["problems"]:
        print(f"  - {p}")
    if results.get("aborted"):
        print(f"Run aborted: {results['aborted']}")
    print(f"JSON written to {args.out}")
    return 3 if rc == 0 and results["problems"] else rc


if __name__ == "__main__":
    sys.exit(main())
