"""The registry's architectures written in plain PyTorch: conversion tests and the PyTorch benchmark row.

- torchvision's ResNet-18/50 and DenseNet-121, written as torchvision 0.2x
  writes them (``torchvision/models/resnet.py`` and ``densenet.py``): the same
  module tree, hence the same state-dict keys, the same forward pass and the
  same initialisation. torchvision from the package index is a CUDA build that
  does not import against the CPU torch of this project, hence this copy.
  tests/test_torch_weights.py checks the parameter counts against torchvision's
  published numbers (resnet18 11,689,512, resnet50 25,557,032, densenet121
  7,978,856) and the converted Keras models against these networks.
- keras.applications' ResNet50V2 (SURFsara's backbone; torchvision has no
  pre-activation ResNet), written from ``keras/src/applications/resnet.py``:
  the same layers, padding, BN epsilon and momentum, and module names that are
  the Keras layer names with ``_`` for ``.`` (``conv2.block1.1_conv`` <->
  ``conv2_block1_1_conv``). tests/test_torch_weights.py copies a Keras model's
  weights into it and compares the outputs.

:data:`BUILDERS` maps registry names to these networks with ``fc`` as
torchvision's linear head, the counterpart of ``build_model(name,
head="linear")``; benchmarks/run.py times one training step of each pair.

Importing this module imports torch (requirements-torch.txt): import it inside
a function, or after ``pytest.importorskip("torch")``.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BUILDERS",
    "TORCHVISION_PARAMS",
    "DenseNet",
    "PreActBottleneck",
    "ResNet",
    "ResNet50V2",
    "calibrate_batchnorm",
    "count_parameters",
    "densenet121",
    "randomize_batchnorm",
    "resnet18",
    "resnet50",
    "resnet50v2",
]

# torchvision's published parameter counts (the weights tables of its documentation).
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet50": 25_557_032, "densenet121": 7_978_856}


# ------------------------------------------------------------------------------------------- ResNet


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride sits on the 3x3 convolution."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, block: type, layers: Sequence[int], num_classes: int = 1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block: type, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes))
        return nn.Sequential(*layers)

    def features(self, x: Tensor) -> Tensor:
        """The layer4 feature map (what the Keras backbone returns)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.fc(torch.flatten(x, 1))


def resnet18(num_classes: int = 1000) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes)


def resnet50(num_classes: int = 1000) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes)


# ----------------------------------------------------------------------------------------- DenseNet


class _DenseLayer(nn.Module):
    def __init__(self, num_input_features: int, growth_rate: int, bn_size: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1,
                               bias=False)

    def forward(self, prev_features: list[Tensor]) -> Tensor:
        bottleneck = self.conv1(self.relu1(self.norm1(torch.cat(prev_features, 1))))
        return self.conv2(self.relu2(self.norm2(bottleneck)))


class _DenseBlock(nn.ModuleDict):
    def __init__(self, num_layers: int, num_input_features: int, bn_size: int, growth_rate: int):
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}",
                            _DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size))

    def forward(self, init_features: Tensor) -> Tensor:
        features = [init_features]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    def __init__(self, num_input_features: int, num_output_features: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, kernel_size=1, stride=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    def __init__(self, growth_rate: int = 32, block_config: Sequence[int] = (6, 12, 24, 16),
                 num_init_features: int = 64, bn_size: int = 4, num_classes: int = 1000):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(3, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(num_init_features)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]))
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            self.features.add_module(f"denseblock{i + 1}",
                                     _DenseBlock(num_layers, num_features, bn_size, growth_rate))
            num_features += num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", _Transition(num_features, num_features // 2))
                num_features //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.features(x), inplace=True)
        out = torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1)
        return self.classifier(out)


def densenet121(num_classes: int = 1000) -> DenseNet:
    return DenseNet(32, (6, 12, 24, 16), 64, num_classes=num_classes)


# --------------------------------------------------------------------------- keras.applications ResNet50V2

# keras.applications' BatchNormalization: epsilon 1.001e-5, momentum 0.99 (torch counts the other way).
KERAS_BN_EPSILON = 1.001e-5
KERAS_BN_MOMENTUM = 0.01


def _keras_bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPSILON, momentum=KERAS_BN_MOMENTUM)


