"""The model registry: shapes, names, errors, weights, regularisation, precision, saving."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

import models
from models import ModelSpec, build_model, build_model_from_spec, list_models, resolve_model_name
from models.registry import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB

ALL_MODELS = [
    "covidnet", "densenet121", "efficientnetb4", "mobilenetv2", "resnet18", "resnet50v2", "smallcnn",
    "xception",
]
APPLICATIONS = ["densenet121", "efficientnetb4", "mobilenetv2", "resnet50v2", "xception"]
RESNET_NOTOP = "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"


def _images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def _size(name: str) -> int:
    return models.get_model_info(name).min_size


@pytest.fixture(scope="module")
def cached_model() -> Callable[[str, int], keras.Model]:
    """Default-argument models at their minimum size, built once per module."""
    cache: dict[tuple[str, int], keras.Model] = {}

    def get(name: str, channels: int) -> keras.Model:
        key = (name, channels)
        if key not in cache:
            size = _size(name)
            cache[key] = build_model(name, input_shape=(size, size, channels))
        return cache[key]

    return get


@pytest.fixture(autouse=True)
def _float32_policy() -> None:
    # Every test starts from and must leave the default global policy.
    assert keras.config.dtype_policy().name == "float32"
    yield
    assert keras.config.dtype_policy().name == "float32"


# ---------------------------------------------------------------- registry


def test_list_models() -> None:
    assert list_models() == ALL_MODELS


@pytest.mark.parametrize(
    "given, canonical",
    [
        ("custom", "covidnet"),
        ("EfficientNet", "efficientnetb4"),
        ("efficientnet", "efficientnetb4"),
        ("ResNet50V2", "resnet50v2"),
        (" mobilenetv2 ", "mobilenetv2"),
        ("covidnet", "covidnet"),
    ],
)
def test_aliases_and_case(given: str, canonical: str) -> None:
    assert resolve_model_name(given) == canonical


def test_unknown_name_lists_valid_names_and_close_match() -> None:
    with pytest.raises(ValueError) as info:
        build_model("resnet50", input_shape=(32, 32, 3))
    message = str(info.value)
    assert "unknown model 'resnet50'" in message
    assert ", ".join(ALL_MODELS) in message
    assert "custom -> covidnet" in message and "EfficientNet -> efficientnetb4" in message
    assert message.endswith("did you mean 'resnet50v2'?")
    with pytest.raises(ValueError) as info:
        resolve_model_name("vgg16")
    assert "did you mean" not in str(info.value)


def test_register_model_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match=r"already registered: \['custom'\]"):
        models.register_model("another", aliases=("custom",))(lambda x: x)
    assert "another" not in list_models()


# ---------------------------------------------------------------- shapes and names


# Every model with 1 channel (the channel-repeat path); 3 channels for all but the two
# slowest to build (EfficientNetB4, Xception: their 3-channel input is the same backbone).
SHAPE_CASES = [(name, 1) for name in ALL_MODELS] + [
    (name, 3) for name in ALL_MODELS if name not in ("efficientnetb4", "xception")
]


@pytest.mark.parametrize("name, channels", SHAPE_CASES)
def test_every_model_outputs_softmax_rows(name: str, channels: int, cached_model) -> None:
    model = cached_model(name, channels)
    size = _size(name)
    assert tuple(model.input.shape) == (None, size, size, channels)
    probs = model(_images(4, (size, size, channels))).numpy()
    assert probs.shape == (4, 3)
    assert probs.dtype == np.float32
    assert np.all(probs >= 0) and np.all(probs <= 1)
    np.testing.assert_allclose(probs.sum(axis=1), np.ones(4), atol=1e-5)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_fixed_layer_names(name: str, cached_model) -> None:
    model = cached_model(name, 1)
    assert model.layers[0].name == "input_1"
    assert model.layers[0].dtype == "float32"
    assert [layer.name for layer in model.layers[-4:]] == ["flatten", "dense", "dense_1", "FC_3"]
    assert model.get_layer("dense").units == 1024
    assert model.get_layer("dense_1").units == 256
    out = model.get_layer("FC_3")
    assert out.units == 3 and out.activation.__name__ == "softmax"
    assert model.get_layer("dense").kernel_regularizer.get_config() == {"l2": pytest.approx(1e-4)}
    assert out.kernel_regularizer is None


def test_resnet50v2_keeps_keras_applications_layer_names(cached_model) -> None:
    model = cached_model("resnet50v2", 3)
    names = [layer.name for layer in model.layers]
    # SURFsara's network: input, then ResNet50V2's own layers straight away.
    assert names[:3] == ["input_1", "conv1_pad", "conv1_conv"]
    assert "post_relu" in names and names.index("post_relu") == len(names) - 5
    reference = keras.applications.ResNet50V2(include_top=False, weights=None, input_shape=(32, 32, 3))
    assert len(model.layers) - 4 == len(reference.layers)
    # Layers with weights carry fixed names (a few weightless pooling layers get Keras's counters).
    with_weights = [layer.name for layer in model.layers[1:-4] if layer.weights]
    assert with_weights == [layer.name for layer in reference.layers if layer.weights]
    assert len(with_weights) == 102
    assert model.count_params() - reference.count_params() == (2048 * 1024 + 1024) + (1024 * 256 + 256) + (
        256 * 3 + 3
    )


def test_no_lambda_or_custom_layers(cached_model) -> None:
    for name in ALL_MODELS:
        for layer in cached_model(name, 1).layers:
            assert not isinstance(layer, keras.layers.Lambda), (name, layer.name)
            assert type(layer).__module__.startswith("keras.src.layers."), (name, layer.name, type(layer))


@pytest.mark.parametrize(
    "head, layer_name, layer_type",
    [
        ("avg", "global_average_pooling2d", keras.layers.GlobalAveragePooling2D),
        ("max", "global_max_pooling2d", keras.layers.GlobalMaxPooling2D),
        ("flatten", "flatten", keras.layers.Flatten),
    ],
)
def test_heads_and_class_count(head: str, layer_name: str, layer_type: type) -> None:
    model = build_model("smallcnn", input_shape=(64, 48, 1), head=head, num_classes=5)
    assert isinstance(model.get_layer(layer_name), layer_type)
    assert model.layers[-1].name == "FC_5"
    # smallcnn ends with 128 channels at stride 32: 2 x 1 positions for 64 x 48.
    assert model.get_layer("dense").kernel.shape == ((256 if head == "flatten" else 128), 1024)
    probs = model(_images(3, (64, 48, 1))).numpy()
    assert probs.shape == (3, 5)
    np.testing.assert_allclose(probs.sum(axis=1), np.ones(3), atol=1e-5)


def test_smallest_and_too_small_inputs() -> None:
    model = build_model("xception", input_shape=(71, 80, 1), head="avg")
    assert model(_images(1, (71, 80, 1))).shape == (1, 3)
    with pytest.raises(ValueError, match=r"'xception' needs height and width >= 71; received \(70, 80, 3\)"):
        build_model("xception", input_shape=(70, 80, 3))
    with pytest.raises(ValueError, match=r"channels must be 1 or 3; received \(64, 64, 2\)"):
        build_model("smallcnn", input_shape=(64, 64, 2))


# ---------------------------------------------------------------- ResNet-18 (torchvision's)

# torchvision.models.resnet18(): 11,689,512 parameters, of which fc (512 x 1000 + 1000) is 513,000.
TORCHVISION_RESNET18_PARAMS = 11_689_512
TORCHVISION_RESNET18_FC = 512 * 1000 + 1000


def _torchvision_resnet18_parameters() -> dict[str, tuple[int, ...]]:
    """torchvision's resnet18 state-dict parameters (not buffers) without fc, names and PyTorch shapes."""
    shapes: dict[str, tuple[int, ...]] = {
        "conv1.weight": (64, 3, 7, 7), "bn1.weight": (64,), "bn1.bias": (64,)
    }
    in_channels = 64
    for stage, filters in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            prefix = f"layer{stage}.{block}"
            shapes[f"{prefix}.conv1.weight"] = (filters, in_channels, 3, 3)
            shapes[f"{prefix}.conv2.weight"] = (filters, filters, 3, 3)
            for bn in ("bn1", "bn2"):
                shapes[f"{prefix}.{bn}.weight"] = shapes[f"{prefix}.{bn}.bias"] = (filters,)
            if in_channels != filters:
                shapes[f"{prefix}.downsample.0.weight"] = (filters, in_channels, 1, 1)
                shapes[f"{prefix}.downsample.1.weight"] = shapes[f"{prefix}.downsample.1.bias"] = (filters,)
            in_channels = filters
    return shapes


