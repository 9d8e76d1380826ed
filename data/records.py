"""What a COVIDx build passes between its steps: records, skips and image results.

A source reader (:mod:`data.sources`) turns metadata rows into :class:`Record`
objects and :class:`Skip` objects; :mod:`data.splits` gives every record a
split; :mod:`data.build` writes one image per record and gets a
:class:`TaskResult` back; :mod:`data.report` counts all of them. These types
live here, below all four modules, so that none of them imports another only
for its types.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

# How the image of a record is turned into the output file.
COPY = "copy"  # the file's bytes, after checking that it decodes (COVID-Net copied them)
GRAY = "gray"  # decoded, converted to one channel, re-encoded in the same format (COVID-Net's SIRM step)
DICOM = "dicom"  # converted with data.dicom.dicom_to_uint8 and written as PNG
CONVERSIONS = (COPY, GRAY, DICOM)

# What happened to an output image (TaskResult.status).
WRITTEN = "written"
PRESENT = "present"
FAILED = "failed"
# The output could not be written: an error of the run, never a skipped image.
OUTPUT_FAILED = "output failed"


@dataclasses.dataclass(frozen=True)
class Record:
    """One image a source offers for COVIDx.

    ``image`` is the name the source gives the image (COVID-Net's de-duplication
    key with the patient id); ``out_name`` is the file name written under
    ``OUT/<split>/`` and listed. ``split`` is None when the split rule decides,
    or ``"train"``/``"test"`` when the source fixes it (RSNA's shipped test
    patients; a source with its own seeded split).
    """

    source: str
    row: int | str
    patient_id: str
    label: str
    image: str
    src: Path
    out_name: str
    convert: str = COPY
    crop: tuple[int, int, int, int] | None = None
    split: str | None = None
    # RSNA: one image per patient; a patient already present is skipped.
    dedup_by_patient: bool = False


@dataclasses.dataclass(frozen=True)
class Skip:
    """A row (or image) that was not used: where it is, whose it is, and why."""

    row: int | str
    id: str
    reason: str
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the report."""
        return {"row": self.row, "id": self.id, "reason": self.reason, "detail": self.detail}


@dataclasses.dataclass(frozen=True)
class TaskResult:
    """What happened to one output image (``data.build.ImageTask``)."""

    index: int
    status: str
    reason: str = ""
    detail: str = ""
    # SHA-256 of a written image, of the bytes already in memory (the dataset fingerprint needs no re-read)
    sha256: str = ""
