"""Training library code used by ``train_keras.py``.

- ``config``: the resolved run configuration (written as JSON beside the checkpoints).
- ``checks``: checks of a run's settings before anything is read or created.
- ``run_data``: the run's lists, their images, and its training and validation datasets.
- ``model``: the registry model compiled with the run's optimizer and learning-rate schedule.
- ``phases``: a run's phases and the ImageNet-transfer study's options (progressive resizing,
  frozen backbone, discriminative learning rates, one-cycle and cosine schedules).
- ``run_folder``: what a run removes from its folder, or why it refuses it.
- ``trainer``: the training run itself (data, model and restore, callbacks, the phase loop, export).
- ``checkpoints``: SURFsara's per-epoch weight files and the kill-safe resume state.
- ``callbacks``, ``preemption``, ``watchdog``: NaN guard, resumable plateau, CSV log trimming;
  stopping on SIGTERM; stopping a stalled multi-worker job.
- ``metrics``: per-class sensitivity and PPV logged every epoch.
- ``strategy``: picking the tf.distribute strategy; op determinism.
- ``export``: the final float32 model as HDF5 and SavedModel.
- ``evaluate``: the final test evaluation; ``failures``: how a stopped run is reported.
"""
