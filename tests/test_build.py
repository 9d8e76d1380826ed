"""End-to-end builds: lists, splits, dedup, determinism, re-runs, kills, bad images, the report."""
from __future__ import annotations

import csv
import json
import os
import shutil
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from common import fsutil
from common.fsutil import is_partial
from data.build import ImageTask, TaskResult, build_covidx, is_intact_image, order_records, run_tasks
from data.dicom import dicom_to_uint8
from data.lists import read_list
from data.sources import ScanContext, cohen
from data.splits import COVIDNET, assign_splits
from data.synthetic import make_synthetic_sources


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_synthetic_sources(tmp_path_factory.mktemp("syn") / "sources", size=60, image_size=32, seed=3)


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def img(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((32, 32), value, np.uint8))


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_synthetic_build_lists_files_splits_and_report(sources: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "covidx"
    result = build_covidx(out_dir=out, sources=sources, workers=1)
    assert result.usable
    counts = result.counts()
    assert all(counts["test"][c] >= 3 for c in counts["test"]), counts
    train, test = read_list(out / "train_COVIDx.txt"), read_list(out / "test_COVIDx.txt")
    assert train.bad_lines == [] == test.bad_lines and train.duplicates == 0 == test.duplicates
    assert len(lines(out / "train_COVIDx.txt")) == sum(counts["train"].values())
    for split, listed in (("train", train), ("test", test)):
        for e in listed.entries:
            assert (out / split / e.filename).is_file() and e.source in {
                "cohen",
                "fig1",
                "actmed",
                "sirm",
                "ricord",
                "rsna",
            }
            assert len(lines(out / f"{split}_COVIDx.txt")[0].split()) >= 4
    # files on disk are exactly the listed ones
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(e.filename for e in train.entries)
    # no patient on both sides
    assert not ({e.patient_id for e in train.entries} & {e.patient_id for e in test.entries})
    # COVID-Net's missing comma: '191' and 'COVID-00024' stay in train
    assert {"191", "COVID-00024"} <= {e.patient_id for e in train.entries}
    # COVID-Net's order: per class cohen, fig1, actmed, sirm, ricord; then RSNA normal, pneumonia
    order = [(e.label, e.source) for e in train.entries]
    firsts = list(dict.fromkeys(order))
    assert firsts == [
        ("pneumonia", "cohen"),
        ("COVID-19", "cohen"),
        ("COVID-19", "fig1"),
        ("COVID-19", "actmed"),
        ("COVID-19", "sirm"),
        ("COVID-19", "ricord"),
        ("normal", "rsna"),
        ("pneumonia", "rsna"),
    ]
    report = json.loads((out / "report.json").read_text())
    assert report == result.report
    for _name, src in report["sources"].items():
        listed = sum(src["classes"][c][s] for c in src["classes"] for s in ("train", "test"))
        assert src["rows_read"] == src["usable_rows"] + sum(
            n
            for r, n in src["skip_summary"].items()
            if r not in {"duplicate", "duplicate image", "name collision"}
        )
        assert listed == src["images_written"] and src["skipped_count"] == len(src["skipped"])
    assert report["totals"]["test"]["total"] == sum(counts["test"].values())
    assert report["images"] == {
        "written": sum(map(sum, (c.values() for c in counts.values()))),
        "already_present": 0,
        "failed": 0,
    }
    assert report["sources"]["rsna"]["skip_summary"]["extra box row"] > 0
    # the grayscale conversion of SIRM's 3-channel PNGs, with spaces removed from the names
    sirm = [e for e in train.entries + test.entries if e.source == "sirm"]
    assert sirm and all(" " not in e.filename for e in sirm)
    sirm_split = "test" if sirm[0] in test.entries else "train"
    assert cv2.imread(str(out / sirm_split / sirm[0].filename), cv2.IMREAD_UNCHANGED).ndim == 2


def test_lists_are_byte_identical_whatever_the_workers_and_reruns_replace(
    sources: dict[str, Path], tmp_path: Path
) -> None:
    one = build_covidx(out_dir=tmp_path / "w1", sources=sources, workers=1)
    two = build_covidx(out_dir=tmp_path / "w2", sources=sources, workers=2)
    for name in ("train_COVIDx.txt", "test_COVIDx.txt"):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()
    strip = lambda r: {k: v for k, v in r.items() if k != "out_dir"}  # noqa: E731
    assert strip(one.report) == strip(two.report)
    for split in ("train", "test"):
        for f in (tmp_path / "w1" / split).iterdir():
            assert f.read_bytes() == (tmp_path / "w2" / split / f.name).read_bytes()
    # a re-run replaces the lists (SURFsara's notebook appended) and keeps intact images
    before = (tmp_path / "w2" / "train_COVIDx.txt").read_bytes()
    again = build_covidx(out_dir=tmp_path / "w2", sources=sources, workers=2)
    assert (tmp_path / "w2" / "train_COVIDx.txt").read_bytes() == before
    total = sum(sum(c.values()) for c in again.counts().values())
    assert again.report["images"] == {"written": 0, "already_present": total, "failed": 0}


def test_killed_run_leftovers_are_cleaned_and_damaged_outputs_rewritten(
    sources: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "covidx"
    first = build_covidx(out_dir=out, sources=sources, workers=1)
    victim = out / "train" / first.entries["train"][0].filename
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])  # as a non-atomic writer killed mid-file would leave it
    assert not is_intact_image(victim)
    partial = fsutil._temp_name(out / "test" / "x.png")  # what a writer killed before its rename leaves
    partial.write_bytes(b"half")
    assert is_partial(partial)
    (out / "train_COVIDx.txt").write_text("garbage that must not survive\n")
    again = build_covidx(out_dir=out, sources=sources, workers=1)
    assert victim.read_bytes() == good and not partial.exists()
    assert again.report["images"]["written"] == 1
    assert read_list(out / "train_COVIDx.txt").entries == first.entries["train"]
    assert not [p for p in out.rglob("*") if is_partial(p)]


