#!/usr/bin/env python3
"""Kastell retrieval latency bench (issue 5).

Spawns a Kastell server on a free loopback port with a fresh data directory
(embedded SQLite index, local blob files), stores synthetic data through
STOW-RS, then measures, with one sequential client over one keep-alive
connection:

  1. frame retrieval: frame 1 and frame N of a large native multi-frame and of
     a large JPEG-baseline multi-frame, as stored (transfer-syntax=*), plus
     frame N of the JPEG one decoded to native;
  2. series metadata of a 2,000-instance series: cold (cache miss), cached,
     and the 304 revalidation with If-None-Match;
  3. rendered JPEG of a 512x512 16-bit CT-like instance and of a JPEG-baseline
     instance, and instance thumbnails (first request versus cached).

Results are printed as a Markdown table and written to a JSON file.

Requirements: Python >= 3.11, requests, pydicom (3.x), numpy, pillow.

    cargo build --release
    python3 benches/retrieval.py --out /tmp/retrieval.json

The server binary is chosen as in load.py (--bin, $KASTELL_BIN,
~/.cache/kastell-target/release/kastell, ...).  The server process, the data
directory handling and the STOW helpers come from load.py.  See
benches/README.md, section "Retrieval (issue 5)".
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import os
import platform
import random
import signal
import sys
import tempfile
import time

import numpy as np
import requests
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402  (benches/load.py: server process, STOW and stats helpers)
from load import (DICOM_JSON, SeriesInfo, StudyInfo, base_dataset, encode, fmt, kib_to_mib,  # noqa: E402
                  log, new_uid, one_line, percentile, phase_stow, proc_status, r2)

ACCEPT_AS_STORED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
ACCEPT_NATIVE = 'multipart/related; type="application/octet-stream"'
ACCEPT_JPEG = "image/jpeg"

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MF_GRAY_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"   # Multi-frame Grayscale Word SC
MF_GRAY_BYTE_SC = "1.2.840.10008.5.1.4.1.1.7.2"   # Multi-frame Grayscale Byte SC
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


# --------------------------------------------------------------------------
# synthetic data
# --------------------------------------------------------------------------

def phantom(size: int, nrng: np.random.Generator, shift: float = 0.0) -> np.ndarray:
    """A CT-like slice in HU: air, a water disc with a bone ring, noise (float64)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    c = (size - 1) / 2
    r = np.hypot(x - c - shift, y - c) / (size / 2)
    img = np.full((size, size), -1000.0)
    img[r < 0.85] = 40.0
    img[(r > 0.70) & (r < 0.78)] = 900.0
    img[np.hypot(x - c * 0.7, y - c * 1.2) / (size / 2) < 0.12] = -600.0
    return img + nrng.normal(0, 12, (size, size))


def with_sop_class(ds, sop_class: str):
    ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    return ds


