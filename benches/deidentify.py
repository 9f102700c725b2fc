#!/usr/bin/env python3
"""Kastell de-identification bench (issue 17).

On the load bench's corpus (benches/load.py: 64x64 16-bit instances of CT, MR,
US, CR, DX and MG studies; plus a few large multi-frame instances as in
benches/import.py), measures de-identification throughput, instances per second
and MB (10^6 bytes) of input per second:

  1. files: `kastell deidentify TREE OUT --secret-file S --blank-region ...`
     (the ultrasound images are blanked rather than excluded), wall-clock from
     outside, process start to exit;
  2. export: the corpus imported (set-up), then `kastell export create` of every
     study through a project into an export store (DICOM files, DICOMDIR,
     manifest), wall-clock;
  3. retrieval: WADO-URI `anonymize=yes` against the same request without it,
     over the corpus's small instances, --clients concurrent clients: requests
     per second of each and the ratio (the cost of de-identifying on the fly).

    cargo build --release
    python3 benches/deidentify.py --out /tmp/deid.json
    python3 benches/deidentify.py --instances 200 --large 1 --large-frames 20   # quick

The binary is --bin, else $KASTELL_BIN, else the first existing release build (as
benches/load.py). Figures are recorded in benches/README.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pydicom

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
write_tree = __import__("import").write_tree  # benches/import.py: its corpus writer
from load import MB, Server, default_bin, log, run_pool, session  # noqa: E402


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return seconds, done.stdout + done.stderr


def rate(instances: int, nbytes: int, seconds: float) -> dict:
    return {"seconds": round(seconds, 2), "instances_per_s": round(instances / seconds, 1),
            "mb_per_s": round(nbytes / MB / seconds, 1)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bin", default=default_bin(), help="kastell binary")
    p.add_argument("--instances", type=int, default=2000, help="small instances")
    p.add_argument("--studies", type=int, default=40)
    p.add_argument("--large", type=int, default=4, help="large multi-frame instances")
    p.add_argument("--large-frames", type=int, default=100)
    p.add_argument("--large-size", type=int, default=512)
    p.add_argument("--clients", type=int, default=4, help="concurrent WADO-URI clients")
    p.add_argument("--requests", type=int, default=1000, help="WADO-URI requests per variant")
    p.add_argument("--seed", type=int, default=20261204)
    p.add_argument("--data-root", default=None, help="where the trees go (default: a temp dir)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = tempfile.mkdtemp(prefix="kastell-deid-bench-", dir=args.data_root)
    env = dict(os.environ, RUST_LOG="warn")
    results: dict = {"binary": args.bin, "machine": platform.platform(), "cpus": os.cpu_count()}
    try:
        tree = os.path.join(root, "tree")
        corpus = write_tree(tree, args)
        # write_tree adds a DICOMDIR stub and text files, which are not DICOM
        for junk in ["DICOMDIR"] + [f"README{k}.txt" for k in range(5)]:
            os.remove(os.path.join(tree, junk))
        results["corpus"] = corpus
        log(f"corpus: {corpus['instances']} instances, {corpus['bytes'] / MB:.1f} MB")
        secret = os.path.join(root, "secret")
        with open(secret, "wb") as f:
            f.write(os.urandom(32))
        os.chmod(secret, 0o600)

        # 1. Files.
        out = os.path.join(root, "out")
        seconds, text = timed([args.bin, "deidentify", tree, out, "--secret-file", secret,
                               "--blank-region", "0,0,64,16"], env)
        summary = text.splitlines()[0]
        done = int(re.match(r"(\d+) files de-identified", summary).group(1))
        if done != corpus["instances"]:
            raise RuntimeError(f"not every file was de-identified: {summary}")
        results["files"] = rate(done, corpus["bytes"], seconds)
        log(f"files: {results['files']}")

        # 2. Export of the imported corpus into an export store.
        data = os.path.join(root, "data")
        exports = os.path.join(root, "exports")
        env_export = dict(env, KASTELL__EXPORTS__OUT__URL=f"file://{exports}",
                          KASTELL__EXPORTS__OUT__LOCATION__COUNTRY="DE",
                          KASTELL__EXPORTS__OUT__LOCATION__FOREIGN_ACCESS_LAW="false")
        timed([args.bin, "import", tree, "--data-dir", data], env)
        # The research project: WADO-URI anonymize=yes goes through it too.
        timed([args.bin, "projects", "create", "bench", "--tenant", "default", "--blank-region",
               "0,0,64,16", "--reidentification", "audited", "--research", "--data-dir", data],
              env_export)
        seconds, text = timed([args.bin, "export", "create", "--tenant", "default", "--project",
                               "bench", "--to", "export:out", "--query", "", "--data-dir", data],
                              env_export)
        match = re.search(r"(\d+) of (\d+) done, (\d+) excluded, (\d+) failed", text)
        if not match or match.group(1) != match.group(2):
            raise RuntimeError(f"the export did not finish cleanly:\n{text}")
        results["export"] = rate(int(match.group(1)), corpus["bytes"], seconds)
        log(f"export: {results['export']}")

        # 3. WADO-URI with and without anonymize=yes.
        server = Server(args.bin, data, os.path.join(root, "server.log"), 60)
        server.start()
        try:
            targets = []
            for dirpath, _, names in os.walk(tree):
                for name in sorted(names):
                    if name.startswith("IM"):
                        with open(os.path.join(dirpath, name), "rb") as f:
                            raw = f.read()
                        if raw[:4] == b"DICM":  # written without its preamble
                            raw = b"\0" * 128 + raw
                        ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
                        targets.append((ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                        ds.SOPInstanceUID))
            targets = (targets * (args.requests // max(1, len(targets)) + 1))[:args.requests]
            for variant, extra in (("plain", {}), ("anonymize", {"anonymize": "yes"})):
                http = session()

                def get(t, http=http, extra=extra):
                    params = {"requestType": "WADO", "studyUID": t[0], "seriesUID": t[1],
                              "objectUID": t[2], "contentType": "application/dicom", **extra}
                    r = http.get(server.base + "/wado", params=params, timeout=60)
                    if r.status_code != 200:
                        raise RuntimeError(f"{variant}: {r.status_code} {r.text[:200]}")

                get(targets[0])
                started = time.monotonic()
                run_pool(get, targets, args.clients)
                seconds = time.monotonic() - started
                results[f"wado_uri_{variant}"] = {"requests": len(targets),
                                                  "requests_per_s": round(len(targets) / seconds, 1)}
                log(f"wado-uri {variant}: {results[f'wado_uri_{variant}']}")
            results["anonymize_ratio"] = round(results["wado_uri_anonymize"]["requests_per_s"]
                                               / results["wado_uri_plain"]["requests_per_s"], 2)
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("| what | instances/s | MB/s |\n|---|---|---|")
    for key in ("files", "export"):
        print(f"| {key} | {results[key]['instances_per_s']} | {results[key]['mb_per_s']} |")
    print(f"\nWADO-URI: plain {results['wado_uri_plain']['requests_per_s']} req/s, anonymize=yes "
          f"{results['wado_uri_anonymize']['requests_per_s']} req/s "
          f"(ratio {results['anonymize_ratio']})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
