"""Checkpoint files: SURFsara's per-epoch weight files and the kill-safe resume state.

Two kinds of files, with two jobs:

- ``cp-{epoch:02d}-{val_loss:.2f}.hdf5``: the model weights after each epoch,
  named and laid out as SURFsara's ``ModelCheckpoint(save_weights_only=True)``
  wrote them with Keras 2 (root attributes ``layer_names``/``backend``/
  ``keras_version``, one group per layer with ``weight_names``). This layout is
  what ``load_weights`` reads in Keras 3 *and* in tf_keras / tf.keras <= 2.15,
  so the files load in either, into an architecture built from
  ``keras.applications``. Keras 3's own ``save_weights`` only writes the
  ``.weights.h5`` layout, which Keras 2 code cannot read.
- the resume state (``resume/epoch-NNNN/`` after an epoch,
  ``resume/epoch-NNNN-step-SSSSSS/`` after a SIGTERM stop inside the next
  one): model *and* optimizer variables (Keras 3 ``.weights.h5``) plus a JSON
  file with the epoch, the step and the callbacks' state. Every save writes a
  new folder beside the previous state (through ``common.fsutil.atomic_dir``,
  so it only takes its name once complete), then replaces the ``LATEST``
  pointer atomically, and only then deletes the older states. A process killed
  at any moment, or a save that fails (a full disk), leaves the last good
  state intact and findable.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np

from common.fsutil import atomic_dir, atomic_path, atomic_write_text, is_partial

log = logging.getLogger(__name__)

CHECKPOINT_PATTERN = "cp-{epoch:02d}-{val_loss:.2f}.hdf5"
_CHECKPOINT_RE = re.compile(r"^cp-(\d+)-(.+)\.hdf5$")


def _legacy_weights(layer: keras.layers.Layer) -> list:
    # Keras 2's HDF5 order: trainable then non-trainable variables of each layer.
    return list(layer.trainable_weights) + list(layer.non_trainable_weights)


def write_weights_hdf5(model: keras.Model, path: str | os.PathLike[str]) -> Path:
    """Write ``model``'s weights to ``path`` in Keras 2's HDF5 weights layout, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["layer_names"] = np.array([layer.name.encode("utf8") for layer in model.layers])
            f.attrs["backend"] = b"tensorflow"
            f.attrs["keras_version"] = keras.__version__.encode("utf8")
            for layer in model.layers:
                group = f.create_group(layer.name)
                weights = _legacy_weights(layer)
                names = [f"{layer.name}/{w.name}:{i}".encode() for i, w in enumerate(weights)]
                group.attrs["weight_names"] = np.array(names, dtype=object) if names else np.array([], "S1")
                for name, w in zip(names, weights):
                    group.create_dataset(name.decode("utf8"), data=keras.ops.convert_to_numpy(w))
    return path


def describe_hdf5(path: Path) -> str:
    """What kind of Keras file ``path`` is: 'model' (full model), 'weights' (legacy) or 'weights3'.

    Raises ``ValueError`` naming the file when it is not HDF5 or not a Keras file.
    """
    try:
        with h5py.File(path, "r") as f:
            if "model_config" in f.attrs:
                return "model"
            if "layer_names" in f.attrs:
                return "weights"
            if "layers" in f or "vars" in f:
                return "weights3"
    except OSError as exc:
        raise ValueError(f"{path} is not a readable HDF5 file ({exc})") from None
    raise ValueError(f"{path} is an HDF5 file but holds no Keras model or weights")


