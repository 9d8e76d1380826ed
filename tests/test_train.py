"""train_keras.py end to end on tiny synthetic images: outputs, resume, kill safety, bad input."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import train_keras
from conftest import REPO_ROOT, log_epochs, tiny_run_config, train_args
from training.checkpoints import find_resume_state, list_checkpoints


@pytest.mark.slow
def test_train_writes_everything_a_user_needs(tiny_covidx: Path, capsys: pytest.CaptureFixture) -> None:
    assert train_keras.main(train_args(tiny_covidx, name="full-")) == 0
    out = capsys.readouterr().out
    run_dir = tiny_covidx / "output" / "full-lr0.001"
    # SURFsara's per-epoch names, in Keras 2's HDF5 weights layout.
    checkpoints = list_checkpoints(run_dir)
    assert [epoch for epoch, _ in checkpoints] == [1, 2]
    with h5py.File(checkpoints[-1][1], "r") as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]
        assert names[0] == "input_1" and names[-1] == "FC_3"
    config = json.loads((run_dir / "run_config.json").read_text())
    assert config["model"]["name"] == "smallcnn" and config["model"]["input_shape"] == [32, 32, 3]
    assert config["batch_size"] == 4 and config["class_weights"] == [1.0, 1.0, 25.0]
    assert log_epochs(run_dir) == [0, 1]
    assert (run_dir / "final_model.hdf5").is_file()
    assert (run_dir / "saved_model" / "saved_model.pb").is_file()
    assert list((run_dir / "logs").rglob("events.out.tfevents.*"))
    metrics = json.loads((run_dir / "test_evaluation" / "metrics.json").read_text())
    assert metrics["n_images"] == 15
    assert "Sens Normal:" in out and "PPV Normal:" in out and "Research use only" in out
    state = find_resume_state(run_dir / "resume")
    assert state is not None and state[1]["epoch"] == 2
    assert not [p for p in run_dir.rglob(".partial-*")]


@pytest.mark.slow
def test_trained_model_beats_chance(tiny_covidx: Path) -> None:
    """The class signal of the synthetic images is learnable: far above the 1/3 of chance."""
    assert train_keras.main(train_args(tiny_covidx, "--val_split", "0", epochs=6, name="learn-")) == 0
    metrics = json.loads(
        (tiny_covidx / "output" / "learn-lr0.001" / "test_evaluation" / "metrics.json").read_text()
    )
    assert metrics["metrics"]["accuracy"]["value"] >= 0.6


@pytest.mark.slow
def test_rerun_resumes_and_extends(tiny_covidx: Path, capsys: pytest.CaptureFixture) -> None:
    args = train_args(tiny_covidx, epochs=1, name="resume-")
    assert train_keras.main(args) == 0
    run_dir = tiny_covidx / "output" / "resume-lr0.001"
    state1 = json.loads((run_dir / "resume" / "epoch-0001" / "state.json").read_text())
    capsys.readouterr()
    # Same command with more epochs: continues at epoch 2, does not redo epoch 1.
    assert train_keras.main(train_args(tiny_covidx, epochs=3, name="resume-")) == 0
    err = capsys.readouterr().err
    assert "resuming" in err and "after epoch 1" in err
    assert log_epochs(run_dir) == [0, 1, 2]
    assert [e for e, _ in list_checkpoints(run_dir)] == [1, 2, 3]
    assert state1["plateau"]["wait"] == 0
    # A different setting is refused instead of silently mixing two runs.
    code = train_keras.main(train_args(tiny_covidx, "--img_size", "40", epochs=3, name="resume-"))
    assert code == 2
    assert "different settings" in capsys.readouterr().err
    # Starting over removes the previous run's epochs.
    assert train_keras.main(train_args(tiny_covidx, "--resume", "off", epochs=1, name="resume-")) == 0
    assert log_epochs(run_dir) == [0]
    assert [e for e, _ in list_checkpoints(run_dir)] == [1]
    # Checkpoints past epoch 1 with no resume state: a deleted resume state, refused, nothing deleted.
    shutil.rmtree(run_dir / "resume")
    shutil.copy(list_checkpoints(run_dir)[0][1], run_dir / "cp-07-0.50.hdf5")
    capsys.readouterr()
    assert train_keras.main(train_args(tiny_covidx, epochs=2, name="resume-")) == 2
    err = capsys.readouterr().err
    assert "no resume state" in err and "checkpoints past epoch 1" in err
    assert (run_dir / "cp-07-0.50.hdf5").is_file()
    # Without this run's run_config.json the folder is some other run's: refused, nothing deleted.
    (run_dir / "cp-07-0.50.hdf5").unlink()
    config_text = (run_dir / "run_config.json").read_text()
    (run_dir / "run_config.json").unlink()
    assert train_keras.main(train_args(tiny_covidx, epochs=2, name="resume-")) == 2
    assert "no resume state and no run_config.json of this run" in capsys.readouterr().err
    assert [e for e, _ in list_checkpoints(run_dir)] == [1]
    # With it, this is the case (killed after cp-01, before its resume state; a SLURM requeue):
    # the same command starts the run over.
    (run_dir / "run_config.json").write_text(config_text)
    assert train_keras.main(train_args(tiny_covidx, epochs=2, name="resume-")) == 0
    err = capsys.readouterr().err
    assert "stopped before its first resume state was complete: starting the run over" in err
    assert log_epochs(run_dir) == [0, 1]
    assert [e for e, _ in list_checkpoints(run_dir)] == [1, 2]
    assert find_resume_state(run_dir / "resume")[1]["epoch"] == 2


def test_nan_loss_stops_with_a_clear_message(tiny_covidx: Path, capsys: pytest.CaptureFixture) -> None:
    code = train_keras.main(train_args(tiny_covidx, "--lr", "1e12", epochs=2, name="nan-"))
    assert code == 1
    err = capsys.readouterr().err
    assert "training loss became nan" in err and "epoch 1" in err
    assert list_checkpoints(tiny_covidx / "output" / "nan-lr1000000000000.0") == []


def test_mixed_precision_runs_on_cpu_and_exports_float32(tiny_covidx: Path) -> None:
    import keras

    assert train_keras.main(train_args(tiny_covidx, "--mixed_precision", "on", epochs=1, name="mp-")) == 0
    run_dir = tiny_covidx / "output" / "mp-lr0.001"
    assert json.loads((run_dir / "run_config.json").read_text())["mixed_precision"] is True
    model = keras.models.load_model(run_dir / "final_model.hdf5", compile=False)
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    out = model.predict(np.random.default_rng(0).random((2, 32, 32, 3), np.float32), verbose=0)
    assert out.dtype == np.float32 and np.allclose(out.sum(axis=1), 1.0, atol=1e-5)
    assert keras.config.dtype_policy().name == "float32"  # nothing global left behind


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda root: (root / "bad.txt").write_text("a missing.png normal\n"),
            "missing.png: file does not exist",
        ),
        (lambda root: (root / "bad.txt").write_text("a train000.png covid\n"), "no known label"),
        (lambda root: (root / "bad.txt").write_text(""), "has no images"),
    ],
)
def test_bad_lists_fail_before_training(
    tiny_covidx: Path, capsys: pytest.CaptureFixture, mutate, message
) -> None:
    mutate(tiny_covidx)
    args = train_args(tiny_covidx, name="bad-")
    args[args.index("--trainfile") + 1] = str(tiny_covidx / "bad.txt")
    assert train_keras.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tiny_covidx / "output" / "bad-lr0.001" / "training_log.csv").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "resnet5"], "resnet50v2"),  # the error lists the valid names
        (
            ["--weights", "imagenet", "--model", "resnet50v2"],
            "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        (["--datapipeline", "chexpert"], "not supported"),
        (["--checkpoint", "/nonexistent/cp.hdf5"], "/nonexistent/cp.hdf5"),
        (["--model", "xception", "--img_size", "32"], "too small for --model xception"),
    ],
)
def test_bad_flags_give_one_line(
    tiny_covidx: Path, capsys: pytest.CaptureFixture, monkeypatch, extra, message
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tiny_covidx / "empty-keras-home"))
    args = train_args(tiny_covidx, name="flags-")
    args += extra
    assert train_keras.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.slow
def test_training_from_the_cache_needs_no_original_files(tiny_covidx: Path, tmp_path: Path) -> None:
    from data.cache import build_cache
    from data.lists import read_list

    lists = {
        split: (read_list(tiny_covidx / f"{split}.txt").entries, tiny_covidx / "data" / split)
        for split in ("train", "test")
    }
    cache = build_cache(tmp_path / "cache", lists=lists, size=40)
    args = train_args(tiny_covidx, "--cache", str(cache), epochs=1, name="cached-")
    args[args.index("--data_path") + 1] = str(tmp_path / "originals-not-here")
    assert train_keras.main(args) == 0
    run_dir = tiny_covidx / "output" / "cached-lr0.001"
    assert json.loads((run_dir / "run_config.json").read_text())["cache"] == str(cache)
    metrics = json.loads((run_dir / "test_evaluation" / "metrics.json").read_text())
    assert metrics["n_images"] == 15
    assert [e for e, _ in list_checkpoints(run_dir)] == [1]


@pytest.mark.slow
def test_valfile_validates_on_that_list(tiny_covidx: Path, capsys: pytest.CaptureFixture) -> None:
    """--valfile: a drawn validation list (images in DATA_PATH/train), as create_covidx.py --radiography-db
    writes.
    """
    lines = (tiny_covidx / "train.txt").read_text().splitlines(keepends=True)
    (tiny_covidx / "train-part.txt").write_text("".join(lines[:36]) + lines[0])  # one duplicate line
    (tiny_covidx / "val-part.txt").write_text("".join(lines[36:]))
    args = train_args(tiny_covidx, "--valfile", str(tiny_covidx / "val-part.txt"), epochs=1, name="valfile-")
    args[args.index("--trainfile") + 1] = str(tiny_covidx / "train-part.txt")
    assert train_keras.main(args) == 0
    logged = capsys.readouterr().err  # main() sends its log to stderr
    assert "validation: 9 images of --valfile" in logged
    assert "1 duplicate lines dropped" in logged
    config = json.loads((tiny_covidx / "output" / "valfile-lr0.001" / "run_config.json").read_text())
    assert config["valfile"].endswith("val-part.txt") and config["val_split"] == 0.0

    # A validation list that repeats training images is refused before training.
    (tiny_covidx / "val-leak.txt").write_text("".join(lines[30:]))
    args[args.index("--valfile") + 1] = str(tiny_covidx / "val-leak.txt")
    args[args.index("--name") + 1] = "leak-"
    assert train_keras.main(args) == 2
    assert "lists 6 images that --trainfile" in capsys.readouterr().err


def test_surfsara_flag_spellings_and_weights_rules(tiny_covidx: Path, monkeypatch, caplog) -> None:
    """A bare --regularizer (SURFsara's switch), models without ImageNet weights, --checkpoint without the
    file.
    """
    monkeypatch.setenv("KERAS_HOME", str(tiny_covidx / "empty-keras-home"))
    args = train_keras.parse_args(["--regularizer", "--model", "smallcnn", "--img_size", "32"])
    assert args.regularizer == train_keras.SURFSARA_REGULARIZER == 1e-3
    assert train_keras.parse_args([]).regularizer == 0.0
    base = train_args(tiny_covidx)
    base = base[: base.index("--weights")] + base[base.index("--weights") + 2 :]  # default: imagenet
    with caplog.at_level("WARNING"):
        config = train_keras.resolve_config(
            train_keras.parse_args(base + ["--regularizer"]), replicas=1, strategy_name="default", gpu=False
        )
    assert config.weights == "none" and config.model["backbone_l2"] == 1e-3
    assert "smallcnn has no ImageNet weights; it starts from random weights" in caplog.text
    # resnet50v2 would need the ImageNet file, unless --checkpoint replaces every weight anyway.
    with h5py.File(tiny_covidx / "cp.hdf5", "w") as f:  # read only when training starts; here its kind
        f.attrs["layer_names"] = np.array([b"FC_3"])
    resnet = base[: base.index("--model")] + base[base.index("--model") + 2 :] + ["--model", "resnet50v2"]
    config = train_keras.resolve_config(
        train_keras.parse_args(resnet + ["--checkpoint", str(tiny_covidx / "cp.hdf5")]),
        replicas=1,
        strategy_name="default",
        gpu=False,
    )
    assert config.weights == "imagenet" and config.checkpoint.endswith("cp.hdf5")


@pytest.mark.slow
def test_image_that_fails_to_decode_mid_run_is_named_and_the_run_resumes(
    tiny_covidx: Path, monkeypatch, capsys: pytest.CaptureFixture
) -> None:
    """An image spoilt after the check (here: after epoch 1) stops training with one line naming it."""
    import training.callbacks

    image = tiny_covidx / "data" / "train" / "train004.png"  # pneumonia: every epoch shows it
    good = image.read_bytes()
    original = training.callbacks.save_resume_state

    def spoil_after_epoch_1(resume_dir, **kwargs):
        folder = original(resume_dir, **kwargs)
        # Starts and ends like a whole PNG (the header check passes it), the middle is gone.
        image.write_bytes(good[:100] + good[-12:])
        return folder

    monkeypatch.setattr(training.callbacks, "save_resume_state", spoil_after_epoch_1)
    args = train_args(tiny_covidx, epochs=2, name="spoilt-")
    try:
        assert train_keras.main(args) == 1
        captured = capsys.readouterr()
        errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in captured.err, captured.err[-3000:]
        assert errors[0].startswith(
            f"error: training stopped: 1 image(s) cannot be decoded: {image} "
            "(--trainfile): cannot be decoded ("
        )
        run_dir = tiny_covidx / "output" / "spoilt-lr0.001"
        saved = run_dir / "resume" / "epoch-0001"
        assert (
            f"the state after epoch 1 is saved in {saved}: re-running the same command resumes from there"
            in errors[0]
        )
        assert find_resume_state(run_dir / "resume")[1]["epoch"] == 1
        assert [e for e, _ in list_checkpoints(run_dir)] == [1]
    finally:
        image.write_bytes(good)
    monkeypatch.undo()
    assert train_keras.main(args) == 0  # the image repaired, the same command finishes the run
    assert "after epoch 1" in capsys.readouterr().err
    assert log_epochs(run_dir) == [0, 1]


def test_full_disk_during_a_save_is_one_line_and_keeps_the_state(
    tiny_covidx: Path, monkeypatch, capsys: pytest.CaptureFixture
) -> None:
    import keras

    def disk_full(self, filepath, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.Model, "save_weights", disk_full)
    assert train_keras.main(train_args(tiny_covidx, epochs=1, name="full-disk-")) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in captured.err
    assert "failed ([Errno 28] No space left on device); no epoch was completed yet" in errors[0]
    run_dir = tiny_covidx / "output" / "full-disk-lr0.001"
    assert find_resume_state(run_dir / "resume") is None and not list(run_dir.rglob(".partial-*"))


def test_help_does_not_import_tensorflow() -> None:
    code = (
        "import sys, train_keras, eval_keras, create_covidx, predict, compare\n"
        "for m in (train_keras, eval_keras, create_covidx, predict, compare):\n"
        "    try:\n        m.parse_args(['--help'])\n    except SystemExit:\n        pass\n"
        # The run folder's name and configuration: what the recipes and demo.py read without training.
        "from training.config import RunConfig, run_folder_name\n"
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr[-500:]


def test_tensorflow_error_summary_skips_the_boilerplate() -> None:
    import tensorflow as tf

    from training.failures import op_error_summary

    exc = tf.errors.UnavailableError(
        None,
        None,
        "Graph execution error:\n\nDetected at node x\n"
        "Collective ops is aborted by: failed to connect to all addresses\n"
        "[[{{node CollectiveReduceV2}}]]",
    )
    assert (
        op_error_summary(exc)
        == "Collective ops is aborted by: failed to connect to all addresses"
    )


def test_augmentation_parameters_are_recorded_and_old_records_still_load(tmp_path: Path) -> None:
    """run_config.json holds the augmentation's parameters, not ``augment: true`` (issue 12 item 6)."""
    from data.augment import AugmentConfig
    from data.lists import ListEntry
    from training.config import RunConfig, read_run_config, write_run_config
    from training.run_data import RunData
    from training.trainer import train_batches

    config = tiny_run_config()
    assert config.augment == AugmentConfig().to_dict() and config.augmentation == AugmentConfig()
    off = tiny_run_config(augment=False)
    assert off.augment is None and off.augmentation is None
    write_run_config(config, tmp_path)
    record = json.loads((tmp_path / "run_config.json").read_text())
    assert record["augment"] == {"rotation_deg": 10.0, "width_shift": 0.1, "height_shift": 0.1,
                                 "horizontal_flip": True, "brightness": [0.9, 1.1]}
    assert "global_batch_size" not in record
    assert read_run_config(tmp_path) == config
    # A file written before the parameters were recorded: augment true/false and global_batch_size.
    old = {**record, "augment": True, "global_batch_size": record["batch_size"]}
    assert RunConfig.from_dict(old) == config
    assert config.changes_blocking_resume(RunConfig.from_dict(old)) == {}
    assert RunConfig.from_dict({**old, "augment": False}).augment is None
    # Another value of any parameter (say a changed default) is another run; the training uses the record.
    rotated = tiny_run_config(augment={**record["augment"], "rotation_deg": 5.0})
    assert set(rotated.changes_blocking_resume(config)) == {"augment"}
    entry = ListEntry("p0", "a.png", "normal", "test")
    data = RunData(train=[entry], val=[entry], test=[entry], train_images=tmp_path, val_images=tmp_path,
                   test_images=tmp_path)
    assert train_batches(rotated, data, channels=3).augment == AugmentConfig(rotation_deg=5.0)
    assert train_batches(off, data, channels=3).augment is None


def test_a_changed_augmentation_record_blocks_the_run(
    tiny_covidx: Path, capsys: pytest.CaptureFixture
) -> None:
    """A folder whose run_config.json records other augmentation values is another run: refused, kept."""
    args = train_args(tiny_covidx, epochs=1, name="augment-")
    config = train_keras.resolve_config(train_keras.parse_args(args), replicas=1, strategy_name="default",
                                        gpu=False)
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True)
    record = config.to_dict()
    (run_dir / "cp-01-0.50.hdf5").write_bytes(b"left by a run killed before its first resume state")
    (run_dir / "run_config.json").write_text(
        json.dumps({**record, "augment": {**record["augment"], "brightness": [0.8, 1.2]}})
    )
    assert train_keras.main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("INFO ")]
    assert len(err) == 1 and "different settings" in err[0] and "augment" in err[0], err
    assert "'brightness': [0.8, 1.2]" in err[0] and "'brightness': [0.9, 1.1]" in err[0]
    assert (run_dir / "cp-01-0.50.hdf5").is_file() and not (run_dir / "training_log.csv").exists()
    # The same folder written by a version that recorded only "augment": true means today's defaults.
    (run_dir / "run_config.json").write_text(json.dumps({**record, "augment": True, "global_batch_size": 4}))
    assert train_keras.main(args) == 0
    assert "starting the run over" in capsys.readouterr().err
    assert json.loads((run_dir / "run_config.json").read_text())["augment"] == record["augment"]
    assert log_epochs(run_dir) == [0]


