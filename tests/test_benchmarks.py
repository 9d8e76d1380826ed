"""benchmarks/: the quick benchmark run end to end, its report, and the SURFsara-style reference loader."""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import scipy.ndimage as ndi

from benchmarks import report
from benchmarks.baseline_loader import (
    BalancedSequence,
    apply_affine_transform,
    apply_transform,
    get_random_transform,
    load_image,
)
from benchmarks.measure import TORCH_MODELS, summarize_windows, time_stream
from benchmarks.run import MEASUREMENTS
from data.lists import ListEntry

NO_CHANGE = {"theta": 0.0, "tx": 0.0, "ty": 0.0, "flip_horizontal": False, "brightness": None}


def _gradient_image(h: int = 40, w: int = 56) -> np.ndarray:
    rows, cols = np.mgrid[0:h, 0:w]
    gray = (40 + 3 * cols + rows).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


# -- the reference loader ---------------------------------------------------------------------

def test_flip_is_a_mirror_and_nothing_else_changes() -> None:
    x = _gradient_image()
    np.testing.assert_array_equal(apply_transform(x, NO_CHANGE), x.astype(np.float32))
    flipped = apply_transform(x, {**NO_CHANGE, "flip_horizontal": True})
    np.testing.assert_array_equal(flipped, x[:, ::-1].astype(np.float32))
    assert not np.array_equal(flipped, x)


def test_rotation_and_shift_match_the_tensorflow_augmentation() -> None:
    """Two independent implementations of Keras 2's geometry agree away from the fill boundary."""
    import tensorflow as tf

    from data.augment import affine_transforms

    h, w, theta, tx, ty = 40, 56, 7.0, 3.3, -5.2
    image = np.random.default_rng(0).random((h, w, 1)).astype(np.float32)
    ours = apply_affine_transform(image, theta=theta, tx=tx, ty=ty)[..., 0]
    assert not np.allclose(ours, image[..., 0])
    transforms = affine_transforms(
        tf.constant([theta]), tf.constant([tx]), tf.constant([ty]), height=h, width=w
    )
    theirs = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=tf.cast(transforms, tf.float32),
        output_shape=[h, w],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    ).numpy()[0, :, :, 0]
    inside = apply_affine_transform(np.ones((h, w, 1)), theta=theta, tx=tx, ty=ty)[..., 0] > 0.999
    interior = ndi.binary_erosion(inside, iterations=1)
    assert interior.mean() > 0.6
    np.testing.assert_allclose(ours[interior], theirs[interior], atol=1e-5)
    # The fill is constant 0 where the shifted image leaves the frame.
    assert (ours[~inside] < 1.0).all() and (ours == 0).mean() > 0.05


def test_random_parameters_stay_in_surfsara_ranges_and_are_seeded() -> None:
    draws = [get_random_transform((100, 80, 3), np.random.default_rng(k)) for k in range(400)]
    assert max(abs(d["theta"]) for d in draws) <= 10.0
    assert max(abs(d["tx"]) for d in draws) <= 10.0 and max(abs(d["ty"]) for d in draws) <= 8.0
    assert max(abs(d["theta"]) for d in draws) > 9.0  # the whole range is used
    assert 0.4 < np.mean([d["flip_horizontal"] for d in draws]) < 0.6
    factors = [d["brightness"] for d in draws]
    assert 0.9 <= min(factors) < 0.91 and 1.09 < max(factors) <= 1.1
    assert get_random_transform((100, 80, 3), np.random.default_rng(5)) == draws[5]


def test_brightness_scales_by_the_drawn_factor() -> None:
    x = np.full((16, 16, 3), 100, np.uint8)
    for factor in (0.9, 1.0, 1.07, 1.1):
        out = apply_transform(x, {**NO_CHANGE, "brightness": factor})
        np.testing.assert_allclose(out, 100 * factor, rtol=1e-6)
    bright = apply_transform(np.full((4, 4, 3), 250, np.uint8), {**NO_CHANGE, "brightness": 1.1})
    assert bright.max() == 255.0  # clipped to the image range


