"""COVIDx data: list files, public sources, DICOM conversion and the tf.data pipeline.

Each module has one job:

- ``labels``: the three classes and their fixed order.
- ``lists``: reading and writing COVIDx list files (every published variant).
- ``sources``: one reader per public dataset (cohen, Figure1, Actualmed, SIRM,
  RICORD, RSNA) that turns its metadata into records and reported skips.
- ``splits``: the COVID-Net and SURFsara recipes (label mapping, view filter,
  fixed test patients) and the patient-level train/test assignment.
- ``dicom``: DICOM to 8-bit grayscale (LUTs, windows, MONOCHROME1, every
  compressed transfer syntax pydicom's plugins decode).
- ``build``: ``build_covidx``, which reads the sources, splits, writes the
  images in parallel, then the lists and ``report.json``.
- ``report``: the build report and its one-screen summary.
- ``synthetic``: small synthetic sources in the real formats, for tests and the demo.
"""