def test_head_choices_are_the_registry_heads() -> None:
    import models

    assert train_keras.HEADS == models.HEADS
    assert train_keras.parse_args(["--head", "linear"]).head == "linear"


@pytest.mark.slow
def test_the_resnet18_studys_configuration_trains_records_and_serves_it(tiny_covidx: Path) -> None:
    """The ResNet-18 study's set-up (issue 13): torchvision's head (global average pooling, then one
    softmax layer) and torchvision's resize (Pillow's antialiased bilinear), both recorded in
    run_config.json, named in the final evaluation and kept by the exports: the SavedModel's bytes
    signature feeds the model Pillow's resize of the file, as training did."""
    import keras
    import tensorflow as tf
    from PIL import Image

    args = train_args(tiny_covidx, "--head", "linear", "--resize", "torchvision", epochs=1, name="study-")
    args[args.index("--model") + 1] = "resnet18"
    assert train_keras.main(args) == 0
    run_dir = tiny_covidx / "output" / "study-lr0.001"
    config = json.loads((run_dir / "run_config.json").read_text())
    assert (config["model"]["head"], config["resize"]) == ("linear", "torchvision")
    metrics = json.loads((run_dir / "test_evaluation" / "metrics.json").read_text())
    assert metrics["preprocessing"]["resize"] == "torchvision"

    model = keras.models.load_model(run_dir / "final_model.hdf5", compile=False)
    pool, output = model.layers[-2], model.layers[-1]
    assert isinstance(pool, keras.layers.GlobalAveragePooling2D) and pool.name == "global_average_pooling2d"
    assert isinstance(output, keras.layers.Dense) and output.name == "FC_3"
    assert output.kernel.shape == (512, 3) and output.activation.__name__ == "softmax"
    assert not {"flatten", "dense", "dense_1"} & {layer.name for layer in model.layers}
    # The weights-only epoch checkpoint holds the same head.
    with h5py.File(list_checkpoints(run_dir)[0][1], "r") as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]
    assert names[-2:] == ["global_average_pooling2d", "FC_3"] and "dense" not in names

    image_file = sorted((tiny_covidx / "data" / "test").iterdir())[0]
    with Image.open(image_file) as im:
        pil = np.asarray(im.convert("RGB").resize((32, 32), Image.BILINEAR), dtype=np.float32) / 255.0
    served = tf.saved_model.load(str(run_dir / "saved_model"))
    from_bytes = served.signatures["serving_bytes"](image_bytes=tf.constant([image_file.read_bytes()]))
    from_pixels = served.signatures["serving_default"](images=tf.constant(pil[None]))
    np.testing.assert_allclose(from_bytes["probabilities"].numpy(), from_pixels["probabilities"].numpy(),
                               atol=1e-6)


