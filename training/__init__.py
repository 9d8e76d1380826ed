"""Training library code used by ``train_keras.py``.

- ``config``: the resolved run configuration (written as JSON beside the checkpoints).
- ``checkpoints``: SURFsara's per-epoch weight files and the kill-safe resume state.
- ``metrics``: per-class sensitivity and PPV logged every epoch.
- ``callbacks``: NaN guard, resumable learning-rate plateau and CSV log.
- ``recipes``: the ImageNet-transfer study's recipes (phases, progressive resizing, frozen backbone,
  discriminative learning rates, one-cycle and cosine schedules).
- ``strategy``: picking the tf.distribute strategy.
- ``export``: the final float32 model as HDF5 and SavedModel.
- ``trainer``: the training run itself.
"""