def ct_attributes(ds, z: float, size: int) -> None:
    """Header attributes a CT slice of a real series carries."""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Manufacturer = "Kastell Bench"
    ds.ManufacturerModelName = "Synthetic CT"
    ds.InstitutionName = "Bench Hospital"
    ds.BodyPartExamined = "CHEST"
    ds.KVP = 120
    ds.SliceThickness = 1.0
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "HFS"
    # One frame of reference per series, derived from its UID (stable across runs of a seed).
    ds.FrameOfReferenceUID = "2.25." + str(int(hashlib.sha256(ds.SeriesInstanceUID.encode()).hexdigest()[:30], 16))
    ds.ImagePositionPatient = [-250.0, -250.0, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = z
    ds.PixelSpacing = [500.0 / size, 500.0 / size]
    ds.AcquisitionNumber = 1
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = "101600"
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = 40
    ds.WindowWidth = 400


def ct_pixels(size: int, nrng: np.random.Generator, shift: float = 0.0) -> bytes:
    stored = np.clip(np.rint(phantom(size, nrng, shift) + 1024), -2048, 2047)
    return stored.astype("<i2").tobytes()


def jpeg_frame(img8: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img8, mode="L").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def to8(hu: np.ndarray) -> np.ndarray:
    """Window -160..240 HU onto 0..255."""
    return np.clip((hu + 160.0) / 400.0 * 255.0, 0, 255).astype(np.uint8)


def native_multiframe(study: StudyInfo, frames: int, size: int,
                      nrng: np.random.Generator) -> tuple[str, bytes, list[bytes]]:
    """Explicit VR LE multi-frame, uint16 random noise; returns (sop, file, [frame1, frameN])."""
    se = SeriesInfo(uid=new_uid(), modality="OT", number=10)
    study.series.append(se)
    sop = new_uid()
    ds = with_sop_class(base_dataset(study, se, sop, 1, size, size), MF_GRAY_WORD_SC)
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063
    ds.FrameTime = 33.3
    pixels = nrng.integers(0, 65536, size=(frames, size, size), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    checks = [pixels[0].tobytes(), pixels[-1].tobytes()]
    del pixels
    se.instances.append(sop)
    return sop, encode(ds), checks


def jpeg_multiframe(study: StudyInfo, frames: int, size: int, quality: int,
                    nrng: np.random.Generator) -> tuple[str, bytes, list[bytes], int]:
    """JPEG baseline (8-bit) multi-frame, one fragment per frame, basic offset table."""
    se = SeriesInfo(uid=new_uid(), modality="OT", number=11)
    study.series.append(se)
    sop = new_uid()
    ds = with_sop_class(base_dataset(study, se, sop, 1, size, size), MF_GRAY_BYTE_SC)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063
    ds.FrameTime = 33.3
    ds.LossyImageCompression = "01"
    base = phantom(size, nrng)
    encoded = []
    for k in range(frames):
        img = base + nrng.normal(0, 12, (size, size)) + 3.0 * np.sin(k / 25.0) * 10
        encoded.append(jpeg_frame(to8(img), quality))
    ds.PixelData = encapsulate(encoded, has_bot=True)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    se.instances.append(sop)
    return sop, encode(ds), [encoded[0], encoded[-1]], sum(len(e) for e in encoded)


def metadata_series(study: StudyInfo, n: int, size: int, nrng: np.random.Generator,
                    number: int = 20) -> tuple[SeriesInfo, list[tuple[str, bytes]]]:
    se = SeriesInfo(uid=new_uid(), modality="CT", number=number)
    study.series.append(se)
    files = []
    for k in range(n):
        files.append((study.uid, ct_instance(study, se, k + 1, size, nrng)))
    return se, files


def ct_instance(study: StudyInfo, se: SeriesInfo, number: int, size: int,
                nrng: np.random.Generator) -> bytes:
    sop = new_uid()
    ds = with_sop_class(base_dataset(study, se, sop, number, size, size), CT_IMAGE)
    ct_attributes(ds, z=-number * 1.0, size=size)
    ds.PixelData = ct_pixels(size, nrng, shift=(number % 50) / 10.0)
    ds["PixelData"].VR = "OW"
    se.instances.append(sop)
    return encode(ds)


def jpeg_instance(study: StudyInfo, se: SeriesInfo, size: int, quality: int,
                  nrng: np.random.Generator) -> bytes:
    sop = new_uid()
    ds = with_sop_class(base_dataset(study, se, sop, len(se.instances) + 1, size, size),
                        SECONDARY_CAPTURE)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.LossyImageCompression = "01"
    ds.PixelData = encapsulate([jpeg_frame(to8(phantom(size, nrng)), quality)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    se.instances.append(sop)
    return encode(ds)


# --------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------

def multipart_parts(resp: requests.Response) -> list[tuple[str, bytes]]:
    """(part Content-Type, body) of a multipart/related response (enough for checks)."""
    ctype = resp.headers.get("Content-Type", "")
    boundary = None
    for p in ctype.split(";")[1:]:
        k, _, v = p.strip().partition("=")
        if k.lower() == "boundary":
            boundary = v.strip('"')
    if not boundary:
        raise ValueError(f"no boundary in {ctype!r}")
    delim = b"--" + boundary.encode()
    out = []
    for chunk in resp.content.split(delim)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.partition(b"\r\n\r\n")
        part_type = ""
        for line in head.split(b"\r\n"):
            k, _, v = line.decode("latin-1").partition(":")
            if k.strip().lower() == "content-type":
                part_type = v.strip()
        out.append((part_type, body[:-2] if body.endswith(b"\r\n") else body))
    return out


class Probe:
    """One kind of request, measured over a shared keep-alive session."""

    def __init__(self, name: str, url: str, headers: dict, expect: int = 200, check=None):
        self.name, self.url, self.headers, self.expect, self.check = name, url, headers, expect, check
        self.ms: list[float] = []
        self.errors: list[str] = []
        self.last: requests.Response | None = None

    def once(self, s: requests.Session, timeout: float, record: bool = True) -> float | None:
        t0 = time.perf_counter()
        try:
            r = s.get(self.url, headers=self.headers, timeout=timeout)
            _ = r.content  # the whole body has been read when get() returns
        except requests.RequestException as e:
            self.errors.append(f"{type(e).__name__}: {e}")
            return None
        ms = (time.perf_counter() - t0) * 1000
        if r.status_code != self.expect:
            self.errors.append(f"HTTP {r.status_code} (expected {self.expect}): {one_line(r.text)}")
            return None
        if self.last is None and self.check is not None:
            err = self.check(r)
            if err:
                self.errors.append(err)
        self.last = r
        if record:
            self.ms.append(ms)
        return ms

    def summary(self) -> dict:
        r = self.last
        return {
            "samples": len(self.ms),
            "p50_ms": r2(percentile(self.ms, 50)),
            "p99_ms": r2(percentile(self.ms, 99)),
            "min_ms": r2(min(self.ms)) if self.ms else None,
            "max_ms": r2(max(self.ms)) if self.ms else None,
            "mean_ms": r2(sum(self.ms) / len(self.ms)) if self.ms else None,
            "response_bytes": len(r.content) if r is not None else None,
            "content_type": r.headers.get("Content-Type") if r is not None else None,
            "errors": len(self.errors),
            "error_samples": self.errors[:3],
        }


def interleaved(probes: list[Probe], s: requests.Session, reps: int, warmup: int,
                timeout: float) -> None:
    """warmup unrecorded rounds, then *reps* rounds; each round requests every probe once,
    so slow drift of the machine (the bench shares 2 cores with the server) hits all alike."""
    for _ in range(warmup):
        for p in probes:
            p.once(s, timeout, record=False)
    for _ in range(reps):
        for p in probes:
            p.once(s, timeout)


def check_frame(expected: bytes, exact: bool = True, expect_len: int | None = None):
    def fn(r: requests.Response) -> str | None:
        try:
            parts = multipart_parts(r)
        except ValueError as e:
            return str(e)
        if len(parts) != 1:
            return f"{len(parts)} parts, expected 1"
        body = parts[0][1]
        if expect_len is not None:
            return None if len(body) == expect_len else f"{len(body)} bytes, expected {expect_len}"
        # A fragment may carry one byte of padding to even length.
        if exact and body.rstrip(b"\x00") != expected.rstrip(b"\x00") and body != expected:
            return f"frame bytes differ ({len(body)} vs {len(expected)} expected)"
        return None
    return fn


def check_image(mtype: str):
    def fn(r: requests.Response) -> str | None:
        got = r.headers.get("Content-Type", "").split(";")[0].strip()
        if got != mtype:
            return f"Content-Type {got!r}, expected {mtype!r}"
        try:
            Image.open(io.BytesIO(r.content)).load()
        except Exception as e:  # noqa: BLE001
            return f"not a decodable image: {e}"
        return None
    return fn


def timed_get(s: requests.Session, url: str, headers: dict, timeout: float) -> tuple[float, requests.Response]:
    t0 = time.perf_counter()
    r = s.get(url, headers=headers, timeout=timeout)
    _ = r.content
    return (time.perf_counter() - t0) * 1000, r


def stats(ms: list[float]) -> dict:
    return {"samples": len(ms), "p50_ms": r2(percentile(ms, 50)), "p99_ms": r2(percentile(ms, 99)),
            "min_ms": r2(min(ms)) if ms else None, "max_ms": r2(max(ms)) if ms else None,
            "all_ms": [r2(v) for v in ms] if len(ms) <= 20 else None}


def store(base: str, files: list[tuple[str, bytes]], per_request: int, clients: int,
          timeout: float, what: str) -> dict:
    res, stored = phase_stow(base, files, per_request, clients, timeout)
    if res["errors"] or res["stored_failed"] or res["stored_ok"] != len(files):
        raise RuntimeError(f"STOW of {what} failed: {res['stored_ok']}/{len(files)} stored, "
                           f"{res['stored_failed']} failed, errors {res['error_samples']}")
    return res


# --------------------------------------------------------------------------
# phases
# --------------------------------------------------------------------------

def phase_frames(base: str, s: requests.Session, study: StudyInfo, args, nrng) -> dict:
    out: dict = {}
    size, n = args.frame_size, args.frames
    log(f"FRAMES: generating native {n} x {size}x{size} uint16 and JPEG baseline {n} x {size}x{size}")
    nat_sop, nat_file, nat_checks = native_multiframe(study, n, size, nrng)
    jpg_sop, jpg_file, jpg_checks, jpg_bytes = jpeg_multiframe(study, n, size, args.jpeg_quality, nrng)
    nat_se, jpg_se = study.series[-2].uid, study.series[-1].uid
    out["native"] = {"frames": n, "rows": size, "columns": size, "bits_allocated": 16,
                     "file_bytes": len(nat_file),
                     "stow": store(base, [(study.uid, nat_file)], 1, 1, args.big_timeout, "native multi-frame")}
    del nat_file
    out["jpeg"] = {"frames": n, "rows": size, "columns": size, "bits_allocated": 8,
                   "transfer_syntax": str(JPEGBaseline8Bit), "quality": args.jpeg_quality,
                   "file_bytes": len(jpg_file), "mean_frame_bytes": round(jpg_bytes / n),
                   "stow": store(base, [(study.uid, jpg_file)], 1, 1, args.big_timeout, "JPEG multi-frame")}
    del jpg_file

    def url(se, sop, f):
        return f"{base}/dicomweb/studies/{study.uid}/series/{se}/instances/{sop}/frames/{f}"

    probes = [
        Probe("native frame 1", url(nat_se, nat_sop, 1), {"Accept": ACCEPT_AS_STORED},
              check=check_frame(nat_checks[0])),
        Probe(f"native frame {n}", url(nat_se, nat_sop, n), {"Accept": ACCEPT_AS_STORED},
              check=check_frame(nat_checks[1])),
        Probe("JPEG frame 1 (as stored)", url(jpg_se, jpg_sop, 1), {"Accept": ACCEPT_AS_STORED},
              check=check_frame(jpg_checks[0])),
        Probe(f"JPEG frame {n} (as stored)", url(jpg_se, jpg_sop, n), {"Accept": ACCEPT_AS_STORED},
              check=check_frame(jpg_checks[1])),
        Probe(f"JPEG frame {n} decoded to native", url(jpg_se, jpg_sop, n), {"Accept": ACCEPT_NATIVE},
              check=check_frame(b"", expect_len=size * size)),
    ]
    log(f"FRAMES: {len(probes)} kinds x {args.reps} requests, interleaved")
    interleaved(probes, s, args.reps, args.warmup, args.timeout)
    out["probes"] = {p.name: p.summary() for p in probes}
    floor = backend_floor(args, {"native": size * size * 2, "JPEG": round(jpg_bytes / n)})
    if floor:
        out["backend_floor"] = floor
    return out


def s3_target():
    """(boto3 client, bucket, prefix) of an s3:// blob URL on an emulator, else None."""
    blob_url = os.environ.get("KASTELL__STORAGE__BLOB_URL", "")
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if not blob_url.startswith("s3://") or not endpoint:
        return None
    import boto3  # only needed here (installed with moto)
    bucket, _, prefix = blob_url[len("s3://"):].partition("/")
    return boto3.client("s3", endpoint_url=endpoint), bucket, prefix


def s3_objects() -> list[str] | None:
    target = s3_target()
    if target is None:
        return None
    client, bucket, prefix = target
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def s3_get_all(keys: list[str], args) -> dict:
    """The store's own time to hand over every object of the study, whole, four
    at a time in order (what Kastell's retrieval does: one GET per instance,
    four opened ahead), timed with boto3 straight against the store."""
    import concurrent.futures
    client, bucket, _ = s3_target()

    def get(key):
        return len(client.get_object(Bucket=bucket, Key=key)["Body"].read())

    samples = []
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for k in range(args.warmup + args.study_reps):
            t0 = time.perf_counter()
            received = sum(pool.map(get, keys))
            if k >= args.warmup:
                samples.append((time.perf_counter() - t0) * 1000)
    out = stats(samples)
    out["objects"], out["bytes"] = len(keys), received
    log(f"STUDY: the store alone: {out}")
    return out


def backend_floor(args, range_bytes: dict[str, int]) -> dict | None:
    """The object store's own latency for what a frame costs it: a ranged GET of
    one frame's size at a random offset of the two largest objects in the bucket
    (the two multi-frame instances, encrypted), timed with boto3 straight
    against the store. Only for an s3:// blob URL with AWS_ENDPOINT_URL set (the
    emulator); it separates the store's share of a frame's latency from
    Kastell's."""
    target = s3_target()
    if target is None:
        return None
    client, bucket, prefix = target
    objects = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        objects += page.get("Contents", [])
    largest = sorted(objects, key=lambda o: o["Size"], reverse=True)[:2]
    out = {}
    rng = random.Random(1)
    for obj in largest:
        for name, length in range_bytes.items():
            samples = []
            for _ in range(args.warmup + 50):
                start = rng.randrange(0, max(1, obj["Size"] - length))
                t0 = time.perf_counter()
                client.get_object(Bucket=bucket, Key=obj["Key"],
                                  Range=f"bytes={start}-{start + length - 1}")["Body"].read()
                samples.append((time.perf_counter() - t0) * 1000)
            key = f"ranged GET of {length} B ({name} frame) from a {obj['Size'] / 2**20:.0f} MiB object"
            out[key] = stats(samples[args.warmup:])
    log(f"FRAMES: backend floor {out}")
    return out


def phase_metadata(base: str, s: requests.Session, study: StudyInfo, args, nrng) -> dict:
    size = 64
    log(f"METADATA: generating {args.series_instances} CT-like {size}x{size} instances")
    se, files = metadata_series(study, args.series_instances, size, nrng)
    res = {"instances": args.series_instances, "instance_file_bytes": len(files[0][1]),
           "stow": store(base, files, args.per_request, 2, args.timeout, "metadata series")}
    del files
    url = f"{base}/dicomweb/studies/{study.uid}/series/{se.uid}/metadata"
    hdr = {"Accept": DICOM_JSON}

    def check(r: requests.Response, expected: int) -> None:
        if r.status_code != 200:
            raise RuntimeError(f"metadata -> HTTP {r.status_code}: {one_line(r.text)}")
        got = len(r.json())
        if got != expected:
            raise RuntimeError(f"metadata has {got} instances, expected {expected}")

    # Cold: the first request after the series changed. Sample 1 follows the STOW of
    # the whole series; every further sample follows the STOW of one more instance
    # into the same series (new ETag, so the cached blob no longer matches).
    cold, cold_sizes, etags = [], [], []
    for k in range(args.cold):
        if k > 0:
            extra = ct_instance(study, se, args.series_instances + k, size, nrng)
            store(base, [(study.uid, extra)], 1, 1, args.timeout, "one more instance")
            time.sleep(0.2)
        ms, r = timed_get(s, url, hdr, args.timeout)
        check(r, len(se.instances))
        cold.append(ms)
        cold_sizes.append(len(r.content))
        etags.append(r.headers.get("ETag"))
        log(f"METADATA: cold sample {k + 1}/{args.cold}: {ms:.1f} ms "
            f"({len(se.instances)} instances, {len(r.content):,} bytes)")
        # The cache blob is written while the answer streams; let it settle.
        time.sleep(0.5)
    res["cold"] = stats(cold)
    res["cold"]["instances_per_sample"] = [args.series_instances + k for k in range(args.cold)]
    res["etags_distinct"] = len(set(etags)) == len(etags)

    # First request after the series went quiet: one more instance is stored, then
    # the bench waits for the server's metadata warmer (dicomweb.metadata_warm_after_secs,
    # built ahead of the first request) before asking, as a viewer opening a study a few
    # seconds after it arrived would.
    if args.warm_wait > 0:
        quiet = []
        for k in range(args.cold):
            n = args.series_instances + args.cold + k
            extra = ct_instance(study, se, n, size, nrng)
            store(base, [(study.uid, extra)], 1, 1, args.timeout, "one more instance")
            time.sleep(args.warm_wait)
            ms, r = timed_get(s, url, hdr, args.timeout)
            check(r, len(se.instances))
            quiet.append(ms)
            etags.append(r.headers.get("ETag"))  # the 304 probe below revalidates the latest
            log(f"METADATA: first request {args.warm_wait:.0f} s after the last STOW "
                f"{k + 1}/{args.cold}: {ms:.1f} ms ({len(se.instances)} instances)")
        res["after_quiet"] = stats(quiet)
        res["after_quiet"]["wait_s"] = args.warm_wait

    cached = Probe("series metadata (cached)", url, hdr)
    etag = etags[-1]
    revalidate = Probe("series metadata, If-None-Match (304)", url,
                       {**hdr, "If-None-Match": etag}, expect=304)
    log(f"METADATA: cached and 304 x {args.reps} requests, interleaved")
    interleaved([cached, revalidate], s, args.reps, args.warmup, args.timeout)
    check(cached.last, len(se.instances))
    res["cached"] = cached.summary()
    res["not_modified"] = revalidate.summary()
    res["response_bytes"] = cold_sizes[-1]
    res["final_instances"] = len(se.instances)
    res["etag_stable_when_cached"] = cached.last.headers.get("ETag") == etag
    return res


def phase_study(base: str, s: requests.Session, _study: StudyInfo, args, nrng) -> dict:
    """Whole-study WADO-RS: a study of --study-instances 512x512 16-bit CT
    instances (about 0.5 MB each) retrieved as stored, the body read and
    discarded as it streams; MB/s of DICOM payload."""
    study = StudyInfo(uid=new_uid(), patient_id="KBRET0002", patient_name="Retrieval^Study",
                      date="20240606", accession="ACCRSTUDY")
    se, files = metadata_series(study, args.study_instances, 512, nrng, number=30)
    total_bytes = sum(len(f) for _, f in files)
    before = s3_objects()
    res = {"instances": args.study_instances, "stored_bytes": total_bytes,
           "stow": store(base, files, args.per_request, 2, args.timeout, "whole-study study")}
    del files
    if before is not None:
        # The study's objects: what the STOW added (the bench stores nothing else meanwhile).
        res["backend_floor"] = s3_get_all(sorted(set(s3_objects()) - set(before)), args)
    url = f"{base}/dicomweb/studies/{study.uid}"
    headers = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    samples, received = [], 0
    for k in range(args.warmup + args.study_reps):
        t0 = time.perf_counter()
        with s.get(url, headers=headers, stream=True, timeout=args.big_timeout) as r:
            r.raise_for_status()
            received = sum(len(chunk) for chunk in r.iter_content(1 << 20))
        ms = (time.perf_counter() - t0) * 1000
        if k >= args.warmup:
            samples.append(ms)
            log(f"STUDY: {k + 1 - args.warmup}/{args.study_reps}: {ms:.0f} ms, {received} bytes")
    res["retrieve"] = stats(samples)
    res["response_bytes"] = received
    res["mb_per_s_p50"] = r2(received / 1e6 / (percentile(samples, 50) / 1000))
    return res


def phase_rendered(base: str, s: requests.Session, study: StudyInfo, args, nrng) -> dict:
    size = 512
    se = SeriesInfo(uid=new_uid(), modality="CT", number=30)
    study.series.append(se)
    files = [(study.uid, ct_instance(study, se, k + 1, size, nrng)) for k in range(args.thumb_cold)]
    ct_sops = list(se.instances)
    jse = SeriesInfo(uid=new_uid(), modality="OT", number=31)
    study.series.append(jse)
    files.append((study.uid, jpeg_instance(study, jse, size, args.jpeg_quality, nrng)))
    res = {"ct_instances": len(ct_sops), "ct_file_bytes": len(files[0][1]),
           "jpeg_file_bytes": len(files[-1][1]),
           "stow": store(base, files, len(files), 1, args.timeout, "rendered instances")}

    def inst(series, sop):
        return f"{base}/dicomweb/studies/{study.uid}/series/{series}/instances/{sop}"

    # First thumbnail requests: one per CT instance, each the first for that instance.
    first = []
    for sop in ct_sops:
        ms, r = timed_get(s, inst(se.uid, sop) + "/thumbnail", {"Accept": ACCEPT_JPEG}, args.timeout)
        if r.status_code != 200:
            raise RuntimeError(f"thumbnail -> HTTP {r.status_code}: {one_line(r.text)}")
        first.append(ms)
    res["thumbnail_first"] = stats(first)
    res["thumbnail_bytes"] = len(r.content)
    time.sleep(0.2)
    probes = [
        Probe("rendered CT 512x512 16-bit", inst(se.uid, ct_sops[0]) + "/rendered",
              {"Accept": ACCEPT_JPEG}, check=check_image("image/jpeg")),
        Probe("rendered JPEG-baseline 512x512", inst(jse.uid, jse.instances[0]) + "/rendered",
              {"Accept": ACCEPT_JPEG}, check=check_image("image/jpeg")),
        Probe("thumbnail CT (cached)", inst(se.uid, ct_sops[0]) + "/thumbnail",
              {"Accept": ACCEPT_JPEG}, check=check_image("image/jpeg")),
    ]
    log(f"RENDERED: {len(probes)} kinds x {args.reps} requests, interleaved")
    interleaved(probes, s, args.reps, args.warmup, args.timeout)
    res["probes"] = {p.name: p.summary() for p in probes}
    return res


# --------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------

def markdown(results: dict) -> str:
    rows: list[tuple[str, str, str, str, str]] = []

    def add(section, what, d, size=None):
        rows.append((section, what, str(d.get("samples", "")), f"{fmt(d.get('p50_ms'))} / {fmt(d.get('p99_ms'))}",
                     fmt(size if size is not None else d.get("response_bytes"))))

    f = results.get("frames")
    if f:
        for name, d in f["probes"].items():
            add("Frames", name, d)
        for name, d in f.get("backend_floor", {}).items():
            add("Store alone (boto3)", name, d, 0)
    m = results.get("metadata")
    if m:
        n = m["instances"]
        add("Series metadata", f"cold, {n}+ instances (cache miss)", m["cold"], m["response_bytes"])
        if "after_quiet" in m:
            add("Series metadata", f"first request {m['after_quiet']['wait_s']:.0f} s after the last STOW "
                "(built ahead by the warmer)", m["after_quiet"])
        add("Series metadata", "cached", m["cached"])
        add("Series metadata", "If-None-Match → 304", m["not_modified"])
    st = results.get("study")
    if st:
        add("Whole study", f"{st['instances']} CT instances as stored, {st['mb_per_s_p50']} MB/s at p50",
            st["retrieve"], st["response_bytes"])
        if "backend_floor" in st:
            add("Store alone (boto3)", f"GET of the study's {st['backend_floor']['objects']} objects, 4 at a time",
                st["backend_floor"], st["backend_floor"]["bytes"])
    r = results.get("rendered")
    if r:
        for name, d in r["probes"].items():
            add("Rendered", name, d)
        add("Rendered", "thumbnail CT, first request", r["thumbnail_first"], r["thumbnail_bytes"])
    out = ["| Part | Request | n | p50 / p99 ms | Response bytes |", "|---|---|---:|---:|---:|"]
    out += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
    return "\n".join(out)


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bin", default=load.default_bin(),
                   help="server binary ($KASTELL_BIN, else the first existing release build)")
    p.add_argument("--frames", type=int, default=500, help="frames per multi-frame instance")
    p.add_argument("--frame-size", type=int, default=512, help="rows = columns of each frame")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--series-instances", type=int, default=2000, help="instances in the metadata series")
    p.add_argument("--per-request", type=int, default=50, help="instances per STOW request")
    p.add_argument("--cold", type=int, default=5, help="cold series-metadata samples")
    p.add_argument("--warm-wait", type=float, default=0.0,
                   help="also time the first metadata request this many seconds after the last "
                        "STOW (set above KASTELL__DICOMWEB__METADATA_WARM_AFTER_SECS); 0: skip")
    p.add_argument("--thumb-cold", type=int, default=5,
                   help="CT instances whose first thumbnail request is timed")
    p.add_argument("--reps", type=int, default=200, help="measured requests per kind")
    p.add_argument("--warmup", type=int, default=5, help="unrecorded requests per kind first")
    p.add_argument("--study-instances", type=int, default=200,
                   help="512x512 CT instances in the whole-study retrieval study")
    p.add_argument("--study-reps", type=int, default=10, help="measured whole-study retrievals")
    p.add_argument("--skip", default="", help="comma list of phases to skip: frames,metadata,study,rendered")
    p.add_argument("--out", default="retrieval.json", help="JSON results file")
    p.add_argument("--seed", type=int, default=20240605)
    load.add_run_args(p, big_timeout=600.0)
    a = p.parse_args(argv)
    if min(a.frames, a.frame_size, a.series_instances, a.per_request, a.cold, a.thumb_cold, a.reps) < 1:
        p.error("counts must be >= 1")
    a.skip = {x.strip() for x in a.skip.split(",") if x.strip()}
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (os.path.isfile(args.bin) and os.access(args.bin, os.X_OK)):
        print(f"server binary not found or not executable: {args.bin}\n"
              f"build it with `cargo build --release` or set KASTELL_BIN",
              file=sys.stderr)
        return 2

    def _term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, _term)

    rng = random.Random(args.seed)
    nrng = np.random.default_rng(args.seed)
    results: dict = {
        "meta": {
            "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "binary": os.path.abspath(args.bin),
            "args": {k: (sorted(v) if isinstance(v, set) else v)
                     for k, v in vars(args).items() if k != "bin"},
            "host": platform.node(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_start": os.getloadavg(),
        },
    }
    study = StudyInfo(uid=new_uid(), patient_id="KBRET0001", patient_name="Retrieval^Bench",
                      date="20240605", accession=f"ACCR{rng.randrange(10**6):06d}")

    data_dir = tempfile.mkdtemp(prefix="kastell-retrieval-", dir=args.data_root)
    server = load.Server(args.bin, os.path.join(data_dir, "data"),
                         os.path.join(data_dir, "server.log"), args.startup_timeout)
    os.makedirs(server.data_dir, exist_ok=True)
    rc = 0
    t_start = time.perf_counter()
    try:
        server.start()
        time.sleep(0.2)
        results["server"] = {"pid": server.pid,
                             "idle_rss_mib": kib_to_mib(proc_status(server.pid).get("VmRSS"))}
        with requests.Session() as s:
            for name, fn in (("frames", phase_frames), ("metadata", phase_metadata),
                             ("study", phase_study), ("rendered", phase_rendered)):
                if name in args.skip:
                    continue
                t0 = time.perf_counter()
                results[name] = fn(server.base, s, study, args, nrng)
                results[name]["phase_s"] = r2(time.perf_counter() - t0, 1)
                if not server.alive():
                    raise RuntimeError(f"server died during {name}\n" + server.log_tail())
        results["server"]["rss_end_mib"] = kib_to_mib(proc_status(server.pid).get("VmRSS"))
        results["server"]["peak_rss_vmhwm_mib"] = kib_to_mib(proc_status(server.pid).get("VmHWM"))
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); stopping server")
        results["aborted"] = f"interrupted: {e}"
        rc = 130
    except Exception as e:  # report what we have, then fail
        log(f"ERROR: {e}")
        results["aborted"] = str(e)
        rc = 1
    finally:
        exit_code = server.stop()
        results.setdefault("server", {})["exit_code"] = exit_code

    results["meta"]["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    results["meta"]["wall_s"] = r2(time.perf_counter() - t_start, 1)
    results["meta"]["loadavg_end"] = os.getloadavg()

    problems = []
    for phase in ("frames", "rendered"):
        for name, d in (results.get(phase) or {}).get("probes", {}).items():
            if d["errors"]:
                problems.append(f"{phase}/{name}: {d['errors']} errors, e.g. {d['error_samples'][0]}")
    m = results.get("metadata") or {}
    for key in ("cached", "not_modified"):
        if m.get(key, {}).get("errors"):
            problems.append(f"metadata/{key}: {m[key]['errors']} errors, e.g. {m[key]['error_samples'][0]}")
    if m and not m.get("etags_distinct"):
        problems.append("metadata: the ETag did not change after storing one more instance")
    return load.finish(args, results, problems, rc, server, data_dir, markdown(results),
                       summary=f" (wall {results['meta']['wall_s']} s)")


if __name__ == "__main__":
    sys.exit(main())
