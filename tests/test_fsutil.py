"""Crash-safe writing: permissions follow the umask, folders swap in whole, leftovers are removed."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from common.fsutil import (
    atomic_dir,
    atomic_path,
    atomic_write_text,
    current_umask,
    is_partial,
    remove_partials,
)


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def test_current_umask_reads_the_process_umask(umask_027) -> None:
    assert current_umask() == 0o027
    assert current_umask() == 0o027  # reading it does not change it


def test_files_get_the_umask_permissions_not_mkstemps_0600(tmp_path: Path, umask_027) -> None:
    target = atomic_write_text(tmp_path / "list.txt", "1 a.png normal\n")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    # Group-readable like a file written with open(): a dataset on a shared file system stays usable.
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_partial(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "report.json", "old")
    with pytest.raises(OSError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError(28, "No space left on device")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_atomic_dir_swaps_a_complete_folder_in(tmp_path: Path, umask_027) -> None:
    target = tmp_path / "saved_model"
    with atomic_dir(target) as tmp:
        assert is_partial(tmp) and tmp.parent == tmp_path and not target.exists()
        (tmp / "saved_model.pb").write_bytes(b"v1")
    assert (target / "saved_model.pb").read_bytes() == b"v1"
    assert stat.S_IMODE(target.stat().st_mode) == 0o750
    with atomic_dir(target) as tmp:
        (tmp / "saved_model.pb").write_bytes(b"v2")
    assert (target / "saved_model.pb").read_bytes() == b"v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved_model"]  # the old copy is gone too


def test_atomic_dir_that_fails_keeps_the_old_folder(tmp_path: Path) -> None:
    target = tmp_path / "saved_model"
    target.mkdir()
    (target / "saved_model.pb").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "saved_model.pb").write_bytes(b"new, half")
            raise RuntimeError("killed")
    assert (target / "saved_model.pb").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved_model"]


def test_remove_partials_removes_files_and_folders_and_recurses_on_request(tmp_path: Path) -> None:
    (tmp_path / ".partial-abc.cp-01.hdf5").write_bytes(b"x")
    (tmp_path / ".partial-old-xyz.saved_model").mkdir()
    (tmp_path / ".partial-old-xyz.saved_model" / "saved_model.pb").write_bytes(b"x")
    nested = tmp_path / "resume" / "epoch-0001"
    nested.mkdir(parents=True)
    (nested / ".partial-q.state.weights.h5").write_bytes(b"x")
    (nested / "state.json").write_text("{}")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / ".partial-keep").write_bytes(b"x")
    (tmp_path / "link").symlink_to(outside, target_is_directory=True)

    assert remove_partials(tmp_path) == 2
    assert (nested / ".partial-q.state.weights.h5").exists()
    assert remove_partials(tmp_path, recursive=True) == 1
    assert sorted(p.name for p in nested.iterdir()) == ["state.json"]
    assert (outside / ".partial-keep").exists()  # links are not followed out of the folder
    assert remove_partials(tmp_path / "missing") == 0
