"""COVID-19 Radiography Database, COVID-19 images ("sirm").

What: the COVID-19 chest X-rays of the COVID-19 Radiography Database by
M.E.H. Chowdhury, T. Rahman et al. (Qatar University, University of Dhaka),
collected from the Italian Society of Medical and Interventional Radiology
(SIRM), publications and other public sources. COVID-Net used the 2020 release:
``COVID.metadata.xlsx`` plus a ``COVID/`` folder of a few hundred to about
1,200 PNGs depending on the release (a few hundred MB).
Where: https://www.kaggle.com/tawsifurrahman/covid19-radiography-database
Terms: see the Kaggle page; each image's origin is in the ``URL`` column.

Rules (COVID-Net's ``create_COVIDx``):

- rows whose ``URL`` is also a URL of a cohen row that passed cohen's view
  filter, or is the cohen repository's own URL, are skipped: cohen has those
  images already (this needs ``--cohen``; without it the check cannot run and
  the report says so);
- rows whose ``FILE NAME`` has one of the numbers 100-105, 110-113, 122-126 or
  217 in parentheses are skipped (COVID-Net's discard list; with the
  ``COVID N`` names of the release COVID-Net used, there are no parentheses, so
  its slice never matched and nothing was discarded; the same happens here);
- the image is ``COVID/<FILE NAME>.<format in lower case>``, falling back to
  ``COVID/COVID (N).png`` (later releases' naming) and to ``COVID/images/``
  (the 2021+ folder layout);
- the patient id is ``FILE NAME`` (it contains a space, e.g. ``COVID 119``);
- the image is decoded, converted to one channel and written under its name
  with the spaces removed (``COVID 119.png`` -> ``COVID119.png``).
"""
from __future__ import annotations

import re
from pathlib import Path

from data.sources.base import (
    GRAY,
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

NAME = "sirm"
OPTION = "sirm"
METADATA = "COVID.metadata.xlsx"
IMAGES = "COVID"
LAYOUT = "the COVID-19 Radiography Database folder with COVID.metadata.xlsx and COVID/"
COHEN_REPOSITORY_URL = "https://github.com/ieee8023/covid-chestxray-dataset"
DISCARD = frozenset(
    {
        "100",
        "101",
        "102",
        "103",
        "104",
        "105",
        "110",
        "111",
        "112",
        "113",
        "122",
        "123",
        "124",
        "125",
        "126",
        "217",
    }
)
_PARENS = re.compile(r"\(([^)]*)\)")
_COVID_N = re.compile(r"COVID (\d+)")


def check(root: Path) -> None:
    """Fail early, naming ``--sirm``, when the folder, its metadata or its image folder is missing."""
    require_dir(root, f"--{OPTION}", LAYOUT)
    require_file(root / METADATA, f"--{OPTION}", f"the metadata of {LAYOUT}")
    require_dir(root / IMAGES, f"--{OPTION}", f"the image folder of {LAYOUT}")


def _candidates(pid: str, fmt: str) -> list[str]:
    names = [f"{pid}.{fmt.lower()}"]
    match = _COVID_N.fullmatch(pid)
    if match:
        names.append(f"COVID ({match.group(1)}).png")
    return names


def scan(root: Path, context: ScanContext) -> ScanResult:
    """Read ``COVID.metadata.xlsx`` and return the usable rows in sheet order."""
    check(root)
    table = read_table(
        root / METADATA, flag=f"--{OPTION}", required=("file name", "format", "url"), excel=True
    )
    result = ScanResult(source=NAME, root=root, rows_read=len(table))
    exclude = context.exclude_urls
    if exclude is None:
        result.warnings.append(
            "--sirm without --cohen: the SIRM images that duplicate cohen's cannot be dropped "
            "(COVID-Net dropped every row whose URL is also in cohen's metadata)"
        )
        exclude = frozenset({COHEN_REPOSITORY_URL})
    else:
        exclude = exclude | {COHEN_REPOSITORY_URL}
    folders = [root / IMAGES, root / IMAGES / "images"]
    for row_no, row in enumerate(table.to_dict("records"), start=1):
        pid = clean_id(row["file name"])
        url = str(row["url"]).strip()
        if url and url in exclude:
            result.skip(row_no, pid, "duplicate of a cohen image", f"URL {url} is in cohen's metadata")
            continue
        parens = _PARENS.search(pid)
        if parens and parens.group(1).strip() in DISCARD:
            result.skip(
                row_no,
                pid,
                "discarded by COVID-Net",
                f"number {parens.group(1).strip()} is on COVID-Net's discard list",
            )
            continue
        if not pid:
            result.skip(row_no, pid, "empty patient id")
            continue
        fmt = str(row["format"]).strip() or "png"
        names = _candidates(pid, fmt)
        problem = next((p for p in map(out_name_problem, names) if p), None)
        if problem:
            result.skip(row_no, pid, "bad file name", problem)
            continue
        src = next((folder / n for folder in folders for n in names if (folder / n).is_file()), None)
        if src is None:
            result.skip(
                row_no, pid, "missing image", f"none of {', '.join(f'{IMAGES}/{n}' for n in names)} exists"
            )
            continue
        result.records.append(
            Record(
                source=NAME,
                row=row_no,
                patient_id=pid,
                label="COVID-19",
                image=src.name,
                src=src,
                out_name=strip_whitespace(src.name),
                convert=GRAY,
            )
        )
    return result


SPEC = SourceSpec(
    name=NAME,
    option=OPTION,
    title="COVID-19 Radiography Database, COVID-19 images (SIRM and others)",
    url="https://www.kaggle.com/tawsifurrahman/covid19-radiography-database",
    layout=LAYOUT,
    check=check,
    scan=scan,
)
