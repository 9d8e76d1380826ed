"""The measurements: each one times one thing in images/s and reports the memory it took.

=============  ===========================================================================
kind           what is timed
=============  ===========================================================================
``pipeline``   ``data.pipeline.make_train_dataset`` (balanced batches, SURFsara's
               augmentation, class weights) reading the original files or the cache;
               batches pulled from the iterator, nothing else
``baseline``   :class:`benchmarks.baseline_loader.BalancedSequence`: ``seq[i]`` in one thread
``train_step`` ``model.train_on_batch`` on a fixed batch of random tensors already in
               memory (on the accelerator when there is one): the model's own speed
``eval``       ``evaluation.timing.compare_throughput``: batched tf.data +
               ``predict_on_batch`` against cv2 + ``model.predict`` per image
``fed``        ``model.fit`` fed by the cache pipeline, then by one batch repeated from memory;
               the shortfall of the first is the share of the step spent waiting on input
``torch``      one network's training step in Keras (``train_on_batch``) and in PyTorch
               (eager ``forward``/``backward``/``step``, models/torch_reference.py) on the
               same device, cores, batch and image size, timed in alternating windows
=============  ===========================================================================

Streams are timed in windows after a warm-up (tracing, XLA compilation and
tf.data start-up are one-off costs, not throughput); the best window is
reported, as in ``evaluation.timing``, because on a shared machine the fastest
window is the one least disturbed by other processes. All windows are kept.

Memory: the resident set's high-water mark (``VmHWM``) of the process. In a
fresh worker process (``python -m benchmarks.measure SPEC OUT``, what
``run.py`` does by default) it is the measurement's own peak, TensorFlow
included. In one shared process the mark is reset before each measurement
(``/proc/self/clear_refs``), so the peak still belongs to that measurement but
includes what earlier ones left allocated. ``ru_maxrss`` is not used: a child
process inherits its parent's value through ``fork``. The accelerator's peak
memory is added when TensorFlow sees a GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from common.fsutil import atomic_write_text
from data.labels import CLASS_TO_INDEX, NUM_CLASSES
from data.lists import read_list

KINDS = ("pipeline", "baseline", "train_step", "eval", "fed", "torch")
# Registry models with a PyTorch twin in models.torch_reference.BUILDERS (named here without importing torch).
TORCH_MODELS = ("resnet18", "resnet50v2")
# SURFsara's class_weight (train_keras.py --class_weights default): COVID-19 counts 25 times.
CLASS_WEIGHTS = {CLASS_TO_INDEX["COVID-19"]: 25.0}
LEARNING_RATE = 2e-5


# -- memory -----------------------------------------------------------------------------------

def _status_mib(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def rss_mib() -> float | None:
    """Current resident set size of this process in MiB (None where /proc is missing)."""
    return _status_mib("VmRSS")


def peak_rss_mib() -> float:
    """High-water mark of this process's resident set in MiB.

    ``VmHWM`` where available; else ``ru_maxrss``, which after a ``fork`` may
    still carry the parent's peak.
    """
    peak = _status_mib("VmHWM")
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return peak


def reset_peak_rss() -> bool:
    """Reset the resident-set high-water mark to the current size (Linux >= 4.0); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _gpu_names() -> list[str]:
    if "tensorflow" not in sys.modules:
        return []
    import tensorflow as tf

    return [d.name for d in tf.config.list_logical_devices("GPU")]


# -- timing -----------------------------------------------------------------------------------

def time_stream(next_batch: Callable[[], int], *, warmup: int, min_batches: int, min_seconds: float,
                windows: int) -> dict[str, Any]:
    """Time ``next_batch()`` (returns the number of images it produced) in ``windows`` windows.

    ``warmup`` calls are made first and not timed. A window lasts at least
    ``min_batches`` calls and ``min_seconds`` seconds. Returns the best
    window's ``images_per_second``, the median and every window.
    """
    if windows < 1 or min_batches < 1 or warmup < 0:
        raise ValueError(f"timing needs windows >= 1, min_batches >= 1 and warmup >= 0; received "
                         f"{windows}, {min_batches} and {warmup}")
    for _ in range(warmup):
        next_batch()
    rows = []
    for _ in range(windows):
        images = batches = 0
        start = time.perf_counter()
        while True:
            images += next_batch()
            batches += 1
            elapsed = time.perf_counter() - start
            if batches >= min_batches and elapsed >= min_seconds:
                break
        rows.append({"images": images, "batches": batches, "seconds": elapsed,
                     "images_per_second": images / elapsed})
    return summarize_windows(rows)


