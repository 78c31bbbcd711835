"""Files written whole or not at all: a temporary file in the destination's folder, then a
rename (:func:`os.replace` is atomic on one file system), with the permissions a plain
``open`` would give (``mkstemp`` makes files readable by their owner only)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_atomically"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(path, write: Callable, *, binary: bool = True) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, then move it to ``path``.

    A crash or an error in ``write`` leaves ``path`` as it was (absent, or the old file) and
    no temporary file behind. The folder is created when missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
