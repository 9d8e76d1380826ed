"""Synthetic sources: real formats, deterministic bytes, a learnable class signal, the demo's counts."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest
from sklearn.linear_model import RidgeClassifier

from data.build import build_covidx
from data.labels import CLASSES
from data.synthetic import DEFAULT_SIZE, make_synthetic_sources, plan_sizes, render_cxr


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny") / "a"
    make_synthetic_sources(root, size=60, image_size=32, seed=5)
    return root


def test_same_seed_same_bytes_other_seed_other_images(tiny: Path, tmp_path: Path) -> None:
    make_synthetic_sources(tmp_path / "b", size=60, image_size=32, seed=5)
    first, second = files(tiny), files(tmp_path / "b")
    assert first.keys() == second.keys() and len(first) > 80
    assert first == second  # including the .xlsx (fixed zip timestamps) and the DICOM UIDs
    make_synthetic_sources(tmp_path / "c", size=60, image_size=32, seed=6)
    other = files(tmp_path / "c")
    assert other["cohen/metadata.csv"] != first["cohen/metadata.csv"] or any(
        other.get(k) != v for k, v in first.items() if k.endswith(".png"))


def test_real_formats(tiny: Path) -> None:
    meta = pd.read_csv(tiny / "cohen" / "metadata.csv", dtype=str, keep_default_na=False)
    assert {"patientid", "finding", "view", "folder", "filename", "url"} <= set(meta.columns)
    assert meta["finding"].str.contains("/").sum() >= len(meta) - 3  # 2021+ hierarchical findings
    with pytest.raises(UnicodeDecodeError):
        (tiny / "figure1" / "metadata.csv").read_text(encoding="utf-8")
    assert "Température" in (tiny / "figure1" / "metadata.csv").read_text(encoding="ISO-8859-1")
    act = pd.read_csv(tiny / "actualmed" / "metadata.csv", dtype=str, keep_default_na=False)
    first = cv2.imread(str(tiny / "actualmed" / "images" / act["imagename"][0]), cv2.IMREAD_UNCHANGED)
    assert first.dtype == np.uint16 and first.shape == (32, 32)
    sirm = pd.read_excel(tiny / "sirm" / "COVID.metadata.xlsx", dtype=str)
    assert list(sirm.columns) == ["FILE NAME", "FORMAT", "SIZE", "URL"] and "COVID 119" in set(
        sirm["FILE NAME"]
    )
    assert cv2.imread(str(tiny / "sirm" / "COVID" / "COVID 119.png"), cv2.IMREAD_UNCHANGED).shape == (
        32,
        32,
        3,
    )

    labels = pd.read_csv(tiny / "rsna" / "stage_2_train_labels.csv", dtype=str)
    info = pd.read_csv(tiny / "rsna" / "stage_2_detailed_class_info.csv", dtype=str)
    assert len(labels) == len(info) and labels["patientId"].tolist() == info["patientId"].tolist()
    assert labels[labels["Target"] == "1"]["patientId"].duplicated().any()  # several boxes per patient
    assert set(info["class"]) == {"Normal", "Lung Opacity", "No Lung Opacity / Not Normal"}
    dcm = next((tiny / "rsna" / "stage_2_train_images").glob("*.dcm"))
    ds = pydicom.dcmread(dcm)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    assert (ds.PhotometricInterpretation, ds.BitsStored, ds.pixel_array.shape) == ("MONOCHROME2", 8, (32, 32))

    ricord = sorted((tiny / "ricord").glob("MIDRC-RICORD-1C-*/*/*/*.dcm"))
    kinds = Counter()
    for path in ricord:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        kinds[ds.file_meta.TransferSyntaxUID.name.split(" ")[0], ds.PhotometricInterpretation] += 1
        assert ds.BitsAllocated == 16 and 12 <= ds.BitsStored <= 16
        assert path.parent.parent.name.endswith("-" + ds.StudyInstanceUID[-5:])
    assert {k[0] for k in kinds} == {"JPEG", "RLE", "Explicit"} and {k[1] for k in kinds} == {
        "MONOCHROME1",
        "MONOCHROME2",
    }


def _augment(image: np.ndarray, rng: np.random.Generator, px: int = 32) -> np.ndarray:
    """SURFsara's augmentation, approximately: rotation 10 deg, shifts 10%, flip, brightness 0.9-1.1."""
    x = cv2.resize(image, (px, px), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    m = cv2.getRotationMatrix2D((px / 2, px / 2), rng.uniform(-10, 10), 1.0)
    m[:, 2] += rng.uniform(-0.1, 0.1, 2) * px
    x = cv2.warpAffine(x, m, (px, px), flags=cv2.INTER_LINEAR, borderValue=0)
    if rng.random() < 0.5:
        x = x[:, ::-1]
    return np.clip(x * rng.uniform(0.9, 1.1), 0, 1)


def test_class_signal_survives_32px_and_augmentation() -> None:
    features, labels = [], []
    for i in range(450):
        rng = np.random.default_rng([11, i])
        x = _augment(render_cxr(CLASSES[i % 3], rng, 64), rng)
        features.append(np.concatenate([x.ravel(), np.abs(x - x[:, ::-1]).ravel()]))
        labels.append(i % 3)
    X, y = np.array(features), np.array(labels)
    clf = RidgeClassifier(alpha=10.0).fit(X[:300], y[:300])  # a linear model, far weaker than a CNN
    pred = clf.predict(X[300:])
    per_class = [float((pred[y[300:] == k] == k).mean()) for k in range(3)]
    assert (pred == y[300:]).mean() >= 0.8 and min(per_class) >= 0.7, per_class


def test_render_is_uint8_and_classes_differ_where_expected() -> None:
    normal = render_cxr("normal", np.random.default_rng(0), 64)
    assert normal.dtype == np.uint8 and normal.shape == (64, 64)
    with pytest.raises(ValueError, match="unknown label"):
        render_cxr("flu", np.random.default_rng(0))
    # averaged over images, opacities make the lung zones brighter than in normals
    lung = (slice(20, 52), np.r_[8:26, 38:56])
    means = {
        c: np.mean(
            [render_cxr(c, np.random.default_rng([c == "normal", i]), 64)[lung].mean() for i in range(20)]
        )
        for c in CLASSES
    }
    assert means["pneumonia"] > means["normal"] + 5 and means["COVID-19"] > means["normal"] + 5


def test_default_size_counts(tmp_path: Path) -> None:
    plan = plan_sizes(DEFAULT_SIZE)
    assert plan.rsna_normal == 133 and plan.rsna_pneumonia + plan.cohen_pneumonia == 133
    with pytest.raises(ValueError, match="--synthetic-size must be at least"):
        plan_sizes(10)
    # image size does not change the counts, so the default-size dataset is built at 32 px here
    sources = make_synthetic_sources(tmp_path / "src", size=DEFAULT_SIZE, image_size=32)
    result = build_covidx(out_dir=tmp_path / "out", sources=sources, workers=2)
    counts = result.counts()
    assert counts == {
        "train": {"normal": 110, "pneumonia": 113, "COVID-19": 112},
        "test": {"normal": 23, "pneumonia": 20, "COVID-19": 22},
    }
    total = sum(counts["train"].values()) + sum(counts["test"].values())
    assert total == DEFAULT_SIZE and sum(counts["test"].values()) / total >= 0.15
    assert result.report["images"]["failed"] == 0
