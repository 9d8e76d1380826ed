"""Measure the input pipeline, the train step and evaluation; print a Markdown table and write JSON.

Measurements (images/s and peak memory of each; see benchmarks/README.md):

  (1) files     tf.data training pipeline (balanced, augmented) decoding large original PNG/JPEG files
  (2) cache     the same pipeline reading the resized-image cache (data.cache)
  (3) baseline  a loader written the way SURFsara read data: cv2 + Keras 2 affine transform in a
                Python Sequence, one process
  (4) step      model.train_on_batch on in-memory tensors, mixed precision and XLA on/off
  (5) eval      batched evaluation against SURFsara's per-image model.predict loop
  (6) fed       model.fit fed from the cache pipeline against fed from memory: the share of the step
                spent waiting on input
  (7) torch     the same network's training step in Keras and in PyTorch (models/torch_reference.py)
                on the same device, cores, batch and image size; Keras images/s / PyTorch images/s.
                Skipped, with a message, when torch is not installed (requirements-torch.txt)

Presets: the default runs (1)-(6) in about 6 minutes on 2 CPU cores (512 px pipelines, model at
64 px) and (7) in 6-11 more (ResNet-18 and ResNet50V2 at 224 px, batch 16; --only leaves it out);
--quick runs in under a minute (CI); --full is the GPU-node run (512 px, batch 64; (7) at 224 px,
batch 64). Any option given explicitly overrides the preset.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import importlib.util
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file (python benchmarks/run.py): make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import report  # noqa: E402
from benchmarks.measure import TORCH_MODELS, run_unit  # noqa: E402
from benchmarks.workload import FORMATS, ensure_cache, write_originals  # noqa: E402
from common.cli import (  # noqa: E402
    EXIT_FAILURE,
    EXIT_OK,
    DefaultsHelpFormatter,
    handle_errors,
    non_negative_float,
    positive_int,
    setup_logging,
)
from common.fsutil import atomic_write_text  # noqa: E402

log = logging.getLogger("benchmarks")

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
MEASUREMENTS = ("files", "cache", "baseline", "step", "eval", "fed", "torch")
# The measurements that read the synthetic originals (or their caches); the train steps use random tensors.
READ_ORIGINALS = frozenset({"files", "cache", "baseline", "eval", "fed"})
MIXED_POLICIES = ("auto", "mixed_float16", "mixed_bfloat16")

PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"originals": 12, "original_px": [128], "size": 64, "batch_size": 4, "model": "smallcnn",
              "model_size": 32, "warmup_batches": 1, "min_batches": 2, "min_seconds": 0.2, "windows": 2,
              "train_warmup": 2, "train_steps": 2, "eval_images": 8, "eval_repeats": 1, "isolate": "none",
              "torch_models": ["resnet18"], "torch_size": 32, "torch_batch_size": 4},
    "cpu": {"originals": 48, "original_px": [1024, 2048], "size": 512, "batch_size": 8, "model": "resnet50v2",
            "model_size": 64, "warmup_batches": 3, "min_batches": 5, "min_seconds": 3.0, "windows": 3,
            "train_warmup": 3, "train_steps": 5, "eval_images": 24, "eval_repeats": 2, "isolate": "process",
            "torch_models": ["resnet18", "resnet50v2"], "torch_size": 224, "torch_batch_size": 16},
    "full": {"originals": 256, "original_px": [1024, 2048], "size": 512, "batch_size": 64,
             "model": "resnet50v2", "model_size": 512, "warmup_batches": 2, "min_batches": 3,
             "min_seconds": 10.0, "windows": 3, "train_warmup": 10, "train_steps": 20, "eval_images": 128,
             "eval_repeats": 2, "isolate": "process", "torch_models": ["resnet18", "resnet50v2"],
             "torch_size": 224, "torch_batch_size": 64},
}


def _preset_help(key: str) -> str:
    values = ", ".join(f"{name} {' '.join(map(str, p[key])) if isinstance(p[key], list) else p[key]}"
                       for name, p in PRESETS.items())
    return f" (preset: {values})"


class _PresetHelpFormatter(DefaultsHelpFormatter):
    """Shows defaults, except the ``None`` that stands for "taken from the preset"."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.nargs == 0:  # flags: their default says nothing
            return action.help
        return super()._get_help_string(action)