def _count(variables) -> int:
    return sum(int(np.prod(v.shape)) for v in variables)


@pytest.fixture(scope="module")
def resnet18_224() -> keras.Model:
    return build_model("resnet18", input_shape=(224, 224, 3), head="avg")


def _resnet18_backbone(model: keras.Model) -> keras.Model:
    return keras.Model(model.input, model.get_layer("layer4_1_relu2").output)


def test_resnet18_parameter_count_is_torchvisions_without_fc(resnet18_224) -> None:
    backbone = _resnet18_backbone(resnet18_224)
    expected = TORCHVISION_RESNET18_PARAMS - TORCHVISION_RESNET18_FC
    assert expected == 11_176_512 == sum(int(np.prod(s)) for s in _torchvision_resnet18_parameters().values())
    assert _count(backbone.trainable_weights) == expected
    # BN moving mean and variance: buffers in torchvision, non-trainable weights in Keras.
    bn_channels = 64 + 4 * 64 + 5 * 128 + 5 * 256 + 5 * 512
    assert _count(backbone.non_trainable_weights) == 2 * bn_channels == 9_600
    assert backbone.count_params() == 11_186_112
    # The 224 px feature map of torchvision's layer4, and the registry's avg head on it.
    assert tuple(backbone.output.shape) == (None, 7, 7, 512)
    head = (512 * 1024 + 1024) + (1024 * 256 + 256) + (256 * 3 + 3)
    assert resnet18_224.count_params() == 11_186_112 + head
    assert models.get_model_info("resnet18").imagenet is None


