"""Build COVIDx from the public sources: read, split, write images, write lists and report.

:func:`build_covidx` is what ``create_covidx.py`` calls:

1. check every source folder (a missing folder or metadata file is an error
   naming the flag and the path, before any work);
2. read each source (:mod:`data.sources`), cohen first because SIRM needs its
   URLs;
3. order the records as COVID-Net did (per class: cohen, fig1, actmed, sirm,
   ricord; then RSNA normal, RSNA pneumonia) and assign train/test
   (:mod:`data.splits`);
4. plan one output file per record: a second record that would write the same
   source file, or the same output name in the same folder, is skipped and
   reported instead of overwriting the first;
5. write the images in a process pool (``workers``), each through a temporary
   name and a rename; an output that already exists and is intact is kept;
6. write ``train_COVIDx.txt`` and ``test_COVIDx.txt`` in record order with
   only the images that exist (COVID-Net's 4-field or SURFsara's 3-field
   lines), ``SHA256SUMS`` of every listed image (hashed from the bytes as they
   were written) and ``report.json`` with each list's fingerprint: all are
   written under temporary names first and renamed only once all are complete.

The lists depend only on the inputs, never on ``workers`` or on timing, and
re-running replaces them instead of appending. A run killed at any moment
leaves complete files under final names only; the hidden temporary files it
may leave are removed by the next run. Worker processes exit when the main
process dies, however it dies.

A bad *source* file (unreadable, damaged, not an image) is skipped and
reported. A failure to write the *output* (full disk, quota, read-only file
system, no permission) is not the image's fault: the build stops with
:class:`OutputError` before any list is written, so the previous lists and
report stay as they were and no list silently lacks good images.
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from common.fsutil import PARTIAL_PREFIX, atomic_path, atomic_write_bytes, remove_partials
from data.dicom import DicomError, dicom_to_uint8
from data.fingerprint import SHA256SUMS, format_sha256sums, image_hashes, list_fingerprint, sha256_hex
from data.images import (
    JPEG_END,
    PNG_END,
    cv2_decode,
    decode_problem,
    exif_orientation,
    image_format,
    upright_jpeg,
)
from data.labels import CLASSES
from data.lists import LIST_FORMATS, ListEntry, format_entry
from data.records import COPY, DICOM, FAILED, GRAY, OUTPUT_FAILED, PRESENT, WRITTEN, Record, Skip, TaskResult
from data.report import build_report
from data.sources import BY_OPTION, SOURCES, ScanContext, ScanResult
from data.sources.base import describe_os_error, out_name_problem, resolve_path
from data.splits import LISTS, SPLITS, SplitAssignment, SplitRules, assign_splits, get_rules, image_folder

log = logging.getLogger(__name__)

REPORT_NAME = "report.json"


class OutputError(OSError):
    """The output folder cannot be written (full disk, quota, read-only file system, permission...).

    The message names the folder, the file and the reason, and says that the
    previous lists and report were left as they were.
    """


def list_name(split: str) -> str:
    """File name of a split's list: ``train_COVIDx.txt``, ``val_COVIDx.txt``, ``test_COVIDx.txt``."""
    return f"{split}_COVIDx.txt"


@dataclasses.dataclass(frozen=True)
class ImageTask:
    """One output image: where it comes from, where it goes, how it is converted."""

    index: int
    src: str
    dest: str
    convert: str
    crop: tuple[int, int, int, int] | None = None


# -- the worker side ---------------------------------------------------------------------------

