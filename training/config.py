"""The resolved configuration of a training run.

``train_keras.py``'s ``main`` resolves every flag once into a frozen
:class:`RunConfig`; the library below it only sees this object and plain
keyword arguments. The configuration is written as ``run_config.json`` beside
the checkpoints: it is the record of what was run, it lets ``eval_keras.py``
rebuild the architecture of a weights-only checkpoint without repeating flags,
and it decides whether a re-run may resume the run it finds in its folder.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.fsutil import atomic_write_text
from data.images import RESIZE_METHODS

if TYPE_CHECKING:
    from data.augment import AugmentConfig

RUN_CONFIG_NAME = "run_config.json"

# Settings that may change between a run and its resumption (they do not
# change what the already-completed epochs computed).
_RESUMABLE_CHANGES = frozenset(
    {"epochs", "keep_checkpoints", "full_checkpoints", "verify_images", "checkpoint", "weights",
     "run_dir", "output", "argv", "versions", "replicas", "num_workers", "strategy",
     "xla", "cache", "collective_timeout", "deterministic"}
)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs, resolved from the command line."""

    # data
    trainfile: str
    testfile: str
    data_path: str
    val_split: float
    verify_images: str
    balance: bool
    covid_per_batch: int
    class_weights: tuple[float, ...]
    # data.augment.AugmentConfig as a dict (None: no augmentation), recorded like the model spec so that
    # changing a default later cannot change what this run means. run_config.json files written before
    # the parameters were recorded hold ``true``/``false``; ``true`` reads as today's defaults.
    augment: dict[str, Any] | None
    # model: a models.ModelSpec as a dict, so the JSON rebuilds the architecture
    model: dict[str, Any]
    weights: str
    checkpoint: str
    # optimisation
    lr: float
    batch_size: int
    epochs: int
    steps_per_epoch: int | None
    seed: int
    mixed_precision: bool
    xla: bool
    # output
    output: str
    name: str
    run_dir: str
    keep_checkpoints: int
    full_checkpoints: bool
    sync_batchnorm: bool = True
    collective_timeout: float = 600.0
    # TensorFlow op determinism (bit-identical GPU runs); CPU runs are reproducible without it
    deterministic: bool = False
    # a validation list (images in DATA_PATH/train) instead of carving one with val_split
    valfile: str = ""
    # how images are resized to the model's input (data.images.RESIZE_METHODS): "baseline" is SURFsara's
    # cv2-style bilinear resize; eval_keras.py and predict.py read it back. Files without it mean "baseline".
    resize: str = "baseline"
    # the ImageNet-transfer study's options (docs/training.md); the defaults are SURFsara's baseline
    schedule: str = "plateau"  # plateau | onecycle | cosine
    min_lr: float = 1e-6  # plateau's floor (SURFsara's min_lr) and cosine's final rate
    onecycle_pct_start: float = 0.25
    onecycle_div: float = 25.0
    onecycle_div_final: float = 1e5
    mixup: float = 0.0  # Beta(alpha, alpha); 0 = off
    label_smoothing: float = 0.0
    # ((img_size, epochs), ...); () = one stage at the model's size
    progressive: tuple[tuple[int, int], ...] = ()
    freeze_epochs: int = 0
    backbone_lr_mult: float = 1.0
    train_bn: bool = True
    # data/fingerprint.py fingerprints of the lists ({"--trainfile": "sha256:...", ...}): which data the run
    # means; a list whose images changed blocks a resume (compared only for lists both runs recorded)
    fingerprints: dict[str, str] = dataclasses.field(default_factory=dict)
    # how the run was executed (recorded, not compared on resume)
    strategy: str = "default"
    replicas: int = 1
    num_workers: int = 1
    cache: str = ""
    argv: tuple[str, ...] = ()
    versions: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        # Here, not at module level: data.augment imports TensorFlow, and run_folder_name and the
        # configuration are read by light tools (the recipes, demo.py) that must not wait for it.
        from data.augment import AugmentConfig

        if self.resize not in RESIZE_METHODS:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_METHODS)}, received {self.resize!r}")
        # Validate the recorded augmentation and store it in one normal form (JSON lists compare equal).
        augment = self.augment
        if isinstance(augment, bool):
            augment = AugmentConfig().to_dict() if augment else None
        elif augment is not None:
            augment = AugmentConfig.from_dict(augment).to_dict()
        object.__setattr__(self, "augment", augment)

    @property
    def augmentation(self) -> AugmentConfig | None:
        """The recorded augmentation as the pipeline takes it (None: off)."""
        from data.augment import AugmentConfig

        return None if self.augment is None else AugmentConfig.from_dict(self.augment)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`; unknown keys (from newer versions, or ``global_batch_size`` that
        older ones wrote, always equal to ``batch_size``) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        for key in ("class_weights", "argv"):
            if key in values and values[key] is not None:
                values[key] = tuple(values[key])
        if values.get("progressive") is not None:
            values["progressive"] = tuple((int(size), int(n)) for size, n in values["progressive"])
        return cls(**values)

    def changes_blocking_resume(self, previous: RunConfig) -> dict[str, tuple[Any, Any]]:
        """Settings that differ from ``previous`` in a way that forbids resuming it.

        ``epochs`` may normally grow on resume (the run is extended). Not when
        the learning-rate schedule is a function of the total step count
        (onecycle, cosine) or the epochs are split into progressive-resizing
        stages: there a different ``epochs`` changes what the completed epochs
        would have been.
        """
        mine, theirs = self.to_dict(), previous.to_dict()
        resumable = _RESUMABLE_CHANGES | {"fingerprints"}
        if any(c.schedule != "plateau" or c.progressive for c in (self, previous)):
            resumable = resumable - {"epochs"}
        changed = {
            key: (theirs.get(key), mine[key])
            for key in mine
            if key not in resumable and _normalise(theirs.get(key)) != _normalise(mine[key])
        }
        # A run folder written before fingerprints were recorded, or a list whose images could not be
        # hashed, has nothing to compare.
        for flag in sorted(set(self.fingerprints) & set(previous.fingerprints)):
            if self.fingerprints[flag] != previous.fingerprints[flag]:
                changed[f"fingerprints[{flag}]"] = (previous.fingerprints[flag], self.fingerprints[flag])
        return changed


def _normalise(value: Any) -> Any:
    return json.loads(json.dumps(value))


def run_folder_name(name: str, lr: float) -> str:
    """SURFsara's run folder: ``args.name + 'lr' + str(lr)`` (e.g. ``covid-net-resnet512-lr2e-05``)."""
    return f"{name}lr{lr}"


def write_run_config(config: RunConfig, run_dir: str | os.PathLike[str]) -> Path:
    """Write ``run_config.json`` into ``run_dir`` atomically."""
    return atomic_write_text(
        Path(run_dir) / RUN_CONFIG_NAME, json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"
    )


def read_run_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read a ``run_config.json`` (or the one inside a run folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / RUN_CONFIG_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"run configuration {path} does not exist") from None
    except ValueError as exc:
        raise ValueError(f"run configuration {path} is not valid JSON ({exc})") from None
    return RunConfig.from_dict(data)
