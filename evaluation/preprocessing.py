"""Which preprocessing a checkpoint's images get, so it is evaluated on the pixels it was trained on.

The one choice today is the resize method (:data:`data.images.RESIZE_METHODS`):
``"baseline"`` (SURFsara's ``cv2.resize``, no antialiasing) or
``"torchvision"`` (the PyTorch studies' ``Resize((S, S))`` on PIL images). A
model trained on one and evaluated on the other sees different pixels (mean
difference 2.80/255 at 224 px on real chest X-rays, docs/evaluation.md), so
the method is looked up, in this order:

1. the ``--resize`` flag (``eval_keras.py``, ``predict.py``): it always wins,
   so the effect can be measured on purpose; when it contradicts what the
   checkpoint records, one warning names both;
2. what the checkpoint records: ``"resize"`` in the ``run_config.json`` that
   ``train_keras.py`` writes beside its checkpoints (a file written before the
   key existed means ``"baseline"``: every such run was trained that way), or
   the ``covidx.resize`` key of an ONNX model's metadata
   (:mod:`evaluation.onnx_metadata`);
3. otherwise ``"baseline"``, the project's default (for an ONNX model the
   loader's "does not say" warning names the missing key).

:class:`Preprocessing` is the answer and where it came from; it is printed in
``eval_keras.py``'s header and written to ``metrics.json`` and ``predict.py
--json`` as ``"preprocessing"``.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from data.images import RESIZE_METHODS

if TYPE_CHECKING:
    from training.config import RunConfig

log = logging.getLogger(__name__)

DEFAULT_RESIZE = "baseline"
RESIZE_FLAG = "--resize"
# --help of eval_keras.py's and predict.py's --resize (choices: RESIZE_METHODS, no default: None).
RESIZE_HELP = (
    "how images are resized to the model's input: baseline (SURFsara's cv2.resize, no antialiasing) or "
    "torchvision (the PyTorch studies' transforms.Resize((S, S)) on PIL images, antialiased). Default: "
    "what the checkpoint records (run_config.json beside it, an ONNX model's covidx.resize), else "
    "baseline; a flag that contradicts the record is used, with a warning"
)


@dataclasses.dataclass(frozen=True)
class Recorded:
    """A resize method a checkpoint records, and where (``run_config.json``'s path, an ONNX key)."""

    resize: str
    where: str


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How a model's images are prepared.

    Attributes:
        resize: one of :data:`data.images.RESIZE_METHODS`.
        source: where it came from, in words (``"--resize"``, ``"recorded in run/run_config.json"``, ...).
    """

    resize: str = DEFAULT_RESIZE
    source: str = "default: nothing recorded for this checkpoint"

    def to_dict(self) -> dict[str, str]:
        """``metrics.json``'s and ``predict.py --json``'s ``"preprocessing"`` object."""
        return {"resize": self.resize, "source": self.source}

    def describe(self) -> str:
        """One line for a report header."""
        return f"resize {self.resize} ({self.source}), then / 255"


def check_resize(value: str, *, what: str) -> str:
    """``value`` when it is one of :data:`data.images.RESIZE_METHODS`, else ``ValueError`` naming ``what``."""
    if value not in RESIZE_METHODS:
        raise ValueError(f"{what}: resize must be one of {', '.join(RESIZE_METHODS)}, received {value!r}")
    return value


def run_config_beside(checkpoint: str | Path) -> Path:
    """The ``run_config.json`` a checkpoint's run would have written: beside the file, or beside the
    SavedModel folder (``train_keras.py`` writes ``saved_model/`` into the run folder)."""
    from training.config import RUN_CONFIG_NAME

    path = Path(checkpoint)
    if path.name == "saved_model.pb":
        path = path.parent
    return path.parent / RUN_CONFIG_NAME


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """The ``run_config.json`` beside a checkpoint, read once: it gives the resize method and, for a
    weights-only file, the architecture (:mod:`evaluation.loaders`)."""

    config: RunConfig
    path: Path

    @property
    def recorded(self) -> Recorded:
        """The resize method it records (a file written before the key existed says ``"baseline"``)."""
        return Recorded(resize=self.config.resize, where=str(self.path))  # RunConfig checks the value


def run_record(checkpoint: str | Path) -> RunRecord | None:
    """The run configuration of the run that wrote ``checkpoint``, from the ``run_config.json`` beside it.

    None when there is no such file. A file that cannot be read is a
    ``ValueError`` naming it: guessing the preprocessing (or a weights-only
    file's architecture) instead would silently change what is measured.
    """
    from training.config import read_run_config

    config_path = run_config_beside(checkpoint)
    if not config_path.is_file():
        return None
    try:
        config = read_run_config(config_path)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ValueError(
            f"run configuration {config_path} (for checkpoint {checkpoint}) is unusable, so how the model "
            f"was trained (its resize method; for a weights-only file, its architecture) is unknown "
            f"({type(exc).__name__}: {exc}); fix the file, or move it away to use the flags"
        ) from exc
    return RunRecord(config=config, path=config_path)


def choose_preprocessing(
    flag: str | None, recorded: Recorded | None, *, checkpoint: str | Path
) -> Preprocessing:
    """The :class:`Preprocessing` of ``checkpoint``: ``flag`` (``--resize``) if given, else ``recorded``,
    else the default; a flag that contradicts the record is used, with one warning naming both."""
    if flag is not None:
        check_resize(flag, what=RESIZE_FLAG)
        if recorded is not None and recorded.resize != flag:
            log.warning(
                "%s %s contradicts %s, which says checkpoint %s was trained with resize %s; "
                "using %s %s as asked",
                RESIZE_FLAG, flag, recorded.where, checkpoint, recorded.resize, RESIZE_FLAG, flag,
            )
            return Preprocessing(flag, f"{RESIZE_FLAG}; {recorded.where} records {recorded.resize}")
        return Preprocessing(flag, RESIZE_FLAG)
    if recorded is not None:
        return Preprocessing(recorded.resize, f"recorded in {recorded.where}")
    return Preprocessing()
