"""Command-line plumbing shared by the top-level scripts.

Library code raises ``ValueError``/``FileNotFoundError`` (or ``UsageError``)
with a message naming the argument or file, what is allowed and what was
received. The scripts wrap their ``main`` with :func:`handle_errors`, which
turns those into one ``error: ...`` line on stderr and a non-zero exit code
instead of a traceback.

Exit codes of every script (``EXIT_*``): 0 done; 1 the job ran but failed
(e.g. an I/O error part-way, a diverged training); 2 bad arguments or input,
found before any result was written; 130 interrupted (Ctrl-C); 143 stopped on
SIGTERM (preemption or time limit) after saving the resume state, which the
sbatch scripts requeue on.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1  # the job ran but produced nothing usable
EXIT_USAGE = 2  # bad arguments or input, detected before any work
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
# 143: what a SIGTERM-killed process reports; the sbatch scripts requeue on it.
EXIT_PREEMPTED = 128 + int(signal.SIGTERM)


class UsageError(ValueError):
    """Bad command-line input; the message is shown to the user as is."""


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults in --help and keeps the description's line breaks."""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, received {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, received {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0 (NaN refused)."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, received {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0 (NaN and infinity refused)."""
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, received {text}")
    return value


USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


def error_message(exc: BaseException) -> str:
    """One line for ``error: ...``: the message, or ``PATH: reason`` for an operating-system error.

    ``str()`` of an ``OSError`` raised by the system reads ``[Errno 17] File
    exists: 'out'``; the path first and the reason after is what the user
    needs. Line breaks (some libraries put them in messages) become spaces so
    the report stays one line.
    """
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        where = str(exc.filename) if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        text = f"{where}: {exc.strerror}"
    elif isinstance(exc, OSError) and exc.strerror and exc.errno is not None:
        text = exc.strerror  # e.g. a full disk while writing through an open file: no path to name
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(exc).__name__


def handle_errors(main: Callable[[Sequence[str] | None], int]) -> Callable[[Sequence[str] | None], int]:
    """Decorate a script's ``main(argv) -> int`` to report errors about the user's input in one line.

    :data:`USER_ERRORS` (bad arguments, missing or wrong paths) exit with
    :data:`EXIT_USAGE`. Any other ``OSError`` (a full disk, an I/O error on
    one of the user's files) is also one line, with :data:`EXIT_FAILURE`: the
    input was acceptable but the job could not finish. ``-v`` logs the full
    traceback.
    """

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv)
        except USER_ERRORS as exc:
            log.debug("full traceback", exc_info=True)
            print(f"error: {error_message(exc)}", file=sys.stderr)
            return EXIT_USAGE
        except OSError as exc:
            log.debug("full traceback", exc_info=True)
            print(f"error: {error_message(exc)}", file=sys.stderr)
            return EXIT_FAILURE
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED

    return wrapper


def check_output_dir(path: str | os.PathLike[str], *, flag: str) -> Path:
    """``path`` as a folder results can be written to (created later when missing); else a one-line error.

    Called before any work, so a run never fails at its last step with a
    traceback because ``flag`` names a file. Raises ``NotADirectoryError`` when
    ``path`` or one of its parents is a file, ``PermissionError`` when the
    nearest existing folder is not writable.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(
            f"{flag} {path}: exists and is a file, not a folder; give a folder (it is created when missing), "
            f"received the file {path}"
        )
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise NotADirectoryError(
            f"{flag} {path}: cannot create the folder, {existing} is a file; give a folder path"
        )
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {path}: cannot write in {existing} (permission denied)")
    return path


def setup_logging(verbose: int = 0) -> None:
    """Configure root logging for a command-line run (never called on import)."""
    level = logging.DEBUG if verbose > 0 else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
