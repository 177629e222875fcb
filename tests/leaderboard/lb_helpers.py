"""Helpers to read and re-pack submission archives (for tampering tests)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def manifest(files: dict[str, bytes]) -> dict:
    return json.loads(files["manifest.json"])


def repack(src: Path, dst: Path, edit_manifest=None, edit_files=None, fix_hashes: bool = True) -> Path:
    """Copy ``src`` to ``dst`` after ``edit_files(files)`` and ``edit_manifest(manifest)`` (in place);
    with ``fix_hashes`` the manifest's sha256/bytes are recomputed, as an attacker would."""
    from fedmol.leaderboard.submission import write_zip

    files = members(src)
    if edit_files is not None:
        edit_files(files)
    m = manifest(files)
    if fix_hashes:
        for r in m["runs"]:
            for ref in (r["weights"], r["predictions"]):
                if ref["path"] in files:
                    ref["sha256"] = hashlib.sha256(files[ref["path"]]).hexdigest()
                    ref["bytes"] = len(files[ref["path"]])
    if edit_manifest is not None:
        edit_manifest(m)
    files["manifest.json"] = json.dumps(m, indent=1).encode()
    write_zip(dst, files)
    return dst


def raw_zip(dst: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    """A zip with exactly these entries (names are not sanitized)."""
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return dst
