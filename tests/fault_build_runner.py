"""Run ``create_covidx.py`` and kill it at one exact moment (for tests/test_fault_injection_build.py).

    python tests/fault_build_runner.py --kill SPEC [--signal KILL|TERM] -- <create_covidx.py arguments>

The process sends the signal to itself (``os.kill(os.getpid(), sig)``) at the
moment ``SPEC`` names, so the kill lands at the same point on every machine:

``call:MODULE.FUNC:N``
    at the start of the N-th call of ``MODULE.FUNC`` (looked up by name at
    call time, e.g. ``data.build._convert``: before converting the N-th image)
``half-write:N``
    the N-th ``Path.write_bytes`` (how every image, list and report reaches
    its temporary file) writes half its bytes, flushes them, then the kill
``replace:N`` / ``replace:NAME`` / ``replace:NAME:N``
    just before the N-th ``os.replace`` (the rename that publishes a complete
    file), counting all of them or only those whose target is named ``NAME``
``record:N``
    before the N-th record of the TFRecord cache is written (inside a shard)
``files:K``
    from a watcher thread, once K new files have appeared under their final
    names in ``OUT/train`` and ``OUT/test`` (for ``--workers 2``, whose image
    writes happen in the worker processes)

Exit status: create_covidx.py's, or the signal's (-9, or 143 for SIGTERM's clean stop). If the moment
never comes, the run ends normally and the runner prints ``moment not reached``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


FIRED = threading.Event()


def _kill(sig: signal.Signals) -> None:
    FIRED.set()
    sys.stderr.flush()
    os.kill(os.getpid(), sig)
    # SIGKILL never returns; SIGTERM's handler raises in this thread at the next bytecode, i.e. here.
    time.sleep(30)
    raise SystemExit("fault_build_runner: the signal did not stop the run")


def _counting(original: Callable[..., Any], n: int, fire: Callable[..., None],
              match: Callable[..., bool] = lambda *a, **k: True) -> Callable[..., Any]:
    calls = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        if match(*args, **kwargs):
            calls += 1
            if calls == n:
                fire(*args, **kwargs)
        return original(*args, **kwargs)

    return wrapper


def _out_dir(argv: Sequence[str]) -> Path:
    return Path(argv[list(argv).index("--out") + 1])


def _watch_files(out: Path, k: int, sig: signal.Signals) -> None:
    def final_names() -> set[str]:
        names = set()
        for split in ("train", "test"):
            try:
                names.update(f"{split}/{n}" for n in os.listdir(out / split) if not n.startswith("."))
            except OSError:
                pass
        return names

    before = final_names()

    def watch() -> None:
        while len(final_names() - before) < k:
            time.sleep(0.002)
        FIRED.set()
        os.kill(os.getpid(), sig)

    threading.Thread(target=watch, daemon=True).start()


def install(spec: str, sig: signal.Signals, argv: Sequence[str]) -> None:
    """Arm the kill that ``spec`` describes (see the module docstring)."""
    kind, _, rest = spec.partition(":")
    fire = lambda *a, **k: _kill(sig)  # noqa: E731
    if kind == "call":
        target, _, n = rest.rpartition(":")
        module_name, _, func = target.rpartition(".")
        module = importlib.import_module(module_name)
        setattr(module, func, _counting(getattr(module, func), int(n), fire))
    elif kind == "half-write":
        original = pathlib.Path.write_bytes
        calls = 0

        def write_bytes(self: Path, data: bytes) -> int:
            nonlocal calls
            calls += 1
            if calls == int(rest):
                with open(self, "wb") as fh:
                    fh.write(bytes(data)[: len(data) // 2])
                    fh.flush()
                _kill(sig)
            return original(self, data)

        pathlib.Path.write_bytes = write_bytes  # type: ignore[method-assign]
    elif kind == "replace":
        name, _, n = rest.rpartition(":") if ":" in rest else ("", "", rest)
        if not n.isdigit():
            name, n = rest, "1"
        match = (lambda src, dst, *a, **k: Path(dst).name == name) if name else (lambda *a, **k: True)
        os.replace = _counting(os.replace, int(n), fire, match)
    elif kind == "record":
        from tensorflow.python.lib.io import tf_record

        tf_record.TFRecordWriter.write = _counting(tf_record.TFRecordWriter.write, int(rest), fire)
    elif kind == "files":
        _watch_files(_out_dir(argv), int(rest), sig)
    else:
        raise SystemExit(f"fault_build_runner: unknown --kill {spec!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Arm the kill, then run create_covidx.main with the arguments after ``--``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="fault_build_runner.py")
    parser.add_argument("--kill", required=True)
    parser.add_argument("--signal", choices=("KILL", "TERM"), default="KILL")
    args = parser.parse_args(argv[:split])
    build_argv = argv[split + 1:]
    install(args.kill, getattr(signal, f"SIG{args.signal}"), build_argv)
    import create_covidx

    code = create_covidx.main(build_argv)
    if not FIRED.is_set():
        print("moment not reached", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
