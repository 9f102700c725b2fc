"""Blob privacy: what lies in the blob store reveals neither patients nor studies.

Kastell's contract (STYLE.md habits 2 and 4): every object name comes from one
`BlobKey` type and carries no patient data, and every blob is envelope-encrypted.
These tests read the backend directly, not through the server, after the session
fixture has stored the whole fixture set:

* object names contain no Study/Series/SOP Instance UID, PatientID or
  PatientName component of a stored fixture;
* object bytes contain no plain DICOM: no ``DICM`` marker, no such UID, no
  PatientName or PatientID (as ASCII, UTF-8 or Latin-1).

Where the objects are comes from the environment that conformance/run_suite.sh
sets: KASTELL_BLOB_URL (``file:///dir``, ``s3://bucket/prefix`` with the AWS_*
variables, ``az://container/prefix`` with the AZURE_* / AZURITE_* variables;
see tests/backends/) or, when it is unset, the server's default
``<KASTELL_DATA_DIR>/blobs``.  ``memory://`` cannot be read from outside the
server and is skipped; any other scheme fails until a reader is added here.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

import kastell_helpers as kh

# Azurite's documented development account; not a secret.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
               "KBHBeksoGMGw==")

# Name components and IDs shorter than this are not looked for in object names.
MIN_NAME_NEEDLE = 3
# Byte strings shorter than this (other than DICM) are not looked for in object
# bytes: ciphertext is random, and with N bytes stored a needle of L bytes turns
# up by chance about N / 256**L times (for the ~0.8 MB fixture set: ~5% for a
# 3-byte needle, ~7e-7 for a 5-byte one).  Every UID is far longer than this.
# DICM is looked for all the same: a false alarm on ciphertext is ~2e-4 per run.
MIN_BYTES_NEEDLE = 5
MAX_REPORTED = 25


# --------------------------------------------------------------------------
# Reading the backend
# --------------------------------------------------------------------------
def _blob_url() -> str:
    url = os.environ.get("KASTELL_BLOB_URL", "").strip()
    if url:
        return url
    data_dir = os.environ.get("KASTELL_DATA_DIR")
    if not data_dir:
        pytest.skip("neither KASTELL_BLOB_URL nor KASTELL_DATA_DIR is set, so the blob store "
                    "cannot be found (conformance/run_suite.sh sets them)")
    return Path(data_dir).resolve().joinpath("blobs").as_uri()


def _split(url: str) -> tuple[str, str, str]:
    """scheme, bucket/container (netloc), prefix without leading slash."""
    p = urlsplit(url)
    return p.scheme.lower(), p.netloc, unquote(p.path).lstrip("/")


def _without_prefix(url: str) -> str:
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc}/"


def _read_file(url: str) -> list[tuple[str, bytes]]:
    root = Path(unquote(urlsplit(url).path))
    assert root.is_dir(), f"blob directory {root} (from {url}) does not exist"
    return [(p.relative_to(root).as_posix(), p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()]


def _read_s3(url: str) -> list[tuple[str, bytes]]:
    import boto3
    from botocore.config import Config

    _, bucket, prefix = _split(url)
    virtual = os.environ.get("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false").lower() in ("1", "true")
    s3 = boto3.client(
        "s3",
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
        region_name=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        config=Config(s3={"addressing_style": "virtual" if virtual else "path"}),
    )
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out.append((obj["Key"], s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()))
    return out


def _read_azure(url: str) -> list[tuple[str, bytes]]:
    from azure.storage.blob import BlobServiceClient

    _, container, prefix = _split(url)
    account = os.environ.get("AZURE_STORAGE_ACCOUNT_NAME")
    key = os.environ.get("AZURE_STORAGE_ACCOUNT_KEY")
    if os.environ.get("AZURE_STORAGE_USE_EMULATOR", "").lower() in ("1", "true"):
        account, key = account or AZURITE_ACCOUNT, key or AZURITE_KEY
        base = os.environ.get("AZURITE_BLOB_STORAGE_URL", "http://127.0.0.1:10000").rstrip("/")
        endpoint = f"{base}/{account}"
    else:
        assert account and key, "az:// outside the emulator needs AZURE_STORAGE_ACCOUNT_NAME and _KEY"
        endpoint = f"https://{account}.blob.core.windows.net"
    conn = (f"DefaultEndpointsProtocol={urlsplit(endpoint).scheme};AccountName={account};"
            f"AccountKey={key};BlobEndpoint={endpoint};")
    client = BlobServiceClient.from_connection_string(conn).get_container_client(container)
    return [(b.name, client.download_blob(b.name).readall())
            for b in client.list_blobs(name_starts_with=prefix or None)]


READERS = {"file": _read_file, "s3": _read_s3, "az": _read_azure, "azure": _read_azure}


@pytest.fixture(scope="module")
def blob_objects(stored) -> list[tuple[str, bytes]]:
    """(object name, raw bytes) of every object in the blob store, read directly."""
    url = _blob_url()
    scheme = _split(url)[0]
    if scheme == "memory":
        pytest.skip("memory:// lives inside the server process; its objects cannot be read here")
    reader = READERS.get(scheme)
    if reader is None:
        pytest.fail(f"no reader for blob store {url!r} in test_blob_privacy.py: add one")
    return reader(url)


# --------------------------------------------------------------------------
# What must not show
# --------------------------------------------------------------------------
def _name_components(name: str) -> list[str]:
    """PatientName itself, its component groups and its components ('^' and '=' separated)."""
    parts = [name] + re.split(r"[=^]", name)
    return [p.strip() for p in parts if p.strip()]


def _identifiers(manifest) -> list[tuple[str, str, str]]:
    """(kind, value, fixture source) for every identifying value of the fixture set."""
    out = []
    for e in manifest.files:
        src = e["source"]
        out += [("StudyInstanceUID", e["study_instance_uid"], src),
                ("SeriesInstanceUID", e["series_instance_uid"], src),
                ("SOPInstanceUID", e["sop_instance_uid"], src)]
        if (e.get("patient_id") or "").strip():
            out.append(("PatientID", e["patient_id"].strip(), src))
        for comp in _name_components(e.get("patient_name") or ""):
            out.append(("PatientName", comp, src))
    seen, unique = set(), []
    for kind, value, src in out:
        if (kind, value) not in seen:
            seen.add((kind, value))
            unique.append((kind, value, src))
    return unique


def _encodings(value: str) -> set[bytes]:
    out = set()
    for codec in ("ascii", "utf-8", "latin-1"):
        try:
            out.add(value.encode(codec))
        except UnicodeEncodeError:
            pass
    return out


def _accepted_sop_uids(stored) -> set[str]:
    uids = set()
    for req in stored.requests + stored.fallback:
        resp = req["response"]
        if isinstance(resp, Exception) or resp.status_code not in (200, 202):
            continue
        try:
            uids |= set(kh.referenced(kh.store_response(resp)))
        except (AssertionError, ValueError):
            pass
    return uids


def _report(what: str, hits: list[str]) -> str:
    more = f"\n  ... and {len(hits) - MAX_REPORTED} more" if len(hits) > MAX_REPORTED else ""
    return f"{len(hits)} {what}:\n  " + "\n  ".join(hits[:MAX_REPORTED]) + more


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------
def test_blob_store_holds_the_stored_instances(blob_objects, stored):
    """Precondition of the two tests below: the objects read are the stored ones."""
    accepted = _accepted_sop_uids(stored)
    assert accepted, "the session fixture stored nothing (see test_fixture_set_stored)"
    url = _blob_url()
    scheme, _, prefix = _split(url)
    hint = ""
    if not blob_objects and scheme != "file" and prefix:
        # Did the server write beside its prefix (e.g. at the bucket's root)?
        names = [name for name, _ in READERS[scheme](_without_prefix(url))]
        if names:
            hint = (f"; the bucket/container holds {len(names)} objects outside the prefix "
                    f"{prefix!r}, e.g. {names[:3]}: the server ignored the URL's path")
    assert len(blob_objects) >= len(accepted), (
        f"{len(blob_objects)} objects under {url} for {len(accepted)} stored instances{hint}")


def test_object_names_carry_no_identifiers(blob_objects, manifest):
    """No object name contains a stored UID, PatientID or PatientName component."""
    assert blob_objects, f"no objects found in {_blob_url()}"
    needles = []
    for kind, value, src in _identifiers(manifest):
        if len(value) < MIN_NAME_NEEDLE:
            continue
        # Case-insensitive, and not inside a longer run of letters and digits, so
        # that a short ID such as "204" does not match inside a hex digest.
        pattern = re.compile(r"(?<![0-9A-Za-z])" + re.escape(value) + r"(?![0-9A-Za-z])",
                             re.IGNORECASE)
        needles.append((kind, value, src, pattern))
    hits = []
    for name, _ in blob_objects:
        for kind, value, src, pattern in needles:
            if pattern.search(name):
                hits.append(f"{name!r} contains {kind} {value!r} (fixture {src})")
    assert not hits, _report("object names carry identifying values", hits)


def test_object_bytes_are_not_plain_dicom(blob_objects, manifest):
    """No object holds DICM, a stored UID, a PatientName or a PatientID in clear.

    Fails until blobs are envelope-encrypted (STYLE.md habit 4).
    """
    assert blob_objects, f"no objects found in {_blob_url()}"
    needles: dict[bytes, str] = {b"DICM": "the DICOM file marker DICM"}
    for kind, value, src in _identifiers(manifest):
        for raw in _encodings(value):
            if len(raw) >= MIN_BYTES_NEEDLE:
                needles.setdefault(raw, f"{kind} {value!r} (fixture {src})")
    hits = []
    for name, data in blob_objects:
        found = [label for raw, label in needles.items() if raw in data]
        if found:
            shown = "; ".join(found[:3]) + (f"; and {len(found) - 3} more" if len(found) > 3 else "")
            hits.append(f"{name!r} ({len(data)} bytes): {shown}")
    assert not hits, _report("objects hold identifying plaintext", hits)