def _add_preset_options(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_argument_group("preset")
    which = mode.add_mutually_exclusive_group()
    which.add_argument("--quick", dest="preset", action="store_const", const="quick",
                       help="tiny sizes and counts (CI); measurements share one process")
    which.add_argument("--full", dest="preset", action="store_const", const="full",
                       help="GPU-node run: 512 px pipeline and model, batch 64")
    parser.set_defaults(preset="cpu")


def _add_workload_options(parser: argparse.ArgumentParser) -> None:
    work = parser.add_argument_group("workload (synthetic chest radiographs the size of real originals)")
    work.add_argument(
        "--originals", type=positive_int, help="number of original images" + _preset_help("originals")
    )
    work.add_argument(
        "--original-px",
        type=positive_int,
        nargs="+",
        help="side(s) of the square originals in px, cycled" + _preset_help("original_px"),
    )
    work.add_argument(
        "--formats", nargs="+", choices=FORMATS, default=list(FORMATS), help="file formats, cycled"
    )
    work.add_argument(
        "--work-dir",
        default=None,
        help="folder for originals and caches, kept and reused by later runs "
        "(default: a temporary folder, removed at the end)",
    )
    work.add_argument(
        "--seed", type=int, default=0, help="seed of images, shuffling, augmentation and weights"
    )


def _add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    pipe = parser.add_argument_group("pipelines (1)-(3)")
    pipe.add_argument(
        "--size", type=positive_int, help="image size of the pipelines and the cache" + _preset_help("size")
    )
    pipe.add_argument(
        "--batch-size", type=positive_int, help="batch size of every measurement" + _preset_help("batch_size")
    )
    pipe.add_argument(
        "--warmup-batches", type=int, help="untimed batches first" + _preset_help("warmup_batches")
    )
    pipe.add_argument(
        "--min-batches",
        type=positive_int,
        help="batches per timed window, at least" + _preset_help("min_batches"),
    )
    pipe.add_argument(
        "--min-seconds",
        type=non_negative_float,
        help="seconds per timed window, at least" + _preset_help("min_seconds"),
    )
    pipe.add_argument(
        "--windows",
        type=positive_int,
        help="timed windows per measurement (the best is reported)" + _preset_help("windows"),
    )


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model (4)-(6)")
    model.add_argument("--model", help="registry model, random weights" + _preset_help("model"))
    model.add_argument(
        "--model-size", type=positive_int, help="model input size" + _preset_help("model_size")
    )
    model.add_argument(
        "--mixed-precision",
        choices=["both", "on", "off"],
        default="both",
        help="(4): mixed precision settings to measure",
    )
    model.add_argument(
        "--xla", choices=["both", "on", "off"], default="both", help="(4): XLA settings to measure"
    )
    model.add_argument(
        "--mixed-policy",
        choices=MIXED_POLICIES,
        default="auto",
        help="the mixed policy; auto: mixed_float16 with a GPU, mixed_bfloat16 on a CPU "
        "(float16 has no fast CPU kernels)",
    )
    model.add_argument(
        "--train-warmup",
        type=positive_int,
        help="untimed steps first (tracing, XLA compilation)" + _preset_help("train_warmup"),
    )
    model.add_argument(
        "--train-steps", type=positive_int, help="steps per timed window" + _preset_help("train_steps")
    )
    model.add_argument(
        "--eval-images", type=positive_int, help="(5): originals evaluated" + _preset_help("eval_images")
    )
    model.add_argument(
        "--eval-repeats",
        type=positive_int,
        help="(5): timed passes (the fastest is reported)" + _preset_help("eval_repeats"),
    )
    model.add_argument(
        "--fed-mixed-precision",
        choices=["auto", "on", "off"],
        default="auto",
        help="(6): mixed precision; auto: on with a GPU",
    )
    model.add_argument(
        "--fed-xla", choices=["auto", "on", "off"], default="auto", help="(6): XLA; auto: on with a GPU"
    )
    model.add_argument(
        "--profile",
        default=None,
        metavar="DIR",
        help="(6): trace --profile-steps extra cache-fed steps with tf.profiler into DIR "
        "(open with TensorBoard's Profile tab)",
    )
    model.add_argument("--profile-steps", type=positive_int, default=5, help="steps traced by --profile")


def _add_torch_options(parser: argparse.ArgumentParser) -> None:
    torch = parser.add_argument_group(
        "Keras against PyTorch (7): the same network's train step in both, when torch is installed"
    )
    torch.add_argument(
        "--torch-models",
        nargs="+",
        choices=TORCH_MODELS,
        help="registry models with a PyTorch twin (models/torch_reference.py)" + _preset_help("torch_models"),
    )
    torch.add_argument(
        "--torch-size", type=positive_int, help="image size of both" + _preset_help("torch_size")
    )
    torch.add_argument(
        "--torch-batch-size", type=positive_int, help="batch size of both" + _preset_help("torch_batch_size")
    )
    torch.add_argument(
        "--torch-threads",
        type=positive_int,
        default=None,
        help="CPU threads of both (TensorFlow: intra-op, with one inter-op thread; needs --isolate process); "
        "default: every available core, each framework's own thread pools. One thread each compares the "
        "frameworks per core, which busy cores disturb least",
    )


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    run = parser.add_argument_group("run")
    run.add_argument(
        "--only", nargs="+", choices=MEASUREMENTS, default=list(MEASUREMENTS), help="measurements to run"
    )
    run.add_argument(
        "--isolate",
        choices=["process", "none"],
        help="process: each measurement in a fresh Python process (clean peak memory); none: all "
        "in this process, peak reset before each" + _preset_help("isolate"),
    )
    run.add_argument(
        "--out", default=None, help="JSON result file (default: benchmarks/results/<UTC time>.json)"
    )
    run.add_argument("-v", "--verbose", action="count", default=0, help="more logging")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments; options left at ``None`` are filled from the preset in :func:`resolve`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_PresetHelpFormatter)
    for add_options in (_add_preset_options, _add_workload_options, _add_pipeline_options,
                        _add_model_options, _add_torch_options, _add_run_options):
        add_options(parser)
    return parser.parse_args(argv)


