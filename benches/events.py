#!/usr/bin/env python3
"""Kastell events bench (issue 14): what publishing to NATS JetStream costs STOW,
and how long an event takes from the STOW response to a subscriber.

Starts a private `nats-server -js` (Debian package) on loopback, then for each
round a fresh Kastell server, alternately without a broker ("off") and with
`events.nats.url` set ("on": every change published as a CloudEvent into the
events stream, acknowledged by JetStream), and STOWs the same corpus (the small
64x64 instances of benches/load.py, one instance per request, --clients
concurrent requests). Stable-study announcements are off in both (no jobs run),
so the difference is the publishing alone.

Figures per round: wall-clock instances/s, and the server's CPU time per
instance (user + system from /proc, which a loaded machine distorts less).
With the broker on, a core NATS subscription on `kastell.events.>` (a minimal
NATS client below, no dependency) timestamps each `created` event; the latency
is its arrival minus the end of the STOW response that stored the instance
(negative when the event arrives first: it is published after the commit, which
precedes the response).

    cargo build --release
    python3 benches/events.py --bin $CARGO_TARGET_DIR/release/kastell
    python3 benches/events.py --instances 200 --rounds 1     # smoke

See benches/README.md ("Events") for the recorded figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import (  # noqa: E402  (the shared corpus and server helpers)
    STOW_ACCEPT,
    Server,
    default_bin,
    free_port,
    generate_corpus,
    log,
    multipart_body,
    percentile,
    r2,
    run_pool,
    session,
    stow_content_type,
)


class Subscriber(threading.Thread):
    """A core NATS subscription (protocol over a socket): the arrival time of
    every message, by the sopInstanceUID of its CloudEvent."""

    def __init__(self, port: int, subject: str):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.file = self.sock.makefile("rb")
        self.file.readline()  # INFO
        self.sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true}\r\n')
        self.sock.sendall(f"SUB {subject} 1\r\nPING\r\n".encode())
        while self.file.readline().strip() != b"PONG":
            pass
        self.arrivals: dict[str, float] = {}
        self.count = 0
        self.lock = threading.Lock()

    def run(self) -> None:
        try:
            while True:
                line = self.file.readline()
                if not line:
                    return
                now = time.perf_counter()
                words = line.split()
                if words[0] == b"PING":
                    self.sock.sendall(b"PONG\r\n")
                    continue
                if words[0] == b"MSG":
                    data = self.file.read(int(words[-1]) + 2)[:-2]
                elif words[0] == b"HMSG":
                    header_len, total = int(words[-2]), int(words[-1])
                    data = self.file.read(total + 2)[header_len:-2]
                else:
                    continue
                event = json.loads(data)
                with self.lock:
                    self.count += 1
                    if event["data"]["action"] == "created":
                        self.arrivals[event["data"]["sopInstanceUID"]] = now
        except (OSError, ValueError):
            return

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (and its waited-for children)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def sop_uid(data: bytes) -> str:
    """The SOPInstanceUID (0008,0018) of an explicit-VR little-endian file."""
    at = data.index(b"\x08\x00\x18\x00UI")
    length = int.from_bytes(data[at + 6:at + 8], "little")
    return data[at + 8:at + 8 + length].rstrip(b"\x00 ").decode()


def stow_all(base: str, files: list[bytes], clients: int) -> tuple[float, dict[str, float], int]:
    """STOWs one instance per request; returns the wall time, the end of each
    response by SOP instance UID, and the failures."""
    url = base + "/dicomweb/studies"
    responded: dict[str, float] = {}
    failures = 0
    lock = threading.Lock()

    def send(data: bytes) -> None:
        nonlocal failures
        boundary = "kastell-bench-" + uuid.uuid4().hex
        r = session().post(url, data=multipart_body([data], boundary), timeout=60, headers={
            "Content-Type": stow_content_type(boundary), "Accept": STOW_ACCEPT})
        done = time.perf_counter()
        with lock:
            if r.status_code == 200:
                responded[sop_uid(data)] = done
            else:
                failures += 1

    t0 = time.perf_counter()
    run_pool(send, files, clients)
    return time.perf_counter() - t0, responded, failures


def one_round(args, files: list[bytes], broker: bool, nats_port: int, root: str, n: int) -> dict:
    data_dir = os.path.join(root, f"round-{n}-{'on' if broker else 'off'}")
    os.environ["KASTELL__EVENTS__STABLE_AFTER_SECS"] = "0"
    os.environ["KASTELL__DICOMWEB__METADATA_WARM_AFTER_SECS"] = "0"
    os.environ["RUST_LOG"] = "warn"
    if broker:
        os.environ["KASTELL__EVENTS__NATS__URL"] = f"nats://127.0.0.1:{nats_port}"
        # A stream per round: the deduplication ids start at 1 again.
        os.environ["KASTELL__EVENTS__NATS__STREAM"] = f"BENCH_{n}"
        os.environ["KASTELL__EVENTS__NATS__SUBJECT_PREFIX"] = f"bench{n}.events"
        os.environ["KASTELL__EVENTS__NATS__JOBS_STREAM"] = f"BENCH_JOBS_{n}"
        os.environ["KASTELL__EVENTS__NATS__JOBS_SUBJECT_PREFIX"] = f"bench{n}.jobs"
    else:
        os.environ.pop("KASTELL__EVENTS__NATS__URL", None)
    server = Server(args.bin, data_dir, os.path.join(root, f"server-{n}.log"), 60)
    server.start()
    subscriber = None
    try:
        if broker:
            subscriber = Subscriber(nats_port, f"bench{n}.events.>")
            subscriber.start()
        # Warm-up, not timed: the first instance, and with the broker its event
        # (the connection is made and the stream created on first use).
        _, warm, _ = stow_all(server.base, files[:1], 1)
        warm_until = time.monotonic() + 30
        while subscriber and time.monotonic() < warm_until:
            with subscriber.lock:
                if set(warm) <= set(subscriber.arrivals):
                    break
            time.sleep(0.02)
        files = files[1:]
        cpu0 = cpu_seconds(server.pid)
        wall, responded, failures = stow_all(server.base, files, args.clients)
        cpu = cpu_seconds(server.pid) - cpu0
        result = {
            "broker": broker,
            "instances": len(files),
            "failures": failures,
            "wall_s": r2(wall, 3),
            "instances_per_s": r2(len(files) / wall, 1),
            "cpu_ms_per_instance": r2(cpu * 1000 / len(files), 3),
        }
        if subscriber:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with subscriber.lock:
                    if len(subscriber.arrivals) >= len(responded):
                        break
                time.sleep(0.05)
            with subscriber.lock:
                lat = [(subscriber.arrivals[uid] - at) * 1000
                       for uid, at in responded.items() if uid in subscriber.arrivals]
                result["events_received"] = len(subscriber.arrivals)
            result["latency_p50_ms"] = r2(percentile(lat, 50))
            result["latency_p99_ms"] = r2(percentile(lat, 99))
            result["latency_max_ms"] = r2(max(lat) if lat else None)
        return result
    finally:
        if subscriber:
            subscriber.close()
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=default_bin())
    p.add_argument("--instances", type=int, default=1000)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3, help="off/on pairs, alternating")
    p.add_argument("--seed", type=int, default=14)
    p.add_argument("--out", default="events-results.json")
    args = p.parse_args()
    if not shutil.which("nats-server"):
        print("nats-server is not installed (Debian package nats-server)", file=sys.stderr)
        return 2
    root = tempfile.mkdtemp(prefix="kastell-events-bench-")
    nats_port = free_port()
    nats = subprocess.Popen(["nats-server", "-js", "-a", "127.0.0.1", "-p", str(nats_port),
                             "-sd", os.path.join(root, "jetstream")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", nats_port)).close()
                break
            except OSError:
                time.sleep(0.1)
        _, files = generate_corpus(args.instances + 1, max(1, args.instances // 50), 2,
                                   random.Random(args.seed))
        blobs = [data for _, data in files]
        rounds = []
        for n in range(args.rounds * 2):
            broker = n % 2 == 1
            result = one_round(args, blobs, broker, nats_port, root, n)
            log(json.dumps(result))
            rounds.append(result)
        load = os.getloadavg()
        summary = {}
        for broker in (False, True):
            mine = [r for r in rounds if r["broker"] == broker]
            summary["on" if broker else "off"] = {
                "instances_per_s_median": sorted(r["instances_per_s"] for r in mine)[len(mine) // 2],
                "cpu_ms_per_instance_median": sorted(r["cpu_ms_per_instance"] for r in mine)[len(mine) // 2],
            }
        out = {"bin": args.bin, "instances": args.instances, "clients": args.clients,
               "loadavg_at_end": [round(x, 2) for x in load], "rounds": rounds, "summary": summary}
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)
        print(json.dumps(summary, indent=2))
        print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        return 0
    finally:
        nats.kill()
        nats.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
