"""Crash-safe file writing: write to a hidden temporary name, then rename.

A process killed at any moment leaves either the old file, the complete new
file, or a hidden ``.partial-*`` file or folder that no reader globs for (list
readers, checkpoint finders and image loaders only look at final names).
``os.replace`` is atomic on POSIX when source and target share a directory,
which is why the temporary file is always created beside the target.

Files get the permissions a plain ``open(path, "w")`` would give them
(``0o666`` less the process umask), not ``mkstemp``'s private ``0o600``: a
dataset or checkpoint written on a shared file system must stay readable by
the group when the umask says so.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

PARTIAL_PREFIX = ".partial-"


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux ``/proc``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere the only way is to set it and put it back (not thread-safe, but brief).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_name(target: Path) -> Path:
    # The temporary name ends with the whole target name: writers such as
    # cv2.imwrite and Keras pick the format from it (Keras even insists on
    # ".weights.h5"), and the leading ".partial-" hides it from every glob.
    fd, name = tempfile.mkstemp(prefix=PARTIAL_PREFIX, suffix=f".{target.name}", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
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


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; swap it in as ``target`` on success.

    For writers that produce a folder (a SavedModel, a resume state). The new
    folder is complete before it takes the name; an old ``target`` is first
    renamed aside to a ``.partial-`` name and removed afterwards, so a kill
    leaves the old folder, the new one, or (between the two renames) neither
    under the final name, plus hidden ``.partial-*`` folders that
    :func:`remove_partials` deletes. If the block raises, the temporary folder
    is removed and ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, suffix=f".{target.name}", dir=target.parent))
    os.chmod(tmp, 0o777 & ~current_umask())
    try:
        yield tmp
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}old-", suffix=f".{target.name}",
                                        dir=target.parent))
            os.replace(target, old)  # an empty folder is replaced by the rename
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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
    """True for the hidden temporary files and folders left behind by a killed writer."""
    return Path(path).name.startswith(PARTIAL_PREFIX)


def remove_partials(folder: str | os.PathLike[str], *, recursive: bool = False) -> int:
    """Delete leftover temporary files and folders in ``folder``; return how many.

    ``recursive`` also looks inside the (non-temporary) sub-folders, e.g. a run
    folder's ``resume/epoch-NNNN/``. Symbolic links are never followed.
    """
    removed = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for path in folder.iterdir():
        if is_partial(path):
            with contextlib.suppress(FileNotFoundError):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed += 1
        elif recursive and path.is_dir() and not path.is_symlink():
            removed += remove_partials(path, recursive=True)
    return removed
