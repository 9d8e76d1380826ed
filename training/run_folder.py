"""The run folder: what a run finds in it, what it removes, and when it refuses to touch it.

A run's files (training/trainer.py lists them) live in ``config.run_dir``.
Before a run writes anything there, :func:`remove_leftovers` deletes what
killed writers left, and :func:`prepare_run_dir` removes what a previous,
interrupted or abandoned run left beyond the epoch the run starts from, or
refuses the folder when it belongs to another run.
"""
from __future__ import annotations

import logging
import shutil
from itertools import chain
from pathlib import Path

from common.fsutil import remove_partials
from training.callbacks import truncate_csv_log
from training.checkpoints import list_checkpoints
from training.config import RUN_CONFIG_NAME, RunConfig, read_run_config

log = logging.getLogger(__name__)

FINAL_MODEL = "final_model.hdf5"
SAVED_MODEL = "saved_model"
TRAINING_LOG = "training_log.csv"


def remove_leftovers(run_dir: Path) -> int:
    """Delete what killed writers left in ``run_dir`` (and its sub-folders); returns how many."""
    removed = remove_partials(run_dir, recursive=True)
    # Earlier versions exported the SavedModel through .saved_model.partial-<pid> and .saved_model.old.
    for legacy in chain(run_dir.glob(f".{SAVED_MODEL}.partial-*"), run_dir.glob(f".{SAVED_MODEL}.old")):
        shutil.rmtree(legacy, ignore_errors=True)
        removed += 1
    if removed:
        log.info("removed %d unfinished files or folders left in %s by an interrupted run", removed, run_dir)
    return removed


def prepare_run_dir(run_dir: Path, *, initial_epoch: int, start_over: bool, config: RunConfig) -> None:
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
        check_same_settings(config, previous, run_dir)
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


def check_same_settings(config: RunConfig, previous: RunConfig, run_dir: Path) -> None:
    """Refuse to continue ``previous`` (the folder's run) with settings that change what it means."""
    changed = config.changes_blocking_resume(previous)
    if changed:
        details = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(changed.items()))
        raise ValueError(
            f"run folder {run_dir} holds a run with different settings (recorded -> received: {details}); "
            "re-run with the same flags to resume it, use another --name or --output, "
            "or pass --resume off to start it over"
        )


def check_resumable(config: RunConfig, run_dir: Path) -> None:
    """:func:`check_same_settings` against the folder's ``run_config.json``, when it has one."""
    try:
        previous = read_run_config(run_dir)
    except FileNotFoundError:
        return
    check_same_settings(config, previous, run_dir)
