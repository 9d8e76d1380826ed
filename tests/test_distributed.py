"""Multi-worker training and preemption, for real: subprocesses on 127.0.0.1, signals, restarts.

Every subprocess has a timeout, so a hang fails the test instead of the CI run.
"""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import REPO_ROOT
from training.checkpoints import find_resume_state, list_checkpoints
from training.preemption import EXIT_PREEMPTED, PreemptionWatcher, StopOnPreemption, TrainingInterrupted
from training.strategy import _tasks_per_node, cluster_source, choose_strategy

LABELS = ("normal", "pneumonia", "COVID-19")
TIMEOUT = 240


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dist")
    rng = np.random.default_rng(1)
    for split, n in (("train", 48), ("test", 12)):
        (root / "data" / split).mkdir(parents=True)
        lines = []
        for i in range(n):
            label = LABELS[i % 3]
            img = rng.normal(70, 12, (36, 36))
            if label == "pneumonia":
                img[6:24, 4:14] += 110
            elif label == "COVID-19":
                img[4:10, 24:32] += 90
                img[24:30, 4:12] += 90
            name = f"{split}{i:03d}.png"
            cv2.imwrite(str(root / "data" / split / name), img.clip(0, 255).astype(np.uint8))
            lines.append(f"{split}-p{i} {name} {label} synthetic\n")
        (root / f"{split}.txt").write_text("".join(lines))
    return root


def _args(root: Path, name: str, *extra: str, epochs: int = 1) -> list[str]:
    return [
        "--trainfile", str(root / "train.txt"), "--testfile", str(root / "test.txt"),
        "--data_path", str(root / "data"), "--output", str(root / "output"), "--img_size", "32",
        "--bs", "8", "--epochs", str(epochs), "--name", name, "--model", "smallcnn", "--weights", "none",
        "--lr", "0.001", "--n_bootstrap", "20", "--val_split", "0", *extra,
    ]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG",) and not k.startswith("SLURM_")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.update(extra)
    return env


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _fingerprint(log: str) -> str:
    match = re.search(r"final weights fingerprint \(worker \d+\): ([0-9a-f]+)", log)
    assert match, log[-2000:]
    return match.group(1)


def _first_loss(run_dir: Path) -> float:
    with open(run_dir / "training_log.csv", newline="") as fh:
        return float(next(csv.DictReader(fh))["loss"])


@pytest.mark.slow
def test_two_workers_match_one_worker(dataset: Path, tmp_path: Path) -> None:
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    cmd = [sys.executable, str(REPO_ROOT / "train_keras.py"), *_args(dataset, "two-", "--no_augment")]
    procs = [
        subprocess.Popen(
            cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=_env(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
                     TMPDIR=str(scratch)),
        )
        for i in range(2)
    ]
    try:
        logs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    assert "MultiWorkerMirroredStrategy from tf_config" in logs[0]
    # Every worker ends with the same weights (gradients and batch-norm statistics are all-reduced).
    assert _fingerprint(logs[0]) == _fingerprint(logs[1])
    # Only the chief wrote into the run folder; the other worker's scratch folder is gone.
    run_dir = dataset / "output" / "two-lr0.001"
    assert [e for e, _ in list_checkpoints(run_dir)] == [1]
    assert (run_dir / "final_model.hdf5").is_file() and (run_dir / "test_evaluation" / "metrics.json").is_file()
    assert list(scratch.iterdir()) == []
    assert "worker 1 finished" in logs[1] and "Sens Normal" not in logs[1]
    config = json.loads((run_dir / "run_config.json").read_text())
    assert (config["replicas"], config["num_workers"], config["global_batch_size"]) == (2, 2, 8)

    # One worker, same global batch, same data: the same loss up to float summation order.
    single = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train_keras.py"), *_args(dataset, "one-", "--no_augment")],
        cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    two, one = _first_loss(run_dir), _first_loss(dataset / "output" / "one-lr0.001")
    assert two == pytest.approx(one, rel=1e-4)


@pytest.mark.slow
def test_sigterm_saves_the_step_and_a_restart_finishes_every_epoch(dataset: Path) -> None:
    cmd = [sys.executable, str(REPO_ROOT / "train_keras.py"), *_args(dataset, "term-", epochs=5)]
    run_dir = dataset / "output" / "term-lr0.001"
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + TIMEOUT
        while time.time() < deadline and not (run_dir / "resume" / "epoch-0001" / "state.json").is_file():
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_PREEMPTED, err[-2000:]
    assert "stopped by SIGTERM" in err
    folder, state = find_resume_state(run_dir / "resume")
    assert state["epoch"] >= 1 and state["step"] >= 1  # saved mid-epoch, at the step it reached
    assert not list(run_dir.rglob(".partial-*"))

    done = subprocess.run(cmd, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"step {state['step']} of the next" in done.stderr
    with open(run_dir / "training_log.csv", newline="") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [0, 1, 2, 3, 4]
    assert [e for e, _ in list_checkpoints(run_dir)] == [1, 2, 3, 4, 5]


def test_stop_callback_saves_then_raises() -> None:
    watcher = PreemptionWatcher()
    saved = []
    callback = StopOnPreemption(watcher, save_fn=lambda **kw: saved.append(kw), steps_offset=3)
    callback.on_epoch_begin(4)
    callback.on_train_batch_end(0)
    assert saved == []
    watcher.requested, watcher.signal_name = True, "SIGTERM"
    with pytest.raises(TrainingInterrupted, match="epoch 5 after step 5") as info:
        callback.on_train_batch_end(1)
    assert saved == [{"epoch": 4, "step": 5}] and (info.value.epoch, info.value.step) == (4, 5)


def test_watcher_turns_sigterm_into_a_flag() -> None:
    watcher = PreemptionWatcher().install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert watcher.requested and watcher.signal_name == "SIGTERM"
    finally:
        watcher.uninstall()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, ""),
        ({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}})}, ""),
        ({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}})},
         "tf_config"),
        ({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}, ""),
        ({"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "8"}, "slurm"),
    ],
)
def test_cluster_detection(env: dict, expected: str) -> None:
    assert cluster_source(env) == expected


def test_slurm_tasks_per_node_syntax() -> None:
    assert _tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert _tasks_per_node("4") == [4]


def test_multiworker_without_a_cluster_is_refused(monkeypatch) -> None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    with pytest.raises(ValueError, match="needs a cluster"):
        choose_strategy("multiworker")
    with pytest.raises(ValueError, match="must be one of"):
        choose_strategy("horovod")
