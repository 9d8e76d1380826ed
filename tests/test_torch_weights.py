"""torchvision weights in the Keras models, proven against real torch (models/torch_weights.py).

The reference networks (models/torch_reference.py) are torchvision's ResNet-18/50 and
DenseNet-121 written in plain torch with torchvision's module tree, state-dict keys and
initialisation. Their batch-normalisation statistics are calibrated on images (as in a
trained network) and their affine parameters randomised, so that a swapped, untransposed
or mis-scaled tensor shows in the outputs. Sizes are 64 px (32 px where only the
weights matter).
"""
from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is optional (pip install -r requirements-torch.txt); the torchvision "
                    "conversion tests need it to write and run the reference models"
)

import keras  # noqa: E402

from models import ModelSpec, build_model  # noqa: E402
from models import torch_reference as R  # noqa: E402
from models.registry import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB  # noqa: E402
from models.torch_weights import (  # noqa: E402
    TORCH_BN_EPSILON,
    convert_to_safetensors,
    load_torchvision_weights,
    read_state_dict,
    torch_module_name,
)

SIZE = 64
MEAN = torch.tensor(IMAGENET_MEAN_RGB).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD_RGB).view(1, 3, 1, 1)


def _images(n: int, size: int = SIZE, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, channels), dtype=np.float32)


def _nchw(images: np.ndarray, imagenet: bool = False) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return (x - MEAN) / STD if imagenet else x


