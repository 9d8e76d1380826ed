"""A run's phases and the ImageNet-transfer study's options that change between them.

The study (fastai v1, DenseNet-121 and Xception) trained with a frozen
backbone first, then unfroze it with lower learning rates for the early layers
("discriminative learning rates"), used one-cycle learning rates, and resized
its images progressively (64 -> 128 -> 224 px). Here a run's epochs are cut
into *phases* (:func:`training_phases`): a new phase starts at every
progressive-resizing stage and where the backbone is unfrozen. Everything
about a phase is a function of the epoch number, so a resumed run finds its
phase from the epoch it resumes at and nothing about phases is saved.

- :class:`PhasedSchedule`: ``onecycle`` and ``cosine`` learning rates computed
  per optimizer step, restarting at every phase as fastai's ``fit_one_cycle``
  did for each of its calls. A pure function of ``optimizer.iterations``,
  which the resume state saves, so a resumed run continues on the same curve.
- :func:`set_backbone_frozen`: every layer outside the dense head stops
  training, except batch normalisation by default (fastai's ``train_bn=True``).
- :class:`DiscriminativeAdam`: SURFsara's Adam (amsgrad) whose update of the
  backbone's variables uses ``learning_rate * multiplier``.
- :func:`flexible_size_model`: the same layers behind an input of any size,
  for progressive resizing.
- :class:`PhaseLog`: the phase's state in every epoch's log row.

docs/training.md describes the options and every decision taken where the
study or fastai left a choice.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any

import keras
from keras import ops

from models.layer_names import INPUT_LAYER_NAME
from models.registry import head_layer_names


@dataclasses.dataclass(frozen=True)
class Phase:
    """Epochs ``[first_epoch, end_epoch)`` trained at one image size with one backbone state."""

    index: int
    first_epoch: int  # 0-based, inclusive
    end_epoch: int  # exclusive
    img_size: int
    frozen: bool
    stage: int  # index of the progressive-resizing stage

    @property
    def epochs(self) -> int:
        """Number of epochs in the phase."""
        return self.end_epoch - self.first_epoch

    def describe(self) -> str:
        """``epochs 1-2 at 64 px, backbone frozen``, as the run's log names its phases."""
        first, end = self.first_epoch + 1, self.end_epoch
        epochs = f"epoch {end}" if first == end else f"epochs {first}-{end}"
        return f"{epochs} at {self.img_size} px, backbone {'frozen' if self.frozen else 'trainable'}"


def parse_progressive(
    text: str, *, epochs: int, img_size: int, min_size: int = 1
) -> tuple[tuple[int, int], ...]:
    """Resolve ``--progressive`` into ``((size, epochs), ...)`` stages covering all ``epochs``.

    ``text`` lists the stage sizes in order, each optionally with its number
    of epochs: ``"64:2,128:2,224:6"``. Stages without a count share the epochs
    the others leave, as evenly as possible, the later (larger) stages taking
    the remainder: ``"64,128,224"`` with 10 epochs gives 3, 3 and 4. The last
    stage's size must be ``img_size`` (the size the final model is built and
    exported at) and every size at least ``min_size`` (the model's smallest
    input). An empty text means no progressive resizing: ``()``.
    """
    if not text or not text.strip():
        return ()
    sizes: list[int] = []
    counts: list[int | None] = []
    for item in text.split(","):
        size_text, sep, count_text = item.strip().partition(":")
        try:
            size = int(size_text)
            count = int(count_text) if sep else None
        except ValueError:
            raise ValueError(
                f"--progressive expects sizes with optional epochs such as 64:2,128:2,224:6 or 64,128,224; "
                f"received {text!r}"
            ) from None
        if size < min_size:
            raise ValueError(
                f"--progressive: stage size {size} is below the model's minimum of {min_size} px "
                f"(received {text!r})"
            )
        if count is not None and count < 1:
            raise ValueError(f"--progressive: every stage needs at least 1 epoch, received {item.strip()!r}")
        sizes.append(size)
        counts.append(count)
    if sizes[-1] != img_size:
        raise ValueError(
            f"--progressive: the last stage's size ({sizes[-1]}) must equal --img_size ({img_size}), the "
            "size "
            f"the final model is built and exported at; received {text!r}"
        )
    explicit = sum(c for c in counts if c is not None)
    free = [i for i, c in enumerate(counts) if c is None]
    if free:
        left = epochs - explicit
        if left < len(free):
            raise ValueError(
                f"--progressive: every stage needs at least 1 epoch, but --epochs {epochs} leaves {left} "
                f"for {len(free)} stages without an epoch count; received {text!r}"
            )
        share, extra = divmod(left, len(free))
        for j, i in enumerate(free):
            counts[i] = share + (1 if j >= len(free) - extra else 0)
    elif explicit != epochs:
        raise ValueError(
            f"--progressive: the stages' epochs add up to {explicit}, --epochs is {epochs}; they must be "
            f"equal, received {text!r}"
        )
    return tuple((s, int(c)) for s, c in zip(sizes, counts))  # type: ignore[arg-type]