def test_load_image_reads_resizes_and_scales(tmp_path) -> None:
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), np.random.default_rng(1).integers(0, 256, (90, 70), dtype=np.uint8))
    plain = load_image(path, img_size=48, rng=None, augment=None)
    augmented = load_image(path, img_size=48, rng=np.random.default_rng(3))
    for x in (plain, augmented):
        assert x.shape == (48, 48, 3) and x.dtype == np.float32
        assert 0.0 <= x.min() and x.max() <= 1.0
    expected = cv2.resize(cv2.imread(str(path)), (48, 48)).astype(np.float32) / 255.0
    np.testing.assert_array_equal(plain, expected)
    assert np.abs(augmented - plain).mean() > 0.05
    np.testing.assert_array_equal(augmented, load_image(path, img_size=48, rng=np.random.default_rng(3)))
    with pytest.raises(ValueError, match="could not read"):
        load_image(tmp_path / "missing.png", img_size=48, rng=None, augment=None)


def test_sequence_gives_balanced_weighted_batches(tmp_path) -> None:
    labels = ["normal", "pneumonia"] * 4 + ["COVID-19"] * 2
    entries = []
    for i, label in enumerate(labels):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((60, 50), 20 * i, np.uint8))
        entries.append(ListEntry(f"p{i}", f"{i}.png", label))
    seq = BalancedSequence(entries, tmp_path, img_size=32, batch_size=4, seed=0)
    assert len(seq) == math.ceil(8 / 3)
    for i in range(len(seq)):
        x, y, w = seq[i]
        assert x.shape == (4, 32, 32, 3) and y.shape == (4, 3) and w.shape == (4,)
        assert 0.0 <= x.min() and x.max() <= 1.0
        np.testing.assert_array_equal(y.sum(axis=1), 1.0)
        assert y[:, 2].sum() == 1  # exactly one COVID-19 image per batch
        np.testing.assert_array_equal(w, np.where(y[:, 2] == 1, 25.0, 1.0))
    seq.on_epoch_end()
    with pytest.raises(IndexError):
        seq[len(seq)]
    with pytest.raises(ValueError, match="COVID-19 images per batch"):
        BalancedSequence(entries, tmp_path, img_size=32, batch_size=4, covid_per_batch=4)


# -- timing and report ------------------------------------------------------------------------


def test_time_stream_reports_best_and_every_window() -> None:
    result = time_stream(lambda: 3, warmup=2, min_batches=4, min_seconds=0.0, windows=3)
    assert len(result["windows"]) == 3
    assert all(w["images"] == 12 and w["batches"] == 4 for w in result["windows"])
    assert result["images_per_second"] == max(w["images_per_second"] for w in result["windows"])
    summary = summarize_windows([{"images": 10, "seconds": 1.0}, {"images": 30, "seconds": 1.0}])
    assert summary["images_per_second"] == 30 and summary["median_images_per_second"] == 20


def test_ratios_mark_targets_met_not_met_and_not_applicable() -> None:
    def rec(**result):
        return {"result": result}

    measured = {
        "files": rec(images_per_second=20.0),
        "cache": rec(images_per_second=150.0),
        "baseline": rec(images_per_second=10.0),
        "eval": rec(batched={"images_per_second": 40.0}, loop={"images_per_second": 10.0}),
        "fed": rec(images_per_second=500.0, input_bound_fraction=0.05),
    }
    rows = {r["name"].split(" (")[0]: r for r in report.ratios(measured, gpu=False, fed_config={})}
    assert rows["cache pipeline / baseline loader"]["value"] == pytest.approx(15.0)
    assert rows["cache pipeline / baseline loader"]["status"] == "met"
    assert rows["original-file pipeline / baseline loader"]["status"] == "not met"
    assert rows["batched evaluation / per-image loop"]["status"] == "not met"
    assert rows["training images/s per GPU fed from the cache"]["status"] == "n/a: no GPU"
    on_gpu = report.ratios(
        measured, gpu=True, fed_config={"size": 512, "policy": "mixed_float16", "xla": True}
    )
    assert [r["status"] for r in on_gpu[3:]] == ["met", "met"]
    small = report.ratios(
        measured, gpu=True, fed_config={"size": 224, "policy": "mixed_float16", "xla": True}
    )
    assert small[3]["status"].startswith("n/a: needs 512 px")
    missing = report.ratios({"cache": rec(error="boom")}, gpu=False, fed_config={})
    assert {r["status"] for r in missing} == {"not measured"}


