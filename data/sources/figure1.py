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

from data.sources.base import ScanContext, ScanResult, SourceSpec, agchung_label, clean_id, read_table

METADATA = "metadata.csv"
EXTENSIONS = (".jpg", ".png")


def scan(root: Path, context: ScanContext) -> ScanResult:
    """Read ``metadata.csv`` (ISO-8859-1) and return the usable rows in file order."""
    SPEC.check(root)
    table = read_table(
        root / METADATA, flag=SPEC.flag, required=("patientid", "finding"), encodings=("ISO-8859-1",)
    )
    result = ScanResult(source=SPEC.name, root=root, rows_read=len(table))
    for row_no, row in enumerate(table.to_dict("records"), start=1):
        pid = clean_id(row["patientid"])
        label = agchung_label(result, row_no, pid, row["finding"], context.rules)
        if label is None:
            continue
        # The file is named after the patient id, which therefore must not hold a space either.
        problem = f"patient id {pid!r} contains a space" if " " in pid else None
        names = [pid + ext for ext in EXTENSIONS]
        src = result.find_image(row_no, pid, root / "images", names, problem=problem)
        if src is not None:
            result.add(row_no, pid, label, src, out_name=src.name)
    return result


SPEC = SourceSpec(
    name="fig1",
    option="figure1",
    title="Figure1 COVID-19 Chest X-ray Dataset (agchung)",
    url="https://github.com/agchung/Figure1-COVID-chestxray-dataset",
    layout="the Figure1-COVID-chestxray-dataset folder with metadata.csv and images/",
    help="agchung/Figure1-COVID-chestxray-dataset folder (metadata.csv, images/)",
    scan=scan,
    required=(METADATA,),
)
