"""Keras callbacks that make a run stop clearly and resume exactly."""
from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

from common.fsutil import atomic_write_text
from training.checkpoints import save_resume_state


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; no checkpoint of the diverged weights was written."""


class StopOnNaN(keras.callbacks.Callback):
    """Raise :class:`TrainingDiverged` as soon as the training loss is not finite.

    Raising (rather than setting ``stop_training``) skips the end-of-epoch
    callbacks, so no checkpoint or resume state is ever written from diverged
    weights; the last good epoch stays the one a re-run resumes from.
    """

    def __init__(self) -> None:
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDiverged(
                f"training loss became {float(loss)} at epoch {self._epoch + 1}, batch {batch + 1}; "
                "lower --lr, or check the inputs (a corrupt image, wrong scaling); "
                "re-running resumes from the last completed epoch"
            )


class ResumableReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau whose counters survive a resume.

    Keras resets ``wait``/``best``/``cooldown_counter`` when training starts;
    after a resume they are set back to the saved values so the plateau
    schedule continues as if the run had never stopped.
    """

    def __init__(self, *args: Any, initial_state: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._initial_state = initial_state

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_begin(logs)
        if self._initial_state:
            self.wait = int(self._initial_state["wait"])
            self.cooldown_counter = int(self._initial_state["cooldown_counter"])
            best = self._initial_state.get("best")
            self.best = float(best) if best is not None else self.best

    def set_initial_state(self, state: dict[str, Any] | None) -> None:
        """The counters to restore at the next ``fit`` (used between two fits of one run)."""
        self._initial_state = state

    def get_state(self) -> dict[str, Any]:
        """The counters to save with the resume state."""
        best = None if self.best is None else float(self.best)
        if best is not None and not math.isfinite(best):
            best = None
        return {"wait": int(self.wait), "cooldown_counter": int(self.cooldown_counter), "best": best}


class SaveResumeState(keras.callbacks.Callback):
    """After each epoch, save model, optimizer and callback state for an exact resume.

    Must come last in the callback list, after the learning-rate schedule and
    the logs, so the saved state is the state at the end of the epoch.
    """

    def __init__(self, resume_dir: str | os.PathLike[str], *, state_fn: Callable[[], dict[str, Any]]) -> None:
        super().__init__()
        self.resume_dir = Path(resume_dir)
        self.state_fn = state_fn

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        save_resume_state(self.resume_dir, model=self.model, epoch=epoch + 1, state=self.state_fn())


def truncate_csv_log(path: str | os.PathLike[str], *, keep_epochs: int) -> None:
    """Keep only the rows of the first ``keep_epochs`` epochs in a CSVLogger file.

    A run killed after the log row of an epoch was written but before its
    resume state was saved repeats that epoch; without this the log would hold
    the epoch twice.
    """
    path = Path(path)
    if not path.is_file():
        return
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    if "epoch" not in header:
        return
    col = header.index("epoch")
    kept = [r for r in body if len(r) == len(header) and r[col].isdigit() and int(r[col]) < keep_epochs]
    if len(kept) == len(body):
        return
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(kept)
    atomic_write_text(path, out.getvalue())
