#!/usr/bin/env python3
"""Run ``train_keras.main``, signalling itself at one exact moment (for tests/test_fault_injection_train.py).

Usage::

    python tests/fault_train_runner.py --fault MODULE:ATTR:WHEN:N:SIGNAL [--fired FILE] -- TRAIN_KERAS_ARGS...

``MODULE:ATTR`` names a function or a method (``keras.callbacks:CSVLogger.on_epoch_end``); at its
``N``-th call in this process the runner sends ``SIGNAL`` (``KILL`` or ``TERM``) to itself ``before``
or ``after`` the call. Functions are patched in their module and in every loaded module that imported
them by name, so ``from training.checkpoints import save_resume_state`` is caught too. Just before
the signal, one line ``MODULE:ATTR:WHEN:N:SIGNAL`` is appended to ``FILE`` (and synced), so the test
knows the moment was reached; SIGKILL leaves no other chance to say so.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM}


def _resolve(spec: str) -> tuple[Any, str, Any]:
    """``(owner, attribute name, original)`` of ``module:attr`` or ``module:Class.method``."""
    module_name, _, dotted = spec.partition(":")
    owner: Any = importlib.import_module(module_name)
    *parents, name = dotted.split(".")
    for part in parents:
        owner = getattr(owner, part)
    return owner, name, getattr(owner, name)  # on a class: the plain function, wherever in the MRO


def _patch(spec: str, make_wrapper: Any) -> Any:
    """Replace ``spec`` by ``make_wrapper(original)`` everywhere it is reachable; returns an undo function.

    Functions are replaced in their module and in every loaded module that imported them by name, so
    ``from training.checkpoints import save_resume_state`` is caught too.
    """
    owner, name, original = _resolve(spec)
    wrapper = functools.wraps(original)(make_wrapper(original))
    replaced = [(owner, name)]
    setattr(owner, name, wrapper)
    if not isinstance(owner, type):
        for module in list(sys.modules.values()):
            for attr, value in list(getattr(module, "__dict__", {}).items()):
                if value is original:
                    setattr(module, attr, wrapper)
                    replaced.append((module, attr))

    def undo() -> None:
        for where, attr in replaced:
            setattr(where, attr, original)

    return undo


def install_fault(spec: str, when: str, nth: int, signame: str, fired: Path | None) -> None:
    """Patch ``spec`` so that its ``nth`` call sends ``signame`` to this process ``when`` (before/after)."""
    calls = 0
    tag = f"{spec}:{when}:{nth}:{signame}"

    def fire() -> None:
        if fired is not None:
            with open(fired, "a") as fh:
                fh.write(tag + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        os.kill(os.getpid(), SIGNALS[signame])

    def make_wrapper(original: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == nth and when == "before":
                fire()
            result = original(*args, **kwargs)
            if calls == nth and when == "after":
                fire()
            return result

        return wrapper

    _patch(spec, make_wrapper)


def count_calls(specs: list[str], counts: dict[str, int]) -> Any:
    """Count the calls of every ``spec`` into ``counts`` (patched as faults are); returns an undo function.

    The test runs an uninterrupted run this way to prove that every fault it may choose is a function
    the run really calls, as often as the fault's call number needs.
    """
    undos = []
    for spec in specs:
        counts[spec] = 0

        def make_wrapper(original: Any, spec: str = spec) -> Any:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                counts[spec] += 1
                return original(*args, **kwargs)

            return wrapper

        undos.append(_patch(spec, make_wrapper))

    def undo() -> None:
        for step in reversed(undos):
            step()

    return undo


def main(argv: list[str] | None = None) -> int:
    """Install the fault, then run train_keras.main on the remaining arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="fault_train_runner.py")
    parser.add_argument("--fault", default="", help="MODULE:ATTR:WHEN:N:SIGNAL")
    parser.add_argument("--fired", default="", help="file to append the fault's tag to when it fires")
    args = parser.parse_args(argv[:split])
    if args.fault:
        module, attr, when, nth, signame = args.fault.split(":")
        if when not in ("before", "after") or signame not in SIGNALS:
            parser.error(f"--fault needs WHEN before/after and SIGNAL KILL/TERM, received {args.fault}")
        install_fault(f"{module}:{attr}", when, int(nth), signame, Path(args.fired) if args.fired else None)
    import train_keras

    return train_keras.main(argv[split + 1:])


if __name__ == "__main__":
    raise SystemExit(main())
