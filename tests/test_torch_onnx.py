"""A torchvision-style ResNet-18 exported from real torch to ONNX, evaluated here (issue 13 items 3 and 5).

Both of torch's exporters (TorchScript: ``dynamo=False``; dynamo: the default since torch 2.9, which
needs onnxscript) write the model the docs/evaluation.md snippet writes, with the covidx.* metadata;
the probabilities eval_keras.py computes must equal torch's softmax on the same pixels.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip(
    "torch", reason="torch is optional (make torch); these tests compare with real torch"
)

import eval_keras  # noqa: E402
from data.labels import CLASSES  # noqa: E402
from evaluation.loaders import load_predictor  # noqa: E402
from evaluation.onnx_metadata import IMAGENET_MEAN, IMAGENET_STD, write_onnx_metadata  # noqa: E402
from evaluation.predictions import PROBABILITY_COLUMNS  # noqa: E402

SIZE = 64
EXPORTERS = ["torchscript", "dynamo"]


@pytest.fixture(scope="module")
def study_model():
    from models.torch_reference import randomize_batchnorm, resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=3)  # the study's model.fc = nn.Linear(512, 3)
    randomize_batchnorm(model, seed=1)
    return model.eval()


def torch_probabilities(model, images: np.ndarray, *, order: tuple[str, ...] = CLASSES) -> np.ndarray:
    """torchvision's Normalize(ImageNet) on 0-1 NHWC pixels, the model, softmax; columns in CLASSES order."""
    x = (images - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
    probabilities = torch.softmax(logits.double(), dim=1).numpy()
    return probabilities[:, [order.index(c) for c in CLASSES]]


def export(model, path: Path, exporter: str) -> Path:
    """The docs/evaluation.md snippet: export, then the covidx.* metadata."""
    example = torch.zeros(1, 3, SIZE, SIZE)
    if exporter == "torchscript":
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )
    else:
        pytest.importorskip(
            "onnxscript", reason="the dynamo exporter needs onnxscript (requirements-torch.txt)"
        )
        batch = torch.export.Dim("batch", min=1, max=1024)
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
        )
        program.save(str(path))
    write_onnx_metadata(
        path, class_order=CLASSES, layout="NCHW", pixel_range="0-1", normalization="imagenet", output="logits"
    )
    return path


@pytest.mark.slow
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_exported_model_gives_torchs_probabilities(study_model, tmp_path: Path, exporter: str) -> None:
    path = export(study_model, tmp_path / "resnet18.onnx", exporter)
    images = np.random.default_rng(3).uniform(size=(6, SIZE, SIZE, 3)).astype(np.float32)
    predictor = load_predictor(path)
    assert predictor.img_size == SIZE and predictor.output == "logits"
    got = predictor.predict_batch(images)
    expected = torch_probabilities(study_model, images)
    assert np.abs(got - expected).max() < 1e-5
    assert np.abs(expected - 1 / 3).max() > 0.01  # a model whose outputs differ between images and classes


@pytest.mark.slow
def test_eval_keras_on_the_exported_model_equals_torch(
    study_model, tiny_covidx: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import tensorflow as tf

    from data.images import read_resize

    # A class order that is not this project's: the metadata must be what reorders the columns.
    order = ("COVID-19", "normal", "pneumonia")
    path = export(study_model, tmp_path / "resnet18.onnx", "torchscript")
    write_onnx_metadata(path, class_order=order, layout="NCHW", normalization="imagenet", output="logits")
    out = tmp_path / "eval"
    code = eval_keras.main(
        [
            "--checkpoint",
            str(path),
            "--testfile",
            str(tiny_covidx / "test.txt"),
            "--data_path",
            str(tiny_covidx / "data"),
            "--out",
            str(out),
            "--n_bootstrap",
            "10",
            "--batch_size",
            "4",
        ]
    )
    assert code == 0, capsys.readouterr().err
    frame = pd.read_csv(out / "predictions.csv")
    pixels = np.stack(
        [
            read_resize(
                tf.constant(str(tiny_covidx / "data" / "test" / name)), img_size=SIZE, channels=3
            ).numpy()
            for name in frame["filename"]
        ]
    )
    expected = torch_probabilities(study_model, pixels, order=order)
    difference = np.abs(frame[list(PROBABILITY_COLUMNS)].to_numpy() - expected).max()
    assert len(frame) == 15 and difference < 1e-5
    metrics = json.loads((out / "metrics.json").read_text())
    assert (
        metrics["evaluated"]["kind"] == "onnx"
        and "classes COVID-19,normal,pneumonia" in metrics["evaluated"]["description"]
    )
