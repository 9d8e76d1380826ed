"""train_keras.py survives a kill at any moment: killed and re-run with the same command, it ends the
same run.

The README promises that a run killed any way at any moment continues from its last completed
state when the same command is run again. ``test_kills_at_seeded_moments_end_in_the_uninterrupted_run``
proves it instead of sampling it: a seeded choice of exact moments spread over a whole run
(``MOMENTS``: inside the first epoch, between a checkpoint and its resume state, inside the resume
state save, inside the final HDF5 write and the SavedModel export, inside the final test
evaluation), each hit with SIGKILL or SIGTERM through ``tests/fault_train_runner.py``, which patches
the function of that moment to signal its own process at its N-th call. The moments are chained -
run, killed at moment 1; the same command, killed at moment 2; ...; the same command, completes - so
each moment costs one process start. After every kill nothing under a final name is half-written
and the resume state never goes backwards; at the end the run folder is complete and its weights,
checkpoints and test metrics are bit-identical to those of an uninterrupted run with the same seed
(on a CPU; see data/pipeline.py for what is deterministic where). ``FAULT_INJECTION_SEED`` picks
other moments.

The fast tests below check the resume state's own kill and failure safety in-process.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

import train_keras
from conftest import REPO_ROOT, log_epochs
from training.checkpoints import LATEST, find_resume_state, list_checkpoints, save_resume_state
from training.preemption import EXIT_PREEMPTED

RUNNER = REPO_ROOT / "tests" / "fault_train_runner.py"
EPOCHS = 3
STEPS = 9  # tiny_covidx: 39 training images after --val_split 0.1, 26 of them non-COVID, 3 per batch
TIMEOUT = 240

# (target, when, call number or (lowest, highest), signals) per stage of a run, in the order a run meets
# them. Call numbers count calls in the killed process; every chosen call is one the process reaches.
FIRST_EPOCH = [
    ("training.callbacks:StopOnNaN.on_train_batch_end", "before", (1, STEPS - 1), ("KILL", "TERM")),
    # SIGTERM at the epoch's last step: the stop waits for the epoch's end (validation, checkpoint, state).
    ("training.callbacks:StopOnNaN.on_train_batch_end", "before", STEPS, ("TERM",)),
    ("keras.callbacks:CSVLogger.on_epoch_end", "after", 1, ("KILL",)),
    # The case: cp-01 written, no resume state yet.
    ("training.checkpoints:write_weights_hdf5", "after", 1, ("KILL",)),
]
CHECKPOINT_TO_STATE = [  # an epoch's end: log row, then checkpoint, then resume state
    ("keras.callbacks:CSVLogger.on_epoch_end", "after", 1, ("KILL",)),
    ("training.checkpoints:write_weights_hdf5", "after", 1, ("KILL",)),
    ("training.checkpoints:save_resume_state", "before", 1, ("KILL", "TERM")),
]
STATE_SAVE = [  # inside save_resume_state
    ("keras:Model.save_weights", "before", 1, ("TERM",)),
    ("keras:Model.save_weights", "after", 1, ("KILL",)),  # the new state half-written
    ("training.checkpoints:_write_state", "after", 1, ("KILL",)),  # complete, not yet under its name
    ("training.checkpoints:_point_latest", "before", 1, ("KILL",)),  # new and old state side by side
    ("training.checkpoints:_point_latest", "after", 1, ("KILL",)),  # LATEST moved, the old not yet deleted
]
FINAL_MODEL = [
    ("keras:Model.save", "after", 1, ("KILL",)),  # inside write_portable_h5, before its rename
    ("training.export:write_portable_h5", "before", 1, ("KILL", "TERM")),
    ("training.export:write_portable_h5", "after", 1, ("KILL",)),
]
SAVED_MODEL = [
    ("training.export:write_archive", "after", 1, ("KILL",)),  # complete in .partial-*, not yet renamed
    ("training.export:export_saved_model", "before", 1, ("KILL", "TERM")),
    ("training.export:export_saved_model", "after", 1, ("KILL",)),
]
TEST_EVALUATION = [
    ("evaluation.report:evaluate_predictions", "before", 1, ("KILL", "TERM")),
    ("evaluation.report:write_evaluation_files", "before", 1, ("KILL",)),
    ("evaluation.report:write_evaluation_files", "after", 1, ("KILL", "TERM")),
]
# After the first-epoch moment at least two epoch ends are left (its state is (1, 0) at most), after the
# checkpoint-to-state moment at least one (its state is (2, 1) at most), so every call #1 is reached.
MOMENTS = [FIRST_EPOCH, CHECKPOINT_TO_STATE, STATE_SAVE, FINAL_MODEL, SAVED_MODEL, TEST_EVALUATION]


def pick_moments(seed: int) -> list[str]:
    """One ``MODULE:ATTR:WHEN:N:SIGNAL`` fault per stage of ``MOMENTS``, chosen by ``seed``."""
    rng = random.Random(seed)
    faults = []
    for stage in MOMENTS:
        target, when, calls, signals = rng.choice(stage)
        nth = rng.randint(*calls) if isinstance(calls, tuple) else calls
        faults.append(f"{target}:{when}:{nth}:{rng.choice(signals)}")
    return faults


def _args(root: Path, output: Path) -> list[str]:
    return [
        "--trainfile",
        str(root / "train.txt"),
        "--testfile",
        str(root / "test.txt"),
        "--data_path",
        str(root / "data"),
        "--output",
        str(output),
        "--img_size",
        "32",
        "--bs",
        "4",
        "--epochs",
        str(EPOCHS),
        "--name",
        "fault-",
        "--model",
        "smallcnn",
        "--weights",
        "none",
        "--lr",
        "0.001",
        "--n_bootstrap",
        "20",
    ]


def _weights(path: Path) -> dict[str, np.ndarray]:
    """Every array of an HDF5 weights or model file, by its path inside the file."""
    arrays: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
        )
    return arrays


def _assert_same_weights(path: Path, reference: Path) -> None:
    got, want = _weights(path), _weights(reference)
    assert sorted(got) == sorted(want), path
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=f"{path.name}: {name}")


def _position(run_dir: Path) -> tuple[int, int]:
    found = find_resume_state(run_dir / "resume")
    return (-1, 0) if found is None else (int(found[1]["epoch"]), int(found[1].get("step", 0)))


def _assert_nothing_half_written(run_dir: Path) -> None:
    """Every file under a final name is whole; only hidden .partial-* names may hold unfinished work."""
    for _, path in list_checkpoints(run_dir):
        assert len(_weights(path)) > 0, path
    if (run_dir / "final_model.hdf5").exists():
        with h5py.File(run_dir / "final_model.hdf5", "r") as f:
            assert "model_config" in f.attrs
    if (run_dir / "saved_model").exists():
        assert (run_dir / "saved_model" / "saved_model.pb").is_file()
        assert (run_dir / "saved_model" / "variables" / "variables.index").is_file()
    latest = run_dir / "resume" / LATEST
    if latest.exists():
        named = run_dir / "resume" / latest.read_text().strip()
        assert (named / "state.json").is_file() and (named / "state.weights.h5").is_file(), named
    json.loads((run_dir / "run_config.json").read_text())
    if (run_dir / "test_evaluation").exists():
        assert (run_dir / "test_evaluation" / "metrics.json").is_file()


@pytest.fixture(scope="module")
def reference(tiny_covidx: Path) -> tuple[Path, dict[str, int]]:
    """An uninterrupted run with the same seed and flags (in this process: one TensorFlow start fewer),
    and how often it called each function a fault may target."""
    from fault_train_runner import count_calls

    output = tiny_covidx / "reference"
    counts: dict[str, int] = {}
    undo = count_calls(sorted({target for stage in MOMENTS for target, *_ in stage}), counts)
    try:
        assert train_keras.main(_args(tiny_covidx, output)) == 0
    finally:
        undo()
    return output / "fault-lr0.001", counts


def test_every_fault_target_is_called_by_a_run(reference: tuple[Path, dict[str, int]]) -> None:
    """Each moment's function is called by a whole run at least as often as its call number needs: a
    target that is never called (a renamed function, a method a subclass replaces) would make the seeded
    test fail for the seeds that choose it. (One was: Keras 3's ExportArchive() returns a backend class
    whose write_out is not ExportArchive.write_out.) The seeded test itself checks that the chosen call
    number is reached in the process it kills."""
    _, counts = reference
    for stage in MOMENTS:
        for target, _, calls, _ in stage:
            needed = max(calls) if isinstance(calls, tuple) else calls
            assert counts[target] >= needed, f"{target}: {counts[target]} calls, a fault needs {needed}"


@pytest.mark.slow
def test_kills_at_seeded_moments_end_in_the_uninterrupted_run(
    tiny_covidx: Path, reference: tuple[Path, dict[str, int]], tmp_path: Path, record_property
) -> None:
    reference_dir, _ = reference
    seed = int(os.environ.get("FAULT_INJECTION_SEED", "15"))
    faults = pick_moments(seed)
    output = tmp_path / "killed"
    run_dir = output / "fault-lr0.001"
    fired = tmp_path / "fired.txt"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, str(RUNNER)]
    expected = {"KILL": {-signal.SIGKILL}, "TERM": {EXIT_PREEMPTED, -signal.SIGTERM}}
    position = (-1, 0)
    started = time.time()
    for number, fault in enumerate(faults, 1):
        done = subprocess.run(
            [*command, "--fault", fault, "--fired", str(fired), "--", *_args(tiny_covidx, output)],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        where = f"moment {number} ({fault}), seed {seed}: exit {done.returncode}\n{done.stderr[-3000:]}"
        assert fired.read_text().splitlines()[-1:] == [fault], where  # the moment was reached
        assert done.returncode in expected[fault.rsplit(":", 1)[1]], where
        assert "Traceback" not in done.stderr, where
        _assert_nothing_half_written(run_dir)
        # A kill never loses a completed state: the resume position only moves forward.
        assert _position(run_dir) >= position, where
        position = _position(run_dir)

    done = subprocess.run(
        [*command, "--", *_args(tiny_covidx, output)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    print(
        f"\nfault injection (seed {seed}): {len(faults)} kill moments tried in "
        f"{time.time() - started:.0f} s: " + "; ".join(faults)
    )
    record_property("kill_moments", len(faults))
    record_property("kill_moments_list", ";".join(faults))

    # The folder is complete: each planned epoch once, the final model twice, the log, the evaluation.
    assert [e for e, _ in list_checkpoints(run_dir)] == list(range(1, EPOCHS + 1))
    assert log_epochs(run_dir) == list(range(EPOCHS))
    assert (run_dir / "saved_model" / "saved_model.pb").is_file()
    assert json.loads((run_dir / "run_config.json").read_text())["epochs"] == EPOCHS
    assert not list(run_dir.rglob(".partial-*"))
    assert sorted(p.name for p in (run_dir / "resume").iterdir()) == [LATEST, f"epoch-{EPOCHS:04d}"]
    # ... and it is the uninterrupted run: same checkpoints (names and weights), model, test metrics.
    names = [p.name for _, p in list_checkpoints(reference_dir)]
    assert [p.name for _, p in list_checkpoints(run_dir)] == names
    for (_, path), (_, ref) in zip(list_checkpoints(run_dir), list_checkpoints(reference_dir)):
        _assert_same_weights(path, ref)
    _assert_same_weights(run_dir / "final_model.hdf5", reference_dir / "final_model.hdf5")
    metrics = json.loads((run_dir / "test_evaluation" / "metrics.json").read_text())
    reference_metrics = json.loads((reference_dir / "test_evaluation" / "metrics.json").read_text())
    assert metrics["metrics"] == reference_metrics["metrics"]
    assert metrics["n_images"] == 15


def test_moments_cover_every_stage_and_both_signals() -> None:
    """The seeds pick exact moments from every stage of a run, with SIGKILL and SIGTERM among them."""
    picks = [pick_moments(seed) for seed in range(40)]
    assert all(len(p) == len(MOMENTS) for p in picks)
    assert pick_moments(15) == pick_moments(15) and len({tuple(p) for p in picks}) > 30
    chosen = {fault for p in picks for fault in p}
    assert {f.rsplit(":", 1)[1] for f in chosen} == {"KILL", "TERM"}
    targets = {f.rsplit(":", 3)[0] for f in chosen}
    for stage in MOMENTS:
        assert {target for target, *_ in stage} <= targets
    first = [int(p[0].split(":")[-2]) for p in picks if "on_train_batch_end" in p[0]]
    assert first and all(1 <= n <= STEPS for n in first)


# ---------------------------------------------------------------------------
# the resume state itself


def _tiny_model() -> keras.Model:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def test_a_failed_save_keeps_the_previous_state(tmp_path: Path, monkeypatch) -> None:
    """A full disk during the save (OSError 28 from save_weights) leaves the last good state findable."""
    resume = tmp_path / "resume"
    model = _tiny_model()
    first = save_resume_state(resume, model=model, epoch=3, state={"plateau": None, "step": 0})
    weights = [w.copy() for w in model.get_weights()]
    model.set_weights([w + 1 for w in weights])

    def disk_full(self, filepath, **kwargs):
        Path(filepath).write_bytes(b"\x89HDF\r\n\x1a\n half")  # what a full disk leaves: part of a file
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.Model, "save_weights", disk_full)
    # Epoch 3's folder name is never reused: neither the next epoch's save nor a SIGTERM save inside it.
    for epoch, step in ((4, 0), (3, 5)):
        with pytest.raises(OSError, match="No space left"):
            save_resume_state(resume, model=model, epoch=epoch, state={"plateau": None, "step": step})
        folder, state = find_resume_state(resume)
        assert folder == first and (state["epoch"], state["step"]) == (3, 0)
        assert sorted(p.name for p in resume.iterdir()) == [LATEST, "epoch-0003"]  # no half-written folder
    monkeypatch.undo()
    restored = _tiny_model()
    restored.load_weights(str(first / "state.weights.h5"))
    for got, want in zip(restored.get_weights(), weights):
        np.testing.assert_array_equal(got, want)


def test_each_save_gets_a_fresh_folder_and_removes_older_ones_last(tmp_path: Path, monkeypatch) -> None:
    import training.checkpoints as checkpoints

    resume = tmp_path / "resume"
    model = _tiny_model()
    save_resume_state(resume, model=model, epoch=1, state={"step": 0})
    seen = []
    original = checkpoints._point_latest

    def watch(resume_dir: Path, name: str) -> None:
        # When the pointer moves, the new state is complete beside the old one, which is still there.
        seen.append(sorted(p.name for p in resume_dir.iterdir() if p.is_dir()))
        original(resume_dir, name)

    monkeypatch.setattr(checkpoints, "_point_latest", watch)
    mid = save_resume_state(resume, model=model, epoch=1, state={"step": 4})
    end = save_resume_state(resume, model=model, epoch=2, state={"step": 0})
    assert (mid.name, end.name) == ("epoch-0001-step-000004", "epoch-0002")
    assert seen == [["epoch-0001", "epoch-0001-step-000004"], ["epoch-0001-step-000004", "epoch-0002"]]
    assert sorted(p.name for p in resume.iterdir()) == [LATEST, "epoch-0002"]
    # Without LATEST (a kill before the first pointer), the furthest complete state is found.
    save_resume_state(resume, model=model, epoch=2, state={"step": 3})
    (resume / LATEST).unlink()
    (resume / "epoch-0002").mkdir(exist_ok=True)
    folder, state = find_resume_state(resume)
    assert folder.name == "epoch-0002-step-000003" and (state["epoch"], state["step"]) == (2, 3)
