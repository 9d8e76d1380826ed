"""A scoped work-around that lets Keras 3 ``Model.fit`` run under ``MultiWorkerMirroredStrategy``.

Keras 3.15's TensorFlow trainer fails with ``MultiWorkerMirroredStrategy``
(keras-team/keras#20585, open since Keras 3.0):

1. ``fit`` starts by pulling one batch to build the model symbolically and
   calls ``strategy.reduce("MEAN", batch)`` on the whole ``(x, y, w)`` tuple,
   which the collective strategy cannot reduce ("Attempt to convert a value
   (PerReplica...) to a Tensor");
2. it then reduces every scalar loss and metric with
   ``strategy.reduce("MEAN", value, axis=0)``, which fails on a rank-0 value.

:func:`multiworker_fit` fixes both for the duration of one ``fit`` call and
puts everything back afterwards: the model is already built (functional), so
the symbolic build is skipped by hiding the model's captured strategy (the
trainer then takes the strategy from the enclosing ``strategy.scope()``), and
rank-0 values are reduced with ``axis=None``. Nothing changes for single-worker
runs, which never enter it. Remove this module when the Keras issue is fixed;
tests/test_distributed.py runs a real two-worker job and fails if it breaks.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import keras
import tensorflow as tf
from keras.src.backend.tensorflow import trainer as tf_trainer


def _rank(value: Any) -> int | None:
    if isinstance(value, tf.distribute.DistributedValues):
        value = value.values[0]
    return value.shape.rank if tf.is_tensor(value) else None


@contextlib.contextmanager
def multiworker_fit(model: keras.Model, strategy: tf.distribute.Strategy) -> Iterator[None]:
    """Run the enclosed ``model.fit`` correctly under a multi-worker strategy."""
    original_reduce = tf_trainer.reduce_per_replica

    def reduce_per_replica(values: Any, strategy: tf.distribute.Strategy, reduction: str) -> Any:
        if reduction not in ("mean", "auto") or not tf_trainer._collective_all_reduce_multi_worker(strategy):
            return original_reduce(values, strategy, reduction)

        def reduce_one(value: Any) -> Any:
            if _rank(value) == 0:
                return strategy.reduce("MEAN", value, axis=None)
            return original_reduce(value, strategy, reduction)

        return keras.tree.map_structure(reduce_one, values)

    captured = model._distribute_strategy
    tf_trainer.reduce_per_replica = reduce_per_replica
    model._distribute_strategy = None
    try:
        with strategy.scope():
            yield
    finally:
        model._distribute_strategy = captured
        tf_trainer.reduce_per_replica = original_reduce
