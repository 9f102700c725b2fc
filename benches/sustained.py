#!/usr/bin/env python3
"""Sustained STOW-RS ingest into a large index, minute by minute (issue 18).

Fills the index with `kastell generate` (default 1,000,000 instances: 100,000
studies x 2 series x 5 instances), starts Kastell on it, then stores new studies
with wrk (benches/wrk/stow.lua: every request a new study of --per-request
instances) for --minutes, one wrk run per minute so that each minute has its own
throughput and latency figures. The numbering goes on from slice to slice, so no
request stores a study again. Python is never on the measured path.

    python3 benches/sustained.py                                   # SQLite, files, 8 connections
    python3 benches/sustained.py --connections 32
    python3 benches/sustained.py --index-url postgres://postgres@127.0.0.1:5432/sustained
    python3 benches/sustained.py --blob-url s3://bucket/prefix     # with AWS_* set (moto)

It reports, per minute: instances/s, request latency p50/p99/max, server CPU and
RSS; and the issue's checks: the last minute's rate as a share of the first's
(target >= 90%) and the longest request (target < 1 s at 32 connections). After
the run it looks up a sample of the studies each minute stored: each must hold
its instances. See benches/README.md, "Sustained ingest".
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402
import side_by_side as sbs  # noqa: E402
from load import DICOM_JSON, MB, log, r2, stow_content_type  # noqa: E402

BOUNDARY = "kastell-sustained-0123456789abcdef"
# Request numbers of minute k start at k * SLICE_STEP (stow.lua's FIRST): far more
# than a minute can send, and 99 minutes stay within the template's 8 digits.
SLICE_STEP = 1_000_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bin", default=load.default_bin(), help="Kastell binary (as in load.py)")
    p.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk")
    p.add_argument("--minutes", type=int, default=10)
    p.add_argument("--slice", type=int, default=60, help="seconds per wrk run (one row each)")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="wrk threads")
    p.add_argument("--wrk-timeout", type=int, default=30, help="wrk's per-request timeout (s)")
    p.add_argument("--per-request", type=int, default=10, help="instances per STOW request")
    p.add_argument("--prefill-studies", type=int, default=100_000,
                   help="studies kastell generate puts in the index first (0: none)")
    p.add_argument("--series-per-study", type=int, default=2)
    p.add_argument("--instances-per-series", type=int, default=5)
    p.add_argument("--index-url", help="index URL (default: SQLite in the data directory); "
                   "a PostgreSQL database is dropped and created afresh, so its name must "
                   "hold 'bench' or 'sustained'")
    p.add_argument("--blob-url", help="blob store URL (default: files in the data directory)")
    p.add_argument("--data-root", default=None, help="where the work directory goes")
    p.add_argument("--startup-timeout", type=float, default=120.0)
    p.add_argument("--timeout", type=float, default=60.0, help="checks' HTTP timeout (s)")
    p.add_argument("--keep-data", action="store_true")
    p.add_argument("--out", default="sustained.json")
    args = p.parse_args(argv)
    args.duration = args.slice  # what sbs.run_wrk reads
    return args


def fresh_postgres_database(url: str) -> None:
    """Drops and creates the database an index URL names (psql on the server's
    `postgres` database). Only a database whose name says it is a bench's
    (holds "bench" or "sustained"): a mistyped URL must not drop an archive."""
    base, _, name = url.rpartition("/")
    name = name.split("?")[0]
    if not re.fullmatch(r"[a-z0-9_]*(bench|sustained)[a-z0-9_]*", name):
        raise SystemExit(f"refusing to drop database {name!r}: name a bench database "
                         "(its name holding 'bench' or 'sustained'), e.g. .../sustained")
    for sql in (f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}"):
        subprocess.run(["psql", f"{base}/postgres", "-qc", sql], check=True)


def server_args(args) -> list[str]:
    extra = []
    if args.index_url:
        extra += ["--index-url", args.index_url]
    if args.blob_url:
        extra += ["--blob-url", args.blob_url]
    return extra


def prefill(args, data_dir: str, log_path: str) -> dict:
    studies = args.prefill_studies
    if studies <= 0:
        return {"instances": 0}
    cmd = [args.bin, "generate", "--studies", str(studies),
           "--series-per-study", str(args.series_per_study),
           "--instances-per-series", str(args.instances_per_series),
           "--seed", "1", "--data-dir", data_dir] + server_args(args)
    log("prefilling: " + " ".join(cmd[1:]))
    t0 = time.monotonic()
    with open(log_path, "ab") as out:
        rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                            preexec_fn=load._pdeathsig).returncode
    if rc != 0:
        raise RuntimeError(f"kastell generate failed ({rc}); see {log_path}")
    instances = studies * args.series_per_study * args.instances_per_series
    took = time.monotonic() - t0
    log(f"prefilled {instances} instances in {took:.0f} s")
    return {"instances": instances, "seconds": r2(took, 1)}


def check_slice(base: str, first: int, good: int, per_request: int, timeout: float) -> list[str]:
    """Studies of a minute, looked up afterwards: each must hold its instances.
    wrk spends the first number of thread 0 on checking the script."""
    problems = []
    for n in sorted({first + 2, first + 3, first + max(3, good // 2)}):
        uid = f"2.25.9182736450{n:08d}"
        r = load.session().get(f"{base}/dicomweb/studies/{uid}/instances",
                               headers={"Accept": DICOM_JSON}, timeout=timeout)
        got = len(r.json()) if r.status_code == 200 else 0
        if got != per_request:
            problems.append(f"study {uid} holds {got} instances (HTTP {r.status_code}), "
                            f"expected {per_request}")
    return problems


def markdown(results: dict) -> str:
    rows = ["| minute | instances/s | p50 ms | p99 ms | max ms | server cores | RSS MiB |",
            "|---|---|---|---|---|---|---|"]
    for m in results["minutes"]:
        lat = m["latency_ms"]
        rows.append(f"| {m['minute']} | {m['instances_per_s']} | {lat['p50']} | {lat['p99']} | "
                    f"{lat['max']} | {m['server_cores']} | {m['rss_mib']} |")
    s = results["summary"]
    rows.append("")
    rows.append(f"last minute / first minute: {s['last_over_first']}; longest request "
                f"{s['max_latency_ms']} ms; {s['instances_stored']} instances stored "
                f"over {s['minutes']} minutes into an index of {s['prefilled_instances']}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not os.path.exists(args.wrk):
        print(f"wrk not found: {sbs.INSTALL_HINT}", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="kastell-sustained-", dir=args.data_root)
    data_dir = os.path.join(work, "data")
    os.makedirs(data_dir)
    log_path = os.path.join(work, "server.log")
    binary = os.path.join(work, "kastell-bin")  # a rebuild during the run changes nothing
    shutil.copy2(args.bin, binary)
    args.bin = binary
    if args.index_url and load_is_postgres(args.index_url):
        fresh_postgres_database(args.index_url)
    results: dict = {
        "args": {k: v for k, v in vars(args).items()},
        "meta": {"started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                 "kastell_sha256": sbs.sha256_of(binary), "cpus": os.cpu_count(),
                 "wrk": sbs.version_of([args.wrk, "--version"])},
        "minutes": [], "problems": [],
    }
    results["prefill"] = prefill(args, data_dir, log_path)
    template = sbs.stow_template(args.per_request, BOUNDARY)
    template_path = os.path.join(work, "stow-template.bin")
    with open(template_path, "wb") as f:
        f.write(template)
    server = load.Server(binary, data_dir, log_path, args.startup_timeout)
    server.extra_args = server_args(args)
    rc = 0
    try:
        server.start()
        stored = 0
        for minute in range(args.minutes):
            first = minute * SLICE_STEP
            res = sbs.run_wrk(args, server.pid, server.base, "stow.lua",
                              [template_path, "/dicomweb/studies", stow_content_type(BOUNDARY),
                               str(args.threads), str(first)],
                              args.connections, args.threads)
            c = res["counters"]
            res["minute"] = minute + 1
            res["instances_per_s"] = r2(c["ok_instances"] / res["duration_s"], 1)
            res["rss_mib"] = load.kib_to_mib(load.proc_status(server.pid).get("VmRSS"))
            stored += c["ok_instances"]
            if c["bad_responses"] or res.get("problem"):
                results["problems"].append(f"minute {minute + 1}: {c['bad_responses']} bad "
                                           f"responses ({c['first_bad']}); {res.get('problem')}")
            results["problems"] += [f"minute {minute + 1}: {p}" for p in
                                    check_slice(server.base, first, c["ok_responses"],
                                                args.per_request, args.timeout)]
            results["minutes"].append(res)
            log(f"minute {minute + 1}: {res['instances_per_s']} instances/s, p99 "
                f"{res['latency_ms']['p99']} ms, max {res['latency_ms']['max']} ms, "
                f"{res['server_cores']} cores, RSS {res['rss_mib']} MiB")
            if not server.alive():
                raise RuntimeError(f"the server died\n{server.log_tail()}")
        results["stages_ms"] = sbs.stow_stages(server.base)
        minutes = results["minutes"]
        results["summary"] = {
            "minutes": len(minutes),
            "prefilled_instances": results["prefill"]["instances"],
            "instances_stored": stored,
            "first_minute_instances_per_s": minutes[0]["instances_per_s"],
            "last_minute_instances_per_s": minutes[-1]["instances_per_s"],
            "last_over_first": r2(minutes[-1]["instances_per_s"] / minutes[0]["instances_per_s"], 3)
            if minutes[0]["instances_per_s"] else None,
            "max_latency_ms": max(m["latency_ms"]["max"] for m in minutes),
            "worst_p99_ms": max(m["latency_ms"]["p99"] for m in minutes),
        }
    except KeyboardInterrupt as e:
        results["aborted"] = f"interrupted: {e}"
        rc = 130
    except Exception as e:  # noqa: BLE001 (report whatever stopped the run)
        log(f"ERROR: {e}")
        results["aborted"] = str(e)
        rc = 1
    finally:
        results["exit_code"] = server.stop()
        results["meta"]["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    if "summary" in results:
        print(markdown(results))
    for p in results["problems"]:
        print(f"PROBLEM: {p}", file=sys.stderr)
    if args.keep_data or rc or results["problems"]:
        log(f"work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return rc or (1 if results["problems"] else 0)


def load_is_postgres(url: str) -> bool:
    return url.startswith(("postgres://", "postgresql://"))


if __name__ == "__main__":
    sys.exit(main())