def load_weights_file(model: keras.Model, path: str | os.PathLike[str]) -> None:
    """Load weights from any checkpoint this project or SURFsara wrote into ``model``.

    Accepts SURFsara/Keras 2 weight files (``.hdf5``/``.h5``), full-model
    ``.h5`` files (their weights are used) and Keras 3 ``.weights.h5`` files.
    Errors name the file and say why the weights do not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    kind = describe_hdf5(path)
    # Keras picks the reader from the file name, so the name must match the content.
    if kind == "weights3" and not path.name.endswith(".weights.h5"):
        raise ValueError(
            f"checkpoint {path} holds Keras 3 weights; its name must end in .weights.h5, received {path.name}"
        )
    if kind in ("weights", "model") and (
        path.suffix not in (".h5", ".hdf5") or path.name.endswith(".weights.h5")
    ):
        raise ValueError(
            f"checkpoint {path} holds Keras 2-layout HDF5 weights; its name must end in .hdf5 or .h5, "
            f"received {path.name}"
        )
    nested = _nested_model_group(path) if kind == "weights" else None
    try:
        if nested is None:
            model.load_weights(str(path))
        else:
            with tempfile.TemporaryDirectory(prefix="covidx-unwrap-") as tmp:
                model.load_weights(str(_unwrap_nested_weights(path, nested, Path(tmp) / "unwrapped.h5")))
    except (ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"checkpoint {path} does not fit the model {model.name!r}: {first}") from None


def _decoded(values: Any) -> list[str]:
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _nested_model_group(path: Path) -> str | None:
    """The group of a model saved *inside* another model, as SURFsara's multi-GPU checkpoints are.

    ``multi_gpu_model`` wrapped the real model as one layer between the input
    slices and the output concatenation; ``ModelCheckpoint`` on the wrapper wrote
    every weight under that one layer, with names of the inner layers
    (``conv1_conv/kernel:0``...). Returns the group's name when exactly one
    layer holds weights of several layers and no other layer holds any.
    """
    with h5py.File(path, "r") as f:
        with_weights = []
        for name in _decoded(f.attrs["layer_names"]):
            weight_names = _decoded(f[name].attrs.get("weight_names", []))
            if weight_names:
                with_weights.append((name, {w.split("/")[0] for w in weight_names}))
    if len(with_weights) == 1 and len(with_weights[0][1]) > 1:
        return with_weights[0][0]
    return None


def _unwrap_nested_weights(path: Path, group_name: str, out: Path) -> Path:
    """Rewrite the inner model's weights of ``path`` as a plain Keras 2 weights file at ``out``.

    Keras 2 stored a nested model's weights as all trainable weights in layer
    order, then all non-trainable ones (batch-norm statistics). Grouping them by
    their layer prefix, in order of first appearance, gives back each layer's
    weights in its own order (trainable first), which is what ``load_weights``
    matches layer by layer.
    """
    layers: dict[str, list[tuple[str, np.ndarray]]] = {}
    with h5py.File(path, "r") as f:
        group = f[group_name]
        for weight_name in _decoded(group.attrs["weight_names"]):
            layers.setdefault(weight_name.split("/")[0], []).append((weight_name, group[weight_name][()]))
    with h5py.File(out, "w") as f:
        f.attrs["layer_names"] = np.array([name.encode("utf8") for name in layers])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for name, weights in layers.items():
            g = f.create_group(name)
            g.attrs["weight_names"] = np.array([w.encode("utf8") for w, _ in weights], dtype=object)
            for weight_name, value in weights:
                g.create_dataset(weight_name, data=value)
    return out


def parse_checkpoint_name(name: str) -> int | None:
    """Epoch number of a ``cp-EE-L.hdf5`` file name, or None for any other name."""
    match = _CHECKPOINT_RE.match(name)
    return int(match.group(1)) if match else None


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of the per-epoch checkpoints in ``run_dir``, oldest first."""
    found = []
    for path in Path(run_dir).glob("cp-*.hdf5"):
        epoch = parse_checkpoint_name(path.name)
        if epoch is not None:
            found.append((epoch, path))
    return sorted(found)


class EpochCheckpoint(keras.callbacks.Callback):
    """Writes SURFsara's ``cp-{epoch:02d}-{val_loss:.2f}.hdf5`` after every epoch.

    The file is written through a temporary name. ``keep`` > 0 keeps only the
    newest ``keep`` files (the baseline head at 512 px makes each ~2 GB);
    ``full_model`` writes full-model files (architecture + weights) instead of
    weights only. An epoch whose loss is not finite writes nothing.
    """

    def __init__(
        self, run_dir: str | os.PathLike[str], *, keep: int = 0, full_model: bool = False, export_fn=None
    ) -> None:
        super().__init__()
        if keep < 0:
            raise ValueError(f"keep_checkpoints must be >= 0 (0 keeps all), received {keep}")
        self.run_dir = Path(run_dir)
        self.keep = keep
        self.full_model = full_model
        self.export_fn = export_fn
        self.last_path: Path | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        loss, val_loss = logs.get("loss"), logs.get("val_loss")
        if loss is None or not np.isfinite(loss) or val_loss is None:
            return
        path = self.run_dir / CHECKPOINT_PATTERN.format(epoch=epoch + 1, val_loss=float(val_loss))
        if self.full_model and self.export_fn is not None:
            self.export_fn(self.model, path)
        else:
            write_weights_hdf5(self.model, path)
        self.last_path = path
        print(f"\nEpoch {epoch + 1}: saved checkpoint {path}", flush=True)
        if self.keep:
            for _, old in list_checkpoints(self.run_dir)[: -self.keep]:
                old.unlink(missing_ok=True)


