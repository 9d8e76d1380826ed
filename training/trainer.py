"""One training run: data, model, fit with resumable checkpoints, export.

:func:`train` is what ``train_keras.py`` calls once it has resolved a
:class:`~training.config.RunConfig`. Everything it writes lives in
``config.run_dir``:

- ``run_config.json`` - the resolved configuration (rebuilds the architecture);
- ``cp-{epoch:02d}-{val_loss:.2f}.hdf5`` - weights after each epoch (SURFsara's names);
- ``training_log.csv`` - one row per epoch (loss, accuracy, per-class sensitivity/PPV, lr);
- ``logs/`` - TensorBoard;
- ``resume/`` - model + optimizer + schedule state of the last completed epoch;
- ``final_model.hdf5`` and ``saved_model/`` - the final float32 model.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from common.fsutil import remove_partials
from data.augment import AugmentConfig
from data.lists import ListEntry
from data.cache import open_cache
from data.pipeline import (
    CachedImages,
    FileImages,
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
)
from training.config import RunConfig, read_run_config, write_run_config
from training.export import export_saved_model, float32_model, write_portable_h5
from training.metrics import class_metrics

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
    must hold every image of both lists; the original files are not needed.
    """
    data_path = Path(config.data_path)
    train_dir, test_dir = data_path / "train", data_path / "test"
    if config.cache:
        # The lists still decide what is trained on; the cache only replaces the files.
        train = load_entries(config.trainfile, train_dir, verify="none", what="--trainfile")
        test = load_entries(config.testfile, test_dir, verify="none", what="--testfile")
        full = config.verify_images == "full"
        train_images = CachedImages(open_cache(config.cache, "train", entries=train, full_check=full))
        test_images = CachedImages(open_cache(config.cache, "test", entries=test, full_check=full))
    else:
        if not data_path.is_dir():
            raise FileNotFoundError(f"--data_path {data_path} does not exist")
        train = load_entries(config.trainfile, train_dir, verify=config.verify_images, what="--trainfile")
        test = load_entries(config.testfile, test_dir, verify=config.verify_images, what="--testfile")
        train_images, test_images = FileImages(train_dir), FileImages(test_dir)
    shared = {e.patient_key for e in train} & {e.patient_key for e in test}
    if shared:
        log.warning(
            "%d patient ids appear in both the train and the test list (e.g. %s); "
            "check the lists for leakage", len(shared), ", ".join(sorted(shared)[:3]),
        )
    if config.val_split > 0:
        train, val = patient_split(train, fraction=config.val_split, seed=config.seed)
        val_images = train_images
        log.info("validation: %d images of %d patients carved from the train list (--val_split %s)",
                 len(val), len({e.patient_key for e in val}), config.val_split)
    else:
        val, val_images = test, test_images
        log.info("validation on the test list (--val_split 0), as SURFsara's script did")
    return RunData(train=train, val=val, test=test, train_images=train_images, val_images=val_images,
                   test_images=test_images)


def build_compiled_model(config: RunConfig, *, dtype_policy: str) -> keras.Model:
    """Build the registry model of ``config`` and compile it as SURFsara did (Adam with amsgrad)."""
    spec = ModelSpec.from_dict(config.model)
    weights = None if config.weights.lower() == "none" else config.weights
    model = build_model_from_spec(spec, weights=weights, dtype_policy=dtype_policy)
    if config.checkpoint:
        load_weights_file(model, config.checkpoint)
        log.info("initial weights loaded from --checkpoint %s", config.checkpoint)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=config.lr, amsgrad=True),
        loss=keras.losses.CategoricalCrossentropy(),
        metrics=class_metrics(),
        jit_compile=config.xla,
    )
    return model


