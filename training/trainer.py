"""One training run: data, model, fit with resumable checkpoints, export.

:func:`train` is what ``train_keras.py`` calls once it has resolved a
:class:`~training.config.RunConfig`. Everything it writes lives in
``config.run_dir``:

- ``run_config.json`` - the resolved configuration (rebuilds the architecture);
- ``cp-{epoch:02d}-{val_loss:.2f}.hdf5`` - weights after each epoch (SURFsara's names);
- ``training_log.csv`` - one row per epoch (loss, accuracy, per-class sensitivity/PPV, lr);
- ``logs/`` - TensorBoard;
- ``resume/`` - model + optimizer + schedule state of the last completed epoch
  (or of the step a SIGTERM stopped at);
- ``final_model.hdf5`` and ``saved_model/`` - the final float32 model.

A run killed at any moment and re-run with the same command continues from
its last complete resume state, or starts over when it had none yet (the
folder's ``run_config.json`` must then be this run's); what the kill left
(hidden ``.partial-*`` files and folders, checkpoints and log rows of epochs
past the resume state) is removed first. The training data, augmentation and
mixup are a function of the position in the run (``data.pipeline``), so the
resumed run trains on the batches the uninterrupted one would have, from the
step it stopped at.

The epochs are trained in phases (:mod:`training.phases`): one phase for the
baseline, more with ``--progressive`` stages or ``--freeze_epochs``. Each phase
is one ``fit`` call at its image size with its backbone state; which phase an
epoch belongs to follows from the configuration, so a resumed run continues in
the right one.

:func:`train`'s steps, in order: the data (:mod:`training.run_data`), the
model and the state it resumes from (:func:`build_and_restore`), the run
folder (:mod:`training.run_folder`), the callbacks (:func:`make_callbacks`),
the phase loop (:class:`PhaseLoop`) and the export (:func:`export_final_model`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import keras
import numpy as np

from data.lists import ListEntry
from data.pipeline import ImageSource
from models import ModelSpec, build_model_from_spec
from training.callbacks import ResumableReduceLROnPlateau, SaveResumeState, StopOnNaN
from training.checkpoints import (
    EpochCheckpoint,
    find_resume_state,
    list_checkpoints,
    restore_resume_state,
    save_resume_state,
)
from training.config import RunConfig, write_run_config
from training.export import export_saved_model, float32_model, write_portable_h5
from training.keras_compat import multiworker_fit
from training.model import build_compiled_model, make_schedule, run_phases, synchronize_batchnorm
from training.phases import (
    DiscriminativeAdam,
    Phase,
    PhaseLog,
    build_optimizer_on_all,
    inner_optimizer,
    set_backbone_frozen,
)
from training.preemption import PreemptionWatcher, StopOnPreemption
from training.run_data import RunData, TrainBatches, ValidationSets, load_run_data
from training.run_folder import (
    FINAL_MODEL,
    SAVED_MODEL,
    TRAINING_LOG,
    check_resumable,
    prepare_run_dir,
    remove_leftovers,
)
from training.strategy import Distribution
from training.watchdog import StallWatchdog

log = logging.getLogger(__name__)

# SURFsara's schedule: ReduceLROnPlateau(monitor='val_loss', factor=0.7, patience=5,
# min_lr=0.000001, min_delta=1e-2).
PLATEAU = dict(monitor="val_loss", factor=0.7, patience=5, min_lr=1e-6, min_delta=1e-2)

History = dict[str, list[float]]


@dataclasses.dataclass
class TrainResult:
    """Where a finished run put its files, and what it saw."""

    run_dir: Path
    final_model: Path
    saved_model: Path
    checkpoints: list[Path]
    initial_epoch: int
    epochs_run: int
    history: History
    test_entries: list[ListEntry]
    test_images: ImageSource


@dataclasses.dataclass(frozen=True)
class RunStart:
    """Where a run starts: after ``epoch`` completed epochs and ``step`` steps of the next one, with the
    plateau schedule's saved counters (None: a fresh run, or a schedule without counters)."""

    epoch: int = 0
    step: int = 0
    plateau: dict[str, Any] | None = None

    def describe(self) -> str:
        """``epoch 3`` or ``epoch 3 and step 5 of the next``."""
        return f"epoch {self.epoch}" + (f" and step {self.step} of the next" if self.step else "")


