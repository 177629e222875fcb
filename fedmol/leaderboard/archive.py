"""Reading an untrusted submission archive safely.

Nothing is extracted to disk and nothing is unpickled: every allowed member is streamed into
memory under hard limits, and any archive that is not exactly what :func:`read_archive` expects is
rejected with a one-line reason (:class:`Rejected`). The checks, in order:

* the file exists, is at most ``max_archive_bytes`` on disk and is a zip archive;
* at most ``max_members`` entries, no duplicate names, no encryption, only stored/deflated members;
* every name is relative, without ``..``, ``.``, empty or backslash parts, no NUL or control
  characters, and not a symlink or directory or other special entry (mode bits in the zip's
  external attributes);
* every name is one of the allowed names (``manifest.json``, ``runs/NN/model.safetensors``,
  ``runs/NN/test_predictions.csv``): anything else (a pickle, a ``.pt``, a ``.bin``, a README) is
  refused;
* the *declared* uncompressed size of each member and of all members together is within the
  limits, and the *actual* decompressed bytes are counted while streaming and the read stops as
  soon as they exceed the declared size or the limit (a zip bomb with a lying header never
  inflates past the limit); the CRC is checked.

Weights: :func:`check_safetensors` parses the safetensors header itself (length, JSON, dtypes,
shapes, contiguous offsets covering the whole buffer) before handing the bytes to
``safetensors.torch.load``, and refuses pickles and ``torch.save`` archives by their magic bytes;
non-finite values are refused. JSON: :func:`strict_json` refuses NaN/Infinity and duplicate keys.
"""

from __future__ import annotations

import json
import math
import re
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from fedmol.errors import FedmolError

MANIFEST = "manifest.json"
MEMBER_RE = re.compile(r"^(manifest\.json|runs/[0-9]{2}/(model\.safetensors|test_predictions\.csv))$")
_CHUNK = 1 << 20


class Rejected(FedmolError):
    """A submission failed verification; ``str(e)`` is the one-line reason."""

    label = "rejected"
    exit_code = 1

    def __init__(self, reason: str):
        super().__init__(one_line(reason))


def one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Limits:
    max_archive_bytes: int = 256 << 20
    max_members: int = 1 + 2 * 64
    max_manifest_bytes: int = 8 << 20
    max_weights_bytes: int = 64 << 20
    max_predictions_bytes: int = 32 << 20
    max_total_bytes: int = 512 << 20

    def member_limit(self, name: str) -> int:
        if name == MANIFEST:
            return self.max_manifest_bytes
        if name.endswith(".safetensors"):
            return self.max_weights_bytes
        return self.max_predictions_bytes


def _check_name(name: str) -> None:
    shown = ascii(name)
    if not name:
        raise Rejected("archive member with an empty name")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise Rejected(f"archive member {shown}: control characters in its name")
    if "\\" in name:
        raise Rejected(f"archive member {shown}: backslash in its name")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise Rejected(f"archive member {shown}: absolute path")
    parts = name.split("/")
    if ".." in parts:
        raise Rejected(f"archive member {shown}: path escapes the archive ('..')")
    if any(p in ("", ".") for p in parts[:-1]) or parts[-1] == ".":
        raise Rejected(f"archive member {shown}: empty or '.' path component")


def _member_kind(info: zipfile.ZipInfo) -> str | None:
    """'symlink' / 'directory' / 'special file' for entries that are not plain files, else None.

    The file type comes from the unix mode bits in the external attributes (zip writers that record
    no type, e.g. Python's ``writestr``, leave them 0: a plain file)."""
    if info.is_dir():
        return "directory"
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == 0 or kind == stat.S_IFREG:
        return None
    if kind == stat.S_IFLNK:
        return "symlink"
    if kind == stat.S_IFDIR:
        return "directory"
    return "special file"


