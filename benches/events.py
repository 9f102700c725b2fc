#!/usr/bin/env python3
"""What publishing events costs STOW, and how long an event takes to arrive (issue 14).

1. Ingest with publishing off and on: the same compiled client as the side-by-side
   bench (wrk with benches/wrk/stow.lua: every request a new study of
   --per-request instances) against a fresh Kastell each run, without a broker
   ("off") and with a private NATS JetStream server on loopback ("on"); runs
   alternate off/on --rounds times so that drift of the shared machine falls on
   both. After each "on" run the bench waits until the stream holds one event per
   stored instance (the outbox caught up) and records how long that took.
2. Event latency: with the broker, --latency-samples STOW requests of one instance,
   one after the other; a NATS subscriber on the events' subjects notes when each
   instance's `created` event arrives. The latency is that moment minus the moment
   the STOW response was received (negative: the event came first — the change
   commits before the response is written).

    apt-get install -y wrk nats-server
    python3 benches/events.py --quick        # about 1 min
    python3 benches/events.py                # 3 rounds of 20 s each way, about 4 min

Kastell is --bin, else chosen as in load.py ($KASTELL_BIN, then release builds).
nats-py is installed with pip when missing. Figures go to benches/README.md,
"Events: publishing cost and latency (issue 14)".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import requests

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402
import side_by_side as sbs  # noqa: E402
from load import DICOM_JSON, log, r2  # noqa: E402

STREAM = "KASTELL_EVENTS"
SUBJECTS = "kastell.events.>"


def ensure_nats_py():
    try:
        import nats  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--root-user-action=ignore", "nats-py"], check=True)


class Nats:
    """A private nats-server with JetStream on a free loopback port."""

    def __init__(self, work: str):
        self.port = load.free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.store = os.path.join(work, "nats")
        self.proc: subprocess.Popen | None = None

    def start(self):
        os.makedirs(self.store, exist_ok=True)
        self.proc = subprocess.Popen(["nats-server", "-js", "-sd", self.store, "-a", "127.0.0.1",
                                      "-p", str(self.port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=load._pdeathsig)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                import socket
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nats-server did not start")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


async def stream_messages(url: str) -> int:
    import nats
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(STREAM)
        return info.state.messages
    except Exception:  # the stream is made by Kastell's first publish
        return 0
    finally:
        await nc.close()


def start_kastell(args, work: str, name: str, env: dict[str, str]) -> load.Server:
    data = os.path.join(work, name)
    os.environ.update(env)
    try:
        server = load.Server(args.bin, data, os.path.join(work, f"{name}.log"), 30)
        server.start()
    finally:
        for key in env:
            os.environ.pop(key, None)
    return server


def ingest_run(args, work: str, name: str, nats: Nats | None, template: bytes, boundary: str) -> dict:
    env = {"KASTELL__EVENTS__STABLE_AFTER_SECS": "0"}
    if nats:
        env["KASTELL__EVENTS__NATS__URL"] = nats.url
    server = start_kastell(args, work, name, env)
    try:
        body_file = os.path.join(work, "stow-body.bin")
        with open(body_file, "wb") as f:
            f.write(template)
        before = asyncio.run(stream_messages(nats.url)) if nats else 0
        res = sbs.run_wrk(args, server.pid, server.base + "/dicomweb", "stow.lua",
                          [body_file, "/dicomweb/studies", load.stow_content_type(boundary), str(args.threads)],
                          args.connections, args.threads)
        stored = res["counters"].get("ok_instances", 0)
        res["instances_per_s"] = r2(stored / res["duration_s"], 1)
        res["server_cpu_ms_per_instance"] = r2(1000 * res["server_cpu_s"] / stored, 3) if stored else None
        if nats:
            # The outbox catches up: one event per stored instance.
            t0 = time.monotonic()
            while True:
                published = asyncio.run(stream_messages(nats.url)) - before
                if published >= stored or time.monotonic() - t0 > 120:
                    break
                time.sleep(0.1)
            res["events_published"] = published
            res["catch_up_s"] = r2(time.monotonic() - t0, 2)
            if published != stored:
                res["problem"] = f"{published} events for {stored} stored instances"
        return res
    finally:
        server.stop()


class Subscriber(threading.Thread):
    """A NATS subscriber on the events' subjects, in its own event loop: the time
    each instance's `created` event arrived, by SOP Instance UID."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url = url
        self.arrived: dict[str, float] = {}
        self.ready = threading.Event()
        self.stop_flag = False

    def run(self):
        asyncio.run(self.main())

    async def main(self):
        import nats
        nc = await nats.connect(self.url)

        async def on_message(msg):
            now = time.monotonic()
            event = json.loads(msg.data)
            sop = event.get("data", {}).get("sopInstanceUID")
            if sop and event.get("type") == "org.kastell.instance.created":
                self.arrived.setdefault(sop, now)

        await nc.subscribe(SUBJECTS, cb=on_message)
        await nc.flush()
        self.ready.set()
        while not self.stop_flag:
            await asyncio.sleep(0.05)
        await nc.close()


