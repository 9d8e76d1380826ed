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

from pathlib import Path

import numpy as np

from data.sources.base import (
    DICOM,
    Record,
    ScanContext,
    ScanResult,
    SourceSpec,
    clean_id,
    out_name_problem,
    read_table,
    require_dir,
    require_file,
)

NAME = "rsna"
OPTION = "rsna"
CLASS_INFO = "stage_2_detailed_class_info.csv"
LABELS = "stage_2_train_labels.csv"
IMAGES = "stage_2_train_images"
LAYOUT = f"the RSNA pneumonia challenge folder with {CLASS_INFO}, {LABELS} and {IMAGES}/"
RESOURCES = Path(__file__).resolve().parent.parent / "resources"
TEST_CLASSES = ("normal", "pneumonia")


def check(root: Path) -> None:
    """Fail early, naming ``--rsna``, when the folder, a CSV or the image folder is missing."""
    flag = f"--{OPTION}"
    require_dir(root, flag, LAYOUT)
    require_file(root / CLASS_INFO, flag, f"part of {LAYOUT}")
    require_file(root / LABELS, flag, f"part of {LAYOUT}")
    require_dir(root / IMAGES, flag, f"the DICOM folder of {LAYOUT}")


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
        raise ValueError(f"--{OPTION}: cannot read {path} as a NumPy array of patient ids: {exc}") from None
    if array.ndim != 1 or array.dtype.kind not in "US":
        raise ValueError(
            f"--{OPTION}: {path} must be a 1-D array of patient id strings, "
            f"found shape {array.shape} dtype {array.dtype}"
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
    flag = f"--{OPTION}"
    check(root)
    info = read_table(root / CLASS_INFO, flag=flag, required=("patientid", "class"))
    labels = read_table(root / LABELS, flag=flag, required=("patientid", "target"))
    result = ScanResult(source=NAME, root=root)
    tests, origin, warnings = rsna_test_patients(root)
    result.warnings.extend(warnings)
    result.info["test_patients_from"] = origin
    test_sets = {label: frozenset(ids) for label, ids in tests.items()}

    patient_class: dict[str, str] = {}
    normal_rows: list[tuple[str, str]] = []  # (row reference, patient id) in class-info order
    normal_ids: set[str] = set()
    for row_no, row in enumerate(info.to_dict("records"), start=1):
        pid = clean_id(row["patientid"])
        klass = str(row["class"]).strip()
        patient_class.setdefault(pid, klass)
        if klass == "Normal" and pid not in normal_ids:
            normal_ids.add(pid)
            normal_rows.append((f"{CLASS_INFO}:{row_no}", pid))

    def make(row_ref: str, pid: str, label: str) -> Record | None:
        problem = out_name_problem(pid + ".dcm") if pid else "empty patient id"
        if problem:
            # The patient id is the DICOM's file name.
            result.skip(row_ref, pid, "bad file name", problem)
            return None
        src = root / IMAGES / f"{pid}.dcm"
        if not src.is_file():
            result.skip(row_ref, pid, "missing image", f"{IMAGES}/{pid}.dcm not found")
            return None
        return Record(
            source=NAME,
            row=row_ref,
            patient_id=pid,
            label=label,
            image=f"{pid}.dcm",
            src=src,
            out_name=f"{pid}.png",
            convert=DICOM,
            split="test" if pid in test_sets[label] else "train",
            dedup_by_patient=True,
        )

    normal_records = []
    for ref, pid in normal_rows:
        rec = make(ref, pid, "normal")
        if rec is not None:
            normal_records.append(rec)

    pneumonia_records = []
    pneumonia_ids: set[str] = set()
    seen_label_rows: set[str] = set()
    rows = 0
    for row_no, row in enumerate(labels.to_dict("records"), start=1):
        rows += 1
        ref = f"{LABELS}:{row_no}"
        pid = clean_id(row["patientid"])
        target = str(row["target"]).strip()
        if target not in ("0", "1"):
            result.skip(ref, pid, "bad Target", f"Target {target!r} is neither 0 nor 1")
            continue
        if target == "1":
            if pid in normal_ids and pid not in seen_label_rows:
                # COVID-Net took normal patients first, so such a patient stays normal.
                result.warnings.append(
                    f"{LABELS}:{row_no}: patient {pid} has Target 1 but class 'Normal' in {CLASS_INFO}; "
                    "kept as normal"
                )
                seen_label_rows.add(pid)
            elif pid in normal_ids:
                result.skip(ref, pid, "duplicate row", f"patient already has a row in {LABELS}")
            elif pid in pneumonia_ids:
                result.skip(
                    ref, pid, "extra box row", "one image per patient: this patient is already listed"
                )
            else:
                pneumonia_ids.add(pid)
                rec = make(ref, pid, "pneumonia")
                if rec is not None:
                    pneumonia_records.append(rec)
            continue
        if pid in normal_ids:
            if pid in seen_label_rows:
                result.skip(ref, pid, "duplicate row", f"patient already has a row in {LABELS}")
            # else: this is the normal patient's row; its record came from the class-info file
            seen_label_rows.add(pid)
            continue
        klass = patient_class.get(pid, "")
        result.skip(
            ref,
            pid,
            "class not used",
            f"class {klass!r} is neither normal nor pneumonia"
            if klass
            else f"Target 0 and no class in {CLASS_INFO}",
        )
    # Normal patients missing from the labels file still count as rows read.
    rows += len(normal_ids - seen_label_rows)
    result.rows_read = rows
    result.records = normal_records + pneumonia_records
    result.info["test_patients"] = {label: len(ids) for label, ids in tests.items()}
    return result


SPEC = SourceSpec(
    name=NAME,
    option=OPTION,
    title="RSNA Pneumonia Detection Challenge",
    url="https://www.kaggle.com/c/rsna-pneumonia-detection-challenge",
    layout=LAYOUT,
    check=check,
    scan=scan,
    stage=1,
)
