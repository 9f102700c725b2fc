#!/usr/bin/env python3
"""Kastell lifecycle bench (issue 15): a move pass over many objects, and the
read overhead of a study whose instances sit in two stores.

Fills a fresh data directory (embedded defaults: SQLite index, encrypted blobs
in local files) through STOW-RS with --objects small instances (64x64 16-bit,
modality OT, 10 per request), plus two comparison studies of 2 x --study-size
instances: study A with an OT series and a CT series, study B with a CT and a
CR series. A second store `cold` (a directory) and one rule, "OT older than 30
days goes to cold", are configured; then, with the lifecycle clock 60 days on:

  1. `kastell lifecycle plan` (dry run) and `kastell lifecycle run` (one pass)
     as separate processes: wall time, objects/s, MB/s and the pass's peak RSS
     (/usr/bin/time); the pass moves every OT instance (the corpus and A's OT
     series), copying each, reading the copy back whole (decrypting it),
     switching the index and deleting the old object;
  2. whole-study WADO-RS of A (half its instances in each store) and B (all in
     the primary), --reads times each, alternating: median and p90 ms.

    cargo build --release
    python3 benches/lifecycle.py --bin $CARGO_TARGET_DIR/release/kastell              # 100,000 objects
    python3 benches/lifecycle.py --objects 2000 --reads 10                             # quick try

See benches/README.md ("Lifecycle") for the recorded figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import (  # noqa: E402  (the shared corpus helpers)
    STOW_ACCEPT,
    Server,
    SeriesInfo,
    StudyInfo,
    base_dataset,
    default_bin,
    encode,
    log,
    multipart_body,
    percentile,
    r2,
    run_pool,
    session,
    stow_content_type,
)

import numpy as np  # noqa: E402

UID_ROOT = "1.2.826.0.1.3680043.10.1"


def uid(kind: int, n: int) -> str:
    """Fixed-length UIDs (no leading zero in a component), so one encoded file
    is a template for a series."""
    return f"{UID_ROOT}.{kind}.{10**9 + n}"


def series_files(study: StudyInfo, series: SeriesInfo, count: int, first: int,
                 rng: np.random.Generator) -> list[bytes]:
    """`count` instances of one series: encoded once, the SOP Instance UID
    replaced in the bytes for the others (same length)."""
    template_uid = uid(3, first)
    ds = base_dataset(study, series, template_uid, 1, 64, 64)
    ds.PixelData = rng.integers(0, 4096, size=(64, 64), dtype=np.uint16).tobytes()
    template = encode(ds)
    files = []
    for k in range(count):
        sop = uid(3, first + k)
        files.append(template.replace(template_uid.encode(), sop.encode()))
        series.instances.append(sop)
    return files


def corpus(objects: int, study_size: int) -> tuple[list[bytes], StudyInfo, StudyInfo]:
    rng = np.random.default_rng(15)
    files: list[bytes] = []
    next_sop = 0
    per_study = 50
    for s in range((objects + per_study - 1) // per_study):
        study = StudyInfo(uid=uid(1, s), patient_id=f"LC{s:06d}", patient_name="Bench^Lifecycle",
                          date="20240115", accession=f"LC{s:07d}")
        series = SeriesInfo(uid=uid(2, s), modality="OT", number=1)
        study.series.append(series)
        count = min(per_study, objects - s * per_study)
        files += series_files(study, series, count, next_sop, rng)
        next_sop += count

    def comparison(n: int, modalities: tuple[str, str]) -> StudyInfo:
        nonlocal next_sop
        study = StudyInfo(uid=uid(1, 900_000 + n), patient_id=f"CMP{n}", patient_name="Bench^Compare",
                          date="20240115", accession=f"CMP{n}")
        for k, modality in enumerate(modalities):
            series = SeriesInfo(uid=uid(2, 900_000 + 10 * n + k), modality=modality, number=k + 1)
            study.series.append(series)
            files.extend(series_files(study, series, study_size, next_sop, rng))
            next_sop += study_size
        return study

    two_stores = comparison(1, ("OT", "CT"))
    one_store = comparison(2, ("CT", "CR"))
    return files, two_stores, one_store


def stow(base: str, files: list[bytes], clients: int) -> float:
    url = base + "/dicomweb/studies"
    batches = [files[i:i + 10] for i in range(0, len(files), 10)]
    failures = []

    def send(batch: list[bytes]) -> None:
        boundary = "kastell-bench-" + uuid.uuid4().hex
        r = session().post(url, data=multipart_body(batch, boundary), timeout=120, headers={
            "Content-Type": stow_content_type(boundary), "Accept": STOW_ACCEPT})
        if r.status_code != 200:
            failures.append(r.status_code)

    t0 = time.perf_counter()
    run_pool(send, batches, clients)
    if failures:
        raise SystemExit(f"{len(failures)} STOW requests failed: {failures[:5]}")
    return time.perf_counter() - t0


def kastell(binary: str, data_dir: str, args: list[str], env: dict) -> tuple[float, int, str]:
    """Runs a kastell command under /usr/bin/time: wall seconds, peak RSS
    (KiB) and its standard output."""
    rss_file = os.path.join(data_dir, "..", "rss.txt")
    cmd = ["/usr/bin/time", "-f", "%M", "-o", rss_file, binary, *args, "--data-dir", data_dir]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    with open(rss_file) as f:
        rss = int(f.read().split()[-1])
    return wall, rss, done.stdout


def read_study(base: str, study: StudyInfo) -> float:
    t0 = time.perf_counter()
    r = session().get(f"{base}/dicomweb/studies/{study.uid}", timeout=120, headers={
        "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    r.raise_for_status()
    _ = r.content
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", default=default_bin())
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--study-size", type=int, default=50, help="instances per series of the comparison studies")
    parser.add_argument("--reads", type=int, default=30)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    root = tempfile.mkdtemp(prefix="kastell-lifecycle-bench-")
    try:
        data_dir = os.path.join(root, "data")
        config = os.path.join(root, "kastell.toml")
        with open(config, "w") as f:
            f.write(f'[storage.stores.cold]\nurl = "file://{root}/cold"\n'
                    '[[lifecycle.moves]]\nname = "cool OT"\nmin_age_days = 30\nmodalities = ["OT"]\nto = "cold"\n'
                    '[lifecycle.pass]\nmax_moves = 10000000\n')
        env = dict(os.environ, KASTELL_CONFIG=config, RUST_LOG="warn")
        later = (dt.date.today() + dt.timedelta(days=60)).isoformat()

        log(f"generating {args.objects} objects and two comparison studies")
        files, two_stores, one_store = corpus(args.objects, args.study_size)
        total_bytes = sum(len(f) for f in files)
        os.environ["KASTELL_CONFIG"] = config
        server = Server(args.bin, data_dir, os.path.join(root, "server.log"), 60)
        server.start()
        try:
            log(f"STOW of {len(files)} instances ({total_bytes / 1e6:.0f} MB), {args.clients} clients")
            stow_s = stow(server.base, files, args.clients)
            log(f"stored in {stow_s:.1f} s")
        finally:
            server.stop()

        moved_env = dict(env, KASTELL__LIFECYCLE__NOW=later)
        plan_s, plan_rss, plan_out = kastell(args.bin, data_dir, ["lifecycle", "plan", "--format", "json"], moved_env)
        plan = json.loads(plan_out)
        planned = sum(line["objects"] for line in plan["lines"])
        log(f"plan: {planned} objects in {plan_s:.1f} s, peak RSS {plan_rss / 1024:.0f} MiB")
        pass_s, pass_rss, pass_out = kastell(args.bin, data_dir, ["lifecycle", "run", "--format", "json"], moved_env)
        report = json.loads(pass_out)
        if report["failed"] or report["moved"] != planned:
            raise SystemExit(f"the pass moved {report['moved']} of {planned}: {report['failed'][:5]}")
        log(f"pass: {report['moved']} objects, {report['bytes'] / 1e6:.0f} MB in {pass_s:.1f} s, "
            f"peak RSS {pass_rss / 1024:.0f} MiB")

        server = Server(args.bin, data_dir, os.path.join(root, "server2.log"), 60)
        server.start()
        try:
            for study in (two_stores, one_store):  # warm-up: headers, connections
                read_study(server.base, study)
            two, one = [], []
            for _ in range(args.reads):
                two.append(read_study(server.base, two_stores))
                one.append(read_study(server.base, one_store))
        finally:
            server.stop()

        result = {
            "objects": args.objects,
            "stored_instances": len(files),
            "stow_s": r2(stow_s, 1),
            "plan": {"objects": planned, "wall_s": r2(plan_s, 2), "peak_rss_mib": r2(plan_rss / 1024, 1)},
            "pass": {
                "moved": report["moved"],
                "bytes": report["bytes"],
                "wall_s": r2(pass_s, 2),
                "objects_per_s": r2(report["moved"] / pass_s, 1),
                "mb_per_s": r2(report["bytes"] / 1e6 / pass_s, 2),
                "peak_rss_mib": r2(pass_rss / 1024, 1),
            },
            "study_read_ms": {
                "instances_per_study": 2 * args.study_size,
                "two_stores_median": r2(statistics.median(two)),
                "two_stores_p90": r2(percentile(two, 90)),
                "one_store_median": r2(statistics.median(one)),
                "one_store_p90": r2(percentile(one, 90)),
                "overhead_median_pct": r2((statistics.median(two) / statistics.median(one) - 1) * 100, 1),
            },
            "load_average_at_end": os.getloadavg(),
        }
        print(json.dumps(result, indent=2))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=2)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
