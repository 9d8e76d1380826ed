"""The predictions CSV: one row per test image, written by any framework.

Columns (any order; see ``docs/predictions_format.md``)::

    patient_id,filename,label,p_normal,p_pneumonia,p_COVID-19

``label`` is the true class name; the three probabilities are the model's
softmax outputs in :data:`data.labels.CLASSES` order and must sum to 1 within
:data:`SUM_TOLERANCE`. An optional ``source`` column is accepted and ignored.

The reader is tolerant of column order (and of spaces around header names) but
strict on content: a missing or unknown column, an empty id, an unknown label,
a probability that is not a finite number in [0, 1], a row whose probabilities
do not sum to 1, or a file name that occurs twice is a ``ValueError`` whose one
line names the file, the offending lines (abbreviated when there are many) and
what is wrong. Line numbers count the header as line 1.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from common.fsutil import atomic_write_text
from data.labels import CLASS_TO_INDEX, CLASSES, NUM_CLASSES

SUM_TOLERANCE = 1e-3
PROBABILITY_COLUMNS: tuple[str, ...] = tuple(f"p_{name}" for name in CLASSES)
ID_COLUMNS: tuple[str, ...] = ("patient_id", "filename", "label")
REQUIRED_COLUMNS: tuple[str, ...] = ID_COLUMNS + PROBABILITY_COLUMNS
IGNORED_COLUMNS: tuple[str, ...] = ("source",)
# Enough digits that float32 softmax outputs survive the round trip unchanged.
FLOAT_FORMAT = "%.9g"


def abbreviate(items: Iterable[str], *, limit: int = 5) -> str:
    """``"a, b, c and 7 more"``: keeps one-line error messages short."""
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"


@dataclasses.dataclass(frozen=True, eq=False)
class Predictions:
    """Validated predictions for one set of images (build with :func:`make_predictions`).

    Attributes:
        patient_ids: ``(n,)`` object array of str; the bootstrap resamples these.
        filenames: ``(n,)`` object array of unique str; identifies an image across files.
        labels: ``(n,)`` int64 true class indices into :data:`data.labels.CLASSES`.
        probabilities: ``(n, 3)`` float64, rows sum to 1.
        source: the file (or a description) the predictions came from, for messages.
    """

    patient_ids: np.ndarray
    filenames: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray
    source: str = "predictions"

    def __len__(self) -> int:
        return len(self.filenames)

    @property
    def predicted(self) -> np.ndarray:
        """Predicted class indices (argmax; ties go to the earlier class, as ``np.argmax``)."""
        return np.argmax(self.probabilities, axis=1)

    def reorder(self, filenames: Sequence[str]) -> Predictions:
        """The same predictions in the order of ``filenames`` (which must be exactly this set)."""
        position = {name: i for i, name in enumerate(self.filenames)}
        missing = [name for name in filenames if name not in position]
        if missing or len(filenames) != len(self):
            raise ValueError(
                f"predictions {self.source}: cannot reorder to a different set of images "
                f"({len(missing)} of {len(filenames)} requested file names are not in it)"
            )
        order = np.fromiter((position[name] for name in filenames), dtype=np.int64, count=len(filenames))
        return dataclasses.replace(
            self,
            patient_ids=self.patient_ids[order],
            filenames=self.filenames[order],
            labels=self.labels[order],
            probabilities=self.probabilities[order],
        )


def as_label_indices(
    labels: Sequence[str] | Sequence[int] | np.ndarray, *, source: str = "labels"
) -> np.ndarray:
    """Class indices from class names or integer indices; ``ValueError`` names the bad values."""
    values = np.asarray(labels)
    if values.dtype.kind in "iu":
        bad = sorted({int(v) for v in values if not 0 <= v < NUM_CLASSES})
        if bad:
            raise ValueError(
                f"{source}: label indices must be 0..{NUM_CLASSES - 1} ({', '.join(CLASSES)}), "
                f"received {abbreviate(map(str, bad))}"
            )
        return values.astype(np.int64)
    names = [str(v) for v in values]
    bad_names = sorted({name for name in names if name not in CLASS_TO_INDEX})
    if bad_names:
        raise ValueError(
            f"{source}: unknown label(s) {abbreviate(map(repr, bad_names))}; "
            f"allowed labels are {', '.join(CLASSES)}"
        )
    return np.fromiter((CLASS_TO_INDEX[n] for n in names), dtype=np.int64, count=len(names))


def _check_ids(values: np.ndarray, column: str, where: Callable[[int], str], source: str) -> None:
    empty = [i for i, v in enumerate(values) if not v]
    if empty:
        raise ValueError(
            f"{source}: empty {column} on {len(empty)} rows: {abbreviate(where(i) for i in empty)}"
        )


def _check_probabilities(probabilities: np.ndarray, where: Callable[[int], str], source: str) -> None:
    for k, column in enumerate(PROBABILITY_COLUMNS):
        col = probabilities[:, k]
        bad = np.flatnonzero(~np.isfinite(col))
        if bad.size:
            raise ValueError(
                f"{source}: {column} is NaN or infinite on {bad.size} rows: "
                f"{abbreviate(where(i) for i in bad)}"
            )
        bad = np.flatnonzero((col < 0.0) | (col > 1.0))
        if bad.size:
            raise ValueError(
                f"{source}: {column} is outside [0, 1] on {bad.size} rows: "
                f"{abbreviate(f'{where(i)} ({col[i]:g})' for i in bad)}"
            )
    sums = probabilities.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > SUM_TOLERANCE)
    if bad.size:
        raise ValueError(
            f"{source}: probabilities do not sum to 1 (tolerance {SUM_TOLERANCE:g}) on {bad.size} rows: "
            f"{abbreviate(f'{where(i)} (sum {sums[i]:.6g})' for i in bad)}"
        )


def _check_unique_filenames(filenames: np.ndarray, where: Callable[[int], str], source: str) -> None:
    rows: dict[str, list[int]] = {}
    for i, name in enumerate(filenames):
        rows.setdefault(name, []).append(i)
    dups = {name: idx for name, idx in rows.items() if len(idx) > 1}
    if dups:
        described = (f"{name} ({', '.join(where(i) for i in idx)})" for name, idx in dups.items())
        raise ValueError(f"{source}: {len(dups)} duplicate file names: {abbreviate(described)}")


def _validated(
    *,
    patient_ids: np.ndarray,
    filenames: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    where: Callable[[int], str],
    context: str,
    source: str,
) -> Predictions:
    _check_ids(patient_ids, "patient_id", where, context)
    _check_ids(filenames, "filename", where, context)
    _check_probabilities(probabilities, where, context)
    _check_unique_filenames(filenames, where, context)
    return Predictions(
        patient_ids=patient_ids,
        filenames=filenames,
        labels=labels,
        probabilities=probabilities,
        source=source,
    )


def make_predictions(
    *,
    patient_ids: Sequence[str],
    filenames: Sequence[str],
    labels: Sequence[str] | Sequence[int] | np.ndarray,
    probabilities: np.ndarray,
    source: str = "predictions",
) -> Predictions:
    """Validate in-memory predictions (e.g. a model's softmax outputs) into :class:`Predictions`.

    Args:
        patient_ids: one per image. Use an id that is unique per patient across
            sources (``data.lists.ListEntry.patient_key``): the bootstrap treats
            equal ids as one patient.
        filenames: one per image, unique.
        labels: true classes, as names from :data:`data.labels.CLASSES` or indices.
        probabilities: ``(n, 3)`` array in :data:`data.labels.CLASSES` order.
        source: named in error messages.

    Raises:
        ValueError: naming ``source``, the rows (0-based) and what is wrong.
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    n = len(filenames)
    if probs.ndim != 2 or probs.shape[1] != NUM_CLASSES:
        raise ValueError(
            f"{source}: probabilities must have shape (n, {NUM_CLASSES}), received {probs.shape}"
        )
    lengths = {
        "patient_ids": len(patient_ids), "filenames": n, "labels": len(labels), "probabilities": len(probs)
    }
    if len(set(lengths.values())) != 1:
        raise ValueError(
            f"{source}: inputs differ in length; they must have one entry per image, received {lengths}"
        )
    if n == 0:
        raise ValueError(f"{source}: no predictions; at least one image is needed, received 0")
    return _validated(
        patient_ids=np.array([str(p) for p in patient_ids], dtype=object),
        filenames=np.array([str(f) for f in filenames], dtype=object),
        labels=as_label_indices(labels, source=source),
        probabilities=probs,
        where=lambda i: f"row {i}",
        context=source,
        source=source,
    )


def predictions_frame(predictions: Predictions) -> pd.DataFrame:
    """The CSV's columns, in the documented order."""
    frame = pd.DataFrame(
        {
            "patient_id": predictions.patient_ids,
            "filename": predictions.filenames,
            "label": [CLASSES[i] for i in predictions.labels],
        }
    )
    for k, column in enumerate(PROBABILITY_COLUMNS):
        frame[column] = predictions.probabilities[:, k]
    return frame


def save_predictions(path: str | os.PathLike[str], predictions: Predictions) -> Path:
    """Write validated :class:`Predictions` to ``path`` atomically; return the path."""
    text = predictions_frame(predictions).to_csv(index=False, float_format=FLOAT_FORMAT, lineterminator="\n")
    return atomic_write_text(path, text)


def write_predictions(
    path: str | os.PathLike[str],
    *,
    patient_ids: Sequence[str],
    filenames: Sequence[str],
    labels: Sequence[str] | Sequence[int] | np.ndarray,
    probabilities: np.ndarray,
) -> Path:
    """Validate arrays (see :func:`make_predictions`) and write them as a predictions CSV, atomically."""
    predictions = make_predictions(
        patient_ids=patient_ids,
        filenames=filenames,
        labels=labels,
        probabilities=probabilities,
        source=f"predictions for {path}",
    )
    return save_predictions(path, predictions)


def _line(i: int) -> str:
    return f"line {i + 2}"  # the header is line 1


def read_predictions(path: str | os.PathLike[str]) -> Predictions:
    """Read and validate a predictions CSV.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: one line naming the file and what is wrong (see the module docstring).
    """
    path = Path(path)
    context = f"predictions file {path}"
    text = _read_columns(path, context)
    return _validated(
        patient_ids=text["patient_id"],
        filenames=text["filename"],
        labels=_parse_labels(text["label"], context),
        probabilities=np.stack([_parse_numbers(text[c], c, context) for c in PROBABILITY_COLUMNS], axis=1),
        where=_line,
        context=context,
        source=str(path),
    )


def _read_columns(path: Path, context: str) -> dict[str, np.ndarray]:
    """The required columns of the CSV as stripped text, after checking the file and its header."""
    if path.is_dir():
        raise IsADirectoryError(
            f"{context} is a folder, not a CSV file (give a file, e.g. {path / 'predictions.csv'})"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{context} does not exist")
    if path.stat().st_size == 0:
        # pandas would say "No columns to parse from file"; an interrupted copy is the usual cause.
        raise ValueError(f"{context}: cannot be read as CSV: it is empty (0 bytes); expected the header "
                         f"{','.join(REQUIRED_COLUMNS)} and one row per image")
    try:
        # Everything as text and no NA guessing: a patient id "NA" stays "NA",
        # and probabilities are parsed later so bad cells can be named.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{context}: cannot be read as CSV ({first})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{context}: missing column(s) {', '.join(missing)} in the header (line 1); required columns "
            f"are {','.join(REQUIRED_COLUMNS)} (any order; optional: {', '.join(IGNORED_COLUMNS)}); "
            f"found {','.join(frame.columns)}"
        )
    unknown = [c for c in frame.columns if c not in REQUIRED_COLUMNS + IGNORED_COLUMNS]
    if unknown:
        raise ValueError(
            f"{context}: unexpected column(s) {', '.join(unknown)}; allowed columns are "
            f"{','.join(REQUIRED_COLUMNS + IGNORED_COLUMNS)}"
        )
    if frame.empty:
        raise ValueError(f"{context}: no rows (only a header)")
    return {c: frame[c].astype(str).str.strip().to_numpy(dtype=object) for c in REQUIRED_COLUMNS}


def _parse_labels(labels: np.ndarray, context: str) -> np.ndarray:
    """Class indices of the label column; ``ValueError`` naming the lines with unknown labels."""
    bad = [i for i, v in enumerate(labels) if v not in CLASS_TO_INDEX]
    if bad:
        raise ValueError(
            f"{context}: unknown label on {len(bad)} rows: "
            f"{abbreviate(f'{_line(i)} ({labels[i]!r})' for i in bad)}; "
            f"allowed labels are {', '.join(CLASSES)}"
        )
    return np.fromiter((CLASS_TO_INDEX[v] for v in labels), dtype=np.int64, count=len(labels))


def _parse_numbers(cells: np.ndarray, column: str, context: str) -> np.ndarray:
    """A probability column as float64; ``ValueError`` naming the lines that are not numbers."""
    numbers = pd.to_numeric(pd.Series(cells), errors="coerce").to_numpy(dtype=np.float64)
    # "nan"/"inf" parse as numbers and are caught as non-finite by _validated; this is for "abc" or "".
    unparsed = [i for i in np.flatnonzero(np.isnan(numbers)) if cells[i].lower() != "nan"]
    if unparsed:
        raise ValueError(
            f"{context}: {column} is not a number on {len(unparsed)} rows: "
            f"{abbreviate(f'{_line(i)} ({cells[i]!r})' for i in unparsed)}"
        )
    return numbers
