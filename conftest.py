"""Repository-root conftest: puts the project on sys.path and shares fixtures.

``tiny_covidx`` is a 45 + 15 image COVIDx folder for the training tests.

``realdata_dir`` points at the public samples in ``../shared/realdata`` (or
``$COVIDX_REALDATA``); tests that use it skip with a message when it is absent,
so the suite also passes on a fresh machine.
"""
from __future__ import annotations

import os
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
