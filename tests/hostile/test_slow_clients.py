"""Slow and many clients (issue 11 contract): a client trickling its headers, one
stalling its STOW body and one idling on a kept-alive connection are cut off
within the configured timeouts (the `tight` server: 2 s each) while other clients
are served; past max_in_flight (the `busy` server: 3) requests answer 503 with
Retry-After at once, and none hangs."""
from __future__ import annotations

import select
import socket
import threading
import time
import uuid

import requests

import hostile
import kastell_helpers as kh
from conftest import BUSY_MAX_IN_FLIGHT, TIGHT_TIMEOUT

RSS = 128  # MiB
SLACK = 4  # seconds past a timeout before the server counts as not having acted
CLIENTS = 10


def served(server) -> str | None:
    """None when a normal search and /healthz are answered within 3 s, else why not."""
    try:
        started = time.time()
        with hostile.session() as fresh:  # new connections, as a new client opens
            search = fresh.get(server.api.url("/studies"), headers={"Accept": kh.DICOM_JSON}, timeout=3)
            health = fresh.get(server.root_url + "/healthz", timeout=3)
    except requests.RequestException as exc:
        return f"another client was not served: {exc!r}"
    if search.status_code not in (200, 204) or health.status_code != 200:
        return f"another client got search {search.status_code}, /healthz {health.status_code}"
    if time.time() - started > 3:
        return f"another client waited {time.time() - started:.1f} s"
    return None


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def ended(sock: socket.socket, outcome: dict) -> bool:
    """Reads what the server sent; True once it closed the connection. A response
    head is kept in outcome["head"]."""
    while select.select([sock], [], [], 0)[0]:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return True
        if not chunk:
            return True
        outcome["head"] = outcome.get("head", b"") + chunk
    return False


def test_headers_sent_one_byte_a_second_are_cut_off_while_others_are_served(tight):
    """Ten clients send `GET ... HTTP/1.1` one byte a second; each connection is
    closed (or answered 408) within header_timeout + 4 s."""
    request = b"GET /dicomweb/studies HTTP/1.1\r\nHost: slow\r\nAccept: application/dicom+json\r\n\r\n"
    with tight.watch(rss_mib=RSS):
        socks = [connect(tight) for _ in range(CLIENTS)]
        outcomes = [{} for _ in socks]
        closed_at: dict[int, float] = {}
        not_served = []
        started = time.time()
        for n in range(len(request)):
            if time.time() - started > TIGHT_TIMEOUT + SLACK or len(closed_at) == len(socks):
                break
            for i, sock in enumerate(socks):
                if i in closed_at:
                    continue
                if ended(sock, outcomes[i]):
                    closed_at[i] = time.time() - started
                    continue
                try:
                    sock.send(request[n:n + 1])
                except OSError:
                    closed_at[i] = time.time() - started
            problem = served(tight)
            if problem:
                not_served.append(problem)
            time.sleep(1)
        for i, sock in enumerate(socks):
            if i not in closed_at and ended(sock, outcomes[i]):
                closed_at[i] = time.time() - started
            sock.close()
        statuses = {hostile.head_status(o["head"]) for o in outcomes if o.get("head")}
        assert len(closed_at) == len(socks), (
            f"{len(socks) - len(closed_at)} of {len(socks)} trickling clients still connected after "
            f"{time.time() - started:.0f} s (header_timeout {TIGHT_TIMEOUT} s)")
        assert statuses <= {408}, f"trickling clients were answered {statuses}"
        assert not not_served, not_served[0]


def test_an_idle_kept_alive_connection_is_closed(tight):
    """After one answered request, an idle connection is closed within keep_alive + 4 s."""
    with tight.watch(rss_mib=RSS):
        sock = connect(tight)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: idle\r\n\r\n")
        kind, head = hostile.read_response_head(sock, time.time() + 5)
        assert kind == "response" and hostile.head_status(head) == 200, (kind, head[:100])
        started = time.time()
        outcome: dict = {}
        while not ended(sock, outcome) and time.time() - started < TIGHT_TIMEOUT + SLACK:
            time.sleep(0.1)
        waited = time.time() - started
        sock.close()
        assert waited < TIGHT_TIMEOUT + SLACK, f"idle connection still open after {waited:.0f} s"


