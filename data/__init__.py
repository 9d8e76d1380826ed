"""COVIDx data: list files, public sources, DICOM conversion, images and the tf.data pipeline.

Each module has one job:

- ``labels``: the three classes and their fixed order.
- ``lists``: reading and writing COVIDx list files (every published variant).
- ``records``: what the build steps pass each other (``Record``, ``Skip``, ``TaskResult``).
- ``sources``: one reader per public dataset (cohen, Figure1, Actualmed, SIRM,
  RICORD, RSNA, the COVID-19 Radiography Database) that turns its metadata
  into records and reported skips, and the registry of them.
- ``splits``: the split rules (COVID-Net's, SURFsara's, the Radiography
  Database's: label mapping, view filter, fixed test patients) and the
  patient-level train/test assignment.
- ``dicom``: DICOM to 8-bit grayscale (LUTs, windows, MONOCHROME1, every
  compressed transfer syntax pydicom's plugins decode).
- ``images``: image files to pixels (signatures, EXIF orientation, bit depth,
  decode and resize), shared by the builder, the pipeline, the cache, the
  serving signature and ``predict.py``.
- ``build``: ``build_covidx``, which reads the sources, splits, writes the
  images in parallel, then the lists and ``report.json``.
- ``report``: the build report and its one-screen summary.
- ``fingerprint``: image hashes and list fingerprints.
- ``pipeline``: list entries to training and evaluation batches (tf.data).
- ``cache``: the images resized once, in sharded TFRecord files.
- ``synthetic``: small synthetic sources in the real formats, for tests and the demo.
"""
