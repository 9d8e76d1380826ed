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

The epochs are trained in phases (:mod:`training.recipes`): one phase for the
baseline, more with ``--progressive`` stages or ``--freeze_epochs``. Each phase
is one ``fit`` call at its image size with its backbone state; which phase an
epoch belongs to follows from the configuration, so a resumed run continues in
the right one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import shutil
import tempfile
from collections.abc import Callable
from itertools import chain
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from common.fsutil import remove_partials
from data.augment import AugmentConfig
from data.cache import open_cache
from data.lists import ListEntry
from data.pipeline import (
    CachedImages,
    FileImages,
    TrainData,
    load_entries,
    make_eval_dataset,
    make_train_dataset,
    patient_split,
)
from models import ModelSpec, build_model_from_spec
from training.callbacks import (
    ResumableReduceLROnPlateau,
    SaveResumeState,
    StopOnNaN,
    truncate_csv_log,
)
from training.checkpoints import (
    EpochCheckpoint,
    find_resume_state,
    list_checkpoints,
    load_weights_file,
    restore_resume_state,
    save_resume_state,
)
from training.config import RUN_CONFIG_NAME, RunConfig, read_run_config, write_run_config
from training.export import export_saved_model, float32_model, write_portable_h5
from training.keras_compat import multiworker_fit
from training.metrics import class_metrics
from training.preemption import PreemptionWatcher, StopOnPreemption
from training.recipes import (
    DiscriminativeAdam,
    Phase,
    PhasedSchedule,
    RecipeLog,
    backbone_layers,
    build_optimizer_on_all,
    flexible_size_model,
    inner_optimizer,
    phase_step_boundaries,
    set_backbone_frozen,
    training_phases,
)
from training.strategy import Distribution
from training.watchdog import StallWatchdog

log = logging.getLogger(__name__)

FINAL_MODEL = "final_model.hdf5"
SAVED_MODEL = "saved_model"
TRAINING_LOG = "training_log.csv"

# SURFsara's schedule: ReduceLROnPlateau(monitor='val_loss', factor=0.7, patience=5,
# min_lr=0.000001, min_delta=1e-2).
PLATEAU = dict(monitor="val_loss", factor=0.7, patience=5, min_lr=1e-6, min_delta=1e-2)


@dataclasses.dataclass
class TrainResult:
    """Where a finished run put its files, and what it saw."""

    run_dir: Path
    final_model: Path
    saved_model: Path
    checkpoints: list[Path]
    initial_epoch: int
    epochs_run: int
    history: dict[str, list[float]]
    test_entries: list[ListEntry]
    test_images: FileImages | CachedImages


@dataclasses.dataclass
class RunData:
    """The three lists a run uses and where their images come from (folders or a cache)."""

    train: list[ListEntry]
    val: list[ListEntry]
    test: list[ListEntry]
    train_images: FileImages | CachedImages
    val_images: FileImages | CachedImages
    test_images: FileImages | CachedImages


