"""Command-line plumbing shared by the top-level scripts.

Library code raises ``ValueError``/``FileNotFoundError`` (or ``UsageError``)
with a message naming the argument or file, what is allowed and what was
received. The scripts wrap their ``main`` with :func:`handle_errors`, which
turns those into one ``error: ...`` line on stderr and a non-zero exit code
instead of a traceback.
"""
from __future__ import annotations

import argparse
import functools
import logging
import sys
from typing import Callable, Sequence

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1  # the job ran but produced nothing usable
EXIT_USAGE = 2  # bad arguments or input, detected before any work
EXIT_INTERRUPTED = 130


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
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


def handle_errors(main: Callable[[Sequence[str] | None], int]) -> Callable[[Sequence[str] | None], int]:
    """Decorate a script's ``main(argv) -> int`` to report user errors in one line."""

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv)
        except USER_ERRORS as exc:
            log.debug("full traceback", exc_info=True)
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED

    return wrapper


def setup_logging(verbose: int = 0) -> None:
    """Configure root logging for a command-line run (never called on import)."""
    level = logging.DEBUG if verbose > 0 else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
