"""--radiography-db (the ResNet-18 study's dataset, its seeded 70/10/20 split) and --cache from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf

import create_covidx
from data.cache import open_cache, read_records
from data.lists import read_list
from data.sources import radiography
from data.sources.base import ScanContext
from data.splits import RADIOGRAPHY
from data.synthetic import make_synthetic_radiography_db


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2021+ layout: 25 COVID, 37 Normal, 38 Viral Pneumonia, 4 Lung_Opacity images of 32 px."""
    return make_synthetic_radiography_db(
        tmp_path_factory.mktemp("rdb") / "db", size=100, image_size=32, seed=1
    )


def _scan(root: Path, seed: int = 0, fractions=(0.7, 0.1, 0.2)):
    return radiography.scan(root, ScanContext(rules=RADIOGRAPHY, split_seed=seed, split_fractions=fractions))


def test_split_counts_round_test_and_validation() -> None:
    assert radiography.split_counts(219, (0.7, 0.1, 0.2)) == (153, 22, 44)  # first release, COVID-19
    assert radiography.split_counts(1341, (0.7, 0.1, 0.2)) == (939, 134, 268)
    assert radiography.split_counts(5, (0.7, 0.1, 0.2)) == (3, 1, 1)
    assert radiography.split_counts(10, (1.0, 0.0, 0.0)) == (10, 0, 0)


def test_scan_reads_the_2021_layout_per_class_and_skips_lung_opacity(db: Path) -> None:
    result = _scan(db)
    assert result.rows_read == 104  # masks/ and the .xlsx files are not rows
    labels = [r.label for r in result.records]
    assert (labels.count("COVID-19"), labels.count("normal"), labels.count("pneumonia")) == (25, 37, 38)
    assert [s.reason for s in result.skipped] == ["class not used"] * 4
    assert all("Lung_Opacity" in s.detail for s in result.skipped)
    covid = [r.out_name for r in result.records if r.label == "COVID-19"]
    assert (
        covid[:3] == ["COVID-1.png", "COVID-2.png", "COVID-3.png"] and covid[9] == "COVID-10.png"
    )  # natural order
    assert all(r.patient_id == Path(r.out_name).stem for r in result.records)
    for label, n in (("COVID-19", 25), ("normal", 37), ("pneumonia", 38)):
        splits = [r.split for r in result.records if r.label == label]
        expected = radiography.split_counts(n, (0.7, 0.1, 0.2))
        assert (splits.count("train"), splits.count("val"), splits.count("test")) == expected


def test_the_split_is_a_function_of_the_seed(db: Path) -> None:
    first = {r.out_name: r.split for r in _scan(db, seed=0).records}
    assert first == {r.out_name: r.split for r in _scan(db, seed=0).records}
    other = {r.out_name: r.split for r in _scan(db, seed=1).records}
    assert other != first and sorted(other.values()) == sorted(first.values())


