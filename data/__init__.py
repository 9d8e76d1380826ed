"""COVIDx data: list files, public sources, DICOM conversion and the tf.data pipeline.

Each module has one job:

- ``labels``: the three classes and their fixed order.
- ``lists``: reading and writing COVIDx list files (every published variant).
"""
