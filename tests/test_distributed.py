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

import train_keras
from conftest import (
    REPO_ROOT,
    SUBPROCESS_TIMEOUT,
    final_weights_fingerprint,
    run_local_cluster,
    subprocess_env,
)
from training.checkpoints import find_resume_state, list_checkpoints
from training.preemption import EXIT_PREEMPTED, PreemptionWatcher, StopOnPreemption, TrainingInterrupted
from training.strategy import _tasks_per_node, choose_strategy, cluster_source, slurm_base_port
from training.watchdog import EXIT_STALLED, StallWatchdog

LABELS = ("normal", "pneumonia", "COVID-19")


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


def _slurm_job_with_free_ports(tasks: int) -> int:
    """A SLURM job id whose ports (training/strategy.py slurm_base_port) are free on 127.0.0.1."""
    start = int.from_bytes(os.urandom(2), "big")
    for job in range(start, start + 750):
        sockets = [socket.socket() for _ in range(tasks)]
        try:
            for i, s in enumerate(sockets):
                s.bind(("127.0.0.1", slurm_base_port(job) + i))
            return job
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free port block for a SLURM job id")


def _srun_env(job: int, rank: int, tasks: int, **extra: str) -> dict[str, str]:
    """What srun sets in task ``rank`` of a step of ``tasks`` tasks on one node, 127.0.0.1 (no GPU)."""
    return subprocess_env(SLURM_JOB_ID=str(job), SLURM_NTASKS=str(tasks), SLURM_PROCID=str(rank),
                SLURM_LOCALID=str(rank), SLURM_STEP_NUM_TASKS=str(tasks), SLURM_STEP_NODELIST="127.0.0.1",
                SLURM_STEP_TASKS_PER_NODE=str(tasks), SLURMD_NODENAME="127.0.0.1", CUDA_VISIBLE_DEVICES="",
                **extra)


def _first_loss(run_dir: Path) -> float:
    with open(run_dir / "training_log.csv", newline="") as fh:
        return float(next(csv.DictReader(fh))["loss"])


