"""The ImageNet-transfer study's options on real tensors: mixup, schedules, freezing, progressive resizing."""
from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

import train_keras
from conftest import (
    REPO_ROOT,
    final_weights_fingerprint,
    grey_level,
    log_epochs,
    run_local_cluster,
    tiny_run_config,
    train_args,
    write_constant_images,
)
from data.augment import mixup_batch, mixup_draws
from data.labels import NUM_CLASSES
from data.pipeline import load_entries, make_train_dataset, patient_split
from training.checkpoints import find_resume_state, list_checkpoints
from training.config import RunConfig
from training.model import build_compiled_model, run_phases
from training.phases import (
    DiscriminativeAdam,
    PhasedSchedule,
    inner_optimizer,
    parse_progressive,
    phase_step_boundaries,
    set_backbone_frozen,
    training_phases,
)
from training.preemption import EXIT_PREEMPTED, PreemptionWatcher


def _batch(n: int = 8, size: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, size, size, 3), np.float32)
    y = keras.utils.to_categorical(np.arange(n) % NUM_CLASSES, NUM_CLASSES).astype(np.float32)
    return x, y


# ---------------------------------------------------------------------------
# mixup


def test_mixup_rows_are_the_mixed_images_labels_and_weights() -> None:
    x, y = _batch(16)
    w = np.where(y.argmax(1) == 2, 25.0, 1.0).astype(np.float32)
    seed = tf.constant([3, 7], tf.int64)
    xm, ym, wm = (t.numpy() for t in mixup_batch(x, y, w, seed, alpha=0.4))
    lam, perm = (t.numpy() for t in mixup_draws(16, seed, 0.4))
    assert sorted(perm) == list(range(16)) and np.all((lam >= 0.5) & (lam <= 1.0))
    assert len(set(np.round(lam, 6))) > 8  # one lambda per row, not one per batch

    def expect(a: np.ndarray) -> np.ndarray:
        weight = lam.reshape((-1,) + (1,) * (a.ndim - 1))
        return weight * a + (1 - weight) * a[perm]

    np.testing.assert_allclose(xm, expect(x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ym, expect(y), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(wm, lam * w + (1 - lam) * w[perm], rtol=1e-6)
    np.testing.assert_allclose(ym.sum(axis=1), 1.0, atol=1e-6)
    # max(lam, 1 - lam): every row keeps its own class as the largest label component.
    moved = perm != np.arange(16)
    assert (ym.argmax(1) == y.argmax(1))[moved & (lam > 0.5 + 1e-6)].all()
    assert 0.0 <= xm.min() and xm.max() <= 1.0
    # The draws are a function of the seed alone.
    np.testing.assert_array_equal(mixup_draws(16, seed, 0.4)[0].numpy(), lam)
    assert not np.array_equal(mixup_draws(16, tf.constant([3, 8], tf.int64), 0.4)[0].numpy(), lam)


@pytest.mark.parametrize("alpha", [0.2, 0.4, 1.0])
def test_mixup_lambda_follows_the_folded_beta(alpha: float) -> None:
    lam = np.concatenate(
        [mixup_draws(4000, tf.constant([i, 1], tf.int64), alpha)[0].numpy() for i in range(5)]
    )
    reference = np.random.default_rng(0).beta(alpha, alpha, 20000)
    # float32 like the draws: for small alpha a few percent of max(B, 1-B) round to exactly 1.
    reference = np.maximum(reference, 1 - reference).astype(np.float32)
    assert stats.ks_2samp(lam, reference).pvalue > 0.001
    # E[max(B, 1-B)] for Beta(a, a): 0.75 for the uniform a = 1; smaller alpha pushes lambda to 1.
    if alpha == 1.0:
        assert lam.mean() == pytest.approx(0.75, abs=0.01)
    assert lam.mean() == pytest.approx(reference.mean(), abs=0.01)


def test_mixup_in_the_pipeline_mixes_balanced_batches(tmp_path: Path) -> None:
    """Real batches from the pipeline: each mixed image is lam*a + (1-lam)*b of two images of its batch."""
    labels = ["normal"] * 8 + ["pneumonia"] * 6 + ["COVID-19"] * 3
    entries = write_constant_images(tmp_path, labels)
    kwargs = dict(img_size=8, batch_size=8, class_weights={2: 25.0}, augment=None, seed=5)
    plain = make_train_dataset(entries, tmp_path, **kwargs)
    mixed = make_train_dataset(entries, tmp_path, mixup_alpha=0.4, **kwargs)
    for step, ((x, y, w), (xm, ym, wm)) in enumerate(zip(plain.dataset.take(4), mixed.dataset.take(4))):
        x, y, w, xm, ym, wm = (t.numpy() for t in (x, y, w, xm, ym, wm))
        assert (y.argmax(1) == 2).sum() == 1  # still one COVID-19 image per balanced batch before mixing
        lam, perm = (t.numpy() for t in mixup_draws(8, tf.constant([5, step], tf.int64), 0.4))
        levels = np.array([grey_level(img) for img in x], float)
        mixed_levels = (xm.mean(axis=(1, 2, 3)) * 255 - 10) / 4
        np.testing.assert_allclose(mixed_levels, lam * levels + (1 - lam) * levels[perm], atol=0.05)
        np.testing.assert_allclose(ym, lam[:, None] * y + (1 - lam[:, None]) * y[perm], atol=1e-6)
        np.testing.assert_allclose(ym.sum(1), 1.0, atol=1e-6)
        np.testing.assert_allclose(wm, lam * w + (1 - lam) * w[perm], rtol=1e-6)
    with pytest.raises(ValueError, match="mixup alpha must be >= 0"):
        make_train_dataset(entries, tmp_path, mixup_alpha=-1.0, **kwargs)


# ---------------------------------------------------------------------------
# learning-rate schedules


def _rates(schedule: PhasedSchedule, steps) -> np.ndarray:
    return np.array([float(schedule(s)) for s in steps])


def test_onecycle_peaks_at_pct_start_and_ends_at_lr_over_div_final() -> None:
    lr, total = 1e-3, 200
    schedule = PhasedSchedule(
        "onecycle", lr=lr, boundaries=(0, total), pct_start=0.25, div=25.0, div_final=1e5
    )
    rates = _rates(schedule, range(total + 1))
    assert rates[0] == pytest.approx(lr / 25, rel=1e-5)
    assert rates.argmax() == 50 and rates[50] == pytest.approx(lr, rel=1e-6)
    assert rates[total] == pytest.approx(lr / 1e5, rel=1e-3)
    assert np.all(np.diff(rates[:51]) > 0) and np.all(np.diff(rates[50:]) < 0)
    # fastai's annealing_cos at a few points of each half.
    cos = lambda start, end, pct: end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)  # noqa: E731
    assert rates[20] == pytest.approx(cos(lr / 25, lr, 20 / 50), rel=1e-5)
    assert rates[125] == pytest.approx(cos(lr, lr / 1e5, 75 / 150), rel=1e-5)
    assert float(schedule(10 * total)) == pytest.approx(lr / 1e5, rel=1e-3)  # stays at the end value


def test_step_schedules_restart_at_every_phase() -> None:
    phases = training_phases(epochs=5, img_size=48, progressive=((32, 2), (48, 3)), freeze_epochs=1)
    assert [(p.first_epoch, p.end_epoch, p.img_size, p.frozen) for p in phases] == [
        (0, 1, 32, True),
        (1, 2, 32, False),
        (2, 5, 48, False),
    ]
    bounds = phase_step_boundaries(phases, 10)
    assert bounds == (0, 10, 20, 50)
    onecycle = PhasedSchedule("onecycle", lr=0.01, boundaries=bounds, pct_start=0.3)
    rates = _rates(onecycle, range(51))
    for start, end in zip(bounds, bounds[1:]):
        peak = start + round(0.3 * (end - start))
        assert rates[start] == pytest.approx(0.01 / 25, rel=1e-5)
        assert rates[start:end].argmax() + start == peak and rates[peak] == pytest.approx(0.01, rel=1e-3)
    cosine = PhasedSchedule("cosine", lr=0.01, boundaries=bounds, min_lr=1e-4)
    rates = _rates(cosine, range(51))
    assert rates[0] == rates[10] == rates[20] == pytest.approx(0.01)
    assert rates[35] == pytest.approx((0.01 + 1e-4) / 2, rel=1e-5)
    assert rates[50] == pytest.approx(1e-4, rel=1e-5)  # ends at its floor
    assert np.all(np.diff(rates[20:51]) < 0)
    with pytest.raises(ValueError, match="pct_start"):
        PhasedSchedule("onecycle", lr=0.01, boundaries=(0, 10), pct_start=1.0)


def test_optimizer_rate_follows_the_step_counter() -> None:
    """The rate is a function of optimizer.iterations: restoring the counter restores the rate."""
    config = tiny_run_config(schedule="onecycle", epochs=2)
    model = build_compiled_model(config, dtype_policy="float32", steps_per_epoch=10)
    optimizer = model.optimizer
    assert float(optimizer.learning_rate) == pytest.approx(1e-3 / 25, rel=1e-5)
    optimizer.iterations.assign(5)  # 0.25 * 20 steps: the peak
    assert float(optimizer.learning_rate) == pytest.approx(1e-3, rel=1e-6)


# ---------------------------------------------------------------------------
# losses, optimizers, frozen layers


def test_label_smoothing_changes_the_loss_as_expected() -> None:
    y = np.array([[0, 0, 1], [1, 0, 0]], np.float32)
    p = np.array([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]], np.float32)
    plain = build_compiled_model(tiny_run_config(), dtype_policy="float32").loss
    smooth = build_compiled_model(tiny_run_config(label_smoothing=0.1), dtype_policy="float32").loss
    targets = y * 0.9 + 0.1 / 3
    expected = float(np.mean(-(targets * np.log(p)).sum(axis=1)))
    assert float(smooth(y, p)) == pytest.approx(expected, rel=1e-5)
    assert float(plain(y, p)) == pytest.approx(float(np.mean(-np.log([0.7, 0.5]))), rel=1e-5)
    # Smoothing penalises the confident, correct first row and rewards nothing: the loss grows.
    assert float(smooth(y, p)) > float(plain(y, p))