def _trained_like(model: torch.nn.Module, imagenet: bool, quiet_fraction: float = 0.0) -> torch.nn.Module:
    calibration = torch.rand(16, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    R.calibrate_batchnorm(model, (calibration - MEAN) / STD if imagenet else calibration, seed=1,
                          quiet_fraction=quiet_fraction)
    return model


def _keras_logits(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """The linear head's logits: pooled features times FC_<n>'s kernel (the layer itself applies softmax)."""
    pooled = keras.Model(model.input, model.get_layer("global_average_pooling2d").output)(images).numpy()
    fc = model.layers[-1]
    return pooled.astype(np.float64) @ fc.kernel.numpy().astype(np.float64) + fc.bias.numpy()


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("torch_weights")


@pytest.fixture(scope="module")
def resnet(files: Path) -> dict:
    """The study's model: torchvision resnet18 with fc = Linear(512, 3), no Normalize; and its conversion."""
    torch.manual_seed(0)
    net = _trained_like(R.resnet18(num_classes=3), imagenet=False)
    state = net.state_dict()
    path = files / "resnet18_3class.pth"
    torch.save(state, path)
    images = _images(4)
    with torch.no_grad():
        logits = net(_nchw(images)).double().numpy()
        features = net.features(_nchw(images)).numpy().transpose(0, 2, 3, 1)
    model = build_model("resnet18", input_shape=(SIZE, SIZE, 3), head="linear", weights=path)
    return {"net": net, "state": state, "path": path, "images": images, "logits": logits,
            "features": features, "model": model}


@pytest.fixture(scope="module")
def densenet(files: Path) -> dict:
    """fastai's backbone: torchvision densenet121 with ImageNet normalisation, 10% near-dead channels."""
    torch.manual_seed(0)
    net = _trained_like(R.densenet121(num_classes=3), imagenet=True, quiet_fraction=0.1)
    path = files / "densenet121_3class.pth"
    torch.save(net.state_dict(), path)
    images = _images(4)
    with torch.no_grad():
        logits = net(_nchw(images, imagenet=True)).double().numpy()
    model = build_model("densenet121", input_shape=(SIZE, SIZE, 3), head="linear", input_norm="imagenet",
                        weights=path)
    return {"net": net, "path": path, "images": images, "logits": logits, "model": model}


@pytest.fixture(scope="module")
def blank_resnet() -> keras.Model:
    """A 32 px resnet18 with the linear head, for tests that only look at the weights."""
    return build_model("resnet18", input_shape=(32, 32, 3), head="linear")


# ------------------------------------------------------------------------------- reference models


def test_reference_models_have_torchvisions_parameter_counts() -> None:
    for name, count in R.TORCHVISION_PARAMS.items():
        assert R.count_parameters(getattr(R, name)()) == count, name
    keys = list(R.resnet18().state_dict())
    assert keys[:6] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                        "bn1.num_batches_tracked"]
    assert "layer2.0.downsample.1.running_var" in keys and keys[-2:] == ["fc.weight", "fc.bias"]
    assert len(keys) == 122 and len(R.densenet121().state_dict()) == 727


def _keras_into_torch(model: keras.Model, net: torch.nn.Module) -> int:
    """Copy every Keras weight into the torch module named like its layer (``.`` -> ``_``; FC_<n> -> fc)."""
    modules = {name.replace(".", "_"): m for name, m in net.named_modules()}
    copied = 0
    with torch.no_grad():
        for layer in model.layers:
            if not layer.weights:
                continue
            module = modules["fc" if layer.name == model.layers[-1].name else layer.name]
            if isinstance(layer, keras.layers.BatchNormalization):
                pairs = [(module.weight, layer.gamma), (module.bias, layer.beta),
                         (module.running_mean, layer.moving_mean),
                         (module.running_var, layer.moving_variance)]
                assert module.eps == layer.epsilon, layer.name
                assert module.momentum == pytest.approx(1 - layer.momentum), layer.name
            else:
                axes = (3, 2, 0, 1) if isinstance(layer, keras.layers.Conv2D) else (1, 0)
                pairs = [(module.weight, np.transpose(layer.kernel.numpy(), axes))]
                pairs += [(module.bias, layer.bias)] if layer.use_bias else []
                assert (module.bias is None) == (not layer.use_bias), layer.name
            for tensor, value in pairs:
                value = np.asarray(value)
                assert tuple(tensor.shape) == value.shape, layer.name
                tensor.copy_(torch.from_numpy(value))
                copied += value.size
    return copied


def test_resnet50v2_reference_is_the_keras_network() -> None:
    """The benchmark's torch ResNet50V2 computes what keras.applications' does, weight for weight."""
    model = build_model("resnet50v2", input_shape=(SIZE, SIZE, 3), head="linear")
    rng = np.random.default_rng(3)
    for layer in model.layers:  # non-trivial BN statistics, so a misplaced BN shows
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype(np.float32))
            layer.beta.assign(rng.normal(0, 0.1, n).astype(np.float32))
            layer.moving_mean.assign(rng.normal(0, 0.1, n).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype(np.float32))
    # Keras's small random fc would leave logits near 0, whatever the backbone computes.
    fc = model.layers[-1]
    fc.kernel.assign(rng.normal(0, 1, fc.kernel.shape).astype(np.float32))
    net = R.resnet50v2(num_classes=3).eval()
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert R.count_parameters(net) == trainable == 23_525_507  # 23,519,360 backbone + 2048 * 3 + 3
    assert _keras_into_torch(model, net) == model.count_params() == 23_570_947  # + BN statistics
    images = _images(2)
    with torch.no_grad():
        logits = net(_nchw(images)).double().numpy()
        features = net.features(_nchw(images)).numpy().transpose(0, 2, 3, 1)
    ours = keras.Model(model.input, model.get_layer("post_relu").output)(images).numpy()
    assert features.shape == ours.shape == (2, 2, 2, 2048)
    assert np.abs(features - ours).max() < 1e-4 * max(1.0, np.abs(ours).max())
    assert np.abs(_keras_logits(model, images) - logits).max() < 1e-4 * max(1.0, np.abs(logits).max())
    assert np.abs(logits).max() > 1.0


# ---------------------------------------------------------------------------------- ResNet-18