@pytest.mark.slow
def test_two_workers_match_one_worker(dataset: Path, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    cmd = [sys.executable, str(REPO_ROOT / "train_keras.py"), *_args(dataset, "two-", "--no_augment")]
    codes, logs = run_local_cluster(cmd, TMPDIR=str(scratch))
    assert codes == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    assert "MultiWorkerMirroredStrategy from tf_config" in logs[0]
    # Every worker ends with the same weights (gradients and batch-norm statistics are all-reduced).
    assert final_weights_fingerprint(logs[0]) == final_weights_fingerprint(logs[1])
    # Only the chief wrote into the run folder; the other worker's scratch folder is gone.
    run_dir = dataset / "output" / "two-lr0.001"
    assert [e for e, _ in list_checkpoints(run_dir)] == [1]
    assert (run_dir / "final_model.hdf5").is_file()
    assert (run_dir / "test_evaluation" / "metrics.json").is_file()
    assert list(scratch.iterdir()) == []
    assert "worker 1 finished" in logs[1] and "Sens Normal" not in logs[1]
    config = json.loads((run_dir / "run_config.json").read_text())
    assert (config["replicas"], config["num_workers"], config["batch_size"]) == (2, 2, 8)
    assert "global_batch_size" not in config  # it only repeated batch_size, the global batch

    # One worker, same global batch, same data: the same loss up to float summation order.
    # In this process: no cluster here (train_keras.main reads TF_CONFIG, which the workers alone had).
    assert "TF_CONFIG" not in os.environ
    assert train_keras.main(_args(dataset, "one-", "--no_augment")) == 0
    two, one = _first_loss(run_dir), _first_loss(dataset / "output" / "one-lr0.001")
    assert two == pytest.approx(one, rel=1e-4)


@pytest.mark.slow
def test_sigterm_saves_the_step_and_a_restart_finishes_every_epoch(dataset: Path) -> None:
    cmd = [sys.executable, str(REPO_ROOT / "train_keras.py"), *_args(dataset, "term-", epochs=5)]
    run_dir = dataset / "output" / "term-lr0.001"
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + SUBPROCESS_TIMEOUT
        while time.time() < deadline and not (run_dir / "resume" / "epoch-0001" / "state.json").is_file():
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_PREEMPTED, err[-2000:]
    assert "stopped by SIGTERM" in err
    folder, state = find_resume_state(run_dir / "resume")
    assert state["epoch"] >= 1 and state["step"] >= 1  # saved mid-epoch, at the step it reached
    assert not list(run_dir.rglob(".partial-*"))

    done = subprocess.run(
        cmd, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"step {state['step']} of the next" in done.stderr
    with open(run_dir / "training_log.csv", newline="") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [0, 1, 2, 3, 4]
    assert [e for e, _ in list_checkpoints(run_dir)] == [1, 2, 3, 4, 5]


def _start_workers(cmd: list[str], job: int, logs: list[Path], scratch: Path) -> list[subprocess.Popen]:
    procs = []
    for rank, log in enumerate(logs):
        with open(log, "w") as fh:  # a file, not a pipe: nobody reads while the workers run
            procs.append(
                subprocess.Popen(
                    cmd,
                    cwd=REPO_ROOT,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    env=_srun_env(job, rank, len(logs), TMPDIR=str(scratch)),
                )
            )
    return procs


def _kill_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=30)


@pytest.mark.slow
def test_sigkill_of_a_worker_stops_the_job_and_a_restart_resumes(dataset: Path, tmp_path: Path) -> None:
    """kill -9 of one worker mid-epoch: the other stops with one line; both restarted, the run finishes.

    Started as SLURM tasks (srun's environment, 127.0.0.1, no GPU), so the cluster comes from
    training/strategy.py's SLURM code: node list, job port, CPU-only workers.
    """
    timeout = 8  # --collective_timeout: seconds without a finished step before the watchdog ends a worker
    cmd = [
        sys.executable,
        str(REPO_ROOT / "train_keras.py"),
        *_args(dataset, "kill-", "--collective_timeout", str(timeout), "--steps_per_epoch", "12", epochs=3),
    ]
    run_dir = dataset / "output" / "kill-lr0.001"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    logs = [tmp_path / "worker0.log", tmp_path / "worker1.log"]
    procs = _start_workers(cmd, _slurm_job_with_free_ports(2), logs, scratch)
    try:
        deadline = time.time() + SUBPROCESS_TIMEOUT
        while time.time() < deadline and not (run_dir / "resume" / "epoch-0001" / "state.json").is_file():
            assert procs[0].poll() is None and procs[1].poll() is None, logs[0].read_text()[-3000:]
            time.sleep(0.05)
        time.sleep(0.3)  # into epoch 2
        procs[1].kill()
        killed = time.time()
        procs[0].wait(timeout=timeout + 90)
        stopped_after = time.time() - killed
    finally:
        _kill_all(procs)
    chief_log = logs[0].read_text()
    assert "MultiWorkerMirroredStrategy from slurm: task worker/0 of 2 (127.0.0.1:" in chief_log
    assert procs[1].returncode == -signal.SIGKILL
    assert procs[0].returncode == 1, chief_log[-3000:]
    # One line, either TensorFlow's report (train_keras.py) or the watchdog's; no traceback.
    errors = [line for line in chief_log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "lost contact" in errors[0], chief_log[-3000:]
    assert "Traceback" not in chief_log
    assert stopped_after < timeout + 60
    _, state = find_resume_state(run_dir / "resume")
    assert state["epoch"] >= 1

    logs = [tmp_path / "again0.log", tmp_path / "again1.log"]
    procs = _start_workers(cmd, _slurm_job_with_free_ports(2), logs, scratch)
    try:
        for p in procs:
            p.wait(timeout=SUBPROCESS_TIMEOUT)
    finally:
        _kill_all(procs)
    texts = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [0, 0], texts[0][-3000:] + texts[1][-3000:]
    for text in texts:
        assert re.search(rf"resuming .* after epoch {state['epoch']}\b", text), text[-3000:]
    assert final_weights_fingerprint(texts[0]) == final_weights_fingerprint(texts[1])
    with open(run_dir / "training_log.csv", newline="") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [0, 1, 2]
    assert [e for e, _ in list_checkpoints(run_dir)] == [1, 2, 3]


def test_watchdog_deadlines() -> None:
    """First-step allowance from the start of fit, the timeout between steps, nothing while saving."""
    assert StallWatchdog(10).first_step_timeout == 900 and StallWatchdog(1200).first_step_timeout == 1200
    dog = StallWatchdog(10, first_step_timeout=100, poll=3600)  # the thread never looks; we do
    start = time.monotonic()
    assert dog.stall_message(start + 1e6) == ""  # not armed before fit
    dog.on_train_begin()
    try:
        dog.on_epoch_begin(0)  # does not cut the allowance short
        assert dog.stall_message(start + 99) == ""
        assert dog.stall_message(time.monotonic() + 101).startswith(
            "error: the first training step did not finish within 100 s of the start of training: another "
            "worker has stopped or lost contact; ending this worker"
        )
        dog.on_train_batch_end(0)
        assert dog.stall_message(time.monotonic() + 9) == ""
        assert "no training step finished for 10 s" in dog.stall_message(time.monotonic() + 11)
        dog.on_test_begin()  # the first validation traces its function: the allowance again
        assert dog.stall_message(time.monotonic() + 99) == ""
        late = time.monotonic() + 101
        assert "first validation step did not finish within 100 s" in dog.stall_message(late)
        dog.on_test_batch_end(0)
        assert "no validation step finished for 10 s" in dog.stall_message(time.monotonic() + 11)
        dog.on_epoch_end(0)  # checkpoints are saved: not watched
        assert dog.stall_message(time.monotonic() + 1e6) == ""
        dog.on_epoch_begin(1)
        assert "no training step finished within 10 s of the start of epoch 2" in dog.stall_message(
            time.monotonic() + 11
        )
        dog.on_test_begin()
        assert "no validation step finished for 10 s" in dog.stall_message(time.monotonic() + 11)
    finally:
        dog.on_train_end()
    assert dog.stall_message(time.monotonic() + 1e6) == "" and dog._thread is None


def test_watchdog_ends_a_process_stuck_before_its_first_step() -> None:
    code = (
        "import time; from training.watchdog import StallWatchdog; "
        "StallWatchdog(0.5, first_step_timeout=1, poll=0.1).on_train_begin(); time.sleep(60)"
    )
    started = time.time()
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=subprocess_env(PYTHONPATH=str(REPO_ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == EXIT_STALLED == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: the first training step did not finish within 1 s of the start of training: another worker "
        "has stopped or lost contact; ending this worker - re-run the job to resume from the last saved "
        "epoch"
    )
    assert time.time() - started < 50


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
        (
            {
                "TF_CONFIG": json.dumps(
                    {"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}
                )
            },
            "",
        ),
        (
            {
                "TF_CONFIG": json.dumps(
                    {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}
                )
            },
            "tf_config",
        ),
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
