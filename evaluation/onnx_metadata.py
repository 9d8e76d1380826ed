"""What an ONNX model says about itself: class order, layout, pixel range, normalisation, output, resize.

An ONNX file holds a graph, not its conventions: a PyTorch classifier may
order its classes ``COVID-19, normal, pneumonia`` (ImageFolder sorts folder
names), take ``NCHW`` images normalised with ImageNet's mean and std, and
return logits. Guessed wrong, an evaluation is silently wrong. These keys in
the model's ``metadata_props`` (key/value strings, ``onnx.ModelProto``) say it:

=========================  ==================================================================
key                        value
=========================  ==================================================================
``covidx.class_order``     the model's output columns, comma-separated, e.g.
                           ``COVID-19,normal,pneumonia``; exactly the three classes
``covidx.layout``          ``NCHW`` or ``NHWC``
``covidx.pixel_range``     ``0-1`` (images divided by 255, as ToTensor does) or ``0-255``
``covidx.normalization``   ``none``, ``imagenet`` (mean 0.485,0.456,0.406, std
                           0.229,0.224,0.225) or ``mean=A,B,C;std=D,E,F``, on 0-1 pixels
                           (torchvision's ``Normalize`` after ``ToTensor``)
``covidx.output``          ``logits`` or ``probabilities``
``covidx.resize``          how the training images were resized to the input size
                           (:data:`data.images.RESIZE_METHODS`): ``torchvision``
                           (``transforms.Resize((S, S))`` on PIL images: antialiased
                           bilinear) or ``baseline`` (``cv2.resize``, SURFsara's)
=========================  ==================================================================

A key that is absent is taken from the caller (eval_keras.py / predict.py
flags) or guessed as this project's convention (class order
``normal,pneumonia,COVID-19``, pixels 0-1, no normalisation, layout from the
input shape, logits or probabilities from the first batch, resize
``baseline``); each guess is logged as one warning naming the key that would
have said it. A ``--resize`` flag overrides ``covidx.resize``
(:mod:`evaluation.preprocessing`).
:func:`write_onnx_metadata` writes the keys into an exported model.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from data.images import RESIZE_METHODS
from data.labels import CLASSES

PREFIX = "covidx."
CLASS_ORDER, LAYOUT, PIXEL_RANGE, NORMALIZATION, OUTPUT, RESIZE = (
    PREFIX + key for key in ("class_order", "layout", "pixel_range", "normalization", "output", "resize")
)
KEYS = (CLASS_ORDER, LAYOUT, PIXEL_RANGE, NORMALIZATION, OUTPUT, RESIZE)
LAYOUTS = ("NCHW", "NHWC")
PIXEL_RANGES = ("0-1", "0-255")
OUTPUTS = ("logits", "probabilities")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class OnnxConventions:
    """An ONNX model's conventions; None where neither the model nor the caller said."""

    class_order: tuple[str, ...] | None = None
    layout: str | None = None
    pixel_range: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    normalization: str | None = None  # the text it was parsed from ("none", "imagenet", "mean=...;std=...")
    output: str | None = None
    resize: str | None = None  # one of data.images.RESIZE_METHODS

    def merged(self, fallback: OnnxConventions) -> OnnxConventions:
        """These conventions, with ``fallback``'s where these are None."""
        return OnnxConventions(**{f.name: getattr(self, f.name) if getattr(self, f.name) is not None
                                  else getattr(fallback, f.name) for f in dataclasses.fields(self)})

    def missing(self) -> list[str]:
        """The metadata keys whose value is still unknown (and so will be guessed)."""
        values = {CLASS_ORDER: self.class_order, LAYOUT: self.layout, PIXEL_RANGE: self.pixel_range,
                  NORMALIZATION: self.normalization, OUTPUT: self.output, RESIZE: self.resize}
        return [key for key, value in values.items() if value is None]


def parse_class_order(text: str, *, what: str) -> tuple[str, ...]:
    """``"COVID-19,normal,pneumonia"`` -> a tuple; exactly the three classes, each once."""
    order = tuple(part.strip() for part in text.split(","))
    if sorted(order) != sorted(CLASSES):
        raise ValueError(f"{what}: the class order must name {', '.join(CLASSES)} once each, "
                         f"received {text!r}")
    return order


