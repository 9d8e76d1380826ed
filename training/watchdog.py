"""Stop a multi-worker job whose peer died, instead of waiting forever.

When one worker of a ``MultiWorkerMirroredStrategy`` job is killed (SIGKILL,
out of memory, node lost), the others block inside an all-reduce in
TensorFlow's C++ runtime. ``CommunicationOptions(timeout_seconds=...)`` is set
too, but on the CPU/gRPC collectives of TensorFlow 2.21 it was seen not to fire,
so this watchdog is the guarantee: a thread that notices when no training or
validation step has finished for ``timeout`` seconds, prints one clear line
and ends the process with exit code 1. The time before the first step (graph
building, XLA compilation) and the end-of-epoch saving are not counted.
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


class StallWatchdog(keras.callbacks.Callback):
    """Ends the process after ``timeout`` seconds without a finished step (multi-worker only)."""

    def __init__(self, timeout: float, *, poll: float = 1.0) -> None:
        super().__init__()
        if timeout <= 0:
            raise ValueError(f"watchdog timeout must be > 0 seconds, received {timeout}")
        self.timeout = timeout
        self.poll = poll
        self._last = time.monotonic()
        self._armed = False
        self._seen_step = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _beat(self) -> None:
        self._last = time.monotonic()
        self._armed = True

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            if self._armed and time.monotonic() - self._last > self.timeout:
                sys.stderr.write(
                    f"error: no training step finished for {self.timeout:.0f} s: another worker has stopped "
                    "or lost contact; ending this worker - re-run the job to resume from the last saved epoch\n"
                )
                sys.stderr.flush()
                os._exit(EXIT_STALLED)  # the main thread is stuck in a collective and cannot be interrupted

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="stall-watchdog", daemon=True)
        self._thread.start()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._seen_step:  # from the second epoch on, the next step involves the other workers at once
            self._beat()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._seen_step = True
        self._beat()

    def on_test_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._beat()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        # Saving checkpoints of a 2 GB model may take a while and uses no collective.
        self._armed = False

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._stop.set()
        self._armed = False
