#!/usr/bin/env python3
"""Kastell bulk import bench (issue 7).

Writes a directory tree of DICOM files (the small instances of benches/load.py,
a tenth of them without the 128-byte preamble, plus a few large multi-frame
instances, a DICOMDIR and some text files), then times `kastell import`:

  1. a cold import into a fresh data directory, once per --jobs value;
  2. the same import again (resume: every file already present).

Throughput is wall-clock from outside, process start to exit (key and index
set-up included): instances per second and MB (10^6 bytes) of files per second.
Results are printed as a Markdown table and written to a JSON file.

    cargo build --release
    python3 benches/import.py                     # 2,000 small + 4 large instances
    python3 benches/import.py --instances 200 --large 1 --large-frames 20   # smoke

The binary is --bin, else $KASTELL_BIN, else the first existing release build (as
benches/load.py). See benches/README.md for the recorded figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import (  # noqa: E402  (the shared corpus helpers)
    MB,
    SeriesInfo,
    StudyInfo,
    base_dataset,
    default_bin,
    encode,
    generate_corpus,
    log,
    new_uid,
)


def large_instance(study: StudyInfo, series: SeriesInfo, number: int, frames: int,
                   size: int, nrng: np.random.Generator) -> bytes:
    """A native multi-frame instance of frames x size x size 16-bit pixels."""
    uid = new_uid()
    ds = base_dataset(study, series, uid, number, size, size)
    ds.NumberOfFrames = frames
    ds.PixelData = nrng.integers(0, 4096, size=(frames, size, size), dtype=np.uint16).tobytes()
    series.instances.append(uid)
    return encode(ds)


def write_tree(root: str, args: argparse.Namespace) -> dict:
    """Writes the corpus under root; returns what it holds."""
    rng = random.Random(args.seed)
    studies, files = generate_corpus(args.instances, args.studies, 2, rng)
    by_uid = {s.uid: s for s in studies}
    total = 0
    for i, (study_uid, data) in enumerate(files):
        study = by_uid[study_uid]
        folder = os.path.join(root, study.patient_id, study.accession)
        os.makedirs(folder, exist_ok=True)
        if i % 10 == 0:
            data = data[128:]  # no preamble: DICM first
        with open(os.path.join(folder, f"IM{i:06d}"), "wb") as f:
            f.write(data)
        total += len(data)
    nrng = np.random.default_rng(args.seed)
    large_bytes = 0
    for k in range(args.large):
        study = studies[k % len(studies)]
        data = large_instance(study, study.series[0], 1000 + k, args.large_frames,
                              args.large_size, nrng)
        with open(os.path.join(root, study.patient_id, study.accession, f"MF{k:03d}.dcm"), "wb") as f:
            f.write(data)
        large_bytes += len(data)
    # What a CD or an export also holds: skipped, not failed.
    with open(os.path.join(root, "DICOMDIR"), "wb") as f:
        f.write(b"\0" * 128 + b"DICM")
    for k in range(5):
        with open(os.path.join(root, f"README{k}.txt"), "w") as f:
            f.write("exported by the bench\n")
    return {
        "small_instances": len(files),
        "large_instances": args.large,
        "instances": len(files) + args.large,
        "bytes": total + large_bytes,
        "large_bytes": large_bytes,
    }


def count(summary: str, label: str) -> int:
    match = re.search(rf"^  {label}\s+(\d+)$", summary, re.MULTILINE)
    if not match:
        raise RuntimeError(f"no {label!r} in the summary:\n{summary}")
    return int(match.group(1))


def run_import(binary: str, source: str, data: str, jobs: int | None) -> dict:
    cmd = [binary, "import", source, "--data-dir", data]
    if jobs:
        cmd += ["--jobs", str(jobs)]
    env = dict(os.environ, RUST_LOG="warn")
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return {
        "seconds": seconds,
        "stored": count(done.stdout, "stored"),
        "already_present": count(done.stdout, "already present"),
        "skipped": count(done.stdout, "skipped"),
        "failed": count(done.stdout, "failed"),
        "summary": done.stdout.strip(),
    }


def rates(run: dict, corpus: dict) -> dict:
    return {
        "instances_per_s": round(corpus["instances"] / run["seconds"], 1),
        "mb_per_s": round(corpus["bytes"] / MB / run["seconds"], 1),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bin", default=default_bin(), help="kastell binary")
    p.add_argument("--instances", type=int, default=2000, help="small instances (64x64)")
    p.add_argument("--studies", type=int, default=100)
    p.add_argument("--large", type=int, default=4, help="large multi-frame instances")
    p.add_argument("--large-frames", type=int, default=100)
    p.add_argument("--large-size", type=int, default=512, help="rows = columns of a large frame")
    p.add_argument("--jobs", default="1,default",
                   help="comma-separated --jobs values of the cold runs ('default': one per core)")
    p.add_argument("--seed", type=int, default=20261129)
    p.add_argument("--data-root", default=None, help="parent of the temporary directories")
    p.add_argument("--out", default="import-results.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (os.path.isfile(args.bin) and os.access(args.bin, os.X_OK)):
        log(f"no kastell binary at {args.bin}: cargo build --release")
        return 1
    work = tempfile.mkdtemp(prefix="kastell-import-bench-", dir=args.data_root)
    try:
        source = os.path.join(work, "source")
        log(f"writing the corpus under {source}")
        corpus = write_tree(source, args)
        log(f"{corpus['instances']} instances, {corpus['bytes'] / MB:.1f} MB")
        runs = []
        data = None
        for jobs in args.jobs.split(","):
            jobs_n = None if jobs == "default" else int(jobs)
            data = os.path.join(work, f"data-{jobs}")
            run = run_import(args.bin, source, data, jobs_n)
            if run["stored"] != corpus["instances"] or run["failed"]:
                raise RuntimeError(f"the cold import stored {run['stored']}:\n{run['summary']}")
            runs.append({"run": "cold", "jobs": jobs, **run, **rates(run, corpus)})
            log(f"cold import, --jobs {jobs}: {run['seconds']:.1f} s")
        again = run_import(args.bin, source, data, None)
        if again["already_present"] != corpus["instances"] or again["stored"]:
            raise RuntimeError(f"the second import was not a no-op:\n{again['summary']}")
        runs.append({"run": "again (all present)", "jobs": "default", **again,
                     **rates(again, corpus)})
        results = {
            "corpus": corpus,
            "runs": runs,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "binary": args.bin,
        }
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
        print(f"\n{corpus['small_instances']} small + {corpus['large_instances']} large "
              f"instances, {corpus['bytes'] / MB:.1f} MB "
              f"({corpus['large_bytes'] / MB:.1f} MB in the large ones), {os.cpu_count()} CPUs\n")
        print("| run | --jobs | wall s | instances/s | MB/s |")
        print("|---|---|---|---|---|")
        for r in runs:
            print(f"| {r['run']} | {r['jobs']} | {r['seconds']:.1f} | {r['instances_per_s']} "
                  f"| {r['mb_per_s']} |")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
