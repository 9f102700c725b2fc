#!/usr/bin/env python3
"""Checks a server log for patient data: every patient name, patient ID and study,
series and instance UID of the stored fixtures (and their name components) must be
absent. Logs, traces and error messages may carry opaque ids only.

    log_privacy.py SERVER_LOG MANIFEST_JSON     exit 1 and list the hits
    log_privacy.py --self-test                  shows the check finds what it must
"""
from __future__ import annotations

import json
import re
import sys


def needles(manifest: dict) -> set[str]:
    found: set[str] = set()
    for entry in manifest["files"]:
        for key in ("study_instance_uid", "series_instance_uid", "sop_instance_uid", "patient_id"):
            value = str(entry.get(key) or "").strip()
            # A short all-digit ID ("99000") cannot be told from the numbers a trace
            # log is full of (timer values, byte counts); such IDs are not searched.
            if len(value) >= 4 and not (value.isdigit() and len(value) < 8):
                found.add(value)
        name = str(entry.get("patient_name") or "")
        for component in name.replace("=", "^").split("^"):
            component = component.strip()
            # Short components ("A", "Mr") would match ordinary words.
            if len(component) >= 5:
                found.add(component)
    return found


def hits(log: str, manifest: dict) -> list[tuple[str, str]]:
    out = []
    for needle in sorted(needles(manifest)):
        # Whole tokens only: "1.2.3" must not match inside "1.2.34" or "11.2.3".
        pattern = re.compile(r"(?<![0-9A-Za-z.])" + re.escape(needle) + r"(?![0-9A-Za-z.])")
        match = pattern.search(log)
        at = match.start() if match else -1
        if at >= 0:
            line = log[log.rfind("\n", 0, at) + 1:log.find("\n", at)]
            out.append((needle, line[:240]))
    return out


def self_test() -> None:
    manifest = {"files": [{"study_instance_uid": "1.2.3.4.5", "patient_id": "PID-777",
                           "patient_name": "Doe^Johnathan", "sop_instance_uid": "9.8.7.6"}]}
    assert hits("GET /studies 200\n", manifest) == []
    assert [h[0] for h in hits("x study=1.2.3.4.5 y\n", manifest)] == ["1.2.3.4.5"]
    assert [h[0] for h in hits("patient Johnathan\n", manifest)] == ["Johnathan"]
    assert [h[0] for h in hits("id PID-777\n", manifest)] == ["PID-777"]
    assert hits("uid 1.2.3.4.56 and 11.2.3.4.5\n", manifest) == [], "whole tokens only"
    short = {"files": [{"patient_id": "99000"}]}
    assert hits("deadline tv_nsec: 99000\n", short) == []


def main(argv: list[str]) -> int:
    if argv[1:] == ["--self-test"]:
        self_test()
        print("log_privacy: self-test passed")
        return 0
    log_path, manifest_path = argv[1:3]
    log = open(log_path, encoding="utf-8", errors="replace").read()
    manifest = json.load(open(manifest_path))
    lines = log.count("\n")
    if lines < 100 or "kastell::access" not in log:
        print(f"log_privacy: the log has {lines} lines and no access log: nothing was checked", file=sys.stderr)
        return 1
    found = hits(log, manifest)
    for needle, line in found:
        print(f"log_privacy: {needle!r} appears in the log: {line}", file=sys.stderr)
    if found:
        return 1
    print(f"log_privacy: {lines} log lines, {len(needles(manifest))} patient values, none found")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
