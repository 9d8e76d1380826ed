"""Crash-safe file writing: write to a hidden temporary name, then rename.

A process killed at any moment leaves either the old file, the complete new
file, or a hidden ``.partial-*`` file that no reader globs for (list
readers, checkpoint finders and image loaders only look at final names).
``os.replace`` is atomic on POSIX when source and target share a directory,
which is why the temporary file is always created beside the target.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

PARTIAL_PREFIX = ".partial-"


def _temp_name(target: Path) -> Path:
    # The temporary name ends with the whole target name: writers such as
    # cv2.imwrite and Keras pick the format from it (Keras even insists on
    # ".weights.h5"), and the leading ".partial-" hides it from every glob.
    fd, name = tempfile.mkstemp(prefix=PARTIAL_PREFIX, suffix=f".{target.name}", dir=target.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` on success.

    The caller writes the complete file to the yielded path (with any writer
    that takes a file name). If the block raises, the temporary file is removed
    and ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(target)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``target`` atomically and return the target path."""
    with atomic_path(target, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(
    target: str | os.PathLike[str], text: str, *, encoding: str = "utf-8", fsync: bool = False
) -> Path:
    """Write ``text`` to ``target`` atomically and return the target path."""
    return atomic_write_bytes(target, text.encode(encoding), fsync=fsync)


def is_partial(path: str | os.PathLike[str]) -> bool:
    """True for the hidden temporary files left behind by a killed writer."""
    return Path(path).name.startswith(PARTIAL_PREFIX)


def remove_partials(folder: str | os.PathLike[str]) -> int:
    """Delete leftover temporary files in ``folder`` (not recursive); return how many."""
    removed = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for path in folder.iterdir():
        if path.is_file() and is_partial(path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
    return removed
