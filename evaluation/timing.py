"""Images per second: batched evaluation against SURFsara's per-image predict loop.

SURFsara's ``train_keras.py`` ended with, for every line of the test list::

    x = cv2.imread(os.path.join(data_path, 'test', line[1]))
    x = cv2.resize(x, (img_size, img_size)).astype('float32') / 255.0
    pred = model.predict(np.expand_dims(x, axis=0))

:func:`time_per_image_loop` times exactly that (``cv2`` reading, one
``model.predict`` call per image); :func:`time_batched` times this project's
path (tf.data decoding in parallel, ``predict_on_batch`` on batches), the one
``eval_keras.py`` uses. Both include reading and decoding the files; both are
first warmed up, untimed, with every input shape they will use (one image for
the loop; a full and the last, partial batch for the batched path), because
tracing the predict function is a one-off start-up cost, not throughput. Both
return a :class:`Throughput`. :func:`compare_throughput` runs both on the same
files; :func:`synthetic_benchmark` does it for registry models at several
sizes on generated images (for ``docs/evaluation.md`` and benchmark scripts).
"""
from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

LOOP_CALLS = ("predict", "predict_on_batch")


@dataclasses.dataclass(frozen=True)
class Throughput:
    """How long one method took for ``n_images`` images.

    ``seconds`` is the fastest of the timed passes (``all_seconds``): on a shared
    machine the fastest pass is the one least disturbed by other processes.
    """

    method: str
    n_images: int
    seconds: float
    all_seconds: tuple[float, ...] = ()

    @property
    def images_per_second(self) -> float:
        """Images per second (0 when nothing was timed)."""
        return self.n_images / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict including ``images_per_second``."""
        return {**dataclasses.asdict(self), "images_per_second": self.images_per_second}


def _check_repeats(repeats: int) -> int:
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, received {repeats}")
    return repeats


def baseline_read(path: str, *, img_size: int, channels: int = 3) -> np.ndarray:
    """SURFsara's per-image preprocessing: ``cv2.imread``, ``cv2.resize``, ``/ 255`` (float32)."""
    import cv2

    flag = cv2.IMREAD_COLOR if channels == 3 else cv2.IMREAD_GRAYSCALE
    x = cv2.imread(str(path), flag)
    if x is None:
        raise ValueError(f"{path}: cv2.imread could not read the image")
    x = cv2.resize(x, (img_size, img_size)).astype("float32") / 255.0
    return x if channels == 3 else x[..., None]


def keras_single_predict(model: Any, call: str = "predict") -> Callable[[np.ndarray], np.ndarray]:
    """One-image prediction the way the loop calls it: ``model.predict`` (the baseline) or
    ``predict_on_batch``.
    """
    if call == "predict":
        return lambda x: model.predict(x, verbose=0)
    if call == "predict_on_batch":
        return model.predict_on_batch
    raise ValueError(f"call must be one of {', '.join(LOOP_CALLS)}, received {call!r}")


def time_per_image_loop(
    predict_one: Callable[[np.ndarray], np.ndarray],
    paths: Sequence[str],
    *,
    img_size: int,
    channels: int = 3,
    method: str = "per-image loop",
    repeats: int = 1,
) -> Throughput:
    """Time the baseline loop over ``paths``: read, resize, scale and predict one image at a time."""
    if not paths:
        raise ValueError("no images to time")
    predict_one(np.expand_dims(baseline_read(paths[0], img_size=img_size, channels=channels), 0))  # warm-up
    times = []
    for _ in range(_check_repeats(repeats)):
        start = time.perf_counter()
        for path in paths:
            x = baseline_read(path, img_size=img_size, channels=channels)
            predict_one(np.expand_dims(x, axis=0))
        times.append(time.perf_counter() - start)
    return Throughput(method=method, n_images=len(paths), seconds=min(times), all_seconds=tuple(times))


def time_batched(
    predict_batch: Callable[[np.ndarray], np.ndarray],
    paths: Sequence[str],
    *,
    img_size: int,
    channels: int = 3,
    batch_size: int = 32,
    method: str = "batched (tf.data)",
    repeats: int = 1,
) -> Throughput:
    """Time the evaluation path over ``paths``: tf.data decoding and ``predict_batch`` per batch."""
    from data.pipeline import make_predict_dataset

    if not paths:
        raise ValueError("no images to time")
    # Warm-up with every batch shape the pass will use (a full batch and the remainder): tracing
    # the predict function once per shape is a fixed start-up cost, not throughput.
    for n in sorted({min(batch_size, len(paths)), len(paths) % batch_size} - {0}):
        predict_batch(np.zeros((n, img_size, img_size, channels), np.float32))
    times = []
    for _ in range(_check_repeats(repeats)):
        start = time.perf_counter()
        n = 0
        for batch in make_predict_dataset(
            list(paths), img_size=img_size, batch_size=batch_size, channels=channels
        ):
            n += len(predict_batch(batch.numpy()))
        times.append(time.perf_counter() - start)
    return Throughput(method=method, n_images=n, seconds=min(times), all_seconds=tuple(times))


