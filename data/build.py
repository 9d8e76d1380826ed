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
   only the images that exist, then ``report.json``.

The lists depend only on the inputs, never on ``workers`` or on timing, and
re-running replaces them instead of appending. A run killed at any moment
leaves complete files under final names only; the hidden temporary files it
may leave are removed by the next run.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import io
import json
import logging
import multiprocessing
import os
from pathlib import Path
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Mapping, Sequence

import cv2
import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from common.fsutil import atomic_write_bytes, atomic_write_text, remove_partials
from data.dicom import DicomError, dicom_to_uint8
from data.labels import CLASSES
from data.lists import ListEntry, write_list
from data.report import build_report
from data.sources import BY_OPTION, SOURCES, Record, ScanContext, ScanResult, Skip
from data.sources.base import COPY, DICOM, GRAY
from data.splits import LISTS, SPLITS, assign_splits, get_rules, image_folder

log = logging.getLogger(__name__)

REPORT_NAME = "report.json"
WRITTEN = "written"
PRESENT = "present"
FAILED = "failed"


def list_name(split: str) -> str:
    """File name of a split's list: ``train_COVIDx.txt``, ``val_COVIDx.txt``, ``test_COVIDx.txt``."""
    return f"{split}_COVIDx.txt"


@dataclasses.dataclass(frozen=True)
class WriteOptions:
    """How output images are written.

    Empty today; later options (say, a resized cache of every image) become
    fields here and reach every worker without changing the task plumbing.
    """


@dataclasses.dataclass(frozen=True)
class ImageTask:
    """One output image: where it comes from, where it goes, how it is converted."""

    index: int
    src: str
    dest: str
    convert: str
    crop: tuple[int, int, int, int] | None = None


@dataclasses.dataclass(frozen=True)
class TaskResult:
    """What happened to one :class:`ImageTask`."""

    index: int
    status: str
    reason: str = ""
    detail: str = ""


# -- the worker side ---------------------------------------------------------------------------

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"


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
    if head.startswith(_PNG_MAGIC) and tail == _PNG_END:
        return True
    if head.startswith(b"\xff\xd8") and tail.endswith(b"\xff\xd9"):
        return True
    try:
        return decode_problem(path.read_bytes()) is None
    except OSError:
        return False


def _decode(data: bytes, flags: int) -> np.ndarray | None:
    if not data:
        return None
    return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)