def test_resize_method_is_recorded_and_used(tmp_path: Path) -> None:
    """run_config.json's "resize", which eval_keras.py and predict.py read back, is what the run uses."""
    from data.lists import ListEntry
    from training.config import RunConfig
    from training.run_data import RunData
    from training.trainer import train_batches

    config = tiny_run_config()
    record = config.to_dict()
    assert record["resize"] == "baseline"
    assert RunConfig.from_dict({k: v for k, v in record.items() if k != "resize"}) == config  # older files
    torchvision = tiny_run_config(resize="torchvision")
    assert set(torchvision.changes_blocking_resume(config)) == {"resize"}
    entry = ListEntry("p0", "a.png", "normal", "test")
    data = RunData(train=[entry], val=[entry], test=[entry], train_images=tmp_path, val_images=tmp_path,
                   test_images=tmp_path)
    assert train_batches(torchvision, data, channels=3).resize == "torchvision"
    with pytest.raises(ValueError, match="resize must be one of baseline, torchvision, received 'cubic'"):
        tiny_run_config(resize="cubic")


def test_resize_is_one_of_the_image_module_methods() -> None:
    from data.images import RESIZE_METHODS

    assert train_keras.parse_args([]).resize == "baseline"
    assert train_keras.parse_args(["--resize", "torchvision"]).resize == "torchvision"
    assert RESIZE_METHODS == ("baseline", "torchvision")


def test_a_cache_of_other_lists_is_refused_before_training(tiny_covidx: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    """The cache records its lists' fingerprints (issue 14); a train list that is not the one the cache was
    built from is refused in one line naming both fingerprints, before any epoch."""
    from data.cache import build_cache
    from data.lists import read_list

    lists = {
        split: (read_list(tiny_covidx / f"{split}.txt").entries, tiny_covidx / "data" / split)
        for split in ("train", "test")
    }
    cache = build_cache(tmp_path / "cache", lists=lists, size=32)
    lines = (tiny_covidx / "train.txt").read_text().splitlines(keepends=True)
    (tiny_covidx / "train-fewer.txt").write_text("".join(lines[:-1]))  # every image still in the cache
    args = train_args(tiny_covidx, "--cache", str(cache), epochs=1, name="other-")
    args[args.index("--trainfile") + 1] = str(tiny_covidx / "train-fewer.txt")
    assert train_keras.main(args) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "--trainfile" in error[0] and "train-fewer.txt" in error[0]
    assert error[0].count("sha256:") >= 2, error[0]
    assert not list((tiny_covidx / "output").glob("other-*/cp-*.hdf5"))