def compare_throughput(
    model: Any,
    paths: Sequence[str],
    *,
    img_size: int,
    channels: int = 3,
    batch_size: int = 32,
    loop_calls: Sequence[str] = ("predict",),
    repeats: int = 1,
) -> dict[str, Any]:
    """Batched evaluation and the per-image loop(s) on the same files, for a Keras ``model``.

    Returns ``{"batched": Throughput, "loops": {call: Throughput}, "speedup": {call: ratio}}``.
    """
    batched = time_batched(
        model.predict_on_batch,
        paths,
        img_size=img_size,
        channels=channels,
        batch_size=batch_size,
        method=f"batched tf.data, predict_on_batch, batch {batch_size}",
        repeats=repeats,
    )
    loops = {
        call: time_per_image_loop(
            keras_single_predict(model, call),
            paths,
            img_size=img_size,
            channels=channels,
            method=f"per-image loop, cv2 + model.{call}",
            repeats=repeats,
        )
        for call in loop_calls
    }
    speedup = {call: batched.images_per_second / t.images_per_second for call, t in loops.items()}
    return {"batched": batched, "loops": loops, "speedup": speedup}


def write_synthetic_images(
    folder: str | os.PathLike[str], n: int, *, size: int = 512, seed: int = 0
) -> list[str]:
    """``n`` grayscale PNGs of ``size`` x ``size`` px with X-ray-like noise; returns their paths."""
    import cv2

    from common.fsutil import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        image = np.clip(rng.normal(110, 40, (size, size)), 0, 255).astype(np.uint8)
        target = folder / f"bench{i:04d}.png"
        with atomic_path(target) as tmp:
            cv2.imwrite(str(tmp), image)
        paths.append(str(target))
    return paths


def machine_description() -> str:
    """CPU model, core count, Python and TensorFlow versions (for benchmark tables)."""
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpus = len(tf.config.list_physical_devices("GPU"))
    return (
        f"{cpu}, {cores} cores available, {gpus} GPU(s), Python {platform.python_version()}, "
        f"TensorFlow {tf.__version__}"
    )


def synthetic_benchmark(
    folder: str | os.PathLike[str],
    *,
    models: Sequence[str] = ("smallcnn", "resnet50v2"),
    img_sizes: Sequence[int] = (64, 224),
    n_images: int = 100,
    image_px: int = 512,
    batch_size: int = 32,
    head: str = "flatten",
    loop_calls: Sequence[str] = LOOP_CALLS,
    repeats: int = 3,
) -> list[dict[str, Any]]:
    """Images/s of batched evaluation and the per-image loop(s) for registry models (random weights).

    Writes ``n_images`` synthetic ``image_px`` px PNGs to ``folder`` once; every
    model and size reads the same files. Each method is timed ``repeats`` times
    and the fastest pass is reported. One row per (model, size).
    """
    import keras

    from models import build_model

    paths = write_synthetic_images(folder, n_images, size=image_px)
    rows = []
    for name in models:
        for size in img_sizes:
            keras.utils.set_random_seed(0)
            model = build_model(name, input_shape=(size, size, 3), weights=None, head=head)
            result = compare_throughput(
                model, paths, img_size=size, batch_size=batch_size, loop_calls=loop_calls, repeats=repeats
            )
            rows.append(
                {
                    "model": name,
                    "img_size": size,
                    "head": head,
                    "n_images": n_images,
                    "image_px": image_px,
                    "batch_size": batch_size,
                    "repeats": repeats,
                    "batched": result["batched"].to_dict(),
                    "loops": {call: t.to_dict() for call, t in result["loops"].items()},
                    "speedup": result["speedup"],
                }
            )
            del model
            keras.backend.clear_session()
    return rows


def format_benchmark(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`synthetic_benchmark` as a Markdown table."""
    calls = list(rows[0]["loops"]) if rows else []
    header = ["model", "input", "batched img/s"]
    for call in calls:
        header += [f"loop `{call}` img/s", f"speed-up vs `{call}`"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"`{row['model']}`", f"{row['img_size']} px", f"{row['batched']['images_per_second']:.1f}"]
        for call in calls:
            cells += [f"{row['loops'][call]['images_per_second']:.1f}", f"{row['speedup'][call]:.1f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
