"""RSNA Pneumonia Detection Challenge (Kaggle, 2018), "rsna".

What: 26,684 frontal chest X-rays (the stage 2 training set) from the NIH
ChestX-ray14 collection, annotated by the Radiological Society of North America
and the Society of Thoracic Radiology with pneumonia ("lung opacity") boxes;
one DICOM per patient (1024 x 1024, 8 bit, JPEG baseline), about 4 GB.
Where: https://www.kaggle.com/c/rsna-pneumonia-detection-challenge
(``stage_2_detailed_class_info.csv``, ``stage_2_train_labels.csv``,
``stage_2_train_images/<patientId>.dcm``).
Terms: the competition's data rules on Kaggle (the images derive from the NIH
ChestX-ray14 release).

Rules (COVID-Net and SURFsara alike): ``normal`` is every patient whose class
in ``stage_2_detailed_class_info.csv`` is ``Normal``; ``pneumonia`` is every
patient with ``Target == 1`` in ``stage_2_train_labels.csv``; the class
"No Lung Opacity / Not Normal" is not used. Normal patients come first, then
pneumonia patients, each in file order. The image is converted with
:func:`data.dicom.dicom_to_uint8` (the stored 8-bit pixels, as COVID-Net wrote
them) and written as ``<patientId>.png``.

Test patients are COVID-Net's fixed 100 normal + 100 pneumonia patients
(``rsna_test_patients_{normal,pneumonia}.npy`` in COVID-Net's repository),
shipped as text in ``data/resources/``. If the RSNA folder holds both ``.npy``
files, those are used instead (the user's explicit copy wins) and the report
says which lists were used and whether they differ from the shipped ones.

Quirks handled: ``stage_2_train_labels.csv`` has one row per box, so a
pneumonia patient has up to four rows. COVID-Net wrote the image once (its
patient dictionary); SURFsara's notebook wrote one list line per row, which is
where the 3,079 duplicate lines of its published train list come from. Here a
patient gives one image and one list line; the extra rows are reported.
Every row of ``stage_2_train_labels.csv`` is accounted for: a record, an extra
box row, or a patient of the unused class.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from data.records import DICOM
from data.sources.base import ScanContext, ScanResult, SourceSpec, clean_id, read_table

CLASS_INFO = "stage_2_detailed_class_info.csv"
LABELS = "stage_2_train_labels.csv"
IMAGES = "stage_2_train_images"
RESOURCES = Path(__file__).resolve().parent.parent / "resources"
TEST_CLASSES = ("normal", "pneumonia")


def shipped_test_patients() -> dict[str, tuple[str, ...]]:
    """COVID-Net's RSNA test patients, from ``data/resources/rsna_test_patients_<class>.txt``."""
    lists = {}
    for label in TEST_CLASSES:
        path = RESOURCES / f"rsna_test_patients_{label}.txt"
        lists[label] = tuple(
            line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
        )
    return lists


def _load_npy_list(path: Path) -> tuple[str, ...]:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ValueError(f"{SPEC.flag}: cannot read {path} as a NumPy array of patient ids: {exc}") from None
    if array.ndim != 1 or array.dtype.kind not in "US":
        raise ValueError(
            f"{SPEC.flag}: {path} must be a 1-D array of patient id strings, "
            f"received shape {array.shape} dtype {array.dtype}"
        )
    return tuple(str(x).strip() for x in array.tolist())


def rsna_test_patients(root: Path) -> tuple[dict[str, tuple[str, ...]], str, list[str]]:
    """The RSNA test patients to use: (lists per class, where they came from, warnings)."""
    shipped = shipped_test_patients()
    npys = {label: root / f"rsna_test_patients_{label}.npy" for label in TEST_CLASSES}
    present = [p for p in npys.values() if p.is_file()]
    if len(present) < len(npys):
        warnings = []
        if present:
            warnings.append(
                f"only {present[0].name} found in {root}: both .npy files are needed; using the shipped lists"
            )
        return shipped, "shipped data/resources/rsna_test_patients_{normal,pneumonia}.txt", warnings
    lists = {label: _load_npy_list(path) for label, path in npys.items()}
    warnings = [
        f"{npys[label].name} differs from the shipped COVID-Net list ({len(lists[label])} vs "
        f"{len(shipped[label])} ids)"
        for label in TEST_CLASSES
        if sorted(lists[label]) != sorted(shipped[label])
    ]
    return lists, f"{root}/rsna_test_patients_{{normal,pneumonia}}.npy", warnings