def train(
    config: RunConfig,
    *,
    distribution: Distribution,
    resume: bool = True,
    preemption: PreemptionWatcher | None = None,
    verbose: int | str = "auto",
) -> TrainResult:
    """Run (or resume) the training described by ``config`` and export the final model.

    ``resume`` continues from the resume state in the run folder when there is
    one (after checking that the settings match), at the epoch and step where
    it stopped; ``resume=False`` starts over, removing the previous run's
    files. Only the chief writes into the run folder; other workers write the
    same files into a scratch folder that is removed at the end (the run folder
    must be on a file system all workers see, to resume).

    Raises ``ValueError`` / ``FileNotFoundError`` for bad input before any
    training starts, :class:`training.callbacks.TrainingDiverged` if the loss
    becomes NaN and :class:`training.preemption.TrainingInterrupted` after a
    SIGTERM (the state of that step saved).
    """
    run_dir = Path(config.run_dir)
    is_chief = distribution.is_chief
    if is_chief:
        # Created only once the input is checked and the model built (_train), so that bad input
        # never leaves an empty run folder behind.
        out_dir = run_dir
    else:
        out_dir = Path(tempfile.mkdtemp(prefix=f"covidx-worker{distribution.worker_index}-"))
    try:
        return _train(
            config,
            distribution=distribution,
            run_dir=run_dir,
            out_dir=out_dir,
            resume=resume,
            preemption=preemption,
            verbose=verbose,
        )
    finally:
        if not is_chief:
            shutil.rmtree(out_dir, ignore_errors=True)


def _train(
    config: RunConfig,
    *,
    distribution: Distribution,
    run_dir: Path,
    out_dir: Path,
    resume: bool,
    preemption: PreemptionWatcher | None,
    verbose: int | str,
) -> TrainResult:
    """:func:`train`'s steps, writing into ``out_dir`` (the run folder on the chief)."""
    data = load_run_data(
        data_path=config.data_path,
        trainfile=config.trainfile,
        testfile=config.testfile,
        valfile=config.valfile,
        val_split=config.val_split,
        seed=config.seed,
        cache=config.cache,
        verify_images=config.verify_images,
        fingerprints=config.fingerprints,
    )
    spec = ModelSpec.from_dict(config.model)
    phases = run_phases(config)
    batches, plan = train_batches(config, data, channels=spec.input_shape[-1]).planned(
        img_size=phases[0].img_size
    )
    steps = int(batches.steps_per_epoch or 0)
    found = find_resume_state(run_dir / "resume") if resume else None
    if found:
        check_resumable(config, run_dir)
    model, start = build_and_restore(config, distribution=distribution, steps_per_epoch=steps, found=found)
    if distribution.is_chief:
        _open_run_dir(run_dir, config=config, start=start, start_over=not resume)
    log.info(
        "train: %d images, %d steps of %d per epoch (%d COVID-19 per batch, %d replicas); validation: %d "
        "images",
        len(data.train), steps, config.batch_size, plan.covid_per_batch, distribution.replicas, len(data.val),
    )
    if len(phases) > 1:
        log.info("phases: %s", "; ".join(p.describe() for p in phases))
    callbacks = make_callbacks(
        config, model=model, spec=spec, distribution=distribution, out_dir=out_dir, start=start,
        phases=phases, steps_per_epoch=steps, preemption=preemption,
    )
    loop = PhaseLoop(
        model,
        distribution=distribution,
        batches=batches,
        validation=ValidationSets(
            data.val, data.val_images, batch_size=config.batch_size, channels=spec.input_shape[-1],
            shard_batches=distribution.num_workers > 1, resize=config.resize,
        ),
        callbacks=callbacks,
        phases=phases,
        freeze_backbone=config.freeze_epochs > 0,
        train_bn=config.train_bn,
        num_classes=spec.num_classes,
        verbose=verbose,
    )
    history: History = {}
    if start.epoch >= config.epochs:
        log.info("run %s already completed %d of %d epochs; exporting only",
                 run_dir, start.epoch, config.epochs)
    else:
        history = loop.run(start)
    export_final_model(model, spec=spec, out_dir=out_dir, worker_index=distribution.worker_index,
                       resize=config.resize)
    return TrainResult(
        run_dir=run_dir,
        final_model=run_dir / FINAL_MODEL,
        saved_model=run_dir / SAVED_MODEL,
        checkpoints=[p for _, p in list_checkpoints(run_dir)],
        initial_epoch=start.epoch,
        epochs_run=max(0, config.epochs - start.epoch),
        history=history,
        test_entries=data.test,
        test_images=data.test_images,
    )


