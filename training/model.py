"""The model a run trains: the registry model of its spec, compiled with the run's optimizer.

- :func:`run_phases`: the phases of a run (:mod:`training.phases`);
- :func:`make_schedule` / :func:`make_optimizer`: SURFsara's Adam (amsgrad)
  with the run's learning-rate schedule and backbone multiplier;
- :func:`build_compiled_model`: the model, its initial weights and the compile;
- :func:`synchronize_batchnorm`: batch statistics over the global batch.
"""
from __future__ import annotations

import logging

import keras

from models import ModelSpec, build_model_from_spec
from training.checkpoints import load_weights_file
from training.config import RunConfig
from training.metrics import class_metrics
from training.phases import (
    DiscriminativeAdam,
    Phase,
    PhasedSchedule,
    backbone_layers,
    flexible_size_model,
    phase_step_boundaries,
    training_phases,
)

log = logging.getLogger(__name__)


def run_phases(config: RunConfig) -> list[Phase]:
    """The phases of ``config``'s run (one for the baseline)."""
    return training_phases(
        epochs=config.epochs,
        img_size=int(config.model["input_shape"][0]),
        progressive=config.progressive,
        freeze_epochs=config.freeze_epochs,
    )


def make_schedule(config: RunConfig, *, steps_per_epoch: int | None) -> PhasedSchedule | None:
    """The per-step schedule of ``config`` over its phases, or None for ``plateau``."""
    if config.schedule == "plateau":
        return None
    if not steps_per_epoch:
        raise ValueError(
            f"schedule {config.schedule!r} needs the number of steps per epoch, received {steps_per_epoch}"
        )
    return PhasedSchedule(
        config.schedule,
        lr=config.lr,
        boundaries=phase_step_boundaries(run_phases(config), steps_per_epoch),
        min_lr=config.min_lr,
        pct_start=config.onecycle_pct_start,
        div=config.onecycle_div,
        div_final=config.onecycle_div_final,
    )


def make_optimizer(
    config: RunConfig, model: keras.Model, *, steps_per_epoch: int | None = None
) -> keras.optimizers.Optimizer:
    """SURFsara's Adam (amsgrad) with the run's learning-rate schedule and backbone multiplier.

    ``plateau`` keeps a plain rate that the plateau callback lowers; ``onecycle``
    and ``cosine`` are :class:`~training.phases.PhasedSchedule` over the
    run's phases (:func:`make_schedule`), which needs ``steps_per_epoch``. A
    ``backbone_lr_mult`` other than 1 gives
    :class:`~training.phases.DiscriminativeAdam` over ``model``'s backbone
    variables.
    """
    schedule = make_schedule(config, steps_per_epoch=steps_per_epoch)
    learning_rate: float | PhasedSchedule = config.lr if schedule is None else schedule
    if config.backbone_lr_mult != 1.0:
        num_classes = int(config.model.get("num_classes", 3))
        slow = [v for layer in backbone_layers(model, num_classes) for v in layer.trainable_weights]
        return DiscriminativeAdam(
            slow_variables=slow, multiplier=config.backbone_lr_mult, learning_rate=learning_rate, amsgrad=True
        )
    return keras.optimizers.Adam(learning_rate=learning_rate, amsgrad=True)


def build_compiled_model(
    config: RunConfig, *, dtype_policy: str, steps_per_epoch: int | None = None
) -> keras.Model:
    """Build the registry model of ``config`` and compile it as SURFsara did (Adam with amsgrad).

    With ``config.progressive`` the returned model is the flexible-size view
    of the registry model (same layers, any input size). The loss is
    categorical cross-entropy with ``config.label_smoothing``. See
    :func:`make_optimizer` for ``steps_per_epoch``.
    """
    spec = ModelSpec.from_dict(config.model)
    weights = None if config.weights.lower() == "none" else config.weights
    model = build_model_from_spec(spec, weights=weights, dtype_policy=dtype_policy)
    if config.checkpoint:
        try:
            load_weights_file(model, config.checkpoint)
        except ValueError as exc:
            raise ValueError(f"--checkpoint: {exc}") from None
        log.info("initial weights loaded from --checkpoint %s", config.checkpoint)
    if config.progressive:
        model = flexible_size_model(model)
    model.compile(
        optimizer=make_optimizer(config, model, steps_per_epoch=steps_per_epoch),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=class_metrics(),
        jit_compile=config.xla,
    )
    return model


def synchronize_batchnorm(model: keras.Model) -> None:
    """Batch statistics over the global batch, not each replica's share.

    With several replicas, each BatchNormalization layer otherwise normalises
    with its replica's own statistics and updates its moving averages from
    them, so the workers' moving averages drift apart and the run differs from
    a single-GPU run with the same batch. ``synchronized`` is read at call
    time, so setting it before the first step is enough; exported models are
    rebuilt from the spec and do not carry it.
    """
    count = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
            count += 1
    log.info("synchronized batch normalisation across replicas in %d layers", count)

