"""Where dataset files come from: local folders, the package that ships them, or a download.

Resolution order for a registry dataset: the folder given with ``--data-dir``, then the folder in
``FEDMOL_DATA_DIR``, then fedmol's own download cache (``$FEDMOL_CACHE_DIR/raw``), then the PyPI
package that ships it (B3DB), and only then a download from the canonical URL (or from
``$FEDMOL_MIRROR_URL/<file name>`` where a site keeps an internal mirror). Every file is checked
against the registry's sha256 before it is used: a mismatch is an error, never a warning.
Downloads are written to a temporary file in the target folder, verified, then renamed into
place (atomic: an interrupted download never leaves a half file under the final name).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import urllib.error
import urllib.request
from pathlib import Path

import platformdirs

from fedmol.atomic import atomic_path
from fedmol.data.registry import DatasetInfo
from fedmol.errors import ChecksumError, DataError


def cache_dir() -> Path:
    """fedmol's cache root: ``FEDMOL_CACHE_DIR`` or the user cache dir."""
    return Path(os.environ.get("FEDMOL_CACHE_DIR") or platformdirs.user_cache_dir("fedmol"))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, expected: str | None) -> str:
    """Return the file's sha256; raise :class:`ChecksumError` if it differs from ``expected``."""
    actual = sha256_file(path)
    if expected and actual != expected:
        raise ChecksumError(f"{path}: sha256 {actual} does not match the registry's {expected}; "
                            "the file is corrupt or a different version: delete it and fetch it again")
    return actual


def download(url: str, dest: Path, sha256: str | None = None, timeout: float = 60.0, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` atomically; ``.gz`` URLs are decompressed; checksum verified."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(dest) as tmp:
            with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                stream = gzip.GzipFile(fileobj=resp) if url.endswith(".gz") else resp
                _copy_with_progress(stream, out, total if not url.endswith(".gz") else None,
                                    f"downloading {dest.name}", progress)
            verify(tmp, sha256)
    except (urllib.error.URLError, OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"download of {url} failed: {e}") from e
    return dest


def _copy_with_progress(src, dst, total, desc, progress):
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  disable=not progress, transient=True) as bar:
        task = bar.add_task(desc, total=total)
        while block := src.read(1 << 16):
            dst.write(block)
            bar.advance(task, len(block))


def _package_file(info: DatasetInfo) -> Path | None:
    if not info.package:
        return None
    spec = importlib.util.find_spec(info.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / info.file
    return path if path.exists() else None


def candidate_dirs(data_dir: str | Path | None = None) -> list[Path]:
    dirs = []
    if data_dir:
        dirs.append(Path(data_dir))
    if os.environ.get("FEDMOL_DATA_DIR"):
        dirs.append(Path(os.environ["FEDMOL_DATA_DIR"]))
    dirs.append(cache_dir() / "raw")
    return dirs


def resolve_file(info: DatasetInfo, data_dir: str | Path | None = None, allow_download: bool = True,
                 progress: bool = True) -> tuple[Path, str]:
    """Find (or fetch) the dataset's file; return ``(path, sha256)`` after verifying it."""
    if info.is_custom:
        path = Path(info.file)
        if path.is_dir():
            raise DataError(f"--csv {path} is a directory, not a file: pass the CSV/TSV file inside it")
        if not path.is_file():
            raise DataError(f"CSV file not found: {path}")
        try:
            return path, sha256_file(path)
        except OSError as e:
            raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    dirs = candidate_dirs(data_dir)
    for d in dirs:
        path = d / info.file
        if path.is_file():
            return path, verify(path, info.sha256)
    shipped = _package_file(info)
    if shipped is not None:
        return shipped, verify(shipped, info.sha256)
    looked = ", ".join(str(d) for d in dirs)
    if info.package and not info.url:
        raise DataError(f"{info.file} for dataset {info.name!r} ships with the Python package providing "
                        f"{info.package!r} (pip install qc-b3db), which is not installed; looked in: {looked}")
    mirror = os.environ.get("FEDMOL_MIRROR_URL")
    url = f"{mirror.rstrip('/')}/{info.url.rsplit('/', 1)[1]}" if mirror else info.url
    hint = (f"{info.file} for dataset {info.name!r} was not found (looked in: {looked}). Download it from "
            f"{info.url} and pass its folder with --data-dir or FEDMOL_DATA_DIR")
    if not allow_download:
        raise DataError(hint)
    try:
        path = download(url, cache_dir() / "raw" / info.file, info.sha256, progress=progress)
    except ChecksumError:
        raise
    except DataError as e:
        raise DataError(f"{hint}; automatic {e}") from e
    return path, info.sha256


def availability(info: DatasetInfo, data_dir: str | Path | None = None) -> Path | None:
    """Where the dataset's file is found locally (no checksum, no download), or None."""
    if info.is_custom:
        return Path(info.file) if Path(info.file).is_file() else None
    for d in candidate_dirs(data_dir):
        if (d / info.file).is_file():
            return d / info.file
    return _package_file(info)