def load_run_data(config: RunConfig) -> RunData:
    """Read and check the lists (before any training starts) and carve the validation set.

    With ``config.cache`` the images come from the preprocessed cache, which
    must hold every image of the lists; the original files are not needed.
    ``config.valfile`` names a validation list whose images are in
    ``DATA_PATH/train``; otherwise ``val_split`` carves one out of the train
    list by patient, or (``val_split`` 0) the test list validates, as in SURFsara's script.
    """
    data_path = Path(config.data_path)
    train_dir, test_dir = data_path / "train", data_path / "test"
    # (flag, list file, image folder, cache split); validation images are training data, in train/.
    wanted = [
        ("--trainfile", config.trainfile, train_dir, "train"),
        ("--testfile", config.testfile, test_dir, "test"),
    ]
    if config.valfile:
        wanted.append(("--valfile", config.valfile, train_dir, "val"))
    lists: dict[str, list[ListEntry]] = {}
    images: dict[str, FileImages | CachedImages] = {}
    if not config.cache and not data_path.is_dir():
        raise FileNotFoundError(f"--data_path {data_path} does not exist")
    for flag, list_file, image_dir, split in wanted:
        if config.cache:
            # The lists still decide what is trained on; the cache only replaces the files.
            entries = load_entries(list_file, image_dir, verify="none", what=flag)
            full = config.verify_images == "full"
            images[split] = CachedImages(open_cache(config.cache, split, entries=entries, full_check=full))
        else:
            entries = load_entries(list_file, image_dir, verify=config.verify_images, what=flag)
            images[split] = FileImages(image_dir)
        lists[split] = entries
    train, test = lists["train"], lists["test"]
    train_images, test_images = images["train"], images["test"]
    for other in [s for s in ("test", "val") if s in lists]:
        shared = {e.patient_key for e in train} & {e.patient_key for e in lists[other]}
        if shared:
            log.warning(
                "%d patient ids appear in both the train and the %s list (e.g. %s); "
                "check the lists for leakage",
                len(shared),
                other,
                ", ".join(sorted(shared)[:3]),
            )
    if config.valfile:
        both = {e.filename for e in train} & {e.filename for e in lists["val"]}
        if both:
            raise ValueError(
                f"--valfile {config.valfile} lists {len(both)} images that --trainfile "
                f"{config.trainfile} lists too (e.g. {sorted(both)[0]}): validation would see training images"
            )
        val, val_images = lists["val"], images["val"]
        log.info("validation: %d images of --valfile %s", len(val), config.valfile)
    elif config.val_split > 0:
        train, val = patient_split(train, fraction=config.val_split, seed=config.seed)
        val_images = train_images
        log.info(
            "validation: %d images of %d patients carved from the train list (--val_split %s)",
            len(val),
            len({e.patient_key for e in val}),
            config.val_split,
        )
    else:
        val, val_images = test, test_images
        log.info("validation on the test list (--val_split 0), as SURFsara's script did")
    return RunData(
        train=train,
        val=val,
        test=test,
        train_images=train_images,
        val_images=val_images,
        test_images=test_images,
    )


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
        raise ValueError(f"schedule {config.schedule!r} needs the number of steps per epoch")
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
    and ``cosine`` are :class:`~training.recipes.PhasedSchedule` over the
    run's phases (:func:`make_schedule`), which needs ``steps_per_epoch``. A
    ``backbone_lr_mult`` other than 1 gives
    :class:`~training.recipes.DiscriminativeAdam` over ``model``'s backbone
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


def _remove_leftovers(run_dir: Path) -> int:
    """Delete what killed writers left in ``run_dir`` (and its sub-folders); returns how many."""
    removed = remove_partials(run_dir, recursive=True)
    # Earlier versions exported the SavedModel through .saved_model.partial-<pid> and .saved_model.old.
    for legacy in chain(run_dir.glob(f".{SAVED_MODEL}.partial-*"), run_dir.glob(f".{SAVED_MODEL}.old")):
        shutil.rmtree(legacy, ignore_errors=True)
        removed += 1
    if removed:
        log.info("removed %d unfinished files or folders left in %s by an interrupted run", removed, run_dir)
    return removed