def train_batches(config: RunConfig, data: RunData, *, channels: int) -> TrainBatches:
    """The training batches of ``config``'s run over ``data``, with the recorded augmentation."""
    return TrainBatches(
        entries=data.train,
        images=data.train_images,
        batch_size=config.batch_size,
        channels=channels,
        balance=config.balance,
        covid_per_batch=config.covid_per_batch,
        class_weights=config.class_weights,
        augment=config.augmentation,
        mixup=config.mixup,
        seed=config.seed,
        steps_per_epoch=config.steps_per_epoch,
        resize=config.resize,
    )


def build_and_restore(
    config: RunConfig,
    *,
    distribution: Distribution,
    steps_per_epoch: int,
    found: tuple[Path, dict[str, Any]] | None,
) -> tuple[keras.Model, RunStart]:
    """The compiled model in the strategy's scope, with the resume state ``found`` restored into it."""
    policy = "mixed_float16" if config.mixed_precision else "float32"
    with distribution.strategy.scope():
        model = build_compiled_model(config, dtype_policy=policy, steps_per_epoch=steps_per_epoch)
        if distribution.replicas > 1 and config.sync_batchnorm:
            synchronize_batchnorm(model)
        start = RunStart()
        if found:
            folder, state = found
            restore_resume_state(model, folder)
            start = RunStart(
                epoch=int(state["epoch"]), step=int(state.get("step", 0)), plateau=state.get("plateau")
            )
            log.info(
                "resuming %s after %s (learning rate %.3g)",
                config.run_dir,
                start.describe(),
                float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)),
            )
        if config.freeze_epochs:
            build_optimizer_on_all(model)
    return model, start


def _open_run_dir(run_dir: Path, *, config: RunConfig, start: RunStart, start_over: bool) -> None:
    """Create the run folder, clear what earlier runs left past ``start`` and record the configuration."""
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_leftovers(run_dir)
    prepare_run_dir(run_dir, initial_epoch=start.epoch, start_over=start_over, config=config)
    write_run_config(config, run_dir)


@dataclasses.dataclass(frozen=True)
class ResumeStateWriter:
    """Saves a run's resume state: model and optimizer variables, the step, the plateau counters."""

    folder: Path
    model: keras.Model
    plateau: ResumableReduceLROnPlateau | None

    def state(self, step: int = 0) -> dict[str, Any]:
        """The callback state saved beside the variables."""
        return {"plateau": self.plateau.get_state() if self.plateau is not None else None, "step": step}

    def save(self, *, epoch: int, step: int = 0) -> None:
        """Save the state after ``epoch`` completed epochs and ``step`` steps of the next."""
        save_resume_state(self.folder, model=self.model, epoch=epoch, state=self.state(step))


