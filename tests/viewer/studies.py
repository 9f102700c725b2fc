#!/usr/bin/env python3
"""Studies for the OHIF end-to-end test: made from pydicom's test files and stored
in a running Kastell through STOW-RS.

    python3 tests/viewer/studies.py DICOMWEB_ROOT OUT.json

Each study gets a recognisable PatientName / PatientID and fresh UIDs (the files'
own UIDs are shared with the conformance fixtures and between pydicom samples);
the pixel data is left exactly as shipped, compressed or not.  Writes, per study,
its key, name, UIDs, transfer syntax, frame count and geometry to OUT.json.
"""
from __future__ import annotations

import json
import sys
import uuid
import warnings
from io import BytesIO

import pydicom
import requests
from pydicom.data import get_testdata_file

warnings.filterwarnings("ignore")

# key, pydicom file, PatientName, what it exercises
STUDIES = [
    ("ct-native", "CT_small.dcm", "Viewer^CT Native",
     "CT, Explicit VR Little Endian, 16-bit signed, one frame"),
    ("us-jpeg-multiframe", "examples_ybr_color.dcm", "Viewer^US JPEG Multiframe",
     "US multi-frame (30 frames), JPEG baseline, YBR_FULL_422 colour"),
    ("mr-j2k-lossless", "MR_small_jp2klossless.dcm", "Viewer^MR JPEG2000 Lossless",
     "MR, JPEG 2000 lossless (1.2.840.10008.1.2.4.90), 16-bit"),
    ("nm-j2k", "JPEG2000.dcm", "Viewer^NM JPEG2000",
     "NM, JPEG 2000 (1.2.840.10008.1.2.4.91), 1024x256"),
]

_NS = uuid.UUID("0b7f3f0e-6e55-4a0c-9c3b-4b6173746c76")


def uid(*parts: str) -> str:
    """A deterministic 2.25 UID, distinct per study and role."""
    return f"2.25.{uuid.uuid5(_NS, '/'.join(parts)).int}"


def prepare(key: str, filename: str, patient_name: str) -> tuple[bytes, dict]:
    ds = pydicom.dcmread(get_testdata_file(filename))
    study, series, sop = uid(key, "study"), uid(key, "series"), uid(key, "instance")
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    if "FrameOfReferenceUID" in ds:  # not shared with any other stored object either
        ds.FrameOfReferenceUID = uid(key, "for")
    ds.PatientName = patient_name
    ds.PatientID = f"KST-VIEWER-{key.upper()}"
    ds.StudyDescription = f"Kastell viewer test {key}"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.AccessionNumber = f"VW-{key}"[:16]
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    info = {
        "key": key,
        "source": filename,
        "patient_name": patient_name,
        "patient_id": ds.PatientID,
        "study_uid": study,
        "series_uid": series,
        "sop_uid": sop,
        "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
        "modality": str(ds.get("Modality", "")),
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "frames": int(ds.get("NumberOfFrames", 1) or 1),
        "photometric": str(ds.PhotometricInterpretation),
    }
    return buf.getvalue(), info


def stow(root: str, parts: list[bytes]) -> None:
    boundary = f"kastell-viewer-{uuid.uuid4().hex}"
    body = BytesIO()
    for part in parts:
        body.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        body.write(part)
        body.write(b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    resp = requests.post(
        f"{root}/studies",
        data=body.getvalue(),
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
        timeout=60,
    )
    if resp.status_code != 200:
        raise SystemExit(f"STOW-RS answered {resp.status_code}: {resp.text[:2000]}")


def main() -> None:
    root, out = sys.argv[1].rstrip("/"), sys.argv[2]
    parts, infos = [], []
    for key, filename, name, what in STUDIES:
        data, info = prepare(key, filename, name)
        info["what"] = what
        parts.append(data)
        infos.append(info)
    stow(root, parts)
    # The index answers for every study before the browser starts.
    found = requests.get(f"{root}/studies", params={"PatientID": "KST-VIEWER-*"},
                         headers={"Accept": "application/dicom+json"}, timeout=30)
    found.raise_for_status()
    uids = {s["0020000D"]["Value"][0] for s in found.json()}
    missing = [i["key"] for i in infos if i["study_uid"] not in uids]
    if missing:
        raise SystemExit(f"stored but not found by QIDO-RS: {missing}")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(infos, f, indent=2)
    for i in infos:
        print(f"  stored {i['key']:<20} {i['patient_name']:<28} {i['transfer_syntax']:<24} "
              f"{i['frames']} frame(s)")


if __name__ == "__main__":
    main()