def read_archive(path: str | Path, limits: Limits = Limits()) -> dict[str, bytes]:
    """Every member of a submission archive, as bytes, after all the checks above."""
    path = Path(path)
    if not path.is_file():
        raise Rejected(f"{path}: no such file")
    size = path.stat().st_size
    if size > limits.max_archive_bytes:
        raise Rejected(f"archive is {size} bytes, more than the limit of {limits.max_archive_bytes}")
    if not zipfile.is_zipfile(path):
        raise Rejected("not a zip archive")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise Rejected(f"not a readable zip archive: {e}") from e
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_members:
            raise Rejected(f"archive has {len(infos)} members, more than the limit of {limits.max_members}")
        names = [i.filename for i in infos]
        for info in infos:
            _check_name(info.filename)
            kind = _member_kind(info)
            if kind is not None:
                raise Rejected(f"archive member {ascii(info.filename)} is a {kind}: only plain files are allowed")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise Rejected(f"archive member {ascii(dup[0])} appears more than once")
        for info in infos:
            name = info.filename
            if not MEMBER_RE.match(name):
                low = name.lower()
                if low.endswith((".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".npy", ".npz", ".joblib")):
                    raise Rejected(f"archive member {ascii(name)}: pickle and other non-safetensors weights "
                                   "are not accepted")
                raise Rejected(f"unexpected archive member {ascii(name)} (allowed: manifest.json, "
                               "runs/NN/model.safetensors, runs/NN/test_predictions.csv)")
            if info.flag_bits & 0x1:
                raise Rejected(f"archive member {ascii(name)} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise Rejected(f"archive member {ascii(name)}: compression method {info.compress_type} "
                               "is not allowed (stored or deflated only)")
            if info.file_size > limits.member_limit(name):
                raise Rejected(f"archive member {ascii(name)} declares {info.file_size} bytes, more than the "
                               f"limit of {limits.member_limit(name)}")
        total = sum(i.file_size for i in infos)
        if total > limits.max_total_bytes:
            raise Rejected(f"archive declares {total} uncompressed bytes, more than the limit of "
                           f"{limits.max_total_bytes}")
        if MANIFEST not in names:
            raise Rejected("archive has no manifest.json")
        out: dict[str, bytes] = {}
        budget = limits.max_total_bytes
        for info in infos:
            cap = min(info.file_size, limits.member_limit(info.filename), budget)
            data = _stream(zf, info, cap)
            budget -= len(data)
            out[info.filename] = data
    return out


def _stream(zf: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes:
    """The member's bytes, reading at most ``cap + 1`` decompressed bytes (then rejecting)."""
    name = ascii(info.filename)
    buf = bytearray()
    try:
        with zf.open(info) as f:
            while True:
                chunk = f.read(min(_CHUNK, cap + 1 - len(buf)))
                if not chunk:
                    break
                buf += chunk
                if len(buf) > cap:
                    raise Rejected(f"archive member {name} decompresses to more than its declared size or the "
                                   f"limit ({cap} bytes)")
    except Rejected:
        raise
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise Rejected(f"archive member {name} is corrupt: {e}") from e
    if len(buf) != info.file_size:
        raise Rejected(f"archive member {name} holds {len(buf)} bytes, not the declared {info.file_size}")
    if zlib.crc32(buf) & 0xFFFFFFFF != info.CRC:
        raise Rejected(f"archive member {name} fails its CRC check")
    return bytes(buf)


# -- JSON -------------------------------------------------------------------------------------------
def _no_constant(token: str):
    raise ValueError(f"{token} is not allowed (non-finite number)")


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def strict_json(data: bytes, what: str):
    """Parse JSON refusing NaN/Infinity, duplicate keys, invalid UTF-8 and absurd nesting."""
    try:
        text = data.decode("utf-8")
        return json.loads(text, parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError as e:
        raise Rejected(f"{what} is not UTF-8: {e}") from e
    except RecursionError as e:
        raise Rejected(f"{what} is nested too deeply") from e
    except ValueError as e:  # JSONDecodeError is a ValueError
        raise Rejected(f"{what} is not valid strict JSON: {e}") from e


# -- safetensors ------------------------------------------------------------------------------------
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
MAX_HEADER = 16 << 20


def check_safetensors(data: bytes, what: str) -> dict[str, dict]:
    """Validate a safetensors buffer without trusting it; returns its tensor table
    ``{name: {"dtype", "shape", "data_offsets"}}`` (metadata under ``"__metadata__"`` excluded)."""
    n = struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else -1
    if n < 2 or n > MAX_HEADER or 8 + n > len(data) or data[8:9] != b"{":
        if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            raise Rejected(f"{what} is a pickle: only safetensors weights are accepted (nothing was unpickled)")
        if data[:4] == b"PK\x03\x04":
            raise Rejected(f"{what} is a zip (torch.save) file: only safetensors weights are accepted")
        raise Rejected(f"{what} is not a safetensors file (no valid header)")
    header = strict_json(data[8:8 + n], f"{what} (safetensors header)")
    if not isinstance(header, dict):
        raise Rejected(f"{what}: the safetensors header is not a JSON object")
    body = len(data) - 8 - n
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise Rejected(f"{what}: safetensors metadata must map strings to strings")
    spans = []
    for key, t in header.items():
        if not isinstance(t, dict) or set(t) != {"dtype", "shape", "data_offsets"}:
            raise Rejected(f"{what}: tensor {key!r} has a malformed header entry")
        dtype, shape, offs = t["dtype"], t["shape"], t["data_offsets"]
        if dtype not in DTYPE_BYTES:
            raise Rejected(f"{what}: tensor {key!r} has dtype {dtype!r} (allowed: {', '.join(DTYPE_BYTES)})")
        if (not isinstance(shape, list) or len(shape) > 8
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape)):
            raise Rejected(f"{what}: tensor {key!r} has an invalid shape {shape!r}")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
            raise Rejected(f"{what}: tensor {key!r} has invalid data offsets")
        need = math.prod(shape) * DTYPE_BYTES[dtype]
        if offs[1] - offs[0] != need or offs[0] < 0 or offs[1] > body:
            raise Rejected(f"{what}: tensor {key!r} data offsets {offs} do not hold {need} bytes")
        spans.append((offs[0], offs[1]))
    pos = 0
    for a, b in sorted(spans):
        if a != pos:
            raise Rejected(f"{what}: tensor data is not contiguous (gap or overlap at byte {a})")
        pos = b
    if pos != body:
        raise Rejected(f"{what}: {body - pos} trailing bytes after the tensor data")
    header["__metadata__"] = meta
    return header


def load_safetensors(data: bytes, what: str):
    """``(tensors, metadata)`` from a checked safetensors buffer; float tensors must be finite."""
    import torch
    from safetensors.torch import load

    header = check_safetensors(data, what)
    try:
        tensors = load(data)
    except Exception as e:  # the library's own validation
        raise Rejected(f"{what} is not a valid safetensors file: {e}") from e
    for k, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise Rejected(f"{what}: tensor {k!r} holds NaN or inf")
    return tensors, header["__metadata__"]