def test_resnet18_study_model_probabilities_equal_torch_softmax(resnet: dict) -> None:
    model = resnet["model"]
    probabilities = model(resnet["images"]).numpy()
    torch_probabilities = _softmax(resnet["logits"])
    assert np.abs(probabilities - torch_probabilities).max() < 1e-5
    assert np.abs(_keras_logits(model, resnet["images"]) - resnet["logits"]).max() < 1e-4
    # Non-trivial outputs: the images get different logits and the classes different probabilities.
    assert np.ptp(resnet["logits"], axis=0).min() > 1e-3 and np.abs(resnet["logits"]).max() > 0.1
    features = keras.Model(model.input, model.get_layer("layer4_1_relu2").output)(resnet["images"]).numpy()
    assert features.shape == resnet["features"].shape == (4, 2, 2, 512)
    assert np.abs(features - resnet["features"]).max() < 1e-4
    # No Normalize in the study: no input_norm layer.
    assert "input_norm" not in [layer.name for layer in model.layers]


def test_resnet18_linear_head_is_torchvisions(resnet: dict) -> None:
    model = resnet["model"]
    assert [layer.name for layer in model.layers[-2:]] == ["global_average_pooling2d", "FC_3"]
    fc = model.get_layer("FC_3")
    assert fc.activation.__name__ == "softmax" and fc.kernel.shape == (512, 3)
    np.testing.assert_array_equal(fc.kernel.numpy(), resnet["state"]["fc.weight"].numpy().T)
    np.testing.assert_array_equal(model.get_layer("conv1").kernel.numpy(),
                                  resnet["state"]["conv1.weight"].numpy().transpose(2, 3, 1, 0))
    bn = model.get_layer("layer3_0_downsample_1")
    np.testing.assert_array_equal(bn.moving_variance.numpy(),
                                  resnet["state"]["layer3.0.downsample.1.running_var"].numpy())
    # torchvision's parameters: resnet18 with a 3-class fc = 11,689,512 - 513,000 + 1,539.
    assert sum(int(np.prod(v.shape)) for v in model.trainable_weights) == 11_689_512 - 513_000 + 512 * 3 + 3


def test_resnet18_imagenet_normalisation_matches_torchvision_normalize(files: Path) -> None:
    torch.manual_seed(1)
    net = _trained_like(R.resnet18(num_classes=3), imagenet=True)
    path = files / "resnet18_normalize.pth"
    torch.save(net.state_dict(), path)
    model = build_model("resnet18", input_shape=(SIZE, SIZE, 3), head="linear", input_norm="imagenet",
                        weights=path)
    images = _images(3, seed=4)
    with torch.no_grad():
        expected = torch.softmax(net(_nchw(images, imagenet=True)), 1).numpy()
    assert np.abs(model(images).numpy() - expected).max() < 1e-5
    assert isinstance(model.get_layer("input_norm"), keras.layers.Normalization)


def test_grey_resnet18_sums_the_rgb_kernels(resnet: dict, caplog: pytest.LogCaptureFixture) -> None:
    """A 1-channel model from a 3-channel file equals torch on the grey image repeated to RGB."""
    model = build_model("resnet18", input_shape=(SIZE, SIZE, 1), head="linear")
    with caplog.at_level(logging.INFO, logger="models.torch_weights"):
        load_torchvision_weights(model, resnet["path"])
    assert "the 3 input channels of conv1.weight are summed for the 1-channel model" in caplog.text
    grey = _images(3, channels=1, seed=2)
    with torch.no_grad():
        expected = torch.softmax(resnet["net"](_nchw(np.repeat(grey, 3, axis=-1))), 1).numpy()
    assert np.abs(model(grey).numpy() - expected).max() < 1e-5


def test_surfsara_head_takes_the_backbone_and_says_fc_is_unused(
    resnet: dict, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="models.torch_weights"):
        model = build_model("resnet18", input_shape=(SIZE, SIZE, 3), head="avg", weights=resnet["path"])
    assert ("fc.weight, fc.bias not loaded: model 'resnet18' has SURFsara's head (dense, dense_1, FC_3), "
            "which keeps its initialisation; head='linear' loads it") in caplog.text
    assert "20 num_batches_tracked counters ignored" in caplog.text
    features = keras.Model(model.input, model.get_layer("layer4_1_relu2").output)(resnet["images"]).numpy()
    assert np.abs(features - resnet["features"]).max() < 1e-4


