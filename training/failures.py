"""How a training run that stopped is reported: one line, an exit code, and what a re-run does.

:func:`describe_training_failure` turns what :func:`training.trainer.train`
can raise once training has started (a diverged loss, a SIGTERM, a lost
worker, an image TensorFlow cannot decode, a failed write) into a
:class:`Failure`; :func:`describe_evaluation_failure` does the same for the
final test evaluation. ``train_keras.py`` prints the line and exits with the
code.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import tensorflow as tf

from common.cli import EXIT_FAILURE, USER_ERRORS
from training.callbacks import TrainingDiverged
from training.checkpoints import find_resume_state
from training.config import RunConfig
from training.preemption import EXIT_PREEMPTED, TrainingInterrupted
from training.run_data import image_folder

log = logging.getLogger(__name__)

# A worker of a multi-worker run is gone or unreachable.
LOST_WORKER_ERRORS = (
    tf.errors.DeadlineExceededError,
    tf.errors.UnavailableError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
)
# tf.data reports an image it cannot decode without its file name ("Invalid PNG data, size 1030").
INPUT_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.DataLossError)
TRAINING_FAILURES = (TrainingDiverged, TrainingInterrupted, *LOST_WORKER_ERRORS, *INPUT_ERRORS, OSError)


@dataclasses.dataclass(frozen=True)
class Failure:
    """The one line a stopped run prints on stderr and the exit code it ends with."""

    message: str
    exit_code: int


def describe_training_failure(exc: BaseException, *, config: RunConfig) -> Failure | None:
    """The report of ``exc`` (one of :data:`TRAINING_FAILURES`) raised by a run of ``config``.

    None for the errors a user's input causes (``USER_ERRORS``), which the
    script reports as such.
    """
    if isinstance(exc, TrainingDiverged):
        return Failure(f"error: {exc}", EXIT_FAILURE)
    if isinstance(exc, TrainingInterrupted):
        return Failure(f"stopped: {exc}", EXIT_PREEMPTED)
    if isinstance(exc, LOST_WORKER_ERRORS):
        return Failure(
            f"error: lost contact with another worker ({type(exc).__name__}: {op_error_summary(exc)}); the "
            "job stops - re-run it to resume from the last saved epoch",
            EXIT_FAILURE,
        )
    if isinstance(exc, INPUT_ERRORS):
        log.debug("full traceback", exc_info=exc)
        return Failure(
            f"error: training stopped: {input_error(config, exc, during='training')}; "
            f"{saved_state(Path(config.run_dir))}",
            EXIT_FAILURE,
        )
    if isinstance(exc, OSError) and not isinstance(exc, USER_ERRORS):
        log.debug("full traceback", exc_info=exc)
        return Failure(
            f"error: training stopped: writing in {config.run_dir} failed ({exc}); "
            f"{saved_state(Path(config.run_dir))}",
            EXIT_FAILURE,
        )
    return None


def describe_evaluation_failure(exc: BaseException, *, config: RunConfig, final_model: Path) -> Failure:
    """The report of an :data:`INPUT_ERRORS` error raised by the final test evaluation."""
    log.debug("full traceback", exc_info=exc)
    return Failure(
        f"error: the final test evaluation stopped: {input_error(config, exc, during='test')}; "
        f"training is complete ({final_model}): re-run the same command to export and evaluate again",
        EXIT_FAILURE,
    )


def saved_state(run_dir: Path) -> str:
    """What a re-run resumes from, for the message of a stopped run."""
    found = find_resume_state(run_dir / "resume")
    if found is None:
        return "no epoch was completed yet: re-running the same command starts the run over"
    epoch, step = int(found[1]["epoch"]), int(found[1].get("step", 0) or 0)
    where = f"epoch {epoch}" + (f" and step {step} of the next" if step else "")
    return f"the state after {where} is saved in {found[0]}: re-running the same command resumes from there"


def input_error(config: RunConfig, exc: tf.errors.OpError, *, during: str) -> str:
    """Name the images behind a TensorFlow input error by decoding the lists the run reads.

    Decoding every image costs minutes on the full COVIDx lists, so it is only
    paid on this error path (the header check before training finds files cut
    short). ``during``: ``"training"`` (the train and validation lists) or
    ``"test"``.
    """
    from data.pipeline import find_image_problems, load_entries

    summary = op_error_summary(exc)
    if config.cache:
        return (
            f"reading the cache {config.cache} failed ({summary}); check it with --verify_images full "
            "or rebuild it"
        )
    found = []
    for flag, list_file, image_dir in _lists_read(config, during=during):
        entries = load_entries(list_file, image_dir, verify="none", what=flag)
        found += [
            (flag, image_dir / e.filename, reason)
            for e, reason in find_image_problems(entries, image_dir, verify="full")
        ]
    if not found:
        return (
            f"TensorFlow reported {type(exc).__name__}: {summary}, and every image of the lists decodes "
            "(run with -v for the traceback)"
        )
    named = "; ".join(f"{path} ({flag}): {reason}" for flag, path, reason in found[:3])
    more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
    return (
        f"{len(found)} image(s) cannot be decoded: {named}{more}; replace them or remove them from the list"
    )


def _lists_read(config: RunConfig, *, during: str) -> list[tuple[str, str, Path]]:
    """``(flag, list file, image folder)`` of the lists a run reads ``during`` training or the test."""
    if during == "test":
        lists = [("--testfile", config.testfile)]
    else:
        lists = [("--trainfile", config.trainfile)]
        if config.valfile:
            lists.append(("--valfile", config.valfile))
        elif config.val_split == 0:
            lists.append(("--testfile", config.testfile))  # the validation list
    return [(flag, list_file, image_folder(config.data_path, flag)) for flag, list_file in lists]


def op_error_summary(exc: tf.errors.OpError, limit: int = 300) -> str:
    """The informative part of a TensorFlow error: its status line, not "Graph execution error:"."""
    lines = [line.strip() for line in (exc.message or "").splitlines() if line.strip()]
    useful = [
        line
        for line in lines
        if not line.startswith(("Graph execution error", "Detected at node", "File ", "[[", "{{"))
    ]
    return (useful[-1] if useful else lines[0] if lines else type(exc).__name__)[:limit]
