"""Reading and writing COVIDx list files.

A list file has one image per line. Every published variant is accepted:

- SURFsara's 3 fields ``patientid filename label``;
- COVID-Net's 4 fields ``patientid filename label source`` (and anything after);
- fields separated by spaces or tabs (SURFsara's USF rows use tabs);
- patient ids that contain spaces, such as COVID-Net's ``COVID 119`` for the
  COVID-19 Radiography Database, which makes such a line 5 fields long.

The label is therefore found by value, not by position: it is the right-most
field (from the third on) that is one of :data:`data.labels.CLASSES`; the field
before it is the file name and everything before that is the patient id.

Bad lines (no known label, a file name that escapes its folder) are collected
with their line number and reason instead of aborting, and exact duplicate lines
(they occur in the published lists) are dropped and counted. Lists are written
in COVID-Net's 4-field form or SURFsara's 3-field form (:func:`format_entry`)
through a temporary file, so a killed run never leaves a half-written list.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from common.fsutil import atomic_write_text
from data.labels import CLASSES

_LABELS = frozenset(CLASSES)


# How thoroughly training and evaluation check a list's images before starting
# (data.pipeline.find_image_problems); here so that --help needs no TensorFlow.
VERIFY_MODES = ("none", "header", "full")
# The line layouts list files are written in (see format_entry); every reader here accepts both.
LIST_FORMATS = ("covidnet", "surfsara")

@dataclasses.dataclass(frozen=True)
class ListEntry:
    """One image of a COVIDx list."""

    patient_id: str
    filename: str
    label: str
    source: str = ""

    @property
    def patient_key(self) -> str:
        """Identity used for patient-level splits.

        Sources reuse small integer ids (cohen ``19`` is not USF ``19``), so the
        source is part of the key when the list names it.
        """
        return f"{self.source}:{self.patient_id}" if self.source else self.patient_id


@dataclasses.dataclass(frozen=True)
class BadLine:
    """A line that could not be used, with the reason."""

    line_no: int
    text: str
    reason: str


@dataclasses.dataclass
class ListReadResult:
    """What :func:`read_list` found: usable entries, rejected lines, dropped duplicates."""

    path: Path
    entries: list[ListEntry]
    bad_lines: list[BadLine]
    duplicates: int

    def summary(self) -> str:
        """One line for logs: counts per class, bad lines and duplicates."""
        counts = {c: 0 for c in CLASSES}
        for e in self.entries:
            counts[e.label] += 1
        per_class = ", ".join(f"{c}={n}" for c, n in counts.items())
        return (
            f"{self.path}: {len(self.entries)} images ({per_class}); "
            f"{len(self.bad_lines)} bad lines, {self.duplicates} duplicate lines dropped"
        )


def check_relative_filename(filename: str) -> str | None:
    """Return why ``filename`` may not be used as a file inside the image folder, or None.

    Rejects absolute paths, drive letters and any ``..`` component, so a list
    (or a metadata row) can never make a reader or writer leave its folder.
    """
    if not filename:
        return "empty file name"
    if "\x00" in filename:
        return "file name contains a NUL byte"
    normalized = filename.replace("\\", "/")
    if normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":"):
        return f"file name {filename!r} is an absolute path"
    if ".." in PurePosixPath(normalized).parts:
        return f"file name {filename!r} escapes its folder ('..')"
    return None


def parse_line(text: str) -> ListEntry:
    """Parse one list line; ``ValueError`` says what is wrong with it."""
    fields = text.split()
    if len(fields) < 3:
        raise ValueError(
            f"expected at least 3 fields (patientid filename label), found {len(fields)}"
        )
    label_at = next((i for i in range(len(fields) - 1, 1, -1) if fields[i] in _LABELS), None)
    if label_at is None:
        raise ValueError(
            f"no known label in fields 3 and after ({' '.join(fields[2:])!r}); "
            f"allowed labels are {', '.join(CLASSES)}"
        )
    filename = fields[label_at - 1]
    problem = check_relative_filename(filename)
    if problem:
        raise ValueError(problem)
    patient_id = " ".join(fields[: label_at - 1])
    source = fields[label_at + 1] if label_at + 1 < len(fields) else ""
    return ListEntry(patient_id=patient_id, filename=filename, label=fields[label_at], source=source)


def read_list(path: str | os.PathLike[str]) -> ListReadResult:
    """Read a COVIDx list file of any published variant.

    Blank lines and ``#`` comments are ignored; Windows (CRLF) line ends and a
    UTF-8 byte-order mark are accepted (the mark would otherwise become part of
    the first patient id and split that patient in two). Raises
    ``FileNotFoundError`` if the file does not exist; bad lines are returned in
    ``bad_lines``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"list file {path} does not exist")
    entries: list[ListEntry] = []
    bad: list[BadLine] = []
    seen: set[tuple[str, str, str]] = set()
    duplicates = 0
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        for line_no, raw in enumerate(fh, start=1):
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            try:
                entry = parse_line(text)
            except ValueError as exc:
                bad.append(BadLine(line_no, text, str(exc)))
                continue
            key = (entry.patient_id, entry.filename, entry.label)
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            entries.append(entry)
    return ListReadResult(path=path, entries=entries, bad_lines=bad, duplicates=duplicates)


def format_entry(entry: ListEntry, *, list_format: str = "covidnet") -> str:
    """One list line in ``list_format`` (:data:`LIST_FORMATS`).

    ``covidnet``: ``patientid filename label source`` (3 fields if no source).
    ``surfsara``: ``patientid filename label``, the form SURFsara's ``data.py``
    reads (it takes the *last* field as the label and the second as the file
    name), so whitespace inside a patient id (COVID-Net's ``COVID 119``) is
    written as ``_``; the source column is dropped.
    """
    if list_format == "covidnet":
        fields = [entry.patient_id, entry.filename, entry.label]
        if entry.source:
            fields.append(entry.source)
        return " ".join(fields)
    if list_format == "surfsara":
        return " ".join(["_".join(entry.patient_id.split()), entry.filename, entry.label])
    raise ValueError(f"list format must be one of {', '.join(LIST_FORMATS)}, received {list_format!r}")


def write_list(
    path: str | os.PathLike[str], entries: Iterable[ListEntry], *, list_format: str = "covidnet"
) -> Path:
    """Write ``entries`` (in the given order) to ``path`` atomically, replacing any old list."""
    text = "".join(format_entry(e, list_format=list_format) + "\n" for e in entries)
    return atomic_write_text(path, text)
