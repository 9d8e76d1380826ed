"""Framework-independent evaluation: prediction files, metrics with patient-level
confidence intervals, ensembles, model comparison and plots.

Nothing here imports TensorFlow or PyTorch; any framework that can write the
predictions CSV (see ``docs/predictions_format.md``) gets the same numbers.
Modules, one job each:

- :mod:`evaluation.predictions` - the predictions CSV: build, validate, write, read;
- :mod:`evaluation.metrics` - confusion matrix, sensitivity/PPV, F1, ROC AUC, and ``METRICS``, the one
  table of every reported metric;
- :mod:`evaluation.calibration` - Brier score, ECE, average precision, reliability bins;
- :mod:`evaluation.bootstrap` - patient (cluster) bootstrap confidence intervals;
- :mod:`evaluation.report` - everything ``metrics.json`` holds, in one call, and the printed report;
- :mod:`evaluation.ensemble` - mean and validation-weighted ensembles;
- :mod:`evaluation.agreement` - per-image agreement between two models' probabilities;
- :mod:`evaluation.compare` - aligning prediction files, McNemar's test, the comparison table;
- :mod:`evaluation.plots` - confusion-matrix, ROC, reliability and PR PNGs (matplotlib object API,
  Agg canvas).

Model-side modules, used by ``eval_keras.py`` and ``predict.py`` (these import
TensorFlow, Keras or onnxruntime when their functions run):

- :mod:`evaluation.loaders` - any checkpoint kind (Keras HDF5/weights/.keras, SavedModel, ONNX) behind one
  ``predict_batch`` interface (single image files are read by :mod:`data.images`);
- :mod:`evaluation.onnx_metadata` - the ``covidx.*`` conventions an ONNX model carries;
- :mod:`evaluation.preprocessing` - which resize method a checkpoint's images get (``--resize``, else
  what ``run_config.json`` or the ONNX metadata records, else ``baseline``);
- :mod:`evaluation.inference` - the one batched prediction path over a list;
- :mod:`evaluation.extras` - what ``eval_keras.py`` writes beside the metrics, through the three below;
- :mod:`evaluation.gradcam` - Grad-CAM heat maps and overlays for Keras models;
- :mod:`evaluation.tsne` - t-SNE of the penultimate-layer features;
- :mod:`evaluation.timing` - images/s of batched evaluation against SURFsara's per-image predict loop.

Importing the package imports none of them, so ``import evaluation`` stays cheap.
"""