def scan(root: Path, context: ScanContext) -> ScanResult:
    """Read the two CSVs and return one record per normal or pneumonia patient."""
    SPEC.check(root)
    info = read_table(root / CLASS_INFO, flag=SPEC.flag, required=("patientid", "class"))
    labels = read_table(root / LABELS, flag=SPEC.flag, required=("patientid", "target"))
    result = ScanResult(source=SPEC.name, root=root)
    tests, origin, warnings = rsna_test_patients(root)
    result.warnings.extend(warnings)
    result.info["test_patients_from"] = origin
    test_sets = {label: frozenset(ids) for label, ids in tests.items()}
    patient_class, normal_rows = _normal_patients(info.to_dict("records"))
    for ref, pid in normal_rows:
        _add_patient(result, ref, pid, "normal", test_sets)
    normal_ids = {pid for _, pid in normal_rows}
    seen = _read_label_rows(result, labels.to_dict("records"), normal_ids, patient_class, test_sets)
    # Normal patients missing from the labels file still count as rows read.
    result.rows_read = len(labels) + len(normal_ids - seen)
    result.info["test_patients"] = {label: len(ids) for label, ids in tests.items()}
    return result


def _normal_patients(rows: list[dict[str, Any]]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Every patient's first class, and the normal patients as (row reference, id) in file order."""
    patient_class: dict[str, str] = {}
    normal_rows: list[tuple[str, str]] = []
    normal_ids: set[str] = set()
    for row_no, row in enumerate(rows, start=1):
        pid = clean_id(row["patientid"])
        klass = str(row["class"]).strip()
        patient_class.setdefault(pid, klass)
        if klass == "Normal" and pid not in normal_ids:
            normal_ids.add(pid)
            normal_rows.append((f"{CLASS_INFO}:{row_no}", pid))
    return patient_class, normal_rows


def _add_patient(
    result: ScanResult, ref: str, pid: str, label: str, test_sets: Mapping[str, frozenset[str]]
) -> None:
    """One record for the patient's DICOM (its file name is the patient id), or the row skipped."""
    src = result.find_image(
        ref, pid, result.root / IMAGES, [f"{pid}.dcm"], problem=None if pid else "empty patient id"
    )
    if src is not None:
        split = "test" if pid in test_sets[label] else "train"
        result.add(
            ref, pid, label, src, out_name=f"{pid}.png", convert=DICOM, split=split, dedup_by_patient=True
        )


def _read_label_rows(
    result: ScanResult,
    rows: list[dict[str, Any]],
    normal_ids: set[str],
    patient_class: Mapping[str, str],
    test_sets: Mapping[str, frozenset[str]],
) -> set[str]:
    """Add a record per pneumonia patient and account for every other row of the labels file.

    Returns the normal patients that have a row in it.
    """
    pneumonia_ids: set[str] = set()
    seen_normal: set[str] = set()
    for row_no, row in enumerate(rows, start=1):
        ref, pid = f"{LABELS}:{row_no}", clean_id(row["patientid"])
        target = str(row["target"]).strip()
        if target not in ("0", "1"):
            result.skip(ref, pid, "bad Target", f"Target {target!r} is neither 0 nor 1")
        elif pid in normal_ids:
            if pid in seen_normal:
                result.skip(ref, pid, "duplicate row", f"patient already has a row in {LABELS}")
            elif target == "1":
                # COVID-Net took normal patients first, so such a patient stays normal.
                result.warnings.append(
                    f"{LABELS}:{row_no}: patient {pid} has Target 1 but class 'Normal' in {CLASS_INFO}; "
                    "kept as normal"
                )
            seen_normal.add(pid)
        elif target == "1":
            if pid in pneumonia_ids:
                result.skip(
                    ref, pid, "extra box row", "one image per patient: this patient is already listed"
                )
            else:
                pneumonia_ids.add(pid)
                _add_patient(result, ref, pid, "pneumonia", test_sets)
        else:
            klass = patient_class.get(pid, "")
            if klass:
                result.skip(ref, pid, "class not used", f"class {klass!r} is neither normal nor pneumonia")
            else:
                result.skip(ref, pid, "class not used", f"Target 0 and no class in {CLASS_INFO}")
    return seen_normal


SPEC = SourceSpec(
    name="rsna",
    option="rsna",
    title="RSNA Pneumonia Detection Challenge",
    url="https://www.kaggle.com/c/rsna-pneumonia-detection-challenge",
    layout=f"the RSNA pneumonia challenge folder with {CLASS_INFO}, {LABELS} and {IMAGES}/",
    help=f"RSNA pneumonia challenge folder ({CLASS_INFO}, {LABELS}, {IMAGES}/)",
    scan=scan,
    required=(CLASS_INFO, LABELS, IMAGES + "/"),
    stage=1,
)