def decode_problem(data: bytes) -> str | None:
    """Why ``data`` is not a complete, decodable image, or None.

    libjpeg only warns about a JPEG that ends early and OpenCV may then return
    a half-grey image, so JPEGs are checked with Pillow, which refuses
    truncated files (decoded at 1/8 scale: the check reads every byte but
    costs a fraction of a full decode). Other formats must decode with OpenCV.
    """
    if data[:3] == b"\xff\xd8\xff":
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.draft("L", (max(1, im.width // 8), max(1, im.height // 8)))
                im.load()
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... on damaged data
            return f"damaged JPEG ({type(exc).__name__}: {exc})"
        return None
    if _decode(data, cv2.IMREAD_UNCHANGED) is None:
        return "cannot be decoded (damaged, truncated or not an image)"
    return None


_EXIF_ORIENTATION = 0x0112


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation of a JPEG: 1 when stored upright or untagged, 2-8 when flipped or rotated."""
    if data[:3] != b"\xff\xd8\xff":
        return 1
    try:
        with Image.open(io.BytesIO(data)) as im:
            return int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # a damaged header has no usable orientation; decode_problem reports the damage
        return 1


def upright_jpeg(data: bytes) -> bytes:
    """The JPEG rotated/flipped as its EXIF orientation says, re-encoded without the tag.

    cv2.imread (SURFsara's and COVID-Net's reader) applies the EXIF orientation;
    TensorFlow's decoders do not. Writing the image upright makes every reader
    see the same pixels. Re-encoding is at quality 100 without chroma
    subsampling, the closest to lossless a JPEG allows.
    """
    with Image.open(io.BytesIO(data)) as im:
        upright = ImageOps.exif_transpose(im)
        out = io.BytesIO()
        upright.save(out, format="JPEG", quality=100, subsampling=0)
    return out.getvalue()


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


def write_image(task: ImageTask, options: WriteOptions = WriteOptions()) -> TaskResult:
    """Produce one output image (runs in a worker process); never raises for a bad input."""
    dest = Path(task.dest)
    if dest.exists() and is_intact_image(dest):
        # A copy must also have its source's size (a stale file from other inputs is replaced),
        # unless it was written upright from an EXIF-rotated JPEG and so differs on purpose.
        if task.convert != COPY or _same_size(dest, Path(task.src)) or _rotated_jpeg(Path(task.src)):
            return TaskResult(task.index, PRESENT)
    try:
        if task.convert in (COPY, GRAY):
            data = Path(task.src).read_bytes()
            problem = decode_problem(data)
            if problem:
                return TaskResult(task.index, FAILED, "corrupt image", problem)
        if task.convert == COPY:
            atomic_write_bytes(dest, data if exif_orientation(data) == 1 else upright_jpeg(data))
        elif task.convert == GRAY:
            # COVID-Net: cv2.imread (3 channels, 8 bit), then BGR -> gray
            gray = cv2.cvtColor(_decode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2GRAY)
            atomic_write_bytes(dest, _encode(gray, dest.suffix))
        elif task.convert == DICOM:
            image = dicom_to_uint8(task.src)
            if task.crop is not None:
                xmin, ymin, xmax, ymax = task.crop
                image = image[ymin:ymax, xmin:xmax]
                if image.size == 0:
                    return TaskResult(task.index, FAILED, "bad crop box", f"crop box {task.crop} is outside the image")
            atomic_write_bytes(dest, _encode(np.ascontiguousarray(image), ".png"))
        else:
            return TaskResult(task.index, FAILED, "internal error", f"unknown conversion {task.convert!r}")
    except FileNotFoundError:
        return TaskResult(task.index, FAILED, "missing image", f"{task.src} disappeared")
    except DicomError as exc:
        return TaskResult(task.index, FAILED, "bad DICOM", str(exc))
    except Exception as exc:  # one bad file must never stop the build; the reason is reported
        return TaskResult(task.index, FAILED, "unreadable image", f"{type(exc).__name__}: {exc}")
    return TaskResult(task.index, WRITTEN)


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
    """Run ``pending`` in one pool; return the tasks in flight if a worker died (the pool is then unusable)."""
    ctx = _pool_context()
    in_flight: dict[concurrent.futures.Future[TaskResult], ImageTask] = {}
    # At most two tasks per worker are queued, so a dead worker can only have
    # taken down a handful of tasks, which are then retried one by one.
    limit = 2 * workers
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
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
                return list(in_flight.values())
    return []


def run_tasks(
    tasks: Sequence[ImageTask],
    *,
    workers: int,
    progress: bool = False,
    options: WriteOptions = WriteOptions(),
    func: Callable[..., TaskResult] = write_image,
) -> list[TaskResult]:
    """Run ``tasks`` (in worker processes when ``workers > 1``); results come back in task order.

    ``func(task, options=options)`` produces one result (default
    :func:`write_image`); it must be importable by the worker processes.

    A worker that dies (a decoder crash, the out-of-memory killer) does not stop
    or hang the build: the tasks it may have held are retried each in a
    process of its own, and the one that kills its process again is reported
    as failed.
    """
    results: list[TaskResult | None] = [None] * len(tasks)
    work = functools.partial(func, options=options)
    with tqdm(total=len(tasks), unit="img", desc="writing images", disable=not progress, dynamic_ncols=True) as bar:

        def done(result: TaskResult) -> None:
            results[result.index] = result
            bar.update()

        if workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                done(work(task))
        else:
            pending = collections.deque(tasks)
            while pending:
                suspects = _run_pool(pending, work, min(workers, len(tasks)), done)
                for task in suspects:
                    retried = _run_pool(collections.deque([task]), work, 1, done)
                    if retried:
                        log.warning("a worker died while converting %s", task.src)
                        done(_crashed(task))
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


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


def plan_outputs(
    assigned: Sequence[tuple[Record, str]], out: Path, skips: dict[str, list[Skip]]
) -> tuple[list[ImageTask], list[tuple[Record, str]]]:
    """One task per output file, in record order.

    A record whose source file is already taken (cohen lists some files under
    two patients) or whose output name is already taken in the same folder is
    skipped and reported in ``skips`` instead of writing the image twice or
    overwriting another one.
    """
    tasks: list[ImageTask] = []
    planned: list[tuple[Record, str]] = []
    by_src: dict[Path, tuple[Record, str]] = {}
    by_dest: dict[tuple[str, str], Record] = {}
    for rec, split_name in assigned:
        src = rec.src.resolve()
        if src in by_src:
            first, first_split = by_src[src]
            skips[rec.source].append(Skip(
                rec.row, rec.patient_id, "duplicate image",
                f"same file as {first.source} row {first.row} (patient {first.patient_id}, {first_split})",
            ))
            continue
        folder = image_folder(split_name)
        key = (folder, rec.out_name.casefold())  # case-insensitive file systems exist
        if key in by_dest:
            first = by_dest[key]
            skips[rec.source].append(Skip(
                rec.row, rec.patient_id, "name collision",
                f"{folder}/{rec.out_name} is already written for {first.source} row {first.row} "
                f"(patient {first.patient_id})",
            ))
            continue
        by_src[src] = (rec, split_name)
        by_dest[key] = rec
        tasks.append(ImageTask(len(tasks), str(src), str(out / folder / rec.out_name), rec.convert, rec.crop))
        planned.append((rec, split_name))
    return tasks, planned


def _resolve_sources(
    sources: Mapping[str, str | os.PathLike[str] | None], rules_name: str, allowed: frozenset[str] | None, why: str
) -> dict[str, Path]:
    given = {k: Path(v) for k, v in sources.items() if v is not None}
    unknown = sorted(set(given) - set(BY_OPTION))
    if unknown:
        raise ValueError(f"unknown source(s) {', '.join(unknown)}; known: {', '.join(BY_OPTION)}")
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
    options: WriteOptions = WriteOptions(),
) -> BuildResult:
    """Build COVIDx under ``out_dir`` from ``sources`` (option name -> folder).

    ``sources`` keys are the command-line option names (``cohen``,
    ``figure1``, ``actualmed``, ``sirm``, ``rsna``, ``ricord``, or
    ``radiography_db`` alone); ``split`` is ``covidnet``, ``surfsara`` or
    ``radiography`` (then ``split_seed`` and ``split_fractions`` draw the
    train/val/test split); ``workers`` defaults to ``os.cpu_count()``.
    Raises ``ValueError``/``FileNotFoundError`` naming the flag and path for
    unusable arguments; bad rows and images are skipped and reported. Check
    :attr:`BuildResult.usable`: nothing usable is not an exception.
    """
    rules = get_rules(split)
    given = _resolve_sources(sources, rules.name, rules.allowed_sources, rules.why_sources)
    if ricord_list is not None and "ricord" not in given:
        raise ValueError("--ricord-list needs --ricord")
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    out = Path(out_dir).resolve()
    for option, root in given.items():
        resolved = root.resolve()
        if out == resolved or any(out / s == resolved or out / s in resolved.parents for s in SPLITS):
            raise ValueError(
                f"--out {out} would write into the {BY_OPTION[option].flag} folder {root}; choose another --out"
            )

    # 1. check every folder before reading any
    for spec in SOURCES:
        if spec.option in given:
            spec.check(given[spec.option])

    # 2. read
    context = ScanContext(rules=rules, ricord_list=Path(ricord_list) if ricord_list is not None else None,
                          split_seed=split_seed, split_fractions=tuple(split_fractions))
    scans: list[ScanResult] = []
    for spec in SOURCES:
        if spec.option not in given:
            continue
        scan = spec.scan(given[spec.option], context)
        if spec.name == "cohen":
            context = dataclasses.replace(context, exclude_urls=scan.urls)
        log.info(
            "%s: %d rows read, %d usable, %d skipped", spec.name, scan.rows_read, len(scan.records), len(scan.skipped)
        )
        scans.append(scan)

    # 3. order and split
    ordered = order_records(scans)
    assignment = assign_splits(ordered, rules)
    extra_skips: dict[str, list[Skip]] = {s.source: [] for s in scans}
    for rec, why in assignment.duplicates:
        extra_skips[rec.source].append(Skip(rec.row, rec.patient_id, "duplicate", why))

    # 4. plan outputs
    tasks, planned = plan_outputs(assignment.assigned, out, extra_skips)

    # 5. write images
    for split_name in SPLITS:
        (out / split_name).mkdir(parents=True, exist_ok=True)
        removed = remove_partials(out / split_name)
        if removed:
            log.info("removed %d temporary files left by an interrupted run in %s", removed, out / split_name)
    log.info("writing %d images with %d worker(s) into %s", len(tasks), workers, out)
    results = run_tasks(tasks, workers=workers, progress=progress, options=options)

    # 6. lists, then the report
    list_names = LISTS if rules.val_list else SPLITS
    entries: dict[str, list[ListEntry]] = {s: [] for s in list_names}
    outcomes: list[tuple[Record, str, TaskResult]] = []
    for (rec, split_name), result in zip(planned, results):
        outcomes.append((rec, split_name, result))
        if result.status == FAILED:
            extra_skips[rec.source].append(Skip(rec.row, rec.patient_id, result.reason, result.detail))
            continue
        entries[split_name].append(ListEntry(rec.patient_id, rec.out_name, rec.label, rec.source))
    lists = {s: write_list(out / list_name(s), entries[s]) for s in list_names}

    report = build_report(
        split=rules.name,
        out_dir=out,
        scans=scans,
        extra_skips=extra_skips,
        outcomes=outcomes,
        adjustments=assignment.adjustments,
        lists={s: list_name(s) for s in list_names},
    )
    report_path = atomic_write_text(out / REPORT_NAME, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return BuildResult(out_dir=out, lists=lists, report_path=report_path, report=report, entries=entries)
