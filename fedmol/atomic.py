"""Write a file so that a reader never sees half of it: into a temporary file in the same folder,
renamed onto the target (``os.replace``, atomic on one file system) once complete, removed when
writing fails. Every file fedmol replaces in place (results, splits, caches, checkpoints,
submissions, downloads) is written through :func:`atomic_path` or :func:`write_atomic`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to ``path`` to write to: replaced onto ``path`` when the block ends
    without error, removed when it raises. The name (``.<name>.<pid>-<thread>.part``) is hidden,
    ignored by git, matches no ``*.<ext>`` pattern and is one per writer, so concurrent writers of
    the same file do not mix their bytes (the last to finish wins). Creates no folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.part")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` through :func:`atomic_path`."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
    return path