def _prepare_run_dir(run_dir: Path, *, initial_epoch: int, start_over: bool, config: RunConfig) -> None:
    """Remove what a previous, interrupted or abandoned run left beyond ``initial_epoch``.

    A kill after an epoch's checkpoint but before its resume state leaves a
    ``cp-`` file (and a log row) for an epoch that is about to be redone; they
    are removed so the folder never holds two versions of an epoch. Starting
    over (``--resume off``) removes the previous run's checkpoints, log and
    resume state. With no resume state at all (a kill before the first one was
    complete, e.g. a SLURM job preempted in its first epoch), the run starts
    over, removing epoch 1's checkpoint, only when the folder's
    ``run_config.json`` is ``config``'s (no setting that blocks a resume
    differs). A folder without it or with other settings belongs to some other
    run, and checkpoints past epoch 1 mean a deleted resume state: both are
    refused with nothing deleted.
    """
    old = [(epoch, path) for epoch, path in list_checkpoints(run_dir) if epoch > initial_epoch]
    if start_over:
        for _, path in old:
            path.unlink()
        (run_dir / TRAINING_LOG).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "resume", ignore_errors=True)
        if old:
            log.warning("--resume off: removed %d checkpoints of the previous run in %s", len(old), run_dir)
        return
    if old and initial_epoch == 0:
        refusal = f"run folder {run_dir} holds checkpoints ({old[0][1].name}, ...) but no resume state"
        advice = "use another --name or --output, or --resume off to delete them and start over"
        try:
            previous = read_run_config(run_dir)
        except (FileNotFoundError, ValueError):
            raise ValueError(f"{refusal} and no {RUN_CONFIG_NAME} of this run; {advice}") from None
        _check_same_settings(config, previous, run_dir)
        if any(epoch > 1 for epoch, _ in old):
            # A kill before the first resume state leaves epoch 1's checkpoint at most; later ones mean the
            # resume state was deleted, and starting over would silently delete a trained run.
            raise ValueError(
                f"{refusal} (its resume/ folder was removed?), and checkpoints past epoch 1, "
                f"which an interrupted first epoch cannot leave; {advice}"
            )
        log.warning(
            "run folder %s holds %s of this run, which was stopped before its first resume state "
            "was complete: starting the run over",
            run_dir,
            old[0][1].name,
        )
    for epoch, path in old:
        log.info("removing %s: epoch %d is redone after the interruption", path.name, epoch)
        path.unlink()
    truncate_csv_log(run_dir / TRAINING_LOG, keep_epochs=initial_epoch)


def _check_same_settings(config: RunConfig, previous: RunConfig, run_dir: Path) -> None:
    changed = config.changes_blocking_resume(previous)
    if changed:
        details = "; ".join(
            f"{k}: {old!r} -> {new!r}"
            for k, old, new in ((k, v[0], v[1]) for k, v in sorted(changed.items()))
        )
        raise ValueError(
            f"run folder {run_dir} holds a run with different settings ({details}); "
            "re-run with the same flags to resume it, use another --name or --output, "
            "or pass --resume off to start it over"
        )


def _check_resumable(config: RunConfig, run_dir: Path) -> None:
    try:
        previous = read_run_config(run_dir)
    except FileNotFoundError:
        return
    _check_same_settings(config, previous, run_dir)


def _synchronize_batchnorm(model: keras.Model) -> None:
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


