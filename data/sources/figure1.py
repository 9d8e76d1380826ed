"""Figure1 COVID-19 Chest X-ray Dataset (agchung/Figure1-COVID-chestxray-dataset), "fig1".

What: chest X-rays of COVID-19 (and a few other) cases published on the
Figure 1 medical image platform, curated by Audrey Chung / DarwinAI and the
University of Waterloo for COVID-Net; 55 metadata rows and 55 images (about
15 MB).
Where: https://github.com/agchung/Figure1-COVID-chestxray-dataset
(``metadata.csv`` and ``images/``).
Terms: "intended to be used for research purposes only" (the repository's
README); no licence file.

Rules (COVID-Net's ``create_COVIDx``): rows with an empty finding are skipped;
the finding is the first comma-separated element, mapped with COVID-Net's
mapping; the image is ``images/<patientid>.jpg``, else ``images/<patientid>.png``.

Quirks handled: the metadata is ISO-8859-1, not UTF-8; the image extension is
not in the metadata. COVID-Net silently reused the previous row's entry when
neither file existed (a bug); here such a row is skipped as "missing image".
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
)

NAME = "fig1"
OPTION = "figure1"
METADATA = "metadata.csv"
LAYOUT = "the Figure1-COVID-chestxray-dataset folder with metadata.csv and images/"
EXTENSIONS = (".jpg", ".png")


def check(root: Path) -> None:
    """Fail early, naming ``--figure1``, when the folder or its metadata is missing."""
    require_dir(root, f"--{OPTION}", LAYOUT)
    require_file(root / METADATA, f"--{OPTION}", f"the metadata of {LAYOUT}")


def scan(root: Path, context: ScanContext) -> ScanResult:
    """Read ``metadata.csv`` (ISO-8859-1) and return the usable rows in file order."""
    rules = context.rules
    check(root)
    table = read_table(
        root / METADATA, flag=f"--{OPTION}", required=("patientid", "finding"), encodings=("ISO-8859-1",)
    )
    result = ScanResult(source=NAME, root=root, rows_read=len(table))
    for row_no, row in enumerate(table.to_dict("records"), start=1):
        pid = clean_id(row["patientid"])
        label = agchung_label(result, row_no, pid, row["finding"], rules)
        if label is None:
            continue
        problem = out_name_problem(pid + EXTENSIONS[0])
        if problem or " " in pid:
            result.skip(row_no, pid, "bad file name", problem or f"patient id {pid!r} contains a space")
            continue
        name = next((pid + ext for ext in EXTENSIONS if (root / "images" / (pid + ext)).is_file()), None)
        if name is None:
            result.skip(row_no, pid, "missing image", f"neither images/{pid}.jpg nor images/{pid}.png exists")
            continue
        result.records.append(
            Record(
                source=NAME,
                row=row_no,
                patient_id=pid,
                label=label,
                image=name,
                src=root / "images" / name,
                out_name=name,
                convert=COPY,
            )
        )
    return result


SPEC = SourceSpec(
    name=NAME,
    option=OPTION,
    title="Figure1 COVID-19 Chest X-ray Dataset (agchung)",
    url="https://github.com/agchung/Figure1-COVID-chestxray-dataset",
    layout=LAYOUT,
    check=check,
    scan=scan,
)