def test_defaults_compile_surfsaras_optimizer_and_loss() -> None:
    model = build_compiled_model(tiny_run_config(), dtype_policy="float32")
    assert type(model.optimizer) is keras.optimizers.Adam and model.optimizer.amsgrad
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-3)
    assert model.loss.get_config()["label_smoothing"] == 0.0
    assert model.input_shape == (None, 32, 32, 3)  # fixed size: no progressive view
    assert len(run_phases(tiny_run_config())) == 1


def _one_step_deltas(model: keras.Model, x, y) -> list[np.ndarray]:
    before = [v.numpy().copy() for v in model.trainable_variables]
    model.train_on_batch(x, y)
    return [v.numpy() - b for v, b in zip(model.trainable_variables, before)]


def test_backbone_multiplier_scales_the_adam_step_not_the_gradient() -> None:
    x, y = _batch(6)
    keras.utils.set_random_seed(1)
    plain = build_compiled_model(tiny_run_config(), dtype_policy="float32")
    slow = build_compiled_model(tiny_run_config(backbone_lr_mult=0.1), dtype_policy="float32")
    slow.set_weights(plain.get_weights())
    assert isinstance(slow.optimizer, DiscriminativeAdam)
    names = [v.path for v in plain.trainable_variables]
    d_plain, d_slow = _one_step_deltas(plain, x, y), _one_step_deltas(slow, x, y)
    head = ("dense/", "dense_1/", "FC_3/")
    for name, a, b in zip(names, d_plain, d_slow):
        big = np.abs(a) > 1e-6
        ratio = 1.0 if name.startswith(head) else 0.1
        np.testing.assert_allclose(b[big], ratio * a[big], rtol=2e-3, err_msg=name)


