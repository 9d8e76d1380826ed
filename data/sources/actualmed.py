"""Actualmed COVID-19 Chest X-ray Dataset (agchung/Actualmed-COVID-chestxray-dataset), "actmed".

What: chest X-rays from Actualmed and Universitat Jaume I (Spain), curated by
the COVID-Net team; 238 metadata rows (COVID-19, "No finding", and rows with no
finding), one image per row, PNGs of several MB each.
Where: https://github.com/agchung/Actualmed-COVID-chestxray-dataset
(``metadata.csv`` and ``images/``).
Terms: "intended to be used for research purposes only" (the repository's
README); no licence file.

Rules (COVID-Net's ``create_COVIDx``): rows with an empty finding are skipped;
the finding is the first comma-separated element, mapped with COVID-Net's
mapping (``No finding`` is not mapped: COVID-Net's three-class COVIDx does not
use it); the image is ``images/<imagename>``.

Quirks handled: images missing from a partial download are skipped as
"missing image" (COVID-Net's ``copyfile`` would have stopped the run); file
names are checked so a row cannot point outside ``images/``.
"""
from __future__ import annotations

from pathlib import Path

from data.sources.base import (
    COPY,
    Record,
    ScanContext,
    ScanResult,
    SourceSpec,
    agchung_label,
    clean_id,
    out_name_problem,
    read_table,
    require_dir,
    require_file,
    strip_whitespace,
)

NAME = "actmed"
OPTION = "actualmed"
METADATA = "metadata.csv"
LAYOUT = "the Actualmed-COVID-chestxray-dataset folder with metadata.csv and images/"


def check(root: Path) -> None:
    """Fail early, naming ``--actualmed``, when the folder or its metadata is missing."""
    require_dir(root, f"--{OPTION}", LAYOUT)
    require_file(root / METADATA, f"--{OPTION}", f"the metadata of {LAYOUT}")


def scan(root: Path, context: ScanContext) -> ScanResult:
    """Read ``metadata.csv`` and return the usable rows in file order."""
    rules = context.rules
    check(root)
    table = read_table(root / METADATA, flag=f"--{OPTION}", required=("patientid", "finding", "imagename"))
    result = ScanResult(source=NAME, root=root, rows_read=len(table))
    for row_no, row in enumerate(table.to_dict("records"), start=1):
        pid = clean_id(row["patientid"])
        label = agchung_label(result, row_no, pid, row["finding"], rules)
        if label is None:
            continue
        name = str(row["imagename"]).strip()
        problem = out_name_problem(name)
        if problem:
            result.skip(row_no, pid, "bad file name", problem)
            continue
        src = root / "images" / name
        if not src.is_file():
            result.skip(row_no, pid, "missing image", f"images/{name} not found")
            continue
        result.records.append(
            Record(
                source=NAME,
                row=row_no,
                patient_id=pid,
                label=label,
                image=name,
                src=src,
                out_name=strip_whitespace(name),
                convert=COPY,
            )
        )
    return result


SPEC = SourceSpec(
    name=NAME,
    option=OPTION,
    title="Actualmed COVID-19 Chest X-ray Dataset (agchung)",
    url="https://github.com/agchung/Actualmed-COVID-chestxray-dataset",
    layout=LAYOUT,
    check=check,
    scan=scan,
)
