#!/usr/bin/env python3
"""Writes the seed corpora of Kastell's fuzz targets into fuzz/corpus/<target>/.

The seeds come from pydicom's test files (installed with pip if missing): the
files themselves for the header scanner, their encapsulated Pixel Data for the
fragment splitter, multipart/related bodies wrapping them, their DICOM JSON
(pydicom's to_json_dict) and the Native DICOM Model XML made from it; plus small
synthetic QIDO queries, Accept and Range headers and blob containers. Each
input is in the form its target reads (see the target's doc comment and
fuzz/src/lib.rs). The corpora are generated, never committed.

Usage: fuzz/make_corpus.py [OUT_DIR]   (default: fuzz/corpus)
"""

import hashlib
import json
import os
import struct
import subprocess
import sys
import warnings
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

try:
    import pydicom
    import pydicom.data
except ImportError:
    subprocess.check_call(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "pydicom"]
    )
    import pydicom
    import pydicom.data

from pydicom.encaps import generate_fragments

warnings.filterwarnings("ignore")

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "corpus"
# The largest seed of the binary targets (run.sh gives libFuzzer the same -max_len).
MAX_DICOM = 64 * 1024
MAX_MULTIPART = 64 * 1024

ONE_CHUNK = b"\x00"
# Chunk sizes 1, 8, 64 and 2 (see fuzz/src/lib.rs: a seed byte b is a chunk of b + 1).
SMALL_CHUNKS = b"\x04\x00\x07\x3f\x01"


def write(target, data):
    directory = OUT / target
    directory.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    (directory / name).write_bytes(data)


def dicom_files():
    """(path, bytes, dataset) of every pydicom test file that reads as DICOM."""
    for path in sorted(pydicom.data.get_testdata_files()):
        try:
            raw = Path(path).read_bytes()
            ds = pydicom.dcmread(path)
        except Exception:
            continue
        yield path, raw, ds


def encapsulated_value(raw):
    """The value of the top-level encapsulated Pixel Data (item headers and
    delimiter included), found by its element header, or None."""
    marker = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"
    at = raw.rfind(marker)
    if at < 0:
        return None
    return raw[at + len(marker):]


def part(headers, body):
    head = "".join(f"{k}: {v}\r\n" for k, v in headers)
    return head.encode() + b"\r\n" + body


def multipart(boundary, parts):
    out = b""
    for p in parts:
        out += b"--" + boundary.encode() + b"\r\n" + p + b"\r\n"
    return out + b"--" + boundary.encode() + b"--\r\n"


def to_xml(dataset):
    """DICOM JSON (a dict) as a Native DICOM Model document (PS3.19 A.1)."""
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n<NativeDicomModel xml:space="preserve">']

    def attributes(ds):
        for tag in sorted(ds):
            attr = ds[tag]
            vr = attr.get("vr", "UN")
            out.append(f"<DicomAttribute tag={quoteattr(tag)} vr={quoteattr(vr)}>")
            for number, value in enumerate(attr.get("Value", []), start=1):
                if vr == "SQ" and isinstance(value, dict):
                    out.append(f'<Item number="{number}">')
                    attributes(value)
                    out.append("</Item>")
                elif vr == "PN" and isinstance(value, dict):
                    out.append(f'<PersonName number="{number}">')
                    for group in ("Alphabetic", "Ideographic", "Phonetic"):
                        if group in value:
                            names = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
                            out.append(f"<{group}>")
                            for name, text in zip(names, value[group].split("^")):
                                if text:
                                    out.append(f"<{name}>{escape(text)}</{name}>")
                            out.append(f"</{group}>")
                    out.append("</PersonName>")
                elif value is None:
                    out.append(f'<Value number="{number}"/>')
                else:
                    out.append(f'<Value number="{number}">{escape(str(value))}</Value>')
            if "BulkDataURI" in attr:
                out.append(f"<BulkData uri={quoteattr(attr['BulkDataURI'])}/>")
            if "InlineBinary" in attr:
                out.append(f"<InlineBinary>{attr['InlineBinary']}</InlineBinary>")
            out.append("</DicomAttribute>")

    attributes(dataset)
    out.append("</NativeDicomModel>\n")
    return "".join(out).encode()