def test_bad_images_are_skipped_with_reasons_and_the_run_goes_on(tmp_path: Path) -> None:
    root = tmp_path / "cohen"
    img(root / "images" / "good.png")
    (root / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = cv2.imencode(".png", np.zeros((32, 32), np.uint8))[1].tobytes()
    (root / "images" / "truncated.png").write_bytes(good[:-30])
    rows = [
        ["1", "COVID-19", "PA", "good.png"],
        ["2", "COVID-19", "PA", "corrupt.jpg"],
        ["3", "COVID-19", "PA", "truncated.png"],
        ["4", "COVID-19", "PA", "absent.png"],
    ]
    write_csv(root / "metadata.csv", ["patientid", "finding", "view", "filename"], rows)
    result = build_covidx(out_dir=tmp_path / "out", sources={"cohen": root}, workers=1)
    assert [e.filename for e in result.entries["train"]] == ["good.png"]
    skipped = {s["row"]: s["reason"] for s in result.report["sources"]["cohen"]["skipped"]}
    assert skipped == {2: "corrupt image", 3: "corrupt image", 4: "missing image"}
    assert result.report["images"] == {"written": 1, "already_present": 0, "failed": 2}
    assert not (tmp_path / "out" / "train" / "corrupt.jpg").exists()


def test_duplicates_collisions_and_patients_kept_on_one_side(tmp_path: Path) -> None:
    cohen_root = tmp_path / "cohen"
    for name, value in (("a.png", 10), ("b.png", 20), ("s.png", 30), ("n.png", 40)):
        img(cohen_root / "images" / name, value)
    rows = [
        ["285", "COVID-19", "PA", "a.png"],
        ["285", "COVID-19", "AP", "a.png"],  # same patient, same image: COVID-Net's dedup
        ["339", "COVID-19", "PA", "a.png"],  # another patient, same file (cohen's 285/339 rows)
        ["300", "SARS", "PA", "s.png"],
        [
            "8",
            "Normal",
            "PA",
            "n.png",
        ],  # 8 is a pneumonia test patient: its normal image must not be in train
        ["8", "SARS", "PA", "b.png"],
    ]
    write_csv(cohen_root / "metadata.csv", ["patientid", "finding", "view", "filename"], rows)
    result = build_covidx(out_dir=tmp_path / "out", sources={"cohen": cohen_root}, workers=1)
    skipped = result.report["sources"]["cohen"]["skipped"]
    assert [(s["row"], s["reason"]) for s in skipped] == [(2, "duplicate"), (3, "duplicate image")]
    assert "same file as cohen row 1 (patient 285, train)" in skipped[1]["detail"]
    assert [(e.patient_id, e.filename, e.label) for e in result.entries["test"]] == [
        ("8", "n.png", "normal"),
        ("8", "b.png", "pneumonia"),
    ]
    assert result.report["split_adjustments"] == [
        {
            "source": "cohen",
            "row": 5,
            "patient": "8",
            "image": "n.png",
            "reason": "patient 8 has test images, so this normal image goes to test too",
        }
    ]
    # a name collision between two sources
    fig_root2 = tmp_path / "fig2"
    img(fig_root2 / "images" / "COVID-00001.png", 77)
    img(cohen_root / "images" / "COVID-00001.png", 55)
    with open(cohen_root / "metadata.csv", "a", newline="") as fh:
        csv.writer(fh).writerow(["500", "COVID-19", "PA", "COVID-00001.png"])
    write_csv(fig_root2 / "metadata.csv", ["patientid", "finding"], [["COVID-00001", "COVID-19"]])
    again = build_covidx(
        out_dir=tmp_path / "out2", sources={"cohen": cohen_root, "figure1": fig_root2}, workers=1
    )
    collision = again.report["sources"]["fig1"]["skipped"]
    assert [s["reason"] for s in collision] == ["name collision"] and "cohen row 7" in collision[0]["detail"]
    assert cv2.imread(str(tmp_path / "out2" / "train" / "COVID-00001.png"), 0)[0, 0] == 55


def test_covidnet_quirk_191_and_covid_00024_are_not_test_patients(tmp_path: Path) -> None:
    root = tmp_path / "cohen"
    for i, pid in enumerate(("190", "191", "192")):
        img(root / "images" / f"{pid}.png", 10 * i)
    write_csv(
        root / "metadata.csv",
        ["patientid", "finding", "view", "filename"],
        [[p, "COVID-19", "PA", f"{p}.png"] for p in ("190", "191", "192")],
    )
    scan = cohen.scan(root, ScanContext(rules=COVIDNET))
    assignment = assign_splits(order_records([scan]), COVIDNET)
    assert [(r.patient_id, s) for r, s in assignment.assigned] == [
        ("190", "test"),
        ("191", "train"),
        ("192", "train"),
    ]
    assert "191COVID-00024" in assignment.test_patients["COVID-19"]


def test_nothing_usable_and_argument_errors(tmp_path: Path) -> None:
    root = tmp_path / "cohen"
    write_csv(
        root / "metadata.csv",
        ["patientid", "finding", "view", "filename"],
        [["1", "COVID-19", "PA", "x.png"]],
    )
    result = build_covidx(out_dir=tmp_path / "out", sources={"cohen": root}, workers=1)
    assert not result.usable and lines(tmp_path / "out" / "train_COVIDx.txt") == []
    assert result.report["sources"]["cohen"]["skip_summary"] == {"missing image": 1}
    with pytest.raises(ValueError, match="--figure1 cannot be used with --split surfsara"):
        build_covidx(out_dir=tmp_path / "o", sources={"cohen": root, "figure1": root}, split="surfsara")
    with pytest.raises(ValueError, match="--split: unknown split rule; allowed: .*received 'other'"):
        build_covidx(out_dir=tmp_path / "o", sources={"cohen": root}, split="other")
    with pytest.raises(ValueError, match="no source given"):
        build_covidx(out_dir=tmp_path / "o", sources={})
    with pytest.raises(ValueError, match="--workers must be at least 1"):
        build_covidx(out_dir=tmp_path / "o", sources={"cohen": root}, workers=0)
    with pytest.raises(ValueError, match="would write into the --cohen folder"):
        build_covidx(out_dir=root, sources={"cohen": root})
    with pytest.raises(FileNotFoundError, match=r"--sirm: folder .*nosuch does not exist"):
        build_covidx(out_dir=tmp_path / "o", sources={"cohen": root, "sirm": tmp_path / "nosuch"})
    assert not (tmp_path / "o").exists()  # checked before any work


def test_surfsara_split(sources: dict[str, Path], tmp_path: Path) -> None:
    result = build_covidx(
        out_dir=tmp_path / "s",
        sources={k: sources[k] for k in ("cohen", "rsna")},
        split="surfsara",
        workers=1,
    )
    entries = result.entries["train"] + result.entries["test"]
    assert {e.source for e in entries} == {"cohen", "rsna"}
    cohen_entries = [e for e in entries if e.source == "cohen"]
    # PA only: the synthetic cohen cycles through five frontal views
    assert 0 < len(cohen_entries) < result.report["sources"]["cohen"]["usable_rows"] + 1
    assert {e.patient_id for e in result.entries["test"] if e.source == "cohen"} <= {
        "8",
        "31",
        "19",
        "20",
        "36",
        "42",
        "86",
    }
    assert result.report["split"] == "surfsara"
    skips = result.report["sources"]["cohen"]["skip_summary"]
    assert skips["view not kept"] > 0 and "COVID-19 image duplicated in SIRM" not in skips


@pytest.mark.realdata
def test_real_cohen_figure1_actualmed_build(realdata_dir: Path, tmp_path: Path) -> None:
    src = {
        "cohen": realdata_dir / "cohen-2020-06",
        "figure1": realdata_dir / "figure1",
        "actualmed": realdata_dir / "actualmed",
    }
    result = build_covidx(out_dir=tmp_path / "real", sources=src, workers=2)
    assert result.counts() == {
        "train": {"normal": 0, "pneumonia": 8, "COVID-19": 63},
        "test": {"normal": 0, "pneumonia": 5, "COVID-19": 35},
    }
    by_source: dict[str, int] = defaultdict(int)
    for e in result.entries["train"] + result.entries["test"]:
        by_source[e.source] += 1
        split = "train" if e in result.entries["train"] else "test"
        original = {
            "cohen": src["cohen"] / "images",
            "fig1": src["figure1"] / "images",
            "actmed": src["actualmed"] / "images",
        }[e.source] / e.filename
        assert (
            tmp_path / "real" / split / e.filename
        ).read_bytes() == original.read_bytes()  # copied verbatim
    assert dict(by_source) == {"cohen": 68, "fig1": 35, "actmed": 8}
    assert result.report["sources"]["cohen"]["skip_summary"]["missing image"] == 238
    test_ids = {e.patient_id for e in result.entries["test"]}
    assert {"8", "31", "19", "20", "COVID-00025"} <= test_ids and not test_ids & {"191", "COVID-00024"}
    shutil.rmtree(tmp_path / "real")


def _exit_on_odd(task: ImageTask, options: object = None) -> TaskResult:
    """Stands for a decoder that kills its process (segfault, out-of-memory killer)."""
    if task.index % 2:
        os._exit(3)
    return TaskResult(task.index, "written")


def test_a_dying_worker_fails_only_its_task_and_never_hangs() -> None:
    tasks = [ImageTask(i, f"/in/{i}", f"/out/{i}.png", "copy") for i in range(6)]
    results = run_tasks(tasks, workers=2, func=_exit_on_odd)
    assert [r.status for r in results] == ["written", "failed"] * 3
    assert {r.reason for r in results[1::2]} == {"worker crashed"}


@pytest.mark.realdata
def test_real_dicoms_through_rsna_and_ricord_layouts(realdata_dir: Path, tmp_path: Path) -> None:
    dicom = realdata_dir / "dicom"
    rsna = tmp_path / "rsna"
    (rsna / "stage_2_train_images").mkdir(parents=True)
    shutil.copy(
        dicom / "rsna_cr_chest_mono2_jpeg_baseline.dcm", rsna / "stage_2_train_images" / "twin-mono2.dcm"
    )
    shutil.copy(
        dicom / "rsna_cr_chest_mono1_jpeg_baseline.dcm", rsna / "stage_2_train_images" / "twin-mono1.dcm"
    )
    write_csv(
        rsna / "stage_2_detailed_class_info.csv",
        ["patientId", "class"],
        [["twin-mono2", "Normal"], ["twin-mono1", "Lung Opacity"], ["twin-mono1", "Lung Opacity"]],
    )
    write_csv(
        rsna / "stage_2_train_labels.csv",
        ["patientId", "x", "y", "width", "height", "Target"],
        [
            ["twin-mono2", "", "", "", "", "0"],
            ["twin-mono1", "1", "2", "3", "4", "1"],
            ["twin-mono1", "5", "6", "7", "8", "1"],
        ],
    )
    ricord = (
        tmp_path / "ricord" / "MIDRC-RICORD-1C-419639-000001" / "01-01-2020-NA-XR CHEST-12345" / "1.000-NA-1"
    )
    ricord.mkdir(parents=True)
    shutil.copy(dicom / "cr_chest_mono1_15bit_j2k.dcm", ricord / "1-1.dcm")
    (tmp_path / "ricord" / "ricord_data_set.txt").write_text(
        "MIDRC-RICORD-1C-419639-000001-12345-0.png 100 200 1700 1800\n"
    )
    result = build_covidx(
        out_dir=tmp_path / "out", sources={"rsna": rsna, "ricord": tmp_path / "ricord"}, workers=2
    )
    out = tmp_path / "out" / "train"
    mono2 = cv2.imread(str(out / "twin-mono2.png"), cv2.IMREAD_UNCHANGED)
    mono1 = cv2.imread(str(out / "twin-mono1.png"), cv2.IMREAD_UNCHANGED)
    assert mono2.shape == (1024, 1024) and mono2.dtype == np.uint8
    assert np.array_equal(mono1, 255 - mono2)  # the MONOCHROME1 twin's PNG is the exact inverse
    # the single-image RICORD patient is a COVID-Net test patient; its image is cropped by the list's box
    crop = cv2.imread(
        str(tmp_path / "out" / "test" / "MIDRC-RICORD-1C-419639-000001-12345-0.png"), cv2.IMREAD_UNCHANGED
    )
    assert crop.shape == (1600, 1600)
    assert np.array_equal(crop, dicom_to_uint8(ricord / "1-1.dcm")[200:1800, 100:1700])
    assert [(e.patient_id, e.label) for e in result.entries["train"]] == [
        ("twin-mono2", "normal"),
        ("twin-mono1", "pneumonia"),
    ]
    assert result.report["sources"]["rsna"]["skip_summary"] == {"extra box row": 1}


def _tagged_jpeg(path: Path, orientation: int) -> np.ndarray:
    """A 40 x 20 (h x w) JPEG whose top-left quarter is bright, tagged with an EXIF orientation."""
    from PIL import Image

    pixels = np.full((40, 20), 30, np.uint8)
    pixels[:10, :10] = 230
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return pixels


def test_exif_rotated_jpegs_are_written_upright(tmp_path: Path) -> None:
    """cv2.imread (the baseline's reader) applies EXIF orientation and TensorFlow does not: the copy is
    upright.
    """
    import tensorflow as tf

    from data.build import write_image
    from data.images import exif_orientation

    src = tmp_path / "rotated.jpg"
    _tagged_jpeg(src, 6)  # 6: the viewer rotates 90 degrees clockwise
    assert exif_orientation(src.read_bytes()) == 6
    expected = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
    assert expected.shape == (20, 40) and expected[:10, 30:].mean() > 200  # bright corner now top right

    dest = tmp_path / "out" / "rotated.jpg"
    assert write_image(ImageTask(0, str(src), str(dest), "copy")).status == "written"
    assert exif_orientation(dest.read_bytes()) == 1
    seen_by_tf = tf.io.decode_jpeg(dest.read_bytes(), channels=1).numpy()[..., 0]
    assert seen_by_tf.shape == (20, 40)
    assert np.abs(seen_by_tf.astype(int) - expected.astype(int)).max() <= 12  # JPEG re-encoding only
    # A re-run keeps the upright file although its size differs from the source's.
    assert write_image(ImageTask(0, str(src), str(dest), "copy")).status == "present"

    untagged = tmp_path / "plain.jpg"
    _tagged_jpeg(untagged, 1)
    dest2 = tmp_path / "out" / "plain.jpg"
    write_image(ImageTask(1, str(untagged), str(dest2), "copy"))
    assert dest2.read_bytes() == untagged.read_bytes()  # untagged or upright files are copied byte for byte
