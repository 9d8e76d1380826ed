"""Grad-CAM (exact on a model whose answer is known) and t-SNE, as functions and through eval_keras.py."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import eval_keras
from data.labels import CLASSES
from data.lists import ListEntry
from evaluation.gradcam import GradCam, find_gradcam_layer, overlay, overlay_name, select_per_class
from evaluation.tsne import FeatureCollector, effective_perplexity, tsne_embedding

IMG = 32


@pytest.fixture(scope="module")
def covidx(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """12 PNGs of 32-40 px (4 per class) and a smallcnn .keras model with non-trivial weights."""
    import keras

    from models import build_model

    root = tmp_path_factory.mktemp("cam")
    (root / "data" / "test").mkdir(parents=True)
    rng = np.random.default_rng(4)
    lines, sizes = [], {}
    for i in range(12):
        h, w = 32 + (i % 3) * 4, 40 - (i % 2) * 6
        name = f"sub/x{i:02d}.png" if i == 0 else f"x{i:02d}.png"  # one file in a subfolder
        (root / "data" / "test" / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "data" / "test" / name),
                    np.clip(rng.normal(30 + 15 * i, 30, (h, w)), 0, 255).astype(np.uint8))
        lines.append(f"p{i} {name} {CLASSES[i % 3]}\n")
        sizes[name] = (h, w)
    (root / "test.txt").write_text("".join(lines))
    keras.utils.set_random_seed(7)
    model = build_model("smallcnn", input_shape=(IMG, IMG, 3))
    model.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in model.get_weights()])
    model.save(str(root / "model.keras"))
    return {"root": root, "sizes": sizes, "model": model}


def _args(covidx: dict, out: Path, *extra: str) -> list[str]:
    root = covidx["root"]
    return ["--checkpoint", str(root / "model.keras"), "--testfile", str(root / "test.txt"),
            "--data_path", str(root / "data"), "--out", str(out), "--n_bootstrap", "10", *extra]


def test_gradcam_is_exact_on_a_linear_model() -> None:
    """Identity conv -> average pool -> Dense: the map is the image itself, scaled to [0, 1]."""
    import keras

    inputs = keras.Input((8, 8, 1))
    features = keras.layers.Conv2D(1, 1, use_bias=False, kernel_initializer="ones", name="conv")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    outputs = keras.layers.Dense(3, activation="softmax", kernel_initializer=keras.initializers.Constant(
        [[1.0, 2.0, 3.0]]), name="FC_3")(pooled)
    model = keras.Model(inputs, outputs)
    assert find_gradcam_layer(model) == "conv"
    image = np.zeros((1, 8, 8, 1), np.float32)
    image[0, 1:3, 5:7, 0] = 0.9  # a bright "label" in the top right corner
    image[0, 6, 1, 0] = 0.3
    cam = GradCam(model)
    maps, probabilities = cam.heatmaps(image)
    assert cam.score == "logit" and int(np.argmax(probabilities[0])) == 2
    np.testing.assert_allclose(maps[0], image[0, :, :, 0] / 0.9, atol=1e-6)


def test_default_layer_skips_1x1_maps(covidx: dict) -> None:
    # At 32 px smallcnn's last pooling output is 1 x 1; the 2 x 2 map before it is used.
    assert find_gradcam_layer(covidx["model"]) == "block5_relu"
    with pytest.raises(ValueError, match="not a 4-D feature map layer"):
        GradCam(covidx["model"], "dense_1")


def test_overlay_name_size_and_selection() -> None:
    heat = np.array([[0.0, 1.0], [0.5, 0.0]])
    image = np.full((50, 40, 3), 128, np.uint8)
    drawn = overlay(image, heat)
    assert drawn.shape == (50, 40, 3) and drawn.dtype == np.uint8
    assert drawn[:, 20:].mean() != drawn[:, :20].mean()  # the hot corner shows
    entry = ListEntry("p", "sub/dir/img.1.png", "normal")
    assert overlay_name(entry, 2) == "sub__dir__img.1_true-normal_pred-COVID-19.png"
    entries = [ListEntry(str(i), f"{i}.png", CLASSES[i % 3]) for i in range(9)]
    assert select_per_class(entries, 2) == [0, 1, 2, 3, 4, 5]


def test_eval_writes_one_overlay_per_class(
    covidx: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert eval_keras.main(_args(covidx, tmp_path, "--gradcam", "1")) == 0
    files = sorted((tmp_path / "gradcam").glob("*.png"))
    assert len(files) == 3
    frame = pd.read_csv(tmp_path / "predictions.csv")
    for path, name in zip(files, sorted(["sub/x00.png", "x01.png", "x02.png"])):
        row = frame[frame["filename"] == name].iloc[0]
        predicted = CLASSES[int(np.argmax(row[[f"p_{c}" for c in CLASSES]].to_numpy(dtype=float)))]
        stem = name.replace("/", "__")[:-4]
        assert path.name == f"{stem}_true-{row['label']}_pred-{predicted}.png"
        assert cv2.imread(str(path)).shape == (*covidx["sizes"][name], 3)
    assert "layer block5_relu" in capsys.readouterr().out


def test_gradcam_layer_by_name_and_bad_name(
    covidx: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert eval_keras.main(_args(covidx, tmp_path, "--gradcam", "2", "--gradcam_layer", "block4_relu")) == 0
    assert len(list((tmp_path / "gradcam").glob("*.png"))) == 6
    assert "layer block4_relu" in capsys.readouterr().out
    assert eval_keras.main(_args(covidx, tmp_path / "b", "--gradcam", "1", "--gradcam_layer", "nope")) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'nope'" in errors[0] and "block5_relu" in errors[0]


def test_eval_writes_tsne_plot_and_coordinates(covidx: dict, tmp_path: Path) -> None:
    assert eval_keras.main(_args(covidx, tmp_path, "--tsne")) == 0
    assert cv2.imread(str(tmp_path / "tsne.png")) is not None
    coords = pd.read_csv(tmp_path / "tsne.csv")
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert list(coords.columns) == ["patient_id", "filename", "label", "predicted", "tsne_x", "tsne_y"]
    assert len(coords) == 12 and coords["filename"].tolist() == predictions["filename"].tolist()
    assert np.isfinite(coords[["tsne_x", "tsne_y"]].to_numpy()).all()
    assert coords[["tsne_x", "tsne_y"]].to_numpy().std(axis=0).min() > 0
    # The t-SNE pass records features without changing the predictions.
    plain = tmp_path / "plain"
    assert eval_keras.main(_args(covidx, plain)) == 0
    np.testing.assert_allclose(
        pd.read_csv(plain / "predictions.csv").iloc[:, 3:].to_numpy(),
        predictions.iloc[:, 3:].to_numpy(),
        atol=1e-6,
    )


def test_feature_collector_reads_the_layer_before_fc3(covidx: dict) -> None:
    import keras

    model = covidx["model"]
    x = np.random.default_rng(0).random((5, IMG, IMG, 3)).astype(np.float32)
    collector = FeatureCollector(model)
    probabilities = collector.wrap(lambda raw: raw)(x)
    expected = keras.Model(model.inputs, model.get_layer("dense_1").output).predict(x, verbose=0)
    np.testing.assert_allclose(collector.features, expected, atol=1e-5)
    np.testing.assert_allclose(probabilities, model.predict(x, verbose=0), atol=1e-6)


def test_tsne_separates_clusters_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 1, (15, 20)), rng.normal(12, 1, (15, 20))])
    a = tsne_embedding(features, perplexity=5, seed=3, max_iter=250)
    b = tsne_embedding(features, perplexity=5, seed=3, max_iter=250)
    np.testing.assert_allclose(a, b)
    gap = np.linalg.norm(a[:15].mean(axis=0) - a[15:].mean(axis=0))
    spread = max(a[:15].std(axis=0).max(), a[15:].std(axis=0).max())
    assert gap > 3 * spread
    assert effective_perplexity(12, 50) == pytest.approx(11 / 3)
    assert effective_perplexity(1000, 50) == 50
    with pytest.raises(ValueError, match="at least 4 images"):
        effective_perplexity(3, 50)


def test_gradcam_explains_the_pixels_of_the_resize_method(
    covidx: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """--resize torchvision: the overlays are the Grad-CAM of Pillow-resized images, not of cv2's."""
    from PIL import Image

    from data.images import decode_image
    from evaluation.gradcam import overlay

    assert eval_keras.main(_args(covidx, tmp_path, "--gradcam", "1", "--resize", "torchvision")) == 0
    assert "Preprocessing: resize torchvision (--resize)" in capsys.readouterr().out
    root, cam = covidx["root"] / "data" / "test", GradCam(covidx["model"])
    chosen = ["sub/x00.png", "x01.png", "x02.png"]  # the first image of each class
    originals = [decode_image((root / name).read_bytes(), channels=3).numpy() for name in chosen]
    pillow = np.stack([np.asarray(Image.fromarray(o).resize((IMG, IMG), Image.BILINEAR), np.float32) / 255
                       for o in originals])
    cv2_resized = np.stack([cv2.resize(o, (IMG, IMG)).astype(np.float32) / 255 for o in originals])
    differs_from_cv2 = []
    for name, original, torchvision_pixels, baseline_pixels in zip(chosen, originals, pillow, cv2_resized):
        (written,) = (tmp_path / "gradcam").glob(name.replace("/", "__")[:-4] + "_*.png")
        maps, _ = cam.heatmaps(torchvision_pixels[None])
        assert np.abs(cv2.imread(str(written)).astype(int) - overlay(original, maps[0])).max() <= 1
        other, _ = cam.heatmaps(baseline_pixels[None])
        difference = overlay(original, maps[0]).astype(int) - overlay(original, other[0])
        differs_from_cv2.append(np.abs(difference).max())
    assert max(differs_from_cv2) > 1  # the two methods' explanations do differ on these images