def test_first_release_layout_and_names_with_spaces(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for folder, prefix, n in (
        ("COVID-19", "COVID-19", 5),
        ("NORMAL", "NORMAL", 6),
        ("Viral Pneumonia", "Viral Pneumonia", 6),
    ):
        (tmp_path / folder).mkdir()
        for i in range(1, n + 1):
            cv2.imwrite(
                str(tmp_path / folder / f"{prefix} ({i}).png"), rng.integers(0, 255, (16, 16), np.uint8)
            )
    (tmp_path / "COVID-19.metadata.xlsx").write_bytes(b"not read")
    result = _scan(tmp_path)
    assert len(result.records) == 17 and not result.skipped
    names = {r.out_name for r in result.records}
    assert {"COVID-19(1).png", "NORMAL(6).png", "ViralPneumonia(3).png"} <= names
    assert {r.label for r in result.records if r.out_name.startswith("Viral")} == {"pneumonia"}


def test_bad_folder_and_fractions_name_the_flag(tmp_path: Path, db: Path) -> None:
    (tmp_path / "masks").mkdir()
    with pytest.raises(
        FileNotFoundError, match=r"--radiography-db: .* has none of the class folders .*found: masks"
    ):
        radiography.SPEC.check(tmp_path)
    with pytest.raises(
        ValueError, match=r"--radiography-split must be three fractions .* received 0.8,0.1,0.2"
    ):
        _scan(db, fractions=(0.8, 0.1, 0.2))


def test_command_line_build_writes_three_lists_and_is_deterministic(tmp_path: Path, db: Path) -> None:
    outs = []
    for workers in ("1", "2"):
        out = tmp_path / f"out{workers}"
        assert (
            create_covidx.main(
                ["--radiography-db", str(db), "--out", str(out), "--workers", workers, "--no-progress"]
            )
            == 0
        )
        outs.append(out)
    for name in ("train_COVIDx.txt", "val_COVIDx.txt", "test_COVIDx.txt", "report.json"):
        a, b = ((o / name).read_text() for o in outs)
        assert a == b.replace(str(outs[1]), str(outs[0])), name
    out = outs[0]
    lists = {s: read_list(out / f"{s}_COVIDx.txt").entries for s in ("train", "val", "test")}
    # Per class (25, 37, 38 images): 17/3/5, 26/4/7, 26/4/8.
    assert [len(lists[s]) for s in ("train", "val", "test")] == [69, 11, 20]
    names = [{e.filename for e in entries} for entries in lists.values()]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    # Validation images are training data: they live in train/, the test images in test/.
    assert all((out / "train" / e.filename).is_file() for e in lists["train"] + lists["val"])
    assert all((out / "test" / e.filename).is_file() for e in lists["test"])
    assert {e.source for entries in lists.values() for e in entries} == {"radiography"}
    report = json.loads((out / "report.json").read_text())
    assert report["split"] == "radiography" and set(report["lists"]) == {"train", "val", "test"}
    assert report["totals"]["val"] == {"normal": 4, "pneumonia": 4, "COVID-19": 3, "total": 11}
    assert report["sources"]["radiography"]["skip_summary"] == {"class not used": 4}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--split", "covidnet"], "--radiography-db cannot be used with --split covidnet"),
        (["--cohen", "{tmp}"], "--cohen cannot be used with --split radiography"),
        (["--radiography-split", "0.5,0.1,0.1"], "--radiography-split must be three fractions"),
    ],
)
def test_command_line_errors(tmp_path: Path, db: Path, capsys: pytest.CaptureFixture, extra, message) -> None:
    argv = [
        "--radiography-db",
        str(db),
        "--out",
        str(tmp_path / "o"),
        *[a.replace("{tmp}", str(tmp_path)) for a in extra],
    ]
    assert create_covidx.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err


def test_radiography_split_flag_is_refused_for_covidx(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--cohen", str(tmp_path), "--out", str(tmp_path / "o"), "--radiography-split", "0.6,0.2,0.2"]
    assert create_covidx.main(argv) == 2
    assert (
        "--radiography-split applies to --split radiography, not to --split covidnet"
        in capsys.readouterr().err
    )


def test_cache_after_the_build_and_from_existing_lists(tmp_path: Path, db: Path) -> None:
    out = tmp_path / "out"
    assert (
        create_covidx.main(["--radiography-db", str(db), "--out", str(out), "--cache", "24", "--no-progress"])
        == 0
    )
    for split, n in (("train", 69), ("val", 11), ("test", 20)):
        entries = read_list(out / f"{split}_COVIDx.txt").entries
        cached = open_cache(out / "cache-24", split, entries=entries)
        assert len(cached.entries) == n
    # The cached pixels are the originals resized: compare one test image.
    first = read_list(out / "test_COVIDx.txt").entries[0]
    record = next(
        iter(
            read_records(
                open_cache(out / "cache-24", "test", entries=[first]),
                ["normal", "pneumonia", "COVID-19"],
                keep_filenames=[first.filename],
            )
        )
    )
    original = tf.image.resize(
        tf.io.decode_png(tf.io.read_file(str(out / "test" / first.filename)), channels=1), (24, 24)
    )
    assert np.abs(record["image"].numpy().astype(float) - np.rint(original.numpy())).max() <= 1

    # Cache-only mode: an existing dataset, another size, another folder.
    assert (
        create_covidx.main(
            ["--out", str(out), "--cache", "16", "--cache-dir", str(tmp_path / "c16"), "--no-progress"]
        )
        == 0
    )
    assert json.loads((tmp_path / "c16" / "manifest.json").read_text())["size"] == 16
    # --cache-resize torchvision: the PyTorch studies' resize, recorded for train_keras.py --resize to match.
    assert create_covidx.main(["--out", str(out), "--cache", "16", "--cache-dir", str(tmp_path / "tv16"),
                               "--cache-resize", "torchvision", "--no-progress"]) == 0
    manifest = json.loads((tmp_path / "tv16" / "manifest.json").read_text())
    assert (manifest["size"], manifest["resize"]) == (16, "torchvision")


def test_cache_only_needs_the_lists(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert create_covidx.main(["--out", str(tmp_path), "--cache", "32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --cache: ") and f"{tmp_path / 'train_COVIDx.txt'} not found" in err