def training_phases(
    *, epochs: int, img_size: int, progressive: Sequence[tuple[int, int]] = (), freeze_epochs: int = 0
) -> list[Phase]:
    """Cut ``epochs`` into phases at every progressive stage and where the backbone is unfrozen.

    ``progressive`` is :func:`parse_progressive`'s result (empty: one stage at
    ``img_size``); the backbone is frozen during the first ``freeze_epochs``
    epochs of the run (whatever stage they fall in).
    """
    stages = tuple(progressive) or ((img_size, epochs),)
    if sum(n for _, n in stages) != epochs:
        raise ValueError(
            f"progressive stages must add up to the {epochs} epochs of the run, received {stages}"
        )
    if not 0 <= freeze_epochs <= epochs:
        raise ValueError(f"--freeze_epochs must be in [0, --epochs={epochs}], received {freeze_epochs}")
    stage_starts = [0]
    for _, n in stages:
        stage_starts.append(stage_starts[-1] + n)
    cuts = sorted(set(stage_starts) | ({freeze_epochs} if 0 < freeze_epochs < epochs else set()))
    phases = []
    for first, end in zip(cuts, cuts[1:]):
        stage = max(i for i, start in enumerate(stage_starts[:-1]) if start <= first)
        phases.append(
            Phase(
                index=len(phases),
                first_epoch=first,
                end_epoch=end,
                img_size=stages[stage][0],
                frozen=first < freeze_epochs,
                stage=stage,
            )
        )
    return phases


def phase_of(phases: Sequence[Phase], epoch: int) -> Phase:
    """The phase that holds (0-based) ``epoch``; epochs past the end belong to the last phase."""
    for phase in phases:
        if epoch < phase.end_epoch:
            return phase
    return phases[-1]


def phase_step_boundaries(phases: Sequence[Phase], steps_per_epoch: int) -> tuple[int, ...]:
    """Optimizer steps at which each phase starts, then the run's total: ``(0, ..., total)``."""
    return tuple(p.first_epoch * steps_per_epoch for p in phases) + (phases[-1].end_epoch * steps_per_epoch,)


class PhasedSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A per-step ``onecycle`` or ``cosine`` learning rate that restarts at every phase.

    ``boundaries`` are the steps where phases start followed by the total
    (:func:`phase_step_boundaries`). Within a phase of ``L`` steps, step ``k``
    (from 0) is at ``t = k / L``:

    - ``onecycle`` (fastai's ``fit_one_cycle``): cosine from ``lr / div`` up to
      ``lr`` over the first ``pct_start`` of the phase, then cosine down to
      ``lr / div_final``; the peak ``lr`` is at step ``pct_start * L``;
    - ``cosine``: cosine from ``lr`` down to ``min_lr``.

    Steps past the total stay at the final value.
    """

    def __init__(
        self,
        kind: str,
        *,
        lr: float,
        boundaries: Sequence[int],
        min_lr: float = 0.0,
        pct_start: float = 0.25,
        div: float = 25.0,
        div_final: float = 1e5,
    ) -> None:
        if kind not in ("onecycle", "cosine"):
            raise ValueError(f"schedule must be onecycle or cosine, received {kind!r}")
        bounds = [int(b) for b in boundaries]
        if len(bounds) < 2 or bounds[0] != 0 or any(b <= a for a, b in zip(bounds, bounds[1:])):
            raise ValueError(f"phase boundaries must start at 0 and increase strictly, received {bounds}")
        if not 0 < pct_start < 1:
            raise ValueError(f"--onecycle_pct_start must be in (0, 1), received {pct_start}")
        if div <= 0 or div_final <= 0 or lr <= 0 or min_lr < 0:
            raise ValueError(
                f"learning rates and divisors must be positive (min_lr >= 0), received lr={lr}, "
                f"min_lr={min_lr}, div={div}, div_final={div_final}"
            )
        self.kind = kind
        self.lr = float(lr)
        self.boundaries = tuple(bounds)
        self.min_lr = float(min_lr)
        self.pct_start = float(pct_start)
        self.div = float(div)
        self.div_final = float(div_final)

    def __call__(self, step: Any) -> Any:
        step = ops.cast(step, "float32")
        bounds = ops.convert_to_tensor(self.boundaries, dtype="float32")
        phase = ops.sum(ops.cast(ops.greater_equal(step, bounds[1:-1]), "int32"))
        start = ops.take(bounds, phase)
        length = ops.take(bounds, phase + 1) - start
        t = ops.clip((step - start) / length, 0.0, 1.0)
        if self.kind == "cosine":
            return self.min_lr + (self.lr - self.min_lr) * (1.0 + ops.cos(math.pi * t)) / 2.0
        peak, low, final, pct = self.lr, self.lr / self.div, self.lr / self.div_final, self.pct_start
        up = peak + (low - peak) * (1.0 + ops.cos(math.pi * ops.minimum(t / pct, 1.0))) / 2.0
        down = (
            final + (peak - final) * (1.0 + ops.cos(math.pi * ops.maximum(t - pct, 0.0) / (1.0 - pct))) / 2.0
        )
        return ops.where(ops.less(t, pct), up, down)

    def get_config(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "lr": self.lr,
            "boundaries": list(self.boundaries),
            "min_lr": self.min_lr,
            "pct_start": self.pct_start,
            "div": self.div,
            "div_final": self.div_final,
        }


def backbone_layers(model: keras.Model, num_classes: int = 3) -> list[keras.layers.Layer]:
    """Layers with weights outside the dense head (``dense``, ``dense_1``, ``FC_<n>``)."""
    head = set(head_layer_names(num_classes))
    return [layer for layer in model.layers if layer.weights and layer.name not in head]


def set_backbone_frozen(
    model: keras.Model, frozen: bool, *, train_bn: bool = True, num_classes: int = 3
) -> int:
    """Freeze (or unfreeze) every backbone layer; returns how many layers are frozen.

    With ``train_bn`` (fastai's default) batch normalisation layers stay
    trainable while the rest is frozen: their scale and offset are trained and
    they keep normalising with batch statistics and updating their moving
    averages. Without it they are frozen too, which in Keras also switches them
    to inference mode (moving statistics, no updates). The model's train
    function must be rebuilt afterwards (``make_train_function(force=True)``)
    since the trainable variables are read when it is traced. The optimizer
    must already be built on all variables (see :func:`build_optimizer_on_all`).
    """
    count = 0
    for layer in backbone_layers(model, num_classes):
        keep = not frozen or (train_bn and isinstance(layer, keras.layers.BatchNormalization))
        layer.trainable = keep
        count += not keep
    return count


def build_optimizer_on_all(model: keras.Model) -> None:
    """Create the optimizer's slots for every variable while all layers are trainable.

    A Keras optimizer is built once, on the variables of its first update; one
    first used with a frozen backbone could never update the backbone later.
    """
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


def inner_optimizer(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The optimizer under a mixed-precision ``LossScaleOptimizer`` (or the optimizer itself)."""
    return getattr(optimizer, "inner_optimizer", optimizer)


class DiscriminativeAdam(keras.optimizers.Adam):
    """Adam whose updates of ``slow_variables`` use ``learning_rate * multiplier``.

    Scaling the gradients would not do it: Adam divides each update by the
    running root mean square of the gradient, so a constant gradient factor
    cancels. The factor is applied to the step instead, exactly as a separate
    Adam with a smaller learning rate would (same moments, same amsgrad
    maximum). ``multiplier_active`` switches the factor (off while the backbone
    is frozen, as fastai gave all layer groups one rate then); it is read when
    the train step is traced, so the train function must be rebuilt after
    changing it. One optimizer, one ``iterations`` counter and one set of
    variables: the resume state and the schedules work as with plain Adam.
    """

    def __init__(self, *, slow_variables: Iterable[Any], multiplier: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not multiplier > 0:
            raise ValueError(f"--backbone_lr_mult must be > 0, received {multiplier}")
        self.multiplier = float(multiplier)
        self.multiplier_active = True
        self._slow_keys = {self._var_key(v) for v in slow_variables}

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        if self.multiplier_active and self._var_key(variable) in self._slow_keys:
            learning_rate = learning_rate * self.multiplier
        super().update_step(gradient, variable, learning_rate)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["multiplier"] = self.multiplier
        return config


def flexible_size_model(model: keras.Model) -> keras.Model:
    """The same layers (shared, not copied) behind an input of any height and width.

    A functional model checks its inputs against the size it was built for;
    every layer of a convolutional backbone under global pooling takes any
    size, so a second functional graph over the same layer objects trains at
    each progressive-resizing stage with one set of variables, one optimizer
    and the same checkpoint layout (the layer names are unchanged). The
    original fixed-size model shares the weights and is what gets exported.
    """
    if any(isinstance(layer, keras.layers.Flatten) for layer in model.layers):
        raise ValueError(
            "progressive resizing needs a pooling head (--head avg, max or linear): the flatten head's "
            "dense kernel depends on the image size; received a model with a Flatten layer"
        )
    channels = model.input_shape[-1]
    inputs = keras.Input(shape=(None, None, channels), dtype="float32", name=INPUT_LAYER_NAME)
    return keras.models.clone_model(model, input_tensors=inputs, clone_function=lambda layer: layer)


class PhaseLog(keras.callbacks.Callback):
    """Adds the phase's state to every epoch's logs (CSV log, TensorBoard).

    ``learning_rate`` (with a step ``schedule``: the rate of the epoch's last
    step, as the plateau callback logs the rate the epoch ran with),
    ``img_size`` (progressive runs) and ``backbone_frozen`` (1 during frozen
    epochs, runs with ``--freeze_epochs``). Must come before the CSV logger.
    """

    def __init__(
        self,
        phases: Sequence[Phase],
        *,
        schedule: PhasedSchedule | None = None,
        log_size: bool = False,
        log_frozen: bool = False,
    ) -> None:
        super().__init__()
        self.phases = list(phases)
        self.schedule, self.log_size, self.log_frozen = schedule, log_size, log_frozen

    @property
    def active(self) -> bool:
        """Whether there is anything to log."""
        return self.schedule is not None or self.log_size or self.log_frozen

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is None:
            return
        phase = phase_of(self.phases, epoch)
        if self.schedule is not None:
            last_step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) - 1
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.schedule(max(last_step, 0))))
        if self.log_size:
            logs["img_size"] = phase.img_size
        if self.log_frozen:
            logs["backbone_frozen"] = int(phase.frozen)