# ---------------------------------------------------------------------------
# Resume state


STATE_WEIGHTS = "state.weights.h5"
STATE_JSON = "state.json"
LATEST = "LATEST"


# epoch-NNNN[-step-SSSSSS][-PID]: the optional last part tells two saves of one position apart.
_STATE_RE = re.compile(r"^epoch-(\d+)(?:-step-(\d+))?(?:-\d+)?$")


def state_folder_name(epoch: int, step: int = 0) -> str:
    """``epoch-NNNN`` for the state after ``epoch`` epochs, ``epoch-NNNN-step-SSSSSS`` inside the next one."""
    return f"epoch-{epoch:04d}" + (f"-step-{step:06d}" if step else "")


def _write_state(folder: Path, *, model: keras.Model, state: dict[str, Any]) -> None:
    # Inside the temporary folder of atomic_dir: nothing here is visible under a final name yet.
    model.save_weights(str(folder / STATE_WEIGHTS))
    (folder / STATE_JSON).write_text(json.dumps(state, indent=2, sort_keys=True))


def _point_latest(resume_dir: Path, name: str) -> None:
    atomic_write_text(resume_dir / LATEST, name + "\n")


def _remove_older_states(resume_dir: Path, keep: str) -> None:
    for other in resume_dir.iterdir():
        if other.name != keep and other.is_dir() and _STATE_RE.match(other.name):
            shutil.rmtree(other, ignore_errors=True)


def save_resume_state(
    resume_dir: str | os.PathLike[str], *, model: keras.Model, epoch: int, state: dict[str, Any]
) -> Path:
    """Save model + optimizer variables and ``state`` for ``epoch`` completed epochs (and ``state['step']``).

    The new state is written beside the previous one, into a folder named
    after its epoch and step (:func:`state_folder_name`) that takes its name
    only when complete; then ``LATEST`` names it (atomically) and only then are
    older states deleted. An exception while writing (``OSError`` of a full
    disk) leaves the previous state, and ``LATEST`` naming it, untouched.
    """
    resume_dir = Path(resume_dir)
    step = int(state.get("step", 0) or 0)
    name = state_folder_name(epoch, step)
    pointer = resume_dir / LATEST
    if pointer.is_file() and pointer.read_text().strip() == name:
        # Never swap out the folder LATEST names (atomic_dir would briefly leave no state under it):
        # a second save of one position goes to a fresh name.
        name = f"{name}-{os.getpid()}"
    with atomic_dir(resume_dir / name) as tmp:
        _write_state(tmp, model=model, state={**state, "epoch": epoch, "step": step})
    _point_latest(resume_dir, name)
    _remove_older_states(resume_dir, keep=name)
    return resume_dir / name


def _state_position(folder: Path) -> tuple[int, int] | None:
    match = _STATE_RE.match(folder.name)
    return (int(match.group(1)), int(match.group(2) or 0)) if match else None


def find_resume_state(resume_dir: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]] | None:
    """The newest complete resume state as ``(folder, state)``, or None if there is none.

    ``LATEST`` is trusted when it names a complete folder; otherwise (a kill
    before the first pointer, a pointer damaged by hand) the complete folder
    of the furthest (epoch, step) is used. Hidden ``.partial-*`` folders of
    interrupted saves are never considered.
    """
    resume_dir = Path(resume_dir)
    if not resume_dir.is_dir():
        return None
    candidates = []
    pointer = resume_dir / LATEST
    if pointer.is_file():
        try:
            named = pointer.read_text().strip()
        except (OSError, UnicodeDecodeError):
            named = ""
        if named and not is_partial(named) and "/" not in named:
            candidates.append(resume_dir / named)
    others = [
        (position, p)
        for p in resume_dir.glob("epoch-*")
        if p.is_dir() and (position := _state_position(p)) is not None
    ]
    candidates += [p for _, p in sorted(others, key=lambda item: (item[0], item[1].name), reverse=True)]
    for folder in candidates:
        try:
            state = json.loads((folder / STATE_JSON).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(state, dict) and "epoch" in state and (folder / STATE_WEIGHTS).is_file():
            return folder, state
    return None


def restore_resume_state(model: keras.Model, folder: str | os.PathLike[str]) -> None:
    """Load model and optimizer variables saved by :func:`save_resume_state` into a compiled model."""
    # The optimizer creates its slot variables lazily; they must exist to be loaded.
    model.optimizer.build(model.trainable_variables)
    model.load_weights(str(Path(folder) / STATE_WEIGHTS))