def test_resnet18_layers_are_torchvisions_state_dict(resnet18_224) -> None:
    """Layer names are torchvision's keys with '.' -> '_', weight shapes its shapes in Keras order."""
    keras_to_torch = {"gamma": "weight", "beta": "bias", "kernel": "weight"}
    ours: dict[str, tuple[int, ...]] = {}
    for layer in resnet18_224.layers:
        if layer.name in models.head_layer_names():
            continue
        for variable in layer.trainable_weights:
            ours[f"{layer.name.replace('_', '.')}.{keras_to_torch[variable.name]}"] = tuple(variable.shape)
    torch_shapes = _torchvision_resnet18_parameters()
    assert sorted(ours) == sorted(torch_shapes)
    assert len(ours) == 60
    for key, shape in torch_shapes.items():
        # PyTorch [out, in, h, w] -> Keras [h, w, in, out]
        expected = (shape[2], shape[3], shape[1], shape[0]) if len(shape) == 4 else shape
        assert ours[key] == expected, key
    bn = resnet18_224.get_layer("layer3_0_downsample_1")
    assert (bn.epsilon, bn.momentum) == (1e-5, 0.9)  # PyTorch's eps and momentum=0.1


@pytest.mark.parametrize("size", [224, 225, 64, 33])
def test_resnet18_feature_map_sizes_follow_torchvision(size: int) -> None:
    model = build_model("resnet18", input_shape=(size, size, 1), head="avg")

    def torch_out(n: int, kernel: int, stride: int, pad: int) -> int:
        return (n + 2 * pad - kernel) // stride + 1

    n = torch_out(torch_out(size, 7, 2, 3), 3, 2, 1)  # conv1, maxpool
    assert model.get_layer("maxpool").output.shape[1:3] == (n, n)
    for stage in (2, 3, 4):
        n = torch_out(n, 3, 2, 1)
        assert model.get_layer(f"layer{stage}_0_conv1").output.shape[1:3] == (n, n)
        assert model.get_layer(f"layer{stage}_0_downsample_0").output.shape[1:3] == (n, n)
    assert model.get_layer("layer4_1_relu2").output.shape[1:] == (n, n, 512)