def resolve(args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings: the preset, overridden by every option given; validated."""
    from models import get_model_info

    settings = dict(PRESETS[args.preset])
    for key in settings:
        value = getattr(args, key)
        if value is not None:
            settings[key] = value
    settings.update(
        preset=args.preset,
        formats=list(args.formats),
        seed=args.seed,
        mixed_precision=args.mixed_precision,
        xla=args.xla,
        mixed_policy=args.mixed_policy,
        fed_mixed_precision=args.fed_mixed_precision,
        fed_xla=args.fed_xla,
        profile=str(Path(args.profile).resolve()) if args.profile else None,
        profile_steps=args.profile_steps,
        torch_threads=args.torch_threads,
        only=[m for m in MEASUREMENTS if m in args.only],
    )
    if settings["warmup_batches"] < 0:
        raise ValueError(f"--warmup-batches must be >= 0, received {settings['warmup_batches']}")
    if settings["size"] < 8:
        raise ValueError(f"--size must be >= 8 px, received {settings['size']}")
    info = get_model_info(settings["model"])  # raises naming the valid models
    settings["model"] = info.name
    if settings["model_size"] < info.min_size:
        raise ValueError(
            f"--model-size must be >= {info.min_size} px for model {info.name!r}, "
            f"received {settings['model_size']}"
        )
    if settings["batch_size"] < 2 and {"files", "cache", "baseline", "fed"} & set(settings["only"]):
        raise ValueError(
            f"--batch-size must be >= 2 (a balanced batch holds one COVID-19 image and others), "
            f"received {settings['batch_size']}"
        )
    if settings["torch_threads"] and settings["isolate"] != "process" and "torch" in settings["only"]:
        raise ValueError(
            "--torch-threads needs --isolate process (TensorFlow fixes its thread pools when it starts); "
            f"received --isolate {settings['isolate']}"
        )
    torch_min = max(get_model_info(name).min_size for name in settings["torch_models"])
    if "torch" in settings["only"] and settings["torch_size"] < torch_min:
        raise ValueError(
            f"--torch-size must be >= {torch_min} px for models {', '.join(settings['torch_models'])}, "
            f"received {settings['torch_size']}"
        )
    return settings


@dataclasses.dataclass(frozen=True)
class _PlanContext:
    """What the measurement units share besides the settings."""

    timing: dict[str, Any]  # windows of the pipeline streams (1)-(3)
    files: dict[str, str]  # list_file and image_dir of the originals
    caches: dict[int, str]  # cache folder by image size
    mixed_policy: str  # --mixed-policy with "auto" resolved
    gpu: bool


def _pipeline_units(s: dict[str, Any], ctx: _PlanContext, source: str) -> list[dict[str, Any]]:
    size, bs = s["size"], s["batch_size"]
    if source == "files":
        px = "/".join(map(str, s["original_px"]))
        fmts = "/".join(f.upper() for f in s["formats"])
        number, label = "1", "tf.data pipeline, original files"
        config = f"{size} px, batch {bs}, balanced + augmented; {s['originals']} {fmts} of {px} px"
    else:
        number, label = "2", "tf.data pipeline, cache (reading only)"
        config = f"{size} px cache, batch {bs}, balanced + augmented"
    params = {"source": source, "cache_dir": ctx.caches[size] if source == "cache" else None, "size": size,
              "batch_size": bs, "seed": s["seed"], "timing": ctx.timing, **ctx.files}
    return [{"id": source, "number": number, "kind": "pipeline", "label": label, "config": config,
             "params": params}]


def _baseline_units(s: dict[str, Any], ctx: _PlanContext) -> list[dict[str, Any]]:
    size, bs = s["size"], s["batch_size"]
    return [{
        "id": "baseline",
        "number": "3",
        "kind": "baseline",
        "label": "baseline-style loader: cv2 + Keras 2 affine in a Python Sequence, 1 process",
        "config": f"{size} px, batch {bs}, same originals",
        "params": {"size": size, "batch_size": bs, "seed": s["seed"], "timing": ctx.timing, **ctx.files},
    }]


def _step_units(s: dict[str, Any], ctx: _PlanContext) -> list[dict[str, Any]]:
    policies = {"both": ["float32", ctx.mixed_policy], "on": [ctx.mixed_policy], "off": ["float32"]}
    xlas = {"both": [False, True], "on": [True], "off": [False]}
    units = []
    for policy in policies[s["mixed_precision"]]:
        for xla in xlas[s["xla"]]:
            units.append({
                "id": f"step-{policy}-xla{'on' if xla else 'off'}",
                "number": "4",
                "kind": "train_step",
                "label": "train step, in-memory tensors",
                "config": f"`{s['model']}` {s['model_size']} px, batch {s['batch_size']}, {policy}, "
                f"XLA {'on' if xla else 'off'}",
                "params": {"model": s["model"], "size": s["model_size"], "batch_size": s["batch_size"],
                           "policy": policy, "xla": xla, "warmup": s["train_warmup"],
                           "steps": s["train_steps"], "windows": s["windows"], "seed": s["seed"]},
            })
    return units


def _eval_units(s: dict[str, Any], ctx: _PlanContext) -> list[dict[str, Any]]:
    n = min(s["eval_images"], s["originals"])
    return [{
        "id": "eval",
        "number": "5",
        "kind": "eval",
        "label": "evaluation",
        "parts": [
            ("batched", "evaluation, batched: tf.data + predict_on_batch"),
            ("loop", "evaluation, per-image loop: cv2 + model.predict"),
        ],
        "config": f"`{s['model']}` {s['model_size']} px, batch {s['batch_size']}, {n} originals, float32",
        "params": {"model": s["model"], "size": s["model_size"], "batch_size": s["batch_size"], "n_images": n,
                   "repeats": s["eval_repeats"], **ctx.files},
    }]


def _fed_units(s: dict[str, Any], ctx: _PlanContext) -> list[dict[str, Any]]:
    fed_xla = {"auto": ctx.gpu, "on": True, "off": False}[s["fed_xla"]]
    fed_mixed = {"auto": ctx.gpu, "on": True, "off": False}[s["fed_mixed_precision"]]
    policy = ctx.mixed_policy if fed_mixed else "float32"
    ms = s["model_size"]
    return [{
        "id": "fed",
        "number": "6",
        "kind": "fed",
        "label": "model.fit",
        "parts": [
            ("cache", "model.fit fed from the cache pipeline"),
            ("memory", "model.fit fed from memory (one batch repeated)"),
        ],
        "config": f"`{s['model']}` {ms} px, batch {s['batch_size']}, {policy}, "
        f"XLA {'on' if fed_xla else 'off'}",
        "fed_config": {"size": ms, "policy": policy, "xla": fed_xla},
        "params": {"model": s["model"], "size": ms, "batch_size": s["batch_size"], "policy": policy,
                   "xla": fed_xla, "list_file": ctx.files["list_file"], "cache_dir": ctx.caches[ms],
                   "warmup": s["train_warmup"], "steps": s["train_steps"], "windows": s["windows"],
                   "seed": s["seed"], "profile_dir": s["profile"],
                   "profile_steps": s["profile_steps"] if s["profile"] else 0},
    }]


def _torch_units(s: dict[str, Any], ctx: _PlanContext) -> list[dict[str, Any]]:
    size, bs, threads = s["torch_size"], s["torch_batch_size"], s["torch_threads"]
    return [{
        "id": f"torch-{model}",
        "number": "7",
        "kind": "torch",
        "label": "train step, Keras / PyTorch",
        "parts": [
            ("keras", "train step, Keras: train_on_batch"),
            ("pytorch", "train step, PyTorch: eager forward/backward/step"),
        ],
        "config": f"`{model}` {size} px, batch {bs}, float32, linear head, same device and "
        + (f"{threads} thread{'s' if threads > 1 else ''} each" if threads else "cores"),
        "params": {"model": model, "size": size, "batch_size": bs, "warmup": s["train_warmup"],
                   "steps": s["train_steps"], "windows": s["windows"], "seed": s["seed"], "threads": threads},
    } for model in s["torch_models"]]


_PLANNERS: dict[str, Callable[[dict[str, Any], _PlanContext], list[dict[str, Any]]]] = {
    "files": functools.partial(_pipeline_units, source="files"),
    "cache": functools.partial(_pipeline_units, source="cache"),
    "baseline": _baseline_units,
    "step": _step_units,
    "eval": _eval_units,
    "fed": _fed_units,
    "torch": _torch_units,
}


def plan(
    settings: dict[str, Any],
    *,
    originals: Any | None,
    caches: dict[int, str],
    gpu: bool,
    skip: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The measurement units of ``settings["only"]`` but ``skip``, in order, with their table labels."""
    s = settings
    mixed = s["mixed_policy"]
    if mixed == "auto":
        mixed = "mixed_float16" if gpu else "mixed_bfloat16"
    ctx = _PlanContext(
        timing={"warmup": s["warmup_batches"], "min_batches": s["min_batches"],
                "min_seconds": s["min_seconds"], "windows": s["windows"]},
        files={} if originals is None else {"list_file": str(originals.list_file),
                                             "image_dir": str(originals.image_dir)},
        caches=caches,
        mixed_policy=mixed,
        gpu=gpu,
    )
    measurements = [m for m in s["only"] if m not in skip]
    return [unit for measurement in measurements for unit in _PLANNERS[measurement](s, ctx)]


def _run_isolated(unit: dict[str, Any], *, seed: int, scratch: Path) -> dict[str, Any]:
    """Run one unit in a fresh ``python -m benchmarks.measure`` process; its result or its error."""
    spec, out = scratch / f"{unit['id']}.spec.json", scratch / f"{unit['id']}.result.json"
    atomic_write_text(spec, json.dumps({"kind": unit["kind"], "params": unit["params"], "seed": seed}))
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.measure", str(spec), str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.is_file():
        result = json.loads(out.read_text(encoding="utf-8"))
    else:
        tail = [line for line in proc.stderr.splitlines() if line.strip()][-1:] or ["no output"]
        result = {"error": f"worker exited with code {proc.returncode}: {tail[0]}"}
    if "error" in result:
        log.debug("worker stderr of %s:\n%s", unit["id"], "\n".join(proc.stderr.splitlines()[-30:]))
    return result


def _run_here(unit: dict[str, Any], *, seed: int) -> dict[str, Any]:
    try:
        return run_unit(unit["kind"], unit["params"], seed=seed)
    except Exception as exc:  # noqa: BLE001  one failed measurement is reported, the others still run
        log.debug("measurement %s failed", unit["id"], exc_info=True)
        return {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}


def _summary(unit: dict[str, Any], result: dict[str, Any]) -> str:
    if "error" in result:
        return f"failed: {result['error']}"
    parts = unit.get("parts") or [(None, "")]
    rates = []
    for key, _ in parts:
        value = (result.get(key) or {}) if key else result
        rates.append(f"{value.get('images_per_second', 0):.1f}" + (f" ({key})" if key else ""))
    return (
        f"{', '.join(rates)} images/s, peak RSS {result.get('peak_rss_mib', 0):.0f} MiB, "
        f"{result.get('wall_seconds', 0):.0f} s"
    )


def _gpu_names(tf: Any) -> list[str]:
    names = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        names.append(details.get("device_name", device.name))
    return names


def unavailable(only: Sequence[str]) -> dict[str, str]:
    """Measurements of ``only`` this machine cannot run (a missing optional package), with the reason."""
    if "torch" in only and importlib.util.find_spec("torch") is None:
        return {"torch": "PyTorch is not installed (pip install -r requirements-torch.txt): "
                         "the Keras / PyTorch row (7) is skipped"}
    return {}


@dataclasses.dataclass(frozen=True)
class _Environment:
    """When and where the run happens."""

    started: datetime.datetime
    t0: float
    load_start: tuple[float, float, float]
    machine: str
    gpus: list[str]
    versions: dict[str, str]


def _environment(*, isolate: str) -> _Environment:
    """Start the clock, read the load, import TensorFlow and describe the machine."""
    started = datetime.datetime.now(datetime.UTC)
    load_start = os.getloadavg()
    t0 = time.perf_counter()

    import keras
    import tensorflow as tf

    from evaluation.timing import machine_description

    gpus = _gpu_names(tf)
    machine = machine_description()
    if isolate == "process":
        # The workers use the GPU; this process only writes files and would otherwise reserve its memory.
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # the runtime is already initialised (e.g. main() called twice in a process)
            log.debug("could not hide the GPUs from the benchmark's main process", exc_info=True)
    return _Environment(started=started, t0=t0, load_start=load_start, machine=machine, gpus=gpus,
                        versions={"tensorflow": tf.__version__, "keras": keras.__version__})


def _prepare_workload(
    settings: dict[str, Any], work_dir: Path
) -> tuple[Any | None, dict[int, dict[str, Any]]]:
    """Write (or reuse) the originals and the caches the measurements read (none if none reads them)."""
    if not READ_ORIGINALS & set(settings["only"]):
        return None, {}
    log.info("writing %d originals (%s px) into %s", settings["originals"],
             "/".join(map(str, settings["original_px"])), work_dir)
    originals = write_originals(work_dir, settings["originals"], sizes=settings["original_px"],
                                formats=settings["formats"], seed=settings["seed"])
    cache_sizes = set()
    if "cache" in settings["only"]:
        cache_sizes.add(settings["size"])
    if "fed" in settings["only"]:
        cache_sizes.add(settings["model_size"])
    caches_info = {}
    for size in sorted(cache_sizes):
        log.info("building the %d px cache", size)
        caches_info[size] = ensure_cache(work_dir, originals, size=size)
    return originals, caches_info


def _run_units(units: list[dict[str, Any]], *, isolate: str, seed: int, scratch: Path) -> None:
    """Run every unit (in a worker process or here) and store its ``result``."""
    for i, unit in enumerate(units, start=1):
        log.info("[%d/%d] (%s) %s: %s", i, len(units), unit["number"], unit["label"], unit["config"])
        if isolate == "process":
            unit["result"] = _run_isolated(unit, seed=seed, scratch=scratch)
        else:
            unit["result"] = _run_here(unit, seed=seed)
        log.info("      %s", _summary(unit, unit["result"]))


def _measure(
    settings: dict[str, Any], *, work_dir: str | None, gpu: bool, skip: Sequence[str]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Prepare the workload, plan and run the units; returns them with their results, and the workload."""
    with contextlib.ExitStack() as stack:
        work = (
            Path(work_dir)
            if work_dir
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="covidx-bench-")))
        )
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="covidx-bench-units-")))
        originals, caches_info = _prepare_workload(settings, work)
        caches = {size: info["cache_dir"] for size, info in caches_info.items()}
        units = plan(settings, originals=originals, caches=caches, gpu=gpu, skip=skip)
        _run_units(units, isolate=settings["isolate"], seed=settings["seed"], scratch=scratch)
        workload = {
            "originals": originals.to_dict() if originals is not None else None,
            "caches": {str(k): v for k, v in caches_info.items()},
        }
    return units, workload


def _document(
    *,
    argv: list[str],
    settings: dict[str, Any],
    env: _Environment,
    units: list[dict[str, Any]],
    workload: dict[str, Any],
    skipped: dict[str, str],
) -> dict[str, Any]:
    """The JSON record of the run."""
    by_id = {u["id"]: u for u in units}
    fed_config = by_id["fed"]["fed_config"] if "fed" in by_id else {}
    return {
        "command": shlex.join(["python", "benchmarks/run.py", *argv]),
        "argv": argv,
        "started_utc": env.started.isoformat(timespec="seconds"),
        "wall_seconds": round(time.perf_counter() - env.t0, 1),
        "machine": env.machine,
        "gpus": env.gpus,
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_start": env.load_start,
        "load_average_end": os.getloadavg(),
        "python": platform.python_version(),
        **env.versions,
        "settings": settings,
        "memory_isolation": (
            "process: each measurement in its own process"
            if settings["isolate"] == "process"
            else "none: one process, peak reset before each measurement"
        ),
        "workload": workload,
        "measurements": [{k: v for k, v in u.items() if k != "parts"} for u in units],
        "targets": report.ratios(by_id, gpu=bool(env.gpus), fed_config=fed_config),
        "keras_over_pytorch": report.keras_over_pytorch(units),
        "skipped": skipped,
        "failed": [u["id"] for u in units if "error" in u["result"]],
    }


def _print_report(document: dict[str, Any], units: list[dict[str, Any]], out: Path) -> None:
    print(f"Machine: {document['machine']}")
    print(f"Command: {document['command']}  ({document['wall_seconds']:.0f} s)\n")
    print(report.format_table(units))
    fed = next((u["result"] for u in units if u["id"] == "fed"), None)
    if fed is not None and "error" not in fed:
        print(
            f"\n(6) share of the step waiting on input: 1 - cache-fed / memory-fed = "
            f"{fed['input_bound_fraction']:.0%}"
        )
    frameworks = report.format_keras_over_pytorch(units)
    if frameworks:
        print(f"\n{frameworks}")
    for reason in document["skipped"].values():
        print(f"\nskipped: {reason}")
    print()
    print(report.format_ratios(document["targets"]))
    load_start, cores = document["load_average_start"], document["cpu_cores"] or 1
    if load_start[0] > 0.5:
        print(
            f"\nnote: the load average was {load_start[0]:.1f} on {cores} cores before the run: other "
            f"processes were using the CPUs, so these figures are lower and noisier than on an idle machine."
        )
    print(f"\nJSON: {out}")


@handle_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the tables; write the JSON. Exit 1 if any measurement failed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    setup_logging(args.verbose)
    settings = resolve(args)
    env = _environment(isolate=settings["isolate"])
    out = Path(args.out) if args.out else RESULTS_DIR / f"{env.started.strftime('%Y%m%dT%H%M%SZ')}.json"
    skipped = unavailable(settings["only"])
    for reason in skipped.values():
        log.warning("%s", reason)
    units, workload = _measure(settings, work_dir=args.work_dir, gpu=bool(env.gpus), skip=list(skipped))
    document = _document(argv=argv, settings=settings, env=env, units=units, workload=workload,
                         skipped=skipped)
    atomic_write_text(out, json.dumps(document, indent=1, default=str))
    _print_report(document, units, out)
    if document["failed"]:
        print(f"error: {len(document['failed'])} measurement(s) failed: {', '.join(document['failed'])}",
              file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