@dataclasses.dataclass
class RunCallbacks:
    """A run's Keras callbacks in the order they must run, and the two the phase loop steers."""

    callbacks: list[keras.callbacks.Callback]
    plateau: ResumableReduceLROnPlateau | None
    stopper: StopOnPreemption | None

    def after_fit(self) -> None:
        """Keras resets the plateau counters at every fit; the next fit continues them."""
        if self.plateau is not None:
            self.plateau.set_initial_state(self.plateau.get_state())

    def after_interrupted_epoch(self) -> None:
        """The epoch a stop interrupted is complete: later epochs count their steps from 0."""
        if self.stopper is not None:
            self.stopper.steps_offset = 0


def make_callbacks(
    config: RunConfig,
    *,
    model: keras.Model,
    spec: ModelSpec,
    distribution: Distribution,
    out_dir: Path,
    start: RunStart,
    phases: list[Phase],
    steps_per_epoch: int,
    preemption: PreemptionWatcher | None,
) -> RunCallbacks:
    """The run's callbacks; the order matters (the resume state last, the phase log before the CSV log)."""
    plateau = None
    if config.schedule == "plateau":
        plateau = ResumableReduceLROnPlateau(
            **dict(PLATEAU, min_lr=config.min_lr), verbose=1, initial_state=start.plateau
        )
    writer = ResumeStateWriter(out_dir / "resume", model, plateau)
    callbacks: list[keras.callbacks.Callback] = [StopOnNaN()]
    if distribution.num_workers > 1:
        callbacks.insert(0, StallWatchdog(config.collective_timeout))
    stopper = None
    if preemption is not None:
        stopper = StopOnPreemption(
            preemption,
            save_fn=writer.save,
            strategy=distribution.strategy,
            collective=distribution.num_workers > 1,
            steps_offset=start.step,
        )
        callbacks.append(stopper)
    if plateau is not None:
        callbacks.append(plateau)
    phase_log = PhaseLog(
        phases,
        schedule=make_schedule(config, steps_per_epoch=steps_per_epoch),
        log_size=bool(config.progressive),
        log_frozen=config.freeze_epochs > 0,
    )
    if phase_log.active:
        callbacks.append(phase_log)  # before the CSV log, which writes what it adds
    callbacks += [
        keras.callbacks.CSVLogger(str(out_dir / TRAINING_LOG), append=True),
        keras.callbacks.TensorBoard(log_dir=str(out_dir / "logs"), profile_batch=0),
        EpochCheckpoint(
            out_dir,
            # A non-chief worker's copies go to a scratch folder that is removed at the end: keeping
            # one bounds its disk use (each is ~2.1 GB for the baseline at 512 px).
            keep=config.keep_checkpoints if distribution.is_chief else 1,
            full_model=config.full_checkpoints,
            export_fn=functools.partial(_export_model_file, spec=spec),
        ),
        SaveResumeState(writer.folder, state_fn=writer.state),
    ]
    return RunCallbacks(callbacks=callbacks, plateau=plateau, stopper=stopper)


