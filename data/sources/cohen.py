"""COVID-19 Image Data Collection (ieee8023/covid-chestxray-dataset), "cohen".

What: chest X-rays and CT scans of COVID-19 and other pneumonias collected from
publications and websites by Joseph Paul Cohen et al. (2020-2021); fewer than
1,000 images (the June 2020 snapshot has 751 metadata rows, 570 of them frontal
X-rays), a few hundred MB with the CT volumes.
Where: https://github.com/ieee8023/covid-chestxray-dataset (``metadata.csv``
and ``images/``; CT volumes under ``volumes/``).
Licence: per image, given in the metadata's ``license`` column (CC BY,
CC BY-NC-SA, Apache 2.0, ...); check it before redistributing images.

Rules (COVID-Net's ``create_COVIDx``; SURFsara's variant in brackets):

- keep the views ``PA``, ``AP``, ``AP Supine``, ``AP semi erect``, ``AP erect``
  [``PA`` only];
- the finding is the last element of the 2021+ hierarchy
  (``Pneumonia/Viral/COVID-19``) or, for the flat 2020 values, the first comma
  element (``COVID-19, ARDS`` -> ``COVID-19``) [the exact value];
- mapping to the three classes by :mod:`data.splits`; anything else (``todo``,
  ``No Finding``, ``Pneumocystis``...) is skipped as not mapped;
- COVID-19 rows whose URL contains ``eurorad.org``, ``ml-workgroup`` or
  ``sirm.org`` are skipped: those images are also in the SIRM source [no such
  rule];
- the patient id is the ``patientid`` value as text; the image is
  ``DIR/<folder>/<filename>`` when the metadata has a ``folder`` column (2020-04
  onwards) and ``DIR/images/<filename>`` otherwise.

Quirks handled: header spellings that vary across snapshots (``Patientid``,
`` url``: column names are compared stripped and lower-cased), empty cells,
rows whose image was not downloaded (skipped as "missing image"), file names
that would leave the folder (``../x.png``).
"""
from __future__ import annotations

from pathlib import Path

from data.lists import check_relative_filename
from data.sources.base import (
    COPY,
    Record,
    ScanContext,
    ScanResult,
    SourceSpec,
    clean_id,
    out_name_problem,
    read_table,
    require_dir,
    require_file,
    strip_whitespace,
)

NAME = "cohen"
OPTION = "cohen"
METADATA = "metadata.csv"
LAYOUT = "the covid-chestxray-dataset folder with metadata.csv and images/"
REQUIRED = ("patientid", "finding", "view", "filename")


def check(root: Path) -> None:
    """Fail early, naming ``--cohen``, when the folder or its metadata is missing."""
    require_dir(root, f"--{OPTION}", LAYOUT)
    require_file(root / METADATA, f"--{OPTION}", f"the metadata of {LAYOUT}")


def scan(root: Path, context: ScanContext) -> ScanResult:
    """Read ``metadata.csv`` and return the usable rows in file order."""
    rules = context.rules
    flag = f"--{OPTION}"
    check(root)
    table = read_table(root / METADATA, flag=flag, required=REQUIRED)
    has_folder = "folder" in table.columns
    has_url = "url" in table.columns
    result = ScanResult(source=NAME, root=root, rows_read=len(table))
    result.info["metadata"] = str(root / METADATA)
    result.info["folder_column"] = has_folder
    if not has_url:
        result.warnings.append(f"{root / METADATA} has no 'url' column: the URL rules cannot run")
    urls: set[str] = set()
    for row_no, row in enumerate(table.to_dict("records"), start=1):
        pid = clean_id(row["patientid"])
        view = str(row["view"]).strip()
        if view not in rules.cohen_views:
            result.skip(
                row_no, pid, "view not kept", f"view {view!r} (kept: {', '.join(sorted(rules.cohen_views))})"
            )
            continue
        url = str(row.get("url", "")).strip() if has_url else ""
        if url:
            urls.add(url)
        raw_finding = str(row["finding"]).strip()
        if not raw_finding:
            result.skip(row_no, pid, "empty finding")
            continue
        finding = rules.cohen_finding(raw_finding)
        label = rules.label(finding)
        if label is None:
            result.skip(row_no, pid, "finding not mapped", f"finding {raw_finding!r} not mapped")
            continue
        if label == "COVID-19":
            site = next((s for s in rules.cohen_url_skip if s in url), None)
            if site is not None:
                result.skip(row_no, pid, "COVID-19 image duplicated in SIRM", f"url contains {site!r}: {url}")
                continue
        if not pid:
            result.skip(row_no, pid, "empty patient id")
            continue
        filename = str(row["filename"]).strip()
        folder = str(row.get("folder", "")).strip() if has_folder else ""
        folder = folder or "images"
        problem = check_relative_filename(folder) or out_name_problem(filename)
        if problem:
            result.skip(row_no, pid, "bad file name", problem)
            continue
        src = root / folder / filename
        if not src.is_file():
            result.skip(row_no, pid, "missing image", f"{folder}/{filename} not found")
            continue
        result.records.append(
            Record(
                source=NAME,
                row=row_no,
                patient_id=pid,
                label=label,
                image=filename,
                src=src,
                out_name=strip_whitespace(filename),
                convert=COPY,
            )
        )
    result.urls = frozenset(urls)
    return result


SPEC = SourceSpec(
    name=NAME,
    option=OPTION,
    title="COVID-19 Image Data Collection (ieee8023/covid-chestxray-dataset)",
    url="https://github.com/ieee8023/covid-chestxray-dataset",
    layout=LAYOUT,
    check=check,
    scan=scan,
)
