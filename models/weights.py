"""Finding backbone weight files on disk without ever downloading them.

HPC compute nodes have no network, so ``weights="imagenet"`` only works when the
exact file that ``keras.applications`` would download is already in the Keras
cache folder. This module names that file and folder, and the error says where
to get the file and where to put it. The file found is then loaded as a local
path, so Keras never calls its downloader.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

# Folder URLs keras.applications downloads the notop files from (checked
# against Keras's own constants in tests/test_models.py).
KERAS_APPLICATIONS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
EFFICIENTNET_URL = "https://storage.googleapis.com/keras-applications/"

KERAS_SUFFIXES: tuple[str, ...] = (".h5", ".hdf5")
# torchvision state dicts (models/torch_weights.py): torch.save files and safetensors.
TORCH_SUFFIXES: tuple[str, ...] = (".pth", ".pt")
SAFETENSORS_SUFFIX = ".safetensors"


def is_torch_weights_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` names a torchvision state dict (``.pth``, ``.pt`` or ``.safetensors``)."""
    return Path(path).suffix.lower() in (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX)


@dataclasses.dataclass(frozen=True)
class ImageNetWeights:
    """The ImageNet ``include_top=False`` weights of a keras.applications backbone.

    ``file_name`` maps the model's input shape to the file Keras would download
    (only MobileNetV2 depends on it); ``url_folder`` is where Keras gets it.
    ``preprocessing`` is the backbone's ImageNet input scaling (applied to
    ``[0, 1]`` images inside the model when ``input_norm="imagenet"``):
    ``"tf"`` = scale to ``[-1, 1]``; ``"torch"`` = per-channel ImageNet mean/std;
    ``"x255"`` = back to ``[0, 255]`` because the backbone normalises internally.
    """

    file_name: Callable[[tuple[int, int, int]], str]
    url_folder: str
    preprocessing: str

    def url(self, input_shape: tuple[int, int, int]) -> str:
        """The URL Keras downloads the file from."""
        return self.url_folder + self.file_name(input_shape)


def keras_models_dir() -> Path:
    """The folder Keras caches downloaded application weights in.

    ``$KERAS_HOME/models`` when ``KERAS_HOME`` is set, else ``~/.keras/models``
    (``/tmp/.keras/models`` when the home folder is not writable), like Keras.
    The environment is read at call time and never written.
    """
    home = os.environ.get("KERAS_HOME")
    if home:
        return Path(home).expanduser() / "models"
    base = Path.home()
    if not os.access(base, os.W_OK):
        base = Path("/tmp")
    return base / ".keras" / "models"


def find_imagenet_weights(model_name: str, info: ImageNetWeights, input_shape: tuple[int, int, int]) -> Path:
    """Path of the ImageNet notop file for ``model_name`` in the Keras cache folder.

    Raises ``FileNotFoundError`` naming the file, the URL Keras downloads it from
    and the folder to put it in when it is not there.
    """
    folder = keras_models_dir()
    file_name = info.file_name(input_shape)
    path = folder / file_name
    if path.is_file():
        return path
    raise FileNotFoundError(
        f"weights='imagenet' for model {model_name!r}: {file_name} is not in {folder}. "
        f"Nothing is downloaded (compute nodes have no network): on a machine with internet, "
        f"download {info.url(input_shape)} and put it in {folder} "
        f"($KERAS_HOME/models, or ~/.keras/models when KERAS_HOME is unset), "
        f"or pass weights=<path to the file>; received weights='imagenet'"
    )


def resolve_weights(
    model_name: str,
    weights: str | os.PathLike[str] | None,
    info: ImageNetWeights | None,
    input_shape: tuple[int, int, int],
) -> Path | None:
    """Turn the ``weights`` argument into a local file to load, or ``None`` for random init.

    ``None``/``"none"`` -> ``None``; ``"imagenet"`` -> the cached Keras file
    (:func:`find_imagenet_weights`); anything else is a path that must exist: Keras
    HDF5 (``.h5``/``.hdf5``) or a torchvision state dict (``.pth``/``.pt``/``.safetensors``).
    """
    if weights is None:
        return None
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            f"weights must be None, 'none', 'imagenet' or a path to a weights file; "
            f"received {weights!r} of type {type(weights).__name__}"
        )
    if isinstance(weights, str) and weights.strip().lower() in ("none", ""):
        return None
    if isinstance(weights, str) and weights.strip().lower() == "imagenet":
        if info is None:
            raise ValueError(
                f"weights='imagenet': model {model_name!r} has no ImageNet weights "
                f"(it is not a keras.applications backbone); use weights=None or a weights file; "
                f"received {weights!r}"
            )
        return find_imagenet_weights(model_name, info, input_shape)
    path = Path(weights).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"weights file {str(path)!r} (for model {model_name!r}) does not exist; "
            f"received weights={weights!r}"
        )
    if not path.is_file():
        raise IsADirectoryError(
            f"weights={str(path)!r} (for model {model_name!r}) is not a file; received a folder"
        )
    if path.suffix.lower() not in KERAS_SUFFIXES and not is_torch_weights_file(path):
        raise ValueError(
            f"weights file {str(path)!r}: expected a Keras HDF5 weights file ending in .h5/.hdf5 "
            f"(the keras.applications notop layout or a .weights.h5 of the backbone) or a torchvision "
            f"state dict ending in .pth/.pt/.safetensors (resnet18, densenet121); "
            f"received suffix {path.suffix!r}"
        )
    return path