def weights_fingerprint(model: keras.Model) -> str:
    """A short hash of all weights: equal on every worker of a correct multi-worker run."""
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def _distributed(distribution: Distribution, make: Callable[..., TrainData], *, global_batch: int):
    """The training dataset as the strategy wants it: plain, or one shard per input pipeline."""
    if distribution.replicas == 1:
        return make().dataset

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return make(
            num_shards=context.num_input_pipelines,
            shard_index=context.input_pipeline_id,
            shard_batch_size=context.get_per_replica_batch_size(global_batch),
        ).dataset

    return distribution.strategy.distribute_datasets_from_function(dataset_fn)


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
    strategy = distribution.strategy
    data = load_run_data(config)
    spec = ModelSpec.from_dict(config.model)
    channels = spec.input_shape[-1]
    phases = run_phases(config)
    policy = "mixed_float16" if config.mixed_precision else "float32"

    def make_train(start_epoch: int, img_size: int, start_step: int = 0, **shard: Any) -> TrainData:
        return make_train_dataset(
            data.train,
            data.train_images,
            img_size=img_size,
            batch_size=config.batch_size,
            channels=channels,
            balance=config.balance,
            covid_per_batch=config.covid_per_batch,
            class_weights=dict(enumerate(config.class_weights)),
            augment=AugmentConfig() if config.augment else None,
            mixup_alpha=config.mixup,
            seed=config.seed,
            start_epoch=start_epoch,
            start_step=start_step,
            steps_per_epoch=steps,
            **shard,
        )

    # The epoch length make_train positions the data with: the configured one, else the plan's natural one.
    steps: int | None = config.steps_per_epoch
    plan = make_train(0, phases[0].img_size)  # also validates the batch make-up before anything runs
    steps = config.steps_per_epoch or plan.steps_per_epoch

    found = find_resume_state(run_dir / "resume") if resume else None
    if found:
        _check_resumable(config, run_dir)
    with strategy.scope():
        model = build_compiled_model(config, dtype_policy=policy, steps_per_epoch=steps)
        if distribution.replicas > 1 and config.sync_batchnorm:
            _synchronize_batchnorm(model)
        initial_epoch, initial_step, plateau_state = 0, 0, None
        if found:
            folder, state = found
            restore_resume_state(model, folder)
            initial_epoch, initial_step = int(state["epoch"]), int(state.get("step", 0))
            plateau_state = state.get("plateau")
            where = f"epoch {initial_epoch}" + (
                f" and step {initial_step} of the next" if initial_step else ""
            )
            log.info(
                "resuming %s after %s (learning rate %.3g)",
                run_dir,
                where,
                float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)),
            )
        if config.freeze_epochs:
            build_optimizer_on_all(model)
    if distribution.is_chief:
        run_dir.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(run_dir)
        _prepare_run_dir(run_dir, initial_epoch=initial_epoch, start_over=not resume, config=config)
        write_run_config(config, run_dir)

    val_sets: dict[int, tf.data.Dataset] = {}

    def val_dataset(img_size: int) -> tf.data.Dataset:
        if img_size not in val_sets:
            val_ds = make_eval_dataset(
                data.val, data.val_images, img_size=img_size, batch_size=config.batch_size, channels=channels
            )
            if distribution.num_workers > 1:
                # Each worker validates its share of the batches (not of the files: they are not sharded by
                # file).
                options = tf.data.Options()
                options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
                val_ds = val_ds.with_options(options)
            val_sets[img_size] = val_ds
        return val_sets[img_size]

    log.info(
        "train: %d images, %d steps of %d per epoch (%d COVID-19 per batch, %d replicas); validation: %d "
        "images",
        len(data.train),
        steps,
        config.batch_size,
        plan.covid_per_batch,
        distribution.replicas,
        len(data.val),
    )
    if len(phases) > 1:
        log.info("phases: %s", "; ".join(_describe_phase(p) for p in phases))

    plateau = None
    if config.schedule == "plateau":
        plateau = ResumableReduceLROnPlateau(
            **dict(PLATEAU, min_lr=config.min_lr), verbose=1, initial_state=plateau_state
        )
    resume_out = out_dir / "resume"

    def schedule_state() -> dict[str, Any] | None:
        return plateau.get_state() if plateau is not None else None

    def save_state(*, epoch: int, step: int = 0) -> None:
        save_resume_state(
            resume_out, model=model, epoch=epoch, state={"plateau": schedule_state(), "step": step}
        )

    callbacks: list[keras.callbacks.Callback] = [StopOnNaN()]
    if distribution.num_workers > 1:
        callbacks.insert(0, StallWatchdog(config.collective_timeout))
    stopper = None
    if preemption is not None:
        stopper = StopOnPreemption(
            preemption,
            save_fn=save_state,
            strategy=strategy,
            collective=distribution.num_workers > 1,
            steps_offset=initial_step,
        )
        callbacks.append(stopper)
    if plateau is not None:
        callbacks.append(plateau)
    recipe_log = RecipeLog(
        phases,
        schedule=make_schedule(config, steps_per_epoch=steps),
        log_size=bool(config.progressive),
        log_frozen=config.freeze_epochs > 0,
    )
    if recipe_log.active:
        callbacks.append(recipe_log)  # before the CSV log, which writes what it adds
    callbacks += [
        keras.callbacks.CSVLogger(str(out_dir / TRAINING_LOG), append=True),
        keras.callbacks.TensorBoard(log_dir=str(out_dir / "logs"), profile_batch=0),
        EpochCheckpoint(
            out_dir,
            # A non-chief worker's copies go to a scratch folder that is removed at the end: keeping
            # one bounds its disk use (each is ~2.1 GB for the baseline at 512 px).
            keep=config.keep_checkpoints if distribution.is_chief else 1,
            full_model=config.full_checkpoints,
            export_fn=lambda m, path: write_portable_h5(float32_model(m, _rebuild(spec)), path),
        ),
        SaveResumeState(resume_out, state_fn=lambda: {"plateau": schedule_state(), "step": 0}),
    ]

    history: dict[str, list[float]] = {}

    def fit(
        first_epoch: int, last_epoch: int, steps_per_epoch: int, img_size: int, start_step: int = 0
    ) -> None:
        dataset = _distributed(
            distribution,
            functools.partial(make_train, first_epoch, img_size, start_step),
            global_batch=config.batch_size,
        )
        patch = (
            multiworker_fit(model, strategy)
            if distribution.kind == "multiworker"
            else contextlib.nullcontext()
        )
        with patch:
            result = model.fit(
                dataset,
                steps_per_epoch=steps_per_epoch,
                epochs=last_epoch,
                initial_epoch=first_epoch,
                validation_data=val_dataset(img_size),
                callbacks=callbacks,
                shuffle=False,  # the tf.data pipeline shuffles
                verbose=verbose,
            )
        for key, values in result.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        if plateau is not None:
            # Keras resets the plateau counters at every fit; the next fit continues them.
            plateau.set_initial_state(plateau.get_state())

    def enter(phase: Phase) -> None:
        """Set the backbone state of ``phase`` (a function of the phase alone, so resuming finds it)."""
        if config.freeze_epochs:
            set_backbone_frozen(model, phase.frozen, train_bn=config.train_bn, num_classes=spec.num_classes)
        optimizer = inner_optimizer(model.optimizer)
        if isinstance(optimizer, DiscriminativeAdam):
            # fastai gave every layer group the same rate while the body was frozen.
            optimizer.multiplier_active = not phase.frozen
        if len(phases) > 1 or config.freeze_epochs or isinstance(optimizer, DiscriminativeAdam):
            # The trainable variables and the multiplier are read when the step is traced.
            model.make_train_function(force=True)
        if len(phases) > 1:
            log.info("phase %d of %d: %s", phase.index + 1, len(phases), _describe_phase(phase))

    if initial_epoch >= config.epochs:
        log.info(
            "run %s already completed %d of %d epochs; exporting only", run_dir, initial_epoch, config.epochs
        )
    else:
        epoch, step = initial_epoch, initial_step
        for phase in phases:
            if phase.end_epoch <= epoch:
                continue
            enter(phase)
            if step:
                # Finish the interrupted epoch with the steps it had left, on the batches from `step` on,
                # then go on normally. (A stop at an epoch's last step is saved as the next epoch's start.)
                fit(epoch, epoch + 1, max(1, steps - step), phase.img_size, start_step=step)
                step = 0
                if stopper is not None:
                    stopper.steps_offset = 0
                epoch += 1
            if epoch < phase.end_epoch:
                fit(epoch, phase.end_epoch, steps, phase.img_size)
            epoch = phase.end_epoch

    final = float32_model(model, _rebuild(spec))
    log.info(
        "final weights fingerprint (worker %d): %s", distribution.worker_index, weights_fingerprint(final)
    )
    final_path = out_dir / FINAL_MODEL
    saved_model = out_dir / SAVED_MODEL
    write_portable_h5(final, final_path)
    export_saved_model(final, saved_model)
    return TrainResult(
        run_dir=run_dir,
        final_model=run_dir / FINAL_MODEL,
        saved_model=run_dir / SAVED_MODEL,
        checkpoints=[p for _, p in list_checkpoints(run_dir)],
        initial_epoch=initial_epoch,
        epochs_run=max(0, config.epochs - initial_epoch),
        history=history,
        test_entries=data.test,
        test_images=data.test_images,
    )


def _describe_phase(phase: Phase) -> str:
    epochs = (
        f"epoch {phase.end_epoch}"
        if phase.epochs == 1
        else f"epochs {phase.first_epoch + 1}-{phase.end_epoch}"
    )
    return f"{epochs} at {phase.img_size} px, backbone {'frozen' if phase.frozen else 'trainable'}"


def _rebuild(spec: ModelSpec):
    def rebuild(*, dtype_policy: str) -> keras.Model:
        return build_model_from_spec(spec, weights=None, dtype_policy=dtype_policy)

    return rebuild