class PhaseLoop:
    """Trains a run's phases from where it starts: one ``fit`` per phase at the phase's image size and
    backbone state, plus one for the rest of an epoch that a stop interrupted."""

    def __init__(
        self,
        model: keras.Model,
        *,
        distribution: Distribution,
        batches: TrainBatches,
        validation: ValidationSets,
        callbacks: RunCallbacks,
        phases: list[Phase],
        freeze_backbone: bool,
        train_bn: bool,
        num_classes: int,
        verbose: int | str,
    ) -> None:
        """``freeze_backbone``: the run freezes the backbone in some phases (``--freeze_epochs``)."""
        self.model, self.distribution = model, distribution
        self.batches, self.validation, self.callbacks = batches, validation, callbacks
        self.phases = phases
        self.freeze_backbone, self.train_bn, self.num_classes = freeze_backbone, train_bn, num_classes
        self.verbose = verbose

    def run(self, start: RunStart) -> History:
        """Train every epoch from ``start`` on; returns the fits' history, one value per epoch trained."""
        history: History = {}
        steps = int(self.batches.steps_per_epoch or 0)
        epoch, step = start.epoch, start.step
        for phase in self.phases:
            if phase.end_epoch <= epoch:
                continue
            self._enter(phase)
            if step:
                # Finish the interrupted epoch with the steps it had left, on the batches from `step` on,
                # then go on normally. (A stop at an epoch's last step is saved as the next epoch's start.)
                _extend(history, self._fit(phase, epoch, epoch + 1, max(1, steps - step), start_step=step))
                self.callbacks.after_interrupted_epoch()
                step = 0
                epoch += 1
            if epoch < phase.end_epoch:
                _extend(history, self._fit(phase, epoch, phase.end_epoch, steps))
            epoch = phase.end_epoch
        return history

    def _enter(self, phase: Phase) -> None:
        """Set the backbone state of ``phase`` (a function of the phase alone, so resuming finds it)."""
        if self.freeze_backbone:
            set_backbone_frozen(
                self.model, phase.frozen, train_bn=self.train_bn, num_classes=self.num_classes
            )
        optimizer = inner_optimizer(self.model.optimizer)
        discriminative = isinstance(optimizer, DiscriminativeAdam)
        if discriminative:
            # fastai gave every layer group the same rate while the body was frozen.
            optimizer.multiplier_active = not phase.frozen
        if len(self.phases) > 1 or self.freeze_backbone or discriminative:
            # The trainable variables and the multiplier are read when the step is traced.
            self.model.make_train_function(force=True)
        if len(self.phases) > 1:
            log.info("phase %d of %d: %s", phase.index + 1, len(self.phases), phase.describe())

    def _fit(
        self, phase: Phase, first_epoch: int, last_epoch: int, steps: int, start_step: int = 0
    ) -> History:
        """One ``fit`` over epochs ``[first_epoch, last_epoch)`` of ``phase``; returns its history."""
        dataset = self.batches.for_fit(
            self.distribution, img_size=phase.img_size, start_epoch=first_epoch, start_step=start_step
        )
        patch = (
            multiworker_fit(self.model, self.distribution.strategy)
            if self.distribution.kind == "multiworker"
            else contextlib.nullcontext()
        )
        with patch:
            result = self.model.fit(
                dataset,
                steps_per_epoch=steps,
                epochs=last_epoch,
                initial_epoch=first_epoch,
                validation_data=self.validation.at(phase.img_size),
                callbacks=self.callbacks.callbacks,
                shuffle=False,  # the tf.data pipeline shuffles
                verbose=self.verbose,
            )
        self.callbacks.after_fit()
        return {key: [float(v) for v in values] for key, values in result.history.items()}


def _extend(history: History, more: History) -> None:
    for key, values in more.items():
        history.setdefault(key, []).extend(values)


def weights_fingerprint(model: keras.Model) -> str:
    """A short hash of all weights: equal on every worker of a correct multi-worker run."""
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def _float32_copy(model: keras.Model, *, spec: ModelSpec) -> keras.Model:
    """``model``'s weights in a float32 model rebuilt from ``spec`` (what every exported file holds)."""
    return float32_model(model, functools.partial(build_model_from_spec, spec, weights=None))


def _export_model_file(model: keras.Model, path: Path, *, spec: ModelSpec) -> None:
    """A training model as a portable float32 HDF5 model file (full-model checkpoints)."""
    write_portable_h5(_float32_copy(model, spec=spec), path)


def export_final_model(
    model: keras.Model, *, spec: ModelSpec, out_dir: Path, worker_index: int, resize: str = "baseline"
) -> None:
    """Write the float32 copy of ``model`` as ``final_model.hdf5`` and ``saved_model/`` into ``out_dir``.

    ``resize`` is the run's resize method, which the SavedModel's bytes signature applies.
    """
    final = _float32_copy(model, spec=spec)
    log.info("final weights fingerprint (worker %d): %s", worker_index, weights_fingerprint(final))
    write_portable_h5(final, out_dir / FINAL_MODEL)
    export_saved_model(final, out_dir / SAVED_MODEL, resize=resize)
