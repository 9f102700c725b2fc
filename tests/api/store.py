#!/usr/bin/env python3
"""Stores a few of pydicom's test files in a running Kastell (STOW-RS) so that the
schemathesis run finds real studies, series, instances and frames, and writes
their UIDs for the hooks.

    python3 tests/api/store.py BASE_URL OUT.json

BASE_URL is the DICOMweb prefix (http://127.0.0.1:PORT/dicomweb). OUT.json lists
{file, study, series, instance, frames} per stored instance.
"""
from __future__ import annotations

import json
import sys
import uuid
import warnings

import pydicom
import requests
from pydicom.data import get_testdata_file

warnings.filterwarnings("ignore")

# Native single frame, native multi-frame, JPEG baseline multi-frame, an SR (no
# pixel data), a waveform (bulk data in a sequence).
FILES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "rtdose.dcm",
    "examples_ybr_color.dcm",
    "test-SR.dcm",
    "waveform_ecg.dcm",
]


def entry(name: str, ds) -> dict:
    return {
        "file": name,
        "study": str(ds.StudyInstanceUID),
        "series": str(ds.SeriesInstanceUID),
        "instance": str(ds.SOPInstanceUID),
        "frames": int(getattr(ds, "NumberOfFrames", 1) or 1),
    }


def bulk_paths(value, prefix: str):
    """The `{path}` of every BulkDataURI under `prefix` in a DICOM JSON tree."""
    if isinstance(value, dict):
        uri = value.get("BulkDataURI")
        if isinstance(uri, str) and uri.startswith(prefix):
            yield uri[len(prefix):]
        for child in value.values():
            yield from bulk_paths(child, prefix)
    elif isinstance(value, list):
        for child in value:
            yield from bulk_paths(child, prefix)


def main() -> int:
    base, out = sys.argv[1], sys.argv[2]
    boundary = uuid.uuid4().hex
    body = bytearray()
    known = []
    for name in FILES:
        path = get_testdata_file(name)
        if path is None:
            print(f"store: pydicom test file {name} missing", file=sys.stderr)
            return 1
        known.append(entry(name, pydicom.dcmread(path, stop_before_pixels=True)))
        with open(path, "rb") as f:
            data = f.read()
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    response = requests.post(
        f"{base}/studies",
        data=bytes(body),
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
        timeout=120,
    )
    if response.status_code != 200:
        print(f"store: STOW-RS answered {response.status_code}: {response.text[:2000]}", file=sys.stderr)
        return 1
    # The bulk data paths the metadata names (BulkDataURI …/bulkdata/{path}).
    for item in known:
        url = f"{base}/studies/{item['study']}/series/{item['series']}/instances/{item['instance']}"
        metadata = requests.get(f"{url}/metadata", headers={"Accept": "application/dicom+json"}, timeout=60)
        metadata.raise_for_status()
        item["bulk"] = sorted(set(bulk_paths(metadata.json(), f"{url}/bulkdata/")))
    with open(out, "w") as f:
        json.dump(known, f, indent=1)
    print(f"store: {len(known)} instances stored")
    return 0


if __name__ == "__main__":
    sys.exit(main())
