"""create_covidx.py killed at seeded moments, then re-run: the result equals a clean run's, byte for byte.

Each kill runs create_covidx.py in a subprocess of its own session through
tests/fault_build_runner.py, which sends SIGKILL or SIGTERM to itself at an
exact moment (the N-th image conversion, half-way through the N-th file
write, just before a given rename, inside a cache shard) or, with two
workers, once K images have appeared. After every kill: no process of the
session is left, every file under a final name is complete (images decode,
lists parse, report.json and manifest.json are JSON, recorded shards are
intact), and SIGTERM also leaves no temporary file. After the last re-run the
output folder equals a clean run's: the same files with the same SHA-256, and
the same report.json except for the counts of images written in this run
versus already present (``images.written``/``already_present`` and each
source's ``images_written``/``images_already_present``, whose sums are equal)
and ``out_dir``.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import create_covidx
from common.fsutil import is_partial
from conftest import REPO_ROOT
from data.build import is_intact_image
from data.lists import read_list

pytestmark = pytest.mark.slow

RUNNER = REPO_ROOT / "tests" / "fault_build_runner.py"
SOURCES = ("cohen", "figure1", "actualmed", "sirm", "rsna", "ricord")
CACHE = ["--cache", "32"]
# Filled by the tests, printed at the end of the module (pytest -s shows it).
OUTCOMES: list[tuple[str, str, str, int, str]] = []


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Synthetic sources and a clean, uninterrupted build of them (with a 32 px cache)."""
    root = tmp_path_factory.mktemp("faults")
    src = root / "sources"
    assert create_covidx.main(["--synthetic", str(src), "--synthetic-size", "60",
                               "--synthetic-image-size", "64"]) == 0
    source_args = [a for option in SOURCES for a in (f"--{option}", str(src / option))]
    clean = root / "clean"
    argv = [*source_args, "--out", str(clean), "--workers", "1", "--no-progress", *CACHE]
    assert create_covidx.main(argv) == 0
    yield {"root": root, "args": source_args, "clean": clean}
    if OUTCOMES:
        print("\nkill moments tried:")
        for row in OUTCOMES:
            print("  " + " | ".join(map(str, row)))


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "report.json"}


def _comparable(report: dict) -> dict:
    """report.json without what legitimately differs between a clean run and a finishing re-run."""
    report = copy.deepcopy(report)
    images = report.pop("images")
    report["images_listed"] = images["written"] + images["already_present"]
    report["images_failed"] = images["failed"]
    report.pop("out_dir")
    for source in report["sources"].values():
        source["images_listed"] = source.pop("images_written") + source.pop("images_already_present")
    return report


