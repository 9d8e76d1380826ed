"""create_covidx.py: SHA256SUMS, list fingerprints and SURFsara's list form (issue 14 items 1 and 2)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

import create_covidx
from data.fingerprint import SHA256SUMS, fingerprint_list_files, read_sha256sums, short
from data.labels import CLASSES
from data.lists import read_list
from data.synthetic import make_synthetic_sources


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_synthetic_sources(tmp_path_factory.mktemp("fp") / "sources", size=60, image_size=32, seed=5)


def _args(sources: dict[str, Path], out: Path, *extra: str) -> list[str]:
    flags = [arg for option, folder in sources.items() for arg in (f"--{option}", str(folder))]
    return [*flags, "--out", str(out), "--workers", "1", "--no-progress", *extra]


def _build(
    sources: dict[str, Path], out: Path, capsys: pytest.CaptureFixture, *extra: str
) -> tuple[dict, str]:
    assert create_covidx.main(_args(sources, out, *extra)) == 0
    return json.loads((out / "report.json").read_text()), capsys.readouterr().out


def test_sha256sums_and_fingerprints_name_the_built_dataset(
    sources: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "covidx"
    report, printed = _build(sources, out, capsys)
    sums = read_sha256sums(out / SHA256SUMS)
    listed = {
        f"{split}/{e.filename}"
        for split in ("train", "test")
        for e in read_list(out / f"{split}_COVIDx.txt").entries
    }
    # Every listed image and nothing else, each hash equal to the file's own.
    assert (
        set(sums) == listed
        and len(sums) == report["totals"]["train"]["total"] + report["totals"]["test"]["total"]
    )
    for name, digest in sums.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    for split in ("train", "test"):
        name = f"{split}_COVIDx.txt"
        fingerprint = report["fingerprints"][name]
        assert fingerprint.startswith("sha256:") and len(fingerprint) == len("sha256:") + 64
        # What a trainer or evaluator computes from the list and its images is the build's fingerprint.
        recomputed, _ = fingerprint_list_files(read_list(out / name).entries, out / split, dataset_dir=out)
        assert recomputed == fingerprint
        assert f"{name:<17} {short(fingerprint)}" in printed
    assert report["list_format"] == "covidnet" and report["sha256sums"] == SHA256SUMS


def test_rebuild_gives_the_same_fingerprints_and_a_changed_image_changes_only_its_list(
    sources: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    first, _ = _build(sources, tmp_path / "a", capsys)
    again, _ = _build(sources, tmp_path / "a", capsys)  # re-run: images already present, hashes reused
    assert again["images"]["written"] == 0 and again["fingerprints"] == first["fingerprints"]
    other, _ = _build(sources, tmp_path / "b", capsys)  # a clean build elsewhere
    assert other["fingerprints"] == first["fingerprints"]

    # One source image of a test-list record changed by one pixel value: only the test list's fingerprint
    # moves.
    copy = {option: tmp_path / "changed" / option for option in sources}
    for option, folder in sources.items():
        shutil.copytree(folder, copy[option])
    test_entry = next(e for e in read_list(tmp_path / "a" / "test_COVIDx.txt").entries if e.source == "rsna")
    dcm = next((copy["rsna"] / "stage_2_train_images").glob(f"{Path(test_entry.filename).stem}.dcm"))
    import pydicom

    ds = pydicom.dcmread(dcm)
    pixels = ds.pixel_array.copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    ds.set_pixel_data(pixels, ds.PhotometricInterpretation, int(ds.BitsStored))
    ds.save_as(dcm)
    changed, _ = _build(copy, tmp_path / "c", capsys)
    assert changed["fingerprints"]["train_COVIDx.txt"] == first["fingerprints"]["train_COVIDx.txt"]
    assert changed["fingerprints"]["test_COVIDx.txt"] != first["fingerprints"]["test_COVIDx.txt"]


def test_surfsara_split_writes_lines_surfsaras_reader_takes(
    sources: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    surfsara = {k: v for k, v in sources.items() if k in ("cohen", "rsna")}
    out = tmp_path / "surfsara"
    report, printed = _build(surfsara, out, capsys, "--split", "surfsara")
    assert report["list_format"] == "surfsara" and "surfsara lists" in printed
    datasets = {c: i for i, c in enumerate(CLASSES)}  # SURFsara's data.py: datasets[l.split()[-1]]
    for split in ("train", "test"):
        lines = (out / f"{split}_COVIDx.txt").read_text().splitlines()
        assert lines and all(len(line.split()) == 3 for line in lines)
        assert {line.split()[-1] for line in lines} <= set(datasets)
        assert all((out / split / line.split()[1]).is_file() for line in lines)
    # --list-format overrides the split's default; readers here read both forms alike.
    covidnet = tmp_path / "covidnet-form"
    report, _ = _build(surfsara, covidnet, capsys, "--split", "surfsara", "--list-format", "covidnet")
    lines = (covidnet / "train_COVIDx.txt").read_text().splitlines()
    assert report["list_format"] == "covidnet" and all(len(line.split()) == 4 for line in lines)
    assert [e.filename for e in read_list(covidnet / "train_COVIDx.txt").entries] == [
        e.filename for e in read_list(out / "train_COVIDx.txt").entries
    ]


def test_list_formats_match_the_data_layer_and_bad_ones_are_refused(capsys: pytest.CaptureFixture) -> None:
    from data.lists import LIST_FORMATS

    with pytest.raises(SystemExit) as exit_info:
        create_covidx.parse_args(["--synthetic", "x", "--list-format", "csv"])
    assert exit_info.value.code == 2 and "invalid choice: 'csv'" in capsys.readouterr().err
    # The choices are the data layer's.
    parsed = [create_covidx.parse_args(["--list-format", f]).list_format for f in LIST_FORMATS]
    assert parsed == list(LIST_FORMATS)
    assert LIST_FORMATS == ("covidnet", "surfsara")