def test_imagenet_classifier_is_skipped_for_another_class_count(
    files: Path, blank_resnet: keras.Model, caplog: pytest.LogCaptureFixture
) -> None:
    """torchvision's 1000-class fc into a 3-class linear head: the backbone loads, FC_3 stays as it was."""
    torch.manual_seed(2)
    state = R.resnet18(num_classes=1000).state_dict()
    path = files / "resnet18_imagenet_layout.pth"
    torch.save(state, path)
    fc_before = blank_resnet.get_layer("FC_3").get_weights()
    with caplog.at_level(logging.INFO, logger="models.torch_weights"):
        report = load_torchvision_weights(blank_resnet, path)
    assert not report.classifier_loaded and len(report.loaded) == 100
    assert report.skipped["fc.weight"] == "1000 classes in the file, 3 in the model"
    assert "fc.* has 1000 classes, the model 3: not loaded, FC_3 keeps its random init" in caplog.text
    for before, after in zip(fc_before, blank_resnet.get_layer("FC_3").get_weights()):
        np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(blank_resnet.get_layer("layer1_0_conv1").kernel.numpy(),
                                  state["layer1.0.conv1.weight"].numpy().transpose(2, 3, 1, 0))


# ---------------------------------------------------------------------------------- DenseNet-121


def _torch_modules_with_parameters(net: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [(name, m) for name, m in net.named_modules()
            if list(m.parameters(recurse=False)) and not isinstance(m, torch.nn.Linear)]


def test_densenet121_layer_by_layer_against_torchvision(densenet: dict) -> None:
    model, net = densenet["model"], densenet["net"]
    keras_layers = [layer for layer in model.layers if layer.weights and layer.name != "FC_3"]
    torch_modules = _torch_modules_with_parameters(net)
    # Same order, one to one, by the converter's name mapping (120 BN + 120 conv + norm5).
    assert len(keras_layers) == len(torch_modules) == 241
    for layer, (name, module) in zip(keras_layers, torch_modules):
        assert torch_module_name("densenet121", layer.name) == name, (layer.name, name)
        if isinstance(module, torch.nn.Conv2d):
            assert isinstance(layer, keras.layers.Conv2D) and not layer.use_bias and module.bias is None
            assert tuple(layer.kernel.shape) == tuple(module.weight.permute(2, 3, 1, 0).shape), name
            assert layer.strides == module.stride
            # 3x3: Keras "same" at stride 1 == torch padding 1; 1x1 and the stem: no padding in the layer.
            assert (layer.padding, module.padding) in (("same", (1, 1)), ("valid", (0, 0)), ("valid", (3, 3)))
        else:
            assert isinstance(layer, keras.layers.BatchNormalization)
            assert isinstance(module, torch.nn.BatchNorm2d)
            # The two differences: epsilon (folded into the variance by the converter) and momentum
            # (Keras 0.99 keeps 99% of the old average, torch 0.1 takes 10% of the new batch = Keras 0.9).
            assert (layer.epsilon, module.eps) == (1.001e-5, TORCH_BN_EPSILON)
            assert (layer.momentum, module.momentum) == (0.99, 0.1)
    assert torch_module_name("densenet121", "conv2_block1_0_bn") == "features.denseblock1.denselayer1.norm1"
    # The stem: Keras pads explicitly (3, then 1) before a valid conv / max-pool, as torch's padding=3 / 1.
    pads = [layer for layer in model.layers if isinstance(layer, keras.layers.ZeroPadding2D)]
    assert [layer.padding for layer in pads] == [((3, 3), (3, 3)), ((1, 1), (1, 1))]
    assert (net.features.conv0.padding, net.features.pool0.padding) == ((3, 3), 1)
    for stage in (2, 3, 4):  # transitions: AvgPool2d(2, stride 2)
        pool = model.get_layer(f"pool{stage}_pool")
        torch_pool = getattr(net.features, f"transition{stage - 1}").pool
        assert isinstance(pool, keras.layers.AveragePooling2D) and isinstance(torch_pool, torch.nn.AvgPool2d)
        assert (pool.pool_size, pool.strides, pool.padding) == ((2, 2), (2, 2), "valid")
        assert (torch_pool.kernel_size, torch_pool.stride, torch_pool.padding) == (2, 2, 0)
    # The activations after the stem, each transition and the final ReLU are torch's (same pixels sampled).
    taps = ["pool1", "pool2_pool", "pool3_pool", "pool4_pool", "relu"]
    probe = keras.Model(model.input, [model.get_layer(name).output for name in taps])
    ours = [t.numpy() for t in probe(densenet["images"])]
    x = _nchw(densenet["images"], imagenet=True)
    theirs = []
    with torch.no_grad():
        for name, module in net.features.named_children():
            x = module(x)
            if name in ("pool0", "transition1", "transition2", "transition3"):
                theirs.append(x.numpy().transpose(0, 2, 3, 1))
        theirs.append(torch.relu(x).numpy().transpose(0, 2, 3, 1))
    shapes = [(4, 16, 16, 64), (4, 8, 8, 128), (4, 4, 4, 256), (4, 2, 2, 512), (4, 2, 2, 1024)]
    for name, a, b, shape in zip(taps, ours, theirs, shapes):
        assert a.shape == b.shape == shape, name
        assert np.abs(a - b).max() < 1e-4 * max(1.0, np.abs(b).max()), name


def test_densenet121_logits_equal_torch_and_the_epsilon_fold_matters(densenet: dict) -> None:
    model, images, expected = densenet["model"], densenet["images"], densenet["logits"]
    error = np.abs(_keras_logits(model, images) - expected).max()
    assert error < 1e-4
    assert np.abs(model(images).numpy() - _softmax(expected)).max() < 1e-5
    assert np.abs(expected).max() > 1.0
    # Without the fold (Keras's sqrt(var + 1.001e-5)) the near-dead channels give a visible error.
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 121
    shift = 1.001e-5 - TORCH_BN_EPSILON
    try:
        for layer in norms:
            layer.moving_variance.assign(layer.moving_variance.numpy() + shift)
        unfolded = np.abs(_keras_logits(model, images) - expected).max()
    finally:
        for layer in norms:
            layer.moving_variance.assign(layer.moving_variance.numpy() - shift)
    assert unfolded > 1e-4 and unfolded > 20 * error


def test_old_densenet_key_names_are_renamed(densenet: dict, files: Path) -> None:
    """torchvision's published DenseNet files use pre-0.4 keys ('norm.1'); torchvision renames them."""
    state = densenet["net"].state_dict()
    old = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in state.items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    path = files / "densenet121_old_keys.pth"
    torch.save(old, path)
    read = read_state_dict(path)
    assert sorted(read) == sorted(state)
    np.testing.assert_array_equal(read["features.denseblock3.denselayer7.conv2.weight"],
                                  state["features.denseblock3.denselayer7.conv2.weight"].numpy())


# ---------------------------------------------------------------------------- files and wrappers


def test_safetensors_load_without_torch(resnet: dict, files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import save_file

    path = files / "resnet18_3class.safetensors"
    save_file({k: v.contiguous() for k, v in resnet["state"].items()}, str(path))
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    model = build_model("resnet18", input_shape=(SIZE, SIZE, 3), head="linear", weights=path)
    np.testing.assert_allclose(model(resnet["images"]).numpy(), resnet["model"](resnet["images"]).numpy(),
                               rtol=0, atol=1e-7)
    with pytest.raises(ValueError) as info:
        build_model("resnet18", input_shape=(32, 32, 3), head="linear", weights=resnet["path"])
    message = str(info.value)
    assert "reading a .pth file needs PyTorch, which is not installed" in message
    assert "convert it to .safetensors" in message and "received suffix '.pth'" in message
    assert "\n" not in message


def _zeroed(model: keras.Model) -> keras.Model:
    model.set_weights([np.zeros_like(w) for w in model.get_weights()])
    return model


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "module.", "module.+convert"])
def test_wrapped_checkpoints_load_the_same_weights(
    wrapper: str, resnet: dict, files: Path, blank_resnet: keras.Model
) -> None:
    state = resnet["state"]
    if wrapper == "module.":  # nn.DataParallel
        obj = {f"module.{k}": v for k, v in state.items()}
    elif wrapper == "module.+convert":  # DataParallel inside a wrapper, converted to .safetensors
        obj = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 7}
    else:  # e.g. a training script's checkpoint / fastai's learn.save
        obj = {wrapper: state, "opt": {"lr": 1e-3}}
    path = files / f"wrapped_{wrapper.replace('.', '_').replace('+', '_')}.pt"
    torch.save(obj, path)
    if wrapper.endswith("convert"):
        path = convert_to_safetensors(path, files / "wrapped.safetensors")
        assert sorted(read_state_dict(path)) == sorted(state)
    report = load_torchvision_weights(_zeroed(blank_resnet), path)
    assert report.classifier_loaded and len(report.loaded) == 102
    for a, b in zip(blank_resnet.get_weights(), resnet["model"].get_weights()):
        np.testing.assert_array_equal(a, b)