def summarize_windows(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Best and median images/s of timed windows (``images``, ``seconds`` each)."""
    rates = sorted(r["images"] / r["seconds"] for r in rows)
    middle = len(rates) // 2
    median = rates[middle] if len(rates) % 2 else (rates[middle - 1] + rates[middle]) / 2
    return {"images_per_second": rates[-1], "median_images_per_second": median, "windows": list(rows)}


def _windows_from_clock(times: Sequence[float], *, first: int, steps: int, windows: int,
                        batch_size: int) -> dict[str, Any]:
    rows = []
    for w in range(windows):
        a, b = first + w * steps, first + (w + 1) * steps
        seconds = times[b - 1] - times[a - 1]
        rows.append({"images": steps * batch_size, "batches": steps, "seconds": seconds,
                     "images_per_second": steps * batch_size / seconds})
    return summarize_windows(rows)


# -- the measurements -------------------------------------------------------------------------

def measure_pipeline(*, source: str, list_file: str, image_dir: str, cache_dir: str | None, size: int,
                     batch_size: int, seed: int, timing: dict[str, Any]) -> dict[str, Any]:
    """Images/s of the training pipeline from the original files (``source="files"``) or the cache."""
    from data.cache import open_cache
    from data.pipeline import CachedImages, FileImages, make_train_dataset

    entries = read_list(list_file).entries
    if source == "files":
        images: Any = FileImages(image_dir)
    elif source == "cache":
        if not cache_dir:
            raise ValueError("the cache pipeline measurement needs a cache folder, received none")
        images = CachedImages(open_cache(cache_dir, "train", entries=entries))
    else:
        raise ValueError(f"pipeline source must be 'files' or 'cache', received {source!r}")
    data = make_train_dataset(entries, images, img_size=size, batch_size=batch_size,
                              class_weights=CLASS_WEIGHTS, seed=seed)
    iterator = iter(data.dataset)
    return time_stream(lambda: int(next(iterator)[0].shape[0]), **timing)


def measure_baseline(*, list_file: str, image_dir: str, size: int, batch_size: int, seed: int,
                     timing: dict[str, Any]) -> dict[str, Any]:
    """Images/s of the SURFsara-style Sequence, one batch after another in this thread."""
    from benchmarks.baseline_loader import BalancedSequence

    entries = read_list(list_file).entries
    seq = BalancedSequence(entries, image_dir, img_size=size, batch_size=batch_size,
                           class_weights=[CLASS_WEIGHTS.get(i, 1.0) for i in range(NUM_CLASSES)], seed=seed)
    position = [0]

    def next_batch() -> int:
        if position[0] == len(seq):
            seq.on_epoch_end()
            position[0] = 0
        x, _, _ = seq[position[0]]
        position[0] += 1
        return len(x)

    return time_stream(next_batch, **timing)


def _compiled_model(model: str, size: int, policy: str, xla: bool, head: str = "flatten") -> Any:
    import keras

    from models import build_model

    net = build_model(model, input_shape=(size, size, 3), weights=None, head=head, dtype_policy=policy)
    # As training.trainer compiles it (Adam with amsgrad, categorical cross-entropy); the per-class
    # metrics are left out: a few argmax ops per step, noise next to the network.
    net.compile(optimizer=keras.optimizers.Adam(learning_rate=LEARNING_RATE, amsgrad=True),
                loss=keras.losses.CategoricalCrossentropy(), jit_compile=xla)
    return net


def _keras_train_step(net: Any, *, size: int, batch_size: int, seed: int) -> Callable[[], int]:
    """One ``train_on_batch`` on a fixed random batch; returns the batch size once the step has finished."""
    import tensorflow as tf

    x = tf.random.uniform([batch_size, size, size, 3], seed=seed)
    labels = tf.random.uniform([batch_size], 0, NUM_CLASSES, dtype=tf.int32, seed=seed)
    y = tf.one_hot(labels, NUM_CLASSES)
    w = tf.ones([batch_size])

    def step() -> int:
        net.train_on_batch(x, y, sample_weight=w)  # returns numpy logs: the step has finished
        return batch_size

    return step


def measure_train_step(*, model: str, size: int, batch_size: int, policy: str, xla: bool, warmup: int,
                       steps: int, windows: int, seed: int) -> dict[str, Any]:
    """Images/s of ``train_on_batch`` on random tensors (after ``warmup`` steps, which include tracing)."""
    net = _compiled_model(model, size, policy, xla)
    step = _keras_train_step(net, size=size, batch_size=batch_size, seed=seed)
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    result = time_stream(step, warmup=max(0, warmup - 1), min_batches=steps, min_seconds=0.0, windows=windows)
    result["first_step_seconds"] = first
    result["parameters"] = int(net.count_params())
    return result


def measure_eval(*, model: str, size: int, batch_size: int, list_file: str, image_dir: str, n_images: int,
                 repeats: int) -> dict[str, Any]:
    """Batched evaluation against SURFsara's per-image predict loop on the same original files."""
    from evaluation.timing import compare_throughput
    from models import build_model

    entries = read_list(list_file).entries[:n_images]
    paths = [str(Path(image_dir) / e.filename) for e in entries]
    # Inference runs in float32 (training.export saves a float32 copy for it).
    net = build_model(model, input_shape=(size, size, 3), weights=None, dtype_policy="float32")
    result = compare_throughput(net, paths, img_size=size, batch_size=batch_size, loop_calls=("predict",),
                                repeats=repeats)
    batched, loop = result["batched"].to_dict(), result["loops"]["predict"].to_dict()
    return {"images_per_second": batched["images_per_second"], "batched": batched, "loop": loop,
            "speedup": result["speedup"]["predict"]}


def _step_clock(*, profile_from: int | None, profile_dir: str | None) -> Any:
    """A Keras callback that records the wall-clock time at the end of every step (Keras turns the logs
    into numbers: a sync point) and, with ``profile_from``, traces the steps from that one on."""
    import keras
    import tensorflow as tf

    class StepClock(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []
            self.profiling = False

        def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
            if profile_from is not None and batch == profile_from:
                tf.profiler.experimental.start(str(profile_dir))
                self.profiling = True

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            self.times.append(time.perf_counter())

        def on_train_end(self, logs: dict | None = None) -> None:
            if self.profiling:
                tf.profiler.experimental.stop()
                self.profiling = False

    return StepClock()


def _timed_fit(net: Any, dataset: Any, *, warmup: int, steps: int, windows: int, batch_size: int,
               profile_dir: str | None = None, profile_steps: int = 0) -> dict[str, Any]:
    """One epoch of ``net.fit`` on ``dataset``: ``warmup`` untimed steps, then ``windows`` timed windows
    of ``steps`` steps, then ``profile_steps`` traced ones (with ``profile_dir``)."""
    timed = warmup + steps * windows
    profile = bool(profile_dir) and profile_steps > 0
    clock = _step_clock(profile_from=timed if profile else None, profile_dir=profile_dir)
    net.fit(dataset, steps_per_epoch=timed + (profile_steps if profile else 0), epochs=1, verbose=0,
            shuffle=False, callbacks=[clock])
    return _windows_from_clock(clock.times, first=warmup, steps=steps, windows=windows, batch_size=batch_size)


def measure_fed(*, model: str, size: int, batch_size: int, policy: str, xla: bool, list_file: str,
                cache_dir: str, warmup: int, steps: int, windows: int, seed: int,
                profile_dir: str | None = None, profile_steps: int = 0) -> dict[str, Any]:
    """``model.fit`` fed by the cache pipeline against the same fit fed one batch from memory.

    Both runs use the same compiled model and batch size, so the difference is
    the time a step waits for the input pipeline (on a CPU-only machine, also
    the cores the pipeline takes from the model). With ``profile_dir``,
    ``profile_steps`` more steps of the cache-fed run are traced with
    ``tf.profiler`` after the timed windows (the profiler slows the steps it traces).
    """
    import tensorflow as tf

    from data.cache import open_cache
    from data.pipeline import CachedImages, make_train_dataset

    if warmup < 1:
        raise ValueError(f"the fed measurement needs at least one warm-up step, received {warmup}")
    entries = read_list(list_file).entries
    net = _compiled_model(model, size, policy, xla)
    pipeline = make_train_dataset(entries, CachedImages(open_cache(cache_dir, "train", entries=entries)),
                                  img_size=size, batch_size=batch_size, class_weights=CLASS_WEIGHTS,
                                  seed=seed).dataset
    memory = tf.data.Dataset.from_tensors(next(iter(pipeline))).repeat()
    timing = {"warmup": warmup, "steps": steps, "windows": windows, "batch_size": batch_size}
    runs = {
        "memory": _timed_fit(net, memory, **timing),
        "cache": _timed_fit(net, pipeline, **timing, profile_dir=profile_dir, profile_steps=profile_steps),
    }
    cache_rate = runs["cache"]["images_per_second"]
    memory_rate = runs["memory"]["images_per_second"]
    # Noise can make the cache-fed run the faster one; the raw value keeps that visible.
    raw = 1.0 - cache_rate / memory_rate
    result = {"images_per_second": cache_rate, "cache": runs["cache"], "memory": runs["memory"],
              "input_bound_fraction": max(0.0, raw), "input_bound_fraction_raw": raw}
    if profile_dir and profile_steps > 0:
        result["profile_dir"] = str(profile_dir)
        result["profile_steps"] = profile_steps
    return result


def _torch_train_step(model: str, *, size: int, batch_size: int, seed: int) -> tuple[Callable[[], int], Any]:
    """One PyTorch training step of ``model``'s torch twin, set up as :func:`_compiled_model` sets up
    Keras's (Adam with amsgrad and Keras's epsilon, cross-entropy); returns the step and the network."""
    import torch

    from models.torch_reference import BUILDERS

    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = BUILDERS[model](num_classes=NUM_CLASSES).to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE, amsgrad=True, eps=1e-7)
    loss_fn = torch.nn.CrossEntropyLoss()  # on logits: Keras's softmax + cross-entropy in one op
    x = torch.rand(batch_size, 3, size, size, device=device)
    y = torch.randint(0, NUM_CLASSES, (batch_size,), device=device)

    def step() -> int:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        optimizer.step()
        loss.item()  # waits for the step to finish, as train_on_batch's numpy logs do
        return batch_size

    return step, net


@contextlib.contextmanager
def _torch_settings(threads: int) -> Iterator[None]:
    """PyTorch on ``threads`` CPU threads (TensorFlow's default: every available core) and with cuDNN
    autotuning (TensorFlow autotunes its convolutions); the previous settings are restored."""
    import torch

    previous = torch.get_num_threads(), torch.backends.cudnn.benchmark
    torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        torch.backends.cudnn.benchmark = previous[1]


def _available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def measure_torch(*, model: str, size: int, batch_size: int, warmup: int, steps: int, windows: int,
                  seed: int, threads: int | None = None) -> dict[str, Any]:
    """The same network's training step in Keras and in PyTorch: images/s of each and their ratio.

    Keras: the registry's ``model`` with ``head="linear"``, float32, XLA off, ``train_on_batch``
    (a traced ``tf.function``). PyTorch: its twin from models/torch_reference.py, eager. Same
    device, batch, image size and number of CPU threads: every available core (each framework's
    default), or ``threads`` (TensorFlow's thread pools are then set by :func:`run_unit` before
    TensorFlow starts). The frameworks take turns, one timed window each, so a change in the
    machine's load hits both; the best window of each is reported and ``keras_over_pytorch`` is
    the ratio of those.
    """
    if model not in TORCH_MODELS:
        raise ValueError(
            f"the PyTorch comparison covers models {', '.join(TORCH_MODELS)}; received {model!r}"
        )
    if warmup < 1:
        raise ValueError(f"the PyTorch comparison needs at least one warm-up step, received {warmup}")
    import tensorflow as tf
    import torch

    threads = threads or _available_cores()
    with _torch_settings(threads):
        keras_net = _compiled_model(model, size, "float32", False, head="linear")
        torch_step, torch_net = _torch_train_step(model, size=size, batch_size=batch_size, seed=seed)
        train_steps = {"keras": _keras_train_step(keras_net, size=size, batch_size=batch_size, seed=seed),
                       "pytorch": torch_step}
        rows: dict[str, list[dict[str, Any]]] = {name: [] for name in train_steps}
        for step in train_steps.values():
            for _ in range(warmup):
                step()
        for _ in range(windows):
            for name, step in train_steps.items():
                window = time_stream(step, warmup=0, min_batches=steps, min_seconds=0.0, windows=1)
                rows[name].extend(window["windows"])
    results = {name: summarize_windows(windows_) for name, windows_ in rows.items()}
    ratio = results["keras"]["images_per_second"] / results["pytorch"]["images_per_second"]
    trainable = sum(int(math.prod(w.shape)) for w in keras_net.trainable_weights)
    return {
        "images_per_second": results["keras"]["images_per_second"],
        **results,
        "keras_over_pytorch": ratio,
        "parameters": {"keras": trainable, "pytorch": sum(p.numel() for p in torch_net.parameters())},
        "threads": threads,
        # 0: TensorFlow's default, a pool as large as the available cores.
        "tensorflow_threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                               "inter_op": tf.config.threading.get_inter_op_parallelism_threads()},
        "device": str(next(torch_net.parameters()).device),
        "torch": torch.__version__,
    }


MEASURES: dict[str, Callable[..., dict[str, Any]]] = {
    "pipeline": measure_pipeline,
    "baseline": measure_baseline,
    "train_step": measure_train_step,
    "eval": measure_eval,
    "fed": measure_fed,
    "torch": measure_torch,
}


def _grow_gpu_memory(tf: Any) -> None:
    """Let TensorFlow take GPU memory as it needs it instead of all at once, so PyTorch has room beside it.

    Only possible before TensorFlow starts using the GPU (a fresh worker process); otherwise the
    comparison runs as it can and may fail with an out-of-memory error, which is reported.
    """
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # the runtime already holds the GPU
            return


def _limit_tensorflow_threads(tf: Any, threads: int) -> None:
    """``threads`` intra-op threads and one inter-op thread: one op at a time on ``threads`` cores, as
    PyTorch runs its eager ops. TensorFlow fixes its pools when it starts, so only a fresh process can."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        raise ValueError(
            f"--torch-threads {threads}: TensorFlow's thread pools are fixed once it has started, so the "
            f"measurement needs a fresh process (--isolate process); received a process where it had started"
        ) from None


def run_unit(kind: str, params: dict[str, Any], *, seed: int = 0) -> dict[str, Any]:
    """Run one measurement with its memory bookkeeping; returns its result dict.

    Seeds Python, NumPy and (for the TensorFlow measurements, which import it
    first so that ``rss_before_mib`` includes it) TensorFlow and Keras.
    """
    if kind not in MEASURES:
        raise ValueError(f"measurement kind must be one of {', '.join(KINDS)}, received {kind!r}")
    if kind != "baseline":
        import keras
        import tensorflow as tf

        if kind == "torch":
            _grow_gpu_memory(tf)
            if params.get("threads"):
                _limit_tensorflow_threads(tf, params["threads"])
        keras.utils.set_random_seed(seed)
        for device in tf.config.list_logical_devices("GPU"):
            tf.config.experimental.reset_memory_stats(device.name)
    reset = reset_peak_rss()
    before = rss_mib()
    load_before = os.getloadavg()
    start = time.perf_counter()
    result = MEASURES[kind](**params)
    result["wall_seconds"] = time.perf_counter() - start
    # Other processes on the cores change every figure (row 7's PyTorch threads most): kept per measurement.
    result["load_average"] = {"before": load_before, "after": os.getloadavg()}
    result["rss_before_mib"] = before
    result["peak_rss_mib"] = peak_rss_mib()
    result["peak_reset"] = reset
    gpus = _gpu_names()
    if gpus:
        import tensorflow as tf

        result["gpu_peak_mib"] = {d: tf.config.experimental.get_memory_info(d)["peak"] / 2**20 for d in gpus}
    return result


# -- worker entry point -----------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Arguments of the worker: a JSON spec ``{"kind", "params", "seed"}`` in, a JSON result out."""
    parser = argparse.ArgumentParser(description="Run one benchmark measurement in this process "
                                                 "(started by benchmarks/run.py).")
    parser.add_argument("spec", help="JSON file with kind, params and seed")
    parser.add_argument("out", help="JSON file to write the result (or the error) to")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the measurement of ``spec`` and write its result; any failure is written as ``error``."""
    args = parse_args(argv)
    spec = json.loads(Path(args.spec).read_text(encoding="utf-8"))
    try:
        result = run_unit(spec["kind"], spec["params"], seed=spec.get("seed", 0))
        code = 0
    except Exception as exc:  # noqa: BLE001  the parent reports it in the table and the JSON
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
        code = 1
    atomic_write_text(args.out, json.dumps(result, indent=1, default=_json_default))
    return code


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(
        f"result values must be numbers, strings, lists or dicts; received {type(value).__name__}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
