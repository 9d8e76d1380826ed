"""Stop a multi-worker job whose peer died, instead of waiting forever.

When one worker of a ``MultiWorkerMirroredStrategy`` job is killed (SIGKILL,
out of memory, node lost), the others block inside an all-reduce in
TensorFlow's C++ runtime. TensorFlow's coordination service often notices the
lost peer itself (its heartbeats time out and the collectives fail with
``UnavailableError``), but not always, and no collective timeout is set (the
per-collective ``CommunicationOptions(timeout_seconds=...)`` starts a timer
thread for every collective and is documented as debug-only). This watchdog is
the guarantee: a thread that notices when no training or validation step has
finished in time, prints one clear line and ends the process with exit code 1.

Deadlines:

- from the start of ``fit`` to the first training step, and from the start of
  the first validation run of a ``fit`` to its first step, the **first-step
  allowance** ``max(timeout, 900 s)``: these include tracing the step function
  (and XLA compilation) and the first contact between the workers;
- between steps, and from the start of an epoch to its first step,
  ``timeout``;
- from the end of an epoch to the start of the next: none (the
  end-of-epoch checkpoint of a 2 GB model may take a while and uses no
  collective).

A re-run of the job resumes from the last completed epoch.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import keras

EXIT_STALLED = 1
FIRST_STEP_ALLOWANCE = 900.0  # seconds: at least this long for a first step (tracing, XLA, first contact)


class StallWatchdog(keras.callbacks.Callback):
    """Ends the process when no step finishes in time (multi-worker only).

    ``timeout``: seconds allowed between steps. ``first_step_timeout``: seconds
    allowed for the first training step of a ``fit`` and the first validation
    step of a ``fit``; default ``max(timeout, FIRST_STEP_ALLOWANCE)``.
    """

    def __init__(self, timeout: float, *, first_step_timeout: float | None = None, poll: float = 1.0) -> None:
        super().__init__()
        if timeout <= 0:
            raise ValueError(f"watchdog timeout must be > 0 seconds, received {timeout}")
        if first_step_timeout is None:
            first_step_timeout = max(timeout, FIRST_STEP_ALLOWANCE)
        if first_step_timeout <= 0:
            raise ValueError(f"watchdog first_step_timeout must be > 0 seconds, "
                             f"received {first_step_timeout}")
        self.timeout = float(timeout)
        self.first_step_timeout = float(first_step_timeout)
        self.poll = poll
        self._lock = threading.Lock()
        self._deadline: float | None = None  # monotonic time; None: disarmed
        self._waiting_for = ""
        self._seen_train_step = False
        self._seen_test_step = False
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def _arm(self, seconds: float, waiting_for: str) -> None:
        with self._lock:
            self._deadline = time.monotonic() + seconds
            self._waiting_for = waiting_for

    def _disarm(self) -> None:
        with self._lock:
            self._deadline = None

    def stall_message(self, now: float | None = None) -> str:
        """The error line when the deadline has passed at ``now`` (monotonic), else ``""``."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if self._deadline is None or now <= self._deadline:
                return ""
            waiting_for = self._waiting_for
        return (f"error: {waiting_for}: another worker has stopped or lost contact; ending this worker "
                "- re-run the job to resume from the last saved epoch")

    def _watch(self, stop: threading.Event) -> None:
        while not stop.wait(self.poll):
            message = self.stall_message()
            if message:
                sys.stderr.write(message + "\n")
                sys.stderr.flush()
                os._exit(EXIT_STALLED)  # the main thread is stuck in a collective and cannot be interrupted

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        # Every fit traces its functions again (a new phase may change the image size).
        self._seen_train_step = self._seen_test_step = False
        self._arm(self.first_step_timeout, f"the first training step did not finish within "
                                           f"{self.first_step_timeout:.0f} s of the start of training")
        if self._thread is None or not self._thread.is_alive():
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._watch, args=(self._stop,), name="stall-watchdog",
                                            daemon=True)
            self._thread.start()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._seen_train_step:  # else the first-step allowance of on_train_begin still runs
            self._arm(self.timeout, f"no training step finished within {self.timeout:.0f} s of the start of "
                                    f"epoch {epoch + 1}")

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._seen_train_step = True
        self._arm(self.timeout, f"no training step finished for {self.timeout:.0f} s")

    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self._seen_test_step:
            self._arm(self.timeout, f"no validation step finished for {self.timeout:.0f} s")
        else:
            self._arm(self.first_step_timeout, f"the first validation step did not finish within "
                                               f"{self.first_step_timeout:.0f} s")

    def on_test_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._seen_test_step = True
        self._arm(self.timeout, f"no validation step finished for {self.timeout:.0f} s")

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        # Saving checkpoints of a 2 GB model may take a while and uses no collective.
        self._disarm()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._disarm()
        if self._stop is not None:
            self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, 2 * self.poll))
            self._thread = None
