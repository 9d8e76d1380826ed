"""Repository-root conftest: puts the project on sys.path and shares fixtures and helpers.

``tiny_covidx`` is a 45 + 15 image COVIDx folder for the training tests;
:func:`train_args` is a short ``train_keras.py`` command line for it. The other
plain functions below are shared by several test modules (tests import them
with ``from conftest import ...``, never from another test module).

``realdata_dir`` points at the public samples in ``../shared/realdata`` (or
``$COVIDX_REALDATA``); tests that use it skip with a message when it is absent,
so the suite also passes on a fresh machine.
"""
from __future__ import annotations

import csv
import os
import re
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent


def _realdata_root() -> Path:
    override = os.environ.get("COVIDX_REALDATA")
    return Path(override) if override else REPO_ROOT.parent / "shared" / "realdata"


@pytest.fixture(scope="session")
def realdata_dir() -> Path:
    """The real public samples folder; skips the test when it is not there."""
    root = _realdata_root()
    if not (root / "README.md").is_file():
        pytest.skip(f"real public samples not found at {root} (set COVIDX_REALDATA to use them)")
    return root


# -- a tiny COVIDx folder for the training tests (test_train.py, test_recipes_training.py) ----------

TINY_LABELS = ("normal", "pneumonia", "COVID-19")


def _tiny_image(rng: np.random.Generator, label: str, size: int = 40) -> np.ndarray:
    """A 40 px grey image whose class is a bright patch (learnable by a small CNN in a few epochs)."""
    img = rng.normal(70, 12, (size, size))
    if label == "pneumonia":
        img[8:26, 4:16] += 110  # one dense unilateral opacity
    elif label == "COVID-19":
        img[4:12, 26:36] += 90  # patchy, bilateral, peripheral
        img[26:34, 4:14] += 90
    return img.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_covidx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A COVIDx-shaped folder: data/train, data/test and the two lists (45 + 15 images)."""
    root = tmp_path_factory.mktemp("covidx")
    rng = np.random.default_rng(0)
    for split, n in (("train", 45), ("test", 15)):
        (root / "data" / split).mkdir(parents=True)
        lines = []
        for i in range(n):
            label = TINY_LABELS[i % 3]
            name = f"{split}{i:03d}.png"
            cv2.imwrite(str(root / "data" / split / name), _tiny_image(rng, label))
            lines.append(f"{split}-p{i} {name} {label} synthetic\n")
        (root / f"{split}.txt").write_text("".join(lines))
    return root


def train_args(root: Path, *extra: str, epochs: int = 2, name: str = "run-") -> list[str]:
    """A ``train_keras.py`` command line for a ``tiny_covidx`` folder: smallcnn at 32 px, batches of 4."""
    return [
        "--trainfile", str(root / "train.txt"), "--testfile", str(root / "test.txt"),
        "--data_path", str(root / "data"), "--output", str(root / "output"),
        "--img_size", "32", "--bs", "4", "--epochs", str(epochs), "--name", name,
        "--model", "smallcnn", "--weights", "none", "--lr", "0.001", "--n_bootstrap", "50",
        *extra,
    ]


def tiny_run_config(**overrides):
    """A ``training.config.RunConfig`` of a tiny smallcnn run (32 px, avg head), with ``overrides``.

    Nothing is read from disk: for the functions that take a configuration.
    """
    from training.config import RunConfig

    values = dict(
        trainfile="train.txt", testfile="test.txt", data_path="data", val_split=0.1, verify_images="none",
        balance=True, covid_per_batch=1, class_weights=(1.0, 1.0, 25.0), augment=True,
        model={"name": "smallcnn", "num_classes": 3, "input_shape": [32, 32, 3], "head": "avg",
               "head_l2": 1e-4, "backbone_l2": 0.0, "input_norm": "none"},
        weights="none", checkpoint="", lr=1e-3, batch_size=8, epochs=4, steps_per_epoch=None, seed=0,
        mixed_precision=False, xla=False, output="out", name="t-", run_dir="out/t-lr0.001",
        keep_checkpoints=0, full_checkpoints=False,
    )
    values.update(overrides)
    return RunConfig(**values)


def log_epochs(run_dir: Path) -> list[int]:
    """The epoch column of a run's ``training_log.csv``."""
    with open(run_dir / "training_log.csv", newline="") as fh:
        return [int(row["epoch"]) for row in csv.DictReader(fh)]


# -- training in subprocesses (test_distributed.py, test_transfer_training.py) ----------------------

SUBPROCESS_TIMEOUT = 240  # seconds for one training process on the tiny folders


def subprocess_env(**extra: str) -> dict[str, str]:
    """This process's environment without a cluster (TF_CONFIG, SLURM_*), quiet TensorFlow, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG",) and not k.startswith("SLURM_")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.update(extra)
    return env


def free_ports(n: int) -> list[int]:
    """``n`` TCP ports on 127.0.0.1 that were free a moment ago."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_local_cluster(cmd: list[str], *, workers: int = 2, **env: str) -> tuple[list[int], list[str]]:
    """Run ``cmd`` as every worker of a ``TF_CONFIG`` cluster on 127.0.0.1; their exit codes and logs.

    ``env`` is added to each worker's environment (:func:`subprocess_env`). Workers still running after
    :data:`SUBPROCESS_TIMEOUT` are killed, so a hung collective fails the test instead of the suite.
    """
    import json
    import subprocess

    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(workers)]}
    procs = [
        subprocess.Popen(
            cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=subprocess_env(
                TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}), **env
            ),
        )
        for i in range(workers)
    ]
    try:
        logs = [p.communicate(timeout=SUBPROCESS_TIMEOUT)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [p.returncode for p in procs], logs


def final_weights_fingerprint(log: str) -> str:
    """The ``final weights fingerprint`` a training process logged (training.trainer.weights_fingerprint)."""
    match = re.search(r"final weights fingerprint \(worker \d+\): ([0-9a-f]+)", log)
    assert match, log[-2000:]
    return match.group(1)


# -- images whose grey level names them (test_transfer_training.py; copied from test_pipeline.py) ----


def write_constant_images(folder: Path, labels: list[str], size: int = 24) -> list:
    """One image per label, each filled with its own grey level (10 + 4 i) so batches can be traced back."""
    from data.lists import ListEntry

    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, label in enumerate(labels):
        name = f"img{i:03d}.png"
        cv2.imwrite(str(folder / name), np.full((size, size), 10 + 4 * i, np.uint8))
        entries.append(ListEntry(f"p{i}", name, label, "test"))
    return entries


def grey_level(image: np.ndarray) -> int:
    """The index ``i`` of a :func:`write_constant_images` image from its pixels in [0, 1]."""
    return int(round((float(image.mean()) * 255 - 10) / 4))