def is_intact_image(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a complete image: PNG/JPEG end markers, else a full decode."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            fh.seek(max(0, size - 8))
            tail = fh.read(8)
    except OSError:
        return False
    kind = image_format(head)
    if (kind == "PNG" and tail == PNG_END) or (kind == "JPEG" and tail.endswith(JPEG_END)):
        return True
    try:
        return decode_problem(path.read_bytes()) is None
    except OSError:
        return False


def _encode(image: np.ndarray, suffix: str) -> bytes:
    ok, buf = cv2.imencode(suffix if suffix else ".png", image)
    if not ok:
        raise ValueError(f"OpenCV cannot encode a {suffix} image")
    return buf.tobytes()


def _rotated_jpeg(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536)  # the EXIF block (APP1) is at the start and at most 64 KiB
    except OSError:
        return False
    return exif_orientation(head) != 1


def _same_size(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_size == b.stat().st_size
    except OSError:
        return False


def _convert(task: ImageTask) -> bytes | TaskResult:
    """The output file's bytes for ``task``, read and converted from its source, or the failure."""
    if task.convert in (COPY, GRAY):
        data = Path(task.src).read_bytes()
        problem = decode_problem(data)
        if problem:
            return TaskResult(task.index, FAILED, "corrupt image", problem)
        if task.convert == COPY:
            return data if exif_orientation(data) == 1 else upright_jpeg(data)
        # COVID-Net: cv2.imread (3 channels, 8 bit), then BGR -> gray
        gray = cv2.cvtColor(cv2_decode(data, color=True), cv2.COLOR_BGR2GRAY)
        return _encode(gray, Path(task.dest).suffix)
    if task.convert == DICOM:
        image = dicom_to_uint8(task.src)
        if task.crop is not None:
            xmin, ymin, xmax, ymax = task.crop
            image = image[ymin:ymax, xmin:xmax]
            if image.size == 0:
                return TaskResult(task.index, FAILED, "bad crop box",
                                  f"crop box {task.crop} is outside the image")
        return _encode(np.ascontiguousarray(image), ".png")
    return TaskResult(task.index, FAILED, "internal error", f"unknown conversion {task.convert!r}")


def write_image(task: ImageTask) -> TaskResult:
    """Produce one output image (runs in a worker process); never raises for a bad input.

    Reading and converting the source comes first, writing the output second,
    so that the two kinds of failure cannot be mixed up: a source that cannot
    be read or decoded is ``FAILED`` (skipped and reported), an output that
    cannot be written is ``OUTPUT_FAILED`` (the build stops).
    """
    dest = Path(task.dest)
    if dest.exists() and is_intact_image(dest):
        # A copy must also have its source's size (a stale file from other inputs is replaced),
        # unless it was written upright from an EXIF-rotated JPEG and so differs on purpose.
        if task.convert != COPY or _same_size(dest, Path(task.src)) or _rotated_jpeg(Path(task.src)):
            return TaskResult(task.index, PRESENT)
    try:
        payload = _convert(task)
    except FileNotFoundError:
        return TaskResult(task.index, FAILED, "missing image", f"{task.src} disappeared")
    except DicomError as exc:
        return TaskResult(task.index, FAILED, "bad DICOM", str(exc))
    except Exception as exc:  # one bad file must never stop the build; the reason is reported
        return TaskResult(task.index, FAILED, "unreadable image", f"{type(exc).__name__}: {exc}")
    if isinstance(payload, TaskResult):
        return payload
    try:
        atomic_write_bytes(dest, payload)
    except OSError as exc:
        return TaskResult(task.index, OUTPUT_FAILED, "cannot write the output",
                          f"{dest}: {describe_os_error(exc)}")
    return TaskResult(task.index, WRITTEN, sha256=sha256_hex(payload))


# -- worker processes --------------------------------------------------------------------------

# Exit status of a worker that outlived the main process (128 + SIGHUP, as a shell reports a hang-up).
_ORPHAN_EXIT = 129


def _exit_with_parent() -> None:
    """Make this worker process exit as soon as the process that started it is gone.

    A killed main process cannot shut its pool down, and the workers would
    wait for tasks forever: each holds the write end of its own task pipe, so
    it never sees end-of-file. ``prctl(PR_SET_PDEATHSIG)`` does not help with
    the forkserver: a worker's parent is the fork server, which itself stays
    alive as long as any worker holds its "alive" pipe. What does work, with
    every start method and on every system, is the parent's sentinel that
    multiprocessing hands each child (a pipe that the main process holds open
    until it exits): a thread waits on it and ends the worker. A temporary
    file the worker was writing stays behind under its hidden ``.partial-``
    name and is removed by the next run.
    """
    parent = multiprocessing.parent_process()
    sentinel = getattr(parent, "sentinel", None)
    if sentinel is not None:
        def watch() -> None:
            multiprocessing.connection.wait([sentinel])
            os._exit(_ORPHAN_EXIT)
    else:  # not started by multiprocessing (a test calling the initializer): poll the parent id
        start_ppid = os.getppid()

        def watch() -> None:
            while os.getppid() == start_ppid:
                time.sleep(0.5)
            os._exit(_ORPHAN_EXIT)
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_worker() -> None:
    """Pool initializer: no Ctrl-C tracebacks from workers, and no worker outlives the main process."""
    # Ctrl-C reaches the whole process group; the main process stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()


def _pool_context() -> multiprocessing.context.BaseContext:
    # A fork of a process that runs TensorFlow or other threads can deadlock;
    # the forkserver starts clean and forks workers that have the decoders imported.
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return multiprocessing.get_context("spawn")


def _crashed(task: ImageTask) -> TaskResult:
    return TaskResult(
        task.index, FAILED, "worker crashed",
        "the process converting this image died (a decoder crash or out of memory)",
    )


def _run_pool(
    pending: collections.deque[ImageTask],
    work: Callable[[ImageTask], TaskResult],
    workers: int,
    done: Callable[[TaskResult], None],
) -> list[ImageTask]:
    """Run ``pending`` in one pool; return the tasks in flight if a worker died (the pool is then unusable).
    """
    ctx = _pool_context()
    in_flight: dict[concurrent.futures.Future[TaskResult], ImageTask] = {}
    # At most two tasks per worker are queued, so a dead worker can only have
    # taken down a handful of tasks, which are then retried one by one.
    limit = 2 * workers
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_init_worker
    )
    try:
        while pending or in_flight:
            while pending and len(in_flight) < limit:
                task = pending.popleft()
                in_flight[pool.submit(work, task)] = task
            finished, _ = concurrent.futures.wait(in_flight, return_when=concurrent.futures.FIRST_COMPLETED)
            broken = False
            for future in finished:
                try:
                    result = future.result()
                except BrokenProcessPool:
                    broken = True
                    continue
                in_flight.pop(future)
                done(result)
            if broken:
                pool.shutdown(wait=True)
                return list(in_flight.values())
    except BaseException:
        # An output error, SIGTERM or Ctrl-C: do not wait for the tasks in flight
        # (a stuck decoder would hang the exit); stop the workers now.
        _stop_pool(pool)
        raise
    pool.shutdown(wait=True)
    return []


def _stop_pool(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Cancel the queued tasks and end the workers, waiting at most a few seconds."""
    # ProcessPoolExecutor has no public way to end its workers before Python 3.14.
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        with contextlib.suppress(Exception):
            process.terminate()
    deadline = time.monotonic() + 5.0
    for process in processes:
        with contextlib.suppress(Exception):
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(1.0)


def run_tasks(
    tasks: Sequence[ImageTask],
    *,
    workers: int,
    progress: bool = False,
    func: Callable[[ImageTask], TaskResult] = write_image,
) -> list[TaskResult]:
    """Run ``tasks`` (in worker processes when ``workers > 1``); results come back in task order.

    ``func(task)`` produces one result (default
    :func:`write_image`); it must be importable by the worker processes.

    A worker that dies (a decoder crash, the out-of-memory killer) does not stop
    or hang the build: the tasks it may have held are retried each in a
    process of its own, and the one that kills its process again is reported
    as failed. A result whose output could not be written (``OUTPUT_FAILED``)
    stops everything: the workers are ended and :class:`OutputError` is raised.
    """
    with tqdm(
        total=len(tasks), unit="img", desc="writing images", disable=not progress, dynamic_ncols=True
    ) as bar:
        done = _InTaskOrder(len(tasks), bar)
        if workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                done(func(task))
        else:
            pending = collections.deque(tasks)
            while pending:
                suspects = _run_pool(pending, func, min(workers, len(tasks)), done)
                for task in suspects:
                    retried = _run_pool(collections.deque([task]), func, 1, done)
                    if retried:
                        log.warning("a worker died while converting %s", task.src)
                        done(_crashed(task))
    assert all(r is not None for r in done.results)
    return done.results  # type: ignore[return-value]


class _InTaskOrder:
    """Collects results at their task's index and advances the progress bar; an output failure raises."""

    def __init__(self, n: int, bar: tqdm) -> None:
        self.results: list[TaskResult | None] = [None] * n
        self.bar = bar

    def __call__(self, result: TaskResult) -> None:
        if result.status == OUTPUT_FAILED:
            raise OutputError(f"cannot write {result.detail}")
        self.results[result.index] = result
        self.bar.update()


# -- the planning side -------------------------------------------------------------------------


@dataclasses.dataclass
class BuildResult:
    """What :func:`build_covidx` produced."""

    out_dir: Path
    lists: dict[str, Path]
    report_path: Path
    report: dict[str, Any]
    entries: dict[str, list[ListEntry]]

    @property
    def usable(self) -> bool:
        """False when no image made it into any list."""
        return any(self.entries.values())

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class."""
        return {
            split: {c: sum(e.label == c for e in entries) for c in CLASSES}
            for split, entries in self.entries.items()
        }


def order_records(scans: Sequence[ScanResult]) -> list[Record]:
    """COVID-Net's order: per class the stage-0 sources in turn, then the stage-1 sources per class."""
    by_name = {s.source: s for s in scans}
    specs = [spec for spec in SOURCES if spec.name in by_name]
    ordered: list[Record] = []
    for stage in sorted({spec.stage for spec in specs}):
        stage_specs = [spec for spec in specs if spec.stage == stage]
        if stage == 0:
            for label in CLASSES:
                for spec in stage_specs:
                    ordered.extend(r for r in by_name[spec.name].records if r.label == label)
        else:
            for spec in stage_specs:
                for label in CLASSES:
                    ordered.extend(r for r in by_name[spec.name].records if r.label == label)
    return ordered


def _inside(path: Path, root: Path) -> bool:
    """True when ``path`` is ``root`` or below it, compared lexically (symbolic links are not followed)."""
    path_text = os.path.normpath(os.path.abspath(path))
    root_text = os.path.normpath(os.path.abspath(root))
    return path_text == root_text or path_text.startswith(root_text.rstrip(os.sep) + os.sep)


def plan_outputs(
    assigned: Sequence[tuple[Record, str]],
    out: Path,
    skips: dict[str, list[Skip]],
    roots: Mapping[str, Path] | None = None,
) -> tuple[list[ImageTask], list[tuple[Record, str]]]:
    """One task per output file, in record order.

    A record whose source file is already taken (cohen lists some files under
    two patients) or whose output name is already taken in the same folder is
    skipped and reported in ``skips`` instead of writing the image twice or
    overwriting another one. Every reader already refuses file names that are
    absolute or contain ``..``; as a second line of defence, a record whose
    output name is not a plain file name, or whose source is not inside its
    source folder (``roots``: list name -> folder), is skipped as "bad file
    name" and never read.
    """
    plan = _OutputPlan(out)
    for rec, split_name in assigned:
        problem = _name_problem(rec, roots.get(rec.source) if roots is not None else None)
        if problem:
            skip = Skip(rec.row, rec.patient_id, "bad file name", problem)
        else:
            skip = plan.add(rec, split_name)
        if skip is not None:
            skips[rec.source].append(skip)
    return plan.tasks, plan.planned


def _name_problem(rec: Record, root: Path | None) -> str | None:
    """Why a record's output name or source path cannot be used (never read, never written), or None."""
    problem = out_name_problem(rec.out_name)
    if problem is None and root is not None and not _inside(rec.src, root):
        problem = f"{rec.src} is outside the source folder {root}"
    return problem


class _OutputPlan:
    """The output files planned so far: one task per source file and per output name."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.tasks: list[ImageTask] = []
        self.planned: list[tuple[Record, str]] = []
        self.by_src: dict[Path, tuple[Record, str]] = {}
        self.by_dest: dict[tuple[str, str], Record] = {}

    def add(self, rec: Record, split_name: str) -> Skip | None:
        """Plan ``rec``'s output, or return why it is skipped (its file or output name is taken)."""
        try:
            src = rec.src.resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symbolic link loop (Python < 3.13)
            return Skip(rec.row, rec.patient_id, "unreadable image", f"{rec.src}: {exc}")
        if src in self.by_src:
            first, first_split = self.by_src[src]
            return Skip(
                rec.row, rec.patient_id, "duplicate image",
                f"same file as {first.source} row {first.row} (patient {first.patient_id}, {first_split})",
            )
        folder = image_folder(split_name)
        key = (folder, rec.out_name.casefold())  # case-insensitive file systems exist
        if key in self.by_dest:
            first = self.by_dest[key]
            return Skip(
                rec.row, rec.patient_id, "name collision",
                f"{folder}/{rec.out_name} is already written for {first.source} row {first.row} "
                f"(patient {first.patient_id})",
            )
        self.by_src[src] = (rec, split_name)
        self.by_dest[key] = rec
        dest = self.out / folder / rec.out_name
        self.tasks.append(ImageTask(len(self.tasks), str(src), str(dest), rec.convert, rec.crop))
        self.planned.append((rec, split_name))
        return None


def _resolve_sources(
    sources: Mapping[str, str | os.PathLike[str] | None],
    rules_name: str,
    allowed: frozenset[str] | None,
    why: str,
) -> dict[str, Path]:
    given = {k: Path(v) for k, v in sources.items() if v is not None}
    unknown = sorted(set(given) - set(BY_OPTION))
    if unknown:
        raise ValueError(f"unknown source(s): allowed {', '.join(BY_OPTION)}; received {', '.join(unknown)}")
    if not given:
        raise ValueError(f"no source given: use at least one of {', '.join(s.flag for s in SOURCES)}")
    if allowed is not None:
        for option in given:
            if option not in allowed:
                raise ValueError(
                    f"{BY_OPTION[option].flag} cannot be used with --split {rules_name}: {why} "
                    f"(allowed: {', '.join(BY_OPTION[o].flag for o in sorted(allowed))})"
                )
    return given


def prepare_output_folder(out_dir: str | os.PathLike[str], *, flag: str = "--out") -> Path:
    """Resolve, create and check the output folder before any work; return its absolute path.

    Raises ``NotADirectoryError`` when it is an existing file and
    ``ValueError`` (naming ``flag``, what is expected and what was received)
    when it is a symbolic link loop or cannot be created or written to (a
    read-only file system, no permission): such a run would fail at its first
    image after reading every source.
    """
    given = Path(out_dir)
    out = resolve_path(given, flag, "a folder to write into")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{flag} {given} is an existing file; expected a folder (new or existing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=PARTIAL_PREFIX, suffix=".write-test", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(
            f"{flag} {given}: cannot write into this folder ({describe_os_error(exc)}); "
            "expected a writable folder"
        ) from None
    return out


@contextlib.contextmanager
def _writing_into(out: Path) -> Iterator[None]:
    """Turn an ``OSError`` while writing under ``out`` into :class:`OutputError`; clean up on any failure."""
    try:
        yield
    except OutputError as exc:
        _remove_image_partials(out)
        raise OutputError(
            f"--out {out}: {exc}; stopped before writing the lists, so the previous lists and "
            f"{REPORT_NAME} are untouched (re-run once fixed: intact images are kept)"
        ) from None
    except OSError as exc:
        _remove_image_partials(out)
        raise OutputError(
            f"--out {out}: {describe_os_error(exc)}; stopped before writing the lists, so the "
            f"previous lists and {REPORT_NAME} are untouched"
        ) from None
    except BaseException:
        # SIGTERM or Ctrl-C: the workers are stopped by now, so their temporary files can go.
        _remove_image_partials(out)
        raise


def _remove_image_partials(out: Path) -> None:
    for folder in (out, *(out / split_name for split_name in SPLITS)):
        with contextlib.suppress(OSError):
            remove_partials(folder)


def write_together(files: Mapping[Path, str]) -> None:
    """Write several text files so that none changes unless all could be written.

    Each file is written completely under a temporary name first; only then
    are they renamed, in the given order, one right after the other. A full
    disk or any other error while writing leaves every old file as it was; a
    kill can only fall between two renames (microseconds), and a re-run
    rewrites them all anyway.
    """
    with contextlib.ExitStack() as stack:
        # atomic_path renames on exit, and an ExitStack exits last-in first-out.
        for target, text in reversed(list(files.items())):
            tmp = stack.enter_context(atomic_path(target))
            tmp.write_bytes(text.encode("utf-8"))


def _read_and_plan(
    given: Mapping[str, Path], out: Path, context: ScanContext
) -> tuple[
    list[ScanResult], SplitAssignment, dict[str, list[Skip]], list[ImageTask], list[tuple[Record, str]]
]:
    """Steps 2-4 of :func:`build_covidx`: read the sources, order and split the records, plan the outputs."""
    # 2. read, in SOURCES order; each reader sees what the earlier ones found (SIRM needs cohen's URLs)
    scans: list[ScanResult] = []
    for spec in SOURCES:
        if spec.option not in given:
            continue
        scan = spec.scan(given[spec.option], context)
        context = dataclasses.replace(context, earlier={**context.earlier, spec.name: scan})
        log.info(
            "%s: %d rows read, %d usable, %d skipped", spec.name, scan.rows_read, len(scan.records),
            len(scan.skipped),
        )
        scans.append(scan)

    # 3. order and split
    assignment = assign_splits(order_records(scans), context.rules)
    extra_skips: dict[str, list[Skip]] = {s.source: [] for s in scans}
    for rec, why in assignment.duplicates:
        extra_skips[rec.source].append(Skip(rec.row, rec.patient_id, "duplicate", why))

    # 4. plan outputs
    roots = {s.source: s.root for s in scans}
    tasks, planned = plan_outputs(assignment.assigned, out, extra_skips, roots=roots)
    return scans, assignment, extra_skips, tasks, planned


def build_covidx(
    *,
    out_dir: str | os.PathLike[str],
    sources: Mapping[str, str | os.PathLike[str] | None],
    split: str = "covidnet",
    workers: int | None = None,
    ricord_list: str | os.PathLike[str] | None = None,
    split_seed: int = 0,
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    progress: bool = False,
    list_format: str = "covidnet",
) -> BuildResult:
    """Build COVIDx under ``out_dir`` from ``sources`` (option name -> folder).

    ``sources`` keys are the command-line option names (``cohen``,
    ``figure1``, ``actualmed``, ``sirm``, ``rsna``, ``ricord``, or
    ``radiography_db`` alone); ``split`` is the split rule, ``covidnet``,
    ``surfsara`` or ``radiography`` (then ``split_seed`` and
    ``split_fractions`` draw the train/val/test split); ``workers`` defaults to
    ``os.cpu_count()``; ``list_format`` is the lists' line form
    (:data:`data.lists.LIST_FORMATS`: COVID-Net's 4 fields or SURFsara's 3).
    Beside the lists it writes ``SHA256SUMS`` (every listed image, ``sha256sum
    -c`` form) and records each list's fingerprint (:mod:`data.fingerprint`) in
    the report. Raises ``ValueError``/``FileNotFoundError`` naming the flag and
    path for unusable arguments (checked before any work); bad rows and images
    are skipped and reported. Raises :class:`OutputError` when the output
    cannot be written during the build, leaving the previous lists and report
    as they were. Check :attr:`BuildResult.usable`: nothing usable is not an
    exception.
    """
    rules = get_rules(split)
    given = _check_arguments(
        out_dir, sources, rules, ricord_list=ricord_list, workers=workers, list_format=list_format
    )
    workers = (os.cpu_count() or 1) if workers is None else workers
    created = not Path(out_dir).exists()
    out = prepare_output_folder(out_dir)
    context = ScanContext(
        rules=rules,
        ricord_list=Path(ricord_list) if ricord_list is not None else None,
        split_seed=split_seed,
        split_fractions=tuple(split_fractions),
    )
    with _removed_on_failure(out, created):
        scans, assignment, extra_skips, tasks, planned = _read_and_plan(given, out, context)
    results = _write_images(out, tasks, workers=workers, progress=progress)
    # 6. lists, SHA256SUMS and the report, renamed together
    list_names = LISTS if rules.val_list else SPLITS
    entries, outcomes, hashes = _collect_outcomes(planned, results, extra_skips, list_names)
    return _write_lists_and_report(
        out,
        rules=rules,
        scans=scans,
        extra_skips=extra_skips,
        outcomes=outcomes,
        entries=entries,
        hashes=hashes,
        adjustments=assignment.adjustments,
        list_format=list_format,
    )


def _check_arguments(
    out_dir: str | os.PathLike[str],
    sources: Mapping[str, str | os.PathLike[str] | None],
    rules: SplitRules,
    *,
    ricord_list: str | os.PathLike[str] | None,
    workers: int | None,
    list_format: str,
) -> dict[str, Path]:
    """Step 1 of :func:`build_covidx`: every argument and source folder checked before any work.

    Returns the given sources (option -> folder).
    """
    if list_format not in LIST_FORMATS:
        raise ValueError(f"--list-format must be one of {', '.join(LIST_FORMATS)}, received {list_format!r}")
    given = _resolve_sources(sources, rules.name, rules.allowed_sources, rules.why_sources)
    if ricord_list is not None and "ricord" not in given:
        raise ValueError(f"--ricord-list needs --ricord; received --ricord-list {ricord_list} alone")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, received {workers}")
    out = resolve_path(Path(out_dir), "--out", "a folder to write into")
    for option, root in given.items():
        spec = BY_OPTION[option]
        resolved = resolve_path(root, spec.flag, spec.layout)
        if out == resolved or any(out / s == resolved or out / s in resolved.parents for s in SPLITS):
            raise ValueError(
                f"--out must not be inside a source folder; received --out {out}, which would write into the "
                f"{spec.flag} folder {root}"
            )
    # every folder before reading any
    for spec in SOURCES:
        if spec.option in given:
            spec.check(given[spec.option])
    return given


@contextlib.contextmanager
def _removed_on_failure(out: Path, created: bool) -> Iterator[None]:
    """Remove ``out`` again if this run created it and fails here: a metadata error leaves no empty folder."""
    try:
        yield
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def _write_images(out: Path, tasks: Sequence[ImageTask], *, workers: int, progress: bool) -> list[TaskResult]:
    """Step 5 of :func:`build_covidx`: every planned image written into ``out``'s split folders."""
    with _writing_into(out):
        # A killed run may leave temporary images in the split folders and temporary lists or reports in out.
        removed = remove_partials(out)
        for split_name in SPLITS:
            (out / split_name).mkdir(parents=True, exist_ok=True)
            removed += remove_partials(out / split_name)
        if removed:
            log.info("removed %d temporary files left by an interrupted run in %s", removed, out)
        log.info("writing %d images with %d worker(s) into %s", len(tasks), workers, out)
        return run_tasks(tasks, workers=workers, progress=progress)


def _collect_outcomes(
    planned: Sequence[tuple[Record, str]],
    results: Sequence[TaskResult],
    extra_skips: dict[str, list[Skip]],
    list_names: Sequence[str],
) -> tuple[dict[str, list[ListEntry]], list[tuple[Record, str, TaskResult]], dict[str, str]]:
    """The list entries per split, every outcome, and the SHA-256 of each image written now (by path)."""
    entries: dict[str, list[ListEntry]] = {s: [] for s in list_names}
    outcomes: list[tuple[Record, str, TaskResult]] = []
    hashes: dict[str, str] = {}
    for (rec, split_name), result in zip(planned, results):
        outcomes.append((rec, split_name, result))
        if result.status == FAILED:
            extra_skips[rec.source].append(Skip(rec.row, rec.patient_id, result.reason, result.detail))
            continue
        entries[split_name].append(ListEntry(rec.patient_id, rec.out_name, rec.label, rec.source))
        if result.sha256:
            hashes[f"{image_folder(split_name)}/{rec.out_name}"] = result.sha256
    return entries, outcomes, hashes


def _listed_image_hashes(
    out: Path, entries: Mapping[str, Sequence[ListEntry]], written: Mapping[str, str]
) -> dict[str, str]:
    """``{split folder/file: SHA-256}`` of every listed image.

    Images written by this run come with their hash; images already present
    (a re-run) take it from the previous ``SHA256SUMS`` when not modified
    since, and are read otherwise.
    """
    names = {f"{image_folder(s)}/{e.filename}" for s, listed in entries.items() for e in listed}
    missing = sorted(names - set(written))
    found, _ = image_hashes([out / name for name in missing], dataset_dir=out)
    return {
        **{name: written[name] for name in names & set(written)},
        **{name: found[str(out / name)] for name in missing},
    }


def _write_lists_and_report(
    out: Path,
    *,
    rules: SplitRules,
    scans: Sequence[ScanResult],
    extra_skips: Mapping[str, Sequence[Skip]],
    outcomes: Sequence[tuple[Record, str, TaskResult]],
    entries: dict[str, list[ListEntry]],
    hashes: Mapping[str, str],
    adjustments: Sequence[Any],
    list_format: str,
) -> BuildResult:
    """Write the lists, ``SHA256SUMS`` and the report together; raises :class:`OutputError` if that fails."""
    sums = _listed_image_hashes(out, entries, hashes)
    fingerprints = {
        s: list_fingerprint(listed, {e.filename: sums[f"{image_folder(s)}/{e.filename}"] for e in listed})
        for s, listed in entries.items()
    }
    report = build_report(
        split=rules.name,
        out_dir=out,
        scans=scans,
        extra_skips=extra_skips,
        outcomes=outcomes,
        adjustments=adjustments,
        lists={s: list_name(s) for s in entries},
    )
    report["list_format"] = list_format
    report["fingerprints"] = {list_name(s): fingerprint for s, fingerprint in fingerprints.items()}
    report["sha256sums"] = SHA256SUMS
    lists = {s: out / list_name(s) for s in entries}
    report_path = out / REPORT_NAME
    files = {
        path: "".join(format_entry(e, list_format=list_format) + "\n" for e in entries[s])
        for s, path in lists.items()
    }
    files[out / SHA256SUMS] = format_sha256sums(sums)
    files[report_path] = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    try:
        write_together(files)
    except OSError as exc:
        raise OutputError(
            f"--out {out}: cannot write the lists and {REPORT_NAME}: {describe_os_error(exc)}; "
            "the previous lists and report are untouched"
        ) from None
    return BuildResult(out_dir=out, lists=lists, report_path=report_path, report=report, entries=entries)
