"""Dataset fingerprints: what changes them, what does not, and SHA256SUMS reuse."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from data.fingerprint import (
    SHA256SUMS,
    fingerprint_list_files,
    format_sha256sums,
    image_hashes,
    list_fingerprint,
    read_sha256sums,
    short,
)
from data.lists import ListEntry, read_list, write_list

ENTRIES = [ListEntry("19", "a.png", "pneumonia", "cohen"), ListEntry("COVID 7", "b.png", "COVID-19", "sirm")]
HASHES = {"a.png": "1" * 64, "b.png": "2" * 64}


def test_fingerprint_is_the_sha256_of_the_stated_canonical_text() -> None:
    text = ("covidx-list-fingerprint v1\n"
            f"19\ta.png\tpneumonia\t{'1' * 64}\n"
            f"COVID_7\tb.png\tCOVID-19\t{'2' * 64}\n")
    assert list_fingerprint(ENTRIES, HASHES) == "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    assert (
        short(list_fingerprint(ENTRIES, HASHES)) == "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]
    )


def test_order_and_list_format_do_not_change_it_but_data_does(tmp_path: Path) -> None:
    base = list_fingerprint(ENTRIES, HASHES)
    assert list_fingerprint(ENTRIES[::-1], HASHES) == base
    # SURFsara's 3-field form of the same list: no source column, 'COVID 7' written as 'COVID_7'.
    surfsara = read_list(write_list(tmp_path / "s.txt", ENTRIES, list_format="surfsara")).entries
    assert surfsara != ENTRIES and list_fingerprint(surfsara, HASHES) == base
    assert list_fingerprint([ENTRIES[0]], HASHES) != base  # an image fewer
    relabelled = [ENTRIES[0], ListEntry("COVID 7", "b.png", "pneumonia", "sirm")]
    assert list_fingerprint(relabelled, HASHES) != base
    regrouped = [ENTRIES[0], ListEntry("20", "b.png", "COVID-19", "sirm")]
    assert list_fingerprint(regrouped, HASHES) != base
    assert list_fingerprint(ENTRIES, {**HASHES, "b.png": "3" * 64}) != base  # other bytes
    with pytest.raises(ValueError, match="no SHA-256 for 1 listed images"):
        list_fingerprint(ENTRIES, {"a.png": "1" * 64})


def _dataset(root: Path) -> list[ListEntry]:
    (root / "train").mkdir(parents=True)
    for i, entry in enumerate(ENTRIES):
        (root / "train" / entry.filename).write_bytes(bytes([i]) * 1000)
    return ENTRIES


def test_sha256sums_is_sha256sum_compatible_and_spares_the_reads(tmp_path: Path) -> None:
    entries = _dataset(tmp_path)
    paths = [tmp_path / "train" / e.filename for e in entries]
    hashes, hashed = image_hashes(paths)
    assert hashed == 2
    assert hashes[str(paths[0])] == hashlib.sha256(bytes([0]) * 1000).hexdigest()
    relative = {p.relative_to(tmp_path).as_posix(): hashes[str(p)] for p in paths}
    (tmp_path / SHA256SUMS).write_text(format_sha256sums(relative))
    assert read_sha256sums(tmp_path / SHA256SUMS) == relative
    if shutil.which("sha256sum"):
        check = subprocess.run(["sha256sum", "-c", SHA256SUMS], cwd=tmp_path, capture_output=True, text=True)
        assert check.returncode == 0 and check.stdout.count(": OK") == 2

    first, hashed = fingerprint_list_files(entries, tmp_path / "train", dataset_dir=tmp_path)
    assert hashed == 0 and first == list_fingerprint(
        entries, {e.filename: relative[f"train/{e.filename}"] for e in entries}
    )
    # A file changed after SHA256SUMS was written is read again, and the fingerprint follows it.
    changed = paths[1]
    changed.write_bytes(b"other bytes")
    stamp = (tmp_path / SHA256SUMS).stat().st_mtime_ns + 10**9
    os.utime(changed, ns=(stamp, stamp))
    second, hashed = fingerprint_list_files(entries, tmp_path / "train", dataset_dir=tmp_path)
    assert hashed == 1 and second != first
    # Without SHA256SUMS everything is read and the result is the same.
    assert fingerprint_list_files(entries, tmp_path / "train") == (second, 2)
