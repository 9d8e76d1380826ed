"""Per-class sensitivity (recall) and PPV (precision) on argmax predictions, as Keras metrics.

SURFsara's ``Metrics`` callback rounded the softmax outputs before taking the
argmax (``y_pred.round().astype(int)``), so an image whose top probability was
below 0.5 counted as class 0 (normal), and it averaged per-batch macro scores.
These metrics take the argmax of the probabilities and accumulate counts over
the whole validation set, so the epoch log shows the same sensitivity and PPV
that the final evaluation prints.
"""
from __future__ import annotations

import keras
from keras import ops

from data.labels import CLASSES


def _short(label: str) -> str:
    return {"normal": "normal", "pneumonia": "pneumonia", "COVID-19": "covid"}[label]


class _ArgmaxClassMetric(keras.metrics.Metric):
    """Counts ``hits`` / ``total`` for one class over argmax predictions."""

    def __init__(self, class_id: int, name: str | None = None, dtype: str | None = None) -> None:
        super().__init__(name=name, dtype=dtype)
        self.class_id = class_id
        self.hits = self.add_variable(shape=(), initializer="zeros", name="hits")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def _masks(self, y_true, y_pred):
        true = ops.equal(ops.argmax(y_true, axis=-1), self.class_id)
        pred = ops.equal(ops.argmax(y_pred, axis=-1), self.class_id)
        return ops.cast(true, "float32"), ops.cast(pred, "float32")

    def result(self):
        return ops.divide_no_nan(self.hits, self.total)

    def reset_state(self) -> None:
        self.hits.assign(0.0)
        self.total.assign(0.0)

    def get_config(self) -> dict:
        return {"class_id": self.class_id, "name": self.name, "dtype": self.dtype}


class ClassSensitivity(_ArgmaxClassMetric):
    """Recall of one class: correct predictions / images of the class."""

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:
        true, pred = self._masks(y_true, y_pred)
        self.hits.assign_add(ops.sum(true * pred))
        self.total.assign_add(ops.sum(true))


class ClassPPV(_ArgmaxClassMetric):
    """Precision of one class: correct predictions / predictions of the class."""

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:
        true, pred = self._masks(y_true, y_pred)
        self.hits.assign_add(ops.sum(true * pred))
        self.total.assign_add(ops.sum(pred))


def class_metrics() -> list[keras.metrics.Metric]:
    """Accuracy plus sensitivity and PPV of every class, named e.g. ``sens_covid``/``ppv_covid``."""
    metrics: list[keras.metrics.Metric] = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    for i, label in enumerate(CLASSES):
        metrics.append(ClassSensitivity(i, name=f"sens_{_short(label)}"))
        metrics.append(ClassPPV(i, name=f"ppv_{_short(label)}"))
    return metrics