class _Pickled(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(2, 3)


def _bad_file(kind: str, resnet: dict, files: Path) -> Path:
    """Write one kind of bad file and return its path."""
    state = dict(resnet["state"])
    path = files / f"bad_{kind.replace(' ', '_')}.pth"
    if kind == "whole pickled model":
        torch.save(_Pickled(), path)
    elif kind == "list":
        torch.save([state["conv1.weight"]], path)
    elif kind == "dict without a state dict":
        torch.save({"epoch": 3, "weights": [1, 2]}, path)
    elif kind == "truncated":
        torch.save(state, path)
        path.write_bytes(path.read_bytes()[:1000])
    elif kind == "garbage safetensors":
        path = path.with_suffix(".safetensors")
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    elif kind == "missing key":
        del state["layer3.1.bn2.running_mean"]
        torch.save(state, path)
    elif kind == "shape mismatch":
        state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
        torch.save(state, path)
    elif kind == "unexpected key":
        state["layer5.0.conv1.weight"] = torch.zeros(1)
        torch.save(state, path)
    elif kind == "resnet50 file":
        torch.save(R.resnet50(num_classes=3).state_dict(), path)
    elif kind == "head of another width":
        state["fc.weight"] = torch.zeros(3, 256)
        torch.save(state, path)
    return path


BAD_FILES = {
    "whole pickled model": r"holds Python objects besides tensors \(e\.g\. a whole model saved with "
                           r"torch\.save\(model\)\).*save model\.state_dict\(\) instead",
    "list": r"expected a state dict \(parameter name -> tensor\) or a dict with a 'state_dict' or 'model' "
            r"entry holding one; received a list$",
    "dict without a state dict": r"received a dict with keys 'epoch', 'weights'$",
    "truncated": r"cannot be read by torch\.load \(truncated or not a torch file\?\); received RuntimeError: "
                 r"PytorchStreamReader",
    "garbage safetensors": r"cannot be read as safetensors \(truncated or another format\?\); received",
    "missing key": r"does not fit model 'resnet18': key 'layer3\.1\.bn2\.running_mean' is missing from the "
                   r"file$",
    "shape mismatch": r"key 'layer2\.0\.conv1\.weight' must have shape \(128, 64, 3, 3\) \(torch layout\); "
                      r"received \(128, 64, 5, 5\)$",
    "unexpected key": r"key 'layer5\.0\.conv1\.weight' is not part of the registry's resnet18$",
    "resnet50 file": r"does not fit model 'resnet18' \(its keys look like torchvision's resnet50\): key "
                     r"'layer1\.0\.conv1\.weight' must have shape \(64, 64, 3, 3\) \(torch layout\); "
                     r"received \(64, 64, 1, 1\); \d+ more problems \(0 missing, \d+ with another shape, "
                     r"\d+ unexpected keys",
    "head of another width": r"key 'fc\.weight' must have shape \(3, 512\) \(torch layout\); "
                             r"received \(3, 256\)$",
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_files_are_one_line_errors_and_load_nothing(
    kind: str, resnet: dict, files: Path, blank_resnet: keras.Model
) -> None:
    path = _bad_file(kind, resnet, files)
    before = [w.copy() for w in blank_resnet.get_weights()]
    with pytest.raises(ValueError) as info:
        load_torchvision_weights(blank_resnet, path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert re.search(BAD_FILES[kind], message), message
    for a, b in zip(before, blank_resnet.get_weights()):  # never a partial load
        np.testing.assert_array_equal(a, b)


def test_resnet18_file_into_densenet121_names_the_first_key(
    resnet: dict, caplog: pytest.LogCaptureFixture
) -> None:
    # 604 backbone tensors (120 convolutions, 121 x 4 BN) missing; resnet18's 102 tensors unexpected.
    model = build_model("densenet121", input_shape=(32, 32, 3), head="linear")
    with caplog.at_level(logging.INFO, logger="models.torch_weights"), pytest.raises(ValueError) as info:
        load_torchvision_weights(model, resnet["path"])
    assert caplog.text == ""  # nothing was loaded, so nothing is reported as loaded or skipped
    assert str(info.value) == (
        f"weights file {str(resnet['path'])!r} does not fit model 'densenet121' (its keys look like "
        f"torchvision's resnet18): key 'features.conv0.weight' is missing from the file; 705 more problems "
        f"(604 missing, 0 with another shape, 102 unexpected keys in all)"
    )


def test_models_and_suffixes_without_a_torch_converter(resnet: dict, files: Path) -> None:
    with pytest.raises(ValueError, match=r"torchvision weights \(\.pth/\.pt/\.safetensors\) can be loaded "
                                         r"into densenet121 or resnet18; received model 'xception'"):
        build_model("xception", input_shape=(71, 71, 3), weights=resnet["path"])
    other = files / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"\.h5/\.hdf5.*or a torchvision state dict ending in "
                                         r"\.pth/\.pt/\.safetensors.*received suffix '\.bin'"):
        build_model("resnet18", input_shape=(32, 32, 3), weights=other)


# ----------------------------------------------------------------------------- the command lines


@pytest.mark.slow
def test_train_keras_weights_pth(resnet: dict, tiny_covidx: Path, capsys: pytest.CaptureFixture) -> None:
    """--model resnet18 --weights FILE.pth reaches the converter; a frozen backbone keeps torch's weights."""
    import train_keras

    argv = [
        "--trainfile", str(tiny_covidx / "train.txt"), "--testfile", str(tiny_covidx / "test.txt"),
        "--data_path", str(tiny_covidx / "data"), "--output", str(tiny_covidx / "output"),
        "--img_size", "32", "--bs", "4", "--epochs", "1", "--name", "torch-", "--lr", "0.001",
        "--n_bootstrap", "20", "--model", "resnet18", "--weights", str(resnet["path"]), "--head", "avg",
        "--input_norm", "imagenet", "--freeze_epochs", "1", "--train_bn", "off", "--steps_per_epoch", "2",
    ]
    assert train_keras.main(argv) == 0
    run_dir = tiny_covidx / "output" / "torch-lr0.001"
    config = json.loads((run_dir / "run_config.json").read_text())
    assert config["weights"] == str(resnet["path"])
    assert config["model"]["input_norm"] == "imagenet" and config["model"]["name"] == "resnet18"
    final = keras.models.load_model(run_dir / "final_model.hdf5", compile=False)
    state = resnet["state"]
    np.testing.assert_array_equal(final.get_layer("conv1").kernel.numpy(),
                                  state["conv1.weight"].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(final.get_layer("layer4_1_bn2").moving_variance.numpy(),
                                  state["layer4.1.bn2.running_var"].numpy())
    assert capsys.readouterr().out.rstrip().endswith("Seek advice from a qualified health professional.")


def test_train_keras_refuses_a_file_of_another_architecture(
    resnet: dict, files: Path, tiny_covidx: Path, capsys: pytest.CaptureFixture
) -> None:
    import train_keras

    path = _bad_file("resnet50 file", resnet, files)
    argv = [
        "--trainfile", str(tiny_covidx / "train.txt"), "--testfile", str(tiny_covidx / "test.txt"),
        "--data_path", str(tiny_covidx / "data"), "--output", str(tiny_covidx / "output"),
        "--img_size", "32", "--bs", "4", "--epochs", "1", "--name", "torch-bad-", "--model", "resnet18",
        "--weights", str(path), "--head", "avg",
    ]
    assert train_keras.main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith(("INFO", "WARNING"))]
    assert len(err) == 1 and err[0].startswith(
        f"error: weights file {str(path)!r} does not fit model 'resnet18' "
        f"(its keys look like torchvision's resnet50): key "
    )
    assert not list((tiny_covidx / "output").glob("torch-bad-*/*.hdf5"))


@pytest.mark.slow
def test_eval_keras_rebuilds_a_converted_linear_head_model(
    resnet: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Weights-only checkpoint of the converted study model + run_config.json: eval gives torch's softmax."""
    import pandas as pd

    import eval_keras
    from data.lists import read_list
    from data.pipeline import image_paths, make_predict_dataset
    from evaluation.predictions import PROBABILITY_COLUMNS
    from training.checkpoints import write_weights_hdf5
    from training.config import RunConfig, write_run_config

    rng = np.random.default_rng(0)
    (tmp_path / "data" / "test").mkdir(parents=True)
    lines = []
    for i, label in enumerate(["normal", "pneumonia", "COVID-19"] * 2):
        image = np.clip(rng.normal(60 + 25 * i, 30, (40 + 4 * i, 48, 3)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(tmp_path / "data" / "test" / f"img{i}.png"), image)
        lines.append(f"pat{i} img{i}.png {label} synthetic\n")
    (tmp_path / "test.txt").write_text("".join(lines))
    resnet_spec = ModelSpec(name="resnet18", input_shape=(SIZE, SIZE, 3), head="linear").to_dict()
    assert resnet_spec["head"] == "linear" and resnet_spec["input_norm"] == "none"
    run = tmp_path / "run"
    run.mkdir()
    write_run_config(
        RunConfig(
            trainfile="train.txt",
            testfile="test.txt",
            data_path=str(tmp_path / "data"),
            val_split=0.1,
            verify_images="header",
            balance=True,
            covid_per_batch=1,
            class_weights=(1.0, 1.0, 25.0),
            augment=True,
            model=resnet_spec,
            weights=str(resnet["path"]),
            checkpoint="",
            lr=1e-3,
            batch_size=4,
            epochs=1,
            steps_per_epoch=None,
            seed=0,
            mixed_precision=False,
            xla=False,
            output=str(tmp_path),
            name="run-",
            run_dir=str(run),
            keep_checkpoints=0,
            full_checkpoints=False,
        ),
        run,
    )
    write_weights_hdf5(resnet["model"], run / "cp-01-0.50.hdf5")

    out = tmp_path / "out"
    assert (
        eval_keras.main(
            [
                "--checkpoint",
                str(run / "cp-01-0.50.hdf5"),
                "--testfile",
                str(tmp_path / "test.txt"),
                "--data_path",
                str(tmp_path / "data"),
                "--out",
                str(out),
                "--n_bootstrap",
                "20",
                "--batch_size",
                "3",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.rstrip().endswith("Seek advice from a qualified health professional.")
    frame = pd.read_csv(out / "predictions.csv")
    entries = read_list(tmp_path / "test.txt").entries
    paths = image_paths(entries, tmp_path / "data" / "test")
    images = np.concatenate([b.numpy() for b in make_predict_dataset(paths, img_size=SIZE, batch_size=3)])
    with torch.no_grad():
        expected = torch.softmax(resnet["net"](_nchw(images)), 1).numpy()
    assert frame["filename"].tolist() == [f"img{i}.png" for i in range(6)]
    assert np.abs(frame[list(PROBABILITY_COLUMNS)].to_numpy() - expected).max() < 1e-5