@pytest.mark.parametrize("train_bn, policy", [(True, "float32"), (False, "mixed_float16")])
def test_frozen_backbone_does_not_change_until_unfrozen(train_bn: bool, policy: str) -> None:
    x, y = _batch(8)
    keras.utils.set_random_seed(0)
    config = tiny_run_config(freeze_epochs=1, backbone_lr_mult=0.5, train_bn=train_bn)
    model = build_compiled_model(config, dtype_policy=policy)
    model.optimizer.build(model.trainable_variables)
    set_backbone_frozen(model, True, train_bn=train_bn)
    inner_optimizer(model.optimizer).multiplier_active = False
    model.make_train_function(force=True)
    conv = model.get_layer("block2_conv").kernel
    bn = model.get_layer("block2_bn")
    head = model.get_layer("dense").kernel
    start = {
        k: v.numpy().copy()
        for k, v in {"conv": conv, "gamma": bn.gamma, "mean": bn.moving_mean, "head": head}.items()
    }
    for _ in range(5):  # a few, as mixed precision's loss scaling may skip the first
        model.train_on_batch(x, y)
    np.testing.assert_array_equal(conv.numpy(), start["conv"])
    assert not np.array_equal(head.numpy(), start["head"])
    # fastai's train_bn: batch norm keeps learning its scale and statistics; otherwise it is frozen too.
    assert np.array_equal(bn.gamma.numpy(), start["gamma"]) != train_bn
    assert np.array_equal(bn.moving_mean.numpy(), start["mean"]) != train_bn
    set_backbone_frozen(model, False, train_bn=train_bn)
    inner_optimizer(model.optimizer).multiplier_active = True
    model.make_train_function(force=True)
    for _ in range(3):
        model.train_on_batch(x, y)
    assert np.abs(conv.numpy() - start["conv"]).max() > 1e-5


