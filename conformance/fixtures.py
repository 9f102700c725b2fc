#!/usr/bin/env python3
"""Deterministic DICOM fixture set for the Kastell DICOMweb conformance suite.

Usage::

    python3 conformance/fixtures.py OUTDIR

Writes ``OUTDIR/files/*.dcm`` and ``OUTDIR/manifest.json``.  Running it twice
produces byte-identical output (idempotent): selected files from pydicom's
bundled test data are copied (or rewritten with fresh deterministic UIDs when
their UIDs collide with an earlier selection), and two synthetic studies are
generated with pydicom.

The manifest lists, per file: path, source, UIDs, transfer syntax, patient
name/id, modality, study date/time, accession number, number of frames and a
few flags the test-suite uses to pick fixtures (``group``, ``native``,
``tags``).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import uuid
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
)

warnings.filterwarnings("ignore")

# Transfer syntaxes whose pixel data is not encapsulated.
NATIVE_SYNTAXES = {
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
}

# (file name, tags).  Order matters: the first file that carries a given UID
# keeps it; later colliding files get fresh, deterministic UIDs.
PYDICOM_SELECTION = [
    # Explicit VR Little Endian
    ("CT_small.dcm", ["evrle", "image"]),
    ("MR_small.dcm", ["evrle", "image"]),
    ("SC_rgb_small_odd.dcm", ["evrle", "image", "odd-length"]),
    ("liver_1frame.dcm", ["evrle", "image", "seg"]),
    ("reportsi.dcm", ["evrle", "sr"]),
    ("test-SR.dcm", ["evrle", "sr"]),
    ("waveform_ecg.dcm", ["evrle", "waveform", "nested-bulk"]),
    # Implicit VR Little Endian
    ("MR_small_implicit.dcm", ["implicit", "image"]),
    ("rtplan.dcm", ["implicit"]),
    ("rtdose.dcm", ["implicit", "image", "multiframe"]),
    # Explicit VR Big Endian
    ("MR_small_bigendian.dcm", ["bigendian", "image"]),
    # Deflated Explicit VR Little Endian
    ("image_dfl.dcm", ["deflated", "image"]),
    # Encapsulated / compressed
    ("SC_rgb_jpeg_dcmtk.dcm", ["compressed", "jpeg-baseline", "image"]),
    ("JPGExtended.dcm", ["compressed", "jpeg-extended", "image"]),
    ("SC_rgb_jpeg_gdcm.dcm", ["compressed", "jpeg-lossless", "image"]),
    ("examples_ybr_color.dcm", ["compressed", "jpeg-baseline", "image", "multiframe"]),
    ("MR_small_jp2klossless.dcm", ["compressed", "jpeg2000", "image"]),
    ("JPEG2000.dcm", ["compressed", "jpeg2000", "image"]),
    ("MR_small_jpeg_ls_lossless.dcm", ["compressed", "jpegls", "image"]),
    ("MR_small_RLE.dcm", ["compressed", "rle", "image"]),
    ("SC_rgb_rle_2frame.dcm", ["compressed", "rle", "image", "multiframe"]),
]

CHARSET_SELECTION = [
    ("chrFren.dcm", ["charset", "latin1"]),
    ("chrFrenMulti.dcm", ["charset", "latin1", "multivalue"]),
    ("chrGerm.dcm", ["charset", "latin1"]),
    ("chrRuss.dcm", ["charset", "cyrillic"]),
    ("chrGreek.dcm", ["charset", "greek"]),
    ("chrArab.dcm", ["charset", "arabic"]),
    ("chrHbrw.dcm", ["charset", "hebrew"]),
    ("chrX1.dcm", ["charset", "utf8"]),
    ("chrX2.dcm", ["charset", "gb18030"]),
    ("chrH31.dcm", ["charset", "iso2022", "japanese"]),
    ("chrH32.dcm", ["charset", "iso2022", "japanese"]),
    ("chrI2.dcm", ["charset", "iso2022", "korean"]),
    ("chrJapMulti.dcm", ["charset", "iso2022", "japanese"]),
    ("chrKoreanMulti.dcm", ["charset", "iso2022", "korean"]),
]

# Study- and series-level attributes that must agree between files that share
# a Study / Series Instance UID (otherwise the study-level index is ambiguous).
STUDY_LEVEL = [
    "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName",
    "StudyID", "StudyDescription", "PatientName", "PatientID",
    "PatientBirthDate", "PatientSex",
]
SERIES_LEVEL = ["Modality", "SeriesNumber", "SeriesDescription"]

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"

# Synthetic studies.  Values are chosen so that QIDO matching tests can tell
# single-value, wildcard, case, range and combined date-time semantics apart.
SYNTHETIC_STUDIES = [
    {
        "key": "A",
        "charset": "ISO_IR 192",
        "PatientName": "Müller^Jürgen",
        "PatientID": "KST-PAT-001",
        "PatientBirthDate": "19600101",
        "PatientSex": "M",
        "StudyDate": "20230415",
        "StudyTime": "101530",
        "AccessionNumber": "KSTACC001",
        "ReferringPhysicianName": "Weiß^Anna",
        "StudyID": "KSTS1",
        "StudyDescription": "Kastell synthetic study A",
        "series": [
            {"Modality": "CT", "SeriesNumber": 1, "SeriesDescription": "Axial CT",
             "PPSStartDate": "20230415", "PPSStartTime": "101600", "instances": 3},
            {"Modality": "MR", "SeriesNumber": 2, "SeriesDescription": "T1 MR",
             "PPSStartDate": "20230415", "PPSStartTime": "103000", "instances": 3},
        ],
    },
    {
        "key": "B",
        "charset": None,
        "PatientName": "Doe^Jane",
        "PatientID": "KST-PAT-002",
        "PatientBirthDate": "19751231",
        "PatientSex": "F",
        "StudyDate": "20230416",
        "StudyTime": "083000",
        "AccessionNumber": "KSTACC002",
        "ReferringPhysicianName": "",  # present, zero length
        "StudyID": "KSTS2",
        "StudyDescription": "kastell synthetic study B",
        "series": [
            {"Modality": "CT", "SeriesNumber": 1, "SeriesDescription": "Scout",
             "PPSStartDate": "20230416", "PPSStartTime": "083100", "instances": 2},
        ],
    },
]


_UID_NAMESPACE = uuid.UUID("6f0f6c2e-5b0e-4c1c-9a57-6b6173746c6c")


def det_uid(name: str) -> str:
    """Deterministic 2.25 UID derived from *name*.

    ``generate_uid(prefix=None, entropy_srcs=...)`` ignores the entropy
    sources (it returns a random UUID-based UID), so a name-based UUIDv5 is
    used instead, which is a valid 2.25 UID and stable across runs.
    """
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _str(v) -> str:
    return "" if v is None else str(v)


def _entry(path: Path, outdir: Path, source: str, group: str, tags: list[str],
           rewritten: bool) -> dict:
    ds = pydicom.dcmread(path, stop_before_pixels=False)
    ts = str(ds.file_meta.TransferSyntaxUID)
    pn = ds.get("PatientName")
    pn_obj = None
    if pn is not None and str(pn) != "":
        pn_obj = {}
        for grp, attr in (("Alphabetic", "alphabetic"), ("Ideographic", "ideographic"),
                          ("Phonetic", "phonetic")):
            val = getattr(pn, attr)
            if val:
                pn_obj[grp] = val
    nf = ds.get("NumberOfFrames")
    return {
        "file": str(path.relative_to(outdir)),
        "source": source,
        "group": group,
        "tags": tags,
        "rewritten": rewritten,
        "sha256": _sha256(path),
        "size": path.stat().st_size,
        "sop_class_uid": str(ds.SOPClassUID),
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "series_instance_uid": str(ds.SeriesInstanceUID),
        "study_instance_uid": str(ds.StudyInstanceUID),
        "transfer_syntax": ts,
        "native": ts in NATIVE_SYNTAXES,
        "has_pixel_data": "PixelData" in ds,
        "specific_character_set": (list(ds.SpecificCharacterSet)
                                   if isinstance(ds.get("SpecificCharacterSet"), pydicom.multival.MultiValue)
                                   else _str(ds.get("SpecificCharacterSet"))),
        "patient_name": _str(pn),
        "patient_name_json": pn_obj,
        "patient_id": _str(ds.get("PatientID")),
        "patient_birth_date": _str(ds.get("PatientBirthDate")),
        "patient_sex": _str(ds.get("PatientSex")),
        "modality": _str(ds.get("Modality")),
        "study_date": _str(ds.get("StudyDate")),
        "study_time": _str(ds.get("StudyTime")),
        "accession_number": _str(ds.get("AccessionNumber")),
        "study_id": _str(ds.get("StudyID")),
        "study_description": _str(ds.get("StudyDescription")),
        "series_number": None if ds.get("SeriesNumber") in (None, "") else int(ds.SeriesNumber),
        "series_description": _str(ds.get("SeriesDescription")),
        "instance_number": None if ds.get("InstanceNumber") in (None, "") else int(ds.InstanceNumber),
        "timezone_offset": _str(ds.get("TimezoneOffsetFromUTC")),
        "rows": ds.get("Rows"),
        "columns": ds.get("Columns"),
        "bits_allocated": ds.get("BitsAllocated"),
        "number_of_frames": None if nf in (None, "") else int(nf),
    }


def _study_sig(ds) -> tuple:
    return tuple(_str(ds.get(k)) for k in STUDY_LEVEL)


def _series_sig(ds) -> tuple:
    return tuple(_str(ds.get(k)) for k in SERIES_LEVEL)


def _copy_pydicom_files(outdir: Path, filesdir: Path) -> list[dict]:
    charset_paths = {os.path.basename(p): p for p in get_charset_files()}
    seen_sop: set[str] = set()
    seen_series: dict[str, tuple] = {}   # series uid -> (study uid, sig)
    seen_study: dict[str, tuple] = {}    # study uid -> sig
    entries = []
    for group, selection in (("pydicom", PYDICOM_SELECTION), ("charset", CHARSET_SELECTION)):
        for name, tags in selection:
            src = charset_paths.get(name) if group == "charset" else get_testdata_file(name, download=False)
            if not src or not os.path.exists(src):
                print(f"fixtures: {name} not available, skipped", file=sys.stderr)
                continue
            try:
                ds = pydicom.dcmread(src)
            except Exception as exc:  # pragma: no cover - depends on pydicom data
                print(f"fixtures: {name} unreadable ({exc}), skipped", file=sys.stderr)
                continue
            if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
                continue
            if not all(k in ds for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID")):
                continue
            sop, se, st = str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID)
            collide = sop in seen_sop
            if se in seen_series and (seen_series[se][0] != st or seen_series[se][1] != _series_sig(ds)):
                collide = True
            if st in seen_study and seen_study[st] != _study_sig(ds):
                collide = True
            stem = Path(name).stem
            dst = filesdir / f"{group}-{stem}.dcm"
            # PS3.10: the File Meta must name the same SOP Class/Instance as the
            # dataset.  A few pydicom test files disagree; fix their meta.
            meta_ok = (ds.file_meta.get("MediaStorageSOPInstanceUID") == ds.SOPInstanceUID
                       and ds.file_meta.get("MediaStorageSOPClassUID") == ds.SOPClassUID)
            if collide:
                ds.StudyInstanceUID = det_uid(f"{name}/study")
                ds.SeriesInstanceUID = det_uid(f"{name}/series")
                ds.SOPInstanceUID = det_uid(f"{name}/sop")
            if collide or not meta_ok:
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
                ds.save_as(dst, enforce_file_format=False)
            else:
                shutil.copyfile(src, dst)
            ds2 = pydicom.dcmread(dst)
            seen_sop.add(str(ds2.SOPInstanceUID))
            seen_series[str(ds2.SeriesInstanceUID)] = (str(ds2.StudyInstanceUID), _series_sig(ds2))
            seen_study[str(ds2.StudyInstanceUID)] = _study_sig(ds2)
            entries.append(_entry(dst, outdir, f"{group}:{name}", group, tags, collide or not meta_ok))
    return entries


def _synthetic_dataset(study: dict, series: dict, s_idx: int, i_idx: int) -> Dataset:
    key = study["key"]
    st_uid = det_uid(f"synthetic/{key}/study")
    se_uid = det_uid(f"synthetic/{key}/series/{s_idx}")
    sop_uid = det_uid(f"synthetic/{key}/series/{s_idx}/instance/{i_idx}")
    sop_class = CT_IMAGE if series["Modality"] == "CT" else MR_IMAGE

    ds = Dataset()
    if study["charset"]:
        ds.SpecificCharacterSet = study["charset"]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study["StudyDate"]
    ds.SeriesDate = study["StudyDate"]
    ds.StudyTime = study["StudyTime"]
    ds.AccessionNumber = study["AccessionNumber"]
    ds.Modality = series["Modality"]
    ds.Manufacturer = "Kastell Conformance"
    ds.ReferringPhysicianName = study["ReferringPhysicianName"]
    ds.StudyDescription = study["StudyDescription"]
    ds.SeriesDescription = series["SeriesDescription"]
    ds.PatientName = study["PatientName"]
    ds.PatientID = study["PatientID"]
    ds.PatientBirthDate = study["PatientBirthDate"]
    ds.PatientSex = study["PatientSex"]
    ds.PatientWeight = "72.5"  # a study-level attribute the index does not keep
    ds.SliceThickness = "1.25"
    ds.StudyInstanceUID = st_uid
    ds.SeriesInstanceUID = se_uid
    ds.StudyID = study["StudyID"]
    ds.SeriesNumber = series["SeriesNumber"]
    ds.InstanceNumber = i_idx + 1
    ds.ImagePositionPatient = ["-10.5", "20", f"{i_idx * 1.25:.2f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = det_uid(f"synthetic/{key}/for")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 8
    ds.Columns = 8
    ds.PixelSpacing = ["0.5", "0.5"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "512"
    ds.WindowWidth = "1024"
    ds.PerformedProcedureStepStartDate = series["PPSStartDate"]
    ds.PerformedProcedureStepStartTime = series["PPSStartTime"]
    # A code sequence so that metadata contains a nested dataset.
    code = Dataset()
    code.CodeValue = "T-D0050"
    code.CodingSchemeDesignator = "SRT"
    code.CodeMeaning = "Tissue"
    ds.AnatomicRegionSequence = Sequence([code])
    if key == "A" and s_idx == 0 and i_idx == 0:
        # A private element together with its Private Creator (rule 84).
        block = ds.private_block(0x0009, "KASTELL CONFORMANCE", create=True)
        block.add_new(0x01, "LO", "private value")
    arr = (np.arange(64, dtype=np.uint16).reshape(8, 8) * (s_idx + 1) * 7 + i_idx * 3) % 4096
    ds.PixelData = arr.astype("<u2").tobytes()
    ds["PixelData"].VR = "OW"

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def _write_synthetic(outdir: Path, filesdir: Path) -> list[dict]:
    entries = []
    for study in SYNTHETIC_STUDIES:
        for s_idx, series in enumerate(study["series"]):
            for i_idx in range(series["instances"]):
                ds = _synthetic_dataset(study, series, s_idx, i_idx)
                dst = filesdir / f"synthetic-{study['key']}-s{s_idx + 1}-i{i_idx + 1}.dcm"
                ds.save_as(dst, enforce_file_format=True)
                tags = ["evrle", "image", "synthetic", f"synthetic-{study['key']}"]
                if study["key"] == "A" and s_idx == 0 and i_idx == 0:
                    tags.append("private")
                entries.append(_entry(dst, outdir, f"synthetic:{study['key']}", f"synthetic-{study['key']}",
                                      tags, False))
    return entries


def build(outdir: str | os.PathLike) -> dict:
    outdir = Path(outdir).resolve()
    filesdir = outdir / "files"
    filesdir.mkdir(parents=True, exist_ok=True)
    entries = _copy_pydicom_files(outdir, filesdir) + _write_synthetic(outdir, filesdir)
    # Final sanity: unique SOP Instance UIDs, and group 0002 present.
    sops = [e["sop_instance_uid"] for e in entries]
    assert len(sops) == len(set(sops)), "duplicate SOP Instance UIDs in fixture set"
    keep = {e["file"] for e in entries}
    for p in filesdir.glob("*.dcm"):
        if str(p.relative_to(outdir)) not in keep:
            p.unlink()
    manifest = {
        "version": 1,
        "pydicom_version": pydicom.__version__,
        "synthetic_studies": {
            s["key"]: {
                "study_instance_uid": det_uid(f"synthetic/{s['key']}/study"),
                "series_instance_uids": [det_uid(f"synthetic/{s['key']}/series/{i}")
                                         for i in range(len(s["series"]))],
                **{k: v for k, v in s.items() if k not in ("series", "key")},
                "series": s["series"],
            }
            for s in SYNTHETIC_STUDIES
        },
        "files": entries,
    }
    tmp = outdir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(outdir / "manifest.json")
    return manifest


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    manifest = build(argv[1])
    print(f"wrote {len(manifest['files'])} files to {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