def dicom_json(ds):
    def bulk(element):
        return f"http://kastell.invalid/bulk/{element.tag:08X}"

    try:
        return ds.to_json_dict(bulk_data_threshold=256, bulk_data_element_handler=bulk)
    except Exception:
        return None


def dicom_seeds():
    count = 0
    for path, raw, ds in dicom_files():
        count += 1
        head = raw[: MAX_DICOM - 8]
        write("dicom_header", ONE_CHUNK + head)
        write("dicom_header", SMALL_CHUNKS + head)
        # De-identification takes whole files; those over the target's length
        # limit are left to the header scanner's seeds.
        if len(raw) <= MAX_DICOM:
            write("deidentify", raw)

        value = encapsulated_value(raw)
        syntax = str(getattr(ds.file_meta, "TransferSyntaxUID", ""))
        if value is not None and syntax in ("1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.50"):
            # The first frame of each JPEG fixture (12-bit ones decode, 8-bit ones
            # are refused: both paths), with the header's dimensions.
            frame = next(iter(generate_fragments(ds.PixelData)), b"")
            rows, columns = (int(ds.Rows) - 1) % 4096, (int(ds.Columns) - 1) % 4096
            samples = 0 if int(ds.SamplesPerPixel) == 1 else 1
            write("jpeg12", struct.pack("<HHB", rows, columns, samples) + frame[:MAX_DICOM])
        if value is not None:
            frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
            stream = value[: MAX_DICOM - 16]
            for seed in (ONE_CHUNK, SMALL_CHUNKS):
                write("fragments", seed + struct.pack("<HB", frames % 65536, 0) + stream)

        small = raw[:16 * 1024]
        body = multipart("kastell-b", [part([("Content-Type", "application/dicom")], small)])
        ct = b'multipart/related; type="application/dicom"; boundary=kastell-b\n'
        write("multipart", ONE_CHUNK + ct + body)
        write("multipart", SMALL_CHUNKS + ct + body)

        js = dicom_json(ds)
        if js is None:
            continue
        encoded = json.dumps([js]).encode()
        if len(encoded) <= MAX_MULTIPART:
            write("dicom_json", encoded)
            ct = b'multipart/related; type="application/dicom+json"; boundary="x y"\n'
            parts = [part([("Content-Type", "application/dicom+json")], encoded)]
            parts.append(
                part(
                    [("Content-Type", "application/octet-stream"),
                     ("Content-Location", "http://kastell.invalid/bulk/7FE00010")],
                    b"\x00" * 64,
                )
            )
            write("multipart", ONE_CHUNK + ct + multipart("x y", parts))
        try:
            xml = to_xml(js)
        except Exception:
            continue
        if len(xml) <= MAX_MULTIPART:
            write("dicom_xml", xml)
    return count