class PreActBottleneck(nn.ModuleDict):
    """keras.applications' ``residual_block_v2``: BN-ReLU first, the stride on the 3x3 convolution.

    The shortcut is a 1x1 convolution of the pre-activation (first block of a stack), a 1x1/stride
    max-pool of the input (last block of a strided stack: plain subsampling) or the input itself.
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1, conv_shortcut: bool = False):
        super().__init__()
        self["preact_bn"] = _keras_bn(inplanes)
        if conv_shortcut:
            self["0_conv"] = nn.Conv2d(inplanes, 4 * planes, 1, stride=stride)
        self.stride = stride
        self["1_conv"] = nn.Conv2d(inplanes, planes, 1, bias=False)
        self["1_bn"] = _keras_bn(planes)
        # Keras pads 1 on every side and convolves "valid": torch's padding=1.
        self["2_conv"] = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self["2_bn"] = _keras_bn(planes)
        self["3_conv"] = nn.Conv2d(planes, 4 * planes, 1)

    def forward(self, x: Tensor) -> Tensor:
        preact = F.relu(self["preact_bn"](x))
        if "0_conv" in self:
            shortcut = self["0_conv"](preact)
        elif self.stride > 1:
            shortcut = F.max_pool2d(x, 1, stride=self.stride)
        else:
            shortcut = x
        out = F.relu(self["1_bn"](self["1_conv"](preact)))
        out = F.relu(self["2_bn"](self["2_conv"](out)))
        return shortcut + self["3_conv"](out)


class ResNet50V2(nn.Module):
    """keras.applications.ResNet50V2 (``include_top=False``) + avgpool + ``fc``, in torch.

    Stem: a 7x7/2 convolution with bias and no BN (pre-activation), zero padding and a 3x3/2
    max-pool (Keras pads with zeros, not torch's -inf, and the stem's output can be negative);
    stacks conv2..conv5 of 3/4/6/3 blocks, the stride on the last block of conv2..conv4;
    ``post_bn`` and ReLU at the end.
    """

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1_conv = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        inplanes = 64
        for stage, (planes, blocks, stride) in enumerate(
            ((64, 3, 2), (128, 4, 2), (256, 6, 2), (512, 3, 1)), start=2
        ):
            layers = OrderedDict()
            for b in range(1, blocks + 1):
                layers[f"block{b}"] = PreActBottleneck(
                    inplanes, planes, stride=stride if b == blocks else 1, conv_shortcut=b == 1
                )
                inplanes = 4 * planes
            self.add_module(f"conv{stage}", nn.Sequential(layers))
        self.post_bn = _keras_bn(inplanes)
        self.fc = nn.Linear(inplanes, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """The post-activation feature map (what the Keras backbone returns)."""
        x = F.max_pool2d(F.pad(self.conv1_conv(x), (1, 1, 1, 1)), 3, stride=2)
        x = self.conv5(self.conv4(self.conv3(self.conv2(x))))
        return F.relu(self.post_bn(x))

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.fc(torch.flatten(x, 1))


def resnet50v2(num_classes: int = 1000) -> ResNet50V2:
    return ResNet50V2(num_classes)


# Registry name -> the same network in torch with a linear head (build_model(name, head="linear")).
BUILDERS: dict[str, Callable[..., nn.Module]] = {"resnet18": resnet18, "resnet50v2": resnet50v2}


# ------------------------------------------------------------------------------------------ helpers


def count_parameters(model: nn.Module) -> int:
    """Parameters as torchvision counts them (BN running statistics are buffers, not parameters)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, seed: int, *, min_var: float = 0.5) -> None:
    """Give every BatchNorm2d non-trivial affine parameters and running statistics.

    A freshly initialised network has mean 0, variance 1, scale 1 and offset 0, which would
    hide a swapped or untransposed BN tensor. Variances are log-uniform in ``[min_var, 2]``;
    a small ``min_var`` mimics trained networks, where some channels have tiny variances and
    the epsilon in ``sqrt(var + eps)`` matters.
    """
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.copy_(0.5 + torch.rand(n, generator=generator))
            m.bias.copy_(0.1 * torch.randn(n, generator=generator))
            m.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            low, high = torch.log(torch.tensor(min_var)), torch.log(torch.tensor(2.0))
            m.running_var.copy_(torch.exp(low + (high - low) * torch.rand(n, generator=generator)))
            m.num_batches_tracked.fill_(1000)


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, images: Tensor, seed: int, *, quiet_fraction: float = 0.0,
                        quiet_scale: float = 0.01) -> None:
    """Set every BN's running statistics to the true ones of ``images``, then randomise its affine part.

    This gives a randomly initialised network the well-normalised activations of a trained
    one. ``quiet_fraction`` of every convolution's output channels are first scaled by
    ``quiet_scale``, so their variance (and running_var) is ``quiet_scale**2`` times smaller,
    as for the near-dead channels of trained networks, where the BN epsilon matters.
    """
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and quiet_fraction > 0:
            quiet = torch.rand(m.out_channels, generator=generator) < quiet_fraction
            m.weight[quiet] *= quiet_scale
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch gives exactly its statistics
    model.train()
    model(images)
    model.eval()
    for m in norms:
        m.momentum = 0.1
        m.weight.copy_(0.5 + torch.rand(m.num_features, generator=generator))
        m.bias.copy_(0.1 * torch.randn(m.num_features, generator=generator))
