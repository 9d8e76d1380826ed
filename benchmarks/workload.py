"""The benchmark's images: synthetic chest radiographs as large as the real originals, and their cache.

COVIDx originals are 1000-3000 px PNG and JPEG files, and decoding them is the
cost the cache removes, so the benchmark writes images of that size
(:func:`data.synthetic.render_cxr`, with pixel noise so PNGs are about as large
as real ones: a 2048 px PNG is about 2 MB) instead of the tiny test images.
Every combination of the requested sizes and formats occurs; the classes
follow COVIDx's mix, with one image in eight COVID-19 so balanced batches can
be drawn. Files are named after their content and seed, so a ``--work-dir``
that already holds them is reused, and each is written atomically.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from common.fsutil import atomic_write_bytes
from data.lists import ListEntry, write_list
from data.synthetic import render_cxr

FORMATS = ("png", "jpg")
LIST_NAME = "train_COVIDx.txt"


@dataclasses.dataclass(frozen=True)
class Originals:
    """The written originals: folder, list file and entries, and what writing them cost."""

    image_dir: Path
    list_file: Path
    entries: tuple[ListEntry, ...]
    total_bytes: int
    written: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the entries)."""
        return {
            "image_dir": str(self.image_dir),
            "list_file": str(self.list_file),
            "count": len(self.entries),
            "total_mib": round(self.total_bytes / 2**20, 1),
            "written_now": self.written,
            "write_seconds": round(self.seconds, 2),
        }


def _label(i: int, n: int) -> str:
    if i % 8 == 7 or (n < 8 and i == n - 1):
        return "COVID-19"
    return "normal" if i % 2 == 0 else "pneumonia"


def plan_originals(
    n: int, *, sizes: Sequence[int], formats: Sequence[str]
) -> list[tuple[str, str, int, str]]:
    """``(filename, label, px, format)`` of ``n`` originals covering every size/format combination."""
    if n < 2:
        raise ValueError(
            f"--originals must be >= 2 (balanced batches need a COVID-19 image and another), received {n}"
        )
    if not sizes or min(sizes) < 16:
        raise ValueError(f"--original-px sizes must be >= 16 px, received {list(sizes)}")
    bad = [f for f in formats if f not in FORMATS]
    if not formats or bad:
        raise ValueError(f"--formats must be among {', '.join(FORMATS)}, received {list(formats)}")
    plan = []
    for i in range(n):
        px = sizes[i % len(sizes)]
        fmt = formats[(i // len(sizes)) % len(formats)]
        label = _label(i, n)
        plan.append((f"{i:05d}-{label.lower()}-{px}px.{fmt}", label, px, fmt))
    return plan


def _write_one(path: Path, label: str, px: int, fmt: str, seed: int, index: int) -> int:
    if path.is_file():
        return 0
    image = render_cxr(label, np.random.default_rng([seed, index]), px)
    ok, buf = cv2.imencode(f".{fmt}", image)
    if not ok:
        raise ValueError(f"OpenCV cannot encode the image as {', '.join(FORMATS)}; received format {fmt!r}")
    atomic_write_bytes(path, buf.tobytes())
    return 1


def write_originals(
    work_dir: str | os.PathLike[str],
    n: int,
    *,
    sizes: Sequence[int],
    formats: Sequence[str] = FORMATS,
    seed: int = 0,
    threads: int | None = None,
) -> Originals:
    """Write (or reuse) ``n`` synthetic originals under ``work_dir`` and their COVIDx list file."""
    plan = plan_originals(n, sizes=sizes, formats=formats)
    image_dir = Path(work_dir) / f"originals-seed{seed}"
    image_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # cv2 and numpy release the GIL for most of the work, so threads use all cores.
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        jobs = [
            pool.submit(_write_one, image_dir / name, label, px, fmt, seed, i)
            for i, (name, label, px, fmt) in enumerate(plan)
        ]
        written = sum(job.result() for job in jobs)
    seconds = time.perf_counter() - start
    entries = tuple(
        ListEntry(patient_id=f"bench{i:05d}", filename=name, label=label, source="benchmark")
        for i, (name, label, _, _) in enumerate(plan)
    )
    list_file = Path(work_dir) / f"{LIST_NAME[:-4]}-seed{seed}-n{n}.txt"
    write_list(list_file, entries)
    total = sum((image_dir / e.filename).stat().st_size for e in entries)
    return Originals(
        image_dir=image_dir,
        list_file=list_file,
        entries=entries,
        total_bytes=total,
        written=written,
        seconds=seconds,
    )


def ensure_cache(work_dir: str | os.PathLike[str], originals: Originals, *, size: int) -> dict[str, Any]:
    """Build (or reuse) the ``data.cache`` cache of the originals at ``size`` px; report what it cost."""
    from data.cache import CacheError, build_cache, open_cache

    root = Path(work_dir) / f"cache-{size}px-{originals.list_file.stem}"
    try:
        open_cache(root, "train", entries=originals.entries)
        reused = True
    except CacheError:
        reused = False
    start = time.perf_counter()
    if not reused:
        build_cache(root, lists={"train": (originals.entries, originals.image_dir)}, size=size)
    seconds = time.perf_counter() - start
    shards = list(root.glob("*.tfrecord"))
    info: dict[str, Any] = {
        "cache_dir": str(root),
        "size": size,
        "reused": reused,
        "shards": len(shards),
        "total_mib": round(sum(p.stat().st_size for p in shards) / 2**20, 1),
    }
    if not reused:
        info["build_seconds"] = round(seconds, 2)
        info["build_images_per_second"] = len(originals.entries) / seconds if seconds > 0 else 0.0
    return info