def latency_run(args, work: str, nats: Nats) -> dict:
    server = start_kastell(args, work, "latency", {"KASTELL__EVENTS__STABLE_AFTER_SECS": "0",
                                                     "KASTELL__EVENTS__NATS__URL": nats.url})
    subscriber = Subscriber(nats.url)
    subscriber.start()
    subscriber.ready.wait(10)
    try:
        session = requests.Session()
        answered: dict[str, float] = {}
        boundary = "kastell-events-bench"
        for i in range(args.latency_samples):
            study = load.StudyInfo(uid=load.new_uid(), patient_id=f"EV{i}", patient_name="Event^Bench",
                                   date="20240115", accession=f"EV{i:06d}")
            series = load.SeriesInfo(uid=load.new_uid(), modality="CT", number=1)
            study.series.append(series)
            sop = load.new_uid()
            ds = load.base_dataset(study, series, sop, 1, 64, 64)
            ds.PixelData = bytes(64 * 64 * 2)
            body = load.multipart_body([load.encode(ds)], boundary)
            r = session.post(server.base + "/dicomweb/studies", data=body, timeout=30,
                             headers={"Content-Type": load.stow_content_type(boundary), "Accept": DICOM_JSON})
            answered[sop] = time.monotonic()
            if r.status_code != 200:
                raise RuntimeError(f"STOW answered {r.status_code}: {r.text[:300]}")
            time.sleep(args.latency_gap_ms / 1000)
        deadline = time.monotonic() + 30
        while len([s for s in answered if s in subscriber.arrived]) < len(answered) and time.monotonic() < deadline:
            time.sleep(0.05)
        lat = sorted(1000 * (subscriber.arrived[s] - t) for s, t in answered.items() if s in subscriber.arrived)
        return {
            "samples": len(answered), "received": len(lat),
            "latency_ms": {"p50": r2(load.percentile(lat, 50), 2), "p90": r2(load.percentile(lat, 90), 2),
                           "p99": r2(load.percentile(lat, 99), 2), "max": r2(max(lat), 2) if lat else None,
                           "min": r2(min(lat), 2) if lat else None},
            "event_first_share": r2(sum(1 for v in lat if v < 0) / len(lat), 3) if lat else None,
        }
    finally:
        subscriber.stop_flag = True
        server.stop()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=load.default_bin())
    p.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    p.add_argument("--duration", type=int, default=20, help="seconds of each ingest run")
    p.add_argument("--wrk-timeout", type=int, default=30)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--per-request", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3, help="off/on pairs")
    p.add_argument("--latency-samples", type=int, default=300)
    p.add_argument("--latency-gap-ms", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="1 round of 8 s, 60 latency samples")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.rounds, args.latency_samples = 8, 1, 60
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    for tool in (args.wrk, "nats-server"):
        if not shutil.which(tool):
            print(f"{tool} is missing: apt-get install -y wrk nats-server", file=sys.stderr)
            return 2
    ensure_nats_py()
    work = tempfile.mkdtemp(prefix="kastell-events-bench-")
    boundary = "kastell-events-bench"
    template = sbs.stow_template(args.per_request, boundary)
    nats = Nats(work)
    nats.start()
    results: dict = {"binary": args.bin, "args": vars(args), "loadavg_before": os.getloadavg(),
                     "runs": []}
    try:
        for round_no in range(args.rounds):
            for mode in ("off", "on"):
                log(f"round {round_no + 1}: publishing {mode}")
                res = ingest_run(args, work, f"{mode}-{round_no}", nats if mode == "on" else None,
                                 template, boundary)
                res["mode"] = mode
                results["runs"].append(res)
                log(f"  {res['instances_per_s']} instances/s, p50 {res['latency_ms'].get('p50')} ms, "
                    f"p99 {res['latency_ms'].get('p99')} ms, {res['server_cpu_ms_per_instance']} ms CPU "
                    f"per instance" + (f", caught up in {res['catch_up_s']} s" if mode == "on" else ""))
        for mode in ("off", "on"):
            runs = [r for r in results["runs"] if r["mode"] == mode]
            results[mode] = {
                "instances_per_s_median": r2(statistics.median(r["instances_per_s"] for r in runs), 1),
                "cpu_ms_per_instance_median": r2(statistics.median(r["server_cpu_ms_per_instance"] for r in runs), 3),
                "p99_ms_median": r2(statistics.median(r["latency_ms"]["p99"] for r in runs), 1),
            }
        pairs = [on["instances_per_s"] / off["instances_per_s"]
                 for off, on in zip(results["runs"][::2], results["runs"][1::2])]
        results["on_over_off_throughput"] = [r2(p, 3) for p in pairs]
        results["cost_percent_median"] = r2(100 * (1 - statistics.median(pairs)), 1)
        log(f"publishing costs {results['cost_percent_median']} % of STOW throughput (median of pairs "
            f"{results['on_over_off_throughput']})")
        log("event latency")
        results["latency"] = latency_run(args, work, nats)
        log(f"  {results['latency']}")
    finally:
        nats.stop()
        results["loadavg_after"] = os.getloadavg()
    text = json.dumps(results, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)
    problems = [r["problem"] for r in results["runs"] if r.get("problem")]
    for problem in problems:
        print("PROBLEM:", problem, file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