def test_progressive_flags_are_checked(tiny_covidx: Path, capsys: pytest.CaptureFixture) -> None:
    assert parse_progressive("64,128,224", epochs=10, img_size=224) == ((64, 3), (128, 3), (224, 4))
    assert parse_progressive("64:2,128:2,224:6", epochs=10, img_size=224) == ((64, 2), (128, 2), (224, 6))
    assert parse_progressive("64:2,128,224", epochs=10, img_size=224) == ((64, 2), (128, 4), (224, 4))
    assert parse_progressive("", epochs=10, img_size=224) == ()
    cases = [
        (
            ["--progressive", "32,48", "--head", "flatten", "--img_size", "48"],
            "needs a pooling head (--head avg, max, linear)",
        ),
        (["--progressive", "32,40", "--head", "avg", "--img_size", "48"], "must equal --img_size (48)"),
        (["--progressive", "32:1,48:2", "--head", "avg", "--img_size", "48"], "add up to 3, --epochs is 2"),
        (
            ["--progressive", "64,96", "--head", "avg", "--img_size", "96", "--model", "xception"],
            "below the model's minimum of 71",
        ),
        (["--progressive", "32,x", "--head", "avg"], "expects sizes"),
        (["--freeze_epochs", "5"], "more than --epochs 2"),
        (["--schedule", "cosine", "--min_lr", "0.01"], "must be below --lr"),
        (["--label_smoothing", "1"], "[0, 1)"),
    ]
    for extra, message in cases:
        assert train_keras.main(train_args(tiny_covidx, *extra, name="transfer-flags-")) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (extra, err)


def test_transfer_settings_are_recorded_and_block_a_different_resume() -> None:
    base = tiny_run_config()
    # A run_config.json written before these settings existed reads back as the baseline.
    old = {
        k: v
        for k, v in base.to_dict().items()
        if k not in ("schedule", "mixup", "progressive", "freeze_epochs")
    }
    assert RunConfig.from_dict(old) == base
    assert base.changes_blocking_resume(RunConfig.from_dict(old)) == {}
    # A plateau run may be extended; a step schedule or progressive stages fix the number of epochs.
    assert tiny_run_config(epochs=6).changes_blocking_resume(base) == {}
    onecycle = tiny_run_config(schedule="onecycle")
    assert set(tiny_run_config(schedule="onecycle", epochs=6).changes_blocking_resume(onecycle)) == {"epochs"}
    stages = tiny_run_config(progressive=((32, 2), (48, 2)))
    assert RunConfig.from_dict(json.loads(json.dumps(stages.to_dict()))) == stages
    assert set(tiny_run_config(progressive=((32, 2), (48, 4)), epochs=6).changes_blocking_resume(stages)) == {
        "epochs",
        "progressive",
    }
    for change in (
        {"mixup": 0.4},
        {"freeze_epochs": 1},
        {"backbone_lr_mult": 0.1},
        {"label_smoothing": 0.1},
        {"train_bn": False},
        {"min_lr": 1e-7},
        {"onecycle_pct_start": 0.3},
    ):
        assert set(tiny_run_config(**change).changes_blocking_resume(base)) == set(change)


# ---------------------------------------------------------------------------
# end to end