def test_resnet18_stem_samples_the_grid_torchvision_samples() -> None:
    """conv1 (7x7/2, pad 3) and maxpool (3x3/2, pad 1) see the pixels PyTorch's padding gives them.

    With Keras's padding="same" an even input is padded at the bottom/right only, which would
    sample odd pixels: a centred delta kernel makes the difference visible.
    """
    model = build_model("resnet18", input_shape=(32, 32, 1), head="avg")
    kernel = np.zeros((7, 7, 1, 64), np.float32)
    kernel[3, 3, 0, :] = 1.0
    model.get_layer("conv1").set_weights([kernel])
    bn = model.get_layer("bn1")
    # Identity batch normalisation in inference mode: (x - 0) / sqrt((1 - eps) + eps) * 1 + 0.
    bn.set_weights([np.ones(64), np.zeros(64), np.zeros(64), np.full(64, 1 - bn.epsilon)])
    images = _images(2, (32, 32, 1), seed=3)  # >= 0, so the ReLU passes them unchanged
    stem = keras.Model(model.input, [model.get_layer("conv1").output, model.get_layer("maxpool").output])
    conv, pooled = (t.numpy() for t in stem(images, training=False))
    np.testing.assert_allclose(conv[..., 0], images[:, ::2, ::2, 0], atol=1e-6)  # PyTorch: out[i] = x[2i]
    strided = np.pad(images[:, ::2, ::2, 0], ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    expected = np.stack([
        np.stack([strided[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(1, 2)) for j in range(8)], axis=1)
        for i in range(8)
    ], axis=1)
    np.testing.assert_allclose(pooled[..., 0], expected, atol=1e-6)
    # Every strided layer: symmetric explicit padding of kernel // 2 in front of a "valid" layer.
    for layer in model.layers:
        if isinstance(layer, keras.layers.ZeroPadding2D):
            (top, bottom), (left, right) = layer.padding
            assert top == bottom == left == right


def test_resnet18_one_channel_and_weights_file(tmp_path: Path, no_download) -> None:
    gray = build_model("resnet18", input_shape=(40, 56, 1), head="avg")
    rgb = build_model("resnet18", input_shape=(40, 56, 3), head="avg")
    # No channel repeat: a grey input changes only conv1 (7 x 7 x 2 x 64 weights fewer).
    assert "channel_repeat" not in [layer.name for layer in gray.layers]
    assert rgb.count_params() - gray.count_params() == 7 * 7 * 2 * 64
    probs = gray(_images(2, (40, 56, 1))).numpy()
    np.testing.assert_allclose(probs.sum(axis=1), np.ones(2), atol=1e-5)
    # --weights FILE: a backbone file (e.g. converted from torchvision) loads by structure.
    source = _resnet18_backbone(gray)
    path = tmp_path / "resnet18_backbone.weights.h5"
    source.save_weights(path)
    loaded = build_model("resnet18", input_shape=(40, 56, 1), head="avg", weights=path)
    for layer in source.layers:
        for a, b in zip(layer.get_weights(), loaded.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="'resnet18' has no ImageNet weights"):
        build_model("resnet18", input_shape=(64, 64, 3), weights="imagenet")


def test_linear_head_is_torchvisions_avgpool_and_fc() -> None:
    """head="linear": GlobalAveragePooling -> FC_<n> (softmax), initialised as torch's nn.Linear."""
    model = build_model("resnet18", input_shape=(64, 64, 3), head="linear", num_classes=4)
    names = [layer.name for layer in model.layers[-3:]]
    assert names == ["layer4_1_relu2", "global_average_pooling2d", "FC_4"]
    fc = model.get_layer("FC_4")
    assert fc.activation.__name__ == "softmax" and fc.dtype == "float32" and fc.kernel_regularizer is None
    # nn.Linear(512, n): weight and bias ~ U(-1/sqrt(512), 1/sqrt(512)).
    bound = 1 / np.sqrt(512)
    kernel, bias = fc.kernel.numpy(), fc.bias.numpy()
    assert kernel.shape == (512, 4) and np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound
    assert np.abs(kernel).max() > 0.9 * bound and kernel.std() == pytest.approx(bound / np.sqrt(3), rel=0.1)
    assert np.all(bias != 0)
    # torchvision's resnet18 with fc = Linear(512, 4): its parameters, plus the 9,600 BN statistics.
    assert model.count_params() == 11_689_512 - 513_000 + 512 * 4 + 4 + 9_600
    assert models.head_layer_names(4, "linear") == ("FC_4",)
    assert models.head_layer_names(4) == ("dense", "dense_1", "FC_4")
    probs = model(_images(2, (64, 64, 3))).numpy()
    np.testing.assert_allclose(probs.sum(axis=1), np.ones(2), atol=1e-5)
    dense = build_model("densenet121", input_shape=(32, 32, 1), head="linear")
    assert [layer.name for layer in dense.layers[-3:]] == ["relu", "global_average_pooling2d", "FC_3"]
    assert dense.get_layer("FC_3").kernel.shape == (1024, 3)  # torchvision's classifier: Linear(1024, n)
    assert dense.count_params() == 7_037_504 + 1024 * 3 + 3


def test_linear_head_saves_loads_and_trains_only_fc_when_frozen(tmp_path: Path) -> None:
    from training.phases import set_backbone_frozen

    model = build_model("resnet18", input_shape=(32, 32, 3), head="linear", backbone_l2=1e-3)
    # backbone_l2 covers the 20 convolutions, not FC_3 (the head has no penalty).
    assert len(model.losses) == 20
    path = tmp_path / "linear.keras"
    model.save(path)
    loaded = keras.models.load_model(path, compile=False)
    images = _images(2, (32, 32, 3))
    np.testing.assert_allclose(loaded(images).numpy(), model(images).numpy(), atol=1e-6)
    set_backbone_frozen(model, True, train_bn=False)
    assert [v.path for v in model.trainable_weights] == ["FC_3/kernel", "FC_3/bias"]


# ---------------------------------------------------------------- input normalisation


def _norm_output(model: keras.Model, images: np.ndarray) -> np.ndarray:
    return keras.Model(model.input, model.get_layer("input_norm").output)(images).numpy()


def test_input_norm_defaults() -> None:
    defaults = {name: models.get_model_info(name).default_input_norm for name in ALL_MODELS}
    assert defaults == {
        "covidnet": "none",
        "densenet121": "imagenet",
        "efficientnetb4": "imagenet",
        "mobilenetv2": "imagenet",
        "resnet18": "none",
        "resnet50v2": "none",
        "smallcnn": "none",
        "xception": "imagenet",
    }


def test_input_norm_layers_compute_imagenet_preprocessing(cached_model) -> None:
    rgb = _images(2, (32, 32, 3), seed=1)
    # resnet50v2 default: [0, 1] straight into the backbone (SURFsara), no input_norm layer.
    assert "input_norm" not in [layer.name for layer in cached_model("resnet50v2", 3).layers]
    resnet = build_model("resnet50v2", input_shape=(32, 32, 3), input_norm="imagenet", head="avg")
    np.testing.assert_allclose(_norm_output(resnet, rgb), 2 * rgb - 1, atol=1e-6)
    dense = cached_model("densenet121", 3)
    expected = (rgb - np.array(IMAGENET_MEAN_RGB)) / np.array(IMAGENET_STD_RGB)
    np.testing.assert_allclose(_norm_output(dense, rgb), expected, atol=1e-5)
    # One channel: repeated to RGB first, then normalised per channel.
    gray = _images(2, (32, 32, 1), seed=2)
    effnet = cached_model("efficientnetb4", 1)
    np.testing.assert_allclose(_norm_output(effnet, gray), 255 * np.repeat(gray, 3, axis=-1), rtol=1e-6)
    expected = (np.repeat(gray, 3, axis=-1) - np.array(IMAGENET_MEAN_RGB)) / np.array(IMAGENET_STD_RGB)
    np.testing.assert_allclose(_norm_output(cached_model("densenet121", 1), gray), expected, atol=1e-5)


def test_resnet18_imagenet_input_norm_is_torchvisions_normalize() -> None:
    assert models.get_model_info("resnet18").input_norms == ("none", "imagenet")
    model = build_model("resnet18", input_shape=(32, 32, 3), input_norm="imagenet", head="linear")
    assert [layer.name for layer in model.layers[:3]] == ["input_1", "input_norm", "conv1_pad"]
    rgb = _images(2, (32, 32, 3), seed=5)
    expected = (rgb - np.array(IMAGENET_MEAN_RGB)) / np.array(IMAGENET_STD_RGB)
    np.testing.assert_allclose(_norm_output(model, rgb), expected, atol=1e-5)
    spec = ModelSpec(name="resnet18", input_shape=(32, 32, 3), head="linear", input_norm="imagenet")
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.to_dict()["head"] == "linear" and spec.to_dict()["input_norm"] == "imagenet"
    # Per-RGB-channel statistics on a model that takes 1 channel directly: refused.
    with pytest.raises(
        ValueError,
        match=r"input_norm='imagenet' for model 'resnet18' needs 3 channels.*"
        r"received input_shape \(32, 32, 1\)",
    ):
        ModelSpec(name="resnet18", input_shape=(32, 32, 1), input_norm="imagenet")


@pytest.mark.parametrize(
    "name, input_norm, message",
    [
        ("efficientnetb4", "none", r"multiplied by 255"),
        ("covidnet", "imagenet", r"no ImageNet weights"),
        ("resnet50v2", "caffe", r"none, imagenet; received 'caffe'"),
    ],
)
def test_invalid_input_norm(name: str, input_norm: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(name, input_shape=(64, 64, 3), input_norm=input_norm)


# ---------------------------------------------------------------- weights


@pytest.mark.parametrize(
    "name, size, file_name, url",
    [
        (
            "resnet50v2",
            512,
            RESNET_NOTOP,
            "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + RESNET_NOTOP,
        ),
        (
            "densenet121",
            64,
            "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "https://storage.googleapis.com/tensorflow/keras-applications/densenet/"
            "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        (
            "xception",
            299,
            "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "https://storage.googleapis.com/tensorflow/keras-applications/xception/"
            "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        (
            "mobilenetv2",
            512,
            "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
            "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
            "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
        ),
        (
            "mobilenetv2",
            128,
            "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_128_no_top.h5",
            "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
            "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_128_no_top.h5",
        ),
        (
            "EfficientNet",
            380,
            "efficientnetb4_notop.h5",
            "https://storage.googleapis.com/keras-applications/efficientnetb4_notop.h5",
        ),
    ],
)
def test_imagenet_offline_error_names_file_url_and_folder(
    name: str, size: int, file_name: str, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    with pytest.raises(FileNotFoundError) as info:
        build_model(name, input_shape=(size, size, 1), weights="imagenet")
    message = str(info.value)
    assert f"{file_name} is not in {tmp_path / 'kh' / 'models'}" in message
    assert f"download {url} and put it in {tmp_path / 'kh' / 'models'}" in message
    assert not (tmp_path / "kh").exists()  # nothing created, nothing downloaded


def test_imagenet_urls_match_keras() -> None:
    from keras.src.applications import densenet, efficientnet, mobilenet_v2, resnet, xception

    shape = (224, 224, 3)
    url = {name: models.get_model_info(name).imagenet.url(shape) for name in APPLICATIONS}
    assert url["resnet50v2"] == resnet.BASE_WEIGHTS_PATH + RESNET_NOTOP
    assert url["densenet121"] == densenet.DENSENET121_WEIGHT_PATH_NO_TOP
    assert url["xception"] == xception.WEIGHTS_PATH_NO_TOP
    assert url["mobilenetv2"] == (
        mobilenet_v2.BASE_WEIGHT_PATH + "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    )
    assert url["efficientnetb4"] == efficientnet.BASE_WEIGHTS_PATH + "efficientnetb4_notop.h5"


def test_keras_models_dir_follows_keras_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    assert models.keras_models_dir() == tmp_path / "kh" / "models"
    monkeypatch.delenv("KERAS_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert models.keras_models_dir() == tmp_path / ".keras" / "models"


@pytest.fixture(scope="module")
def resnet_notop_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[np.ndarray]]]:
    """A ResNet50V2 notop file in the Keras-2 layout the published files have, and its weights by layer."""
    tf_keras = pytest.importorskip("tf_keras")
    backbone = tf_keras.applications.ResNet50V2(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path_factory.mktemp("weights") / RESNET_NOTOP
    backbone.save_weights(str(path))
    return path, {layer.name: layer.get_weights() for layer in backbone.layers if layer.weights}


def _assert_backbone_equals(model: keras.Model, reference: dict[str, list[np.ndarray]]) -> None:
    assert len(reference) == 102  # ResNet50V2's layers with weights
    for name, arrays in reference.items():
        ours = model.get_layer(name).get_weights()
        assert len(ours) == len(arrays)
        for a, b in zip(ours, arrays):
            np.testing.assert_array_equal(a, b)


def _structure(model: keras.Model) -> list[tuple[str, list[tuple[int, ...]]]]:
    return [(type(layer).__name__, [tuple(w.shape) for w in layer.weights]) for layer in model.layers]


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything asks Keras to fetch a file."""
    from keras.src.utils import file_utils

    def refuse(*args, **kwargs):
        raise AssertionError(f"download attempted: {args} {kwargs}")

    monkeypatch.setattr(file_utils, "get_file", refuse)


def test_weights_from_local_file(resnet_notop_file, no_download) -> None:
    path, reference = resnet_notop_file
    model = build_model("resnet50v2", input_shape=(48, 40, 3), weights=path)
    _assert_backbone_equals(model, reference)
    probs = model(_images(2, (48, 40, 3))).numpy()
    np.testing.assert_allclose(probs.sum(axis=1), np.ones(2), atol=1e-5)


def test_imagenet_weights_from_keras_cache(
    resnet_notop_file, no_download, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, reference = resnet_notop_file
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / RESNET_NOTOP).symlink_to(path)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    model = build_model("resnet50v2", input_shape=(32, 32, 1), weights="imagenet")
    assert model.layers[1].name == "channel_repeat"
    _assert_backbone_equals(model, reference)
    # Same architecture as a weights=None build, so checkpoints move between them.
    fresh = build_model("resnet50v2", input_shape=(32, 32, 1))
    assert _structure(fresh) == _structure(model)
    fresh.set_weights(model.get_weights())
    images = _images(2, (32, 32, 1))
    np.testing.assert_allclose(fresh(images).numpy(), model(images).numpy(), atol=1e-6)


def test_surfsara_era_checkpoint_loads_layer_for_layer(tmp_path: Path) -> None:
    """A tf.keras 2 model built like SURFsara's build_COVIDNet('resnet50v2') loads into ours."""
    tf_keras = pytest.importorskip("tf_keras")
    base = tf_keras.applications.ResNet50V2(include_top=False, weights=None, input_shape=(32, 32, 3))
    x = tf_keras.layers.Flatten()(base.output)
    x = tf_keras.layers.Dense(1024, activation="relu")(x)
    x = tf_keras.layers.Dense(256, activation="relu")(x)
    x = tf_keras.layers.Dense(3, activation="softmax", name="FC_3")(x)
    surfsara = tf_keras.Model(inputs=base.input, outputs=x)
    path = tmp_path / "surfsara.h5"
    surfsara.save_weights(str(path))
    images = _images(2, (32, 32, 3))
    expected = surfsara(images).numpy()

    model = build_model("resnet50v2", input_shape=(32, 32, 3))
    model.load_weights(str(path))
    np.testing.assert_allclose(model(images).numpy(), expected, atol=1e-5)


def test_surfsara_multi_gpu_checkpoint_loads(tmp_path: Path) -> None:
    """SURFsara's multi-GPU version saved the multi_gpu_model wrapper: the whole model nested as one layer."""
    tf_keras = pytest.importorskip("tf_keras")
    from training.checkpoints import load_weights_file

    base = tf_keras.applications.ResNet50V2(include_top=False, weights=None, input_shape=(32, 32, 3))
    x = tf_keras.layers.Flatten()(base.output)
    x = tf_keras.layers.Dense(1024, activation="relu")(x)
    x = tf_keras.layers.Dense(256, activation="relu")(x)
    x = tf_keras.layers.Dense(3, activation="softmax", name="FC_3")(x)
    template = tf_keras.Model(inputs=base.input, outputs=x, name="model_1")
    # multi_gpu_model's graph: slices of the input batch -> the template on each -> concatenation named
    # after the template's output.
    inputs = tf_keras.Input((32, 32, 3), name="input_1")
    halves = [
        tf_keras.layers.Lambda(lambda t, i=i: t[i::2], name=f"lambda_{i + 1}")(inputs) for i in range(2)
    ]
    merged = tf_keras.layers.Concatenate(axis=0, name="FC_3")([template(h) for h in halves])
    wrapper = tf_keras.Model(inputs, merged)
    # Non-zero batch-norm statistics, so loading them in the wrong place would show.
    for layer in template.layers:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.full(layer.moving_mean.shape, 0.1, np.float32))
            layer.moving_variance.assign(np.full(layer.moving_variance.shape, 2.0, np.float32))
    path = tmp_path / "cp-04-0.93.hdf5"
    wrapper.save_weights(str(path))
    with h5py.File(path, "r") as f:  # the layout of their files: one group holds every weight
        assert [n for n in f.attrs["layer_names"] if len(f[n].attrs["weight_names"])] == ["model_1"]
    images = _images(2, (32, 32, 3))
    expected = template(images).numpy()

    model = build_model("resnet50v2", input_shape=(32, 32, 3))
    load_weights_file(model, path)
    np.testing.assert_allclose(model(images).numpy(), expected, atol=1e-5)


def test_weights_argument_errors(resnet_notop_file, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"weights file '.*missing\.h5' \(for model 'resnet50v2'\)"):
        build_model("resnet50v2", input_shape=(32, 32, 3), weights=tmp_path / "missing.h5")
    with pytest.raises(IsADirectoryError, match="is not a file"):
        build_model("resnet50v2", input_shape=(32, 32, 3), weights=tmp_path)
    (tmp_path / "w.bin").write_bytes(b"x")
    suffixes = r"ending in \.h5/\.hdf5.*\.pth/\.pt/\.safetensors.*received suffix '\.bin'"
    with pytest.raises(ValueError, match=suffixes):
        build_model("resnet50v2", input_shape=(32, 32, 3), weights=tmp_path / "w.bin")
    # A torchvision state dict only fits the two models with a converter (tests/test_torch_weights.py).
    (tmp_path / "w.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"loaded into densenet121 or resnet18; received model 'resnet50v2'"):
        build_model("resnet50v2", input_shape=(32, 32, 3), weights=tmp_path / "w.pt")
    with pytest.raises(ValueError, match="'smallcnn' has no ImageNet weights"):
        build_model("smallcnn", input_shape=(32, 32, 3), weights="imagenet")
    with pytest.raises(ValueError, match="does not fit the 'mobilenetv2' backbone"):
        build_model("mobilenetv2", input_shape=(32, 32, 3), weights=resnet_notop_file[0])


def _write_keras2_weights(path: Path, layers: list[tuple[str, list[np.ndarray]]]) -> None:
    """Write weights in the Keras 2 HDF5 layout of the published notop files (as tf_keras writes it)."""
    with h5py.File(path, "w") as f:
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.21.0"
        f.attrs["layer_names"] = [name.encode() for name, _ in layers]
        for name, arrays in layers:
            group = f.create_group(name)
            weight_names = [f"{name}/w{i}:0" for i in range(len(arrays))]
            group.attrs["weight_names"] = [w.encode() for w in weight_names]
            for weight_name, array in zip(weight_names, arrays):
                group.create_dataset(weight_name, data=array)


def test_efficientnet_imagenet_file_normalises_by_std(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_download, cached_model
) -> None:
    """The published file stores the std as 'variance'; the model must still compute (x - mean) / std."""
    source = cached_model("efficientnetb4", 1)
    head = set(models.head_layer_names())
    layers = []
    for layer in source.layers:
        if layer.name in head or not layer.weights:
            continue
        arrays = layer.get_weights()
        if isinstance(layer, keras.layers.Normalization):  # EfficientNet's internal one
            arrays = [np.array(IMAGENET_MEAN_RGB), np.array(IMAGENET_STD_RGB), np.array(0)]
        layers.append((layer.name, arrays))
    (tmp_path / "models").mkdir()
    _write_keras2_weights(tmp_path / "models" / "efficientnetb4_notop.h5", layers)
    stem = source.get_layer("stem_conv").get_weights()[0]
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    model = build_model("efficientnetb4", input_shape=(32, 32, 1), weights="imagenet", head="avg")
    np.testing.assert_array_equal(model.get_layer("stem_conv").get_weights()[0], stem)
    internal = next(
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.Normalization) and layer.name != "input_norm"
    )
    gray = _images(2, (32, 32, 1))
    normalised = keras.Model(model.input, internal.output)(gray).numpy()
    expected = (np.repeat(gray, 3, axis=-1) - np.array(IMAGENET_MEAN_RGB)) / np.array(IMAGENET_STD_RGB)
    np.testing.assert_allclose(normalised, expected, atol=1e-4)


# ---------------------------------------------------------------- regularisation


def _sum_sq(arrays) -> float:
    return float(sum(np.sum(np.square(np.asarray(a, dtype=np.float64))) for a in arrays))


def _kernels(model: keras.Model) -> tuple[list[np.ndarray], list[np.ndarray]]:
    backbone = [
        getattr(layer, kernel).numpy()
        for layer in models.backbone_kernel_layers(model)
        for _, kernel in models.registry.kernel_attributes(layer)
    ]
    head = [model.get_layer(name).kernel.numpy() for name in ("dense", "dense_1")]
    return backbone, head


@pytest.mark.parametrize(
    "name, size, layer_types",
    [
        ("mobilenetv2", 32, {"Conv2D", "DepthwiseConv2D"}),
        ("xception", 71, {"Conv2D", "SeparableConv2D"}),
        ("covidnet", 32, {"Conv2D", "DepthwiseConv2D"}),
    ],
)
def test_backbone_l2_adds_to_the_loss(name: str, size: int, layer_types: set[str]) -> None:
    model = build_model(name, input_shape=(size, size, 1), backbone_l2=1e-3, head_l2=1e-4)
    backbone = models.backbone_kernel_layers(model)
    assert {type(layer).__name__ for layer in backbone} == layer_types
    backbone_kernels, head_kernels = _kernels(model)
    expected = 1e-3 * _sum_sq(backbone_kernels) + 1e-4 * _sum_sq(head_kernels)
    assert expected > 0
    assert len(model.losses) == len(backbone_kernels) + 2
    assert float(sum(float(loss) for loss in model.losses)) == pytest.approx(expected, rel=1e-5)


def test_without_backbone_l2_only_head_terms_remain(cached_model) -> None:
    model = cached_model("mobilenetv2", 3)
    _, head_kernels = _kernels(model)
    assert len(model.losses) == 2
    total = float(sum(float(loss) for loss in model.losses))
    assert total == pytest.approx(1e-4 * _sum_sq(head_kernels), rel=1e-5)
    bare = build_model("smallcnn", input_shape=(32, 32, 3), head_l2=0.0)
    assert bare.losses == []


def test_backbone_l2_enters_the_training_loss() -> None:
    model = build_model("smallcnn", input_shape=(32, 32, 3), backbone_l2=0.01, head_l2=0.0)
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    images = _images(4, (32, 32, 3))
    y = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    y_pred = model(images)
    total = float(model.compute_loss(x=images, y=y, y_pred=y_pred))
    crossentropy = float(keras.losses.CategoricalCrossentropy()(y, y_pred))
    backbone_kernels, _ = _kernels(model)
    assert len(backbone_kernels) == 5
    assert total - crossentropy == pytest.approx(0.01 * _sum_sq(backbone_kernels), rel=1e-4)


# ---------------------------------------------------------------- precision


def test_mixed_precision_output_is_float32_and_policy_restored() -> None:
    for name, size in (("smallcnn", 32), ("mobilenetv2", 32)):
        model = build_model(name, input_shape=(size, size, 1), dtype_policy="mixed_float16")
        assert keras.config.dtype_policy().name == "float32"
        conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
        assert conv.compute_dtype == "float16" and conv.variable_dtype == "float32"
        assert model.get_layer("FC_3").compute_dtype == "float32"
        probs = model(_images(2, (size, size, 1)))
        assert probs.dtype == "float32"
        np.testing.assert_allclose(probs.numpy().sum(axis=1), np.ones(2), atol=1e-3)
    explicit = build_model("smallcnn", input_shape=(32, 32, 3), dtype_policy="float32")
    assert explicit.get_layer("block1_conv").compute_dtype == "float32"


def test_policy_restored_when_build_fails(resnet_notop_file) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        build_model(
            "mobilenetv2", input_shape=(32, 32, 3), weights=resnet_notop_file[0], dtype_policy="mixed_float16"
        )
    assert keras.config.dtype_policy().name == "float32"
    with pytest.raises(ValueError, match="dtype_policy must be None or one of float32, mixed_float16"):
        build_model("smallcnn", input_shape=(32, 32, 3), dtype_policy="float16")


# ---------------------------------------------------------------- saving


@pytest.fixture(scope="module")
def model_to_save() -> keras.Model:
    # Channel repeat, input Rescaling, depthwise convolutions, backbone L2 and the max head.
    return build_model("mobilenetv2", input_shape=(32, 32, 1), backbone_l2=1e-3, head="max")


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_save_and_load_without_custom_objects(suffix: str, tmp_path: Path, model_to_save) -> None:
    model = model_to_save
    images = _images(3, (32, 32, 1))
    before = model(images).numpy()
    path = tmp_path / f"model{suffix}"
    model.save(path)
    loaded = keras.models.load_model(path, compile=False)  # safe mode, no custom_objects
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    np.testing.assert_allclose(loaded(images).numpy(), before, atol=1e-6)
    # The backbone penalty is part of the saved configuration.
    assert len(loaded.losses) == len(model.losses)
    penalty = float(sum(map(float, model.losses)))
    assert penalty > 0
    assert float(sum(map(float, loaded.losses))) == pytest.approx(penalty, rel=1e-6)


# ---------------------------------------------------------------- ModelSpec


def test_model_spec_round_trip_and_rebuild() -> None:
    spec = ModelSpec(name="custom", input_shape=[48, 40, 1], head="AVG", backbone_l2=1e-5)
    assert spec == ModelSpec(
        name="covidnet",
        num_classes=3,
        input_shape=(48, 40, 1),
        head="avg",
        head_l2=1e-4,
        backbone_l2=1e-5,
        input_norm="none",
    )
    data = json.loads(json.dumps(spec.to_dict()))
    assert data == {
        "name": "covidnet",
        "num_classes": 3,
        "input_shape": [48, 40, 1],
        "head": "avg",
        "head_l2": 1e-4,
        "backbone_l2": 1e-5,
        "input_norm": "none",
    }
    assert ModelSpec.from_dict(data) == spec
    assert ModelSpec.from_dict({"name": "EfficientNet"}).input_norm == "imagenet"
    small = ModelSpec.from_dict({**data, "name": "smallcnn"})
    model = build_model_from_spec(small)
    twin = build_model("smallcnn", input_shape=(48, 40, 1), head="avg", backbone_l2=1e-5)
    assert [layer.name for layer in model.layers] == [layer.name for layer in twin.layers]  # all named
    assert _structure(model) == _structure(twin)
    assert model.count_params() == twin.count_params()
    assert len(model.losses) == len(twin.losses)
    with pytest.raises(ValueError, match=r"unknown keys \['weights'\]"):
        ModelSpec.from_dict({**data, "weights": "imagenet"})
    with pytest.raises(ValueError, match="'name' is required"):
        ModelSpec.from_dict({"num_classes": 3})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_classes": 1}, r"num_classes must be an integer >= 2; received 1"),
        ({"num_classes": 2.5}, r"num_classes must be an integer >= 2; received 2.5"),
        ({"input_shape": (64, 64)}, r"input_shape must be \(height, width, channels\)"),
        ({"head": "gap"}, r"head must be one of flatten, avg, max, linear; received 'gap'"),
        ({"head_l2": -1.0}, r"head_l2 must be a finite number >= 0; received -1.0"),
        ({"backbone_l2": float("nan")}, r"backbone_l2 must be a finite number >= 0; received nan"),
    ],
)
def test_model_spec_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelSpec(name="smallcnn", **kwargs)
