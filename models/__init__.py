"""Model registry: ``build_model(name, ...)`` for every architecture of the project.

Importing the package registers all models (the backbone modules below add
themselves to the registry with :func:`register_model`).
"""
from __future__ import annotations

from models.registry import (
    DTYPE_POLICIES,
    HEADS,
    INPUT_NORMS,
    ModelInfo,
    ModelSpec,
    backbone_kernel_layers,
    build_model,
    build_model_from_spec,
    get_model_info,
    head_layer_names,
    list_models,
    output_layer_name,
    register_model,
    resolve_model_name,
)
from models.weights import ImageNetWeights, find_imagenet_weights, keras_models_dir

# Imported for their registration side effect; keep after the registry import.
from models import applications, covidnet, resnet18, smallcnn  # noqa: E402,F401  isort: skip
from models.torch_weights import (  # noqa: E402  isort: skip
    TorchLoadReport,
    convert_to_safetensors,
    load_torchvision_weights,
    read_state_dict,
)

__all__ = [
    "DTYPE_POLICIES",
    "HEADS",
    "INPUT_NORMS",
    "ImageNetWeights",
    "ModelInfo",
    "ModelSpec",
    "TorchLoadReport",
    "backbone_kernel_layers",
    "build_model",
    "build_model_from_spec",
    "convert_to_safetensors",
    "find_imagenet_weights",
    "get_model_info",
    "head_layer_names",
    "keras_models_dir",
    "list_models",
    "load_torchvision_weights",
    "output_layer_name",
    "read_state_dict",
    "register_model",
    "resolve_model_name",
]