class _StopAfter(PreemptionWatcher):
    """A watcher that asks for a stop after ``n`` training steps (as a SIGTERM then would)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.seen = n, 0
        self.signal_name = "test stop"

    @property
    def requested(self) -> bool:
        self.seen += 1  # read once per step, by StopOnPreemption
        return self.seen >= self.n

    @requested.setter
    def requested(self, value: bool) -> None:
        pass


def _record_train_datasets(monkeypatch) -> list[dict]:
    """Wrap the pipeline's training dataset factory: each call's epoch and size, and the batch shapes fed."""
    import training.run_data as run_data

    calls: list[dict] = []
    original = run_data.make_train_dataset

    def recording(*args, **kwargs):
        data = original(*args, **kwargs)
        call = {"start_epoch": kwargs["start_epoch"], "img_size": kwargs["img_size"], "shapes": set()}
        calls.append(call)

        def note(shape):
            call["shapes"].add(tuple(int(v) for v in shape.numpy()))
            return shape

        def watch(x, y, w):
            seen = tf.py_function(note, [tf.shape(x)], tf.int32)
            with tf.control_dependencies([seen]):
                return tf.identity(x), y, w

        return type(data)(
            dataset=data.dataset.map(watch),
            steps_per_epoch=data.steps_per_epoch,
            batch_size=data.batch_size,
            covid_per_batch=data.covid_per_batch,
        )

    monkeypatch.setattr(run_data, "make_train_dataset", recording)
    return calls


def _log_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "training_log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _h5_weight(path: Path, layer: str, index: int = 0) -> np.ndarray:
    with h5py.File(path, "r") as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f[layer].attrs["weight_names"]]
        return f[layer][names[index]][()]


@pytest.mark.slow
def test_progressive_frozen_onecycle_run_resumes_mid_stage(
    tiny_covidx: Path, monkeypatch, capsys: pytest.CaptureFixture
) -> None:
    """All the options at once; stopped inside the second (40 px, frozen) stage and resumed there."""
    options = [
        "--img_size",
        "48",
        "--head",
        "avg",
        "--progressive",
        "32:1,40:1,48",
        "--freeze_epochs",
        "2",
        "--schedule",
        "onecycle",
        "--backbone_lr_mult",
        "0.1",
        "--mixup",
        "0.4",
        "--label_smoothing",
        "0.1",
    ]
    args = train_args(tiny_covidx, *options, epochs=4, name="transfer-")
    run_dir = tiny_covidx / "output" / "transfer-lr0.001"
    train = load_entries(tiny_covidx / "train.txt", tiny_covidx / "data" / "train")
    train, _ = patient_split(train, fraction=0.1, seed=0)
    steps = math.ceil(sum(e.label != "COVID-19" for e in train) / 3)

    calls = _record_train_datasets(monkeypatch)
    monkeypatch.setattr("training.preemption.PreemptionWatcher", lambda: _StopAfter(steps + 3))
    assert train_keras.main(args) == EXIT_PREEMPTED
    _, state = find_resume_state(run_dir / "resume")
    assert (state["epoch"], state["step"]) == (1, 3) and state["plateau"] is None
    first_run = [(c["start_epoch"], c["img_size"], c["shapes"]) for c in calls[1:]]  # calls[0] only plans
    assert first_run == [(0, 32, {(4, 32, 32, 3)}), (1, 40, {(4, 40, 40, 3)})]

    monkeypatch.setattr("training.preemption.PreemptionWatcher", PreemptionWatcher)
    calls.clear()
    capsys.readouterr()
    assert train_keras.main(args) == 0
    assert "after epoch 1 and step 3 of the next" in capsys.readouterr().err
    # The rest of the interrupted 40 px epoch, then the 48 px stage; every batch at its stage's size.
    assert [(c["start_epoch"], c["img_size"], c["shapes"]) for c in calls[1:]] == [
        (1, 40, {(4, 40, 40, 3)}),
        (2, 48, {(4, 48, 48, 3)}),
    ]
    rows = _log_rows(run_dir)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert [int(float(r["img_size"])) for r in rows] == [32, 40, 48, 48]
    assert [int(float(r["backbone_frozen"])) for r in rows] == [1, 1, 0, 0]
    # The rate of each epoch's last step is the schedule's at that step: the counter survived the stop.
    config = RunConfig.from_dict(json.loads((run_dir / "run_config.json").read_text()))
    assert config.progressive == ((32, 1), (40, 1), (48, 2)) and config.model["input_shape"] == [48, 48, 3]
    schedule = PhasedSchedule(
        "onecycle", lr=1e-3, boundaries=phase_step_boundaries(run_phases(config), steps)
    )
    for epoch, row in enumerate(rows):
        assert float(row["learning_rate"]) == pytest.approx(
            float(schedule((epoch + 1) * steps - 1)), rel=1e-4
        )

    # Frozen through epoch 2 (across the stop), trained in epoch 3; head and batch norm train throughout.
    cps = dict(list_checkpoints(run_dir))
    assert sorted(cps) == [1, 2, 3, 4]
    np.testing.assert_array_equal(_h5_weight(cps[1], "block3_conv"), _h5_weight(cps[2], "block3_conv"))
    assert not np.array_equal(_h5_weight(cps[2], "block3_conv"), _h5_weight(cps[3], "block3_conv"))
    assert not np.array_equal(_h5_weight(cps[1], "dense"), _h5_weight(cps[2], "dense"))
    assert not np.array_equal(_h5_weight(cps[1], "block3_bn"), _h5_weight(cps[2], "block3_bn"))
    # The final model is the fixed 48 px registry model.
    final = keras.models.load_model(run_dir / "final_model.hdf5", compile=False)
    assert final.input_shape == (None, 48, 48, 3)
    np.testing.assert_allclose(
        final.get_layer("block3_conv").get_weights()[0], _h5_weight(cps[4], "block3_conv")
    )

    # The stages are part of the run: another --epochs cannot resume it.
    capsys.readouterr()
    assert train_keras.main(train_args(tiny_covidx, *options, epochs=5, name="transfer-")) == 2
    assert "different settings" in capsys.readouterr().err


@pytest.mark.slow
def test_cosine_mixup_run_end_to_end(tiny_covidx: Path) -> None:
    args = train_args(
        tiny_covidx,
        "--schedule",
        "cosine",
        "--min_lr",
        "1e-5",
        "--mixup",
        "0.2",
        "--freeze_epochs",
        "1",
        "--train_bn",
        "off",
        epochs=2,
        name="cosine-",
    )
    assert train_keras.main(args) == 0
    run_dir = tiny_covidx / "output" / "cosine-lr0.001"
    config = json.loads((run_dir / "run_config.json").read_text())
    assert (config["schedule"], config["mixup"], config["freeze_epochs"], config["train_bn"]) == (
        "cosine",
        0.2,
        1,
        False,
    )
    rows = _log_rows(run_dir)
    assert [int(float(r["backbone_frozen"])) for r in rows] == [1, 0]
    # Each phase (frozen, then unfrozen) is one cosine: its last step is near the floor.
    assert all(1e-5 < float(r["learning_rate"]) < 1e-4 for r in rows)
    cps = dict(list_checkpoints(run_dir))
    assert log_epochs(run_dir) == [0, 1] and sorted(cps) == [1, 2]
    metrics = json.loads((run_dir / "test_evaluation" / "metrics.json").read_text())
    assert metrics["n_images"] == 15


@pytest.mark.slow
def test_two_workers_agree_with_every_transfer_option(tiny_covidx: Path) -> None:
    """MultiWorkerMirroredStrategy with mixup, progressive stages, freezing and discriminative rates."""
    options = [
        "--img_size",
        "40",
        "--val_split",
        "0",
        "--head",
        "avg",
        "--progressive",
        "32:1,40",
        "--freeze_epochs",
        "1",
        "--backbone_lr_mult",
        "0.1",
        "--schedule",
        "onecycle",
        "--mixup",
        "0.4",
        "--label_smoothing",
        "0.1",
    ]
    cmd = [
        sys.executable,
        str(REPO_ROOT / "train_keras.py"),
        *train_args(tiny_covidx, *options, epochs=3, name="mw-"),
    ]
    codes, logs = run_local_cluster(cmd)
    assert codes == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    assert "MultiWorkerMirroredStrategy" in logs[0]
    # Same freezing, rates and mixed batches' gradients on both workers: the same weights at the end.
    assert final_weights_fingerprint(logs[0]) == final_weights_fingerprint(logs[1])
    rows = _log_rows(tiny_covidx / "output" / "mw-lr0.001")
    assert [(int(float(r["img_size"])), int(float(r["backbone_frozen"]))) for r in rows] == [
        (32, 1),
        (40, 0),
        (40, 0),
    ]
