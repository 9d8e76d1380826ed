"""Dataset fingerprints: one short hash that says two groups trained and tested on the same data.

A list's fingerprint is the SHA-256 of a canonical text of its entries: for
every image (sorted by file name) its patient id, file name, label and the
SHA-256 of the image file's bytes. So it changes when any image's bytes, any
label, any patient grouping or the set of images changes, and it does not
depend on line order, on the list format (COVID-Net's 4 fields or SURFsara's
3: the source column is not part of it, and whitespace inside a patient id
counts as ``_``, as SURFsara's form writes it) or on where the dataset lives.

``create_covidx.py`` writes ``SHA256SUMS`` (the format ``sha256sum -c`` checks)
beside the lists with the hash of every image it wrote; :func:`image_hashes`
takes hashes from it for files not modified since it was written, so
training and evaluation name their data without reading every image again.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from data.lists import ListEntry

FINGERPRINT_VERSION = 1
SHA256SUMS = "SHA256SUMS"
# Printed form: enough hex digits that an accidental match is out of the question.
SHORT_LENGTH = 16


def sha256_hex(data: bytes) -> str:
    """SHA-256 of bytes already in memory, as 64 hex digits."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def canonical_lines(entries: Sequence[ListEntry], image_sha256: Mapping[str, str]) -> list[str]:
    """The text a fingerprint hashes, one line per image (see the module docstring)."""
    missing = [e.filename for e in entries if e.filename not in image_sha256]
    if missing:
        raise ValueError(f"no SHA-256 for {len(missing)} listed images (e.g. {missing[0]}); received hashes "
                         f"for {len(image_sha256)} files")
    rows = sorted(
        ("_".join(e.patient_id.split()), e.filename, e.label, image_sha256[e.filename]) for e in entries
    )
    return ["\t".join(row) for row in rows]


def list_fingerprint(entries: Sequence[ListEntry], image_sha256: Mapping[str, str]) -> str:
    """``sha256:<64 hex digits>`` of a list's entries and its images' hashes (keyed by file name)."""
    text = f"covidx-list-fingerprint v{FINGERPRINT_VERSION}\n" + "".join(
        line + "\n" for line in canonical_lines(entries, image_sha256)
    )
    return "sha256:" + sha256_hex(text.encode("utf8"))


def short(fingerprint: str) -> str:
    """The printed form: ``sha256:`` and the first :data:`SHORT_LENGTH` hex digits."""
    algorithm, _, digest = fingerprint.partition(":")
    return f"{algorithm}:{digest[:SHORT_LENGTH]}"


def format_sha256sums(hashes: Mapping[str, str]) -> str:
    """``sha256sum`` text (``<hash>  <path>`` per line, sorted), paths relative to the dataset folder."""
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(hashes.items()))


def read_sha256sums(path: str | os.PathLike[str]) -> dict[str, str]:
    """``{relative path: hash}`` from a ``SHA256SUMS`` file; malformed lines are ignored (and rehashed)."""
    hashes: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            digest, sep, name = line.rstrip("\n").partition("  ")
            if sep and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
                hashes[name.lstrip("*")] = digest
    return hashes


def image_hashes(
    paths: Iterable[str | os.PathLike[str]],
    *,
    dataset_dir: str | os.PathLike[str] | None = None,
    workers: int = 8,
) -> tuple[dict[str, str], int]:
    """SHA-256 of every image, and how many had to be read (the others came from ``SHA256SUMS``).

    Returns ``({path as given: hash}, hashed)``. With ``dataset_dir`` holding a
    ``SHA256SUMS`` file, the hash of an image inside that folder is taken from
    it when the image was not modified after the file was written (its mtime
    is not newer); every other image is read and hashed, ``workers`` at a time
    (hashlib releases the GIL, so threads run in parallel).
    """
    paths = [Path(p) for p in paths]
    known: dict[str, str] = {}
    sums_mtime = None
    if dataset_dir is not None:
        sums = Path(dataset_dir) / SHA256SUMS
        if sums.is_file():
            known = read_sha256sums(sums)
            sums_mtime = sums.stat().st_mtime_ns
    result: dict[str, str] = {}
    to_hash: list[Path] = []
    root = Path(dataset_dir) if dataset_dir is not None else None
    for path in paths:
        digest = None
        if root is not None and sums_mtime is not None:
            try:
                relative = path.relative_to(root).as_posix()
            except ValueError:
                relative = None
            if relative in known and path.stat().st_mtime_ns <= sums_mtime:
                digest = known[relative]
        if digest is None:
            to_hash.append(path)
        else:
            result[str(path)] = digest
    if to_hash:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for path, digest in zip(to_hash, pool.map(file_sha256, to_hash)):
                result[str(path)] = digest
    return result, len(to_hash)


def fingerprint_list_files(
    entries: Sequence[ListEntry],
    image_dir: str | os.PathLike[str],
    *,
    dataset_dir: str | os.PathLike[str] | None = None,
    workers: int = 8,
) -> tuple[str, int]:
    """The fingerprint of a list whose images are in ``image_dir``; also how many images were read."""
    image_dir = Path(image_dir)
    by_path = {str(image_dir / e.filename): e.filename for e in entries}
    hashes, hashed = image_hashes(by_path, dataset_dir=dataset_dir, workers=workers)
    return list_fingerprint(entries, {name: hashes[path] for path, name in by_path.items()}), hashed