def stow_head_and_body(server, study_bytes: bytes) -> tuple[bytes, bytes]:
    boundary = f"kastell-{uuid.uuid4().hex}"
    body = kh.encode_multipart([(study_bytes, "application/dicom")], boundary)
    head = (f"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Content-Type: multipart/related; type=\"application/dicom\"; boundary={boundary}\r\n"
            f"Accept: application/dicom+json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head, body


def test_a_stalled_stow_body_is_408_while_others_are_served(tight):
    """Five STOW requests send 100 bytes of their body and stall: each answered 408
    within body_idle_timeout + 4 s; other clients are served meanwhile."""
    with tight.watch(rss_mib=RSS):
        socks, outcomes = [], []
        for _ in range(5):
            _, file = hostile.instance()
            head, body = stow_head_and_body(tight, file)
            sock = connect(tight)
            sock.sendall(head + body[:100])
            socks.append(sock)
            outcomes.append({})
        started = time.time()
        done: dict[int, float] = {}
        not_served = []
        while len(done) < len(socks) and time.time() - started < TIGHT_TIMEOUT + SLACK:
            for i, sock in enumerate(socks):
                if i not in done and ended(sock, outcomes[i]):
                    done[i] = time.time() - started
            problem = served(tight)
            if problem:
                not_served.append(problem)
            time.sleep(0.2)
        for i, sock in enumerate(socks):
            if i not in done and ended(sock, outcomes[i]):
                done[i] = time.time() - started
            sock.close()
        statuses = [hostile.head_status(o["head"]) if o.get("head") else None for o in outcomes]
        assert len(done) == len(socks), (
            f"{len(socks) - len(done)} of {len(socks)} stalled uploads still open after "
            f"{time.time() - started:.0f} s (body_idle_timeout {TIGHT_TIMEOUT} s); answers {statuses}")
        assert statuses == [408] * len(socks), f"stalled uploads were answered {statuses}"
        assert not not_served, not_served[0]


def test_past_max_in_flight_requests_get_503_with_retry_after_and_none_hangs(busy):
    """Ten slow STOW requests at once (half the body, 3 s pause, the rest) against
    max_in_flight 3: some answer 503 with Retry-After straight away, the others
    are stored, every one ends within 20 s, and /healthz answers meanwhile."""
    results: list[dict] = [{} for _ in range(CLIENTS)]

    def client(n: int):
        out = results[n]
        try:
            _, file = hostile.instance()
            head, body = stow_head_and_body(busy, file)
            sock = connect(busy)
            sock.sendall(head + body[: len(body) // 2])
            kind, got = hostile.read_response_head(sock, time.time() + 3)
            if kind == "timeout":
                sock.sendall(body[len(body) // 2:])
                kind, got = hostile.read_response_head(sock, time.time() + 17)
            out["kind"], out["status"] = kind, hostile.head_status(got)
            out["headers"] = hostile.head_headers(got)
            sock.close()
        except OSError as exc:
            out["kind"], out["error"] = "error", repr(exc)

    with busy.watch(rss_mib=RSS):
        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(1)
        health = busy.healthz(timeout=2)
        for t in threads:
            t.join(25)
        assert all(r.get("kind") == "response" for r in results), f"requests without an answer: {results}"
        for r in results:
            hostile.check_headers("slow STOW", r["status"], r["headers"])
        statuses = sorted(r["status"] for r in results)
        refused = [r for r in results if r["status"] == 503]
        assert refused, f"no 503 past max_in_flight {BUSY_MAX_IN_FLIGHT}: {statuses}"
        assert all("retry-after" in r["headers"] for r in refused), "503 without Retry-After"
        assert set(statuses) <= {200, 503}, statuses
        assert health == 200, f"/healthz answered {health} while the server was busy"
