"""Stopping cleanly on SIGTERM, the signal SLURM sends before a time limit or a preemption.

``train_keras.py`` installs a :class:`PreemptionWatcher` (a signal handler that
only sets a flag). The :class:`StopOnPreemption` callback looks at the flag
after every training step. With several workers they must stop at the same
step (a worker that stops alone leaves the others waiting in an all-reduce), so
the flag is combined across workers with a small collective sum each step.
When a stop is agreed, every worker saves the resume state of the step it
reached (the chief into the run folder, the others into their scratch folders)
and the callback raises :class:`TrainingInterrupted`, which skips the rest of
the epoch (no validation, no end-of-epoch checkpoint of a partial epoch).
Re-running the same command continues from that step.

A stop requested at the last step of an epoch waits for that epoch's end
(validation, checkpoint, resume state: seconds) and is raised as the next
epoch begins: a state "all steps of epoch E done, E not ended" would make the
re-run either train a step the uninterrupted run never trained or skip the
epoch's validation and checkpoint.
"""
from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

log = logging.getLogger(__name__)

EXIT_PREEMPTED = (
    128 + signal.SIGTERM
)  # 143: what a SIGTERM-killed process reports; the sbatch scripts requeue on it


class TrainingInterrupted(RuntimeError):
    """Training stopped on request (SIGTERM); the resume state of the stop was saved."""

    def __init__(self, message: str, *, epoch: int, step: int) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step


class PreemptionWatcher:
    """A SIGTERM handler that records the request instead of killing the process."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        log.warning("%s received: stopping after the current step and saving the state", self.signal_name)

    def install(self, signals: tuple[int, ...] = (signal.SIGTERM,)) -> PreemptionWatcher:
        """Install the handler (main thread only); returns self."""
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        """Restore the handlers that were there before :meth:`install`."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def flag_reducer(strategy: tf.distribute.Strategy) -> Callable[[bool], bool]:
    """A compiled ``flag -> any worker has it set`` (a collective sum; every worker must call it)."""

    @tf.function
    def total(value: tf.Tensor) -> tf.Tensor:
        return strategy.reduce(
            tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(value)), axis=None
        )

    return lambda flag: float(total(tf.constant(1.0 if flag else 0.0))) > 0


class StopOnPreemption(keras.callbacks.Callback):
    """Saves the state and raises :class:`TrainingInterrupted` once a stop is requested.

    ``save_fn(epoch=completed_epochs, step=steps_done_in_next_epoch)`` writes
    the resume state. ``collective`` makes every worker agree on the step (set
    it for multi-worker runs).
    """

    def __init__(
        self,
        watcher: PreemptionWatcher,
        *,
        save_fn: Callable[..., Any],
        strategy: tf.distribute.Strategy | None = None,
        collective: bool = False,
        steps_offset: int = 0,
    ) -> None:
        super().__init__()
        self.watcher = watcher
        self.save_fn = save_fn
        self.strategy = strategy
        self.collective = collective
        self.steps_offset = steps_offset  # steps already done in the first epoch (mid-epoch resume)
        self._epoch = 0
        self._first_epoch: int | None = None
        self._stop_at_epoch_begin = False  # a stop agreed at an epoch's last step, raised once it has ended
        self._any_worker = flag_reducer(strategy) if collective and strategy is not None else None

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch
        if self._first_epoch is None:
            self._first_epoch = epoch
        if self._stop_at_epoch_begin:
            # Every worker agreed on this stop at the same step, so they all raise here together.
            self._stop_at_epoch_begin = False
            raise TrainingInterrupted(
                f"stopped by {self.watcher.signal_name or 'a stop request'} after epoch {epoch}; its state "
                "was saved: re-run the same command to continue from there",
                epoch=epoch,
                step=0,
            )

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        requested = self.watcher.requested
        if self._any_worker is not None:
            requested = self._any_worker(requested)
        if not requested:
            return
        steps = (self.params or {}).get("steps")
        if steps and batch + 1 >= steps:
            self._stop_at_epoch_begin = True  # the epoch's end saves its state; stop when the next one begins
            return
        step = batch + 1 + (self.steps_offset if self._epoch == self._first_epoch else 0)
        self.save_fn(epoch=self._epoch, step=step)
        raise TrainingInterrupted(
            f"stopped by {self.watcher.signal_name or 'a stop request'} in epoch {self._epoch + 1} after "
            "step "
            f"{step}; the state was saved: re-run the same command to continue from there",
            epoch=self._epoch,
            step=step,
        )