def synthetic_seeds():
    # A minimal file with one encapsulated frame per fragment, for fragments.
    def item(value):
        return b"\xfe\xff\x00\xe0" + struct.pack("<I", len(value)) + value

    delimiter = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    stream = item(b"") + item(b"\xff\xd8\x01\x02") + item(b"\xff\xd8\x03\x04") + delimiter
    write("fragments", ONE_CHUNK + struct.pack("<HB", 2, 0) + stream)
    table = struct.pack("<II", 0, 12)
    stream = item(table) + item(b"\xff\x4f\x01\x02") + item(b"\xff\x4f\x03\x04") + delimiter
    write("fragments", SMALL_CHUNKS + struct.pack("<HB", 2, 0) + stream)
    extended = struct.pack("<QQ", 0, 12)
    write("fragments", ONE_CHUNK + struct.pack("<HB", 2, 1) + extended + stream)

    queries = [
        "PatientName=Doe*&StudyDate=20200101-20201231&limit=25&offset=0&includefield=all",
        "StudyInstanceUID=1.2.3\\1.2.4&fuzzymatching=true&emptyvaluematching=true",
        "00100010=D%C3%BCrst&ModalitiesInStudy=CT\\MR&includefield=00081030,StudyDescription",
        "StudyTime=100000-120000&StudyDate=-20200101&AccessionNumber=&limit=1",
        "ScheduledProcedureStepSequence.ScheduledStationAETitle=A?*&SeriesNumber=3",
        "RequestAttributesSequence.RequestedProcedureID=RP1&SOPClassUID=1.2.840.10008.5.1.4.1.1.2",
        "PatientBirthDate=19700101&PatientID=P%2B1&accept=application/dicom%2Bjson",
        "StudyDate=20200101&StudyTime=0930-1130&InstanceNumber=7&multiplevaluematching=false",
    ]
    for i, query in enumerate(queries):
        write("qido_query", bytes([i % 6]) + query.encode())
    # The change feed's query: the first byte is 6 modulo 7.
    for i, query in enumerate(["after=0&limit=100", "after=123456789&limit=1000", "limit=7", "",
                               "after=1&after=2", "offset=3"]):
        write("qido_query", bytes([6 + 7 * i]) + query.encode())

    accepts = [
        ('multipart/related; type="application/dicom"; transfer-syntax=*', "", "bytes=0-99"),
        ("application/dicom+json, application/json;q=0.5, */*;q=0.1", "application/dicom+xml", "bytes=-500"),
        ('multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1',
         "image/jpeg", "bytes=100-"),
        ('multipart/related; type="image/jls", application/octet-stream;q=0.9', "", "bytes=5-4"),
        ('multipart/related; type="application/dicom+xml"; boundary="a;b"', "*/*", "bytes=0-0,5-9"),
    ]
    for header, query, rng in accepts:
        for total in (0, 1, 1000, 2**40):
            write("accept_range", struct.pack("<Q", total) + f"{header}\n{query}\n{rng}".encode())

    # Blob containers: writes to seal (odd mode: segment size, seed length, range
    # start and length, tampering, chunking seed, plaintext) and stored objects
    # (even mode) made by a faithful copy of the format with the targets' key.
    for segment, plaintext in ((15, b""), (0, b"k"), (63, bytes(range(200))), (255, b"kastell" * 100)):
        write("blob_container", b"\x01" + bytes([segment, 2]) + struct.pack("<QQQ", 3, 50, 77) + b"\x00\x07" + plaintext)
    for obj in stored_objects():
        write("blob_container", b"\x00" + obj)


def stored_objects():
    """Objects in Kastell's blob format v1 (schema/BLOB_FORMAT.md) under the fuzz
    target's fixed tenant key, when the `cryptography` package is there."""
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        return []
    tenant, data_key, object_id, key_id = b"\x5a" * 32, b"\xc3" * 32, b"\x11" * 16, b"fuzz/1"
    out = []
    for segment_size, plaintext in ((16, b"kastell!" * 5), (64, b""), (4, b"abc")):
        prefix = b"KSTL\x01\x01\x00\x00" + struct.pack(">I", segment_size) + object_id
        prefix += struct.pack(">H", len(key_id)) + key_id
        nonce = b"\x00" * 12
        wrapped = nonce + AESGCM(tenant).encrypt(nonce, data_key, prefix)
        body = b""
        pieces = [plaintext[i:i + segment_size] for i in range(0, len(plaintext), segment_size)] or [b""]
        for index, piece in enumerate(pieces):
            last = index == len(pieces) - 1
            nonce = b"\x00" * 4 + struct.pack(">Q", index)
            aad = object_id + struct.pack(">Q", index) + (b"\x01" if last else b"\x00")
            body += AESGCM(data_key).encrypt(nonce, piece, aad)
        out.append(prefix + wrapped + body)
    return out


if __name__ == "__main__":
    files = dicom_seeds()
    synthetic_seeds()
    counts = {d.name: len(list(d.iterdir())) for d in sorted(OUT.iterdir()) if d.is_dir()}
    print(f"seeds from {files} pydicom test files in {OUT}: {counts}")
