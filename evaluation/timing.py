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
return a :class:`Throughput`. :func:`time_evaluation` runs both on the same
files for ``eval_keras.py --time_loop`` (written as ``timing.json``);
:func:`compare_throughput` does it for a Keras model with one loop per predict
call (``benchmarks/``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.fsutil import atomic_write_text

LOOP_CALLS = ("predict", "predict_on_batch")
TIMING_JSON = "timing.json"


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
        raise ValueError("paths: no images to time, received an empty list")
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
    resize: str = "baseline",
) -> Throughput:
    """Time the evaluation path over ``paths``: tf.data decoding, ``resize``, ``predict_batch`` per batch."""
    from data.pipeline import make_predict_dataset

    if not paths:
        raise ValueError("paths: no images to time, received an empty list")
    # Warm-up with every batch shape the pass will use (a full batch and the remainder): tracing
    # the predict function once per shape is a fixed start-up cost, not throughput.
    for n in sorted({min(batch_size, len(paths)), len(paths) % batch_size} - {0}):
        predict_batch(np.zeros((n, img_size, img_size, channels), np.float32))
    times = []
    for _ in range(_check_repeats(repeats)):
        start = time.perf_counter()
        n = 0
        for batch in make_predict_dataset(
            list(paths), img_size=img_size, batch_size=batch_size, channels=channels, resize=resize
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


@dataclasses.dataclass(frozen=True)
class BatchedVersusLoop:
    """Batched evaluation and the per-image loop, timed on the same files."""

    batched: Throughput
    loop: Throughput

    @property
    def speedup(self) -> float:
        """How many times faster the batched path is."""
        return self.batched.images_per_second / self.loop.images_per_second

    def to_dict(self) -> dict[str, Any]:
        """What ``timing.json`` holds: ``batched``, ``per_image_loop`` and ``speedup``."""
        return {
            "batched": self.batched.to_dict(),
            "per_image_loop": self.loop.to_dict(),
            "speedup": self.speedup,
        }

    def summary(self) -> str:
        """One line for the evaluation's output."""
        b, loop = self.batched, self.loop
        return (
            f"Timing on {b.n_images} images: {b.method} {b.images_per_second:.1f} images/s, "
            f"{loop.method} {loop.images_per_second:.1f} images/s ({self.speedup:.1f}x)"
        )

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` as indented JSON, atomically; returns the path."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


def time_evaluation(
    predict_batch: Callable[[np.ndarray], np.ndarray],
    paths: Sequence[str],
    *,
    img_size: int,
    channels: int = 3,
    batch_size: int = 32,
    keras_model: Any = None,
    resize: str = "baseline",
) -> BatchedVersusLoop:
    """``eval_keras.py --time_loop``: the evaluation's batched path against SURFsara's per-image loop.

    The batched path resizes with ``resize``, as the evaluation did; the loop is
    SURFsara's (``cv2.resize``) whatever the method. The loop calls
    ``keras_model.predict`` once per image, as SURFsara did; a model without
    Keras (SavedModel, ONNX) is called through ``predict_batch`` with one-image
    batches instead.
    """
    batched = time_batched(
        predict_batch,
        paths,
        img_size=img_size,
        channels=channels,
        batch_size=batch_size,
        method=f"batched (tf.data, batch {batch_size})",
        resize=resize,
    )
    if keras_model is not None:
        one, method = keras_single_predict(keras_model), "per-image loop (cv2 + model.predict)"
    else:
        one, method = predict_batch, "per-image loop (cv2 + one-image batches)"
    loop = time_per_image_loop(one, paths, img_size=img_size, channels=channels, method=method)
    return BatchedVersusLoop(batched=batched, loop=loop)


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
