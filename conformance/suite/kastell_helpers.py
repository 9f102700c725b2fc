"""Shared helpers for the Kastell DICOMweb conformance suite.

Nothing in here talks to pytest; conftest.py wires these into fixtures.
"""
from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote, urlencode, urljoin, urlsplit

import numpy as np
import pydicom
import pydicom.config

# Compare with what the file says: pydicom would otherwise re-type elements stored
# as UN from its private dictionaries, which a server does not (and should not) do.
pydicom.config.replace_un_with_known_vr = False
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.datadict import dictionary_VR
from pydicom.uid import ExplicitVRLittleEndian

warnings.filterwarnings("ignore", module="pydicom")
# Real-world fixtures contain slightly invalid values (e.g. UIDs with leading
# zeros); the suite compares them, it does not validate them.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
NATIVE_SYNTAXES = {EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE, DEFLATED}

DICOM_JSON = "application/dicom+json"
ACCEPT_DICOM = 'multipart/related; type="application/dicom"'
TIMEOUT = 60

BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
NUMBER_VRS = {"FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"}
NUMBER_OR_STRING_VRS = {"IS", "DS", "SV", "UV"}
STRING_VRS = {"AE", "AS", "AT", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
TAG_RE = re.compile(r"^[0-9A-F]{8}$")


# --------------------------------------------------------------------------
# Manifest / fixtures
# --------------------------------------------------------------------------
class Manifest:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.data = json.loads((self.root / "manifest.json").read_text(encoding="utf-8"))
        self.files: list[dict] = self.data["files"]
        self.synthetic: dict = self.data["synthetic_studies"]
        self._ds_cache: dict[str, Dataset] = {}

    # lookup --------------------------------------------------------------
    def by_name(self, name: str) -> dict:
        for e in self.files:
            if e["source"].split(":", 1)[1] == name or e["file"].endswith("/" + name):
                return e
        raise KeyError(name)

    def has(self, name: str) -> bool:
        try:
            self.by_name(name)
            return True
        except KeyError:
            return False

    def with_tag(self, *tags: str) -> list[dict]:
        return [e for e in self.files if all(t in e["tags"] for t in tags)]

    def in_group(self, group: str) -> list[dict]:
        return [e for e in self.files if e["group"] == group]

    def study(self, study_uid: str) -> list[dict]:
        return [e for e in self.files if e["study_instance_uid"] == study_uid]

    def series(self, series_uid: str) -> list[dict]:
        return [e for e in self.files if e["series_instance_uid"] == series_uid]

    def study_uids(self) -> set[str]:
        return {e["study_instance_uid"] for e in self.files}

    def series_uids(self) -> set[str]:
        return {e["series_instance_uid"] for e in self.files}

    def sop_uids(self) -> set[str]:
        return {e["sop_instance_uid"] for e in self.files}

    def studies(self) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for e in self.files:
            out.setdefault(e["study_instance_uid"], []).append(e)
        return out

    def syn(self, key: str) -> dict:
        return self.synthetic[key]

    def syn_files(self, key: str) -> list[dict]:
        return self.in_group(f"synthetic-{key}")

    # content -------------------------------------------------------------
    def path(self, e: dict) -> Path:
        return self.root / e["file"]

    def bytes(self, e: dict) -> bytes:
        return self.path(e).read_bytes()

    def dataset(self, e: dict) -> Dataset:
        key = e["file"]
        if key not in self._ds_cache:
            self._ds_cache[key] = pydicom.dcmread(self.path(e))
        return self._ds_cache[key]


def ensure_fixtures(fixture_dir: str | None, tmp_root: Path) -> Path:
    """Return a fixture directory, building one if KASTELL_FIXTURES is unset."""
    if fixture_dir:
        p = Path(fixture_dir)
        if not (p / "manifest.json").exists():
            raise RuntimeError(f"KASTELL_FIXTURES={fixture_dir} has no manifest.json "
                               f"(run: python3 conformance/fixtures.py {fixture_dir})")
        return p
    import importlib.util
    here = Path(__file__).resolve().parent.parent / "fixtures.py"
    spec = importlib.util.spec_from_file_location("kastell_fixtures", here)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    out = tmp_root / "fixtures"
    mod.build(out)
    return out


def collect_names(predicate) -> list[str]:
    """Fixture names matching *predicate*, for pytest parametrisation at collection time.

    When KASTELL_FIXTURES is unset, a fixture set is built once into a temp dir
    and KASTELL_FIXTURES is pointed at it so that the session uses the same set.
    """
    import tempfile
    root = os.environ.get("KASTELL_FIXTURES")
    if not root or not (Path(root) / "manifest.json").exists():
        tmp = Path(tempfile.mkdtemp(prefix="kastell-fixtures-"))
        root = str(ensure_fixtures(None, tmp))
        os.environ["KASTELL_FIXTURES"] = root
    m = Manifest(Path(root))
    return [e["source"].split(":", 1)[1] for e in m.files if predicate(e)]


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------
class Api:
    """Thin wrapper around requests with the DICOMweb base URL."""

    def __init__(self, base_url: str):
        self.base = base_url.rstrip("/")
        self.session = requests.Session()

    def url(self, path: str) -> str:
        if path.startswith("http://") or path.startswith("https://"):
            return path
        return self.base + (path if path.startswith("/") else "/" + path)

    def get(self, path: str, params=None, headers=None, **kw) -> requests.Response:
        url = self.url(path)
        if params:
            # Percent-encode with %20 for spaces: requests' default form encoding
            # turns ' ' into '+', which DICOMweb treats as a literal '+' (rule 3).
            items = params.items() if isinstance(params, dict) else params
            qs = urlencode(list(items), quote_via=quote, safe="")
            url = url + ("&" if "?" in url else "?") + qs
        return self.session.get(url, headers=headers or {}, timeout=TIMEOUT, **kw)

    def post(self, path: str, data: bytes, headers=None, params=None) -> requests.Response:
        return self.session.post(self.url(path), data=data, headers=headers or {},
                                 params=params, timeout=TIMEOUT)

    def resolve(self, url: str) -> str:
        """Resolve a (possibly relative) URL returned by the server."""
        return urljoin(self.base + "/", url)

    def root(self) -> str:
        p = urlsplit(self.base)
        return f"{p.scheme}://{p.netloc}"


def study_path(st: str) -> str:
    return f"/studies/{st}"


def series_path(st: str, se: str) -> str:
    return f"/studies/{st}/series/{se}"


def instance_path(st: str, se: str, sop: str) -> str:
    return f"/studies/{st}/series/{se}/instances/{sop}"


def entry_path(e: dict) -> str:
    return instance_path(e["study_instance_uid"], e["series_instance_uid"], e["sop_instance_uid"])


def describe(resp: requests.Response, limit: int = 600) -> str:
    """Short description of a response for assertion messages."""
    ctype = resp.headers.get("Content-Type", "")
    body = resp.content[:limit]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = repr(body[:200])
    return (f"{resp.request.method} {resp.request.url} -> {resp.status_code} "
            f"Content-Type={ctype!r} Warning={resp.headers.get('Warning')!r} body={text!r}")


# --------------------------------------------------------------------------
# Media types and multipart
# --------------------------------------------------------------------------
def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """Parse 'type/subtype; a=b; c="d; e"' -> ('type/subtype', {'a': 'b', 'c': 'd; e'})."""
    value = value or ""
    parts: list[str] = []
    cur, quoted, i = [], False, 0
    while i < len(value):
        ch = value[i]
        if ch == '"':
            quoted = not quoted
            cur.append(ch)
        elif ch == "\\" and quoted and i + 1 < len(value):
            cur.append(value[i + 1])
            i += 1
        elif ch == ";" and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    mtype = parts[0].strip().lower()
    params: dict[str, str] = {}
    for p in parts[1:]:
        if "=" not in p:
            continue
        k, v = p.split("=", 1)
        v = v.strip()
        if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
            v = v[1:-1]
        params[k.strip().lower()] = v
    return mtype, params


@dataclass
class Part:
    headers: dict[str, str]
    content: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def decode_multipart(body: bytes, boundary: str) -> list[Part]:
    """Strict-ish RFC 2046 multipart decoder."""
    delim = b"--" + boundary.encode("latin-1")
    parts: list[Part] = []
    # The first delimiter may appear at the very start or after a preamble + CRLF.
    if body.startswith(delim):
        pos = 0
    else:
        pos = body.find(b"\r\n" + delim)
        if pos < 0:
            raise ValueError("no multipart delimiter found")
        pos += 2
    while True:
        pos += len(delim)
        if body[pos:pos + 2] == b"--":
            break  # close delimiter
        # transport padding then CRLF
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            raise ValueError("truncated multipart body after delimiter")
        pos = eol + 2
        hdr_end = body.find(b"\r\n\r\n", pos)
        if body[pos:pos + 2] == b"\r\n":
            raw_headers, pos = b"", pos + 2
        elif hdr_end < 0:
            raise ValueError("multipart part without header terminator")
        else:
            raw_headers, pos = body[pos:hdr_end], hdr_end + 4
        nxt = body.find(b"\r\n" + delim, pos)
        if nxt < 0:
            raise ValueError("multipart body without closing delimiter")
        headers: dict[str, str] = {}
        for line in raw_headers.split(b"\r\n"):
            if not line.strip():
                continue
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        parts.append(Part(headers, body[pos:nxt]))
        pos = nxt + 2
    return parts


def multipart_response(resp: requests.Response, expected_type: str | None = None) -> list[Part]:
    """Decode a multipart/related response; checks the top-level media type."""
    mtype, params = parse_media_type(resp.headers.get("Content-Type", ""))
    assert mtype == "multipart/related", f"expected multipart/related, got {describe(resp)}"
    assert "boundary" in params, f"multipart response without boundary: {resp.headers.get('Content-Type')!r}"
    if expected_type is not None:
        assert params.get("type", "").lower() == expected_type, (
            f"multipart type parameter should be {expected_type!r}: {resp.headers.get('Content-Type')!r}")
    return decode_multipart(resp.content, params["boundary"])


def encode_multipart(parts: Iterable[tuple[bytes, str]], boundary: str) -> bytes:
    out = io.BytesIO()
    for content, ctype in parts:
        out.write(b"--" + boundary.encode() + b"\r\n")
        out.write(f"Content-Type: {ctype}\r\n\r\n".encode())
        out.write(content)
        out.write(b"\r\n")
    out.write(b"--" + boundary.encode() + b"--\r\n")
    return out.getvalue()


def stow(api: Api, files: list[bytes], study: str | None = None, content_type: str | None = None,
         part_type: str = "application/dicom", boundary: str | None = None) -> requests.Response:
    boundary = boundary or f"kastell-{uuid.uuid4().hex}"
    body = encode_multipart([(f, part_type) for f in files], boundary)
    ctype = content_type or f'multipart/related; type="application/dicom"; boundary={boundary}'
    path = f"/studies/{study}" if study else "/studies"
    return api.post(path, data=body, headers={"Content-Type": ctype, "Accept": DICOM_JSON})


# --------------------------------------------------------------------------
# JSON helpers
# --------------------------------------------------------------------------
def tag_key(tag: int) -> str:
    return f"{tag:08X}"


def values(obj: dict, tag: str) -> list:
    """Value list of an attribute in a DICOM JSON object ([] if absent/empty)."""
    attr = obj.get(tag)
    if not attr:
        return []
    return list(attr.get("Value") or [])


def first(obj: dict, tag: str, default=None):
    v = values(obj, tag)
    return v[0] if v else default


def uids(results: list[dict], tag: str) -> list[str]:
    return [first(r, tag) for r in results]


def qido(api: Api, path: str, params=None, headers=None) -> tuple[requests.Response, list[dict]]:
    """Run a QIDO query; returns (response, results).  204 -> []."""
    headers = {"Accept": DICOM_JSON, **(headers or {})}
    resp = api.get(path, params=params, headers=headers)
    if resp.status_code == 204:
        return resp, []
    if resp.status_code != 200:
        return resp, []
    try:
        data = resp.json()
    except ValueError:
        raise AssertionError(f"QIDO response is not JSON: {describe(resp)}")
    assert isinstance(data, list), f"QIDO response must be a JSON array: {describe(resp)}"
    return resp, data


def warnings_of(resp: requests.Response) -> list[str]:
    raw = resp.raw.headers.getlist("Warning") if hasattr(resp.raw, "headers") else []
    if not raw and resp.headers.get("Warning"):
        raw = [resp.headers["Warning"]]
    return raw


def has_warning_299(resp: requests.Response) -> bool:
    return any(re.match(r"\s*299\s", w) or re.search(r"(^|,)\s*299\s", w) for w in warnings_of(resp))


# --------------------------------------------------------------------------
# DICOM JSON model validation (rules 75-84)
# --------------------------------------------------------------------------
def check_json_model(data: Any, where: str = "$") -> list[str]:
    errs: list[str] = []
    if not isinstance(data, list):
        return [f"{where}: top level must be an array, got {type(data).__name__}"]
    for i, ds in enumerate(data):
        errs.extend(check_json_dataset(ds, f"{where}[{i}]"))
    return errs


def check_json_dataset(ds: Any, where: str) -> list[str]:
    errs: list[str] = []
    if not isinstance(ds, dict):
        return [f"{where}: dataset must be an object"]
    keys = list(ds.keys())
    for k in keys:
        if not TAG_RE.match(k):
            errs.append(f"{where}: key {k!r} is not an 8-digit uppercase hex tag")
    if keys != sorted(keys):
        errs.append(f"{where}: keys are not in ascending order: {keys}")
    for k, attr in ds.items():
        w = f"{where}.{k}"
        if TAG_RE.match(k) and k.endswith("0000"):
            errs.append(f"{w}: group length element must not be present")
        if not isinstance(attr, dict):
            errs.append(f"{w}: attribute must be an object")
            continue
        vr = attr.get("vr")
        if not isinstance(vr, str) or not re.match(r"^[A-Z]{2}$", vr):
            errs.append(f"{w}: missing/invalid vr {vr!r}")
            continue
        extra = set(attr) - {"vr", "Value", "BulkDataURI", "InlineBinary"}
        if extra:
            errs.append(f"{w}: unexpected members {sorted(extra)}")
        present = [m for m in ("Value", "BulkDataURI", "InlineBinary") if m in attr]
        if len(present) > 1:
            errs.append(f"{w}: more than one of Value/BulkDataURI/InlineBinary: {present}")
        if "BulkDataURI" in attr and not isinstance(attr["BulkDataURI"], str):
            errs.append(f"{w}: BulkDataURI must be a string")
        if "InlineBinary" in attr:
            if not isinstance(attr["InlineBinary"], str):
                errs.append(f"{w}: InlineBinary must be one base64 string")
            else:
                try:
                    base64.b64decode(attr["InlineBinary"], validate=True)
                except Exception:
                    errs.append(f"{w}: InlineBinary is not valid base64")
        if vr in BINARY_VRS and "Value" in attr:
            errs.append(f"{w}: {vr} must use InlineBinary/BulkDataURI, not Value")
        if "Value" not in attr:
            continue
        val = attr["Value"]
        if not isinstance(val, list):
            errs.append(f"{w}: Value must be an array")
            continue
        if len(val) == 0 and vr != "SQ":
            errs.append(f"{w}: empty attribute must omit Value (got Value: [])")
        for j, v in enumerate(val):
            wj = f"{w}.Value[{j}]"
            if v is None:
                continue
            if vr == "SQ":
                errs.extend(check_json_dataset(v, wj))
            elif vr == "PN":
                if not isinstance(v, dict):
                    errs.append(f"{wj}: PN value must be an object, got {v!r}")
                else:
                    bad = set(v) - {"Alphabetic", "Ideographic", "Phonetic"}
                    if bad:
                        errs.append(f"{wj}: PN object has unexpected keys {sorted(bad)}")
                    for g, s in v.items():
                        if not isinstance(s, str):
                            errs.append(f"{wj}.{g}: must be a string")
            elif vr in NUMBER_VRS - NUMBER_OR_STRING_VRS:
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    errs.append(f"{wj}: {vr} value must be a JSON number, got {v!r}")
            elif vr in ("IS", "DS"):
                # Kastell writes numbers (contract); the standard allows strings too.
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    errs.append(f"{wj}: {vr} value must be a JSON number (Kastell contract), got {v!r}")
            elif vr in ("SV", "UV"):
                if isinstance(v, bool) or not isinstance(v, (int, float, str)):
                    errs.append(f"{wj}: {vr} value must be number or string, got {v!r}")
            elif vr == "AT":
                if not isinstance(v, str) or not TAG_RE.match(v):
                    errs.append(f"{wj}: AT value must be 8 uppercase hex digits, got {v!r}")
            elif vr in STRING_VRS:
                if not isinstance(v, str):
                    errs.append(f"{wj}: {vr} value must be a string, got {v!r}")
                else:
                    if vr == "UI" and (v.endswith("\x00") or v.endswith(" ")):
                        errs.append(f"{wj}: UI value carries padding {v!r}")
                    if vr in ("DA", "TM", "CS", "AE", "DT") and v != v.rstrip(" \x00"):
                        errs.append(f"{wj}: {vr} value carries trailing padding {v!r}")
                    if vr != "UT" and vr != "LT" and vr != "ST" and "\\" in v:
                        errs.append(f"{wj}: multi-valued string not split on backslash: {v!r}")
    return errs


# --------------------------------------------------------------------------
# Comparison of datasets (retrieved files and metadata) with the originals
# --------------------------------------------------------------------------
def _swap(data: bytes, width: int) -> bytes:
    if width <= 1 or len(data) % width:
        return data
    arr = np.frombuffer(data, dtype=np.uint8).reshape(-1, width)[:, ::-1]
    return arr.tobytes()


def _ambiguous(tag_hex: str) -> bool:
    try:
        vr = dictionary_VR(int(tag_hex, 16))
    except KeyError:
        return True
    return " or " in vr


def _norm_pn(v) -> Any:
    if v is None:
        return None
    if isinstance(v, str):
        v = {"Alphabetic": v}
    out = {}
    for g in ("Alphabetic", "Ideographic", "Phonetic"):
        s = (v.get(g) or "").rstrip("^ ").rstrip()
        if s:
            out[g] = s
    return out or None


def _norm_scalar(vr: str, v):
    if v is None:
        return None
    if vr == "PN":
        return _norm_pn(v)
    if vr in ("IS", "DS", "FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"):
        try:
            return float(v)
        except (TypeError, ValueError):
            return str(v).strip()
    if vr == "AT":
        return str(v).upper()
    if isinstance(v, str):
        v = v.rstrip(" \x00")
        return v if v != "" else None  # JSON writes an empty value inside a multi-value as null
    return v


def _equal_scalar(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) or (math.isnan(a) and math.isnan(b))
    return a == b


def _strip_empty(vals: list) -> list:
    # ["", None] trailing empties carry no information in JSON
    if all(v in (None, "", {}) for v in vals):
        return []
    return vals


def compare_json(expected: dict, actual: dict, *, binary_expected, binary_actual,
                 relaxed_vr: bool = False, skip: set[str] | None = None, where: str = "") -> list[str]:
    """Compare two DICOM JSON datasets.

    binary_expected / binary_actual: callables (attr, vr, where) -> bytes that
    turn an InlineBinary/BulkDataURI attribute into normalised little-endian
    bytes.
    """
    # Data Set Trailing Padding (FFFC,FFFC) carries no information (PS3.10 7.2).
    skip = (skip or set()) | {"FFFCFFFC"}
    errs: list[str] = []
    exp_keys = {k for k in expected if not k.startswith("0002") and not k.endswith("0000") and k not in skip}
    act_keys = {k for k in actual if k not in skip}
    for k in sorted(exp_keys - act_keys):
        errs.append(f"{where}{k}: missing in server output (expected {expected[k]!r:.120})")
    for k in sorted(act_keys - exp_keys):
        errs.append(f"{where}{k}: not in the original dataset (got {actual[k]!r:.120})")
    for k in sorted(exp_keys & act_keys):
        e, a = expected[k], actual[k]
        w = f"{where}{k}"
        evr, avr = e.get("vr"), a.get("vr")
        private = int(k[:4], 16) % 2 == 1
        if evr != avr:
            lenient = relaxed_vr and (private or _ambiguous(k) or "UN" in (evr, avr))
            if {evr, avr} <= {"OB", "OW"} and k == "7FE00010":
                lenient = True
            if not lenient:
                errs.append(f"{w}: VR {avr!r} != original {evr!r}")
                continue
            if "UN" in (evr, avr):
                continue  # cannot compare UN against a typed value reliably
        vr = evr
        if vr in BINARY_VRS or "InlineBinary" in e or "BulkDataURI" in e:
            eb = binary_expected(e, vr, w) if ("InlineBinary" in e or "BulkDataURI" in e) else b""
            if "Value" in a and vr not in BINARY_VRS:
                # the server chose to inline a bulk-capable non-binary VR as Value; fine
                continue
            ab = binary_actual(a, avr, w) if ("InlineBinary" in a or "BulkDataURI" in a) else b""
            if ab != eb:
                errs.append(f"{w}: binary value differs (server {len(ab)} bytes, original {len(eb)} bytes)")
            continue
        if vr in BINARY_VRS or "InlineBinary" in a or "BulkDataURI" in a:
            ab = binary_actual(a, avr, w)
            ev = e.get("Value") or []
            if vr in ("US", "SS", "UL", "SL", "FL", "FD") and ev:
                fmt = {"US": "<u2", "SS": "<i2", "UL": "<u4", "SL": "<i4", "FL": "<f4", "FD": "<f8"}[vr]
                got = np.frombuffer(ab, dtype=fmt).tolist()
                if not all(_equal_scalar(float(x), float(y)) for x, y in zip(got, ev)) or len(got) != len(ev):
                    errs.append(f"{w}: bulk value {got[:8]} != original {ev[:8]}")
            continue
        if vr == "SQ":
            ei, ai = e.get("Value") or [], a.get("Value") or []
            if len(ei) != len(ai):
                errs.append(f"{w}: sequence has {len(ai)} items, original {len(ei)}")
                continue
            for n, (x, y) in enumerate(zip(ei, ai)):
                errs.extend(compare_json(x or {}, y or {}, binary_expected=binary_expected,
                                         binary_actual=binary_actual, relaxed_vr=relaxed_vr,
                                         skip=skip - {"7FE00010"}, where=f"{w}[{n}]."))
            continue
        ev = _strip_empty([_norm_scalar(vr, v) for v in (e.get("Value") or [])])
        av = _strip_empty([_norm_scalar(vr, v) for v in (a.get("Value") or [])])
        if len(ev) != len(av) or not all(_equal_scalar(x, y) for x, y in zip(ev, av)):
            errs.append(f"{w} ({vr}): server {av[:6]!r} != original {ev[:6]!r}")
    return errs


def inline_binary(expected_big_endian: bool):
    """binary_expected callable for pydicom's to_json_dict output."""
    def fn(attr: dict, vr: str, where: str) -> bytes:
        if "InlineBinary" in attr:
            data = base64.b64decode(attr["InlineBinary"])
        else:
            raise AssertionError(f"{where}: reference unexpectedly has BulkDataURI")
        if expected_big_endian and vr in SWAP_WIDTH:
            data = _swap(data, SWAP_WIDTH[vr])
        return data
    return fn


def reference_json(ds: Dataset) -> dict:
    """pydicom's DICOM JSON of a dataset with all binaries inline."""
    return ds.to_json_dict(bulk_data_threshold=10**12)


ACCEPT_OCTET = 'multipart/related; type="application/octet-stream"'


def fetch_bulk(api: Api, uri: str, accept: str = ACCEPT_OCTET,
               expected_type: str | None = "application/octet-stream") -> tuple[requests.Response, list[Part]]:
    resp = api.get(api.resolve(uri), headers={"Accept": accept})
    if resp.status_code != 200:
        raise AssertionError(f"BulkDataURI {uri} did not resolve: {describe(resp)}")
    parts = multipart_response(resp, expected_type)
    return resp, parts


def encapsulated_frames(ds: Dataset) -> list[bytes]:
    """The compressed frames of an encapsulated PixelData value, per pydicom."""
    from pydicom.encaps import generate_frames
    n = int(ds.get("NumberOfFrames", 1) or 1)
    return list(generate_frames(ds.PixelData, number_of_frames=n))


def server_binary(api: Api):
    """binary_actual callable that resolves BulkDataURI via WADO-RS."""
    def fn(attr: dict, vr: str, where: str) -> bytes:
        if "InlineBinary" in attr:
            return base64.b64decode(attr["InlineBinary"])
        if "BulkDataURI" in attr:
            _, parts = fetch_bulk(api, attr["BulkDataURI"])
            if len(parts) != 1:
                raise AssertionError(f"{where}: BulkDataURI answered {len(parts)} parts, expected 1")
            return parts[0].content
        return b""
    return fn


def compare_datasets(expected: Dataset, actual: Dataset, *, expected_big_endian=False,
                     relaxed_vr=False, skip=None) -> list[str]:
    """Compare two pydicom datasets (group 0002 ignored) via their JSON form."""
    ej = reference_json(expected)
    aj = reference_json(actual)
    big = expected_big_endian and not (actual.is_little_endian is False)
    return compare_json(ej, aj, binary_expected=inline_binary(big), binary_actual=inline_binary(False),
                        relaxed_vr=relaxed_vr, skip=skip)


def pixel_bytes_le(ds: Dataset) -> bytes:
    """Native PixelData as little-endian bytes."""
    raw = ds.PixelData
    if ds.is_little_endian is False or (hasattr(ds, "file_meta") and
                                        str(ds.file_meta.get("TransferSyntaxUID", "")) == EXPLICIT_BE):
        vr = ds["PixelData"].VR
        if vr == "OW" or (vr not in ("OB",) and int(ds.get("BitsAllocated", 8)) > 8):
            raw = _swap(raw, 2)
    return raw


def read_part(part: Part) -> Dataset:
    return pydicom.dcmread(io.BytesIO(part.content))


# --------------------------------------------------------------------------
# Synthetic instances for STOW tests
# --------------------------------------------------------------------------
def new_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def make_instance(study: str, series: str, sop: str, *, patient_id: str, patient_name: str = "Stow^Test",
                  seed: int = 0, include_study: bool = True, sop_class: str = "1.2.840.10008.5.1.4.1.1.7",
                  modality: str = "OT", instance_number: int = 1) -> bytes:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop
    ds.StudyDate = "20240102"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "KSTSTOW"
    ds.Modality = modality
    ds.ConversionType = "WSD"
    ds.ReferringPhysicianName = ""
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    if include_study:
        ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.StudyID = "STOW"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 4
    ds.Columns = 4
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes((i * 13 + seed) % 256 for i in range(16))
    ds["PixelData"].VR = "OB"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# --------------------------------------------------------------------------
# Store Instances Response
# --------------------------------------------------------------------------
REFERENCED_SOP_SEQ = "00081199"
FAILED_SOP_SEQ = "00081198"
RETRIEVE_URL = "00081190"
REF_SOP_CLASS = "00081150"
REF_SOP_INSTANCE = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"


def store_response(resp: requests.Response) -> dict:
    mtype, _ = parse_media_type(resp.headers.get("Content-Type", ""))
    assert mtype == DICOM_JSON, f"STOW response must be {DICOM_JSON}: {describe(resp)}"
    data = resp.json()
    assert isinstance(data, dict), f"Store Instances Response must be one JSON dataset (object): {describe(resp)}"
    return data


def referenced(doc: dict) -> dict[str, dict]:
    return {first(it, REF_SOP_INSTANCE): it for it in values(doc, REFERENCED_SOP_SEQ)}


def failed(doc: dict) -> list[dict]:
    return values(doc, FAILED_SOP_SEQ)


def failed_by_uid(doc: dict) -> dict[str, int]:
    return {first(it, REF_SOP_INSTANCE): first(it, FAILURE_REASON) for it in failed(doc)}