def parse_normalization(text: str, *, what: str) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """``none`` / ``imagenet`` / ``mean=A,B,C;std=D,E,F`` -> ``(mean, std)`` (None, None for none)."""
    value = text.strip()
    if value.lower() == "none":
        return None, None
    if value.lower() == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    parts = dict(part.split("=", 1) for part in value.split(";") if "=" in part)
    try:
        mean = tuple(float(v) for v in parts["mean"].split(","))
        std = tuple(float(v) for v in parts["std"].split(","))
    except (KeyError, ValueError):
        mean = std = ()
    if len(mean) not in (1, 3) or len(std) != len(mean) or not all(s > 0 for s in std):
        raise ValueError(f"{what}: normalisation must be none, imagenet or mean=A,B,C;std=D,E,F (std > 0), "
                         f"received {text!r}")
    return mean, std


def _choice(text: str, allowed: Sequence[str], *, what: str) -> str:
    for option in allowed:
        if text.strip().lower() == option.lower():
            return option
    raise ValueError(f"{what}: must be one of {', '.join(allowed)}, received {text!r}")


def conventions_from(values: Mapping[str, str], *, what: str) -> OnnxConventions:
    """Parse the ``covidx.*`` entries of ``values`` (metadata or flags); absent keys stay None."""
    order = values.get(CLASS_ORDER)
    normalization = values.get(NORMALIZATION)
    mean, std = (parse_normalization(normalization, what=f"{what} {NORMALIZATION}")
                 if normalization is not None else (None, None))
    conventions = OnnxConventions(
        class_order=parse_class_order(order, what=f"{what} {CLASS_ORDER}") if order is not None else None,
        layout=_choice(values[LAYOUT], LAYOUTS, what=f"{what} {LAYOUT}") if LAYOUT in values else None,
        pixel_range=(_choice(values[PIXEL_RANGE], PIXEL_RANGES, what=f"{what} {PIXEL_RANGE}")
                     if PIXEL_RANGE in values else None),
        mean=mean, std=std, normalization=normalization.strip() if normalization is not None else None,
        output=_choice(values[OUTPUT], OUTPUTS, what=f"{what} {OUTPUT}") if OUTPUT in values else None,
        resize=_choice(values[RESIZE], RESIZE_METHODS, what=f"{what} {RESIZE}") if RESIZE in values else None,
    )
    if conventions.mean is not None and conventions.pixel_range == "0-255":
        raise ValueError(f"{what}: {NORMALIZATION} is applied to 0-1 pixels; it cannot be combined with "
                         f"{PIXEL_RANGE} 0-255, received both")
    return conventions


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``covidx.*`` entries of an ONNX model's ``metadata_props`` (the weights are not loaded)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in proto.metadata_props if prop.key.startswith(PREFIX)}


def write_onnx_metadata(
    path: str | os.PathLike[str],
    *,
    class_order: Sequence[str] = CLASSES,
    layout: str = "NCHW",
    pixel_range: str = "0-1",
    normalization: str = "none",
    output: str = "logits",
    resize: str | None = None,
) -> None:
    """Write the ``covidx.*`` keys into the ONNX model at ``path`` (checked first; other entries kept).

    ``resize`` is how the training images were resized (``"torchvision"`` for
    ``transforms.Resize((S, S))`` on PIL images, ``"baseline"`` for
    ``cv2.resize``); None leaves ``covidx.resize`` as it is (absent, evaluation
    assumes ``"baseline"`` with a warning). The weights stay where they are: a
    model with external data keeps its ``.onnx.data`` file, which this does not
    rewrite.
    """
    import onnx

    values = {CLASS_ORDER: ",".join(class_order), LAYOUT: layout, PIXEL_RANGE: pixel_range,
              NORMALIZATION: normalization, OUTPUT: output}
    if resize is not None:
        values[RESIZE] = resize
    conventions_from(values, what=f"write_onnx_metadata({path})")  # refuse what a reader would refuse
    proto = onnx.load(str(path), load_external_data=False)
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    for key, value in [*kept, *values.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    from common.fsutil import atomic_path

    with atomic_path(Path(path)) as tmp:
        onnx.save(proto, str(tmp))
