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

from data.sources.base import ScanContext, ScanResult, SourceSpec, agchung_label, clean_id, read_table

METADATA = "metadata.csv"


def scan(root: Path, context: ScanContext) -> ScanResult:
    """Read ``metadata.csv`` and return the usable rows in file order."""
    SPEC.check(root)
    table = read_table(root / METADATA, flag=SPEC.flag, required=("patientid", "finding", "imagename"))
    result = ScanResult(source=SPEC.name, root=root, rows_read=len(table))
    for row_no, row in enumerate(table.to_dict("records"), start=1):
        pid = clean_id(row["patientid"])
        label = agchung_label(result, row_no, pid, row["finding"], context.rules)
        if label is None:
            continue
        src = result.find_image(row_no, pid, root / "images", [str(row["imagename"]).strip()])
        if src is not None:
            result.add(row_no, pid, label, src)
    return result


SPEC = SourceSpec(
    name="actmed",
    option="actualmed",
    title="Actualmed COVID-19 Chest X-ray Dataset (agchung)",
    url="https://github.com/agchung/Actualmed-COVID-chestxray-dataset",
    layout="the Actualmed-COVID-chestxray-dataset folder with metadata.csv and images/",
    help="agchung/Actualmed-COVID-chestxray-dataset folder (metadata.csv, images/)",
    scan=scan,
    required=(METADATA,),
)