def _prepare_run_dir(run_dir: Path, *, initial_epoch: int, start_over: bool) -> None:
    """Remove what a previous, interrupted or abandoned run left beyond ``initial_epoch``.

    A kill after an epoch's checkpoint but before its resume state leaves a
    ``cp-`` file (and a log row) for an epoch that is about to be redone; they
    are removed so the folder never holds two versions of an epoch. Starting
    over (``--resume off``) removes the previous run's checkpoints, log and
    resume state. Checkpoints with no resume state at all are not deleted
    silently: that folder belongs to some other run.
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
        raise ValueError(
            f"run folder {run_dir} holds checkpoints ({old[0][1].name}, ...) but no resume state; "
            "use another --name or --output, or --resume off to delete them and start over"
        )
    for epoch, path in old:
        log.info("removing %s: epoch %d is redone after the interruption", path.name, epoch)
        path.unlink()
    truncate_csv_log(run_dir / TRAINING_LOG, keep_epochs=initial_epoch)


def _check_resumable(config: RunConfig, run_dir: Path) -> None:
    try:
        previous = read_run_config(run_dir)
    except FileNotFoundError:
        return
    changed = config.changes_blocking_resume(previous)
    if changed:
        details = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in
                            ((k, v[0], v[1]) for k, v in sorted(changed.items())))
        raise ValueError(
            f"run folder {run_dir} holds a run with different settings ({details}); "
            "re-run with the same flags to resume it, use another --name or --output, "
            "or pass --resume off to start it over"
        )


def train(
    config: RunConfig,
    *,
    strategy: tf.distribute.Strategy,
    resume: bool = True,
    is_chief: bool = True,
    verbose: int | str = "auto",
) -> TrainResult:
    """Run (or resume) the training described by ``config`` and export the final model.

    ``resume`` continues from the resume state in the run folder when there is
    one (after checking that the settings match); ``resume=False`` starts over,
    overwriting the previous run's files. Raises ``ValueError`` /
    ``FileNotFoundError`` for bad input before any training starts, and
    :class:`training.callbacks.TrainingDiverged` if the loss becomes NaN.
    """
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_partials(run_dir)
    resume_dir = run_dir / "resume"
    data = load_run_data(config)
    spec = ModelSpec.from_dict(config.model)
    channels = spec.input_shape[-1]
    img_size = spec.input_shape[0]
    policy = "mixed_float16" if config.mixed_precision else "float32"

    found = find_resume_state(resume_dir) if resume else None
    if found:
        _check_resumable(config, run_dir)
    with strategy.scope():
        model = build_compiled_model(config, dtype_policy=policy)
        initial_epoch, plateau_state = 0, None
        if found:
            folder, state = found
            restore_resume_state(model, folder)
            initial_epoch = int(state["epoch"])
            plateau_state = state.get("plateau")
            log.info("resuming %s after epoch %d (learning rate %.3g)", run_dir, initial_epoch,
                     float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))
    if is_chief:
        _prepare_run_dir(run_dir, initial_epoch=initial_epoch, start_over=not resume)
        write_run_config(config, run_dir)

    train_data = make_train_dataset(
        data.train,
        data.train_images,
        img_size=img_size,
        batch_size=config.batch_size,
        channels=channels,
        balance=config.balance,
        covid_per_batch=config.covid_per_batch,
        class_weights=dict(enumerate(config.class_weights)),
        augment=AugmentConfig() if config.augment else None,
        seed=config.seed,
        start_epoch=initial_epoch,
    )
    steps = config.steps_per_epoch or train_data.steps_per_epoch
    val_ds = make_eval_dataset(data.val, data.val_images, img_size=img_size, batch_size=config.batch_size,
                               channels=channels)
    log.info(
        "train: %d images, %d steps of %d per epoch (%d COVID-19 per batch); validation: %d images",
        len(data.train), steps, config.batch_size, train_data.covid_per_batch, len(data.val),
    )

    plateau = ResumableReduceLROnPlateau(**PLATEAU, verbose=1, initial_state=plateau_state)

    def state() -> dict[str, Any]:
        return {"plateau": plateau.get_state()}

    checkpointer = EpochCheckpoint(
        run_dir,
        keep=config.keep_checkpoints,
        full_model=config.full_checkpoints,
        export_fn=lambda m, path: write_portable_h5(float32_model(m, _rebuild(spec)), path),
        enabled=is_chief,
    )
    callbacks = [
        StopOnNaN(),
        plateau,
        keras.callbacks.CSVLogger(str(run_dir / TRAINING_LOG), append=True),
        keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs"), profile_batch=0),
        checkpointer,
        SaveResumeState(resume_dir, state_fn=state, enabled=is_chief),
    ]

    history: dict[str, list[float]] = {}
    if initial_epoch >= config.epochs:
        log.info("run %s already completed %d of %d epochs; exporting only", run_dir, initial_epoch, config.epochs)
    else:
        fit = model.fit(
            train_data.dataset,
            steps_per_epoch=steps,
            epochs=config.epochs,
            initial_epoch=initial_epoch,
            validation_data=val_ds,
            callbacks=callbacks,
            shuffle=False,  # the tf.data pipeline shuffles
            verbose=verbose,
        )
        history = {k: [float(v) for v in vals] for k, vals in fit.history.items()}

    final = float32_model(model, _rebuild(spec))
    final_path = run_dir / FINAL_MODEL
    saved_model = run_dir / SAVED_MODEL
    if is_chief:
        write_portable_h5(final, final_path)
        export_saved_model(final, saved_model)
    return TrainResult(
        run_dir=run_dir,
        final_model=final_path,
        saved_model=saved_model,
        checkpoints=[p for _, p in list_checkpoints(run_dir)],
        initial_epoch=initial_epoch,
        epochs_run=max(0, config.epochs - initial_epoch),
        history=history,
        test_entries=data.test,
        test_images=data.test_images,
    )


def _rebuild(spec: ModelSpec):
    def rebuild(*, dtype_policy: str) -> keras.Model:
        return build_model_from_spec(spec, weights=None, dtype_policy=dtype_policy)

    return rebuild