def _session_processes(sid: int) -> list[str]:
    """Live (non-zombie) processes of session ``sid``, as 'pid state cmdline'."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(stat[3]) == sid and stat[0] != "Z":
            found.append(f"{entry} {stat[0]} {cmd[:80]}")
    return found


def _wait_session_gone(sid: int, timeout: float = 5.0) -> tuple[list[str], float]:
    start = time.monotonic()
    while True:
        left = _session_processes(sid)
        if not left or time.monotonic() - start > timeout:
            return left, time.monotonic() - start
        time.sleep(0.05)


def _check_complete(out: Path) -> None:
    """Every file under a final name is whole; only hidden .partial-* files may be incomplete."""
    for split in ("train", "test"):
        for path in (out / split).glob("*") if (out / split).is_dir() else ():
            assert is_partial(path) or is_intact_image(path), f"{path} is incomplete under its final name"
    for name in ("train_COVIDx.txt", "test_COVIDx.txt"):
        if (out / name).exists():
            assert read_list(out / name).bad_lines == []
    if (out / "report.json").exists():
        json.loads((out / "report.json").read_text())
    cache = out / "cache-32"
    if (cache / "manifest.json").exists():
        from data.cache import verify_cache

        manifest = json.loads((cache / "manifest.json").read_text())
        problems = [p for p in verify_cache(cache) if "unfinished build" not in p]
        assert problems == [] and manifest["size"] == 32


def _kill_run(world: dict, out: Path, spec: str, sig: str, *, workers: int, cache: bool) -> tuple[int, str]:
    argv = [sys.executable, str(RUNNER), "--kill", spec, "--signal", sig, "--",
            *world["args"], "--out", str(out), "--workers", str(workers), "--no-progress",
            *(CACHE if cache else [])]
    log = out.parent / f"{out.name}.stderr"
    # stderr goes to a file, not a pipe: an orphaned worker holding the pipe would make us wait for it.
    with open(log, "w") as fh:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=fh)
    try:
        proc.wait(timeout=120)
        left, waited = _wait_session_gone(proc.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left, so that no test leaves processes behind
    err = log.read_text()
    assert left == [], f"{spec}: processes outlived the killed build by {waited:.1f} s: {left}"
    assert "moment not reached" not in err, f"{spec} never happened: {err[-2000:]}"
    assert "Traceback" not in err, err[-2000:]
    expected = -signal.SIGKILL if sig == "KILL" else create_covidx.EXIT_TERMINATED
    assert proc.returncode == expected, f"{spec} {sig}: exit {proc.returncode}: {err[-2000:]}"
    if sig == "TERM":
        assert err.strip().splitlines()[-1].startswith("error: terminated by SIGTERM")
        assert not [p for p in out.rglob("*") if is_partial(p)], "SIGTERM left temporary files"
    _check_complete(out)
    partials = sum(1 for p in out.rglob("*") if is_partial(p))
    state = ", ".join(f"{name} {'present' if (out / name).exists() else 'absent'}"
                      for name in ("train_COVIDx.txt", "test_COVIDx.txt", "report.json"))
    images = sum(1 for split in ("train", "test") for p in (out / split).glob("*") if not is_partial(p))
    OUTCOMES.append((f"workers {workers}", spec, f"SIG{sig}", proc.returncode,
                     f"{images} images, {partials} .partial files, {state}, "
                     f"processes gone in {waited:.2f} s"))
    return proc.returncode, err


def _finish_and_compare(world: dict, out: Path, *, workers: int, cache: bool) -> None:
    done = subprocess.run([sys.executable, "create_covidx.py", *world["args"], "--out", str(out),
                           "--workers", str(workers), "--no-progress", *(CACHE if cache else [])],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    clean: Path = world["clean"]
    expected = _digests(clean)
    if not cache:
        expected = {k: v for k, v in expected.items() if not k.startswith("cache-32")}
    got = _digests(out)
    assert not [k for k in got if is_partial(k.rsplit("/", 1)[-1])]
    assert got.keys() == expected.keys() and got == expected
    report = json.loads((out / "report.json").read_text())
    assert _comparable(report) == _comparable(json.loads((clean / "report.json").read_text()))
    assert report["images"]["already_present"] > 0  # the kills' complete images were kept, not rewritten
    OUTCOMES.append((f"workers {workers}", "final re-run", "-", done.returncode,
                     f"{len(got)} files equal to the clean run's ({report['images']['written']} written now, "
                     f"{report['images']['already_present']} kept)"))


def test_kills_of_a_one_worker_build_and_its_cache_then_a_rerun_equal_a_clean_run(world: dict) -> None:
    out = world["root"] / "chain1"
    moments = [
        ("call:data.build._convert:5", "KILL"),  # between two images
        ("half-write:4", "KILL"),  # an image half-way through its temporary file
        ("replace:6", "TERM"),  # an image complete under its temporary name, before the rename
        ("half-write:9", "TERM"),
        ("call:data.build.write_together:1", "KILL"),  # every image written, no list yet
        ("replace:test_COVIDx.txt", "KILL"),  # the train list renamed, not the test list
        ("replace:report.json", "KILL"),  # both lists, not the report
        ("record:40", "KILL"),  # the cache: inside its third shard (17 + 17 records before it)
        ("replace:manifest.json:2", "TERM"),  # a shard renamed, its manifest entry not yet written
    ]
    for spec, sig in moments:
        _kill_run(world, out, spec, sig, workers=1, cache=True)
    # What each moment leaves, where it is certain:
    assert (out / "train_COVIDx.txt").is_file() and (out / "cache-32" / "manifest.json").is_file()
    _finish_and_compare(world, out, workers=1, cache=True)


def test_kills_of_a_two_worker_build_leave_no_process_and_a_rerun_equals_a_clean_run(world: dict) -> None:
    out = world["root"] / "chain2"
    first, _ = _kill_run(world, out, "files:3", "KILL", workers=2, cache=False)
    assert first == -signal.SIGKILL and not (out / "train_COVIDx.txt").exists()
    _kill_run(world, out, "files:12", "TERM", workers=2, cache=False)
    _kill_run(world, out, "files:25", "KILL", workers=2, cache=False)
    _finish_and_compare(world, out, workers=2, cache=False)
