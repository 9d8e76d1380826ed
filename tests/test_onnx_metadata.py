"""ONNX models that say what they are: the covidx.* metadata keys (evaluation/onnx_metadata.py)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from data.labels import CLASSES
from evaluation.loaders import load_predictor, softmax
from evaluation.onnx_metadata import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    conventions_from,
    read_onnx_metadata,
    write_onnx_metadata,
)

SIZE = 8
RNG = np.random.default_rng(7)
WEIGHTS = RNG.normal(size=(3, 3)).astype(np.float32) * 4


def _mean_colour_model(path: Path, *, layout: str = "NCHW") -> Path:
    """Mean colour per channel -> MatMul: logits a hand computation can reproduce exactly."""
    shape = ["N", 3, SIZE, SIZE] if layout == "NCHW" else ["N", SIZE, SIZE, 3]
    axes = [2, 3] if layout == "NCHW" else [1, 2]
    graph = helper.make_graph(
        # axes as a Constant node: onnxruntime's shape inference cannot read it from external data
        [helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(np.array(axes, np.int64))),
         helper.make_node("ReduceMean", ["x", "axes"], ["mean"], keepdims=0),
         helper.make_node("MatMul", ["mean", "w"], ["logits"])],
        "mean_colour",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(WEIGHTS, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def _expected(images: np.ndarray, *, order: tuple[str, ...] = CLASSES, scale: float = 1.0,
              mean=None, std=None) -> np.ndarray:
    x = images.astype(np.float64)
    if mean is not None:
        x = (x - np.asarray(mean)) / np.asarray(std)
    logits = (x * scale).mean(axis=(1, 2)) @ WEIGHTS.astype(np.float64)  # columns in the model's order
    return softmax(logits[:, [order.index(c) for c in CLASSES]])


IMAGES = RNG.uniform(size=(5, SIZE, SIZE, 3)).astype(np.float32)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_metadata_reorders_classes_scales_and_normalises(tmp_path: Path, layout: str,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    order = ("COVID-19", "normal", "pneumonia")  # torchvision ImageFolder's sorted folder names
    path = _mean_colour_model(tmp_path / "m.onnx", layout=layout)
    write_onnx_metadata(path, class_order=order, layout=layout, normalization="imagenet", output="logits",
                        resize="torchvision")
    assert read_onnx_metadata(path)["covidx.class_order"] == "COVID-19,normal,pneumonia"
    with caplog.at_level(logging.WARNING):
        predictor = load_predictor(path)
    assert not [r for r in caplog.records if "does not say" in r.getMessage()]  # nothing guessed
    assert predictor.preprocessing.resize == "torchvision"
    assert predictor.output == "logits" and "classes COVID-19,normal,pneumonia" in predictor.description
    got = predictor.predict_batch(IMAGES)
    np.testing.assert_allclose(got, _expected(IMAGES, order=order, mean=IMAGENET_MEAN, std=IMAGENET_STD),
                               atol=1e-6)
    # The same model read in CLASSES order would give other numbers: the order is not a no-op here.
    assert np.abs(got - _expected(IMAGES, mean=IMAGENET_MEAN, std=IMAGENET_STD)).max() > 0.05


def test_pixel_range_0_255(tmp_path: Path) -> None:
    path = _mean_colour_model(tmp_path / "m.onnx")
    write_onnx_metadata(path, pixel_range="0-255", output="logits")
    np.testing.assert_allclose(load_predictor(path).predict_batch(IMAGES), _expected(IMAGES, scale=255.0),
                               atol=1e-6)


def test_without_metadata_every_guess_is_one_warning_and_flags_fill_in(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _mean_colour_model(tmp_path / "bare.onnx")
    with caplog.at_level(logging.WARNING):
        predictor = load_predictor(path)
    warnings = [r.getMessage() for r in caplog.records if "does not say" in r.getMessage()]
    assert len(warnings) == 1
    for key in (
        "covidx.class_order",
        "covidx.layout",
        "covidx.pixel_range",
        "covidx.normalization",
        "covidx.output",
        "covidx.resize",
    ):
        assert key in warnings[0]
    assert "class order normal,pneumonia,COVID-19" in warnings[0] and "layout NCHW" in warnings[0]
    assert "resize baseline" in warnings[0]
    assert predictor.preprocessing.resize == "baseline"
    assert predictor.preprocessing.source == "assumed: the model has no covidx.resize"
    np.testing.assert_allclose(predictor.predict_batch(IMAGES), _expected(IMAGES), atol=1e-6)
    assert predictor.output == "logits"  # decided from the first batch

    caplog.clear()
    given = {"covidx.class_order": "pneumonia,COVID-19,normal", "covidx.output": "logits"}
    with caplog.at_level(logging.WARNING):
        predictor = load_predictor(path, onnx_conventions=given)
    warning = next(r.getMessage() for r in caplog.records if "does not say" in r.getMessage())
    assert "covidx.class_order" not in warning and "covidx.pixel_range" in warning
    np.testing.assert_allclose(
        predictor.predict_batch(IMAGES),
        _expected(IMAGES, order=("pneumonia", "COVID-19", "normal")),
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "values, message",
    [
        (
            {"covidx.class_order": "normal,pneumonia,covid"},
            "must name normal, pneumonia, COVID-19 once each, received 'normal,pneumonia,covid'",
        ),
        ({"covidx.class_order": "normal,normal,COVID-19"}, "once each"),
        ({"covidx.layout": "CHW"}, "must be one of NCHW, NHWC, received 'CHW'"),
        ({"covidx.pixel_range": "0-65535"}, "must be one of 0-1, 0-255, received '0-65535'"),
        ({"covidx.normalization": "mean=0.5;std=0"}, "std > 0"),
        ({"covidx.normalization": "imagenet", "covidx.pixel_range": "0-255"}, "cannot be combined"),
        ({"covidx.output": "scores"}, "must be one of logits, probabilities, received 'scores'"),
        ({"covidx.resize": "bicubic"}, "must be one of baseline, torchvision, received 'bicubic'"),
    ],
)
def test_bad_metadata_is_one_line_naming_the_key(tmp_path: Path, values: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        conventions_from(values, what="model.onnx")
    assert message in str(info.value) and "\n" not in str(info.value)
    # Stored in a model, the same values stop the load with the file named.
    path = _mean_colour_model(tmp_path / "bad.onnx")
    proto = onnx.load(str(path))
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    with pytest.raises(ValueError) as info:
        load_predictor(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_onnx_flags_are_refused_for_other_kinds(tmp_path: Path) -> None:
    import keras

    model = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.save(tmp_path / "m.keras")
    with pytest.raises(
        ValueError, match=r"covidx.class_order: only for ONNX models; checkpoint .*m.keras is a"
    ):
        load_predictor(
            tmp_path / "m.keras", onnx_conventions={"covidx.class_order": "normal,pneumonia,COVID-19"}
        )


def test_metadata_write_keeps_external_data_and_other_entries(tmp_path: Path) -> None:
    path = _mean_colour_model(tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "producer.note", "kept"
    onnx.save(
        proto,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="m.onnx.data",
        size_threshold=0,
    )
    data_bytes = (tmp_path / "m.onnx.data").read_bytes()
    write_onnx_metadata(path, output="logits")
    assert (tmp_path / "m.onnx.data").read_bytes() == data_bytes
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert props["producer.note"] == "kept" and props["covidx.output"] == "logits"
    np.testing.assert_allclose(load_predictor(path).predict_batch(IMAGES), _expected(IMAGES), atol=1e-6)


def test_resize_key_is_read_and_the_flag_overrides_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _mean_colour_model(tmp_path / "m.onnx")
    write_onnx_metadata(path, output="logits", resize="torchvision")
    assert read_onnx_metadata(path)["covidx.resize"] == "torchvision"
    with caplog.at_level(logging.WARNING):
        recorded = load_predictor(path)
    assert recorded.preprocessing.to_dict() == {
        "resize": "torchvision", "source": "recorded in ONNX metadata covidx.resize"
    }
    assert not caplog.records  # every key said: nothing guessed, nothing contradicted

    # --resize wins, with one warning naming both; the model's other conventions are unchanged.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        flagged = load_predictor(path, resize="baseline")
    assert flagged.preprocessing.to_dict() == {
        "resize": "baseline", "source": "--resize; ONNX metadata covidx.resize records torchvision"
    }
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "--resize baseline contradicts ONNX metadata covidx.resize" in warning
    assert "trained with resize torchvision" in warning
    np.testing.assert_allclose(flagged.predict_batch(IMAGES), _expected(IMAGES), atol=1e-6)

    # A model that says nothing: the flag fills in without a guess warning for covidx.resize.
    bare = _mean_colour_model(tmp_path / "bare.onnx")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        given = load_predictor(bare, resize="torchvision")
    assert given.preprocessing.to_dict() == {"resize": "torchvision", "source": "--resize"}
    (guess,) = [r.getMessage() for r in caplog.records if "does not say" in r.getMessage()]
    assert "covidx.output" in guess and "covidx.resize" not in guess

    # write_onnx_metadata without resize leaves the key as it was.
    write_onnx_metadata(path, output="probabilities")
    assert read_onnx_metadata(path)["covidx.resize"] == "torchvision"
    with pytest.raises(ValueError, match="--resize: .*one of baseline, torchvision, received 'area'"):
        load_predictor(path, resize="area")