# -- the command ------------------------------------------------------------------------------


@pytest.mark.slow
def test_quick_run_measures_everything(tmp_path, capsys) -> None:
    from benchmarks.run import main

    out = tmp_path / "bench.json"
    # XLA compilation alone takes ~10 s per model on 2 cores: the quick run in CI measures it, this test not.
    # The Keras / PyTorch row (7) has its own test below.
    code = main(
        [
            "--quick",
            "--xla",
            "off",
            "--only",
            *[m for m in MEASUREMENTS if m != "torch"],
            "--originals",
            "10",
            "--work-dir",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    doc = json.loads(out.read_text())
    results = {m["id"]: m["result"] for m in doc["measurements"]}
    assert set(results) == {
        "files",
        "cache",
        "baseline",
        "step-float32-xlaoff",
        "step-mixed_bfloat16-xlaoff",
        "eval",
        "fed",
    }
    for name, result in results.items():
        assert "error" not in result, name
        assert result["images_per_second"] > 0, name
        assert result["peak_rss_mib"] > 100, name  # TensorFlow alone takes more
        # Linux caches RSS counters per thread (up to 64 pages each, synced lazily), so VmHWM read after
        # a reset can trail an earlier VmRSS reading by a fraction of a MiB with TensorFlow's threads.
        assert result["peak_rss_mib"] >= result["rss_before_mib"] - 4 > 0, name
    assert (
        results["eval"]["batched"]["images_per_second"] > 0
        and results["eval"]["loop"]["images_per_second"] > 0
    )
    assert results["fed"]["memory"]["images_per_second"] > 0
    assert 0.0 <= results["fed"]["input_bound_fraction"] < 1.0
    assert len(results["baseline"]["windows"]) == 2
    assert doc["settings"]["preset"] == "quick" and doc["settings"]["originals"] == 10
    assert doc["settings"]["xla"] == "off" and doc["settings"]["model"] == "smallcnn"
    assert "TensorFlow" in doc["machine"] and doc["tensorflow"] and doc["command"].endswith(str(out))
    assert doc["workload"]["originals"]["count"] == 10 and doc["failed"] == []
    assert [t["status"] for t in doc["targets"]][3:] == ["n/a: no GPU"] * 2 or doc["gpus"]
    assert {t["status"] for t in doc["targets"][:3]} <= {"met", "not met"}

    assert "| # | measurement | configuration | images/s | peak RSS MiB |" in printed
    for number, text in [
        ("1", "original files"),
        ("2", "cache"),
        ("3", "baseline-style loader"),
        ("4", "train step"),
        ("5", "per-image loop"),
        ("6", "fed from memory"),
    ]:
        assert any(line.startswith(f"| {number} |") and text in line for line in printed.splitlines()), number
    assert "| cache pipeline / baseline loader (2)/(3) |" in printed
    assert (
        f"{results['cache']['images_per_second']:.0f}" in printed
        or f"{results['cache']['images_per_second']:.1f}" in printed
    )

    # Second run in the same work folder, baseline only, in a worker process: files are reused and
    # the worker (which never imports TensorFlow) reports its own, much smaller, peak.
    out2 = tmp_path / "bench2.json"
    assert (
        main(
            [
                "--quick",
                "--only",
                "baseline",
                "--isolate",
                "process",
                "--originals",
                "10",
                "--work-dir",
                str(tmp_path / "work"),
                "--out",
                str(out2),
            ]
        )
        == 0
    )
    doc2 = json.loads(out2.read_text())
    assert doc2["workload"]["originals"]["written_now"] == 0
    (only,) = doc2["measurements"]
    assert only["id"] == "baseline" and only["result"]["images_per_second"] > 0
    assert 0 < only["result"]["peak_rss_mib"] < results["baseline"]["peak_rss_mib"]


@pytest.mark.slow
def test_quick_keras_against_pytorch_row(tmp_path, capsys) -> None:
    pytest.importorskip("torch", reason="PyTorch is optional (pip install -r requirements-torch.txt); "
                                        "row (7) compares Keras with it")
    from benchmarks.run import main

    out = tmp_path / "bench.json"
    # In a worker process, as the default preset runs it; one thread each (TensorFlow's set as it starts).
    argv = ["--quick", "--only", "torch", "--isolate", "process", "--torch-threads", "1"]
    assert main([*argv, "--work-dir", str(tmp_path / "work"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    (unit,) = doc["measurements"]
    result = unit["result"]
    assert unit["id"] == "torch-resnet18"
    assert (unit["params"]["size"], unit["params"]["batch_size"]) == (32, 4)
    keras_rate, torch_rate = result["keras"]["images_per_second"], result["pytorch"]["images_per_second"]
    assert keras_rate > 0 and torch_rate > 0
    assert result["keras_over_pytorch"] == pytest.approx(keras_rate / torch_rate, rel=1e-12)
    assert doc["keras_over_pytorch"] == {"resnet18": pytest.approx(keras_rate / torch_rate, rel=1e-12)}
    # The same network on both sides: torchvision's resnet18 with a 3-class fc.
    from models.torch_reference import BUILDERS

    assert set(TORCH_MODELS) <= set(BUILDERS)
    assert result["parameters"] == {"keras": 11_178_051, "pytorch": 11_178_051}
    assert result["threads"] == 1 and result["device"] in ("cpu", "cuda:0")
    assert result["tensorflow_threads"] == {"intra_op": 1, "inter_op": 1}
    assert unit["config"].endswith("same device and 1 thread each")
    assert [len(result["load_average"][k]) for k in ("before", "after")] == [3, 3]
    assert len(result["keras"]["windows"]) == len(result["pytorch"]["windows"]) == 2  # --quick: 2 windows
    assert all(w["batches"] == 2 and w["images"] == 8 for w in result["pytorch"]["windows"])
    rows = [line for line in printed.splitlines() if line.startswith("| 7 |")]
    assert len(rows) == 2 and "Keras" in rows[0] and "PyTorch" in rows[1]
    assert f"`resnet18` 32 px, batch 4: {keras_rate / torch_rate:.2f}x" in printed
    assert doc["skipped"] == {} and doc["failed"] == []
    # The train steps use random tensors: no originals were written for them.
    assert doc["workload"]["originals"] is None and not (tmp_path / "work").exists()


def test_keras_against_pytorch_is_skipped_with_a_message_without_torch(tmp_path, capsys, monkeypatch) -> None:
    import importlib.util

    from benchmarks import run

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else find_spec(name, *a)
    )
    assert set(run.unavailable(["step", "torch"])) == {"torch"} and run.unavailable(["step"]) == {}
    out = tmp_path / "bench.json"
    assert run.main(["--quick", "--only", "torch", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["measurements"] == [] and doc["keras_over_pytorch"] == {} and doc["failed"] == []
    assert "PyTorch is not installed" in doc["skipped"]["torch"]
    assert "skipped: PyTorch is not installed (pip install -r requirements-torch.txt)" in printed


def test_bad_arguments_give_one_line_errors(capsys) -> None:
    from benchmarks.run import main

    assert main(["--quick", "--model", "resnet5"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["--quick", "--model", "resnet50v2", "--model-size", "16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --model-size must be >=") and err.count("\n") == 1
    assert main(["--quick", "--only", "torch", "--torch-size", "16"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --torch-size must be >= 32 px for models resnet18, received 16\n"
    assert main(["--quick", "--only", "torch", "--torch-threads", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --torch-threads needs --isolate process")
    assert err.endswith("received --isolate none\n")
